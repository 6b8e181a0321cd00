#!/bin/sh
# Install the Debian packages libregopt needs to build, test and run its
# examples, if any is missing. Fast no-op when everything is there.
set -e
# abigail-tools: the ABI check; valgrind, clang-14 and libclang-rt-14-dev (the
# libFuzzer and sanitizer runtimes): the memory checks and fuzzing.
# dataset-fashion-mnist: the idx files make demo-fashion reads (30 MB).
PKGS="build-essential g++ pkg-config libopenblas-dev check meson ninja-build cmake debhelper lintian openmpi-bin libopenmpi-dev python3-numpy python3-torch libtorch-dev python3-venv python3-setuptools python3-wheel abigail-tools valgrind clang-14 libclang-rt-14-dev dataset-fashion-mnist"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
        missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "install-deps: installing:$missing"
if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
else
    SUDO=
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends $missing
