#!/bin/sh
# amalgamate-check.sh — prove the single-file build: regenerate dist/ and
# build against dist/regopt.c + dist/regopt.h only (plus CBLAS and Check),
# with warnings as errors, then run what was built:
#   1. dist/regopt.c alone as one object; it must define no external symbol
#      but the regopt_* API (nm);
#   2. the Check suites. Those that use the public API only compile as they
#      are. A suite that includes src/core/core.h (check_rng.c tests Philox
#      itself) cannot reach a static function from another file, so it is
#      #included into one unit right after dist/regopt.c, as an embedder's
#      own tests would; its "core/core.h" resolves to an empty stand-in, the
#      internals being already in that unit. That unit also provides the
#      library, so no test links anything from src/ or lib/;
#   3. examples/minimal.c and examples/mlp.c (CBLAS), run as in make check.
set -eu
cd "$(dirname "$0")/.."
CC=${CC:-cc}
CFLAGS="${CFLAGS:--O2 -g} -ffp-contract=off"
PKG_CONFIG=${PKG_CONFIG:-pkg-config}
PYTHON=${PYTHON:-/usr/bin/python3}
WARN="-std=c11 -Wall -Wextra -Wpedantic -Werror"
out=build/amalgamation

$PYTHON scripts/amalgamate.py dist
rm -rf "$out"
mkdir -p "$out/stub/core"

# 1. one object, nothing but the API exported
# shellcheck disable=SC2086
$CC $CFLAGS $WARN -fPIC -c dist/regopt.c -o "$out/regopt.o"
leaked=$(nm -g --defined-only "$out/regopt.o" | awk '{ print $3 }' | grep -v '^regopt_' || true)
if [ -n "$leaked" ]; then
    echo "amalgamate-check: dist/regopt.c exports more than regopt_*:" >&2
    echo "$leaked" >&2
    exit 1
fi
api=$(nm -g --defined-only "$out/regopt.o" | grep -c ' regopt_')
internal=$(nm "$out/regopt.o" | grep -c ' [tTdDbBrR] ro_' || true)
echo "amalgamate-check: regopt.o exports $api regopt_* functions and no ro_* symbol" \
     "($internal internal symbols, all local)"

# 2. the Check suites
check_cflags=$($PKG_CONFIG --cflags check)
check_libs=$($PKG_CONFIG --libs check)
echo '/* amalgamation: the internals are in dist/regopt.c, included above */' \
    > "$out/stub/core/core.h"
unit="$out/regopt_with_internal_tests.c"
echo '/* dist/regopt.c and the suites that test internal functions, one unit */' > "$unit"
echo '#include "regopt.c"' >> "$unit"
public=""
for t in test/check_*.c; do
    if grep -q '^#include "core/core.h"' "$t"; then
        echo "#include \"$(basename "$t")\"" >> "$unit"
    else
        public="$public $t"
    fi
done
# shellcheck disable=SC2086
$CC $CFLAGS $WARN $check_cflags -Idist -Itest -I"$out/stub" "$unit" $public \
    -o "$out/check_regopt" $check_libs -lm -pthread
echo "amalgamate-check: Check suites built from dist/ only" \
     "($(grep -c '^#include "check' "$unit") with internals)"
"$out/check_regopt"

# 3. examples: minimal (no BLAS) and the CBLAS MLP
blas=""
for p in cblas openblas blas; do
    if $PKG_CONFIG --exists "$p" 2>/dev/null; then blas=$p; break; fi
done
blas_cflags=""
blas_libs="-lcblas"
if [ -n "$blas" ]; then
    blas_cflags=$($PKG_CONFIG --cflags "$blas")
    blas_libs=$($PKG_CONFIG --libs "$blas")
fi
# shellcheck disable=SC2086
$CC $CFLAGS $WARN -Idist examples/minimal.c dist/regopt.c -o "$out/minimal" -lm -pthread
# shellcheck disable=SC2086
$CC $CFLAGS $WARN -Idist $blas_cflags examples/mlp.c dist/regopt.c -o "$out/mlp" $blas_libs -lm -pthread
"$out/minimal"
OPENBLAS_NUM_THREADS=1 "$out/mlp" --data data/digits.csv --min-test-acc 0.95 --quiet
echo "amalgamate-check: ok (dist/regopt.c + dist/regopt.h: tests and examples pass)"
