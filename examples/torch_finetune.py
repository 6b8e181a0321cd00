#!/usr/bin/python3
"""torch_finetune.py — fine-tune a small PyTorch model through libregopt with
SAM, R-Drop and SMART.

A small network (pixel "embedding" -> batch norm -> dropout -> head) is first
pre-trained with plain PyTorch on the digits 0-4 of data/digits.csv; its head
is then replaced by a 10-class head and the whole network is fine-tuned on all
ten digits through the library: AdamW with warm-up and linear decay, SAM
(rho 0.05), two-call R-Drop (alpha 1) and SMART's adversarial term on the
output of the `embed` layer. The library runs every pass (clean, perturbed,
both dropout passes, the adversarial ascent) through regopt.torch.TorchModel,
which registers the module's parameters zero-copy.

    REGOPT_LIBRARY=lib/libregopt.so PYTHONPATH=python \\
        /usr/bin/python3 examples/torch_finetune.py [--epochs 8] [--min-test-acc 0.9]
"""
import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "python"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import regopt  # noqa: E402
from regopt.torch import TorchModel  # noqa: E402


class Net(nn.Module):
    def __init__(self, hidden=64, classes=5, dropout=0.1):
        super().__init__()
        self.embed = nn.Linear(64, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(self.drop(F.relu(self.bn(self.embed(x)))))


def load(path):
    d = np.loadtxt(path, delimiter=",", dtype=np.float32)
    return torch.from_numpy(d[:, :64] / 16.0), torch.from_numpy(d[:, 64].astype(np.int64))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=os.path.join(HERE, "..", "data", "digits.csv"))
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--min-test-acc", type=float, default=None)
    a = ap.parse_args()

    torch.manual_seed(a.seed)
    x, y = load(a.data)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(a.seed))
    n_test = len(y) // 5
    xte, yte, xtr, ytr = x[perm[:n_test]], y[perm[:n_test]], x[perm[n_test:]], y[perm[n_test:]]

    # 1. plain PyTorch pre-training on digits 0-4
    net = Net()
    sub = ytr < 5
    popt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(3):
        for i in range(0, int(sub.sum()), a.batch):
            popt.zero_grad()
            F.cross_entropy(net(xtr[sub][i:i + a.batch]), ytr[sub][i:i + a.batch]).backward()
            popt.step()
    net.head = nn.Linear(net.head.in_features, 10)  # the new task: ten digits

    # 2. fine-tuning through libregopt
    steps_per_epoch = (len(ytr) + a.batch - 1) // a.batch
    t0 = time.time()
    with TorchModel(net, 10, embedding="embed") as model, \
            regopt.Optimizer("adamw", lr=a.lr, weight_decay=0.01, schedule="linear",
                             warmup_steps=steps_per_epoch,
                             total_steps=steps_per_epoch * a.epochs) as opt, \
            regopt.Trainer(model, opt, seed=a.seed, reserve=a.batch) as trainer:
        opt.set_group(1, weight_decay=0.0)       # biases and batch-norm weights
        sam = trainer.add("sam", rho=0.05)       # a regopt_regularizer handle
        sam.set_group(1, adaptive=0)             # "sam.group_adaptive"
        trainer.add("rdrop", alpha=1.0)
        trainer.add("smart", lambda_=1.0, epsilon=0.05, eta=0.02, sigma=0.01)
        print("fine-tuning %d parameters (%d tensors) on %d digits, %d test; "
              "AdamW + SAM + R-Drop + SMART, libregopt %s"
              % (model.element_count, model.param_count, len(ytr), n_test, regopt.version()))
        for epoch in range(1, a.epochs + 1):
            order = torch.randperm(len(ytr), generator=torch.Generator().manual_seed(epoch))
            total = 0.0
            for i in range(0, len(ytr), a.batch):
                idx = order[i:i + a.batch]
                total += trainer.step(regopt.Batch(data=xtr[idx], labels=ytr[idx])) * len(idx)
            st = trainer.stats()
            loss, out = trainer.evaluate(regopt.Batch(data=xte, labels=yte))
            acc = float((out.argmax(1) == yte.numpy()).mean())
            print("epoch %2d  train loss %.4f  test loss %.4f  test acc %.4f  sharpness %+.4f  "
                  "R-Drop KL %.4f  SMART R_s %.5f  passes %d/%d"
                  % (epoch, total / len(ytr), loss, acc, st["sam_sharpness"],
                     st["rdrop_consistency"], st["smart_rs"], st["forward_calls"],
                     st["backward_calls"]))
    print("RESULT test_acc=%.4f test_loss=%.4f seconds=%.1f" % (acc, loss, time.time() - t0))
    if a.min_test_acc is not None and acc < a.min_test_acc:
        print("test accuracy %.4f is below %.4f" % (acc, a.min_test_acc), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
