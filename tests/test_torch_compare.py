"""Every op against PyTorch's CPU results (optional: skipped when torch is not installed)."""

import numpy as np
import pytest

import deepkern.functional as F
from conftest import assert_close

torch = pytest.importorskip("torch")
tF = torch.nn.functional


def T(a, grad=False):
    t = torch.from_numpy(np.array(a, dtype=np.float64))
    return t.requires_grad_(grad)


@pytest.mark.parametrize("stride,padding,dilation,groups", [(1, 1, 1, 1), (2, 0, 1, 1), (1, 2, 2, 2), (2, 1, 1, 4)])
def test_conv2d(stride, padding, dilation, groups, rng):
    x = rng.standard_normal((2, 4, 9, 8))
    w = rng.standard_normal((8, 4 // groups, 3, 3))
    b = rng.standard_normal(8)
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    tx, tw, tb = T(x, True), T(w, True), T(b, True)
    ty = tF.conv2d(tx, tw, tb, **kw)
    y = F.conv2d(x, w, b, **kw)
    assert_close(y, ty.detach().numpy(), 1e-10, 1e-12)
    g = rng.standard_normal(y.shape)
    ty.backward(T(g))
    gx, gw, gb = F.conv2d_backward(g, x, w, **kw)
    for got, want in ((gx, tx.grad), (gw, tw.grad), (gb, tb.grad)):
        assert_close(got, want.numpy(), 1e-10, 1e-12)


@pytest.mark.parametrize("k,s,p,d,ceil", [(2, 2, 0, 1, False), (3, 2, 1, 1, True), (3, 1, 1, 2, False), (2, 1, 1, 1, True)])
def test_max_pool2d(k, s, p, d, ceil, rng):
    x = rng.permutation(2 * 3 * 9 * 8).reshape(2, 3, 9, 8).astype(np.float64)
    tx = T(x, True)
    ty, tidx = tF.max_pool2d(tx, k, s, p, d, ceil_mode=ceil, return_indices=True)
    y, idx = F.max_pool2d(x, k, s, p, d, ceil)
    assert np.array_equal(y, ty.detach().numpy()) and np.array_equal(idx, tidx.numpy())
    g = rng.standard_normal(y.shape)
    ty.backward(T(g))
    assert_close(F.max_pool2d_backward(g, idx, x.shape), tx.grad.numpy(), 1e-12, 1e-12)


def test_max_pool2d_nan_like_torch():
    x = np.array([[[[1.0, np.nan, 3.0, 2.0], [np.nan, 0.0, -1.0, 5.0]]]], np.float32)
    ty, tidx = tF.max_pool2d(torch.from_numpy(x), 2, return_indices=True)
    y, idx = F.max_pool2d(x, 2)
    assert np.array_equal(y, ty.numpy(), equal_nan=True)
    assert np.array_equal(idx, tidx.numpy())


@pytest.mark.parametrize("k,s,p,ceil,cip", [(2, 2, 0, False, True), (3, 1, 1, False, True), (3, 2, 1, True, False),
                                             (3, 2, 1, True, True), (2, 2, 1, True, False)])
def test_avg_pool2d(k, s, p, ceil, cip, rng):
    x = rng.standard_normal((2, 3, 9, 8))
    tx = T(x, True)
    ty = tF.avg_pool2d(tx, k, s, p, ceil_mode=ceil, count_include_pad=cip)
    y = F.avg_pool2d(x, k, s, p, ceil, cip)
    assert_close(y, ty.detach().numpy(), 1e-12, 1e-12)
    g = rng.standard_normal(y.shape)
    ty.backward(T(g))
    assert_close(F.avg_pool2d_backward(g, x.shape, k, s, p, ceil, cip), tx.grad.numpy(), 1e-12, 1e-12)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (6, 3)])
def test_batch_norm(training, shape, rng):
    x = rng.standard_normal(shape) * 3 + 1
    w, b = rng.standard_normal(3), rng.standard_normal(3)
    rm, rv = rng.standard_normal(3), rng.random(3) + 0.5
    trm, trv = torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy())
    tx, tw, tb = T(x, True), T(w, True), T(b, True)
    ty = tF.batch_norm(tx, trm, trv, tw, tb, training, 0.1, 1e-5)
    y, sm, si = F.batch_norm(x, w, b, rm, rv, training, 0.1, 1e-5)
    assert_close(y, ty.detach().numpy(), 1e-10, 1e-12)
    assert_close(rm, trm.numpy(), 1e-12, 1e-12)
    assert_close(rv, trv.numpy(), 1e-12, 1e-12)
    g = rng.standard_normal(shape)
    ty.backward(T(g))
    gx, gw, gb = F.batch_norm_backward(g, x, w, sm, si, training)
    for got, want in ((gx, tx.grad), (gw, tw.grad), (gb, tb.grad)):
        assert_close(got, want.numpy(), 1e-9, 1e-11)


def test_relu_and_dropout_semantics(rng):
    x = rng.standard_normal((4, 50))
    assert np.array_equal(F.relu(x), torch.relu(T(x)).numpy())
    # dropout: different generators, same semantics: y = x * mask / (1 - p)
    y, mask = F.dropout(x, 0.25, seed=3)
    assert_close(y, x * mask / 0.75, 1e-15, 0)
