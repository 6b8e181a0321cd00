"""Handles: copies and pickles are refused (they would share the library
handle and free it twice)."""
import copy
import gc
import os
import pickle
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
PYDIR = os.path.join(HERE, "..")
sys.path.insert(0, PYDIR)

import numpy as np  # noqa: E402

import regopt  # noqa: E402


def linear():
    w = np.zeros((4, 3), np.float32)
    g = np.zeros_like(w)

    def fwd(p):
        p.outputs[:] = p.data[p.rows_slice] @ w

    def bwd(p):
        g[...] += p.data[p.rows_slice].T @ p.d_outputs
    m = regopt.Model(3, forward=fwd, backward=bwd)
    m.add_param("w", w, g)
    return m


class HandleCheck(unittest.TestCase):
    def tearDown(self):
        gc.collect()
        self.assertEqual(regopt.live_handles(), {"model": 0, "optimizer": 0, "trainer": 0})
        self.assertEqual(regopt.pending_callbacks(), 0)


class CopyTest(HandleCheck):
    def test_copies_and_pickles_refused(self):
        with linear() as m, regopt.Optimizer("sgd") as o, regopt.Trainer(m, o) as t:
            sam = t.add("sam")
            term = t.add(regopt.Term("zero", lambda v: 0.0))
            free = regopt.RDrop()
            for obj in (m, o, t, sam, term, free):
                for what, fn in (("copy.copy", copy.copy), ("copy.deepcopy", copy.deepcopy),
                                 ("pickle", pickle.dumps)):
                    with self.subTest(type(obj).__name__, what=what):
                        with self.assertRaises(TypeError) as cm:
                            fn(obj)
                        self.assertIn(type(obj).__name__, str(cm.exception))
                        self.assertIn("library handle", str(cm.exception))
            t.step(data=np.ones((2, 4), np.float32), labels=np.zeros(2, np.int32))
            free.close()
        self.assertEqual(regopt.live_handles(), {"model": 0, "optimizer": 0, "trainer": 0})

    def test_copy_inside_a_container(self):
        with regopt.Optimizer("sgd") as o:
            with self.assertRaises(TypeError):
                copy.deepcopy({"opt": o, "lr": 0.1})
            self.assertFalse(o.closed)


if __name__ == "__main__":
    unittest.main()
