"""Study ``activation``: sigmoid vs ReLU in a deeper network (10 hidden layers of 64, no batch
norm), each with its matching initialization (Xavier for sigmoid, He for ReLU) and also with
the same one (Xavier).

The norm of each layer's weight gradient, at initialization and after training, shows the
vanishing gradient: sigmoid'(x) <= 1/4, so backpropagation through L sigmoid layers multiplies
the gradient by at most 4^-L (times the weights), and the first layers barely learn; ReLU
passes the gradient through unchanged where a unit is active.
"""

from __future__ import annotations

import numpy as np

import deepkern
from deepkern import optim, train

from . import common

DEPTH = 10
CONFIGS = (("sigmoid", "xavier"), ("relu", "xavier"), ("relu", "he"))


def run(quick=False, epochs=None, seed=0, log=None):
    E = epochs or (1 if quick else 10)
    d = common.digits(quick)
    probe = slice(0, 256)
    rows, stats = [], {}
    for act, init in CONFIGS:
        deepkern.manual_seed(seed)
        model = common.mlp(DEPTH, activation=act, init=init)
        _, g0 = common.layer_stats(model, d.x[probe], d.y[probe])
        opt = optim.Adam(model.parameters(), lr=1e-3)
        t = train.Trainer(model, opt, seed=seed, progress=False)
        t.fit(d.x, d.y, E)
        _, g1 = common.layer_stats(model, d.x[probe], d.y[probe])
        _, acc = t.evaluate(d.xt, d.yt)
        stats[(act, init)] = (g0, g1)
        rows.append([act, init, f"{g0[0]:.3g}", f"{g0[-1]:.3g}", f"{g0[0] / g0[-1]:.3g}", f"{g1[0] / g1[-1]:.3g}",
                     common.pct(acc)])
        if log:
            log(f"{act} {init}: test acc {100 * acc:.2f}%")
    notes = [f"MLP 64-({DEPTH}x64)-10, no batch norm, Adam lr 1e-3 for {E} epochs; gradient norms on 256 images."]
    return common.Result("activation", f"Sigmoid vs ReLU, {DEPTH} hidden layers: gradient norm per layer",
                         ["activation", "init", "grad norm layer 1 (init)", "grad norm output (init)",
                          "layer 1 / output (init)", "layer 1 / output (trained)", "test acc"], rows, notes,
                         {"stats": stats})


def plot(result, path):
    plt = common.plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True, sharey=True)
    for i, ((act, init), (g0, g1)) in enumerate(result.data["stats"].items()):
        for ax, g in zip(axes, (g0, g1)):
            ax.plot(range(1, len(g) + 1), np.maximum(g, 1e-30), "o-", color=f"C{i}", label=f"{act} ({init})")
    for ax, t in zip(axes, ("at initialization", "after training")):
        ax.set_yscale("log")
        ax.set_xlabel("layer (input side first)")
        ax.set_title(t)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("weight-gradient norm")
    fig.savefig(path, dpi=100)
    plt.close(fig)
