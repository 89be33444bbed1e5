"""DistributedTrainer: deepkern.train.Trainer on R ranks, one shard of every batch each.

What changes from the single-process loop (everything else -- schedules, EMA, clipping, early
stopping, checkpoints -- runs unchanged on every rank, and stays identical on every rank
because every rank steps with the same averaged gradient):

- the model is wrapped in DistributedDataParallel (parameters broadcast from rank 0, gradients
  averaged during backward), optionally with SyncBatchNorm;
- ``batch_size`` is the *global* batch: each rank takes batch_size / R samples of its shard
  (DistributedLoader), so the same options train the same model as one process would;
- dropout draws from a stream seeded by (seed, epoch, rank): the ranks' masks differ, as the
  masks of different samples in one process do;
- the epoch's training loss and accuracy, and evaluate()'s, are summed over the ranks (each
  rank evaluates 1/R of the data);
- the BatchNorm running statistics used for evaluation are rank 0's, broadcast before each
  evaluation (not at every step, as PyTorch's DDP does: one collective per step saved);
- only rank 0 writes checkpoints, shows the progress bar and logs.
"""

from __future__ import annotations

import numpy as np

from ..train.loop import Trainer, _check_xy
from ._comm import init
from .collectives import all_reduce_sum
from .ddp import DistributedDataParallel
from .sampler import DistributedLoader
from .sync_bn import convert_sync_batchnorm

__all__ = ["DistributedTrainer"]


class DistributedTrainer(Trainer):
    """Trainer for data-parallel training under mpirun (see the module docstring).

    Takes Trainer's arguments (``batch_size`` global, divisible by the number of ranks) plus:
      sync_bn     replace the model's BatchNorm layers by SyncBatchNorm (statistics over the
                  global batch: then R ranks train exactly the single-process model)
      bucket_mb   DistributedDataParallel's bucket size cap (MiB)
      group       the process group (default: deepkern.distributed.init())
    ``model`` may also be a DistributedDataParallel already. ``self.model`` is the wrapper;
    ``self.module`` the wrapped model. With one rank it trains as Trainer does.
    """

    def __init__(self, model, optimizer, criterion=None, *, sync_bn=False, bucket_mb=1.0, group=None,
                 progress=True, log=None, **kwargs):
        g = group if group is not None else init()
        if isinstance(model, DistributedDataParallel):
            ddp = model
        else:
            if sync_bn:
                model = convert_sync_batchnorm(model, g)
            # buffers: one broadcast before each evaluation instead of one every step
            ddp = DistributedDataParallel(model, bucket_mb=bucket_mb, group=g, broadcast_buffers=False)
        self.group = g
        super().__init__(ddp, optimizer, criterion, progress=progress and g.rank == 0,
                         log=log if g.rank == 0 else None, **kwargs)
        if self.batch_size != "full" and self.batch_size % g.size:
            raise ValueError(f"batch_size {self.batch_size} (the global batch) must be a multiple of the "
                             f"{g.size} ranks")

    @property
    def module(self):
        return self.model.module

    # ------------------------------------------------------------------ Trainer hooks

    def _loader(self, x, y, batch_size):
        g = self.group
        per_rank = -(-len(x) // g.size) if self.batch_size == "full" else batch_size // g.size
        return DistributedLoader(x, y, per_rank, seed=self.seed, transform=self.transform,
                                 num_replicas=g.size, rank=g.rank)

    def _stream_seed(self, epoch):
        if self.group.size == 1:
            return super()._stream_seed(epoch)
        return int(np.random.default_rng([self.seed, epoch, 2, self.group.rank]).integers(0, 2**63 - 1))

    def _epoch_totals(self, loss_sum, correct, seen):
        s = all_reduce_sum([loss_sum, correct, seen], self.group, "the epoch's training metrics")
        return float(s[0]), int(round(s[1])), int(round(s[2]))

    # ------------------------------------------------------------------ rank 0 writes

    def save_checkpoint(self, path, extra=None):
        """Rank 0 writes the checkpoint (every rank holds the same weights and optimizer state;
        the BatchNorm statistics saved are rank 0's, the ones evaluation uses)."""
        if self.group.rank == 0:
            super().save_checkpoint(path, extra)

    # ------------------------------------------------------------------ evaluation over the ranks

    def evaluate(self, x, y):
        """(mean loss, accuracy) over all of (x, y): each rank evaluates a contiguous 1/R of
        it and the sums are reduced, so every rank returns the same numbers."""
        _check_xy(x, y, "evaluate")
        g = self.group
        if g.size == 1:
            return super().evaluate(x, y)
        self.model.sync_buffers()                 # rank 0's BatchNorm statistics everywhere
        bounds = np.linspace(0, len(x), g.size + 1).astype(np.int64)
        lo, hi = int(bounds[g.rank]), int(bounds[g.rank + 1])
        loss_sum = correct = 0.0
        if hi > lo:
            with self.ema_weights():
                logits = self._logits(x[lo:hi])
            loss_sum = float(self.criterion(logits, y[lo:hi])) * (hi - lo)
            correct = float(np.count_nonzero(logits.argmax(axis=1) == y[lo:hi]))
        s = all_reduce_sum([loss_sum, correct], g, "evaluate's metrics")
        return float(s[0] / len(x)), float(s[1] / len(x))
