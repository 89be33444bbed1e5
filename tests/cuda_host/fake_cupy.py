"""A GPU-less stand-in for CuPy and for deepkern's ``_cuda`` module, to run deepkern's CUDA code
paths end to end on machines without a GPU.

``cupy``      a NumPy-backed imitation of the parts of CuPy that deepkern and its tests use:
              ``cupy.ndarray`` (module ``cupy``, ``.device.id``, ``__cuda_array_interface__`` v3)
              wrapping a NumPy array, the array functions (``asarray``, ``zeros``, ``matmul``,
              ``exp``, ...), ``cupy.cuda.Device`` and ``get_current_stream``. Like the real one it
              refuses NumPy arrays as operands and implicit conversion to NumPy (``np.asarray``
              of a device array is a TypeError), so code that would fail on a GPU fails here.
``_cuda``     every binding of deepkern's ``_cuda`` module with the real signatures, computed by
              the CUDA kernels' own per-thread code on the CPU (cuda_host/emulate.cpp).

``install(monkeypatch)`` puts both in place and makes ``deepkern._cuda_backend`` (the real
Python backend) import them; ``deepkern.backends()`` then lists "cuda". What this cannot
check: the real bindings' argument checks (test_cuda_arrays.py and test_cuda_optim.py probe
those when the CUDA module is built), and anything about real GPUs.
"""

from __future__ import annotations

import importlib
import operator
import sys
import types

import numpy as np

from cuda_host.emulator import emulator

_current_device = [0]


class _Device:
    def __init__(self, id=None):
        self.id = _current_device[0] if id is None else int(id)

    def __enter__(self):
        self._prev = _current_device[0]
        _current_device[0] = self.id
        return self

    def __exit__(self, *exc):
        _current_device[0] = self._prev
        return False

    def __eq__(self, other):
        return isinstance(other, _Device) and other.id == self.id

    def __hash__(self):
        return hash(self.id)


def _unwrap(x):
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, np.ndarray):  # CuPy: "Unsupported type <class 'numpy.ndarray'>"
        raise TypeError(f"Unsupported type {type(x)} (a NumPy array where a cupy array is needed)")
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v) for v in x)
    if isinstance(x, dict):
        return {k: _unwrap(v) for k, v in x.items()}
    return x


def _device_of(args):
    for a in args:
        if isinstance(a, ndarray):
            return a.device.id
        if isinstance(a, (list, tuple)):
            d = _device_of(a)
            if d is not None:
                return d
    return None


def _wrap(x, device):
    if isinstance(x, np.ndarray):
        return ndarray(x, device)
    if isinstance(x, np.generic):  # CuPy's reductions return 0-d arrays, not scalars
        return ndarray(np.asarray(x), device)
    if isinstance(x, tuple):
        return tuple(_wrap(v, device) for v in x)
    return x


def _call(f, args, kwargs):
    dev = _device_of(list(args) + list(kwargs.values()))
    out = f(*_unwrap(args), **_unwrap(kwargs))
    return _wrap(out, _current_device[0] if dev is None else dev)


class ndarray:
    """A 'device' array: a NumPy array behind CuPy's interface."""

    __module__ = "cupy"
    __array_ufunc__ = None  # NumPy's operators defer to ours (which refuse NumPy operands)

    def __init__(self, a: np.ndarray, device: int | None = None):
        self._a = a
        self.device = _Device(device)

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` "
                        "to construct a NumPy array explicitly.")

    @property
    def __cuda_array_interface__(self):
        a = self._a
        return {"shape": a.shape, "typestr": a.dtype.str, "data": (a.ctypes.data if a.size else 0, False),
                "strides": None if a.flags.c_contiguous else a.strides, "version": 3, "stream": 1}

    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: ndarray(self._a.T, self.device.id))

    def get(self):
        return self._a.copy()

    def __getattr__(self, name):
        attr = getattr(self._a, name)
        if not callable(attr):
            return attr
        return lambda *args, **kwargs: _call(attr, args, kwargs)

    def __getitem__(self, key):
        return _wrap(self._a[_unwrap(key)], self.device.id)

    def __setitem__(self, key, value):
        self._a[_unwrap(key)] = _unwrap(value)

    def __len__(self):
        return len(self._a)

    def __float__(self):
        return float(self._a)

    def __int__(self):
        return int(self._a)

    def __index__(self):
        return operator.index(self._a)

    def __bool__(self):
        return bool(self._a)

    def __repr__(self):
        return f"fake_cupy.ndarray({self._a!r}, device={self.device.id})"


def _binary(op):
    def f(self, other):
        return _wrap(op(self._a, _unwrap(other)), self.device.id)
    return f


def _reflected(op):
    def f(self, other):
        return _wrap(op(_unwrap(other), self._a), self.device.id)
    return f


def _inplace(op):
    def f(self, other):
        op(self._a, _unwrap(other))
        return self
    return f


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor"):
    _op = getattr(operator, _name + ("_" if _name in ("and", "or") else ""))
    setattr(ndarray, f"__{_name}__", _binary(_op))
    setattr(ndarray, f"__r{_name}__", _reflected(_op))
    setattr(ndarray, f"__i{_name}__", _inplace(getattr(operator, f"i{_name}")))
for _name in ("lt", "le", "gt", "ge", "eq", "ne"):
    setattr(ndarray, f"__{_name}__", _binary(getattr(operator, _name)))
for _name in ("neg", "pos", "abs", "invert"):
    setattr(ndarray, f"__{_name}__", (lambda op: lambda self: _wrap(op(self._a), self.device.id))(getattr(operator, _name)))
ndarray.__hash__ = None


def _make_cupy():
    m = types.ModuleType("cupy")
    m.ndarray = ndarray

    def asarray(a, dtype=None):
        if isinstance(a, ndarray):
            return a if dtype is None or np.dtype(dtype) == a.dtype else a.astype(dtype)
        return ndarray(np.array(a, dtype=dtype, copy=True), _current_device[0])

    def array(a, dtype=None, copy=True, order="K"):
        src = a._a if isinstance(a, ndarray) else a
        return ndarray(np.array(src, dtype=dtype, copy=True, order=order), _current_device[0])

    def asnumpy(a):
        return a._a.copy() if isinstance(a, ndarray) else np.asarray(a)

    m.asarray, m.array, m.asnumpy = asarray, array, asnumpy
    m.cuda = types.SimpleNamespace(
        Device=_Device, get_current_stream=lambda: types.SimpleNamespace(ptr=0),
        runtime=types.SimpleNamespace(getDeviceCount=lambda: 2))

    def fallback(name):  # everything else: NumPy's function on the unwrapped arrays
        f = getattr(np, name)
        if isinstance(f, type) or not callable(f):
            return f
        return lambda *args, **kwargs: _call(f, args, kwargs)
    m.__getattr__ = fallback
    return m


# ---------------------------------------------------------------------------- _cuda on the emulator

def _a(x):
    return None if x is None else x._a


def _make_cuda():
    emu = emulator()
    m = types.ModuleType("deepkern._cuda")
    m.build_info = lambda: {"version": "host emulator", "archs": [], "tf32": False}
    m.probe_error = lambda: ""
    m.driver_version = lambda: 0
    m.device_count = lambda: 1
    m.device_properties = lambda i: {"name": "host emulator", "compute_capability": "0.0",
                                     "multiprocessors": 1, "memory_bytes": 0}

    def conv2d_forward(y, x, w, b, s, p, d, g, stream):
        y._a[...] = emu.conv2d(_a(x), _a(w), _a(b), s, p, d, g)

    def conv2d_backward_input(dx, dy, w, s, p, d, g, stream):
        dx._a[...] = emu.conv2d_backward(_a(dy), np.zeros(dx.shape, np.float32), _a(w), s, p, d, g, False)[0]

    def conv2d_backward_weight(dw, db, dy, x, s, p, d, g, stream):
        _, gw, gb = emu.conv2d_backward(_a(dy), _a(x), np.zeros(dw.shape, np.float32), s, p, d, g, db is not None)
        dw._a[...] = gw
        if db is not None:
            db._a[...] = gb

    def max_pool2d_forward(y, idx, x, k, s, p, d, ceil_mode, stream):
        y._a[...], idx._a[...] = emu.max_pool2d(_a(x), k, s, p, d, ceil_mode)

    def max_pool2d_backward(dx, dy, idx, stream):
        dx._a[...] = emu.max_pool2d_backward(_a(dy), _a(idx), dx.shape)

    def avg_pool2d_forward(y, x, k, s, p, ceil_mode, cip, stream):
        y._a[...] = emu.avg_pool2d(_a(x), k, s, p, ceil_mode, cip)

    def avg_pool2d_backward(dx, dy, k, s, p, ceil_mode, cip, stream):
        dx._a[...] = emu.avg_pool2d_backward(_a(dy), dx.shape, k, s, p, ceil_mode, cip)

    def batch_norm_forward(y, sm, si, x, w, b, rm, rv, training, momentum, eps, stream, relu=False):
        y._a[...], sm._a[...], si._a[...] = emu.batch_norm(_a(x), _a(w), _a(b), _a(rm), _a(rv), training,
                                                           momentum, eps, relu)

    def batch_norm_backward(gx, gw, gb, dy, x, w, sm, si, training, stream, relu_y=None):
        rx, rw, rb = emu.batch_norm_backward(_a(dy), _a(x), _a(w), _a(sm), _a(si), training, _a(relu_y))
        gx._a[...] = rx
        if gw is not None:
            gw._a[...], gb._a[...] = rw, rb

    def dropout_forward(y, mask, x, p, seed, stream):
        y._a[...], mask._a[...] = emu.dropout(_a(x), p, True, seed)

    def dropout_backward(dx, dy, mask, p, stream):
        dx._a[...] = emu.dropout_backward(_a(dy), _a(mask), p)

    def relu_forward(y, x, stream):
        y._a[...] = emu.relu(_a(x))

    def relu_backward(dx, dy, y, stream):
        dx._a[...] = emu.relu_backward(_a(dy), _a(y))

    def optim_step(kind, params, grads, states, emas, hyper, stream):
        assert isinstance(hyper, np.ndarray) and hyper.dtype == np.float64 and hyper.ndim == 2
        assert all(len(st) == 3 for st in states)
        emu.optim_step(kind, [_a(p) for p in params], [_a(g) for g in grads],
                       [[_a(s) for s in st] for st in states],
                       None if emas is None else [_a(e) for e in emas], hyper)

    def ema_update(avgs, xs, decay, stream):
        emu.ema_update([_a(a) for a in avgs], [_a(x) for x in xs], decay)

    def multi_scale(xs, scale, stream):
        emu.multi_scale([_a(x) for x in xs], scale)

    def multi_copy(dsts, srcs, stream):
        emu.multi_copy([_a(d) for d in dsts], [_a(s) for s in srcs])

    def multi_norm_reduce(xs, p, stream):
        return emu.multi_norm_reduce([_a(x) for x in xs], p)

    def fractional_max_pool2d_forward(y, idx, x, samples, kh, kw, stream):
        y._a[...], idx._a[...] = emu.fractional_max_pool2d(_a(x), (kh, kw), y.shape[2:], _a(samples))

    for f in (conv2d_forward, conv2d_backward_input, conv2d_backward_weight, max_pool2d_forward,
              max_pool2d_backward, avg_pool2d_forward, avg_pool2d_backward, fractional_max_pool2d_forward,
              batch_norm_forward,
              batch_norm_backward, dropout_forward, dropout_backward, relu_forward, relu_backward,
              optim_step, ema_update, multi_scale, multi_copy, multi_norm_reduce):
        setattr(m, f.__name__, f)
    return m


def install(monkeypatch):
    """Fake CuPy + emulated _cuda + the real deepkern._cuda_backend on them. Returns
    (cupy module, _cuda_backend module, emulator)."""
    import deepkern
    from deepkern import _backend

    cupy = _make_cupy()
    cuda = _make_cuda()
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setitem(sys.modules, "deepkern._cuda", cuda)
    monkeypatch.setattr(deepkern, "_cuda", cuda, raising=False)  # before: `from . import _cuda` reads it
    monkeypatch.delitem(sys.modules, "deepkern._cuda_backend", raising=False)
    monkeypatch.delattr(deepkern, "_cuda_backend", raising=False)  # (the import below sets it)
    backend = importlib.import_module("deepkern._cuda_backend")
    monkeypatch.setattr(deepkern, "_cuda_backend", backend, raising=False)
    monkeypatch.setattr(_backend, "_cuda_state", {"module": backend, "reason": None})
    return cupy, backend, emulator()
