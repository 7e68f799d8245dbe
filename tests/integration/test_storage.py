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
              f"{self.emu.stats().get('write', {}).get('rows', {}).get('deduplicated', '?')} rows found already written (ALREADY_EXISTS)")
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


MATRIX_SCHEMA = [
    {"name": "id", "type": "INTEGER", "mode": "REQUIRED"},
    {"name": "i64", "type": "INT64"},
    {"name": "f64", "type": "FLOAT64"},
    {"name": "num", "type": "NUMERIC"},
    {"name": "bignum", "type": "BIGNUMERIC"},
    {"name": "b", "type": "BOOL"},
    {"name": "s", "type": "STRING"},
    {"name": "by", "type": "BYTES"},
    {"name": "d", "type": "DATE"},
    {"name": "dt", "type": "DATETIME"},
    {"name": "t", "type": "TIME"},
    {"name": "ts", "type": "TIMESTAMP"},
    {"name": "geo", "type": "GEOGRAPHY"},
    {"name": "js", "type": "JSON"},
    {"name": "rec", "type": "RECORD", "fields": [
        {"name": "a", "type": "INT64"},
        {"name": "inner", "type": "RECORD", "mode": "REPEATED", "fields": [
            {"name": "x", "type": "STRING"}, {"name": "y", "type": "FLOAT64"}]}]},
    {"name": "tags", "type": "STRING", "mode": "REPEATED"},
    {"name": "rng", "type": "RANGE", "rangeElementType": {"type": "DATE"}},
]

MATRIX_ROWS = [
    {"id": 1, "i64": "9223372036854775807", "f64": 1.5, "num": "12345678901234567890123456789.123456789",
     "bignum": "1234567890123456789012345678901234567.12345678901234567890123456789012345678",
     "b": True, "s": "héllo wörld ✓ 𝄞", "by": "aGVsbG8=", "d": "1969-12-31",
     "dt": "2024-02-29 23:59:59.999999", "t": "00:00:00", "ts": "2024-02-29T12:34:56.789Z",
     "geo": "POINT(1 2)", "js": "{\"k\":[1,2]}", "rec": {"a": -1, "inner": [{"x": "p", "y": 0.25}]},
     "tags": ["a", "b"], "rng": "[2024-01-01, 2024-12-31)"},
    {"id": 2, "i64": "-9223372036854775808", "f64": "NaN", "num": "-0.000000001",
     "bignum": "-1", "b": False, "s": "", "by": "", "d": "0001-01-01", "dt": "9999-12-31T23:59:59",
     "t": "23:59:59.999999", "ts": 0, "js": "null", "rec": {"inner": []}, "tags": []},
    {"id": 3, "i64": 0, "f64": "-Infinity", "num": 0, "d": "2000-02-29", "ts": 1700000000.5,
     "t": "12:00:00.5", "rec": None, "s": None, "rng": "[UNBOUNDED, 2020-01-01)"},
    {"id": 4, "f64": "Infinity", "ts": "2024-01-01 00:00:00 UTC", "d": "1970-01-01"},
    {"id": 5},
]


def _ts_micros(v):
    """A TIMESTAMP value (RFC 3339 / 'YYYY-MM-DD HH:MM:SS[.f] UTC' string or epoch
    seconds) as microseconds since the epoch."""
    import datetime
    from decimal import Decimal
    if isinstance(v, (int, float)):
        return int(Decimal(str(v)) * 1000000)
    s = v.strip().replace(" UTC", "Z").replace(" ", "T")
    if s.endswith("Z"):
        s = s[:-1] + "+00:00"
    dt = datetime.datetime.fromisoformat(s)
    epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
    delta = dt - epoch
    return delta.days * 86400000000 + delta.seconds * 1000000 + delta.microseconds


def canonical(fields, row):
    """The BigQuery value of a row, whatever JSON spelling carried it."""
    from decimal import Decimal
    import base64
    import math
    out = {}
    for f in fields:
        name, typ, mode = f["name"], f["type"], f.get("mode", "NULLABLE")
        if name not in row or row[name] is None:
            continue
        v = row[name]

        def one(x):
            if typ in ("INTEGER", "INT64"):
                return int(x)
            if typ in ("FLOAT", "FLOAT64"):
                x = float(x)
                return "NaN" if math.isnan(x) else x
            if typ in ("NUMERIC", "BIGNUMERIC"):
                return Decimal(str(x)).normalize()
            if typ == "BYTES":
                return base64.b64decode(x)
            if typ == "DATETIME":
                d, _, t = x.replace(" ", "T").partition("T")
                return d + "T" + (t if "." not in t else t.rstrip("0").rstrip("."))
            if typ == "TIME":
                return x if "." not in x else x.rstrip("0").rstrip(".")
            if typ == "TIMESTAMP":
                return _ts_micros(x)
            if typ == "RANGE":
                return x.replace(" ", "") if isinstance(x, str) else x
            if typ in ("RECORD", "STRUCT"):
                return canonical(f["fields"], x)
            return x
        if mode == "REPEATED":
            if v:
                out[name] = [one(x) for x in v]
        else:
            c = one(v)
            if c != {} or typ not in ("RECORD", "STRUCT"):
                out[name] = c
    return out


class TypeMatrixTest(StorageBase):
    def test_every_type_round_trips_the_same_as_insert_all(self):
        self.emu.create_table("proj.logs.m_ins", MATRIX_SCHEMA)
        self.emu.create_table("proj.logs.m_wr", MATRIX_SCHEMA)
        d = self.daemon(dests=[("ins", deliver_to(self.emu, table="m_ins")),
                               ("wr", write_to(self.emu, table="m_wr", delivery="exactly_once"))],
                        default_table=None)
        d.start()
        lines = [json.dumps(r) for r in MATRIX_ROWS]
        self.send(d, lines, prefix="@ins ")
        self.send(d, lines, prefix="@wr ")
        self.arrived("proj.logs.m_ins", len(lines))
        self.arrived("proj.logs.m_wr", len(lines))
        ins = {r["json"]["id"]: canonical(MATRIX_SCHEMA, r["json"])
               for r in self.emu.rows("proj.logs.m_ins")}
        wr = {r["json"]["id"]: canonical(MATRIX_SCHEMA, r["json"])
              for r in self.emu.rows("proj.logs.m_wr")}
        self.assertEqual(sorted(wr), [1, 2, 3, 4, 5])
        self.assertEqual(self.dead_letters(d), [])
        for k in sorted(ins):
            self.maxDiff = None
            self.assertEqual(wr[k], ins[k], f"row {k}: Storage Write and insertAll disagree")
