#!/bin/sh
# make systemd-check: the packaged unit under a real systemd (PID 1).
#
#   tools/systemd-check.sh DEB
#
# Unpacks the fresh Debian 12 base root of tools/fresh-check.sh, installs
# systemd and the package DEB in it, boots it with systemd-nspawn --boot
# (systemd as PID 1 in its own PID namespace; no host systemd or D-Bus is
# needed: --register=no --keep-unit), and then, inside the booted system:
#  - relayd.service is active (Type=notify: READY=1 was received),
#  - three rows piped into /run/relayd/relayd.sock as a member of group
#    relayd-producers are acknowledged (ok 3), a non-member is refused, and
#    relayctl status answers,
#  - systemctl reload (SIGHUP, RELOADING=1 then READY=1) leaves it active,
#  - the journal has relayd's start line,
#  - systemctl stop (STOPPING=1) ends it cleanly (ActiveState inactive, not failed).
# Needs root, apt (for systemd inside the root) and systemd-container on the
# host (installed with apt-get if missing). Exit 0 when every step passed.
set -eu
deb=${1:?usage: tools/systemd-check.sh DEB}
deb=$(cd "$(dirname "$deb")" && pwd)/$(basename "$deb")
cache=${FRESH_CACHE:-/var/tmp/relayd-fresh-base.tar}
root=${SYSTEMD_CHECK_ROOT:-/var/tmp/relayd-systemd-root}
log=${SYSTEMD_CHECK_LOG:-/var/tmp/relayd-systemd-check.log}
say() { printf 'systemd-check: %s\n' "$*" | tee -a "$log" >&2; }
die() { say "FAIL: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (chroot, systemd-nspawn)"
[ -f "$deb" ] || die "no package $deb (make deb)"
: >"$log"; : >"$log.boot"
if ! command -v systemd-nspawn >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd-container </dev/null >/dev/null ||
        die "could not install systemd-container"
fi
if [ ! -s "$cache" ]; then
    here=$(cd "$(dirname "$0")" && pwd)
    "$here/fresh-check.sh" base || die "could not make the base root"
    [ -s "$cache" ] || die "no base root $cache (run tools/fresh-check.sh once)"
fi

nspawn_pid=""
cleanup() {
    [ -n "$nspawn_pid" ] && kill "$nspawn_pid" 2>/dev/null && wait "$nspawn_pid" 2>/dev/null
    umount -l "$root/proc" 2>/dev/null || true
    rm -rf "$root"
}
trap cleanup EXIT INT TERM

rm -rf "$root"; mkdir -p "$root"
tar -C "$root" -xf "$cache"
cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
cp "$deb" "$root/root/relayd.deb"
say "installing systemd and $(basename "$deb") in a fresh Debian 12 root"
chroot "$root" /bin/sh -c 'mount -t proc proc /proc &&
    DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd systemd-sysv dbus python3 /root/relayd.deb;
    rc=$?; umount /proc; exit $rc' </dev/null >>"$log" 2>&1 || die "apt-get in the root failed; see $log"

say "booting it: systemd-nspawn --boot"
systemd-nspawn -q -D "$root" --boot --register=no --keep-unit --machine relayd-check \
    </dev/null >>"$log.boot" 2>&1 &
nspawn_pid=$!

# The container's PID 1 is systemd-nspawn's child.
leader=""
i=0
while [ -z "$leader" ] && [ $i -lt 300 ]; do
    leader=$(ps -o pid= --ppid "$nspawn_pid" 2>/dev/null | tr -d ' ' | head -n 1)
    [ -n "$leader" ] || { kill -0 "$nspawn_pid" 2>/dev/null || die "nspawn exited; see $log.boot"; sleep 0.1; }
    i=$((i + 1))
done
[ -n "$leader" ] || die "no container leader"
inside() { nsenter -t "$leader" -m -u -i -n -p -- /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }

i=0
while :; do
    st=$(inside systemctl is-system-running 2>/dev/null || true)
    case "$st" in running|degraded) break ;; esac
    i=$((i + 1)); [ $i -lt 600 ] || die "the container did not finish booting ($st)"
    sleep 0.1
done
say "booted (system $st); PID 1 is $(inside cat /proc/1/comm)"
[ "$(inside cat /proc/1/comm)" = systemd ] || die "PID 1 is not systemd"

prop() { inside systemctl show -p "$1" --value relayd.service; }
state="$(prop ActiveState)/$(prop SubState) Type=$(prop Type) NotifyAccess=$(prop NotifyAccess) User=$(prop User)"
say "relayd.service: $state"
[ "$(prop ActiveState)/$(prop SubState)/$(prop Type)" = active/running/notify ] ||
    die "relayd.service is not active, running and Type=notify: $state"

# Rows in through the packaged socket, as a producer in group relayd-producers.
send_rows() {   # $1: group
    inside setpriv --reuid=nobody --regid="$1" --clear-groups /usr/bin/python3 -c '
import socket
s = socket.socket(socket.AF_UNIX); s.connect("/run/relayd/relayd.sock")
s.sendall(b"".join(b"{\"n\":%d}\n" % i for i in range(3))); s.shutdown(socket.SHUT_WR)
r = b""
while not r.endswith(b"ok 3\n"):
    b = s.recv(100)
    if not b: break
    r += b
print(r.decode().strip())' 2>&1 | tail -n 1 || true
}
reply=$(send_rows relayd-producers)
say "3 rows into /run/relayd/relayd.sock as nobody:relayd-producers -> $reply"
[ "$reply" = "ok 3" ] || die "rows were not acknowledged"
reply=$(send_rows nogroup)
say "the same as nobody:nogroup (not a producer) -> $reply"
case "$reply" in *"Permission denied"*) ;; *) die "a non-producer was not refused: $reply";; esac
inside relayctl status >>"$log" 2>&1 || die "relayctl status failed"

inside systemctl reload relayd.service || { inside journalctl -u relayd.service --no-pager -o short-monotonic | tail -n 20 >&2; die "systemctl reload failed"; }
state=$(prop ActiveState)
say "after systemctl reload: $state"
[ "$state" = active ] || die "not active after reload"

inside journalctl -u relayd.service --no-pager -o cat >>"$log" 2>&1 || true
inside journalctl -u relayd.service --no-pager -o cat | grep -q 'relayd' || die "nothing from relayd in the journal"
say "journal: $(inside journalctl -u relayd.service --no-pager -o cat | grep -c .) lines from relayd.service"

inside systemctl stop relayd.service || die "systemctl stop failed"
state="$(prop ActiveState) Result=$(prop Result)"
say "after systemctl stop: $state"
[ "$state" = "inactive Result=success" ] || die "did not stop cleanly: $state"
inside systemctl poweroff >/dev/null 2>&1 || true
wait "$nspawn_pid" 2>/dev/null || true
nspawn_pid=""
say "PASS"
