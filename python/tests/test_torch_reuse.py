"""TorchModel(reuse_embedding=True): the embedding submodule runs once per
micro-batch in SMART's and the adversarial family's passes, and training
is bitwise what it is when every pass runs the whole module."""
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

SMART = dict(steps=2, epsilon=0.1, eta=0.05, sigma=0.01, norm="l2")

if HAVE_TORCH:
    class Net(nn.Module):
        """Linear + LayerNorm + dropout below the perturbed output, dropout
        and a head above it. tied: the head also reads the lower Linear's
        weight (a parameter used on both sides). inplace: the parent scales
        the embedding's output in place."""

        def __init__(self, lower_dropout=0.2, tied=False, inplace=False):
            super().__init__()
            self.embed = nn.Sequential(nn.Linear(12, 16), nn.LayerNorm(16),
                                       nn.Dropout(lower_dropout))
            self.drop = nn.Dropout(0.3)
            self.head = nn.Linear(16, 5)
            self.tied, self.inplace = tied, inplace

        def forward(self, x):
            e = self.embed(x)
            if self.inplace:
                e.mul_(0.5)
            h = self.drop(torch.tanh(e))
            out = self.head(h)
            if self.tied:
                out = out + F.linear(h, self.embed[0].weight.t()[:5])
            return out


def batches(micro):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 12, generator=g)
    y = torch.randint(0, 5, (32,), generator=g)
    if micro:
        return [regopt.Batch(data=x[:16], labels=y[:16]),
                regopt.Batch(data=x[16:], labels=y[16:])]
    return regopt.Batch(data=x, labels=y)


@unittest.skipUnless(HAVE_TORCH, "torch (python3-torch) is not installed")
class ReuseEmbeddingTest(unittest.TestCase):

    def tearDown(self):
        import gc
        gc.collect()
        self.assertEqual(regopt.live_handles(), {"model": 0, "optimizer": 0, "trainer": 0})

    def train(self, reuse, regs, micro=False, steps=20, **net_args):
        """(losses, stats, final parameters, lower Linear calls per step)."""
        torch.manual_seed(3)
        net = Net(**net_args)
        calls = [0]
        net.embed[0].register_forward_pre_hook(lambda m, i: calls.__setitem__(0, calls[0] + 1))
        losses, stats, per_step = [], [], []
        with TorchModel(net, 5, embedding="embed", input_width=16,
                        reuse_embedding=reuse) as model, \
                regopt.Optimizer("adamw", lr=1e-2) as opt, \
                regopt.Trainer(model, opt, seed=1) as t:
            for name, kw in regs:
                t.add(name, **kw)
            for _ in range(steps):
                before = calls[0]
                losses.append(t.step(batches(micro)))
                per_step.append(calls[0] - before)
                st = t.stats()
                stats.append({k: st[k] for k in ("smart_rs", "adv_loss") if k in st})
        return losses, stats, [p.detach().clone() for p in net.parameters()], per_step

    def assert_same(self, a, b, exact=True):
        self.assertEqual(len(a[0]), len(b[0]))
        if exact:
            self.assertEqual(a[0], b[0])
            self.assertEqual(a[1], b[1])
            for p, q in zip(a[2], b[2]):
                self.assertTrue(torch.equal(p, q))
        else:
            for u, v in zip(a[0], b[0]):
                self.assertAlmostEqual(u, v, delta=1e-5 * abs(v) + 1e-7)
            for p, q in zip(a[2], b[2]):
                self.assertLess(float((p - q).norm() / q.norm()), 1e-5)

    def test_bitwise_and_one_lower_forward(self):
        # (regularizers, micro-batches, lower calls per step reused, not reused):
        # SMART K=2 is a clean pass, two noise passes and the adversarial one;
        # Bregman's teacher pass runs at the teacher's weights; R-Drop's second
        # copy draws other dropout; SAM's second point is at other weights
        cases = [
            ([("smart", SMART)], False, 1, 4),
            ([("smart", SMART), ("bregman", {})], False, 2, 5),
            ([("rdrop", {}), ("smart", SMART)], False, 2, 5),
            ([("smart", SMART)], True, 2, 8),
            ([("sam", {}), ("rdrop", {}), ("smart", SMART), ("bregman", {})], True, 16, 22),
        ]
        for regs, micro, reused, full in cases:
            with self.subTest(regs=[r for r, _ in regs], micro=micro):
                a = self.train(True, regs, micro)
                b = self.train(False, regs, micro)
                self.assert_same(a, b)
                self.assertEqual(set(a[3]), {reused})
                self.assertEqual(set(b[3]), {full})
                self.assertGreater(a[1][-1]["smart_rs"], 0.0)

    def test_adversarial_family(self):
        for method, kw in ((0, {}), (1, {"steps": 3}), (2, {"steps": 3}), (3, {})):
            with self.subTest(method=method):
                regs = [("adv", dict(method=method, epsilon=0.3, alpha=0.5, **kw))]
                a = self.train(True, regs, steps=8)
                b = self.train(False, regs, steps=8)
                self.assert_same(a, b)
                self.assertLess(max(a[3]), max(b[3]))

    def test_other_dropout_seed_runs_the_submodule(self):
        # smart.same_seed 0: the adversarial passes draw other dropout masks
        # than the clean pass (one seed for the three of them), so a lower
        # module with dropout runs again in the first of them; without
        # dropout it draws nothing and its output is reused whatever the seed
        regs = [("smart", dict(SMART, same_seed=0))]
        a = self.train(True, regs, steps=6)
        b = self.train(False, regs, steps=6)
        self.assert_same(a, b)
        self.assertEqual(set(a[3]), {2})
        a = self.train(True, regs, steps=6, lower_dropout=0.0)
        b = self.train(False, regs, steps=6, lower_dropout=0.0)
        self.assert_same(a, b)
        self.assertEqual(set(a[3]), {1})

    def test_output_changed_in_place_is_not_reused(self):
        # the clean pass scales the recorded output in place: not reused; the
        # first noise pass records again, and its output stays as it was (the
        # parent scales the perturbed copy), so the next two reuse it
        regs = [("smart", SMART)]
        a = self.train(True, regs, steps=6, inplace=True)
        b = self.train(False, regs, steps=6, inplace=True)
        self.assert_same(a, b)
        self.assertEqual(set(a[3]), {2})

    def test_tied_weight_within_rounding(self):
        regs = [("rdrop", {}), ("smart", SMART)]
        a = self.train(True, regs, tied=True)
        b = self.train(False, regs, tied=True)
        self.assert_same(a, b, exact=False)
        self.assertEqual(set(a[3]), {2})

    def test_teacher_from_its_own_buffers(self):
        # REGOPT_CAP_PASS_WEIGHTS: the Bregman teacher's pass computes with
        # the library's teacher buffers put under the parameters; the same
        # bits as the library swapping the teacher into the registered memory
        runs = []
        for caps in (None, 0):
            torch.manual_seed(3)
            net = Net()
            seen = []
            with TorchModel(net, 5, embedding="embed", input_width=16) as model:
                if caps is not None:
                    model.set_capabilities(caps)
                with regopt.Optimizer("adamw", lr=1e-2) as opt, \
                        regopt.Trainer(model, opt, seed=1) as t:
                    t.add("smart", **SMART)
                    t.add("bregman", beta=0.9)
                    losses = [t.step(batches(False)) for _ in range(12)]
                    seen.append(len(model._teacher_views))
                    ptrs = [p.data_ptr() for p in net.parameters()]
                    self.assertEqual(ptrs, [r.ptr for r in model._registered])
            runs.append((losses, [p.detach().clone() for p in net.parameters()], seen))
        (la, pa, sa), (lb, pb, sb) = runs
        self.assertEqual(la, lb)
        for p, q in zip(pa, pb):
            self.assertTrue(torch.equal(p, q))
        self.assertEqual(sa, [len(pa)])  # every tensor's teacher buffer was used
        self.assertEqual(sb, [0])

    def test_module_left_as_it_was(self):
        torch.manual_seed(0)
        net = Net()
        with TorchModel(net, 5, embedding="embed", input_width=16) as model, \
                regopt.Optimizer("sgd", lr=0.1) as opt, regopt.Trainer(model, opt) as t:
            t.add("smart", **SMART)
            t.step(batches(False))
            # the stand-in forward is gone after the step, and no record
            # (with its graph) outlives it
            self.assertNotIn("forward", net.embed.__dict__)
            self.assertEqual(model._lower.records, [])
            x = torch.randn(4, 12)
            net.eval()
            with torch.no_grad():
                self.assertTrue(torch.equal(net(x), net.head(torch.tanh(net.embed(x)))))


if __name__ == "__main__":
    unittest.main()
