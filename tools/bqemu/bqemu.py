#!/usr/bin/python3
"""bqemu: a local BigQuery emulator that speaks the real wire protocol.

It serves tabledata.insertAll and table metadata over HTTPS with Google's
error bodies, an OAuth2 token endpoint that verifies service-account JWTs,
an optional GCE metadata server, an optional Storage Write API (gRPC) service,
fault injection and a control API, and keeps the rows it accepts in an SQLite
file.  See docs/emulator.md.

Run it with the Debian interpreter (/usr/bin/python3): it needs
python3-cryptography, and for --grpc-port python3-grpcio, python3-protobuf and
protoc (protobuf-compiler).
"""

import argparse
import json
import logging
import os
import ssl
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from emu_common import iso_time, parse_table_ref  # noqa: E402

EPILOG = """\
examples:
  bqemu.py gen-tls --dir /tmp/emu/tls --wrong-ca
  bqemu.py serve --dir /tmp/emu --port 0 --tls-cert /tmp/emu/tls/server.pem \\
      --tls-key /tmp/emu/tls/server.key --metadata-port 0 --grpc-port 0 --ready-file /tmp/emu/ready.json
  bqemu.py gen-key --dir /tmp/emu --out /tmp/emu/key.json --token-uri https://127.0.0.1:PORT/token
  bqemu.py create-table --dir /tmp/emu my-proj.logs.events --schema events.json
  bqemu.py fault --ready-file /tmp/emu/ready.json --status 429 --count 3 --retry-after 1
  bqemu.py rows --dir /tmp/emu --table my-proj.logs.events --count
"""


def _dedup_window(text):
    t = text.strip().lower()
    if t in ("inf", "infinite", "forever", "unbounded", "-1"):
        return float("inf")
    v = float(t)
    if v < 0:
        raise argparse.ArgumentTypeError("dedup window must be >= 0, or 'inf'")
    return v


def _port(text):
    v = int(text)
    if not 0 <= v <= 65535:
        raise argparse.ArgumentTypeError("port must be 0..65535 (0 = pick a free port)")
    return v


# ----------------------------------------------------------------------------------------------
# commands

def cmd_serve(args):
    from emu_server import Config, serve
    if bool(args.tls_cert) != bool(args.tls_key):
        sys.exit("bqemu: --tls-cert and --tls-key go together")
    window = args.dedup_window
    if window is None:
        window = 0.0 if args.fast else 60.0
    cfg = Config(data_dir=args.dir, host=args.host, port=args.port, metadata_port=args.metadata_port,
                 tls_cert=args.tls_cert, tls_key=args.tls_key, token_lifetime=args.token_lifetime,
                 fast=args.fast, dedup_window=window, max_request_bytes=args.max_request_bytes,
                 max_rows=args.max_rows, idle_timeout=args.idle_timeout, project=args.project,
                 sa_email=args.sa_email, schema_dirs=args.schema_dir or [], ready_file=args.ready_file,
                 grpc_port=args.grpc_port, grpc_idle_timeout=args.grpc_idle_timeout,
                 grpc_max_request_bytes=args.grpc_max_request_bytes, grpc_workers=args.grpc_workers)
    return serve(cfg)


def cmd_gen_tls(args):
    from emu_tls import gen_tls
    for path in gen_tls(args.dir, wrong_ca=args.wrong_ca, bad_certs=args.bad_certs, days=args.days):
        print(path)
    return 0


def _write_private_json(path, obj):
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def cmd_gen_key(args):
    from emu_auth import KeyRegistry, generate_service_account
    if not args.no_register and not args.dir:
        sys.exit("bqemu: gen-key needs --dir (the emulator's data dir) to register the key, or --no-register")
    email = args.email or "relayd-test@%s.iam.gserviceaccount.com" % args.project
    info, public_pem = generate_service_account(args.project, email, args.token_uri)
    if not args.no_register:
        KeyRegistry(args.dir).register(info["private_key_id"], public_pem, {
            "client_email": email, "project_id": args.project, "token_uri": args.token_uri,
            "client_id": info["client_id"], "created": time.time()})
    _write_private_json(args.out, info)
    print("%s: service account %s, key id %s%s" % (args.out, email, info["private_key_id"],
                                                   "" if not args.no_register else " (not registered)"))
    return 0


def cmd_gen_user(args):
    from emu_auth import UserRegistry, generate_authorized_user
    info, meta = generate_authorized_user(args.token_uri, args.quota_project, args.account)
    if not args.no_register:
        UserRegistry(args.dir).register(info["refresh_token"], meta)
    _write_private_json(args.out, info)
    print("%s: authorized_user %s" % (args.out, info["client_id"]))
    return 0


def cmd_create_table(args):
    from emu_schema import SchemaError
    from emu_store import Store, TableExists
    ref = parse_table_ref(args.table)
    with open(args.schema) as f:
        schema = json.load(f)
    store = Store(args.dir)
    try:
        info = store.create_table(*ref, schema, replace=args.replace)
    except SchemaError as e:
        sys.exit("bqemu: invalid schema: %s" % e)
    except TableExists:
        sys.exit("bqemu: table %s already exists (use --replace to change its schema)" % args.table)
    finally:
        store.close()
    print("created %s.%s.%s with %d top-level field(s)" % (info.project, info.dataset, info.table_id,
                                                           len(info.schema)))
    return 0


def cmd_rows(args):
    from emu_store import DB_NAME, Store, rows_report
    if not os.path.exists(os.path.join(args.dir, DB_NAME)):
        sys.exit("bqemu: no emulator data in %s" % args.dir)
    store = Store(args.dir)
    try:
        ref = parse_table_ref(args.table) if args.table else None
        rep = rows_report(store, ref, args.limit, 0, with_rows=not args.count, canonical=args.canonical)
    finally:
        store.close()
    if rep is None:
        sys.exit("bqemu: no such table %s" % args.table)
    if args.json:
        json.dump(rep, sys.stdout, indent=None if not args.count else 2)
        sys.stdout.write("\n")
    elif args.count:
        if args.table:
            print(rep["count"] + rep["fast_rows"])
        else:
            for name, c in rep["tables"].items():
                print("%s\t%d%s" % (name, c["stored"] + c["fast_rows"],
                                    "\t(fast mode: %d counted, not stored)" % c["fast_rows"] if c["fast_rows"] else ""))
    else:
        for r in rep["rows"]:
            print("%s\t%s\t%s\t%s\t%s" % (r["table"], r["insert_id"] or "-", iso_time(r["arrival"]),
                                          r["request_no"], json.dumps(r["json"], separators=(",", ":"))))
    return 0


# -- commands that talk to a running server -------------------------------------------------

def _base_url(args):
    if args.url:
        return args.url.rstrip("/")
    if args.ready_file:
        with open(args.ready_file) as f:
            return json.load(f)["base_url"]
    if args.port is not None:
        return "%s://127.0.0.1:%d" % ("http" if args.http else "https", args.port)
    sys.exit("bqemu: say which server: --url, --ready-file or --port")


def control(args, method, path, obj=None):
    url = _base_url(args) + "/_emu" + path
    data = None if obj is None else json.dumps(obj).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    ctx = None
    if url.startswith("https:"):
        # Loopback control traffic: verify only when a CA is given.
        ctx = ssl.create_default_context(cafile=args.ca) if args.ca else ssl._create_unverified_context()
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as e:
        sys.exit("bqemu: %s %s -> %d %s" % (method, url, e.code, e.read().decode(errors="replace")))
    except (urllib.error.URLError, OSError) as e:
        sys.exit("bqemu: cannot reach %s: %s" % (url, e))


def _fault_spec(args):
    if args.json:
        return json.loads(args.json)
    spec = {}
    if args.status is not None:
        spec["status"] = args.status
    if args.latency_ms is not None:
        spec["latency_ms"] = args.latency_ms
    if args.drop is not None:
        spec["drop"] = args.drop
    if args.truncate is not None:
        spec["truncate"] = args.truncate
    if args.reject_pattern is not None:
        spec["reject_pattern"] = args.reject_pattern
    if args.down:
        spec["down"] = True
    if args.up:
        spec["down"] = False
    for key in ("count", "for_s", "after", "reason", "message", "retry_after", "table", "mode", "truncate_at"):
        v = getattr(args, key)
        if v is not None:
            spec[key] = v
    if args.after_commit:
        spec["after_commit"] = True
    if args.grpc is not None:
        spec["grpc"] = int(args.grpc) if args.grpc.isdigit() else args.grpc.upper()
    if args.idle_close:
        spec["idle_close"] = True
    if args.in_stream:
        spec["in_stream"] = True
    if args.method:
        spec["method"] = args.method if len(args.method) > 1 else args.method[0]
    if args.path:
        spec["path"] = args.path if len(args.path) > 1 else args.path[0]
    if args.unlimited:
        spec["count"] = None
    return spec


def cmd_fault(args):
    if args.list:
        out = control(args, "GET", "/faults")
    elif args.clear:
        out = control(args, "DELETE", "/faults")
    else:
        out = control(args, "POST", "/faults", _fault_spec(args))
    print(json.dumps(out, indent=2))
    return 0


def cmd_stats(args):
    out = control(args, "GET", "/stats" + ("" if args.log else "?log=0"))
    print(json.dumps(out, indent=2))
    return 0


def cmd_reset(args):
    body = {"faults": True, "stats": True, "rows": args.rows, "tokens": args.tokens}
    print(json.dumps(control(args, "POST", "/reset", body), indent=2))
    return 0


# ----------------------------------------------------------------------------------------------
# argument parsing

def _add_target(p):
    g = p.add_argument_group("which server")
    g.add_argument("--url", help="base URL of the server, e.g. https://127.0.0.1:8443")
    g.add_argument("--ready-file", help="read the base URL from the server's ready file")
    g.add_argument("--port", type=_port, help="port on 127.0.0.1 (HTTPS unless --http)")
    g.add_argument("--http", action="store_true", help="with --port: the server runs without TLS")
    g.add_argument("--ca", help="CA file to verify the server with (default: no verification; loopback only)")


def build_parser():
    ap = argparse.ArgumentParser(prog="bqemu.py", description=__doc__.split("\n\n")[0],
                                 epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging: one line per request on stderr")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("serve", help="run the emulator until SIGTERM/SIGINT",
                       description="Serve BigQuery REST (insertAll, tables, datasets), the OAuth token "
                                   "endpoint and the /_emu/ control API on one port; optionally a "
                                   "metadata server and the Storage Write API (gRPC) on others.")
    p.add_argument("--dir", required=True, help="data directory (SQLite store, registered keys)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; '::' for dual stack)")
    p.add_argument("--port", type=_port, default=0, help="REST/token port; 0 picks a free one (default)")
    p.add_argument("--tls-cert", help="server certificate PEM (from gen-tls); without it the server is plain HTTP")
    p.add_argument("--tls-key", help="server private key PEM")
    p.add_argument("--metadata-port", type=_port, help="also serve a GCE metadata server (plain HTTP) on this port; 0 = free port")
    p.add_argument("--token-lifetime", type=int, default=3600, metavar="S",
                   help="seconds an issued access token is valid; also the expires_in answered (default 3600)")
    p.add_argument("--fast", action="store_true",
                   help="benchmark mode: parse and authenticate but skip type checks and store NO row "
                        "content, only per-table counts; insertId dedup off unless --dedup-window is given")
    p.add_argument("--dedup-window", type=_dedup_window, metavar="S",
                   help="insertId de-duplication window in seconds (default 60; 0 = off; 'inf' = forever)")
    p.add_argument("--schema-dir", action="append", metavar="DIR",
                   help="create tables at start from DIR/<project>.<dataset>.<table>.json (repeatable); "
                        "existing tables get the file's schema")
    p.add_argument("--ready-file", metavar="F",
                   help="write {https_port, metadata_port, grpc_port, pid, base_url, token_uri, ...} here "
                        "atomically "
                        "once listening; removed on exit")
    p.add_argument("--max-request-bytes", type=int, default=10485760,
                   help="insertAll body limit after decompression (default 10485760)")
    p.add_argument("--max-rows", type=int, default=50000, help="insertAll rows per request limit (default 50000)")
    p.add_argument("--idle-timeout", type=float, default=120.0, metavar="S",
                   help="close a keep-alive connection idle this long (default 120)")
    p.add_argument("--grpc-port", type=_port, metavar="P",
                   help="also serve the Storage Write API (gRPC, TLS when --tls-cert is given) on P; 0 = free port")
    p.add_argument("--grpc-idle-timeout", type=float, default=600.0, metavar="S",
                   help="close an AppendRows call with ABORTED after S seconds without a request (default 600)")
    p.add_argument("--grpc-max-request-bytes", type=int, default=10485760, metavar="N",
                   help="AppendRowsRequest size limit; larger ones end the call with INVALID_ARGUMENT "
                        "(default 10485760)")
    p.add_argument("--grpc-workers", type=int, default=64, metavar="N",
                   help="gRPC worker threads; each open AppendRows call holds one (default 64)")
    p.add_argument("--project", default="emu-project", help="project id the metadata server reports")
    p.add_argument("--sa-email", help="service account email the metadata server reports")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("gen-tls", help="write a test CA and a server certificate for 127.0.0.1/::1/localhost")
    p.add_argument("--dir", required=True, help="output directory (ca.pem, ca.key, server.pem, server.key)")
    p.add_argument("--wrong-ca", action="store_true",
                   help="also write an unrelated CA (wrong-ca.pem/.key) and a server cert it signed "
                        "(wrong-server.pem/.key) for 'wrong CA is refused' tests")
    p.add_argument("--bad-certs", action="store_true",
                   help="also write expired-server.pem/.key and wrong-host-server.pem/.key (right CA)")
    p.add_argument("--days", type=int, default=3650, help="validity of the certificates (default 3650)")
    p.set_defaults(func=cmd_gen_tls)

    p = sub.add_parser("gen-key", help="write a service-account JSON key (Google's format) and register it")
    p.add_argument("--out", required=True, help="key file to write (mode 0600)")
    p.add_argument("--token-uri", required=True, help="token_uri to put in the file, e.g. https://127.0.0.1:PORT/token")
    p.add_argument("--dir", help="the emulator's data dir, where the public key is registered (keys/<id>.pem)")
    p.add_argument("--email", help="client_email (default relayd-test@<project>.iam.gserviceaccount.com)")
    p.add_argument("--project", default="emu-project", help="project_id (default emu-project)")
    p.add_argument("--no-register", action="store_true", help="do not register: the emulator will refuse this key")
    p.set_defaults(func=cmd_gen_key)

    p = sub.add_parser("gen-user", help="write an authorized_user credentials file with a refresh token")
    p.add_argument("--out", required=True, help="file to write (mode 0600)")
    p.add_argument("--dir", required=True, help="the emulator's data dir (users/<hash>.json)")
    p.add_argument("--token-uri", help="add a token_uri member (Google's libraries honour it)")
    p.add_argument("--quota-project", help="quota_project_id member")
    p.add_argument("--account", help="account member")
    p.add_argument("--no-register", action="store_true", help="do not register: the refresh token is refused")
    p.set_defaults(func=cmd_gen_user)

    p = sub.add_parser("create-table", help="create a table offline (or while a server runs)")
    p.add_argument("--dir", required=True, help="data directory")
    p.add_argument("table", help="project.dataset.table")
    p.add_argument("--schema", required=True, help="BigQuery JSON schema: a list of fields or {\"fields\": [...]}")
    p.add_argument("--replace", action="store_true", help="replace the schema of an existing table (rows kept)")
    p.set_defaults(func=cmd_create_table)

    p = sub.add_parser("rows", help="list or count stored rows")
    p.add_argument("--dir", required=True, help="data directory")
    p.add_argument("--table", help="project.dataset.table (default: all tables)")
    p.add_argument("--json", action="store_true", help="print one JSON document (same as GET /_emu/rows)")
    p.add_argument("--count", action="store_true", help="print counts only (stored + counted in --fast mode)")
    p.add_argument("--limit", type=int, help="at most this many rows per table")
    p.add_argument("--canonical", action="store_true",
                   help="print each row's JSON in the canonical spelling (as the Storage Write path stores it)")
    p.set_defaults(func=cmd_rows)

    p = sub.add_parser("fault", help="queue a fault in a running server (see docs/emulator.md)",
                       description="Queue one fault, or list/clear them.  Give exactly one kind: --status, "
                                   "--latency-ms, --drop, --truncate, --reject-pattern, --down/--up, --grpc, "
                                   "--idle-close, or --json.")
    _add_target(p)
    k = p.add_argument_group("fault kind")
    k.add_argument("--status", type=int, help="answer with this HTTP status and a Google error body")
    k.add_argument("--latency-ms", type=float, help="delay the request")
    k.add_argument("--drop", type=int, metavar="N", help="close the connection without an answer, N times")
    k.add_argument("--truncate", type=int, metavar="N", help="process, then send a cut answer and close, N times")
    k.add_argument("--reject-pattern", metavar="REGEX", help="rows whose JSON matches get a per-row error")
    k.add_argument("--down", action="store_true", help="drop every request until --up")
    k.add_argument("--up", action="store_true", help="end --down")
    k.add_argument("--grpc", metavar="CODE",
                   help="Storage Write: fail with this gRPC status (UNAVAILABLE, RESOURCE_EXHAUSTED, 14, ...)")
    k.add_argument("--idle-close", action="store_true",
                   help="Storage Write: close the next AppendRows call with ABORTED (idle-timeout message)")
    k.add_argument("--json", help="the whole fault as a JSON object (or list)")
    o = p.add_argument_group("fault options")
    o.add_argument("--count", type=int, help="number of requests it applies to")
    o.add_argument("--unlimited", action="store_true", help="apply until cleared")
    o.add_argument("--for-s", type=float, help="apply for this many seconds")
    o.add_argument("--after", type=int, help="let this many matching requests pass first")
    o.add_argument("--reason", help="BigQuery reason (rateLimitExceeded, quotaExceeded, backendError, ...)")
    o.add_argument("--message", help="error message text")
    o.add_argument("--retry-after", type=float, help="send a Retry-After header (seconds)")
    o.add_argument("--path", action="append",
                   help="endpoint: insertAll (default), token, tables, datasets, metadata, write, *")
    o.add_argument("--method", action="append",
                   help="write path: AppendRows (default), CreateWriteStream, GetWriteStream, "
                        "FinalizeWriteStream, BatchCommitWriteStreams, FlushRows, *")
    o.add_argument("--in-stream", action="store_true",
                   help="--grpc: fail only the request (AppendRowsResponse.error), keep the call open")
    o.add_argument("--table", help="only requests for this table (p.d.t or bare id)")
    o.add_argument("--mode", choices=("close", "reset", "cancel"),
                   help="drop/down: FIN (close) or RST (reset); write path only: cancel = end just the call")
    o.add_argument("--after-commit", action="store_true", help="drop: store the rows, lose only the answer")
    o.add_argument("--truncate-at", type=int, help="truncate: bytes of body to send")
    p.add_argument("--list", action="store_true", help="list queued faults")
    p.add_argument("--clear", action="store_true", help="remove all faults")
    p.set_defaults(func=cmd_fault)

    p = sub.add_parser("stats", help="print a running server's stats")
    _add_target(p)
    p.add_argument("--log", action="store_true", help="include the per-request insertAll log")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("reset", help="clear a running server's faults and stats")
    _add_target(p)
    p.add_argument("--rows", action="store_true", help="also delete all stored rows and forget insertIds")
    p.add_argument("--tokens", action="store_true", help="also revoke every issued access token")
    p.set_defaults(func=cmd_reset)
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="bqemu %(asctime)s %(levelname)s %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
