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
