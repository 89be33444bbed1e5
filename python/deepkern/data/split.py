"""Seeded, stratified splits of a data set into parts (train / validation / test).

A held-out test set is only honest if it is fixed before anything is tuned: these functions
are pure functions of (labels, sizes, seed), so the same seed gives the same split on any
machine and NumPy version (they use ``numpy.random.default_rng(seed)``'s permutation, whose
stream NumPy keeps stable).
"""

from __future__ import annotations

import numbers

import numpy as np

__all__ = ["split_indices", "train_test_split"]


def _fraction(v, name):
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a fraction (a float in [0, 1)), got {type(v).__name__}")
    v = float(v)
    if not 0.0 <= v < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {v}")
    return v


def _seed(seed):
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    return int(seed)


def _largest_remainder(counts, fraction, total, rng):
    """How many of each class go into a part of `total` items: floor(count * fraction) each,
    then one more for the classes with the largest remainders (ties in seeded random order)."""
    exact = counts * fraction
    take = np.floor(exact).astype(np.int64)
    short = int(total - take.sum())
    if short > 0:
        rem = exact - take
        tiebreak = rng.random(len(counts))
        order = np.lexsort((tiebreak, -rem))                # largest remainder first
        take[order[:short]] += 1
    return np.minimum(take, counts)


def split_indices(y, sizes, seed=0, stratify=True):
    """Split range(len(y)) into len(sizes) + 1 index arrays: the rest, then one per size.

    y: (N,) labels (used when stratify=True, so that each part has the classes in the same
    proportions, up to rounding). sizes: fractions of N for the held-out parts; each part
    gets round(fraction * N) items. Every index is in exactly one part; each part is sorted.
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y.shape}")
    sizes = [_fraction(s, "size") for s in sizes]
    if sum(sizes) >= 1.0:
        raise ValueError(f"the held-out sizes {sizes} leave nothing for the rest")
    rng = np.random.default_rng(_seed(seed))
    N = len(y)
    totals = [int(round(s * N)) for s in sizes]
    if not stratify:
        perm = rng.permutation(N)
        parts, start = [], 0
        for t in totals:
            parts.append(np.sort(perm[start:start + t]))
            start += t
        return [np.sort(perm[start:])] + parts
    classes, inverse = np.unique(y, return_inverse=True)
    pools = [rng.permutation(np.flatnonzero(inverse == c)) for c in range(len(classes))]
    remaining = np.array([len(p) for p in pools], dtype=np.int64)
    used = np.zeros(len(classes), dtype=np.int64)
    parts = []
    for s, t in zip(sizes, totals):
        # fraction of what is left, so that each part is s * N of the original
        frac = t / remaining.sum() if remaining.sum() else 0.0
        take = _largest_remainder(remaining, frac, min(t, int(remaining.sum())), rng)
        parts.append(np.sort(np.concatenate([p[u:u + k] for p, u, k in zip(pools, used, take)])
                             if len(pools) else np.empty(0, np.int64)))
        used += take
        remaining -= take
    rest = np.concatenate([p[u:] for p, u in zip(pools, used)]) if len(pools) else np.empty(0, np.int64)
    return [np.sort(rest)] + parts


def train_test_split(x, y, test_size=0.2, seed=0, stratify=True):
    """(x_train, x_test, y_train, y_test), scikit-learn's order; a seeded stratified split.

    test_size: the fraction of the N items held out (round(test_size * N) of them).
    """
    if len(x) != len(y):
        raise ValueError(f"x and y have different lengths: {len(x)} and {len(y)}")
    train, test = split_indices(y, [test_size], seed=seed, stratify=stratify)
    return x[train], x[test], y[train], y[test]
