"""Credentials: service-account keys, authorized_user files, JWT checks and
the access tokens every API of the emulator accepts.

Key material lives under the data directory so that keys made by
`bqemu.py gen-key` while a server runs are picked up without a restart:

  keys/<private_key_id>.pem    public key of a generated service account
  keys/<private_key_id>.json   {client_email, project_id, token_uri, ...}
  users/<sha256 of refresh token>.json
                               {client_id, client_secret, account, ...}

Access tokens are random strings kept in memory with their expiry (monotonic
clock), principal and scopes; they do not survive a restart of the emulator,
just as a client must cope with a token the service stops accepting.

JWT rules follow Google's token endpoint for the jwt-bearer grant: RS256 over
base64url(header) "." base64url(claims) without padding, iss = client email,
aud = the token URI, iat/exp present, exp - iat <= 3600, not expired, iat no
more than 60 s in the future, and a non-empty scope claim.
"""

import base64
import binascii
import hashlib
import json
import os
import re
import secrets
import threading
import time
import urllib.parse

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
SCOPE_BIGQUERY = "https://www.googleapis.com/auth/bigquery"
SCOPE_INSERTDATA = "https://www.googleapis.com/auth/bigquery.insertdata"
SCOPE_CLOUD = "https://www.googleapis.com/auth/cloud-platform"
# Scopes that allow tabledata.insertAll, and those that allow table metadata calls.
INSERT_SCOPES = frozenset([SCOPE_BIGQUERY, SCOPE_INSERTDATA, SCOPE_CLOUD])
TABLE_SCOPES = frozenset([SCOPE_BIGQUERY, SCOPE_CLOUD])
# Audiences accepted for self-signed JWTs sent directly as bearer tokens (AIP-4111).
SELF_SIGNED_AUDIENCES = ("https://bigquery.googleapis.com/", "https://bigquerystorage.googleapis.com/")

MAX_LIFETIME = 3600
CLOCK_SKEW = 60
TIMEFRAME_MSG = ("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable "
                 "timeframe. Check your iat and exp values in the JWT claim.")


class AuthError(Exception):
    """An OAuth error: `error` code, description, HTTP status."""

    def __init__(self, error, description, status=400):
        super().__init__(description)
        self.error, self.description, self.status = error, description, status

    def body(self):
        return {"error": self.error, "error_description": self.description}


_B64URL_RE = re.compile(r"^[A-Za-z0-9_-]*$")


def b64url_encode(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(seg, what):
    """Strict base64url without padding, as RFC 7515 requires."""
    if not _B64URL_RE.match(seg) or len(seg) % 4 == 1:
        raise AuthError("invalid_grant", "Invalid JWT: the %s segment is not unpadded base64url." % what)
    try:
        return base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4))
    except (binascii.Error, ValueError):
        raise AuthError("invalid_grant", "Invalid JWT: the %s segment is not base64url." % what)


# ----------------------------------------------------------------------------------------------
# Key and user registries

class KeyRegistry:
    """Public keys of the service accounts this emulator trusts (files under keys/)."""

    def __init__(self, data_dir):
        self.dir = os.path.join(data_dir, "keys")
        self._cache = {}
        self._lock = threading.Lock()

    def _load(self, kid):
        if not re.match(r"^[A-Za-z0-9_-]{1,128}$", kid or ""):
            return None
        pem_path = os.path.join(self.dir, kid + ".pem")
        try:
            with open(pem_path, "rb") as f:
                pub = serialization.load_pem_public_key(f.read())
            with open(os.path.join(self.dir, kid + ".json")) as f:
                meta = json.load(f)
        except (OSError, ValueError):
            return None
        return pub, meta

    def by_kid(self, kid):
        with self._lock:
            hit = self._cache.get(kid)
        if hit is None:
            hit = self._load(kid)
            if hit is not None:
                with self._lock:
                    self._cache[kid] = hit
        return hit

    def by_email(self, email):
        try:
            names = sorted(os.listdir(self.dir))
        except OSError:
            return []
        found = []
        for n in names:
            if n.endswith(".json"):
                hit = self.by_kid(n[:-5])
                if hit and hit[1].get("client_email") == email:
                    found.append(hit)
        return found

    def register(self, kid, public_pem, meta):
        os.makedirs(self.dir, exist_ok=True)
        _write_atomic(os.path.join(self.dir, kid + ".json"), json.dumps(meta, indent=2).encode())
        _write_atomic(os.path.join(self.dir, kid + ".pem"), public_pem)


class UserRegistry:
    """Refresh tokens of generated authorized_user credentials (files under users/)."""

    def __init__(self, data_dir):
        self.dir = os.path.join(data_dir, "users")

    @staticmethod
    def _name(refresh_token):
        return hashlib.sha256(refresh_token.encode()).hexdigest() + ".json"

    def lookup(self, refresh_token):
        try:
            with open(os.path.join(self.dir, self._name(refresh_token))) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def register(self, refresh_token, meta):
        os.makedirs(self.dir, exist_ok=True)
        _write_atomic(os.path.join(self.dir, self._name(refresh_token)), json.dumps(meta, indent=2).encode())


def _write_atomic(path, data, mode=0o644):
    tmp = "%s.tmp.%d" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# Generating credentials

def generate_service_account(project, email, token_uri):
    """Return (key file dict in Google's format, public key PEM bytes)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode("ascii")
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    kid = secrets.token_hex(20)
    info = {
        "type": "service_account",
        "project_id": project,
        "private_key_id": kid,
        "private_key": private_pem,
        "client_email": email,
        "client_id": str(10 ** 20 + secrets.randbelow(9 * 10 ** 20)),
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/"
                                + urllib.parse.quote(email, safe=""),
        "universe_domain": "googleapis.com",
    }
    return info, public_pem


def generate_authorized_user(token_uri=None, quota_project=None, account=None):
    """Return (authorized_user file dict, registry entry)."""
    client_id = "%d-%s.apps.googleusercontent.com" % (10 ** 11 + secrets.randbelow(9 * 10 ** 11),
                                                       secrets.token_hex(16))
    info = {
        "type": "authorized_user",
        "client_id": client_id,
        "client_secret": "emu-" + secrets.token_urlsafe(18),
        "refresh_token": "1//emu-" + secrets.token_urlsafe(48),
        "universe_domain": "googleapis.com",
    }
    if quota_project:
        info["quota_project_id"] = quota_project
    if account:
        info["account"] = account
    if token_uri:
        info["token_uri"] = token_uri
    meta = {"client_id": info["client_id"], "client_secret": info["client_secret"],
            "account": account or "user@example.com", "created": time.time()}
    return info, meta


def sign_jwt(private_pem, kid, claims):
    """Build an RS256 JWT (used by the load generator; tests sign their own)."""
    key = serialization.load_pem_private_key(private_pem.encode() if isinstance(private_pem, str)
                                             else private_pem, password=None)
    header = {"alg": "RS256", "typ": "JWT", "kid": kid}
    signing_input = (b64url_encode(json.dumps(header, separators=(",", ":")).encode()) + "." +
                     b64url_encode(json.dumps(claims, separators=(",", ":")).encode()))
    sig = key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    return signing_input + "." + b64url_encode(sig)


# ----------------------------------------------------------------------------------------------
# Verifying JWTs

def _decode_jwt(jwt_text):
    if not isinstance(jwt_text, str) or jwt_text.count(".") != 2:
        raise AuthError("invalid_grant", "Invalid JWT: expected three dot-separated segments.")
    h64, c64, s64 = jwt_text.split(".")
    try:
        header = json.loads(b64url_decode(h64, "header"))
        claims = json.loads(b64url_decode(c64, "claims"))
    except (ValueError, UnicodeDecodeError):
        raise AuthError("invalid_grant", "Invalid JWT: header or claims are not JSON.")
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise AuthError("invalid_grant", "Invalid JWT: header and claims must be JSON objects.")
    sig = b64url_decode(s64, "signature")
    return header, claims, (h64 + "." + c64).encode("ascii"), sig


def _num(claims, name):
    v = claims.get(name)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise AuthError("invalid_grant", TIMEFRAME_MSG + " (%s is missing or not a number)" % name)
    return v


def verify_jwt(jwt_text, keys, now, audiences, grant=True):
    """Check an RS256 JWT signed by a registered service-account key.

    grant=True: the jwt-bearer assertion rules (aud must be the key's
    token_uri or one of `audiences`, scope required).
    grant=False: a self-signed JWT used directly as a bearer token (aud one of
    `audiences`, or a scope claim).
    Returns (claims, key metadata).  Raises AuthError."""
    header, claims, signing_input, sig = _decode_jwt(jwt_text)
    if header.get("alg") != "RS256":
        raise AuthError("invalid_grant", "Invalid JWT: alg must be RS256, got %r." % header.get("alg"))
    iss = claims.get("iss")
    if not isinstance(iss, str) or not iss:
        raise AuthError("invalid_grant", "Invalid JWT: the iss claim (service account email) is missing.")
    kid = header.get("kid")
    if kid:
        hit = keys.by_kid(kid)
        candidates = [hit] if hit else []
    else:
        candidates = keys.by_email(iss)
    if not candidates:
        raise AuthError("invalid_grant", "Invalid JWT Signature.")
    meta = None
    for pub, m in candidates:
        try:
            pub.verify(sig, signing_input, padding.PKCS1v15(), hashes.SHA256())
            meta = m
            break
        except (InvalidSignature, ValueError, TypeError):
            continue
    if meta is None:
        raise AuthError("invalid_grant", "Invalid JWT Signature.")
    if meta.get("client_email") != iss:
        raise AuthError("invalid_grant", "Invalid JWT: iss %r does not own key %s." % (iss, kid))
    iat, exp = _num(claims, "iat"), _num(claims, "exp")
    if exp - iat > MAX_LIFETIME or exp <= iat or exp <= now or iat > now + CLOCK_SKEW:
        raise AuthError("invalid_grant", TIMEFRAME_MSG)
    aud = claims.get("aud")
    scope = claims.get("scope")
    if grant:
        allowed = set(audiences)
        if meta.get("token_uri"):
            allowed.add(meta["token_uri"])
        if aud not in allowed:
            raise AuthError("invalid_grant", "Invalid JWT: aud %r is not this token endpoint (expected one "
                                             "of %s)." % (aud, ", ".join(sorted(allowed))))
        if not isinstance(scope, str) or not scope.strip():
            raise AuthError("invalid_scope", "Invalid OAuth scope: the scope claim is missing or empty.")
    else:
        if aud is not None and aud not in audiences:
            raise AuthError("invalid_token", "self-signed JWT has an unexpected aud %r" % (aud,), 401)
        if aud is None and not (isinstance(scope, str) and scope.strip()):
            raise AuthError("invalid_token", "self-signed JWT needs an aud or a scope claim", 401)
    return claims, meta


# ----------------------------------------------------------------------------------------------
# Access tokens

class Token:
    __slots__ = ("value", "principal", "scopes", "expires", "kind")

    def __init__(self, value, principal, scopes, expires, kind):
        self.value, self.principal, self.scopes = value, principal, scopes
        self.expires, self.kind = expires, kind

    def expired(self, now=None):
        return (time.monotonic() if now is None else now) >= self.expires


class TokenStore:
    """Issued access tokens, shared by the REST, metadata and later gRPC services."""

    def __init__(self, lifetime):
        self.lifetime = lifetime
        self._tokens = {}
        self._jwt_cache = {}
        self._lock = threading.Lock()

    def issue(self, principal, scopes, kind, lifetime=None):
        lifetime = self.lifetime if lifetime is None else lifetime
        value = "ya29.emu-" + secrets.token_urlsafe(36)
        now = time.monotonic()
        tok = Token(value, principal, frozenset(scopes), now + lifetime, kind)
        with self._lock:
            if len(self._tokens) > 10000:
                for k in [k for k, t in self._tokens.items() if t.expired(now)]:
                    del self._tokens[k]
            self._tokens[value] = tok
        return tok, lifetime

    def lookup(self, value):
        with self._lock:
            return self._tokens.get(value)

    def revoke_all(self):
        with self._lock:
            n = len(self._tokens)
            self._tokens.clear()
            self._jwt_cache.clear()
            return n

    def check_self_signed(self, jwt_text, keys, audiences):
        """Accept a self-signed JWT as a bearer token; returns a Token or raises AuthError."""
        with self._lock:
            tok = self._jwt_cache.get(jwt_text)
        if tok is not None:
            return tok
        now_wall = time.time()
        claims, meta = verify_jwt(jwt_text, keys, now_wall, audiences, grant=False)
        scope = claims.get("scope")
        scopes = scope.split() if isinstance(scope, str) and scope.strip() else [SCOPE_CLOUD]
        expires = time.monotonic() + (claims["exp"] - now_wall)
        tok = Token(jwt_text, meta.get("client_email"), frozenset(scopes), expires, "self-signed-jwt")
        with self._lock:
            if len(self._jwt_cache) > 1000:
                self._jwt_cache.clear()
            self._jwt_cache[jwt_text] = tok
        return tok
