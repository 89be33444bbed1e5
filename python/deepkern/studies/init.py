"""Study ``init``: weight initialization in a plain deep network (6 hidden layers of 64, no
batch norm), under ReLU and sigmoid.

At initialization, one forward and backward on 256 training images measures the spread
(standard deviation) of every hidden layer's activations and the norm of every layer's weight
gradient; then the net trains, once with SGD + momentum 0.9 (lr 0.02) and once with Adam (lr 1e-3),
and we report the test accuracy of each.
The lecture notes' claims: all-zero weights never break the symmetry (every unit of a layer
stays identical; with ReLU nothing moves at all); small random weights make the signal shrink
layer by layer, and the gradient with it; Xavier (variance 1/fan_avg) keeps the spread for
sigmoid/tanh; He (variance 2/fan_in) keeps it for ReLU.
"""

from __future__ import annotations

import numpy as np

import deepkern
from deepkern import optim, train

from . import common

INITS = ("zeros", "small", "xavier", "he")
DEPTH = 6


def run(quick=False, epochs=None, seed=0, log=None):
    E = epochs or (1 if quick else 10)
    d = common.digits(quick)
    probe = slice(0, 256)
    rows, stats = [], {}
    for act in ("relu", "sigmoid"):
        for init in INITS:
            deepkern.manual_seed(seed)
            model = common.mlp(DEPTH, activation=act, init=init)
            acts, grads = common.layer_stats(model, d.x[probe], d.y[probe])
            accs = []
            for make in (lambda m: optim.Momentum(m.parameters(), lr=0.02, momentum=0.9),
                         lambda m: optim.Adam(m.parameters(), lr=1e-3)):
                deepkern.manual_seed(seed)
                model = common.mlp(DEPTH, activation=act, init=init)
                t = train.Trainer(model, make(model), seed=seed, progress=False)
                t.fit(d.x, d.y, E)
                accs.append(t.evaluate(d.xt, d.yt)[1])
            stats[(act, init)] = (acts, grads)
            rows.append([act, init, f"{acts[0]:.3g}", f"{acts[-1]:.3g}", f"{grads[0]:.3g}", f"{grads[-1]:.3g}",
                         common.pct(accs[0]), common.pct(accs[1])])
            if log:
                log(f"{act} {init}: test acc {100 * accs[0]:.2f}% (momentum), {100 * accs[1]:.2f}% (Adam)")
    notes = [f"MLP 64-({DEPTH}x64)-10 without batch norm; statistics at initialization on 256 images; "
             f"{E} epochs of SGD momentum 0.9 (lr 0.02), and of Adam (lr 1e-3); biases start at 0. Adam divides "
             "each step by the gradient's running RMS, so tiny gradients still move the weights."]
    return common.Result("init", "Initialization in a 6-hidden-layer network",
                         ["activation", "init", "act std layer 1", f"act std layer {DEPTH}", "grad norm layer 1",
                          "grad norm output layer", "test acc (momentum)", "test acc (Adam)"], rows, notes,
                         {"stats": stats})


def plot(result, path):
    plt = common.plt()
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), constrained_layout=True)
    for col, act in enumerate(("relu", "sigmoid")):
        for i, init in enumerate(INITS):
            acts, grads = result.data["stats"][(act, init)]
            axes[0, col].plot(range(1, len(acts) + 1), np.maximum(acts, 1e-12), "o-", label=init, color=f"C{i}")
            axes[1, col].plot(range(1, len(grads) + 1), np.maximum(grads, 1e-12), "o-", label=init, color=f"C{i}")
        axes[0, col].set_title(f"{act}: activation std per hidden layer")
        axes[1, col].set_title(f"{act}: weight-gradient norm per layer")
        axes[1, col].set_xlabel("layer (input side first)")
        for r in (0, 1):
            axes[r, col].set_yscale("log")
            axes[r, col].grid(True, alpha=0.3)
            axes[r, col].legend(fontsize=8)
    fig.suptitle("at initialization (zeros are drawn at 1e-12)")
    fig.savefig(path, dpi=100)
    plt.close(fig)
