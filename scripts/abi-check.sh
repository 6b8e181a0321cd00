#!/bin/sh
# abi-check.sh [--update] — guard the ABI of libregopt.so against the
# committed baseline (abi/<SONAME>.abi, an abidw dump, and abi/symbols.txt,
# the exported symbols with their version node).
#
#   sh scripts/abi-check.sh            build the library, compare, fail on:
#     - any incompatible change (removed symbol, changed parameter or return
#       type, changed layout of a public struct, renumbered enumerator, ...)
#       unless the SONAME major changed;
#     - any addition (function, enumerator, ...) the baseline does not record:
#       additions are compatible, but the baseline must say what version 0
#       exports, so they are recorded in the same commit (make abi-dump, and
#       an "ABI" note in CHANGELOG.md);
#     - an exported symbol without the regopt_ prefix or without a version node.
#   sh scripts/abi-check.sh --update   rewrite both files (what make abi-dump runs).
#
# Only the types of include/regopt.h are compared (--headers-dir plus
# --drop-private-types): the handles are opaque, so the library may change
# struct regopt_trainer and friends freely.
set -eu
cd "$(dirname "$0")/.."
MAKE=${MAKE:-make}

update=0
case "${1:-}" in
    --update) update=1 ;;
    "") ;;
    *) echo "usage: $0 [--update]" >&2; exit 2 ;;
esac

for tool in abidw abidiff nm readelf; do
    command -v $tool >/dev/null 2>&1 || {
        echo "abi-check: $tool not found (Debian: abigail-tools, binutils;" \
             "sh scripts/install-deps.sh)" >&2
        exit 2
    }
done

# Debug information is what abidw reads the types from: build with -g.
$MAKE --no-print-directory lib CFLAGS="${CFLAGS:--O2 -g}" >/dev/null
major=$(sh scripts/version.sh | cut -d. -f1)
lib=lib/libregopt.so.$major
soname=$(readelf -d "$lib" | sed -n 's/.*Library soname: \[\(.*\)\].*/\1/p')
[ "$soname" = "libregopt.so.$major" ] || {
    echo "abi-check: $lib has SONAME '$soname', expected libregopt.so.$major" >&2
    exit 1
}

# Same options for the dump and the fresh build, so only real changes differ.
# --exported-interfaces-only: without it libabigail 2.2 keeps, for a function
# whose address another file takes (checkpoint.c's setter table), only that
# file's declaration, which carries no symbol, and never compares the
# function at all. Short locations: the dump must not depend on the checkout
# path (and the headers filter needs locations to see public types).
DW_OPTS="--headers-dir include --drop-private-types --exported-interfaces-only --short-locs
         --no-corpus-path --no-comp-dir-path --no-elf-needed --type-id-style hash"
DIFF_OPTS="--hd2 include --drop-private-types --exported-interfaces-only --no-show-locs
           --fail-no-debug-info"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

# name@@NODE per exported symbol (the node itself, an absolute symbol, left out).
nm -D --defined-only "$lib" | awk '$2 != "A" { print $3 }' | LC_ALL=C sort > "$tmp/symbols"

# The header's object-like macros with values (flag bits, limits) are
# compiled into every program, so they are ABI too, and DWARF does not
# have them. The version, the guard and the attribute macros are not.
${CC:-cc} -E -dM -x c include/regopt.h |
    sed -n 's/^#define \(REGOPT_[A-Z0-9_]*\) \(..*\)$/\1 \2/p' |
    grep -v -E '^REGOPT_(VERSION_[A-Z]+|API|NODISCARD|H) ' | LC_ALL=C sort > "$tmp/constants"

bad=$(grep -v -E '^regopt_[a-z0-9_]+@@?LIBREGOPT_[0-9_]+$' "$tmp/symbols" || true)
if [ -n "$bad" ]; then
    echo "abi-check: exported symbols must be regopt_* in a LIBREGOPT_* version node" \
         "(src/regopt.map):" >&2
    echo "$bad" >&2
    exit 1
fi

baseline=abi/$soname.abi
if [ "$update" = 1 ]; then
    mkdir -p abi
    # shellcheck disable=SC2086
    abidw $DW_OPTS --out-file "$baseline" "$lib"
    {
        echo "# Exported symbols of $soname, one name@@version-node a line; written by"
        echo "# make abi-dump with $baseline. scripts/abi-check.sh fails when the"
        echo "# library exports anything else."
        cat "$tmp/symbols"
    } > abi/symbols.txt
    {
        echo "# The public header's constant macros and their values (flags, limits);"
        echo "# written by make abi-dump. A changed or removed value breaks the ABI."
        cat "$tmp/constants"
    } > abi/constants.txt
    echo "abi-check: wrote $baseline, abi/symbols.txt ($(wc -l < "$tmp/symbols") symbols)" \
         "and abi/constants.txt ($(wc -l < "$tmp/constants") macros)"
    # one baseline: an older major's dump stays in git history
    for old in abi/libregopt.so.*.abi; do
        [ "$old" = "$baseline" ] || rm -f "$old"
    done
    echo "abi-check: commit abi/ in the same commit as the API change, with a CHANGELOG.md" \
         "\"ABI\" note saying what was added (or, for a new major, what broke)"
    exit 0
fi

if [ ! -f "$baseline" ]; then
    old=$(ls abi/libregopt.so.*.abi 2>/dev/null | grep -v "^$baseline\$" | tail -1 || true)
    if [ -z "$old" ]; then
        echo "abi-check: no baseline $baseline: run make abi-dump and commit abi/" >&2
        exit 1
    fi
    # A new SONAME major is the one way to make incompatible changes: show
    # them (for the CHANGELOG) and pass; the new major needs its own baseline.
    echo "abi-check: SONAME major changed ($old -> $soname): incompatible changes are allowed."
    # shellcheck disable=SC2086
    abidiff $DIFF_OPTS --ignore-soname "$old" "$lib" || true
    echo "abi-check: record the new baseline with make abi-dump" \
         "(CHANGELOG.md: ABI break, SONAME $soname)"
    exit 0
fi

# Every exported function must be tied to its symbol in the dump, or abidiff
# silently skips it (see DW_OPTS).
untied=$(grep -c "<function-decl name='regopt_[a-z0-9_]*'" "$baseline" || true)
tied=$(grep "<function-decl name='regopt_" "$baseline" | grep -c "elf-symbol-id=" || true)
if [ "$untied" != "$tied" ]; then
    echo "abi-check: $baseline describes $((untied - tied)) regopt_* function(s) without their" \
         "symbol (libabigail would not compare them); regenerate it with make abi-dump" >&2
    exit 1
fi

status=0
const_break=0
# Symbols first: a plain list is the clearest report of an addition or removal.
grep -v '^#' abi/symbols.txt | LC_ALL=C sort > "$tmp/recorded"
LC_ALL=C comm -13 "$tmp/recorded" "$tmp/symbols" > "$tmp/added"
LC_ALL=C comm -23 "$tmp/recorded" "$tmp/symbols" > "$tmp/removed"
if [ -s "$tmp/removed" ]; then
    echo "abi-check: exported symbols removed (programs linked to $soname call them):"
    sed 's/^/    /' "$tmp/removed"
    status=1
fi
if [ -s "$tmp/added" ]; then
    echo "abi-check: new exported symbols not recorded in abi/symbols.txt:"
    sed 's/^/    /' "$tmp/added"
    status=1
fi
grep -v '^#' abi/constants.txt | LC_ALL=C sort > "$tmp/rec_constants"
LC_ALL=C comm -23 "$tmp/rec_constants" "$tmp/constants" > "$tmp/const_gone"
LC_ALL=C comm -13 "$tmp/rec_constants" "$tmp/constants" > "$tmp/const_new"
if [ -s "$tmp/const_gone" ]; then
    echo "abi-check: header constants changed or removed (compiled into programs):"
    sed 's/^/    was: /' "$tmp/const_gone"
    sed 's/^/    now: /' "$tmp/const_new"
    const_break=1
elif [ -s "$tmp/const_new" ]; then
    echo "abi-check: new header constants not recorded in abi/constants.txt:"
    sed 's/^/    /' "$tmp/const_new"
    status=1
fi

# abidiff's exit status is a bit mask: 1 error, 2 usage, 4 ABI change,
# 8 incompatible change. It counts additions as changes, and does not set 8
# for every break (a changed parameter type is a plain 4). So a second run
# without the additions (added functions; members appended to the
# size-prefixed structs, abi/regopt.suppr) tells them from everything else.
# shellcheck disable=SC2086
rc=0; abidiff $DIFF_OPTS "$baseline" "$lib" > "$tmp/report" 2>&1 || rc=$?
if [ $((rc & 3)) -ne 0 ]; then
    cat "$tmp/report"
    echo "abi-check: abidiff failed (status $rc)" >&2
    exit 1
fi
# shellcheck disable=SC2086
rc2=0; abidiff $DIFF_OPTS --no-added-syms --suppr abi/regopt.suppr "$baseline" "$lib" \
    > /dev/null 2>&1 || rc2=$?
incompatible=0
[ $((rc & 4)) -eq 0 ] || cat "$tmp/report"
if [ $((rc2 & 12)) -ne 0 ] || [ -s "$tmp/removed" ] || [ "$const_break" = 1 ]; then
    incompatible=1
elif [ $((rc & 4)) -ne 0 ]; then
    status=1
else
    # Enumerators added to a public enum are "harmless" to abidiff, which
    # hides them; they are additions the baseline must record all the same.
    # shellcheck disable=SC2086
    rc3=0; abidiff $DIFF_OPTS --harmless "$baseline" "$lib" > "$tmp/harmless" 2>&1 || rc3=$?
    if [ $((rc3 & 4)) -ne 0 ]; then
        cat "$tmp/harmless"
        status=1
    fi
fi

if [ "$incompatible" = 1 ]; then
    echo "abi-check: FAIL: INCOMPATIBLE ABI change against $baseline."
    echo "abi-check: keep the old signatures, layouts and values; for a deliberate break" \
         "raise REGOPT_VERSION_MAJOR (new SONAME) and run make abi-dump."
    exit 1
fi
if [ "$status" -ne 0 ]; then
    echo "abi-check: FAIL: compatible additions not recorded. Record them in this commit:" \
         "make abi-dump (rewrites abi/) and a CHANGELOG.md \"ABI\" note."
    exit 1
fi
echo "abi-check: ok ($soname: $(wc -l < "$tmp/symbols") symbols, no change against $baseline)"
