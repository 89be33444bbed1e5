"""DistributedSampler and a per-rank loader: each rank a disjoint, seeded shard of every epoch.

The epoch's order is the one a single-process ``DataLoader(shuffle=True, seed=s)`` draws,
``permutation(N)`` from (s, epoch); rank r takes every R-th index of it, starting at r::

    order    = [ 7  2  9  0  4  1  8  3  6  5 ]       (epoch e, seed s)
    rank 0   =   7     9     4     8     6            order[0::2]
    rank 1   =      2     0     1     3     5         order[1::2]

so the ranks' j-th batches of b samples together hold exactly order[j*b*R : (j+1)*b*R], the
single process's j-th batch at batch size b*R: R ranks at per-rank batch b see the same global
batches as one process at batch b*R (what the equivalence tests rely on). When R does not
divide N the order is padded with its own first indices (every rank gets ceil(N/R) samples and
at most R-1 samples appear twice; PyTorch pads the same way), or with ``drop_last`` cut to a
multiple of R (disjoint shards, at most R-1 samples unused this epoch).
"""

from __future__ import annotations

import numpy as np

from ..data.loader import _int
from ._comm import group

__all__ = ["DistributedSampler", "DistributedLoader"]


class DistributedSampler:
    """The indices of one rank's shard of each epoch.

    n: the data set's size; num_replicas, rank: default the group's; shuffle: a permutation
    from (seed, epoch) (the DataLoader's), else 0..n-1; drop_last: see the module docstring.
    ``set_epoch(e)`` before iterating (the Trainer's loader does it).
    """

    def __init__(self, n, num_replicas=None, rank=None, shuffle=True, seed=0, drop_last=False):
        self.n = _int(n, "n", 1)
        g = group() if num_replicas is None or rank is None else None
        self.num_replicas = _int(g.size if num_replicas is None else num_replicas, "num_replicas", 1)
        self.rank = _int(g.rank if rank is None else rank, "rank", 0)
        if self.rank >= self.num_replicas:
            raise ValueError(f"rank {self.rank} out of range for {self.num_replicas} replicas")
        self.shuffle = bool(shuffle)
        self.seed = _int(seed, "seed", 0)
        self.drop_last = bool(drop_last)
        if self.drop_last and self.n < self.num_replicas:
            raise ValueError(f"drop_last with {self.n} samples and {self.num_replicas} ranks leaves nothing")
        self.epoch = 0

    def __len__(self):
        R = self.num_replicas
        return self.n // R if self.drop_last else -(-self.n // R)

    def set_epoch(self, epoch):
        self.epoch = _int(epoch, "epoch", 0)

    def indices(self, epoch=None):
        """This rank's indices of ``epoch`` (default: the current one), an int64 array."""
        epoch = self.epoch if epoch is None else _int(epoch, "epoch", 0)
        order = (np.random.default_rng([self.seed, epoch, 0]).permutation(self.n) if self.shuffle
                 else np.arange(self.n))
        R, per = self.num_replicas, len(self)
        total = per * R
        if total > self.n:                      # pad with the order's first indices (wrapping)
            order = np.concatenate([order, np.resize(order, total - self.n)])
        return order[:total][self.rank::R].astype(np.int64)

    def __iter__(self):
        return iter(self.indices().tolist())


class DistributedLoader:
    """(x_batch, y_batch) of this rank's shard, ``batch_size`` per rank (the DataLoader's
    interface: ``len``, ``set_epoch``, iteration). Augmentation draws from (seed, epoch, rank).

    Every rank runs the same number of steps (equal shards), so no rank waits in a gradient
    allreduce that another rank never starts.
    """

    def __init__(self, x, y, batch_size, seed=0, transform=None, num_replicas=None, rank=None, drop_last=False,
                 shuffle=True):
        if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray) or len(x) != len(y):
            raise ValueError("DistributedLoader: x and y must be numpy arrays of the same length")
        self.x, self.y = np.ascontiguousarray(x), y
        self.batch_size = _int(batch_size, "batch_size", 1)
        self.sampler = DistributedSampler(len(x), num_replicas, rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable, got {type(transform).__name__}")
        self.transform = transform
        self.epoch = 0

    def __len__(self):
        return -(-len(self.sampler) // self.batch_size)

    def set_epoch(self, epoch):
        self.epoch = _int(epoch, "epoch", 0)

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1
        idx = self.sampler.indices(epoch)
        s = self.sampler
        aug = (np.random.default_rng([s.seed, epoch, 1, s.rank]) if self.transform is not None else None)
        for start in range(0, len(idx), self.batch_size):
            sel = idx[start:start + self.batch_size]
            xb, yb = self.x[sel], self.y[sel]
            if aug is not None:
                xb = self.transform(xb, aug)
            yield xb, yb
