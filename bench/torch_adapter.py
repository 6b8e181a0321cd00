#!/usr/bin/env python3
"""The PyTorch adapter with a torch.optim optimizer against PyTorch peers.

Times one training step of the peer's MLP (dropout 0.1; 784-1024-1024-10,
batch 128, and 64-256-256-10, batch 32) with torch.optim.AdamW(lr=1e-4) two
ways, alternating step after step within each round so that both sides
see the same machine load:

    torch    the peer's step (../shared/peer/torch_bench.py beside the
             checkout, imported, not copied; --peer to point elsewhere):
             plain PyTorch (base), SAM as davda54/sam's two-step wrapper
             (sam, asam), R-Drop's two forwards (rdrop), SMART with an
             adversarial input perturbation and an EMA teacher (smart)
    adapter  regopt.torch_train.TorchTrainer over the same module, the same
             torch.optim.AdamW as a host optimizer (REGOPT_HOST), with the
             library's SAM, ASAM, R-Drop (two calls) or SMART + Bregman
             teacher (beta 0.999; the perturbation added to the input by an
             nn.Identity the model starts with)

and prints per method and size

    RATIO method=<m> size=<s> torch_ms=<x> adapter_ms=<y> ratio=<y/x>
          cpu_torch_ms=<x'> cpu_adapter_ms=<y'> cpu_ratio=<y'/x'>

(ratio < 1: the adapter is faster; cpu_*: the thread's CPU time, which
waiting for a core on a shared machine does not inflate). Figures are
medians over rounds of each round's median step time;
torch.set_num_threads(--threads) for both.

    REGOPT_LIBRARY=lib/libregopt.so /usr/bin/python3 bench/torch_adapter.py
"""
import argparse
import copy
import importlib.util
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "python"))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

import regopt  # noqa: E402
from regopt.torch import TorchModel  # noqa: E402
from regopt.torch_train import TorchTrainer  # noqa: E402

SIZES = {"large": ((784, 1024, 1024, 10), 128), "small": ((64, 256, 256, 10), 32)}
METHODS = ("base", "sam", "asam", "rdrop", "smart")
LR, DROPOUT = 1e-4, 0.1


def load_peer(path):
    spec = importlib.util.spec_from_file_location("torch_bench_peer", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Front(nn.Module):
    """The peer's MLP behind an identity layer: the submodule whose output
    SMART perturbs is then the input itself, as in the peer."""

    def __init__(self, mlp):
        super().__init__()
        self.inp = nn.Identity()
        self.mlp = mlp

    def forward(self, x):
        return self.mlp(self.inp(x))


class PeerRunner:
    def __init__(self, peer, dims, method):
        torch.manual_seed(0)
        self.net = peer.MLP(dims, DROPOUT).train()
        teacher = copy.deepcopy(self.net)
        opt = torch.optim.AdamW(self.net.parameters(), lr=LR)
        self.step = peer.make_step(method, self.net, opt, teacher)

    def close(self):
        pass


class AdapterRunner:
    def __init__(self, peer, dims, method):
        torch.manual_seed(0)
        mlp = peer.MLP(dims, DROPOUT).train()
        if method == "smart":
            self.net = Front(mlp)
            self.model = TorchModel(self.net, dims[-1], embedding="inp", input_width=dims[0])
        else:
            self.net = mlp
            self.model = TorchModel(self.net, dims[-1], slots=2 if method == "rdrop" else 1)
        opt = torch.optim.AdamW(self.net.parameters(), lr=LR)
        self.trainer = TorchTrainer(self.model, opt)
        if method in ("sam", "asam"):
            self.trainer.add("sam", rho=0.05, adaptive=int(method == "asam"))
        elif method == "rdrop":
            self.trainer.add("rdrop", doubled=0)
        elif method == "smart":
            self.trainer.add("smart")
            self.trainer.add("bregman", beta=0.999)

    def step(self, x, y):
        self.trainer.step(regopt.Batch(data=x, labels=y))

    def close(self):
        self.trainer.close()
        self.model.close()


def interleaved(runners, x, y, steps, warmup):
    """Median step time (ms) of each runner, their steps alternating: wall
    time, and the thread's CPU time (which a busy machine's waits for a core
    do not inflate)."""
    for _ in range(warmup):
        for r in runners:
            r.step(x, y)
    wall = [[] for _ in runners]
    cpu = [[] for _ in runners]
    for _ in range(steps):
        for r, w, c in zip(runners, wall, cpu):
            t0, c0 = time.perf_counter(), time.thread_time()
            r.step(x, y)
            c.append(time.thread_time() - c0)
            w.append(time.perf_counter() - t0)
    return ([statistics.median(t) * 1e3 for t in wall],
            [statistics.median(t) * 1e3 for t in cpu])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps-large", type=int, default=20)
    ap.add_argument("--steps-small", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--sizes", default="large,small")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--peer", default=os.path.normpath(
        os.path.join(HERE, "..", "..", "shared", "peer", "torch_bench.py")))
    a = ap.parse_args()
    if not os.path.exists(a.peer):
        raise SystemExit("torch_adapter: no peer at %s (--peer)" % a.peer)
    peer = load_peer(a.peer)
    torch.set_num_threads(a.threads)
    with open("/proc/loadavg") as f:
        print("# load %s threads=%d rounds=%d" % (f.read().split(" ", 3)[:3], a.threads,
                                                   a.rounds), flush=True)
    for size in a.sizes.split(","):
        dims, batch = SIZES[size]
        steps = a.steps_large if size == "large" else a.steps_small
        g = torch.Generator().manual_seed(1)
        x = torch.randn(batch, dims[0], generator=g)
        y = torch.randint(0, dims[-1], (batch,), generator=g)
        for method in a.methods.split(","):
            res = {k: [] for k in ("torch", "adapter", "torch_cpu", "adapter_cpu")}
            for r in range(a.rounds):
                runners = [PeerRunner(peer, dims, method), AdapterRunner(peer, dims, method)]
                if r % 2:  # alternate who steps first
                    runners.reverse()
                ms, cpu = interleaved(runners, x, y, steps, a.warmup)
                if r % 2:
                    ms.reverse()
                    cpu.reverse()
                    runners.reverse()
                res["torch"].append(ms[0])
                res["adapter"].append(ms[1])
                res["torch_cpu"].append(cpu[0])
                res["adapter_cpu"].append(cpu[1])
                runners[1].close()
            t, h, tc, hc = (statistics.median(res[k])
                            for k in ("torch", "adapter", "torch_cpu", "adapter_cpu"))
            print("RATIO method=%s size=%s torch_ms=%.3f adapter_ms=%.3f ratio=%.3f "
                  "cpu_torch_ms=%.3f cpu_adapter_ms=%.3f cpu_ratio=%.3f"
                  % (method, size, t, h, h / t, tc, hc, hc / tc), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
