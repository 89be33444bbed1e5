"""deepkern.nn.functional: the loss and the softmax, as plain functions.

``cross_entropy`` computes PyTorch's ``torch.nn.functional.cross_entropy`` (class indices or
class probabilities as targets, class ``weight``, ``ignore_index``, ``label_smoothing``, and
the three reductions); ``cross_entropy_backward`` is its gradient with respect to the logits.
``CrossEntropyLoss`` (deepkern.nn) is a thin layer over these two.

The math, with logits z (N, C), p = softmax(z), log p = log_softmax(z):

    log p[n, c] = (z[n, c] - m[n]) - log(sum_k exp(z[n, k] - m[n])),   m[n] = max_k z[n, k]

Subtracting the row maximum m[n] changes nothing mathematically (it cancels) but keeps every
exp() in (0, 1]: no overflow for large logits, no log(0) for very negative ones.

Every target row becomes a distribution a[n, :] over the classes (times the class weights):

    class index y[n]:   a[n, c] = (1 - eps) * w[y[n]] * [c == y[n]] + eps / C * w[c]
    probabilities t:    a[n, c] = ((1 - eps) * t[n, c] + eps / C) * w[c]
    ignored rows:       a[n, :] = 0

    loss[n] = -sum_c a[n, c] * log p[n, c]
    'mean':  sum_n loss[n] / D,  D = sum of w[y[n]] over the rows not ignored
             (class indices: PyTorch normalizes by the target weights), or N (probabilities)
    'sum':   sum_n loss[n]

and because d log p[n, c] / d z[n, k] = [c == k] - p[n, k]:

    d loss[n] / d z[n, k] = p[n, k] * sum_c a[n, c] - a[n, k]

which is the familiar "softmax minus one-hot" when eps = 0 and there are no weights.
"""

from __future__ import annotations

import numbers

import numpy as np

from .. import _C, _backend
from .. import _validate as V
from ._array import array_module

__all__ = ["log_softmax", "softmax", "cross_entropy", "cross_entropy_backward"]

_REDUCTIONS = ("mean", "sum", "none")


def log_softmax(x, axis=-1):
    """log(softmax(x)) along ``axis``, computed stably (the row maximum is subtracted first)."""
    V.float_array(x, "x")
    xp = array_module(x)
    s = x - x.max(axis=axis, keepdims=True)
    return s - xp.log(xp.exp(s).sum(axis=axis, keepdims=True))


def softmax(x, axis=-1):
    """exp(x) / sum(exp(x)) along ``axis``, computed stably."""
    V.float_array(x, "x")
    xp = array_module(x)
    e = xp.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _check_options(reduction, label_smoothing, ignore_index):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{reduction} is not a valid value for reduction (expected 'mean', 'sum' or 'none')")
    eps = V.as_float(label_smoothing, "label_smoothing")
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing}")
    if isinstance(ignore_index, (bool, np.bool_)) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    return eps


def _targets_matrix(logits, targets, weight, ignore_index, eps):
    """The weighted target distribution a (N, C) and the 'mean' divisor D (see the module doc).

    Validates logits (N, C) float, targets (N,) integer class indices or (N, C) probabilities
    of the logits' dtype, and weight (C,) of the logits' dtype.
    """
    V.float_array(logits, "logits")
    if logits.ndim != 2:
        raise ValueError(f"cross_entropy: expected logits of shape (N, C), got {V.shape_str(logits.shape)}")
    N, C = (int(s) for s in logits.shape)
    if C == 0:
        raise ValueError("cross_entropy: logits have no classes (C = 0)")
    dt = V.dtype_of(logits)
    xp = array_module(logits)
    V.array_kind(targets, "targets")
    tdt = V.dtype_of(targets)
    if weight is not None:
        V.float_array(weight, "weight")
        if V.dtype_of(weight) != dt:
            raise TypeError(f"cross_entropy: weight is {V.dtype_of(weight).name} but logits are {dt.name}")
        if tuple(weight.shape) != (C,):
            raise ValueError(f"cross_entropy: weight must have shape ({C},), got {V.shape_str(weight.shape)}")
        w = xp.asarray(weight)
    else:
        w = None

    if tdt.kind == "f":                                    # class probabilities
        if targets.ndim == 1:
            raise TypeError(f"cross_entropy: targets of shape (N,) must be integer class indices, got {tdt.name} "
                            "(class probabilities have the logits' shape (N, C))")
        if tdt != dt:
            raise TypeError(f"cross_entropy: probability targets are {tdt.name} but logits are {dt.name}")
        if tuple(targets.shape) != (N, C):
            raise ValueError(f"cross_entropy: probability targets must have the logits' shape "
                             f"{V.shape_str(logits.shape)}, got {V.shape_str(targets.shape)}")
        t = xp.asarray(targets)
        a = t * dt.type(1.0 - eps) + dt.type(eps / C) if eps else t.copy()
        if w is not None:
            a *= w
        return a, float(N)

    if tdt.kind not in "iu":
        raise TypeError(f"cross_entropy: targets must be integer class indices (or float probabilities), "
                        f"got {tdt.name}")
    if tuple(targets.shape) != (N,):
        raise ValueError(f"cross_entropy: expected targets of shape ({N},) for logits of shape "
                         f"{V.shape_str(logits.shape)}, got {V.shape_str(targets.shape)}")
    y = xp.asarray(targets).astype(np.int64, copy=False)
    keep = y != ignore_index
    if N:
        bad = keep & ((y < 0) | (y >= C))
        if bool(bad.any()):
            first = int(y[xp.argmax(bad)])
            raise ValueError(f"Target {first} is out of bounds (expected class indices in [0, {C}))")
    all_kept = bool(keep.all()) if N else True
    ys = y if all_kept else xp.where(keep, y, 0)
    rows = xp.arange(N)
    if w is None:
        a = xp.full((N, C), eps / C, dtype=dt)
        a[rows, ys] += dt.type(1.0 - eps)
        denom = float(N) if all_kept else float(keep.sum())
    else:
        wy = w[ys]
        a = xp.empty((N, C), dtype=dt)
        a[...] = w * dt.type(eps / C)
        a[rows, ys] += wy * dt.type(1.0 - eps)
        denom = float(wy.sum(dtype=np.float64)) if all_kept else float((wy * keep).sum(dtype=np.float64))
    if not all_kept:
        a *= keep[:, None]
    return a, denom


def _plain_indices(logits, targets, weight, reduction):
    """True for the common case that _forward_indices computes: class indices, all in
    [0, C), no class weights, a reduction to a number (two reductions to check)."""
    if weight is not None or reduction == "none" or type(logits) is not np.ndarray or type(targets) is not np.ndarray:
        return False
    if logits.dtype not in V.FLOAT_DTYPES or logits.ndim != 2 or targets.dtype.kind not in "iu":
        return False
    N, C = logits.shape
    return targets.shape == (N,) and N > 0 and C > 0 and targets.min() >= 0 and targets.max() < C


def _forward_indices(logits, y, reduction, eps):
    """The common case without the (N, C) target matrix: with s = z - max(z) per row and
    lse = log(sum(exp(s))), log p = s - lse and the target distribution sums to 1, so

        loss[n] = lse[n] - (1 - eps) * s[n, y[n]] - eps / C * sum_c s[n, c]

    and the gradient is p - (1 - eps) * onehot(y) - eps / C, times 1/N for 'mean'."""
    N, C = logits.shape
    s = logits - logits.max(axis=1, keepdims=True)                  # every exp() <= 1
    e = np.exp(s)
    se = e.sum(axis=1, keepdims=True)
    rows = np.arange(N)
    total = float(np.log(se).sum(dtype=np.float64)) - (1.0 - eps) * float(s[rows, y].sum(dtype=np.float64))
    if eps:
        total -= eps / C * float(s.sum(dtype=np.float64))
    scale = 1.0 / N if reduction == "mean" else 1.0
    return total * scale, ("indices", e, se, y, eps, scale)


def _forward_fused(logits, targets, weight, reduction, eps):
    """The cpu backend's one-pass kernel (csrc/cpu/loss.cpp) for the common case: NumPy
    logits, class indices, no class weights, 'mean' or 'sum'. It computes the loss and the
    gradient together (the formulas of _forward_indices); None when it does not apply (then
    nothing was computed and the general path below decides, errors included)."""
    if (weight is not None or reduction == "none" or type(logits) is not np.ndarray
            or type(targets) is not np.ndarray or logits.dtype not in V.FLOAT_DTYPES
            or logits.ndim != 2 or targets.dtype.kind not in "iu" or _backend.current() == "numpy"):
        return None
    N, C = logits.shape
    if targets.shape != (N,) or N == 0 or C == 0 or not logits.flags.c_contiguous or not logits.flags.aligned:
        return None
    y = np.ascontiguousarray(targets, dtype=np.int64)
    grad = np.empty_like(logits)
    scale = 1.0 / N if reduction == "mean" else 1.0
    loss = _C.cross_entropy_indices(grad, logits, y, eps, scale)
    return None if loss is None else (loss, ("grad", grad))


def _forward(logits, targets, weight, ignore_index, reduction, eps):
    """loss (float, or (N,) array for 'none') and what the backward needs."""
    fused = _forward_fused(logits, targets, weight, reduction, eps)
    if fused is not None:
        return fused
    if _plain_indices(logits, targets, weight, reduction):
        return _forward_indices(logits, targets, reduction, eps)
    a, denom = _targets_matrix(logits, targets, weight, ignore_index, eps)
    xp = array_module(logits)
    s = logits - logits.max(axis=1, keepdims=True)                  # every exp() <= 1
    e = xp.exp(s)
    se = e.sum(axis=1, keepdims=True)
    logp = s - xp.log(se)
    per_row = -(a * logp).sum(axis=1)                               # loss[n], logits' dtype
    if reduction == "none":
        return per_row, ("dense", e / se, a, None)
    total = float(per_row.sum(dtype=np.float64))
    if reduction == "sum":
        return total, ("dense", e / se, a, 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):            # every row ignored: NaN, as PyTorch
        loss = total / denom if denom else float("nan")
    return loss, ("dense", e / se, a, 1.0 / denom if denom else float("nan"))


def _backward(saved, grad_output):
    """d loss / d logits = (p * sum_c a - a) * scale * grad_output (see the module doc)."""
    if saved[0] == "grad":                                          # computed by _forward_fused
        g = saved[1]
        go = 1.0 if grad_output is None else V.as_float(grad_output, "grad_output")
        return g.copy() if go == 1.0 else g * g.dtype.type(go)    # a fresh array every call
    if saved[0] == "indices":                                       # see _forward_indices
        _, e, se, y, eps, scale = saved
        g = e / se
        if eps:
            g -= g.dtype.type(eps / g.shape[1])
        g[np.arange(len(y)), y] -= g.dtype.type(1.0 - eps)
        go = 1.0 if grad_output is None else V.as_float(grad_output, "grad_output")
        g *= g.dtype.type(scale * go)
        return g
    _, p, a, scale = saved
    xp = array_module(p)
    g = p * a.sum(axis=1, keepdims=True)
    g -= a
    if scale is None:                                               # reduction 'none'
        if grad_output is None:
            return g
        go = xp.asarray(grad_output)
        if tuple(go.shape) != (p.shape[0],):
            raise ValueError(f"cross_entropy_backward: grad_output must have shape ({p.shape[0]},) "
                             f"for reduction='none', got {V.shape_str(go.shape)}")
        return g * go.astype(p.dtype, copy=False)[:, None]
    go = 1.0 if grad_output is None else V.as_float(grad_output, "grad_output")
    g *= p.dtype.type(scale * go)
    return g


def cross_entropy(logits, targets, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """Cross-entropy of softmax(logits) against targets, as ``torch.nn.functional.cross_entropy``.

    logits: (N, C) float32 or float64. targets: (N,) integer class indices in [0, C) (or
    ``ignore_index``), or (N, C) class probabilities of the logits' dtype. weight: (C,) or
    None. Returns a Python float ('mean', 'sum') or an (N,) array ('none'). Only the (N, C)
    layout is supported (PyTorch also takes (N, C, d1, ...)).
    """
    eps = _check_options(reduction, label_smoothing, ignore_index)
    return _forward(logits, targets, weight, ignore_index, reduction, eps)[0]


def cross_entropy_backward(logits, targets, weight=None, ignore_index=-100, reduction="mean",
                           label_smoothing=0.0, grad_output=None):
    """Gradient of ``cross_entropy`` with respect to logits: (N, C), the logits' dtype.

    grad_output: the gradient of the loss (a number, default 1; an (N,) array for 'none').
    """
    eps = _check_options(reduction, label_smoothing, ignore_index)
    _, saved = _forward(logits, targets, weight, ignore_index, reduction, eps)
    return _backward(saved, grad_output)
