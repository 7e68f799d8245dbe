"""Shared harness for relayd's integration tests.

Starts the real relayd binary with a config written into a temporary
directory, talks to it over its real Unix sockets, and reads its real LMDB
spool through `relayctl spool dump`. Waits are on conditions (a socket that
answers, a reply that arrives), each with a deadline; never bare sleeps.

RELAY_BUILD names the directory with the binaries (tests/run.py points it at
build-asan, so the daemon runs under AddressSanitizer + UBSan).
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

ROOT = os.environ.get("RELAY_ROOT") or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("RELAY_BUILD") or os.path.join(ROOT, "build")
RELAYD = os.path.join(BUILD, "relayd")
RELAYCTL = os.path.join(BUILD, "relayctl")
TOOLS = os.path.join(BUILD, "tools")


def wait_for(cond, timeout, what, interval=0.01):
    """Polls cond() until it returns a true value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Relayd:
    """One relayd process with its own directory, config and sockets."""

    def __init__(self, testcase=None, dests=("events", "other"), default_table="events",
                 **overrides):
        self.dir = tempfile.mkdtemp(prefix="relayd-test-")
        os.chmod(self.dir, 0o755)
        self.spool = os.path.join(self.dir, "spool")
        self.sock = os.path.join(self.dir, "relayd.sock")
        self.ctl = os.path.join(self.dir, "relayd.ctl")
        self.conf = os.path.join(self.dir, "relayd.conf")
        self.log = os.path.join(self.dir, "relayd.log")
        self.proc = None
        self.env = None          # the daemon's environment (None: this process's)
        self.sections = {
            "relayd": {"control_socket": self.ctl, "log_level": "info"},
            "spool": {"dir": self.spool, "max_spool_bytes": "256M"},
            "ingest": {"socket": self.sock},
        }
        if default_table:
            self.sections["ingest"]["default_table"] = default_table
        for k, v in overrides.items():
            sec, _, key = k.partition("__")
            self.sections.setdefault(sec, {})[key] = str(v)
        self.dests = list(dests)
        self.write_config()
        if testcase is not None:
            testcase.addCleanup(self.cleanup)

    def write_config(self):
        with open(self.conf, "w") as f:
            for sec, kv in self.sections.items():
                f.write(f"[{sec}]\n")
                for k, v in kv.items():
                    f.write(f"{k} = {v}\n")
            for d in self.dests:
                if isinstance(d, tuple):
                    name, kv = d
                else:
                    name, kv = d, {}
                f.write(f"[destination {name}]\n")
                for k, v in kv.items():
                    f.write(f"{k} = {v}\n")

    def start(self, timeout=10):
        t0 = time.monotonic()
        self.logf = open(self.log, "ab")
        self.proc = subprocess.Popen([RELAYD, "-c", self.conf], stdout=self.logf,
                                     stderr=self.logf, stdin=subprocess.DEVNULL, env=self.env)
        wait_for(lambda: self.ping() or self._died(), timeout, "relayd to answer on its control socket")
        if self.proc.poll() is not None:
            raise AssertionError(f"relayd exited with {self.proc.returncode}:\n{self.read_log()}")
        return time.monotonic() - t0

    def _died(self):
        return self.proc.poll() is not None

    def ping(self):
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(1)
            s.connect(self.ctl)
            s.sendall(b"ping\n")
            data = s.recv(100)
            s.close()
            return b"pong" in data
        except OSError:
            return False

    def status(self):
        out = subprocess.run([RELAYCTL, "-c", self.conf, "status", "--json"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        return json.loads(out.stdout)

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if not self.proc or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("relayd did not stop within %ss" % timeout)
        self.logf.close()
        return rc

    def kill9(self):
        self.proc.kill()
        self.proc.wait()
        self.logf.close()

    def rss_kb(self, field="VmRSS"):
        """A kB figure of /proc/PID/status: the resident set (VmRSS) by default,
        or another, such as RssFile (its file-backed part: LMDB's map)."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        return 0

    def read_log(self):
        try:
            with open(self.log, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def dump(self, table=None):
        """Returns the spool's records as a list of dicts; fails on any corrupt one."""
        cmd = [RELAYCTL, "-c", self.conf, "spool", "dump"]
        if table:
            cmd += ["--table", table]
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300)
        if p.returncode != 0:
            raise AssertionError(f"spool dump failed ({p.returncode}): {p.stderr.decode()}")
        return [json.loads(line) for line in p.stdout.splitlines() if line]

    def dump_raw(self):
        p = subprocess.run([RELAYCTL, "-c", self.conf, "spool", "dump"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=600)
        return p.returncode, p.stdout, p.stderr.decode()

    def relayctl(self, *args, input=None, timeout=120, user=None):
        return subprocess.run([RELAYCTL, "-c", self.conf, *args], input=input,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                              user=user)

    def cleanup(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def sanitizer_report(self):
        log = self.read_log()
        m = re.search(r"(ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:)", log)
        return log[m.start():m.start() + 3000] if m else None


class Producer:
    """A producer connection: send lines, read 'ok N' / 'err L reason msg' replies."""

    def __init__(self, path, timeout=30):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(path)
        self.buf = b""
        self.acked = 0
        self.errors = {}     # line -> (reason, message)
        self.closed = False

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.s.sendall(data)

    def send_lines(self, lines):
        self.send(b"".join((l.encode() if isinstance(l, str) else l) + b"\n" for l in lines))

    def _handle(self, line):
        if line.startswith(b"ok "):
            self.acked = max(self.acked, int(line[3:]))
        elif line.startswith(b"err "):
            parts = line.split(b" ", 3)
            self.errors[int(parts[1])] = (parts[2].decode(), parts[3].decode() if len(parts) > 3 else "")
        else:
            raise AssertionError(f"unexpected reply {line!r}")

    def poll_replies(self, block=True):
        if not block:
            import select
            if not select.select([self.s], [], [], 0)[0]:
                return True
        data = self.s.recv(65536)
        if not data:
            self.closed = True
            return False
        self.buf += data
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            self._handle(line)
        return True

    def wait_ack(self, n, timeout=30):
        deadline = time.monotonic() + timeout
        while self.acked < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for ok {n} (have ok {self.acked})")
            if not self.poll_replies():
                raise AssertionError(f"connection closed before ok {n} (have ok {self.acked})")
        return self.acked

    def finish(self, timeout=30):
        """Half-closes, then reads every reply until relayd closes."""
        self.s.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + timeout
        while self.poll_replies():
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting for relayd to close")
        return self.acked

    def close(self):
        self.s.close()


class RelayTest(unittest.TestCase):
    def tearDown(self):
        if os.environ.get("RELAY_TEST_SHOW_LOG"):
            for d in getattr(self, "_daemons", []):
                print("\n---- relayd log %s ----\n%s" % (d.log, "\n".join(d.read_log().splitlines()[-60:])))
        # A sanitizer report in any relayd this test started fails the test.
        for d in getattr(self, "_daemons", []):
            rep = d.sanitizer_report()
            if rep:
                self.fail("sanitizer report in relayd log:\n" + rep)

    def daemon(self, **kw):
        d = Relayd(self, **kw)
        self.__dict__.setdefault("_daemons", []).append(d)
        return d


# ---------------------------------------------------------------- emulator

BQEMU = os.path.join(ROOT, "tools", "bqemu", "bqemu.py")
PY = "/usr/bin/python3"
_TLS_CACHE = {}


def _tls_dir():
    """One test CA and server certificate per test process (key generation is slow)."""
    if "dir" not in _TLS_CACHE:
        d = tempfile.mkdtemp(prefix="bqemu-tls-")
        subprocess.run([PY, BQEMU, "gen-tls", "--dir", d, "--wrong-ca"], check=True,
                       stdout=subprocess.DEVNULL)
        _TLS_CACHE["dir"] = d
    return _TLS_CACHE["dir"]


class Emulator:
    """The local BigQuery emulator (tools/bqemu) over real HTTPS, with a test CA."""

    def __init__(self, testcase=None, token_lifetime=3600, fast=False, dedup="inf", extra=(),
                 grpc=False):
        self.dir = tempfile.mkdtemp(prefix="bqemu-")
        self.data = os.path.join(self.dir, "data")
        self.tls = _tls_dir()
        self.ca = os.path.join(self.tls, "ca.pem")
        self.wrong_ca = os.path.join(self.tls, "wrong-ca.pem")
        self.ready = os.path.join(self.dir, "ready.json")
        self.token_lifetime = token_lifetime
        self.fast = fast
        self.dedup = dedup
        self.extra = list(extra)
        self.grpc = grpc
        self.grpc_port = 0
        self.port = 0
        self.proc = None
        self.key = None
        if testcase is not None:
            testcase.addCleanup(self.cleanup)

    def start(self, timeout=30):
        if os.path.exists(self.ready):
            os.unlink(self.ready)
        cmd = [PY, BQEMU, "serve", "--dir", self.data, "--port", str(self.port),
               "--tls-cert", os.path.join(self.tls, "server.pem"),
               "--tls-key", os.path.join(self.tls, "server.key"),
               "--token-lifetime", str(self.token_lifetime), "--dedup-window", str(self.dedup),
               "--ready-file", self.ready]
        if self.fast:
            cmd.append("--fast")
        if self.grpc:
            cmd += ["--grpc-port", str(self.grpc_port)]
        cmd += self.extra
        self.log = open(os.path.join(self.dir, "bqemu.log"), "ab")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL)
        wait_for(lambda: os.path.exists(self.ready) or self.proc.poll() is not None, timeout,
                 "the emulator's ready file")
        if self.proc.poll() is not None:
            raise AssertionError("emulator died: " + open(os.path.join(self.dir, "bqemu.log")).read())
        with open(self.ready) as f:
            info = json.load(f)
        self.port = info["https_port"]
        self.grpc_port = info.get("grpc_port") or 0
        self.url = info["base_url"]
        self.token_uri = info["token_uri"]
        if not self.key:
            self.key = os.path.join(self.dir, "key.json")
            subprocess.run([PY, BQEMU, "gen-key", "--dir", self.data, "--out", self.key,
                            "--token-uri", self.token_uri], check=True, stdout=subprocess.DEVNULL)
            os.chmod(self.key, 0o600)
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
        self.proc = None

    def create_table(self, fqtn, fields):
        path = os.path.join(self.dir, fqtn + ".schema.json")
        with open(path, "w") as f:
            json.dump({"fields": fields}, f)
        subprocess.run([PY, BQEMU, "create-table", "--dir", self.data, fqtn, "--schema", path,
                        "--replace"], check=True, stdout=subprocess.DEVNULL)

    def _call(self, method, path, body=None):
        import ssl
        import urllib.request
        ctx = ssl.create_default_context(cafile=self.ca)
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
            return json.loads(r.read() or b"null")

    def fault(self, **spec):
        return self._call("POST", "/_emu/faults", spec)

    def clear_faults(self):
        return self._call("DELETE", "/_emu/faults")

    def stats(self):
        return self._call("GET", "/_emu/stats")

    def revoke_tokens(self):
        return self._call("POST", "/_emu/reset", {"tokens": True, "faults": False, "stats": False})

    def rows(self, table):
        return self._call("GET", "/_emu/rows?table=" + table)["rows"]

    def count(self, table):
        import urllib.error
        try:
            doc = self._call("GET", "/_emu/rows?table=" + table + "&limit=1")
        except urllib.error.HTTPError as e:
            if e.code == 404:      # no such table (yet)
                return 0
            raise
        return doc["tables"].get(table, {}).get("stored", 0)

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


EVENTS_SCHEMA = [
    {"name": "p", "type": "INTEGER"},
    {"name": "i", "type": "INTEGER", "mode": "REQUIRED"},
    {"name": "msg", "type": "STRING"},
    {"name": "ok", "type": "BOOLEAN"},
]


def write_to(emu, project="proj", dataset="logs", **extra):
    """Destination keys for relayd to deliver over the Storage Write API."""
    kv = deliver_to(emu, project, dataset, api="storage",
                    storage_endpoint=f"127.0.0.1:{emu.grpc_port}")
    kv.update(extra)
    return kv


def deliver_to(emu, project="proj", dataset="logs", **extra):
    """Destination keys for relayd to deliver to the emulator."""
    kv = {"project": project, "dataset": dataset, "credentials": emu.key,
          "endpoint": emu.url, "ca_file": emu.ca, "flush_interval": "50ms",
          "retry_base": "100ms", "retry_cap": "2s", "rate_limit_wait": "500ms",
          "quota_wait": "2s", "park_wait": "2s"}
    kv.update(extra)
    return kv
