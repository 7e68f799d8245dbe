"""Test PKI and the server TLS context.

gen_tls() writes a throw-away certificate authority and a server certificate
for 127.0.0.1, ::1 and localhost signed by it, so that a client verifies the
emulator exactly as it would verify Google (CA file + host name check).
Optional extra material exercises the refusal paths of a client:

  wrong-ca.pem / wrong-ca.key          an unrelated CA (give it to the client: must fail)
  wrong-server.pem / wrong-server.key  a server cert for the right names, signed by wrong-ca
  expired-server.pem / .key            signed by the right CA, expired yesterday
  wrong-host-server.pem / .key         signed by the right CA, only for "wrong.example.invalid"

server_context() builds the ssl.SSLContext the HTTPS listener uses.  ALPN
offers only http/1.1: the emulator speaks HTTP/1.1, so a libcurl client that
would negotiate HTTP/2 with Google falls back to HTTP/1.1 here.
"""

import datetime
import ipaddress
import os
import ssl

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_NAMES = ("localhost",)
SERVER_IPS = ("127.0.0.1", "::1")


def _new_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "bqemu test PKI"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path, data, private=False):
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(path + ".tmp", path)


def _key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def make_ca(cn, days):
    key = _new_key()
    now = datetime.datetime.now(datetime.timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder()
            .subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def make_server_cert(ca_key, ca_cert, names=SERVER_NAMES, ips=SERVER_IPS, days=3650, expired=False):
    key = _new_key()
    now = datetime.datetime.now(datetime.timezone.utc)
    if expired:
        start, end = now - datetime.timedelta(days=30), now - datetime.timedelta(days=1)
    else:
        start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=days)
    san = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (x509.CertificateBuilder()
            .subject_name(_name(names[0] if names else ips[0]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=True, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=False, crl_sign=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def _save_pair(directory, stem, key, cert):
    _write(os.path.join(directory, stem + ".key"), _key_pem(key), private=True)
    _write(os.path.join(directory, stem + ".pem"), _cert_pem(cert))


def gen_tls(directory, wrong_ca=False, bad_certs=False, days=3650):
    """Write the test PKI into `directory`; return the list of files written."""
    os.makedirs(directory, exist_ok=True)
    written = []
    ca_key, ca_cert = make_ca("bqemu test CA", days)
    _save_pair(directory, "ca", ca_key, ca_cert)
    skey, scert = make_server_cert(ca_key, ca_cert, days=days)
    _save_pair(directory, "server", skey, scert)
    written += ["ca.pem", "ca.key", "server.pem", "server.key"]
    if wrong_ca:
        wkey, wcert = make_ca("bqemu unrelated CA", days)
        _save_pair(directory, "wrong-ca", wkey, wcert)
        k, c = make_server_cert(wkey, wcert, days=days)
        _save_pair(directory, "wrong-server", k, c)
        written += ["wrong-ca.pem", "wrong-ca.key", "wrong-server.pem", "wrong-server.key"]
    if bad_certs:
        k, c = make_server_cert(ca_key, ca_cert, expired=True)
        _save_pair(directory, "expired-server", k, c)
        k, c = make_server_cert(ca_key, ca_cert, names=("wrong.example.invalid",), ips=())
        _save_pair(directory, "wrong-host-server", k, c)
        written += ["expired-server.pem", "expired-server.key",
                    "wrong-host-server.pem", "wrong-host-server.key"]
    return [os.path.join(directory, n) for n in written]


def server_context(cert_file, key_file):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx
