"""TorchTrainer over torch.distributed: two local gloo processes must stay
bit-identical (as the MPI example does), and differ from a replica that
trains alone on its own data (the all-reduce really ran)."""
import os
import subprocess
import sys
import tempfile
import unittest

try:
    import torch
    import torch.distributed as dist
    HAVE_GLOO = dist.is_available() and dist.is_gloo_available()
except ImportError:  # pragma: no cover
    HAVE_GLOO = False

HERE = os.path.dirname(os.path.abspath(__file__))


@unittest.skipUnless(HAVE_GLOO, "torch.distributed with gloo is not available")
class TorchDistributedTest(unittest.TestCase):

    def run_replicas(self, world, tmp, steps=8):
        init = "file://" + os.path.join(tmp, "rendezvous%d" % world)
        outs = [os.path.join(tmp, "w%d_r%d.pt" % (world, r)) for r in range(world)]
        procs = [subprocess.Popen([sys.executable, os.path.join(HERE, "torch_dist_worker.py"),
                                   str(r), str(world), init, outs[r], str(steps)],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                 for r in range(world)]
        for p in procs:
            out, _ = p.communicate(timeout=300)
            self.assertEqual(p.returncode, 0, out.decode(errors="replace")[-3000:])
        return [torch.load(o) for o in outs]

    def test_two_gloo_processes_bit_identical(self):
        with tempfile.TemporaryDirectory() as tmp:
            r0, r1 = self.run_replicas(2, tmp)
            alone = self.run_replicas(1, tmp)[0]
        self.assertEqual(r0["losses"], r1["losses"])
        for a, b in zip(r0["params"], r1["params"]):
            self.assertTrue(torch.equal(a, b))
        self.assertFalse(all(torch.equal(a, b) for a, b in zip(r0["params"], alone["params"])))


if __name__ == "__main__":
    unittest.main()
