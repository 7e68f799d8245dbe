"""Storage Write parity with insertAll (issue 11 part 2): time-sharded tables
and create_table on both APIs with the same outcome for every row (a
differential check), the same outcome for a missing table without
create_table, the bytes-in-flight bound (max_inflight_bytes) on both APIs,
and connections = N on the Storage Write path: every row exactly once with
exactly_once (also across kill -9 and a change of connections), at least once
otherwise."""
import json
import os
import random
import subprocess
import time

from relaytest import (EVENTS_SCHEMA, Emulator, Producer, RelayTest, TOOLS, deliver_to,
                       wait_for, write_to)

SCHEMA = EVENTS_SCHEMA + [{"name": "ts", "type": "TIMESTAMP"}]
DAYS = ("2026-11-20", "2026-11-21", "2026-11-22")


def day_rows(n, start=0):
    """n rows spread over DAYS by their ts, plus their ids."""
    return [json.dumps({"i": start + k, "p": k % 7, "msg": "row %d" % (start + k),
                        "ts": "%sT%02d:%02d:00Z" % (DAYS[k % 3], k % 24, k % 60)})
            for k in range(n)]


def plain_rows(n, start=0, pad=0):
    return [json.dumps({"i": start + k, "msg": "m%d" % (start + k) + "x" * pad}) for k in range(n)]


class ParityBase(RelayTest):
    def setUp(self):
        self.emu = Emulator(self, grpc=True).start()
        self.schema = os.path.join(self.emu.dir, "schema.json")
        with open(self.schema, "w") as f:
            json.dump({"fields": SCHEMA}, f)

    def send(self, d, lines, prefix=""):
        p = Producer(d.sock)
        p.send_lines([prefix + l for l in lines])
        self.assertEqual(p.finish(), len(lines))
        self.assertEqual(p.errors, {})

    def delivery(self, d, name):
        return {x["name"]: x for x in d.status()["destinations"]}[name]["delivery"]

    def queued(self, d, name):
        return {x["name"]: x for x in d.status()["destinations"]}[name]["records"]

    def dead_letters(self, d):
        r = subprocess.run([os.path.join(TOOLS, "dlq_dump"), d.spool], stdout=subprocess.PIPE,
                           check=True, timeout=60)
        return [json.loads(l) for l in r.stdout.splitlines()]

    def ids(self, table):
        return [r["json"]["i"] for r in self.emu.rows(table)]


class ShardedTest(ParityBase):
    def test_time_sharded_rows_land_in_the_same_daily_tables_on_both_apis(self):
        """The same rows, the same tables created on first use (create_table),
        the same row in each daily table and the same dead letter, whether
        insertAll, the Storage Write default stream or exactly-once streams
        over two connections deliver them."""
        def sharded(prefix, **kw):
            return dict(table=prefix + "_%Y%m%d", table_time_field="ts", create_table="yes",
                        schema_file=self.schema, time_partitioning="DAY", partition_field="ts",
                        clustering="p", **kw)
        d = self.daemon(dests=[("ins", deliver_to(self.emu, **sharded("ins"))),
                               ("wa", write_to(self.emu, **sharded("wa"))),
                               ("we", write_to(self.emu, delivery="exactly_once", connections=2,
                                               **sharded("we")))],
                        default_table=None)
        d.start()
        lines = day_rows(150) + [json.dumps({"i": 999, "msg": "no time"}),
                                 json.dumps({"i": 998, "ts": "not a time"})]
        for name in ("ins", "wa", "we"):
            self.send(d, lines, prefix="@%s " % name)
        for day in DAYS:
            for name in ("ins", "wa", "we"):
                t = "proj.logs.%s_%s" % (name, day.replace("-", ""))
                wait_for(lambda: self.emu.count(t) >= 50, 60, f"50 rows in {t}", interval=0.05)
        for name in ("ins", "wa", "we"):
            wait_for(lambda: self.queued(d, name) == 0, 30, f"the {name} queue to drain")
        for day in DAYS:
            tab = {}
            for name in ("ins", "wa", "we"):
                rows = self.emu.rows("proj.logs.%s_%s" % (name, day.replace("-", "")))
                tab[name] = sorted((r["json"]["i"], r["json"]["msg"]) for r in rows)
                self.assertTrue(all(r["json"]["ts"].startswith(day) for r in rows), name)
            self.assertEqual(len(tab["ins"]), 50)
            self.assertEqual(tab["wa"], tab["ins"], f"{day}: default stream vs insertAll")
            self.assertEqual(tab["we"], tab["ins"], f"{day}: exactly-once streams vs insertAll")
        streams = {r["stream"] for day in DAYS
                   for r in self.emu.rows("proj.logs.we_" + day.replace("-", ""))}
        self.assertEqual(len(streams), 6, "one stream per (connection, daily table)")
        # the rows without a usable time: dead-lettered alike, reason routing
        dl = {}
        for e in self.dead_letters(d):
            dl.setdefault(e["dest"], set()).add((json.loads(e["row"])["i"], e["reason"]))
        want = {(999, "routing"), (998, "routing")}
        self.assertEqual(dl, {"ins": want, "wa": want, "we": want})
        self.assertGreaterEqual(d.read_log().count("created"), 9)
        self.assertEqual(d.stop(), 0)


class MissingTableTest(ParityBase):
    def test_missing_table_without_create_table_parks_on_both_apis_then_delivers(self):
        """No table and no create_table: every API keeps the rows and parks
        (nothing dead-lettered), says how to fix it, and delivers once the
        table exists: a tables.get 404, a CreateWriteStream NOT_FOUND and an
        AppendRows NOT_FOUND (default stream with schema_file) alike."""
        d = self.daemon(dests=[("ins", deliver_to(self.emu, table="m_ins")),
                               ("get", write_to(self.emu, table="m_get")),
                               ("cws", write_to(self.emu, table="m_cws", delivery="exactly_once",
                                                schema_file=self.schema)),
                               ("app", write_to(self.emu, table="m_app", schema_file=self.schema))],
                        default_table=None)
        d.start()
        names = ("ins", "get", "cws", "app")
        for name in names:
            self.send(d, plain_rows(20), prefix="@%s " % name)
        for name in names:
            wait_for(lambda: self.delivery(d, name)["state"] == "parked", 30, f"{name} parked")
            st = self.delivery(d, name)
            self.assertIn("table proj.logs.m_%s not found" % name, st["why"])
            self.assertIn("create_table = yes", st["why"])
            self.assertEqual(self.queued(d, name), 20)
        self.assertEqual(d.status()["spool"]["dead_letters"], 0)
        for name in names:
            self.emu.create_table("proj.logs.m_" + name, SCHEMA)
        for name in names:
            wait_for(lambda: self.emu.count("proj.logs.m_" + name) == 20, 30, f"{name} rows")
            wait_for(lambda: self.queued(d, name) == 0, 30, f"the {name} queue to drain")
        self.assertEqual(d.status()["spool"]["dead_letters"], 0)
        self.assertEqual(d.stop(), 0)

    def test_create_table_on_storage_creates_then_delivers(self):
        d = self.daemon(dests=[("we", write_to(self.emu, table="c_we", delivery="exactly_once",
                                               create_table="yes", schema_file=self.schema)),
                               ("wa", write_to(self.emu, table="c_wa", create_table="yes",
                                               schema_file=self.schema))],
                        default_table=None)
        d.start()
        for name in ("we", "wa"):
            self.send(d, plain_rows(100), prefix="@%s " % name)
        for name in ("we", "wa"):
            wait_for(lambda: self.emu.count("proj.logs.c_" + name) == 100, 30, f"{name} rows")
            self.assertEqual(sorted(self.ids("proj.logs.c_" + name)), list(range(100)))
        log = d.read_log()
        self.assertIn("table proj.logs.c_we created", log)
        self.assertIn("table proj.logs.c_wa created", log)
        self.assertEqual(d.status()["spool"]["dead_letters"], 0)


class BoundTest(ParityBase):
    def test_bytes_in_flight_never_exceed_max_inflight_bytes_on_both_apis(self):
        """With slow answers and room for 8 requests of ~3.4 KB each per
        connection, at most max_inflight_bytes = 8K of rows are in flight per
        destination (two storage connections share it), and every row arrives."""
        bound = 8192
        self.emu.create_table("proj.logs.b_ins", SCHEMA)
        self.emu.create_table("proj.logs.b_wr", SCHEMA)
        self.emu.fault(latency_ms=150, path="write", for_s=60)
        self.emu.fault(latency_ms=150, path="insertAll", for_s=60)
        common = dict(batch_rows=20, max_inflight=8, max_inflight_bytes=bound, flush_interval="20ms")
        d = self.daemon(dests=[("ins", deliver_to(self.emu, table="b_ins", **common)),
                               ("wr", write_to(self.emu, table="b_wr", connections=2,
                                               delivery="exactly_once", **common))],
                        default_table=None)
        d.start()
        lines = plain_rows(400, pad=150)    # ~170 bytes a row, ~3.4 KB a batch
        self.send(d, lines, prefix="@ins ")
        self.send(d, lines, prefix="@wr ")
        seen = {"ins": 0, "wr": 0}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            for name in seen:
                st = self.delivery(d, name)
                seen[name] = max(seen[name], st["in_flight_bytes"])
                self.assertLessEqual(st["in_flight_bytes"], bound, name)
            if all(self.emu.count("proj.logs.b_" + n) >= 400 for n in seen):
                break
            time.sleep(0.05)
        for name in seen:
            self.assertEqual(sorted(self.ids("proj.logs.b_" + name)), list(range(400)), name)
            st = self.delivery(d, name)
            self.assertEqual(st["max_inflight_bytes"], bound)
            self.assertLessEqual(st["in_flight_bytes_peak"], bound, name)
            # the bound was what held it back: without it 8 x 3.4 KB would fly
            self.assertGreater(st["in_flight_bytes_peak"], bound // 2, name)
            self.assertGreater(seen[name], 0, name)
        wait_for(lambda: self.delivery(d, "wr")["in_flight_bytes"] == 0, 30, "nothing held")
        self.assertEqual(d.stop(), 0)


class ConnectionsTest(ParityBase):
    def setUp(self):
        super().setUp()
        self.emu.create_table("proj.logs.events", SCHEMA)

    def kill_run(self, d, kills, per_round=150):
        rng = random.Random(7)
        sent = 0
        for _ in range(kills):
            self.send(d, plain_rows(per_round, start=sent))
            sent += per_round
            time.sleep(rng.uniform(0.05, 0.3))   # the random point of the kill
            d.kill9()
            d.start()
        self.send(d, plain_rows(per_round, start=sent))
        sent += per_round
        wait_for(lambda: self.emu.count("proj.logs.events") >= sent, 90, f"{sent} rows",
                 interval=0.05)
        wait_for(lambda: d.status()["spool"]["records"] == 0, 60, "the queue to drain")
        return sent

    def test_four_connections_exactly_once_across_kill9(self):
        self.emu.fault(latency_ms=10, path="write", count=None)   # appends stay in flight
        d = self.daemon(dests=[("events", write_to(self.emu, table="events", connections=4,
                                                   delivery="exactly_once", batch_rows=30,
                                                   max_inflight=3))])
        d.start()
        sent = self.kill_run(d, kills=int(os.environ.get("CONN_KILLS", "5")))
        got = self.ids("proj.logs.events")
        self.assertEqual(sorted(got), list(range(sent)), "every acked row exactly once")
        rows = self.emu.rows("proj.logs.events")
        self.assertEqual(len({r["stream"] for r in rows}), 4, "one stream per connection")
        self.assertEqual(self.delivery(d, "events")["connections"], 4)
        self.assertEqual(d.status()["spool"]["dead_letters"], 0)
        self.assertEqual(d.stop(), 0)

    def test_four_connections_at_least_once_across_kill9(self):
        self.emu.fault(latency_ms=10, path="write", count=None)
        d = self.daemon(dests=[("events", write_to(self.emu, table="events", connections=4,
                                                   batch_rows=30, max_inflight=3))])
        d.start()
        sent = self.kill_run(d, kills=3)
        got = self.ids("proj.logs.events")
        self.assertEqual(sorted(set(got)), list(range(sent)), "every acked row at least once")
        self.assertEqual(d.status()["spool"]["dead_letters"], 0)
        self.assertEqual(d.stop(), 0)

    def test_changing_connections_settles_the_old_streams_exactly_once(self):
        """Killed mid-delivery with one connection, restarted with three: the
        old stream's appends of uncertain fate are settled before the new
        connections take its rows over, so nothing is written twice."""
        self.emu.fault(latency_ms=30, path="write", count=None)

        def conf(n):
            return [("events", write_to(self.emu, table="events", connections=n,
                                        delivery="exactly_once", batch_rows=25, max_inflight=4))]
        d = self.daemon(dests=conf(1))
        d.start()
        self.send(d, plain_rows(600))
        wait_for(lambda: self.emu.count("proj.logs.events") >= 100, 30, "delivery under way",
                 interval=0.02)
        d.kill9()
        d.dests = conf(3)
        d.write_config()
        d.start()
        self.send(d, plain_rows(100, start=600))
        wait_for(lambda: self.emu.count("proj.logs.events") >= 700, 60, "700 rows", interval=0.05)
        wait_for(lambda: d.status()["spool"]["records"] == 0, 30, "the queue to drain")
        self.assertEqual(sorted(self.ids("proj.logs.events")), list(range(700)))
        self.assertIn("settling 1 write stream(s)", d.read_log())
        streams = {r["stream"] for r in self.emu.rows("proj.logs.events")}
        self.assertEqual(len(streams), 4, "the old stream and three new ones")
        self.assertEqual(d.stop(), 0)
