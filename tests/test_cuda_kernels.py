"""The CUDA kernels against the CPU backend and the NumPy reference, on up to three targets.

    emulator   csrc/cuda/*.cu's per-thread code compiled with g++ and replayed block by block
               on the CPU (tests/cuda_host/emulate.cpp): runs on every machine with g++, and
               checks the kernels' index math, tiling, split-K, reductions and Philox draws.
    cupy       the real kernels on a GPU, through deepkern.functional on CuPy arrays.
    torch      the same on PyTorch CUDA tensors.

Every target is a backend-like object with the functions of ``deepkern._cpu`` taking and
returning NumPy arrays; the device targets move data to the GPU and back, and check on the
way that every result is an array of the caller's library on the caller's device. Targets
that are not available here are skipped with the reason.

Claims tested bitwise (same operations in the same order as the CPU): pooling (values,
indices, gradients), dropout (mask, y, grad), relu. Convolution with small-integer inputs is
exact, hence bitwise against the reference; with random inputs and for batch norm the
summation order differs from the CPU's, so the tolerances of tests/tolerances.py apply.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import deepkern
import deepkern.functional as F
import deepkern.reference as R
from conftest import assert_bitwise, assert_close, f64
from test_conv2d import SAMPLES as CONV_SAMPLES
from test_conv2d import args as conv_args
from test_conv2d import conv_cases
from test_conv2d import make as conv_make
from test_pool2d import distinct, pool_cases
from tolerances import tol

from cuda_host.emulator import emulator

F32 = np.float32


# ============================================================ the targets

class Device:
    """The real kernels on a GPU: deepkern.functional on CuPy arrays or PyTorch CUDA tensors."""

    def __init__(self, lib):
        self.name = lib
        self.last_splits = None
        if lib == "cupy":
            import cupy
            self.to = lambda a: cupy.asarray(a)
            self.back_raw = cupy.asnumpy
            self.kind = cupy.ndarray
            self.device = lambda a: a.device.id
            self.here = cupy.cuda.Device().id
        else:
            import torch
            self.to = lambda a: torch.from_numpy(np.ascontiguousarray(a)).cuda()
            self.back_raw = lambda a: a.cpu().numpy()
            self.kind = torch.Tensor
            self.device = lambda a: a.device.index
            self.here = torch.cuda.current_device()

    def back(self, a, dtype=F32):
        """A result to NumPy, after checking it is the caller's kind of array, on its device."""
        if a is None:
            return None
        assert isinstance(a, self.kind), f"{self.name}: result is a {type(a).__name__}"
        assert self.device(a) == self.here, f"{self.name}: result on device {self.device(a)}"
        out = self.back_raw(a)
        assert out.dtype == dtype and out.flags.c_contiguous
        return out

    def _to(self, a):
        return None if a is None else self.to(a)

    def conv2d(self, x, w, b, s, p, d, g):
        return self.back(F.conv2d(self.to(x), self.to(w), self._to(b), s, p, d, g))

    def conv2d_backward(self, dy, x, w, s, p, d, g, bias):
        r = F.conv2d_backward(self.to(dy), self.to(x), self.to(w), s, p, d, g, bias)
        return tuple(self.back(a) for a in r)

    def max_pool2d(self, x, k, s, p, d, ceil_mode):
        y, idx = F.max_pool2d(self.to(x), k, s, p, d, ceil_mode)
        return self.back(y), self.back(idx, np.int64)

    def max_pool2d_backward(self, dy, idx, shape):
        return self.back(F.max_pool2d_backward(self.to(dy), self.to(idx), shape))

    def avg_pool2d(self, x, k, s, p, ceil_mode, cip):
        return self.back(F.avg_pool2d(self.to(x), k, s, p, ceil_mode, cip))

    def avg_pool2d_backward(self, dy, shape, k, s, p, ceil_mode, cip):
        return self.back(F.avg_pool2d_backward(self.to(dy), shape, k, s, p, ceil_mode, cip))

    def batch_norm(self, x, w, b, rm, rv, training, momentum, eps):
        drm, drv = self._to(rm), self._to(rv)
        r = F.batch_norm(self.to(x), self._to(w), self._to(b), drm, drv, training, momentum, eps)
        if rm is not None:  # updated in place on the device: copy back into the caller's arrays
            rm[...], rv[...] = self.back(drm), self.back(drv)
        return tuple(self.back(a) for a in r)

    def batch_norm_backward(self, dy, x, w, sm, si, training):
        r = F.batch_norm_backward(self.to(dy), self.to(x), self._to(w), self.to(sm), self.to(si),
                                  training)
        return tuple(self.back(a) for a in r)

    def batch_norm_relu(self, x, w, b, rm, rv, training, momentum, eps):
        drm, drv = self._to(rm), self._to(rv)
        r = F.batch_norm_relu(self.to(x), self._to(w), self._to(b), drm, drv, training, momentum, eps)
        if rm is not None:
            rm[...], rv[...] = self.back(drm), self.back(drv)
        return tuple(self.back(a) for a in r)

    def batch_norm_relu_backward(self, dy, y, x, w, sm, si, training):
        r = F.batch_norm_relu_backward(self.to(dy), self.to(y), self.to(x), self._to(w), self.to(sm),
                                       self.to(si), training)
        return tuple(self.back(a) for a in r)

    def dropout(self, x, p, training, seed):
        y, mask = F.dropout(self.to(x), p, training, seed)
        return self.back(y), self.back(mask, np.uint8)

    def dropout_backward(self, dy, mask, p):
        return self.back(F.dropout_backward(self.to(dy), self.to(mask), p))

    def relu(self, x):
        return self.back(F.relu(self.to(x)))

    def relu_backward(self, dy, y):
        return self.back(F.relu_backward(self.to(dy), self.to(y)))


def _gpu_reason(lib):
    if "cuda" not in deepkern.backends():
        from deepkern._backend import cuda_unavailable_reason
        return f"no usable cuda backend: {cuda_unavailable_reason()}"
    try:
        if lib == "cupy":
            import cupy
            cupy.cuda.runtime.getDeviceCount()
        else:
            import torch
            if not torch.cuda.is_available():
                return "torch is installed but sees no CUDA device"
    except Exception as e:  # ImportError, or a CuPy built for another CUDA
        return f"{lib} is not usable here: {e!r}"
    return None


@pytest.fixture(scope="session", params=["emulator", "cupy", "torch"])
def impl(request, tmp_path_factory):
    if request.param == "emulator":
        return emulator()
    reason = _gpu_reason(request.param)
    if reason:
        pytest.skip(reason)
    return Device(request.param)


def given_(*strategies):
    """@given with fewer examples (the emulator replays every thread of every block)."""
    return lambda f: settings(max_examples=25)(given(*strategies)(f))


# ============================================================ conv2d

def _f32_case(c):
    return dict(c, dtype=F32)


@given_(conv_cases(), st.integers(0, 2**32 - 1))
def test_conv2d_matches_reference(impl, c, seed):
    c = _f32_case(c)
    rng = np.random.default_rng(seed)
    x, w, b = conv_make(c, rng)
    a = conv_args(c)
    s, p, d, g = a["stride"], a["padding"], a["dilation"], a["groups"]
    y = impl.conv2d(x, w, b, s, p, d, g)
    assert_close(y, R.conv2d(*f64(x, w), f64(b) if b is not None else None, **a),
                 *tol("conv2d", F32), what="y")
    dy = rng.standard_normal(y.shape).astype(F32)
    got = impl.conv2d_backward(dy, x, w, s, p, d, g, c["bias"])
    want = R.conv2d_backward(*f64(dy, x, w), bias=c["bias"], **a)
    for gv, rv, name in zip(got, want, ("grad_x", "grad_weight", "grad_bias")):
        if rv is None:
            assert gv is None
        else:
            assert_close(gv, rv, *tol("conv2d_backward", F32), what=name)


@given_(conv_cases(), st.integers(0, 2**32 - 1))
def test_conv2d_exact_integer_inputs_bitwise(impl, c, seed):
    """Small integers make every sum exact: any index slip in the implicit GEMM flips bits."""
    c = dict(_f32_case(c), bias=True)
    rng = np.random.default_rng(seed)
    x, w, b = conv_make(c, rng, integer=True)
    a = conv_args(c)
    s, p, d, g = a["stride"], a["padding"], a["dilation"], a["groups"]
    y = impl.conv2d(x, w, b, s, p, d, g)
    assert_bitwise(y, R.conv2d(*f64(x, w, b), **a).astype(F32), "y")
    dy = rng.integers(-3, 4, y.shape).astype(F32)
    gx, gw, gb = impl.conv2d_backward(dy, x, w, s, p, d, g, True)
    rx, rw, rb = R.conv2d_backward(*f64(dy, x, w), **a)
    assert_bitwise(gx, rx.astype(F32), "grad_x")
    assert_bitwise(gw, rw.astype(F32), "grad_weight")
    assert_bitwise(gb, rb.astype(F32), "grad_bias")


@pytest.mark.parametrize("case", CONV_SAMPLES + [
    # (N, C, H, W, OC, K, stride, padding, dilation, groups)
    (2, 3, 32, 32, 70, 3, 1, 1, 1, 1),     # 2 row tiles of 64, 32 column tiles, split-K weight grad
    (1, 8, 20, 20, 130, 1, 1, 0, 1, 2),    # groups with ocpg = 65 > one tile
    (3, 2, 17, 9, 5, 4, 2, 2, 2, 1),       # stride, padding and dilation together, odd sizes
])
def test_conv2d_samples_against_cpu(impl, case, rng):
    N, C, H, W, OC, K, s, p, d, g = case
    c = dict(N=N, C=C, H=H, W=W, OC=OC, KH=K, KW=K, stride=s, padding=p, dilation=d, groups=g,
             dtype=F32, bias=True)
    for integer in (False, True):
        x, w, b = conv_make(c, rng, integer=integer)
        pairs = (s, s), (p, p), (d, d)
        y = impl.conv2d(x, w, b, *pairs, g)
        cpu_y = F.conv2d(x, w, b, s, p, d, g)
        dy = (rng.integers(-3, 4, y.shape) if integer else rng.standard_normal(y.shape)).astype(F32)
        got = impl.conv2d_backward(dy, x, w, *pairs, g, True)
        cpu = F.conv2d_backward(dy, x, w, s, p, d, g)
        if integer:  # exact: the same bits as the CPU whatever the summation order
            assert_bitwise(y, cpu_y, "y")
            for gv, cv, name in zip(got, cpu, ("grad_x", "grad_weight", "grad_bias")):
                assert_bitwise(gv, cv, name)
        else:
            assert_close(y, cpu_y, *tol("conv2d", F32), what="y")
            for gv, cv, name in zip(got, cpu, ("grad_x", "grad_weight", "grad_bias")):
                assert_close(gv, cv, *tol("conv2d_backward", F32), what=name)
    if impl.name == "emulator" and case[0] * case[2] * case[3] >= 2048:
        assert impl.last_splits > 1, "this case is meant to exercise the split-K weight gradient"


def test_conv2d_empty_batch(impl):
    x, w = np.zeros((0, 3, 5, 5), F32), np.ones((2, 3, 3, 3), F32)
    y = impl.conv2d(x, w, np.ones(2, F32), (1, 1), (0, 0), (1, 1), 1)
    assert y.shape == (0, 2, 3, 3)
    gx, gw, gb = impl.conv2d_backward(y, x, w, (1, 1), (0, 0), (1, 1), 1, True)
    assert gx.shape == x.shape
    assert_bitwise(gw, np.zeros_like(w), "grad_weight")
    assert_bitwise(gb, np.zeros(2, F32), "grad_bias")


def test_conv2d_backward_is_deterministic(impl, rng):
    x = rng.standard_normal((4, 6, 24, 24)).astype(F32)
    w = rng.standard_normal((12, 6, 3, 3)).astype(F32)
    dy = rng.standard_normal((4, 12, 24, 24)).astype(F32)
    a = impl.conv2d_backward(dy, x, w, (1, 1), (1, 1), (1, 1), 1, True)
    b = impl.conv2d_backward(dy, x, w, (1, 1), (1, 1), (1, 1), 1, True)
    for u, v, name in zip(a, b, ("grad_x", "grad_weight", "grad_bias")):
        assert_bitwise(u, v, name)


# ============================================================ pooling (bitwise the CPU's)

@given_(pool_cases(), st.integers(0, 2**32 - 1), st.sampled_from(["distinct", "ties", "special"]))
def test_max_pool_bitwise_cpu(impl, c, seed, values):
    rng = np.random.default_rng(seed)
    if values == "distinct":
        x = distinct(c["shape"], F32, rng)
    elif values == "ties":
        x = rng.integers(-2, 3, c["shape"]).astype(F32)
    else:  # NaN (propagates, last NaN wins), -inf everywhere possible
        x = rng.choice(np.array([np.nan, -np.inf, 1.0, -1.0], F32), c["shape"])
    k, s, p, d, cm = (c[n] for n in ("kernel_size", "stride", "padding", "dilation", "ceil_mode"))
    y, idx = impl.max_pool2d(x, k, s, p, d, cm)
    cy, cidx = F.max_pool2d(x, k, s, p, d, cm)
    assert_bitwise(y, cy, "y")
    assert_bitwise(idx, cidx, "indices")
    dy = rng.standard_normal(y.shape).astype(F32)
    assert_bitwise(impl.max_pool2d_backward(dy, idx, x.shape), F.max_pool2d_backward(dy, idx, x.shape),
                   "grad_x")


def test_max_pool_backward_sums_repeated_indices_in_order(impl, rng):
    """Overlapping windows (k3 s1) send many outputs to one input: the sum order is the CPU's."""
    x = rng.integers(-1, 2, (2, 3, 40, 40)).astype(F32)  # ties: many shared argmaxes
    y, idx = impl.max_pool2d(x, (3, 3), (1, 1), (1, 1), (1, 1), False)
    dy = (rng.standard_normal(y.shape) * 1e3).astype(F32)  # non-associative sums
    assert_bitwise(impl.max_pool2d_backward(dy, idx, x.shape), F.max_pool2d_backward(dy, idx, x.shape),
                   "grad_x")


def test_max_pool_backward_rejects_indices_outside_the_plane(impl):
    dy = np.ones((1, 2, 2, 2), F32)
    idx = np.zeros((1, 2, 2, 2), np.int64)
    idx[0, 1, 1, 0] = 16  # plane of 4x4: 16 is one past the end
    with pytest.raises(ValueError, match=r"indices\[6\] = 16 is outside its input plane"):
        impl.max_pool2d_backward(dy, idx, (1, 2, 4, 4))


@given_(pool_cases(dilation=False), st.integers(0, 2**32 - 1), st.booleans())
def test_avg_pool_bitwise_cpu(impl, c, seed, cip):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(c["shape"]).astype(F32)
    k, s, p, cm = c["kernel_size"], c["stride"], c["padding"], c["ceil_mode"]
    y = impl.avg_pool2d(x, k, s, p, cm, cip)
    assert_bitwise(y, F.avg_pool2d(x, k, s, p, cm, cip), "y")
    assert_close(y, R.avg_pool2d(f64(x), k, s, p, cm, cip), *tol("avg_pool2d", F32), what="y vs reference")
    dy = rng.standard_normal(y.shape).astype(F32)
    gx = impl.avg_pool2d_backward(dy, x.shape, k, s, p, cm, cip)
    assert_bitwise(gx, F.avg_pool2d_backward(dy, x.shape, k, s, p, cm, cip), "grad_x")


# ============================================================ batch norm

@given_(st.sampled_from([2, 4]), st.integers(2, 5), st.integers(1, 6), st.integers(1, 9),
        st.booleans(), st.integers(0, 2**32 - 1))
def test_batch_norm_matches_cpu_and_reference(impl, ndim, N, C, S, affine, seed):
    rng = np.random.default_rng(seed)
    shape = (N, C, S, S + 2) if ndim == 4 else (N, C)
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(F32)
    w = rng.standard_normal(C).astype(F32) if affine else None
    b = rng.standard_normal(C).astype(F32) if affine else None
    rm, rv = rng.standard_normal(C).astype(F32), (rng.random(C) + 0.5).astype(F32)
    crm, crv = rm.copy(), rv.copy()
    got = impl.batch_norm(x, w, b, rm, rv, True, 0.1, 1e-5)
    cpu = F.batch_norm(x, w, b, crm, crv, True, 0.1, 1e-5)
    t = tol("batch_norm", F32)
    for gv, cv, name in zip(got + (rm, rv), cpu + (crm, crv),
                            ("y", "save_mean", "save_invstd", "running_mean", "running_var")):
        assert_close(gv, cv, *t, what=name)
    dy = rng.standard_normal(shape).astype(F32)
    for training in (True, False):
        g = impl.batch_norm_backward(dy, x, w, got[1], got[2], training)
        cg = F.batch_norm_backward(dy, x, w, got[1], got[2], training)
        for gv, cv, name in zip(g, cg, ("grad_x", "grad_weight", "grad_bias")):
            if cv is None:
                assert gv is None
            else:
                assert_close(gv, cv, *tol("batch_norm_backward", F32), what=name)
    # eval: running statistics in, untouched
    rm0, rv0 = rm.copy(), rv.copy()
    ey = impl.batch_norm(x, w, b, rm, rv, False, 0.1, 1e-5)
    assert_bitwise(rm, rm0, "running_mean (eval)")
    assert_bitwise(rv, rv0, "running_var (eval)")
    for gv, cv, name in zip(ey, F.batch_norm(x, w, b, rm0, rv0, False, 0.1, 1e-5),
                            ("y", "save_mean", "save_invstd")):
        assert_close(gv, cv, *t, what=f"eval {name}")


@pytest.mark.parametrize("shape", [(3, 4, 5, 7), (70, 3), (2, 5, 1, 1)])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_relu_is_the_two_kernels_bitwise(impl, shape, training):
    """The fused batch_norm_relu (the ReLU in the apply kernel's store, its mask where the
    partial and apply kernels read dy) gives the bits of this backend's batch_norm then relu,
    and of relu_backward then batch_norm_backward, running statistics included."""
    rng = np.random.default_rng(len(shape) * 10 + training)
    C = shape[1]
    x = (rng.standard_normal(shape) * 2 + 0.3).astype(F32)
    x[:, 0] = 1.5                                      # a constant channel: exact zeros before the ReLU
    w, b = rng.standard_normal(C).astype(F32), rng.standard_normal(C).astype(F32)
    b[0] = 0.0
    rm, rv = rng.standard_normal(C).astype(F32), (rng.random(C) + 0.5).astype(F32)
    rm[0] = 1.5
    rm2, rv2 = rm.copy(), rv.copy()
    y, sm, si = impl.batch_norm_relu(x, w, b, rm, rv, training, 0.1, 1e-5)
    y0, sm0, si0 = impl.batch_norm(x, w, b, rm2, rv2, training, 0.1, 1e-5)
    y0 = impl.relu(y0)
    assert (y == 0).any() and (y > 0).any()
    for got, want, name in ((y, y0, "y"), (sm, sm0, "save_mean"), (si, si0, "save_invstd"),
                            (rm, rm2, "running_mean"), (rv, rv2, "running_var")):
        assert_bitwise(got, want, name)
    dy = rng.standard_normal(shape).astype(F32)
    got = impl.batch_norm_relu_backward(dy, y, x, w, sm, si, training)
    want = impl.batch_norm_backward(impl.relu_backward(dy, y0), x, w, sm0, si0, training)
    for g, e, name in zip(got, want, ("grad_x", "grad_weight", "grad_bias")):
        assert_bitwise(g, e, name)


@pytest.mark.parametrize("mean, std", [(1e3, 1.0), (1e4, 1.0), (1e4, 0.1), (1e5, 1.0)])
def test_batch_norm_large_mean(impl, mean, std, rng):
    """RELIABILITY.md's one-pass-variance failures: the shifted double sums must hold."""
    x = (rng.standard_normal((64, 2, 16, 16)) * std + mean).astype(F32)  # 16384 per channel: 4 chunks
    y, sm, si = impl.batch_norm(x, None, None, None, None, True, 0.1, 1e-5)
    ry, rsm, rsi = R.batch_norm(f64(x), None, None, None, None, True, 0.1, 1e-5)
    assert_close(si, rsi, 1e-4, 0, "save_invstd")
    assert_close(sm, rsm, 1e-6, 0, "save_mean")
    # y = (x - float32(mean)) * scale: the float32 rounding of x and of the mean (half an ulp
    # each, the CPU's too) times invstd bounds the error of y; the statistics carry none.
    atol = 2 * float(np.spacing(F32(mean))) * float(rsi.max()) + 1e-3
    assert_close(y, ry, 1e-3, atol, "y")


def test_batch_norm_is_deterministic(impl, rng):
    x = rng.standard_normal((32, 3, 20, 20)).astype(F32)
    a = impl.batch_norm(x, None, None, None, None, True, 0.1, 1e-5)
    b = impl.batch_norm(x, None, None, None, None, True, 0.1, 1e-5)
    for u, v, name in zip(a, b, ("y", "save_mean", "save_invstd")):
        assert_bitwise(u, v, name)


# ============================================================ dropout, relu (bitwise the CPU's)

@pytest.mark.parametrize("n", [0, 1, 3, 4, 5, 1001, 65537])
@pytest.mark.parametrize("p", [0.0, 1e-10, 0.3, 0.5, 0.999999999, 1.0])
def test_dropout_bitwise_cpu(impl, n, p, rng):
    x = rng.standard_normal(n).astype(F32)
    seed = int(rng.integers(0, 2**63))
    y, mask = impl.dropout(x, p, True, seed)
    cy, cmask = F.dropout(x, p, True, seed)
    assert_bitwise(mask, cmask, "mask")
    assert_bitwise(y, cy, "y")
    dy = rng.standard_normal(n).astype(F32)
    assert_bitwise(impl.dropout_backward(dy, mask, p), F.dropout_backward(dy, mask, p), "grad_x")


def test_dropout_mask_is_the_reference_philox(impl):
    x = np.ones(4099, F32)
    for seed in (0, 1, 2**32 + 5, 2**64 - 1):
        assert_bitwise(impl.dropout(x, 0.5, True, seed)[1], R.dropout_mask(x.shape, 0.5, seed), "mask")


def test_relu_bitwise_cpu(impl, rng):
    x = rng.standard_normal(10007).astype(F32)
    x[:4] = [np.nan, -0.0, 0.0, -np.inf]
    y = impl.relu(x)
    assert_bitwise(y, F.relu(x), "y")
    dy = rng.standard_normal(x.shape).astype(F32)
    assert_bitwise(impl.relu_backward(dy, y), F.relu_backward(dy, y), "grad_x")
