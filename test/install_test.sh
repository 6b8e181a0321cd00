#!/bin/sh
# install_test.sh — the library as a user gets it, from outside the tree:
#   1. make install PREFIX=<tmp>/usr: every file where the .pc says;
#      a C example through `pkg-config --cflags --libs regopt` (shared,
#      run with LD_LIBRARY_PATH) and `pkg-config --static` (linked fully
#      static: libregopt.a plus Libs.private, no libregopt.so needed);
#      a C++ consumer the same way;
#   2. make install DESTDIR=<tmp>/stage PREFIX=/opt/regopt: the same files
#      under the stage, and a build through PKG_CONFIG_SYSROOT_DIR;
#   3. test/consumer/ with meson, against the installed library
#      (pkg-config, no fallback) and with this tree as its subproject; the
#      same consumer with CMake: find_package(regopt 1.0 CONFIG) linked
#      shared and static, a version it must refuse, and this tree through
#      add_subdirectory (static and shared); the Python package installed
#      with pip into a venv, finding the library through pkg-config;
#   4. make uninstall with the same variables leaves no file behind (the
#      file lists before install and after uninstall are compared).
# Runs in a temporary directory; the tree's own build is reused, not touched.
set -eu
cd "$(dirname "$0")/.."
root=$(pwd)
MAKE=${MAKE:-make}
CC=${CC:-cc}
CXX=${CXX:-c++}
PKG_CONFIG=${PKG_CONFIG:-pkg-config}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/regopt-install.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM
say() { echo "install_test: $*"; }
files() { (cd "$1" && find . ! -type d | LC_ALL=C sort); }

$MAKE --no-print-directory lib >/dev/null
version=$(sh scripts/version.sh)
major=${version%%.*}

# ---- 1. PREFIX ------------------------------------------------------------
prefix=$tmp/usr
mkdir -p "$prefix"
files "$prefix" > "$tmp/before"
$MAKE --no-print-directory install PREFIX="$prefix" >/dev/null
files "$prefix" > "$tmp/installed"
cat > "$tmp/expected" <<EOF
./include/regopt.h
./include/regopt_torch.hpp
./lib/cmake/regopt/regoptConfig.cmake
./lib/cmake/regopt/regoptConfigVersion.cmake
./lib/libregopt.a
./lib/libregopt.so
./lib/libregopt.so.$major
./lib/libregopt.so.$version
./lib/pkgconfig/regopt.pc
EOF
if ! cmp -s "$tmp/installed" "$tmp/expected"; then
    say "installed files differ from the expected list:"
    diff "$tmp/expected" "$tmp/installed" || true
    exit 1
fi
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
pc_prefix=$($PKG_CONFIG --variable=prefix regopt)
[ "$pc_prefix" = "$prefix" ] || {
    say "regopt.pc says prefix=$pc_prefix, installed with PREFIX=$prefix"
    exit 1
}
[ "$($PKG_CONFIG --modversion regopt)" = "$version" ] || { say "pc version"; exit 1; }
say "PREFIX install: $(wc -l < "$tmp/installed") files, regopt.pc prefix and version $version right"

# shared, through pkg-config; run with LD_LIBRARY_PATH (no rpath)
# shellcheck disable=SC2046
$CC -std=c99 -Wall -Wextra -Wpedantic -Werror test/consumer/consumer.c \
    $($PKG_CONFIG --cflags --libs regopt) -lm -o "$tmp/consumer_shared"
readelf -d "$tmp/consumer_shared" | grep -q "NEEDED.*libregopt.so.$major" ||
    { say "consumer_shared does not need libregopt.so.$major"; exit 1; }
LD_LIBRARY_PATH="$prefix/lib" "$tmp/consumer_shared"

# static, through pkg-config --static: Libs.private must be enough
# shellcheck disable=SC2046
$CC -std=c99 -Wall -Wextra -Wpedantic -Werror -static test/consumer/consumer.c \
    $($PKG_CONFIG --static --cflags --libs regopt) -o "$tmp/consumer_static"
if readelf -d "$tmp/consumer_static" 2>/dev/null | grep -q NEEDED; then
    say "consumer_static has dynamic dependencies"
    exit 1
fi
"$tmp/consumer_static"

# C++ (shared)
# shellcheck disable=SC2046
$CXX -std=c++11 -Wall -Wextra -Wpedantic -Werror test/consumer/consumer.cpp \
    $($PKG_CONFIG --cflags --libs regopt) -o "$tmp/consumer_cpp"
LD_LIBRARY_PATH="$prefix/lib" "$tmp/consumer_cpp"

# ---- 3. meson consumer: installed, then subproject ------------------------
if command -v meson >/dev/null 2>&1; then
    cp -R test/consumer "$tmp/consumer"
    meson setup "$tmp/consumer/build-installed" "$tmp/consumer" --wrap-mode=nofallback \
        > "$tmp/meson-installed.log" 2>&1 || { cat "$tmp/meson-installed.log"; exit 1; }
    grep -q 'Run-time dependency regopt found: YES' "$tmp/meson-installed.log" ||
        { cat "$tmp/meson-installed.log"; say "meson did not find the installed regopt"; exit 1; }
    LD_LIBRARY_PATH="$prefix/lib" meson test -C "$tmp/consumer/build-installed" \
        > "$tmp/meson-test.log" 2>&1 || { cat "$tmp/meson-test.log"; exit 1; }
    say "meson consumer, installed library: $(grep -c ' OK ' "$tmp/meson-test.log") tests ok"

    # this tree as subprojects/regopt (a copy without build outputs)
    mkdir -p "$tmp/consumer/subprojects/regopt"
    tar -cf - --exclude=./.git --exclude='./build*' --exclude=./lib --exclude=./dist . |
        tar -xf - -C "$tmp/consumer/subprojects/regopt"
    (unset PKG_CONFIG_PATH
     meson setup "$tmp/consumer/build-sub" "$tmp/consumer" --force-fallback-for=regopt \
         > "$tmp/meson-sub.log" 2>&1) || { cat "$tmp/meson-sub.log"; exit 1; }
    grep -q 'Executing subproject regopt' "$tmp/meson-sub.log" ||
        { cat "$tmp/meson-sub.log"; say "meson did not use the subproject"; exit 1; }
    meson compile -C "$tmp/consumer/build-sub" consumer consumer_cpp \
        > "$tmp/meson-sub-build.log" 2>&1 || { cat "$tmp/meson-sub-build.log"; exit 1; }
    "$tmp/consumer/build-sub/consumer"
    "$tmp/consumer/build-sub/consumer_cpp"
    say "meson consumer, subproject: ok"
else
    say "no meson: meson consumer skipped"
fi

# ---- 3b. CMake consumer: installed (shared, static), then embedded -------
# cmake_consumer NAME ARGS...: configure, build and run test/consumer.
cmake_consumer() {
    name=$1
    shift
    cmake -S test/consumer -B "$tmp/cmake-$name" "$@" > "$tmp/cmake-$name.log" 2>&1 &&
        cmake --build "$tmp/cmake-$name" >> "$tmp/cmake-$name.log" 2>&1 ||
        { cat "$tmp/cmake-$name.log"; say "CMake consumer ($name) failed"; exit 1; }
    "$tmp/cmake-$name/consumer" && "$tmp/cmake-$name/consumer_cpp"
}
if command -v cmake >/dev/null 2>&1; then
    cmake_consumer shared -DCMAKE_PREFIX_PATH="$prefix"
    readelf -d "$tmp/cmake-shared/consumer" | grep -q "NEEDED.*libregopt.so.$major" ||
        { say "CMake shared consumer does not need libregopt.so.$major"; exit 1; }
    cmake_consumer static -DCMAKE_PREFIX_PATH="$prefix" -DREGOPT_STATIC=ON
    if readelf -d "$tmp/cmake-static/consumer" | grep -q "NEEDED.*libregopt"; then
        say "CMake static consumer needs libregopt.so"
        exit 1
    fi
    # a newer minor or another major than the installed one is refused
    minor=$(echo "$version" | cut -d. -f2)
    for want in "$major.$((minor + 1))" "$((major + 1)).0"; do
        sed "s/find_package(regopt 1.0 /find_package(regopt $want /" test/consumer/CMakeLists.txt \
            > "$tmp/CMakeLists.want"
        mkdir -p "$tmp/want" && cp test/consumer/consumer.c test/consumer/consumer.cpp "$tmp/want/"
        cp "$tmp/CMakeLists.want" "$tmp/want/CMakeLists.txt"
        if cmake -S "$tmp/want" -B "$tmp/want/build" -DCMAKE_PREFIX_PATH="$prefix" \
            > "$tmp/cmake-want.log" 2>&1; then
            say "find_package(regopt $want) accepted version $version"
            exit 1
        fi
        rm -rf "$tmp/want"
    done
    src=$tmp/regopt-src
    mkdir -p "$src"
    tar -cf - --exclude=./.git --exclude='./build*' --exclude=./lib --exclude=./dist . |
        tar -xf - -C "$src"
    (unset CMAKE_PREFIX_PATH; cmake_consumer embedded -DREGOPT_SOURCE_DIR="$src")
    (unset CMAKE_PREFIX_PATH; cmake_consumer embedded-shared -DREGOPT_SOURCE_DIR="$src" \
        -DBUILD_SHARED_LIBS=ON)
    say "CMake consumer: find_package shared and static, versions refused, add_subdirectory: ok"
else
    say "no cmake: CMake consumer skipped"
fi

# ---- 3c. the Python package: pip into a venv, the library through pkg-config
if /usr/bin/python3 -c 'import venv, setuptools, wheel' 2>/dev/null; then
    cp -R python "$tmp/python-src" # pip's build writes beside the sources
    rm -rf "$tmp/python-src/tests"
    /usr/bin/python3 -m venv --system-site-packages "$tmp/venv" &&
        "$tmp/venv/bin/pip" install --no-build-isolation --no-index "$tmp/python-src" \
            > "$tmp/pip.log" 2>&1 || { cat "$tmp/pip.log"; say "pip install failed"; exit 1; }
    (cd "$tmp" && unset REGOPT_LIBRARY &&
     PKG_CONFIG_PATH="$prefix/lib/pkgconfig" "$tmp/venv/bin/python" -c '
import sys, regopt, regopt._lib as L
assert regopt.__file__.startswith(sys.argv[1]), regopt.__file__
assert L.library_path == sys.argv[2], L.library_path
opt = regopt.Optimizer("adamw")
print("install_test: python package %s in the venv, %s" % (regopt.__version__, L.library_path))
' "$tmp/venv" "$prefix/lib/libregopt.so.$major") || { say "the Python package failed"; exit 1; }
else
    say "no python3-venv/setuptools/wheel: Python package skipped"
fi

$MAKE --no-print-directory uninstall PREFIX="$prefix" >/dev/null
files "$prefix" > "$tmp/after"
if ! cmp -s "$tmp/before" "$tmp/after"; then
    say "make uninstall left files behind:"
    diff "$tmp/before" "$tmp/after" || true
    exit 1
fi
say "PREFIX uninstall: no file left"

# ---- 2. DESTDIR -----------------------------------------------------------
stage=$tmp/stage
mkdir -p "$stage"
files "$stage" > "$tmp/before"
$MAKE --no-print-directory install DESTDIR="$stage" PREFIX=/opt/regopt >/dev/null
files "$stage" > "$tmp/staged"
sed 's|^\./|./opt/regopt/|' "$tmp/expected" > "$tmp/expected-staged"
if ! cmp -s "$tmp/staged" "$tmp/expected-staged"; then
    say "DESTDIR install differs from the expected list:"
    diff "$tmp/expected-staged" "$tmp/staged" || true
    exit 1
fi
# the .pc names the final prefix; the sysroot maps it into the stage
grep -q '^prefix=/opt/regopt$' "$stage/opt/regopt/lib/pkgconfig/regopt.pc" ||
    { say "staged regopt.pc does not say prefix=/opt/regopt"; exit 1; }
# shellcheck disable=SC2046
PKG_CONFIG_PATH="$stage/opt/regopt/lib/pkgconfig" PKG_CONFIG_SYSROOT_DIR="$stage" \
    $CC -std=c99 -Wall -Wextra -Wpedantic -Werror test/consumer/consumer.c \
    $(PKG_CONFIG_PATH="$stage/opt/regopt/lib/pkgconfig" PKG_CONFIG_SYSROOT_DIR="$stage" \
      $PKG_CONFIG --cflags --libs regopt) -lm -o "$tmp/consumer_staged"
LD_LIBRARY_PATH="$stage/opt/regopt/lib" "$tmp/consumer_staged"
if command -v cmake >/dev/null 2>&1; then # the CMake package finds its files from its place
    cmake_consumer staged -DCMAKE_PREFIX_PATH="$stage/opt/regopt"
fi
$MAKE --no-print-directory uninstall DESTDIR="$stage" PREFIX=/opt/regopt >/dev/null
files "$stage" > "$tmp/after"
if ! cmp -s "$tmp/before" "$tmp/after"; then
    say "make uninstall (DESTDIR) left files behind:"
    diff "$tmp/before" "$tmp/after" || true
    exit 1
fi
say "DESTDIR install and uninstall: ok"
say "ok (shared, static, C++, meson installed + subproject, CMake package + embedded, Python package, uninstall clean)"
cd "$root"
