"""The CUDA kernels' own per-thread code on the CPU: tests/cuda_host/emulate.cpp via ctypes.

``emulator()`` compiles emulate.cpp (with csrc/cuda/*.cu's host-device parts) once per test
process and returns an ``Emulator``, whose methods have the signatures of ``deepkern._cpu``
(NumPy arrays in, NumPy arrays out) for the layer ops, and of ``deepkern.optim._kernel`` for the
multi-tensor passes (lists of NumPy arrays updated in place). Skips the test when g++ is missing.
"""

from __future__ import annotations

import ctypes
import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

import deepkern.reference as R

ROOT = Path(__file__).resolve().parents[2]
F32 = np.float32


class Emulator:
    """tests/cuda_host/emulate.cpp, compiled once per session (ctypes, no pybind11)."""

    name = "emulator"

    def __init__(self, lib):
        self.lib = lib
        P, I, D, U = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_uint64
        sig = {
            "emu_conv2d_forward": [P] * 5, "emu_conv2d_backward_input": [P] * 4,
            "emu_conv2d_backward_weight": [P] * 5, "emu_max_pool2d_forward": [P] * 4,
            "emu_max_pool2d_backward": [P] * 4, "emu_avg_pool2d_forward": [P] * 3,
            "emu_avg_pool2d_backward": [P] * 3, "emu_fractional_max_pool2d_forward": [P] * 5,
            "emu_batch_norm_forward": [P] * 8 + [I, I, I, ctypes.c_int, D, D, ctypes.c_int],
            "emu_batch_norm_backward": [P] * 8 + [I, I, I, ctypes.c_int, P],
            "emu_dropout_forward": [P, P, P, I, D, U], "emu_dropout_backward": [P, P, P, I, D],
            "emu_relu_forward": [P, P, I], "emu_relu_backward": [P, P, P, I],
            "emu_optim_step": [ctypes.c_int, P, P, P, P, P, P, I, I],
            "emu_ema_update": [P, P, P, I, D], "emu_multi_scale": [P, P, I, D],
            "emu_multi_copy": [P, P, P, I], "emu_multi_norm_reduce": [P, P, I, D, P],
        }
        for fn, argtypes in sig.items():
            getattr(lib, fn).argtypes = argtypes
        for fn in ("emu_conv2d_backward_weight", "emu_max_pool2d_backward", "emu_optim_step",
                   "emu_ema_update", "emu_multi_scale", "emu_multi_copy"):
            getattr(lib, fn).restype = I
        lib.emu_multi_norm_reduce.restype = D
        self.last_launches = None
        self.last_splits = None

    @staticmethod
    def _p(a):
        return None if a is None else a.ctypes.data

    @staticmethod
    def _conv(x, w, y, s, p, d, g):
        return np.array([*x.shape, w.shape[0], w.shape[2], w.shape[3], y.shape[2], y.shape[3],
                         *s, *p, *d, g], np.int64)

    @staticmethod
    def _pool(x, y, k, s, p, d, cip=True):
        return np.array([*x.shape, y.shape[2], y.shape[3], *k, *s, *p, *d, int(cip)], np.int64)

    def conv2d(self, x, w, b, s, p, d, g):
        N, _, H, W = x.shape
        OC, _, KH, KW = w.shape
        y = np.empty((N, OC, R.window_out_size(H, KH, s[0], p[0], d[0]),
                      R.window_out_size(W, KW, s[1], p[1], d[1])), F32)
        self.lib.emu_conv2d_forward(*map(self._p, (y, x, w, b, self._conv(x, w, y, s, p, d, g))))
        return y

    def conv2d_backward(self, dy, x, w, s, p, d, g, bias):
        gx, gw = np.empty_like(x), np.empty_like(w)
        gb = np.empty(w.shape[0], F32) if bias else None
        pa = self._conv(x, w, dy, s, p, d, g)
        self.lib.emu_conv2d_backward_input(*map(self._p, (gx, dy, w, pa)))
        self.last_splits = self.lib.emu_conv2d_backward_weight(*map(self._p, (gw, gb, dy, x, pa)))
        return gx, gw, gb

    def max_pool2d(self, x, k, s, p, d, ceil_mode):
        N, C, H, W = x.shape
        y = np.empty((N, C, R.window_out_size(H, k[0], s[0], p[0], d[0], ceil_mode),
                      R.window_out_size(W, k[1], s[1], p[1], d[1], ceil_mode)), F32)
        idx = np.empty(y.shape, np.int64)
        self.lib.emu_max_pool2d_forward(*map(self._p, (y, idx, x, self._pool(x, y, k, s, p, d))))
        return y, idx

    def max_pool2d_backward(self, dy, idx, shape):
        gx = np.empty(shape, F32)
        pa = self._pool(gx, dy, (1, 1), (1, 1), (0, 0), (1, 1))
        bad = self.lib.emu_max_pool2d_backward(*map(self._p, (gx, dy, idx, pa)))
        if bad >= 0:
            raise ValueError(f"max_pool2d_backward: indices[{bad}] = {idx.reshape(-1)[bad]} is "
                             f"outside its input plane")
        return gx

    def fractional_max_pool2d(self, x, k, out, samples):
        N, C, H, W = x.shape
        y = np.empty((N, C) + tuple(out), F32)
        idx = np.empty(y.shape, np.int64)
        pa = np.array([N, C, H, W, out[0], out[1], k[0], k[1]], np.int64)
        self.lib.emu_fractional_max_pool2d_forward(*map(self._p, (y, idx, x, np.ascontiguousarray(samples, F32),
                                                                  pa)))
        return y, idx

    def avg_pool2d(self, x, k, s, p, ceil_mode, cip):
        N, C, H, W = x.shape
        y = np.empty((N, C, R.window_out_size(H, k[0], s[0], p[0], 1, ceil_mode),
                      R.window_out_size(W, k[1], s[1], p[1], 1, ceil_mode)), F32)
        self.lib.emu_avg_pool2d_forward(*map(self._p, (y, x, self._pool(x, y, k, s, p, (1, 1), cip))))
        return y

    def avg_pool2d_backward(self, dy, shape, k, s, p, ceil_mode, cip):
        gx = np.empty(shape, F32)
        pa = self._pool(gx, dy, k, s, p, (1, 1), cip)
        self.lib.emu_avg_pool2d_backward(*map(self._p, (gx, dy, pa)))
        return gx

    @staticmethod
    def _nchw(x):
        return x.shape[0], x.shape[1], int(np.prod(x.shape[2:], dtype=np.int64))

    def batch_norm(self, x, w, b, rm, rv, training, momentum, eps, relu=False):
        C = x.shape[1]
        y, sm, si = np.empty_like(x), np.empty(C, F32), np.empty(C, F32)
        self.lib.emu_batch_norm_forward(*map(self._p, (y, sm, si, rm, rv, x, w, b)), *self._nchw(x),
                                        int(training), momentum, eps, int(relu))
        return y, sm, si

    def batch_norm_relu(self, x, w, b, rm, rv, training, momentum, eps):
        return self.batch_norm(x, w, b, rm, rv, training, momentum, eps, relu=True)

    def batch_norm_relu_backward(self, dy, y, x, w, sm, si, training):
        return self.batch_norm_backward(dy, x, w, sm, si, training, relu_y=y)

    def batch_norm_backward(self, dy, x, w, sm, si, training, relu_y=None):
        C = x.shape[1]
        gx = np.empty_like(x)
        gw = np.empty(C, F32) if w is not None else None
        gb = np.empty(C, F32) if w is not None else None
        self.lib.emu_batch_norm_backward(*map(self._p, (gx, gw, gb, dy, x, w, sm, si)),
                                         *self._nchw(x), int(training), self._p(relu_y))
        return gx, gw, gb

    def dropout(self, x, p, training, seed):
        if not training or p == 0:
            return x.copy(), np.ones(x.shape, np.uint8)
        y, mask = np.empty_like(x), np.empty(x.shape, np.uint8)
        self.lib.emu_dropout_forward(self._p(y), self._p(mask), self._p(x), x.size, p, seed)
        return y, mask

    def dropout_backward(self, dy, mask, p):
        gx = np.empty_like(dy)
        self.lib.emu_dropout_backward(self._p(gx), self._p(dy), self._p(mask), dy.size, p)
        return gx

    def relu(self, x):
        y = np.empty_like(x)
        self.lib.emu_relu_forward(self._p(y), self._p(x), x.size)
        return y

    def relu_backward(self, dy, y):
        gx = np.empty_like(dy)
        self.lib.emu_relu_backward(self._p(gx), self._p(dy), self._p(y), dy.size)
        return gx


    # ---------------------------------------------------------------- multi-tensor passes
    # Lists of float32 NumPy arrays, updated in place; each records self.last_launches (how
    # many launches the plan of csrc/cuda/optim.cu needs).

    @staticmethod
    def _ptrs(arrays):
        for a in arrays:
            if a is not None:
                assert a.dtype == F32 and a.flags.c_contiguous and a.flags.writeable
        return (ctypes.c_void_p * max(1, len(arrays)))(*[None if a is None else a.ctypes.data for a in arrays])

    @staticmethod
    def _sizes(arrays):
        return np.array([a.size for a in arrays] or [0], np.int64)

    def optim_step(self, kind: int, params, grads, states, emas, hyper):
        """_C.optim_step's arguments (kind id, lists, (count, H) float64 rows) on the emulator."""
        hyper = np.ascontiguousarray(hyper, np.float64)
        count = len(params)
        flat_states = [s for st in states for s in st]
        n = self._sizes(params)
        self.last_launches = self.lib.emu_optim_step(
            int(kind), self._ptrs(params), self._ptrs(grads), self._ptrs(flat_states),
            None if emas is None else self._ptrs(emas), n.ctypes.data, hyper.ctypes.data, count,
            hyper.shape[1] if hyper.ndim == 2 else 0)

    def ema_update(self, avgs, xs, decay):
        self.last_launches = self.lib.emu_ema_update(self._ptrs(avgs), self._ptrs(xs),
                                                     self._sizes(avgs).ctypes.data, len(avgs), decay)

    def multi_scale(self, xs, scale):
        self.last_launches = self.lib.emu_multi_scale(self._ptrs(xs), self._sizes(xs).ctypes.data, len(xs),
                                                      scale)

    def multi_copy(self, dsts, srcs):
        self.last_launches = self.lib.emu_multi_copy(self._ptrs(dsts), self._ptrs(srcs),
                                                     self._sizes(dsts).ctypes.data, len(dsts))

    def multi_norm_reduce(self, xs, p):
        launches = np.zeros(1, np.int64)
        r = self.lib.emu_multi_norm_reduce(self._ptrs(xs), self._sizes(xs).ctypes.data, len(xs), p,
                                           launches.ctypes.data)
        self.last_launches = int(launches[0])
        return float(r)


def _compile(tmp_dir: Path):
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ not found: cannot compile the CUDA kernels' host emulation")
    src = ROOT / "tests" / "cuda_host" / "emulate.cpp"
    parts = [src.read_bytes()] + [p.read_bytes() for p in sorted((ROOT / "csrc").rglob("*.*"))]
    so = tmp_dir / f"libdkemu-{hashlib.sha256(b''.join(parts)).hexdigest()[:12]}.so"
    cmd = [gxx, "-std=c++17", "-O2", "-ffp-contract=off", "-shared", "-fPIC",
           f"-I{ROOT / 'csrc'}", str(src), "-o", str(so)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, f"compiling the emulator failed:\n{' '.join(cmd)}\n{r.stderr}"
    return Emulator(ctypes.CDLL(str(so)))


_EMULATOR = []


def emulator() -> Emulator:
    """The emulator, compiled once per process (skips the test without g++)."""
    if not _EMULATOR:
        _EMULATOR.append(_compile(Path(tempfile.mkdtemp(prefix="deepkern-cuda-host-"))))
    return _EMULATOR[0]
