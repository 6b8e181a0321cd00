#!/bin/sh
# check_dispatch.sh — the library's wider x86 paths (AVX-512, AVX+FMA, AVX,
# AVX2) give the same bits as the baseline: test/dispatch_hash.c is built
# from the sources with run-time dispatch and with -DRO_NO_DISPATCH, and
# the two runs must print the same hashes. Paths this CPU lacks are not
# exercised (the log says which it has).
set -eu
CC=${CC:-cc}
out=${1:-build/dispatch}
mkdir -p "$out"
flags="-O2 -std=c11 -ffp-contract=off -Wall -Wextra -Wpedantic -Werror -Iinclude -Isrc"
$CC $flags test/dispatch_hash.c src/*/*.c -lm -pthread -o "$out/dispatch_on"
$CC $flags -DRO_NO_DISPATCH test/dispatch_hash.c src/*/*.c -lm -pthread -o "$out/dispatch_off"
"$out/dispatch_on" > "$out/on.txt"
"$out/dispatch_off" > "$out/off.txt"
isa=$(grep -o -w -E 'avx512f|avx2|fma|avx' /proc/cpuinfo 2>/dev/null | sort -u | tr '\n' ' ' || true)
if ! cmp -s "$out/on.txt" "$out/off.txt"; then
    echo "check_dispatch: FAIL: dispatched paths ($isa) differ from the baseline:"
    diff "$out/off.txt" "$out/on.txt" | head -20
    exit 1
fi
echo "check_dispatch: ok ($(wc -l < "$out/on.txt") hashes equal; CPU has: ${isa:-no wider ISA})"
