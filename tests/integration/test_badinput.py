"""Hostile and broken producers: relayd keeps serving the others, never stores a
bad line, never crashes, and its memory stays bounded."""
import json
import resource
import socket
import time

from relaytest import Producer, RelayTest, wait_for


def good_producer_works(d, n=500, tag="g"):
    p = Producer(d.sock)
    p.send_lines([json.dumps({tag: i}) for i in range(n)])
    acked = p.finish()
    p.close()
    return acked == n and not p.errors


class BadInputTest(RelayTest):
    def setUp(self):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < 4096 <= hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (4096, hard))
        self.d = self.daemon(ingest__max_record_bytes="1M")
        self.d.start()

    def test_nul_bytes_and_control_characters_are_refused_with_position(self):
        p = Producer(self.d.sock)
        p.send(b'{"a":"x\x00y"}\n{"a":"tab\there"}\n\x00\n{"ok":1}\n')
        self.assertEqual(p.finish(), 4)
        self.assertEqual(p.errors[1][0], "nul")
        self.assertIn("byte 8", p.errors[1][1])
        self.assertEqual(p.errors[2][0], "json")
        self.assertEqual(p.errors[3][0], "nul")
        self.assertEqual([r["row"] for r in self.d.dump()], [{"ok": 1}])

    def test_deep_nesting_is_refused(self):
        p = Producer(self.d.sock)
        p.send_lines(['{"a":' * 100 + '1' + '}' * 100, '{"a":' * 10 + '1' + '}' * 10])
        self.assertEqual(p.finish(), 2)
        self.assertEqual(p.errors[1][0], "depth")
        self.assertEqual(len(self.d.dump()), 1)

    def test_endless_line_is_refused_without_buffering_it(self):
        rss0 = self.d.rss_kb()
        p = Producer(self.d.sock, timeout=60)
        chunk = b"a" * (1 << 20)
        for _ in range(64):                      # 64 MiB with no newline
            p.send(chunk)
            p.poll_replies(block=False)
        self.assertTrue(good_producer_works(self.d), "others must keep working meanwhile")
        p.send(b'\n{"after":1}\n')
        self.assertEqual(p.finish(), 2)
        self.assertEqual(p.errors[1][0], "size")
        self.assertEqual([r["row"] for r in self.d.dump("events") if "after" in r["row"]],
                         [{"after": 1}])
        grew = self.d.rss_kb() - rss0
        self.assertLess(grew, 24 * 1024, f"RSS grew by {grew} KiB for a 64 MiB line")

    def test_record_just_over_max_record_bytes_is_refused_and_just_under_is_stored(self):
        p = Producer(self.d.sock)
        under = '{"s":"' + "u" * ((1 << 20) - 8) + '"}'
        over = '{"s":"' + "o" * ((1 << 20) - 7) + '"}'
        self.assertEqual(len(under), 1 << 20)
        p.send_lines([under, over])
        self.assertEqual(p.finish(), 2)
        self.assertEqual(list(p.errors), [2])
        self.assertEqual(p.errors[2][0], "size")
        self.assertEqual(len(self.d.dump()), 1)

    def test_disconnect_mid_line_stores_only_complete_lines(self):
        s = socket.socket(socket.AF_UNIX)
        s.connect(self.d.sock)
        s.sendall(b'{"a":1}\n{"a":2}\n{"b":')
        s.close()
        wait_for(lambda: self.d.status()["spool"]["records"] == 2, 10, "two records stored")
        self.assertTrue(good_producer_works(self.d, 10))
        rows = [r["row"] for r in self.d.dump()]
        self.assertEqual(rows[:2], [{"a": 1}, {"a": 2}])
        self.assertEqual(len(rows), 12)

    def test_thousand_idle_connections_do_not_block_others_or_grow_memory(self):
        rss0 = self.d.rss_kb()
        idle = []
        for _ in range(1000):
            s = socket.socket(socket.AF_UNIX)
            s.connect(self.d.sock)
            idle.append(s)
        for s in idle[:500]:
            s.sendall(b'{"partial":')            # half a line each, then silence
        wait_for(lambda: self.d.status()["ingest"]["connections"] >= 1000, 10,
                 "1000 connections accepted")
        self.assertTrue(good_producer_works(self.d, 2000))
        grew = self.d.rss_kb() - rss0
        self.assertLess(grew, 16 * 1024, f"RSS grew by {grew} KiB for 1000 idle connections")
        for s in idle:
            s.close()
        wait_for(lambda: self.d.status()["ingest"]["connections"] == 0, 10, "connections closed")
        self.assertEqual(len(self.d.dump()), 2000)

    def test_too_many_connections_get_busy(self):
        self.d.stop()
        d = self.daemon(ingest__max_connections="5")
        d.start()
        socks = [socket.socket(socket.AF_UNIX) for _ in range(5)]
        for s in socks:
            s.connect(d.sock)
        wait_for(lambda: d.status()["ingest"]["connections"] == 5, 10, "5 connections")
        extra = socket.socket(socket.AF_UNIX)
        extra.settimeout(10)
        extra.connect(d.sock)
        self.assertIn(b"err 0 busy", extra.recv(200))
        for s in socks + [extra]:
            s.close()

    def test_slow_reader_that_never_reads_is_paused_not_buffered(self):
        rss0 = self.d.rss_kb()
        slow = socket.socket(socket.AF_UNIX)
        slow.connect(self.d.sock)
        slow.setblocking(False)
        bad = b"this is not json at all, and every line earns an error reply\n" * 1000
        sent = 0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:       # until relayd stops reading from it
            try:
                sent += slow.send(bad)
            except BlockingIOError:
                try:
                    wait_for(lambda: self._blocked(slow), 2, "socket to stay full")
                    break
                except AssertionError:
                    continue
        self.assertTrue(good_producer_works(self.d, 2000), "others must keep working")
        grew = self.d.rss_kb() - rss0
        self.assertLess(grew, 16 * 1024, f"RSS grew by {grew} KiB for a slow reader")
        # now it reads: every line it sent is answered, in order
        slow.setblocking(True)
        slow.settimeout(30)
        # a last partial line is answered too (as "truncated")
        lines = -(-sent // len(bad.split(b"\n")[0] + b"\n"))
        slow.shutdown(socket.SHUT_WR)
        got, errs, last_ok = b"", 0, 0
        while True:
            chunk = slow.recv(1 << 16)
            if not chunk:
                break
            got += chunk
            *done, got = got.split(b"\n")
            for l in done:
                if l.startswith(b"err "):
                    errs += 1
                elif l.startswith(b"ok "):
                    last_ok = int(l[3:])
        self.assertEqual(last_ok, lines)
        self.assertEqual(errs, lines)

    @staticmethod
    def _blocked(s):
        try:
            s.send(b"")
            n = s.send(b"x" * 65536)
        except BlockingIOError:
            return True
        return n == 0
