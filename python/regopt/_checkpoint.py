"""Checkpoints of a trainer: the Trainer's checkpoint methods, as a mixin."""
import ctypes
import os

from . import _lib as L
from ._lib import lib
from ._guard import call, trampoline


class _Checkpoints:
    """Trainer.to_bytes / from_bytes / save / load / write_to / read_from;
    needs _p(), _msg() and .model of a trainer handle."""

    def _ck_p(self):
        """The trainer pointer, once the model's buffers are checked (a
        checkpoint reads and writes the registered tensors)."""
        self.model._before_call()
        return self._p()

    @staticmethod
    def _ck_flags(params, options):
        return (L.CHECKPOINT_PARAMS if params else 0) | (L.CHECKPOINT_OPTIONS if options else 0)

    def to_bytes(self, *, params=True, options=True):
        """The whole training state as a checkpoint (bytes): step, seed,
        optimizer moments, the Bregman teacher, statistics, and by default
        the model's tensors and every option. See regopt.h, "Checkpoints"."""
        flags = self._ck_flags(params, options)
        size = ctypes.c_size_t(0)
        call(self._msg, lib.regopt_trainer_checkpoint_size, self._ck_p(), flags,
             ctypes.byref(size))
        buf = ctypes.create_string_buffer(max(size.value, 1))
        written = ctypes.c_size_t(0)
        call(self._msg, lib.regopt_trainer_save_buffer, self._ck_p(), flags, buf, size.value,
             ctypes.byref(written))
        return buf.raw[:written.value]

    def from_bytes(self, data, *, params=True, options=True):
        """Restore a checkpoint made by to_bytes() (or save()). Everything is
        validated first: on any error (CorruptCheckpoint, CheckpointMismatch,
        OutOfRange, ...) the trainer and the tensors are unchanged."""
        data = bytes(data)
        call(self._msg, lib.regopt_trainer_load_buffer, self._ck_p(),
             self._ck_flags(params, options), data, len(data))

    def save(self, path, *, params=True, options=True):
        """Write a checkpoint to path atomically (temporary file, fsync, rename)."""
        call(self._msg, lib.regopt_trainer_save_file, self._ck_p(),
             self._ck_flags(params, options), os.fsencode(path))

    def load(self, path, *, params=True, options=True):
        """Restore a checkpoint file written by save() or regopt_trainer_save_file."""
        call(self._msg, lib.regopt_trainer_load_file, self._ck_p(),
             self._ck_flags(params, options), os.fsencode(path))

    def write_to(self, fileobj, *, params=True, options=True):
        """Stream a checkpoint to a binary file-like object (anything with
        write()), through regopt_trainer_save's write callback: for hosts that
        keep checkpoints in their own containers. An exception raised by
        write() (KeyboardInterrupt too) aborts the save and is re-raised here."""
        def write(data, size, user):
            view = memoryview(ctypes.string_at(data, size))
            while view:  # raw streams may write less than asked
                n = fileobj.write(view)
                if n is None:  # non-blocking stream that would block
                    return 1
                view = view[n:]
            return 0
        cb = L.WRITE_FN(trampoline(write, 1))
        call(self._msg, lib.regopt_trainer_save, self._ck_p(), self._ck_flags(params, options),
             cb, None)

    def read_from(self, fileobj, *, params=True, options=True):
        """Restore a checkpoint from a binary file-like object (anything with
        read(n)), through regopt_trainer_load's read callback. Reads exactly
        the checkpoint's bytes; a short read is CheckpointIOError. An
        exception raised by read() aborts the load (nothing changes) and is
        re-raised here."""
        def read(dst, size, user):
            got = 0
            while got < size:  # raw streams and pipes may return less
                chunk = fileobj.read(size - got)
                if not chunk:  # end of data (or would block)
                    return 1
                if len(chunk) > size - got:
                    raise ValueError("read(%d) returned %d bytes" % (size - got, len(chunk)))
                ctypes.memmove(dst + got, chunk, len(chunk))
                got += len(chunk)
            return 0
        cb = L.READ_FN(trampoline(read, 1))
        call(self._msg, lib.regopt_trainer_load, self._ck_p(), self._ck_flags(params, options),
             cb, None)
