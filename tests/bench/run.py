#!/usr/bin/python3
"""relayd benchmarks: prints figures (record them in docs/benchmarks.md).

  ingest    8 producer processes x N ~200-byte rows over the socket, acks
            awaited, for each durability mode: records/s, MB/s, ack latency
            p50/p99, relayd CPU per record, peak RSS.
  forward   the same rows from 8 Fluent forward producers (PackedForward
            chunks with require_ack_response), in the same run as ingest.
  client    rows/s from one librelayclient thread (durable acks), beside one
            raw NDJSON socket producer with the same window, fsync durability.
  restart   time from exec to a ready relayd with 10 million records queued.
  json      the ingest validator against jansson.
  delivery  a pre-filled spool drained to the local emulator (--fast) over
            insertAll: rows/s, relayd CPU per row, bytes per request before
            and after gzip.
  rowenc    JSON -> protobuf row encoding (Storage Write).
  spoolread a 1M-record backlog read off the spool (cursor, CRC check) in
            lane-sized batches by a fresh process: ns per record.
  sink      delivery to build/fastsink (the C sink, tools/fastsink) over
            insertAll with and without gzip and over the Storage Write API
            (default stream, exactly once): rows/s from a pre-filled backlog
            and with producers writing at the same time, relayd CPU per row,
            relayd peak RSS, the sink's CPU (its headroom).

Usage: run.py [SECTION...]   (default: every section; e.g. `run.py sink`)

Environment: BENCH_RECORDS (per producer, default 250000), BENCH_WINDOW (lines
in flight per producer, default 512), BENCH_BACKLOG (default 10000000),
BENCH_DELIVER (default 1000000), BENCH_SINK_ROWS (backlog of the sink
section, default 1000000), BENCH_SINK_LIVE (rows per producer of its live
runs, 8 producers, default 125000), BENCH_SINK_CASES (comma-separated subset
of gzip,nogzip,storage,exactly_once), BENCH_SINK_RUNS (runs of each case,
default 3: the table shows the run with the median rate and the range of
rates and of CPU per row; a shared VM varies by tens of percent).
"""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
B = os.path.join(ROOT, "build")
RECORDS = int(os.environ.get("BENCH_RECORDS", "250000"))
WINDOW = int(os.environ.get("BENCH_WINDOW", "512"))
BACKLOG = int(os.environ.get("BENCH_BACKLOG", "10000000"))
DELIVER = int(os.environ.get("BENCH_DELIVER", "1000000"))
FWD_CHUNK = int(os.environ.get("BENCH_FWD_CHUNK", "256"))
FWD_INFLIGHT = int(os.environ.get("BENCH_FWD_INFLIGHT", "2"))
SINK_ROWS = int(os.environ.get("BENCH_SINK_ROWS", "1000000"))
SINK_LIVE = int(os.environ.get("BENCH_SINK_LIVE", "125000"))
SECTIONS = ("json", "ingest", "client", "delivery", "rowenc", "spoolread", "restart", "sink")


def config(d, durability, dest=""):
    path = os.path.join(d, "relayd.conf")
    with open(path, "w") as f:
        f.write(f"[relayd]\ncontrol_socket = {d}/ctl\n[spool]\ndir = {d}/spool\n"
                f"max_spool_bytes = 16G\ndurability = {durability}\n"
                f"[ingest]\nsocket = {d}/sock\ndefault_table = events\n"
                f"[forward]\nsocket = {d}/fwd\ntime_key = time\n[destination events]\n"
                + dest)
    return path


def status(d):
    s = socket.socket(socket.AF_UNIX)
    s.connect(os.path.join(d, "ctl"))
    s.sendall(b"status\n")
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    import json
    return json.loads(data)


def stat_cpu(path):
    """(user, system) CPU seconds in a /proc stat file (a process's or a thread's)."""
    f = open(path).read().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return int(f[11]) / tck, int(f[12]) / tck


def cpu_split(pid):
    """(user, system) CPU seconds of pid so far."""
    return stat_cpu(f"/proc/{pid}/stat")


def cpu_by_thread(pid):
    """{thread name: user+system CPU seconds} of pid's threads (relayd names
    them: relayd-write0, relayd-record, ...); threads of one name add up."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            name = open(f"/proc/{pid}/task/{tid}/comm").read().strip()
            cpu = sum(stat_cpu(f"/proc/{pid}/task/{tid}/stat"))
        except OSError:
            continue   # the thread ended meanwhile
        out[name] = out.get(name, 0.0) + cpu
    return out


def cpu_s(pid):
    return sum(cpu_split(pid))


def bench_delivery(api="insertall"):
    import json
    d = tempfile.mkdtemp(prefix="relayd-bench-")
    emu = None
    try:
        py = "/usr/bin/python3"
        tool = os.path.join(ROOT, "tools", "bqemu", "bqemu.py")
        subprocess.run([py, tool, "gen-tls", "--dir", f"{d}/tls"], check=True, stdout=subprocess.DEVNULL)
        emu = subprocess.Popen([py, tool, "serve", "--dir", f"{d}/emu", "--port", "0", "--fast",
                                "--grpc-port", "0",
                                "--tls-cert", f"{d}/tls/server.pem", "--tls-key", f"{d}/tls/server.key",
                                "--ready-file", f"{d}/ready.json"], stderr=subprocess.DEVNULL)
        while not os.path.exists(f"{d}/ready.json"):
            time.sleep(0.05)
        info = json.load(open(f"{d}/ready.json"))
        subprocess.run([py, tool, "gen-key", "--dir", f"{d}/emu", "--out", f"{d}/key.json",
                        "--token-uri", info["token_uri"]], check=True, stdout=subprocess.DEVNULL)
        os.chmod(f"{d}/key.json", 0o600)
        with open(f"{d}/schema.json", "w") as f:
            json.dump({"fields": [{"name": n, "type": t} for n, t in (
                ("ts", "STRING"), ("host", "STRING"), ("service", "STRING"), ("level", "STRING"),
                ("seq", "INT64"), ("status", "INT64"), ("msg", "STRING"))]}, f)
        subprocess.run([py, tool, "create-table", "--dir", f"{d}/emu", "bench.logs.events",
                        "--schema", f"{d}/schema.json"], check=True, stdout=subprocess.DEVNULL)
        print(f"\n== delivery over {api}: {DELIVER} rows of ~190 bytes drained to the emulator "
              f"(--fast) ==", flush=True)
        subprocess.run([os.path.join(B, "bench", "bench_fill"), os.path.join(d, "spool"), "events",
                        str(DELIVER)], check=True)
        dest = (f"project = bench\ndataset = logs\ncredentials = {d}/key.json\n"
                f"endpoint = {info['base_url']}\nca_file = {d}/tls/ca.pem\n"
                + (f"api = storage\nstorage_endpoint = 127.0.0.1:{info['grpc_port']}\n"
                   f"schema_file = {d}/schema.json\n" if api == "storage" else "")
                + os.environ.get("BENCH_DEST_EXTRA", "").replace(";", "\n") + "\n")
        p, _ = start(d, config(d, "fsync", dest))
        c0, t0 = cpu_s(p.pid), time.monotonic()
        while status(d)["spool"]["records"] > 0:
            time.sleep(0.05)
        dt, cpu = time.monotonic() - t0, cpu_s(p.pid) - c0
        st = [x for x in status(d)["destinations"] if x["name"] == "events"][0]["delivery"]
        stop(p)
        print(f"delivered {st['delivered']} rows in {dt:.2f} s: {st['delivered'] / dt:.0f} rows/s; "
              f"relayd CPU {cpu:.2f} s = {cpu * 1e6 / max(1, st['delivered']):.2f} us/row "
              f"({cpu / dt * 100:.0f}% of one core)")
        req = max(1, st["requests"])
        if api == "insertall":
            print(f"{st['requests']} requests: {st['bytes_raw'] / req / 1024:.1f} KiB/request before gzip, "
                  f"{st['bytes_sent'] / req / 1024:.1f} KiB after (ratio {st['bytes_raw'] / max(1, st['bytes_sent']):.1f}x); "
                  f"{st['failed_requests']} failed")
        else:
            print(f"{st['requests']} appends; {st['failed_requests']} failed")
    finally:
        if emu:
            emu.terminate()
            emu.wait()
        shutil.rmtree(d, ignore_errors=True)


CLIENT_ROWS = int(os.environ.get("BENCH_CLIENT_ROWS", "1000000"))
CLIENT_WINDOW = int(os.environ.get("BENCH_CLIENT_WINDOW", "16384"))


def bench_client():
    """One librelayclient thread, then one raw socket producer, same relayd."""
    d = tempfile.mkdtemp(prefix="relayd-bench-")
    try:
        p, _ = start(d, config(d, "fsync"))
        print(f"\n== librelayclient: one client thread, {CLIENT_ROWS} rows, {CLIENT_WINDOW} in "
              f"flight, durability fsync ==", flush=True)
        c0 = cpu_s(p.pid)
        subprocess.run([os.path.join(B, "bench", "bench_client"), os.path.join(d, "sock"),
                        str(CLIENT_ROWS), str(CLIENT_WINDOW)], check=True)
        print(f"relayd cpu {(cpu_s(p.pid) - c0) * 1e6 / CLIENT_ROWS:.2f} us/row", flush=True)
        print(f"-- the same relayd, one raw NDJSON socket producer, {CLIENT_WINDOW} lines in "
              f"flight --", flush=True)
        subprocess.run([os.path.join(B, "bench", "bench_ingest"), os.path.join(d, "sock"), "1",
                        str(CLIENT_ROWS), str(CLIENT_WINDOW), str(p.pid)], check=True)
        stop(p)
    finally:
        shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------- the fast sink

SINK_FIELDS = (("ts", "STRING"), ("host", "STRING"), ("service", "STRING"), ("level", "STRING"),
               ("seq", "INT64"), ("status", "INT64"), ("msg", "STRING"),
               ("latency_ms", "FLOAT64"), ("ok", "BOOL"))   # bench_fill's rows and bench_ingest's


def vm_hwm_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


class Sink:
    """build/fastsink over TLS with a test CA (from bqemu gen-tls)."""

    def __init__(self, d):
        import json
        py = "/usr/bin/python3"
        tool = os.path.join(ROOT, "tools", "bqemu", "bqemu.py")
        subprocess.run([py, tool, "gen-tls", "--dir", f"{d}/tls"], check=True, stdout=subprocess.DEVNULL)
        with open(f"{d}/schema.json", "w") as f:
            json.dump({"fields": [{"name": n, "type": t} for n, t in SINK_FIELDS]}, f)
        self.ca = f"{d}/tls/ca.pem"
        self.key = f"{d}/key.json"
        self.out = open(f"{d}/sink.out", "wb")
        self.proc = subprocess.Popen([os.path.join(B, "fastsink"), "serve", "--port", "0", "--grpc-port", "0",
                                      "--tls-cert", f"{d}/tls/server.pem", "--tls-key", f"{d}/tls/server.key",
                                      "--key-out", self.key, "--ready-file", f"{d}/ready.json",
                                      "--schema", f"bench.logs.events={d}/schema.json", "--quiet"],
                                     stdout=self.out, stderr=subprocess.STDOUT)
        while not os.path.exists(f"{d}/ready.json"):
            if self.proc.poll() is not None:
                sys.exit("fastsink died: " + open(f"{d}/sink.out").read())
            time.sleep(0.02)
        self.info = json.load(open(f"{d}/ready.json"))

    def stats(self):
        import json
        import ssl
        import urllib.request
        ctx = ssl.create_default_context(cafile=self.ca)
        with urllib.request.urlopen(self.info["base_url"] + "/stats", context=ctx, timeout=30) as r:
            return json.load(r)

    def dest(self, api, extra=""):
        i = self.info
        kv = (f"project = bench\ndataset = logs\ncredentials = {self.key}\nendpoint = {i['base_url']}\n"
              f"ca_file = {self.ca}\n")
        if api == "storage":
            kv += f"api = storage\nstorage_endpoint = {i['grpc_target']}\n"   # schema from tables.get
        return kv + extra + os.environ.get("BENCH_DEST_EXTRA", "").replace(";", "\n") + "\n"

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)
        self.out.close()


def sink_run(sink, d, dest, api, live):
    """One relayd run: a pre-filled backlog (live=False) or 8 producers at once."""
    os.makedirs(d)
    total = SINK_ROWS if not live else 8 * SINK_LIVE
    if not live:
        subprocess.run([os.path.join(B, "bench", "bench_fill"), os.path.join(d, "spool"), "events",
                        str(total)], check=True, stdout=subprocess.DEVNULL)
    # Sink counters and the clock are read before relayd starts: with a backlog
    # it delivers its first requests before start() returns. "us_row" is CPU
    # over relayd's whole life, start-up (exec, loading gRPC, the spool) and
    # the first TLS handshakes included. For a backlog, "drain" is the
    # delivery path alone: CPU and rows delivered are read once at the first
    # status that shows a delivered row and once when all are delivered.
    s0 = sink.stats()
    t0 = time.monotonic()
    p, _ = start(d, config(d, "fsync", dest))
    ingest = None
    mark = None
    if live:
        ingest = subprocess.run([os.path.join(B, "bench", "bench_ingest"), os.path.join(d, "sock"), "8",
                                 str(SINK_LIVE), str(WINDOW)], check=True, stdout=subprocess.PIPE).stdout.decode()
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        st = [x for x in status(d)["destinations"] if x["name"] == "events"][0]["delivery"]
        if st["delivered"] + st["dead_lettered"] >= total and status(d)["spool"]["records"] == 0:
            break
        if not live and mark is None and st["delivered"] > 0:
            mark = (st["delivered"], sum(cpu_split(p.pid)), cpu_by_thread(p.pid))
            continue
        time.sleep(0.02 if mark or live else 0.002)
    dt = time.monotonic() - t0
    usr, sys_ = cpu_split(p.pid)
    threads = cpu_by_thread(p.pid)
    cpu = usr + sys_
    s1 = sink.stats()
    hwm = vm_hwm_kib(p.pid)
    stop(p)
    key = "insertall" if api == "insertall" else "storage"
    got = s1["rows"][key] - s0["rows"][key]
    n = max(1, st["delivered"])
    r = {"rows": st["delivered"], "dead": st["dead_lettered"], "secs": dt, "rate": st["delivered"] / dt,
         "us_row": cpu * 1e6 / n, "hwm": hwm, "sink_rows": got,
         "us_user": usr * 1e6 / n, "us_sys": sys_ * 1e6 / n,
         "sink_cpu": (s1["cpu_s"] - s0["cpu_s"]) / dt * 100, "requests": st["requests"],
         "failed": st["failed_requests"],
         "threads": {k: v * 1e6 / n for k, v in threads.items()}}
    if mark and st["delivered"] > mark[0]:
        m = st["delivered"] - mark[0]
        r["drain_rows"] = m
        r["us_drain"] = (cpu - mark[1]) * 1e6 / m
        r["threads"] = {k: (v - mark[2].get(k, 0.0)) * 1e6 / m for k, v in threads.items()}
    if ingest:
        for line in ingest.splitlines():
            if line.startswith("throughput"):
                r["ingest"] = line
    return r


def bench_spool_read():
    """The read path alone: no network, no encoding, one thread."""
    d = tempfile.mkdtemp(prefix="relayd-bench-read-")
    try:
        print(f"\n== spool read: {SINK_ROWS} records read in batches of 501 by a fresh process "
              f"(file in the page cache, not in the CPU caches), 5 runs ==", flush=True)
        subprocess.run([os.path.join(B, "bench", "bench_fill"), os.path.join(d, "spool"), "events",
                        str(SINK_ROWS)], check=True, stdout=subprocess.DEVNULL)
        ns = []
        for _ in range(5):
            out = subprocess.run([os.path.join(B, "bench", "bench_spool_read"), os.path.join(d, "spool"),
                                  "events"], check=True, stdout=subprocess.PIPE).stdout.decode()
            print(out.strip(), flush=True)
            ns.append(float(out.split(": ")[-1].split()[0]))
        ns.sort()
        print(f"spool read: median {ns[2]:.1f} ns/record ({ns[0]:.1f}-{ns[-1]:.1f})")
    finally:
        shutil.rmtree(d, ignore_errors=True)


def bench_sink():
    cases = [("insertAll, gzip", "gzip", "insertall", "gzip = yes\n"),
             ("insertAll, no gzip", "nogzip", "insertall", "gzip = no\n"),
             ("Storage Write, default stream", "storage", "storage", ""),
             ("Storage Write, exactly once", "exactly_once", "storage", "delivery = exactly_once\n")]
    want = os.environ.get("BENCH_SINK_CASES")
    if want:
        cases = [c for c in cases if c[1] in want.split(",")]
    d = tempfile.mkdtemp(prefix="relayd-bench-sink-")
    sink = None
    rows = []
    try:
        sink = Sink(d)
        print(f"\n== delivery to the fast sink (build/fastsink, TLS on loopback): {SINK_ROWS} rows "
              f"pre-filled, and 8 producers x {SINK_LIVE} rows while delivering; fsync, defaults "
              f"(500 rows/request, 4 in flight) ==", flush=True)
        runs = max(1, int(os.environ.get("BENCH_SINK_RUNS", "3")))
        for k, n in [(k, n) for k in range(runs) for n in range(len(cases))]:
            label, tag, api, extra = cases[n]
            for live in (False, True):
                r = sink_run(sink, f"{d}/run{n}{'l' if live else 'b'}{k}", sink.dest(api, extra), api, live)
                shutil.rmtree(f"{d}/run{n}{'l' if live else 'b'}{k}", ignore_errors=True)
                exact = tag == "exactly_once"
                check = ("==" if r["sink_rows"] == r["rows"] else "!=") if exact else \
                        (">=" if r["sink_rows"] >= r["rows"] else "<")
                drain = (f"{r['us_drain']:.2f} us/row over the drain ({r['drain_rows']} rows), whole life "
                         if "us_drain" in r else "")
                print(f"{label:31s} {'producers' if live else 'backlog  '}: {r['rate']:>9,.0f} rows/s "
                      f"({r['rows']} in {r['secs']:.2f} s, {r['dead']} dead-lettered), relayd {drain}"
                      f"{r['us_row']:.2f} us/row (user {r['us_user']:.2f}, system {r['us_sys']:.2f}), VmHWM {r['hwm'] / 1024:.1f} MiB; sink counted "
                      f"{r['sink_rows']} ({check} delivered), sink CPU {r['sink_cpu']:.0f}% of one core; "
                      f"{r['requests']} requests, {r['failed']} failed", flush=True)
                if live and "ingest" in r:
                    print(f"{'':31s}            ingest: {r['ingest']}")
                busy = sorted(((v, k) for k, v in r["threads"].items() if v >= 0.005), reverse=True)
                print(f"{'':31s}            by thread (us/row{', over the drain' if 'us_drain' in r else ''}): "
                      + ", ".join(f"{k.replace('relayd-', '')} {v:.2f}" for v, k in busy), flush=True)
                rows.append((label, live, r))
        def median(rs, cpu="us_row"):
            rs = sorted(rs, key=lambda r: r["rate"])
            m = rs[len(rs) // 2]
            if any(cpu not in r for r in rs):
                cpu = "us_row"
            if len(rs) == 1:
                return m, f"{m['rate']:,.0f}", f"{m[cpu]:.2f}"
            return (m, f"{m['rate']:,.0f} ({rs[0]['rate'] / 1000:,.0f}k-{rs[-1]['rate'] / 1000:,.0f}k)",
                    f"{m[cpu]:.2f} ({min(r[cpu] for r in rs):.2f}-"
                    f"{max(r[cpu] for r in rs):.2f})")
        print(f"\n{runs} run(s) of each; rate and CPU of the median run by rate, (min-max) over the runs")
        print("relayd µs/row of the backlog: CPU over the drain (from the first row delivered to the "
              "last), the delivery path alone; the lines above also give it over relayd's whole life")
        print("\n| path | backlog rows/s | relayd µs/row (drain) | relayd VmHWM | sink CPU "
              "| with producers rows/s | relayd µs/row (ingest+delivery) | relayd VmHWM | sink CPU |")
        print("|---|---|---|---|---|---|---|---|---|")
        for label, _, _, _ in cases:
            b = [r for lb, lv, r in rows if lb == label and not lv]
            l = [r for lb, lv, r in rows if lb == label and lv]
            if b and l:
                (b, br, bu), (l, lr, lu) = median(b, "us_drain"), median(l)
                print(f"| {label} | {br} | {bu} | {b['hwm'] / 1024:.1f} MiB | "
                      f"{b['sink_cpu']:.0f}% | {lr} | {lu} | {l['hwm'] / 1024:.1f} MiB "
                      f"| {l['sink_cpu']:.0f}% |")
    finally:
        if sink:
            sink.stop()
        shutil.rmtree(d, ignore_errors=True)


def start(d, conf):
    log = open(os.path.join(d, "log"), "ab")
    t0 = time.monotonic()
    p = subprocess.Popen([os.path.join(B, "relayd"), "-c", conf], stdout=log, stderr=log)
    while True:
        try:
            s = socket.socket(socket.AF_UNIX)
            s.connect(os.path.join(d, "ctl"))
            s.sendall(b"ping\n")
            if b"pong" in s.recv(64):
                return p, time.monotonic() - t0
        except OSError:
            pass
        if p.poll() is not None:
            sys.exit("relayd died: " + open(os.path.join(d, "log")).read())
        time.sleep(0.002)


def stop(p):
    p.terminate()
    p.wait(60)


def main():
    want = sys.argv[1:] or list(SECTIONS)
    bad = [w for w in want if w not in SECTIONS]
    if bad:
        sys.exit(f"run.py: unknown section(s) {', '.join(bad)}; sections: {', '.join(SECTIONS)}")
    print(f"machine: {os.cpu_count()} cores, {os.uname().release}; date {time.strftime('%Y-%m-%d')}")
    jc = os.path.join(B, "bench", "bench_json_check")
    if "json" in want and os.path.exists(jc):
        print("\n== json validator ==", flush=True)
        subprocess.run([jc])
    for mode in ("fsync", "os", "none") if "ingest" in want else ():
        d = tempfile.mkdtemp(prefix="relayd-bench-")
        try:
            p, _ = start(d, config(d, mode))
            print(f"\n== ingest, durability {mode}: 8 producers x {RECORDS} rows, "
                  f"{WINDOW} in flight each ==", flush=True)
            subprocess.run([os.path.join(B, "bench", "bench_ingest"), os.path.join(d, "sock"),
                            "8", str(RECORDS), str(WINDOW), str(p.pid)], check=True)
            stop(p)
            shutil.rmtree(os.path.join(d, "spool"))
            p, _ = start(d, config(d, mode))
            print(f"-- the same rows over the Fluent forward input: 8 producers x {RECORDS} "
                  f"records, PackedForward chunks of {FWD_CHUNK}, {FWD_INFLIGHT} in flight each --",
                  flush=True)
            subprocess.run([os.path.join(B, "bench", "bench_forward"), os.path.join(d, "fwd"),
                            "8", str(RECORDS), str(FWD_CHUNK), str(FWD_INFLIGHT), str(p.pid)],
                           check=True)
            stop(p)
        finally:
            shutil.rmtree(d, ignore_errors=True)
    if "client" in want:
        bench_client()
    if "delivery" in want:
        bench_delivery("insertall")
        bench_delivery("storage")
    if "sink" in want:
        bench_sink()
    rb = os.path.join(B, "bench", "bench_rowenc")
    if "rowenc" in want and os.path.exists(rb):
        print("\n== JSON -> protobuf row encoding (Storage Write) ==", flush=True)
        subprocess.run([rb])
    if "spoolread" in want:
        bench_spool_read()
    if "restart" not in want:
        return
    d = tempfile.mkdtemp(prefix="relayd-bench-")
    try:
        print(f"\n== restart with {BACKLOG} records queued ==", flush=True)
        subprocess.run([os.path.join(B, "bench", "bench_fill"), os.path.join(d, "spool"),
                        "events", str(BACKLOG)], check=True)
        size = os.path.getsize(os.path.join(d, "spool", "data.mdb"))
        conf = config(d, "fsync")
        times = []
        for _ in range(3):
            p, t = start(d, conf)
            times.append(t)
            rss = int(open(f"/proc/{p.pid}/status").read().split("VmRSS:")[1].split()[0])
            stop(p)
        print(f"spool file {size / 2**30:.2f} GiB; exec to ready: "
              + ", ".join(f"{t * 1000:.0f} ms" for t in times) + f"; RSS when ready {rss} KiB")
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
