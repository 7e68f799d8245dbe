"""OAuth2 access tokens (src/auth.c) against the emulator's token endpoint and
metadata server, through the auth_token test tool: every kind of credentials,
the Application Default Credentials order, the token cache, TLS verification,
the key-file checks, and that no secret ever reaches the output. A small
plain-HTTP fake server with canned answers checks what the client sends (JWT
header and claims, form fields, metadata headers) and how it reads answers the
emulator never gives (expires_in as a string, malformed or oversized answers).

Two emulators run for the whole module (started in parallel, waited for by
their ready files): "main" (default token lifetime 3600 s, metadata server
reporting project md-project) and "short" (--token-lifetime 60: below auth's
300 s refresh margin, so every auth_token call refreshes, yet long enough for
a failed refresh to fall back on the current token).
"""
import base64
import http.server
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.parse
import urllib.request

from relaytest import ROOT, TOOLS, wait_for

PY = "/usr/bin/python3"
BQEMU = os.path.join(ROOT, "tools", "bqemu", "bqemu.py")
AUTH_TOKEN = os.path.join(TOOLS, "auth_token")
MD_PROJECT = "md-project"
TOKEN_OK = re.compile(r"^token-ok (\d+) refreshes=(\d+) project=(\S+) desc=(.*?)(?: probe=(-?\d+))?$")

TMP = None
TLS = None
MAIN = None
SHORT = None
FILES = {}       # name -> path of a credentials file made in setUpModule
SECRETS = []     # strings that must never appear in the tool's output
EMPTY_HOME = None


class Emulator:
    """One `bqemu.py serve` with TLS and a metadata server."""

    def __init__(self, name, *extra):
        self.name = name
        self.dir = os.path.join(TMP, name)
        self.ready = os.path.join(TMP, name + ".ready.json")
        self.logpath = os.path.join(TMP, name + ".log")
        self.logf = open(self.logpath, "wb")
        self.proc = subprocess.Popen(
            [PY, BQEMU, "serve", "--dir", self.dir, "--port", "0",
             "--tls-cert", os.path.join(TLS, "server.pem"), "--tls-key", os.path.join(TLS, "server.key"),
             "--metadata-port", "0", "--ready-file", self.ready, *extra],
            stdout=self.logf, stderr=self.logf, stdin=subprocess.DEVNULL)
        self.info = None

    def wait_ready(self):
        wait_for(lambda: os.path.exists(self.ready) or self.proc.poll() is not None, 30,
                 f"emulator {self.name} to write its ready file")
        if self.proc.poll() is not None:
            with open(self.logpath, "rb") as f:
                raise AssertionError(f"emulator {self.name} exited: {f.read().decode(errors='replace')}")
        with open(self.ready) as f:
            self.info = json.load(f)
        self.base_url = self.info["base_url"]
        self.token_uri = self.info["token_uri"]
        self.md_host = "127.0.0.1:%d" % self.info["metadata_port"]
        self.ctx = ssl.create_default_context(cafile=os.path.join(TLS, "ca.pem"))

    def call(self, method, path, obj=None):
        data = json.dumps(obj).encode() if obj is not None else None
        req = urllib.request.Request(self.base_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, context=self.ctx, timeout=10) as r:
            return json.loads(r.read() or b"null")

    def grants(self):
        return self.call("GET", "/_emu/stats?log=0").get("token_grants", {})

    def fault(self, spec):
        self.call("POST", "/_emu/faults", spec)

    def clear_faults(self):
        self.call("DELETE", "/_emu/faults")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.logf.close()


def bqemu(*args):
    return subprocess.Popen([PY, BQEMU, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(procs):
    for p in procs:
        out, err = p.communicate(timeout=60)
        if p.returncode != 0:
            raise AssertionError(f"bqemu.py {p.args[2:]} failed: {err.decode(errors='replace')}")


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def note_secrets(path):
    with open(path) as f:
        cred = json.load(f)
    pem = cred.get("private_key")
    if pem:
        body = [line for line in pem.splitlines() if line and not line.startswith("-----")]
        SECRETS.extend(line[8:40] for line in body[1:-1:4])
    for k in ("refresh_token", "client_secret"):
        if cred.get(k):
            SECRETS.append(cred[k])


def write_cred(name, obj=None, raw=None, mode=0o600):
    path = os.path.join(TMP, name)
    with open(path, "w") as f:
        f.write(raw if raw is not None else json.dumps(obj, indent=2))
    os.chmod(path, mode)
    return path


def setUpModule():
    global TMP, TLS, MAIN, SHORT, EMPTY_HOME
    if not os.access(AUTH_TOKEN, os.X_OK):
        raise unittest.SkipTest(f"{AUTH_TOKEN} is not built")
    TMP = tempfile.mkdtemp(prefix="relayd-auth-")
    TLS = os.path.join(TMP, "tls")
    EMPTY_HOME = os.path.join(TMP, "home-empty")
    os.mkdir(EMPTY_HOME)
    finish([bqemu("gen-tls", "--dir", TLS, "--wrong-ca")])
    MAIN = Emulator("main", "--project", MD_PROJECT)
    SHORT = Emulator("short", "--token-lifetime", "60")
    MAIN.wait_ready()
    SHORT.wait_ready()
    for name, emu, extra in (("key", MAIN, ()), ("key-short", SHORT, ()),
                             ("key-unregistered", MAIN, ("--no-register",))):
        FILES[name] = os.path.join(TMP, name + ".json")
    FILES["user"] = os.path.join(TMP, "user.json")
    finish([bqemu("gen-key", "--dir", MAIN.dir, "--token-uri", MAIN.token_uri, "--out", FILES["key"]),
            bqemu("gen-key", "--dir", SHORT.dir, "--token-uri", SHORT.token_uri, "--out", FILES["key-short"]),
            bqemu("gen-key", "--dir", MAIN.dir, "--token-uri", MAIN.token_uri, "--no-register",
                  "--out", FILES["key-unregistered"]),
            bqemu("gen-user", "--dir", MAIN.dir, "--token-uri", MAIN.token_uri,
                  "--account", "dev@example.com", "--out", FILES["user"])])
    for path in FILES.values():
        note_secrets(path)


def tearDownModule():
    for emu in (MAIN, SHORT):
        if emu is not None:
            emu.stop()
    if TMP and not os.environ.get("AUTH_TEST_KEEP"):
        shutil.rmtree(TMP, ignore_errors=True)


def tool_env(**overrides):
    """The environment minus anything that would make ADC find real credentials."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("GOOGLE_APPLICATION_CREDENTIALS", "CLOUDSDK_CONFIG", "GCE_METADATA_HOST",
                        "GCE_METADATA_ROOT", "GCE_METADATA_IP")
           and not k.lower().endswith("_proxy")}
    env["HOME"] = EMPTY_HOME
    env.update(overrides)
    return env


class AuthTest(unittest.TestCase):
    def tearDown(self):
        MAIN.clear_faults()
        SHORT.clear_faults()

    def run_tool(self, *args, env=None, rc=0):
        p = subprocess.run([AUTH_TOKEN, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, timeout=60, env=env or tool_env(), stdin=subprocess.DEVNULL)
        out = p.stdout + p.stderr
        for bad in ["ya29.", "PRIVATE KEY"] + SECRETS:
            self.assertNotIn(bad, out, "a secret reached the output")
        for san in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
            self.assertNotIn(san, p.stderr)
        self.assertEqual(p.returncode, rc, out)
        return p.stdout.strip(), p.stderr

    def token_ok(self, *args, **kw):
        out, err = self.run_tool(*args, **kw)
        m = TOKEN_OK.match(out)
        self.assertIsNotNone(m, out)
        return {"len": int(m.group(1)), "refreshes": int(m.group(2)), "project": m.group(3),
                "desc": m.group(4), "probe": m.group(5), "stderr": err}

    def error(self, *args, **kw):
        out, err = self.run_tool(*args, rc=1, **kw)
        self.assertTrue(out.startswith("error: "), out)
        return out[len("error: "):], err

    def ca(self, emu=None):
        return ["--ca", os.path.join(TLS, "ca.pem")]

    def probe(self, emu):
        return ["--probe", emu.base_url + "/bigquery/v2/projects/emu-project/datasets/d"]


class ServiceAccountTest(AuthTest):
    def test_key_file_gets_a_token_the_api_accepts(self):
        before = MAIN.grants().get("jwt-bearer", 0)
        r = self.token_ok(FILES["key"], *self.ca(), *self.probe(MAIN))
        self.assertEqual(r["refreshes"], 1)
        self.assertGreater(r["len"], 20)
        self.assertEqual(r["probe"], "200")
        self.assertEqual(r["project"], "emu-project")
        self.assertIn("service account relayd-test@emu-project.iam.gserviceaccount.com", r["desc"])
        self.assertIn(FILES["key"], r["desc"])
        self.assertEqual(MAIN.grants().get("jwt-bearer", 0), before + 1)

    def test_cached_token_is_reused(self):
        before = MAIN.grants().get("jwt-bearer", 0)
        r = self.token_ok(FILES["key"], *self.ca(), "--count", "3")
        self.assertEqual(r["refreshes"], 1)
        self.assertEqual(MAIN.grants().get("jwt-bearer", 0), before + 1)

    def test_invalidate_forces_a_refresh_each_time(self):
        before = MAIN.grants().get("jwt-bearer", 0)
        r = self.token_ok(FILES["key"], *self.ca(), "--count", "3", "--invalidate")
        self.assertEqual(r["refreshes"], 3)
        self.assertEqual(MAIN.grants().get("jwt-bearer", 0), before + 3)

    def test_token_with_less_than_five_minutes_left_is_refreshed_on_every_call(self):
        before = SHORT.grants().get("jwt-bearer", 0)
        r = self.token_ok(FILES["key-short"], *self.ca(), "--count", "3", *self.probe(SHORT))
        self.assertEqual(r["refreshes"], 3)
        self.assertEqual(r["probe"], "200")
        self.assertEqual(SHORT.grants().get("jwt-bearer", 0), before + 3)

    def test_failed_refresh_falls_back_on_the_still_valid_token(self):
        SHORT.fault({"status": 503, "path": "token", "after": 1, "count": 1})
        r = self.token_ok(FILES["key-short"], *self.ca(), "--count", "2")
        self.assertEqual(r["refreshes"], 1)
        self.assertIn("cannot refresh the access token", r["stderr"])
        self.assertIn("503 temporarily_unavailable", r["stderr"])

    def test_server_certificate_from_the_wrong_ca_is_refused(self):
        msg, _ = self.error(FILES["key"], "--ca", os.path.join(TLS, "wrong-ca.pem"))
        self.assertIn("certificate", msg)
        self.assertIn(MAIN.token_uri, msg)

    def test_system_ca_bundle_does_not_trust_the_test_ca(self):
        msg, _ = self.error(FILES["key"])
        self.assertIn("certificate", msg)

    def test_key_the_service_does_not_know_is_refused_with_invalid_grant(self):
        msg, _ = self.error(FILES["key-unregistered"], *self.ca())
        self.assertIn(f"token endpoint {MAIN.token_uri}: 400 invalid_grant: Invalid JWT Signature.", msg)

    def test_invalid_grant_about_iat_and_exp_hints_at_the_clock(self):
        MAIN.fault({"status": 400, "path": "token", "reason": "invalid_grant",
                    "message": "Invalid JWT: Token must be a short-lived token (60 minutes) and in a "
                               "reasonable timeframe. Check your iat and exp values in the JWT claim."})
        msg, _ = self.error(FILES["key"], *self.ca())
        self.assertIn("400 invalid_grant: Invalid JWT: Token must be", msg)
        self.assertIn("check the system clock (NTP)", msg)

    def test_http_and_connection_failures_name_the_endpoint(self):
        MAIN.fault({"status": 503, "path": "token"})
        msg, _ = self.error(FILES["key"], *self.ca())
        self.assertIn(f"token endpoint {MAIN.token_uri}: 503 temporarily_unavailable", msg)
        MAIN.fault({"status": 502, "path": "token", "content_type": "text/html",
                    "body": "<html><title>502 Bad Gateway</title></html>"})
        msg, _ = self.error(FILES["key"], *self.ca())
        self.assertIn("HTTP 502: <html><title>502 Bad Gateway", msg)
        MAIN.fault({"drop": 1, "path": "token"})
        msg, _ = self.error(FILES["key"], *self.ca())
        self.assertIn(f"token endpoint {MAIN.token_uri}: ", msg)
        MAIN.fault({"truncate": 1, "path": "token", "truncate_at": 30})   # cut inside the token
        msg, _ = self.error(FILES["key"], *self.ca())
        self.assertIn(f"token endpoint {MAIN.token_uri}: ", msg)


class KeyFileTest(AuthTest):
    def key(self):
        with open(FILES["key"]) as f:
            return json.load(f)

    def test_file_that_is_not_json_names_the_line_and_not_the_key(self):
        with open(FILES["key"]) as f:
            text = f.read()
        cut = text.index("-----BEGIN PRIVATE KEY-----") + 200   # inside the private key string
        path = write_cred("cut.json", raw=text[:cut])
        msg, _ = self.error(path)
        self.assertRegex(msg, r"^%s: not valid JSON at line \d+ column \d+" % re.escape(path))
        self.assertNotIn("BEGIN", msg)

    def test_missing_client_email_is_named(self):
        k = self.key()
        del k["client_email"]
        path = write_cred("no-email.json", k)
        msg, _ = self.error(path)
        self.assertEqual(msg, f"{path}: no client_email")

    def test_bad_pem_is_reported(self):
        k = self.key()
        k["private_key"] = "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n"
        path = write_cred("bad-pem.json", k)
        msg, _ = self.error(path)
        self.assertIn(f"{path}: private_key is not a valid PEM private key", msg)
        k["private_key"] = self.key()["private_key"].replace("\n", "\\n")
        path = write_cred("escaped-pem.json", k)
        msg, _ = self.error(path)
        self.assertIn("literal \\n sequences", msg)

    def test_wrong_or_missing_type_is_reported(self):
        k = self.key()
        k["type"] = "external_account"
        path = write_cred("external.json", k)
        msg, _ = self.error(path)
        self.assertIn('credentials of type "external_account" are not supported', msg)
        del k["type"]
        path = write_cred("no-type.json", k)
        msg, _ = self.error(path)
        self.assertIn('no "type" member', msg)

    def test_unreadable_file_gives_the_system_error(self):
        path = os.path.join(TMP, "no-such-key.json")
        msg, _ = self.error(path)
        self.assertEqual(msg, f"{path}: cannot open: No such file or directory")

    def test_key_readable_by_others_works_with_a_chmod_warning(self):
        with open(FILES["key"]) as f:
            path = write_cred("open-key.json", raw=f.read(), mode=0o644)
        r = self.token_ok(path, *self.ca())
        self.assertIn("chmod 600", r["stderr"])
        self.assertIn(path, r["stderr"])
        r = self.token_ok(FILES["key"], *self.ca())
        self.assertNotIn("chmod", r["stderr"])


class UserAndAdcTest(AuthTest):
    def gcloud_home(self, name, cred):
        home = os.path.join(TMP, name)
        os.makedirs(os.path.join(home, ".config", "gcloud"), exist_ok=True)
        path = os.path.join(home, ".config", "gcloud", "application_default_credentials.json")
        shutil.copyfile(FILES[cred], path)
        os.chmod(path, 0o600)
        return home, path

    def test_authorized_user_file_gets_a_token(self):
        before = MAIN.grants().get("refresh_token", 0)
        r = self.token_ok(FILES["user"], *self.ca(), *self.probe(MAIN))
        self.assertEqual(r["refreshes"], 1)
        self.assertEqual(r["probe"], "200")
        self.assertIn("user credentials dev@example.com", r["desc"])
        self.assertEqual(MAIN.grants().get("refresh_token", 0), before + 1)

    def test_adc_uses_google_application_credentials(self):
        r = self.token_ok("adc", *self.ca(), env=tool_env(GOOGLE_APPLICATION_CREDENTIALS=FILES["key"]))
        self.assertIn(FILES["key"], r["desc"])
        self.assertIn("GOOGLE_APPLICATION_CREDENTIALS", r["desc"])

    def test_adc_with_a_missing_file_is_an_error_without_fall_through(self):
        home, _ = self.gcloud_home("home-gcloud-1", "user")
        missing = os.path.join(TMP, "gone.json")
        before = MAIN.grants()
        env = tool_env(GOOGLE_APPLICATION_CREDENTIALS=missing, HOME=home, GCE_METADATA_HOST=MAIN.md_host)
        msg, _ = self.error("adc", *self.ca(), env=env)
        self.assertEqual(msg, f"{missing} (GOOGLE_APPLICATION_CREDENTIALS): cannot open: "
                              "No such file or directory")
        self.assertEqual(MAIN.grants(), before)

    def test_adc_uses_the_gcloud_file_in_home_or_cloudsdk_config(self):
        home, path = self.gcloud_home("home-gcloud-2", "user")
        r = self.token_ok("adc", *self.ca(), env=tool_env(HOME=home, GCE_METADATA_HOST=MAIN.md_host))
        self.assertIn(f"user credentials dev@example.com (from {path}", r["desc"])
        cfg = os.path.join(home, ".config", "gcloud")
        r = self.token_ok("adc", *self.ca(), env=tool_env(CLOUDSDK_CONFIG=cfg))
        self.assertIn(path, r["desc"])

    def test_metadata_server_gives_a_token_and_the_project(self):
        before = MAIN.grants().get("metadata", 0)
        r = self.token_ok("metadata", *self.ca(), *self.probe(MAIN),
                          env=tool_env(GCE_METADATA_HOST=MAIN.md_host))
        self.assertEqual(r["project"], MD_PROJECT)
        self.assertEqual(r["probe"], "200")
        self.assertEqual(r["desc"], f"metadata server {MAIN.md_host}")
        self.assertEqual(MAIN.grants().get("metadata", 0), before + 1)

    def test_adc_without_files_falls_back_on_the_metadata_server(self):
        r = self.token_ok("adc", env=tool_env(GCE_METADATA_HOST=MAIN.md_host))
        self.assertEqual(r["project"], MD_PROJECT)
        self.assertIn(f"metadata server {MAIN.md_host}", r["desc"])

    def test_adc_with_nothing_reachable_says_no_credentials_found(self):
        host = "127.0.0.1:%d" % closed_port()
        msg, _ = self.error("adc", env=tool_env(GCE_METADATA_HOST=host))
        self.assertTrue(msg.startswith(
            "no credentials found: set GOOGLE_APPLICATION_CREDENTIALS, run gcloud auth "
            "application-default login, or run on GCP (metadata server at %s: " % host), msg)

    def test_explicit_metadata_mode_reports_the_unreachable_server(self):
        host = "127.0.0.1:%d" % closed_port()
        msg, _ = self.error("metadata", env=tool_env(GCE_METADATA_HOST=host))
        self.assertTrue(msg.startswith(f"metadata server {host}: "), msg)
        self.assertNotIn("no credentials found", msg)


class FakeServer:
    """Plain HTTP with queued answers (status, headers, body); records every request."""

    def __init__(self):
        self.answers = []
        self.requests = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def answer(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                fake.requests.append({"method": self.command, "path": self.path,
                                      "headers": dict(self.headers), "body": body})
                status, headers, payload = (fake.answers.pop(0) if fake.answers
                                            else (500, {}, b"no answer queued"))
                if isinstance(payload, (dict, list)):
                    payload = json.dumps(payload).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = answer

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass   # a client that hangs up on an oversized answer is expected

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.host = "127.0.0.1:%d" % self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def b64url_json(seg):
    return json.loads(base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4)))


class WireTest(AuthTest):
    """What auth sends, and how it reads answers, against the fake server."""

    @classmethod
    def setUpClass(cls):
        cls.fake = FakeServer()
        cls.token_uri = "http://%s/token" % cls.fake.host
        for name in ("key", "user"):
            with open(FILES[name]) as f:
                cred = json.load(f)
            cred["token_uri"] = cls.token_uri
            setattr(cls, name, write_cred("fake-" + name + ".json", cred))
            setattr(cls, name + "_info", cred)

    @classmethod
    def tearDownClass(cls):
        cls.fake.stop()

    def setUp(self):
        self.fake.answers.clear()
        self.fake.requests.clear()

    def queue(self, status, body, headers=None):
        self.fake.answers.append((status, headers or {"Content-Type": "application/json"}, body))

    def form(self, i=0):
        r = self.fake.requests[i]
        self.assertEqual(r["method"], "POST")
        self.assertEqual(r["headers"]["Content-Type"], "application/x-www-form-urlencoded")
        return {k: v[0] for k, v in urllib.parse.parse_qs(r["body"].decode(), strict_parsing=True).items()}

    def test_jwt_has_the_documented_header_and_claims(self):
        self.queue(200, {"access_token": "ya29.fake-1", "expires_in": "3599", "token_type": "Bearer"})
        r = self.token_ok(self.key, "--count", "2")   # a string expires_in is understood and cached
        self.assertEqual((r["len"], r["refreshes"]), (len("ya29.fake-1"), 1))
        self.assertEqual(len(self.fake.requests), 1)
        self.assertEqual(self.fake.requests[0]["path"], "/token")
        form = self.form()
        self.assertEqual(form["grant_type"], "urn:ietf:params:oauth:grant-type:jwt-bearer")
        parts = form["assertion"].split(".")
        self.assertEqual(len(parts), 3)
        self.assertTrue(all(re.fullmatch(r"[A-Za-z0-9_-]+", p) for p in parts), "unpadded base64url")
        self.assertEqual(b64url_json(parts[0]),
                         {"alg": "RS256", "typ": "JWT", "kid": self.key_info["private_key_id"]})
        claims = b64url_json(parts[1])
        self.assertEqual(claims["iss"], self.key_info["client_email"])
        self.assertEqual(claims["aud"], self.token_uri)
        self.assertEqual(claims["scope"], "https://www.googleapis.com/auth/bigquery")
        self.assertEqual(claims["exp"] - claims["iat"], 3600)
        self.assertLess(abs(claims["iat"] - time.time()), 60)

    def test_scope_option_goes_into_the_jwt(self):
        self.queue(200, {"access_token": "ya29.fake-2", "expires_in": 3600, "token_type": "Bearer"})
        self.token_ok(self.key, "--scope", "https://www.googleapis.com/auth/cloud-platform")
        claims = b64url_json(self.form()["assertion"].split(".")[1])
        self.assertEqual(claims["scope"], "https://www.googleapis.com/auth/cloud-platform")

    def test_refresh_grant_sends_the_user_secrets_and_a_scope_only_when_asked(self):
        self.queue(200, {"access_token": "ya29.fake-3", "expires_in": 3599.5, "token_type": "bearer"})
        self.queue(200, {"access_token": "ya29.fake-4", "expires_in": 3599, "token_type": "Bearer"})
        self.token_ok(self.user)
        self.token_ok(self.user, "--scope", "https://www.googleapis.com/auth/bigquery")
        want = {"grant_type": "refresh_token", "client_id": self.user_info["client_id"],
                "client_secret": self.user_info["client_secret"],
                "refresh_token": self.user_info["refresh_token"]}
        self.assertEqual(self.form(0), want)
        self.assertEqual(self.form(1), dict(want, scope="https://www.googleapis.com/auth/bigquery"))

    def test_metadata_request_headers_scopes_and_project(self):
        md = {"Content-Type": "application/json", "Metadata-Flavor": "Google"}
        self.queue(200, {"access_token": "ya29.fake-5", "expires_in": 3599, "token_type": "Bearer"}, md)
        self.queue(200, b"fake-project\n", {"Content-Type": "application/text", "Metadata-Flavor": "Google"})
        r = self.token_ok("metadata", "--scope", "https://a.example/s1 https://a.example/s2",
                          env=tool_env(GCE_METADATA_HOST=self.fake.host, http_proxy="http://127.0.0.1:9"))
        self.assertEqual(r["project"], "fake-project")
        tok, proj = self.fake.requests
        self.assertEqual(tok["method"], "GET")
        path, _, query = tok["path"].partition("?")
        self.assertEqual(path, "/computeMetadata/v1/instance/service-accounts/default/token")
        self.assertEqual(urllib.parse.parse_qs(query), {"scopes": ["https://a.example/s1,https://a.example/s2"]})
        self.assertEqual(tok["headers"]["Metadata-Flavor"], "Google")
        self.assertNotIn("X-Forwarded-For", tok["headers"])
        self.assertEqual(proj["path"], "/computeMetadata/v1/project/project-id")

    def test_adc_answer_without_metadata_flavor_is_not_a_metadata_server(self):
        self.queue(200, {"access_token": "ya29.fake-6", "expires_in": 3599})
        msg, _ = self.error("adc", env=tool_env(GCE_METADATA_HOST=self.fake.host))
        self.assertTrue(msg.startswith("no credentials found: "), msg)
        self.assertIn("not a metadata server", msg)

    def test_malformed_token_answers_are_refused(self):
        cases = [
            ((200, b"<html>hello</html>", {"Content-Type": "text/html"}), "the answer is not a JSON object"),
            ((200, {"expires_in": 3600, "token_type": "Bearer"}, None), "the answer has no access_token"),
            ((200, {"access_token": "ya29.fake-7", "token_type": "MAC"}, None), 'token_type "MAC" is not Bearer'),
            ((200, {"access_token": "ya29.fake 8\r\nX-Evil: 1"}, None), "characters a header cannot carry"),
            ((200, {"access_token": "ya29.fake-9", "expires_in": "soon"}, None), "expires_in is not"),
            ((200, {"access_token": "ya29.fake-10", "expires_in": -5}, None), "expires_in is not"),
            ((200, b"{" + b" " * (2 << 20) + b"}", None), "larger than 1 MiB"),
            ((401, {"error": "invalid_client", "error_description": "Unauthorized"}, None),
             "401 invalid_client: Unauthorized"),
        ]
        for (status, body, headers), want in cases:
            with self.subTest(want=want):
                self.queue(status, body, headers)
                msg, _ = self.error(self.key)
                self.assertIn(f"token endpoint {self.token_uri}: ", msg)
                self.assertIn(want, msg)


if __name__ == "__main__":
    unittest.main()
