#!/usr/bin/python3
"""Load generator for bqemu's Storage Write API: measures AppendRows throughput (rows/s).

Each worker process opens its own gRPC channel (TLS, trusting --ca) and one
AppendRows call per --conns, and sends the same pre-built request of --rows
protobuf rows again and again, keeping up to --inflight requests unanswered
(pipelining, as the official clients do).  Rows carry the columns of
loadgen.py's insertAll rows (~200 bytes as JSON, ~150 as protobuf).  With
--stream committed every call writes its own COMMITTED stream with offsets;
the default is the table's _default stream.  A token is taken from the
control API (POST /_emu/token).

  /usr/bin/python3 tools/bqemu/loadgen_write.py --ready-file RUN/ready.json --ca TLS/ca.pem \\
      --create --rows 500 --requests 400 --procs 1 --conns 1
"""

import argparse
import json
import multiprocessing
import os
import queue
import ssl
import sys
import threading
import time
import urllib.request

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
import grpc  # noqa: E402
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from emu_pb import SERVICE, pb  # noqa: E402
from loadgen import SCHEMA  # noqa: E402

FIELDS = [("ts", 3), ("host", 9), ("level", 9), ("seq", 3), ("msg", 9)]     # proto types int64 / string


def descriptor():
    dp = descriptor_pb2.DescriptorProto(name="Event")
    for n, (name, t) in enumerate(FIELDS, 1):
        dp.field.add(name=name, number=n, label=1, type=t)
    return dp


def make_rows(n):
    dp = descriptor()
    fdp = descriptor_pb2.FileDescriptorProto(name="loadgen_event.proto", syntax="proto2")
    fdp.message_type.add().CopyFrom(dp)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    Event = message_factory.MessageFactory(pool).GetPrototype(pool.FindMessageTypeByName("Event"))
    return dp, [Event(ts=1767323045123456, host="web-%03d" % (i % 100), level="INFO", seq=i,
                      msg="request served path=/api/v1/items/%d status=200 bytes=%d trace=%s"
                      % (i, 1000 + i, os.urandom(16).hex())).SerializeToString() for i in range(n)]


def control(url, ca, path, obj):
    ctx = ssl.create_default_context(cafile=ca) if url.startswith("https") else None
    req = urllib.request.Request(url + "/_emu" + path, data=json.dumps(obj).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
        return json.load(r)


def worker(target, ca, table, token, n_rows, n_requests, conns, inflight, stream_kind, result_q):
    S = pb.storage
    dp, rows = make_rows(n_rows)
    creds = grpc.ssl_channel_credentials(open(ca, "rb").read()) if ca else None
    ch = grpc.secure_channel(target, creds) if creds else grpc.insecure_channel(target)
    ser = lambda m: m.SerializeToString()   # noqa: E731
    append = ch.stream_stream("/%s/AppendRows" % SERVICE, ser, S.AppendRowsResponse.FromString)
    create = ch.unary_unary("/%s/CreateWriteStream" % SERVICE, ser, S.WriteStream.FromString)
    md = [("authorization", "Bearer " + token)]
    p, d, t = table.split(".")
    parent = "projects/%s/datasets/%s/tables/%s" % (p, d, t)
    body = S.AppendRowsRequest()
    body.proto_rows.rows.serialized_rows.extend(rows)
    ok, failed = [0] * conns, [0] * conns
    times = []

    def run(k):
        n = n_requests // conns + (1 if k < n_requests % conns else 0)
        if stream_kind == "committed":
            name = create(S.CreateWriteStreamRequest(parent=parent, write_stream=S.WriteStream(type=1)),
                          metadata=md).name
        else:
            name = parent + "/streams/_default"
        slots = threading.Semaphore(inflight)
        times.append(time.time())

        def gen():
            for i in range(n):
                slots.acquire()
                r = S.AppendRowsRequest()
                r.CopyFrom(body)
                if i == 0:
                    r.write_stream = name
                    r.proto_rows.writer_schema.proto_descriptor.MergeFromString(dp.SerializeToString())
                if stream_kind == "committed":
                    r.offset.value = i * n_rows
                yield r
        for resp in append(gen(), metadata=md + [("x-goog-request-params", "write_stream=" + name)]):
            if resp.HasField("append_result"):
                ok[k] += 1
            else:
                failed[k] += 1
            slots.release()
        times.append(time.time())

    ts = [threading.Thread(target=run, args=(k,)) for k in range(conns)]
    for th in ts:
        th.start()
    for th in ts:
        th.join()
    ch.close()
    result_q.put((sum(ok), sum(failed), sum(map(len, rows)) / len(rows), min(times), max(times)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ready-file", required=True, help="the emulator's ready file (base URL and gRPC target)")
    ap.add_argument("--ca", help="CA file (gen-tls ca.pem); without it the channel is plaintext")
    ap.add_argument("--table", default="emu-project.bench.events_write")
    ap.add_argument("--create", action="store_true", help="create the table through the control API first")
    ap.add_argument("--rows", type=int, default=500, help="rows per request (default 500)")
    ap.add_argument("--requests", type=int, default=400, help="requests in total (default 400)")
    ap.add_argument("--procs", type=int, default=1, help="client processes (default 1)")
    ap.add_argument("--conns", type=int, default=1, help="AppendRows calls per process (default 1)")
    ap.add_argument("--inflight", type=int, default=8, help="unanswered requests per call (default 8)")
    ap.add_argument("--stream", choices=("default", "committed"), default="default")
    args = ap.parse_args()
    with open(args.ready_file) as f:
        info = json.load(f)
    if not info.get("grpc_target"):
        sys.exit("loadgen_write: the emulator was started without --grpc-port")
    url = info["base_url"]
    if args.create:
        control(url, args.ca, "/tables", {"table": args.table, "schema": SCHEMA, "replace": True})
    tok = control(url, args.ca, "/token", {"scopes": ["https://www.googleapis.com/auth/bigquery"]})["access_token"]
    mp = multiprocessing.get_context("spawn")       # no fork after grpc was imported
    q = mp.Queue()
    per = [args.requests // args.procs + (1 if i < args.requests % args.procs else 0) for i in range(args.procs)]
    procs = [mp.Process(target=worker, args=(info["grpc_target"], args.ca, args.table, tok, args.rows,
                                                          n, args.conns, args.inflight, args.stream, q))
             for n in per]
    for pr in procs:
        pr.start()
    ok = err = 0
    row_bytes = 0
    starts, ends = [], []
    for _ in procs:
        try:
            a, b, row_bytes, t_first, t_last = q.get(timeout=600)
        except queue.Empty:
            sys.exit("loadgen_write: a worker did not finish")
        ok, err = ok + a, err + b
        starts.append(t_first)
        ends.append(t_last)
    for pr in procs:
        pr.join()
    dt = max(ends) - min(starts)         # from the first call opened to the last answer (no start-up)
    print(json.dumps({"requests_ok": ok, "requests_failed": err, "rows": ok * args.rows,
                      "seconds": round(dt, 3), "rows_per_s": round(ok * args.rows / dt),
                      "requests_per_s": round(ok / dt, 1), "row_bytes_proto": round(row_bytes, 1),
                      "stream": args.stream}))
    return 0 if err == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
