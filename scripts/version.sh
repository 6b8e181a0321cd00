#!/bin/sh
# Print MAJOR.MINOR.PATCH from include/regopt.h, the single source of the version.
h="$(dirname "$0")/../include/regopt.h"
v() { sed -n "s/^#define REGOPT_VERSION_$1 \([0-9][0-9]*\)\$/\1/p" "$h"; }
echo "$(v MAJOR).$(v MINOR).$(v PATCH)"
