"""Running a function on every rank so that one rank's error ends the whole job.

MPI's failure mode is the hang: rank 1 raises, rank 0 waits forever in the next allreduce.
``run(fn)`` turns that into an error on every rank:

    rank 1: raises ValueError       -> prints "[rank 1] ValueError: ..." with its traceback,
                                       sends an error notice to every other rank, waits a
                                       moment for them to acknowledge, then MPI_Abort
    rank 0: waiting in a collective -> the wait sees the notice and raises RemoteError
                                       ("rank 1 raised ValueError: ..."), prints it, aborts

A rank that is not in a collective (stuck in a long computation, or dead) is ended by the
abort (mpirun kills every rank of the job); a rank that waits for one that never comes gives
up after the group's timeout (DistributedTimeout) and ends the job the same way.
"""

from __future__ import annotations

import sys
import traceback

from ._comm import DistributedTimeout, RemoteError, format_exception, group

__all__ = ["run"]


def run(fn, *args, **kwargs):
    """fn(*args, **kwargs) on this rank; on an exception (on this rank or another), print it
    and end every rank of the job with exit status 1. Returns fn's result otherwise."""
    g = group()
    try:
        return fn(*args, **kwargs)
    except SystemExit as e:
        if g.size == 1 or e.code in (0, None):
            raise
        _fail(g, f"SystemExit({e.code})", None)
    except BaseException as e:              # KeyboardInterrupt too: the other ranks must stop
        if g.size == 1:
            raise
        _fail(g, format_exception(e), e)


def _fail(g, message, exc):
    if isinstance(exc, RemoteError):
        print(f"deepkern: error: [rank {g.rank}] stopping: {message}", file=sys.stderr)
    else:
        if exc is not None and not isinstance(exc, (KeyboardInterrupt, DistributedTimeout)):
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        print(f"deepkern: error: [rank {g.rank}] {message}", file=sys.stderr)
        g.notify_error(message)
    g.abort(1)
