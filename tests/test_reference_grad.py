"""Every backward of deepkern.reference against central finite differences in float64.

For an op y = f(x) and a random upstream gradient g, the backward must return
d(sum(g * f(x)))/dx; we perturb each input element by +-eps (CS231n's gradient check).
"""

import numpy as np
import pytest

import deepkern.reference as R
from conftest import assert_close

EPS = 1e-6


def numeric_grad(f, x, g):
    """d/dx of sum(g * f(x)) by central differences (x is perturbed in place, then restored)."""
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + EPS
        fp = np.sum(g * f(x))
        x[i] = old - EPS
        fm = np.sum(g * f(x))
        x[i] = old
        grad[i] = (fp - fm) / (2 * EPS)
    return grad


def check(analytic, f, x, g, what):
    assert_close(analytic, numeric_grad(f, x, g), 1e-3, 1e-5, what)


@pytest.mark.parametrize("stride,padding,dilation,groups", [(1, 0, 1, 1), (2, 1, 1, 1), (1, 2, 2, 1), (1, 1, 1, 2)])
def test_conv2d(stride, padding, dilation, groups, rng):
    x = rng.standard_normal((2, 4, 5, 6))
    w = rng.standard_normal((4, 4 // groups, 3, 2))
    b = rng.standard_normal(4)
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    g = rng.standard_normal(R.conv2d(x, w, b, **kw).shape)
    gx, gw, gb = R.conv2d_backward(g, x, w, bias=True, **kw)
    check(gx, lambda t: R.conv2d(t, w, b, **kw), x, g, "grad_x")
    check(gw, lambda t: R.conv2d(x, t, b, **kw), w, g, "grad_weight")
    check(gb, lambda t: R.conv2d(x, w, t, **kw), b, g, "grad_bias")


@pytest.mark.parametrize("kernel,stride,padding,dilation,ceil", [(2, 2, 0, 1, False), (3, 1, 1, 1, False),
                                                                  (3, 2, 1, 2, True), (2, 1, 1, 1, True)])
def test_max_pool2d(kernel, stride, padding, dilation, ceil, rng):
    # distinct values spaced far more than EPS apart: no tie or kink within +-EPS
    x = rng.permutation(2 * 3 * 7 * 6).reshape(2, 3, 7, 6).astype(np.float64) * 0.01
    kw = dict(kernel_size=kernel, stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil)
    y, idx = R.max_pool2d(x, **kw)
    g = rng.standard_normal(y.shape)
    check(R.max_pool2d_backward(g, idx, x.shape), lambda t: R.max_pool2d(t, **kw)[0], x, g, "grad_x")


@pytest.mark.parametrize("kernel,stride,padding,ceil,cip", [(2, 2, 0, False, True), (3, 1, 1, False, True),
                                                             (3, 2, 1, True, False), (3, 2, 1, True, True)])
def test_avg_pool2d(kernel, stride, padding, ceil, cip, rng):
    x = rng.standard_normal((2, 2, 7, 6))
    kw = dict(kernel_size=kernel, stride=stride, padding=padding, ceil_mode=ceil, count_include_pad=cip)
    g = rng.standard_normal(R.avg_pool2d(x, **kw).shape)
    check(R.avg_pool2d_backward(g, x.shape, **kw), lambda t: R.avg_pool2d(t, **kw), x, g, "grad_x")


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(4, 3, 2, 3), (6, 2)])
def test_batch_norm(training, shape, rng):
    x = rng.standard_normal(shape) * 2 + 1
    C = shape[1]
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    rm, rv = rng.standard_normal(C), rng.random(C) + 0.5

    def f(xx, ww, bb):
        return R.batch_norm(xx, ww, bb, rm.copy(), rv.copy(), training)[0]

    y, sm, si = R.batch_norm(x, w, b, rm.copy(), rv.copy(), training)
    g = rng.standard_normal(shape)
    gx, gw, gb = R.batch_norm_backward(g, x, w, sm, si, training)
    check(gx, lambda t: f(t, w, b), x, g, "grad_x")
    check(gw, lambda t: f(x, t, b), w, g, "grad_weight")
    check(gb, lambda t: f(x, w, t), b, g, "grad_bias")


def test_dropout(rng):
    x = rng.standard_normal((3, 40))
    _, mask = R.dropout(x, 0.4, True, 17)
    g = rng.standard_normal(x.shape)
    check(R.dropout_backward(g, mask, 0.4), lambda t: R.dropout(t, 0.4, True, 17)[0], x, g, "grad_x")


def test_relu(rng):
    x = rng.standard_normal((4, 30))
    x[np.abs(x) < 1e-3] = 0.5  # keep away from the kink
    g = rng.standard_normal(x.shape)
    check(R.relu_backward(g, R.relu(x)), R.relu, x, g, "grad_x")
