"""regopt.torch_train.TorchTrainer: torch.optim optimizers and schedulers
through the host-update kind, torch losses, output=, state_dict and bad
input. The expected numbers come from the built-in path (regopt.Optimizer
'sgd' and the built-in softmax CE)."""
import copy
import io
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
    from regopt.torch_train import TorchTrainer
    HAVE_TORCH = True
except ImportError:  # pragma: no cover
    HAVE_TORCH = False


def rel_err(a, b):
    a = a.detach().double()
    b = b.detach().double()
    return float((a - b).norm() / max(b.norm(), 1e-30))


if HAVE_TORCH:
    class Net(nn.Module):
        def __init__(self, d_in=12, hidden=16, classes=5, bn=False, out="tensor"):
            super().__init__()
            self.embed = nn.Linear(d_in, hidden)
            self.bn = nn.BatchNorm1d(hidden) if bn else nn.Identity()
            self.head = nn.Linear(hidden, classes)
            self.out = out

        def forward(self, x):
            h = torch.tanh(self.bn(self.embed(x)))
            z = self.head(h)
            if self.out == "dict":
                return {"logits": z, "hidden": h}
            if self.out == "tuple":
                return (h, z)
            return z


def data(n=24, d_in=12, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d_in, generator=g), torch.randint(0, classes, (n,), generator=g)


def batch(x, y, k):
    s = slice(k % 3 * 8, (k % 3 + 1) * 8)
    return regopt.Batch(data=x[s], labels=y[s])


@unittest.skipUnless(HAVE_TORCH, "torch (python3-torch) is not installed")
class TorchTrainerTest(unittest.TestCase):

    def tearDown(self):
        import gc
        gc.collect()
        self.assertEqual(regopt.live_handles(), {"model": 0, "optimizer": 0, "trainer": 0})

    def _pair(self, bn=False):
        torch.manual_seed(1)
        net = Net(bn=bn)
        return net, copy.deepcopy(net)

    def test_sam_through_torch_sgd_equals_builtin(self):
        """SAM with a host-owned torch.optim.SGD (momentum, weight decay) and a
        StepLR scheduler equals the built-in SGD with the same lr sequence."""
        a, b = self._pair()
        x, y = data()
        lr, mom, wd = 0.1, 0.9, 5e-4
        topt = torch.optim.SGD(a.parameters(), lr=lr, momentum=mom, weight_decay=wd)
        sched = torch.optim.lr_scheduler.StepLR(topt, step_size=10, gamma=0.5)
        with TorchModel(a, 5) as ma, TorchModel(b, 5) as mb, \
                regopt.Optimizer("sgd", lr=lr, momentum=mom, weight_decay=wd) as ob:
            ta = TorchTrainer(ma, topt, scheduler=sched, seed=3)
            tb = regopt.Trainer(mb, ob, seed=3)
            ta.add("sam", rho=0.05)
            tb.add("sam", rho=0.05)
            worst = 0.0
            for k in range(50):
                ob.lr = lr * 0.5 ** (k // 10)
                la = ta.step(batch(x, y, k))
                lb = tb.step(batch(x, y, k))
                sched.step()
                # torch.optim.SGD rounds its update in its own order: not
                # bit-identical, within float32 rounding of the built-in path
                self.assertAlmostEqual(la, lb, delta=1e-6 * abs(lb))
                self.assertEqual(ta.stat("lr"), tb.stat("lr"))
                for pa, pb in zip(a.parameters(), b.parameters()):
                    worst = max(worst, rel_err(pa, pb))
            self.assertLessEqual(worst, 1e-6)
            self.assertEqual(ta.steps, 50)
            ta.close()
            tb.close()

    def test_torch_loss_equals_builtin_ce(self):
        a, b = self._pair()
        x, y = data()
        with TorchModel(a, 5) as ma, TorchModel(b, 5) as mb, \
                regopt.Optimizer("adam", lr=1e-2) as oa, regopt.Optimizer("adam", lr=1e-2) as ob:
            ta = TorchTrainer(ma, oa, loss_fn=lambda out, bt: F.cross_entropy(out, bt.labels))
            tb = regopt.Trainer(mb, ob)
            ta.add("sam", rho=0.05)
            tb.add("sam", rho=0.05)
            for k in range(20):
                la, lb = ta.step(batch(x, y, k)), tb.step(batch(x, y, k))
                self.assertAlmostEqual(la, lb, delta=1e-6 * max(1.0, abs(lb)))
            for pa, pb in zip(a.parameters(), b.parameters()):
                self.assertLess(rel_err(pa, pb), 1e-5)
            ta.close()
            tb.close()

    def test_output_selects_dict_and_tuple(self):
        x, y = data()
        for out, sel in (("dict", "logits"), ("tuple", 1), ("tuple", lambda o: o[1])):
            torch.manual_seed(1)
            net, ref = Net(out=out), Net()
            ref.load_state_dict(net.state_dict())
            with TorchModel(net, 5, output=sel) as m, TorchModel(ref, 5) as mr, \
                    regopt.Optimizer("sgd", lr=0.1) as o, regopt.Optimizer("sgd", lr=0.1) as orf:
                t, tr = regopt.Trainer(m, o), regopt.Trainer(mr, orf)
                for k in range(3):
                    self.assertEqual(t.step(batch(x, y, k)), tr.step(batch(x, y, k)))
                t.close()
                tr.close()
        torch.manual_seed(1)
        with TorchModel(Net(out="dict"), 5) as m, regopt.Optimizer("sgd", lr=0.1) as o:
            t = regopt.Trainer(m, o)
            with self.assertRaisesRegex(TypeError, r"dict with keys 'logits', 'hidden'.*output="):
                t.step(batch(x, y, 0))
            self.assertEqual(t.steps, 0)
            t.close()
        with TorchModel(Net(out="dict"), 5, output="nope") as m, \
                regopt.Optimizer("sgd", lr=0.1) as o:
            t = regopt.Trainer(m, o)
            with self.assertRaisesRegex(KeyError, "output='nope'"):
                t.step(batch(x, y, 0))
            t.close()

    def test_state_dict_round_trip_resumes_exactly(self):
        """module (batch-norm buffers included), torch optimizer, scheduler and
        the library's part in one torch.save dict: a resumed run equals the
        uninterrupted one bit for bit."""
        x, y = data()

        def make():
            torch.manual_seed(1)
            net = Net(bn=True)
            opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=20)
            m = TorchModel(net, 5)
            t = TorchTrainer(m, opt, scheduler=sched, seed=7)
            t.add("sam", rho=0.05)
            t.add("rdrop", alpha=0.5)
            return net, opt, sched, m, t

        net1, opt1, s1, m1, t1 = make()
        for k in range(5):
            t1.step(batch(x, y, k))
            s1.step()
        buf = io.BytesIO()
        torch.save(t1.state_dict(), buf)
        net2, opt2, s2, m2, t2 = make()
        t2.step(batch(x, y, 1))  # diverge first: load must overwrite all of it
        s2.step()
        buf.seek(0)
        t2.load_state_dict(torch.load(buf))
        self.assertEqual(t2.steps, 5)
        for k in range(5, 12):
            self.assertEqual(t1.step(batch(x, y, k)), t2.step(batch(x, y, k)))
            s1.step()
            s2.step()
        for (n, a), b in zip(net1.state_dict().items(), net2.state_dict().values()):
            self.assertTrue(torch.equal(a, b), n)
        self.assertIn("bn.running_mean", net1.state_dict())
        for t, m in ((t1, m1), (t2, m2)):
            t.close()
            m.close()

    def test_bad_input(self):
        x, y = data()
        torch.manual_seed(1)
        net = Net()
        other = torch.optim.SGD(Net().parameters(), lr=0.1)
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        with TorchModel(net, 5) as m:
            # a scheduler attached to another optimizer
            with self.assertRaisesRegex(regopt.InvalidArgument, "another optimizer"):
                TorchTrainer(m, opt, scheduler=torch.optim.lr_scheduler.StepLR(other, 5))
            # a scheduler with the library's own optimizer (it has schedule keys)
            with self.assertRaisesRegex(regopt.InvalidArgument, "needs a torch.optim"):
                TorchTrainer(m, regopt.Optimizer("sgd", lr=0.1),
                             scheduler=torch.optim.lr_scheduler.StepLR(opt, 5))
            # an optimizer over parameters of another module
            with self.assertRaisesRegex(regopt.InvalidArgument, "not one of the TorchModel"):
                TorchTrainer(m, other)
            t = TorchTrainer(m, opt)
            t.step(batch(x, y, 0))
            before = [p.detach().clone() for p in net.parameters()]
            state = copy.deepcopy(opt.state_dict())

            # a host update that fails before writing: nothing lost
            def boom():
                raise RuntimeError("optimizer exploded")
            real, opt.step = opt.step, boom
            with self.assertRaisesRegex(RuntimeError, "optimizer exploded") as cm:
                t.step(batch(x, y, 1))
            self.assertIsInstance(cm.exception.regopt_error, regopt.HostUpdateFailed)
            opt.step = real
            self.assertEqual(t.steps, 1)
            for a, b in zip(net.parameters(), before):
                self.assertTrue(torch.equal(a, b))
            self.assertEqual(str(opt.state_dict()), str(state))

            # one that fails after writing: the library cannot undo the host's
            # writes (documented); its own state stays as before the step, and
            # the next step runs from the weights the host left
            def half_done():
                with torch.no_grad():
                    next(net.parameters()).add_(1.0)
                raise RuntimeError("failed half-way")
            real, opt.step = opt.step, half_done
            with self.assertRaisesRegex(RuntimeError, "failed half-way") as cm:
                t.step(batch(x, y, 1))
            self.assertIsInstance(cm.exception.regopt_error, regopt.HostUpdateFailed)
            opt.step = real
            self.assertEqual(t.steps, 1)
            self.assertTrue(torch.equal(next(net.parameters()), before[0] + 1.0))
            with torch.no_grad():
                next(net.parameters()).copy_(before[0])
            # loss_fn: a non-scalar, then a non-finite value
            for fn, words in ((lambda o, b: F.cross_entropy(o, b.labels, reduction="none"),
                               "scalar tensor"),
                              (lambda o, b: F.cross_entropy(o, b.labels) * float("nan"),
                               "non-finite")):
                t.set_torch_loss(fn)
                with self.assertRaisesRegex(ValueError, words):
                    t.step(batch(x, y, 1))
                self.assertEqual(t.steps, 1)
                for a, b in zip(net.parameters(), before):
                    self.assertTrue(torch.equal(a, b))
            t.set_torch_loss(None)
            t.step(batch(x, y, 1))
            self.assertEqual(t.steps, 2)
            t.close()


if __name__ == "__main__":
    unittest.main()
