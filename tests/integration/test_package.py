"""The Debian package: build it, inspect it, install it, run the packaged relayd
as the relayd user from the packaged config against the local emulator, then
remove (the spool stays) and purge (everything goes).

Installing needs root and changes the machine (a package, a user, two groups,
/etc/relayd, /var/lib/relayd), as CI does on a throwaway machine; the test
refuses to run where relayd is already installed or its user or directories
exist, and purges what it installed even when it fails. There is no systemd
in CI: the test starts relayd itself, the way the unit would (user relayd,
/run/relayd created for it), and checks the unit with systemd-analyze verify
only where that exists.

The package is built from $RELAY_ROOT/build (the release build), whatever
RELAY_BUILD says: tests/run.py points RELAY_BUILD at the sanitizer build,
which is not what ships. RELAY_DEB_BUILD overrides it.
"""
import grp
import json
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import unittest

from relaytest import BQEMU, EVENTS_SCHEMA, PY, ROOT, Emulator, deliver_to, wait_for

PKG_BUILD = os.environ.get("RELAY_DEB_BUILD") or os.path.join(ROOT, "build")
MKDEB = os.path.join(ROOT, "tools", "mkdeb.sh")
UNIT = os.path.join(ROOT, "packaging", "relayd.service")
CONF = os.path.join(ROOT, "packaging", "relayd.conf")
DAEMONSET = os.path.join(ROOT, "packaging", "kubernetes", "relayd-daemonset.yaml")
TABLE = "proj.logs.events"
WANTS_LINK = "/etc/systemd/system/multi-user.target.wants/relayd.service"
MASK_LINK = "/etc/systemd/system/relayd.service"
DSH_STATE = ("/var/lib/systemd/deb-systemd-helper-enabled/relayd.service.dsh-also",
             "/var/lib/systemd/deb-systemd-helper-masked/relayd.service")
HELD = 50   # rows for a queue-only destination: still in the spool at remove

INSTALLED_FILES = {
    "/usr/sbin/relayd": 0o755,
    "/usr/bin/relayctl": 0o755,
    "/lib/systemd/system/relayd.service": 0o644,
    "/etc/relayd/relayd.conf": 0o644,
    "/usr/share/man/man8/relayd.8.gz": 0o644,
    "/usr/share/man/man1/relayctl.1.gz": 0o644,
    "/usr/share/man/man5/relayd.conf.5.gz": 0o644,
    "/usr/share/doc/relayd/README.md": 0o644,
    "/usr/share/doc/relayd/copyright": 0o644,
    "/usr/share/doc/relayd/docs/configuration.md": 0o644,
    "/usr/share/doc/relayd/docs/packaging.md": 0o644,
    "/usr/share/doc/relayd/examples/relayd-daemonset.yaml": 0o644,
    "/usr/share/doc/relayd/examples/client_example.c": 0o644,
    "/usr/include/relayclient.h": 0o644,
    "/usr/share/man/man3/relayclient.3.gz": 0o644,
}
# librelayclient, in Debian's multiarch library directory
MULTIARCH = subprocess.run(["cc", "-print-multiarch"], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL).stdout.decode().strip() or "x86_64-linux-gnu"
for _f in ("librelayclient.a", "librelayclient.so.1", "pkgconfig/relayclient.pc"):
    INSTALLED_FILES["/usr/lib/%s/%s" % (MULTIARCH, _f)] = 0o644
# Removed by "dpkg -r" (the conffile stays until purge).
PROGRAM_FILES = [f for f in INSTALLED_FILES if f != "/etc/relayd/relayd.conf"]


def run(cmd, timeout=300, check=True, **kw):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       stdin=subprocess.DEVNULL, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise AssertionError("%s exited %d:\n%s\n%s" % (" ".join(cmd), p.returncode,
                                                        p.stdout.decode(errors="replace"),
                                                        p.stderr.decode(errors="replace")))
    return p


def version():
    with open(os.path.join(ROOT, "include", "version.h")) as f:
        return re.search(r'#define\s+RELAY_VERSION\s+"([^"]+)"', f.read()).group(1)


def dpkg_status(pkg="relayd"):
    p = run(["dpkg-query", "-W", "-f=${Status}", pkg], check=False)
    return p.stdout.decode().strip() if p.returncode == 0 else ""


def user_exists(name):
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def group_exists(name):
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def build_binary_ok():
    return os.access(os.path.join(PKG_BUILD, "relayd"), os.X_OK) and \
        os.access(os.path.join(PKG_BUILD, "relayctl"), os.X_OK)


def ping(path):
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1)
            s.connect(path)
            s.sendall(b"ping\n")
            return b"pong" in s.recv(100)
    except OSError:
        return False


def config_with(text, section, keys):
    """text with keys (a dict) added right under the [section] header."""
    lines = text.splitlines()
    i = lines.index("[%s]" % section)
    return "\n".join(lines[:i + 1] + ["%s = %s" % kv for kv in keys.items()] + lines[i + 1:]) + "\n"


class StaticFilesTest(unittest.TestCase):
    """Checks that need neither root nor an installation."""

    def test_unit_verifies(self):
        if not shutil.which("systemd-analyze"):
            self.skipTest("systemd-analyze not installed (package systemd); unit not verified")
        if not build_binary_ok():
            self.skipTest("no %s/relayd: run make" % PKG_BUILD)
        # verify checks that ExecStart= exists: point it at the built binary.
        d = tempfile.mkdtemp(prefix="relayd-unit-")
        self.addCleanup(shutil.rmtree, d, ignore_errors=True)
        with open(UNIT) as f:
            text = f.read().replace("/usr/sbin/relayd", os.path.join(PKG_BUILD, "relayd"))
        path = os.path.join(d, "relayd.service")
        with open(path, "w") as f:
            f.write(text)
        p = run(["systemd-analyze", "verify", "--man=no", path], check=False, cwd=d)
        out = (p.stdout + p.stderr).decode(errors="replace")
        self.assertEqual(p.returncode, 0, out)
        self.assertNotIn("relayd.service", out, "systemd-analyze has remarks:\n" + out)

    def test_unit_has_the_expected_settings(self):
        with open(UNIT) as f:
            lines = [l.strip() for l in f if l.strip() and not l.lstrip().startswith("#")]
        kv = {}
        for l in lines:
            if "=" in l and not l.startswith("["):
                k, _, v = l.partition("=")
                kv.setdefault(k, []).append(v)
        one = {k: v[-1] for k, v in kv.items()}
        self.assertEqual(one["Type"], "notify")
        self.assertEqual(one["WatchdogSec"], "30s")
        self.assertEqual(one["ExecStart"], "/usr/sbin/relayd --config /etc/relayd/relayd.conf")
        self.assertIn('/bin/sh -c \'kill -HUP "$1"\' relayd-reload $MAINPID', kv["ExecReload"])
        self.assertEqual((one["User"], one["Group"]), ("relayd", "relayd"))
        self.assertEqual(one["RuntimeDirectory"], "relayd")
        self.assertEqual(one["StateDirectory"], "relayd")
        self.assertEqual(one["StateDirectoryMode"], "0700")
        self.assertEqual(one["CapabilityBoundingSet"], "")
        self.assertEqual(one["UMask"], "0077")
        self.assertEqual(one["SystemCallFilter"], "@system-service")
        self.assertEqual(one["RestrictAddressFamilies"], "AF_UNIX AF_INET AF_INET6")
        for k in ("ProtectHome", "PrivateTmp", "NoNewPrivileges", "PrivateDevices",
                  "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs",
                  "ProtectControlGroups", "RestrictNamespaces", "LockPersonality",
                  "MemoryDenyWriteExecute"):
            self.assertEqual(one.get(k), "yes", k)
        self.assertEqual(one["ProtectSystem"], "strict")
        self.assertEqual(one["Restart"], "on-failure")

    def test_packaged_config_and_its_commented_examples_validate(self):
        if not build_binary_ok():
            self.skipTest("no %s/relayd: run make" % PKG_BUILD)
        relayd = os.path.join(PKG_BUILD, "relayd")
        with open(CONF) as f:
            text = f.read()
        self.assertRegex(text, r"(?m)^socket_group = relayd-producers$")
        self.assertRegex(text, r"(?m)^dir = /var/lib/relayd$")
        self.assertRegex(text, r"(?m)^socket = /run/relayd/relayd.sock$")
        self.assertRegex(text, r"(?m)^control_socket = /run/relayd/relayd.ctl$")
        d = tempfile.mkdtemp(prefix="relayd-conf-")
        self.addCleanup(shutil.rmtree, d, ignore_errors=True)
        # The group exists only once the package is installed; gid 0 stands in.
        if not group_exists("relayd-producers"):
            text = text.replace("socket_group = relayd-producers", "socket_group = 0")
        as_shipped = os.path.join(d, "shipped.conf")
        with open(as_shipped, "w") as f:
            f.write(text)
        p = run([relayd, "--check-config", "-c", as_shipped], check=False)
        self.assertEqual(p.returncode, 0, p.stderr.decode())
        self.assertIn(b"1 destination", p.stdout)
        # Every commented "#key = value" line must be a real key: uncomment all.
        examples = re.sub(r"(?m)^#(\w+ = \S.*)$", r"\1", text)
        self.assertNotEqual(examples, text)
        self.assertRegex(examples, r"(?m)^project = ")
        with_examples = os.path.join(d, "examples.conf")
        with open(with_examples, "w") as f:
            f.write(examples)
        # The examples name files under /etc/relayd that a start would open:
        # --check-config must refuse them while they are missing, naming the line.
        p = run([relayd, "--check-config", "-c", with_examples], check=False)
        if not os.path.exists("/etc/relayd/key.json"):
            self.assertEqual(p.returncode, 3, p.stderr.decode())
            line = examples.splitlines().index("credentials = /etc/relayd/key.json") + 1
            self.assertIn("examples.conf:%d: [destination events] credentials: "
                          "/etc/relayd/key.json: cannot open" % line, p.stderr.decode())
        # With those files in place (a generated key, the events schema) they validate.
        etc = os.path.join(d, "etc")
        os.mkdir(etc)
        key = os.path.join(etc, "key.json")
        subprocess.run([PY, BQEMU, "gen-key", "--dir", os.path.join(d, "emu"), "--out", key,
                        "--token-uri", "https://127.0.0.1:9/token"], check=True,
                       stdout=subprocess.DEVNULL)
        os.chmod(key, 0o600)
        with open(os.path.join(etc, "events.schema.json"), "w") as f:
            json.dump(EVENTS_SCHEMA, f)
        self.assertIn("/etc/relayd/events.schema.json", examples)
        with open(with_examples, "w") as f:
            f.write(examples.replace("/etc/relayd/", etc + "/"))
        p = run([relayd, "--check-config", "-c", with_examples], check=False)
        self.assertEqual(p.returncode, 0, p.stderr.decode())

    def test_daemonset_is_valid_yaml_with_a_valid_config(self):
        try:
            import yaml
        except ImportError:
            self.skipTest("python3-yaml not installed; the DaemonSet YAML is not checked")
        with open(DAEMONSET) as f:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
        by_kind = {d["kind"]: d for d in docs}
        self.assertIn("DaemonSet", by_kind)
        self.assertIn("ConfigMap", by_kind)
        for d in docs:
            self.assertIn("apiVersion", d)
            self.assertIn("name", d["metadata"])
        pod = by_kind["DaemonSet"]["spec"]["template"]["spec"]
        self.assertGreater(pod["terminationGracePeriodSeconds"], 5)
        self.assertTrue(pod["securityContext"]["runAsNonRoot"])
        [c] = pod["containers"]
        self.assertTrue(c["securityContext"]["readOnlyRootFilesystem"])
        self.assertFalse(c["securityContext"]["allowPrivilegeEscalation"])
        for probe in ("livenessProbe", "readinessProbe"):
            self.assertIn("exec", c[probe], probe)
        for r in ("requests", "limits"):
            self.assertIn("memory", c["resources"][r])
        env = {e["name"]: e["value"] for e in c["env"]}
        key = env["GOOGLE_APPLICATION_CREDENTIALS"]
        mounts = {m["name"]: m for m in c["volumeMounts"]}
        vols = {v["name"]: v for v in pod["volumes"]}
        secret_mount = [m for m in c["volumeMounts"] if "secret" in vols[m["name"]]]
        self.assertEqual(len(secret_mount), 1)
        self.assertTrue(secret_mount[0]["readOnly"])
        self.assertTrue(key.startswith(secret_mount[0]["mountPath"] + "/"))
        host = {v["hostPath"]["path"]: n for n, v in vols.items() if "hostPath" in v}
        self.assertEqual(mounts[host["/var/lib/relayd"]]["mountPath"], "/var/lib/relayd")
        self.assertEqual(mounts[host["/run/relayd"]]["mountPath"], "/run/relayd")
        cm = vols[[n for n, v in vols.items() if "configMap" in v][0]]["configMap"]["name"]
        self.assertEqual(cm, by_kind["ConfigMap"]["metadata"]["name"])
        # The ConfigMap's relayd.conf must be accepted by relayd.
        if not build_binary_ok():
            return
        d = tempfile.mkdtemp(prefix="relayd-k8s-")
        self.addCleanup(shutil.rmtree, d, ignore_errors=True)
        path = os.path.join(d, "relayd.conf")
        with open(path, "w") as f:
            f.write(by_kind["ConfigMap"]["data"]["relayd.conf"])
        p = run([os.path.join(PKG_BUILD, "relayd"), "--check-config", "-c", path], check=False)
        self.assertEqual(p.returncode, 0, p.stderr.decode())


class PackageTest(unittest.TestCase):
    """Build, install, run, remove, purge. One test: the steps depend on each other."""

    def setUp(self):
        if os.geteuid() != 0:
            self.skipTest("needs root (installs the package with dpkg -i)")
        for tool in ("dpkg", "dpkg-deb", "dpkg-query", "setpriv"):
            if not shutil.which(tool):
                self.skipTest("%s not found" % tool)
        if not build_binary_ok():
            self.skipTest("no %s/relayd: run make" % PKG_BUILD)
        if dpkg_status():
            self.skipTest("a relayd package is already known to dpkg here (%s); "
                          "not touching it" % dpkg_status())
        for what, there in (("user relayd", user_exists("relayd")),
                            ("group relayd", group_exists("relayd")),
                            ("group relayd-producers", group_exists("relayd-producers")),
                            ("/etc/relayd", os.path.exists("/etc/relayd")),
                            ("/var/lib/relayd", os.path.exists("/var/lib/relayd")),
                            ("/run/relayd", os.path.exists("/run/relayd"))):
            if there:
                self.skipTest("%s already exists on this machine; the test would delete it"
                              % what)
        self.systemd = os.path.isdir("/run/systemd/system")
        self.tmp = tempfile.mkdtemp(prefix="relayd-pkg-")
        os.chmod(self.tmp, 0o755)   # relayd and the producer read files below it
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        self.proc = None
        self.producer = "relaydtp%d" % os.getpid()
        # Runs last (cleanups are LIFO): whatever happened, leave nothing behind.
        self.addCleanup(self.purge_everything)

    def purge_everything(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if dpkg_status():
            run(["dpkg", "--purge", "relayd"], check=False)
        if user_exists(self.producer):
            run(["userdel", self.producer], check=False)
        shutil.rmtree("/run/relayd", ignore_errors=True)

    # ---------------------------------------------------------------- steps

    def build_deb(self):
        out = os.path.join(self.tmp, "out")
        p = run([MKDEB, PKG_BUILD, out])
        deb = p.stdout.decode().strip().splitlines()[-1]
        arch = run(["dpkg", "--print-architecture"]).stdout.decode().strip()
        self.assertEqual(os.path.basename(deb), "relayd_%s_%s.deb" % (version(), arch))
        self.assertTrue(os.path.isfile(deb))
        return deb, arch

    def check_contents(self, deb):
        listing = run(["dpkg-deb", "-c", deb]).stdout.decode().splitlines()
        entries = {}
        for line in listing:
            perms, owner, _size, _date, _time, name = line.split(None, 5)
            name = name.split(" -> ")[0]            # a symbolic link: its own name
            entries[name[1:].rstrip("/") or "/"] = (perms, owner)
        for path, mode in INSTALLED_FILES.items():
            self.assertIn(path, entries, "missing from the package")
            perms, owner = entries[path]
            self.assertEqual(owner, "root/root", path)
            self.assertEqual(perms, stat.filemode(stat.S_IFREG | mode), path)
        self.assertFalse(any(n.startswith("/var/lib/relayd") for n in entries),
                         "the spool directory must not belong to the package "
                         "(dpkg -r would delete it)")
        for page in ("man8/relayd.8.gz", "man1/relayctl.1.gz", "man5/relayd.conf.5.gz",
                     "man3/relayclient.3.gz"):
            self.assertIn("/usr/share/man/" + page, entries)
        self.assertEqual(entries.get("/usr/lib/%s/librelayclient.so" % MULTIARCH, ("",))[0][0], "l",
                         "the development symlink librelayclient.so")

    def check_control(self, deb, arch):
        fields = {}
        for f in ("Package", "Version", "Architecture", "Maintainer", "Depends",
                  "Description", "Installed-Size"):
            fields[f] = run(["dpkg-deb", "-f", deb, f]).stdout.decode().strip()
        self.assertEqual(fields["Package"], "relayd")
        self.assertEqual(fields["Version"], version())
        self.assertEqual(fields["Architecture"], arch)
        self.assertTrue(fields["Maintainer"])
        self.assertTrue(fields["Description"])
        self.assertGreater(int(fields["Installed-Size"]), 100)
        depends = {d.split()[0] for d in fields["Depends"].split(", ")}
        self.assertIn("adduser", depends)
        self.assertIn("libc6", depends)
        # Every library relayd and relayctl link to directly comes from a
        # package in Depends.
        for lib_pkg in self.needed_packages():
            self.assertIn(lib_pkg, depends, "Depends: " + fields["Depends"])
        ctl = os.path.join(self.tmp, "DEBIAN")
        run(["dpkg-deb", "-e", deb, ctl])
        with open(os.path.join(ctl, "conffiles")) as f:
            self.assertEqual(f.read().split(), ["/etc/relayd/relayd.conf"])
        for s in ("postinst", "prerm", "postrm"):
            self.assertTrue(os.access(os.path.join(ctl, s), os.X_OK), s)
        return fields["Depends"]

    def needed_packages(self):
        binaries = [os.path.join(PKG_BUILD, b) for b in ("relayd", "relayctl")]
        if shutil.which("objdump"):
            dump = run(["objdump", "-p"] + binaries).stdout.decode()
            needed = set(re.findall(r"^\s*NEEDED\s+(\S+)", dump, re.M))
        else:
            needed = {"liblmdb.so.0", "libjansson.so.4", "libcurl.so.4", "libssl.so.3"}
        paths = {}
        for line in run(["ldd"] + binaries).stdout.decode().splitlines():
            m = re.match(r"\s*(\S+) => (/\S+)", line)
            if m:
                paths[m.group(1)] = m.group(2)
        pkgs = set()
        for lib in needed:
            self.assertIn(lib, paths, "ldd does not resolve " + lib)
            path = paths[lib]
            for cand in (path, "/usr" + path, os.path.realpath(path)):
                p = run(["dpkg", "-S", cand], check=False)
                if p.returncode == 0:
                    pkgs.add(p.stdout.decode().split(":")[0].strip())
                    break
            else:
                self.fail("no package owns " + path)
        return pkgs

    def install(self, deb):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        run(["dpkg", "-i", deb], env=env)
        self.assertEqual(dpkg_status(), "install ok installed")

    def check_installed(self):
        for path, mode in INSTALLED_FILES.items():
            st = os.stat(path)
            self.assertEqual(stat.S_IMODE(st.st_mode), mode, path)
            self.assertEqual((st.st_uid, st.st_gid), (0, 0), path)
        for page in ("/usr/share/man/man8/relayd.8.gz", "/usr/share/man/man1/relayctl.1.gz",
                     "/usr/share/man/man5/relayd.conf.5.gz"):
            run(["gzip", "-t", page])
        pw = pwd.getpwnam("relayd")
        self.assertLess(pw.pw_uid, 1000, "relayd must be a system user")
        self.assertEqual(pw.pw_dir, "/var/lib/relayd")
        self.assertIn(pw.pw_shell, ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false"))
        self.assertEqual(grp.getgrgid(pw.pw_gid).gr_name, "relayd")
        producers = grp.getgrnam("relayd-producers")
        self.assertLess(producers.gr_gid, 1000)
        self.assertIn("relayd", producers.gr_mem)
        st = os.stat("/var/lib/relayd")
        self.assertTrue(stat.S_ISDIR(st.st_mode))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o700)
        self.assertEqual((st.st_uid, st.st_gid), (pw.pw_uid, pw.pw_gid))
        p = run(["dpkg-query", "-W", "-f=${Conffiles}", "relayd"])
        self.assertIn("/etc/relayd/relayd.conf", p.stdout.decode())
        p = run(["/usr/sbin/relayd", "--check-config", "-c", "/etc/relayd/relayd.conf"],
                check=False)
        self.assertEqual(p.returncode, 0, p.stderr.decode())
        self.assertEqual(run(["/usr/sbin/relayd", "--version"]).stdout.decode().strip(),
                         "relayd " + version())
        self.check_enabled()
        if shutil.which("systemd-analyze"):
            p = run(["systemd-analyze", "verify", "--man=no",
                     "/lib/systemd/system/relayd.service"], check=False, cwd=self.tmp)
            out = (p.stdout + p.stderr).decode(errors="replace")
            self.assertEqual(p.returncode, 0, out)
        if self.systemd:
            # A machine with systemd: postinst started it. Stop it so that the
            # test can run its own relayd on the same spool.
            run(["systemctl", "is-active", "--quiet", "relayd.service"])
            run(["systemctl", "stop", "relayd.service"])

    def check_enabled(self):
        if shutil.which("deb-systemd-helper"):
            # postinst enables the unit (offline too), and it is not masked.
            self.assertTrue(os.path.islink(WANTS_LINK), WANTS_LINK)
            self.assertFalse(os.path.lexists(MASK_LINK), MASK_LINK + " (masked)")

    def start_relayd(self, emu):
        """relayd as the unit would run it: user relayd, /run/relayd made for it."""
        pw = pwd.getpwnam("relayd")
        # Files relayd must read: the emulator's key and CA, and the config.
        conf_dir = os.path.join(self.tmp, "conf")
        os.mkdir(conf_dir)
        os.chmod(conf_dir, 0o750)
        os.chown(conf_dir, 0, pw.pw_gid)
        key = os.path.join(conf_dir, "key.json")
        ca = os.path.join(conf_dir, "ca.pem")
        shutil.copy(emu.key, key)
        shutil.copy(emu.ca, ca)
        for f in (key, ca):
            os.chmod(f, 0o640)
            os.chown(f, 0, pw.pw_gid)
        with open("/etc/relayd/relayd.conf") as f:
            packaged = f.read()
        dest = deliver_to(emu, credentials=key, ca_file=ca)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.metrics_port = s.getsockname()[1]
        text = config_with(packaged, "destination events", dest)
        text = config_with(text, "relayd", {"metrics_listen": "127.0.0.1:%d" % self.metrics_port})
        conf = os.path.join(conf_dir, "relayd.conf")
        with open(conf, "w") as f:
            f.write(text + "\n[destination held]\n")
        os.chmod(conf, 0o644)
        # systemd's RuntimeDirectory=relayd, RuntimeDirectoryMode=0755
        os.mkdir("/run/relayd", 0o755)
        os.chmod("/run/relayd", 0o755)
        os.chown("/run/relayd", pw.pw_uid, pw.pw_gid)
        self.log = os.path.join(self.tmp, "relayd.log")
        logf = open(self.log, "ab")
        self.addCleanup(logf.close)
        cmd = ["setpriv", "--reuid=relayd", "--regid=relayd", "--init-groups",
               "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--",
               "/usr/sbin/relayd", "-c", conf]
        self.proc = subprocess.Popen(cmd, stdout=logf, stderr=logf, stdin=subprocess.DEVNULL,
                                     preexec_fn=lambda: os.umask(0o077))
        wait_for(lambda: ping("/run/relayd/relayd.ctl") or self.proc.poll() is not None, 20,
                 "relayd to answer on /run/relayd/relayd.ctl")
        self.assertIsNone(self.proc.poll(), "relayd exited:\n" + self.read_log())
        with open("/proc/%d/status" % self.proc.pid) as f:
            uids = [l.split()[1:] for l in f if l.startswith(("Uid:", "Gid:"))]
        self.assertEqual(uids[0], [str(pw.pw_uid)] * 4, "relayd runs as relayd")
        self.assertEqual(uids[1], [str(pw.pw_gid)] * 4)
        producers = grp.getgrnam("relayd-producers").gr_gid
        for sock in ("/run/relayd/relayd.sock", "/run/relayd/relayd.ctl"):
            st = os.stat(sock)
            self.assertTrue(stat.S_ISSOCK(st.st_mode), sock)
            self.assertEqual(stat.S_IMODE(st.st_mode), 0o660, sock)
            self.assertEqual((st.st_uid, st.st_gid), (pw.pw_uid, producers), sock)

    def read_log(self):
        with open(self.log, "rb") as f:
            return f.read().decode(errors="replace")

    def as_user(self, user, cmd, **kw):
        """Runs cmd as user with that user's groups, like a login would."""
        return run(["setpriv", "--reuid=" + user, "--regid=" + str(pwd.getpwnam(user).pw_gid),
                    "--init-groups", "--"] + cmd, **kw)

    def send_rows_as_a_producer(self, emu, n):
        run(["adduser", "--system", "--quiet", "--no-create-home", "--ingroup", "nogroup",
             self.producer])
        run(["adduser", "--quiet", self.producer, "relayd-producers"])
        rows = os.path.join(self.tmp, "rows.ndjson")
        with open(rows, "w") as f:
            for i in range(n):
                f.write(json.dumps({"i": i, "msg": "packaged row %d" % i}) + "\n")
        os.chmod(rows, 0o644)
        # The packaged relayctl with its default config (/etc/relayd/relayd.conf).
        p = self.as_user(self.producer, ["/usr/bin/relayctl", "send", rows], check=False)
        self.assertEqual(p.returncode, 0, (p.stdout + p.stderr).decode() + self.read_log())
        p = self.as_user(self.producer, ["/usr/bin/relayctl", "status"], check=False)
        self.assertEqual(p.returncode, 0, (p.stdout + p.stderr).decode())
        # Someone outside relayd-producers cannot even connect.
        p = self.as_user("nobody", ["/usr/bin/relayctl", "send", rows], check=False)
        self.assertNotEqual(p.returncode, 0, "nobody could send rows")
        # Rows for a destination that only queues: they stay in the spool.
        held = os.path.join(self.tmp, "held.ndjson")
        with open(held, "w") as f:
            for i in range(HELD):
                f.write(json.dumps({"held": i}) + "\n")
        os.chmod(held, 0o644)
        p = self.as_user(self.producer, ["/usr/bin/relayctl", "send", "--table", "held", held],
                         check=False)
        self.assertEqual(p.returncode, 0, (p.stdout + p.stderr).decode())
        wait_for(lambda: emu.count(TABLE) >= n, 60, "%d rows at the emulator" % n,
                 interval=0.1)
        got = sorted(r["json"]["i"] for r in emu.rows(TABLE))
        self.assertEqual(got, list(range(n)))
        # A program built against the installed librelayclient (pkg-config, the
        # shared library found by the dynamic linker) sends rows as the producer.
        ex = os.path.join(self.tmp, "client_example")
        flags = run(["pkg-config", "--cflags", "--libs", "relayclient"]).stdout.decode().split()
        self.assertIn("-lrelayclient", flags)
        run(["cc", "-o", ex, "/usr/share/doc/relayd/examples/client_example.c"] + flags)
        os.chmod(ex, 0o755)
        self.assertRegex(run(["ldd", ex]).stdout.decode(),
                         r"librelayclient\.so\.1 => (/usr)?/lib/%s/librelayclient\.so\.1" % MULTIARCH)
        exrows = os.path.join(self.tmp, "example.ndjson")
        with open(exrows, "w") as f:
            f.write("".join(json.dumps({"i": n + i, "msg": "from librelayclient"}) + "\n"
                            for i in range(20)))
        os.chmod(exrows, 0o644)
        p = self.as_user(self.producer, ["sh", "-c", '"$0" /run/relayd/relayd.sock < "$1"', ex,
                                         exrows], check=False)
        self.assertEqual(p.returncode, 0, (p.stdout + p.stderr).decode())
        self.assertIn("20 rows durable", p.stdout.decode())
        wait_for(lambda: emu.count(TABLE) >= n + 20, 60, "the example's rows at the emulator",
                 interval=0.1)
        for f in ("data.mdb", "lock.mdb"):
            st = os.stat(os.path.join("/var/lib/relayd", f))
            self.assertEqual(st.st_uid, pwd.getpwnam("relayd").pw_uid, f)
            self.assertEqual(stat.S_IMODE(st.st_mode) & 0o077, 0, f + " is private")

    def http_get(self, path):
        import urllib.error
        import urllib.request
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d%s" % (self.metrics_port, path),
                                        timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def daemonset_probes(self):
        try:
            import yaml
        except ImportError:
            return {}
        with open(DAEMONSET) as f:
            ds = [d for d in yaml.safe_load_all(f) if d and d["kind"] == "DaemonSet"][0]
        [c] = ds["spec"]["template"]["spec"]["containers"]
        return {k: c[k]["exec"]["command"] for k in ("livenessProbe", "readinessProbe")}

    def check_health(self, up):
        """The DaemonSet's exec probes, run as relayd, pass iff relayd is up."""
        for name, cmd in self.daemonset_probes().items():
            p = self.as_user("relayd", cmd, check=False)
            out = (p.stdout + p.stderr).decode(errors="replace")
            if up:
                self.assertEqual(p.returncode, 0, "%s fails: %s" % (name, out))
            else:
                self.assertNotEqual(p.returncode, 0, "%s passes with relayd down" % name)
        if up:
            self.assertEqual(self.http_get("/healthz")[0], 200)
            self.assertEqual(self.http_get("/readyz"), (200, "ready\n"))

    def stop_relayd(self):
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(30)
        self.assertEqual(rc, 0, self.read_log())
        self.check_health(up=False)
        shutil.rmtree("/run/relayd", ignore_errors=True)   # RuntimeDirectory cleanup

    def reinstall_keeps_edits(self, deb):
        with open("/etc/relayd/relayd.conf", "a") as f:
            f.write("# local edit\n")
        self.install(deb)   # same version again: the upgrade path
        with open("/etc/relayd/relayd.conf") as f:
            self.assertTrue(f.read().endswith("# local edit\n"), "conffile edit lost")
        st = os.stat("/var/lib/relayd/data.mdb")
        self.assertEqual(st.st_uid, pwd.getpwnam("relayd").pw_uid)

    def held_rows(self):
        p = self.as_user("relayd", ["/usr/bin/relayctl", "-d", "/var/lib/relayd", "spool", "dump",
                                    "--table", "held"], check=False)
        self.assertEqual(p.returncode, 0, p.stderr.decode())
        return [json.loads(l) for l in p.stdout.splitlines() if l.strip()]

    def reinstall_after_remove(self, deb):
        """Reinstalling picks up where remove left: same spool, same rows."""
        self.install(deb)
        self.check_enabled()
        self.assertEqual(len(self.held_rows()), HELD, "rows queued before remove are lost")
        with open("/etc/relayd/relayd.conf") as f:
            self.assertTrue(f.read().endswith("# local edit\n"), "conffile edit lost")

    def remove(self):
        if self.systemd:
            run(["systemctl", "stop", "relayd.service"], check=False)
        run(["dpkg", "--remove", "relayd"])
        self.assertEqual(dpkg_status(), "deinstall ok config-files")
        for path in PROGRAM_FILES:
            self.assertFalse(os.path.exists(path), path + " is still there after remove")
        self.assertTrue(os.path.exists("/var/lib/relayd/data.mdb"),
                        "remove must keep the spool (acknowledged rows)")
        if shutil.which("deb-systemd-helper"):
            self.assertTrue(os.path.islink(WANTS_LINK), "remove keeps the enable link")
            self.assertEqual(os.path.realpath(MASK_LINK), "/dev/null", "masked while removed")
        self.assertTrue(os.path.exists("/etc/relayd/relayd.conf"), "remove keeps the conffile")
        self.assertTrue(user_exists("relayd"))

    def purge(self):
        run(["dpkg", "--purge", "relayd"])
        self.assertEqual(dpkg_status(), "")
        for path in ("/etc/relayd", "/var/lib/relayd", "/run/relayd", WANTS_LINK, MASK_LINK,
                     *DSH_STATE):
            self.assertFalse(os.path.lexists(path), path + " is still there after purge")
        self.assertFalse(user_exists("relayd"), "user relayd is still there after purge")
        self.assertFalse(group_exists("relayd"), "group relayd is still there after purge")
        self.assertFalse(group_exists("relayd-producers"), "group relayd-producers is still there")

    # ---------------------------------------------------------------- the test

    def test_build_install_run_remove_purge(self):
        deb, arch = self.build_deb()
        self.check_contents(deb)
        depends = self.check_control(deb, arch)
        print("\n  Depends: " + depends)
        missing = [d.split()[0] for d in depends.split(", ")
                   if dpkg_status(d.split()[0]) != "install ok installed"]
        if missing:
            self.skipTest("cannot install the package here: %s not installed "
                          "(apt-get install %s)" % (", ".join(missing), " ".join(missing)))
        self.install(deb)
        self.check_installed()
        emu = Emulator(self).start()
        emu.create_table(TABLE, EVENTS_SCHEMA)
        self.start_relayd(emu)
        self.check_health(up=True)
        self.send_rows_as_a_producer(emu, 500)
        self.stop_relayd()
        self.assertEqual(len(self.held_rows()), HELD)
        self.reinstall_keeps_edits(deb)
        self.remove()
        self.reinstall_after_remove(deb)
        self.remove()
        self.purge()


def tearDownModule():
    # The emulator's test CA (relaytest caches one per process).
    import relaytest
    d = relaytest._TLS_CACHE.pop("dir", None)
    if d:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
