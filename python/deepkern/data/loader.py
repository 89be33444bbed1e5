"""DataLoader: mini-batches of (x, y) arrays, optionally shuffled and augmented.

batch_size = 1 is stochastic gradient descent, batch_size = len(x) full-batch gradient
descent, and anything between mini-batch SGD. The order of epoch e is a pure function of
(seed, e): a run resumed at epoch e (``set_epoch(e)``) sees the same batches as one that
never stopped.
"""

from __future__ import annotations

import numbers

import numpy as np

__all__ = ["DataLoader"]


def _int(v, name, minimum):
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return int(v)


class DataLoader:
    """Iterate over (x_batch, y_batch) pairs of a data set held in arrays.

    x: (N, ...) array; y: (N,) array or None (then batches are x_batch alone).
    batch_size: items per batch (>= 1; larger than N gives one batch). shuffle: a new order
    each epoch, drawn from (seed, epoch); seed None draws one from deepkern's stream (so
    ``deepkern.manual_seed`` makes it reproducible). drop_last: skip a last incomplete batch.
    transform: a callable ``transform(x_batch, rng)`` applied to each x batch (augmentation,
    see ``deepkern.data.augment``), with a generator also derived from (seed, epoch).

    Batches are copies when shuffling or transforming, and views of x otherwise; x is never
    modified.
    """

    def __init__(self, x, y=None, batch_size=64, shuffle=False, seed=None, drop_last=False, transform=None):
        if not isinstance(x, np.ndarray):
            raise TypeError(f"x must be a numpy.ndarray, got {type(x).__name__}")
        if x.ndim == 0:
            raise ValueError("x must have a first (batch) dimension")
        if y is not None:
            if not isinstance(y, np.ndarray):
                raise TypeError(f"y must be a numpy.ndarray or None, got {type(y).__name__}")
            if y.ndim == 0 or len(y) != len(x):
                raise ValueError(f"x and y must have the same length, got {len(x)} and "
                                 f"{len(y) if y.ndim else 'a 0-d y'}")
        self.x = np.ascontiguousarray(x)
        self.y = y
        self.batch_size = _int(batch_size, "batch_size", 1)
        if not isinstance(shuffle, (bool, np.bool_)) or not isinstance(drop_last, (bool, np.bool_)):
            raise TypeError("shuffle and drop_last must be bools")
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable, got {type(transform).__name__}")
        self.transform = transform
        if seed is None:
            from .. import _next_seed
            seed = _next_seed()
        self.seed = _int(seed, "seed", 0)
        self.epoch = 0

    def __len__(self):
        n, b = len(self.x), self.batch_size
        return n // b if self.drop_last else (n + b - 1) // b

    def set_epoch(self, epoch):
        """Make the next iteration epoch ``epoch`` (its order and augmentation)."""
        self.epoch = _int(epoch, "epoch", 0)

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1
        n, b = len(self.x), self.batch_size
        order = np.random.default_rng([self.seed, epoch, 0]).permutation(n) if self.shuffle else None
        aug_rng = np.random.default_rng([self.seed, epoch, 1]) if self.transform is not None else None
        stop = n - n % b if self.drop_last else n
        for start in range(0, stop, b):
            end = min(start + b, n)
            if order is None:
                xb = self.x[start:end]
                yb = None if self.y is None else self.y[start:end]
            else:
                idx = order[start:end]
                xb = self.x[idx]
                yb = None if self.y is None else self.y[idx]
            if aug_rng is not None:
                xb = self.transform(xb, aug_rng)
            yield xb if self.y is None else (xb, yb)
