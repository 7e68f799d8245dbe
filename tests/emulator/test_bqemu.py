"""Tests of the BigQuery emulator (tools/bqemu) through its real wire protocol.

Run from the repository root:

    /usr/bin/python3 -m unittest tests/emulator/test_bqemu.py

The module generates a test PKI with `bqemu.py gen-tls`, starts emulators as
subprocesses on port 0 with TLS and waits for their ready files, then talks
HTTPS to them with the standard library, verifying the server against the
generated CA.  JWT assertions are built and signed here with
python3-cryptography, independently of the emulator's own code.

Servers:
  main   default settings, metadata server, all general tests
  short  --token-lifetime 1 --dedup-window 1: token expiry and dedup window
  fast   --fast: benchmark mode
"""

import base64
import gzip
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BQEMU = os.path.join(ROOT, "tools", "bqemu", "bqemu.py")
PY = "/usr/bin/python3"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
SCOPE_BQ = "https://www.googleapis.com/auth/bigquery"

TMP = None
TLS = None
SERVERS = {}
MAIN = None


# ----------------------------------------------------------------------------------------------
# helpers

def run_cli(*args, check=True):
    p = subprocess.run([PY, BQEMU] + list(args), capture_output=True, text=True, timeout=60)
    if check and p.returncode != 0:
        raise AssertionError("bqemu.py %s failed (%d): %s" % (" ".join(args), p.returncode, p.stderr))
    return p


def wait_for(pred, timeout=10.0, interval=0.02, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(interval)


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_jwt(private_pem, claims, kid=None, alg="RS256", pad=False):
    key = serialization.load_pem_private_key(private_pem.encode(), password=None)
    header = {"alg": alg, "typ": "JWT"}
    if kid:
        header["kid"] = kid
    enc = (lambda b: base64.urlsafe_b64encode(b).decode()) if pad else b64url
    signing_input = enc(json.dumps(header).encode()) + "." + enc(json.dumps(claims).encode())
    sig = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return signing_input + "." + enc(sig)


class Resp:
    def __init__(self, status, headers, data):
        self.status, self.headers, self.data = status, headers, data

    @property
    def json(self):
        return json.loads(self.data)

    def header(self, name):
        return self.headers.get(name.lower())


class Server:
    """One emulator subprocess."""

    def __init__(self, name, *extra, data_dir=None):
        self.name = name
        self.dir = data_dir or os.path.join(TMP, name)
        self.ready = os.path.join(TMP, name + ".ready.json")
        self.extra = list(extra)
        self.proc = None
        self.info = None

    def start(self):
        if os.path.exists(self.ready):
            os.unlink(self.ready)
        self.log = open(os.path.join(TMP, self.name + ".log"), "ab")
        self.proc = subprocess.Popen(
            [PY, BQEMU, "-v", "serve", "--dir", self.dir, "--port", "0",
             "--tls-cert", os.path.join(TLS, "server.pem"), "--tls-key", os.path.join(TLS, "server.key"),
             "--ready-file", self.ready] + self.extra, stdout=self.log, stderr=self.log)
        return self

    def wait_ready(self):
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError("emulator %s exited with %s" % (self.name, self.proc.returncode))
            return os.path.exists(self.ready)
        wait_for(ready, 20, what="ready file of " + self.name)
        with open(self.ready) as f:
            self.info = json.load(f)
        self.port = self.info["https_port"]
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()
        return self.proc.returncode if self.proc else None

    # -- HTTP -----------------------------------------------------------------------------

    def context(self, ca="ca.pem"):
        return ssl.create_default_context(cafile=os.path.join(TLS, ca))

    def conn(self, host="127.0.0.1", ca="ca.pem"):
        return http.client.HTTPSConnection(host, self.port, context=self.context(ca), timeout=15)

    def request(self, method, path, body=None, headers=None, token=None, conn=None, gz=False):
        hdrs = dict(headers or {})
        if token:
            hdrs["Authorization"] = "Bearer " + token
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        if gz and body is not None:
            body = gzip.compress(body)
            hdrs["Content-Encoding"] = "gzip"
        own = conn is None
        c = conn or self.conn()
        try:
            c.request(method, path, body=body, headers=hdrs)
            r = c.getresponse()
            data = r.read()
            return Resp(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
        finally:
            if own:
                c.close()

    def control(self, method, sub, obj=None):
        r = self.request(method, "/_emu" + sub, obj if obj is not None else None)
        if r.status != 200:
            raise AssertionError("control %s %s -> %d %s" % (method, sub, r.status, r.data))
        return r.json

    def token(self, scopes=None):
        return self.control("POST", "/token", {"scopes": scopes or [SCOPE_BQ]})["access_token"]

    def create_table(self, ref, schema):
        return self.control("POST", "/tables", {"table": ref, "schema": schema, "replace": True})

    def insert(self, ref, rows, token, gz=False, **opts):
        p, d, t = ref.split(".")
        body = dict(opts)
        body["rows"] = rows
        return self.request("POST", "/bigquery/v2/projects/%s/datasets/%s/tables/%s/insertAll" % (p, d, t),
                            body, token=token, gz=gz)

    def rows(self, ref):
        return self.control("GET", "/rows?table=" + urllib.parse.quote(ref))

    def stats(self):
        return self.control("GET", "/stats")


def setUpModule():
    global TMP, TLS, MAIN
    TMP = tempfile.mkdtemp(prefix="bqemu-test-")
    TLS = os.path.join(TMP, "tls")
    run_cli("gen-tls", "--dir", TLS, "--wrong-ca", "--bad-certs")
    SERVERS["main"] = Server("main", "--metadata-port", "0", "--project", "meta-proj").start()
    SERVERS["short"] = Server("short", "--token-lifetime", "1", "--dedup-window", "1").start()
    SERVERS["fast"] = Server("fast", "--fast").start()
    for s in SERVERS.values():
        s.wait_ready()
    MAIN = SERVERS["main"]
    # a registered service-account key for the main server
    MAIN.key_path = os.path.join(TMP, "main-key.json")
    run_cli("gen-key", "--dir", MAIN.dir, "--out", MAIN.key_path, "--token-uri", MAIN.info["token_uri"],
            "--project", "test-proj", "--email", "relayd@test-proj.iam.gserviceaccount.com")
    with open(MAIN.key_path) as f:
        MAIN.key = json.load(f)


def tearDownModule():
    for s in SERVERS.values():
        s.stop()
    if os.environ.get("BQEMU_TEST_KEEP"):
        print("kept", TMP, file=sys.stderr)
    else:
        shutil.rmtree(TMP, ignore_errors=True)


def grant(server, assertion, content_type="application/x-www-form-urlencoded"):
    if content_type == "application/json":
        body = json.dumps({"grant_type": JWT_BEARER, "assertion": assertion}).encode()
    else:
        body = urllib.parse.urlencode({"grant_type": JWT_BEARER, "assertion": assertion}).encode()
    return server.request("POST", "/token", body, {"Content-Type": content_type})


def claims_for(key, **over):
    now = int(time.time())
    c = {"iss": key["client_email"], "scope": SCOPE_BQ, "aud": key["token_uri"], "iat": now, "exp": now + 3600}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


class EmuTestCase(unittest.TestCase):
    _token = None

    def setUp(self):
        MAIN.control("DELETE", "/faults")

    @property
    def tok(self):
        if EmuTestCase._token is None:
            r = grant(MAIN, sign_jwt(MAIN.key["private_key"], claims_for(MAIN.key), MAIN.key["private_key_id"]))
            assert r.status == 200, r.data
            EmuTestCase._token = r.json["access_token"]
        return EmuTestCase._token

    def table(self, name, schema=None):
        ref = "test-proj.ds.%s" % name
        MAIN.create_table(ref, schema or [{"name": "n", "type": "INTEGER", "mode": "REQUIRED"},
                                          {"name": "s", "type": "STRING"}])
        return ref

    def assertGoogleError(self, r, code, reason):
        self.assertEqual(r.status, code, r.data)
        e = r.json["error"]
        self.assertEqual(e["code"], code)
        self.assertEqual(e["errors"][0]["reason"], reason)
        self.assertEqual(e["errors"][0]["domain"], "global")
        self.assertIsInstance(e["message"], str)
        self.assertIsInstance(e["status"], str)
        return e


# ----------------------------------------------------------------------------------------------
# TLS

class TestTLS(EmuTestCase):
    def test_verified_with_generated_ca(self):
        c = MAIN.conn()
        c.request("GET", "/_emu/health")
        r = c.getresponse()
        self.assertEqual(r.status, 200)
        r.read()
        cert = c.sock.getpeercert()
        names = {v for k, v in cert["subjectAltName"]}
        self.assertTrue({"localhost", "127.0.0.1"} <= names)
        self.assertTrue(any(v.startswith("0:0:0:0:0:0:0:1") or v == "::1" for v in names), names)
        self.assertEqual(c.sock.selected_alpn_protocol(), None)  # client offered none
        c.close()

    def test_hostname_localhost(self):
        c = MAIN.conn(host="localhost")
        try:
            self.assertEqual(MAIN.request("GET", "/_emu/health", conn=c).status, 200)
        finally:
            c.close()

    def test_alpn_offers_http11_only(self):
        ctx = MAIN.context()
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        with socket.create_connection(("127.0.0.1", MAIN.port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                self.assertEqual(s.selected_alpn_protocol(), "http/1.1")

    def test_wrong_ca_refused(self):
        before = MAIN.stats()["tls_handshake_failures"]
        with self.assertRaises(ssl.SSLCertVerificationError):
            MAIN.request("GET", "/_emu/health", conn=MAIN.conn(ca="wrong-ca.pem"))
        wait_for(lambda: MAIN.stats()["tls_handshake_failures"] > before, what="handshake failure count")

    def test_bad_cert_material(self):
        with open(os.path.join(TLS, "expired-server.pem"), "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        self.assertLess(cert.not_valid_after.timestamp(), time.time())
        with open(os.path.join(TLS, "wrong-server.pem"), "rb") as f:
            wrong = x509.load_pem_x509_certificate(f.read())
        with open(os.path.join(TLS, "ca.pem"), "rb") as f:
            ca = x509.load_pem_x509_certificate(f.read())
        self.assertNotEqual(wrong.issuer, ca.subject)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(TLS, "server.key")).st_mode), 0o600)


# ----------------------------------------------------------------------------------------------
# OAuth

class TestOAuth(EmuTestCase):
    def test_key_file_format(self):
        k = MAIN.key
        for field in ("type", "project_id", "private_key_id", "private_key", "client_email", "client_id",
                      "auth_uri", "token_uri", "auth_provider_x509_cert_url", "client_x509_cert_url"):
            self.assertIn(field, k)
        self.assertEqual(k["type"], "service_account")
        self.assertEqual(k["token_uri"], MAIN.info["token_uri"])
        self.assertTrue(k["private_key"].startswith("-----BEGIN PRIVATE KEY-----\n"))
        key = serialization.load_pem_private_key(k["private_key"].encode(), password=None)
        self.assertIsInstance(key, rsa.RSAPrivateKey)
        self.assertEqual(key.key_size, 2048)
        self.assertEqual(stat.S_IMODE(os.stat(MAIN.key_path).st_mode), 0o600)
        self.assertTrue(os.path.exists(os.path.join(MAIN.dir, "keys", k["private_key_id"] + ".pem")))

    def test_jwt_grant(self):
        r = grant(MAIN, sign_jwt(MAIN.key["private_key"], claims_for(MAIN.key), MAIN.key["private_key_id"]))
        self.assertEqual(r.status, 200, r.data)
        body = r.json
        self.assertEqual(body["token_type"], "Bearer")
        self.assertEqual(body["expires_in"], 3600)
        self.assertTrue(body["access_token"])
        self.assertEqual(MAIN.insert(self.table("oauth_ok"), [{"json": {"n": 1}}], body["access_token"]).status, 200)

    def test_jwt_grant_json_body_and_no_kid(self):
        r = grant(MAIN, sign_jwt(MAIN.key["private_key"], claims_for(MAIN.key)), "application/json")
        self.assertEqual(r.status, 200, r.data)

    def assertInvalidGrant(self, assertion, error="invalid_grant", contains=None):
        r = grant(MAIN, assertion)
        self.assertEqual(r.status, 400, r.data)
        self.assertEqual(r.json["error"], error)
        if contains:
            self.assertIn(contains, r.json["error_description"])
        return r.json

    def test_bad_signature(self):
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = other.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()).decode()
        self.assertInvalidGrant(sign_jwt(pem, claims_for(MAIN.key), MAIN.key["private_key_id"]),
                                contains="Signature")
        # tampered claims with the original signature
        good = sign_jwt(MAIN.key["private_key"], claims_for(MAIN.key), MAIN.key["private_key_id"])
        h, c, s = good.split(".")
        c2 = b64url(json.dumps(claims_for(MAIN.key, scope="https://www.googleapis.com/auth/cloud-platform")).encode())
        self.assertInvalidGrant(h + "." + c2 + "." + s, contains="Signature")

    def test_unregistered_key(self):
        path = os.path.join(TMP, "unregistered.json")
        run_cli("gen-key", "--no-register", "--out", path, "--token-uri", MAIN.info["token_uri"])
        with open(path) as f:
            k = json.load(f)
        self.assertInvalidGrant(sign_jwt(k["private_key"], claims_for(k), k["private_key_id"]))

    def test_expired_and_skewed(self):
        now = int(time.time())
        k, kid = MAIN.key, MAIN.key["private_key_id"]
        d = self.assertInvalidGrant(sign_jwt(k["private_key"], claims_for(k, iat=now - 4000, exp=now - 400), kid))
        self.assertIn("iat and exp", d["error_description"])
        self.assertInvalidGrant(sign_jwt(k["private_key"], claims_for(k, iat=now + 300, exp=now + 3900), kid),
                                contains="reasonable timeframe")
        self.assertInvalidGrant(sign_jwt(k["private_key"], claims_for(k, iat=now, exp=now + 7200), kid),
                                contains="short-lived")
        self.assertInvalidGrant(sign_jwt(k["private_key"], claims_for(k, exp=None), kid))
        # 30 s in the future is within the allowed skew
        r = grant(MAIN, sign_jwt(k["private_key"], claims_for(k, iat=now + 30, exp=now + 3630), kid))
        self.assertEqual(r.status, 200, r.data)

    def test_wrong_audience_and_issuer(self):
        k, kid = MAIN.key, MAIN.key["private_key_id"]
        self.assertInvalidGrant(sign_jwt(k["private_key"], claims_for(k, aud="https://oauth2.googleapis.com/token"),
                                         kid), contains="aud")
        self.assertInvalidGrant(sign_jwt(k["private_key"], claims_for(k, iss="someone@else.example"), kid))

    def test_missing_scope(self):
        k = MAIN.key
        self.assertInvalidGrant(sign_jwt(k["private_key"], claims_for(k, scope=None), k["private_key_id"]),
                                error="invalid_scope")

    def test_padded_or_malformed_jwt(self):
        k = MAIN.key
        padded = sign_jwt(k["private_key"], claims_for(k), k["private_key_id"], pad=True)
        self.assertIn("=", padded)            # a 256-byte signature always needs padding
        self.assertInvalidGrant(padded, contains="base64url")
        self.assertInvalidGrant("not-a-jwt")
        self.assertInvalidGrant(sign_jwt(k["private_key"], claims_for(k), k["private_key_id"], alg="HS256"))

    def test_other_token_errors(self):
        r = MAIN.request("POST", "/token", b"grant_type=password&username=x",
                         {"Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual((r.status, r.json["error"]), (400, "unsupported_grant_type"))
        r = MAIN.request("POST", "/token", b"grant_type=" + urllib.parse.quote(JWT_BEARER).encode(),
                         {"Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual((r.status, r.json["error"]), (400, "invalid_request"))

    def test_refresh_token_grant(self):
        path = os.path.join(TMP, "adc-user.json")
        run_cli("gen-user", "--dir", MAIN.dir, "--out", path, "--token-uri", MAIN.info["token_uri"],
                "--quota-project", "qp")
        with open(path) as f:
            u = json.load(f)
        self.assertEqual(u["type"], "authorized_user")
        self.assertEqual(u["quota_project_id"], "qp")
        form = {"grant_type": "refresh_token", "client_id": u["client_id"], "client_secret": u["client_secret"],
                "refresh_token": u["refresh_token"]}
        ct = {"Content-Type": "application/x-www-form-urlencoded"}
        r = MAIN.request("POST", "/token", urllib.parse.urlencode(form).encode(), ct)
        self.assertEqual(r.status, 200, r.data)
        tok = r.json["access_token"]
        ins = MAIN.request("POST", "/projects/test-proj/datasets/ds/tables/%s/insertAll" % "refresh_t",
                           {"rows": [{"json": {"n": 1}}]}, {"x-goog-user-project": "qp"}, token=tok)
        self.assertIn(ins.status, (200, 404))
        self.assertGreaterEqual(MAIN.stats()["user_projects"].get("qp", 0), 1)
        bad = dict(form, client_secret="nope")
        r = MAIN.request("POST", "/token", urllib.parse.urlencode(bad).encode(), ct)
        self.assertEqual((r.status, r.json["error"]), (401, "invalid_client"))
        bad = dict(form, refresh_token="1//unknown")
        r = MAIN.request("POST", "/token", urllib.parse.urlencode(bad).encode(), ct)
        self.assertEqual((r.status, r.json["error"]), (400, "invalid_grant"))

    def test_self_signed_jwt_as_bearer(self):
        now = int(time.time())
        k = MAIN.key
        jwt = sign_jwt(k["private_key"], {"iss": k["client_email"], "sub": k["client_email"],
                                          "aud": "https://bigquery.googleapis.com/", "iat": now,
                                          "exp": now + 3600}, k["private_key_id"])
        self.assertEqual(MAIN.insert(self.table("selfsigned"), [{"json": {"n": 1}}], jwt).status, 200)
        bad = sign_jwt(k["private_key"], {"iss": k["client_email"], "aud": "https://evil.example/",
                                          "iat": now, "exp": now + 3600}, k["private_key_id"])
        self.assertGoogleError(MAIN.insert(self.table("selfsigned"), [{"json": {"n": 1}}], bad), 401, "authError")

    def test_missing_and_invalid_credentials(self):
        ref = self.table("auth401")
        r = MAIN.request("POST", "/projects/test-proj/datasets/ds/tables/auth401/insertAll",
                         {"rows": [{"json": {"n": 1}}]})
        e = self.assertGoogleError(r, 401, "required")
        self.assertEqual(e["status"], "UNAUTHENTICATED")
        self.assertTrue(r.header("WWW-Authenticate").startswith("Bearer"))
        self.assertGoogleError(MAIN.insert(ref, [{"json": {"n": 1}}], "ya29.not-a-token"), 401, "authError")
        r = MAIN.request("POST", "/projects/test-proj/datasets/ds/tables/auth401/insertAll",
                         {"rows": [{"json": {"n": 1}}]}, {"Authorization": "Basic dXNlcjpwYXNz"})
        self.assertGoogleError(r, 401, "authError")
        self.assertEqual(MAIN.rows(ref)["count"], 0)

    def test_insufficient_scope(self):
        tok = MAIN.token(["https://www.googleapis.com/auth/devstorage.read_only"])
        self.assertGoogleError(MAIN.insert(self.table("scope403"), [{"json": {"n": 1}}], tok), 403,
                               "insufficientPermissions")
        # insertdata is enough for insertAll but not for tables.get
        tok = MAIN.token(["https://www.googleapis.com/auth/bigquery.insertdata"])
        self.assertEqual(MAIN.insert(self.table("scope403"), [{"json": {"n": 1}}], tok).status, 200)
        r = MAIN.request("GET", "/bigquery/v2/projects/test-proj/datasets/ds/tables/scope403", token=tok)
        self.assertEqual(r.status, 403)

    def test_iam_denials_and_test_iam_permissions(self):
        ref = self.table("iam_t")
        tok = MAIN.token()
        path = "/bigquery/v2/projects/test-proj/datasets/ds/tables/iam_t"
        want = {"permissions": ["bigquery.tables.get", "bigquery.tables.updateData"]}
        r = MAIN.request("POST", path + ":testIamPermissions", want, token=tok)
        self.assertEqual((r.status, r.json), (200, want))
        MAIN.control("POST", "/iam", {"deny": ["bigquery.tables.updateData"], "table": ref})
        try:
            r = MAIN.request("POST", path + ":testIamPermissions", want, token=tok)
            self.assertEqual(r.json, {"permissions": ["bigquery.tables.get"]})
            self.assertGoogleError(MAIN.insert(ref, [{"json": {"n": 1}}], tok), 403, "accessDenied")
            self.assertEqual(MAIN.request("GET", path, token=tok).status, 200)
            # other tables are not affected; "*" denies everywhere
            self.assertEqual(MAIN.insert(self.table("iam_other"), [{"json": {"n": 1}}], tok).status, 200)
            MAIN.control("POST", "/iam", {"deny": ["bigquery.tables.get", "bigquery.datasets.get"]})
            self.assertGoogleError(MAIN.request("GET", path, token=tok), 403, "accessDenied")
            self.assertGoogleError(MAIN.request("GET", "/bigquery/v2/projects/test-proj/datasets/ds",
                                                token=tok), 403, "accessDenied")
        finally:
            MAIN.control("DELETE", "/iam")
        self.assertEqual(MAIN.insert(ref, [{"json": {"n": 1}}], tok).status, 200)
        r = MAIN.request("POST", "/bigquery/v2/projects/test-proj/datasets/ds/tables/nosuch:testIamPermissions",
                         want, token=tok)
        self.assertEqual(r.status, 404)

    def test_token_expiry_enforced(self):
        srv = SERVERS["short"]
        path = os.path.join(TMP, "short-key.json")
        run_cli("gen-key", "--dir", srv.dir, "--out", path, "--token-uri", srv.info["token_uri"])
        with open(path) as f:
            k = json.load(f)
        srv.create_table("p.d.exp", [{"name": "n", "type": "INTEGER"}])
        t0 = time.monotonic()
        r = grant(srv, sign_jwt(k["private_key"], claims_for(k), k["private_key_id"]))
        self.assertEqual(r.status, 200, r.data)
        self.assertEqual(r.json["expires_in"], 1)
        tok = r.json["access_token"]
        first = srv.insert("p.d.exp", [{"json": {"n": 1}}], tok)
        if time.monotonic() - t0 < 0.8:
            self.assertEqual(first.status, 200, first.data)
        r = wait_for(lambda: (lambda x: x if x.status == 401 else None)(srv.insert("p.d.exp", [{"json": {"n": 2}}], tok)),
                     timeout=10, interval=0.1, what="token expiry")
        e = self.assertGoogleError(r, 401, "authError")
        self.assertIn("expired", e["message"])


# ----------------------------------------------------------------------------------------------
# insertAll semantics

ALL_TYPES = [
    {"name": "s", "type": "STRING"}, {"name": "b", "type": "BYTES"}, {"name": "i", "type": "INT64"},
    {"name": "f", "type": "FLOAT64"}, {"name": "bo", "type": "BOOL"}, {"name": "ts", "type": "TIMESTAMP"},
    {"name": "d", "type": "DATE"}, {"name": "t", "type": "TIME"}, {"name": "dt", "type": "DATETIME"},
    {"name": "num", "type": "NUMERIC"}, {"name": "bn", "type": "BIGNUMERIC"}, {"name": "j", "type": "JSON"},
    {"name": "g", "type": "GEOGRAPHY"}, {"name": "r", "type": "RANGE", "rangeElementType": {"type": "DATE"}},
    {"name": "ml", "type": "STRING", "maxLength": "3"},
    {"name": "np", "type": "NUMERIC", "precision": "5", "scale": "2"},
]
BN_MAX = "578960446186580977117854925043439539266.34992332820282019728792003956564819967"
BN_OVER = "578960446186580977117854925043439539266.34992332820282019728792003956564819968"
TYPE_CASES = [
    # (column, value, valid?)
    ("s", "text", True), ("s", 12, True), ("s", True, True), ("s", {"a": 1}, False), ("s", ["a"], False),
    ("b", "aGVsbG8=", True), ("b", "aGVsbG8", True), ("b", "", True), ("b", "not base64!", False),
    ("b", "aGVsb", False), ("b", 5, False),
    ("i", 5, True), ("i", "-9223372036854775808", True), ("i", "9223372036854775807", True),
    ("i", "9223372036854775808", False), ("i", 9223372036854775808, False), ("i", 3.0, True),
    ("i", 1.5, False), ("i", "12a", False), ("i", True, False), ("i", "", False),
    ("f", 1.5, True), ("f", 3, True), ("f", "NaN", True), ("f", "Infinity", True), ("f", "-Infinity", True),
    ("f", "1e10", True), ("f", "abc", False), ("f", True, False), ("f", "1e999", False),
    ("bo", True, True), ("bo", "false", True), ("bo", "yes", False), ("bo", 1, False),
    ("ts", "2024-01-02 03:04:05.123456 UTC", True), ("ts", "2024-01-02T03:04:05Z", True),
    ("ts", "2024-01-02T03:04:05+05:30", True), ("ts", "2024-01-02", True), ("ts", 1700000000, True),
    ("ts", 1700000000.25, True), ("ts", "2024-13-01 00:00:00", False), ("ts", "yesterday", False),
    ("ts", "2024-02-30T00:00:00Z", False), ("ts", "2024-01-02 25:00:00", False), ("ts", 1e20, False),
    ("ts", "2024-01-02 03:04:05.1234567", False), ("ts", False, False),
    ("d", "2024-02-29", True), ("d", "2023-02-29", False), ("d", "2024/01/01", False), ("d", "0000-01-01", False),
    ("d", 20240101, False),
    ("t", "23:59:59.999999", True), ("t", "00:00:00", True), ("t", "24:00:00", False), ("t", "12:00", False),
    ("dt", "2024-01-02 03:04:05", True), ("dt", "2024-01-02T03:04:05.5", True), ("dt", "2024-01-02", True),
    ("dt", "2024-01-02 03:04:05Z", False), ("dt", "2024-01-32 00:00:00", False),
    ("num", "123.456", True), ("num", "99999999999999999999999999999.999999999", True), ("num", 12, True),
    ("num", "-1.0000000001", True), ("num", "100000000000000000000000000000", False), ("num", "abc", False),
    ("num", "NaN", False), ("num", "1e-5", True),
    ("bn", BN_MAX, True), ("bn", "-" + BN_MAX, True), ("bn", BN_OVER, False), ("bn", "1e39", False),
    ("bn", "0.00000000000000000000000000000000000001", True),
    ("j", '{"a": [1, 2]}', True), ("j", "not json", False), ("j", {"a": 1}, True), ("j", "12", True),
    ("g", "POINT(1 2)", True), ("g", "POLYGON((0 0, 1 0, 1 1, 0 0))", True), ("g", "POINT(200 2)", False),
    ("g", '{"type": "Point", "coordinates": [1, 2]}', True), ("g", "CIRCLE(1)", False), ("g", 5, False),
    ("g", "POINT(1 2", False),
    ("r", "[2024-01-01, 2024-02-01)", True), ("r", "[UNBOUNDED, 2024-01-01)", True),
    ("r", "[2024-02-01, 2024-01-01)", False), ("r", "2024-01-01", False), ("r", "[2024-01-01, soon)", False),
    ("ml", "abc", True), ("ml", "abcd", False),
    ("np", "999.99", True), ("np", "999.994", True), ("np", "999.995", False), ("np", "1000", False),
]


class TestInsertAll(EmuTestCase):
    def test_happy_path_gzip(self):
        ref = self.table("happy")
        rows = [{"insertId": "h%d" % i, "json": {"n": i, "s": "row %d" % i}} for i in range(3)]
        before = MAIN.stats()["bytes"]
        r = MAIN.insert(ref, rows, self.tok, gz=True, traceId="abc")
        self.assertEqual(r.status, 200, r.data)
        self.assertEqual(r.json, {"kind": "bigquery#tableDataInsertAllResponse"})
        self.assertTrue(r.header("Content-Type").startswith("application/json"))
        got = MAIN.rows(ref)
        self.assertEqual(got["count"], 3)
        self.assertEqual([x["json"] for x in got["rows"]], [x["json"] for x in rows])
        self.assertEqual([x["insert_id"] for x in got["rows"]], ["h0", "h1", "h2"])
        self.assertEqual(len({x["request_no"] for x in got["rows"]}), 1)
        after = MAIN.stats()["bytes"]
        self.assertEqual(after["gzip_requests"], before["gzip_requests"] + 1)
        self.assertGreater(after["decompressed"] - before["decompressed"], 0)

    def test_path_without_prefix(self):
        ref = self.table("noprefix")
        r = MAIN.request("POST", "/projects/test-proj/datasets/ds/tables/noprefix/insertAll",
                         {"rows": [{"json": {"n": 1}}]}, token=self.tok)
        self.assertEqual(r.status, 200, r.data)
        self.assertEqual(MAIN.rows(ref)["count"], 1)

    def test_invalid_row_stops_the_others(self):
        ref = self.table("stopped")
        rows = [{"json": {"n": 1}}, {"json": {"n": "x"}}, {"json": {"n": 3}}]
        r = MAIN.insert(ref, rows, self.tok)
        self.assertEqual(r.status, 200)
        errs = {e["index"]: e["errors"] for e in r.json["insertErrors"]}
        self.assertEqual(sorted(errs), [0, 1, 2])
        self.assertEqual(errs[0][0]["reason"], "stopped")
        self.assertEqual(errs[2][0]["reason"], "stopped")
        self.assertEqual(errs[1][0]["reason"], "invalid")
        self.assertEqual(errs[1][0]["location"], "n")
        self.assertTrue(errs[1][0]["message"])
        self.assertEqual(MAIN.rows(ref)["count"], 0)

    def test_skip_invalid_rows(self):
        ref = self.table("skip")
        rows = [{"json": {"n": 1}}, {"json": {"n": "x"}}, {"json": {"s": "no n"}}, {"json": {"n": 4}}]
        r = MAIN.insert(ref, rows, self.tok, skipInvalidRows=True)
        errs = {e["index"]: e["errors"] for e in r.json["insertErrors"]}
        self.assertEqual(sorted(errs), [1, 2])
        self.assertEqual(errs[2][0]["location"], "n")
        self.assertIn("Missing required field", errs[2][0]["message"])
        self.assertEqual([x["json"]["n"] for x in MAIN.rows(ref)["rows"]], [1, 4])

    def test_unknown_values(self):
        ref = self.table("unknown")
        r = MAIN.insert(ref, [{"json": {"n": 1, "extra": 2}}], self.tok)
        e = r.json["insertErrors"][0]["errors"][0]
        self.assertEqual((e["reason"], e["location"]), ("invalid", "extra"))
        self.assertIn("no such field", e["message"])
        r = MAIN.insert(ref, [{"json": {"n": 1, "extra": 2}}], self.tok, ignoreUnknownValues=True)
        self.assertNotIn("insertErrors", r.json)
        self.assertEqual(MAIN.rows(ref)["rows"][0]["json"], {"n": 1})

    def test_required_null_and_case_insensitive_names(self):
        ref = self.table("required")
        r = MAIN.insert(ref, [{"json": {"n": None}}, {"json": {"N": 5, "S": "x"}}], self.tok, skipInvalidRows=True)
        errs = {e["index"]: e["errors"] for e in r.json["insertErrors"]}
        self.assertEqual(list(errs), [0])
        self.assertEqual(MAIN.rows(ref)["count"], 1)

    def test_unicode_and_unpaired_surrogate(self):
        ref = self.table("unicode")
        body = b'{"skipInvalidRows": true, "rows": [{"json": {"n": 1, "s": "caf\\u00e9 \xe2\x9c\x93"}},' \
               b' {"json": {"n": 2, "s": "bad \\ud800"}}]}'
        r = MAIN.request("POST", "/bigquery/v2/projects/test-proj/datasets/ds/tables/unicode/insertAll", body,
                         {"Content-Type": "application/json"}, token=self.tok)
        self.assertEqual([e["index"] for e in r.json["insertErrors"]], [1])
        self.assertEqual(MAIN.rows(ref)["rows"][0]["json"]["s"], "caf\u00e9 \u2713")

    def test_type_checks(self):
        ref = self.table("types", ALL_TYPES)
        rows = [{"json": {col: val}} for col, val, _ in TYPE_CASES]
        r = MAIN.insert(ref, rows, self.tok, skipInvalidRows=True)
        self.assertEqual(r.status, 200, r.data)
        bad = {e["index"]: e["errors"][0] for e in r.json.get("insertErrors", [])}
        for i, (col, val, ok) in enumerate(TYPE_CASES):
            with self.subTest(column=col, value=val):
                if ok:
                    self.assertNotIn(i, bad, bad.get(i))
                else:
                    self.assertIn(i, bad)
                    self.assertEqual(bad[i]["reason"], "invalid")
                    self.assertEqual(bad[i]["location"], col)
        self.assertEqual(MAIN.rows(ref)["count"], sum(1 for c in TYPE_CASES if c[2]))

    def test_repeated_and_record(self):
        schema = [
            {"name": "tags", "type": "STRING", "mode": "REPEATED"},
            {"name": "rec", "type": "RECORD", "fields": [
                {"name": "x", "type": "INTEGER"}, {"name": "req", "type": "STRING", "mode": "REQUIRED"},
                {"name": "inner", "type": "STRUCT", "fields": [{"name": "z", "type": "DATE"}]}]},
            {"name": "recs", "type": "RECORD", "mode": "REPEATED", "fields": [{"name": "k", "type": "STRING"}]},
        ]
        ref = self.table("nested", schema)
        cases = [
            ({"tags": ["a", "b"], "rec": {"x": 1, "req": "r", "inner": {"z": "2024-01-01"}}}, None),
            ({"tags": [], "recs": [{"k": "a"}, {"k": "b"}]}, None),
            ({"tags": None}, None),
            ({"tags": "a"}, "tags"),
            ({"tags": ["a", None]}, "tags"),
            ({"tags": [1, {"a": 1}]}, "tags"),
            ({"rec": {"x": "one", "req": "r"}}, "rec.x"),
            ({"rec": {"x": 1}}, "rec.req"),
            ({"rec": {"req": "r", "inner": {"z": "bad"}}}, "rec.inner.z"),
            ({"rec": "flat"}, "rec"),
            ({"rec": [{"req": "r"}]}, "rec"),
            ({"recs": [{"k": "a", "q": 1}]}, "recs.q"),
            ({"recs": {"k": "a"}}, "recs"),
        ]
        r = MAIN.insert(ref, [{"json": row} for row, _ in cases], self.tok, skipInvalidRows=True)
        bad = {e["index"]: e["errors"][0] for e in r.json.get("insertErrors", [])}
        for i, (row, loc) in enumerate(cases):
            with self.subTest(row=row):
                if loc is None:
                    self.assertNotIn(i, bad, bad.get(i))
                else:
                    self.assertEqual(bad[i]["reason"], "invalid")
                    self.assertEqual(bad[i]["location"], loc)
        # nested unknown values are dropped with ignoreUnknownValues
        r = MAIN.insert(ref, [{"json": {"rec": {"req": "r", "zz": 1}, "recs": [{"k": "a", "q": 1}]}}],
                        self.tok, ignoreUnknownValues=True)
        self.assertNotIn("insertErrors", r.json)
        self.assertEqual(MAIN.rows(ref)["rows"][-1]["json"], {"rec": {"req": "r"}, "recs": [{"k": "a"}]})

    def test_insert_id_dedup(self):
        ref = self.table("dedup")
        before = MAIN.stats()["rows"]["deduplicated"]
        MAIN.insert(ref, [{"insertId": "a", "json": {"n": 1}}, {"insertId": "b", "json": {"n": 2}}], self.tok)
        r = MAIN.insert(ref, [{"insertId": "a", "json": {"n": 1}}, {"insertId": "c", "json": {"n": 3}}], self.tok)
        self.assertNotIn("insertErrors", r.json)
        self.assertEqual(sorted(x["insert_id"] for x in MAIN.rows(ref)["rows"]), ["a", "b", "c"])
        st = MAIN.stats()
        self.assertEqual(st["rows"]["deduplicated"], before + 1)
        self.assertEqual(st["tables"][ref]["deduplicated"], 1)
        # rows without insertId are never de-duplicated
        MAIN.insert(ref, [{"json": {"n": 9}}, {"json": {"n": 9}}], self.tok)
        self.assertEqual(MAIN.rows(ref)["count"], 5)

    def test_dedup_window_expires(self):
        srv = SERVERS["short"]
        srv.create_table("p.d.window", [{"name": "n", "type": "INTEGER"}])
        tok = srv.control("POST", "/token", {"lifetime": 60})["access_token"]
        row = [{"insertId": "same", "json": {"n": 1}}]
        srv.insert("p.d.window", row, tok)
        srv.insert("p.d.window", row, tok)
        counts = [srv.rows("p.d.window")["count"]]
        self.assertIn(counts[0], (1, 2))          # 2 only if the 1 s window passed in between
        wait_for(lambda: srv.insert("p.d.window", row, tok) and srv.rows("p.d.window")["count"] > counts[0],
                 timeout=10, interval=0.2, what="dedup window to pass")

    def test_missing_table(self):
        r = MAIN.insert("test-proj.ds.does_not_exist", [{"json": {"n": 1}}], self.tok)
        e = self.assertGoogleError(r, 404, "notFound")
        self.assertEqual(e["status"], "NOT_FOUND")
        self.assertIn("test-proj:ds.does_not_exist", e["message"])

    def test_oversize_request(self):
        ref = self.table("oversize")
        big = "x" * 1000
        rows = [{"json": {"n": i, "s": big}} for i in range(10600)]      # ~11 MB of JSON
        for gz in (True, False):
            with self.subTest(gzip=gz):
                r = MAIN.insert(ref, rows, self.tok, gz=gz)
                e = self.assertGoogleError(r, 400, "invalid")
                self.assertEqual(e["message"], "Request payload size exceeds the limit: 10485760 bytes.")
        self.assertEqual(MAIN.rows(ref)["count"], 0)

    def test_too_many_rows(self):
        ref = self.table("manyrows", [{"name": "n", "type": "INTEGER"}])
        e = self.assertGoogleError(MAIN.insert(ref, [{"json": {}}] * 50001, self.tok), 400, "invalid")
        self.assertIn("50000", e["message"])
        self.assertEqual(MAIN.insert(ref, [{"json": {}}] * 50000, self.tok).status, 200)

    def test_malformed_requests(self):
        ref = self.table("malformed")
        path = "/bigquery/v2/projects/test-proj/datasets/ds/tables/malformed/insertAll"
        ct = {"Content-Type": "application/json"}
        self.assertGoogleError(MAIN.request("POST", path, b'{"rows": [', ct, token=self.tok), 400, "parseError")
        self.assertGoogleError(MAIN.request("POST", path, b'{"rows": [{"json": {"n": NaN}}]}', ct, token=self.tok),
                               400, "parseError")
        self.assertGoogleError(MAIN.request("POST", path, b'\xff\xfe', ct, token=self.tok), 400, "parseError")
        self.assertGoogleError(MAIN.request("POST", path, b'not gzip', dict(ct, **{"Content-Encoding": "gzip"}),
                                            token=self.tok), 400, "parseError")
        self.assertGoogleError(MAIN.request("POST", path, b'{"rows":[{"json":{"n":1}}]}',
                                            {"Content-Type": "application/x-www-form-urlencoded"}, token=self.tok),
                               400, "invalid")
        for body in ({"rows": []}, {}, {"rows": [{"json": {"n": 1}}], "bogus": 1}, {"rows": [{"json": [1]}]},
                     {"rows": [{"json": {"n": 1}, "extra": 1}]}, {"rows": [{"json": {"n": 1}}], "skipInvalidRows": "yes"},
                     [1, 2]):
            with self.subTest(body=body):
                self.assertGoogleError(MAIN.request("POST", path, body, token=self.tok), 400, "invalid")
        self.assertIn("No rows present", MAIN.request("POST", path, {"rows": []}, token=self.tok).json["error"]["message"])
        self.assertEqual(MAIN.rows(ref)["count"], 0)

    def test_template_suffix_and_partition_decorator(self):
        ref = self.table("tmpl")
        r = MAIN.insert(ref, [{"json": {"n": 1}}], self.tok, templateSuffix="_20240101")
        self.assertEqual(r.status, 200, r.data)
        self.assertEqual(MAIN.rows(ref + "_20240101")["count"], 1)
        self.assertEqual(MAIN.rows(ref)["count"], 0)
        r = MAIN.request("POST", "/bigquery/v2/projects/test-proj/datasets/ds/tables/tmpl%2420240102/insertAll",
                         {"rows": [{"json": {"n": 2}}]}, token=self.tok)
        self.assertEqual(r.status, 200, r.data)
        self.assertEqual(MAIN.rows(ref)["count"], 1)

    def test_keepalive_and_gzip_response(self):
        ref = self.table("keepalive")
        self.assertTrue(self.tok)                 # fetch the token before counting connections
        before = MAIN.stats()["connections"]
        c = MAIN.conn()
        try:
            for i in range(5):
                r = MAIN.request("POST", "/bigquery/v2/projects/test-proj/datasets/ds/tables/keepalive/insertAll",
                                 {"rows": [{"json": {"n": i}}]}, token=self.tok, conn=c)
                self.assertEqual(r.status, 200)
                self.assertIsNotNone(r.header("Content-Length"))
                self.assertNotEqual((r.header("Connection") or "").lower(), "close")
            r = MAIN.request("GET", "/bigquery/v2/projects/test-proj/datasets/ds/tables/keepalive",
                             headers={"Accept-Encoding": "gzip"}, token=self.tok, conn=c)
            self.assertEqual(r.header("Content-Encoding"), "gzip")
            self.assertEqual(json.loads(gzip.decompress(r.data))["tableReference"]["tableId"], "keepalive")
        finally:
            c.close()
        self.assertEqual(MAIN.rows(ref)["count"], 5)
        self.assertEqual(MAIN.stats()["connections"], before + 3)    # ours, the rows call, the stats call

    def test_length_required_and_chunked(self):
        with socket.create_connection(("127.0.0.1", MAIN.port), timeout=5) as raw:
            with MAIN.context().wrap_socket(raw, server_hostname="127.0.0.1") as s:
                s.sendall(b"POST /bigquery/v2/projects/p/datasets/d/tables/t/insertAll HTTP/1.1\r\n"
                          b"Host: x\r\nContent-Type: application/json\r\n\r\n")
                self.assertTrue(s.recv(100).startswith(b"HTTP/1.1 411"))
        ref = self.table("chunked")
        body = json.dumps({"rows": [{"json": {"n": 7}}]}).encode()
        c = MAIN.conn()
        c.putrequest("POST", "/bigquery/v2/projects/test-proj/datasets/ds/tables/chunked/insertAll")
        c.putheader("Authorization", "Bearer " + self.tok)
        c.putheader("Content-Type", "application/json")
        c.putheader("Transfer-Encoding", "chunked")
        c.endheaders()
        c.send(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        r = c.getresponse()
        r.read()
        c.close()
        self.assertEqual(r.status, 200)
        self.assertEqual(MAIN.rows(ref)["count"], 1)


# ----------------------------------------------------------------------------------------------
# faults

class TestFaults(EmuTestCase):
    def log_for(self, ref, since):
        return [e for e in MAIN.stats()["insert_all_log"] if e["table"] == ref and e["t"] >= since]

    def test_counted_429_with_retry_after(self):
        ref = self.table("f429")
        t0 = time.time()
        MAIN.control("POST", "/faults", {"status": 429, "count": 3, "retry_after": 2})
        statuses = []
        for _ in range(4):
            r = MAIN.insert(ref, [{"json": {"n": 1}}], self.tok)
            statuses.append(r.status)
            if r.status == 429:
                e = self.assertGoogleError(r, 429, "rateLimitExceeded")
                self.assertEqual(e["status"], "RESOURCE_EXHAUSTED")
                self.assertEqual(r.header("Retry-After"), "2")
        self.assertEqual(statuses, [429, 429, 429, 200])
        log = self.log_for(ref, t0)
        self.assertEqual([e["status"] for e in log], [429, 429, 429, 200])
        self.assertEqual(MAIN.rows(ref)["count"], 1)
        self.assertEqual(MAIN.control("GET", "/faults")["faults"], [])

    def test_403_quota_and_fifo_order(self):
        ref = self.table("f403")
        MAIN.control("POST", "/faults", [{"status": 403, "reason": "quotaExceeded"}, {"status": 503},
                                         {"status": 500, "reason": "internalError", "message": "boom"},
                                         {"status": 400}])
        e = self.assertGoogleError(MAIN.insert(ref, [{"json": {"n": 1}}], self.tok), 403, "quotaExceeded")
        self.assertEqual(e["status"], "PERMISSION_DENIED")
        self.assertGoogleError(MAIN.insert(ref, [{"json": {"n": 1}}], self.tok), 503, "backendError")
        e = self.assertGoogleError(MAIN.insert(ref, [{"json": {"n": 1}}], self.tok), 500, "internalError")
        self.assertEqual(e["message"], "boom")
        self.assertGoogleError(MAIN.insert(ref, [{"json": {"n": 1}}], self.tok), 400, "invalid")
        self.assertEqual(MAIN.insert(ref, [{"json": {"n": 1}}], self.tok).status, 200)

    def test_401_fault_with_valid_token(self):
        ref = self.table("f401")
        MAIN.control("POST", "/faults", {"status": 401})
        self.assertGoogleError(MAIN.insert(ref, [{"json": {"n": 1}}], self.tok), 401, "authError")
        self.assertEqual(MAIN.insert(ref, [{"json": {"n": 1}}], self.tok).status, 200)

    def test_latency(self):
        ref = self.table("flat")
        MAIN.control("POST", "/faults", {"latency_ms": 400, "count": 1})
        t0 = time.monotonic()
        self.assertEqual(MAIN.insert(ref, [{"json": {"n": 1}}], self.tok).status, 200)
        self.assertGreaterEqual(time.monotonic() - t0, 0.4)
        MAIN.control("POST", "/faults", {"latency_ms": 150, "for_s": 30})
        t0 = time.monotonic()
        MAIN.insert(ref, [{"json": {"n": 1}}], self.tok)
        MAIN.insert(ref, [{"json": {"n": 1}}], self.tok)
        self.assertGreaterEqual(time.monotonic() - t0, 0.3)

    def test_drop_close_and_reset(self):
        ref = self.table("fdrop")
        dropped = MAIN.stats()["requests"]["insertAll"].get("dropped", 0)
        MAIN.control("POST", "/faults", {"drop": 2})
        for _ in range(2):
            with self.assertRaises((http.client.RemoteDisconnected, ConnectionError, ssl.SSLError)):
                MAIN.insert(ref, [{"json": {"n": 1}}], self.tok)
        self.assertEqual(MAIN.insert(ref, [{"json": {"n": 2}}], self.tok).status, 200)
        self.assertEqual([r["json"]["n"] for r in MAIN.rows(ref)["rows"]], [2])
        MAIN.control("POST", "/faults", {"drop": 1, "mode": "reset"})
        with self.assertRaises((ConnectionError, http.client.RemoteDisconnected, ssl.SSLError)):
            MAIN.insert(ref, [{"json": {"n": 3}}], self.tok)
        self.assertEqual(MAIN.stats()["requests"]["insertAll"].get("dropped"), dropped + 3)

    def test_drop_after_commit_then_retry_dedups(self):
        ref = self.table("fcommit")
        rows = [{"insertId": "k1", "json": {"n": 1}}, {"insertId": "k2", "json": {"n": 2}}]
        MAIN.control("POST", "/faults", {"drop": 1, "after_commit": True})
        with self.assertRaises((http.client.RemoteDisconnected, ConnectionError, ssl.SSLError)):
            MAIN.insert(ref, rows, self.tok)
        self.assertEqual(MAIN.rows(ref)["count"], 2)           # stored although the answer was lost
        self.assertEqual(MAIN.insert(ref, rows, self.tok).status, 200)
        self.assertEqual(MAIN.rows(ref)["count"], 2)           # the retry was de-duplicated

    def test_truncated_answer(self):
        ref = self.table("ftrunc")
        MAIN.control("POST", "/faults", {"truncate": 1, "truncate_at": 5})
        with self.assertRaises(http.client.IncompleteRead):
            MAIN.insert(ref, [{"json": {"n": 1}}], self.tok)
        self.assertEqual(MAIN.rows(ref)["count"], 1)
        MAIN.control("POST", "/faults", {"truncate": 1})          # default: all but the last byte
        with self.assertRaises(http.client.IncompleteRead):
            MAIN.insert(ref, [{"json": {"n": 2}}], self.tok)
        self.assertEqual(MAIN.rows(ref)["count"], 2)

    def test_reject_pattern(self):
        ref = self.table("freject")
        MAIN.control("POST", "/faults", {"reject_pattern": "poison", "message": "bad row"})
        rows = [{"json": {"n": 1}}, {"json": {"n": 2, "s": "poison pill"}}, {"json": {"n": 3}}]
        r = MAIN.insert(ref, rows, self.tok)
        errs = {e["index"]: e["errors"][0] for e in r.json["insertErrors"]}
        self.assertEqual((errs[1]["reason"], errs[1]["message"]), ("invalid", "bad row"))
        self.assertEqual((errs[0]["reason"], errs[2]["reason"]), ("stopped", "stopped"))
        self.assertEqual(MAIN.rows(ref)["count"], 0)
        r = MAIN.insert(ref, rows, self.tok, skipInvalidRows=True)
        self.assertEqual([e["index"] for e in r.json["insertErrors"]], [1])
        self.assertEqual(MAIN.rows(ref)["count"], 2)
        MAIN.control("DELETE", "/faults")
        MAIN.control("POST", "/faults", {"reject_pattern": "poison", "reason": "backendError"})
        r = MAIN.insert(ref, rows, self.tok)
        self.assertEqual([(e["index"], e["errors"][0]["reason"]) for e in r.json["insertErrors"]],
                         [(1, "backendError")])
        self.assertEqual(MAIN.rows(ref)["count"], 4)

    def test_down_and_up(self):
        ref = self.table("fdown")
        MAIN.control("POST", "/faults", {"down": True})
        for _ in range(2):
            with self.assertRaises((http.client.RemoteDisconnected, ConnectionError, ssl.SSLError)):
                MAIN.insert(ref, [{"json": {"n": 1}}], self.tok)
        with self.assertRaises((http.client.RemoteDisconnected, ConnectionError, ssl.SSLError)):
            grant(MAIN, "x.y.z")
        self.assertEqual(len(MAIN.control("GET", "/faults")["faults"]), 1)   # control API still answers
        MAIN.control("POST", "/faults", {"down": False})
        self.assertEqual(MAIN.insert(ref, [{"json": {"n": 1}}], self.tok).status, 200)

    def test_token_path_and_table_filter(self):
        MAIN.control("POST", "/faults", {"status": 503, "path": "token"})
        r = grant(MAIN, sign_jwt(MAIN.key["private_key"], claims_for(MAIN.key), MAIN.key["private_key_id"]))
        self.assertEqual((r.status, r.json["error"]), (503, "temporarily_unavailable"))
        a, b = self.table("ffilter_a"), self.table("ffilter_b")
        MAIN.control("POST", "/faults", {"status": 500, "table": a, "count": None})
        self.assertEqual(MAIN.insert(b, [{"json": {"n": 1}}], self.tok).status, 200)
        self.assertEqual(MAIN.insert(a, [{"json": {"n": 1}}], self.tok).status, 500)
        self.assertEqual(MAIN.insert(a, [{"json": {"n": 1}}], self.tok).status, 500)
        MAIN.control("DELETE", "/faults")
        self.assertEqual(MAIN.insert(a, [{"json": {"n": 1}}], self.tok).status, 200)

    def test_after_and_for_s(self):
        ref = self.table("fafter")
        MAIN.control("POST", "/faults", {"status": 429, "after": 2, "count": 1})
        got = [MAIN.insert(ref, [{"json": {"n": 1}}], self.tok).status for _ in range(4)]
        self.assertEqual(got, [200, 200, 429, 200])
        MAIN.control("POST", "/faults", {"status": 503, "for_s": 2.0})
        self.assertEqual(MAIN.insert(ref, [{"json": {"n": 1}}], self.tok).status, 503)
        wait_for(lambda: MAIN.insert(ref, [{"json": {"n": 1}}], self.tok).status == 200, timeout=10,
                 interval=0.1, what="for_s fault to end")

    def test_bad_fault_specs(self):
        for spec in ({}, {"status": 200}, {"status": 429, "drop": 1}, {"latency_ms": -1},
                     {"reject_pattern": "("}, {"status": 429, "path": "nowhere"}, {"status": 429, "typo": 1}):
            with self.subTest(spec=spec):
                r = MAIN.request("POST", "/_emu/faults", spec)
                self.assertEqual(r.status, 400, r.data)

    def test_fault_cli_stats_and_reset(self):
        ref = self.table("fcli")
        run_cli("fault", "--port", str(MAIN.port), "--ca", os.path.join(TLS, "ca.pem"), "--status", "503",
                "--count", "2", "--reason", "backendError")
        self.assertEqual(MAIN.insert(ref, [{"json": {"n": 1}}], self.tok).status, 503)
        out = json.loads(run_cli("fault", "--ready-file", MAIN.ready, "--list").stdout)
        self.assertEqual(out["faults"][0]["remaining"], 1)
        st = json.loads(run_cli("stats", "--ready-file", MAIN.ready).stdout)
        self.assertGreaterEqual(st["requests"]["insertAll"]["503"], 1)
        run_cli("reset", "--ready-file", MAIN.ready)
        self.assertEqual(MAIN.control("GET", "/faults")["faults"], [])
        self.assertEqual(MAIN.stats()["rows"]["received"], 0)
        self.assertEqual(MAIN.insert(ref, [{"json": {"n": 1}}], self.tok).status, 200)


# ----------------------------------------------------------------------------------------------
# metadata server, tables, CLI, fast mode, restart

class TestMetadata(EmuTestCase):
    def get(self, path, headers=None):
        c = http.client.HTTPConnection("127.0.0.1", MAIN.info["metadata_port"], timeout=10)
        try:
            c.request("GET", path, headers=headers or {})
            r = c.getresponse()
            return Resp(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
        finally:
            c.close()

    def test_metadata_server(self):
        tok_path = "/computeMetadata/v1/instance/service-accounts/default/token"
        flavor = {"Metadata-Flavor": "Google"}
        r = self.get("/")
        self.assertEqual((r.status, r.header("Metadata-Flavor")), (200, "Google"))
        r = self.get(tok_path)
        self.assertEqual((r.status, r.header("Metadata-Flavor")), (403, "Google"))
        r = self.get(tok_path, dict(flavor, **{"X-Forwarded-For": "1.2.3.4"}))
        self.assertEqual(r.status, 403)
        r = self.get(tok_path + "?scopes=" + SCOPE_BQ, flavor)
        self.assertEqual((r.status, r.header("Metadata-Flavor")), (200, "Google"))
        tok = r.json
        self.assertEqual((tok["token_type"], tok["expires_in"]), ("Bearer", 3600))
        self.assertEqual(MAIN.insert(self.table("meta"), [{"json": {"n": 1}}], tok["access_token"]).status, 200)
        r = self.get("/computeMetadata/v1/project/project-id", flavor)
        self.assertEqual(r.data, b"meta-proj")
        r = self.get("/computeMetadata/v1/instance/service-accounts/default/?recursive=true", flavor)
        self.assertIn("email", r.json)
        self.assertEqual(MAIN.stats()["token_grants"].get("metadata", 0) >= 1, True)


class TestTables(EmuTestCase):
    base = "/bigquery/v2/projects/test-proj/datasets/tds/tables"

    def test_insert_get_conflict_patch_delete(self):
        body = {"tableReference": {"projectId": "test-proj", "datasetId": "tds", "tableId": "t1"},
                "schema": {"fields": [{"name": "a", "type": "INT64", "mode": "REQUIRED"},
                                      {"name": "r", "type": "STRUCT", "fields": [{"name": "f", "type": "FLOAT64"}]},
                                      {"name": "b", "type": "BOOL"}]}}
        MAIN.request("DELETE", self.base + "/t1", token=self.tok)
        r = MAIN.request("POST", self.base, body, token=self.tok)
        self.assertEqual(r.status, 200, r.data)
        r = MAIN.request("GET", self.base + "/t1", token=self.tok)
        self.assertEqual(r.status, 200)
        t = r.json
        self.assertEqual(t["tableReference"], body["tableReference"])
        self.assertEqual(t["kind"], "bigquery#table")
        self.assertEqual([(f["name"], f["type"], f["mode"]) for f in t["schema"]["fields"]],
                         [("a", "INTEGER", "REQUIRED"), ("r", "RECORD", "NULLABLE"), ("b", "BOOLEAN", "NULLABLE")])
        self.assertEqual(t["schema"]["fields"][1]["fields"][0]["type"], "FLOAT")
        e = self.assertGoogleError(MAIN.request("POST", self.base, body, token=self.tok), 409, "duplicate")
        self.assertEqual(e["status"], "ALREADY_EXISTS")
        r = MAIN.request("GET", self.base, token=self.tok)
        self.assertIn("t1", [x["tableReference"]["tableId"] for x in r.json["tables"]])
        wider = {"schema": {"fields": body["schema"]["fields"] + [{"name": "c", "type": "STRING"}]}}
        r = MAIN.request("PATCH", self.base + "/t1", wider, token=self.tok)
        self.assertEqual(r.status, 200, r.data)
        self.assertEqual(MAIN.insert("test-proj.tds.t1", [{"json": {"a": 1, "c": "new"}}], self.tok).json,
                         {"kind": "bigquery#tableDataInsertAllResponse"})
        self.assertGoogleError(MAIN.request("PATCH", self.base + "/t1", {"schema": {"fields": [
            {"name": "a", "type": "INTEGER"}]}}, token=self.tok), 400, "invalid")
        self.assertEqual(MAIN.request("DELETE", self.base + "/t1", token=self.tok).status, 204)
        self.assertGoogleError(MAIN.request("GET", self.base + "/t1", token=self.tok), 404, "notFound")

    def test_bad_table_definitions(self):
        for schema in ([{"name": "a", "type": "WHATEVER"}], [{"name": "a", "type": "RECORD"}],
                       [{"name": "a", "type": "STRING"}, {"name": "A", "type": "STRING"}],
                       [{"name": "a", "type": "STRING", "mode": "SOMETIMES"}]):
            body = {"tableReference": {"tableId": "bad"}, "schema": {"fields": schema}}
            with self.subTest(schema=schema):
                self.assertGoogleError(MAIN.request("POST", self.base, body, token=self.tok), 400, "invalid")
        self.assertGoogleError(MAIN.request("POST", self.base, {"schema": {}}, token=self.tok), 400, "invalid")

    def test_datasets_are_implicit(self):
        r = MAIN.request("GET", "/bigquery/v2/projects/test-proj/datasets/anything", token=self.tok)
        self.assertEqual(r.json["datasetReference"]["datasetId"], "anything")
        body = {"datasetReference": {"projectId": "test-proj", "datasetId": "newds"}}
        self.assertEqual(MAIN.request("POST", "/bigquery/v2/projects/test-proj/datasets", body, token=self.tok).status, 200)
        self.assertGoogleError(MAIN.request("POST", "/bigquery/v2/projects/test-proj/datasets", body, token=self.tok),
                               409, "duplicate")


class TestCLI(EmuTestCase):
    def test_help(self):
        out = run_cli("--help").stdout
        for cmd in ("serve", "gen-tls", "gen-key", "gen-user", "rows", "fault", "create-table"):
            self.assertIn(cmd, out)
        self.assertIn("--ready-file", run_cli("serve", "--help").stdout)

    def test_create_table_while_serving_and_rows_command(self):
        schema_path = os.path.join(TMP, "schema.json")
        with open(schema_path, "w") as f:
            json.dump({"fields": [{"name": "msg", "type": "STRING", "mode": "REQUIRED"}]}, f)
        run_cli("create-table", "--dir", MAIN.dir, "test-proj.cli.events", "--schema", schema_path)
        p = run_cli("create-table", "--dir", MAIN.dir, "test-proj.cli.events", "--schema", schema_path, check=False)
        self.assertNotEqual(p.returncode, 0)
        r = MAIN.insert("test-proj.cli.events", [{"insertId": "i1", "json": {"msg": "hello"}},
                                                 {"json": {"msg": "world"}}], self.tok)
        self.assertEqual(r.json, {"kind": "bigquery#tableDataInsertAllResponse"})
        self.assertEqual(run_cli("rows", "--dir", MAIN.dir, "--table", "test-proj.cli.events", "--count").stdout.strip(), "2")
        rep = json.loads(run_cli("rows", "--dir", MAIN.dir, "--table", "test-proj.cli.events", "--json").stdout)
        self.assertEqual([x["json"]["msg"] for x in rep["rows"]], ["hello", "world"])
        self.assertEqual(rep["rows"][0]["insert_id"], "i1")
        self.assertEqual(rep, MAIN.rows("test-proj.cli.events"))
        text = run_cli("rows", "--dir", MAIN.dir, "--table", "test-proj.cli.events").stdout.splitlines()
        self.assertEqual(len(text), 2)
        self.assertIn('{"msg":"hello"}', text[0])
        self.assertIn("test-proj.cli.events", run_cli("rows", "--dir", MAIN.dir, "--count").stdout)
        bad = os.path.join(TMP, "bad-schema.json")
        with open(bad, "w") as f:
            json.dump([{"name": "x", "type": "NOPE"}], f)
        self.assertNotEqual(run_cli("create-table", "--dir", MAIN.dir, "a.b.c", "--schema", bad,
                                    check=False).returncode, 0)


class TestFastAndRestart(EmuTestCase):
    def test_fast_mode_counts_only(self):
        srv = SERVERS["fast"]
        srv.create_table("p.d.fast", [{"name": "n", "type": "INTEGER"}])
        tok = srv.token()
        r = srv.insert("p.d.fast", [{"json": {"n": "not checked"}}] * 500, tok, gz=True)
        self.assertEqual(r.json, {"kind": "bigquery#tableDataInsertAllResponse"})
        self.assertEqual(srv.insert("p.d.fast", [{"json": {"n": 1}}], "ya29.bad").status, 401)
        self.assertEqual(srv.insert("p.d.nope", [{"json": {"n": 1}}], tok).status, 404)
        rep = srv.rows("p.d.fast")
        self.assertEqual((rep["count"], rep["fast_rows"], rep["rows"]), (0, 500, []))
        self.assertEqual(run_cli("rows", "--dir", srv.dir, "--table", "p.d.fast", "--count").stdout.strip(), "500")
        self.assertEqual(srv.stats()["rows"]["stored"], 500)

    def test_restart_keeps_rows_and_dedup_and_cleans_up(self):
        d = os.path.join(TMP, "restart")
        schemas = os.path.join(TMP, "schemas")
        os.makedirs(schemas)
        with open(os.path.join(schemas, "p.d.r.json"), "w") as f:
            json.dump([{"name": "n", "type": "INTEGER"}], f)
        srv = Server("restart", "--dedup-window", "inf", "--schema-dir", schemas, data_dir=d).start().wait_ready()
        try:
            self.assertEqual(srv.request("GET", "/bigquery/v2/projects/p/datasets/d/tables/r",
                                         token=srv.token()).json["schema"]["fields"][0]["type"], "INTEGER")
            srv.insert("p.d.r", [{"insertId": "once", "json": {"n": 1}}], srv.token())
            self.assertEqual(srv.stop(), 0)
            self.assertFalse(os.path.exists(srv.ready))
            srv.start().wait_ready()
            r = srv.insert("p.d.r", [{"insertId": "once", "json": {"n": 1}}], srv.token())
            self.assertEqual(r.status, 200)
            self.assertEqual(srv.rows("p.d.r")["count"], 1)
            self.assertEqual(srv.stats()["rows"]["deduplicated"], 1)
        finally:
            srv.stop()


if __name__ == "__main__":
    unittest.main()
