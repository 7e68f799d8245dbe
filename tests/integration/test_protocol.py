"""The ingest protocol end to end: acks, per-line errors, table routing, relayctl send."""
import json
import os
import stat
import subprocess
import tempfile

from relaytest import Producer, RelayTest, RELAYD, wait_for


class ProtocolTest(RelayTest):
    def setUp(self):
        self.d = self.daemon()
        self.d.start()

    def test_acks_cover_every_line_and_records_are_stored_in_order(self):
        p = Producer(self.d.sock)
        p.send_lines([json.dumps({"n": i}) for i in range(1, 1001)])
        self.assertEqual(p.wait_ack(1000), 1000)
        p.close()
        rows = [r["row"]["n"] for r in self.d.dump("events")]
        self.assertEqual(rows, list(range(1, 1001)))

    def test_each_bad_line_is_refused_by_number_and_good_lines_around_it_are_stored(self):
        p = Producer(self.d.sock)
        lines = ['{"a":1}', 'not json', '[1,2]', '{"a":"\xff"}', '{"b":2}', '',
                 '{"a":1,}', '"str"', '{"c":3} x', '{"d":4}']
        data = b"\n".join(l.encode("latin-1") for l in lines) + b"\n"
        p.send(data)
        self.assertEqual(p.finish(), 10)
        self.assertEqual(sorted(p.errors), [2, 3, 4, 7, 8, 9])
        self.assertEqual(p.errors[2][0], "json")
        self.assertEqual(p.errors[3][0], "not-object")
        self.assertEqual(p.errors[4][0], "utf8")
        self.assertIn("at byte 7", p.errors[4][1])
        self.assertEqual(p.errors[7][0], "json")
        self.assertIn("at byte 8", p.errors[7][1])
        self.assertEqual(p.errors[8][0], "not-object")
        self.assertEqual(p.errors[9][0], "json")
        rows = [r["row"] for r in self.d.dump("events")]
        self.assertEqual(rows, [{"a": 1}, {"b": 2}, {"d": 4}])

    def test_table_directive_and_per_record_prefix_route_records(self):
        p = Producer(self.d.sock)
        p.send_lines(['{"t":"e1"}', '@other', '{"t":"o1"}', '@events {"t":"e2"}', '{"t":"o2"}',
                      '@events', '{"t":"e3"}', '@nosuch', '@nosuch {"t":"x"}', '@bad/name {"t":"y"}'])
        self.assertEqual(p.finish(), 10)
        self.assertEqual(p.errors[8][0], "table")
        self.assertIn("unknown table 'nosuch'", p.errors[8][1])
        self.assertEqual(p.errors[9][0], "table")
        self.assertEqual(p.errors[10][0], "table")
        self.assertEqual([r["row"]["t"] for r in self.d.dump("events")], ["e1", "e2", "e3"])
        self.assertEqual([r["row"]["t"] for r in self.d.dump("other")], ["o1", "o2"])

    def test_crlf_line_endings_are_accepted(self):
        p = Producer(self.d.sock)
        p.send(b'{"a":1}\r\n{"a":2}\r\n')
        self.assertEqual(p.finish(), 2)
        self.assertEqual(p.errors, {})
        self.assertEqual(len(self.d.dump()), 2)

    def test_last_line_without_newline_is_refused_as_truncated(self):
        p = Producer(self.d.sock)
        p.send(b'{"a":1}\n{"a":2}')
        self.assertEqual(p.finish(), 2)
        self.assertEqual(p.errors[2][0], "truncated")
        self.assertEqual([r["row"] for r in self.d.dump()], [{"a": 1}])

    def test_status_json_counts_what_happened(self):
        p = Producer(self.d.sock)
        p.send_lines(['{"a":1}', '{"a":2}', 'x', '@other {"b":1}'])
        p.finish()
        st = self.d.status()
        self.assertEqual(st["state"], "accepting")
        self.assertEqual(st["ingest"]["records"], 3)
        self.assertEqual(st["ingest"]["stored"], 3)
        self.assertEqual(st["ingest"]["refused"]["json"], 1)
        self.assertEqual(st["spool"]["records"], 3)
        dests = {d["name"]: d for d in st["destinations"]}
        self.assertEqual(dests["events"]["records"], 2)
        self.assertEqual(dests["events"]["bytes"], 14)
        self.assertEqual(dests["other"]["records"], 1)
        self.assertLessEqual(st["spool"]["file_bytes"], st["spool"]["max_bytes"])

    def test_relayctl_send_maps_errors_to_file_and_line_and_exits_1(self):
        with tempfile.NamedTemporaryFile("w", suffix=".ndjson", delete=False) as f1, \
             tempfile.NamedTemporaryFile("w", suffix=".ndjson", delete=False) as f2:
            f1.write('{"a":1}\n{"a":2}\n')
            f2.write('{"b":1}\nbad\n{"b":3}')     # no final newline: relayctl adds it
        try:
            r = self.d.relayctl("send", "--table", "other", f1.name, f2.name)
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn(f"{f2.name}:2: json:", r.stderr.decode())
            r = self.d.relayctl("--json", "send", f1.name)
            self.assertEqual(r.returncode, 0, r.stderr)
            summary = json.loads(r.stdout)
            self.assertEqual(summary["sent"], 2)
            self.assertEqual(summary["acked"], 2)
            self.assertEqual(summary["refused"], 0)
        finally:
            os.unlink(f1.name)
            os.unlink(f2.name)
        self.assertEqual(len(self.d.dump("other")), 4)
        self.assertEqual(len(self.d.dump("events")), 2)

    def test_relayctl_send_from_stdin_with_summary(self):
        data = "".join(json.dumps({"i": i}) + "\n" for i in range(5000)).encode()
        r = self.d.relayctl("--json", "send", input=data)
        self.assertEqual(r.returncode, 0, r.stderr)
        s = json.loads(r.stdout)
        self.assertEqual((s["sent"], s["acked"], s["unacknowledged"]), (5000, 5000, 0))
        self.assertEqual(len(self.d.dump()), 5000)

    def test_relayctl_send_without_relayd_exits_4_with_a_hint(self):
        self.d.stop()
        r = self.d.relayctl("send", input=b'{"a":1}\n')
        self.assertEqual(r.returncode, 4)
        self.assertIn("is relayd running", r.stderr.decode())

    def test_status_when_stopped_reads_the_spool_and_exits_3(self):
        Producer(self.d.sock).send_lines(['{"a":1}'])
        p = Producer(self.d.sock)
        p.send_lines(['{"a":2}'])
        p.finish()
        self.assertEqual(self.d.stop(), 0)
        r = self.d.relayctl("status")
        self.assertEqual(r.returncode, 3)
        self.assertIn("not running", r.stdout.decode())

    def test_sigterm_finishes_and_exits_0(self):
        p = Producer(self.d.sock)
        p.send_lines([json.dumps({"n": i}) for i in range(20000)])
        p.wait_ack(1)
        self.assertEqual(self.d.stop(), 0)
        # everything acked is stored; lines after the last ack may or may not be
        p.poll_replies = p.poll_replies
        try:
            while p.poll_replies():
                pass
        except OSError:
            pass
        stored = [r["row"]["n"] for r in self.d.dump()]
        self.assertEqual(stored, list(range(len(stored))))
        self.assertGreaterEqual(len(stored), p.acked)

    def test_files_and_socket_permissions_are_restrictive(self):
        st = os.stat(self.d.spool)
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o700)
        for name in ("data.mdb", "lock.mdb"):
            self.assertEqual(stat.S_IMODE(os.stat(os.path.join(self.d.spool, name)).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(self.d.sock).st_mode), 0o660)

    def test_a_second_relayd_on_the_same_spool_refuses_to_start(self):
        p = subprocess.run([RELAYD, "-c", self.d.conf], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=30)
        self.assertEqual(p.returncode, 4)
        self.assertIn(b"another relayd", p.stderr)
        self.assertTrue(self.d.ping())

    def test_sighup_reload_adds_a_destination(self):
        p = Producer(self.d.sock)
        p.send_lines(['@fresh {"a":1}'])
        p.finish()
        self.assertEqual(p.errors[1][0], "table")
        self.d.dests.append("fresh")
        self.d.write_config()
        import signal as sg
        self.d.proc.send_signal(sg.SIGHUP)
        wait_for(lambda: "reloaded" in self.d.read_log(), 10, "the reload")
        p = Producer(self.d.sock)
        p.send_lines(['@fresh {"a":1}'])
        self.assertEqual(p.finish(), 1)
        self.assertEqual(p.errors, {})
        self.assertEqual(len(self.d.dump("fresh")), 1)


class PeerCredentialTest(RelayTest):
    def test_peer_not_allowed_gets_a_clear_error(self):
        if os.geteuid() != 0:
            self.skipTest("needs root to connect as another uid")
        d = self.daemon(ingest__socket_mode="0666")
        d.start()
        os.chmod(d.dir, 0o755)
        # a refused peer is answered at once: it reads the refusal before sending
        code = ("import socket,sys; s=socket.socket(socket.AF_UNIX); s.settimeout(10);"
                "s.connect(sys.argv[1]); sys.argv[2:] and s.sendall(b'{\"a\":1}\\n');"
                "print(s.recv(1000).decode())")
        r = subprocess.run(["/usr/bin/python3", "-c", code, d.sock], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, user=65534, group=65534, timeout=30)
        self.assertIn("err 0 denied uid 65534", r.stdout.decode())
        self.assertEqual(d.dump(), [])
        # allowed by uid once configured
        d.sections["ingest"]["allowed_uids"] = "65534"
        d.write_config()
        import signal as sg
        d.proc.send_signal(sg.SIGHUP)
        wait_for(lambda: "reloaded" in d.read_log(), 10, "the reload")
        r = subprocess.run(["/usr/bin/python3", "-c", code, d.sock, "send"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, user=65534, group=65534, timeout=30)
        self.assertIn("ok 1", r.stdout.decode())
        self.assertEqual(len(d.dump()), 1)


class WatchTest(RelayTest):
    def test_status_watch_refreshes(self):
        d = self.daemon()
        d.start()
        p = subprocess.Popen([os.path.join(os.path.dirname(RELAYD), "relayctl"), "-c", d.conf,
                              "--json", "status", "--watch", "--interval", "200ms"],
                             stdout=subprocess.PIPE)
        try:
            docs = [json.loads(p.stdout.readline()) for _ in range(3)]   # three refreshes
        finally:
            p.terminate()
            p.wait(10)
        self.assertTrue(all(doc["state"] == "accepting" for doc in docs))
        self.assertEqual(p.returncode, 0)


class ReadyTest(RelayTest):
    def test_status_ready_exit_codes(self):
        d = self.daemon()
        d.start()
        r = d.relayctl("status", "--ready")
        self.assertEqual((r.returncode, r.stdout.strip()), (0, b"accepting"))
        self.assertEqual(d.stop(), 0)
        r = d.relayctl("status", "--ready")
        self.assertEqual((r.returncode, r.stdout.strip()), (3, b"down"))
