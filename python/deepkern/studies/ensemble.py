"""Study ``ensemble``: does combining models beat one model, and at what cost?

Ways to spend more compute on the digits CNN, each on the same split, repeated for three
seeds (the seed draws the initial weights, the batch order and the dropout masks):

- single: one model, E epochs of Adam (lr 1e-3, batch 64)                  the baseline
- single, Mx epochs: the same model trained M times longer, the cost of an M-model ensemble
  (is the ensemble better than simply training longer?)
- independent: M models from different initial weights, probabilities averaged
- snapshot: one run with cosine warm restarts (3 cycles, each restarting at lr 3e-3), the
  model at the end of each cycle averaged (Huang et al. 2017): an ensemble for one run's price
- EMA: one run, evaluated with the exponential moving average of its weights (Polyak;
  decay 0.95, about the last epoch's 20 steps; the batch-norm statistics are the live model's)
- bagging: M models, each on a bootstrap resample of the training set
- boosting: SAMME with M rounds; the learner is the same CNN trained for E/3 epochs on a
  weighted resample (a weaker learner, as boosting wants)
- CV top-k: 3-fold cross-validation of a small grid (lr 1e-3 and 3e-3); the 3 fold models
  of the best configuration kept as the ensemble

Cost: the wall time and the training "epochs" spent (epochs x fraction of the training set).
"""

from __future__ import annotations

import numpy as np

import deepkern
from deepkern import ensemble, models, optim, train
from deepkern.optim import lr_scheduler

from . import common

SNAPSHOT_LR = 3e-3     # each cosine cycle restarts from a large step (the method's premise)
EMA_DECAY = 0.95       # averages about the last 20 steps (one epoch): older weights are worse
METHODS = ("single", "single, Mx epochs", "independent", "snapshot", "EMA", "bagging", "boosting", "CV top-k")


def _trainer(seed, lr=1e-3, **kw):
    deepkern.manual_seed(seed)
    model = models.digits_cnn()
    opt = optim.Adam(model.parameters(), lr=lr)
    return train.Trainer(model, opt, seed=seed, progress=False, **kw)


def _fitted(epochs, lr=1e-3, n_total=None):
    """train_fn(x, y, seed) -> a fitted Trainer, counting the epochs of training data spent."""
    spent = [0.0]

    def fn(x, y, seed):
        t = _trainer(seed, lr)
        t.fit(x, y, epochs)
        spent[0] += epochs * len(y) / (n_total or len(y))
        return t
    return fn, spent


def run(quick=False, seeds=3, epochs=None, members=None, log=None):
    E = epochs or (2 if quick else 12)
    M = members or (2 if quick else 4)
    seeds = 1 if quick else seeds
    d = common.digits(quick)
    N = len(d.y)
    acc = {m: [] for m in METHODS}
    cost = {m: [] for m in METHODS}
    secs = {m: [] for m in METHODS}
    say = log or (lambda s: None)
    for s in range(seeds):
        base = 1000 * s

        def record(name, accuracy, epochs_spent, seconds):
            acc[name].append(accuracy)
            cost[name].append(epochs_spent)
            secs[name].append(seconds)
            say(f"seed {s}: {name:12s} test acc {100 * accuracy:6.2f}%  ({epochs_spent:.0f} epochs, {seconds:.1f} s)")

        # single, and the first member of the independent ensemble
        fn, spent = _fitted(E, n_total=N)
        with common.Timer() as t:
            single = fn(d.x, d.y, base)
        record("single", single.accuracy(d.xt, d.yt), spent[0], t.seconds)
        with common.Timer() as t:
            longer = _trainer(base)
            longer.fit(d.x, d.y, E * M)
        record("single, Mx epochs", longer.accuracy(d.xt, d.yt), E * M, t.seconds)
        with common.Timer() as t:
            others = [fn(d.x, d.y, base + i) for i in range(1, M)]
        ind = ensemble.Ensemble([single] + others)
        record("independent", ind.accuracy(d.xt, d.yt), spent[0], secs["single"][-1] + t.seconds)

        with common.Timer() as t:
            deepkern.manual_seed(base)
            model = models.digits_cnn()
            opt = optim.Adam(model.parameters(), lr=SNAPSHOT_LR)
            sched = lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=max(1, E // 3))
            snap = train.Trainer(model, opt, scheduler=sched, snapshots=True, seed=base, progress=False)
            snap.fit(d.x, d.y, E)
        record("snapshot", snap.accuracy(d.xt, d.yt, ensemble=True), E, t.seconds)

        with common.Timer() as t:
            deepkern.manual_seed(base)
            model = models.digits_cnn()
            opt = optim.Adam(model.parameters(), lr=1e-3)
            ema_t = train.Trainer(model, opt, ema=optim.EMA(model.parameters(), decay=EMA_DECAY), seed=base,
                                  progress=False)
            ema_t.fit(d.x, d.y, E)
        record("EMA", ema_t.accuracy(d.xt, d.yt), E, t.seconds)

        fn, spent = _fitted(E, n_total=N)
        with common.Timer() as t:
            bag = ensemble.bagging(fn, d.x, d.y, n_estimators=M, seed=base)
        record("bagging", bag.accuracy(d.xt, d.yt), spent[0], t.seconds)

        fn, spent = _fitted(max(1, E // 3), n_total=N)
        with common.Timer() as t:
            boost = ensemble.samme(fn, d.x, d.y, n_estimators=M, seed=base, num_classes=10)
        record("boosting", boost.accuracy(d.xt, d.yt), spent[0], t.seconds)

        grid, spent_all = {}, []
        for lr in (1e-3, 3e-3):
            fn, spent = _fitted(E, lr, n_total=N)
            grid[f"lr={lr:g}"] = fn
            spent_all.append(spent)
        with common.Timer() as t:
            cv = ensemble.grid_search_cv(grid, d.x, d.y, k=3, seed=base, top_k=1)
        record("CV top-k", cv["ensemble"].accuracy(d.xt, d.yt), sum(sp[0] for sp in spent_all), t.seconds)
        say(f"seed {s}: CV ranking {cv['ranking']} (" + ", ".join(
            f"{k} {100 * v['mean']:.2f}+-{100 * v['std']:.2f}%" for k, v in cv["results"].items()) + ")")

    single_mean = float(np.mean(acc["single"]))
    rows = []
    for m in METHODS:
        a = np.array(acc[m])
        rows.append([m, common.pct(a.mean()), f"{100 * a.std():.2f}", f"{100 * (a.mean() - single_mean):+.2f}",
                     " / ".join(f"{100 * v:.1f}" for v in a), f"{np.mean(cost[m]):.0f}", f"{np.mean(secs[m]):.1f}"])
    best = max(METHODS[2:], key=lambda m: np.mean(acc[m]))
    notes = [f"{len(d.y)} training and {len(d.yt)} test images; {E} epochs per model, {M} members, "
             f"{seeds} seed(s); accuracy averaged over the seeds.",
             f"best ensemble: {best}, {common.pct(np.mean(acc[best]))} vs single {common.pct(single_mean)}."]
    return common.Result("ensemble", "Ensembles vs a single model (digits CNN, test accuracy)",
                         ["method", "test acc (mean)", "std", "vs single (pts)", "per seed", "epochs spent",
                          "seconds"], rows, notes, {"acc": acc, "cost": cost, "seconds": secs})


def plot(result, path):
    plt = common.plt()
    acc, cost = result.data["acc"], result.data["cost"]
    names = [m for m in METHODS if acc[m]]
    means = [100 * np.mean(acc[m]) for m in names]
    stds = [100 * np.std(acc[m]) for m in names]
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(7.5, 4.4), constrained_layout=True)
    colors = ["tab:gray" if m.startswith("single") else "tab:blue" for m in names]
    lo = min(means) - 3
    ax.barh(y, means, xerr=stds, color=colors, capsize=3)
    for yi, m, v in zip(y, names, means):    # the numbers inside the bars, clear of the error bars
        ax.text(lo + 0.15, yi, f"{v:.2f}%   {np.mean(cost[m]):.0f} epochs", va="center", fontsize=8,
                color="white")
    ax.axvline(means[0], color="gray", lw=0.8, ls="--")
    ax.set_yticks(y)
    ax.set_yticklabels(names)
    ax.invert_yaxis()
    ax.set_xlim(lo, 100.5)
    ax.set_xlabel("test accuracy (%), mean +- std over the seeds")
    ax.set_title("digits CNN: single models (gray) and ensembles (blue)")
    ax.grid(True, axis="x", alpha=0.3)
    fig.savefig(path, dpi=100)
    plt.close(fig)
