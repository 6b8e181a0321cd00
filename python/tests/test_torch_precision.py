"""The torch adapter with 16-bit modules: .bfloat16() (computes in bf16 on
the CPU) and .half() (torch 1.13 has no fp16 matmul on the CPU: the test
module widens its weights to float32 and computes there, as the C example
does). Both train through the library's fp32 master with SAM; fp16 gets
dynamic loss scaling."""
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import regopt  # noqa: E402

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from regopt.torch import TorchModel
    HAVE_TORCH = True
except ImportError:  # pragma: no cover
    HAVE_TORCH = False


if HAVE_TORCH:
    class Widening(nn.Module):
        """Parameters in any dtype, arithmetic in float32."""

        def __init__(self, d_in=12, hidden=16, classes=5):
            super().__init__()
            self.l1 = nn.Linear(d_in, hidden)
            self.l2 = nn.Linear(hidden, classes)

        def forward(self, x):
            h = torch.tanh(F.linear(x.float(), self.l1.weight.float(), self.l1.bias.float()))
            return F.linear(h, self.l2.weight.float(), self.l2.bias.float())


@unittest.skipUnless(HAVE_TORCH, "torch (python3-torch) is not installed")
class TorchPrecision(unittest.TestCase):
    def train(self, net, steps=30, sam=True):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(32, 12, generator=g)
        y = torch.randint(0, 5, (32,), generator=g)
        dt = next(net.parameters()).dtype
        with TorchModel(net, 5) as model, regopt.Optimizer("adamw", lr=0.02) as opt, \
                regopt.Trainer(model, opt, seed=3) as trainer:
            if sam:
                trainer.add("sam", rho=0.05)
            first = None
            for _ in range(steps):
                trainer.step(regopt.Batch(data=x.to(dt) if dt == torch.bfloat16 else x,
                                          labels=y))
                first = trainer.stat("loss") if first is None else first
            return first, trainer.stat("loss"), trainer.stat("loss_scale"), \
                trainer.stat("skipped_steps")

    def test_bfloat16_module(self):
        torch.manual_seed(1)
        ref = Widening()
        net = Widening()
        net.load_state_dict(ref.state_dict())
        net = net.bfloat16()
        self.assertEqual(net.l1.weight.dtype, torch.bfloat16)
        f32 = self.train(ref)
        b16 = self.train(net)
        self.assertLess(b16[1], 0.7 * b16[0])  # it learns
        self.assertLess(abs(b16[1] - f32[1]), 0.05 * f32[1] + 0.02)
        self.assertEqual(b16[2], 1.0)  # bf16: no scaling by default
        self.assertEqual(net.l1.weight.dtype, torch.bfloat16)

    def test_half_module(self):
        torch.manual_seed(1)
        ref = Widening()
        net = Widening()
        net.load_state_dict(ref.state_dict())
        net = net.half()
        f32 = self.train(ref)
        f16 = self.train(net)
        self.assertLess(f16[1], 0.7 * f16[0])
        self.assertLess(abs(f16[1] - f32[1]), 0.05 * f32[1] + 0.02)
        self.assertEqual(f16[2], 65536.0)  # fp16: dynamic scaling
        self.assertEqual(net.l1.weight.grad.dtype, torch.float16)

    def test_float64_is_refused(self):
        with self.assertRaises(TypeError):
            TorchModel(Widening().double(), 5)


if __name__ == "__main__":
    unittest.main()
