"""max_pool2d / avg_pool2d: the cpu kernels against the NumPy reference."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import deepkern.functional as F
import deepkern.reference as R
from conftest import assert_bitwise, assert_close, f64, noncontiguous
from tolerances import tol


@st.composite
def pool_cases(draw, dilation=True):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    dh, dw = (draw(st.integers(1, 3)), draw(st.integers(1, 3))) if dilation else (1, 1)
    H = draw(st.integers(max(1, dh * (kh - 1) + 1 - 2 * ph), 11))
    W = draw(st.integers(max(1, dw * (kw - 1) + 1 - 2 * pw), 11))
    return dict(shape=(draw(st.integers(1, 3)), draw(st.integers(1, 4)), H, W),
                kernel_size=(kh, kw), stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw),
                ceil_mode=draw(st.booleans()), dtype=draw(st.sampled_from([np.float32, np.float64])),
                noncontig=draw(st.booleans()))


def distinct(shape, dtype, rng):
    """Distinct values (a shuffled range): no ties, so the argmax is unique."""
    n = int(np.prod(shape))
    return (rng.permutation(n).reshape(shape) * 0.5 - n / 4).astype(dtype)


@given(pool_cases(), st.integers(0, 2**32 - 1), st.booleans())
def test_max_pool_matches_reference(c, seed, with_ties):
    rng = np.random.default_rng(seed)
    x = (rng.integers(-2, 3, c["shape"]).astype(c["dtype"]) if with_ties
         else distinct(c["shape"], c["dtype"], rng))
    kw = {k: c[k] for k in ("kernel_size", "stride", "padding", "dilation", "ceil_mode")}
    y, idx = F.max_pool2d(noncontiguous(x) if c["noncontig"] else x, **kw)
    ry, ridx = R.max_pool2d(x, **kw)
    assert_bitwise(y, ry, "y")
    assert_bitwise(idx, ridx, "indices")
    dy = rng.standard_normal(y.shape).astype(c["dtype"])
    gx = F.max_pool2d_backward(dy, idx, x.shape)
    assert_close(gx, R.max_pool2d_backward(f64(dy), idx, x.shape), 1e-6, 1e-6, "grad_x")


@given(pool_cases(dilation=False), st.integers(0, 2**32 - 1), st.booleans())
def test_avg_pool_matches_reference(c, seed, count_include_pad):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(c["shape"]).astype(c["dtype"])
    kw = dict(kernel_size=c["kernel_size"], stride=c["stride"], padding=c["padding"],
              ceil_mode=c["ceil_mode"], count_include_pad=count_include_pad)
    y = F.avg_pool2d(noncontiguous(x) if c["noncontig"] else x, **kw)
    assert_close(y, R.avg_pool2d(f64(x), **kw), *tol("avg_pool2d", x.dtype), what="y")
    dy = rng.standard_normal(y.shape).astype(c["dtype"])
    gx = F.avg_pool2d_backward(dy, x.shape, **kw)
    assert_close(gx, R.avg_pool2d_backward(f64(dy), x.shape, **kw), *tol("avg_pool2d", x.dtype), what="grad_x")


def test_max_pool_nan_propagates_with_last_nan_index():
    x = np.array([[[[1, np.nan], [np.nan, 0]]]], np.float32)
    y, idx = F.max_pool2d(x, 2)
    assert np.isnan(y[0, 0, 0, 0]) and idx[0, 0, 0, 0] == 2
    ry, ridx = R.max_pool2d(x, 2)
    assert np.isnan(ry).all() and ridx[0, 0, 0, 0] == 2


def test_max_pool_ties_pick_first_and_all_minus_inf_is_a_valid_index():
    x = np.full((1, 1, 4, 4), -np.inf, np.float32)
    x[0, 0, 2:, 2:] = 5.0
    y, idx = F.max_pool2d(x, 2, padding=1)
    assert y[0, 0, 0, 0] == -np.inf and idx[0, 0, 0, 0] == 0
    assert y[0, 0, 1, 1] == 5 and idx[0, 0, 1, 1] == 2 * 4 + 2  # first of the tied 5s (rows, cols 1-2)
    assert (idx >= 0).all() and (idx < 16).all()
    F.max_pool2d_backward(np.ones_like(y), idx, x.shape)  # no out-of-range write


def test_avg_pool_ceil_mode_overhang_is_not_counted():
    # PyTorch: avg_pool2d(ones(1,1,5,5), 2, 2, ceil_mode=True) is all ones (overhang not counted)
    x = np.ones((1, 1, 5, 5), np.float32)
    y = F.avg_pool2d(x, 2, 2, ceil_mode=True)
    assert y.shape == (1, 1, 3, 3)
    assert_close(y, np.ones((1, 1, 3, 3)), 0, 1e-7)
    y = F.avg_pool2d(x, 3, 2, padding=1, ceil_mode=True, count_include_pad=True)
    assert np.isfinite(y).all()


@pytest.mark.parametrize("fn", ["max", "avg"])
def test_unbatched_and_empty_batch(fn, rng):
    x = rng.standard_normal((3, 6, 6)).astype(np.float32)
    if fn == "max":
        y, idx = F.max_pool2d(x, 2)
        assert y.shape == idx.shape == (3, 3, 3)
        assert F.max_pool2d_backward(y, idx, x.shape).shape == x.shape
        y0, i0 = F.max_pool2d(np.zeros((0, 3, 6, 6), np.float32), 2)
        assert y0.shape == i0.shape == (0, 3, 3, 3)
    else:
        y = F.avg_pool2d(x, 2)
        assert y.shape == (3, 3, 3)
        assert F.avg_pool2d_backward(y, x.shape, 2).shape == x.shape
        assert F.avg_pool2d(np.zeros((0, 3, 6, 6), np.float32), 2).shape == (0, 3, 3, 3)


def test_max_pool_backward_rejects_out_of_plane_index():
    dy = np.ones((1, 1, 2, 2), np.float32)
    idx = np.array([[[[0, 1], [2, 16]]]], np.int64)  # 16 is outside a 4x4 plane
    with pytest.raises(ValueError, match="outside"):
        F.max_pool2d_backward(dy, idx, (1, 1, 4, 4))
    idx[0, 0, 1, 1] = -1
    with pytest.raises(ValueError, match="outside"):
        F.max_pool2d_backward(dy, idx, (1, 1, 4, 4))
