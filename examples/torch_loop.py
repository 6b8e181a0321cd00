#!/usr/bin/python3
"""torch_loop.py — a typical PyTorch training loop through libregopt.

An encoder (Linear -> LayerNorm -> GELU -> Dropout, twice) and a linear head
on data/digits.csv, trained the way torch users write it: a torch.optim
optimizer (AdamW) with a torch scheduler (linear warm-up then cosine, via
LambdaLR), gradient accumulation (each step is several micro-batches), a
loss written in torch with auxiliary terms (cross-entropy plus a
confidence penalty, Pereyra et al. 2017, and an activation penalty on the
encoder's hidden features), and SAM + R-Drop composed by the
library around all of it (regopt.torch_train.TorchTrainer). Checkpoints are
one torch.save dict (module, optimizer, scheduler, trainer).

    REGOPT_LIBRARY=lib/libregopt.so PYTHONPATH=python \\
        /usr/bin/python3 examples/torch_loop.py [--epochs 6] [--min-test-acc 0.9]
"""
import argparse
import math
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "python"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import regopt  # noqa: E402
from regopt.torch import TorchModel  # noqa: E402
from regopt.torch_train import TorchTrainer  # noqa: E402


class Encoder(nn.Module):
    def __init__(self, d_in=64, hidden=96, classes=10, dropout=0.1):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(d_in, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout))
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        h = self.encoder(x)
        return {"logits": self.head(h), "features": h}  # a dict: TorchModel(output=...)


def loss_fn(logits, batch, beta=0.05, gamma=1e-3):
    """Cross-entropy plus an auxiliary confidence penalty (-beta * entropy),
    and an auxiliary term on the encoder's features (an activation penalty,
    gamma * mean h^2): returned apart, it is weighted by the library as the
    task loss is (each micro-batch's share, each R-Drop copy, SAM's points)."""
    ce = F.cross_entropy(logits, batch.labels)
    p = logits.log_softmax(-1)
    entropy = -(p.exp() * p).sum(-1).mean()
    features = batch.module_output["features"]  # hidden activations of this forward
    return ce - beta * entropy, gamma * features.pow(2).mean()


def load(path):
    d = np.loadtxt(path, delimiter=",", dtype=np.float32)
    return torch.from_numpy(d[:, :64] / 16.0), torch.from_numpy(d[:, 64].astype(np.int64))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=os.path.join(HERE, "..", "data", "digits.csv"))
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--micro", type=int, default=16, help="rows per micro-batch")
    ap.add_argument("--accumulate", type=int, default=4, help="micro-batches per step")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--min-test-acc", type=float, default=None)
    a = ap.parse_args()

    x, y = load(a.data)
    g = torch.Generator().manual_seed(a.seed)
    perm = torch.randperm(len(y), generator=g)
    n_test = len(y) // 5
    xt, yt, xs, ys = x[perm[:n_test]], y[perm[:n_test]], x[perm[n_test:]], y[perm[n_test:]]

    torch.manual_seed(a.seed)
    net = Encoder()
    opt = torch.optim.AdamW(net.parameters(), lr=a.lr, weight_decay=0.01)
    rows = a.micro * a.accumulate
    steps_per_epoch = len(ys) // rows
    total = a.epochs * steps_per_epoch
    warmup = max(1, total // 10)

    def schedule(t):  # linear warm-up, then cosine to 0
        if t < warmup:
            return (t + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (t - warmup) / max(1, total - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    model = TorchModel(net, 10, output="logits")
    trainer = TorchTrainer(model, opt, scheduler=sched, loss_fn=loss_fn, seed=a.seed)
    trainer.add("sam", rho=0.05)
    trainer.add("rdrop", alpha=0.5)

    ck = os.path.join(tempfile.mkdtemp(), "ck.pt")
    for epoch in range(a.epochs):
        order = torch.randperm(len(ys), generator=g)
        for s in range(steps_per_epoch):
            idx = order[s * rows:(s + 1) * rows]
            micro = [regopt.Batch(data=xs[i], labels=ys[i]) for i in idx.split(a.micro)]
            trainer.step(micro)  # one update from the accumulated micro-batches
            sched.step()
        torch.save(trainer.state_dict(), ck)  # module, optimizer, scheduler, trainer
        net.eval()
        with torch.no_grad():
            acc = float((net(xt)["logits"].argmax(-1) == yt).float().mean())
        print("epoch %d  loss %.4f  lr %.2e  test acc %.4f  sam sharpness %.4f"
              % (epoch + 1, trainer.loss, trainer.lr, acc, trainer.stat("sam_sharpness")))
    trainer.load_state_dict(torch.load(ck))  # a resume, as a torch user writes it
    trainer.close()
    model.close()
    if a.min_test_acc is not None and acc < a.min_test_acc:
        print("FAIL: test accuracy %.4f < %.4f" % (acc, a.min_test_acc))
        return 1
    print("RESULT test_acc=%.4f steps=%d" % (acc, total))
    return 0


if __name__ == "__main__":
    sys.exit(main())
