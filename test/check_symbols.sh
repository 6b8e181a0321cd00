#!/bin/sh
# check_symbols.sh LIB SONAME — the shared library exports regopt_* only
# (plus the version node), and carries the expected SONAME.
set -eu
lib=$1
want_soname=$2
bad=$(nm -D --defined-only "$lib" | awk '{print $3}' | sed 's/@.*//' |
      grep -v -E '^(regopt_[a-z0-9_]+|LIBREGOPT_[0-9_]+)$' || true)
if [ -n "$bad" ]; then
    echo "check_symbols: exported symbols without the regopt_ prefix:" >&2
    echo "$bad" >&2
    exit 1
fi
count=$(nm -D --defined-only "$lib" | awk '{print $3}' | grep -c '^regopt_')
soname=$(readelf -d "$lib" | sed -n 's/.*Library soname: \[\(.*\)\].*/\1/p')
if [ "$soname" != "$want_soname" ]; then
    echo "check_symbols: SONAME is '$soname', expected '$want_soname'" >&2
    exit 1
fi
# every exported function is declared in the public header
hdr=$(dirname "$0")/../include/regopt.h
for s in $(nm -D --defined-only "$lib" | awk '{print $3}' | sed 's/@.*//' | grep '^regopt_'); do
    grep -q "\\b$s(" "$hdr" || { echo "check_symbols: $s is not in regopt.h" >&2; exit 1; }
done
echo "check_symbols: ok ($count regopt_* symbols, SONAME $soname)"
