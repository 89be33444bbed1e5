"""The bridge to the fused C++ kernels of ``_C`` (csrc/cpu/optim.h).

A step hands the kernel, per dtype, four parallel lists (params, grads, state arrays, EMA
averages) and one row of float64 scalars per tensor. The row layout is defined once, in
C++ (``DK_*_HYPER`` in optim.h); ``_C.optim_hyper_names`` exports it and rows are built here
by name, so the two sides cannot drift apart.
"""

from __future__ import annotations

import numpy as np

from .. import _C

KINDS: dict[str, int] = dict(_C.OPTIM_KINDS)
ROW_NAMES: dict[str, tuple[str, ...]] = {k: tuple(_C.optim_hyper_names(v)) for k, v in KINDS.items()}


def row(kind: str, values: dict) -> tuple[float, ...]:
    """One row of `kind` from named values (names not given are 0)."""
    return tuple(float(values.get(name, 0.0)) for name in ROW_NAMES[kind])


def rows_to_matrix(kind: str, rows) -> np.ndarray:
    """(len(rows), H) float64 matrix; rows are tuples from row() or dicts of named values."""
    rows = [r if isinstance(r, tuple) else row(kind, r) for r in rows]
    return np.array(rows, dtype=np.float64).reshape(len(rows), len(ROW_NAMES[kind]))


def optim_step(kind: str, params, grads, states, emas, rows) -> None:
    """One fused step over the tensors of the lists (all of one dtype), one row each."""
    _C.optim_step(KINDS[kind], params, grads, states, emas, rows_to_matrix(kind, rows))


def ema_update(avgs, xs, decay: float) -> None:
    _C.ema_update(list(avgs), list(xs), float(decay))


def multi_scale(xs, scale: float) -> None:
    _C.multi_scale(list(xs), float(scale))


def multi_norm_reduce(xs, p: float) -> float:
    return float(_C.multi_norm_reduce(list(xs), float(p)))


# ---- CUDA arrays: the same calls on csrc/cuda/optim.cu (one launch per up to 36 tensors),
# through deepkern._cuda_backend (RuntimeError naming the reason when the backend is missing).

def _cuda():
    from .._arrays import require_cuda

    return require_cuda()


def optim_step_cuda(kind: str, params, grads, states, emas, rows) -> None:
    _cuda().optim_step(KINDS[kind], params, grads, states, emas, rows_to_matrix(kind, rows))


def ema_update_cuda(avgs, xs, decay: float) -> None:
    _cuda().ema_update(list(avgs), list(xs), float(decay))


def multi_copy_cuda(dsts, srcs) -> None:
    _cuda().multi_copy(list(dsts), list(srcs))
