"""Weight averaging from Python: regopt.Average (EMA, SWA), swap, the
averaged() evaluation context, recalibration passes, MESA's preset, and the
torch adapter's batch-norm recalibration against torch.optim.swa_utils."""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from binding_rig import HandleCheck, LinearHost, data, np, regopt  # noqa: E402

try:
    import torch
    import torch.nn as nn
    from regopt.torch import TorchModel
    HAVE_TORCH = True
except ImportError:  # pragma: no cover
    HAVE_TORCH = False


def _weights(h):
    return np.concatenate([h.w.ravel(), h.b.ravel()]).astype(np.float64)


class AverageTest(HandleCheck):
    def _run(self, steps, **avg_options):
        h = LinearHost()
        x, y = data()
        m = h.model()
        o = regopt.Optimizer("sgd", lr=0.3)
        t = regopt.Trainer(m, o, seed=3)
        avg = t.add("average", **avg_options)
        return h, x, y, m, o, t, avg

    def _close(self, *handles):
        for hd in handles:
            hd.close()

    def test_ema_recurrence_and_swap(self):
        h, x, y, m, o, t, avg = self._run(0, decay=0.8, warmup="tf")
        ref = None
        for i in range(20):
            w0 = _weights(h)
            t.step(data=x[i % 4 * 4:i % 4 * 4 + 4], labels=y[i % 4 * 4:i % 4 * 4 + 4])
            w = _weights(h)
            b = min(0.8, (1.0 + i) / (10.0 + i))
            ref = w0 if ref is None else ref
            ref = b * ref + (1 - b) * w
            self.assertEqual(avg.stats()["count"], i + 1)
            self.assertAlmostEqual(avg.stats()["decay_used"], b, places=15)
        trained = (h.w.copy(), h.b.copy())
        with avg.averaged():
            self.assertTrue(avg.swapped)
            np.testing.assert_allclose(_weights(h), ref, rtol=1e-5, atol=1e-6)
            _, out = t.evaluate(data=x[:4])
            with self.assertRaises(regopt.StateError) as cm:
                t.step(data=x[:4], labels=y[:4])
            self.assertIn("swap_average", str(cm.exception))
            with self.assertRaises(regopt.StateError):
                t.to_bytes()
        self.assertFalse(avg.swapped)
        self.assertTrue(np.array_equal(h.w, trained[0]) and np.array_equal(h.b, trained[1]))
        np.testing.assert_allclose(out, x[:4] @ ref[:12].reshape(4, 3).astype(np.float32)
                                   + ref[12:].astype(np.float32), rtol=1e-5, atol=1e-6)
        self._close(t, o, m, avg)

    def test_swa_and_recalibration_passes(self):
        h, x, y, m, o, t, avg = self._run(0, mode="swa", start=2, every=2)
        seen = []
        for i in range(9):
            t.step(data=x[:8], labels=y[:8])
            if i >= 2 and (i - 2) % 2 == 0:
                seen.append(_weights(h))
        self.assertEqual(avg.stats()["count"], len(seen))
        h.flags.clear()
        with avg.averaged(recalibrate=[regopt.Batch(data=x[:4]), regopt.Batch(data=x[4:8])]):
            np.testing.assert_allclose(_weights(h), np.mean(seen, axis=0), rtol=1e-5, atol=1e-6)
        want = regopt.PASS_TRAIN | regopt.PASS_NO_GRAD | regopt.PASS_RECALIBRATE
        self.assertEqual(h.flags, [want, want])
        with self.assertRaises(regopt.StateError):
            avg.recalibrate(regopt.Batch(data=x[:4]))  # not swapped
        self._close(t, o, m, avg)

    def test_errors(self):
        avg = regopt.Average()
        with self.assertRaises(regopt.StateError):
            avg.swap()  # not attached
        with self.assertRaises(regopt.OutOfRange):
            avg.decay = 1.0
        with self.assertRaises(regopt.InvalidArgument):
            avg.mode = "bogus"
        h, x, y, m, o, t, avg2 = self._run(0)
        with self.assertRaises(regopt.StateError):
            avg2.swap()  # nothing averaged yet
        sam = t.add("sam")
        with self.assertRaises(regopt.InvalidArgument):
            regopt.Average.swap(sam)
        self._close(t, o, m, avg, avg2, sam)

    def test_mesa_preset(self):
        b = regopt.mesa(start_step=3)
        self.assertEqual(b.divergence, regopt._lib.BREGMAN_KL_TEACHER)
        self.assertEqual((b.mu, b.tau, b.beta, b.beta_late, b.start_step),
                         (0.3, 5.0, 0.9998, 0.9998, 3))
        h = LinearHost()
        x, y = data()
        m = h.model()
        o = regopt.Optimizer("sgd", lr=0.3)
        t = regopt.Trainer(m, o, seed=3)
        t.add(b)
        for i in range(5):
            t.step(data=x[:8], labels=y[:8])
            self.assertEqual(b.stats()["d"] > 0.0, i >= 3)
        with b.averaged():  # the teacher is the EMA: evaluated without a copy
            self.assertTrue(b.swapped)
        self._close(t, o, m, b)


class MesaTermTest(HandleCheck):
    """bregman.d of MESA's divergence against NumPy in float64, for few
    classes and for more than the 64 whose exponentials the library keeps."""

    def _check(self, k, tau=5.0):
        h = LinearHost(d_in=4, k=k, seed=2)
        x, y = data(n=8, d_in=4, k=k, seed=3)
        m = h.model()
        o = regopt.Optimizer("sgd", lr=0.5)
        t = regopt.Trainer(m, o, seed=3)
        b = t.add(regopt.mesa(beta=0.5, beta_late=0.5, tau=tau))
        for _ in range(2):
            t.step(data=x, labels=y)
        w = (h.w.astype(np.float64), h.b.astype(np.float64))
        with b.averaged():
            tw = (h.w.astype(np.float64), h.b.astype(np.float64))
        t.step(data=x, labels=y)
        z = (x.astype(np.float32) @ w[0].astype(np.float32) + w[1].astype(np.float32))
        q = (x.astype(np.float32) @ tw[0].astype(np.float32) + tw[1].astype(np.float32))

        def log_softmax(a):
            a = a.astype(np.float64) / tau
            a = a - a.max(axis=1, keepdims=True)
            return a - np.log(np.exp(a).sum(axis=1, keepdims=True))
        lp, ls = log_softmax(q), log_softmax(z)
        want = tau * tau * np.mean(np.sum(np.exp(lp) * (lp - ls), axis=1))
        self.assertGreater(want, 1e-6)
        self.assertAlmostEqual(b.stats()["d"], want, delta=1e-5 * want + 1e-9)
        t.close()
        o.close()
        m.close()
        b.close()

    def test_few_classes(self):
        self._check(3)

    def test_many_classes(self):
        self._check(100)


@unittest.skipUnless(HAVE_TORCH, "torch (python3-torch) is not installed")
class TorchAverageTest(unittest.TestCase):
    def test_recalibration_matches_update_bn(self):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3))
        x = torch.randn(32, 6)
        y = torch.randint(0, 3, (32,))
        model = TorchModel(net, output_width=3)
        opt = regopt.Optimizer("sgd", lr=0.1, momentum=0.9)
        t = regopt.Trainer(model, opt, seed=1)
        avg = t.add("average", mode="swa")
        for i in range(6):
            t.step(regopt.Batch(data=x[i % 4 * 8:i % 4 * 8 + 8], labels=y[i % 4 * 8:i % 4 * 8 + 8]))
        bn = net[1]
        trained_stats = (bn.running_mean.clone(), bn.running_var.clone())
        trained_w = [p.detach().clone() for p in net.parameters()]
        batches = [regopt.Batch(data=x[j:j + 8]) for j in range(0, 32, 8)]
        with avg.averaged(recalibrate=batches):
            # torch's update_bn on a copy holding the same (averaged) weights
            import copy
            ref = copy.deepcopy(net)
            loader = [x[j:j + 8] for j in range(0, 32, 8)]
            torch.optim.swa_utils.update_bn(loader, ref)
            torch.testing.assert_close(bn.running_mean, ref[1].running_mean, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(bn.running_var, ref[1].running_var, rtol=1e-5, atol=1e-6)
            self.assertFalse(torch.equal(bn.running_mean, trained_stats[0]))
            t.evaluate(regopt.Batch(data=x[:8]))
        # trained weights and their statistics are back, bit for bit
        for p, w in zip(net.parameters(), trained_w):
            self.assertTrue(torch.equal(p.detach(), w))
        self.assertTrue(torch.equal(bn.running_mean, trained_stats[0]))
        self.assertTrue(torch.equal(bn.running_var, trained_stats[1]))
        t.step(regopt.Batch(data=x[:8], labels=y[:8]))
        t.close()
        opt.close()
        model.close()
        avg.close()


if __name__ == "__main__":
    unittest.main()
