"""An I/O error from a commit is fatal: relayd says so, exits 5, acknowledges
nothing of that commit, and a restart recovers every acknowledged record.

The error is injected with an LD_PRELOAD shim (tests/preload/faultinject.c)
that fails fsync/fdatasync from the Nth call on, as a dying disk would. The
shim cannot be combined with the ASan runtime, so this test runs the release
binary from build/.
"""
import json
import os
import subprocess

from relaytest import Producer, RelayTest, ROOT, wait_for
import relaytest

REL = os.path.join(ROOT, "build")


class IOErrorTest(RelayTest):
    def test_eio_in_commit_is_fatal_and_restart_recovers(self):
        d = self.daemon()
        shim = os.path.join(REL, "tools", "faultinject.so")
        self.assertTrue(os.path.exists(shim), "build the shim with make unit")
        env = dict(os.environ, LD_PRELOAD=shim, RELAY_FAULT_SYNC_EIO_AT="40")
        log = open(d.log, "ab")
        proc = subprocess.Popen([os.path.join(REL, "relayd"), "-c", d.conf], stdout=log,
                                stderr=log, env=env)
        d.proc = proc
        d.logf = log
        wait_for(lambda: d.ping() or proc.poll() is not None, 10, "relayd to start")
        p = Producer(d.sock)
        acked = 0
        try:
            for i in range(200):
                p.send_lines([json.dumps({"b": i, "k": k}) for k in range(100)])
                acked = p.wait_ack((i + 1) * 100, timeout=10)
        except (AssertionError, OSError):
            pass
        self.assertEqual(proc.wait(30), 5, "relayd must exit 5 on an I/O error")
        log.close()
        self.assertIn("spool commit failed", d.read_log())
        self.assertIn("I/O error", d.read_log())
        self.assertGreater(acked, 0)
        self.assertLess(acked, 20000, "the injected error never happened")
        # restart without the fault: everything acknowledged is there
        d.proc = None
        subprocess_env = os.environ.copy()
        d.start()
        stored = [(r["row"]["b"] * 100 + r["row"]["k"]) for r in d.dump()]
        self.assertEqual(stored[:acked], list(range(acked)))
        self.assertEqual(stored, list(range(len(stored))))
        self.assertEqual(d.stop(), 0)
