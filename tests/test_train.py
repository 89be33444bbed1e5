"""deepkern.train: the fit loop, early stopping, EMA evaluation, snapshot ensembles, the
default model and its PyTorch twin, needs_input_grad, the benchmark hook."""

from __future__ import annotations

import math

import numpy as np
import pytest

import deepkern
from deepkern import data, models, nn, optim
from deepkern import functional as F
from deepkern.train import HISTORY_KEYS, Trainer, benchmark_epoch, fit, make_optimizer, make_scheduler


@pytest.fixture(autouse=True)
def _one_thread():
    """These tests train the digits CNN, whose kernels are too small to split (see
    deepkern.train.commands.SMALL_IMAGE_PIXELS): one thread keeps them fast on a busy
    machine. Results do not depend on the thread count (test_determinism)."""
    before = deepkern.get_num_threads()
    deepkern.set_num_threads(1)
    yield
    deepkern.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    """A small standardized subset: 320 training, 96 validation, the test split."""
    (x, y), (xv, yv), (xt, yt) = data.digits_splits(val_size=0.1, seed=0)
    std = data.Standardizer().fit(x)
    return (std.transform(x[:320]), y[:320]), (std.transform(xv[:96]), yv[:96]), (std.transform(xt), yt)


def _model(seed=0, **kw):
    deepkern.manual_seed(seed)
    return models.digits_cnn(**kw)


def _trainer(seed=0, lr=2e-3, **kw):
    m = _model(seed)
    return Trainer(m, optim.Adam(m.parameters(), lr=lr), nn.CrossEntropyLoss(label_smoothing=0.1),
                   seed=seed, progress=False, **kw)


# ---------------------------------------------------------------------------- the loop

def test_fit_reduces_the_loss_and_records_history(digits):
    (x, y), val, _ = digits
    t = _trainer()
    h = t.fit(x, y, 6, val=val)
    assert set(h) == set(HISTORY_KEYS)
    assert h["epoch"] == [1, 2, 3, 4, 5, 6] and t.epoch == 6
    assert all(len(h[k]) == 6 for k in HISTORY_KEYS)
    assert h["train_loss"][-1] < 0.7 * h["train_loss"][0]
    assert h["val_loss"][-1] < h["val_loss"][0]
    assert h["val_acc"][-1] > 0.8
    loss, acc = t.evaluate(*val)
    assert loss == pytest.approx(h["val_loss"][-1]) and acc == pytest.approx(h["val_acc"][-1])


def test_fit_continues_to_the_total_epoch_count(digits):
    (x, y), val, _ = digits
    t = _trainer()
    t.fit(x, y, 2)
    t.fit(x, y, 3)
    assert t.epoch == 3 and t.history["epoch"] == [1, 2, 3]
    assert all(math.isnan(v) for v in t.history["val_loss"])      # no validation data


@pytest.mark.parametrize("batch_size", [1, "full"])
def test_sgd_and_full_batch(digits, batch_size):
    (x, y), _, _ = digits
    m = _model()
    t = Trainer(m, optim.SGD(m.parameters(), lr=0.01), batch_size=batch_size, progress=False)
    t.fit(x[:40], y[:40], 1)
    assert t.history["epoch"] == [1] and math.isfinite(t.history["train_loss"][0])


def test_progress_bar_and_log_lines(digits, monkeypatch):
    import tqdm.auto

    bars = []

    class Recorder(tqdm.auto.tqdm):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.postfixes = []
            bars.append(self)

        def set_postfix_str(self, s="", refresh=True):
            self.postfixes.append(s)
            super().set_postfix_str(s, refresh)

    monkeypatch.setattr(tqdm.auto, "tqdm", Recorder)
    (x, y), val, _ = digits
    lines = []
    t = _trainer(log=lines.append)
    t.progress = True
    t.fit(x[:128], y[:128], 2, val=val)
    assert len(lines) == 2 and lines[0].startswith("epoch 1/2  train loss") and "val loss" in lines[1]
    (bar,) = bars
    assert bar.total == 4 and bar.n == 4                            # 2 epochs of 2 steps
    assert len(bar.postfixes) == 4 and all(p.startswith("loss ") for p in bar.postfixes)


def test_divergence_is_an_error(digits):
    (x, y), _, _ = digits
    m = _model(dropout=0.0)
    t = Trainer(m, optim.SGD(m.parameters(), lr=1e30), progress=False)
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        t.fit(x, y, 3)


def test_bad_arguments(digits):
    (x, y), val, _ = digits
    m = _model()
    opt = optim.Adam(m.parameters())
    with pytest.raises(TypeError, match="model"):
        Trainer(object(), opt)
    with pytest.raises(TypeError, match="optimizer"):
        Trainer(m, object())
    with pytest.raises(ValueError, match="snapshot"):
        Trainer(m, opt, snapshots=True)
    with pytest.raises(ValueError, match="batch_size"):
        Trainer(m, opt, batch_size=0)
    other = optim.SGD(m.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="another optimizer"):
        Trainer(m, opt, scheduler=optim.lr_scheduler.StepLR(other, 1))
    t = Trainer(m, opt, patience=2, progress=False)
    with pytest.raises(ValueError, match="validation"):
        t.fit(x, y, 1)
    with pytest.raises(ValueError, match="shapes"):
        t.fit(x, y[:-1], 1, val=val)
    with pytest.raises(TypeError, match="integers"):
        t.fit(x, y.astype(np.float32), 1, val=val)


def test_frozen_parameters_and_eval_modules_stay_put(digits):
    (x, y), _, _ = digits
    m = _model()
    body = m[:-1]
    body.requires_grad_(False)
    before = {k: v.copy() for k, v in m.state_dict().items()}
    bns = [l for l in body if isinstance(l, nn.BatchNorm2d)]
    t = Trainer(m, optim.Adam(m[-1].parameters(), lr=1e-2), eval_modules=bns, progress=False)
    t.fit(x, y, 2)
    after = m.state_dict()
    for k in before:
        if k.startswith("10."):
            assert not np.array_equal(before[k], after[k]), k             # the head trained
        else:
            np.testing.assert_array_equal(before[k], after[k], err_msg=k)  # weights and BN statistics
    assert all(l.training for l in m if not isinstance(l, nn.BatchNorm2d))


# ---------------------------------------------------------------------------- early stopping

def test_early_stopping_restores_the_best_weights(digits):
    (x, y), (xv, yv), _ = digits
    # validation labels that disagree with the images: the better the model fits the
    # training set, the worse the validation loss gets after the first epochs
    wrong = (yv + 3) % 10
    t = _trainer(patience=2, lr=1e-2)
    h = t.fit(x, y, 30, val=(xv, wrong))
    assert t.stopped_early and len(h["epoch"]) < 30
    best = int(np.argmin(h["val_loss"]))
    assert t.best["epoch"] == best + 1 and len(h["epoch"]) == best + 1 + 2     # patience 2
    for k, v in m_state(t).items():
        np.testing.assert_array_equal(v, t.best["model"][k], err_msg=k)
    loss, _ = t.evaluate(xv, wrong)
    assert loss == pytest.approx(min(h["val_loss"]), rel=1e-6)
    assert loss < h["val_loss"][-1]


def m_state(t):
    return t.model.state_dict()


# ---------------------------------------------------------------------------- EMA

def test_ema_evaluation_uses_the_averaged_weights(digits):
    (x, y), val, (xt, yt) = digits
    m = _model()
    ema = optim.EMA(m.parameters(), decay=0.9)
    t = Trainer(m, optim.Adam(m.parameters(), lr=2e-3), ema=ema, progress=False)
    t.fit(x, y, 2, val=val)
    raw = {k: v.copy() for k, v in m.state_dict().items()}
    loss, acc = t.evaluate(xt, yt)
    for k, v in m.state_dict().items():                    # evaluate put the raw weights back
        np.testing.assert_array_equal(v, raw[k])
    # the same evaluation by hand: a copy of the model holding the averages
    clone = _model()
    clone.load_state_dict(raw)
    ema.copy_to(list(clone.parameters()))
    clone.eval()
    logits = clone(xt)
    assert loss == pytest.approx(nn.CrossEntropyLoss()(logits, yt), rel=1e-6)
    assert acc == pytest.approx(np.mean(logits.argmax(1) == yt))
    assert ema.num_updates == 2 * len(range(0, len(x), 64))
    # and it differs from evaluating the raw weights
    m.eval()
    assert not np.allclose(m(xt), logits)


# ---------------------------------------------------------------------------- snapshot ensembles

def test_snapshot_ensemble_averages_probabilities(digits):
    (x, y), val, (xt, yt) = digits
    m = _model()
    opt = optim.Adam(m.parameters(), lr=3e-3)
    sched = optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=2)
    t = Trainer(m, opt, scheduler=sched, snapshots=True, progress=False)
    lrs = []
    t.fit(x, y, 6, val=val)
    assert len(t.snapshots) == 3                                  # ends of epochs 2, 4, 6
    assert not np.array_equal(t.snapshots[0]["0.weight"], t.snapshots[2]["0.weight"])
    lrs = t.history["lr"]
    assert lrs[0] == pytest.approx(3e-3) and lrs[2] == pytest.approx(3e-3)   # restarts
    assert lrs[1] < 3e-3
    final = {k: v.copy() for k, v in m.state_dict().items()}
    probs = t.predict_proba(xt)
    want = 0
    for s in t.snapshots:
        clone = _model()
        clone.load_state_dict(s)
        clone.eval()
        want = want + nn.functional.softmax(clone(xt).astype(np.float64))
    np.testing.assert_allclose(probs, want / 3, rtol=1e-12, atol=1e-15)
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, final[k])
    assert t.accuracy(xt, yt, ensemble=True) == pytest.approx(np.mean(probs.argmax(1) == yt))
    single = t.predict_proba(xt, ensemble=False)
    assert single.shape == probs.shape and not np.allclose(single, probs)


def test_snapshot_cycles_with_t_mult(digits):
    (x, y), _, _ = digits
    m = _model()
    opt = optim.SGD(m.parameters(), lr=0.05)
    sched = optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=1, T_mult=2)
    t = Trainer(m, opt, scheduler=sched, snapshots=True, progress=False)
    t.fit(x[:64], y[:64], 7)
    assert len(t.snapshots) == 3                                  # cycles of 1, 2, 4 epochs
    with pytest.raises(ValueError, match="no snapshots"):
        Trainer(m, opt, progress=False).predict_proba(x[:4], ensemble=True)


# ---------------------------------------------------------------------------- schedules

@pytest.mark.parametrize("name", ["step", "cosine", "plateau", "none"])
def test_epoch_schedules_run(digits, name):
    (x, y), val, _ = digits
    m = _model()
    opt = make_optimizer("momentum", m.parameters())
    sched = make_scheduler(name, opt, 6)
    t = Trainer(m, opt, scheduler=sched, progress=False)
    t.fit(x[:128], y[:128], 6, val=val)
    lrs = t.history["lr"]
    if name == "step":
        assert lrs[:2] == [0.01, 0.01] and lrs[2] == pytest.approx(0.001)
    elif name == "cosine":
        assert lrs[0] == 0.01 and all(a > b for a, b in zip(lrs, lrs[1:]))
    elif name == "none":
        assert lrs == [0.01] * 6


def test_make_optimizer():
    m = _model()
    opt = make_optimizer("nag", m.parameters(), lr=0.3, momentum=0.5, weight_decay=1e-4)
    assert isinstance(opt, optim.NAG)
    g = opt.param_groups[0]
    assert (g["lr"], g["momentum"], g["weight_decay"]) == (0.3, 0.5, 1e-4)
    with pytest.raises(ValueError, match="momentum"):
        make_optimizer("adam", m.parameters(), momentum=0.9)
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("lbfgs", m.parameters())
    m[0].weight.requires_grad = False
    assert len(make_optimizer("sgd", m.parameters()).param_groups[0]["params"]) == len(list(m.parameters())) - 1


def test_fit_function(digits):
    (x, y), val, _ = digits
    m = _model()
    t = fit(m, (x[:128], y[:128]), val, epochs=2, progress=False)
    assert isinstance(t, Trainer) and t.epoch == 2 and isinstance(t.optimizer, optim.Adam)


# ---------------------------------------------------------------------------- the default model

def test_digits_cnn_layout():
    m = _model()
    shapes = {k: v.shape for k, v in m.state_dict().items()}
    assert shapes["0.weight"] == (16, 1, 3, 3) and "0.bias" not in shapes      # no bias before BatchNorm
    assert shapes["4.weight"] == (32, 16, 3, 3) and shapes["10.weight"] == (10, 128)
    assert m.needs_input_grad is False and m[0].needs_input_grad is False and m[4].needs_input_grad is True
    assert m(np.zeros((3, 1, 8, 8), np.float32)).shape == (3, 10)
    # He init: std sqrt(2 / fan_in)
    w = _model(1, channels=(64, 64))[4].weight.data
    assert w.std() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.05)
    m28 = models.digits_cnn(5, (4, 8), image_size=28, in_channels=3)
    assert m28(np.zeros((2, 3, 28, 28), np.float32)).shape == (2, 5) and m28[-1].in_features == 8 * 7 * 7
    with pytest.raises(ValueError, match="image_size"):
        models.digits_cnn(image_size=3)
    with pytest.raises(ValueError, match="init"):
        models.digits_cnn(init="orthogonal")


def test_replace_head():
    m = _model()
    old = m[-1]
    head = models.replace_head(m, 5)
    assert m[-1] is head and head is not old and head.out_features == 5 and head.in_features == 128
    assert m(np.zeros((2, 1, 8, 8), np.float32)).shape == (2, 5)


def test_torch_twin_trains_in_step(digits):
    torch = pytest.importorskip("torch")
    (x, y), _, _ = digits
    m = _model(dropout=0.0)          # dropout draws different masks in the two frameworks
    twin = models.torch_twin(m, torch)
    crit, tcrit = nn.CrossEntropyLoss(label_smoothing=0.1), torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    opt = optim.Adam(m.parameters(), lr=1e-3)
    topt = torch.optim.Adam(twin.parameters(), lr=1e-3)
    for step in range(3):
        xb, yb = x[64 * step: 64 * step + 64], y[64 * step: 64 * step + 64]
        loss = crit(m(xb), yb)
        m.zero_grad()
        m.backward(crit.backward())
        opt.step()
        topt.zero_grad()
        tloss = tcrit(twin(torch.from_numpy(xb)), torch.from_numpy(yb))
        tloss.backward()
        topt.step()
        assert loss == pytest.approx(tloss.item(), rel=1e-5)
    for k, v in twin.state_dict().items():
        np.testing.assert_allclose(m.state_dict()[k], v.numpy(), rtol=1e-4, atol=1e-5, err_msg=k)


# ---------------------------------------------------------------------------- needs_input_grad

@pytest.mark.parametrize("backend", ["cpu", "numpy"])
def test_conv2d_backward_without_input_grad(backend, rng):
    x = rng.standard_normal((4, 3, 6, 6)).astype(np.float32)
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    dy = rng.standard_normal((4, 5, 6, 6)).astype(np.float32)
    with deepkern.use_backend(backend):
        gx, gw, gb = F.conv2d_backward(dy, x, w, padding=1)
        nx, nw, nb = F.conv2d_backward(dy, x, w, padding=1, input_grad=False)
        ux = F.conv2d_backward(dy[0], x[0], w, padding=1, input_grad=False)[0]   # unbatched
    assert nx is None and ux is None
    np.testing.assert_array_equal(nw, gw)
    np.testing.assert_array_equal(nb, gb)
    with pytest.raises(TypeError, match="input_grad"):
        F.conv2d_backward(dy, x, w, padding=1, input_grad=1)


def test_needs_input_grad_layers(rng):
    x = rng.standard_normal((4, 2, 5, 5)).astype(np.float32)
    deepkern.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3)
    lin = nn.Linear(5, 4)
    for layer, inp in ((conv, x), (lin, x[:, 0, 0])):
        y = layer(inp)
        layer.zero_grad()
        g_full = layer.backward(np.ones_like(y))
        grads = [p.grad.copy() for p in layer.parameters()]
        layer.needs_input_grad = False
        layer.zero_grad()
        assert layer.backward(np.ones_like(y)) is None and g_full is not None
        for p, g in zip(layer.parameters(), grads):
            np.testing.assert_array_equal(p.grad, g)
    seq = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU())
    assert seq.needs_input_grad is True
    seq.needs_input_grad = False
    assert seq[0].needs_input_grad is False and seq.needs_input_grad is False
    seq(x)
    assert seq.backward(np.ones((4, 3, 3, 3), np.float32)) is None
    outer = nn.Sequential(seq, nn.Flatten())
    outer.needs_input_grad = True                                      # reaches the inner first layer
    assert seq[0].needs_input_grad is True
    with pytest.raises(ValueError, match="empty"):
        nn.Sequential().needs_input_grad = False


# ---------------------------------------------------------------------------- the bench hook

def test_benchmark_epoch_hook():
    fn = benchmark_epoch("cpu", steps=3)
    a, b = fn(), fn()
    assert math.isfinite(a) and a > 0 and b < a                    # every call continues training
    with pytest.raises(RuntimeError, match="framework"):
        benchmark_epoch("tpu")
    ref = benchmark_epoch("numpy", steps=1)()
    assert math.isfinite(ref) and ref > 0


def test_benchmark_epoch_torch_matches_deepkern_data():
    pytest.importorskip("torch")
    loss_t = benchmark_epoch("torch", steps=2)()
    loss_d = benchmark_epoch("cpu", steps=2)()
    # the same initial weights and batches: the first losses agree up to dropout's masks
    assert loss_t == pytest.approx(loss_d, rel=0.15)
