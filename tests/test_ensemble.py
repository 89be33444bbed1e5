"""deepkern.ensemble: averaging, stratified k-fold (exact partition), bagging, SAMME."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import deepkern
import deepkern.nn as nn
from deepkern import ensemble


class Fixed:
    """A member whose predicted probabilities are given."""

    def __init__(self, p):
        self.p = np.asarray(p, dtype=np.float64)

    def predict_proba(self, x):
        return self.p[: len(x)]


class Lookup:
    """A member predicting labels[i] for the sample whose first feature is i (one-hot probs)."""

    def __init__(self, labels, k):
        self.labels, self.k = np.asarray(labels), k

    def predict_proba(self, x):
        return np.eye(self.k)[self.labels[x[:, 0].astype(int)]]


@given(st.lists(st.integers(0, 4), min_size=6, max_size=80), st.integers(2, 6), st.integers(0, 1000),
       st.booleans())
def test_kfold_partitions_exactly(labels, k, seed, stratified):
    y = np.array(labels)
    if len(y) < k:
        with pytest.raises(ValueError, match="folds"):
            ensemble.kfold_indices(y, k, seed, stratified)
        return
    folds = ensemble.kfold_indices(y, k, seed, stratified)
    assert len(folds) == k
    vals = np.concatenate([va for _, va in folds])
    assert np.array_equal(np.sort(vals), np.arange(len(y)))            # every sample in exactly one fold
    sizes = [len(va) for _, va in folds]
    assert max(sizes) - min(sizes) <= 1
    for tr, va in folds:
        assert np.array_equal(np.sort(np.concatenate([tr, va])), np.arange(len(y)))
        assert not np.intersect1d(tr, va).size
        assert tr.dtype == np.int64
    if stratified:
        for c in np.unique(y):
            per_fold = [int(np.sum(y[va] == c)) for _, va in folds]
            assert max(per_fold) - min(per_fold) <= 1                   # each class spread evenly
    again = ensemble.kfold_indices(y, k, seed, stratified)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again))


def test_kfold_seed_changes_folds():
    y = np.arange(100) % 3
    a = ensemble.kfold_indices(y, 5, 0)
    b = ensemble.kfold_indices(y, 5, 1)
    assert not all(np.array_equal(p[1], q[1]) for p, q in zip(a, b))
    with pytest.raises(ValueError, match="k must be >= 2"):
        ensemble.kfold_indices(y, 1)


def test_ensemble_averages_probabilities():
    p1 = np.array([[0.6, 0.4], [0.2, 0.8], [0.55, 0.45]])
    p2 = np.array([[0.1, 0.9], [0.3, 0.7], [0.6, 0.4]])
    ens = ensemble.Ensemble([Fixed(p1), Fixed(p2)])
    x = np.zeros((3, 1))
    np.testing.assert_allclose(ens.predict_proba(x), (p1 + p2) / 2)
    assert ens.predict(x).tolist() == [1, 1, 0]
    w = ensemble.Ensemble([Fixed(p1), Fixed(p2)], weights=[3, 1])
    np.testing.assert_allclose(w.predict_proba(x), (3 * p1 + p2) / 4)
    hard = ensemble.Ensemble([Fixed(p1), Fixed(p2), Fixed(p2)], vote="hard")
    np.testing.assert_allclose(hard.predict_proba(x), [[1 / 3, 2 / 3], [0, 1], [1, 0]])
    assert hard.accuracy(x, np.array([1, 1, 1])) == pytest.approx(2 / 3)
    for bad in (dict(members=[]), dict(members=[Fixed(p1)], weights=[-1]), dict(members=[Fixed(p1)], vote="x")):
        with pytest.raises(ValueError):
            ensemble.Ensemble(**bad)
    with pytest.raises(TypeError, match="predict_proba"):
        ensemble.predict_proba(object(), x)


def test_module_member_uses_eval_mode_and_restores_flags(rng):
    deepkern.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 3))
    x = rng.standard_normal((5, 4)).astype(np.float32)
    p = ensemble.predict_proba(m, x)
    m.eval()
    np.testing.assert_allclose(p, nn.functional.softmax(m(x).astype(np.float64)), rtol=1e-12)
    m.train()
    ensemble.predict_proba(m, x)
    assert all(mod.training for mod in m.modules())
    np.testing.assert_allclose(p.sum(axis=1), 1.0)


def _indexed(n, classes=3):
    x = np.stack([np.arange(n, dtype=np.float64), np.zeros(n)], axis=1)
    y = np.arange(n) % classes
    return x, y


def test_cross_validate_trains_on_each_complement():
    x, y = _indexed(30)
    seen = []

    def train_fn(xs, ys, seed):
        seen.append((xs[:, 0].astype(int), seed))
        labels = y.copy()
        labels[:5] = (labels[:5] + 1) % 3                   # wrong on samples 0..4
        return Lookup(labels, 3)

    r = ensemble.cross_validate(train_fn, x, y, k=3, seed=4)
    folds = ensemble.kfold_indices(y, 3, 4)
    for (idx, seed), (tr, va) in zip(seen, folds):
        assert np.array_equal(idx, tr)
    assert len({s for _, s in seen}) == 3                    # a different seed per fold
    want = [1 - np.sum(va < 5) / len(va) for _, va in folds]
    np.testing.assert_allclose(r["fold_acc"], want)
    assert r["mean"] == pytest.approx(np.mean(want)) and r["std"] == pytest.approx(np.std(want))


def test_grid_search_keeps_top_k():
    x, y = _indexed(30)

    def make(n_wrong):
        def fn(xs, ys, seed):
            labels = y.copy()
            labels[:n_wrong] = (labels[:n_wrong] + 1) % 3
            return Lookup(labels, 3)
        return fn

    r = ensemble.grid_search_cv({"bad": make(12), "good": make(0), "ok": make(3)}, x, y, k=3, top_k=2)
    assert r["ranking"] == ["good", "ok", "bad"]
    assert len(r["ensemble"]) == 6
    assert r["results"]["good"]["mean"] == 1.0
    p = r["ensemble"].predict_proba(x)
    assert p[0, y[0]] == pytest.approx(0.5) and p[3, y[3]] == pytest.approx(1.0)   # "ok" is wrong on 0..2
    best = ensemble.grid_search_cv({"ok": make(3), "good": make(0)}, x, y, k=3, top_k=1)
    assert best["ensemble"].accuracy(x, y) == 1.0


def test_bagging_bootstrap_samples():
    x, y = _indexed(40)
    got = []

    def train_fn(xs, ys, seed):
        got.append(xs[:, 0].astype(int))
        assert np.array_equal(ys, y[xs[:, 0].astype(int)])
        return Lookup(y, 3)

    ens = ensemble.bagging(train_fn, x, y, n_estimators=4, seed=2)
    assert len(ens) == 4
    for idx, b in zip(got, ens.bootstrap):
        assert np.array_equal(idx, b) and len(b) == 40
        assert len(np.unique(b)) < 40                           # drawn with replacement
    again = ensemble.bagging(lambda xs, ys, s: Lookup(y, 3), x, y, n_estimators=4, seed=2)
    assert all(np.array_equal(a, b) for a, b in zip(ens.bootstrap, again.bootstrap))


def test_samme_weights_and_votes():
    n, K = 60, 3
    x, y = _indexed(n, K)
    wrong_sets = [np.arange(0, 12), np.arange(12, 24), np.arange(24, 36)]
    resamples = []

    def train_fn(xs, ys, seed):
        m = len(resamples)
        resamples.append(xs[:, 0].astype(int))
        labels = y.copy()
        labels[wrong_sets[m]] = (labels[wrong_sets[m]] + 1) % K
        return Lookup(labels, K)

    ens = ensemble.samme(train_fn, x, y, n_estimators=3, seed=0)
    err1 = 12 / 60
    assert ens.errors[0] == pytest.approx(err1)
    assert ens.alphas[0] == pytest.approx(math.log((1 - err1) / err1) + math.log(K - 1))
    # round 2: the 12 misclassified samples weigh exp(alpha) more, the rest renormalized
    w = np.ones(n)
    w[wrong_sets[0]] *= math.exp(ens.alphas[0])
    w /= w.sum()
    assert ens.errors[1] == pytest.approx(w[wrong_sets[1]].sum())
    # the resample of round 2 favours the samples round 1 got wrong
    assert np.isin(resamples[1], wrong_sets[0]).mean() > 0.35
    # every sample is wrong in at most one of three learners: the weighted vote is always right
    assert ens.accuracy(x, y) == 1.0


def test_samme_stops_on_perfect_and_on_chance():
    x, y = _indexed(30)
    ens = ensemble.samme(lambda xs, ys, s: Lookup(y, 3), x, y, n_estimators=5)
    assert len(ens) == 1 and ens.errors == [0.0]
    ens = ensemble.samme(lambda xs, ys, s: Lookup((y + 1) % 3, 3), x, y, n_estimators=5)
    assert len(ens) == 1 and ens.errors[0] == 1.0


def test_ensemble_of_cnns_end_to_end():
    from deepkern import data, models, optim, train
    (x, y), _, (xt, yt) = data.digits_splits(val_size=0.0, seed=0)
    x, y = x[:300], y[:300]
    std = data.Standardizer().fit(x)
    x, xt = std.transform(x), std.transform(xt)

    def train_fn(xs, ys, seed):
        deepkern.manual_seed(seed)
        m = models.digits_cnn(channels=(4, 8))
        t = train.Trainer(m, optim.Adam(m.parameters(), lr=1e-2), batch_size=32, seed=seed, progress=False)
        t.fit(xs, ys, epochs=6)
        return t

    ens = ensemble.bagging(train_fn, x, y, n_estimators=2, seed=0)
    acc = ens.accuracy(xt, yt)
    assert acc > 0.5
    members = [m.accuracy(xt, yt) for m in ens.members]
    assert acc >= min(members) - 0.05
