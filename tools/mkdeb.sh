#!/bin/sh
# tools/mkdeb.sh BUILD_DIR OUT_DIR
#
# Builds OUT_DIR/relayd_<version>_<arch>.deb from the binaries in BUILD_DIR
# (relayd, relayctl: run `make` first) and the files under packaging/ and
# docs/. Needs dpkg-deb only; uses dpkg-shlibdeps (package dpkg-dev) for the
# Depends line when it is installed, and otherwise maps the binaries' shared
# libraries to their packages with dpkg -S. Runs as any user (no fakeroot:
# dpkg-deb --root-owner-group makes every file root:root).
#
# Environment:
#   DEB_MAINTAINER            the Maintainer field
#   RELAYD_DEB_STRIP=0        keep the debugging symbols (default: strip)
#   RELAYD_DEB_NO_SHLIBDEPS=1 do not use dpkg-shlibdeps even if installed
#
# docs/packaging.md describes the package.
set -eu

prog=mkdeb.sh
die() { echo "$prog: $*" >&2; exit 1; }

[ $# -eq 2 ] || { echo "usage: tools/mkdeb.sh BUILD_DIR OUT_DIR" >&2; exit 2; }
top=$(cd "$(dirname "$0")/.." && pwd)
[ -d "$1" ] || die "no build directory $1 (run make first)"
build=$(cd "$1" && pwd)
mkdir -p "$2"
out=$(cd "$2" && pwd)

for b in relayd relayctl; do
    [ -x "$build/$b" ] || die "no $build/$b: run make first"
done
command -v dpkg-deb >/dev/null 2>&1 || die "dpkg-deb not found"

version=$(sed -n 's/^#define[[:space:]]*RELAY_VERSION[[:space:]]*"\([^"]*\)".*/\1/p' \
          "$top/include/version.h")
[ -n "$version" ] || die "no RELAY_VERSION in include/version.h"
arch=$(dpkg --print-architecture)
# Whoever distributes the package should set DEB_MAINTAINER; the default is
# the author of the last commit, as the closest thing to a maintainer.
maint=${DEB_MAINTAINER:-$(git -C "$top" log -1 --format='%an <%ae>' 2>/dev/null || true)}
maint=${maint:-"relayd maintainers <relayd@example.org>"}

# The binaries must be the version we are about to call them, and not a
# sanitizer build (it would drag libasan in and run several times slower).
got=$("$build/relayd" --version 2>/dev/null || true)
[ "$got" = "relayd $version" ] ||
    die "$build/relayd says '$got', include/version.h says $version: rebuild"
if ldd "$build/relayd" 2>/dev/null | grep -Eq 'lib(asan|ubsan|tsan|msan)'; then
    die "$build holds a sanitizer build; package the release build (make, then build/)"
fi

umask 022
work=$(mktemp -d "${TMPDIR:-/tmp}/mkdeb.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
# dpkg-shlibdeps expects the layout of a source package: debian/control and
# the package's tree in debian/<package>.
# The DEBIAN directory also tells dpkg-shlibdeps where the package root is.
root=$work/debian/relayd
mkdir -p "$root/DEBIAN"

# ---- files --------------------------------------------------------------
install -d "$root/usr/sbin" "$root/usr/bin" "$root/lib/systemd/system" "$root/etc/relayd" \
    "$root/usr/share/man/man1" "$root/usr/share/man/man5" "$root/usr/share/man/man8" \
    "$root/usr/share/doc/relayd/docs" "$root/usr/share/doc/relayd/examples"
install -m 0755 "$build/relayd" "$root/usr/sbin/relayd"
install -m 0755 "$build/relayctl" "$root/usr/bin/relayctl"
if [ "${RELAYD_DEB_STRIP:-1}" != 0 ] && command -v strip >/dev/null 2>&1; then
    strip --strip-unneeded --remove-section=.comment --remove-section=.note \
        "$root/usr/sbin/relayd" "$root/usr/bin/relayctl"
fi
# librelayclient: header, static and shared library (soname librelayclient.so.1),
# pkg-config file, in Debian's multiarch library directory.
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || ${CC:-cc} -print-multiarch)
[ -n "$multiarch" ] || die "cannot tell the multiarch triplet (dpkg-architecture or cc -print-multiarch)"
for f in librelayclient.a librelayclient.so.1; do
    [ -f "$build/$f" ] || die "no $build/$f: run make first"
done
libdir=/usr/lib/$multiarch
install -d "$root/usr/include" "$root$libdir/pkgconfig" "$root/usr/share/man/man3"
install -m 0644 "$top/include/relayclient.h" "$root/usr/include/relayclient.h"
install -m 0644 "$build/librelayclient.a" "$root$libdir/librelayclient.a"
install -m 0644 "$build/librelayclient.so.1" "$root$libdir/librelayclient.so.1"
ln -s librelayclient.so.1 "$root$libdir/librelayclient.so"
if [ "${RELAYD_DEB_STRIP:-1}" != 0 ] && command -v strip >/dev/null 2>&1; then
    strip --strip-unneeded --remove-section=.comment "$root$libdir/librelayclient.so.1"
    strip --strip-debug "$root$libdir/librelayclient.a"
fi
sed -e 's|@PREFIX@|/usr|' -e "s|@LIBDIR@|$libdir|" -e 's|@INCLUDEDIR@|/usr/include|' \
    -e "s|@VERSION@|$version|" "$top/src/client/relayclient.pc.in" > "$root$libdir/pkgconfig/relayclient.pc"
chmod 0644 "$root$libdir/pkgconfig/relayclient.pc"
install -d "$root/usr/share/doc/relayd/examples"
install -m 0644 "$top/docs/examples/client_example.c" "$root/usr/share/doc/relayd/examples/client_example.c"
install -m 0644 "$top/packaging/relayd.service" "$root/lib/systemd/system/relayd.service"
install -m 0644 "$top/packaging/relayd.conf" "$root/etc/relayd/relayd.conf"

for page in relayctl.1 relayd.conf.5 relayd.8 relayclient.3; do
    sec=${page##*.}
    gzip -9n < "$top/docs/man/$page" > "$root/usr/share/man/man$sec/$page.gz"
    chmod 0644 "$root/usr/share/man/man$sec/$page.gz"
done

# README.md refers to docs/NAME.md: keep that layout so its links resolve.
install -m 0644 "$top/README.md" "$root/usr/share/doc/relayd/README.md"
install -m 0644 "$top/packaging/copyright" "$root/usr/share/doc/relayd/copyright"
for f in "$top"/docs/*.md; do
    install -m 0644 "$f" "$root/usr/share/doc/relayd/docs/"
done
install -m 0644 "$top/packaging/kubernetes/relayd-daemonset.yaml" \
    "$root/usr/share/doc/relayd/examples/relayd-daemonset.yaml"

# A Debian changelog, as dpkg-parsechangelog and apt-listchanges expect one;
# its date is the last commit's (reproducible), else SOURCE_DATE_EPOCH or now.
when=$(git -C "$top" log -1 --format=%ct 2>/dev/null || true)
when=${when:-${SOURCE_DATE_EPOCH:-$(date +%s)}}
{
    printf 'relayd (%s) unstable; urgency=medium\n\n' "$version"
    printf '  * Built from the relayd source tree by tools/mkdeb.sh.\n\n'
    printf ' -- %s  %s\n' "$maint" "$(LC_ALL=C date -u -R -d "@$when")"
} | gzip -9n > "$root/usr/share/doc/relayd/changelog.gz"
chmod 0644 "$root/usr/share/doc/relayd/changelog.gz"

# ---- Depends --------------------------------------------------------------
# Packages that provide the shared libraries the binaries need.
depends_by_dpkg_query() {
    # NEEDED entries (direct dependencies) when binutils is there; else
    # everything ldd lists (also indirect ones: more than needed, never less).
    libs=""
    if command -v objdump >/dev/null 2>&1; then
        libs=$(objdump -p "$@" | awk '$1 == "NEEDED" { print $2 }' | sort -u)
    fi
    ldd "$@" | awk '$2 == "=>" && $3 ~ /^\// { print $1, $3 }' | sort -u > "$work/ldd"
    [ -n "$libs" ] || libs=$(awk '{ print $1 }' "$work/ldd" | sort -u)
    for lib in $libs; do
        path=$(awk -v l="$lib" '$1 == l { print $2; exit }' "$work/ldd")
        [ -n "$path" ] || die "cannot locate $lib (ldd)"
        pkg=""
        for p in "$path" "/usr$path" "${path#/usr}" "$(readlink -f "$path")"; do
            pkg=$(dpkg -S "$p" 2>/dev/null | head -n1 | cut -d: -f1) || true
            [ -n "$pkg" ] && break
        done
        [ -n "$pkg" ] || die "no package owns $path ($lib)"
        echo "$pkg"
    done | sort -u | paste -sd, - | sed 's/,/, /g'
}

if [ "${RELAYD_DEB_NO_SHLIBDEPS:-0}" != 1 ] && command -v dpkg-shlibdeps >/dev/null 2>&1; then
    printf 'Source: relayd\n\nPackage: relayd\nArchitecture: any\n' > "$work/debian/control"
    shlibs=$(cd "$work" && dpkg-shlibdeps -O \
                 debian/relayd/usr/sbin/relayd debian/relayd/usr/bin/relayctl \
                 "debian/relayd$libdir/librelayclient.so.1" |
             sed -n 's/^shlibs:Depends=//p')
    rm -f "$work/debian/control"
    [ -n "$shlibs" ] || die "dpkg-shlibdeps found no dependencies"
else
    shlibs=$(depends_by_dpkg_query "$root/usr/sbin/relayd" "$root/usr/bin/relayctl" \
                 "$root$libdir/librelayclient.so.1")
    [ -n "$shlibs" ] || die "found no library dependencies"
fi
# adduser: postinst creates the user and groups with it.
depends="$shlibs, adduser"

# ---- DEBIAN/ ------------------------------------------------------------
installed_size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<EOF
Package: relayd
Version: $version
Architecture: $arch
Maintainer: $maint
Installed-Size: $installed_size
Depends: $depends
Recommends: ca-certificates
Section: net
Priority: optional
Description: reliable on-disk spooling relay to Google BigQuery
 Producers write newline-delimited JSON rows to a Unix socket; relayd
 acknowledges each row only once it is durable (fsync) in an LMDB spool,
 and delivers the spool to BigQuery tables with tabledata.insertAll or the
 Storage Write API. Rows BigQuery rejects go to a dead-letter store.
 Nothing acknowledged is lost on kill -9, power loss, a full disk or bad
 input.
 .
 The package runs relayd as a hardened systemd service under its own user,
 with the spool in /var/lib/relayd and the socket in /run/relayd; users in
 the group relayd-producers may write to it.
EOF
printf '/etc/relayd/relayd.conf\n' > "$root/DEBIAN/conffiles"
# md5sums of the files (not the conffile: dpkg tracks that one itself), for
# dpkg --verify and debsums.
(cd "$root" && find . -type f ! -path './DEBIAN/*' ! -path './etc/*' | LC_ALL=C sort |
     sed 's|^\./||' | xargs md5sum) > "$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/conffiles" "$root/DEBIAN/md5sums"
# The shared library: its shlibs entry for packages built against it, and
# the ldconfig trigger that refreshes the linker cache on install and removal.
printf 'librelayclient 1 relayd (>= %s)\n' "$version" > "$root/DEBIAN/shlibs"
printf 'activate-noawait ldconfig\n' > "$root/DEBIAN/triggers"
chmod 0644 "$root/DEBIAN/shlibs" "$root/DEBIAN/triggers"
for s in postinst prerm postrm; do
    install -m 0755 "$top/packaging/deb/$s" "$root/DEBIAN/$s"
done

deb="$out/relayd_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
echo "Depends: $depends" >&2
