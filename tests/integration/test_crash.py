"""kill -9 at random points while producers stream: nothing acknowledged is lost.

Four producer threads stream uniquely numbered records with many in flight and
remember what relayd acknowledged. relayd is killed with SIGKILL at a random
moment, restarted, and after every restart the spool must hold every
acknowledged record exactly once with a valid checksum (relayctl spool dump
verifies each record's CRC and fails on a bad one), and must open quickly.
"""
import os
import random
import re
import socket
import threading
import time

from relaytest import RelayTest

KILLS = int(os.environ.get("CRASH_KILLS", "50"))
PRODUCERS = 4
WINDOW = 2000          # lines in flight per producer
SESSION = 2500         # records per producer between kills (bounds the test's run time)
PAD = "x" * 150


class ProducerThread(threading.Thread):
    """Streams {"p":P,"k":K} records; survives relayd's death by reconnecting."""

    def __init__(self, pid, sock_path):
        super().__init__(daemon=True)
        self.pid = pid
        self.path = sock_path
        self.next_k = 1
        self.acked = set()        # k values acknowledged
        self.run_flag = threading.Event()
        self.stop_flag = threading.Event()
        self.idle = threading.Event()
        self.errors = []

    def run(self):
        while not self.stop_flag.is_set():
            if not self.run_flag.wait(0.05):
                self.idle.set()
                continue
            self.idle.clear()
            try:
                self.session()
            except OSError:
                pass
            self.idle.set()
            self.run_flag.clear()

    def session(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(self.path)
        s.setblocking(False)
        sent = []                  # k of line i+1
        acked_line = 0
        buf = b""
        while self.run_flag.is_set():
            if len(sent) - acked_line < WINDOW and len(sent) < SESSION:
                chunk = []
                for _ in range(200):
                    k = self.next_k
                    self.next_k += 1
                    sent.append(k)
                    chunk.append(b'{"p":%d,"k":%d,"pad":"%s"}\n' % (self.pid, k, PAD.encode()))
                data = b"".join(chunk)
                while data:
                    try:
                        n = s.send(data)
                        data = data[n:]
                    except BlockingIOError:
                        acked_line, buf = self.read(s, sent, acked_line, buf, 0.01)
            acked_line, buf = self.read(s, sent, acked_line, buf,
                                        0.01 if len(sent) >= SESSION else 0)

    def read(self, s, sent, acked_line, buf, wait):
        import select
        if wait:
            select.select([s], [], [], wait)
        while True:
            try:
                data = s.recv(65536)
            except BlockingIOError:
                return acked_line, buf
            if not data:
                raise ConnectionResetError("relayd closed")
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.startswith(b"ok "):
                    n = int(line[3:])
                    for i in range(acked_line, n):
                        self.acked.add(sent[i])
                    acked_line = max(acked_line, n)
                else:
                    self.errors.append(line)


class CrashTest(RelayTest):
    def test_kill9_during_ingest_loses_no_acked_record(self):
        d = self.daemon()
        d.start()
        rng = random.Random(int(os.environ.get("CRASH_SEED", time.time())))
        producers = [ProducerThread(i, d.sock) for i in range(PRODUCERS)]
        for p in producers:
            p.start()
        open_times = []
        total_acked = 0
        for i in range(KILLS):
            for p in producers:
                p.run_flag.set()
            time.sleep(rng.uniform(0.02, 0.3))   # the random point of the kill
            d.kill9()
            for p in producers:                  # producers notice the death
                if not p.idle.wait(30):
                    self.fail("producer did not notice relayd's death")
            open_times.append(d.start())
            rc, out, err = d.dump_raw()
            self.assertEqual(rc, 0, f"spool dump after kill {i + 1} failed: {err}")
            seen = {}
            for m in re.finditer(rb'"row":\{"p":(\d+),"k":(\d+),', out):
                key = (int(m.group(1)), int(m.group(2)))
                seen[key] = seen.get(key, 0) + 1
            dups = [k for k, n in seen.items() if n > 1]
            self.assertEqual(dups, [], f"duplicates after kill {i + 1}")
            for p in producers:
                missing = [k for k in p.acked if (p.pid, k) not in seen]
                self.assertEqual(missing[:10], [], f"acked records missing after kill {i + 1} "
                                 f"(producer {p.pid}, {len(missing)} missing)")
                self.assertEqual(p.errors, [])
            total_acked = sum(len(p.acked) for p in producers)
        for p in producers:
            p.stop_flag.set()
        self.assertGreater(total_acked, KILLS * 100, "too few records acked to mean anything")
        print(f"\n  {KILLS} kills, {total_acked} records acked and verified, spool open+ready "
              f"max {max(open_times) * 1000:.0f} ms, median {sorted(open_times)[len(open_times) // 2] * 1000:.0f} ms")
        self.assertLess(max(open_times), 1.0, "relayd took a second or more to be ready")
        self.assertEqual(d.stop(), 0)


class OsDurabilityTest(RelayTest):
    def test_os_mode_keeps_acked_records_across_kill9(self):
        # durability = os acknowledges once the kernel has the commit: a crash
        # of relayd (not of the machine) must lose nothing acknowledged
        from relaytest import Producer
        import json
        d = self.daemon(spool__durability="os", spool__sync_interval="10s")
        d.start()
        p = Producer(d.sock)
        p.send_lines([json.dumps({"n": i}) for i in range(5000)])
        self.assertEqual(p.wait_ack(5000), 5000)
        d.kill9()
        d.start()
        self.assertEqual([r["row"]["n"] for r in d.dump()], list(range(5000)))
        self.assertEqual(d.stop(), 0)
