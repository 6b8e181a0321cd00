#!/bin/sh
# deb_test.sh DEBDIR — the Debian packages as a user gets them:
#   1. their contents, unpacked into a scratch root (dpkg-deb -x): every
#      file where the FHS and multiarch say; the consumer in test/consumer/
#      built against that root with pkg-config (sysroot) and with CMake's
#      find_package; the Python package imported from it;
#   2. as root, installed on this machine with dpkg -i (dependencies
#      checked by dpkg), the consumers built with no hints at all (plain
#      pkg-config, find_package, `import regopt` from /usr/bin/python3),
#      then purged, leaving no file behind.
set -eu
cd "$(dirname "$0")/.."
dir=${1:?usage: deb_test.sh DEBDIR}
version=$(sh scripts/version.sh)
major=${version%%.*}
arch=$(dpkg-architecture -qDEB_HOST_MULTIARCH)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/regopt-deb.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM
say() { echo "deb_test: $*"; }
pkgs="libregopt1 libregopt-dev python3-regopt"
debs=""
for p in $pkgs; do
    f=$(ls "$dir"/${p}_"$version"_*.deb 2>/dev/null | head -1)
    [ -n "$f" ] || { say "no $p package for $version in $dir"; exit 1; }
    debs="$debs $f"
done

# ---- 1. contents, in a scratch root ---------------------------------------
root=$tmp/root
for f in $debs; do dpkg-deb -x "$f" "$root"; done
(cd "$root" && find . ! -type d | LC_ALL=C sort | grep -v '^./usr/share/doc/') > "$tmp/files"
cat > "$tmp/expected" <<LIST
./usr/include/regopt.h
./usr/include/regopt_torch.hpp
./usr/lib/$arch/cmake/regopt/regoptConfig.cmake
./usr/lib/$arch/cmake/regopt/regoptConfigVersion.cmake
./usr/lib/$arch/libregopt.a
./usr/lib/$arch/libregopt.so
./usr/lib/$arch/libregopt.so.$major
./usr/lib/$arch/libregopt.so.$version
./usr/lib/$arch/pkgconfig/regopt.pc
LIST
ls python/regopt/*.py | sed "s|^python/|./usr/lib/python3/dist-packages/|" >> "$tmp/expected"
LC_ALL=C sort -o "$tmp/expected" "$tmp/expected"
if ! cmp -s "$tmp/files" "$tmp/expected"; then
    say "the packages' files differ from the expected list:"
    diff "$tmp/expected" "$tmp/files" || true
    exit 1
fi
grep -q '^prefix=/usr$' "$root/usr/lib/$arch/pkgconfig/regopt.pc" ||
    { say "regopt.pc does not say prefix=/usr"; exit 1; }
# shellcheck disable=SC2046
cc -std=c99 -Wall -Wextra -Werror test/consumer/consumer.c \
    $(PKG_CONFIG_PATH="$root/usr/lib/$arch/pkgconfig" PKG_CONFIG_SYSROOT_DIR="$root" \
      pkg-config --cflags --libs regopt) -lm -o "$tmp/consumer_root"
LD_LIBRARY_PATH="$root/usr/lib/$arch" "$tmp/consumer_root"
if command -v cmake >/dev/null 2>&1; then
    cmake -S test/consumer -B "$tmp/cmake-root" -DCMAKE_PREFIX_PATH="$root/usr" \
        > "$tmp/cmake.log" 2>&1 && cmake --build "$tmp/cmake-root" >> "$tmp/cmake.log" 2>&1 ||
        { cat "$tmp/cmake.log"; say "CMake consumer against the unpacked packages failed"; exit 1; }
    LD_LIBRARY_PATH="$root/usr/lib/$arch" "$tmp/cmake-root/consumer"
fi
(cd "$tmp" && PYTHONPATH="$root/usr/lib/python3/dist-packages" \
    REGOPT_LIBRARY="$root/usr/lib/$arch/libregopt.so.$major" /usr/bin/python3 -c '
import sys, regopt
assert regopt.__file__.startswith(sys.argv[1]), regopt.__file__
print("deb_test: python3-regopt %s imports (unpacked)" % regopt.version())' "$root")
say "contents: $(wc -l < "$tmp/files") files as expected; pkg-config, CMake and Python consumers ok"

# ---- 2. installed with dpkg --------------------------------------------------
if [ "$(id -u)" -ne 0 ] || [ -n "${DEB_TEST_NO_INSTALL:-}" ]; then
    say "not root (or DEB_TEST_NO_INSTALL): dpkg install skipped"
    exit 0
fi
for p in $pkgs; do
    if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        say "$p is already installed here: dpkg install skipped (it would replace it)"
        exit 0
    fi
done
purge() { dpkg -P $pkgs > /dev/null 2>&1 || true; }
trap 'purge; rm -rf "$tmp"' EXIT INT TERM
# shellcheck disable=SC2086
dpkg -i $debs > "$tmp/dpkg.log" 2>&1 || { cat "$tmp/dpkg.log"; say "dpkg -i failed"; exit 1; }
# shellcheck disable=SC2046
cc -std=c99 -Wall -Wextra -Werror test/consumer/consumer.c $(pkg-config --cflags --libs regopt) \
    -lm -o "$tmp/consumer_sys"
"$tmp/consumer_sys"
if command -v cmake >/dev/null 2>&1; then
    cmake -S test/consumer -B "$tmp/cmake-sys" > "$tmp/cmake-sys.log" 2>&1 &&
        cmake --build "$tmp/cmake-sys" >> "$tmp/cmake-sys.log" 2>&1 ||
        { cat "$tmp/cmake-sys.log"; say "CMake consumer against the installed packages failed"; exit 1; }
    "$tmp/cmake-sys/consumer"
fi
(cd "$tmp" && env -u REGOPT_LIBRARY -u PYTHONPATH /usr/bin/python3 -c '
import regopt, regopt._lib as L
assert regopt.__file__.startswith("/usr/lib/python3/dist-packages/"), regopt.__file__
print("deb_test: import regopt: %s, library %s" % (regopt.version(), L.library_path))')
dpkg -P $pkgs > "$tmp/purge.log" 2>&1 || { cat "$tmp/purge.log"; say "dpkg -P failed"; exit 1; }
for f in $(sed 's|^\.||' "$tmp/expected"); do
    [ ! -e "$f" ] || { say "$f is left after dpkg -P"; exit 1; }
done
trap 'rm -rf "$tmp"' EXIT INT TERM
say "installed with dpkg: pkg-config, CMake and Python consumers ok; purged clean"
