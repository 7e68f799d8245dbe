"""The Fluent forward input against the real daemon.

The client here is an independent forward implementation on Debian's
python3-msgpack (the same library fluent-logger-python uses): it sends the four
modes with the chunk option (require_ack_response) and reads the acks. Records
are checked in the real LMDB spool (relayctl spool dump) of a daemon whose
destinations only queue, so what was stored is exactly what is inspected.
"""
import gzip
import os
import random
import shutil
import socket
import struct
import subprocess
import time
import urllib.request
import uuid

import msgpack

from relaytest import RELAYD, ROOT, RelayTest, wait_for

KILLS = int(os.environ.get("FORWARD_KILLS", "20"))


def event_time(sec, nsec=0):
    return msgpack.ExtType(0, struct.pack(">II", sec, nsec))


class FwdClient:
    """A forward producer: sends messages, collects {"ack": chunk} replies."""

    def __init__(self, addr, timeout=30):
        fam = socket.AF_UNIX if isinstance(addr, str) else socket.AF_INET
        self.s = socket.socket(fam, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(addr)
        self.unpacker = msgpack.Unpacker(raw=False)
        self.acks = set()
        self.closed = False

    def send(self, obj, chunk=None, option=None):
        opt = dict(option or {})
        if chunk:
            opt["chunk"] = chunk
        if opt:
            obj = list(obj) + [opt]
        self.s.sendall(msgpack.packb(obj, use_bin_type=True))

    def message(self, tag, t, rec, chunk=None):
        self.send([tag, t, rec], chunk)

    def forward(self, tag, entries, chunk=None):
        self.send([tag, [[t, r] for t, r in entries]], chunk)

    def packed(self, tag, entries, chunk=None, compress=False):
        blob = b"".join(msgpack.packb([t, r], use_bin_type=True) for t, r in entries)
        opt = {"size": len(entries)}
        if compress:
            blob = gzip.compress(blob)
            opt["compressed"] = "gzip"
        self.send([tag, blob], chunk, opt)

    def poll(self):
        try:
            data = self.s.recv(65536)
        except socket.timeout:
            return True
        if not data:
            self.closed = True
            return False
        self.unpacker.feed(data)
        for m in self.unpacker:
            assert isinstance(m, dict) and set(m) == {"ack"}, m
            self.acks.add(m["ack"])
        return True

    def wait_acks(self, chunks, timeout=30):
        deadline = time.monotonic() + timeout
        while not set(chunks) <= self.acks:
            if time.monotonic() > deadline:
                raise AssertionError(f"no ack for {set(chunks) - self.acks}")
            if not self.poll():
                raise AssertionError(f"closed before the acks of {set(chunks) - self.acks}")

    def wait_closed(self, timeout=30):
        deadline = time.monotonic() + timeout
        while self.poll():
            if time.monotonic() > deadline:
                raise AssertionError("relayd did not close the connection")

    def close(self):
        self.s.close()


def chunk_id():
    return uuid.uuid4().hex


class ForwardTest(RelayTest):
    def fwd_daemon(self, routes=(), dests=("events", "web", "app", "kube"), forward=None, **kw):
        d = self.daemon(dests=list(dests), **kw)
        d.fwd_sock = os.path.join(d.dir, "forward.sock")
        with open(d.conf, "a") as f:
            f.write("[forward]\nsocket = %s\n" % d.fwd_sock)
            for k, v in (forward or {}).items():
                f.write(f"{k} = {v}\n")
            for pat, dest in routes:
                f.write(f"route = {pat} {dest}\n")
        d.start()
        return d

    def rows(self, d, table):
        return [r["row"] for r in d.dump(table)]

    def fwd_status(self, d):
        return d.status()["ingest"]["forward"]

    def test_the_four_modes_are_acknowledged_and_stored(self):
        d = self.fwd_daemon(forward={"time_key": "ts"})
        c = FwdClient(d.fwd_sock)
        t0 = 1704164645      # 2024-01-02T03:04:05Z
        ids = [chunk_id() for _ in range(4)]
        c.message("events", event_time(t0, 123456789), {"m": "message", "i": 0}, ids[0])
        c.forward("events", [(t0 + 1, {"m": "forward", "i": k}) for k in range(3)], ids[1])
        c.packed("events", [(event_time(t0 + 2, 5000), {"m": "packed", "i": k}) for k in range(4)],
                 ids[2])
        c.packed("events", [(t0 + 3, {"m": "gzip", "i": k}) for k in range(5)], ids[3],
                 compress=True)
        c.wait_acks(ids)
        rows = self.rows(d, "events")
        self.assertEqual(len(rows), 1 + 3 + 4 + 5)
        by = {}
        for r in rows:
            by.setdefault(r["m"], []).append(r)
        self.assertEqual([r["i"] for r in by["forward"]], [0, 1, 2])
        self.assertEqual([r["i"] for r in by["gzip"]], [0, 1, 2, 3, 4])
        # EventTime keeps BigQuery TIMESTAMP's microseconds; integer time is whole seconds
        self.assertEqual(by["message"][0]["ts"], "2024-01-02T03:04:05.123456Z")
        self.assertEqual(by["forward"][0]["ts"], "2024-01-02T03:04:06.000000Z")
        self.assertEqual(by["packed"][0]["ts"], "2024-01-02T03:04:07.000005Z")
        st = self.fwd_status(d)
        self.assertEqual(st["records"], 13)
        self.assertEqual(st["messages"], 4)
        self.assertEqual(st["acks"], 4)
        c.close()

    def test_values_convert_to_json_faithfully(self):
        d = self.fwd_daemon(forward={"time_key": "t", "time_format": "unix_ns"})
        c = FwdClient(d.fwd_sock)
        rec = {"s": "h\u00e9llo \"q\" \\ \n\t\x01", "i": -42, "u": 2**64 - 1, "f": 0.1,
               "big": 1e300, "b": True, "n": None, "bin": b"\x00\xffab",
               "arr": [1, "two", [3]], "map": {"k": {"kk": False}},
               "t": "the record's own field wins"}
        ids = [chunk_id(), chunk_id()]
        c.message("events", event_time(1, 2), rec, ids[0])
        c.message("events", event_time(1700000000, 999999999), {"x": 1}, ids[1])
        c.wait_acks(ids)
        rows = self.rows(d, "events")
        got = rows[0]
        expect = dict(rec)
        expect["bin"] = "AP9hYg=="     # BYTES' JSON form: base64
        self.assertEqual(got, expect)
        self.assertEqual(rows[1], {"x": 1, "t": 1700000000999999999})
        # float32 prints as the shortest decimal that reads back as the same float
        c.s.sendall(msgpack.packb(["events", 5, {"f32": 0.0}, {"chunk": "c32"}]).replace(
            b"\xcb" + struct.pack(">d", 0.0), b"\xca" + struct.pack(">f", 0.1)))
        c.wait_acks(["c32"])
        self.assertEqual(self.rows(d, "events")[2]["f32"], 0.1)
        c.close()

    def test_tags_route_exact_prefix_glob_then_name_then_default(self):
        d = self.fwd_daemon(routes=[("app.web", "web"), ("app.**", "app"), ("k8s.*.log", "kube")])
        c = FwdClient(d.fwd_sock)
        cases = {"app.web": "web", "app": "app", "app.api.v1": "app", "k8s.prod.log": "kube",
                 "k8s.prod.x.log": "events", "kube": "kube", "other.thing": "events"}
        ids = []
        for tag in cases:
            ids.append(chunk_id())
            c.message(tag, 1, {"tag": tag}, ids[-1])
        c.wait_acks(ids)
        for dest in ("web", "app", "kube", "events"):
            self.assertEqual(sorted(r["tag"] for r in self.rows(d, dest)),
                             sorted(t for t, want in cases.items() if want == dest), dest)
        c.close()

    def test_a_tag_with_nowhere_to_go_is_refused_loudly(self):
        d = self.fwd_daemon(routes=[("app.**", "app")], default_table=None)
        c = FwdClient(d.fwd_sock)
        c.forward("nowhere", [(1, {"a": 1}), (1, {"a": 2})], "c1")
        c.message("app.x", 1, {"a": 3}, "c2")
        c.wait_acks(["c1", "c2"])
        self.assertEqual([r["a"] for r in self.rows(d, "app")], [3])
        st = self.fwd_status(d)
        self.assertEqual(st["refused"]["table"], 2)
        self.assertIn("no destination for tag 'nowhere'", d.read_log())
        c.close()

    def test_bad_records_are_refused_with_a_reason_and_good_ones_kept(self):
        d = self.fwd_daemon(**{"ingest__max_depth": "4", "ingest__max_record_bytes": "2K"})
        c = FwdClient(d.fwd_sock)
        bad = [
            (1, [1, 2]),                          # not a map
            (1, {1: "int key"}),                  # key
            (1, {"e": msgpack.ExtType(5, b"x")}), # type
            (1, {"s": "x"}),                      # good
            ("yesterday", {"a": 1}),              # time
            (1, {"d": {"d": {"d": {"d": {}}}}}),  # depth: 5 levels > max_depth 4
            (1, {"big": "x" * 4000}),             # size
            (1, {"s": "y"}),                      # good
        ]
        c.forward("events", bad, "c1")
        # invalid UTF-8 in a str (msgpack.packb cannot make one): patch the bytes
        raw = msgpack.packb(["events", 1, {"u": "ab"}, {"chunk": "c2"}], use_bin_type=True)
        c.s.sendall(raw.replace(b"\xa2ab", b"\xa2\xc3\x28"))
        c.wait_acks(["c1", "c2"])
        self.assertEqual([r["s"] for r in self.rows(d, "events")], ["x", "y"])
        ref = self.fwd_status(d)["refused"]
        for reason in ("not-object", "key", "type", "time", "depth", "size", "utf8"):
            self.assertEqual(ref[reason], 1, (reason, ref))
        log = d.read_log()
        for reason in ("not-object", "key", "type", "time", "depth", "size", "utf8"):
            self.assertIn(f"refused ({reason})", log)
        c.close()

    def test_malformed_streams_close_the_connection_and_the_daemon_keeps_going(self):
        d = self.fwd_daemon(forward={"max_message_bytes": "64K"})
        gz_bad = msgpack.packb(["events", b"\x1f\x8b garbage", {"compressed": "gzip",
                                                                 "chunk": "z"}])
        cases = {
            "json": b'{"a":1}\n',
            "not-an-array": msgpack.packb({"a": 1}),
            "0xc1": b"\x93\xa6events\x01\xc1",
            "huge-count": b"\x93\xa6events\x01\xdd\xff\xff\xff\xff",
            "huge-str": b"\x93\xa6events\x01\xdb\x7f\xff\xff\xff",
            "too-large": msgpack.packb(["events", 1, {"x": "y" * 70000}]),
            "no-tag": msgpack.packb([1, 1, {"a": 1}]),
            "short": msgpack.packb(["events", 1]),
            "option": msgpack.packb(["events", 1, {"a": 1}, "not-a-map"]),
            "bad-gzip": gz_bad,
            "bad-packed": msgpack.packb(["events", b"\x92\x01"]),
        }
        for name, data in cases.items():
            c = FwdClient(d.fwd_sock)
            good = chunk_id()
            c.message("events", 1, {"before": name}, good)
            c.s.sendall(data)
            c.wait_acks([good])          # what came before the error is stored and acked
            c.wait_closed()
            c.close()
            self.assertTrue(d.ping(), name)
        st = self.fwd_status(d)
        self.assertEqual(st["protocol_errors"], len(cases))
        self.assertEqual(sorted(r["before"] for r in self.rows(d, "events")), sorted(cases))
        log = d.read_log()
        self.assertIn("this is the Fluent forward socket; send NDJSON", log)
        self.assertIn("larger than max_message_bytes", log)
        self.assertIn("gzip", log)
        # the daemon still serves a well-behaved producer
        c = FwdClient(d.fwd_sock)
        c.message("events", 1, {"after": 1}, "last")
        c.wait_acks(["last"])

    def test_a_message_cut_by_the_producer_is_not_stored(self):
        d = self.fwd_daemon()
        c = FwdClient(d.fwd_sock)
        c.message("events", 1, {"a": 1}, "c1")
        c.wait_acks(["c1"])
        data = msgpack.packb(["events", 1, {"a": 2}, {"chunk": "c2"}])
        c.s.sendall(data[:-3])
        c.s.shutdown(socket.SHUT_WR)
        c.wait_closed()
        self.assertNotIn("c2", c.acks)
        self.assertEqual([r["a"] for r in self.rows(d, "events")], [1])
        self.assertEqual(self.fwd_status(d)["refused"]["truncated"], 1)

    def test_check_config_refuses_broken_forward_settings(self):
        d = self.daemon()
        cases = {
            "route = app.** nosuch\n": "[forward] route: 'nosuch' is not a [destination]",
            "listen = 0.0.0.0:24224\n": "[forward] listen: '0.0.0.0:24224'",
            "time_key = 9lives\n": "[forward] time_key: '9lives' is not a BigQuery column name",
            "time_format = iso\n": "[forward] time_format: expected timestamp, rfc3339_ns or unix_ns",
            "route = a|b events\n": "tag pattern 'a|b'",
        }
        cases["socket = %s/forward.sock\n" % d.conf] = "[forward] socket:"   # under a file
        base = open(d.conf).read()
        for extra, want in cases.items():
            path = os.path.join(d.dir, "bad.conf")
            with open(path, "w") as f:
                f.write(base + "[forward]\n" + extra)
            p = subprocess.run([RELAYD, "--check-config", "-c", path], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, timeout=30)
            self.assertEqual(p.returncode, 3, (extra, p.stdout))
            self.assertIn(want, p.stdout.decode(), extra)
        with open(path, "w") as f:
            f.write(base + "[forward]\nsocket = %s/f.sock\nroute = a.** events\n" % d.dir)
        p = subprocess.run([RELAYD, "--check-config", "-c", path], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=30)
        self.assertEqual(p.returncode, 0, p.stdout)

    def test_metrics_count_forward_records_and_refusals(self):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        d = self.fwd_daemon(relayd__metrics_listen=f"127.0.0.1:{port}")
        c = FwdClient(d.fwd_sock)
        c.forward("events", [(1, {"a": 1}), (1, [2]), (1, {"a": 3})], "m1")
        c.wait_acks(["m1"])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
        self.assertIn("relayd_forward_records_total 2", text)
        self.assertIn("relayd_forward_acks_total 1", text)
        self.assertIn('relayd_forward_refused_total{reason="not-object"} 1', text)

    def test_the_npm_fluent_logger_client_with_require_ack_response(self):
        """A real Fluent client: the npm fluent-logger package (installed into
        build/npm on first use from the npm registry), in its three event modes
        with requireAckResponse: every emit is acknowledged and stored once."""
        node = shutil.which("node")
        npm = shutil.which("npm")
        if not node or not npm:
            self.skipTest("node/npm not installed: the python3-msgpack client tests cover forward")
        prefix = os.path.join(ROOT, "build", "npm")
        mod = os.path.join(prefix, "node_modules", "fluent-logger")
        if not os.path.isdir(mod):
            os.makedirs(prefix, exist_ok=True)
            p = subprocess.run([npm, "install", "--prefix", prefix, "--no-audit", "--no-fund",
                                "fluent-logger@3.4.1"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=300)
            if p.returncode != 0:
                self.skipTest("npm install fluent-logger failed (no registry?): "
                              + p.stdout.decode()[-300:])
        d = self.fwd_daemon(routes=[("app.**", "app")], forward={"time_key": "ts"})
        script = os.path.join(ROOT, "tests", "integration", "node", "fluent_send.js")
        env = dict(os.environ, NODE_PATH=os.path.join(prefix, "node_modules"))
        modes = ("Message", "PackedForward", "CompressedPackedForward")
        for mode in modes:
            p = subprocess.run([node, script, d.fwd_sock, mode, "200", "app.node"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
            self.assertEqual(p.returncode, 0, p.stdout.decode())
        rows = self.rows(d, "app")
        for mode in modes:
            got = sorted(r["i"] for r in rows if r["mode"] == mode)
            self.assertEqual(got, list(range(200)), mode)
        first = [r for r in rows if r["mode"] == "Message" and r["i"] == 3][0]
        self.assertEqual(first["ts"], "2024-01-02T03:04:08.000003Z")
        self.assertGreaterEqual(self.fwd_status(d)["acks"], 3)

    def test_loopback_tcp_listener(self):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        d = self.fwd_daemon(forward={"listen": f"127.0.0.1:{port}"})
        c = FwdClient(("127.0.0.1", port))
        c.forward("events", [(1, {"tcp": k}) for k in range(100)], "t1")
        c.wait_acks(["t1"])
        self.assertEqual(len(self.rows(d, "events")), 100)

    def test_a_full_spool_leaves_the_chunk_unacknowledged(self):
        d = self.fwd_daemon(**{"spool__max_spool_bytes": "1M", "ingest__full_wait": "200ms",
                               "ingest__max_record_bytes": "64K"})
        c = FwdClient(d.fwd_sock)
        acked_before = []
        pad = "p" * 1000
        k = 0
        # fill the spool chunk by chunk until a chunk is left unacknowledged and
        # the connection is closed: the producer's cue to resend it
        while not c.closed and k < 5000:
            cid = f"c{k}"
            c.forward("events", [(1, {"k": k, "j": j, "pad": pad}) for j in range(20)], cid)
            k += 1
            deadline = time.monotonic() + 10
            while cid not in c.acks and not c.closed and time.monotonic() < deadline:
                c.poll()
            if cid in c.acks:
                acked_before.append(k - 1)
        self.assertTrue(c.closed, "relayd never refused: the spool did not fill")
        self.assertNotIn(f"c{k - 1}", c.acks)
        stored = {}
        for r in self.rows(d, "events"):
            stored.setdefault(r["k"], set()).add(r["j"])
        for kk in acked_before:
            self.assertEqual(stored.get(kk), set(range(20)), f"acked chunk {kk} incomplete")
        self.assertGreater(self.fwd_status(d)["refused"]["full"], 0)
        self.assertIn("its chunk is not acknowledged", d.read_log())

    def test_kill9_during_forward_ingest_every_acked_chunk_exactly_once(self):
        d = self.fwd_daemon()
        rng = random.Random(7)
        acked = {}          # chunk id -> number of records
        all_sent = {}
        serial = 0
        for kill in range(KILLS):
            c = FwdClient(d.fwd_sock, timeout=0.02)
            sent = {}
            deadline = time.monotonic() + rng.uniform(0.05, 0.4)
            try:
                while time.monotonic() < deadline:
                    serial += 1
                    cid = f"k{kill}-{serial}"
                    n = rng.randint(1, 50)
                    sent[cid] = n
                    mode = serial % 3
                    entries = [(1, {"c": cid, "j": j}) for j in range(n)]
                    if mode == 0:
                        c.forward("events", entries, cid)
                    else:
                        c.packed("events", entries, cid, compress=mode == 2)
                    c.poll()
            except OSError:
                pass
            d.kill9()
            try:
                while c.poll():
                    pass
            except OSError:
                pass
            c.close()
            for cid in c.acks:
                acked[cid] = sent[cid]
            all_sent.update(sent)
            d.start()
        counts = {}
        for r in self.rows(d, "events"):
            counts.setdefault(r["c"], []).append(r["j"])
        self.assertTrue(acked, "no chunk was ever acknowledged")
        for cid, n in acked.items():
            self.assertEqual(sorted(counts.get(cid, [])), list(range(n)),
                             f"acked chunk {cid}: records missing or stored twice")
        # a chunk that was never acked may be stored, but whole and once (one commit)
        for cid, js in counts.items():
            self.assertEqual(sorted(js), list(range(all_sent[cid])), cid)


if __name__ == "__main__":
    import unittest
    unittest.main()
