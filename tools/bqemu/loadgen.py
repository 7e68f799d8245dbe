#!/usr/bin/python3
"""Load generator for bqemu: measures insertAll throughput (rows/s).

Each worker process holds keep-alive HTTPS connections (one per thread) and
sends the same pre-built, gzip-compressed insertAll body again and again, so
the client spends little CPU per request and the figure reflects the
emulator.  Rows are ~200-byte NDJSON-like records.  A token is taken from the
control API (POST /_emu/token).

  /usr/bin/python3 tools/bqemu/loadgen.py --ready-file RUN/ready.json --ca TLS/ca.pem \
      --table emu-project.bench.events --create --rows 500 --requests 2000 --procs 2 --threads 2
"""

import argparse
import gzip
import http.client
import json
import multiprocessing
import os
import ssl
import sys
import threading
import time
import urllib.parse

SCHEMA = [{"name": "ts", "type": "TIMESTAMP", "mode": "REQUIRED"}, {"name": "host", "type": "STRING"},
          {"name": "level", "type": "STRING"}, {"name": "seq", "type": "INTEGER"},
          {"name": "msg", "type": "STRING"}]


def make_body(rows, with_ids, tag):
    out = []
    for i in range(rows):
        row = {"json": {"ts": "2026-01-02 03:04:05.123456 UTC", "host": "web-%03d" % (i % 100),
                        "level": "INFO", "seq": i,
                        "msg": "request served path=/api/v1/items/%d status=200 bytes=%d trace=%s"
                               % (i, 1000 + i, os.urandom(16).hex())}}
        if with_ids:
            row["insertId"] = "%s-%d" % (tag, i)
        out.append(row)
    raw = json.dumps({"rows": out}, separators=(",", ":")).encode()
    return raw, gzip.compress(raw, compresslevel=6)


def connect(url, ca):
    u = urllib.parse.urlsplit(url)
    if u.scheme == "https":
        ctx = ssl.create_default_context(cafile=ca)
        return http.client.HTTPSConnection(u.hostname, u.port, context=ctx, timeout=60)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=60)


def control(url, ca, path, obj):
    c = connect(url, ca)
    body = json.dumps(obj).encode()
    c.request("POST", "/_emu" + path, body, {"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, json.loads(data)


def worker(url, ca, path, token, body, n_requests, threads, result_q):
    counts = [0] * threads
    errors = [0] * threads

    def run(k):
        c = connect(url, ca)
        hdrs = {"Authorization": "Bearer " + token, "Content-Type": "application/json",
                "Content-Encoding": "gzip"}
        for _ in range(n_requests // threads + (1 if k < n_requests % threads else 0)):
            c.request("POST", path, body, hdrs)
            r = c.getresponse()
            r.read()
            if r.status == 200:
                counts[k] += 1
            else:
                errors[k] += 1
        c.close()

    ts = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    result_q.put((sum(counts), sum(errors)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ready-file", help="the emulator's ready file (for the base URL)")
    ap.add_argument("--url", help="base URL instead of --ready-file")
    ap.add_argument("--ca", help="CA file (gen-tls ca.pem)")
    ap.add_argument("--table", default="emu-project.bench.events")
    ap.add_argument("--create", action="store_true", help="create the table through the control API first")
    ap.add_argument("--rows", type=int, default=500, help="rows per request (default 500)")
    ap.add_argument("--requests", type=int, default=1000, help="requests in total (default 1000)")
    ap.add_argument("--procs", type=int, default=2, help="client processes (default 2)")
    ap.add_argument("--threads", type=int, default=2, help="connections per process (default 2)")
    ap.add_argument("--insert-ids", action="store_true", help="give every row an insertId")
    args = ap.parse_args()
    url = args.url or json.load(open(args.ready_file))["base_url"]
    p, d, t = args.table.split(".")
    if args.create:
        control(url, args.ca, "/tables", {"table": args.table, "schema": SCHEMA, "replace": True})
    _, tok = control(url, args.ca, "/token", {"scopes": ["https://www.googleapis.com/auth/bigquery"]})
    raw, body = make_body(args.rows, args.insert_ids, "lg%d" % os.getpid())
    path = "/bigquery/v2/projects/%s/datasets/%s/tables/%s/insertAll" % (p, d, t)
    q = multiprocessing.Queue()
    per = [args.requests // args.procs + (1 if i < args.requests % args.procs else 0) for i in range(args.procs)]
    procs = [multiprocessing.Process(target=worker, args=(url, args.ca, path, tok["access_token"], body, n,
                                                          args.threads, q)) for n in per]
    t0 = time.monotonic()
    for pr in procs:
        pr.start()
    ok = err = 0
    for _ in procs:
        a, b = q.get()
        ok, err = ok + a, err + b
    for pr in procs:
        pr.join()
    dt = time.monotonic() - t0
    print(json.dumps({"requests_ok": ok, "requests_failed": err, "rows": ok * args.rows,
                      "seconds": round(dt, 3), "rows_per_s": round(ok * args.rows / dt),
                      "requests_per_s": round(ok / dt, 1), "body_bytes_raw": len(raw),
                      "body_bytes_gzip": len(body)}))
    return 0 if err == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
