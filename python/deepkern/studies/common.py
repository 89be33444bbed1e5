"""What every study shares: the data, small models, a plain training loop for counted updates,
evaluation, per-layer statistics, and the table printer.

Every study trains on the embedded digits (8x8 images, 10 classes): the fixed 20% test split,
a 10% validation split of the rest, the remaining 1,294 images for training (or a stratified
subset of them where a study wants overfitting to show), standardized with the training
statistics. ``quick=True`` shrinks everything so a study runs in seconds (the smoke tests).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

import deepkern
from deepkern import data, nn, optim
from deepkern.data import DataLoader

__all__ = ["Result", "Digits", "digits", "evaluate", "train_steps", "mlp", "layer_stats", "format_table",
           "Timer", "subset"]


@dataclass
class Result:
    """A study's outcome: a table (headers, rows of cells) plus whatever its plot needs."""
    name: str
    title: str
    headers: list
    rows: list
    notes: list = field(default_factory=list)
    data: dict = field(default_factory=dict)

    def table(self):
        return format_table(self.headers, self.rows)


def format_table(headers, rows):
    """A Markdown table (readable as plain text too): numbers formatted by the caller."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(str(h).ljust(w) for h, w in zip(headers, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    return "\n".join([line, sep] + body)


@dataclass
class Digits:
    x: np.ndarray
    y: np.ndarray
    xv: np.ndarray
    yv: np.ndarray
    xt: np.ndarray
    yt: np.ndarray


def subset(x, y, n, seed=0):
    """A stratified subset of n samples (the first n of a seeded stratified shuffle)."""
    if n >= len(y):
        return x, y
    idx, _ = data.split_indices(y, [1 - n / len(y)], seed=seed)
    return x[idx], y[idx]


def digits(quick=False, train_size=None, seed=0):
    """The standardized digits splits. quick: 300 training and 200 test images.
    train_size: a stratified subset of the training split (None: all 1,294)."""
    (x, y), (xv, yv), (xt, yt) = data.digits_splits(val_size=0.1, seed=seed)
    if quick:
        train_size = min(train_size or 300, 300)
        xt, yt = subset(xt, yt, 200, seed)
    if train_size is not None:
        x, y = subset(x, y, train_size, seed)
    std = data.Standardizer().fit(x)
    return Digits(std.transform(x), y, std.transform(xv), yv, std.transform(xt), yt)


def evaluate(model, x, y):
    """(mean cross-entropy, accuracy) of a model in eval mode (its flags restored)."""
    from deepkern.ensemble import predict_proba
    p = predict_proba(model, x)
    loss = float(-np.mean(np.log(np.maximum(p[np.arange(len(y)), y], 1e-300))))
    return loss, float(np.mean(p.argmax(axis=1) == y))


def train_steps(model, opt, x, y, batch_size, steps, seed=0, record_every=1):
    """Exactly ``steps`` updates with batches of ``batch_size`` (reshuffled every epoch),
    returning the per-update training losses (every record_every-th). The Trainer counts
    epochs; this loop counts updates, which the batch-size study needs."""
    crit = nn.CrossEntropyLoss()
    loader = DataLoader(x, y, batch_size=batch_size, shuffle=True, seed=seed)
    losses, done, epoch = [], 0, 0
    model.train()
    while done < steps:
        loader.set_epoch(epoch)
        deepkern.manual_seed(seed * 1000 + epoch)
        for xb, yb in loader:
            loss = crit(model(xb), yb)
            model.zero_grad()
            model.backward(crit.backward())
            opt.step()
            if done % record_every == 0:
                losses.append(float(loss))
            done += 1
            if done == steps:
                break
        epoch += 1
    return losses


ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid}


def mlp(depth, width=64, activation="relu", init="he", in_features=64, classes=10, dtype=np.float32):
    """Flatten - (Linear - activation) x depth - Linear: a plain deep net without batch norm,
    where the initialization and the activation decide whether signals survive the depth.

    init: "zeros", "small" (N(0, 0.01^2)), "xavier" (normal, gain 1), "he" (kaiming normal,
    fan_in, ReLU gain), "default" (PyTorch's U(+-1/sqrt(fan_in))). Biases start at 0 (except
    "default")."""
    layers = [nn.Flatten()]
    sizes = [in_features] + [width] * depth
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b, dtype=dtype), ACTIVATIONS[activation]()]
    layers.append(nn.Linear(sizes[-1], classes, dtype=dtype))
    model = nn.Sequential(*layers)
    for m in model:
        if isinstance(m, nn.Linear) and init != "default":
            if init == "zeros":
                nn.init.zeros_(m.weight)
            elif init == "small":
                nn.init.normal_(m.weight, 0.0, 0.01)
            elif init == "xavier":
                nn.init.xavier_normal_(m.weight)
            elif init == "he":
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            else:
                raise ValueError(f"unknown init {init!r}")
            nn.init.zeros_(m.bias)
    return model


def layer_stats(model, x, y):
    """One forward and backward on (x, y) in training mode: for every hidden activation layer,
    the standard deviation of its output, and for every Linear, the norm of its weight
    gradient. Returns (act_std list, grad_norm list), input side first."""
    crit = nn.CrossEntropyLoss()
    acts, h = [], x
    for m in model:
        h = m(h)
        if isinstance(m, tuple(ACTIVATIONS.values())):
            acts.append(float(np.std(h)))
    crit(h, y)
    model.zero_grad()
    model.backward(crit.backward())
    grads = [float(np.linalg.norm(m.weight.grad)) for m in model if isinstance(m, nn.Linear)]
    return acts, grads


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        return False


def adam(model, lr=1e-3, **kw):
    return optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr, **kw)


def pct(v):
    return f"{100 * v:.2f}%"


def plt():
    """matplotlib.pyplot (Agg), or a RuntimeError with the install hint."""
    from deepkern.train.plots import require_matplotlib
    return require_matplotlib()
