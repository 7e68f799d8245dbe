"""Delivery to BigQuery over insertAll, against the local emulator over real TLS."""
import json
import os
import subprocess
import time

from relaytest import (EVENTS_SCHEMA, Emulator, Producer, RelayTest, TOOLS, deliver_to,
                       wait_for)

TABLE = "proj.logs.events"


def rows(n, start=0, **extra):
    return [json.dumps(dict({"i": start + k, "msg": "row %d" % (start + k)}, **extra))
            for k in range(n)]


class DeliveryBase(RelayTest):
    def setUp(self):
        self.emu = Emulator(self).start()
        self.emu.create_table(TABLE, EVENTS_SCHEMA)

    def relay(self, **dest):
        d = self.daemon(dests=[("events", deliver_to(self.emu, **dest))])
        d.start()
        return d

    def send(self, d, lines):
        p = Producer(d.sock)
        p.send_lines(lines)
        acked = p.finish()
        p.close()
        self.assertEqual(acked, len(lines))
        self.assertEqual(p.errors, {})

    def delivered(self, n, timeout=60):
        wait_for(lambda: self.emu.count(TABLE) >= n, timeout, f"{n} rows at the emulator",
                 interval=0.05)

    def dead_letters(self, d):
        r = subprocess.run([os.path.join(TOOLS, "dlq_dump"), d.spool], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        return [json.loads(l) for l in r.stdout.splitlines()]


class DeliveryTest(DeliveryBase):
    def test_rows_arrive_once_with_stable_insert_ids_and_the_spool_drains(self):
        d = self.relay()
        self.send(d, rows(5000))
        self.delivered(5000)
        got = self.emu.rows(TABLE)
        self.assertEqual(sorted(r["json"]["i"] for r in got), list(range(5000)))
        ids = [r["insert_id"] for r in got]
        self.assertEqual(len(set(ids)), 5000)
        self.assertTrue(all(i and len(i) <= 128 for i in ids))
        wait_for(lambda: d.status()["spool"]["records"] == 0, 30, "the spool to drain")
        st = {x["name"]: x for x in d.status()["destinations"]}["events"]["delivery"]
        self.assertEqual(st["delivered"], 5000)
        self.assertEqual(st["dead_lettered"], 0)
        self.assertEqual(st["table"], TABLE)
        self.assertLess(st["bytes_sent"], st["bytes_raw"], "requests are gzipped")
        self.assertEqual(d.stop(), 0)


def dest_status(d, name="events"):
    return {x["name"]: x for x in d.status()["destinations"]}[name]


class FailureTest(DeliveryBase):
    def test_outage_then_recovery_delivers_everything_and_dead_letters_nothing(self):
        outage = float(os.environ.get("OUTAGE_S", "60"))
        d = self.relay()
        self.send(d, rows(100))
        self.delivered(100)
        self.emu.stop()                                    # BigQuery goes away
        self.send(d, rows(3000, start=100))
        t_end = time.monotonic() + outage
        while time.monotonic() < t_end:                    # the outage lasts `outage` seconds
            st = dest_status(d)
            self.assertEqual(d.status()["spool"]["dead_letters"], 0)
            self.assertGreaterEqual(st["records"], 1, "rows must stay queued during the outage")
            wait_for(lambda: time.monotonic() >= t_end or dest_status(d)["delivery"]["failed_requests"] >
                     st["delivery"]["failed_requests"] or dest_status(d)["delivery"]["backoff_s"] > 0,
                     outage + 10, "relayd to keep retrying", interval=0.5)
        st = dest_status(d)["delivery"]
        self.assertGreater(st["failed_requests"], 0)
        self.assertIn(st["state"], ("backoff", "probing", "sending", "idle"))
        self.emu.start()                                   # back on the same port
        self.delivered(3100, timeout=120)
        got = sorted(r["json"]["i"] for r in self.emu.rows(TABLE))
        self.assertEqual(got, list(range(3100)))
        self.assertEqual(d.status()["spool"]["dead_letters"], 0)
        self.assertEqual(d.stop(), 0)

    def storm(self, fault, seconds, bound):
        d = self.relay(batch_rows=100)
        self.emu.fault(**fault)
        t0 = time.time()
        self.send(d, rows(2000))
        self.delivered(2000, timeout=120)
        log = self.emu.stats()["insert_all_log"]
        during = [e for e in log if e["status"] != 200]
        self.assertGreater(len(during), 0, "the storm never hit relayd")
        self.assertLessEqual(len(during), bound, f"{len(during)} requests during a {seconds}s storm")
        self.assertEqual(d.status()["spool"]["dead_letters"], 0)
        got = sorted(r["json"]["i"] for r in self.emu.rows(TABLE))
        self.assertEqual(got, list(range(2000)))
        st = dest_status(d)["delivery"]
        self.assertGreater(st["retried"], 0)
        return d

    def test_rate_limit_storm_403_is_backed_off(self):
        # rate_limit_wait 500 ms, cap 2 s, equal jitter: waits >= 250, 500, 1000, 1000 ... ms;
        # one probe at a time after a failure; the first wave is max_inflight (4).
        self.storm({"status": 403, "reason": "rateLimitExceeded", "count": None, "for_s": 6}, 6,
                   4 + 11)

    def test_429_storm_honours_retry_after(self):
        # every wait lasts at least Retry-After (1 s): at most 4 + 5 + 1 requests in 5 s
        self.storm({"status": 429, "retry_after": 1, "count": None, "for_s": 5}, 5, 10)

    def test_quota_exceeded_waits_quota_wait(self):
        d = self.relay(quota_wait="3s")
        self.emu.fault(status=403, reason="quotaExceeded", count=1)
        t0 = time.monotonic()
        self.send(d, rows(50))
        self.delivered(50, timeout=60)
        self.assertGreaterEqual(time.monotonic() - t0, 3.0, "quotaExceeded must wait quota_wait")

    def test_poison_rows_go_to_the_dead_letter_store_and_good_rows_arrive(self):
        d = self.relay()
        lines = []
        bad = set()
        for i in range(3000):
            if i % 100 == 37:
                lines.append(json.dumps({"i": "poison-%d" % i, "msg": "bad"}))
                bad.add(i)
            else:
                lines.append(json.dumps({"i": i, "msg": "good"}))
        self.send(d, lines)
        self.delivered(3000 - len(bad))
        wait_for(lambda: d.status()["spool"]["records"] == 0, 30, "the spool to drain")
        got = sorted(r["json"]["i"] for r in self.emu.rows(TABLE))
        self.assertEqual(got, [i for i in range(3000) if i not in bad])
        dl = self.dead_letters(d)
        self.assertEqual(len(dl), len(bad))
        self.assertEqual(sorted(json.loads(e["row"])["i"] for e in dl),
                         sorted("poison-%d" % i for i in bad))
        for e in dl:
            self.assertEqual(e["reason"], "invalid")
            self.assertIn("i", e["detail"])
            self.assertEqual(e["http"], 200)
            self.assertGreaterEqual(e["attempts"], 1)
        st = dest_status(d)["delivery"]
        self.assertEqual(st["dead_lettered"], len(bad))

    def test_poison_rows_without_skip_invalid_rows_resend_the_stopped_ones(self):
        d = self.relay(skip_invalid_rows="no")
        lines = [json.dumps({"i": i}) if i != 55 else json.dumps({"i": "x"}) for i in range(500)]
        self.send(d, lines)
        self.delivered(499)
        got = sorted(r["json"]["i"] for r in self.emu.rows(TABLE))
        self.assertEqual(got, [i for i in range(500) if i != 55])
        self.assertEqual([json.loads(e["row"]) for e in self.dead_letters(d)], [{"i": "x"}])

    def test_whole_request_400_is_resolved_by_bisection(self):
        self.emu.stop()
        self.emu.extra = ["--max-request-bytes", "65536"]
        self.emu.start()
        d = self.relay()
        lines = rows(1000)
        lines[700] = json.dumps({"i": 700, "msg": "x" * 100000})   # alone over the limit
        self.send(d, lines)
        self.delivered(999)
        wait_for(lambda: d.status()["spool"]["records"] == 0, 30, "the spool to drain")
        got = sorted(r["json"]["i"] for r in self.emu.rows(TABLE))
        self.assertEqual(got, [i for i in range(1000) if i != 700])
        dl = self.dead_letters(d)
        self.assertEqual(len(dl), 1)
        self.assertEqual(json.loads(dl[0]["row"])["i"], 700)
        self.assertEqual(dl[0]["http"], 400)
        self.assertIn("exceeds", dl[0]["detail"])

    def test_token_revoked_or_expired_mid_run_is_refreshed(self):
        self.emu.stop()
        self.emu.token_lifetime = 2
        self.emu.start()
        d = self.relay()
        self.send(d, rows(100))
        self.delivered(100)
        # let the 2 s token expire (the condition is the clock), then send again
        expiry = time.monotonic() + 2.5
        wait_for(lambda: time.monotonic() >= expiry, 10, "the token's expiry", interval=0.1)
        self.send(d, rows(100, start=100))
        self.delivered(200)
        self.emu.revoke_tokens()
        self.send(d, rows(100, start=200))
        self.delivered(300)
        self.assertEqual(d.status()["spool"]["dead_letters"], 0)
        self.assertGreaterEqual(sum(self.emu.stats()["token_grants"].values()), 2)

    def test_wrong_ca_is_refused_and_nothing_is_sent(self):
        d = self.relay(ca_file=self.emu.wrong_ca)
        self.send(d, rows(10))
        wait_for(lambda: "certificate" in dest_status(d)["delivery"]["last_error"].lower(), 30,
                 "a certificate error in status")
        self.assertEqual(self.emu.count(TABLE), 0)
        self.assertEqual(self.emu.stats()["rows"]["received"], 0)
        self.assertEqual(dest_status(d)["records"], 10)
        self.assertEqual(d.status()["spool"]["dead_letters"], 0)

    def test_missing_table_parks_the_destination_without_losses_and_others_flow(self):
        d = self.daemon(dests=[("events", deliver_to(self.emu)),
                               ("later", deliver_to(self.emu, table="later"))])
        d.start()
        p = Producer(d.sock)
        p.send_lines(["@later " + l for l in rows(200)] + rows(200))
        self.assertEqual(p.finish(), 400)
        self.delivered(200)                                 # events is not held back
        wait_for(lambda: dest_status(d, "later")["delivery"]["state"] == "parked", 30,
                 "the destination to be parked")
        st = dest_status(d, "later")
        self.assertIn("not found", st["delivery"]["why"])
        self.assertEqual(st["records"], 200)
        self.assertEqual(d.status()["spool"]["dead_letters"], 0)
        self.emu.create_table("proj.logs.later", EVENTS_SCHEMA)
        wait_for(lambda: self.emu.count("proj.logs.later") == 200, 30, "rows of the parked table")
        self.assertEqual(d.status()["spool"]["dead_letters"], 0)


class CrashDuringDeliveryTest(DeliveryBase):
    def test_kill9_during_delivery_loses_nothing_and_resends_with_the_same_insert_id(self):
        kills = int(os.environ.get("DELIVERY_KILLS", "20"))
        import random
        rng = random.Random()
        # slow, small requests so that kills land while requests are in flight
        self.emu.fault(latency_ms=30, count=None)
        d = self.relay(batch_rows=50, max_inflight=2)
        sent = 0
        for k in range(kills):
            self.send(d, rows(300, start=sent))
            sent += 300
            wait_for(lambda: self.emu.stats()["rows"]["received"] > 0, 30, "delivery to start")
            time.sleep(rng.uniform(0.0, 0.3))              # the random point of the kill
            d.kill9()
            d.start()
        self.delivered(sent, timeout=180)
        wait_for(lambda: d.status()["spool"]["records"] == 0, 60, "the spool to drain")
        got = self.emu.rows(TABLE)
        values = [r["json"]["i"] for r in got]
        self.assertEqual(sorted(values), list(range(sent)), "every acked row, exactly once")
        st = self.emu.stats()["rows"]
        # resends happened and were deduplicated by insertId, not stored twice
        print(f"\n  {kills} kills, {sent} rows, {st['received']} received, "
              f"{st['deduplicated']} deduplicated by insertId")
        self.assertEqual(d.status()["spool"]["dead_letters"], 0)
        self.assertEqual(d.stop(), 0)


class CorruptRecordTest(DeliveryBase):
    def test_corrupt_records_are_dead_lettered_and_the_rest_is_delivered(self):
        d = self.daemon(dests=[("events", deliver_to(self.emu, endpoint="https://127.0.0.1:1"))])
        d.start()                                   # delivery cannot succeed yet: rows stay
        self.send(d, rows(100))
        self.assertEqual(d.stop(), 0)
        stored = d.dump()
        seqs = {r["row"]["i"]: r["seq"] for r in stored}
        tool = os.path.join(TOOLS, "spool_corrupt")
        for i, how in ((10, "flip"), (50, "truncate")):
            r = subprocess.run([tool, d.spool, "1", str(seqs[i]), how], stderr=subprocess.PIPE)
            self.assertEqual(r.returncode, 0, r.stderr)
        bad = subprocess.run([os.path.join(os.path.dirname(TOOLS), "relayctl"), "-c", d.conf,
                              "spool", "dump"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.assertEqual(bad.returncode, 1, "spool dump must report the damage")
        self.assertIn(b"2 corrupt", bad.stderr)
        d.dests = [("events", deliver_to(self.emu))]
        d.write_config()
        d.start()
        self.delivered(98)
        wait_for(lambda: d.status()["spool"]["records"] == 0, 30, "the spool to drain")
        got = sorted(r["json"]["i"] for r in self.emu.rows(TABLE))
        self.assertEqual(got, [i for i in range(100) if i not in (10, 50)])
        dl = self.dead_letters(d)
        self.assertEqual(len(dl), 2)
        self.assertEqual({e["reason"] for e in dl}, {"corrupt"})
        self.assertEqual(sorted(e["seq"] for e in dl), sorted([seqs[10], seqs[50]]))
        self.assertTrue(any("checksum" in e["detail"] for e in dl))
        self.assertTrue(any("truncated" in e["detail"] for e in dl))
        self.assertEqual(d.stop(), 0)


class UserCredentialsTest(DeliveryBase):
    def test_authorized_user_with_a_quota_project_bills_it(self):
        from relaytest import BQEMU, PY
        user = os.path.join(self.emu.dir, "adc.json")
        subprocess.run([PY, BQEMU, "gen-user", "--dir", self.emu.data, "--out", user,
                        "--token-uri", self.emu.token_uri, "--quota-project", "billing-proj"],
                       check=True, stdout=subprocess.DEVNULL)
        os.chmod(user, 0o600)
        d = self.relay(credentials=user)
        self.send(d, rows(20))
        self.delivered(20)
        self.assertGreater(self.emu.stats().get("user_projects", {}).get("billing-proj", 0), 0,
                           "x-goog-user-project was not sent")
