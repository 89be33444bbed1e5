"""Gradient allreduce for CUDA arrays: NCCL through CuPy when it is there, else MPI via the host.

NOT RUN: this machine has no GPU. The code is compiled (imported) and linted in CI and follows
CuPy's documented ``cupy.cuda.nccl.NcclCommunicator`` interface; it has never executed on a
GPU. The MPI fallback stages each bucket through a host copy (no CUDA-aware MPI is assumed).

NCCL's communicator needs a unique id that every rank shares: rank 0 draws it
(``nccl.get_unique_id()``) and MPI broadcasts it, so MPI still bootstraps the job. NCCL
collectives are enqueued on a CUDA stream and are asynchronous from the host's point of
view, so the overlap with backward comes from the GPU's own queue: each bucket's allreduce
is enqueued on a side stream after an event recorded on the compute stream once its
gradients are final, and ``wait`` makes the compute stream wait for the side stream.
"""

from __future__ import annotations

import numpy as np

__all__ = ["cuda_reducer", "NcclReducer", "HostStagedReducer"]


def cuda_reducer(g):
    """The reducer DistributedDataParallel uses for CUDA parameters on group g."""
    try:
        import cupy
        from cupy.cuda import nccl
    except ImportError:                       # no CuPy NCCL bindings: MPI through host copies
        return HostStagedReducer(g)
    if g.size == 1:
        return HostStagedReducer(g)
    return NcclReducer(g, cupy, nccl)


class HostStagedReducer:
    """MPI allreduce of CUDA buckets through host copies (correct everywhere, not fast)."""

    def __init__(self, g):
        self.g = g
        self._host = {}

    def broadcast_module(self, module):
        from .collectives import check_same_model
        entries = [(k, v) for k, v in module.state_dict().items()]
        check_same_model(entries, "model", self.g)
        for _, v in entries:
            host = np.ascontiguousarray(v.get())
            self.g.bcast_(host, 0, "broadcast_parameters (CUDA, through the host)")
            v.set(host)

    def iallreduce_(self, flat):
        host = np.ascontiguousarray(flat.get())
        self._host[id(flat)] = (flat, host)
        return self.g.iallreduce_(host)

    def progress(self, requests):
        return self.g.progress(requests)

    def wait(self, requests, what):
        self.g.wait(requests, what)
        for flat, host in self._host.values():
            flat.set(host)
        self._host.clear()

    def finish(self, buckets):
        pass


class NcclReducer:
    """NCCL allreduce of CUDA buckets on a side stream (CuPy's nccl module)."""

    def __init__(self, g, cupy, nccl):
        self.g, self.cupy, self.nccl = g, cupy, nccl
        # get_unique_id() returns a tuple of 128 ints in CuPy (NCCL's ncclUniqueId bytes, signed)
        uid = np.zeros(128, np.int64)
        if g.rank == 0:
            uid[:] = nccl.get_unique_id()
        g.bcast_(uid, 0, "NCCL unique id")
        self.comm = nccl.NcclCommunicator(g.size, tuple(int(b) for b in uid), g.rank)
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self._types = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}

    def broadcast_module(self, module):
        from .collectives import check_same_model
        entries = list(module.state_dict().items())
        check_same_model(entries, "model", self.g)
        cur = self.cupy.cuda.get_current_stream()
        for _, v in entries:
            dtype = self._types.get(np.dtype(v.dtype), self.nccl.NCCL_UINT8)
            count = v.size if dtype != self.nccl.NCCL_UINT8 else v.nbytes
            self.comm.bcast(v.data.ptr, count, dtype, 0, cur.ptr)
        cur.synchronize()

    def iallreduce_(self, flat):
        # the gradients were written on the compute stream: the side stream waits for them
        ev = self.cupy.cuda.get_current_stream().record()
        self.stream.wait_event(ev)
        self.comm.allReduce(flat.data.ptr, flat.data.ptr, flat.size, self._types[np.dtype(flat.dtype)],
                            self.nccl.NCCL_SUM, self.stream.ptr)
        return None                            # completion is a stream event, not an MPI request

    def progress(self, requests):
        return True

    def wait(self, requests, what):
        self.cupy.cuda.get_current_stream().wait_event(self.stream.record())

    def finish(self, buckets):
        pass
