"""Auxiliary losses on hidden activations through TorchTrainer's loss_fn,
weighted by regopt_pass.task_scale: SAM and R-Drop with an auxiliary term
against the same objective written in plain torch (dropout replayed from
the seeds the library handed to each forward), and task_scale per pass."""
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import regopt  # noqa: E402

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from regopt import _lib as L
    from regopt.torch import TorchModel
    from regopt.torch_train import TorchTrainer
    HAVE_TORCH = True
except ImportError:  # pragma: no cover
    HAVE_TORCH = False

RHO, LR, AUX = 0.05, 0.1, 0.3

if HAVE_TORCH:
    class AuxNet(nn.Module):
        """Returns the logits and the hidden activations; records the dropout
        seed of every forward (the adapter seeds torch's generator with
        pass.seed) so that the reference can replay it."""

        def __init__(self, p=0.25):
            super().__init__()
            self.embed = nn.Linear(12, 16)
            self.drop = nn.Dropout(p)
            self.head = nn.Linear(16, 5)
            self.seeds = []

        def forward(self, x):
            self.seeds.append(torch.initial_seed())
            h = torch.tanh(self.embed(x))
            return {"logits": self.head(self.drop(h)), "hidden": h}

    def aux_of(out):
        return AUX * out["hidden"].pow(2).mean()

    def loss_fn(outputs, b):
        return F.cross_entropy(outputs, b.labels), aux_of(b.module_output)

    def sym_kl_half(a, b):
        la, lb = F.log_softmax(a, -1), F.log_softmax(b, -1)
        return 0.5 * (F.kl_div(la, lb, log_target=True, reduction="batchmean")
                      + F.kl_div(lb, la, log_target=True, reduction="batchmean"))


def rel_err(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / max(b.norm(), 1e-30))


def micro_batches(step):
    """Two micro-batches of unequal rows (their task_scale differs)."""
    g = torch.Generator().manual_seed(100 + step)
    x, y = torch.randn(12, 12, generator=g), torch.randint(0, 5, (12,), generator=g)
    return [(x[:8], y[:8]), (x[8:], y[8:])]


@unittest.skipUnless(HAVE_TORCH, "torch (python3-torch) is not installed")
class TorchAuxTest(unittest.TestCase):

    def tearDown(self):
        import gc
        gc.collect()
        self.assertEqual(regopt.live_handles(), {"model": 0, "optimizer": 0, "trainer": 0})

    def _run(self, method, steps=5):
        torch.manual_seed(3)
        net, ref = AuxNet(), AuxNet()
        ref.load_state_dict(net.state_dict())
        ref.train()
        ref_opt = torch.optim.SGD(ref.parameters(), lr=LR)
        with TorchModel(net, 5, output="logits") as m:
            t = TorchTrainer(m, torch.optim.SGD(net.parameters(), lr=LR), loss_fn=loss_fn)
            if method == "sam":
                t.add("sam", rho=RHO)
            else:
                t.add("rdrop", doubled=0)
            for s in range(steps):
                mbs = micro_batches(s)
                net.seeds = []
                t.step([regopt.Batch(data=x, labels=y) for x, y in mbs])
                seeds = iter(net.seeds)
                (self._sam_step if method == "sam" else self._rdrop_step)(ref, ref_opt, mbs,
                                                                          seeds)
                for a, b in zip(net.parameters(), ref.parameters()):
                    self.assertLess(rel_err(a, b), 2e-6, "%s step %d" % (method, s))
            t.close()

    @staticmethod
    def _forward(ref, x, seeds):
        torch.manual_seed(next(seeds))
        return ref(x)

    def _sam_step(self, ref, opt, mbs, seeds):
        n = sum(len(x) for x, _ in mbs)
        seeds = list(seeds)
        params = list(ref.parameters())

        def objective(ss):
            total = 0.0
            for (x, y), sd in zip(mbs, ss):
                torch.manual_seed(sd)
                out = ref(x)
                total = total + len(x) / n * (F.cross_entropy(out["logits"], y) + aux_of(out))
            return total

        opt.zero_grad()
        objective(seeds[:2]).backward()
        with torch.no_grad():
            norm = torch.norm(torch.stack([p.grad.norm(2) for p in params]), 2)
            old = [p.detach().clone() for p in params]
            for p in params:
                p.add_(p.grad * (RHO / (norm + 1e-12)))
        opt.zero_grad()
        objective(seeds[2:]).backward()
        with torch.no_grad():
            for p, o in zip(params, old):
                p.copy_(o)
        opt.step()

    def _rdrop_step(self, ref, opt, mbs, seeds):
        n = sum(len(x) for x, _ in mbs)
        opt.zero_grad()
        total = 0.0
        for x, y in mbs:
            o1 = self._forward(ref, x, seeds)
            o2 = self._forward(ref, x, seeds)
            z1, z2 = o1["logits"], o2["logits"]
            obj = (F.cross_entropy(z1, y) + aux_of(o1) + F.cross_entropy(z2, y) + aux_of(o2)
                   + sym_kl_half(z1, z2))
            total = total + len(x) / n * obj
        total.backward()
        opt.step()

    def test_sam_with_aux_equals_torch(self):
        self._run("sam")

    def test_rdrop_with_aux_equals_torch(self):
        self._run("rdrop")

    def test_task_scale_per_pass(self):
        seen = []

        class Recording(TorchModel):
            def _backward(self, p):
                seen.append((p._c.flags, p.task_scale))
                return TorchModel._backward(self, p)

        class Embedded(nn.Module):
            def __init__(self):
                super().__init__()
                self.inp = nn.Identity()
                self.net = AuxNet()

            def forward(self, x):
                return self.net(self.inp(x))

        torch.manual_seed(0)
        net = Embedded()
        with Recording(net, 5, output="logits", embedding="inp", input_width=12) as m:
            t = TorchTrainer(m, torch.optim.SGD(net.parameters(), lr=LR), loss_fn=loss_fn)
            t.add("smart")
            mbs = micro_batches(0)
            t.step([regopt.Batch(data=x, labels=y) for x, y in mbs])
            task = [s for f, s in seen if not f & L.PASS_NO_PARAM_GRAD and s != 0.0]
            # the task passes weigh 8/12 and 4/12; SMART's adversarial ones 0
            self.assertEqual(sorted(task), [4 / 12, 8 / 12])
            self.assertTrue(any(s == 0.0 for f, s in seen))
            t.close()

    def test_caller_rng_state_is_kept(self):
        """Dropout is seeded from pass.seed; the caller's stream goes on as if
        the step (several seeded passes) and a failed step had not run."""
        torch.manual_seed(0)
        net = AuxNet()
        x, y = micro_batches(0)[0]
        with TorchModel(net, 5, output="logits") as m:
            t = TorchTrainer(m, torch.optim.SGD(net.parameters(), lr=LR), loss_fn=loss_fn)
            t.add("rdrop", doubled=0)
            torch.manual_seed(42)
            expect = torch.rand(3)
            torch.manual_seed(42)
            t.step(regopt.Batch(data=x, labels=y))
            t.set_torch_loss(lambda o, b: o.sum() * float("nan"))
            with self.assertRaises(ValueError):
                t.step(regopt.Batch(data=x, labels=y))
            self.assertTrue(torch.equal(torch.rand(3), expect))
            t.close()

    def test_bad_aux(self):
        torch.manual_seed(0)
        net = AuxNet()
        x, y = micro_batches(0)[0]
        with TorchModel(net, 5, output="logits") as m:
            t = TorchTrainer(m, torch.optim.SGD(net.parameters(), lr=LR), loss_fn=loss_fn)
            t.step(regopt.Batch(data=x, labels=y))
            before = [p.detach().clone() for p in net.parameters()]
            for fn, words in (
                    (lambda o, b: (F.cross_entropy(o, b.labels), b.module_output["hidden"]),
                     "scalar tensor .auxiliary term"),
                    (lambda o, b: (F.cross_entropy(o, b.labels), torch.tensor(float("inf"))),
                     "non-finite auxiliary term"),
                    (lambda o, b: (F.cross_entropy(o, b.labels),) * 3, "a pair"),
                    (lambda o, b: 1.5, "scalar tensor .* got float")):
                t.set_torch_loss(fn)
                with self.assertRaisesRegex(ValueError, words):
                    t.step(regopt.Batch(data=x, labels=y))
                self.assertEqual(t.steps, 1)
                for a, b in zip(net.parameters(), before):
                    self.assertTrue(torch.equal(a, b))
                self.assertEqual(m._aux, {})
            t.close()


if __name__ == "__main__":
    unittest.main()
