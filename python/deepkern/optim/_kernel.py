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


def rows_to_matrix(kind: str, rows: list[dict]) -> np.ndarray:
    """(len(rows), H) float64 matrix of the named scalars (missing names are 0)."""
    names = ROW_NAMES[kind]
    h = np.zeros((len(rows), len(names)), dtype=np.float64)
    for i, row in enumerate(rows):
        for j, name in enumerate(names):
            v = row.get(name)
            if v is not None:
                h[i, j] = float(v)
    return h


def optim_step(kind: str, params, grads, states, emas, rows) -> None:
    """One fused step over the tensors of the lists (all of one dtype)."""
    _C.optim_step(KINDS[kind], params, grads, states, emas, rows_to_matrix(kind, rows))


def ema_update(avgs, xs, decay: float) -> None:
    _C.ema_update(list(avgs), list(xs), float(decay))


def multi_scale(xs, scale: float) -> None:
    _C.multi_scale(list(xs), float(scale))


def multi_norm_reduce(xs, p: float) -> float:
    return float(_C.multi_norm_reduce(list(xs), float(p)))
