"""Argument checking shared by every public function (one place, one wording).

Everything a user can get wrong is checked here, before any output is allocated or any array
is written: ``TypeError`` for array kinds and dtypes, ``ValueError`` for shapes, sizes and
arguments. Messages name the argument and, where PyTorch has a message for the same mistake,
reuse its wording.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# Every size, stride, padding and dilation must fit in 31 bits: the kernels compute offsets in
# int64, and products of two such values cannot overflow there.
MAX_ARG = 2**31 - 1


def is_cuda_array(a) -> bool:
    return hasattr(a, "__cuda_array_interface__") and not isinstance(a, np.ndarray)


def array_kind(a, name):
    """Reject anything that is not an ndarray or a CUDA array (lists, scalars, None)."""
    if isinstance(a, np.ndarray) or is_cuda_array(a):
        return a
    raise TypeError(f"{name} must be a numpy.ndarray (or a CUDA array), got {type(a).__name__}")


def dtype_of(a):
    return np.dtype(a.dtype) if isinstance(a, np.ndarray) else np.dtype(a.__cuda_array_interface__["typestr"])


def dtype_name(dt):
    """NumPy's name of a dtype, with the byte order when it is not the machine's (">f4")."""
    dt = np.dtype(dt)
    return dt.name if dt.isnative else f"{dt.name} (non-native byte order {dt.str})"


def float_array(a, name, allowed=FLOAT_DTYPES):
    """An array of a supported floating dtype, else TypeError naming the dtype."""
    array_kind(a, name)
    dt = dtype_of(a)
    if dt not in allowed and dt.newbyteorder("=") in allowed:
        raise TypeError(f"{name} has non-native byte order ({dt.str}); convert it first with "
                        f"{name}.astype(np.{dt.name})")
    if dt not in allowed:
        names = " or ".join(d.name for d in allowed)
        raise TypeError(f"{name} has unsupported dtype {dt.name}; deepkern supports {names}")
    return a


def same_dtype(op, **arrays):
    """All given (non-None) arrays share one dtype, else TypeError listing them."""
    items = [(k, dtype_of(v)) for k, v in arrays.items() if v is not None]
    if len({d for _, d in items}) > 1:
        desc = ", ".join(f"{k} is {d.name}" for k, d in items)
        raise TypeError(f"{op}: arguments must have the same dtype, but {desc}")


def as_int(v, name, minimum=None, what=None):
    """A Python/NumPy integer (not bool, not float) within [minimum, MAX_ARG]."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(v).__name__} {v!r}")
    v = int(v)
    if v > MAX_ARG:
        raise ValueError(f"{name}={v} is too large (at most {MAX_ARG})")
    if minimum is not None and v < minimum:
        raise ValueError(what or f"{name} must be >= {minimum}, got {v}")
    return v


def pair(v, name):
    """An int or a pair of ints -> (h, w). A 1-element sequence means (v, v), as in PyTorch."""
    if isinstance(v, (tuple, list)):
        if len(v) not in (1, 2):
            raise ValueError(f"{name} must be an int or a pair of ints, got {len(v)} values: {v!r}")
        h, w = (v[0], v[0]) if len(v) == 1 else v
        return as_int(h, name), as_int(w, name)
    if isinstance(v, str) or not isinstance(v, (numbers.Integral, np.integer)) or isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int or a pair of ints, got {type(v).__name__} {v!r}")
    v = as_int(v, name)
    return v, v


def check_positive_pair(v, name, message):
    if v[0] <= 0 or v[1] <= 0:
        raise ValueError(f"{message}, but got {name}={v}")
    return v


def as_bool(v, name):
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    raise TypeError(f"{name} must be a bool, got {type(v).__name__} {v!r}")


def as_float(v, name):
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__} {v!r}")
    return float(v)


def shape_str(shape):
    return "(" + ", ".join(str(int(s)) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def check_ndim(a, name, allowed, layout):
    if a.ndim not in allowed:
        want = " or ".join(f"{d}-D" for d in allowed)
        raise ValueError(f"{name}: expected {want} input {layout}, got {a.ndim}-D with shape {shape_str(a.shape)}")


def check_numel(shape, dtype, what):
    """Refuse outputs whose byte size cannot be allocated or indexed in 64 bits."""
    n = 1
    for s in shape:
        n *= int(s)
    if n * np.dtype(dtype).itemsize >= 2**62:
        raise ValueError(f"{what} of shape {shape_str(shape)} is too large to allocate")


def check_finite(v, name):
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    return v
