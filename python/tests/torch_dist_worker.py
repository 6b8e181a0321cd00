"""One replica of test_torch_distributed: SAM + R-Drop with a torch.optim
optimizer over a gloo process group; writes its parameters and losses."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn as nn  # noqa: E402

import regopt  # noqa: E402
from regopt.torch import TorchModel  # noqa: E402
from regopt.torch_train import TorchTrainer  # noqa: E402


def main(rank, world, init, out, steps):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.manual_seed(0)  # the same initial weights on every replica
    net = nn.Sequential(nn.Linear(12, 16), nn.LayerNorm(16), nn.Tanh(), nn.Dropout(0.1),
                        nn.Linear(16, 5))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(100 + rank)  # each replica its own data
    x, y = torch.randn(8 * steps, 12, generator=g), torch.randint(0, 5, (8 * steps,), generator=g)
    with TorchModel(net, 5) as model:
        t = TorchTrainer(model, opt, process_group=dist.group.WORLD, seed=5)
        t.add("sam", rho=0.05)
        t.add("rdrop", alpha=0.3)
        losses = []
        for k in range(steps):
            losses.append(t.step(regopt.Batch(data=x[8 * k:8 * k + 8], labels=y[8 * k:8 * k + 8])))
        t.close()
    torch.save({"params": [p.detach().clone() for p in net.parameters()], "losses": losses}, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]))
