#!/usr/bin/env python3
"""The PyTorch adapter with a torch.optim optimizer against plain PyTorch.

Times one training step of an MLP (784-1024-1024-10, batch 128; and
64-256-256-10, batch 32) four ways, alternating round after round:

    torch      plain PyTorch: forward, cross-entropy, backward, SGD.step()
    torch_sam  SAM written in torch the way davda54/sam's two-step wrapper
               does it (ascent to w + rho g/||g||, second gradient, restore,
               base SGD step); written here, not copied
    host       regopt.torch_train.TorchTrainer with torch.optim.SGD (the
               library's REGOPT_HOST kind), no regularizer, then with SAM
    builtin    the same with the library's own SGD (the fast path)

and prints per size

    RATIO method=<plain|sam> size=<s> torch_ms=<x> adapter_ms=<y> ratio=<y/x>
    BUILTIN method=<plain|sam> size=<s> builtin_ms=<z>

(ratio < 1: the adapter is faster). Figures are medians over rounds of each
round's median step time; torch.set_num_threads(--threads) for all.

    REGOPT_LIBRARY=lib/libregopt.so /usr/bin/python3 bench/torch_adapter.py
"""
import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "python"))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import regopt  # noqa: E402
from regopt.torch import TorchModel  # noqa: E402
from regopt.torch_train import TorchTrainer  # noqa: E402

SIZES = {"large": ((784, 1024, 1024, 10), 128), "small": ((64, 256, 256, 10), 32)}
LR, MOM, RHO = 0.05, 0.9, 0.05


def mlp(dims):
    torch.manual_seed(0)
    layers = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class TorchRunner:
    def __init__(self, dims, sam):
        self.net = mlp(dims)
        self.params = list(self.net.parameters())
        self.opt = torch.optim.SGD(self.params, lr=LR, momentum=MOM)
        self.sam = sam

    def step(self, x, y):
        self.opt.zero_grad()
        F.cross_entropy(self.net(x), y).backward()
        if self.sam:
            with torch.no_grad():
                norm = torch.norm(torch.stack([p.grad.norm(2) for p in self.params]), 2)
                scale = RHO / (norm + 1e-12)
                eps = [p.grad * scale for p in self.params]
                for p, e in zip(self.params, eps):
                    p.add_(e)
            self.opt.zero_grad()
            F.cross_entropy(self.net(x), y).backward()
            with torch.no_grad():
                for p, e in zip(self.params, eps):
                    p.sub_(e)
        self.opt.step()


class AdapterRunner:
    def __init__(self, dims, sam, builtin):
        self.net = mlp(dims)
        self.model = TorchModel(self.net, dims[-1], slots=1)
        if builtin:
            self.topt = None
            opt = regopt.Optimizer("sgd", lr=LR, momentum=MOM)
        else:
            opt = self.topt = torch.optim.SGD(self.net.parameters(), lr=LR, momentum=MOM)
        self.trainer = TorchTrainer(self.model, opt)
        if sam:
            self.trainer.add("sam", rho=RHO)

    def step(self, x, y):
        self.trainer.step(regopt.Batch(data=x, labels=y))

    def close(self):
        self.trainer.close()
        self.model.close()


def time_steps(runner, x, y, steps, warmup):
    for _ in range(warmup):
        runner.step(x, y)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        runner.step(x, y)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps-large", type=int, default=20)
    ap.add_argument("--steps-small", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--sizes", default="large,small")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    for size in a.sizes.split(","):
        dims, batch = SIZES[size]
        steps = a.steps_large if size == "large" else a.steps_small
        g = torch.Generator().manual_seed(1)
        x = torch.randn(batch, dims[0], generator=g)
        y = torch.randint(0, dims[-1], (batch,), generator=g)
        for method, sam in (("plain", False), ("sam", True)):
            res = {"torch": [], "host": [], "builtin": []}
            for _ in range(a.rounds):
                res["torch"].append(time_steps(TorchRunner(dims, sam), x, y, steps, a.warmup))
                for kind in ("host", "builtin"):
                    r = AdapterRunner(dims, sam, kind == "builtin")
                    res[kind].append(time_steps(r, x, y, steps, a.warmup))
                    r.close()
            t, h, b = (statistics.median(res[k]) for k in ("torch", "host", "builtin"))
            print("RATIO method=%s size=%s torch_ms=%.3f adapter_ms=%.3f ratio=%.3f"
                  % (method, size, t, h, h / t), flush=True)
            print("BUILTIN method=%s size=%s builtin_ms=%.3f" % (method, size, b), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
