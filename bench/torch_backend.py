#!/usr/bin/env python3
"""TorchModel(backend="torch") against the library's own path, on the CPU.

Times one training step of an MLP (dropout 0.1; 784-1024-1024-10, batch
128, and 64-256-256-10, batch 32) with the library's AdamW two ways,
alternating step after step within each round so that both see the same
machine load:

    builtin  TorchModel(net) -- the library updates the parameters' CPU
             memory itself (its C kernels, its threads)
    backend  TorchModel(net, backend="torch") -- every operation on the
             parameters is a TorchBackend call (torch._foreach_* kernels)

and prints per method and size

    BACKEND method=<m> size=<s> builtin_ms=<x> backend_ms=<y> ratio=<y/x>
            ops_per_step=<n>

(ratio > 1: the backend is slower; ops_per_step: backend calls a step
makes). Figures are medians over rounds of each round's median step time;
torch.set_num_threads(--threads) and trainer.threads 1 for both. The two
paths train the same bits (python/tests/test_torch_backend.py), so both
sides do the same work but for where the parameter loops run.

    REGOPT_LIBRARY=lib/libregopt.so /usr/bin/python3 bench/torch_backend.py
"""
import argparse
import copy
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

SIZES = {"large": ((784, 1024, 1024, 10), 128), "small": ((64, 256, 256, 10), 32)}
METHODS = {"base": [], "sam": [("sam", dict(rho=0.05))], "rdrop": [("rdrop", dict(alpha=1.0))],
           "smart": [("smart", dict(steps=1, epsilon=1e-5, sigma=1e-5, lambda_=1.0))]}


def mlp(dims):
    layers = [nn.Identity()]  # SMART perturbs its output (the input)
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers += [nn.ReLU(), nn.Dropout(0.1)]
    return nn.Sequential(*layers)


class Side:
    def __init__(self, net, dims, regs, backend, device):
        self.net = net
        self.model = TorchModel(net, dims[-1], embedding="0", input_width=dims[0],
                                backend=backend)
        self.opt = regopt.Optimizer("adamw", lr=1e-4, weight_decay=0.01)
        self.trainer = regopt.Trainer(self.model, self.opt, seed=1, threads=1)
        for name, kw in regs:
            self.trainer.add(name, **kw)

    def step(self, batch):
        t0 = time.perf_counter()
        self.trainer.step(batch)
        return time.perf_counter() - t0

    def close(self):
        self.trainer.close()
        self.model.close()
        self.opt.close()


def run(method, size, args):
    dims, rows = SIZES[size]
    torch.manual_seed(0)
    net = mlp(dims).to(args.device)
    sides = {"builtin": Side(copy.deepcopy(net).cpu(), dims, METHODS[method], None, "cpu"),
             "backend": Side(net, dims, METHODS[method], "torch", args.device)}
    g = torch.Generator().manual_seed(1)
    x = torch.randn(rows, dims[0], generator=g)
    y = torch.randint(0, dims[-1], (rows,), generator=g)
    batches = {"builtin": regopt.Batch(data=x, labels=y),
               "backend": regopt.Batch(data=x.to(args.device), labels=y)}
    steps = args.steps_large if size == "large" else args.steps_small
    meds = {k: [] for k in sides}
    for _ in range(args.warmup):
        for k, s in sides.items():
            s.step(batches[k])
    be = sides["backend"].model.backend
    ops_before = sum(be.calls.values())
    for _ in range(args.rounds):
        times = {k: [] for k in sides}
        for _ in range(steps):
            for k, s in sides.items():
                times[k].append(s.step(batches[k]))
        for k in sides:
            meds[k].append(statistics.median(times[k]))
    ops = (sum(be.calls.values()) - ops_before) / (args.rounds * steps)
    b, t = statistics.median(meds["builtin"]) * 1e3, statistics.median(meds["backend"]) * 1e3
    print("BACKEND method=%s size=%s device=%s builtin_ms=%.3f backend_ms=%.3f ratio=%.2f "
          "ops_per_step=%.0f" % (method, size, args.device, b, t, t / b, ops), flush=True)
    for s in sides.values():
        s.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps-large", type=int, default=10)
    ap.add_argument("--steps-small", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--sizes", default="small,large")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--device", default="cpu", help="the backend side's device (cuda: the "
                    "module and batch there; the builtin side stays on the CPU)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for size in args.sizes.split(","):
        for method in args.methods.split(","):
            run(method, size, args)


if __name__ == "__main__":
    main()
