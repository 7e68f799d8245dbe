"""Delivery over the Storage Write API (gRPC), against the emulator's BigQueryWrite
service, which decodes every row with Google's protobuf library from the
descriptor relayd sent and checks it against the table's schema."""
import json
import os
import random
import subprocess
import time

from relaytest import (EVENTS_SCHEMA, Emulator, Producer, RelayTest, TOOLS, deliver_to,
                       wait_for, write_to)

TABLE = "proj.logs.events"


def rows(n, start=0):
    return [json.dumps({"i": start + k, "msg": "row %d" % (start + k), "ok": k % 2 == 0})
            for k in range(n)]


class StorageBase(RelayTest):
    def setUp(self):
        self.emu = Emulator(self, grpc=True).start()
        self.emu.create_table(TABLE, EVENTS_SCHEMA)

    def send(self, d, lines, prefix=""):
        p = Producer(d.sock)
        p.send_lines([prefix + l for l in lines])
        self.assertEqual(p.finish(), len(lines))
        self.assertEqual(p.errors, {})

    def arrived(self, table, n, timeout=60):
        wait_for(lambda: self.emu.count(table) >= n, timeout, f"{n} rows in {table}", interval=0.05)

    def dead_letters(self, d):
        r = subprocess.run([os.path.join(TOOLS, "dlq_dump"), d.spool], stdout=subprocess.PIPE,
                           check=True, timeout=60)
        return [json.loads(l) for l in r.stdout.splitlines()]

    def status(self, d, name="events"):
        return {x["name"]: x for x in d.status()["destinations"]}[name]["delivery"]


class AtLeastOnceTest(StorageBase):
    def test_rows_arrive_through_the_default_stream(self):
        d = self.daemon(dests=[("events", write_to(self.emu))])
        d.start()
        self.send(d, rows(3000))
        self.arrived(TABLE, 3000)
        got = self.emu.rows(TABLE)
        self.assertEqual(sorted(r["json"]["i"] for r in got), list(range(3000)))
        self.assertTrue(all(r["source"] == "write" and r["stream"].endswith("/_default") for r in got))
        wait_for(lambda: d.status()["spool"]["records"] == 0, 30, "the queue to drain")
        st = self.status(d)
        self.assertEqual((st["api"], st["delivered"], st["dead_lettered"]), ("storage", 3000, 0))
        self.assertEqual(d.stop(), 0)

    def test_rows_that_do_not_fit_the_schema_are_dead_lettered_naming_the_field(self):
        d = self.daemon(dests=[("events", write_to(self.emu))])
        d.start()
        lines = rows(100)
        lines[10] = json.dumps({"i": "ten", "msg": "x"})           # INT64 from a word
        lines[20] = json.dumps({"msg": "no i"})                   # REQUIRED missing
        lines[30] = json.dumps({"i": 30, "nosuch": 1})            # unknown column
        self.send(d, lines)
        self.arrived(TABLE, 97)
        wait_for(lambda: d.status()["spool"]["records"] == 0, 30, "the queue to drain")
        dl = {json.loads(e["row"]).get("msg", "") + str(json.loads(e["row"]).get("i")): e
              for e in self.dead_letters(d)}
        self.assertEqual(len(dl), 3)
        for e in dl.values():
            self.assertEqual(e["reason"], "invalid")
        details = " | ".join(e["detail"] for e in dl.values())
        self.assertIn("'i'", details)
        self.assertIn("nosuch", details)
        got = sorted(r["json"]["i"] for r in self.emu.rows(TABLE))
        self.assertEqual(got, [i for i in range(100) if i not in (10, 20, 30)])

    def test_faults_resource_exhausted_unavailable_idle_close_and_drops_lose_nothing(self):
        d = self.daemon(dests=[("events", write_to(self.emu, batch_rows=50))])
        d.start()
        self.emu.fault(grpc="RESOURCE_EXHAUSTED", count=3, in_stream=True)
        self.emu.fault(grpc="UNAVAILABLE", count=2)
        self.emu.fault(idle_close=True, count=1)
        self.emu.fault(drop=1, path="write")
        self.send(d, rows(2000))
        self.arrived(TABLE, 2000, timeout=120)
        got = [r["json"]["i"] for r in self.emu.rows(TABLE)]
        self.assertEqual(sorted(set(got)), list(range(2000)), "every row arrived")
        self.assertEqual(d.status()["spool"]["dead_letters"], 0)
        self.assertGreater(self.status(d)["failed_requests"], 0, "the faults hit relayd")


class ExactlyOnceTest(StorageBase):
    def test_committed_stream_with_offsets(self):
        d = self.daemon(dests=[("events", write_to(self.emu, delivery="exactly_once"))])
        d.start()
        self.send(d, rows(2500))
        self.arrived(TABLE, 2500)
        got = self.emu.rows(TABLE)
        self.assertEqual(sorted(r["json"]["i"] for r in got), list(range(2500)))
        streams = {r["stream"] for r in got}
        self.assertEqual(len(streams), 1)
        self.assertNotIn("_default", streams.pop())
        self.assertEqual(sorted(r["offset"] for r in got), list(range(2500)))
        wait_for(lambda: self.status(d)["next_offset"] == 2500, 30, "the offset to be recorded")
        self.assertEqual(d.stop(), 0)
        d.start()                                   # resumes the same stream at 2500
        self.send(d, rows(10, start=2500))
        self.arrived(TABLE, 2510)
        got = self.emu.rows(TABLE)
        self.assertEqual(len({r["stream"] for r in got}), 1)
        self.assertEqual(sorted(r["offset"] for r in got), list(range(2510)))

    def test_kill9_during_exactly_once_delivery_stores_every_row_exactly_once(self):
        kills = int(os.environ.get("EO_KILLS", "30"))
        self.emu.fault(latency_ms=15, path="write", count=None)   # appends stay in flight
        d = self.daemon(dests=[("events", write_to(self.emu, delivery="exactly_once",
                                                   batch_rows=40, max_inflight=3))])
        d.start()
        rng = random.Random()
        sent = 0
        for k in range(kills):
            self.send(d, rows(200, start=sent))
            sent += 200
            time.sleep(rng.uniform(0.0, 0.25))   # the random point of the kill
            d.kill9()
            d.start()
        self.arrived(TABLE, sent, timeout=240)
        wait_for(lambda: d.status()["spool"]["records"] == 0, 120, "the queue to drain")
        got = [r["json"]["i"] for r in self.emu.rows(TABLE)]
        dups = len(got) - len(set(got))
        print(f"\n  {kills} kills, {sent} rows, {len(got)} stored, {dups} duplicates, "
              f"{self.emu.stats().get('write', {}).get('rows_already_exists', '?')} already-exists")
        self.assertEqual(sorted(got), list(range(sent)), "every acked row exactly once")
        self.assertEqual(d.status()["spool"]["dead_letters"], 0)
        self.assertEqual(d.stop(), 0)

    def test_faults_in_exactly_once_mode_lose_nothing_and_duplicate_nothing(self):
        d = self.daemon(dests=[("events", write_to(self.emu, delivery="exactly_once",
                                                   batch_rows=50))])
        d.start()
        self.emu.fault(grpc="RESOURCE_EXHAUSTED", count=2, in_stream=True)
        self.emu.fault(idle_close=True, count=1)
        self.emu.fault(drop=2, path="write", after_commit=True)    # written, answer lost
        self.emu.fault(grpc="UNAVAILABLE", count=1)
        self.send(d, rows(1500))
        self.arrived(TABLE, 1500, timeout=120)
        wait_for(lambda: d.status()["spool"]["records"] == 0, 60, "the queue to drain")
        got = [r["json"]["i"] for r in self.emu.rows(TABLE)]
        self.assertEqual(sorted(got), list(range(1500)), "no loss, no duplicate")

    def test_schema_change_mid_run_is_picked_up(self):
        d = self.daemon(dests=[("events", write_to(self.emu, delivery="exactly_once"))])
        d.start()
        self.send(d, rows(100))
        self.arrived(TABLE, 100)
        self.emu.create_table(TABLE, EVENTS_SCHEMA + [{"name": "extra", "type": "STRING"}])
        self.send(d, [json.dumps({"i": 100 + k, "extra": "e%d" % k}) for k in range(50)])
        self.arrived(TABLE, 150, timeout=60)
        got = {r["json"]["i"]: r["json"] for r in self.emu.rows(TABLE)}
        self.assertEqual(got[120].get("extra"), "e20")
        self.assertEqual(sorted(got), list(range(150)))
