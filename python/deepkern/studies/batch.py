"""Study ``batch``: full batch vs mini-batch vs batch 1 (stochastic), Adam lr 1e-3.

Two budgets: an equal number of EPOCHS (each sample seen as often: batch 1 makes N times as
many updates as full batch) and an equal number of UPDATES (each run takes the same number of
steps: full batch then sees the data far more often). The lecture notes' claims: per epoch,
small batches learn most (many noisy steps); per update, large batches are better (an exact
gradient); per second, mini-batches win (vectorized work, yet many updates).
"""

from __future__ import annotations

import math

import numpy as np

import deepkern
from deepkern import models

from . import common


def run(quick=False, epochs=None, updates=None, seed=0, log=None):
    d = common.digits(quick)
    N = len(d.y)
    E = epochs or (1 if quick else 3)
    U = updates or (10 if quick else 100)
    sizes = [("full batch", N), ("mini-batch 64", 64), ("batch 1", 1)]
    rows, curves = [], {}
    for budget in ("epochs", "updates"):
        for name, B in sizes:
            steps = E * math.ceil(N / B) if budget == "epochs" else U
            deepkern.manual_seed(seed)
            model = models.digits_cnn()
            opt = common.adam(model, 1e-3)
            with common.Timer() as tm:
                losses = common.train_steps(model, opt, d.x, d.y, B, steps, seed=seed,
                                            record_every=max(1, steps // 200))
            train_loss, train_acc = common.evaluate(model, d.x, d.y)
            test_loss, test_acc = common.evaluate(model, d.xt, d.yt)
            seen = steps * min(B, N) / N
            rows.append([f"equal {budget}", name, str(steps), f"{seen:.1f}", f"{train_loss:.4f}",
                         common.pct(test_acc), f"{tm.seconds:.1f}"])
            curves[(budget, name)] = (np.linspace(0, steps, len(losses)), losses, steps, seen)
            if log:
                log(f"{budget} {name}: {steps} updates, test acc {100 * test_acc:.2f}%")
    notes = [f"{N} training images; equal epochs: {E}; equal updates: {U}. Batch norm sees one image "
             "(64 pixels per channel) at batch 1."]
    return common.Result("batch", "Batch size at an equal number of epochs and of updates (digits CNN, Adam)",
                         ["budget", "batch", "updates", "epochs", "train loss", "test acc", "seconds"], rows, notes,
                         {"curves": curves})


def plot(result, path):
    plt = common.plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, budget in zip(axes, ("epochs", "updates")):
        for i, name in enumerate(("full batch", "mini-batch 64", "batch 1")):
            x, losses, steps, seen = result.data["curves"][(budget, name)]
            xs = x / max(steps, 1) * seen if budget == "epochs" else x
            k = max(1, len(losses) // 15)                 # running mean: batch-1 losses are noisy
            ls = np.convolve(losses, np.ones(k) / k, mode="valid")
            ax.plot(xs[k - 1:][: len(ls)], ls, "o-" if len(ls) < 30 else "-", ms=4, label=name, color=f"C{i}")
        ax.set_yscale("log")
        ax.set_xlabel("epochs" if budget == "epochs" else "updates")
        ax.set_ylabel("training loss of the batch (smoothed, log)")
        ax.set_title(f"equal {budget}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=100)
    plt.close(fig)
