"""The PyTorch adapter (regopt.torch) against plain PyTorch."""
import copy
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import regopt  # noqa: E402

try:
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from regopt.torch import TorchModel
    HAVE_TORCH = True
except ImportError:  # pragma: no cover
    HAVE_TORCH = False


def rel_err(a, b):
    a = a.detach().double()
    b = b.detach().double()
    return float((a - b).norm() / max(b.norm(), 1e-30))


if HAVE_TORCH:
    class Net(nn.Module):
        def __init__(self, d_in=12, hidden=16, classes=5, bn=False, dropout=0.0):
            super().__init__()
            self.embed = nn.Linear(d_in, hidden)
            self.bn = nn.BatchNorm1d(hidden) if bn else nn.Identity()
            self.drop = nn.Dropout(dropout)
            self.head = nn.Linear(hidden, classes)

        def forward(self, x):
            return self.head(self.drop(torch.tanh(self.bn(self.embed(x)))))


def data(n=24, d_in=12, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


@unittest.skipUnless(HAVE_TORCH, "torch (python3-torch) is not installed")
class TorchAdapterTest(unittest.TestCase):

    def tearDown(self):
        import gc
        gc.collect()
        self.assertEqual(regopt.live_handles(), {"model": 0, "optimizer": 0, "trainer": 0})

    def test_sam_matches_plain_pytorch(self):
        torch.manual_seed(1)
        net = Net()
        ref = copy.deepcopy(net)
        rho, lr, mom, wd = 0.05, 0.1, 0.9, 5e-4
        x, y = data()
        with TorchModel(net, 5) as model, \
                regopt.Optimizer("sgd", lr=lr, momentum=mom, weight_decay=wd) as opt, \
                regopt.Trainer(model, opt, seed=3) as trainer:
            trainer.add("sam", rho=rho)
            topt = torch.optim.SGD(ref.parameters(), lr=lr, momentum=mom, weight_decay=wd)
            params = list(ref.parameters())
            for step in range(20):
                xb, yb = x[step % 3 * 8:(step % 3 + 1) * 8], y[step % 3 * 8:(step % 3 + 1) * 8]
                trainer.step(regopt.Batch(data=xb, labels=yb))
                # plain PyTorch SAM (Foret et al., Alg. 1)
                topt.zero_grad()
                clean = F.cross_entropy(ref(xb), yb)
                clean.backward()
                with torch.no_grad():
                    gnorm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params))
                    saved = [p.detach().clone() for p in params]
                    for p in params:
                        p.add_(p.grad * float(rho / (gnorm + 1e-12)))
                topt.zero_grad()
                pert = F.cross_entropy(ref(xb), yb)
                pert.backward()
                with torch.no_grad():
                    for p, s in zip(params, saved):
                        p.copy_(s)
                topt.step()
                st = trainer.stats()
                self.assertAlmostEqual(st["sam_clean_loss"], clean.item(), delta=1e-5)
                self.assertAlmostEqual(st["sam_perturbed_loss"], pert.item(), delta=1e-5)
                self.assertEqual(st["sam_applied"], 1)
                self.assertEqual((st["forward_calls"], st["backward_calls"]), (2, 2))
                for (n, a), b in zip(net.named_parameters(), params):
                    self.assertLess(rel_err(a, b), 1e-5, "%s after step %d" % (n, step + 1))
            self.assertEqual(trainer.steps, 20)


class NumpyTwin:
    """The same network as Net (no BN, no dropout) as a NumPy host with the
    SMART contract: perturbation added to the output of `embed`, d_input."""

    def __init__(self, net):
        sd = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
        self.p = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sd.items()}
        self.g = {k: np.zeros_like(v) for k, v in self.p.items()}
        self.cache = {}

    def forward(self, ps):
        x = ps.data[ps.rows_slice].numpy()
        e = x @ self.p["embed.weight"].T + self.p["embed.bias"]
        if ps.input_perturbation is not None:
            e = e + ps.input_perturbation
        h = np.tanh(e)
        ps.outputs[:] = h @ self.p["head.weight"].T + self.p["head.bias"]
        self.cache[ps.slot] = (x, h)

    def backward(self, ps):
        x, h = self.cache.pop(ps.slot)
        dz = ps.d_outputs
        de = dz @ self.p["head.weight"] * (1 - h ** 2)
        if ps.d_input is not None:
            ps.d_input[:] = de
        if ps.no_param_grad:
            return
        self.g["head.weight"] += dz.T @ h
        self.g["head.bias"] += dz.sum(0)
        self.g["embed.weight"] += de.T @ x
        self.g["embed.bias"] += de.sum(0)

    def model(self, net):
        m = regopt.Model(5, forward=self.forward, backward=self.backward, slots=3,
                         input_width=16)
        for k, _ in net.named_parameters():
            m.add_param(k, self.p[k], self.g[k], group=1 if k.endswith("bias") else 0)
        return m


SMART_OPTS = dict(lambda_=1.0, epsilon=0.1, eta=0.05, sigma=0.01, steps=2, norm="l2")


@unittest.skipUnless(HAVE_TORCH, "torch (python3-torch) is not installed")
class TorchSmartAndFlagsTest(unittest.TestCase):

    def tearDown(self):
        import gc
        gc.collect()
        self.assertEqual(regopt.live_handles(), {"model": 0, "optimizer": 0, "trainer": 0})
        self.assertEqual(regopt.pending_callbacks(), 0)

    def run_smart(self, make_model, net, x, y, lam=1.0, steps=10):
        with make_model() as model, regopt.Optimizer("adam", lr=1e-2) as opt, \
                regopt.Trainer(model, opt, seed=11) as t:
            opts = dict(SMART_OPTS, lambda_=lam)
            t.add("smart", **opts)
            for i in range(steps):
                t.step(regopt.Batch(data=x, labels=y))
            return t.stats()

    def test_smart_matches_numpy_host(self):
        torch.manual_seed(2)
        net = Net()
        twin = NumpyTwin(net)
        x, y = data(16)
        st_t = self.run_smart(lambda: TorchModel(net, 5, embedding="embed"), net, x, y)
        st_n = self.run_smart(lambda: twin.model(net), net, x, y)
        self.assertGreater(st_t["smart_rs"], 0)
        self.assertGreater(st_t["smart_noise_norm"], 0)
        self.assertEqual(st_t["forward_calls"], SMART_OPTS["steps"] + 2)
        self.assertAlmostEqual(st_t["smart_rs"], st_n["smart_rs"], delta=1e-5 * st_n["smart_rs"]
                               + 1e-9)
        for k, v in net.named_parameters():
            self.assertLess(rel_err(v, torch.from_numpy(twin.p[k])), 1e-5, k)

    def test_no_param_grad_leaves_parameters_alone(self):
        # lambda = 0: the adversarial passes contribute nothing, so the step
        # equals a plain one iff NO_PARAM_GRAD backwards do not touch .grad
        torch.manual_seed(3)
        net = Net()
        ref = copy.deepcopy(net)
        x, y = data(16)
        self.run_smart(lambda: TorchModel(net, 5, embedding="embed"), net, x, y, lam=0.0,
                       steps=5)
        with TorchModel(ref, 5) as model, regopt.Optimizer("adam", lr=1e-2) as opt, \
                regopt.Trainer(model, opt, seed=11) as t:
            for i in range(5):
                t.step(regopt.Batch(data=x, labels=y))
        for (k, a), b in zip(net.named_parameters(), ref.parameters()):
            self.assertLess(rel_err(a, b), 1e-6, k)

    def test_all_regularizers_batchnorm_and_dropout(self):
        torch.manual_seed(4)
        net = Net(bn=True, dropout=0.3)
        x, y = data(16)
        bn = net.bn
        mom = bn.momentum
        with TorchModel(net, 5, embedding="embed") as model, \
                regopt.Optimizer("adamw", lr=1e-3) as opt, \
                regopt.Trainer(model, opt, seed=1) as t:
            t.add("sam", rho=0.05)
            t.add("rdrop", alpha=1.0)
            t.add("smart", **SMART_OPTS)
            t.add("bregman", mu=1.0)
            before = int(bn.num_batches_tracked)
            t.step(regopt.Batch(data=x, labels=y))
            st = t.stats()
            # running statistics move only in R-Drop's two clean passes at w
            self.assertEqual(int(bn.num_batches_tracked) - before, 2)
            self.assertEqual(bn.momentum, mom)
            self.assertTrue(net.training)
            for k in ("sam_applied", "rdrop_applied"):
                self.assertEqual(st[k], 1)
            for k in ("rdrop_consistency", "smart_rs", "sam_sharpness"):
                self.assertNotEqual(st[k], 0.0, k)
            loss, out = t.evaluate(regopt.Batch(data=x, labels=y))
            self.assertEqual(out.shape, (16, 5))
            net.eval()
            with torch.no_grad():
                np.testing.assert_allclose(out, net(x).numpy(), rtol=1e-5, atol=1e-6)
            self.assertEqual(int(bn.num_batches_tracked) - before, 2)

    def test_dropout_seeded_by_trainer(self):
        x, y = data(16)
        finals = []
        for seed in (7, 7, 8):
            torch.manual_seed(5)
            net = Net(dropout=0.5)
            with TorchModel(net, 5) as model, regopt.Optimizer("sgd", lr=0.1) as opt, \
                    regopt.Trainer(model, opt, seed=seed) as t:
                for _ in range(3):
                    torch.rand(1)  # the global torch RNG must not matter
                    t.step(regopt.Batch(data=x, labels=y))
            finals.append(net.head.weight.detach().clone())
        self.assertTrue(torch.equal(finals[0], finals[1]))
        self.assertFalse(torch.equal(finals[0], finals[2]))

    def test_exception_in_module_propagates(self):
        torch.manual_seed(6)

        class Flaky(Net):
            fail = False

            def forward(self, x):
                if self.fail:
                    raise RuntimeError("module failed")
                return super().forward(x)

        net = Flaky()
        x, y = data(8)
        with TorchModel(net, 5) as model, regopt.Optimizer("adam", lr=0.1) as opt, \
                regopt.Trainer(model, opt) as t:
            t.add("sam")
            t.step(regopt.Batch(data=x, labels=y))
            saved = [p.detach().clone() for p in net.parameters()]
            net.fail = True
            with self.assertRaises(RuntimeError) as cm:
                t.step(regopt.Batch(data=x, labels=y))
            self.assertIn("module failed", str(cm.exception))
            self.assertIsInstance(cm.exception.regopt_error, regopt.ForwardFailed)
            for a, b in zip(net.parameters(), saved):
                self.assertTrue(torch.equal(a.detach(), b))
            self.assertEqual(t.steps, 1)

    def test_example_torch_finetune(self):
        import subprocess
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                              "examples", "torch_finetune.py")
        if not os.path.exists(script):
            self.skipTest("examples/torch_finetune.py not found")
        r = subprocess.run([sys.executable, script, "--epochs", "2", "--min-test-acc", "0.7"],
                           capture_output=True, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("RESULT test_acc=", r.stdout)

    def test_registration_checks(self):
        with self.assertRaises(TypeError):
            TorchModel(Net().double(), 5)
        with self.assertRaises(ValueError):
            TorchModel(nn.Sequential(nn.ReLU()), 5, embedding="0")
        net = Net()
        with TorchModel(net, 5) as m:
            self.assertEqual(m.param_count, 4)
            self.assertEqual(m.element_count, sum(p.numel() for p in net.parameters()))
            for p in net.parameters():
                self.assertIsNotNone(p.grad)


@unittest.skipUnless(HAVE_TORCH, "torch (python3-torch) is not installed")
class TorchParameterChangeTest(unittest.TestCase):
    """After TorchModel() registered the parameters' memory, a change of a
    parameter's storage, dtype, device, size, identity or requires_grad is
    refused (regopt.StateError naming it) before the library touches the
    memory again -- a step, an evaluation or a checkpoint -- and leaves
    everything as it was; a .grad set to None or replaced is put back."""

    def tearDown(self):
        import gc
        gc.collect()
        self.assertEqual(regopt.live_handles(), {"model": 0, "optimizer": 0, "trainer": 0})

    def refused(self, change, name, words, setup=None):
        torch.manual_seed(8)
        net = Net()
        if setup:
            setup(net)
        x, y = data(8)
        with TorchModel(net, 5) as model, regopt.Optimizer("adamw", lr=0.1) as opt, \
                regopt.Trainer(model, opt, seed=2) as t:
            t.step(regopt.Batch(data=x, labels=y))
            ck = t.to_bytes()
            change(net)
            for call in (lambda: t.step(regopt.Batch(data=x, labels=y)),
                         lambda: t.evaluate(regopt.Batch(data=x, labels=y)),
                         t.to_bytes, lambda: t.from_bytes(ck)):
                with self.assertRaises(regopt.StateError) as cm:
                    call()
                msg = str(cm.exception)
                self.assertIn(repr(name), msg)
                for w in words:
                    self.assertIn(w, msg)
            self.assertEqual(t.steps, 1)
        return ck

    def test_storage_replaced(self):
        def assign(net):
            net.head.weight.data = net.head.weight.data.clone()
        self.refused(assign, "head.weight", ["storage was replaced"])

        def share(net):
            net.share_memory()
        self.refused(share, "embed.weight", ["storage was replaced"])

        def vector(net):
            v = torch.nn.utils.parameters_to_vector(net.parameters())
            torch.nn.utils.vector_to_parameters(v.clone(), net.parameters())
        self.refused(vector, "embed.weight", ["storage was replaced"])

        def transpose(net):  # same memory, another layout
            w = net.embed.weight
            w.data = w.data.view(w.shape[1], w.shape[0]).t()
        self.refused(transpose, "embed.weight", ["contiguous"])

    def test_dtype_device_identity(self):
        self.refused(lambda net: net.double(), "embed.weight", ["float32", "float64"])
        self.refused(lambda net: net.to("meta"), "embed.weight",
                     ["another Parameter", "meta"])

        def replace(net):
            net.head.bias = nn.Parameter(net.head.bias.detach().clone())
        self.refused(replace, "head.bias", ["another Parameter"])

        def add(net):
            net.extra = nn.Parameter(torch.zeros(3))
        self.refused(add, "extra", ["not there"])

    def test_requires_grad(self):
        def freeze(net):
            net.embed.requires_grad_(False)
        self.refused(freeze, "embed.weight", ["requires_grad", "frozen"])

        def unfreeze(net):
            net.head.bias.requires_grad_(True)
        self.refused(unfreeze, "head.bias", ["requires_grad", "unfrozen"],
                     setup=lambda net: net.head.bias.requires_grad_(False))

    def test_grad_set_to_none_or_replaced(self):
        # one parameter gets no gradient (unused in forward): with .grad None
        # autograd would never recreate it
        class WithUnused(Net):
            def __init__(self):
                super().__init__()
                self.unused = nn.Linear(2, 2)
        x, y = data(8)
        finals = []
        for mode in ("keep", "none", "other"):
            torch.manual_seed(9)
            net = WithUnused()
            with TorchModel(net, 5) as model, regopt.Optimizer("adamw", lr=0.1) as opt, \
                    regopt.Trainer(model, opt, seed=2) as t:
                for _ in range(3):
                    if mode == "none":
                        net.zero_grad(set_to_none=True)
                    elif mode == "other":
                        for p in net.parameters():
                            p.grad = torch.full_like(p, 7.0)
                    t.step(regopt.Batch(data=x, labels=y))
                finals.append([p.detach().clone() for p in net.parameters()])
                registered = [g.data_ptr() for _, g in model.params.values() if g is not None]
                self.assertEqual(registered, [p.grad.data_ptr() for p in net.parameters()])
        for other in finals[1:]:
            for a, b in zip(finals[0], other):
                self.assertTrue(torch.equal(a, b))

    def test_module_with_embedding_hook_copies(self):
        import io
        torch.manual_seed(10)
        net = Net()
        x, y = data(8)
        with TorchModel(net, 5, embedding="embed") as model, \
                regopt.Optimizer("adam", lr=0.01) as opt, regopt.Trainer(model, opt) as t:
            t.add("smart", **SMART_OPTS)
            t.step(regopt.Batch(data=x, labels=y))
            twin = copy.deepcopy(net)  # an EMA or best-so-far copy: the hook goes along
            buf = io.BytesIO()
            torch.save(net, buf)
            for m in (twin, copy.deepcopy(net)):
                with torch.no_grad():
                    self.assertTrue(torch.equal(m(x), net(x)))
            t.step(regopt.Batch(data=x, labels=y))
            for obj in (model, t, opt):
                with self.assertRaises(TypeError):
                    copy.deepcopy(obj)


if __name__ == "__main__":
    unittest.main()
