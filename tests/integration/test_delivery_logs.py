"""Delivery state changes in relayd's log (structured key=value lines, rate-limited)
and the reason `relayctl status` gives, over insertAll and the Storage Write API,
against the emulator over real TLS. docs/operations.md lists the events."""
import json
import os
import re
import time

from relaytest import (EVENTS_SCHEMA, Emulator, Producer, RelayTest, deliver_to, wait_for,
                       write_to)

TABLE = "proj.logs.events"
KV = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')
STATE_EVENTS = ("backoff", "parked", "probing", "summary", "recovered")


def rows(n, start=0):
    return [json.dumps({"i": start + k, "msg": "row %d" % (start + k)}) for k in range(n)]


def parse(line):
    """The key=value fields of one log line from its event= on, or None."""
    at = line.find("event=")
    if at < 0:
        return None
    out = {}
    for k, v in KV.findall(line[at:]):
        if v.startswith('"'):
            v = re.sub(r'\\(.)', lambda m: "\n" if m.group(1) == "n" else m.group(1), v[1:-1])
        out[k] = v
    return out


def seconds(v):
    """'850ms', '2.1s', '10m0s', '3h20m' -> seconds."""
    m = re.fullmatch(r"(\d+)ms", v)
    if m:
        return int(m.group(1)) / 1000
    m = re.fullmatch(r"([\d.]+)s", v)
    if m:
        return float(m.group(1))
    m = re.fullmatch(r"(\d+)m(\d+)s", v)
    if m:
        return int(m.group(1)) * 60 + int(m.group(2))
    m = re.fullmatch(r"(\d+)h(\d+)m", v)
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60


def summaries_within(minutes):
    """Summaries fall at 1, 1+2, 1+2+4, ... minutes of an episode, gaps capped at 60."""
    n, t, gap = 0, 0, 1
    while t + gap <= minutes:
        t += gap
        n += 1
        gap = min(gap * 2, 60)
    return n


class LogsBase(RelayTest):
    def setUp(self):
        self.emu = Emulator(self, grpc=True).start()
        self.emu.create_table(TABLE, EVENTS_SCHEMA)

    def events(self, d, dest=None, event=None):
        out = []
        for line in d.read_log().splitlines():
            f = parse(line)
            if f and (dest is None or f.get("dest") == dest) and (event is None or f["event"] == event):
                out.append(f)
        return out

    def wait_event(self, d, dest, event, timeout=60, **match):
        def found():
            for f in self.events(d, dest, event):
                if all(m(f.get(k, "")) if callable(m) else f.get(k) == m for k, m in match.items()):
                    return f
            return None
        try:
            return wait_for(found, timeout, f"event={event} dest={dest} {match} in the log", interval=0.1)
        except AssertionError:
            raise AssertionError("\n".join(d.read_log().splitlines()[-40:]) + "\n(no such line)")

    def send(self, d, lines, prefix=""):
        p = Producer(d.sock)
        p.send_lines([prefix + l for l in lines])
        self.assertEqual(p.finish(), len(lines))
        p.close()

    def arrived(self, table, n, timeout=60):
        wait_for(lambda: self.emu.count(table) >= n, timeout, f"{n} rows in {table}", interval=0.05)

    def delivery(self, d, name):
        return {x["name"]: x for x in d.status()["destinations"]}[name]["delivery"]


class InsertAllLogsTest(LogsBase):
    def test_missing_table_park_is_logged_once_then_its_recovery_with_the_rows_that_waited(self):
        d = self.daemon(dests=[("later", deliver_to(self.emu, table="later"))], default_table="later")
        d.start()
        self.send(d, rows(50))
        f = self.wait_event(d, "later", "parked")
        self.assertEqual((f["api"], f["table"], f["kind"]), ("insertAll", "proj.logs.later", "not_found"))
        self.assertEqual(f["reason"], "table proj.logs.later not found")
        self.assertEqual(f["retry_in"], "2.0s")
        self.assertIn("create it", f["error"])
        st = self.delivery(d, "later")
        self.assertEqual(st["table"], "proj.logs.later")
        # the park goes on: two more attempts, still one parked line and one probing line
        wait_for(lambda: self.delivery(d, "later")["failed_requests"] >= 3, 30, "two more attempts",
                 interval=0.1)
        def parked_why():
            st = self.delivery(d, "later")
            return st["state"] == "parked" and "table proj.logs.later not found" in st["why"]
        wait_for(parked_why, 30, "status: parked, with the reason")
        self.assertEqual(len(self.events(d, "later", "parked")), 1)
        self.assertEqual(len(self.events(d, "later", "probing")), 1)

        def text_says_why():       # relayctl status, as people read it
            text = d.relayctl("status").stdout.decode()
            return "-> proj.logs.later: parked" in text and "table proj.logs.later not found" in text
        wait_for(text_says_why, 30, "relayctl status to say parked and why")
        self.emu.create_table("proj.logs.later", EVENTS_SCHEMA)
        self.arrived("proj.logs.later", 50)
        f = self.wait_event(d, "later", "recovered")
        self.assertEqual(f["rows_waited"], "50")
        self.assertGreaterEqual(int(f["attempts"]), 3)
        self.assertGreaterEqual(seconds(f["for"]), 4.0)
        self.assertGreaterEqual(seconds(f["oldest_wait"]), 4.0)
        self.assertEqual(f["state"], "parked")
        wait_for(lambda: self.delivery(d, "later")["state"] == "idle", 30, "idle")
        self.assertEqual(self.delivery(d, "later")["why"], "")
        self.assertEqual(d.stop(), 0)

    def test_token_endpoint_outage_is_logged_without_secrets_and_recovery_counts_the_rows(self):
        d = self.daemon(dests=[("events", deliver_to(self.emu))])
        d.start()
        self.send(d, rows(10))
        self.arrived(TABLE, 10)
        self.emu.revoke_tokens()                      # the next insertAll gets a 401 ...
        self.emu.fault(status=503, path="token", count=None, for_s=4)   # ... and no new token
        self.send(d, rows(100, start=10))
        f = self.wait_event(d, "events", "token_rejected")
        self.assertEqual((f["kind"], f["reason"]), ("auth", "HTTP 401 authError"))
        f = self.wait_event(d, "events", "backoff", kind="auth")
        self.assertIn("token endpoint", f["reason"])
        self.assertIn("503", f["reason"])
        self.assertIn("retry_in", f)
        st = self.delivery(d, "events")
        if st["state"] in ("backoff", "probing"):
            self.assertIn("token endpoint", st["why"])
        self.arrived(TABLE, 110, timeout=60)
        f = self.wait_event(d, "events", "recovered")
        self.assertGreaterEqual(int(f["rows_waited"]), 100)
        self.assertGreaterEqual(int(f["attempts"]), 2)
        self.assertGreaterEqual(seconds(f["for"]), 2.0)
        # several failed attempts, one line for them
        self.assertEqual(len(self.events(d, "events", "backoff")), 1)
        log = d.read_log()
        self.assertNotIn("Bearer", log)
        self.assertNotIn("access_token", log)
        self.assertNotIn("private_key\"", log)
        self.assertEqual(d.stop(), 0)

    def test_tls_failure_at_the_token_endpoint_is_logged_as_tls(self):
        d = self.daemon(dests=[("events", deliver_to(self.emu, ca_file=self.emu.wrong_ca))])
        d.start()
        self.send(d, rows(5))
        f = self.wait_event(d, "events", "backoff")
        self.assertEqual(f["kind"], "tls")
        self.assertTrue(f["reason"].startswith("token endpoint: "), f["reason"])
        self.wait_event(d, "events", "probing")
        def waiting_for_tls():
            st = self.delivery(d, "events")
            return st["state"] in ("backoff", "probing") and "certificate" in st["why"]
        wait_for(waiting_for_tls, 30, "status: waiting, because of the certificate")
        self.assertEqual(len(self.events(d, "events", "backoff")), 1)

    def test_ten_minute_outage_writes_a_bounded_number_of_lines(self):
        # RELAYD_LOG_TIME_SCALE=60: the limiter's minute lasts a second, so a 10 s outage
        # is its 10-minute outage; retries every <= 200 ms make ~50+ attempts of it.
        d = self.daemon(dests=[("events", deliver_to(self.emu, retry_base="50ms", retry_cap="200ms"))])
        d.env = dict(os.environ, RELAYD_LOG_TIME_SCALE="60")
        d.start()
        self.send(d, rows(10))
        self.arrived(TABLE, 10)
        self.emu.stop()
        t0 = time.monotonic()
        self.send(d, rows(100, start=10))
        t_end = t0 + 10

        def still_out():                              # status says why throughout
            st = self.delivery(d, "events")
            if st["state"] != "idle":
                self.assertNotEqual(st["why"], "", st)
            return time.monotonic() >= t_end
        wait_for(still_out, 30, "the 10 s outage to pass", interval=0.2)
        self.emu.start()
        self.arrived(TABLE, 110)
        rec = self.wait_event(d, "events", "recovered")
        outage_s = time.monotonic() - t0
        lines = [f for f in self.events(d, "events") if f["event"] in STATE_EVENTS]
        changes = [f for f in lines if f["event"] in ("backoff", "parked")]
        probes = [f for f in lines if f["event"] == "probing"]
        summaries = [f for f in lines if f["event"] == "summary"]
        attempts = int(rec["attempts"])
        self.assertGreaterEqual(attempts, 20, "the outage must have many attempts")
        self.assertLessEqual(len(changes), 3, changes)     # e.g. reset, then refused
        self.assertLessEqual(len(probes), len(changes))
        self.assertLessEqual(len(summaries), summaries_within(outage_s))
        self.assertGreaterEqual(len(summaries), 2, "summaries at 1 and 3 scaled minutes")
        self.assertEqual(len(lines), len(changes) + len(probes) + len(summaries) + 1)
        self.assertLess(len(lines) * 3, attempts, f"{len(lines)} lines for {attempts} attempts")
        s = summaries[0]
        self.assertEqual(s["state"], "backoff")
        self.assertGreater(int(s["attempt"]), 1)
        self.assertIn("suppressed", s)
        self.assertGreaterEqual(int(rec["rows_waited"]), 100)
        self.assertEqual(d.stop(), 0)


class StorageLogsTest(LogsBase):
    def test_stream_reconnects_are_logged(self):
        d = self.daemon(dests=[("events", write_to(self.emu))])
        d.start()
        self.send(d, rows(50))
        self.arrived(TABLE, 50)
        self.emu.fault(grpc="UNAVAILABLE", count=1)       # the AppendRows call is closed
        self.send(d, rows(50, start=50))
        self.arrived(TABLE, 100)
        f = self.wait_event(d, "events", "reconnect")
        self.assertEqual((f["api"], f["table"], f["kind"]), ("storage", TABLE, "grpc"))
        self.assertEqual(f["reason"], "AppendRows: UNAVAILABLE")
        self.assertEqual((f["cause"], f["next"]), ("closed", "at_once"))
        self.emu.fault(drop=1, path="write")              # the connection is killed
        self.send(d, rows(50, start=100))
        self.arrived(TABLE, 150)
        wait_for(lambda: len(self.events(d, "events", "reconnect")) >= 2, 30, "a second reconnect")
        self.assertEqual(d.stop(), 0)

    def test_parked_storage_destination_has_a_reason_and_tables_read_p_d_t_on_both_apis(self):
        d = self.daemon(dests=[("events", deliver_to(self.emu)),
                               ("later", write_to(self.emu, table="later"))])
        d.start()
        self.send(d, rows(20), prefix="@later ")
        self.send(d, rows(5))
        f = self.wait_event(d, "later", "parked")
        self.assertEqual((f["api"], f["table"], f["kind"]), ("storage", "proj.logs.later", "not_found"))
        self.assertEqual(f["reason"], "table proj.logs.later not found")
        wait_for(lambda: self.delivery(d, "later")["state"] == "parked", 30, "parked")
        st = self.delivery(d, "later")
        self.assertIn("table proj.logs.later not found", st["why"])
        self.assertIn("create it", st["why"])
        self.assertGreater(st["backoff_s"], 0)
        self.assertEqual(st["table"], "proj.logs.later")
        self.assertEqual(self.delivery(d, "events")["table"], TABLE)
        out = d.relayctl("status")
        text = out.stdout.decode()
        self.assertIn("-> proj.logs.later: parked", text)
        self.assertIn("-> proj.logs.events:", text)
        self.assertIn("table proj.logs.later not found", text)
        self.assertNotIn("projects/", text)
        self.assertNotIn("projects/", d.relayctl("status", "--json").stdout.decode())
        self.assertNotIn("projects/proj/datasets", "\n".join(
            l for l in d.read_log().splitlines() if "event=" in l or "destination" in l))
        self.emu.create_table("proj.logs.later", EVENTS_SCHEMA)
        self.arrived("proj.logs.later", 20)
        f = self.wait_event(d, "later", "recovered")
        self.assertEqual(f["state"], "parked")
        self.assertGreaterEqual(int(f["attempts"]), 1)
        self.assertEqual(len(self.events(d, "later", "parked")), 1)
        self.assertEqual(d.stop(), 0)
