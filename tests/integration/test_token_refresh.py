"""Access tokens are fetched off the delivery path (auth_token_nowait and the
refresher thread of each set of credentials): a token endpoint that hangs
delays only the destinations that use it.

Two insertAll destinations with two key files; one key's token_uri is the
emulator's /oauth2/v4/token, and a latency fault on that path alone (longer
than relayd's 10 s token timeout: a hang) holds its token fetch. The other
destination must go on delivering promptly meanwhile. Before the refresher,
the one sender thread waited in the hung fetch and every destination stalled
for the whole timeout."""
import json
import os
import subprocess
import time

from relaytest import (BQEMU, EVENTS_SCHEMA, PY, Emulator, Producer, RelayTest, deliver_to,
                       wait_for)

HANG_MS = 12000      # longer than relayd's token timeout (10 s)


def rows(n, start=0):
    return [json.dumps({"i": start + k, "msg": "row %d" % (start + k)}) for k in range(n)]


class TokenRefreshTest(RelayTest):
    def setUp(self):
        self.emu = Emulator(self).start()
        for t in ("fast", "slow"):
            self.emu.create_table("proj.logs." + t, EVENTS_SCHEMA)
        self.slow_key = os.path.join(self.emu.dir, "slow-key.json")
        subprocess.run([PY, BQEMU, "gen-key", "--dir", self.emu.data, "--out", self.slow_key,
                        "--token-uri", self.emu.url + "/oauth2/v4/token"], check=True,
                       stdout=subprocess.DEVNULL)
        os.chmod(self.slow_key, 0o600)

    def send(self, d, table, lines):
        p = Producer(d.sock)
        p.send_lines(["@" + table] + lines)
        self.assertEqual(p.finish(), len(lines) + 1)
        p.close()

    def count(self, table):
        return self.emu.count("proj.logs." + table)

    def hang_fired(self):
        faults = self.emu._call("GET", "/_emu/faults")["faults"]
        return any(f["kind"] == "latency" and f["fired"] > 0 for f in faults)

    def test_a_hanging_token_endpoint_delays_only_its_own_destination(self):
        d = self.daemon(dests=[("fast", deliver_to(self.emu, table="fast")),
                               ("slow", deliver_to(self.emu, table="slow", credentials=self.slow_key))],
                        default_table="fast")
        d.start()
        # Both deliver, each with a token of its own
        self.send(d, "fast", rows(10))
        self.send(d, "slow", rows(10))
        wait_for(lambda: self.count("fast") == 10 and self.count("slow") == 10, 30, "the first rows")

        # The slow key's token endpoint hangs; every token is revoked, so both
        # destinations get a 401 and need a new one.
        self.emu.fault(latency_ms=HANG_MS, path="token", table="/oauth2/v4/token", for_s=4)
        self.emu.revoke_tokens()
        self.send(d, "slow", rows(20, 10))
        wait_for(self.hang_fired, 30, "relayd's token request for the slow key to hang")

        # Meanwhile the other destination delivers at once, well inside the hang
        t0 = time.monotonic()
        self.send(d, "fast", rows(50, 10))
        wait_for(lambda: self.count("fast") == 60, HANG_MS / 1000 - 6,
                 "the fast destination's rows while the slow one's token endpoint hangs", interval=0.02)
        took = time.monotonic() - t0
        print(f"\n  fast destination: 50 rows delivered {took * 1000:.0f} ms after sending, "
              f"while the other destination's token endpoint hung ({HANG_MS} ms)")
        self.assertEqual(self.count("slow"), 10, "the slow destination delivered without a token?")

        # The slow one recovers once its endpoint answers, nothing lost
        wait_for(lambda: self.count("slow") == 30, 60, "the slow destination to recover")
        self.assertEqual(self.count("fast"), 60)

    def test_tokens_are_refreshed_ahead_of_expiry(self):
        # Tokens live 8 s, less than the 5 min refresh margin: the refresher
        # fetches a new one as soon as it has one, and deliveries never see a
        # 401 (an expired token would be answered with one).
        emu = Emulator(self, token_lifetime=8).start()
        emu.create_table("proj.logs.fast", EVENTS_SCHEMA)
        d = self.daemon(dests=[("fast", deliver_to(emu, table="fast"))], default_table="fast")
        d.start()
        sent = 0
        t_end = time.monotonic() + 12
        while time.monotonic() < t_end:
            self.send(d, "fast", rows(5, sent))
            sent += 5
            wait_for(lambda: emu.count("proj.logs.fast") == sent, 30, f"{sent} rows")
        st = {x["name"]: x for x in d.status()["destinations"]}["fast"]["delivery"]
        self.assertGreaterEqual(st["token_refreshes"], 2, st)
        ins = emu.stats()["requests"].get("insertAll", {})
        self.assertGreater(ins.get("200", 0), 0, ins)
        self.assertNotIn("401", ins, "a request carried an expired token: %s" % ins)


if __name__ == "__main__":
    import unittest
    unittest.main()
