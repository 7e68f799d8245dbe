"""Batch mode (`mode = batch`, issue 11 part 3): a backlog goes into a PENDING
write stream and becomes visible all at once with FinalizeWriteStream +
BatchCommitWriteStreams; the stream's phase is kept in the spool, so kill -9
at any point (appending, finalizing, committing, a commit whose answer was
lost) neither loses nor duplicates an acknowledged row."""
import json
import os
import subprocess
import time

from relaytest import (EVENTS_SCHEMA, Emulator, Producer, RELAYD, RelayTest, TOOLS, wait_for,
                       write_to)

TABLE = "proj.logs.events"


def rows(n, start=0):
    return [json.dumps({"i": start + k, "msg": "row %d" % (start + k)}) for k in range(n)]


class BatchBase(RelayTest):
    def setUp(self):
        self.emu = Emulator(self, grpc=True).start()
        self.emu.create_table(TABLE, EVENTS_SCHEMA)

    def batch_dest(self, **kw):
        kv = dict(mode="batch", batch_rows=50, batch_commit_rows=1000000,
                  batch_commit_interval="60s", batch_commit_idle=0)
        kv.update(kw)
        return [("events", write_to(self.emu, **kv))]

    def send(self, d, lines):
        p = Producer(d.sock)
        p.send_lines(lines)
        self.assertEqual(p.finish(), len(lines))
        self.assertEqual(p.errors, {})

    def delivery(self, d):
        return {x["name"]: x for x in d.status()["destinations"]}["events"]["delivery"]

    def batch(self, d):
        return self.delivery(d)["batch"]

    def ids(self):
        return sorted(r["json"]["i"] for r in self.emu.rows(TABLE))

    def dead_letters(self, d):
        r = subprocess.run([os.path.join(TOOLS, "dlq_dump"), d.spool], stdout=subprocess.PIPE,
                           check=True, timeout=60)
        return [json.loads(l) for l in r.stdout.splitlines()]

    def committed(self):
        return self.emu.stats()["write"]["counters"].get("streams_committed", 0)


class CommitTest(BatchBase):
    def test_rows_are_invisible_until_the_commit_then_all_visible_at_once(self):
        """Committed by rows: 1000 rows in one pending stream; none visible
        while it fills, all 1000 at once, from one stream, and the queue is
        empty only after the commit."""
        d = self.daemon(dests=self.batch_dest(batch_commit_rows=1000))
        d.start()
        self.send(d, rows(600))
        wait_for(lambda: self.batch(d)["rows"] == 600, 30, "600 rows appended to the pending stream",
                 interval=0.05)
        b = self.batch(d)
        self.assertEqual(b["state"], "appending")
        self.assertIn("/streams/", b["stream"])
        self.assertEqual(self.emu.count(TABLE), 0, "a pending stream's rows are invisible")
        self.assertEqual(d.status()["spool"]["records"], 600, "rows stay queued until the commit")
        st = self.delivery(d)
        self.assertEqual((st["mode"], st["delivery"]), ("batch", "exactly_once"))
        self.send(d, rows(400, start=600))
        seen = set()

        def visible():
            n = self.emu.count(TABLE)
            seen.add(n)
            return n >= 1000
        wait_for(visible, 30, "the batch committed", interval=0.02)
        self.assertEqual(seen - {0}, {1000}, "all rows appear at once")
        got = self.emu.rows(TABLE)
        self.assertEqual(sorted(r["json"]["i"] for r in got), list(range(1000)))
        self.assertEqual(len({r["stream"] for r in got}), 1)
        wait_for(lambda: d.status()["spool"]["records"] == 0, 10, "the queue to drain")
        b = self.batch(d)
        self.assertEqual((b["state"], b["commits"], b["rows_committed"]), ("idle", 1, 1000))
        self.assertGreaterEqual(b["last_commit_age_s"], 0)
        self.assertEqual(self.delivery(d)["delivered"], 1000)
        log = d.read_log()
        self.assertEqual(log.count("committed batch: 1000 row(s) in stream"), 1, log)
        human = d.relayctl("status").stdout.decode()
        self.assertIn("batch mode: idle, 1 commit(s) of 1000 row(s), last ", human)
        self.assertEqual(d.stop(), 0)

    def test_commit_by_interval_and_when_idle(self):
        """A trickle is committed when the stream is batch_commit_interval
        old; a destination whose queue went quiet commits after
        batch_commit_idle."""
        d = self.daemon(dests=self.batch_dest(batch_commit_interval="2s"))
        d.start()
        t0 = time.monotonic()
        self.send(d, rows(30))
        wait_for(lambda: self.batch(d)["rows"] == 30, 30, "30 rows appended", interval=0.05)
        self.send(d, rows(20, start=30))
        wait_for(lambda: self.emu.count(TABLE) >= 50, 30, "the interval commit", interval=0.05)
        self.assertGreater(time.monotonic() - t0, 1.5, "not before the interval")
        self.assertEqual(self.ids(), list(range(50)))
        self.assertEqual(self.committed(), 1)
        self.assertEqual(d.stop(), 0)
        # idle: the interval is long, the queue empty for batch_commit_idle
        d.dests = self.batch_dest(batch_commit_idle="300ms")
        d.write_config()
        d.start()
        self.send(d, rows(70, start=50))
        wait_for(lambda: self.emu.count(TABLE) >= 120, 30, "the idle commit", interval=0.05)
        self.assertEqual(self.ids(), list(range(120)))
        self.assertEqual(self.committed(), 2)
        wait_for(lambda: d.status()["spool"]["records"] == 0, 10, "the queue to drain")
        self.assertEqual(d.stop(), 0)

    def test_poison_rows_are_dead_lettered_and_the_rest_committed(self):
        """Rows BigQuery names in row_errors and rows that do not fit the
        schema go to the dead-letter store before the batch is cut; the rest
        of the batch is committed, each row once."""
        self.emu.fault(reject_pattern="POISON", path="write", message="poison row")
        d = self.daemon(dests=self.batch_dest(batch_commit_idle="300ms"))
        d.start()
        lines = rows(200)
        for k in (7, 77, 150):
            lines[k] = json.dumps({"i": k, "msg": "POISON %d" % k})
        lines[99] = json.dumps({"i": "not a number", "msg": "bad"})
        self.send(d, lines)
        want = [k for k in range(200) if k not in (7, 77, 99, 150)]
        wait_for(lambda: self.emu.count(TABLE) >= len(want), 30, "the batch", interval=0.05)
        wait_for(lambda: d.status()["spool"]["records"] == 0, 10, "the queue to drain")
        self.assertEqual(self.ids(), want)
        dead = self.dead_letters(d)
        self.assertEqual(len(dead), 4, dead)
        self.assertEqual({x.get("reason") for x in dead}, {"invalid"})
        self.assertEqual(self.committed(), 1)
        self.assertEqual(self.delivery(d)["dead_lettered"], 4)
        self.assertEqual(d.stop(), 0)


class ConfTest(BatchBase):
    def check(self, dest_kv):
        d = self.daemon(dests=[("events", dest_kv)])
        p = subprocess.run([RELAYD, "--check-config", "-c", d.conf], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=30)
        return p.returncode, p.stdout.decode()

    def test_config_errors_name_the_line_and_the_fix(self):
        base = write_to(self.emu, mode="batch")
        rc, out = self.check(base)
        self.assertEqual(rc, 0, out)
        insertall = dict(base)
        del insertall["api"]
        cases = [
            (insertall, "[destination events] mode: ", "set api = storage"),
            (dict(base, delivery="at_least_once"), "[destination events] delivery: ",
             "exactly once by construction"),
            (dict(base, table="ev_%Y%m%d"), "[destination events] table: ",
             "does not support time-sharded tables"),
            (dict(base, table_time_field="ts"), "[destination events] table_time_field: ",
             "time-sharded"),
            (dict(base, connections=2), "[destination events] connections: ",
             "one AppendRows connection"),
            (dict(base, mode="bulk"), "[destination events] mode: ", "expected stream or batch"),
            (dict(base, batch_commit_interval="5ms"), "batch_commit_interval: ", "out of range"),
        ]
        for kv, prefix, detail in cases:
            rc, out = self.check(kv)
            self.assertEqual(rc, 3, out)
            self.assertIn("relayd.conf:", out)
            self.assertIn(prefix, out)
            self.assertIn(detail, out)


class KillTest(BatchBase):
    def test_kill9_x30_across_append_finalize_and_commit_every_row_exactly_once(self):
        """30 kill -9: while appending, while finalizing, while committing,
        and after a commit whose answer was lost (the emulator commits and
        drops the connection). Every acknowledged row ends up in the table
        exactly once."""
        kills = int(os.environ.get("BATCH_KILLS", "30"))
        self.emu.fault(latency_ms=30, path="write", count=None)      # appends stay in flight
        self.emu.fault(latency_ms=300, path="write", count=None,
                       method=["FinalizeWriteStream", "BatchCommitWriteStreams"])
        d = self.daemon(dests=self.batch_dest(batch_rows=20, max_inflight=3, batch_commit_rows=150,
                                              batch_commit_idle="200ms"))
        d.start()
        sent, hits = 0, {"appending": 0, "finalizing": 0, "committing": 0, "lost_answer": 0}
        phases = ["appending", "finalizing", "committing", "lost_answer"]

        def state():
            try:
                return self.batch(d)
            except Exception:
                return None
        for k in range(kills):
            phase = phases[k % 4]
            self.send(d, rows(60, start=sent))
            sent += 60
            if phase == "lost_answer":
                before = self.committed()
                self.emu.fault(drop=1, after_commit=True, path="write",
                               method="BatchCommitWriteStreams")
                try:
                    wait_for(lambda: self.committed() > before, 15, "a commit", interval=0.01)
                    hits[phase] += 1
                except AssertionError:
                    pass
                self.emu.clear_faults()
                self.emu.fault(latency_ms=30, path="write", count=None)
                self.emu.fault(latency_ms=300, path="write", count=None,
                               method=["FinalizeWriteStream", "BatchCommitWriteStreams"])
            else:
                def in_phase():
                    b = state()
                    return b and b["state"] == phase and (phase != "appending" or b["rows"] > 0)
                try:
                    wait_for(in_phase, 15, phase, interval=0.005)
                    hits[phase] += 1
                except AssertionError:
                    pass
            d.kill9()
            d.start()
        self.emu.clear_faults()
        self.send(d, rows(60, start=sent))
        sent += 60
        wait_for(lambda: self.emu.count(TABLE) >= sent, 60, f"{sent} rows", interval=0.05)
        wait_for(lambda: d.status()["spool"]["records"] == 0, 30, "the queue to drain")
        self.assertEqual(self.ids(), list(range(sent)), "every acked row exactly once")
        self.assertEqual(d.status()["spool"]["dead_letters"], 0)
        print("kills by phase:", hits)
        for phase, n in hits.items():
            self.assertGreaterEqual(n, kills // 8, f"kills in phase {phase}: {hits}")
        log = d.read_log()
        self.assertIn("abandoning pending stream", log)
        self.assertIn("finishing the batch of pending stream", log)
        self.assertIn("already committed", log)
        self.assertEqual(d.stop(), 0)


class SwitchTest(BatchBase):
    def test_switching_modes_across_kill9_settles_the_old_mode_first(self):
        """Killed mid-delivery in exactly-once stream mode, restarted in batch
        mode: the committed stream's appends of uncertain fate are settled
        before the batch takes the rest. Killed with a batch finalized but not
        committed, restarted in stream mode: the batch is committed first.
        Every row once."""
        self.emu.fault(latency_ms=20, path="write", count=None)
        stream = [("events", write_to(self.emu, delivery="exactly_once", batch_rows=20,
                                      max_inflight=3))]
        d = self.daemon(dests=stream)
        d.start()
        self.send(d, rows(400))
        wait_for(lambda: self.emu.count(TABLE) >= 60, 30, "delivery under way", interval=0.01)
        d.kill9()
        d.dests = self.batch_dest(batch_commit_idle="200ms")
        d.write_config()
        d.start()
        self.send(d, rows(100, start=400))
        wait_for(lambda: self.emu.count(TABLE) >= 500, 30, "500 rows", interval=0.05)
        wait_for(lambda: d.status()["spool"]["records"] == 0, 30, "the queue to drain")
        self.assertEqual(self.ids(), list(range(500)))
        self.assertIn("settling 1 write stream(s)", d.read_log())
        # a batch cut and finalized, killed while committing (slow commits)
        self.emu.fault(latency_ms=1500, path="write", count=None, method="BatchCommitWriteStreams")
        self.send(d, rows(100, start=500))
        wait_for(lambda: self.batch(d)["state"] == "committing", 30, "a commit under way",
                 interval=0.01)
        d.kill9()
        self.emu.clear_faults()
        d.dests = stream
        d.write_config()
        d.start()
        self.send(d, rows(50, start=600))
        wait_for(lambda: self.emu.count(TABLE) >= 650, 30, "650 rows", interval=0.05)
        wait_for(lambda: d.status()["spool"]["records"] == 0, 30, "the queue to drain")
        self.assertEqual(self.ids(), list(range(650)))
        self.assertIn("the destination is in mode = stream now", d.read_log())
        self.assertEqual(self.delivery(d)["mode"], "stream")
        self.assertEqual(d.stop(), 0)


class FaultTest(BatchBase):
    def test_lost_answers_and_transient_errors_keep_the_stream(self):
        """Answers lost after the rows were appended, a dropped connection,
        UNAVAILABLE and an in-stream INTERNAL while appending: the same chunks
        go again at the same offsets (ALREADY_EXISTS = written), the batch
        stays one stream and every row is committed once."""
        self.emu.fault(latency_ms=20, path="write", count=None)
        self.emu.fault(drop=1, after_commit=True, path="write", after=3)
        self.emu.fault(grpc="UNAVAILABLE", path="write", after=6)
        self.emu.fault(grpc="INTERNAL", in_stream=True, path="write", after=9)
        self.emu.fault(drop=1, path="write", after=12)
        d = self.daemon(dests=self.batch_dest(batch_rows=20, max_inflight=3, batch_commit_rows=600))
        d.start()
        self.send(d, rows(600))
        wait_for(lambda: self.emu.count(TABLE) >= 600, 60, "the batch", interval=0.05)
        wait_for(lambda: d.status()["spool"]["records"] == 0, 10, "the queue to drain")
        got = self.emu.rows(TABLE)
        self.assertEqual(sorted(r["json"]["i"] for r in got), list(range(600)))
        self.assertEqual(len({r["stream"] for r in got}), 1, "no stream abandoned")
        self.assertEqual(self.committed(), 1)
        st = self.emu.stats()["write"]
        self.assertGreaterEqual(st["append_requests"].get("ALREADY_EXISTS", 0), 1, st["append_requests"])
        self.assertNotIn("abandoning", d.read_log())
        self.assertEqual(d.stop(), 0)

    def test_a_graceful_stop_commits_the_open_batch(self):
        d = self.daemon(dests=self.batch_dest())
        d.start()
        self.send(d, rows(100))
        wait_for(lambda: self.batch(d)["rows"] == 100, 30, "100 rows appended", interval=0.05)
        self.assertEqual(self.emu.count(TABLE), 0)
        self.assertEqual(d.stop(), 0)
        self.assertEqual(self.ids(), list(range(100)))
        self.assertIn("stopping: committing the open batch (100 row(s)) first", d.read_log())
        d.start()
        wait_for(lambda: self.batch(d)["state"] == "idle", 10, "nothing left to do")
        self.assertEqual(d.status()["spool"]["records"], 0)
        self.assertEqual(self.committed(), 1)
        self.assertEqual(d.stop(), 0)
