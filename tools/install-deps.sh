#!/bin/sh
# Installs the Debian packages relayd needs to build, test and run.
# Runs as root, or through sudo when it is available. Safe to run again.
#
#   tools/install-deps.sh           install what is missing (apt-get)
#   tools/install-deps.sh --check   only report what is missing; exit 1 if anything is
#
# Everything the build, the tests, `make run` and `make bench` use from the
# machine is in this list: compilers and sanitizer runtimes, the libraries and
# their pkg-config files, protoc-c, the Python modules the emulator and tests
# import (Debian's, for /usr/bin/python3), and the command-line tools the
# tests call (socat, openssl, lmdb-utils, adduser, dpkg-dev, systemd's
# systemd-analyze). A test that needs anything else skips with a message.
set -eu

PKGS="build-essential pkg-config clang libclang-rt-14-dev valgrind git
liblmdb-dev lmdb-utils libcmocka-dev libjansson-dev libsystemd-dev libmicrohttpd-dev
libcurl4-openssl-dev libssl-dev zlib1g-dev libdeflate-dev libisal-dev libmsgpack-dev
libgrpc-dev protobuf-c-compiler libprotobuf-c-dev protobuf-compiler
python3 python3-cryptography python3-grpcio python3-protobuf python3-yaml python3-msgpack
socat openssl ca-certificates adduser dpkg-dev systemd"

missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
done

if [ "${1:-}" = "--check" ]; then
    [ -z "$missing" ] && exit 0
    echo "relayd: missing packages:$missing" >&2
    echo "relayd: install them with 'make deps' (as root or with sudo), or use 'make run' / 'make test', which do it first" >&2
    exit 1
fi
[ -z "$missing" ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-deps: no apt-get on this machine; relayd is built on Debian 12." >&2
    echo "install-deps: install these packages (or their equivalents) by hand, then run make again:$missing" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "install-deps: need root to install:$missing" >&2
        echo "install-deps: run 'make deps' as root (no sudo found), then run make again" >&2
        exit 1
    fi
    # No terminal to type a password into (CI, a pipe): sudo must not hang.
    if [ -t 0 ]; then SUDO="sudo"; else SUDO="sudo -n"; fi
fi
echo "install-deps: installing:$missing" >&2
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get update -qq || \
   ! $SUDO apt-get install -y -qq --no-install-recommends $missing </dev/null; then
    echo "install-deps: apt-get could not install:$missing" >&2
    echo "install-deps: check the network and /etc/apt/sources.list, or that sudo works without a password here; then run make again" >&2
    exit 1
fi
