#!/usr/bin/python3
"""relayd's test runner: every suite, one summary line.

Runs, in order:
  frontdoor the Makefile is parsed with a PATH whose pkg-config, protoc-c,
            apt-get, dpkg-query and dpkg-buildflags only log: nothing may
            probe the machine before `make deps` has installed the packages
  unit      cmocka binaries in build/tests and, under ASan+UBSan, build-asan/tests
  fuzz      each libFuzzer target in build-fuzz for FUZZ_SMOKE_SECONDS (default 30), one per core at a time
  emulator  tests/emulator/test_*.py (the local BigQuery emulator)
  integration  tests/integration/test_*.py against the real relayd binaries
               (build-asan by default, RELAY_BUILD=build to use the release build)

Ends with the line "N passed, N failed". Exit status 0 only if nothing failed.
Usage: tests/run.py [-k SUBSTRING] [--only frontdoor|unit|fuzz|emulator|integration]
"""
import argparse
import glob
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = "/usr/bin/python3"


class Tally:
    def __init__(self):
        self.passed = 0
        self.failed = 0
        self.failures = []

    def add(self, name, passed, failed, output=""):
        self.passed += passed
        self.failed += failed
        if failed:
            self.failures.append(name)
            sys.stdout.write(output[-6000:] + "\n")
        print(f"  {name}: {passed} passed, {failed} failed", flush=True)


def run(cmd, timeout, env=None):
    t0 = time.time()
    try:
        p = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, timeout=timeout, env=env)
        return p.returncode, p.stdout.decode("utf-8", "replace"), time.time() - t0
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode("utf-8", "replace")
        return -1, out + f"\nTIMEOUT after {timeout}s", time.time() - t0


def cmocka(tally, binary):
    env = dict(os.environ)
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
    rc, out, _ = run([binary], 300, env)
    passed = sum(int(n) for n in re.findall(r"\[  PASSED  \] (\d+) test", out))
    failed = sum(int(n) for n in re.findall(r"\[  FAILED  \] (\d+) test", out))
    if rc != 0 and failed == 0:
        failed = 1   # crashed, sanitizer report, or leak
    name = os.path.relpath(binary, ROOT)
    tally.add(name, passed, failed, out)


def pyunit(tally, path, env):
    rc, out, secs = run([PY, "-m", "unittest", "-v", path], 1800, env)
    m = re.search(r"Ran (\d+) tests?", out)
    ran = int(m.group(1)) if m else 0
    m = re.search(r"FAILED \(([^)]*)\)", out)
    failed = 0
    if m:
        for part in m.group(1).split(","):
            k, _, v = part.strip().partition("=")
            if k in ("failures", "errors", "unexpected successes"):
                failed += int(v)
    if rc != 0 and failed == 0:
        failed = 1
    skipped = 0
    m = re.search(r"skipped=(\d+)", out)
    if m:
        skipped = int(m.group(1))
    tally.add(f"{os.path.relpath(path, ROOT)} ({secs:.0f}s)", ran - failed - skipped, failed, out)


PROBES = ("pkg-config", "protoc-c", "apt-get", "dpkg-query", "dpkg-buildflags", "pkgconf")


def parse_probes(makefile_dir, target):
    """Runs make TARGET in makefile_dir with logging stand-ins for the tools
    that probe the machine; returns (make's exit code, the probes made)."""
    import tempfile
    with tempfile.TemporaryDirectory(prefix="relayd-frontdoor-") as d:
        log = os.path.join(d, "probes.log")
        for tool in PROBES:
            path = os.path.join(d, tool)
            with open(path, "w") as f:
                f.write(f'#!/bin/sh\necho "{tool} $*" >> {log}\nexit 1\n')
            os.chmod(path, 0o755)
        env = dict(os.environ)
        env["PATH"] = d + os.pathsep + env.get("PATH", "")
        env.pop("MAKEFLAGS", None)
        env.pop("MFLAGS", None)
        env.pop("MAKELEVEL", None)
        rc, out, _ = run(["make", "--no-print-directory", "-C", makefile_dir, target], 60, env)
        probes = open(log).read() if os.path.exists(log) else ""
        return rc, probes + out


def frontdoor(tally):
    """No parse-time dependency probing in the Makefile, and the detector works."""
    import tempfile
    rc, probes = parse_probes(ROOT, "parse-check")
    ok = rc == 0 and not any(line.split(" ")[0] in PROBES for line in probes.splitlines())
    tally.add("frontdoor: Makefile parses without probing the machine", 1 if ok else 0, 0 if ok else 1,
              "make parse-check ran these at parse time (or failed):\n" + probes)
    # The same detector on a Makefile with the old flaw must see the probe.
    with tempfile.TemporaryDirectory(prefix="relayd-frontdoor-bad-") as d:
        with open(os.path.join(d, "Makefile"), "w") as f:
            f.write("LIBS := $(shell pkg-config --libs lmdb)\nparse-check:\n\t@:\n")
        _, probes = parse_probes(d, "parse-check")
    ok = "pkg-config --libs lmdb" in probes
    tally.add("frontdoor: the detector catches a parse-time pkg-config", 1 if ok else 0, 0 if ok else 1,
              "a Makefile with LIBS := $(shell pkg-config ...) was not caught:\n" + probes)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-k", default="")
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    tally = Tally()
    t0 = time.time()

    def want(kind, name):
        return (not args.only or args.only == kind) and args.k in name

    if want("frontdoor", "frontdoor"):
        print("front door", flush=True)
        frontdoor(tally)

    print("unit tests", flush=True)
    for d in ("build/tests", "build-asan/tests"):
        for b in sorted(glob.glob(os.path.join(ROOT, d, "test_*"))):
            if want("unit", b):
                cmocka(tally, b)

    secs = int(os.environ.get("FUZZ_SMOKE_SECONDS", "30"))
    jobs = max(1, os.cpu_count() or 1)
    print(f"fuzz smoke ({secs}s per target, {jobs} at a time)", flush=True)
    cmds = []
    for b in sorted(glob.glob(os.path.join(ROOT, "build-fuzz", "fuzz_*"))):
        if not want("fuzz", b) or not os.access(b, os.X_OK) or os.path.isdir(b):
            continue
        name = os.path.basename(b)
        corpus = os.path.join(ROOT, "build-fuzz", "corpus-" + name)
        os.makedirs(corpus, exist_ok=True)
        seeds = os.path.join(ROOT, "tests", "fuzz", "corpus", name[len("fuzz_"):])
        cmd = [b, f"-max_total_time={secs}", "-max_len=4096", "-print_final_stats=1", corpus]
        if os.path.isdir(seeds):
            cmd.append(seeds)
        cmds.append((name, cmd))
    # libFuzzer's time limit is wall-clock and each target is one process on
    # one core: running one per core gives each the same work in less time.
    import concurrent.futures
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(lambda nc: run(nc[1], secs + 120), cmds))
    for (name, _), (rc, out, _) in zip(cmds, results):
        tally.add(f"fuzz {name}", 1 if rc == 0 else 0, 0 if rc == 0 else 1, out)

    env = dict(os.environ)
    env["RELAY_BUILD"] = os.path.join(ROOT, env.get("RELAY_BUILD", "build-asan"))
    env["RELAY_ROOT"] = ROOT
    env.setdefault("ASAN_OPTIONS", "abort_on_error=0:detect_leaks=1")
    env["PYTHONPATH"] = os.path.join(ROOT, "tests") + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    for kind, pattern in (("emulator", "tests/emulator/test_*.py"),
                          ("integration", "tests/integration/test_*.py")):
        print(f"{kind} tests", flush=True)
        for path in sorted(glob.glob(os.path.join(ROOT, pattern))):
            if want(kind, path):
                pyunit(tally, path, env)

    print(f"total time {time.time() - t0:.0f}s")
    if tally.failures:
        print("failed: " + ", ".join(tally.failures))
    print(f"{tally.passed} passed, {tally.failed} failed")
    return 1 if tally.failed else 0


if __name__ == "__main__":
    sys.exit(main())
