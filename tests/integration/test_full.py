"""A full spool: backpressure, then an explicit 'full' refusal; nothing acked is
lost; ingest resumes by itself once space is freed."""
import json
import os
import re
import subprocess
import threading

from relaytest import Producer, RelayTest, TOOLS, wait_for

ROW = '{"i":%d,"pad":"' + "y" * 1000 + '"}'


def stream(d, n, result):
    """Sends n rows with relayctl send (which reads its replies while sending)."""
    path = os.path.join(d.dir, "rows.ndjson")
    with open(path, "w") as f:
        for i in range(n):
            f.write(ROW % i + "\n")
    r = d.relayctl("--json", "send", path, timeout=300)
    result["summary"] = json.loads(r.stdout)
    result["errors"] = {}
    for m in re.finditer(r"rows\.ndjson:(\d+): (\S+): (.*)", r.stderr.decode()):
        result["errors"][int(m.group(1))] = (m.group(2), m.group(3))


class FullTest(RelayTest):
    def fill_and_check(self, d, n_rows):
        states = []
        result = {}
        t = threading.Thread(target=stream, args=(d, n_rows, result))
        t.start()

        def refusing():
            st = d.status()["state"]
            if not states or states[-1] != st:
                states.append(st)
            return st == "refusing"
        wait_for(refusing, 60, "relayd to start refusing", interval=0.05)
        t.join(120)
        self.assertFalse(t.is_alive())
        # backpressure first (producers held), then the explicit refusal
        self.assertIn("backpressure", states)
        self.assertLess(states.index("backpressure"), states.index("refusing"))
        summ = result["summary"]
        self.assertEqual(summ["unacknowledged"], 0, "every line must be answered")
        self.assertEqual(summ["acked"] + summ["refused"], n_rows)
        self.assertEqual(summ["refused"], len(result["errors"]))
        full = [ln for ln, (reason, _) in result["errors"].items() if reason == "full"]
        self.assertTrue(full, "no record was refused as full")
        self.assertEqual(len(full), len(result["errors"]), result["errors"])
        stored = sorted(r["row"]["i"] for r in d.dump("events"))
        expected = sorted(i for i in range(n_rows) if (i + 1) not in result["errors"])
        self.assertEqual(stored, expected, "acked records lost or refused ones stored")
        return len(stored)

    def resume_after_drain(self, d, grow=None):
        tool = os.path.join(TOOLS, "spool_drain")
        if grow:
            grow()
        r = subprocess.run([tool, d.spool, "events"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        wait_for(lambda: d.status()["state"] == "accepting", 30, "relayd to accept again",
                 interval=0.05)
        p = Producer(d.sock)
        p.send_lines([ROW % (100000 + i) for i in range(200)])
        self.assertEqual(p.finish(), 200)
        self.assertEqual(p.errors, {})
        self.assertEqual(len(d.dump("events")), 200)

    def test_small_max_spool_bytes(self):
        d = self.daemon(spool__max_spool_bytes="2M", ingest__max_record_bytes="64K",
                        ingest__full_wait="1s", ingest__max_pending_bytes="256K")
        d.start()
        stored = self.fill_and_check(d, 4000)
        self.assertGreater(stored, 500)
        st = d.status()
        self.assertLessEqual(st["spool"]["file_bytes"], 2 << 20)
        self.resume_after_drain(d)
        self.assertEqual(d.stop(), 0)

    def test_full_disk_on_a_small_tmpfs(self):
        if os.geteuid() != 0:
            self.skipTest("needs root to mount a tmpfs")
        d = self.daemon(spool__max_spool_bytes="64M", ingest__max_record_bytes="64K",
                        ingest__full_wait="1s", ingest__max_pending_bytes="256K")
        mnt = d.spool
        os.makedirs(mnt, mode=0o700)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3M,mode=0700", "tmpfs", mnt],
                           stderr=subprocess.PIPE)
        if r.returncode != 0:
            self.skipTest("cannot mount tmpfs here: " + r.stderr.decode())
        self.addCleanup(lambda: subprocess.run(["umount", "-l", mnt]))
        d.start()
        stored = self.fill_and_check(d, 5000)
        self.assertGreater(stored, 500)
        self.assertNotIn("I/O error", d.read_log())
        self.resume_after_drain(d, grow=lambda: subprocess.run(
            ["mount", "-o", "remount,size=16M", mnt], check=True))
        self.assertEqual(d.stop(), 0)
