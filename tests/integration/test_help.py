"""Every `relayctl COMMAND [SUB] --help` (and -h), and `relayd --help`, prints
its own usage on stdout and exits 0 without reading a config, opening the
spool or talking to relayd.

The commands are read from relayctl's own top-level --help, so a command
listed there without a usage of its own fails here."""
import os
import re
import subprocess
import tempfile
import unittest

from relaytest import RELAYCTL, RELAYD


def commands():
    out = subprocess.run([RELAYCTL, "--help"], stdout=subprocess.PIPE, check=True).stdout.decode()
    section = out.split("Commands:\n", 1)[1].split("\n\n", 1)[0]
    found = []
    for line in section.splitlines():
        m = re.match(r"  (\S+)(?: (\S+))?", line)
        if not m:
            continue
        cmd, sub = m.group(1).rstrip(","), m.group(2)
        if cmd == "help":           # "help, version"
            found += [("help", None), ("version", None)]
            continue
        if sub and not sub.startswith("[") and not sub.startswith("-"):
            for s in sub.split("|"):
                found.append((cmd, s))
        else:
            found.append((cmd, None))
    return found


class HelpTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="relayd-help-")
        self.spool = os.path.join(self.dir, "spool")
        self.conf = os.path.join(self.dir, "relayd.conf")
        with open(self.conf, "w") as f:
            f.write(f"[spool]\ndir = {self.spool}\n[ingest]\nsocket = {self.dir}/relayd.sock\n")

    def test_the_list_of_commands_is_complete(self):
        cmds = commands()
        for want in [("send", None), ("status", None), ("spool", "dump"), ("spool", "check"),
                     ("spool", "compact"), ("dlq", "list"), ("dlq", "replay"), ("dlq", "purge")]:
            self.assertIn(want, cmds)

    def test_every_subcommand_answers_help_without_touching_anything(self):
        cmds = commands() + [("spool", None), ("dlq", None)]
        for cmd, sub in cmds:
            words = [cmd] + ([sub] if sub else [])
            for flag in ("--help", "-h"):
                for config in (self.conf, os.path.join(self.dir, "missing.conf")):
                    with self.subTest(cmd=" ".join(words), flag=flag, config=config):
                        p = subprocess.run([RELAYCTL, "-c", config] + words + [flag],
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                           stdin=subprocess.DEVNULL, timeout=30)
                        out = p.stdout.decode()
                        self.assertEqual(p.returncode, 0, p.stderr.decode())
                        self.assertEqual(p.stderr, b"")
                        if cmd in ("help",):
                            self.assertIn("Usage: relayctl [GLOBAL OPTIONS] COMMAND", out)
                        else:
                            self.assertTrue(out.startswith("Usage: relayctl " + " ".join(words)),
                                            out[:200])
                        self.assertFalse(os.path.exists(self.spool), "the spool was created")

    def test_help_after_other_arguments(self):
        p = subprocess.run([RELAYCTL, "-c", self.conf, "dlq", "list", "--table", "x", "--help"],
                           stdout=subprocess.PIPE, timeout=30)
        self.assertEqual(p.returncode, 0)
        self.assertTrue(p.stdout.decode().startswith("Usage: relayctl dlq list"))
        self.assertFalse(os.path.exists(self.spool))

    def test_unknown_command_with_help_is_a_usage_error(self):
        p = subprocess.run([RELAYCTL, "-c", self.conf, "nosuch", "--help"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        self.assertEqual(p.returncode, 2)
        self.assertIn("unknown command 'nosuch'", p.stderr.decode())

    def test_relayd_help(self):
        for flag in ("--help", "-h"):
            p = subprocess.run([RELAYD, "-c", self.conf, flag], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=30)
            self.assertEqual(p.returncode, 0, p.stderr.decode())
            self.assertIn("Usage: relayd", p.stdout.decode())
            self.assertFalse(os.path.exists(self.spool))


if __name__ == "__main__":
    unittest.main()
