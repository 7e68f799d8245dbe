#!/usr/bin/python3
"""relayd benchmarks: prints figures (record them in docs/benchmarks.md).

  ingest    8 producer processes x N ~200-byte rows over the socket, acks
            awaited, for each durability mode: records/s, MB/s, ack latency
            p50/p99, relayd CPU per record, peak RSS.
  restart   time from exec to a ready relayd with 10 million records queued.
  json      the ingest validator against jansson.

Environment: BENCH_RECORDS (per producer, default 250000), BENCH_WINDOW (lines
in flight per producer, default 512), BENCH_BACKLOG (default 10000000).
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


def config(d, durability):
    path = os.path.join(d, "relayd.conf")
    with open(path, "w") as f:
        f.write(f"[relayd]\ncontrol_socket = {d}/ctl\n[spool]\ndir = {d}/spool\n"
                f"max_spool_bytes = 16G\ndurability = {durability}\n"
                f"[ingest]\nsocket = {d}/sock\ndefault_table = events\n[destination events]\n")
    return path


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
    print(f"machine: {os.cpu_count()} cores, {os.uname().release}; date {time.strftime('%Y-%m-%d')}")
    jc = os.path.join(B, "bench", "bench_json_check")
    if os.path.exists(jc):
        print("\n== json validator ==", flush=True)
        subprocess.run([jc])
    for mode in ("fsync", "os", "none"):
        d = tempfile.mkdtemp(prefix="relayd-bench-")
        try:
            p, _ = start(d, config(d, mode))
            print(f"\n== ingest, durability {mode}: 8 producers x {RECORDS} rows, "
                  f"{WINDOW} in flight each ==", flush=True)
            subprocess.run([os.path.join(B, "bench", "bench_ingest"), os.path.join(d, "sock"),
                            "8", str(RECORDS), str(WINDOW), str(p.pid)], check=True)
            stop(p)
        finally:
            shutil.rmtree(d, ignore_errors=True)
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
