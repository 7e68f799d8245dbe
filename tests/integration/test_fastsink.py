"""The fast sink (build/fastsink, tools/fastsink): the real relayd delivers to it over
insertAll (HTTPS, gzip on and off) and the Storage Write API (gRPC over TLS, default
stream and exactly once), and it counts exactly what arrived; it refuses wrong
tokens (401 / UNAUTHENTICATED), malformed JSON and bodies, corrupt gzip and
undecodable protobuf as BigQuery would, and counts a gzip body right."""
import base64
import gzip
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import time
import unittest
import urllib.error
import urllib.parse
import urllib.request

from relaytest import BUILD, Producer, RelayTest, _tls_dir, wait_for

FASTSINK = os.path.join(BUILD, "fastsink")
TABLE = "proj.logs.events"
SCHEMA = [{"name": "i", "type": "INTEGER", "mode": "REQUIRED"},
          {"name": "msg", "type": "STRING"},
          {"name": "ok", "type": "BOOLEAN"}]


def rows(n, start=0):
    return [json.dumps({"i": start + k, "msg": "row %d" % (start + k), "ok": k % 2 == 0})
            for k in range(n)]


class FastSink:
    """One fastsink process over TLS with the tests' CA (relaytest's shared one)."""

    def __init__(self, testcase, fields=SCHEMA):
        self.dir = tempfile.mkdtemp(prefix="fastsink-test-")
        tls = _tls_dir()
        self.ca = os.path.join(tls, "ca.pem")
        self.key = os.path.join(self.dir, "key.json")
        ready = os.path.join(self.dir, "ready.json")
        schema = os.path.join(self.dir, "schema.json")
        with open(schema, "w") as f:
            json.dump({"fields": fields}, f)
        self.log = open(os.path.join(self.dir, "sink.log"), "wb")
        self.proc = subprocess.Popen(
            [FASTSINK, "serve", "--port", "0", "--grpc-port", "0",
             "--tls-cert", os.path.join(tls, "server.pem"), "--tls-key", os.path.join(tls, "server.key"),
             "--key-out", self.key, "--ready-file", ready, "--schema", f"{TABLE}={schema}"],
            stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL)
        testcase.addCleanup(self.cleanup)
        wait_for(lambda: os.path.exists(ready) or self.proc.poll() is not None, 20, "the sink's ready file")
        if self.proc.poll() is not None:
            raise AssertionError("fastsink died: " + open(os.path.join(self.dir, "sink.log")).read())
        with open(ready) as f:
            self.info = json.load(f)
        self.url = self.info["base_url"]
        self.ctx = ssl.create_default_context(cafile=self.ca)

    def call(self, method, path, body=None, headers=None):
        """-> (HTTP status, parsed JSON answer)."""
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=30) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def stats(self):
        return self.call("GET", "/stats")[1]

    def token(self):
        """An access token through the JWT bearer grant, signed with the key file."""
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding
        with open(self.key) as f:
            k = json.load(f)

        def b64(data):
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
        now = int(time.time())
        head = b64(json.dumps({"alg": "RS256", "typ": "JWT", "kid": k["private_key_id"]}).encode())
        claims = b64(json.dumps({"iss": k["client_email"], "aud": k["token_uri"], "iat": now,
                                 "exp": now + 600,
                                 "scope": "https://www.googleapis.com/auth/bigquery"}).encode())
        pk = serialization.load_pem_private_key(k["private_key"].encode(), None)
        sig = pk.sign(f"{head}.{claims}".encode(), padding.PKCS1v15(), hashes.SHA256())
        form = urllib.parse.urlencode({"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                                       "assertion": f"{head}.{claims}.{b64(sig)}"}).encode()
        st, ans = self.call("POST", "/token", form, {"Content-Type": "application/x-www-form-urlencoded"})
        assert st == 200, ans
        return ans["access_token"]

    def cleanup(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def thread_names(pid):
    """The names of a process's threads (/proc/PID/task/*/comm), with counts."""
    names = {}
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            n = open(f"/proc/{pid}/task/{t}/comm").read().strip()
        except OSError:
            continue   # ended meanwhile
        names[n] = names.get(n, 0) + 1
    return names


class FastSinkBase(RelayTest):
    SCHEMA = SCHEMA

    def setUp(self):
        if not os.path.exists(FASTSINK):
            self.fail(f"{FASTSINK} is missing: make all builds it")
        self.sink = FastSink(self, self.SCHEMA)

    def dest(self, storage=False, **extra):
        kv = {"project": "proj", "dataset": "logs", "credentials": self.sink.key,
              "endpoint": self.sink.url, "ca_file": self.sink.ca, "flush_interval": "50ms",
              "retry_base": "100ms", "retry_cap": "2s"}
        if storage:
            kv.update(api="storage", storage_endpoint=self.sink.info["grpc_target"])
        kv.update(extra)
        return kv

    def deliver(self, n, **dest):
        """Pipes n rows through a relayd delivering to the sink; returns its final status."""
        d = self.daemon(dests=[("events", self.dest(**dest))])
        d.start()
        p = Producer(d.sock)
        p.send_lines(rows(n))
        self.assertEqual(p.finish(), n)
        self.assertEqual(p.errors, {})
        p.close()
        wait_for(lambda: d.status()["spool"]["records"] == 0, 60, "the queue to drain", interval=0.05)
        st = {x["name"]: x for x in d.status()["destinations"]}["events"]["delivery"]
        self.threads = thread_names(d.proc.pid)
        self.assertEqual(d.stop(), 0)
        return st


class RelaydToSinkTest(FastSinkBase):
    def test_insertall_with_gzip_every_row_counted(self):
        st = self.deliver(20000, gzip="yes")
        self.assertEqual((st["delivered"], st["dead_lettered"]), (20000, 0))
        s = self.sink.stats()
        self.assertGreaterEqual(s["rows"]["insertall"], 20000)   # at least once
        self.assertEqual(s["tables"][TABLE]["insertall_rows"], s["rows"]["insertall"])
        self.assertEqual(s["insertall"]["gzip_requests"], s["insertall"]["requests"])
        self.assertGreater(s["insertall"]["decoded_bytes"], 10 * s["insertall"]["body_bytes"])
        self.assertEqual(s["http"]["tokens_minted"], 1)

    def test_insertall_without_gzip(self):
        st = self.deliver(20000, gzip="no")
        self.assertEqual(st["delivered"], 20000)
        s = self.sink.stats()
        self.assertGreaterEqual(s["rows"]["insertall"], 20000)
        self.assertEqual(s["insertall"]["gzip_requests"], 0)
        self.assertEqual(s["insertall"]["rejected"], 0)

    def test_storage_write_default_stream_schema_from_tables_get(self):
        st = self.deliver(20000, storage=True)
        self.assertEqual((st["delivered"], st["dead_lettered"]), (20000, 0))
        s = self.sink.stats()
        self.assertGreaterEqual(s["rows"]["storage"], 20000)
        self.assertGreaterEqual(s["http"]["tables_get"], 1)       # the writer fetched the schema
        self.assertEqual(s["storage"]["append_errors"], 0)
        self.assertEqual(s["rows"]["insertall"], 0)
        # relayd's threads are named after their jobs (top -H, per-thread CPU)
        for name in ("relayd-commit", "relayd-send", "relayd-write0", "relayd-record"):
            self.assertEqual(self.threads.get(name), 1, (name, self.threads))

    def test_storage_write_exactly_once_counts_exactly(self):
        st = self.deliver(20000, storage=True, delivery="exactly_once", batch_rows=700, connections=2)
        # one writer thread per connection, one recorder for the destination
        self.assertEqual((self.threads.get("relayd-write0"), self.threads.get("relayd-write1"),
                          self.threads.get("relayd-record")), (1, 1, 1), self.threads)
        self.assertEqual((st["delivered"], st["dead_lettered"]), (20000, 0))
        s = self.sink.stats()
        self.assertEqual(s["rows"]["storage"], 20000)
        self.assertEqual(s["storage"]["streams_created"], 2)   # one per connection
        self.assertEqual(s["storage"]["offset_already_exists"] + s["storage"]["offset_out_of_range"], 0)


class DrainMemoryTest(FastSinkBase):
    # bench_fill's rows
    SCHEMA = [{"name": n, "type": t} for n, t in (
        ("ts", "STRING"), ("host", "STRING"), ("service", "STRING"), ("level", "STRING"),
        ("seq", "INT64"), ("status", "INT64"), ("msg", "STRING"))]
    ROWS = 700000

    def drain(self, **dest):
        """Drains a pre-filled backlog of ROWS rows (about 150 MB of spool) to the
        sink; returns (the largest RssFile seen, in KiB; the spool file's size)."""
        d = self.daemon(dests=[("events", self.dest(**dest))], spool__max_spool_bytes="1G")
        subprocess.run([os.path.join(BUILD, "bench", "bench_fill"), d.spool, "events", str(self.ROWS)],
                       check=True, stdout=subprocess.DEVNULL)
        size = os.path.getsize(os.path.join(d.spool, "data.mdb"))
        d.start()
        peak = 0

        def drained():
            nonlocal peak
            peak = max(peak, d.rss_kb("RssFile"))
            return d.status()["spool"]["records"] == 0
        wait_for(drained, 120, "the backlog to drain", interval=0.01)
        st = {x["name"]: x for x in d.status()["destinations"]}["events"]["delivery"]
        self.assertEqual((st["delivered"], st["dead_lettered"]), (self.ROWS, 0))
        self.assertEqual(d.stop(), 0)
        return peak, size

    def test_draining_a_backlog_does_not_map_it_all(self):
        """spool_read unmaps what it has read every 16 MiB: draining a backlog
        that no ingest follows (after an outage, say) keeps the spool's part of
        relayd's resident set at a few tens of MiB, not the backlog's size."""
        for dest in ({"storage": True}, {"gzip": "yes"}):
            peak, size = self.drain(**dest)
            self.assertGreater(size, 120 << 20)
            # the libraries' code pages are file-backed too (about 20-30 MiB)
            self.assertLess(peak * 1024, size // 2, (dest, peak, size))


class SinkChecksTest(FastSinkBase):
    PATH = "/bigquery/v2/projects/proj/datasets/logs/tables/events/insertAll"

    def insert(self, body, token, **headers):
        h = {"Content-Type": "application/json"}
        if token:
            h["Authorization"] = "Bearer " + token
        h.update(headers)
        return self.sink.call("POST", self.PATH, body, h)

    def test_gzip_body_counted_and_wrong_tokens_refused(self):
        tok = self.sink.token()
        # raw UTF-8, escapes and a surrogate pair; every other row without insertId
        body = json.dumps({"skipInvalidRows": False, "rows": [
            dict({"json": {"i": i, "msg": "é 😀 \\ \" \u0001", "e": "\ud83d\ude00"}},
                 **({"insertId": "id-%d" % i} if i % 2 else {})) for i in range(1234)]},
            ensure_ascii=False).replace('"e": "\ud83d\ude00"', '"e": "\\ud83d\\ude00"')
        st, ans = self.insert(gzip.compress(body.encode()), tok, **{"Content-Encoding": "gzip"})
        self.assertEqual(st, 200, ans)
        self.assertEqual(ans, {"kind": "bigquery#tableDataInsertAllResponse"})
        self.assertEqual(self.sink.stats()["rows"]["insertall"], 1234)
        # no token, a token it never minted, a malformed header
        for t, reason in ((None, "required"), ("ya29.not-minted-here", "authError")):
            st, ans = self.insert(body.encode(), t)
            self.assertEqual((st, ans["error"]["errors"][0]["reason"]), (401, reason))
            self.assertEqual(ans["error"]["status"], "UNAUTHENTICATED")
        st, _ = self.insert(body.encode(), None, Authorization="Basic eDp5")
        self.assertEqual(st, 401)
        self.assertEqual(self.sink.stats()["rows"]["insertall"], 1234)
        # a JWT signed by another key is refused at the token endpoint
        form = urllib.parse.urlencode({"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                                       "assertion": "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJ4In0.c2ln"}).encode()
        st, ans = self.sink.call("POST", "/token", form, {"Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual((st, ans["error"]), (400, "invalid_grant"))

    def test_malformed_bodies_are_refused_as_bigquery_does(self):
        tok = self.sink.token()
        cases = [
            (b'{"rows": [{"json": {"i": 1}}', "parseError"),                 # truncated
            (b'{"rows": [{"json": {"i": 1,}}]}', "parseError"),              # trailing comma
            (b'{"rows": [{"json": {"s": "\xc3\x28"}}]}', "parseError"),      # bad UTF-8
            (b'{"rows": [{"json": {"s": "\\ud800"}}]}', "parseError"),       # lone surrogate
            (b'{"rows": [{"json": {"n": 01}}]}', "parseError"),              # bad number
            (b'{"rows": [{"json": {"i": 1}}]} x', "parseError"),             # trailing data
            (b'[{"json": {}}]', "invalid"),                                  # not an object
            (b'{"rows": []}', "invalid"),                                    # no rows
            (b'{"rows": [{"json": [1]}]}', "invalid"),                       # json not an object
            (b'{"rows": [{"json": {}, "extra": 1}]}', "invalid"),            # unknown row member
            (b'{"rows": [{"json": {}, "insertId": 5}]}', "invalid"),         # insertId not a string
            (b'{"rowz": [{"json": {}}]}', "invalid"),                        # unknown member
            (b'{"skipInvalidRows": "yes", "rows": [{"json": {}}]}', "invalid"),
        ]
        for body, reason in cases:
            st, ans = self.insert(body, tok)
            self.assertEqual((st, ans["error"]["errors"][0]["reason"]), (400, reason), body)
        st, ans = self.insert(b"\x1f\x8b\x08\x00garbage", tok, **{"Content-Encoding": "gzip"})
        self.assertEqual((st, ans["error"]["errors"][0]["reason"]), (400, "parseError"))
        st, ans = self.insert(b'{"rows": [{"json": {}}]}', tok, **{"Content-Type": "text/plain"})
        self.assertEqual((st, ans["error"]["errors"][0]["reason"]), (400, "invalid"))
        st, ans = self.sink.call("POST", "/bigquery/v2/projects/proj/datasets/logs/tables/nope/insertAll",
                                 b'{"rows": [{"json": {}}]}',
                                 {"Content-Type": "application/json", "Authorization": "Bearer " + tok})
        self.assertEqual((st, ans["error"]["message"]), (404, "Not found: Table proj:logs.nope"))
        st, ans = self.insert(json.dumps({"rows": [{"json": {}}] * 50001}).encode(), tok)
        self.assertEqual(st, 400)
        self.assertIn("Too many rows", ans["error"]["message"])
        s = self.sink.stats()
        self.assertEqual(s["rows"]["insertall"], 0)
        # tables.get answers the schema with legacy names and modes
        st, ans = self.sink.call("GET", "/bigquery/v2/projects/proj/datasets/logs/tables/events",
                                 headers={"Authorization": "Bearer " + tok})
        self.assertEqual(st, 200)
        self.assertEqual([(f["name"], f["type"], f["mode"]) for f in ans["schema"]["fields"]],
                         [("i", "INTEGER", "REQUIRED"), ("msg", "STRING", "NULLABLE"),
                          ("ok", "BOOLEAN", "NULLABLE")])

    def test_grpc_wrong_token_unauthenticated_and_bad_protobuf_invalid_argument(self):
        try:
            import grpc
        except ImportError:
            raise unittest.SkipTest("python3-grpcio is not installed")
        with open(self.sink.ca, "rb") as f:
            creds = grpc.ssl_channel_credentials(f.read())
        ch = grpc.secure_channel(self.sink.info["grpc_target"], creds)
        self.addCleanup(ch.close)
        svc = "/google.cloud.bigquery.storage.v1.BigQueryWrite/"
        ident = lambda b: b   # noqa: E731  (raw bytes in and out)
        append = ch.stream_stream(svc + "AppendRows", request_serializer=ident, response_deserializer=ident)
        create = ch.unary_unary(svc + "CreateWriteStream", request_serializer=ident,
                                response_deserializer=ident)
        for md in ((("authorization", "Bearer ya29.never-minted"),), ()):
            with self.assertRaises(grpc.RpcError) as e:
                list(append(iter([b""]), metadata=md, timeout=10))
            self.assertEqual(e.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
            with self.assertRaises(grpc.RpcError) as e:
                create(b"", metadata=md, timeout=10)
            self.assertEqual(e.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
        good = (("authorization", "Bearer " + self.sink.token()),)
        with self.assertRaises(grpc.RpcError) as e:
            list(append(iter([b"\xff\xff\xff"]), metadata=good, timeout=10))
        self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        # CreateWriteStream on an unknown table: NOT_FOUND (parent = field 1)
        parent = b"projects/proj/datasets/logs/tables/nope"
        with self.assertRaises(grpc.RpcError) as e:
            create(b"\x0a" + bytes([len(parent)]) + parent + b"\x12\x02\x10\x01", metadata=good, timeout=10)
        self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)
        s = self.sink.stats()
        self.assertEqual(s["storage"]["auth_failures"], 4)
        self.assertEqual(s["rows"]["storage"], 0)


if __name__ == "__main__":
    unittest.main()
