"""librelayclient against the real relayd: many rows in flight, per-row
refusals, backpressure (RELAY_EAGAIN, blocking mode), and kill -9 of relayd
with reconnect and resend (at least once: every acknowledged row is stored).

The C side is build/tools/client_check (tests/tools/client_check.c), which
links only librelayclient.a and checks each sequence number is resolved
exactly once; it ends with a JSON summary line.
"""
import collections
import json
import os
import re
import signal
import subprocess

from relaytest import RELAYCTL, Producer, RelayTest, TOOLS, wait_for

CHECK = os.path.join(TOOLS, "client_check")


def reading(pid, path):
    """True once process pid has read from its open file path (it connected first)."""
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            if os.readlink(f"/proc/{pid}/fd/{fd}") == path:
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    return int(f.readline().split()[1]) > 0
    except OSError:
        pass
    return False


def summary_of(out):
    lines = [ln for ln in out.decode().splitlines() if ln.startswith("{")]
    assert lines, "no summary line in: " + out.decode()
    return json.loads(lines[-1])


class ClientTest(RelayTest):
    def setUp(self):
        self.d = self.daemon()
        self.d.start()

    def run_check(self, *args, timeout=120):
        p = subprocess.run([CHECK, self.d.sock, *map(str, args)], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=timeout)
        self.assertEqual(p.returncode, 0, p.stdout.decode() + p.stderr.decode())
        return p, summary_of(p.stdout)

    def spawn(self, *args):
        return subprocess.Popen([CHECK, self.d.sock, *map(str, args)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def test_many_rows_in_flight_all_acked_once_and_stored(self):
        _, s = self.run_check("many", 30000, 512)
        self.assertEqual((s["sent"], s["acked"], s["refused"], s["failures"]), (30000, 30000, 0, 0))
        self.assertEqual(s["acked_upto"], 30000)
        # acks come cumulatively, many rows per event, not one event per row
        self.assertLess(s["acked_events"], 30000)
        rows = self.d.dump("events")
        self.assertEqual(sorted(r["row"]["i"] for r in rows), list(range(30000)))

    def test_refusals_are_per_row_with_reasons_and_positions_of_the_callers_json(self):
        p, s = self.run_check("refusals")
        self.assertEqual((s["acked"], s["refused"], s["failures"]), (3, 4, 0))
        refused = {}
        for ln in p.stdout.decode().splitlines():
            if ln.startswith("refused "):
                _, seq, reason, retryable, msg = ln.split(" ", 4)
                refused[int(seq)] = (reason, int(retryable), msg)
        self.assertEqual({k: v[0] for k, v in refused.items()},
                         {2: "json", 3: "table", 5: "not-object", 7: "json"})
        self.assertIn("unknown table 'nosuch'", refused[3][2])
        self.assertEqual(refused[2][1], 0)
        # row 7 went out as "@other {...}": the position is still within the caller's JSON
        self.assertIn("at byte 8", refused[2][2])
        self.assertEqual(refused[7][2], refused[2][2])
        self.assertEqual(sorted(r["row"]["i"] for r in self.d.dump("events")), [1, 6])
        self.assertEqual([r["row"]["i"] for r in self.d.dump("other")], [4])

    def test_window_full_gives_eagain_then_drains(self):
        for rows, nbytes, expect in ((64, 1 << 20, 64), (100000, 5000, 50)):
            self.d.proc.send_signal(signal.SIGSTOP)     # no acks while stopped
            try:
                c = self.spawn("window", rows, nbytes)
                line = c.stdout.readline().decode()
            finally:
                self.d.proc.send_signal(signal.SIGCONT)
            # the window bounds rows in flight, by count or by bytes (100-byte rows)
            self.assertEqual(line.strip(), f"eagain {expect}", c.stderr.read().decode()
                             if not line else line)
            out, err = c.communicate(b"\n", timeout=60)
            self.assertEqual(c.returncode, 0, out.decode() + err.decode())
            s = summary_of(out)
            self.assertEqual((s["acked"], s["failures"]), (expect + 1, 0))

    def test_blocking_send_times_out_then_waits_for_room(self):
        self.d.proc.send_signal(signal.SIGSTOP)
        try:
            c = self.spawn("blocking")
            line = c.stdout.readline().decode()
        finally:
            self.d.proc.send_signal(signal.SIGCONT)
        self.assertEqual(line.strip(), "first 1 second -8")   # RELAY_ETIMEDOUT
        out, err = c.communicate(b"\n", timeout=60)
        self.assertEqual(c.returncode, 0, out.decode() + err.decode())
        self.assertEqual(summary_of(out)["acked"], 2)

    def test_kill9_reconnect_resends_unacked_rows_at_least_once(self):
        n = 20000
        for round_ in range(3):
            if round_:
                self.d.stop()
                self.d = self.daemon()
                self.d.start()
            c = self.spawn("crash", n, 3000 + 4000 * round_)
            line, stopped = "", False
            while not line.startswith("checkpoint"):
                line = c.stdout.readline().decode()
                if round_ == 0 and line.startswith("acked") and not stopped:
                    # round 0: relayd reads nothing more, so rows surely die on the wire
                    self.d.proc.send_signal(signal.SIGSTOP)
                    stopped = True
                if not line:
                    self.fail("client ended before the checkpoint: " + c.stderr.read().decode())
            self.assertGreater(int(line.split()[2]), 0)
            self.d.kill9()     # rows on the wire: uncommitted, or committed with the ok unread
            self.d.start()
            try:
                out, err = c.communicate(b"\n", timeout=20)
            except subprocess.TimeoutExpired:
                c.kill()
                out, err = c.communicate()
                self.fail("client hung: " + out.decode()[-2000:] + err.decode()[-2000:])
            self.assertEqual(c.returncode, 0, out.decode() + err.decode())
            s = summary_of(out)
            self.assertEqual((s["acked"], s["refused"], s["failures"]), (n, 0, 0))
            self.assertGreaterEqual(s["reconnects"], 1)
            if round_ == 0:
                self.assertGreater(s["resent"], 0)
            counts = collections.Counter(r["row"]["i"] for r in self.d.dump("events"))
            self.assertEqual(set(counts), set(range(n)), "every acknowledged row is stored")
            dups = sum(v - 1 for v in counts.values())
            self.assertLessEqual(dups, s["resent"], "only resent rows may be stored twice")

    def test_open_without_relayd_says_how_to_fix(self):
        self.d.stop()
        p = subprocess.run([CHECK, self.d.sock, "one"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=30)
        self.assertEqual(p.returncode, 4)
        s = json.loads(p.stdout)
        self.assertEqual(s["open"], -4)                       # RELAY_ECONNECT
        self.assertIn("is relayd running", s["error"])

    def test_connection_lost_without_reconnect_is_final(self):
        c = self.spawn("final")
        self.assertEqual(c.stdout.readline().decode().strip(), "ready")
        self.d.kill9()
        out, err = c.communicate(b"\n", timeout=60)
        self.assertEqual(c.returncode, 0, out.decode() + err.decode())
        s = summary_of(out)
        self.assertEqual((s["acked"], s["flush"], s["failures"]), (1, -7, 0))   # RELAY_ELOST
        self.assertIn("lost", s["errmsg"])


class RelayctlSendTest(RelayTest):
    """relayctl send is built on librelayclient: the same refusals as a raw
    producer gets, and reconnect + resend when relayd restarts."""

    def setUp(self):
        self.d = self.daemon()
        self.d.start()

    def test_refusals_match_a_raw_producer_line_for_line(self):
        lines = ['{"a":1}', '{"a": nope}', '@other {"b": nope}', '@other  {"b":2}', '',
                 '@other', '{"c":1}', '[1]', '{"c":"\\ud800"}', '@bad name {"x":1}', '@bad!',
                 '@nosuch {"x":1}', '{"d":1', '@events', '{"e":1}', '  @other {"f": tru}']
        p = Producer(self.d.sock)
        p.send_lines(lines)
        p.finish()
        raw = p.errors
        path = os.path.join(self.d.dir, "in.ndjson")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        r = self.d.relayctl("send", path)
        self.assertEqual(r.returncode, 1, r.stderr)
        got = {}
        for m in re.finditer(r"in\.ndjson:(\d+): (\S+): (.*)", r.stderr.decode()):
            got[int(m.group(1))] = (m.group(2), m.group(3))
        self.assertEqual(got, raw)
        # the rows relayd stored are the same both ways
        stored = collections.Counter(json.dumps([x["table"], x["row"]]) for x in self.d.dump())
        self.assertEqual(len(stored), 4, stored)
        self.assertEqual(set(stored.values()), {2}, stored)

    def test_kill9_during_send_reconnects_and_every_row_is_stored(self):
        n = 60000
        rows = [b'{"i":%d,"pad":"%s"}\n' % (i, b"p" * 100) for i in range(n)]
        c = subprocess.Popen([RELAYCTL, "-c", self.d.conf, "--json", "send"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        c.stdin.write(b"".join(rows[:n // 2]))
        c.stdin.flush()
        wait_for(lambda: self.d.status()["ingest"]["records"] >= n // 2, 60, "half the rows")
        self.d.kill9()                  # relayctl is connected, waiting for more input
        self.d.start()
        c.stdin.write(b"".join(rows[n // 2:]))
        out, err = c.communicate(timeout=120)
        self.assertEqual(c.returncode, 0, err.decode())
        s = json.loads(out)
        self.assertEqual((s["sent"], s["acked"], s["unacknowledged"]), (n, n, 0))
        self.assertGreaterEqual(s["reconnects"], 1, err.decode())
        self.assertIn("reconnecting", err.decode())
        counts = collections.Counter(x["row"]["i"] for x in self.d.dump("events"))
        self.assertEqual(set(counts), set(range(n)))
        self.assertLessEqual(sum(v - 1 for v in counts.values()), s["resent"])

    def test_gives_up_after_retry_for_and_exits_3(self):
        path = os.path.join(self.d.dir, "rows.ndjson")
        with open(path, "w") as f:
            for i in range(200000):
                f.write('{"i":%d}\n' % i)
        self.d.proc.send_signal(signal.SIGSTOP)   # nothing is acked ...
        c = subprocess.Popen([RELAYCTL, "-c", self.d.conf, "--json", "send", "--retry-for", "1s",
                              path], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wait_for(lambda: reading(c.pid, path), 30, "relayctl to be connected and reading")
        self.d.kill9()                            # ... then relayd is gone for good
        out, err = c.communicate(timeout=60)
        self.assertEqual(c.returncode, 3, err.decode())
        s = json.loads(out)
        self.assertGreater(s["unacknowledged"], 0)
        self.assertIn("did not come back within --retry-for", err.decode())
        self.assertIn("send them again", err.decode())
        r = self.d.relayctl("send", "--retry-for", "soon", input=b"{}\n")
        self.assertEqual(r.returncode, 2)
        self.assertIn("--retry-for: expected a duration", r.stderr.decode())


class ExampleTest(RelayTest):
    def test_the_documented_example_program_works(self):
        d = self.daemon()
        d.start()
        ex = os.path.join(os.path.dirname(TOOLS), "examples", "client_example")
        data = b"".join(b'{"n":%d}\n' % i for i in range(5000)) + b'{"n":\n' + b'{"last":1}'
        p = subprocess.run([ex, d.sock], input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=60)
        self.assertEqual(p.returncode, 1, p.stderr)        # one row refused
        self.assertEqual(p.stdout.decode().strip(), "5001 rows durable, 1 refused, 0 resent after reconnects")
        self.assertIn("row 5001 refused: json: invalid JSON at byte 6", p.stderr.decode())
        self.assertEqual(len(d.dump("events")), 5001)
        d.stop()
        p = subprocess.run([ex, d.sock], input=b"{}\n", stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=60)
        self.assertEqual(p.returncode, 3)
        self.assertIn("is relayd running", p.stderr.decode())


class InstallTest(RelayTest):
    def test_make_install_ships_a_usable_library(self):
        import shutil
        import tempfile
        from relaytest import ROOT
        dest = tempfile.mkdtemp(prefix="relayd-install-")
        self.addCleanup(shutil.rmtree, dest, True)
        p = subprocess.run(["make", "--no-print-directory", "-C", ROOT, "install", "BUILD=build",
                            "DESTDIR=" + dest, "PREFIX=/opt/relayd"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=600)
        self.assertEqual(p.returncode, 0, p.stdout.decode()[-3000:])
        lib = dest + "/opt/relayd/lib"
        for f in ("/opt/relayd/include/relayclient.h", "/opt/relayd/lib/librelayclient.a",
                  "/opt/relayd/lib/librelayclient.so.1", "/opt/relayd/lib/pkgconfig/relayclient.pc",
                  "/opt/relayd/share/man/man3/relayclient.3"):
            self.assertTrue(os.path.isfile(dest + f), f)
        self.assertEqual(os.readlink(lib + "/librelayclient.so"), "librelayclient.so.1")
        soname = subprocess.run(["objdump", "-p", lib + "/librelayclient.so.1"],
                                stdout=subprocess.PIPE).stdout.decode()
        self.assertRegex(soname, r"SONAME\s+librelayclient\.so\.1")
        pc = open(lib + "/pkgconfig/relayclient.pc").read()
        self.assertIn("libdir=/opt/relayd/lib", pc)
        self.assertIn("includedir=/opt/relayd/include", pc)
        # build the example against the installed copy, as a user would, and run it
        ex = os.path.join(dest, "client_example")
        subprocess.run(["cc", "-o", ex, os.path.join(ROOT, "docs", "examples", "client_example.c"),
                        "-I" + dest + "/opt/relayd/include", "-L" + lib, "-lrelayclient"],
                       check=True, timeout=120)
        d = self.daemon()
        d.start()
        env = dict(os.environ, LD_LIBRARY_PATH=lib)
        r = subprocess.run([ex, d.sock], input=b'{"x":1}\n{"x":2}\n', stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, env=env, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("2 rows durable", r.stdout.decode())
