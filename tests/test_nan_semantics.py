"""NaN and Inf semantics of every op (documented in deepkern.functional's docstrings).

- conv2d: a NaN input element makes NaN exactly the outputs whose receptive field holds it;
- max_pool2d: NaN propagates like PyTorch (a window holding NaN gives NaN, index of its last
  NaN); all -inf gives -inf with an index inside the window; ties give the first occurrence;
- avg_pool2d: ceil_mode windows that reach into the padding give no NaN (pytorch#36977) and
  their divisor excludes the overhang;
- batch_norm: a constant channel normalizes to exactly bias (finite), even for huge constants;
  large means (1e3..1e5) keep the variance to 1e-4 relative (RELIABILITY.md Part B's cases);
- relu: NaN stays NaN; relu_backward zeroes the gradient where y <= 0 and passes it elsewhere,
  so a NaN y passes it through (PyTorch's threshold_backward);
- dropout: NaN stays NaN where kept and where dropped (0 * NaN), p = 1 gives zeros even there.
- batch_norm: a channel holding NaN has NaN statistics (and running_var); in eval mode the
  input gradient is weight * invstd * dy whatever x holds (an infinite x gives no NaN).
"""

from __future__ import annotations

import numpy as np
import pytest

import deepkern.functional as F
import deepkern.reference as R

DTYPES = [np.float32, np.float64]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kw", [dict(), dict(padding=1), dict(stride=2, padding=2, dilation=2),
                                dict(stride=(1, 3), padding=(2, 0), groups=3)])
def test_conv2d_nan_stays_in_its_receptive_field(dtype, kw):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 9, 10)).astype(dtype)
    w = rng.standard_normal((6, 6 // kw.get("groups", 1), 3, 3)).astype(dtype)
    x[1, 2, 4, 6] = np.nan
    y = F.conv2d(x, w, **kw)
    # the receptive field: outputs that read (1, 2, 4, 6) with a nonzero weight
    hit = np.zeros_like(x, dtype=np.float64)
    hit[1, 2, 4, 6] = 1.0
    field = R.conv2d(hit, np.abs(w).astype(np.float64), **kw) > 0
    assert field.any()
    assert np.array_equal(np.isnan(y), field)
    y_inf = F.conv2d(np.where(np.isnan(x), np.inf, x), w, **kw)
    assert np.array_equal(~np.isfinite(y_inf), field) and np.isfinite(y_inf[~field]).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2d_nan_inf_and_ties(dtype):
    x = np.array([[[[1.0, np.nan, 3.0, np.nan],
                    [2.0, 0.5, np.nan, 9.0],
                    [-np.inf, -np.inf, 4.0, 4.0],
                    [-np.inf, -np.inf, 4.0, 4.0]]]], dtype)
    y, idx = F.max_pool2d(x, 2)
    assert np.isnan(y[0, 0, 0, 0]) and idx[0, 0, 0, 0] == 1          # NaN among finite
    assert np.isnan(y[0, 0, 0, 1]) and idx[0, 0, 0, 1] == 6          # two NaN: the last
    assert y[0, 0, 1, 0] == -np.inf and idx[0, 0, 1, 0] in (8, 9, 12, 13)
    assert y[0, 0, 1, 1] == 4.0 and idx[0, 0, 1, 1] == 10            # ties: the first
    g = F.max_pool2d_backward(np.ones_like(y), idx, x.shape)
    assert g.sum() == 4 and g.reshape(-1)[[1, 6, 10]].tolist() == [1, 1, 1]
    all_nan = np.full((1, 1, 2, 2), np.nan, dtype)
    y, idx = F.max_pool2d(all_nan, 2)
    assert np.isnan(y).all() and idx[0, 0, 0, 0] == 3


def test_max_pool2d_nan_like_pytorch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x = rng.integers(-3, 4, (2, 3, 7, 8)).astype(np.float32)
    x.reshape(-1)[rng.integers(0, x.size, 12)] = np.nan
    x.reshape(-1)[rng.integers(0, x.size, 6)] = -np.inf
    for kw in (dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
               dict(kernel_size=3, stride=1, dilation=2)):
        y, idx = F.max_pool2d(x, **kw)
        ty, tidx = torch.nn.functional.max_pool2d(torch.from_numpy(x), return_indices=True, **kw)
        assert np.array_equal(y, ty.numpy(), equal_nan=True)
        assert np.array_equal(idx, tidx.numpy())          # NaN windows too: the last NaN


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cip", [True, False])
def test_avg_pool2d_ceil_mode_windows_in_the_padding_give_no_nan(dtype, cip):
    x = np.arange(1 * 1 * 5 * 5, dtype=dtype).reshape(1, 1, 5, 5)
    y = F.avg_pool2d(x, 3, stride=2, padding=1, ceil_mode=True, count_include_pad=cip)
    assert y.shape == (1, 1, 3, 3) and np.isfinite(y).all()
    # window (2, 2) covers rows/cols 3..5: input 3..4, padding 5 (the right pad) -> 2x2 real taps;
    # divisor: the window clipped to the padded input (3x3 with cip) or the 4 real taps
    want = x[0, 0, 3:5, 3:5].sum() / (9 if cip else 4)
    assert y[0, 0, 2, 2] == dtype(want)
    gx = F.avg_pool2d_backward(np.ones_like(y), x.shape, 3, stride=2, padding=1, ceil_mode=True,
                               count_include_pad=cip)
    assert np.isfinite(gx).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("value", [0.0, -3.5, 1e4, 1e7, 3e30, -1e38])
def test_batch_norm_constant_channel_is_exactly_bias(dtype, value):
    x = np.random.default_rng(2).standard_normal((4, 3, 5, 5)).astype(dtype)
    x[:, 1] = dtype(value)
    w, b = np.array([2.0, 3.0, 4.0], dtype), np.array([0.5, -1.25, 7.0], dtype)
    rm, rv = np.zeros(3, dtype), np.ones(3, dtype)
    y, mean, invstd = F.batch_norm(x, w, b, rm, rv, True, momentum=0.5)
    assert (y[:, 1] == b[1]).all()
    assert mean[1] == dtype(value) and np.isfinite(invstd).all()
    assert rv[1] == dtype(0.5) and np.isfinite(rm).all()            # unbiased var 0: half of 1
    gx, gw, gb = F.batch_norm_backward(np.ones_like(x), x, w, mean, invstd)
    assert np.isfinite(gx).all() and np.isfinite(gw).all()


@pytest.mark.parametrize("mean,std", [(1e3, 1.0), (1e4, 1.0), (1e4, 0.1), (1e5, 1.0)])
def test_batch_norm_variance_with_large_means(mean, std):
    """RELIABILITY.md Part B: one-pass E[x^2] - E[x]^2 in float32 gives 8 or -16 for these."""
    x = (np.random.default_rng(3).standard_normal((32, 2, 32, 32)) * std + mean).astype(np.float32)
    _, m, invstd = F.batch_norm(x, None, None, None, None, True, eps=1e-12)
    true_var = x.astype(np.float64).var(axis=(0, 2, 3))
    got_var = 1.0 / invstd.astype(np.float64) ** 2 - 1e-12
    np.testing.assert_allclose(got_var, true_var, rtol=1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_nan(dtype):
    x = np.array([np.nan, -np.inf, np.inf, -0.0, 1.0], dtype)
    y = F.relu(x)
    assert np.isnan(y[0]) and y[1] == 0 and y[2] == np.inf and y[4] == 1
    g = F.relu_backward(np.ones_like(x), y)
    assert g.tolist() == [1.0, 0.0, 1.0, 0.0, 1.0]               # y = NaN: passed (as PyTorch)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_nan(dtype):
    x = np.full(1000, np.nan, dtype)
    y, mask = F.dropout(x, 0.5, seed=4)
    assert np.isnan(y).all() and 0 < mask.sum() < 1000               # 0 * NaN is NaN
    y1, _ = F.dropout(x, 1.0, seed=4)
    assert (y1 == 0).all()                                           # p = 1: zeros, always
    g = F.dropout_backward(x, mask, 1.0)
    assert (g == 0).all()


# ---------------------------------------------------------------------------- batch norm, non-finite

@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_norm_training_with_nan_keeps_the_statistics_nan(dtype):
    x = np.random.default_rng(5).standard_normal((4, 2, 3, 3)).astype(dtype)
    x[0, 0, 0, 0] = np.nan
    rm, rv = np.zeros(2, dtype), np.ones(2, dtype)
    y, mean, invstd = F.batch_norm(x, None, None, rm, rv, True)
    assert np.isnan(y[:, 0]).all() and np.isfinite(y[:, 1]).all()
    assert np.isnan(mean[0]) and np.isnan(invstd[0]) and np.isnan(rv[0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_norm_eval_backward_ignores_x(dtype):
    x = np.ones((2, 2), dtype)
    x[0, 0] = np.inf
    dy = np.ones_like(x)
    gx, _, _ = F.batch_norm_backward(dy, x, None, np.zeros(2, dtype), np.ones(2, dtype), training=False)
    assert np.array_equal(gx, dy)
