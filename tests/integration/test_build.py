"""The build itself: the .deb is built the Debian way, and the tree says its license.

`make -n deb` prints the commands the package build would run, without
running them (the recursive make runs in -n mode too), so the flags that
dpkg-buildflags hands out can be checked on the real compile and link lines.
"""
import os
import re
import shutil
import subprocess
import unittest

ROOT = os.environ.get("RELAY_ROOT") or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class DebBuildFlags(unittest.TestCase):
    def setUp(self):
        if not shutil.which("dpkg-buildflags"):
            self.skipTest("dpkg-buildflags not installed (package dpkg-dev)")

    def lines(self, env_extra=None):
        env = dict(os.environ)
        env.pop("MAKEFLAGS", None)
        env.pop("MAKELEVEL", None)
        env.update(env_extra or {})
        p = subprocess.run(["make", "--no-print-directory", "-n", "-B", "deb"], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                           timeout=120)
        out = p.stdout.decode()
        self.assertEqual(p.returncode, 0, out[-3000:])
        return out.splitlines()

    def test_compile_and_link_lines_carry_dpkg_buildflags(self):
        cflags = subprocess.run(["dpkg-buildflags", "--get", "CFLAGS"], stdout=subprocess.PIPE,
                                env=dict(os.environ, DEB_BUILD_MAINT_OPTIONS="hardening=+all"),
                                cwd=ROOT).stdout.decode().split()
        lines = self.lines()
        compiles = [l for l in lines if re.match(r"^(cc|gcc)\b.* -c -o build-deb/obj/spool\.o ", l)]
        self.assertEqual(len(compiles), 1, "no compile line for build-deb/obj/spool.o")
        for flag in cflags:
            self.assertIn(flag, compiles[0].split(), "dpkg-buildflags CFLAGS %s missing" % flag)
        self.assertIn("-D_FORTIFY_SOURCE=2", compiles[0].split())   # from CPPFLAGS
        links = [l for l in lines if re.match(r"^(cc|gcc)\b.* -o build-deb/relayd ", l)]
        self.assertEqual(len(links), 1, "no link line for build-deb/relayd")
        self.assertIn("-Wl,-z,now", links[0].split(), "full RELRO (hardening=+all) missing")
        # Our own warnings are still there, after theirs
        self.assertIn("-Werror", compiles[0].split())

    def test_environment_cflags_are_honoured(self):
        # A packager's own choice (e.g. DEB_CFLAGS_APPEND) reaches the compiler
        lines = self.lines({"DEB_CFLAGS_APPEND": "-fno-strict-overflow-relayd-marker"})
        self.assertTrue(any("-fno-strict-overflow-relayd-marker" in l and "build-deb/obj/spool.o" in l
                            for l in lines), "DEB_CFLAGS_APPEND did not reach the compile line")


class License(unittest.TestCase):
    def test_license_and_debian_copyright_agree(self):
        with open(os.path.join(ROOT, "LICENSE")) as f:
            lic = f.read()
        self.assertTrue(lic.startswith("MIT License"), "LICENSE is not the MIT license")
        with open(os.path.join(ROOT, "packaging", "copyright")) as f:
            cp = f.read()
        self.assertTrue(cp.startswith("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/"))
        self.assertIn("\nFiles: *\n", cp)
        self.assertIn("\nLicense: Expat\n", cp)
        # The license paragraph of the copyright file is the LICENSE text (DEP-5 folding)
        body = cp.split("\nLicense: Expat\n")[-1]
        unfolded = "\n".join("" if l == " ." else l[1:] for l in body.rstrip("\n").split("\n"))
        self.assertIn(unfolded.strip(), lic)
        self.assertIn("Permission is hereby granted", unfolded)


if __name__ == "__main__":
    unittest.main()
