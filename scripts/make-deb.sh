#!/bin/sh
# make-deb.sh [OUTDIR] — build the Debian packages libregopt1, libregopt-dev
# and python3-regopt from a copy of this tree (dpkg-buildpackage cleans the
# tree it builds in), then run lintian on them. The .debs, .changes and the
# lintian report land in OUTDIR (default build/deb). Needs dpkg-dev,
# debhelper and lintian (scripts/install-deps.sh installs them).
set -eu
cd "$(dirname "$0")/.."
out=${1:-build/deb}
version=$(sh scripts/version.sh)
deb_version=$(dpkg-parsechangelog -l debian/changelog -S Version)
[ "$deb_version" = "$version" ] || {
    echo "make-deb: debian/changelog says $deb_version, include/regopt.h says $version" >&2
    exit 1
}
rm -rf "$out"
mkdir -p "$out/src/libregopt-$version"
tar -cf - --exclude=./.git --exclude='./build*' --exclude=./lib --exclude=./dist \
    --exclude='./python/build' --exclude='*.egg-info' . | tar -xf - -C "$out/src/libregopt-$version"
(cd "$out/src/libregopt-$version" && dpkg-buildpackage -us -uc -b > ../../dpkg-buildpackage.log 2>&1) ||
    { tail -40 "$out/dpkg-buildpackage.log"; echo "make-deb: dpkg-buildpackage failed" >&2; exit 1; }
mv "$out"/src/*.deb "$out"/src/*.changes "$out"/src/*.buildinfo "$out"/
rm -rf "$out/src"
# lintian: errors fail the build; the warnings left are explained in
# debian/*.lintian-overrides (each with its reason) or listed here
lintian --info --display-info "$out"/*.changes > "$out/lintian.txt" 2>&1 || true
if grep -q '^E: ' "$out/lintian.txt"; then
    grep '^E: ' "$out/lintian.txt" >&2
    echo "make-deb: lintian reports errors (all of them in $out/lintian.txt)" >&2
    exit 1
fi
echo "make-deb: $(ls "$out"/*.deb | wc -l) packages in $out; lintian: $(grep -c '^W: ' "$out/lintian.txt" || true) warnings, $(grep -c '^I: ' "$out/lintian.txt" || true) notes ($out/lintian.txt)"
