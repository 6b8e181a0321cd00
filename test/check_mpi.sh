#!/bin/sh
# check_mpi.sh EXAMPLE DATA — data-parallel SAM under Open MPI:
#  1. two ranks end with bit-identical parameters (per-replica ascent);
#  2. with the ascent synced, two ranks match one process on the same global
#     batches to 1e-5 relative (L2 norm of the parameter difference).
set -eu
exe=$1
data=$2
command -v mpirun >/dev/null || { echo "check_mpi: mpirun not found" >&2; exit 1; }
# Open MPI refuses root unless told; CI runs as root.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
run() { mpirun --oversubscribe -np "$1" "$exe" --data "$data" --quiet --dump "$dir/$2" $3; }

run 2 replicas ""
cmp -s "$dir/replicas.0" "$dir/replicas.1" ||
    { echo "check_mpi: the two ranks' parameters differ" >&2; exit 1; }

run 2 synced --sync-ascent
cmp -s "$dir/synced.0" "$dir/synced.1" ||
    { echo "check_mpi: the synced ranks' parameters differ" >&2; exit 1; }
run 1 single ""
rel=$(paste "$dir/synced.0" "$dir/single.0" |
      awk '{ d = $1 - $2; n += d * d; b += $2 * $2 } END { printf "%.3g", sqrt(n / b) }')
awk -v r="$rel" 'BEGIN { exit !(r <= 1e-5) }' ||
    { echo "check_mpi: 2 synced ranks differ from 1 process by $rel (relative)" >&2; exit 1; }
echo "check_mpi: ok (2 ranks bit-identical; synced ascent vs 1 process: $rel relative)"
