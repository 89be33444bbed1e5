"""fractional_max_pool2d: the cpu kernel against the NumPy reference, the reference's backward
against finite differences, PyTorch with the same samples, seeds and thread counts, bad input."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import deepkern
import deepkern.functional as F
import deepkern.nn as nn
import deepkern.reference as R
from conftest import assert_bitwise, assert_close, assert_unchanged, noncontiguous, num_threads
from test_reference_grad import check

try:
    import torch
except ImportError:  # pragma: no cover - torch is optional
    torch = None


@st.composite
def frac_cases(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    H, W = draw(st.integers(kh, 13)), draw(st.integers(kw, 13))
    oh, ow = draw(st.integers(1, H - kh + 1)), draw(st.integers(1, W - kw + 1))
    return dict(shape=(draw(st.integers(0, 3)), draw(st.integers(1, 4)), H, W), kernel_size=(kh, kw),
                output_size=(oh, ow), dtype=draw(st.sampled_from([np.float32, np.float64])),
                noncontig=draw(st.booleans()))


def _samples(rng, n, c, dtype):
    s = rng.random((n, c, 2)).astype(dtype)
    return np.minimum(s, np.nextafter(dtype(1), dtype(0)))   # float32 rounding may reach 1.0


@given(frac_cases(), st.integers(0, 2**32 - 1), st.booleans())
def test_matches_reference(c, seed, with_ties):
    rng = np.random.default_rng(seed)
    x = (rng.integers(-2, 3, c["shape"]) if with_ties else rng.standard_normal(c["shape"])).astype(c["dtype"])
    s = _samples(rng, c["shape"][0], c["shape"][1], c["dtype"])
    kw = dict(kernel_size=c["kernel_size"], output_size=c["output_size"])
    with assert_unchanged(x, s):
        y, idx = F.fractional_max_pool2d(noncontiguous(x) if c["noncontig"] else x, samples=s, **kw)
    ry, ridx = R.fractional_max_pool2d(x, samples=s, **kw)
    assert_bitwise(y, ry, "y")
    assert_bitwise(idx, ridx, "indices")
    dy = rng.standard_normal(y.shape).astype(c["dtype"])
    gx = F.fractional_max_pool2d_backward(dy, idx, x.shape)
    assert_bitwise(gx, R.fractional_max_pool2d_backward(dy, idx, x.shape), "grad_x")
    with deepkern.use_backend("numpy"):   # the public function on the reference backend
        ny, nidx = F.fractional_max_pool2d(x, samples=s, **kw)
    assert_bitwise(ny, y, "numpy backend y")


@given(st.floats(0, 1, exclude_max=True, width=32), st.integers(1, 40), st.integers(1, 6), st.data())
def test_region_starts_kernel_equals_reference(u, L, K, data):
    K = min(K, L)
    O = data.draw(st.integers(1, L - K + 1))
    for single, dt in ((True, np.float32), (False, np.float64)):
        got = deepkern._C.fractional_region_starts(u, L, O, K, single)
        want = R.fractional_starts(dt(u), L, O, K, dt)
        assert list(got) == want.tolist()
        # every region lies inside the input, starts never decrease, and they step by
        # floor(alpha) or ceil(alpha) (the pseudo-random sequence of Graham's paper)
        assert want[0] >= 0 and want[-1] == L - K and np.all(np.diff(want) >= 0)
        if O > 1:
            alpha = (L - K) / (O - 1)
            assert set(np.diff(want).tolist()) <= {int(np.floor(alpha)), int(np.ceil(alpha))}


def test_nan_and_ties():
    x = np.zeros((1, 1, 4, 4), np.float32)
    s = np.zeros((1, 1, 2), np.float32)
    y, idx = F.fractional_max_pool2d(x, 2, output_size=2, samples=s)   # all ties: the first tap
    assert idx.tolist() == R.fractional_max_pool2d(x, 2, output_size=2, samples=s)[1].tolist()
    assert idx[0, 0, 0, 0] == 0
    x[0, 0, 0, 0] = x[0, 0, 1, 1] = np.nan                           # two NaNs: the last one wins
    y, idx = F.fractional_max_pool2d(x, 2, output_size=2, samples=s)
    assert np.isnan(y[0, 0, 0, 0]) and idx[0, 0, 0, 0] == 5
    x = np.full((1, 1, 3, 3), -np.inf, np.float64)                    # all -inf: the first tap
    y, idx = F.fractional_max_pool2d(x, 2, output_size=1, samples=np.zeros((1, 1, 2)))
    assert y[0, 0, 0, 0] == -np.inf and idx[0, 0, 0, 0] == 4


@pytest.mark.parametrize("kernel,out", [(2, (3, 3)), (3, (4, 5)), ((2, 3), (6, 2))])
def test_reference_backward_finite_differences(kernel, out, rng):
    x = rng.permutation(2 * 2 * 7 * 8).reshape(2, 2, 7, 8).astype(np.float64) * 0.01   # no ties
    s = rng.random((2, 2, 2))
    y, idx = R.fractional_max_pool2d(x, kernel, output_size=out, samples=s)
    g = rng.standard_normal(y.shape)
    check(R.fractional_max_pool2d_backward(g, idx, x.shape),
          lambda t: R.fractional_max_pool2d(t, kernel, output_size=out, samples=s)[0], x, g, "grad_x")


def test_overlapping_regions_accumulate(rng):
    # kernel 3 on 7 -> 5 outputs: regions overlap, so a tap can collect several gradients
    x = np.zeros((1, 1, 7, 7), np.float32)
    x[0, 0, 3, 3] = 1.0
    y, idx = F.fractional_max_pool2d(x, 3, output_size=5, samples=np.full((1, 1, 2), 0.5, np.float32))
    gx = F.fractional_max_pool2d_backward(np.ones_like(y), idx, x.shape)
    assert gx[0, 0, 3, 3] == np.count_nonzero(idx == 24) > 1
    assert gx.sum() == y.size


def test_output_ratio_and_unbatched(rng):
    x = rng.standard_normal((3, 10, 9)).astype(np.float32)
    s = rng.random((1, 3, 2)).astype(np.float32)
    y, idx = F.fractional_max_pool2d(x, 2, output_ratio=0.5, samples=s)
    assert y.shape == (3, 5, 4) and idx.shape == (3, 5, 4)
    yb, _ = F.fractional_max_pool2d(x[None], 2, output_size=(5, 4), samples=s)
    assert_bitwise(y, yb[0])
    y2, _ = F.fractional_max_pool2d(x, 2, output_ratio=(0.7, 0.5), samples=s)
    assert y2.shape == (3, 7, 4)
    gx = F.fractional_max_pool2d_backward(np.ones_like(y), idx, x.shape)
    assert gx.shape == x.shape


def test_seeds_reproducible_and_thread_independent(rng):
    x = rng.standard_normal((4, 6, 17, 15)).astype(np.float32)
    a = F.fractional_max_pool2d(x, 2, output_ratio=0.6, seed=5)
    b = F.fractional_max_pool2d(x, 2, output_ratio=0.6, seed=5)
    c = F.fractional_max_pool2d(x, 2, output_ratio=0.6, seed=6)
    assert_bitwise(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    # the seed gives the same samples (and so regions) in float64 and on the numpy backend
    s32, s64 = R.fractional_samples(4, 6, 5, np.float32), R.fractional_samples(4, 6, 5, np.float64)
    assert np.array_equal(s32.astype(np.float64), s64) and s64.min() >= 0 and s64.max() < 1
    assert_bitwise(F.fractional_max_pool2d(x.astype(np.float64), 2, output_ratio=0.6, seed=5)[1], a[1])
    with deepkern.use_backend("numpy"):
        assert_bitwise(F.fractional_max_pool2d(x, 2, output_ratio=0.6, seed=5)[1], a[1])
    outs = []
    for n in (1, 2):
        with num_threads(n):
            y, idx = F.fractional_max_pool2d(x, 3, output_size=(9, 7), seed=1)
            outs.append((y, idx, F.fractional_max_pool2d_backward(y, idx, x.shape)))
    for k in range(3):
        assert_bitwise(outs[0][k], outs[1][k])
    deepkern.manual_seed(3)
    d1 = F.fractional_max_pool2d(x, 2, output_ratio=0.6)
    deepkern.manual_seed(3)
    d2 = F.fractional_max_pool2d(x, 2, output_ratio=0.6)
    assert_bitwise(d1[1], d2[1])


@pytest.mark.skipif(torch is None, reason="PyTorch is not installed")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,kernel,out", [((2, 3, 11, 9), 2, (6, 5)), ((3, 2, 32, 32), 3, (20, 17)),
                                               ((1, 4, 25, 25), (2, 3), (16, 9)), ((2, 2, 8, 8), 2, (7, 7))])
def test_matches_pytorch_with_same_samples(shape, kernel, out, dtype, rng):
    x = rng.standard_normal(shape).astype(dtype)
    s = _samples(rng, shape[0], shape[1], dtype)
    y, idx = F.fractional_max_pool2d(x, kernel, output_size=out, samples=s)
    tx = torch.from_numpy(x).requires_grad_(True)
    ty, tidx = torch.nn.functional.fractional_max_pool2d(tx, kernel, output_size=out, return_indices=True,
                                                         _random_samples=torch.from_numpy(s))
    assert_bitwise(y, ty.detach().numpy(), "y")
    assert_bitwise(idx, tidx.numpy(), "indices")
    g = rng.standard_normal(y.shape).astype(dtype)
    ty.backward(torch.from_numpy(g))
    assert_close(F.fractional_max_pool2d_backward(g, idx, x.shape), tx.grad.numpy(), 1e-6, 1e-6, "grad_x")


@pytest.mark.skipif(torch is None, reason="PyTorch is not installed")
def test_module_matches_pytorch_module(rng):
    x = rng.standard_normal((2, 3, 12, 12)).astype(np.float32)
    s = _samples(rng, 2, 3, np.float32)
    m = nn.FractionalMaxPool2d(3, output_ratio=0.5, _random_samples=s)
    tm = torch.nn.FractionalMaxPool2d(3, output_ratio=0.5, _random_samples=torch.from_numpy(s))
    assert_bitwise(m(x), tm(torch.from_numpy(x)).numpy())


def test_module_draws_new_regions_and_backward(rng):
    x = rng.standard_normal((2, 3, 15, 15)).astype(np.float32)
    m = nn.FractionalMaxPool2d(2, output_ratio=0.7, return_indices=True)
    deepkern.manual_seed(0)
    y1, i1 = m(x)
    y2, i2 = m(x)
    assert y1.shape == (2, 3, 10, 10) and not np.array_equal(i1, i2)
    g = m.backward(np.ones_like(y2))
    assert_bitwise(g, F.fractional_max_pool2d_backward(np.ones_like(y2), i2, x.shape))
    with pytest.raises(RuntimeError, match="before forward"):
        nn.FractionalMaxPool2d(2, output_size=3).backward(np.ones((1, 1, 3, 3), np.float32))
    with pytest.raises(ValueError, match="either an output size"):
        nn.FractionalMaxPool2d(2)
    with pytest.raises(ValueError, match="between 0 and 1"):
        nn.FractionalMaxPool2d(2, output_ratio=1.5)


class FakeCudaArray:
    """Exposes __cuda_array_interface__ (as CuPy arrays do) without a GPU."""
    __cuda_array_interface__ = {"shape": (1, 1, 4, 4), "typestr": "<f4", "data": (0, False), "version": 3}
    shape, ndim = (1, 1, 4, 4), 4


def test_bad_input():
    x = np.zeros((1, 2, 6, 6), np.float32)
    s = np.zeros((1, 2, 2), np.float32)
    with pytest.raises(RuntimeError, match="cuda"):           # this build has no usable CUDA backend
        F.fractional_max_pool2d(FakeCudaArray(), 2, output_size=2)
    with pytest.raises(TypeError, match="int32"):
        F.fractional_max_pool2d(x.astype(np.int32), 2, output_size=2)
    with pytest.raises(ValueError, match="either an output_size or an output_ratio"):
        F.fractional_max_pool2d(x, 2)
    with pytest.raises(ValueError, match="only one of"):
        F.fractional_max_pool2d(x, 2, output_size=2, output_ratio=0.5)
    with pytest.raises(ValueError, match="between 0 and 1"):
        F.fractional_max_pool2d(x, 2, output_ratio=1.0)
    with pytest.raises(ValueError, match="empty output"):
        F.fractional_max_pool2d(x, 2, output_ratio=0.1)
    with pytest.raises(ValueError, match="too large relative"):
        F.fractional_max_pool2d(x, 3, output_size=5)
    with pytest.raises(ValueError, match="greater than zero"):
        F.fractional_max_pool2d(x, 0, output_size=2)
    with pytest.raises(TypeError, match="int"):
        F.fractional_max_pool2d(x, True, output_size=2)
    with pytest.raises(ValueError, match="samples must have shape"):
        F.fractional_max_pool2d(x, 2, output_size=3, samples=np.zeros((1, 3, 2), np.float32))
    with pytest.raises(TypeError, match="same dtype"):
        F.fractional_max_pool2d(x, 2, output_size=3, samples=s.astype(np.float64))
    for bad in (1.0, -0.5, np.nan):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            F.fractional_max_pool2d(x, 2, output_size=3, samples=np.full((1, 2, 2), bad, np.float32))
    with pytest.raises(ValueError, match="samples or seed"):
        F.fractional_max_pool2d(x, 2, output_size=3, samples=s, seed=1)
    with pytest.raises(ValueError, match="non-zero channel"):
        F.fractional_max_pool2d(np.zeros((1, 0, 6, 6), np.float32), 2, output_size=3)
    y, idx = F.fractional_max_pool2d(x, 2, output_size=3, samples=s)
    with pytest.raises(ValueError, match="outside its input plane"):
        F.fractional_max_pool2d_backward(y, idx + 100, x.shape)
    # the C++ binding re-checks what the Python layer checked (direct _C calls never crash)
    yy, ii = np.empty((1, 2, 3, 3), np.float32), np.empty((1, 2, 3, 3), np.int64)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        deepkern._C.fractional_max_pool2d_forward(yy, ii, x, np.full((1, 2, 2), np.nan, np.float32), 2, 2)
    with pytest.raises(ValueError, match="needs an input"):
        deepkern._C.fractional_max_pool2d_forward(yy, ii, x, s, 5, 5)


@given(frac_cases(), st.integers(0, 2**32 - 1))
def test_cuda_kernel_on_the_host_emulator_matches_cpu(c, seed):
    """csrc/cuda/fractional_pool2d.cu's per-thread code (compiled with g++ by the CUDA host
    emulator) gives the cpu kernel's values and indices bit for bit (float32, the CUDA dtype)."""
    from cuda_host.emulator import emulator
    emu = emulator()
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(c["shape"]).astype(np.float32)
    x[rng.random(x.shape) < 0.05] = np.nan
    s = _samples(rng, c["shape"][0], c["shape"][1], np.float32)
    y, idx = F.fractional_max_pool2d(x, c["kernel_size"], output_size=c["output_size"], samples=s)
    ey, eidx = emu.fractional_max_pool2d(x, c["kernel_size"], c["output_size"], s)
    assert_bitwise(ey, y, "y")
    assert_bitwise(eidx, idx, "indices")


def test_cuda_path_end_to_end_on_fake_cupy(monkeypatch, rng):
    """functional -> _cuda_backend (samples checked on the host, copied to the device) -> the
    emulated _cuda binding: CuPy-like results equal to the cpu backend's, forward and backward,
    for a seed and for explicit samples; unbatched input too."""
    from cuda_host import fake_cupy
    cp, _, _ = fake_cupy.install(monkeypatch)
    x = rng.standard_normal((2, 3, 11, 10)).astype(np.float32)
    xc = cp.asarray(x)
    y, idx = F.fractional_max_pool2d(xc, 2, output_ratio=0.6, seed=4)
    ry, ridx = F.fractional_max_pool2d(x, 2, output_ratio=0.6, seed=4)
    assert type(y) is type(xc) and y.shape == ry.shape
    assert_bitwise(cp.asnumpy(y), ry)
    assert_bitwise(cp.asnumpy(idx), ridx)
    g = rng.standard_normal(ry.shape).astype(np.float32)
    gx = F.fractional_max_pool2d_backward(cp.asarray(g), idx, x.shape)
    assert_bitwise(cp.asnumpy(gx), F.fractional_max_pool2d_backward(g, ridx, x.shape))
    s = _samples(rng, 1, 3, np.float32)
    yu, _ = F.fractional_max_pool2d(cp.asarray(x[0]), 3, output_size=(5, 4), samples=s)
    assert_bitwise(cp.asnumpy(yu), F.fractional_max_pool2d(x[0], 3, output_size=(5, 4), samples=s)[0])
    with pytest.raises(TypeError, match="float64"):
        F.fractional_max_pool2d(cp.asarray(x.astype(np.float64)), 2, output_size=3)
    with pytest.raises(TypeError, match="numpy.ndarray"):
        F.fractional_max_pool2d(xc, 2, output_size=3, samples=cp.asarray(np.zeros((2, 3, 2), np.float32)))
