"""deepkern.nn layers: forward and backward against deepkern.reference, float64 finite
differences (every layer, and a whole small model), the fast path, and PyTorch's init."""

import math

import numpy as np
import pytest

import deepkern
import deepkern.nn as nn
import deepkern.reference as R
from conftest import assert_close

EPS = 1e-6


def numeric_grad(f, a):
    """d f / d a by central differences; a (float64) is perturbed in place and restored."""
    grad = np.zeros_like(a)
    flat, gflat = a.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + EPS
        fp = f()
        flat[i] = old - EPS
        fm = f()
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * EPS)
    return grad


def check_layer(layer, x, rng, seed=None):
    """A layer's backward (input and parameter gradients) against finite differences of
    sum(g * layer(x)) in float64. ``seed``: reseed deepkern before each forward (dropout)."""
    def forward():
        if seed is not None:
            deepkern.manual_seed(seed)
        return layer(x)

    g = rng.standard_normal(np.shape(forward()))
    layer.zero_grad()
    forward()
    gx = layer.backward(g)

    def f():
        return float(np.sum(g * forward()))

    assert_close(gx, numeric_grad(f, x), 1e-5, 1e-7, "grad_x")
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, name
        assert_close(p.grad, numeric_grad(f, p.data), 1e-5, 1e-7, name)


def distinct(rng, shape, scale=0.01):
    """Values spaced far more than EPS apart (no max-pool tie or ReLU kink within +-EPS)."""
    n = int(np.prod(shape))
    return (rng.permutation(n) - n / 2.0).reshape(shape) * scale + 0.5 * scale


# ---------------------------------------------------------------------------- finite differences

@pytest.mark.parametrize("kw", [dict(padding=1), dict(stride=2, padding=(1, 0), bias=False),
                                dict(dilation=2, groups=2), dict(padding="same")])
def test_conv2d_gradients(kw, rng):
    layer = nn.Conv2d(4, 6, 3, dtype=np.float64, **kw)
    check_layer(layer, rng.standard_normal((2, 4, 6, 5)), rng)


def test_conv2d_unbatched_input(rng):
    layer = nn.Conv2d(2, 3, 3, padding=1, dtype=np.float64)
    check_layer(layer, rng.standard_normal((2, 5, 5)), rng)


@pytest.mark.parametrize("kw", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
                                dict(kernel_size=2, stride=1, dilation=2)])
def test_max_pool2d_gradients(kw, rng):
    check_layer(nn.MaxPool2d(**kw), distinct(rng, (2, 3, 7, 6)), rng)


@pytest.mark.parametrize("kw", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1, count_include_pad=False)])
def test_avg_pool2d_gradients(kw, rng):
    check_layer(nn.AvgPool2d(**kw), rng.standard_normal((2, 3, 7, 6)), rng)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm2d_gradients(training, affine, rng):
    layer = nn.BatchNorm2d(3, affine=affine, dtype=np.float64)
    layer.running_mean[...] = rng.standard_normal(3)
    layer.running_var[...] = rng.random(3) + 0.5
    if affine:
        layer.weight.data[...] = rng.standard_normal(3)
        layer.bias.data[...] = rng.standard_normal(3)
    layer.train(training)
    check_layer(layer, rng.standard_normal((4, 3, 3, 2)) * 2 + 1, rng)


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5)])
def test_batch_norm1d_gradients(shape, rng):
    layer = nn.BatchNorm1d(3, dtype=np.float64)
    layer.weight.data[...] = rng.standard_normal(3)
    check_layer(layer, rng.standard_normal(shape), rng)


def test_dropout_gradients(rng):
    check_layer(nn.Dropout(0.3), rng.standard_normal((3, 4, 5)), rng, seed=11)


def test_relu_sigmoid_linear_flatten_gradients(rng):
    check_layer(nn.ReLU(), distinct(rng, (3, 4, 5)), rng)
    check_layer(nn.Sigmoid(), rng.standard_normal((3, 7)) * 3, rng)
    check_layer(nn.Linear(5, 4, dtype=np.float64), rng.standard_normal((3, 5)), rng)
    check_layer(nn.Linear(5, 4, bias=False, dtype=np.float64), rng.standard_normal((2, 3, 5)), rng)
    check_layer(nn.Linear(5, 4, dtype=np.float64), rng.standard_normal(5), rng)
    check_layer(nn.Flatten(), rng.standard_normal((2, 3, 4)), rng)
    check_layer(nn.Flatten(0, 1), rng.standard_normal((2, 3, 4)), rng)


def small_model():
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Dropout(0.25), nn.Flatten(), nn.Linear(3 * 2 * 2, 4))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_whole_model_gradients_against_finite_differences(smoothing, rng):
    """conv-bn-relu-pool-dropout(fixed seed)-flatten-linear-cross-entropy, every gradient."""
    deepkern.manual_seed(0)
    model = small_model().double()
    crit = nn.CrossEntropyLoss(label_smoothing=smoothing)
    x = rng.standard_normal((5, 2, 4, 4))
    y = rng.integers(0, 4, 5)

    def loss():
        deepkern.manual_seed(123)          # the same dropout mask on every forward
        return crit(model(x), y)

    loss()
    model.zero_grad()
    gx = model.backward(crit.backward())
    assert_close(gx, numeric_grad(loss, x), 1e-5, 1e-8, "grad_x")
    names = [n for n, _ in model.named_parameters()]
    assert names == ["0.weight", "0.bias", "1.weight", "1.bias", "6.weight", "6.bias"]
    for name, p in model.named_parameters():
        assert_close(p.grad, numeric_grad(loss, p.data), 1e-5, 1e-8, name)


# ---------------------------------------------------------------------------- against the reference

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv2d_matches_reference_and_accumulates(dtype, rng):
    layer = nn.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=1, dtype=dtype)
    x = rng.standard_normal((2, 3, 7, 6)).astype(dtype)
    w, b = layer.weight.data, layer.bias.data
    y = layer(x)
    assert y.dtype == dtype and y.flags.c_contiguous
    kw = dict(stride=(2, 1), padding=(1, 1))
    tol = (1e-5, 1e-5) if dtype == np.float32 else (1e-12, 1e-12)
    assert_close(y, R.conv2d(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), **kw), *tol)
    g = rng.standard_normal(y.shape).astype(dtype)
    gx = layer.backward(g)
    rgx, rgw, rgb = R.conv2d_backward(*(a.astype(np.float64) for a in (g, x, w)), **kw)
    assert_close(gx, rgx, *tol)
    assert_close(layer.weight.grad, rgw, 1e-4 if dtype == np.float32 else 1e-12, tol[1])
    layer.backward(g)                                 # a second backward adds
    assert_close(layer.bias.grad, 2 * rgb, 1e-4 if dtype == np.float32 else 1e-12, 1e-4)


def test_fast_path_matches_the_validated_path(rng):
    """The second call (fast path) gives bitwise the first call's (validated) results."""
    deepkern.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                          nn.AvgPool2d(2), nn.Flatten(), nn.Dropout(0.5), nn.Linear(16, 3))
    x = rng.standard_normal((6, 1, 8, 8)).astype(np.float32)
    g = rng.standard_normal((6, 3)).astype(np.float32)
    outs = []
    for _ in range(3):
        rm = model[1].running_mean.copy()
        deepkern.manual_seed(5)
        y = model(x)
        model.zero_grad()
        gx = model.backward(g)
        outs.append((y, gx, [p.grad.copy() for p in model.parameters()]))
        model[1].running_mean[...] = rm
    for y, gx, grads in outs[1:]:
        np.testing.assert_array_equal(y, outs[0][0])
        np.testing.assert_array_equal(gx, outs[0][1])
        for a, b in zip(grads, outs[0][2]):
            np.testing.assert_array_equal(a, b)


def test_layers_follow_use_backend_after_the_first_call(rng, monkeypatch):
    """A layer's fast path still routes to the NumPy reference inside use_backend("numpy")."""
    layer = nn.Conv2d(2, 3, 3)
    x = rng.standard_normal((2, 2, 5, 5)).astype(np.float32)
    layer(x)
    calls = []
    real = R.conv2d
    monkeypatch.setattr(R, "conv2d", lambda *a, **k: calls.append(1) or real(*a, **k))
    layer(x)
    assert calls == []
    with deepkern.use_backend("numpy"):
        layer(x)
    assert calls == [1]


def test_changed_shapes_and_arguments_are_validated_again(rng):
    conv = nn.Conv2d(2, 3, 3)
    conv(rng.standard_normal((2, 2, 5, 5)).astype(np.float32))
    with pytest.raises(ValueError, match="channels"):
        conv(rng.standard_normal((2, 4, 5, 5)).astype(np.float32))
    with pytest.raises(TypeError, match="same dtype"):
        conv(rng.standard_normal((2, 2, 5, 5)))                        # float64 input, float32 weight
    conv.padding = 1                                                    # attributes are re-read
    assert conv(rng.standard_normal((1, 2, 5, 5)).astype(np.float32)).shape == (1, 3, 5, 5)
    conv.stride = 2
    assert conv(rng.standard_normal((1, 2, 5, 5)).astype(np.float32)).shape == (1, 3, 3, 3)
    conv.weight.data = rng.standard_normal((3, 2, 1, 1)).astype(np.float32)   # a new weight array
    assert conv(rng.standard_normal((1, 2, 5, 5)).astype(np.float32)).shape == (1, 3, 4, 4)
    pool = nn.MaxPool2d(2)
    pool(rng.standard_normal((1, 1, 4, 4)).astype(np.float32))
    pool.kernel_size = 5
    with pytest.raises(ValueError, match="too small"):
        pool(rng.standard_normal((1, 1, 4, 4)).astype(np.float32))
    relu = nn.ReLU()
    relu(np.ones((2, 2), np.float32))
    with pytest.raises(TypeError, match="int32"):
        relu(np.ones((2, 2), np.int32))


def test_noncontiguous_inputs_and_gradients(rng):
    layer = nn.Conv2d(2, 3, 3, padding=1)
    x = rng.standard_normal((2, 5, 5, 2)).astype(np.float32).transpose(0, 3, 1, 2)
    y1 = layer(np.ascontiguousarray(x))
    y2 = layer(x)
    np.testing.assert_array_equal(y1, y2)
    g = np.asfortranarray(rng.standard_normal(y1.shape).astype(np.float32))
    np.testing.assert_array_equal(layer.backward(g), layer.backward(np.ascontiguousarray(g)))


def test_backward_before_forward_is_an_error():
    for layer in (nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1), nn.ReLU(), nn.MaxPool2d(2), nn.AvgPool2d(2),
                  nn.Linear(1, 1), nn.Sigmoid(), nn.Flatten()):
        with pytest.raises(RuntimeError, match="before forward"):
            layer.backward(np.ones((1, 1, 1, 1), np.float32))


def test_batch_norm_running_statistics_and_modes(rng):
    bn = nn.BatchNorm2d(3, momentum=0.2)
    x = (rng.standard_normal((8, 3, 4, 4)) * 3 + 2).astype(np.float32)
    bn(x)
    xd = x.astype(np.float64)
    mean, var = xd.mean(axis=(0, 2, 3)), xd.var(axis=(0, 2, 3), ddof=1)
    assert_close(bn.running_mean, 0.2 * mean, 1e-5, 1e-6)
    assert_close(bn.running_var, 0.8 + 0.2 * var, 1e-5, 1e-6)
    assert int(bn.num_batches_tracked) == 1
    rm, rv = bn.running_mean.copy(), bn.running_var.copy()
    bn.eval()
    y = bn(x)
    np.testing.assert_array_equal(bn.running_mean, rm)                  # eval: untouched
    assert int(bn.num_batches_tracked) == 1
    want = (xd - rm.reshape(1, 3, 1, 1)) / np.sqrt(rv.reshape(1, 3, 1, 1) + 1e-5)
    assert_close(y, want, 1e-5, 1e-5)
    # momentum=None: the cumulative average of the batch statistics
    cum = nn.BatchNorm2d(3, momentum=None)
    batches = [(rng.standard_normal((4, 3, 2, 2)) + k).astype(np.float32) for k in range(3)]
    for b in batches:
        cum(b)
    want = np.mean([b.astype(np.float64).mean(axis=(0, 2, 3)) for b in batches], axis=0)
    assert_close(cum.running_mean, want, 1e-5, 1e-6)
    # no running statistics: batch statistics in eval too
    free = nn.BatchNorm2d(3, track_running_stats=False).eval()
    assert free.running_mean is None and "running_mean" not in free.state_dict()
    out = free(x)
    assert_close(out.mean(axis=(0, 2, 3)), np.zeros(3), 0, 1e-5)
    with pytest.raises(ValueError, match="4D"):
        bn(x[0])
    with pytest.raises(ValueError, match="2D or 3D"):
        nn.BatchNorm1d(3)(x)


def test_dropout_layer(rng):
    x = rng.standard_normal((64, 50)).astype(np.float32)
    d = nn.Dropout(0.3)
    deepkern.manual_seed(3)
    y1 = d(x)
    deepkern.manual_seed(3)
    y2 = d(x)
    np.testing.assert_array_equal(y1, y2)                             # seeded by manual_seed
    y3 = d(x)
    assert not np.array_equal(y1, y3)                                  # a new mask per forward
    kept = y3 != 0
    np.testing.assert_array_equal(y3[kept], (x * np.float32(1 / 0.7))[kept])
    assert abs(kept.mean() - 0.7) < 0.03
    g = rng.standard_normal(x.shape).astype(np.float32)
    np.testing.assert_array_equal(d.backward(g), np.where(kept, g * np.float32(1 / 0.7), 0))
    d.eval()
    assert d(x) is x and d.backward(g) is g
    with pytest.raises(ValueError, match="between 0 and 1"):
        nn.Dropout(1.5)


def test_sigmoid_is_stable_and_exact(rng):
    x = np.array([-1000.0, -50.0, -1.0, 0.0, 1.0, 50.0, 1000.0, np.nan], np.float32)
    s = nn.Sigmoid()
    with np.errstate(over="raise", divide="raise"):                  # no overflow anywhere
        y = s(x)
    want = 1 / (1 + np.exp(-x.astype(np.float64).clip(-700, 700)))
    assert_close(y[:-1], want[:-1], 1e-6, 1e-30)
    assert np.isnan(y[-1]) and y.dtype == np.float32


def test_linear_matches_matmul_and_checks_inputs(rng):
    lin = nn.Linear(5, 3)
    x = rng.standard_normal((4, 5)).astype(np.float32)
    assert_close(lin(x), x.astype(np.float64) @ lin.weight.data.T.astype(np.float64) + lin.bias.data, 1e-5, 1e-6)
    with pytest.raises(ValueError, match="cannot be multiplied"):
        lin(rng.standard_normal((4, 6)).astype(np.float32))
    with pytest.raises(TypeError, match="float64"):
        lin(x.astype(np.float64))
    with pytest.raises(TypeError, match="int64"):
        lin(np.ones((4, 5), np.int64))
    with pytest.raises(TypeError, match="list"):
        lin([[1.0] * 5])
    lin(x)
    with pytest.raises(ValueError, match="grad_out has shape"):
        lin.backward(np.ones((4, 4), np.float32))


def test_flatten_shapes():
    x = np.zeros((2, 3, 4, 5), np.float32)
    assert nn.Flatten()(x).shape == (2, 60)
    assert nn.Flatten(0, -1)(x).shape == (120,)
    assert nn.Flatten(1, 2)(x).shape == (2, 12, 5)
    with pytest.raises(ValueError, match="out of range"):
        nn.Flatten(4)(x)


def test_flatten_fast_path_follows_shape_and_dims():
    """Flatten remembers the last shape it validated; a new shape or changed start_dim/end_dim
    is validated again, and backward restores the shape of the latest forward."""
    f = nn.Flatten()
    a, b = np.zeros((2, 3, 4, 5), np.float32), np.zeros((3, 3, 4, 5), np.float32)
    assert f(a).shape == (2, 60) and f(a).shape == (2, 60)
    assert f(b).shape == (3, 60) and f.backward(np.zeros((3, 60), np.float32)).shape == (3, 3, 4, 5)
    f.start_dim = 2
    assert f(b).shape == (3, 3, 20)
    f.end_dim = 2
    assert f(b).shape == (3, 3, 4, 5)      # dim 2 alone: unchanged
    f.start_dim = 5
    with pytest.raises(ValueError, match="out of range"):
        f(b)
    f.start_dim = 1
    assert f(a).shape == (2, 12, 5) and f.backward(np.zeros((2, 12, 5), np.float32)).shape == a.shape


# ---------------------------------------------------------------------------- construction and init

def test_pytorch_argument_names_attributes_and_repr():
    c = nn.Conv2d(in_channels=3, out_channels=8, kernel_size=3, stride=1, padding=1, bias=False)
    assert c.weight.shape == (8, 3, 3, 3) and c.bias is None and c.kernel_size == (3, 3)
    assert repr(c) == "Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False)"
    bn = nn.BatchNorm2d(8)
    assert bn.momentum == 0.1 and bn.eps == 1e-5 and bn.affine and bn.track_running_stats
    np.testing.assert_array_equal(bn.weight.data, np.ones(8))
    np.testing.assert_array_equal(bn.running_var, np.ones(8))
    assert bn.num_batches_tracked.dtype == np.int64 and bn.num_batches_tracked.shape == ()
    lin = nn.Linear(in_features=4, out_features=2, bias=True)
    assert lin.weight.shape == (2, 4) and lin.bias.shape == (2,)
    assert nn.MaxPool2d(2).stride == 2 and nn.AvgPool2d(3, 1).stride == 1
    assert all(p.dtype == np.float32 for p in (c.weight, bn.weight, lin.weight))
    with pytest.raises(ValueError, match="divisible by groups"):
        nn.Conv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="padding_mode"):
        nn.Conv2d(3, 4, 3, padding_mode="reflect")
    with pytest.raises(ValueError, match="asymmetric"):
        nn.Conv2d(3, 4, 2, padding="same")
    with pytest.raises(TypeError, match="float16"):
        nn.Linear(2, 2, dtype=np.float16)


@pytest.mark.parametrize("make,fan_in", [(lambda: nn.Conv2d(16, 32, 3), 16 * 9),
                                         (lambda: nn.Conv2d(8, 64, (3, 5), groups=4), 2 * 15),
                                         (lambda: nn.Linear(300, 200), 300)])
def test_default_init_is_uniform_one_over_sqrt_fan_in(make, fan_in):
    deepkern.manual_seed(1)
    layer = make()
    bound = 1 / math.sqrt(fan_in)
    w, b = layer.weight.data.astype(np.float64), layer.bias.data.astype(np.float64)
    assert np.abs(w).max() <= bound and np.abs(b).max() <= bound
    assert abs(w.std() - bound / math.sqrt(3)) < 0.1 * bound / math.sqrt(3)      # U(-b, b): std b/sqrt(3)
    assert abs(w.mean()) < 0.1 * bound


def test_init_is_reproducible_with_manual_seed():
    deepkern.manual_seed(42)
    a = small_model().state_dict(copy=True)
    deepkern.manual_seed(42)
    b = small_model().state_dict()
    c = small_model().state_dict()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["0.weight"], c["0.weight"])


def test_unchecked_follows_the_backend_setting():
    from deepkern import _cpu
    from deepkern import functional as F
    x = np.zeros((1, 1, 2, 2), np.float32)
    assert F._unchecked(x) is _cpu
    with deepkern.use_backend("numpy"):
        assert F._unchecked(x) is R
    with deepkern.use_backend("cpu"):
        assert F._unchecked(x) is _cpu


def test_a_stale_fast_path_is_still_safe(rng):
    """Changing a weight's shape in place behind the layer's back: the kernel's own checks
    raise a ValueError (the fast path never crashes or reads out of bounds)."""
    conv = nn.Conv2d(2, 3, 3)
    x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    conv(x)
    conv.weight.data.shape = (3, 2, 9, 1)          # same array object, same id, new shape
    with pytest.raises(ValueError):
        conv(x)


@pytest.mark.parametrize("layer", [nn.Conv2d(1, 1, 1), nn.MaxPool2d(1), nn.AvgPool2d(1), nn.BatchNorm2d(1),
                                   nn.BatchNorm1d(1), nn.Dropout(), nn.ReLU(), nn.Sigmoid(), nn.Linear(1, 1),
                                   nn.Flatten()], ids=lambda m: type(m).__name__)
def test_every_layer_rejects_non_arrays_and_bad_dtypes(layer):
    with pytest.raises(TypeError):
        layer([[[[1.0]]]])
    if not isinstance(layer, nn.Flatten):          # reshaping works on any dtype
        with pytest.raises(TypeError, match="int32|float16"):
            layer(np.ones((2, 1, 1, 1), np.int32) if not isinstance(layer, nn.BatchNorm1d)
                  else np.ones((2, 1), np.float16))
