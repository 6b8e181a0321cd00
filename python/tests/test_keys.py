"""The ctypes binding: keys and options by name, their errors and messages."""
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

import regopt  # noqa: E402
from binding_rig import HandleCheck, LinearHost  # noqa: E402


class KeysAndOptionsTest(HandleCheck):
    def test_key_lookup(self):
        self.assertEqual(regopt.key_from_name("optimizer.lr"), 100)
        self.assertEqual(regopt.key_from_name("sam.rho"), 1000)
        info = regopt.key_info("optimizer.lr")
        self.assertEqual((info.name, info.min, info.max, info.default), ("optimizer.lr", 0.0,
                                                                        1e3, 1e-3))
        self.assertFalse(info.read_only)
        self.assertTrue(regopt.key_info("stat.loss").read_only)
        self.assertTrue(regopt.key_info("trainer.seed").is_int)
        names = {k.name for k in regopt.keys()}
        for n in ("optimizer.lr", "trainer.seed", "sam.rho", "rdrop.alpha", "smart.lambda",
                  "bregman.mu", "stat.loss", "group.weight_decay"):
            self.assertIn(n, names)
        with self.assertRaises(regopt.UnknownKey) as cm:
            regopt.key_from_name("optimizer.learning_rate")
        self.assertIn("optimizer.learning_rate", str(cm.exception))
        with self.assertRaises(regopt.UnknownKey):
            regopt.key_info(99999)

    def test_optimizer_keywords(self):
        with regopt.Optimizer("adamw", lr=1e-3, weight_decay=0.01, schedule="cosine",
                              total_steps=100, warmup_steps=10, amsgrad=True) as o:
            self.assertEqual(o.lr, 1e-3)
            self.assertEqual(o["optimizer.weight_decay"], 0.01)
            self.assertEqual(o.get("schedule"), 2)
            self.assertEqual(o.amsgrad, 1)
            o.lr = 2e-3
            o["beta2"] = 0.98
            self.assertEqual((o.lr, o.beta2), (2e-3, 0.98))
            self.assertEqual(o.options()["optimizer.total_steps"], 100)
            self.assertIn("adamw", repr(o))
        self.assertEqual(regopt.Optimizer("adamw").__enter__().weight_decay, 0.01)

    def test_option_errors_carry_messages(self):
        with regopt.Optimizer("sgd") as o:
            with self.assertRaises(regopt.OutOfRange) as cm:
                o.lr = -1
            e = cm.exception
            self.assertEqual(e.status, -3)
            self.assertIn("optimizer.lr must be in (0, 1000], got -1", e.message)
            self.assertEqual(o.message, e.message)
            self.assertIsInstance(e, ValueError)
            with self.assertRaises(regopt.OutOfRange):
                o.warmup_steps = 1.5  # integer key, non-integral value
            with self.assertRaises(regopt.UnknownKey):
                o.set(rho=0.1)  # optimizer.rho does not exist
            with self.assertRaises(AttributeError):
                o.not_a_key
            with self.assertRaises(regopt.UnknownKey):
                o.set_option("sam.rho", 0.1)  # a trainer key on an optimizer
            with self.assertRaises(regopt.InvalidArgument):
                o.set(schedule="exponential")
            with self.assertRaises(regopt.OutOfRange):
                o.set_group(64, lr_scale=1.0)
        with self.assertRaises(regopt.InvalidArgument):
            regopt.Optimizer("lion")

    def test_trainer_and_regularizer_options(self):
        h = LinearHost()
        with h.model(slots=3, input_width=4) as m, regopt.Optimizer("adam") as o, \
                regopt.Trainer(m, o, seed=2 ** 40 + 3, loss="ce") as t:
            self.assertEqual(t.get("seed"), 2 ** 40 + 3)
            self.assertEqual(t["trainer.loss"], 0)
            sam = t.add("sam", rho=0.1, adaptive=True)
            self.assertIs(t.regularizers["sam"], sam)
            self.assertEqual(t.get("sam.rho"), 0.1)
            self.assertEqual((sam.rho, sam.adaptive), (0.1, 1))
            sam.rho = 0.2
            self.assertEqual(t["sam.rho"], 0.2)
            with self.assertRaises(regopt.StateError) as cm:
                t.add("sam")
            self.assertTrue(cm.exception.message)
            with self.assertRaises(regopt.UnknownKey):
                sam.rhoo = 1
            t.add(regopt.RDrop(alpha=0.5))
            self.assertEqual(t.get("rdrop.alpha"), 0.5)
            smart = t.add("smart", lambda_=3.0, norm="l2")
            self.assertEqual((t.get("smart.lambda"), smart.lambda_), (3.0, 3.0))
            self.assertEqual(t.get("smart.norm"), 2)
            t.add("bregman", mu=0.5)
            with self.assertRaises(regopt.OutOfRange) as cm:
                t.set_option("rdrop.alpha", -1)
            self.assertIn("rdrop.alpha", cm.exception.message)
            with self.assertRaises(regopt.StateError):
                t.set_option("stat.loss", 1.0)
            t.remove("smart")
            self.assertNotIn("smart", t.regularizers)
            self.assertEqual(smart.lambda_, 3.0)  # detached: the options it was added with
            # a failing option leaves the regularizer off
            with self.assertRaises(regopt.OutOfRange):
                t.add("smart", steps=1000)
            self.assertNotIn("smart", t.regularizers)
            t.add("smart")  # still possible: the failed add was undone
            st = t.stats()
            self.assertEqual(st["step"], 0)
            self.assertEqual(st["loss"], 0.0)

    def test_smart_needs_input_width(self):
        h = LinearHost()
        with h.model() as m, regopt.Optimizer("sgd") as o, regopt.Trainer(m, o) as t:
            with self.assertRaises(regopt.Error) as cm:
                t.add("smart")
            self.assertTrue(cm.exception.message)



if __name__ == "__main__":
    unittest.main()
