"""deepkern.ensemble: ensembles of models and model selection.

Averaging several models' predicted probabilities is the most reliable way to buy accuracy
with compute: the members' errors are partly independent, so the average is right where a
single member wavers. This module builds ensembles three ways and selects models by
cross-validation::

    from deepkern import ensemble
    def train_fn(x, y, seed):                 # any function (x, y, seed) -> a member
        deepkern.manual_seed(seed)
        model = models.digits_cnn()
        trainer = train.Trainer(model, optim.Adam(model.parameters()), seed=seed, progress=False)
        trainer.fit(x, y, epochs=20)
        return trainer                         # a member: anything with predict_proba(x),
                                               # or a deepkern.nn.Module (softmax of eval logits)
    ens = ensemble.Ensemble([train_fn(x, y, s) for s in range(5)])   # independent inits
    ens.accuracy(xt, yt)
    bag = ensemble.bagging(train_fn, x, y, n_estimators=5, seed=0)   # bootstrap resamples
    boost = ensemble.samme(train_fn, x, y, n_estimators=5, seed=0)   # multi-class AdaBoost
    cv = ensemble.cross_validate(train_fn, x, y, k=5, seed=0)        # per-fold accuracy
    best = ensemble.grid_search_cv({"lr=1e-3": fn_a, "lr=3e-3": fn_b}, x, y, k=3, top_k=2)

Everything is seeded: the folds, the bootstrap samples, the boosting resamples and the seeds
handed to ``train_fn`` are functions of ``seed`` alone.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from . import nn

__all__ = ["Ensemble", "predict_proba", "kfold_indices", "cross_validate", "grid_search_cv", "bagging",
           "samme", "member_seed"]


def _int(v, name, minimum):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(v).__name__} {v!r}")
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return int(v)


def _check_xy(x, y, what):
    if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
        raise TypeError(f"{what}: x and y must be numpy arrays, got {type(x).__name__} and {type(y).__name__}")
    if y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"{what}: expected x (N, ...) and y (N,), got shapes {x.shape} and {y.shape}")
    if y.dtype.kind not in "iu":
        raise TypeError(f"{what}: labels must be integers, got {y.dtype.name}")
    if len(y) == 0:
        raise ValueError(f"{what}: no samples")


def member_seed(seed, i):
    """The seed handed to train_fn for member i of an ensemble seeded ``seed``."""
    return int(np.random.default_rng([int(seed), int(i), 7]).integers(0, 2**31 - 1))


def predict_proba(member, x, batch_size=1024):
    """Class probabilities (N, classes) float64 of one member.

    A member with a ``predict_proba(x)`` method (a train.Trainer: it applies its EMA or
    snapshot ensemble; an Ensemble) is asked directly; a deepkern.nn.Module gives the softmax
    of its eval-mode logits (its train/eval flags are restored afterwards).
    """
    if hasattr(member, "predict_proba"):
        return np.asarray(member.predict_proba(x), dtype=np.float64)
    if not isinstance(member, nn.Module):
        raise TypeError(f"an ensemble member must have predict_proba(x) or be a deepkern.nn.Module, "
                        f"got {type(member).__name__}")
    flags = [(m, m.training) for m in member.modules()]
    member.eval()
    try:
        logits = np.concatenate([member(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    finally:
        for m, t in flags:
            object.__setattr__(m, "training", t)
    return nn.functional.softmax(logits.astype(np.float64))


class Ensemble:
    """Members combined by their (weighted) average prediction.

    vote="soft" (default) averages the members' predicted probabilities; vote="hard" averages
    their one-hot predictions (majority vote; with weights, SAMME's weighted vote). weights
    default to equal. ``predict_proba`` returns the weighted average (rows sum to 1).
    """

    def __init__(self, members, weights=None, vote="soft"):
        members = list(members)
        if not members:
            raise ValueError("an Ensemble needs at least one member")
        if vote not in ("soft", "hard"):
            raise ValueError(f"vote must be 'soft' or 'hard', got {vote!r}")
        if weights is None:
            weights = np.ones(len(members))
        weights = np.asarray(weights, dtype=np.float64)
        if weights.shape != (len(members),) or not np.all(np.isfinite(weights)) or np.any(weights < 0) \
                or weights.sum() <= 0:
            raise ValueError(f"weights must be {len(members)} finite non-negative numbers with a positive sum")
        self.members, self.weights, self.vote = members, weights, vote

    def __len__(self):
        return len(self.members)

    def member_probas(self, x):
        """[(N, classes)] probabilities of each member."""
        return [predict_proba(m, x) for m in self.members]

    def predict_proba(self, x):
        total = None
        for w, p in zip(self.weights, self.member_probas(x)):
            if self.vote == "hard":
                p = np.eye(p.shape[1])[p.argmax(axis=1)]
            total = w * p if total is None else total + w * p
        return total / self.weights.sum()

    def predict(self, x):
        return self.predict_proba(x).argmax(axis=1)

    def accuracy(self, x, y):
        _check_xy(x, y, "Ensemble.accuracy")
        return float(np.mean(self.predict(x) == y))


# ---------------------------------------------------------------------------- cross-validation

def kfold_indices(y, k=5, seed=0, stratified=True):
    """k (train_idx, val_idx) pairs of int64 index arrays: the val parts partition range(N).

    stratified: each class's indices are shuffled (seeded) and dealt round-robin over the
    folds, continuing where the previous class stopped, so every fold holds each class in
    proportion (within one sample) and fold sizes differ by at most one. Otherwise the
    shuffled indices are cut into k near-equal parts.
    """
    y = np.asarray(y)
    k = _int(k, "k", 2)
    n = len(y)
    if n < k:
        raise ValueError(f"cannot split {n} samples into k={k} folds")
    rng = np.random.default_rng(int(seed))
    fold_of = np.empty(n, dtype=np.int64)
    if stratified:
        start = 0
        for c in np.unique(y):
            idx = np.flatnonzero(y == c)
            idx = idx[rng.permutation(len(idx))]
            fold_of[idx] = (start + np.arange(len(idx))) % k
            start = (start + len(idx)) % k
    else:
        fold_of[rng.permutation(n)] = np.arange(n) % k
    all_idx = np.arange(n, dtype=np.int64)
    return [(all_idx[fold_of != f], all_idx[fold_of == f]) for f in range(k)]


def cross_validate(train_fn, x, y, k=5, seed=0, stratified=True, progress=None):
    """k-fold cross-validation of ``train_fn(x, y, seed) -> member``.

    Returns a dict: ``fold_acc`` (k validation accuracies), ``mean``, ``std`` (population),
    ``members`` (the k fold models) and ``folds`` (the index pairs). progress: a function
    called with one line per fold (e.g. print), or None.
    """
    _check_xy(x, y, "cross_validate")
    folds = kfold_indices(y, k, seed, stratified)
    accs, members = [], []
    for f, (tr, va) in enumerate(folds):
        m = train_fn(x[tr], y[tr], member_seed(seed, f))
        acc = float(np.mean(predict_proba(m, x[va]).argmax(axis=1) == y[va]))
        accs.append(acc)
        members.append(m)
        if progress is not None:
            progress(f"fold {f + 1}/{k}: val acc {100 * acc:.2f}%")
    accs = np.array(accs)
    return {"fold_acc": accs.tolist(), "mean": float(accs.mean()), "std": float(accs.std()),
            "members": members, "folds": folds}


def grid_search_cv(configs, x, y, k=3, seed=0, top_k=1, progress=None):
    """Cross-validate each configuration of a small grid and keep the best ``top_k`` as an ensemble.

    configs: {name: train_fn}. Every configuration sees the same folds. Returns a dict:
    ``results`` (name -> cross_validate's dict without the members), ``ranking`` (names, best
    mean validation accuracy first) and ``ensemble``: an Ensemble of the fold models of the
    top_k configurations (k * top_k members, each trained on (k-1)/k of the data; no
    retraining).
    """
    if not configs:
        raise ValueError("grid_search_cv needs at least one configuration")
    top_k = _int(top_k, "top_k", 1)
    results, members = {}, {}
    for name, fn in configs.items():
        r = cross_validate(fn, x, y, k, seed, progress=progress)
        members[name] = r.pop("members")
        r.pop("folds")
        results[name] = r
        if progress is not None:
            progress(f"{name}: {100 * r['mean']:.2f}% +- {100 * r['std']:.2f}")
    ranking = sorted(results, key=lambda n: -results[n]["mean"])
    chosen = [m for name in ranking[:top_k] for m in members[name]]
    return {"results": results, "ranking": ranking, "ensemble": Ensemble(chosen)}


# ---------------------------------------------------------------------------- bagging and boosting

def bagging(train_fn, x, y, n_estimators=5, seed=0):
    """Bootstrap aggregating (Breiman 1996): each member is trained on N samples drawn with
    replacement (seeded), independently; the Ensemble averages their probabilities.
    The ensemble's ``bootstrap`` attribute holds each member's sample indices."""
    _check_xy(x, y, "bagging")
    n_estimators = _int(n_estimators, "n_estimators", 1)
    rng = np.random.default_rng([int(seed), 11])
    members, samples = [], []
    for i in range(n_estimators):
        idx = rng.integers(0, len(y), len(y))
        members.append(train_fn(x[idx], y[idx], member_seed(seed, i)))
        samples.append(idx)
    ens = Ensemble(members)
    ens.bootstrap = samples
    return ens


def samme(train_fn, x, y, n_estimators=5, seed=0, num_classes=None, progress=None):
    """SAMME (Zhu et al. 2009), multi-class AdaBoost, with weighted resampling.

    Start with equal sample weights w. For each round m: train a learner on N samples drawn
    with probabilities w (seeded), take its weighted training error
    err = sum(w[wrong]) / sum(w) on the full training set, give it the vote
    alpha = log((1 - err) / err) + log(K - 1), and multiply the weights of the samples it got
    wrong by exp(alpha) (then renormalize), so the next learner concentrates on them. A
    learner no better than chance (err >= 1 - 1/K) ends the boosting; a perfect one (err = 0)
    ends it too and gets the vote of err = 1/(2N). The result is an Ensemble with hard
    (alpha-weighted) votes; its ``alphas`` and ``errors`` attributes hold the rounds' values.
    """
    _check_xy(x, y, "samme")
    n_estimators = _int(n_estimators, "n_estimators", 1)
    K = int(num_classes) if num_classes is not None else int(y.max()) + 1
    if K < 2:
        raise ValueError("SAMME needs at least two classes")
    n = len(y)
    w = np.full(n, 1.0 / n)
    rng = np.random.default_rng([int(seed), 13])
    members, alphas, errors = [], [], []
    for m in range(n_estimators):
        idx = rng.choice(n, size=n, replace=True, p=w)
        learner = train_fn(x[idx], y[idx], member_seed(seed, m))
        wrong = predict_proba(learner, x).argmax(axis=1) != y
        err = float(w[wrong].sum() / w.sum())
        if err >= 1.0 - 1.0 / K:
            if progress is not None:
                progress(f"round {m + 1}: error {err:.3f} is no better than chance; stopping")
            if not members:
                members, alphas, errors = [learner], [1.0], [err]
            break
        perfect = err <= 0.0
        e = max(err, 1.0 / (2 * n))
        alpha = math.log((1.0 - e) / e) + math.log(K - 1)
        members.append(learner)
        alphas.append(alpha)
        errors.append(err)
        if progress is not None:
            progress(f"round {m + 1}: weighted error {err:.4f}, alpha {alpha:.3f}")
        if perfect:
            break
        w = w * np.exp(alpha * wrong)
        w /= w.sum()
    ens = Ensemble(members, weights=alphas, vote="hard")
    ens.alphas, ens.errors = alphas, errors
    return ens
