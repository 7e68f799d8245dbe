#!/bin/sh
# make fresh-check: the README's two commands on a clean Debian 12, first try.
#
#   tools/fresh-check.sh [run|test|both] [REV]
#
# A clean machine, as closely as this one allows: a Debian 12 (bookworm)
# root made with debootstrap --variant=minbase, plus only what a newcomer
# needs to type the README's commands (make, git, ca-certificates). No -dev
# package, no pkg-config, no build/, no Python modules, no socat. A fresh
# clone of REV (default HEAD; uncommitted changes are not in it) goes into
# that root, and the README's command runs there under chroot, as root, with
# no standard input, as CI runs it:
#
#   run   `make run` in the background; once it says how to pipe rows in,
#         three rows go into its socket, the acks are read, and the rows are
#         looked up in the bundled emulator's table; then Ctrl-C (SIGINT).
#   test  `make test`; passes only if it exits 0 and its last line is
#         "N passed, 0 failed".
#   both  run, then test, each in a root of its own (default).
#   base  only make the base root tarball (tools/systemd-check.sh uses it).
#
# The base root is made once and kept as a tarball ($FRESH_CACHE, default
# /var/tmp/relayd-fresh-base.tar); each check unpacks a new copy of it, so
# nothing from an earlier check survives. Transcripts: $FRESH_OUT (default
# /var/tmp/relayd-fresh/<mode>.log). Needs root (debootstrap, chroot, mounts)
# and Debian's mirror; debootstrap is installed with apt-get if missing.
# Exit 0 when every mode passed.
set -eu
mode=${1:-both}
rev=${2:-HEAD}
top=$(cd "$(dirname "$0")/.." && pwd)
cache=${FRESH_CACHE:-/var/tmp/relayd-fresh-base.tar}
work=${FRESH_WORK:-/var/tmp/relayd-fresh}
mirror=${FRESH_MIRROR:-http://deb.debian.org/debian}
py=/usr/bin/python3

say() { printf 'fresh-check: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

case "$mode" in run|test|both|base) ;; *) die "usage: tools/fresh-check.sh [run|test|both|base] [REV]";; esac
[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot and mounts); run: sudo make fresh-check"
commit=$(git -C "$top" rev-parse --verify "$rev^{commit}") || die "no such revision: $rev"
mkdir -p "$work"

if [ ! -s "$cache" ]; then
    if ! command -v debootstrap >/dev/null 2>&1; then
        say "installing debootstrap (apt-get)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap </dev/null >/dev/null ||
            die "could not install debootstrap with apt-get"
    fi
    say "making the base root (debootstrap bookworm minbase + make git ca-certificates), once"
    rm -rf "$work/base"
    debootstrap --variant=minbase --include=make,git,ca-certificates bookworm "$work/base" "$mirror" \
        >"$work/debootstrap.log" 2>&1 || die "debootstrap failed; see $work/debootstrap.log"
    tar -C "$work/base" -cf "$cache.tmp" . && mv "$cache.tmp" "$cache"
    rm -rf "$work/base"
fi

root=""
mounted=""
cleanup_root() {
    [ -n "$root" ] || return 0
    for m in $mounted; do umount -l "$root$m" 2>/dev/null || true; done
    mounted=""
    rm -rf "$root"
    root=""
}
trap 'cleanup_root' EXIT INT TERM

new_root() {   # $1: name
    root="$work/$1-root"
    rm -rf "$root"
    mkdir -p "$root"
    tar -C "$root" -xf "$cache"
    cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
    # What Debian's installer writes and debootstrap does not: without it,
    # "localhost" does not resolve in the root, unlike on any real machine.
    printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
    for m in /proc /sys /dev /dev/pts /dev/shm; do
        mkdir -p "$root$m"
        case $m in
            /proc) mount -t proc proc "$root/proc" ;;
            /sys) mount -t sysfs sysfs "$root/sys" ;;
            /dev) mount --bind /dev "$root/dev" ;;
            /dev/pts) mount -t devpts devpts "$root/dev/pts" ;;
            /dev/shm) mount -t tmpfs tmpfs "$root/dev/shm" ;;
        esac
        mounted="$m $mounted"
    done
    mkdir -p "$root/src"
    git clone -q "$top" "$root/src/relayd"
    git -C "$root/src/relayd" checkout -q "$commit"
    # What a newcomer's machine does not have: check the root really is bare.
    for f in /usr/bin/pkg-config /usr/bin/protoc-c /usr/include/lmdb.h /usr/bin/socat /usr/bin/gcc; do
        [ ! -e "$root$f" ] || die "the fresh root already has $f"
    done
}

in_root() {   # runs a shell command inside the root, no stdin
    chroot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 /bin/sh -c "$1" </dev/null
}

check_run() {
    log="$work/run.log"
    new_root run
    say "make run in a fresh root at $(git -C "$top" log -1 --format='%h %s' "$commit")"
    sock="$root/src/relayd/run/relayd.sock"
    setsid chroot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 /bin/sh -c 'cd /src/relayd && exec make run' </dev/null >"$log" 2>&1 &
    pid=$!
    ok=0
    i=0
    while [ $i -lt 1800 ]; do          # 30 minutes for apt and the build
        if ! kill -0 $pid 2>/dev/null; then break; fi
        if grep -q '^Press Ctrl-C to stop' "$log" && [ -S "$sock" ]; then ok=1; break; fi
        sleep 1; i=$((i + 1))
    done
    if [ $ok = 1 ]; then
        # Three rows in, as the README says (a socket, one JSON object a line).
        $py - "$sock" >>"$log" 2>&1 <<'PY' || ok=0
import socket, sys, time
deadline = time.monotonic() + 30
while True:
    try:
        s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); break
    except OSError:
        if time.monotonic() > deadline: raise
        time.sleep(0.1)
rows = b''.join(b'{"user":"fresh-%d","action":"login","n":%d}\n' % (i, i) for i in range(3))
print("fresh-check: $ printf '%s' | socat - UNIX-CONNECT:run/relayd.sock" % rows.decode().replace("\n", "\\n"))
s.sendall(rows); s.shutdown(socket.SHUT_WR)
reply = b''
while not reply.endswith(b'ok 3\n'):
    b = s.recv(4096)
    if not b: break
    reply += b
print(reply.decode(), end='')
sys.exit(0 if reply.endswith(b'ok 3\n') else 1)
PY
    fi
    if [ $ok = 1 ]; then
        i=0; ok=0
        while [ $i -lt 60 ]; do
            out=$(in_root 'cd /src/relayd && /usr/bin/python3 tools/bqemu/bqemu.py rows --dir run/bqemu/data --table demo.relayd.events' 2>&1 || true)
            if [ "$(printf '%s\n' "$out" | grep -c '"fresh-[0-2]"')" = 3 ]; then ok=1; break; fi
            sleep 1; i=$((i + 1))
        done
        { echo "fresh-check: \$ /usr/bin/python3 tools/bqemu/bqemu.py rows --dir run/bqemu/data --table demo.relayd.events"
          printf '%s\n' "$out"; } >>"$log"
    fi
    kill -INT -$pid 2>/dev/null || true
    i=0; while kill -0 $pid 2>/dev/null && [ $i -lt 30 ]; do sleep 1; i=$((i + 1)); done
    kill -KILL -$pid 2>/dev/null || true
    wait $pid 2>/dev/null || true
    cleanup_root
    # Ctrl-C is how make run is meant to end: no error from make for it
    if [ $ok = 1 ] && grep -q '^make: \*\*\*' "$log"; then say "make run: Ctrl-C ended it with an error"; ok=0; fi
    if [ $ok = 1 ]; then say "make run: PASS (3 rows acked and seen in the emulator, clean Ctrl-C); transcript $log"
    else say "make run: FAIL; transcript $log:"; tail -n 25 "$log" >&2; return 1; fi
}

check_test() {
    log="$work/test.log"
    new_root test
    say "make test in a fresh root at $(git -C "$top" log -1 --format='%h %s' "$commit")"
    rc=0
    in_root 'cd /src/relayd && exec make test' >"$log" 2>&1 || rc=$?
    cleanup_root
    last=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$log" | tail -n 1 || true)
    if [ $rc = 0 ] && printf '%s' "$last" | grep -Eq '^[0-9]+ passed, 0 failed$'; then
        say "make test: PASS ($last); transcript $log"
    else
        say "make test: FAIL (exit $rc${last:+, $last}); transcript $log:"; tail -n 25 "$log" >&2; return 1
    fi
}

status=0
case "$mode" in
    base) ;;
    run) check_run || status=1 ;;
    test) check_test || status=1 ;;
    both) check_run || status=1; check_test || status=1 ;;
esac
exit $status
