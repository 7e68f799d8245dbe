"""Tests of the emulator's Storage Write API (gRPC BigQueryWrite) through the wire.

Run from the repository root:

    /usr/bin/python3 -m unittest tests/emulator/test_bqemu_write.py

The module generates a test PKI, starts emulators as subprocesses with TLS and
`--grpc-port 0`, waits for their ready files, and talks gRPC to them over a
secure channel that trusts only the generated CA, with bearer tokens from the
emulator's OAuth token endpoint (a JWT grant signed here).

Everything a client needs is built here, independently of the emulator's
code: the request messages come from proto/*.proto compiled with protoc into
the test's temporary directory, the row descriptors are built with Google's
descriptor_pb2, and DATE/TIME/DATETIME/NUMERIC encodings are computed by this
file's own helpers (checked against the worked values of the wire reference).

Servers:
  main   default settings (600 s idle timeout, 10 MB request limit)
  idle   --grpc-idle-timeout 1: real idle closes
"""

import base64
import datetime
import decimal
import importlib
import json
import os
import queue
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse
import urllib.request

os.environ.setdefault("GRPC_VERBOSITY", "NONE")       # the wrong-CA test makes gRPC core log
import grpc  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BQEMU = os.path.join(ROOT, "tools", "bqemu", "bqemu.py")
PROTO = os.path.join(ROOT, "proto")
PY = "/usr/bin/python3"
SVC = "/google.cloud.bigquery.storage.v1.BigQueryWrite/"
SCOPE_BQ = "https://www.googleapis.com/auth/bigquery"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
STORAGE_ERROR_URL = "type.googleapis.com/google.cloud.bigquery.storage.v1.StorageError"
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1

TMP = TLS = None
SERVERS = {}
MAIN = None
S = ST = None          # generated modules: storage, google.rpc status

# FieldDescriptorProto types and labels
T_DOUBLE, T_FLOAT, T_INT64, T_UINT64, T_INT32, T_BOOL, T_STRING, T_MESSAGE, T_BYTES, T_UINT32, T_ENUM = \
    1, 2, 3, 4, 5, 8, 9, 11, 12, 13, 14
OPT, REQ, REP = 1, 2, 3


# ----------------------------------------------------------------------------------------------
# helpers: processes, HTTP control, tokens

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


def sign_jwt(private_pem, claims, kid):
    key = serialization.load_pem_private_key(private_pem.encode(), password=None)
    head = b64url(json.dumps({"alg": "RS256", "typ": "JWT", "kid": kid}).encode())
    body = b64url(json.dumps(claims).encode())
    sig = key.sign((head + "." + body).encode(), padding.PKCS1v15(), hashes.SHA256())
    return head + "." + body + "." + b64url(sig)


class Server:
    def __init__(self, name, *extra):
        self.name, self.extra = name, list(extra)
        self.dir = os.path.join(TMP, name)
        self.ready = os.path.join(TMP, name + ".ready.json")
        self.proc = self.info = None

    def start(self):
        if os.path.exists(self.ready):
            os.unlink(self.ready)
        self.log = open(os.path.join(TMP, self.name + ".log"), "ab")
        self.proc = subprocess.Popen(
            [PY, BQEMU, "-v", "serve", "--dir", self.dir, "--port", "0", "--grpc-port", "0",
             "--tls-cert", os.path.join(TLS, "server.pem"), "--tls-key", os.path.join(TLS, "server.key"),
             "--ready-file", self.ready] + self.extra, stdout=self.log, stderr=self.log)
        return self

    def wait_ready(self):
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError("emulator %s exited with %s" % (self.name, self.proc.returncode))
            return os.path.exists(self.ready)
        wait_for(ready, 30, what="ready file of " + self.name)
        with open(self.ready) as f:
            self.info = json.load(f)
        self.ctx = ssl.create_default_context(cafile=os.path.join(TLS, "ca.pem"))
        with open(os.path.join(TLS, "ca.pem"), "rb") as f:
            self.creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()
        return self.proc.returncode if self.proc else None

    def http(self, method, path, obj=None, headers=None, raw=None):
        data = raw if raw is not None else (json.dumps(obj).encode() if obj is not None else None)
        hdrs = {"Content-Type": "application/json"}
        hdrs.update(headers or {})
        req = urllib.request.Request(self.info["base_url"] + path, data=data, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=30) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def control(self, method, sub, obj=None):
        st, body = self.http(method, "/_emu" + sub, obj)
        if st != 200:
            raise AssertionError("control %s %s -> %d %s" % (method, sub, st, body))
        return body

    def create_table(self, ref, schema):
        return self.control("POST", "/tables", {"table": ref, "schema": schema, "replace": True})

    def rows(self, ref, canonical=False):
        return self.control("GET", "/rows?table=%s%s" % (urllib.parse.quote(ref), "&canonical=1" if canonical else ""))

    def stats(self):
        return self.control("GET", "/stats")

    def fault(self, spec):
        return self.control("POST", "/faults", spec)

    def insert(self, ref, json_rows, token):
        p, d, t = ref.split(".")
        return self.http("POST", "/bigquery/v2/projects/%s/datasets/%s/tables/%s/insertAll" % (p, d, t),
                         {"rows": [{"json": r} for r in json_rows]}, {"Authorization": "Bearer " + token})

    def oauth_token(self):
        """A token from the OAuth endpoint: JWT-bearer grant with a registered service-account key."""
        key_path = os.path.join(TMP, self.name + "-key.json")
        if not os.path.exists(key_path):
            run_cli("gen-key", "--dir", self.dir, "--out", key_path, "--token-uri", self.info["token_uri"])
        with open(key_path) as f:
            k = json.load(f)
        now = int(time.time())
        jwt = sign_jwt(k["private_key"], {"iss": k["client_email"], "scope": SCOPE_BQ, "aud": k["token_uri"],
                                          "iat": now, "exp": now + 3600}, k["private_key_id"])
        body = urllib.parse.urlencode({"grant_type": JWT_BEARER, "assertion": jwt}).encode()
        st, tok = self.http("POST", "/token", raw=body,
                            headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert st == 200, tok
        return tok["access_token"]


def setUpModule():
    global TMP, TLS, MAIN, S, ST
    TMP = tempfile.mkdtemp(prefix="bqemu-write-test-")
    TLS = os.path.join(TMP, "tls")
    run_cli("gen-tls", "--dir", TLS, "--wrong-ca")
    SERVERS["main"] = Server("main").start()
    SERVERS["idle"] = Server("idle", "--grpc-idle-timeout", "1").start()
    # our own copy of the messages, from the same .proto files the C client compiles
    pbdir = os.path.join(TMP, "pb")
    os.makedirs(pbdir)
    subprocess.run(["protoc", "--python_out=" + pbdir, "-I" + PROTO] +
                   [os.path.join(PROTO, n) for n in sorted(os.listdir(PROTO)) if n.endswith(".proto")],
                   check=True, timeout=60)
    sys.path.insert(0, pbdir)
    S = importlib.import_module("bigquery_storage_v1_pb2")
    ST = importlib.import_module("google_rpc_status_pb2")
    for s in SERVERS.values():
        s.wait_ready()
    MAIN = SERVERS["main"]
    MAIN.token = MAIN.oauth_token()
    SERVERS["idle"].token = SERVERS["idle"].control("POST", "/token", {"scopes": [SCOPE_BQ]})["access_token"]


def tearDownModule():
    for s in SERVERS.values():
        s.stop()
    if os.environ.get("BQEMU_TEST_KEEP"):
        print("kept", TMP, file=sys.stderr)
    else:
        shutil.rmtree(TMP, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# helpers: encodings (this file's own, checked against the reference's worked values)

EPOCH = datetime.date(1970, 1, 1)


def days(y, m, d):
    return (datetime.date(y, m, d) - EPOCH).days


def micros(y, mo, d, h=0, mi=0, s=0, us=0):
    delta = datetime.datetime(y, mo, d, h, mi, s, us) - datetime.datetime(1970, 1, 1)
    return (delta.days * 86400 + delta.seconds) * 1000000 + delta.microseconds


def pack_time(h, mi, s, us=0):
    return (((h << 12) | (mi << 6) | s) << 20) | us


def pack_datetime(y, mo, d, h=0, mi=0, s=0, us=0):
    return (((y << 26) | (mo << 22) | (d << 17) | (h << 12) | (mi << 6) | s) << 20) | us


def num_bytes(text, scale):
    unscaled = int(decimal.Decimal(text).scaleb(scale, decimal.Context(prec=100)))
    n = (unscaled.bit_length() + 8) // 8
    return unscaled.to_bytes(n, "little", signed=True)


def b64(raw):
    return base64.b64encode(raw).decode()


# ----------------------------------------------------------------------------------------------
# helpers: descriptors and rows

def field(dp, name, number, ptype, label=OPT, type_name=None, options=None):
    f = dp.field.add(name=name, number=number, label=label, type=ptype)
    if type_name:
        f.type_name = type_name
    if options is not None:
        f.options.MergeFromString(options)
    return f


def message_class(dp):
    """The message class for a self-contained DescriptorProto (as a client would build it)."""
    fdp = descriptor_pb2.FileDescriptorProto(name="client_%d.proto" % id(dp), syntax="proto2")
    fdp.message_type.add().CopyFrom(dp)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.MessageFactory(pool).GetPrototype(pool.FindMessageTypeByName(dp.name))


def fill(msg, values):
    for k, v in values.items():
        if isinstance(v, dict):
            fill(getattr(msg, k), v)
            getattr(msg, k).SetInParent()
        elif isinstance(v, list):
            rep = getattr(msg, k)
            for el in v:
                if isinstance(el, dict):
                    fill(rep.add(), el)
                else:
                    rep.append(el)
        else:
            setattr(msg, k, v)
    return msg


ALL_SCHEMA = [
    {"name": "i", "type": "INTEGER"}, {"name": "f", "type": "FLOAT"}, {"name": "b", "type": "BOOLEAN"},
    {"name": "s", "type": "STRING"}, {"name": "by", "type": "BYTES"}, {"name": "ts", "type": "TIMESTAMP"},
    {"name": "d", "type": "DATE"}, {"name": "t", "type": "TIME"}, {"name": "dt", "type": "DATETIME"},
    {"name": "num", "type": "NUMERIC"}, {"name": "bnum", "type": "BIGNUMERIC"}, {"name": "j", "type": "JSON"},
    {"name": "g", "type": "GEOGRAPHY"},
    {"name": "rd", "type": "RANGE", "rangeElementType": {"type": "DATE"}},
    {"name": "rts", "type": "RANGE", "rangeElementType": {"type": "TIMESTAMP"}},
    {"name": "rec", "type": "RECORD", "fields": [
        {"name": "a", "type": "INTEGER"}, {"name": "tags", "type": "STRING", "mode": "REPEATED"},
        {"name": "inner", "type": "RECORD", "fields": [{"name": "x", "type": "FLOAT"},
                                                       {"name": "when", "type": "DATETIME"}]}]},
    {"name": "kvs", "type": "RECORD", "mode": "REPEATED", "fields": [
        {"name": "k", "type": "STRING", "mode": "REQUIRED"}, {"name": "v", "type": "INTEGER"}]},
    {"name": "ints", "type": "INTEGER", "mode": "REPEATED"},
    {"name": "req", "type": "STRING", "mode": "REQUIRED"},
]


def all_descriptor():
    """Flattened like the official clients: every sub-message is a nested type of the root."""
    dp = descriptor_pb2.DescriptorProto(name="AllRow")
    for n, (name, t) in enumerate([("i", T_INT64), ("f", T_DOUBLE), ("b", T_BOOL), ("s", T_STRING),
                                   ("by", T_BYTES), ("ts", T_INT64), ("d", T_INT32), ("t", T_INT64),
                                   ("dt", T_INT64), ("num", T_BYTES), ("bnum", T_BYTES), ("j", T_STRING),
                                   ("g", T_STRING)], 1):
        field(dp, name, n, t)
    field(dp, "rd", 14, T_MESSAGE, type_name="RangeDate")
    field(dp, "rts", 15, T_MESSAGE, type_name="RangeTs")
    field(dp, "rec", 16, T_MESSAGE, type_name="Rec")
    field(dp, "kvs", 17, T_MESSAGE, REP, type_name="KV")
    field(dp, "ints", 18, T_INT64, REP)
    field(dp, "req", 19, T_STRING, REQ)
    rd = dp.nested_type.add(name="RangeDate")
    field(rd, "start", 1, T_INT32)
    field(rd, "end", 2, T_INT32)
    rt = dp.nested_type.add(name="RangeTs")
    field(rt, "start", 1, T_INT64)
    field(rt, "end", 2, T_INT64)
    rec = dp.nested_type.add(name="Rec")
    field(rec, "a", 1, T_INT64)
    field(rec, "tags", 2, T_STRING, REP)
    field(rec, "inner", 3, T_MESSAGE, type_name="Inner")      # found in the root's scope
    inner = dp.nested_type.add(name="Inner")
    field(inner, "x", 1, T_DOUBLE)
    field(inner, "when", 2, T_INT64)
    kv = dp.nested_type.add(name="KV")
    field(kv, "k", 1, T_STRING, REQ)
    field(kv, "v", 2, T_INT64)
    return dp


BIG76 = "12345678901234567890123456789012345678.12345678901234567890123456789012345678"
BIGNUM_MAX = "578960446186580977117854925043439539266.34992332820282019728792003956564819967"
BIGNUM_MIN = "-578960446186580977117854925043439539266.34992332820282019728792003956564819968"
NUM_MAX = "99999999999999999999999999999.999999999"

# (proto values, the JSON row insertAll is given for the same values)
ALL_ROWS = [
    ({"i": INT64_MAX, "f": float("nan"), "b": False, "s": "", "by": b"\x00\xff\x10",
      "ts": micros(9999, 12, 31, 23, 59, 59, 999999), "d": days(9999, 12, 31), "t": pack_time(23, 59, 59, 999999),
      "dt": pack_datetime(9999, 12, 31, 23, 59, 59, 999999), "num": num_bytes(NUM_MAX, 9),
      "bnum": num_bytes(BIG76, 38), "j": '{"a":[1,2,{"b":null}],"u":"\u00fc"}', "g": "POINT(-122.35 47.62)",
      "rd": {"start": days(1969, 12, 31), "end": days(2000, 2, 29)}, "rts": {"start": 0},
      "rec": {"a": -1, "tags": ["\u03b1", "\U0001F600", ""], "inner": {"x": -0.0, "when": pack_datetime(1, 1, 1)}},
      "kvs": [{"k": "a", "v": 1}, {"k": "", "v": 0}], "ints": [INT64_MIN, 0, INT64_MAX],
      "req": "h\u00e9llo \u2713 \U0001F600 a\tb\n\"q\"\\"},
     {"i": INT64_MAX, "f": "NaN", "b": False, "s": "", "by": "AP8Q", "ts": "9999-12-31T23:59:59.999999Z",
      "d": "9999-12-31", "t": "23:59:59.999999", "dt": "9999-12-31T23:59:59.999999", "num": NUM_MAX,
      "bnum": BIG76, "j": '{"a":[1,2,{"b":null}],"u":"\u00fc"}', "g": "POINT(-122.35 47.62)",
      "rd": "[1969-12-31, 2000-02-29)", "rts": "[1970-01-01T00:00:00Z, UNBOUNDED)",
      "rec": {"a": -1, "tags": ["\u03b1", "\U0001F600", ""], "inner": {"x": -0.0, "when": "0001-01-01T00:00:00"}},
      "kvs": [{"k": "a", "v": 1}, {"k": "", "v": 0}], "ints": [INT64_MIN, 0, INT64_MAX],
      "req": "h\u00e9llo \u2713 \U0001F600 a\tb\n\"q\"\\"}),
    ({"i": INT64_MIN, "f": float("-inf"), "b": True, "s": "0", "by": b"", "ts": micros(1, 1, 1),
      "d": days(1, 1, 1), "t": pack_time(0, 0, 0), "dt": pack_datetime(1900, 2, 28, 12, 0, 0, 1),
      "num": num_bytes("-0.000000001", 9), "bnum": num_bytes("-" + BIG76, 38), "j": "null",
      "g": '{"type":"Point","coordinates":[1,2]}', "rd": {"end": days(1900, 3, 1)},
      "rts": {"start": micros(1969, 7, 20, 20, 17, 40), "end": micros(2000, 2, 29, 12, 0, 0, 500000)},
      "rec": {}, "req": "x"},
     {"i": INT64_MIN, "f": "-Infinity", "b": True, "s": "0", "by": "", "ts": "0001-01-01T00:00:00Z",
      "d": "0001-01-01", "t": "00:00:00", "dt": "1900-02-28T12:00:00.000001", "num": "-0.000000001",
      "bnum": "-" + BIG76, "j": "null", "g": '{"type":"Point","coordinates":[1,2]}',
      "rd": "[UNBOUNDED, 1900-03-01)", "rts": "[1969-07-20T20:17:40Z, 2000-02-29T12:00:00.500000Z)",
      "rec": {}, "req": "x"}),
    ({"req": "only-required"}, {"req": "only-required"}),
    # leap days, pre-1970 dates, the reference's worked values, explicit zeros (not NULLs)
    ({"i": 0, "f": 0.1, "b": False, "ts": -1, "d": days(1904, 2, 29), "t": 53880818184, "dt": 142431024298713664,
      "num": bytes.fromhex("002f6859"), "bnum": bytes.fromhex("0000000040228a097ac4865aa84c3b4b"),
      "rd": {"start": days(2024, 2, 29), "end": days(2024, 3, 1)}, "ints": [0], "req": ""},
     {"i": 0, "f": 0.1, "b": False, "ts": "1969-12-31T23:59:59.999999Z", "d": "1904-02-29", "t": "12:34:56.789000",
      "dt": "2024-01-02T03:04:05.123456", "num": "1.5", "bnum": "1", "rd": "[2024-02-29, 2024-03-01)",
      "ints": [0], "req": ""}),
    ({"f": 1.0, "num": bytes.fromhex("00d197a6"), "bnum": num_bytes(BIGNUM_MAX, 38),
      "ts": micros(2024, 2, 29, 23, 59, 59, 500000),
      "d": days(1969, 12, 31), "rts": {"end": micros(1970, 1, 1)}, "kvs": [{"k": "only-k"}], "req": "r5"},
     {"f": 1.0, "ts": "2024-02-29T23:59:59.500000Z", "d": "1969-12-31", "num": "-1.5", "bnum": BIGNUM_MAX,
      "rts": "[UNBOUNDED, 1970-01-01T00:00:00Z)", "kvs": [{"k": "only-k"}], "req": "r5"}),
    ({"num": bytes([0]), "bnum": num_bytes(BIGNUM_MIN, 38), "req": "r6"},
     {"num": "0", "bnum": BIGNUM_MIN, "req": "r6"}),
]


# ----------------------------------------------------------------------------------------------
# helpers: gRPC client

def areq(stream=None, rows=(), dp=None, offset=None):
    r = S.AppendRowsRequest()
    if stream:
        r.write_stream = stream
    if offset is not None:
        r.offset.value = offset
    if dp is not None:
        r.proto_rows.writer_schema.proto_descriptor.MergeFromString(dp.SerializeToString())
    if rows:
        r.proto_rows.rows.serialized_rows.extend(rows)
    elif dp is not None:
        r.proto_rows.rows.SetInParent()
    return r


def status_details(err):
    """google.rpc.Status and StorageError (or None) from a failed call's trailers."""
    md = dict(err.trailing_metadata() or ())
    raw = md.get("grpc-status-details-bin")
    if raw is None:
        return None, None
    st = ST.Status.FromString(raw)
    return st, storage_error_of(st)


def storage_error_of(st):
    for d in st.details:
        if d.type_url == STORAGE_ERROR_URL:
            return S.StorageError.FromString(d.value)
    return None


class Client:
    def __init__(self, server, token=None):
        self.server = server
        self.channel = grpc.secure_channel(server.info["grpc_target"], server.creds)
        self.token = server.token if token is None else token
        ser = lambda m: m.SerializeToString()   # noqa: E731
        self.stubs = {
            "CreateWriteStream": self.channel.unary_unary(SVC + "CreateWriteStream", ser, S.WriteStream.FromString),
            "GetWriteStream": self.channel.unary_unary(SVC + "GetWriteStream", ser, S.WriteStream.FromString),
            "FinalizeWriteStream": self.channel.unary_unary(SVC + "FinalizeWriteStream", ser,
                                                            S.FinalizeWriteStreamResponse.FromString),
            "BatchCommitWriteStreams": self.channel.unary_unary(SVC + "BatchCommitWriteStreams", ser,
                                                                S.BatchCommitWriteStreamsResponse.FromString),
            "FlushRows": self.channel.unary_unary(SVC + "FlushRows", ser, S.FlushRowsResponse.FromString),
        }
        self.append_stub = self.channel.stream_stream(SVC + "AppendRows", ser, S.AppendRowsResponse.FromString)

    def close(self):
        self.channel.close()

    def md(self, token=None, extra=()):
        tok = self.token if token is None else token
        return ([("authorization", "Bearer " + tok)] if tok else []) + list(extra)

    def call(self, method, req, token=None, params=None):
        extra = [("x-goog-request-params", params)] if params else []
        return self.stubs[method](req, metadata=self.md(token, extra), timeout=20)

    def create(self, table, stype=1):
        p, d, t = table.split(".")
        return self.call("CreateWriteStream", S.CreateWriteStreamRequest(
            parent="projects/%s/datasets/%s/tables/%s" % (p, d, t), write_stream=S.WriteStream(type=stype)))

    def appender(self, token=None, stream_param=None):
        extra = [("x-goog-request-params", "write_stream=" + stream_param)] if stream_param else []
        return Appender(self, self.md(token, extra))


class Appender:
    """One AppendRows call driven request by request."""

    def __init__(self, client, md):
        self.q = queue.Queue()

        def gen():
            while True:
                r = self.q.get()
                if r is None:
                    return
                yield r
        self.call = client.append_stub(gen(), metadata=md, timeout=60)

    def send(self, req):
        self.q.put(req)
        return next(self.call)

    def send_many(self, reqs):
        for r in reqs:
            self.q.put(r)
        return [next(self.call) for _ in reqs]

    def close(self):
        self.q.put(None)
        try:
            for _ in self.call:
                pass
        except grpc.RpcError:
            pass


def table_path(ref):
    return "projects/%s/datasets/%s/tables/%s" % tuple(ref.split("."))


def default_stream(ref):
    return table_path(ref) + "/streams/_default"


SIMPLE = [{"name": "n", "type": "INTEGER", "mode": "REQUIRED"}, {"name": "s", "type": "STRING"}]


def simple_descriptor():
    dp = descriptor_pb2.DescriptorProto(name="Simple")
    field(dp, "n", 1, T_INT64)
    field(dp, "s", 2, T_STRING)
    return dp


SIMPLE_DP = None
SimpleRow = None


def simple_rows(start, count):
    global SIMPLE_DP, SimpleRow
    if SimpleRow is None:
        SIMPLE_DP = simple_descriptor()
        SimpleRow = message_class(SIMPLE_DP)
    return [SimpleRow(n=i, s="row %d" % i).SerializeToString() for i in range(start, start + count)]


class WriteTestCase(unittest.TestCase):
    server = None

    @classmethod
    def setUpClass(cls):
        cls.server = cls.server or MAIN
        cls.client = Client(cls.server)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()

    def setUp(self):
        self.server.control("DELETE", "/faults")

    def table(self, name, schema=None):
        ref = "wproj.wds.%s" % name
        self.server.create_table(ref, schema or SIMPLE)
        return ref

    def stored(self, ref, source="write", canonical=False):
        return [r for r in self.server.rows(ref, canonical)["rows"] if source is None or r["source"] == source]

    def assertAppendOK(self, resp, offset=None):
        self.assertEqual(resp.WhichOneof("response"), "append_result", resp)
        self.assertEqual(len(resp.row_errors), 0)
        if offset is None:
            self.assertFalse(resp.append_result.HasField("offset"), resp)
        else:
            self.assertEqual(resp.append_result.offset.value, offset)

    def assertAppendError(self, resp, code, storage_code=None):
        self.assertEqual(resp.WhichOneof("response"), "error", resp)
        self.assertEqual(resp.error.code, code, resp)
        se = storage_error_of(resp.error)
        if storage_code is not None:
            self.assertIsNotNone(se, resp)
            self.assertEqual(se.code, storage_code)
        return se

    def assertCallFails(self, fn, code):
        with self.assertRaises(grpc.RpcError) as cm:
            fn()
        self.assertEqual(cm.exception.code(), code, cm.exception.details())
        return cm.exception


# ----------------------------------------------------------------------------------------------
# The .proto files

class TestProtoFiles(unittest.TestCase):
    # field numbers transcribed from /work/shared/reference/bigquery-wire.md section 1.4
    EXPECTED = {
        "CreateWriteStreamRequest": {"parent": 1, "write_stream": 2},
        "WriteStream": {"name": 1, "type": 2, "create_time": 3, "commit_time": 4, "table_schema": 5,
                        "write_mode": 7, "location": 8},
        "GetWriteStreamRequest": {"name": 1, "view": 3},
        "AppendRowsRequest": {"write_stream": 1, "offset": 2, "proto_rows": 4, "arrow_rows": 5, "trace_id": 6,
                              "missing_value_interpretations": 7, "default_missing_value_interpretation": 8},
        "AppendRowsRequest.ProtoData": {"writer_schema": 1, "rows": 2},
        "AppendRowsResponse": {"append_result": 1, "error": 2, "updated_schema": 3, "row_errors": 4,
                               "write_stream": 5},
        "AppendRowsResponse.AppendResult": {"offset": 1},
        "RowError": {"index": 1, "code": 2, "message": 3},
        "StorageError": {"code": 1, "entity": 2, "error_message": 3},
        "FinalizeWriteStreamRequest": {"name": 1}, "FinalizeWriteStreamResponse": {"row_count": 1},
        "BatchCommitWriteStreamsRequest": {"parent": 1, "write_streams": 2},
        "BatchCommitWriteStreamsResponse": {"commit_time": 1, "stream_errors": 2},
        "FlushRowsRequest": {"write_stream": 1, "offset": 2}, "FlushRowsResponse": {"offset": 1},
        "ProtoSchema": {"proto_descriptor": 1}, "ProtoRows": {"serialized_rows": 1},
        "TableSchema": {"fields": 1},
        "TableFieldSchema": {"name": 1, "type": 2, "mode": 3, "fields": 4, "description": 6, "max_length": 7,
                             "precision": 8, "scale": 9, "default_value_expression": 10,
                             "range_element_type": 11, "timestamp_precision": 27},
    }

    def test_field_numbers_match_reference(self):
        for name, fields in self.EXPECTED.items():
            cls = S
            for part in name.split("."):
                cls = getattr(cls, part)
            got = {f.name: f.number for f in cls.DESCRIPTOR.fields}
            for fname, num in fields.items():
                self.assertEqual(got.get(fname), num, "%s.%s" % (name, fname))
        self.assertEqual(dict(S.StorageError.StorageErrorCode.items())["OFFSET_OUT_OF_RANGE"], 9)
        self.assertEqual(dict(S.TableFieldSchema.Type.items())["RANGE"], 16)
        self.assertEqual({f.name: f.number for f in ST.Status.DESCRIPTOR.fields},
                         {"code": 1, "message": 2, "details": 3})

    def test_reference_wire_example_decodes(self):
        # reference 2.5: 0a 2f <47-byte name> 22 06 12 04 0a 02 08 07
        name = b"projects/p/datasets/d/tables/t/streams/_default"
        name = name + b"x" * (47 - len(name))
        wire = b"\x0a\x2f" + name + bytes.fromhex("220612040a020807")
        req = S.AppendRowsRequest.FromString(wire)
        self.assertEqual(req.write_stream.encode(), name)
        self.assertEqual(list(req.proto_rows.rows.serialized_rows), [b"\x08\x07"])
        self.assertEqual(req.SerializeToString(), wire)

    def test_reference_encodings(self):
        self.assertEqual(pack_datetime(2024, 1, 2, 3, 4, 5, 123456), 142431024298713664)
        self.assertEqual(pack_time(12, 34, 56, 789000), 53880818184)
        self.assertEqual(num_bytes("1.5", 9), bytes.fromhex("002f6859"))
        self.assertEqual(num_bytes("-1.5", 9), bytes.fromhex("00d197a6"))
        self.assertEqual(num_bytes("0", 9), b"\x00")
        self.assertEqual(num_bytes("1", 38), bytes.fromhex("0000000040228a097ac4865aa84c3b4b"))
        opts = descriptor_pb2.FieldOptions()
        opts.MergeFromString(bytes.fromhex("aa9bbcc70d") + b"\x03abc")
        self.assertEqual(opts.SerializeToString()[:5], bytes.fromhex("aa9bbcc70d"))

    def test_protoc_c_compiles(self):
        if not shutil.which("protoc-c"):
            self.skipTest("protoc-c not installed")
        out = os.path.join(TMP, "c")
        os.makedirs(out, exist_ok=True)
        protos = [os.path.join(PROTO, n) for n in sorted(os.listdir(PROTO)) if n.endswith(".proto")]
        p = subprocess.run(["protoc-c", "--c_out=" + out, "-I" + PROTO] + protos, capture_output=True, text=True)
        self.assertEqual(p.returncode, 0, p.stderr)
        if not shutil.which("cc") or not os.path.exists("/usr/include/protobuf-c/protobuf-c.h"):
            return
        for c in sorted(f for f in os.listdir(out) if f.endswith(".c")):
            p = subprocess.run(["cc", "-std=c11", "-Wall", "-Wextra", "-Werror", "-c", "-I" + out,
                                os.path.join(out, c), "-o", os.devnull], capture_output=True, text=True)
            self.assertEqual(p.returncode, 0, p.stderr)


# ----------------------------------------------------------------------------------------------
# Values: the write path stores what insertAll stores

class TestValues(WriteTestCase):
    def test_all_types_equal_insertall(self):
        ref = self.table("all_types", ALL_SCHEMA)
        dp = all_descriptor()
        Row = message_class(dp)
        rows = [fill(Row(), pv).SerializeToString() for pv, _ in ALL_ROWS]
        a = self.client.appender()
        resp = a.send(areq(default_stream(ref), rows, dp))
        a.close()
        self.assertAppendOK(resp)
        st, body = MAIN.insert(ref, [j for _, j in ALL_ROWS], MAIN.token)
        self.assertEqual(st, 200, body)
        self.assertNotIn("insertErrors", body)
        written = self.stored(ref, "write")
        inserted = self.stored(ref, "insertAll")
        self.assertEqual(len(written), len(ALL_ROWS))
        for w, i, (_, expected) in zip(written, inserted, ALL_ROWS):
            self.assertEqual(w["json"], i["json"])
            self.assertEqual(w["json"], expected)
            order = [c["name"] for c in ALL_SCHEMA]
            self.assertEqual(list(w["json"]), [c for c in order if c in w["json"]])    # schema order
        # the default stream: stream name recorded, no offsets
        self.assertEqual({w["stream"] for w in written}, {default_stream(ref)})
        self.assertEqual({w["offset"] for w in written}, {None})
        # the canonical view of insertAll rows is the same too
        canon = [r["json"] for r in self.stored(ref, "insertAll", canonical=True)]
        self.assertEqual(canon, [w["json"] for w in written])

    def test_other_proto_encodings(self):
        schema = [{"name": "d", "type": "DATE"}, {"name": "dt", "type": "DATETIME"}, {"name": "t", "type": "TIME"},
                  {"name": "num", "type": "NUMERIC"}, {"name": "bnum", "type": "BIGNUMERIC"},
                  {"name": "b", "type": "BOOLEAN"}, {"name": "s", "type": "STRING"}, {"name": "by", "type": "BYTES"},
                  {"name": "ts", "type": "TIMESTAMP"}, {"name": "i", "type": "INTEGER"},
                  {"name": "p", "type": "NUMERIC", "precision": 5, "scale": 2}, {"name": "ld", "type": "DATE"}]
        ref = self.table("encodings", schema)
        dp = descriptor_pb2.DescriptorProto(name="Alt")
        for n, (name, t) in enumerate([("d", T_STRING), ("dt", T_STRING), ("t", T_STRING), ("num", T_STRING),
                                       ("bnum", T_DOUBLE), ("b", T_INT32), ("s", T_ENUM), ("by", T_STRING),
                                       ("ts", T_INT32), ("i", T_UINT32), ("p", T_INT64), ("ld", T_INT64)], 1):
            f = field(dp, name, n, t)
            if t == T_ENUM:
                f.type_name = "Level"
        e = dp.enum_type.add(name="Level")
        e.value.add(name="DEBUG", number=0)
        e.value.add(name="WARN", number=2)
        Row = message_class(dp)
        row = Row(d="2000-2-29", dt="2024-01-02 03:04:05.5", t="1:02:03", num="1.2345678905", bnum=0.25, b=7,
                  s=2, by="h\u00e9!", ts=-1, i=4294967295, p=-123, ld=days(1, 1, 1))
        row0 = Row(num="-00.10", b=0, s=0, by="", p=0)
        a = self.client.appender()
        self.assertAppendOK(a.send(areq(default_stream(ref), [row.SerializeToString(), row0.SerializeToString()], dp)))
        a.close()
        got = [r["json"] for r in self.stored(ref)]
        self.assertEqual(got, [
            {"d": "2000-02-29", "dt": "2024-01-02T03:04:05.500000", "t": "01:02:03", "num": "1.234567891",
             "bnum": "0.25", "b": True, "s": "WARN", "by": b64("h\u00e9!".encode()),
             "ts": "1969-12-31T23:59:59.999999Z",
             "i": 4294967295, "p": "-123", "ld": "0001-01-01"},
            {"num": "-0.1", "b": False, "s": "DEBUG", "by": "", "p": "0"}])
        # the same values spelled loosely through insertAll compare equal in canonical form
        st, body = MAIN.insert(ref, [
            {"d": "2000-02-29", "dt": "2024-01-02T03:04:05.5", "t": "01:02:03", "num": 1.2345678905, "bnum": "2.5e-1",
             "b": "TRUE", "s": "WARN", "by": b64("h\u00e9!".encode()).rstrip("="),
             "ts": "1969-12-31 23:59:59.999999 UTC",
             "i": "4294967295", "p": -123, "ld": "0001-1-1"},
            {"num": "-0.10", "b": "false", "s": "DEBUG", "by": "", "p": "0.00"}], MAIN.token)
        self.assertEqual(st, 200, body)
        self.assertNotIn("insertErrors", body)
        self.assertEqual([r["json"] for r in self.stored(ref, "insertAll", canonical=True)], got)

    def test_column_name_annotation_and_case(self):
        ref = self.table("annotated", [{"name": "Event-Name \u00e9", "type": "STRING"},
                                       {"name": "Count", "type": "INTEGER"}])
        dp = descriptor_pb2.DescriptorProto(name="Ann")
        name = "Event-Name \u00e9".encode()
        field(dp, "col_x", 1, T_STRING, options=bytes.fromhex("aa9bbcc70d") + bytes([len(name)]) + name)
        field(dp, "count", 2, T_INT64)       # column names match case-insensitively
        Row = message_class(dp)
        a = self.client.appender()
        self.assertAppendOK(a.send(areq(default_stream(ref), [Row(col_x="v", count=3).SerializeToString()], dp)))
        a.close()
        self.assertEqual(self.stored(ref)[0]["json"], {"Event-Name \u00e9": "v", "Count": 3})

    def test_bad_rows_reject_the_whole_request(self):
        schema = [{"name": "i", "type": "INTEGER"}, {"name": "d", "type": "DATE"}, {"name": "t", "type": "TIME"},
                  {"name": "num", "type": "NUMERIC"}, {"name": "s", "type": "STRING", "maxLength": 5},
                  {"name": "req", "type": "STRING", "mode": "REQUIRED"},
                  {"name": "rec", "type": "RECORD", "fields": [{"name": "k", "type": "STRING", "mode": "REQUIRED"}]}]
        ref = self.table("bad_rows", schema)
        dp = descriptor_pb2.DescriptorProto(name="Bad")
        for n, (name, t) in enumerate([("i", T_INT64), ("d", T_INT32), ("t", T_INT64), ("num", T_BYTES),
                                       ("s", T_STRING), ("req", T_STRING)], 1):
            field(dp, name, n, t)
        field(dp, "rec", 7, T_MESSAGE, type_name="Rec")
        field(dp.nested_type.add(name="Rec"), "k", 1, T_STRING)
        Row = message_class(dp)
        good = Row(i=1, req="ok").SerializeToString()
        rows = [good,
                Row(d=days(9999, 12, 31) + 1, req="r").SerializeToString(),          # 1: DATE out of range
                good,
                Row(t=pack_time(24, 0, 0), req="r").SerializeToString(),             # 3: hour 24
                Row(num=num_bytes("1e29", 9), req="r").SerializeToString(),          # 4: 30 integer digits
                Row(i=5).SerializeToString(),                                        # 5: REQUIRED missing
                b"\x2a\x02\xff\xfe" + Row(req="r").SerializeToString(),              # 6: s not UTF-8
                b"\x0a\x01x" + Row(req="r").SerializeToString(),                     # 7: i with a wrong wire type
                Row(s="toolong", req="r").SerializeToString(),                       # 8: maxLength
                fill(Row(req="r"), {"rec": {}}).SerializeToString()]                  # 9: rec.k missing
        a = self.client.appender()
        w = self.client.create(ref)
        resp = a.send(areq(w.name, rows, dp, offset=0))
        self.assertAppendError(resp, 3)
        self.assertEqual([e.index for e in resp.row_errors], [1, 3, 4, 5, 6, 7, 8, 9])
        self.assertEqual({e.code for e in resp.row_errors}, {S.RowError.FIELDS_ERROR})
        for e, name in zip(resp.row_errors, ["d", "t", "num", "req", "s", "i", "s", "rec.k"]):
            self.assertIn("Field %s" % name, e.message)
        self.assertEqual(self.stored(ref), [])
        # the call is still usable and the stream end did not move
        self.assertAppendOK(a.send(areq(rows=[good, good], offset=0)), 0)
        a.close()
        self.assertEqual(len(self.stored(ref)), 2)
        self.assertGreaterEqual(MAIN.stats()["write"]["rows"]["rejected"], len(rows))

    def test_schema_problems(self):
        ref = self.table("schema_problems")
        a = self.client.appender()
        extra = simple_descriptor()
        field(extra, "bogus", 3, T_STRING)
        se = self.assertAppendError(a.send(areq(default_stream(ref), [b"\x08\x01"], extra)), 3,
                                    S.StorageError.SCHEMA_MISMATCH_EXTRA_FIELDS)
        self.assertIn("bogus", se.error_message)
        wrong = descriptor_pb2.DescriptorProto(name="Wrong")
        field(wrong, "n", 1, T_STRING)
        resp = a.send(areq(default_stream(ref), [b"\x0a\x011"], wrong))
        self.assertAppendError(resp, 3)
        self.assertIn("n", resp.error.message)
        zigzag = descriptor_pb2.DescriptorProto(name="Zigzag")
        field(zigzag, "n", 1, 18)            # sint64: not a type BigQuery takes for INT64
        self.assertAppendError(a.send(areq(default_stream(ref), [b"\x08\x02"], zigzag)), 3)
        open_ref = descriptor_pb2.DescriptorProto(name="Open")
        field(open_ref, "n", 1, T_INT64)
        field(open_ref, "s", 2, T_MESSAGE, type_name=".some.other.Message")
        self.assertAppendError(a.send(areq(default_stream(ref), [b"\x08\x01"], open_ref)), 3)
        # a good schema on the same call works
        self.assertAppendOK(a.send(areq(default_stream(ref), simple_rows(0, 1), simple_descriptor())))
        a.close()


# ----------------------------------------------------------------------------------------------
# Streams and offsets

class TestStreams(WriteTestCase):
    def test_committed_offsets(self):
        ref = self.table("offsets")
        w = self.client.create(ref)
        self.assertEqual(w.type, S.WriteStream.COMMITTED)
        self.assertTrue(w.name.startswith(table_path(ref) + "/streams/"))
        self.assertEqual(w.commit_time, w.create_time)
        self.assertEqual([f.name for f in w.table_schema.fields], ["n", "s"])
        self.assertEqual(w.table_schema.fields[0].type, S.TableFieldSchema.INT64)
        self.assertEqual(w.table_schema.fields[0].mode, S.TableFieldSchema.REQUIRED)
        a = self.client.appender(stream_param=w.name)
        self.assertAppendOK(a.send(areq(w.name, simple_rows(0, 3), simple_descriptor(), offset=0)), 0)
        self.assertAppendOK(a.send(areq(rows=simple_rows(3, 2), offset=3)), 3)
        # a retry of an append that landed: ALREADY_EXISTS, rows not appended twice
        resp = a.send(areq(rows=simple_rows(3, 2), offset=3))
        se = self.assertAppendError(resp, 6, S.StorageError.OFFSET_ALREADY_EXISTS)
        self.assertEqual(se.entity, w.name)
        self.assertIn("expected offset 5, received 3", se.error_message)
        self.assertEqual(resp.write_stream, w.name)
        # a gap: OUT_OF_RANGE
        se = self.assertAppendError(a.send(areq(rows=simple_rows(9, 1), offset=7)), 11,
                                    S.StorageError.OFFSET_OUT_OF_RANGE)
        self.assertIn("expected offset 5, received 7", se.error_message)
        # no offset: appended at the end, and the answer says where
        self.assertAppendOK(a.send(areq(rows=simple_rows(5, 2))), 5)
        a.close()
        rows = self.stored(ref)
        self.assertEqual([r["offset"] for r in rows], list(range(7)))
        self.assertEqual([r["json"]["n"] for r in rows], list(range(7)))
        self.assertEqual({r["stream"] for r in rows}, {w.name})
        st = MAIN.stats()["write"]
        self.assertGreaterEqual(st["rows"]["deduplicated"], 2)
        self.assertGreaterEqual(st["append_requests"]["ALREADY_EXISTS"], 1)
        self.assertGreaterEqual(st["counters"]["routing_header_present"], 1)
        log = [e for e in st["append_rows_log"] if e["stream"] == w.name]
        self.assertEqual([(e["offset"], e["rows"], e["code"]) for e in log],
                         [(0, 3, "OK"), (3, 2, "OK"), (3, 2, "ALREADY_EXISTS"), (7, 1, "OUT_OF_RANGE"),
                          (None, 2, "OK")])
        streams = {s["name"]: s for s in MAIN.control("GET", "/streams")["streams"]}
        self.assertEqual(streams[w.name]["row_count"], 7)
        self.assertEqual(streams[w.name]["table"], ref)

    def test_resume_after_reconnect(self):
        ref = self.table("resume")
        w = self.client.create(ref)
        a = self.client.appender()
        self.assertAppendOK(a.send(areq(w.name, simple_rows(0, 4), simple_descriptor(), offset=0)), 0)
        a.close()
        # What a resuming client can ask: GetWriteStream tells that the stream exists and its type
        # and times; like the real service it carries no row count.
        g = self.client.call("GetWriteStream", S.GetWriteStreamRequest(name=w.name), params="name=" + w.name)
        self.assertEqual((g.name, g.type), (w.name, S.WriteStream.COMMITTED))
        self.assertEqual(g.create_time, w.create_time)
        self.assertFalse(g.HasField("table_schema"))
        self.assertEqual({f.name for f, _ in g.ListFields()},
                         {"name", "type", "create_time", "commit_time", "write_mode", "location"})
        full = self.client.call("GetWriteStream", S.GetWriteStreamRequest(name=w.name, view=S.FULL))
        self.assertEqual([f.name for f in full.table_schema.fields], ["n", "s"])
        # The end is learned from the offset check: a resend of the last batch it is unsure about
        # answers ALREADY_EXISTS with the stream's end ("expected offset N").
        b = self.client.appender()
        se = self.assertAppendError(b.send(areq(w.name, simple_rows(2, 2), simple_descriptor(), offset=2)), 6,
                                    S.StorageError.OFFSET_ALREADY_EXISTS)
        end = int(se.error_message.split("expected offset ")[1].split(",")[0])
        self.assertEqual(end, 4)
        self.assertAppendOK(b.send(areq(rows=simple_rows(4, 1), offset=end)), 4)
        b.close()
        # Finalize reports the row count and closes the stream to appends
        fin = self.client.call("FinalizeWriteStream", S.FinalizeWriteStreamRequest(name=w.name))
        self.assertEqual(fin.row_count, 5)
        c = self.client.appender()
        resp = c.send(areq(w.name, simple_rows(5, 1), simple_descriptor(), offset=5))
        self.assertAppendError(resp, 3, S.StorageError.STREAM_FINALIZED)
        self.assertAppendError(c.send(areq(rows=simple_rows(5, 1))), 3, S.StorageError.STREAM_FINALIZED)
        c.close()
        again = self.client.call("FinalizeWriteStream", S.FinalizeWriteStreamRequest(name=w.name))
        self.assertEqual(again.row_count, 5)
        self.assertEqual(len(self.stored(ref)), 5)

    def test_default_stream(self):
        ref = self.table("dflt")
        for name in (default_stream(ref), table_path(ref) + "/_default"):
            a = self.client.appender()
            resp = a.send(areq(name, simple_rows(0, 2), simple_descriptor()))
            self.assertAppendOK(resp, None)
            self.assertEqual(resp.write_stream, name)
            self.assertAppendError(a.send(areq(rows=simple_rows(2, 1), offset=2)), 3)
            self.assertAppendOK(a.send(areq(rows=simple_rows(2, 1))), None)
            a.close()
        self.assertEqual(len(self.stored(ref)), 6)
        g = self.client.call("GetWriteStream", S.GetWriteStreamRequest(name=default_stream(ref)))
        self.assertEqual(g.type, S.WriteStream.COMMITTED)
        self.assertCallFails(lambda: self.client.call("FinalizeWriteStream", S.FinalizeWriteStreamRequest(
            name=default_stream(ref))), grpc.StatusCode.INVALID_ARGUMENT)

    def test_pending_commit(self):
        ref = self.table("pending")
        p1, p2 = self.client.create(ref, S.WriteStream.PENDING), self.client.create(ref, S.WriteStream.PENDING)
        self.assertFalse(p1.HasField("commit_time"))
        for i, w in enumerate((p1, p2)):
            a = self.client.appender()
            self.assertAppendOK(a.send(areq(w.name, simple_rows(10 * i, 2), simple_descriptor(), offset=0)), 0)
            a.close()
        self.assertEqual(self.stored(ref), [])          # invisible until committed
        commit = S.BatchCommitWriteStreamsRequest(parent=table_path(ref), write_streams=[p1.name, p2.name])
        r = self.client.call("BatchCommitWriteStreams", commit)
        self.assertFalse(r.HasField("commit_time"))
        self.assertEqual({e.code for e in r.stream_errors}, {S.StorageError.INVALID_STREAM_STATE})
        for w in (p1, p2):
            self.assertEqual(self.client.call("FinalizeWriteStream",
                                              S.FinalizeWriteStreamRequest(name=w.name)).row_count, 2)
        self.assertEqual(self.stored(ref), [])
        r = self.client.call("BatchCommitWriteStreams", commit)
        self.assertTrue(r.HasField("commit_time"))
        self.assertEqual(len(r.stream_errors), 0)
        rows = self.stored(ref)
        self.assertEqual(sorted(r_["json"]["n"] for r_ in rows), [0, 1, 10, 11])
        g = self.client.call("GetWriteStream", S.GetWriteStreamRequest(name=p1.name))
        self.assertEqual(g.commit_time, r.commit_time)
        again = self.client.call("BatchCommitWriteStreams", commit)
        self.assertEqual({e.code for e in again.stream_errors}, {S.StorageError.STREAM_ALREADY_COMMITTED})
        c = self.client.create(ref)
        wrong = self.client.call("BatchCommitWriteStreams", S.BatchCommitWriteStreamsRequest(
            parent=table_path(ref), write_streams=[c.name]))
        self.assertEqual([e.code for e in wrong.stream_errors], [S.StorageError.INVALID_STREAM_TYPE])
        self.assertEqual(len(self.stored(ref)), 4)

    def test_buffered_flush(self):
        ref = self.table("buffered")
        w = self.client.create(ref, S.WriteStream.BUFFERED)
        a = self.client.appender()
        self.assertAppendOK(a.send(areq(w.name, simple_rows(0, 3), simple_descriptor(), offset=0)), 0)
        a.close()
        self.assertEqual(self.stored(ref), [])
        flush = lambda off: self.client.call("FlushRows", S.FlushRowsRequest(  # noqa: E731
            write_stream=w.name, offset={"value": off}))
        self.assertEqual(flush(1).offset, 1)
        self.assertEqual([r["json"]["n"] for r in self.stored(ref)], [0, 1])
        flush(1)
        flush(0)
        self.assertEqual(len(self.stored(ref)), 2)      # flushing again shows nothing twice
        self.assertCallFails(lambda: flush(3), grpc.StatusCode.OUT_OF_RANGE)
        flush(2)
        self.assertEqual([r["json"]["n"] for r in self.stored(ref)], [0, 1, 2])

    def test_missing_table_and_stream(self):
        e = self.assertCallFails(lambda: self.client.create("wproj.wds.no_such_table"), grpc.StatusCode.NOT_FOUND)
        _, se = status_details(e)
        self.assertEqual(se.code, S.StorageError.TABLE_NOT_FOUND)
        a = self.client.appender()
        self.assertCallFails(lambda: a.send(areq(default_stream("wproj.wds.no_such_table"), simple_rows(0, 1),
                                                 simple_descriptor())), grpc.StatusCode.NOT_FOUND)
        ref = self.table("stream_missing")
        ghost = table_path(ref) + "/streams/ghost"
        self.assertCallFails(lambda: self.client.call("GetWriteStream", S.GetWriteStreamRequest(name=ghost)),
                             grpc.StatusCode.NOT_FOUND)
        a = self.client.appender()
        e = self.assertCallFails(lambda: a.send(areq(ghost, simple_rows(0, 1), simple_descriptor())),
                                 grpc.StatusCode.NOT_FOUND)
        self.assertEqual(status_details(e)[1].code, S.StorageError.STREAM_NOT_FOUND)

    def test_permission_denied(self):
        ref = self.table("iam_write")
        MAIN.control("POST", "/iam", {"deny": ["bigquery.tables.updateData"], "table": ref})
        try:
            a = self.client.appender()
            self.assertCallFails(lambda: a.send(areq(default_stream(ref), simple_rows(0, 1),
                                                     simple_descriptor())), grpc.StatusCode.PERMISSION_DENIED)
            self.assertCallFails(lambda: self.client.create(ref), grpc.StatusCode.PERMISSION_DENIED)
        finally:
            MAIN.control("DELETE", "/iam")
        a = self.client.appender()
        a.send(areq(default_stream(ref), simple_rows(0, 1), simple_descriptor()))
        self.assertEqual(len(self.stored(ref)), 1)

    def test_first_request_rules_and_size_limit(self):
        ref = self.table("first_rules")
        a = self.client.appender()
        self.assertCallFails(lambda: a.send(areq(rows=simple_rows(0, 1))), grpc.StatusCode.INVALID_ARGUMENT)
        a = self.client.appender()
        self.assertCallFails(lambda: a.send(areq(default_stream(ref), simple_rows(0, 1))),
                             grpc.StatusCode.INVALID_ARGUMENT)
        big = [b"\x08\x01\x12\x80\x80\x40" + b"x" * (1 << 20)] * 10      # 10 rows of 1 MiB: over 10 MB
        a = self.client.appender()
        e = self.assertCallFails(lambda: a.send(areq(default_stream(ref), big, simple_descriptor())),
                                 grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("AppendRows request too large", e.details())
        self.assertIn("limit 10485760", e.details())
        self.assertEqual(self.stored(ref), [])

    def test_switch_streams_on_one_call(self):
        ref, other = self.table("switch_a"), self.table("switch_b")
        w1, w2 = self.client.create(ref), self.client.create(ref)
        a = self.client.appender()
        self.assertAppendOK(a.send(areq(w1.name, simple_rows(0, 2), simple_descriptor(), offset=0)), 0)
        # another stream of the same table: the writer schema may be left out
        resp = a.send(areq(w2.name, simple_rows(10, 1), offset=0))
        self.assertAppendOK(resp, 0)
        self.assertEqual(resp.write_stream, w2.name)
        self.assertAppendOK(a.send(areq(rows=simple_rows(11, 1), offset=1)), 1)       # stays on w2
        # another table needs the schema again
        self.assertCallFails(lambda: a.send(areq(default_stream(other), simple_rows(0, 1))),
                             grpc.StatusCode.INVALID_ARGUMENT)
        self.assertEqual(sorted((r["stream"], r["offset"]) for r in self.stored(ref)),
                         sorted([(w1.name, 0), (w1.name, 1), (w2.name, 0), (w2.name, 1)]))

    def test_missing_value_interpretations(self):
        ref = self.table("defaults", [{"name": "n", "type": "INTEGER", "mode": "REQUIRED"},
                                      {"name": "zone", "type": "STRING", "mode": "REQUIRED",
                                       "defaultValueExpression": "'eu'"}])
        dp = descriptor_pb2.DescriptorProto(name="D")
        field(dp, "n", 1, T_INT64)
        Row = message_class(dp)
        a = self.client.appender()
        resp = a.send(areq(default_stream(ref), [Row(n=1).SerializeToString()], dp))
        self.assertAppendError(resp, 3)
        self.assertIn("zone", resp.row_errors[0].message)
        r = areq(rows=[Row(n=2).SerializeToString()])
        r.missing_value_interpretations["zone"] = S.AppendRowsRequest.DEFAULT_VALUE
        self.assertAppendOK(a.send(r))
        r = areq(rows=[Row(n=3).SerializeToString()])
        r.missing_value_interpretations["zone"] = S.AppendRowsRequest.MISSING_VALUE_INTERPRETATION_UNSPECIFIED
        self.assertAppendError(a.send(r), 3)
        r = areq(rows=[Row(n=4).SerializeToString()])
        r.default_missing_value_interpretation = S.AppendRowsRequest.DEFAULT_VALUE       # sticky from here
        self.assertAppendOK(a.send(r))
        self.assertAppendOK(a.send(areq(rows=[Row(n=5).SerializeToString()])))
        a.close()
        self.assertEqual([r_["json"] for r_ in self.stored(ref)], [{"n": 2}, {"n": 4}, {"n": 5}])

    def test_updated_schema(self):
        ref = self.table("evolving")
        a = self.client.appender()
        self.assertFalse(a.send(areq(default_stream(ref), simple_rows(0, 1), simple_descriptor())).HasField(
            "updated_schema"))
        MAIN.create_table(ref, SIMPLE + [{"name": "extra", "type": "STRING"}])     # like create-table --replace
        resp = a.send(areq(rows=simple_rows(1, 1)))
        self.assertAppendOK(resp)
        self.assertEqual([f.name for f in resp.updated_schema.fields], ["n", "s", "extra"])
        self.assertFalse(a.send(areq(rows=simple_rows(2, 1))).HasField("updated_schema"))
        a.close()
        # a new connection uses the new column
        dp = simple_descriptor()
        field(dp, "extra", 3, T_STRING)
        Row = message_class(dp)
        b = self.client.appender()
        self.assertAppendOK(b.send(areq(default_stream(ref), [Row(n=9, extra="new").SerializeToString()], dp)))
        b.close()
        self.assertEqual(self.stored(ref)[-1]["json"], {"n": 9, "extra": "new"})
        self.assertGreaterEqual(MAIN.stats()["write"]["counters"]["updated_schema_sent"], 1)

    def test_streams_survive_restart(self):
        srv = Server("restart").start().wait_ready()
        try:
            srv.token = srv.control("POST", "/token", {})["access_token"]
            ref = "wproj.wds.restart"
            srv.create_table(ref, SIMPLE)
            c = Client(srv)
            w = c.create(ref)
            a = c.appender()
            self.assertAppendOK(a.send(areq(w.name, simple_rows(0, 3), simple_descriptor(), offset=0)), 0)
            a.close()
            c.close()
            self.assertEqual(srv.stop(), 0)
            srv.start().wait_ready()
            srv.token = srv.control("POST", "/token", {})["access_token"]
            c = Client(srv)
            a = c.appender()
            self.assertAppendError(a.send(areq(w.name, simple_rows(0, 3), simple_descriptor(), offset=0)), 6,
                                   S.StorageError.OFFSET_ALREADY_EXISTS)
            self.assertAppendOK(a.send(areq(rows=simple_rows(3, 1), offset=3)), 3)
            a.close()
            c.close()
            self.assertEqual([r["offset"] for r in srv.rows(ref)["rows"]], [0, 1, 2, 3])
            out = run_cli("rows", "--dir", srv.dir, "--table", ref, "--json", "--canonical").stdout
            self.assertEqual({r["source"] for r in json.loads(out)["rows"]}, {"write"})
            self.assertEqual([r["json"] for r in json.loads(out)["rows"]],
                             [{"n": i, "s": "row %d" % i} for i in range(4)])
        finally:
            srv.stop()


# ----------------------------------------------------------------------------------------------
# Authentication

class TestAuth(WriteTestCase):
    def test_unauthenticated(self):
        ref = self.table("auth")
        e = self.assertCallFails(lambda: self.client.call("CreateWriteStream", S.CreateWriteStreamRequest(
            parent=table_path(ref), write_stream=S.WriteStream(type=1)), token=""), grpc.StatusCode.UNAUTHENTICATED)
        self.assertEqual(status_details(e)[0].code, 16)
        a = self.client.appender(token="")
        self.assertCallFails(lambda: a.send(areq(default_stream(ref), simple_rows(0, 1), simple_descriptor())),
                             grpc.StatusCode.UNAUTHENTICATED)
        a = self.client.appender(token="ya29.not-a-token")
        self.assertCallFails(lambda: a.send(areq(default_stream(ref), simple_rows(0, 1), simple_descriptor())),
                             grpc.StatusCode.UNAUTHENTICATED)
        storage_only = MAIN.control("POST", "/token", {"scopes": [
            "https://www.googleapis.com/auth/devstorage.read_only"]})["access_token"]
        a = self.client.appender(token=storage_only)
        self.assertCallFails(lambda: a.send(areq(default_stream(ref), simple_rows(0, 1), simple_descriptor())),
                             grpc.StatusCode.PERMISSION_DENIED)
        # insertdata scope is enough for the Write API
        ins = MAIN.control("POST", "/token", {"scopes": [
            "https://www.googleapis.com/auth/bigquery.insertdata"]})["access_token"]
        a = self.client.appender(token=ins)
        self.assertAppendOK(a.send(areq(default_stream(ref), simple_rows(0, 1), simple_descriptor())))
        a.close()
        self.assertEqual(len(self.stored(ref)), 1)

    def test_wrong_ca_refused(self):
        with open(os.path.join(TLS, "wrong-ca.pem"), "rb") as f:
            other = grpc.ssl_channel_credentials(root_certificates=f.read())
        ch = grpc.secure_channel(MAIN.info["grpc_target"], other)
        try:
            stub = ch.unary_unary(SVC + "GetWriteStream", lambda m: m.SerializeToString(), S.WriteStream.FromString)
            self.assertCallFails(lambda: stub(S.GetWriteStreamRequest(name="x"), timeout=5),
                                 grpc.StatusCode.UNAVAILABLE)
        finally:
            ch.close()


# ----------------------------------------------------------------------------------------------
# Faults

class TestFaults(WriteTestCase):
    def send_one(self, ref, client=None, rows=1):
        a = (client or self.client).appender()
        try:
            return a.send(areq(default_stream(ref), simple_rows(0, rows), simple_descriptor()))
        finally:
            a.close()

    def test_resource_exhausted_count(self):
        ref = self.table("f_quota")
        self.server.fault({"grpc": "RESOURCE_EXHAUSTED", "count": 2})
        for _ in range(2):
            e = self.assertCallFails(lambda: self.send_one(ref), grpc.StatusCode.RESOURCE_EXHAUSTED)
            self.assertTrue(e.details().startswith("Exceeds 'AppendRows throughput' quota"), e.details())
            st, _ = status_details(e)
            self.assertEqual(st.code, 8)
        self.assertAppendOK(self.send_one(ref))
        self.assertEqual(len(self.stored(ref)), 1)

    def test_resource_exhausted_for_seconds(self):
        ref = self.table("f_quota_time")
        self.server.fault({"grpc": "RESOURCE_EXHAUSTED", "for_s": 0.5})
        t0 = time.monotonic()
        self.assertCallFails(lambda: self.send_one(ref), grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.assertCallFails(lambda: self.send_one(ref), grpc.StatusCode.RESOURCE_EXHAUSTED)

        def ok():
            try:
                return self.send_one(ref)
            except grpc.RpcError as e:
                self.assertEqual(e.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
                return None
        wait_for(ok, 5, 0.05, "the throttling window to end")
        self.assertGreaterEqual(time.monotonic() - t0, 0.45)

    def test_unavailable_internal_and_in_stream(self):
        ref = self.table("f_codes")
        self.server.fault([{"grpc": "UNAVAILABLE"}, {"grpc": "INTERNAL"}])
        self.assertCallFails(lambda: self.send_one(ref), grpc.StatusCode.UNAVAILABLE)
        self.assertCallFails(lambda: self.send_one(ref), grpc.StatusCode.INTERNAL)
        self.server.fault({"grpc": "INTERNAL", "in_stream": True})
        a = self.client.appender()
        resp = a.send(areq(default_stream(ref), simple_rows(0, 1), simple_descriptor()))
        self.assertAppendError(resp, 13)
        self.assertAppendOK(a.send(areq(rows=simple_rows(1, 1))))        # same call, still open
        a.close()
        self.assertEqual([r["json"]["n"] for r in self.stored(ref)], [1])

    def test_idle_close_fault(self):
        ref = self.table("f_idle")
        self.server.fault({"idle_close": True})
        e = self.assertCallFails(lambda: self.send_one(ref), grpc.StatusCode.ABORTED)
        self.assertIn("Closing the stream because it has been inactive for 600 seconds. Entity: ", e.details())

    def test_drop_connection(self):
        ref = self.table("f_drop")
        w = self.client.create(ref)
        a = self.client.appender()
        self.assertAppendOK(a.send(areq(w.name, simple_rows(0, 1), simple_descriptor(), offset=0)), 0)
        self.server.fault({"drop": 1, "path": "write"})
        e = self.assertCallFails(lambda: a.send(areq(rows=simple_rows(1, 1), offset=1)), grpc.StatusCode.UNAVAILABLE)
        self.assertIsNone(status_details(e)[0])           # no status from the server: the socket died
        self.assertEqual(len(self.stored(ref)), 1)
        # after commit: the rows land, the answer is lost; the retry is absorbed by the offset check
        self.server.fault({"drop": 1, "path": "write", "after_commit": True})
        b = self.client.appender()
        self.assertCallFails(lambda: b.send(areq(w.name, simple_rows(1, 2), simple_descriptor(), offset=1)),
                             grpc.StatusCode.UNAVAILABLE)
        c = self.client.appender()
        self.assertAppendError(c.send(areq(w.name, simple_rows(1, 2), simple_descriptor(), offset=1)), 6)
        self.assertAppendOK(c.send(areq(rows=simple_rows(3, 1), offset=3)), 3)
        c.close()
        self.assertEqual([r["offset"] for r in self.stored(ref)], [0, 1, 2, 3])
        # reset: an RST instead of a FIN; the client sees the same
        self.server.fault({"drop": 1, "path": "write", "mode": "reset"})
        self.assertCallFails(lambda: self.send_one(ref), grpc.StatusCode.UNAVAILABLE)
        # cancel: only this call is reset
        self.server.fault({"drop": 1, "path": "write", "mode": "cancel"})
        self.assertCallFails(lambda: self.send_one(ref), grpc.StatusCode.CANCELLED)
        self.assertGreaterEqual(self.server.stats()["write"]["calls"]["AppendRows"].get("dropped", 0), 4)

    def test_down_and_latency_and_status(self):
        ref = self.table("f_misc")
        self.server.fault({"down": True})
        self.assertCallFails(lambda: self.send_one(ref), grpc.StatusCode.UNAVAILABLE)
        self.assertCallFails(lambda: self.client.create(ref), grpc.StatusCode.UNAVAILABLE)
        self.server.fault({"down": False})
        self.server.fault({"latency_ms": 300, "path": "write"})
        t0 = time.monotonic()
        self.assertAppendOK(self.send_one(ref))
        self.assertGreaterEqual(time.monotonic() - t0, 0.3)
        self.server.fault({"status": 503, "path": "write"})      # HTTP statuses map to gRPC codes
        self.assertCallFails(lambda: self.send_one(ref), grpc.StatusCode.UNAVAILABLE)
        self.server.fault({"grpc": "UNAVAILABLE", "method": "CreateWriteStream"})
        self.assertCallFails(lambda: self.client.create(ref), grpc.StatusCode.UNAVAILABLE)
        self.assertEqual(self.client.create(ref).type, S.WriteStream.COMMITTED)
        st = self.server.stats()["write"]["calls"]
        self.assertGreaterEqual(st["CreateWriteStream"]["UNAVAILABLE"], 1)

    def test_reject_pattern(self):
        ref = self.table("f_reject")
        self.server.fault({"reject_pattern": '"s":"row 1"', "path": "write", "message": "poison"})
        resp = self.send_one(ref, rows=3)
        self.assertAppendError(resp, 3)
        self.assertEqual([(e.index, e.message) for e in resp.row_errors], [(1, "poison")])
        self.assertEqual(self.stored(ref), [])

    def test_fault_cli(self):
        run_cli("fault", "--ready-file", MAIN.ready, "--grpc", "unavailable", "--count", "1")
        out = json.loads(run_cli("fault", "--ready-file", MAIN.ready, "--list").stdout)
        self.assertEqual(out["faults"][0]["grpc"], "UNAVAILABLE")
        self.assertCallFails(lambda: self.send_one(self.table("f_cli")), grpc.StatusCode.UNAVAILABLE)
        p = run_cli("fault", "--ready-file", MAIN.ready, "--json", '{"grpc": "NOPE"}', check=False)
        self.assertNotEqual(p.returncode, 0)


class TestIdleTimeout(WriteTestCase):
    server = None

    @classmethod
    def setUpClass(cls):
        cls.server = SERVERS["idle"]
        super().setUpClass()

    def test_real_idle_close(self):
        ref = self.table("idle")
        a = self.client.appender()
        self.assertAppendOK(a.send(areq(default_stream(ref), simple_rows(0, 1), simple_descriptor())))
        t0 = time.monotonic()
        with self.assertRaises(grpc.RpcError) as cm:
            next(a.call)                   # no more requests: the server closes the call
        self.assertEqual(cm.exception.code(), grpc.StatusCode.ABORTED)
        self.assertEqual(cm.exception.details(), "Closing the stream because it has been inactive for 1 seconds. "
                                                 "Entity: " + default_stream(ref))
        self.assertGreaterEqual(time.monotonic() - t0, 0.9)
        self.assertGreaterEqual(self.server.stats()["write"]["counters"]["idle_closes"], 1)
        # traffic keeps a call open
        b = self.client.appender()
        b.send(areq(default_stream(ref), simple_rows(0, 1), simple_descriptor()))
        for i in range(3):
            time.sleep(0.5)
            self.assertAppendOK(b.send(areq(rows=simple_rows(i, 1))))
        b.close()


if __name__ == "__main__":
    unittest.main()
