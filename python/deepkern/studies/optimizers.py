"""Study ``optimizers``: the same CNN, the same initial weights and the same batches under all
eight optimizers, each with its default learning rate (deepkern.train.OPTIMIZERS).

What the lecture notes claim: plain SGD crawls, momentum and Nesterov speed it up, the
adaptive methods (Adagrad, RMSprop, Adam) reach a low loss fastest, Adagrad's step decays
as its squared-gradient sum grows, and AdamW matches Adam with decoupled weight decay.
"""

from __future__ import annotations

import numpy as np

import deepkern
from deepkern import models, train

from . import common


def run(quick=False, epochs=None, seed=0, log=None):
    E = epochs or (2 if quick else 15)
    d = common.digits(quick)
    rows, curves = [], {}
    for name in train.OPTIMIZERS:
        deepkern.manual_seed(seed)
        model = models.digits_cnn()
        opt = train.make_optimizer(name, model.parameters())
        t = train.Trainer(model, opt, seed=seed, progress=False)
        with common.Timer() as tm:
            t.fit(d.x, d.y, E, val=(d.xv, d.yv))
        test_loss, test_acc = t.evaluate(d.xt, d.yt)
        h = t.history
        curves[name] = (h["train_loss"], h["val_acc"])
        # epochs until the training loss first falls below 0.1 (a speed measure)
        below = [i + 1 for i, v in enumerate(h["train_loss"]) if v < 0.1]
        rows.append([name, f"{opt.param_groups[0]['lr']:g}", f"{h['train_loss'][-1]:.4f}",
                     str(below[0]) if below else f">{E}", common.pct(test_acc), f"{test_loss:.4f}",
                     f"{tm.seconds:.1f}"])
        if log:
            log(f"{name}: test acc {100 * test_acc:.2f}%")
    notes = [f"digits CNN, batch 64, {E} epochs, seed {seed}, the same initial weights and batch order for all."]
    return common.Result("optimizers", "The eight optimizers on the digits CNN",
                         ["optimizer", "lr", "final train loss", "epochs to loss < 0.1", "test acc", "test loss",
                          "seconds"], rows, notes, {"curves": curves})


def plot(result, path):
    plt = common.plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for i, (name, (loss, val)) in enumerate(result.data["curves"].items()):
        ep = np.arange(1, len(loss) + 1)
        ls = "--" if i >= 4 else "-"
        a.plot(ep, loss, ls, label=name, color=f"C{i}")
        b.plot(ep, 100 * np.array(val), ls, label=name, color=f"C{i}")
    a.set_yscale("log")
    a.set_xlabel("epoch")
    a.set_ylabel("training loss (log)")
    b.set_xlabel("epoch")
    b.set_ylabel("validation accuracy (%)")
    b.set_ylim(80, 100)
    for ax in (a, b):
        ax.grid(True, alpha=0.3)
    a.legend(fontsize=8)
    fig.suptitle("same model, same batches, eight optimizers")
    fig.savefig(path, dpi=100)
    plt.close(fig)
