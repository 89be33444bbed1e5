"""``deepkern train --distributed``: the train command on every rank of an mpirun job.

    mpirun -n 2 deepkern train --distributed

Every rank runs the single-process command (deepkern.train.commands) with a
DistributedTrainer: the same options, defaults and output, ``--batch-size`` being the global
batch (each rank takes its R-th). Rank 0 prints and writes files; the other ranks' standard
output is discarded (their errors still reach standard error). Each rank uses
cores / ranks-on-this-machine threads unless --threads or OMP_NUM_THREADS says otherwise.
"""

from __future__ import annotations

import os
import sys

from .launch import run

__all__ = ["run_train", "add_arguments"]


def add_arguments(parser):
    """The --distributed options of ``deepkern train``."""
    g = parser.add_argument_group("distributed (under mpirun -n N; needs pip install 'deepkern[mpi]')")
    g.add_argument("--distributed", action="store_true",
                   help="data-parallel training over the ranks of an mpirun job (--batch-size is the global batch)")
    g.add_argument("--sync-bn", action="store_true",
                   help="with --distributed: BatchNorm statistics over the global batch (SyncBatchNorm)")
    g.add_argument("--bucket-mb", type=float, default=1.0, metavar="MB",
                   help="with --distributed: gradient bucket size in MiB (default 1)")


def _local_ranks(comm):
    from mpi4py import MPI
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    n = local.Get_size()
    local.Free()
    return n


def run_train(args, train):
    """Run ``train(args)`` (the single-process command body) as one rank of the job."""
    from . import _comm
    try:
        g = _comm.init(require_mpi=True)
    except RuntimeError as e:                   # no mpi4py: say how to get it
        print(f"deepkern: error: --distributed: {e}", file=sys.stderr)
        return 2
    if not args.threads and "OMP_NUM_THREADS" not in os.environ and g.comm is not None:
        args.threads = max(1, (os.cpu_count() or 1) // _local_ranks(g.comm))
    if g.rank != 0:
        sys.stdout = open(os.devnull, "w")
        args.plot = None
    if args.batch_size != "full" and args.batch_size % g.size:
        # every rank reaches this line: the job ends with the message, never a hang
        print(f"deepkern: error: --batch-size {args.batch_size} (the global batch) must be a multiple of the "
              f"{g.size} ranks", file=sys.stderr)
        return 2
    if g.rank == 0:
        from mpi4py import MPI
        per = "full" if args.batch_size == "full" else args.batch_size // g.size
        print(f"distributed: {g.size} ranks ({MPI.Get_library_version().splitlines()[0].strip()}), global batch "
              f"{args.batch_size} = {per} per rank x {g.size}" + (", SyncBatchNorm" if args.sync_bn else ""))
    return run(train, args)
