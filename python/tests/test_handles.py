"""Handles: copies and pickles are refused (they would share the library
handle and free it twice); every integer handed to C is range-checked
instead of wrapping; a forked child's finalizers do not block."""
import copy
import gc
import os
import pickle
import subprocess
import sys
import textwrap
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


def run_python(code, timeout):
    """Run code in a fresh interpreter in its own session; on a timeout kill
    the session (the interpreter and any process it forked). Returns
    (returncode or None on timeout, output)."""
    env = dict(os.environ, PYTHONPATH=PYDIR)
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
        return p.returncode, out
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, 9)
        out, _ = p.communicate()
        return None, out


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


class IntegerRangeTest(HandleCheck):
    def assertRange(self, fn, name):
        with self.assertRaises(OverflowError) as cm:
            fn()
        self.assertIsInstance(cm.exception, ValueError)
        self.assertIsInstance(cm.exception, regopt.OutOfRange)
        self.assertIn(name, str(cm.exception))

    def test_seeds(self):
        with linear() as m, regopt.Optimizer("sgd") as o, regopt.Trainer(m, o, seed=5) as t:
            for bad in (2 ** 64, 2 ** 63, 2 ** 64 + 5, -2 ** 63 - 1):
                self.assertRange(lambda: t.set(seed=bad), "trainer.seed")
                self.assertRange(lambda: t.set_option("trainer.seed", bad), "trainer.seed")
                self.assertEqual(t.get("seed"), 5)  # unchanged, not wrapped
            t.set(seed=-1)  # "trainer.seed" is any int64 (regopt.h)
            self.assertEqual(t.get("seed"), -1)
            t.set(seed=2 ** 63 - 1)
            self.assertEqual(t.get("seed"), 2 ** 63 - 1)
        with linear() as m, regopt.Optimizer("sgd") as o:
            self.assertRange(lambda: regopt.Trainer(m, o, seed=2 ** 64), "trainer.seed")
            self.assertRange(lambda: regopt.Trainer(m, o, seed=-1, threads=2 ** 64),
                             "trainer.threads")
        for fn in (regopt.random_uniform, regopt.random_normal):
            self.assertRange(lambda: fn(2 ** 64, 4), "seed")
            self.assertRange(lambda: fn(-1, 4), "seed")
            self.assertRange(lambda: fn(1, 4, offset=-1), "offset")
            self.assertRange(lambda: fn(1, 4, offset=2 ** 64), "offset")
        self.assertRange(lambda: regopt.dropout_mask(-1, (2, 2), 0.5), "seed")
        np.testing.assert_array_equal(regopt.random_uniform(2 ** 64 - 1, 4),
                                      regopt.random_uniform(np.uint64(2 ** 64 - 1), 4))

    def test_set_int(self):
        with linear() as m, regopt.Optimizer("adamw") as o, regopt.Trainer(m, o) as t:
            self.assertRange(lambda: t.set(threads=2 ** 63), "trainer.threads")
            self.assertRange(lambda: setattr(o, "warmup_steps", 2 ** 64 + 3),
                             "optimizer.warmup_steps")
            self.assertEqual(o.warmup_steps, 0)
            self.assertRange(lambda: o.set(total_steps=-2 ** 64 + 10), "optimizer.total_steps")
            sam = t.add("sam")
            self.assertRange(lambda: setattr(sam, "every", 2 ** 64 + 1), "sam.every")
            self.assertEqual(sam.every, 1)
            with self.assertRaises(regopt.OutOfRange):  # the library's own range
                t.set(threads=2 ** 62)

    def test_groups_keys_and_counts(self):
        with linear() as m, regopt.Optimizer("sgd") as o, regopt.Trainer(m, o) as t:
            o.set_group(0, weight_decay=0.25)
            for g in (2 ** 40, 2 ** 32, -2 ** 31 - 1):
                self.assertRange(lambda: o.set_group(g, weight_decay=0.5), "group")
                self.assertRange(lambda: o.get_group(g, "weight_decay"), "group")
            self.assertEqual(o.get_group(0, "weight_decay"), 0.25)  # group 2**40 is not 0
            # the trainer's 0.x sugar, before SAM is attached (kept for it) and after
            self.assertRange(lambda: t.set_group(2 ** 40, sam_adaptive=0), "group")
            self.assertRange(lambda: t.get_group(2 ** 40, "sam_adaptive"), "group")
            sam = t.add("sam")
            self.assertRange(lambda: t.set_group(2 ** 40, sam_adaptive=0), "group")
            self.assertRange(lambda: sam.set_group(2 ** 40, adaptive=0), "group")
            self.assertRange(lambda: sam.get_group(2 ** 40, "adaptive"), "group")
            self.assertEqual(sam.get_group(0, "adaptive"), 1.0)
            self.assertRange(lambda: t.reserve(-1), "max_rows")
            self.assertRange(lambda: t.reserve(2 ** 64), "max_rows")
            with self.assertRaises(regopt.OutOfRange):  # the library's own range
                o.set_group(64, weight_decay=0.5)
        self.assertRange(lambda: regopt.key_info(2 ** 32 + 100), "key")
        self.assertEqual(regopt.status_string(2 ** 32), "unknown status")  # not "REGOPT_OK"
        self.assertRange(lambda: regopt.Batch(data=None, rows=-1), "rows")
        self.assertRange(lambda: regopt.Batch(data=None, rows=2 ** 64), "rows")
        self.assertRange(lambda: regopt.Batch(data=None, rows=4, input_rows=-2), "input_rows")
        self.assertRange(lambda: regopt.Term("t", lambda v: 0.0, passes=-1), "passes")
        self.assertRange(lambda: regopt.Term("t", lambda v: 0.0, passes=1, pass_flags=[-1]),
                         "pass_flags")
        with self.assertRaises(ValueError):  # 9 flags: silently cut to 8 before
            regopt.Term("t", lambda v: 0.0, passes=8, pass_flags=[0] * 9)

    def test_model_arguments(self):
        w = np.zeros(4, np.float32)
        g = np.zeros_like(w)
        with regopt.Model(3) as m:
            self.assertRange(lambda: m.add_param("w", w, g, group=2 ** 40), "group")
            self.assertRange(lambda: m.add_param("w", w, g, group=2 ** 32), "group")
            self.assertEqual(m.param_count, 0)  # not registered in group 0
            self.assertRange(lambda: m.add_param_address("w", w.ctypes.data, g.ctypes.data, -1),
                             "count")
            self.assertRange(lambda: m.add_param_address("w", -8, None, 4), "data address")
            self.assertRange(lambda: m.add_param_address("w", w.ctypes.data, 2 ** 64, 4),
                             "grad address")
            self.assertRange(lambda: setattr(m, "output_width", -1), "output_width")
            self.assertRange(lambda: setattr(m, "input_width", 2 ** 64), "input_width")
            self.assertRange(lambda: setattr(m, "slots", 2 ** 32 + 3), "slots")
            self.assertRange(lambda: m.set_capabilities(-1), "capabilities")
            self.assertEqual((m.output_width, m.slots), (3, 1))
            m.add_param("w", w, g, group=np.int64(1))  # NumPy integers are fine
            with self.assertRaises(TypeError):
                m.output_width = 2.5
        self.assertRange(lambda: regopt.Optimizer(2 ** 32 + 1), "kind")


class ForkTest(unittest.TestCase):
    # regopt_trainer_free in a forked child used to wait for workers that exist only in
    # the parent (src/core/pool.c now records the owning pid).
    def test_child_exits_after_a_trainer_with_threads(self):
        rc, out = run_python("""
            import os, sys, time
            import numpy as np
            import regopt
            def main():  # locals: freed when SystemExit unwinds, modules still intact
                m = regopt.Model(3, forward=lambda p: None, backward=lambda p: None)
                w = np.zeros(4, np.float32)
                m.add_param("w", w, w.copy())
                o = regopt.Optimizer("sgd")
                t = regopt.Trainer(m, o, threads=2)
                time.sleep(0.2)  # the worker is asleep on its condition variable
                pid = os.fork()
                if pid == 0:
                    sys.exit(0)  # the child created nothing; its finalizers free the copies
                _, status = os.waitpid(pid, 0)
                print("child", status)
            main()
        """, timeout=20)
        self.assertEqual((rc, out.strip()), (0, "child 0"))

    def test_child_finalizers_with_a_lock_held_at_fork(self):
        # another thread holds the binding's handle-count lock while the
        # main thread forks: the child's finalizers take that lock
        rc, out = run_python("""
            import os, sys, threading, time
            import numpy as np
            import regopt
            from regopt import _handles
            m = regopt.Model(3, forward=lambda p: None, backward=lambda p: None)
            w = np.zeros(4, np.float32)
            m.add_param("w", w, w.copy())
            o = regopt.Optimizer("sgd")
            t = regopt.Trainer(m, o)
            held, done = threading.Event(), threading.Event()
            def hold():
                with _handles._live_lock:
                    held.set()
                    done.wait()
            th = threading.Thread(target=hold)
            th.start()
            held.wait()
            pid = os.fork()
            if pid == 0:
                t.close(), o.close(), m.close()
                os._exit(0 if regopt.live_handles()["trainer"] == 0 else 3)
            done.set()
            th.join()
            _, status = os.waitpid(pid, 0)
            print("child", status)
        """, timeout=20)
        self.assertEqual((rc, out.strip()), (0, "child 0"))


if __name__ == "__main__":
    unittest.main()


class TermTeacherTest(HandleCheck):
    def test_teacher_pass_reads_bregman_outputs(self):
        seen = []

        def value(v):
            # outputs[1]: the teacher's outputs; no gradient buffer for it
            seen.append((v.outputs[1] is not None, v.d_outputs[1] is None,
                         float(np.abs(v.outputs[1]).sum())))
            return 0.0

        x, y = np.ones((2, 4), np.float32), np.zeros(2, np.int32)
        with linear() as m, regopt.Optimizer("sgd") as o, regopt.Trainer(m, o) as t:
            t.add(regopt.Term("reads_teacher", value, passes=1,
                              pass_flags=[regopt.TERM_PASS_TEACHER]))
            with self.assertRaises(regopt.StateError) as cm:  # no teacher yet
                t.step(data=x, labels=y)
            self.assertIn("teacher pass", str(cm.exception))
            t.add("bregman", mu=0.0)
            t.step(data=x, labels=y)
        self.assertEqual(len(seen), 1)
        self.assertEqual(seen[0][:2], (True, True))
        with self.assertRaises(regopt.InvalidArgument):
            regopt.Term("t", value, passes=1,
                        pass_flags=[regopt.TERM_PASS_TEACHER | regopt.TERM_PASS_NO_GRAD])


class ReentrancyTest(HandleCheck):
    def test_close_and_step_inside_a_callback_refused(self):
        x, y = np.ones((2, 4), np.float32), np.zeros(2, np.int32)
        w = np.zeros((4, 3), np.float32)
        g = np.zeros_like(w)
        box = {}

        def fwd(p):
            p.outputs[:] = p.data[p.rows_slice] @ w
            if box.get("act") == "close":
                box["trainer"].close()
            elif box.get("act") == "step":
                box["trainer"].step(data=x, labels=y)

        def bwd(p):
            g[...] += p.data[p.rows_slice].T @ p.d_outputs

        with regopt.Model(3, forward=fwd, backward=bwd) as m:
            m.add_param("w", w, g)
            with regopt.Optimizer("sgd") as o, regopt.Trainer(m, o) as t:
                box["trainer"] = t
                for act in ("close", "step"):
                    box["act"] = act
                    with self.assertRaises(regopt.StateError):
                        t.step(data=x, labels=y)
                    self.assertEqual(t.steps, 0)
                box["act"] = None
                t.step(data=x, labels=y)  # the trainer was neither freed nor changed
                self.assertEqual(t.steps, 1)
