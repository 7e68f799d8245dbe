"""`relayd --check-config` refuses what a start would fail on, and a start
fails with the same message: files that must exist and parse (ca_file as PEM
certificates, credentials as a service-account or authorized-user key), the
spool directory and the sockets' directories. Each error names
FILE:LINE: [section] key. Exit status 3 for both."""
import os
import shutil
import subprocess
import tempfile
import unittest

from relaytest import BQEMU, PY, RELAYD, _tls_dir


class CheckConfigTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="relayd-checkconf-")
        cls.key = os.path.join(cls.tmp, "key.json")
        subprocess.run([PY, BQEMU, "gen-key", "--dir", os.path.join(cls.tmp, "emu"), "--out", cls.key,
                        "--token-uri", "https://127.0.0.1:9/token"], check=True, stdout=subprocess.DEVNULL)
        os.chmod(cls.key, 0o600)
        cls.ca = os.path.join(_tls_dir(), "ca.pem")
        cls.not_pem = os.path.join(cls.tmp, "not-a-ca.pem")
        with open(cls.not_pem, "w") as f:
            f.write("this is not a certificate\n")
        cls.bad_key = os.path.join(cls.tmp, "bad-key.json")
        with open(cls.bad_key, "w") as f:
            f.write('{"type": "service_account", "client_email": "x@y"}\n')
        os.chmod(cls.bad_key, 0o600)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def config(self, credentials=None, ca_file=None, spool=None, schema_file=None):
        d = tempfile.mkdtemp(prefix="conf-", dir=self.tmp)
        lines = ["[relayd]", f"control_socket = {d}/relayd.ctl",
                 "[spool]", f"dir = {spool or d + '/spool'}",
                 "[ingest]", f"socket = {d}/relayd.sock",
                 "[destination events]", "project = p", "dataset = d",
                 f"credentials = {credentials or self.key}",
                 f"ca_file = {ca_file or self.ca}",
                 "endpoint = https://127.0.0.1:9"]
        if schema_file:
            lines.append(f"schema_file = {schema_file}")
        path = os.path.join(d, "relayd.conf")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        # the line each key is on (1-based)
        self.lines = {l.split(" = ")[0]: i + 1 for i, l in enumerate(lines) if " = " in l}
        return path

    def run_relayd(self, *args):
        p = subprocess.run([RELAYD] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           stdin=subprocess.DEVNULL, timeout=60)
        return p.returncode, p.stdout.decode() + p.stderr.decode()

    def refused(self, path, prefix, detail):
        rc, out = self.run_relayd("--check-config", "-c", path)
        self.assertEqual(rc, 3, out)
        self.assertIn("relayd: invalid config: " + prefix, out)
        self.assertIn(detail, out)
        msg = [l for l in out.splitlines() if "invalid config" in l][0]
        # a start fails the same way, with the same message, before opening anything
        rc2, out2 = self.run_relayd("-c", path)
        self.assertEqual(rc2, 3, out2)
        self.assertIn(msg, out2)
        self.assertFalse(os.path.exists(os.path.join(os.path.dirname(path), "spool")))

    def test_valid_config_passes(self):
        path = self.config()
        rc, out = self.run_relayd("--check-config", "-c", path)
        self.assertEqual(rc, 0, out)
        self.assertIn("valid", out)

    def test_nonexistent_ca_file(self):
        path = self.config(ca_file="/nonexistent/ca.pem")
        self.refused(path, f"{path}:{self.lines['ca_file']}: [destination events] ca_file: ",
                     "/nonexistent/ca.pem: No such file or directory")

    def test_ca_file_that_is_not_pem(self):
        path = self.config(ca_file=self.not_pem)
        self.refused(path, f"{path}:{self.lines['ca_file']}: [destination events] ca_file: ",
                     "holds no PEM certificate")

    def test_nonexistent_credentials(self):
        path = self.config(credentials="/nonexistent/key.json")
        self.refused(path, f"{path}:{self.lines['credentials']}: [destination events] credentials: ",
                     "/nonexistent/key.json")

    def test_credentials_that_are_not_a_key(self):
        path = self.config(credentials=self.bad_key)
        self.refused(path, f"{path}:{self.lines['credentials']}: [destination events] credentials: ",
                     "private_key")

    def test_schema_file_missing_or_not_a_schema(self):
        path = self.config(schema_file="/nonexistent/events.schema.json")
        self.refused(path, f"{path}:{self.lines['schema_file']}: [destination events] schema_file: ",
                     "/nonexistent/events.schema.json: cannot open: No such file or directory")
        bad = os.path.join(self.tmp, "bad.schema.json")
        with open(bad, "w") as f:
            f.write('{"fields": [{"name": "x", "type": "NOSUCHTYPE"}]}\n')
        path = self.config(schema_file=bad)
        self.refused(path, f"{path}:{self.lines['schema_file']}: [destination events] schema_file: {bad}: ",
                     "NOSUCHTYPE")
        good = os.path.join(self.tmp, "good.schema.json")
        with open(good, "w") as f:
            f.write('[{"name": "x", "type": "INTEGER"}]\n')
        rc, out = self.run_relayd("--check-config", "-c", self.config(schema_file=good))
        self.assertEqual(rc, 0, out)

    def test_spool_dir_that_cannot_be_created(self):
        blocker = os.path.join(self.tmp, "a-file")
        open(blocker, "w").close()
        path = self.config(spool=blocker + "/spool")
        self.refused(path, f"{path}:{self.lines['dir']}: [spool] dir: ", "a-file/spool: Not a directory")


if __name__ == "__main__":
    unittest.main()
