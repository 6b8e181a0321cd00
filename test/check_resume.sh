#!/bin/sh
# check_resume.sh MLP DATA — interrupted and resumed training equals
# uninterrupted training, across processes: for several method mixes, the
# digits MLP runs 6 epochs straight, then 2 epochs with --save and a stop,
# then a new process --resume's the remaining 4; the final weights' hashes
# (RESULT ... weights=) must be equal. The batch-norm case proves that host
# state registered as frozen tensors travels in the checkpoint too.
set -eu
exe=$1
data=$2
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
hash_of() { sed -n 's/^RESULT .* weights=\([0-9a-f]*\)$/\1/p'; }

check() {
    name=$1
    shift
    whole=$("$exe" --data "$data" --epochs 6 --quiet "$@" | hash_of)
    "$exe" --data "$data" --epochs 6 --quiet --save "$dir/$name.ckpt" --stop-after 2 "$@" >/dev/null
    resumed=$("$exe" --data "$data" --epochs 6 --quiet --resume "$dir/$name.ckpt" "$@" | hash_of)
    if [ -z "$whole" ] || [ "$whole" != "$resumed" ]; then
        echo "check_resume: $name: uninterrupted $whole, resumed $resumed" >&2
        exit 1
    fi
    echo "check_resume: $name ok (weights $whole)"
}

check adamw
check sam-bn --method sam --bn
check gsam --method gsam
check rdrop --rdrop 1
check smart-bregman --smart 1 --bregman 1
# a checkpoint of another setup is refused, with a message, not misread
if "$exe" --data "$data" --epochs 6 --quiet --resume "$dir/rdrop.ckpt" 2>"$dir/err" >/dev/null; then
    echo "check_resume: an R-Drop checkpoint was loaded into a plain trainer" >&2
    exit 1
fi
grep -q "regularizers" "$dir/err" || { echo "check_resume: unclear refusal:" >&2; cat "$dir/err" >&2; exit 1; }
echo "check_resume: ok"
