"""batch_norm: the cpu kernels against the NumPy reference; statistics and numerics."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import deepkern.functional as F
import deepkern.reference as R
from conftest import assert_close, f64, noncontiguous
from tolerances import tol


@given(st.sampled_from([2, 4]), st.integers(1, 4), st.integers(1, 6), st.integers(1, 5),
       st.sampled_from([np.float32, np.float64]), st.booleans(), st.booleans(), st.integers(0, 2**32 - 1))
def test_train_forward_and_backward_match_reference(ndim, N, C, S, dtype, affine, noncontig, seed):
    rng = np.random.default_rng(seed)
    shape = (N + 1, C, S, S + 1) if ndim == 4 else (N + 1, C)
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
    w = rng.standard_normal(C).astype(dtype) if affine else None
    b = rng.standard_normal(C).astype(dtype) if affine else None
    rm, rv = rng.standard_normal(C).astype(dtype), rng.random(C).astype(dtype) + 0.5
    rm2, rv2 = f64(rm, rv)
    y, sm, si = F.batch_norm(noncontiguous(x) if noncontig else x, w, b, rm, rv, True, 0.1, 1e-5)
    ry, rsm, rsi = R.batch_norm(f64(x), f64(w) if affine else None, f64(b) if affine else None,
                                rm2, rv2, True, 0.1, 1e-5)
    t = tol("batch_norm", dtype)
    assert_close(y, ry, *t, what="y")
    assert_close(sm, rsm, *t, what="save_mean")
    assert_close(si, rsi, *t, what="save_invstd")
    assert_close(rm, rm2, *t, what="running_mean")
    assert_close(rv, rv2, *t, what="running_var")
    dy = rng.standard_normal(shape).astype(dtype)
    got = F.batch_norm_backward(dy, x, w, sm, si, True)
    want = R.batch_norm_backward(*f64(dy, x), f64(w) if affine else None, *f64(sm, si), True)
    for g, r, name in zip(got, want, ("grad_x", "grad_weight", "grad_bias")):
        if r is None:
            assert g is None
        else:
            assert_close(g, r, *tol("batch_norm_backward", dtype), what=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_eval_forward_and_backward(dtype, rng):
    x = rng.standard_normal((3, 4, 5, 5)).astype(dtype)
    w, b = rng.standard_normal(4).astype(dtype), rng.standard_normal(4).astype(dtype)
    rm, rv = rng.standard_normal(4).astype(dtype), (rng.random(4) + 0.5).astype(dtype)
    rm0, rv0 = rm.copy(), rv.copy()
    y, sm, si = F.batch_norm(x, w, b, rm, rv, False)
    assert np.array_equal(rm, rm0) and np.array_equal(rv, rv0)
    ry, _, rsi = R.batch_norm(*f64(x, w, b, rm, rv), False)
    assert_close(y, ry, *tol("batch_norm", dtype))
    assert np.array_equal(sm, rm)
    assert_close(si, rsi, *tol("batch_norm", dtype))
    dy = rng.standard_normal(x.shape).astype(dtype)
    got = F.batch_norm_backward(dy, x, w, sm, si, False)
    want = R.batch_norm_backward(*f64(dy, x, w, sm, si), False)
    for g, r in zip(got, want):
        assert_close(g, r, *tol("batch_norm_backward", dtype))


def test_running_var_uses_unbiased_variance():
    x = np.arange(8, dtype=np.float64).reshape(4, 2)  # per channel: 0,2,4,6 and 1,3,5,7
    rm, rv = np.zeros(2), np.ones(2)
    F.batch_norm(x, None, None, rm, rv, True, momentum=1.0)
    assert_close(rm, [3.0, 4.0], 0, 1e-12)
    assert_close(rv, [np.var([0, 2, 4, 6], ddof=1)] * 2, 0, 1e-12)


def test_constant_channel_normalizes_to_bias_exactly():
    x = np.full((4, 3, 5, 5), 1e7, np.float32)
    b = np.array([0.5, -1.0, 2.0], np.float32)
    y, _, si = F.batch_norm(x, np.ones(3, np.float32), b, None, None, True)
    assert np.isfinite(si).all()
    assert np.array_equal(y, np.broadcast_to(b.reshape(1, 3, 1, 1), y.shape))


@pytest.mark.parametrize("mean,std", [(1e3, 1.0), (1e4, 1.0), (1e4, 0.1), (1e5, 1.0)])
def test_large_mean_keeps_the_variance(mean, std):
    """One-pass E[x^2]-E[x]^2 in float32 gets these badly wrong (RELIABILITY.md Part B)."""
    rng = np.random.default_rng(0)
    x = (mean + std * rng.standard_normal((32, 1, 32, 32))).astype(np.float32)
    rm, rv = np.zeros(1, np.float32), np.zeros(1, np.float32)
    F.batch_norm(x, None, None, rm, rv, True, momentum=1.0)
    want = np.var(x.astype(np.float64), ddof=1)
    assert abs(rv[0] - want) <= 1e-4 * want


def test_two_dimensional_input_without_affine(rng):
    x = rng.standard_normal((5, 3)).astype(np.float32)
    y, sm, si = F.batch_norm(x, None, None, None, None, True)
    assert_close(y.mean(0), np.zeros(3), 0, 1e-6)
    gx, gw, gb = F.batch_norm_backward(np.ones_like(x), x, None, sm, si)
    assert gw is None and gb is None
    assert_close(gx, np.zeros_like(x), 0, 1e-5)
