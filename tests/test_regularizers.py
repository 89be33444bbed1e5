"""DropConnect, WeightNoise, GaussianNoise, Residual and StochasticDepth: forward against the
math, gradients against finite differences (float64), seeds and thread counts, eval mode."""

import numpy as np
import pytest

import deepkern
import deepkern.functional as F
import deepkern.nn as nn
from conftest import assert_bitwise, assert_close, num_threads
from test_reference_grad import numeric_grad


def _seed_after(s):
    """The first seed deepkern's stream hands out after manual_seed(s)."""
    deepkern.manual_seed(s)
    return deepkern._next_seed()


def _fd_params(layer, x, g, reseed):
    """Finite-difference gradient of sum(g * layer(x)) for the weight, the mask redrawn with the
    same seed before each forward."""
    def f(w):
        layer.layer.weight.data = w
        deepkern.manual_seed(reseed)
        return layer(x)
    w0 = layer.layer.weight.data
    try:
        return numeric_grad(f, w0.copy(), g)
    finally:
        layer.layer.weight.data = w0


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_dropconnect_forward_backward(kind, rng):
    if kind == "linear":
        inner = nn.Linear(6, 4, dtype=np.float64)
        x = rng.standard_normal((5, 6))
    else:
        inner = nn.Conv2d(3, 4, 3, padding=1, dtype=np.float64)
        x = rng.standard_normal((2, 3, 5, 5))
    dc = nn.DropConnect(inner, p=0.4)
    deepkern.manual_seed(7)
    y = dc(x)
    w = inner.weight.data
    w_used, mask = F.dropout(w, 0.4, True, _seed_after(7))
    plain = nn.Linear(6, 4, dtype=np.float64) if kind == "linear" else nn.Conv2d(3, 4, 3, padding=1, dtype=np.float64)
    plain.weight.data, plain.bias.data = w_used, inner.bias.data
    assert_close(y, plain(x), 1e-12, 1e-12, "DropConnect forward")
    assert 0 < mask.mean() < 1 and inner.weight.data is w          # the clean weight is kept
    g = rng.standard_normal(y.shape)
    gx = dc.backward(g)
    assert_close(gx, plain.backward(g), 1e-12, 1e-12, "grad_x")
    gw = inner.weight.grad
    assert np.all(gw[mask == 0] == 0)                              # dropped weights get no gradient
    assert_close(gw, _fd_params(dc, x, g, 7), 1e-5, 1e-7, "grad_weight vs finite differences")
    assert_close(inner.bias.grad, plain.bias.grad, 1e-12, 1e-12, "grad_bias")
    dc.eval()                                                      # eval: the plain layer
    assert_bitwise(dc(x), inner(x))


def test_dropconnect_masks_reproducible_and_thread_independent(rng):
    x = rng.standard_normal((8, 32)).astype(np.float32)
    dc = nn.DropConnect(nn.Linear(32, 64), p=0.5)
    outs = []
    for n in (1, 2, 1):
        with num_threads(n):
            deepkern.manual_seed(3)
            outs.append(dc(x))
    assert_bitwise(outs[0], outs[1])
    assert_bitwise(outs[0], outs[2])
    deepkern.manual_seed(4)
    assert not np.array_equal(dc(x), outs[0])
    _, mask = F.dropout(dc.layer.weight.data, 0.5, True, _seed_after(3))
    assert abs(mask.mean() - 0.5) < 0.05                           # 2048 weights, p = 0.5


def test_dropconnect_accumulates_into_existing_grad(rng):
    dc = nn.DropConnect(nn.Linear(4, 3, dtype=np.float64), p=0.5)
    x, g = rng.standard_normal((2, 4)), rng.standard_normal((2, 3))
    deepkern.manual_seed(1)
    dc(x)
    dc.backward(g)
    first = dc.layer.weight.grad.copy()
    deepkern.manual_seed(1)
    dc(x)
    dc.backward(g)
    assert_close(dc.layer.weight.grad, 2 * first, 1e-12, 1e-12)


def test_weight_noise(rng):
    inner = nn.Linear(5, 3, dtype=np.float64)
    wn = nn.WeightNoise(inner, std=0.1)
    x = rng.standard_normal((4, 5))
    clean = inner.weight.data.copy()
    deepkern.manual_seed(2)
    y = wn(x)
    noise = np.random.default_rng(_seed_after(2)).standard_normal(clean.shape)
    assert_close(y, x @ (clean + 0.1 * noise).T + inner.bias.data, 1e-12, 1e-12, "noisy forward")
    assert np.array_equal(inner.weight.data, clean)                # the clean weights stay
    g = rng.standard_normal(y.shape)
    gx = wn.backward(g)
    assert_close(inner.weight.grad, g.T @ x, 1e-12, 1e-12, "grad w.r.t. the clean weight")
    assert_close(gx, g @ (clean + 0.1 * noise), 1e-12, 1e-12, "grad_x through the noisy weight")
    wn.eval()
    assert_bitwise(wn(x), inner(x))
    with pytest.raises(ValueError, match="std"):
        nn.WeightNoise(inner, std=-1.0)
    with pytest.raises(TypeError, match="Linear or Conv2d"):
        nn.WeightNoise(nn.ReLU())


def test_with_weight_noise_wraps_and_keeps_state_keys():
    deepkern.manual_seed(0)
    from deepkern import models
    m = models.digits_cnn()
    keys = set(m.state_dict())
    nn.with_weight_noise(m, 0.01)
    wrapped = [c for c in m if isinstance(c, nn.WeightNoise)]
    assert len(wrapped) == 3
    assert m.needs_input_grad is False                             # the first conv's flag passes through
    renamed = {k.replace(".layer.", ".") for k in m.state_dict()}
    assert renamed == keys


def test_gaussian_noise(rng):
    gn = nn.GaussianNoise(0.5)
    x = np.zeros((200, 50), np.float32)
    deepkern.manual_seed(0)
    y = gn(x)
    assert abs(y.std() - 0.5) < 0.02 and abs(y.mean()) < 0.02
    deepkern.manual_seed(0)
    assert_bitwise(gn(x), y)
    g = rng.standard_normal(y.shape).astype(np.float32)
    assert gn.backward(g) is g
    gn.eval()
    assert gn(x) is x
    with pytest.raises(TypeError, match="int64"):
        nn.GaussianNoise(0.1)(np.zeros(3, np.int64))


def test_residual_gradients_finite_differences(rng):
    block = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1, dtype=np.float64), nn.Sigmoid(),
                          nn.Conv2d(2, 2, 3, padding=1, dtype=np.float64))
    res = nn.Residual(block)
    x = rng.standard_normal((2, 2, 4, 4))
    y = res(x)
    assert_close(y, x + block(x), 0, 0)
    g = rng.standard_normal(y.shape)
    res.zero_grad()
    res(x)
    gx = res.backward(g)
    assert_close(gx, numeric_grad(lambda t: res(t), x.copy(), g), 1e-6, 1e-8, "grad_x")
    w = block[0].weight
    gw = w.grad.copy()

    def f(t):
        old = w.data
        w.data = t
        try:
            return res(x)
        finally:
            w.data = old
    assert_close(gw, numeric_grad(f, w.data.copy(), g), 1e-6, 1e-8, "grad of a block weight")
    with pytest.raises(ValueError, match="same shape"):
        nn.Residual(nn.Conv2d(2, 3, 1, dtype=np.float64))(x)


@pytest.mark.parametrize("mode", ["row", "batch"])
def test_stochastic_depth_semantics(mode, rng):
    sd = nn.StochasticDepth(0.3, mode)
    x = rng.standard_normal((400, 3, 2, 2)).astype(np.float32)
    deepkern.manual_seed(5)
    y = sd(x)
    kept = np.array([np.array_equal(y[i], (x[i] * np.float32(1 / 0.7))) for i in range(len(x))])
    dropped = np.array([not y[i].any() for i in range(len(x))])
    assert np.all(kept | dropped)                                  # each sample all or nothing
    if mode == "row":
        assert 0.6 < kept.mean() < 0.8                             # survival 0.7 per sample
    else:
        assert kept.all() or dropped.all()                         # the whole batch at once
    g = np.ones_like(x)
    want = np.broadcast_to(np.where(kept, np.float32(1 / 0.7), np.float32(0))[:, None, None, None], x.shape)
    assert_bitwise(sd.backward(g), want)                           # the same scale per sample
    deepkern.manual_seed(5)
    assert_bitwise(sd(x), y)                                       # reproducible by seed
    sd.eval()
    assert sd(x) is x and sd.backward(g) is g
    assert not nn.StochasticDepth(1.0, mode)(x).any()
    assert nn.StochasticDepth(0.0, mode)(x) is x
    with pytest.raises(ValueError, match="mode"):
        nn.StochasticDepth(0.1, "col")
    with pytest.raises(ValueError, match="between 0 and 1"):
        nn.StochasticDepth(1.5)


def test_stochastic_depth_batch_mode_drops_sometimes():
    sd = nn.StochasticDepth(0.5, "batch")
    x = np.ones((4, 2), np.float32)
    deepkern.manual_seed(0)
    outcomes = {bool(sd(x).any()) for _ in range(40)}
    assert outcomes == {True, False}


def test_residual_cnn_with_stochastic_depth_and_dropconnect_trains():
    from deepkern import data, optim, train
    (x, y), _, _ = data.digits_splits(val_size=0.0, seed=0)
    x, y = x[:256], y[:256]
    x = data.Standardizer().fit(x).transform(x)
    deepkern.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Residual(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                                  nn.StochasticDepth(0.2))),
        nn.FractionalMaxPool2d(2, output_size=5), nn.GaussianNoise(0.05), nn.Flatten(),
        nn.DropConnect(nn.Linear(8 * 5 * 5, 10), p=0.3))
    trainer = train.Trainer(model, optim.Adam(model.parameters(), lr=3e-3), seed=0, progress=False)
    hist = trainer.fit(x, y, epochs=6)
    assert hist["train_loss"][-1] < 0.5 * hist["train_loss"][0]
    assert trainer.evaluate(x, y)[1] > 0.8


def test_cuda_arrays_are_a_clear_error():
    from test_fractional_pool import FakeCudaArray
    x = FakeCudaArray()
    with pytest.raises(RuntimeError, match="StochasticDepth has no CUDA"):
        nn.StochasticDepth(0.5)(x)
    with pytest.raises(RuntimeError, match="GaussianNoise has no CUDA"):
        nn.GaussianNoise(0.5)(x)
    with pytest.raises(RuntimeError, match="backend 'cuda' is not available"):
        nn.FractionalMaxPool2d(2, output_size=2)(x)
