"""Dead letters: inspect, export, replay (also after kill -9), purge; spool check and compact."""
import gzip
import json
import os
import random
import re
import resource
import signal
import subprocess
import time

from relaytest import (EVENTS_SCHEMA, RELAYCTL, ROOT, TOOLS, Emulator, Producer, RelayTest,
                       deliver_to, wait_for)

RELEASE_RELAYCTL = os.path.join(ROOT, "build", "relayctl")

TABLE = "proj.logs.events"
WITH_EXTRA = EVENTS_SCHEMA + [{"name": "extra", "type": "STRING"}]


class DlqBase(RelayTest):
    def setUp(self):
        self.emu = Emulator(self).start()
        self.emu.create_table(TABLE, EVENTS_SCHEMA)       # no column "extra" yet

    def relay(self):
        d = self.daemon(dests=[("events", deliver_to(self.emu)),
                               ("other", deliver_to(self.emu, table="events"))])
        d.start()
        return d

    def send(self, d, lines):
        p = Producer(d.sock)
        p.send_lines(lines)
        self.assertEqual(p.finish(), len(lines))
        self.assertEqual(p.errors, {})

    def ctl(self, d, *args, input=None, ok=(0,)):
        r = subprocess.run([RELAYCTL, "-c", d.conf, *args], input=input, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=300)
        if ok is not None:
            self.assertIn(r.returncode, ok, f"relayctl {' '.join(args)}: {r.stderr.decode()}")
        return r

    def dlq(self, d, *filters):
        out = self.ctl(d, "dlq", "list", "--json", *filters).stdout
        return [json.loads(l) for l in out.splitlines()]

    def make_dead_letters(self, d, n_bad, n_good=0, table="events"):
        lines = [json.dumps({"i": i, "extra": "x%d" % i}) for i in range(n_bad)]
        lines += [json.dumps({"i": 100000 + i}) for i in range(n_good)]
        before = d.status()["spool"]["dead_letters"]
        self.send(d, ["@%s %s" % (table, l) for l in lines])
        wait_for(lambda: d.status()["spool"]["dead_letters"] >= before + n_bad, 60,
                 f"{n_bad} more dead letters")

    def spool_rows(self, d):
        return [r["row"] for r in d.dump()]


class DlqStoryTest(DlqBase):
    def test_schema_fix_then_replay_delivers_every_row_once(self):
        d = self.relay()
        self.make_dead_letters(d, 200, n_good=100)
        wait_for(lambda: self.emu.count(TABLE) == 100, 30, "the good rows")
        entries = self.dlq(d)
        self.assertEqual(len(entries), 200)
        self.assertEqual({e["reason"] for e in entries}, {"invalid"})
        self.assertTrue(all("extra" in e["detail"] for e in entries))
        self.emu.create_table(TABLE, WITH_EXTRA)        # the fix
        r = self.ctl(d, "dlq", "replay")
        self.assertIn("replayed 200", r.stdout.decode())
        wait_for(lambda: self.emu.count(TABLE) == 300, 60, "every row delivered")
        self.assertEqual(self.dlq(d), [])
        got = sorted(r["json"]["i"] for r in self.emu.rows(TABLE))
        self.assertEqual(got, list(range(200)) + [100000 + i for i in range(100)])
        r = self.ctl(d, "dlq", "replay")                 # twice: nothing twice
        self.assertIn("replayed 0", r.stdout.decode())
        self.assertEqual(self.emu.count(TABLE), 300)

    def test_filters_and_dry_run_select_exactly_what_they_say(self):
        d = self.relay()
        self.make_dead_letters(d, 30, table="events")
        t_mid = time.time()
        wait_for(lambda: time.time() > t_mid + 1.1, 5, "a second to pass")
        self.make_dead_letters(d, 50, table="other")
        allentries = self.dlq(d)
        self.assertEqual(len(allentries), 80)
        self.assertEqual(len(self.dlq(d, "--table", "events")), 30)
        self.assertEqual(len(self.dlq(d, "--table", "other")), 50)
        self.assertEqual(len(self.dlq(d, "--reason", "invalid")), 80)
        self.assertEqual(len(self.dlq(d, "--reason", "corrupt")), 0)
        self.assertEqual(len(self.dlq(d, "--limit", "7")), 7)
        grep = self.dlq(d, "--grep", '"x1[0-9]"')
        self.assertEqual(sorted(e["row"]["i"] for e in grep), sorted(list(range(10, 20)) * 2))
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t_mid + 1))
        self.assertEqual(len(self.dlq(d, "--since", since)), 50)
        self.assertEqual(len(self.dlq(d, "--until", since)), 30)
        r = self.ctl(d, "--json", "dlq", "replay", "--table", "other", "--dry-run")
        self.assertEqual(json.loads(r.stdout)["would_replay"], 50)
        self.assertEqual(len(self.dlq(d)), 80, "--dry-run changes nothing")
        st = json.loads(self.ctl(d, "--json", "dlq", "stats").stdout)
        self.assertEqual(st["entries"], 80)
        self.assertEqual(st["by_table"]["events"]["entries"], 30)
        self.assertEqual(st["by_reason"]["invalid"]["entries"], 80)
        self.assertGreater(st["bytes"], 80 * 20)
        show = self.ctl(d, "dlq", "show", str(allentries[0]["id"])).stdout.decode()
        self.assertIn("reason         invalid", show)
        self.assertIn('"extra"', show)
        self.assertEqual(self.ctl(d, "dlq", "show", "999999999", ok=(1,)).returncode, 1)

    def test_export_and_replay_file_with_edited_rows(self):
        d = self.relay()
        self.make_dead_letters(d, 40)
        exp = os.path.join(d.dir, "dead.ndjson.gz")
        self.ctl(d, "dlq", "export", "--with-meta", "--gzip", "-o", exp)
        with gzip.open(exp, "rt") as f:
            entries = [json.loads(l) for l in f]
        self.assertEqual(len(entries), 40)
        rows_only = self.ctl(d, "dlq", "export", "--limit", "3").stdout.splitlines()
        self.assertEqual([json.loads(l) for l in rows_only], [e["row"] for e in entries[:3]])
        # the user fixes the rows: moves "extra" into "msg"
        fixed = os.path.join(d.dir, "fixed.ndjson")
        with open(fixed, "w") as f:
            for e in entries[:30]:
                e["row"]["msg"] = e["row"].pop("extra")
                f.write(json.dumps(e) + "\n")
            f.write("this line is not json\n")
        r = self.ctl(d, "dlq", "replay", "--file", fixed, ok=(1,))
        self.assertIn("replayed 30 fixed rows", r.stdout.decode())
        self.assertIn("fixed.ndjson:31:", r.stderr.decode())
        wait_for(lambda: self.emu.count(TABLE) == 30, 60, "the fixed rows")
        got = sorted((r["json"]["i"], r["json"]["msg"]) for r in self.emu.rows(TABLE))
        self.assertEqual(got, [(i, "x%d" % i) for i in range(30)])
        self.assertEqual(sorted(e["row"]["i"] for e in self.dlq(d)), list(range(30, 40)))
        r = self.ctl(d, "dlq", "replay", "--file", fixed, ok=(1,))   # again: nothing twice
        self.assertIn("replayed 0 fixed rows", r.stdout.decode())
        self.assertIn("not in the store", r.stderr.decode())
        self.assertEqual(self.emu.count(TABLE), 30)

    def test_purge_asks_and_deletes_what_the_filters_select(self):
        d = self.relay()
        self.make_dead_letters(d, 20, table="events")
        self.make_dead_letters(d, 20, table="other")
        r = self.ctl(d, "dlq", "purge", "--table", "other", ok=(2,))
        self.assertIn("without --yes", r.stderr.decode())
        self.assertEqual(len(self.dlq(d)), 40)
        r = self.ctl(d, "dlq", "purge", "--table", "other", "--yes")
        self.assertIn("purged 20", r.stdout.decode())
        self.assertEqual({e["table"] for e in self.dlq(d)}, {"events"})
        r = self.ctl(d, "dlq", "purge", "--older-than", "1d", "--yes")
        self.assertIn("nothing to purge", r.stdout.decode())
        self.assertEqual(len(self.dlq(d)), 20)


class ReplayCrashTest(DlqBase):
    def test_kill9_of_replay_leaves_every_entry_in_exactly_one_place(self):
        kills = int(os.environ.get("REPLAY_KILLS", "30"))
        n = 3000
        d = self.relay()
        self.make_dead_letters(d, n)
        self.assertEqual(d.stop(), 0)                    # relayd stopped: DLQ and queue only
        rng = random.Random()
        dlq_dump = os.path.join(TOOLS, "dlq_dump")
        for k in range(kills):
            p = subprocess.Popen([RELAYCTL, "-c", d.conf, "dlq", "replay", "--rate", "600/s"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.02, 0.3))           # the random point of the kill
            p.send_signal(signal.SIGKILL)
            p.wait()
            dead = [json.loads(json.loads(l)["row"])["i"] for l in
                    subprocess.run([dlq_dump, d.spool], stdout=subprocess.PIPE,
                                   check=True).stdout.splitlines()]
            queued = [r["i"] for r in self.spool_rows(d)]
            self.assertEqual(len(set(dead) & set(queued)), 0, f"in both places after kill {k + 1}")
            self.assertEqual(sorted(dead + queued), list(range(n)),
                             f"lost or doubled after kill {k + 1}")
        self.emu.create_table(TABLE, WITH_EXTRA)
        d.start()
        r = self.ctl(d, "dlq", "replay")                 # completes the job
        wait_for(lambda: self.emu.count(TABLE) == n, 120, "every row delivered")
        wait_for(lambda: d.status()["spool"]["records"] == 0, 60, "the queue to drain")
        got = sorted(r["json"]["i"] for r in self.emu.rows(TABLE))
        self.assertEqual(got, list(range(n)), "no duplicates at the emulator")


class SpoolMaintenanceTest(DlqBase):
    def test_check_reports_and_repair_quarantines_then_relayd_delivers_the_rest(self):
        d = self.daemon(dests=[("events", deliver_to(self.emu, endpoint="https://127.0.0.1:1"))])
        d.start()
        self.send(d, [json.dumps({"i": i}) for i in range(200)])
        self.assertEqual(d.stop(), 0)
        seqs = {r["row"]["i"]: r["seq"] for r in d.dump()}
        tool = os.path.join(TOOLS, "spool_corrupt")
        subprocess.run([tool, d.spool, "1", str(seqs[5]), "flip"], check=True)
        subprocess.run([tool, d.spool, "1", str(seqs[150]), "truncate"], check=True)
        r = self.ctl(d, "--json", "spool", "check", ok=(1,))
        rep = json.loads(r.stdout)
        self.assertEqual((rep["records"], rep["corrupt"], rep["quarantined"]), (200, 2, 0))
        self.assertIn("checksum mismatch", r.stderr.decode())
        r = self.ctl(d, "--json", "spool", "check", "--repair")
        self.assertEqual(json.loads(r.stdout)["quarantined"], 2)
        r = self.ctl(d, "--json", "spool", "check")
        self.assertEqual(json.loads(r.stdout)["corrupt"], 0)
        self.assertEqual({e["reason"] for e in self.dlq(d)}, {"corrupt"})
        d.dests = [("events", deliver_to(self.emu))]
        d.write_config()
        d.start()
        wait_for(lambda: self.emu.count(TABLE) == 198, 60, "the sound rows")
        got = sorted(r["json"]["i"] for r in self.emu.rows(TABLE))
        self.assertEqual(got, [i for i in range(200) if i not in (5, 150)])

    def test_a_chunk_with_a_damaged_directory_is_quarantined_whole(self):
        """Rows one commit added to a table share a chunk; when the chunk's
        directory is damaged its rows cannot be told apart, so check reports
        one corrupt record, repair moves the raw chunk to the dead-letter
        store under its first seq, and every other row is delivered."""
        d = self.daemon(dests=[("events", deliver_to(self.emu, endpoint="https://127.0.0.1:1"))])
        d.start()
        self.send(d, [json.dumps({"i": i}) for i in range(300)])
        self.assertEqual(d.stop(), 0)
        seqs = {r["row"]["i"]: r["seq"] for r in d.dump()}
        tool = os.path.join(TOOLS, "spool_corrupt")
        # a row in a chunk (a commit of one row is a plain record: the tool refuses it)
        hit = next((i for i in range(150, 300)
                    if subprocess.run([tool, d.spool, "1", str(seqs[i]), "directory"],
                                      stderr=subprocess.DEVNULL).returncode == 0), None)
        self.assertIsNotNone(hit, "no row of 150..299 is in a chunk")
        r = self.ctl(d, "--json", "spool", "check", ok=(1,))
        rep = json.loads(r.stdout)
        self.assertEqual(rep["corrupt"], 1)
        self.assertIn("chunk directory checksum mismatch", r.stderr.decode())
        in_chunk = 300 - rep["records"] + 1          # the chunk counts as one record
        self.assertGreater(in_chunk, 1)
        r = self.ctl(d, "--json", "spool", "check", "--repair")
        self.assertEqual(json.loads(r.stdout)["quarantined"], 1)
        (e,) = self.dlq(d)
        self.assertEqual(e["reason"], "corrupt")
        chunk = sorted((i for i in range(300) if seqs[i] >= e["id"]), key=seqs.get)[:in_chunk]
        self.assertIn(hit, chunk)
        d.dests = [("events", deliver_to(self.emu))]
        d.write_config()
        d.start()
        wait_for(lambda: self.emu.count(TABLE) == 300 - in_chunk, 60, "the other rows")
        wait_for(lambda: d.status()["spool"]["records"] == 0, 30, "the queue to empty")
        got = sorted(r["json"]["i"] for r in self.emu.rows(TABLE))
        self.assertEqual(got, [i for i in range(300) if i not in chunk])

    def test_compact_shrinks_the_file_and_refuses_while_relayd_runs(self):
        d = self.daemon(dests=["events"])
        d.start()
        self.send(d, [json.dumps({"i": i, "pad": "p" * 500}) for i in range(20000)])
        r = self.ctl(d, "spool", "compact", ok=(4,))
        self.assertIn("stop it first", r.stderr.decode())
        self.assertEqual(d.stop(), 0)
        r = subprocess.run([os.path.join(TOOLS, "spool_drain"), d.spool, "events", "19000"],
                           check=True, stdout=subprocess.PIPE)
        before = os.path.getsize(os.path.join(d.spool, "data.mdb"))
        r = self.ctl(d, "--json", "spool", "compact")
        rep = json.loads(r.stdout)
        after = os.path.getsize(os.path.join(d.spool, "data.mdb"))
        self.assertEqual(rep["before_bytes"], before)
        self.assertEqual(rep["after_bytes"], after)
        self.assertLess(after, before / 4)
        d.start()                                        # the compacted spool is whole
        self.assertEqual([r["row"]["i"] for r in d.dump()], list(range(19000, 20000)))


class BigDlqTest(DlqBase):
    def test_a_million_dead_letters_list_stats_export_with_bounded_memory(self):
        n = int(os.environ.get("BIG_DLQ", "1000000"))
        d = self.daemon(dests=["events"])
        subprocess.run([os.path.join(TOOLS, "dlq_fill"), d.spool, "events", str(n)], check=True)
        figures, rss = {}, {}
        for name, args in (("list --limit 20", ["dlq", "list", "--limit", "20"]),
                           ("stats", ["--json", "dlq", "stats"]),
                           ("export", ["dlq", "export", "-o", os.path.join(d.dir, "x.ndjson")]),
                           ("export --with-meta --gzip",
                            ["dlq", "export", "--with-meta", "--gzip", "-o", os.path.join(d.dir, "x.gz")])):
            t0 = time.monotonic()
            # the release build: ASan's quarantine alone would hold hundreds of MiB
            p = subprocess.Popen([RELEASE_RELAYCTL, "-c", d.conf, *args], stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL)
            out = p.stdout.read()                      # small: exports go to files
            _, status, usage = os.wait4(p.pid, 0)      # relayctl's own peak RSS
            p.returncode = os.waitstatus_to_exitcode(status)
            figures[name] = time.monotonic() - t0
            self.assertEqual(p.returncode, 0, name)
            rss[name] = usage.ru_maxrss
            if name == "stats":
                self.assertEqual(json.loads(out)["entries"], n)
        with open(os.path.join(d.dir, "x.ndjson"), "rb") as f:
            self.assertEqual(sum(1 for _ in f), n)
        print("\n  %d dead letters: " % n + ", ".join(f"{k} {v:.2f} s (peak RSS {rss[k] // 1024} MiB)"
                                                   for k, v in figures.items()))
        for k, v in rss.items():
            self.assertLess(v, 64 * 1024, f"relayctl {k}: memory must not grow with the store")



class RetentionTest(DlqBase):
    def test_full_dead_letter_store_parks_and_drops_nothing(self):
        d = self.daemon(dests=[("events", deliver_to(self.emu, max_inflight=1, batch_rows=10))],
                        spool__dlq_max_bytes="4K")
        d.start()
        lines = [json.dumps({"i": i, "extra": "x"}) for i in range(100)]
        self.send(d, lines)

        def where():
            st = d.status()
            ev = [x for x in st["destinations"] if x["name"] == "events"][0]
            return st["spool"]["dead_letters"], ev["records"], ev["delivery"]

        wait_for(lambda: where()[2]["state"] == "parked", 60, "the destination to park")
        dead, queued, dl = where()
        self.assertIn("dead-letter store is full", dl["why"])
        self.assertGreater(dead, 0)
        self.assertGreater(queued, 0)
        self.assertEqual(dead + queued, 100, "every rejected row is dead-lettered or still queued")
        self.assertIn("dead-letter store is full", d.read_log())
        # room again: the held rows come back after park_wait and are dead-lettered in turn
        self.ctl(d, "dlq", "purge", "--yes")
        wait_for(lambda: where()[0] > 0 and sum(where()[:2]) <= 100, 30, "dead-lettering to resume")
        dead2, queued2, _ = where()
        self.assertLess(queued2, queued)

    def test_dlq_max_age_deletes_old_dead_letters(self):
        d = self.daemon(dests=[("events", deliver_to(self.emu))], spool__dlq_max_age="2s")
        d.start()
        self.send(d, [json.dumps({"i": i, "extra": "x"}) for i in range(10)])
        wait_for(lambda: d.status()["spool"]["dead_letters"] == 10, 30, "10 dead letters")
        wait_for(lambda: d.status()["spool"]["dead_letters"] == 0, 30, "dlq_max_age to apply")
        self.assertIn("older than dlq_max_age", d.read_log())
