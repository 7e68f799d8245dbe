"""`relayctl doctor`: every check and every failure branch, against the
emulator over real TLS with real tokens: credentials that do not load, a
token endpoint that refuses, a missing dataset, a missing table (fail, or
warn when create_table may create it), IAM without tables.updateData (the
emulator then also refuses insertAll and AppendRows), a sample row the schema
refuses (the dead-letter reason it would get), --write-test-row, the spool's
permissions and disk, the sockets with relayd down and up; --json and the
exit codes."""
import json
import os
import re
import unittest

from relaytest import EVENTS_SCHEMA, Emulator, RelayTest, deliver_to, write_to


class DoctorTest(RelayTest):
    @classmethod
    def setUpClass(cls):
        cls.emu = Emulator(None, grpc=True).start()
        cls.emu.create_table("proj.logs.events", EVENTS_SCHEMA)

    @classmethod
    def tearDownClass(cls):
        cls.emu.cleanup()

    def setUp(self):
        self.emu._call("POST", "/_emu/reset", {"faults": True, "stats": False})

    def doctor(self, d, *args):
        """Runs doctor --json, and (unless it writes) the text form too: same verdicts."""
        p = d.relayctl("doctor", "--json", *args)
        self.assertIn(p.returncode, (0, 1), p.stderr.decode())
        doc = json.loads(p.stdout)
        by = {(c["dest"], c["check"]): c for c in doc["checks"]}
        self.assertEqual(len(by), len(doc["checks"]))
        if "--write-test-row" in args:
            return p.returncode, doc, by, p.stdout.decode()
        text = d.relayctl("doctor", *args)
        self.assertEqual(text.returncode, p.returncode)
        out = text.stdout.decode()
        self.assertIn("%d ok, %d warn, %d fail\n" % (doc["ok"], doc["warn"], doc["fail"]), out)
        for c in doc["checks"]:
            self.assertRegex(out, r"(?m)^%-4s  %s +%s +" % (c["status"], re.escape(c["dest"] or "-"),
                                                           re.escape(c["check"])))
        return p.returncode, doc, by, out

    def test_all_ok_then_row_checks_and_a_written_row(self):
        d = self.daemon(dests=[("events", deliver_to(self.emu, table="events")),
                               ("sw", write_to(self.emu, table="events"))])
        d.start()
        rc, doc, by, text = self.doctor(d, "--row", '{"i": 1, "msg": "doctor"}')
        self.assertEqual(rc, 0, text)
        self.assertEqual(doc["fail"], 0, text)
        for dest in ("events", "sw"):
            for check in ("credentials", "token", "dataset", "table", "permissions", "row"):
                self.assertEqual(by[(dest, check)]["status"], "ok", (dest, check, text))
        self.assertIn("(4 columns)", by[("events", "table")]["detail"])
        self.assertIn("bigquery.tables.updateData", by[("events", "permissions")]["detail"])
        self.assertIn("bigquery.tables.get", by[("sw", "permissions")]["detail"])   # schema fetched
        self.assertEqual(by[(None, "relayd")]["status"], "ok")
        self.assertEqual(by[(None, "socket")]["status"], "ok")
        self.assertEqual(by[(None, "disk")]["status"], "ok")
        self.assertEqual(self.emu.count("proj.logs.events"), 0)   # a dry run writes nothing

        # a row the schema refuses: the reason it would be dead-lettered with, on both APIs
        rc, doc, by, text = self.doctor(d, "--row", '{"i": "x1", "msg": "doctor"}')
        self.assertEqual(rc, 1, text)
        for dest in ("events", "sw"):
            self.assertEqual(by[(dest, "row")]["status"], "fail")
            self.assertIn("field 'i'", by[(dest, "row")]["detail"])
            self.assertIn("fix", by[(dest, "row")])
        # --write-test-row writes it, once, with insertAll
        rc, doc, by, text = self.doctor(d, "events", "--row", '{"i": 7, "msg": "doctor"}',
                                        "--write-test-row")
        self.assertEqual(rc, 0, text)
        self.assertEqual(by[("events", "test-row")]["status"], "ok")
        self.assertNotIn(("sw", "token"), by)   # DEST limits the checks
        rows = self.emu.rows("proj.logs.events")
        self.assertEqual([r["json"]["i"] for r in rows if r["json"].get("msg") == "doctor"], [7])

    def test_missing_dataset_and_table(self):
        # datasets are implicit in the emulator: a missing one is a 404 fault on datasets.get
        self.emu.fault(status=404, path="datasets", reason="notFound", count=2,
                       message="Not found: Dataset proj:nosuch")
        d = self.daemon(dests=[("nods", deliver_to(self.emu, dataset="nosuch", table="events")),
                               ("notab", deliver_to(self.emu, table="missing")),
                               ("willcreate", deliver_to(self.emu, table="later", create_table="yes",
                                                         schema_file=self.schema_file()))],
                        default_table=None)
        rc, doc, by, text = self.doctor(d, "nods")
        self.assertEqual(rc, 1, text)
        self.assertEqual(by[("nods", "dataset")]["status"], "fail")
        self.assertIn("bq --project_id=proj mk --dataset proj:nosuch", by[("nods", "dataset")]["fix"])
        self.assertNotIn(("notab", "dataset"), by)
        rc, doc, by, text = self.doctor(d)
        self.assertEqual(rc, 1, text)
        self.assertEqual(by[("notab", "dataset")]["status"], "ok")
        self.assertEqual(by[("notab", "table")]["status"], "fail")
        self.assertIn("bq mk --table proj:logs.missing", by[("notab", "table")]["fix"])
        self.assertNotIn(("notab", "permissions"), by)
        self.assertEqual(by[("willcreate", "table")]["status"], "warn")
        self.assertIn("relayd creates it", by[("willcreate", "table")]["detail"])
        # relayd is not running: warned, not failed
        self.assertEqual(by[(None, "relayd")]["status"], "warn")
        self.assertEqual(by[(None, "socket")]["status"], "warn")
        self.assertEqual(by[(None, "spool")]["status"], "warn")   # created at start

    def test_iam_denied_and_token_refused_and_bad_credentials(self):
        self.emu._call("POST", "/_emu/iam", {"deny": ["bigquery.tables.updateData"],
                                             "table": "proj.logs.events"})
        bad_key = os.path.join(self.emu.dir, "not-a-key.json")
        with open(bad_key, "w") as f:
            f.write('{"type": "service_account"}\n')
        os.chmod(bad_key, 0o600)
        d = self.daemon(dests=[("events", deliver_to(self.emu, table="events")),
                               ("badkey", deliver_to(self.emu, table="events", credentials=bad_key))],
                        default_table="events")
        rc, doc, by, text = self.doctor(d)
        self.assertEqual(rc, 1, text)
        self.assertEqual(by[("events", "permissions")]["status"], "fail")
        self.assertIn("missing bigquery.tables.updateData", by[("events", "permissions")]["detail"])
        self.assertIn("roles/bigquery.dataEditor", by[("events", "permissions")]["fix"])
        self.assertEqual(by[("badkey", "credentials")]["status"], "fail")
        self.assertNotIn(("badkey", "token"), by)
        # the emulator refuses the write the denial forbids, as BigQuery does
        rc, doc, by, text = self.doctor(d, "events", "--row", '{"i": 1}', "--write-test-row")
        self.assertEqual(by[("events", "test-row")]["status"], "fail")
        self.assertIn("HTTP 403", by[("events", "test-row")]["detail"])
        self.assertIn("bigquery.tables.updateData denied", by[("events", "test-row")]["detail"])
        self.emu._call("DELETE", "/_emu/iam")
        # the token endpoint refuses
        self.emu.fault(status=400, path="token", count=None, reason="invalid_grant")
        rc, doc, by, text = self.doctor(d, "events")
        self.assertEqual(rc, 1, text)
        self.assertEqual(by[("events", "token")]["status"], "fail")
        self.assertNotIn(("events", "dataset"), by)
        self.assertIn("fix", by[("events", "token")])

    def test_table_not_readable_and_open_spool(self):
        self.emu._call("POST", "/_emu/iam", {"deny": ["bigquery.tables.get", "bigquery.datasets.get"]})
        d = self.daemon(dests=[("sw", write_to(self.emu, table="events"))], default_table=None)
        os.makedirs(d.spool, mode=0o700)
        os.chmod(d.spool, 0o755)
        rc, doc, by, text = self.doctor(d, "--row", '{"i": 1}')
        self.assertEqual(rc, 1, text)
        self.assertEqual(by[("sw", "dataset")]["status"], "warn")
        # storage without schema_file fetches the schema: tables.get is needed
        self.assertEqual(by[("sw", "table")]["status"], "fail")
        self.assertIn("roles/bigquery.metadataViewer", by[("sw", "table")]["fix"])
        self.assertEqual(by[("sw", "row")]["status"], "warn")
        self.assertEqual(by[(None, "spool")]["status"], "warn")
        self.assertIn("chmod 700", by[(None, "spool")]["fix"])

    def schema_file(self):
        path = os.path.join(self.emu.dir, "events.schema.json")
        with open(path, "w") as f:
            json.dump({"fields": EVENTS_SCHEMA}, f)
        return path


if __name__ == "__main__":
    unittest.main()
