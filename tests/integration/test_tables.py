"""Routing and table management: time-sharded tables created on first use,
partition decorators, and a creation race between two relayd instances."""
import json
import os

from relaytest import EVENTS_SCHEMA, Emulator, Producer, RelayTest, deliver_to, wait_for

SCHEMA = EVENTS_SCHEMA + [{"name": "ts", "type": "TIMESTAMP"}]
DAYS = ("2026-11-20", "2026-11-21", "2026-11-22")


class TablesTest(RelayTest):
    def setUp(self):
        self.emu = Emulator(self).start()
        self.schema = os.path.join(self.emu.dir, "schema.json")
        with open(self.schema, "w") as f:
            json.dump({"fields": SCHEMA}, f)

    def sharded(self, **extra):
        return deliver_to(self.emu, table="ev_%Y%m%d", table_time_field="ts", create_table="yes",
                          schema_file=self.schema, time_partitioning="DAY", partition_field="ts",
                          clustering="p", **extra)

    def send(self, d, lines):
        p = Producer(d.sock)
        p.send_lines(lines)
        self.assertEqual(p.finish(), len(lines))
        self.assertEqual(p.errors, {})

    def rows_for(self, start, per_day=100, p=0):
        return [json.dumps({"i": start + k, "p": p, "ts": "%sT%02d:00:00Z" % (DAYS[k % 3], k % 24)})
                for k in range(per_day * 3)]

    def test_time_sharded_tables_are_created_on_first_use(self):
        d = self.daemon(dests=[("events", self.sharded())])
        d.start()
        self.send(d, self.rows_for(0) + [json.dumps({"i": 999, "ts": "not a time"})])
        for day in DAYS:
            t = "proj.logs.ev_" + day.replace("-", "")
            wait_for(lambda: self.emu.count(t) == 100, 60, f"100 rows in {t}")
            got = self.emu.rows(t)
            self.assertTrue(all(r["json"]["ts"].startswith(day) for r in got))
        wait_for(lambda: d.status()["spool"]["records"] == 0, 30, "the queue to drain")
        st = d.status()
        self.assertEqual(st["spool"]["dead_letters"], 1, "the row without a time is dead-lettered")
        self.assertIn("created", d.read_log())

    def test_a_hanging_tables_insert_holds_back_only_its_own_destination(self):
        """create_table's tables.insert runs on the multi handle like an insertAll:
        while it hangs (8 s), another destination's rows are delivered, and the
        creation is provably still outstanding when they all are."""
        self.emu.create_table("proj.logs.events", EVENTS_SCHEMA)
        self.emu.fault(latency_ms=8000, path="tables", count=1)
        d = self.daemon(dests=[("sharded", self.sharded()),
                               ("events", deliver_to(self.emu, table="events"))], default_table=None)
        d.start()

        def dest(name):
            return {x["name"]: x for x in d.status()["destinations"]}[name]["delivery"]
        self.send(d, ["@sharded"] + self.rows_for(0, per_day=5))
        wait_for(lambda: "creating it" in dest("sharded")["why"], 30, "the table creation to start")
        self.send(d, ["@events"] + [json.dumps({"i": k}) for k in range(50)])
        wait_for(lambda: self.emu.count("proj.logs.events") == 50, 30, "the other destination's rows")
        st = dest("sharded")
        self.assertIn("creating it", st["why"])        # tables.insert still hanging
        self.assertEqual(st["in_flight"], 1)
        self.assertEqual(st["delivered"], 0)
        # then the creation completes and the sharded rows follow
        for day in DAYS:
            t = "proj.logs.ev_" + day.replace("-", "")
            wait_for(lambda: self.emu.count(t) == 5, 60, f"5 rows in {t}")
        self.assertIn("event=recovered", d.read_log())

    def test_partition_decorator(self):
        self.emu.create_table("proj.logs.part", SCHEMA)
        d = self.daemon(dests=[("events", deliver_to(self.emu, table="part$%Y%m%d",
                                                      table_time_field="ts"))])
        d.start()
        self.send(d, self.rows_for(0, per_day=10))
        wait_for(lambda: self.emu.count("proj.logs.part") == 30, 60, "30 rows in part")
        self.assertEqual(d.status()["spool"]["dead_letters"], 0)

    def test_two_relayd_racing_to_create_the_same_tables_lose_nothing(self):
        a = self.daemon(dests=[("events", self.sharded())])
        b = self.daemon(dests=[("events", self.sharded())])
        a.start()
        b.start()
        pa, pb = Producer(a.sock), Producer(b.sock)
        pa.send_lines(self.rows_for(0, p=1))
        pb.send_lines(self.rows_for(10000, p=2))
        self.assertEqual(pa.finish(), 300)
        self.assertEqual(pb.finish(), 300)
        for day in DAYS:
            t = "proj.logs.ev_" + day.replace("-", "")
            wait_for(lambda: self.emu.count(t) == 200, 60, f"200 rows in {t}")
        for d in (a, b):
            wait_for(lambda: d.status()["spool"]["records"] == 0, 30, "the queues to drain")
            self.assertEqual(d.status()["spool"]["dead_letters"], 0)
        log = a.read_log() + b.read_log()
        self.assertIn("created", log)


class ReloadTest(RelayTest):
    def test_sighup_adds_destinations_and_swaps_credentials_without_dropping_producers(self):
        import signal
        import subprocess
        from relaytest import BQEMU, PY
        emu = Emulator(self).start()
        emu.create_table("proj.logs.events", EVENTS_SCHEMA)
        emu.create_table("proj.logs.more", EVENTS_SCHEMA)
        d = self.daemon(dests=[("events", deliver_to(emu))])
        d.start()
        p = Producer(d.sock)                       # stays connected across the reload
        p.send_lines([json.dumps({"i": i}) for i in range(100)])
        p.wait_ack(100)
        wait_for(lambda: emu.count("proj.logs.events") == 100, 30, "the first rows")
        key2 = os.path.join(emu.dir, "key2.json")
        subprocess.run([PY, BQEMU, "gen-key", "--dir", emu.data, "--out", key2, "--token-uri",
                        emu.token_uri, "--email", "second@emu-project.iam.gserviceaccount.com"],
                       check=True, stdout=subprocess.DEVNULL)
        os.chmod(key2, 0o600)
        d.dests = [("events", deliver_to(emu, credentials=key2)),
                   ("more", deliver_to(emu, table="more"))]
        d.write_config()
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload: delivery to" in d.read_log(), 10, "the sender's reload")
        self.assertIn("second@emu-project", d.read_log())
        p.send_lines([json.dumps({"i": 100 + i}) for i in range(100)] +
                     ["@more " + json.dumps({"i": 500 + i}) for i in range(50)])
        self.assertEqual(p.finish(), 250)          # the same connection, every line acked
        wait_for(lambda: emu.count("proj.logs.events") == 200, 30, "rows after the reload")
        wait_for(lambda: emu.count("proj.logs.more") == 50, 30, "rows of the new destination")
        self.assertEqual(d.status()["spool"]["dead_letters"], 0)
        self.assertEqual(d.stop(), 0)
