"""deepkern.nn.utils: gradient clipping by the global norm (torch.nn.utils.clip_grad_norm_)."""

from __future__ import annotations

import math
import numbers

import numpy as np

from .. import _C, _backend
from .. import _arrays as A
from .parameter import Parameter

__all__ = ["clip_grad_norm_", "total_norm"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _check_max_norm(max_norm):
    if isinstance(max_norm, (bool, np.bool_)) or not isinstance(max_norm, numbers.Real):
        raise TypeError(f"max_norm must be a real number, got {type(max_norm).__name__} {max_norm!r}")
    if not max_norm >= 0:
        raise ValueError(f"max_norm must be >= 0, got {max_norm}")
    return float(max_norm)


def _check_norm_type(norm_type):
    if isinstance(norm_type, str) and norm_type in ("inf", "-inf"):
        return float(norm_type)
    if isinstance(norm_type, (bool, np.bool_)) or not isinstance(norm_type, numbers.Real):
        raise TypeError(f"norm_type must be a real number (or 'inf'), got {type(norm_type).__name__} {norm_type!r}")
    if math.isnan(norm_type):
        raise ValueError("norm_type must not be NaN")
    return float(norm_type)


def _nonfinite_error(norm_type):
    return RuntimeError(
        f"The total norm of order {norm_type} for gradients from `parameters` is non-finite, so it cannot be "
        "clipped. To disable this error and scale the gradients by the non-finite norm anyway, set "
        "`error_if_nonfinite=False`")


def _max_nan(a, b):
    return a if (a > b or a != a) else b


def _min_nan(a, b):
    return a if (a < b or a != a) else b


def total_norm(grads, norm_type=2.0) -> float:
    """The `norm_type`-norm of all arrays together (as if concatenated), as a Python float.

    One C++ pass per dtype, accumulated in double over a fixed block list (deterministic for
    any thread count); the float32 and float64 partials are then combined in that order.
    CUDA arrays (float32): one two-level reduction per device (csrc/cuda/optim.cu), in double,
    deterministic (per-chunk partials folded in a fixed order, no atomics); it agrees with the
    CPU's result to double rounding (a different summation order), and reads the value back
    (a synchronization). NumPy and CUDA arrays cannot be mixed (TypeError).
    """
    p = _check_norm_type(norm_type)
    grads = list(grads)
    cuda = [g for g in grads if A.is_cuda(g)]
    if cuda and len(cuda) != len(grads):
        raise TypeError("total_norm: cannot mix NumPy and CUDA arrays")
    if _backend.current() == "numpy" and not cuda:
        from ..optim.reference import total_norm as reference_total_norm
        return reference_total_norm([g for g in grads if g.size], p)
    by_dtype: dict = {}
    for g in grads:
        if math.prod(g.shape):  # (a torch tensor's .size is a method)
            key = A.device_key(g) if cuda else g.dtype
            by_dtype.setdefault(key, []).append(A.contiguous(g))
    if not by_dtype:
        return 0.0
    r = None
    for dt in (sorted(by_dtype) if cuda else _FLOATS):
        if dt not in by_dtype:
            continue
        if cuda:
            part = A.require_cuda().multi_norm_reduce(by_dtype[dt], p)
        else:
            part = float(_C.multi_norm_reduce(by_dtype[dt], p))
        if r is None:
            r = part
        elif p == math.inf:
            r = _max_nan(r, part)
        elif p == -math.inf:
            r = _min_nan(r, part)
        else:
            r = r + part
    if p in (math.inf, -math.inf, 0.0, 1.0):
        return r
    if p == 2.0:
        return math.sqrt(r)
    with np.errstate(all="ignore"):
        return float(np.float64(r) ** (1.0 / p))


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False, foreach=None) -> float:
    """Scale the gradients in place so that their global norm is at most max_norm.

    Args:
      parameters          a Parameter or an iterable of Parameters; those whose ``grad`` is
                          None are ignored
      max_norm            the largest norm allowed (>= 0)
      norm_type           order of the norm: 2.0 (default), 1.0, ``inf`` (max |g|), any p
      error_if_nonfinite  raise RuntimeError when the total norm is NaN or inf (nothing is
                          scaled then)
      foreach             accepted for PyTorch compatibility; ignored (there is one C++ path)

    Returns the total norm of the gradients before clipping, as a Python float (PyTorch
    returns a 0-d tensor).

    The norm is the norm of all gradients viewed as one vector,
    ``(sum_i |g_i|^p)^(1/p)``, computed in one C++ pass in double (PyTorch accumulates
    float32 gradients in float32). Every gradient is then multiplied by
    ``min(1, max_norm / (total + 1e-6))`` (also when that is 1, as PyTorch does; the product
    is then exact). Gradients must be writeable; all are checked before any is scaled.
    A negative or NaN max_norm is a ValueError (PyTorch would flip or NaN the gradients).
    CUDA gradients (float32, one device or several, never mixed with NumPy ones) are reduced
    and scaled on the GPU, one launch per pass and device; returning the norm as a float
    synchronizes.
    """
    if isinstance(parameters, Parameter):
        parameters = [parameters]
    max_norm = _check_max_norm(max_norm)
    norm_type = _check_norm_type(norm_type)
    if not isinstance(error_if_nonfinite, (bool, np.bool_)):
        raise TypeError("error_if_nonfinite must be a bool")
    grads, seen = [], set()
    for i, p in enumerate(parameters):
        if not isinstance(p, Parameter):
            raise TypeError(f"clip_grad_norm_ takes Parameters, but item {i} is {type(p).__name__}")
        g = p.grad
        if g is None or id(g) in seen:
            continue
        if isinstance(g, np.generic):  # a NumPy scalar cannot be scaled in place: make it a 0-d array
            p.grad = g = np.array(g)
        if A.is_cuda(g):
            if A.dtype(g) != np.float32:
                raise TypeError(f"parameters[{i}].grad has unsupported dtype {A.dtype(g).name} on the cuda "
                                "backend; CUDA gradients must be float32")
            if A.interface(g, f"parameters[{i}].grad").readonly:
                raise ValueError(f"parameters[{i}].grad is read-only; clip_grad_norm_ scales it in place")
            seen.add(id(g))
            grads.append(g)
            continue
        if not isinstance(g, np.ndarray):
            raise TypeError(f"parameters[{i}].grad must be a numpy.ndarray (or a CUDA array), got {type(g).__name__}")
        if g.dtype not in _FLOATS:
            raise TypeError(f"parameters[{i}].grad has unsupported dtype {g.dtype.name}; "
                            "deepkern supports float32 or float64")
        if not g.flags.writeable:
            raise ValueError(f"parameters[{i}].grad is read-only; clip_grad_norm_ scales it in place")
        seen.add(id(g))
        grads.append(g)
    if not grads:
        return 0.0
    total = total_norm(grads, norm_type)
    if error_if_nonfinite and not math.isfinite(total):
        raise _nonfinite_error(norm_type)
    coef = max_norm / (total + 1e-6)
    if coef > 1.0:  # (a NaN coefficient is kept, as PyTorch's clamp keeps it)
        coef = 1.0
    in_cpp: dict = {}  # contiguous ones: one C++ pass per dtype, one CUDA launch per device
    rest = []
    for g in grads:
        if A.is_cuda(g) and A.c_contiguous(g):
            in_cpp.setdefault(A.device_key(g), []).append(g)
        elif not A.is_cuda(g) and g.flags.c_contiguous and _backend.current() != "numpy":
            in_cpp.setdefault(g.dtype, []).append(g)
        else:
            rest.append(g)
    for key, xs in in_cpp.items():
        if isinstance(key, tuple):
            A.require_cuda().multi_scale(xs, coef)
        else:
            _C.multi_scale(xs, coef)
    for g in rest:
        g *= g.dtype.type(coef)
    return total
