#!/usr/bin/python3
"""Marginal instructions per delivered row, per delivery path (issue 11).

For each path (insertAll gzip, insertAll no gzip, Storage Write default stream,
Storage Write exactly once) a spool is pre-filled with N1 and then N2 rows
(bench_fill), relayd runs under `valgrind --tool=callgrind` (all threads, one
profile) against build/fastsink until the backlog is drained, is stopped
(SIGTERM, a clean exit writes the profile), and

    instructions/row = (Ir(N2) - Ir(N1)) / (N2 - N1)

is printed: start-up, TLS handshakes and shutdown cancel out. Hardware
counters (perf stat -e instructions:u) are not available in every VM;
callgrind counts the same user-space instructions (relayd, its libraries and
threads) anywhere.

Usage: profile.py [--build DIR] [--keep DIR] [--annotate]
  --build DIR   relayd and bench/bench_fill from DIR (default build/; e.g. the
                build of an older commit). build/fastsink of this tree is
                always the sink (PROFILE_SINK_BUILD overrides its build dir).
  --keep DIR    keep the callgrind.out files (callgrind_annotate them).
  --annotate [K] print each path's top K functions (default 15) by marginal
                self cost: (self Ir(N2) - self Ir(N1)) / (N2 - N1), with its
                share of the path's instructions per row.

Environment: PROFILE_N1 (default 20000), PROFILE_N2 (default 100000),
PROFILE_CASES (comma-separated subset of gzip,nogzip,storage,exactly_once),
PROFILE_TOOL (callgrind, or perf to use perf stat -e instructions:u).
"""
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run as bench  # noqa: E402  (Sink, config, status: the sink bench's own)

CASES = [("insertAll, gzip", "gzip", "insertall", "gzip = yes\n"),
         ("insertAll, no gzip", "nogzip", "insertall", "gzip = no\n"),
         ("Storage Write, default stream", "storage", "storage", ""),
         ("Storage Write, exactly once", "exactly_once", "storage", "delivery = exactly_once\n")]


def delivered(d):
    st = [x for x in bench.status(d)["destinations"] if x["name"] == "events"][0]["delivery"]
    return st


def ir_of(path):
    """Total Ir of a callgrind.out (its 'totals:' or 'summary:' line)."""
    tot = None
    with open(path) as f:
        for line in f:
            if line.startswith("totals:") or line.startswith("summary:"):
                tot = int(line.split()[1])
    if tot is None:
        sys.exit(f"profile.py: no totals in {path}")
    return tot


def one_run(build, sink, d, dest, n, tool):
    """relayd (from build) drains a backlog of n rows; returns (Ir, profile path, stats)."""
    os.makedirs(d)
    subprocess.run([os.path.join(build, "bench", "bench_fill"), os.path.join(d, "spool"), "events", str(n)],
                   check=True, stdout=subprocess.DEVNULL)
    conf = bench.config(d, "fsync", dest)
    out = os.path.join(d, "callgrind.out")
    relayd = os.path.join(build, "relayd")
    if tool == "perf":
        cmd = ["perf", "stat", "-x,", "-o", os.path.join(d, "perf.csv"), "-e", "instructions:u",
               relayd, "-c", conf]
    else:
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-instr=no",
               relayd, "-c", conf]
    log = open(os.path.join(d, "log"), "ab")
    p = subprocess.Popen(cmd, stdout=log, stderr=log)
    deadline = time.monotonic() + 1800
    st = None
    while time.monotonic() < deadline:
        if p.poll() is not None:
            sys.exit("relayd died: " + open(os.path.join(d, "log")).read()[-4000:])
        try:
            st = delivered(d)
            if st["delivered"] + st["dead_lettered"] >= n and bench.status(d)["spool"]["records"] == 0:
                break
        except (OSError, ValueError, KeyError, IndexError):
            pass
        time.sleep(0.25)   # status polls cost relayd instructions too: few of them
    else:
        sys.exit(f"profile.py: {d}: not drained in time")
    p.send_signal(signal.SIGTERM)
    p.wait(600)
    log.close()
    if tool == "perf":
        for line in open(os.path.join(d, "perf.csv")):
            f = line.strip().split(",")
            if len(f) > 2 and f[2].startswith("instructions"):
                if not f[0].isdigit():
                    sys.exit("profile.py: perf cannot count instructions here; use PROFILE_TOOL=callgrind")
                return int(f[0]), None, st
        sys.exit("profile.py: no instructions in perf output")
    return ir_of(out), out, st


def self_costs(path):
    """Self cost (Ir) per function of a profile: {function: Ir}."""
    r = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100", "--auto=no", path],
                       check=True, stdout=subprocess.PIPE, text=True).stdout
    fns = {}
    for line in r.splitlines():
        m = re.match(r"\s*([\d,]+)\s+(?:\([\s\d.]+%\)\s+)?(\S.*)$", line)
        if m and ":" in m.group(2) and not m.group(2).startswith(("PROGRAM TOTALS", "=>")):
            fn = m.group(2).strip()
            fns[fn] = fns.get(fn, 0) + int(m.group(1).replace(",", ""))
    return fns


def marginal_top(p1, p2, n1, n2, k):
    """Functions by marginal self cost per row: [(Ir/row, share, function)]."""
    a, b = self_costs(p1), self_costs(p2)
    per = {fn: (b.get(fn, 0) - a.get(fn, 0)) / (n2 - n1) for fn in set(a) | set(b)}
    tot = sum(per.values())
    rows = sorted(((v, v / tot * 100, fn) for fn, v in per.items()), reverse=True)
    return rows[:k]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.environ.get("PROFILE_BUILD", bench.B))
    ap.add_argument("--keep")
    ap.add_argument("--annotate", type=int, nargs="?", const=15, default=0)
    a = ap.parse_args()
    build = os.path.abspath(a.build)
    n1 = int(os.environ.get("PROFILE_N1", "20000"))
    n2 = int(os.environ.get("PROFILE_N2", "100000"))
    tool = os.environ.get("PROFILE_TOOL", "callgrind")
    want = os.environ.get("PROFILE_CASES")
    cases = [c for c in CASES if not want or c[1] in want.split(",")]
    # The sink is always this tree's (older trees have none).
    bench.B = os.path.abspath(os.environ.get("PROFILE_SINK_BUILD", bench.B))
    d = tempfile.mkdtemp(prefix="relayd-profile-")
    sink = None
    res = []
    try:
        sink = bench.Sink(d)
        head = subprocess.run(["git", "-C", build, "log", "-1", "--format=%h %s"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True).stdout.strip()[:72]
        print(f"relayd {build}/relayd ({head or '?'}); {tool}; marginal instructions per row over "
              f"N1={n1}, N2={n2} pre-filled rows, sink {bench.B}/fastsink", flush=True)
        for label, tag, api, extra in cases:
            irs, outs = [], []
            for n in (n1, n2):
                rd = f"{d}/{tag}-{n}"
                ir, out, st = one_run(build, sink, rd, sink.dest(api, extra), n, tool)
                irs.append(ir)
                print(f"  {label:31s} N={n:<8d} Ir {ir:>15,d} ({ir / n:,.0f}/row incl. start-up); "
                      f"delivered {st['delivered']}, dead {st['dead_lettered']}, "
                      f"{st['requests']} requests", flush=True)
                if a.keep and out:
                    os.makedirs(a.keep, exist_ok=True)
                    shutil.copy(out, os.path.join(a.keep, f"callgrind.{tag}.{n}"))
                outs.append(out)
                shutil.rmtree(os.path.join(rd, "spool"), ignore_errors=True)
            res.append((label, (irs[1] - irs[0]) / (n2 - n1)))
            if a.annotate and outs[0]:
                print(f"    top {a.annotate} functions by marginal self cost (instructions/row, share):")
                for v, share, fn in marginal_top(outs[0], outs[1], n1, n2, a.annotate):
                    print(f"      {v:>8,.0f} {share:5.1f}%  {fn[:110]}")
        print("\n| path | instructions/row (marginal) |\n|---|---|")
        for label, ipr in res:
            print(f"| {label} | {ipr:,.0f} |")
    finally:
        if sink:
            sink.stop()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
