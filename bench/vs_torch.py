#!/usr/bin/env python3
"""libregopt against PyTorch on the same MLP training step.

Runs the PyTorch peer (../shared/peer/torch_bench.py beside the checkout,
unchanged; --peer to point elsewhere) and
bench/bench in alternation, round after round, with the same sizes, batch,
steps and number of threads, and prints per method and size

    RATIO method=<m> size=<large|small> torch_ms=<x> regopt_ms=<y> speedup=<x/y>

where each figure is the median over rounds of that round's median step
time. Both sides use the same OpenBLAS (torch links Debian's libblas.so.3);
OPENBLAS_NUM_THREADS and OMP_NUM_THREADS are set to --threads for both, and
the peer gets --threads too. Method pairs (ours <- peer's):

    plain <- base, sam <- sam, asam <- asam, smart <- smart,
    rdrop (our doubled batch) <- rdrop, rdrop_twocall <- rdrop.

The peer has no SMART+SAM; ours is reported without a ratio.

Run with Debian's interpreter: /usr/bin/python3 bench/vs_torch.py --help
"""
import argparse
import os
import re
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SIZES = {"large": ("784,1024,1024,10", 128), "small": ("64,256,256,10", 32)}
# ours -> (peer's method, name printed in RATIO lines)
PAIRS = [("plain", "base", "plain"), ("sam", "sam", "sam"), ("asam", "asam", "asam"),
         ("rdrop_doubled", "rdrop", "rdrop"), ("rdrop_twocall", "rdrop", "rdrop_twocall"),
         ("smart", "smart", "smart")]


def run(cmd, env):
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       universal_newlines=True)
    if p.returncode != 0:
        sys.stderr.write(p.stdout + p.stderr)
        raise SystemExit("vs_torch: failed: " + " ".join(cmd))
    return p.stdout


def peer_round(args, size, env):
    sizes, batch = SIZES[size]
    out = run([args.python, args.peer, "--sizes", sizes, "--batch", str(batch),
               "--steps", str(args.steps[size]), "--warmup", str(args.warmup),
               "--threads", str(args.threads),
               "--methods", ",".join(sorted({p for _, p, _ in PAIRS}))], env)
    ms = {}
    for m in re.finditer(r"^peer method=(\S+) .* ms_per_step_median=([0-9.]+)", out, re.M):
        ms[m.group(1)] = float(m.group(2))
    return ms


def ours_round(args, size, env):
    methods = [o for o, _, _ in PAIRS] + (["smart_sam"] if args.smart_sam else [])
    out = run([args.bench, "--no-kernels", "--size", size, "--methods", ",".join(methods),
               "--runs", "1", "--steps", str(args.steps[size]), "--warmup", str(args.warmup)],
              env)
    ms = {}
    for m in re.finditer(r"^BENCH kind=step size=\S+ method=(\S+) .*?ms_median=([0-9.]+)",
                         out, re.M):
        ms[m.group(1)] = float(m.group(2))
    return ms


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps-large", type=int, default=30)
    ap.add_argument("--steps-small", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--sizes", default="large,small")
    ap.add_argument("--smart-sam", action="store_true", help="also time our SMART+SAM")
    ap.add_argument("--bench", default=os.path.join(HERE, "bench"))
    ap.add_argument("--peer", default=os.path.normpath(
        os.path.join(HERE, "..", "..", "shared", "peer", "torch_bench.py")))
    ap.add_argument("--python", default="/usr/bin/python3")
    args = ap.parse_args()
    args.steps = {"large": args.steps_large, "small": args.steps_small}
    sizes = [s for s in args.sizes.split(",") if s]
    if any(s not in SIZES for s in sizes):
        raise SystemExit("vs_torch: sizes are large and/or small")
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(args.threads),
               OMP_NUM_THREADS=str(args.threads))
    print("BENCH kind=vs_torch_env threads=%d rounds=%d openblas_coretype=%s"
          % (args.threads, args.rounds, env.get("OPENBLAS_CORETYPE", "unset")), flush=True)
    torch_ms = {s: {} for s in sizes}
    ours_ms = {s: {} for s in sizes}
    for r in range(args.rounds):
        for size in sizes:
            # alternate who goes first, so that neither always runs warmer
            sides = [("torch", peer_round), ("regopt", ours_round)]
            for side, fn in (sides if r % 2 == 0 else sides[::-1]):
                ms = fn(args, size, env)
                store = torch_ms if side == "torch" else ours_ms
                for k, v in ms.items():
                    store[size].setdefault(k, []).append(v)
                print("# round %d %s %s: %s" % (r, size, side, " ".join(
                    "%s=%.3f" % kv for kv in sorted(ms.items()))), flush=True)
    for size in sizes:
        for ours, peer, name in PAIRS:
            t = statistics.median(torch_ms[size][peer])
            o = statistics.median(ours_ms[size][ours])
            print("RATIO method=%s size=%s torch_ms=%.3f regopt_ms=%.3f speedup=%.2f"
                  % (name, size, t, o, t / o), flush=True)
        if args.smart_sam:
            o = statistics.median(ours_ms[size]["smart_sam"])
            print("# smart_sam size=%s regopt_ms=%.3f (the peer has no SMART+SAM)" % (size, o))


if __name__ == "__main__":
    main()
