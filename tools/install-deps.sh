#!/bin/sh
# Installs the Debian packages relayd needs to build, test and run.
# Runs as root, or through sudo when it is available. Safe to run again.
set -eu

PKGS="build-essential pkg-config clang libclang-rt-14-dev valgrind
liblmdb-dev lmdb-utils libcmocka-dev libjansson-dev libsystemd-dev libmicrohttpd-dev
libcurl4-openssl-dev libssl-dev zlib1g-dev
libgrpc-dev protobuf-c-compiler libprotobuf-c-dev protobuf-compiler
python3 python3-cryptography python3-grpcio python3-protobuf
socat openssl ca-certificates python3-yaml adduser dpkg-dev"

missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
done
[ -z "$missing" ] && exit 0

SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "install-deps: need root (or sudo) to install:$missing" >&2; exit 1
    fi
fi
echo "install-deps: installing:$missing" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing </dev/null
