"""deepkern: hand-written C++/OpenMP (and optional CUDA) kernels for training CNNs.

    import deepkern as dk
    y = dk.functional.conv2d(x, w, b, padding=1)      # runs on the C++ CPU backend
    with dk.use_backend("numpy"):                     # ...or on the NumPy reference
        y_ref = dk.functional.conv2d(x, w, b, padding=1)

See ``deepkern.functional`` for the ops, ``deepkern.reference`` for their math in NumPy, and
``deepkern info`` for what this build and this CPU can do.
"""

from __future__ import annotations

import os
import threading

import numpy as np

from . import _C
from ._backend import backends, use_backend

__version__ = _C.build_info()["version"]

__all__ = [
    "__version__", "backends", "use_backend", "set_num_threads", "get_num_threads",
    "manual_seed", "build_info", "functional", "reference",
]

# ---- random streams: manual_seed seeds dropout's seed stream and the initializers

_rng_lock = threading.Lock()
_rng = np.random.default_rng()


def manual_seed(seed: int) -> None:
    """Seed deepkern's random stream (dropout seeds drawn with seed=None, initializers)."""
    global _rng
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not 0 <= int(seed) < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    with _rng_lock:
        _rng = np.random.default_rng(int(seed))


def _next_seed() -> int:
    """The next 63-bit seed of the stream manual_seed sets."""
    with _rng_lock:
        return int(_rng.integers(0, 2**63 - 1, dtype=np.int64))


def _generator() -> np.random.Generator:
    """A fresh generator drawn from the stream (for initializers and data shuffling)."""
    return np.random.default_rng(_next_seed())


# ---- threads and build facts

def set_num_threads(n: int) -> None:
    """Set the number of CPU threads every kernel uses (default: OpenMP's, OMP_NUM_THREADS).

    A process forked from one that used deepkern starts with 1 thread (see _after_fork_in_child:
    with GNU OpenMP, more threads there would hang).
    """
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"set_num_threads: n must be an int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    _C.set_num_threads(int(n))


def get_num_threads() -> int:
    """The number of CPU threads the kernels use."""
    return _C.get_num_threads()


# fork: GNU libgomp cannot run a parallel region in a child forked after the parent ran one
# (the child waits forever for the parent's worker threads, which fork did not copy; LightGBM
# #4751, pytorch #17199). So a forked child starts with one thread: its kernels never enter
# OpenMP and cannot hang. Raising it again with set_num_threads in such a child hangs with
# libgomp: use the "spawn" or "forkserver" start method of multiprocessing (or
# OMP_NUM_THREADS=1) for worker processes that need threads.
def _after_fork_in_child() -> None:
    _C.set_num_threads(1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def build_info() -> dict:
    """Facts about this build and this machine.

    Keys: version, compiler, openmp (bool), num_threads, simd (the level in use: "avx512",
    "avx2" or "scalar"), cuda (None, or a dict with version and archs), plus cpu (model name),
    cpu_avx2/cpu_avx512, l1d/l2/l3_bytes and simd_variants (what this build compiled).
    """
    info = dict(_C.build_info())
    from ._backend import _load_cuda, cuda_unavailable_reason
    mod = _load_cuda()
    info["cuda"] = mod.build_info() if mod is not None else None
    if mod is None:
        info["cuda_unavailable"] = cuda_unavailable_reason()
    return info


from . import functional, reference  # noqa: E402  (after the helpers they import)
