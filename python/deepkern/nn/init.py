"""deepkern.nn.init: fill weights in place, with PyTorch's formulas and arguments.

Why initialization matters: with n = fan_in inputs per unit, a weight of variance s^2 makes
an output's variance n * s^2 times the input's. Xavier/Glorot (2010) keeps the variance of
both the forward signal and the backward gradient steady with s^2 = 2 / (fan_in + fan_out),
which suits tanh and sigmoid near 0. He/Kaiming (2015) accounts for ReLU zeroing half of its
inputs: s^2 = 2 / fan_in (the gain sqrt(2) squared over fan_in). A uniform U(-b, b) has
variance b^2 / 3, hence the sqrt(3) in the uniform bounds below.

fan_in = in_channels * KH * KW (weight.shape[1] * receptive field), fan_out = out_channels
* KH * KW (weight.shape[0] * receptive field); for a Linear weight (out, in) the receptive
field is 1.

Every function takes an ndarray (or a CUDA array, or a ``Parameter``, whose ``.data`` is
filled), fills it in place and returns it. Random draws come from deepkern's random stream
(``deepkern.manual_seed(s)`` makes them reproducible) unless a ``numpy.random.Generator``
is passed as ``generator``.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from .. import _validate as V
from ._array import array_module
from .parameter import Parameter

__all__ = [
    "calculate_gain", "uniform_", "normal_", "constant_", "zeros_", "ones_",
    "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_",
]

_LINEAR_FNS = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
               "conv_transpose3d", "sigmoid")


def calculate_gain(nonlinearity, param=None):
    """The recommended gain for a nonlinearity (PyTorch's table).

    linear, conv*, sigmoid: 1; tanh: 5/3; relu: sqrt(2); leaky_relu: sqrt(2 / (1 + slope^2))
    with slope = param (default 0.01); selu: 3/4.
    """
    if nonlinearity in _LINEAR_FNS:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        elif not isinstance(param, bool) and isinstance(param, numbers.Real):
            slope = float(param)
        else:
            raise ValueError(f"negative_slope {param} not a valid number")
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"Unsupported nonlinearity {nonlinearity}")


def _target(tensor, name):
    """The array to fill: tensor itself, or a Parameter's data; checked writeable and float."""
    arr = tensor.data if isinstance(tensor, Parameter) else tensor
    V.array_kind(arr, name)
    if isinstance(arr, np.ndarray) and not arr.flags.writeable:
        raise ValueError(f"{name}: the array is read-only and cannot be filled in place")
    return arr


def _float_target(tensor, name):
    arr = _target(tensor, name)
    if V.dtype_of(arr).kind != "f":
        raise TypeError(f"{name}: expected a floating-point array, got {V.dtype_of(arr).name}")
    return arr


def _fill(arr, values):
    """arr[...] = values (NumPy values, converted to arr's dtype and array library)."""
    xp = array_module(arr)
    arr[...] = values if xp is np else xp.asarray(values)


def _gen(generator):
    if generator is None:
        from .. import _generator
        return _generator()
    if not isinstance(generator, np.random.Generator):
        raise TypeError(f"generator must be a numpy.random.Generator or None, got {type(generator).__name__}")
    return generator


def _real(v, name):
    return V.check_finite(V.as_float(v, name), name)


def _calculate_fan_in_and_fan_out(tensor):
    """(fan_in, fan_out) of a weight: shape[1] and shape[0] times the receptive field size."""
    arr = tensor.data if isinstance(tensor, Parameter) else tensor
    shape = tuple(int(s) for s in arr.shape)
    if len(shape) < 2:
        raise ValueError("Fan in and fan out can not be computed for tensor with fewer than 2 dimensions")
    receptive = 1
    for s in shape[2:]:
        receptive *= s
    return shape[1] * receptive, shape[0] * receptive


def _calculate_correct_fan(tensor, mode):
    if not isinstance(mode, str) or mode.lower() not in ("fan_in", "fan_out"):
        raise ValueError(f"Mode {mode} not supported, please use one of fan_in, fan_out")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    return fan_in if mode.lower() == "fan_in" else fan_out


def uniform_(tensor, a=0.0, b=1.0, generator=None):
    """Fill with values drawn from U(a, b)."""
    arr = _float_target(tensor, "uniform_")
    a, b = _real(a, "a"), _real(b, "b")
    if a > b:
        raise ValueError(f"uniform_ expects a <= b, got a={a} and b={b}")
    _fill(arr, _gen(generator).uniform(a, b, size=tuple(arr.shape)))
    return tensor


def normal_(tensor, mean=0.0, std=1.0, generator=None):
    """Fill with values drawn from N(mean, std^2)."""
    arr = _float_target(tensor, "normal_")
    mean, std = _real(mean, "mean"), _real(std, "std")
    if std < 0:
        raise ValueError(f"normal_ expects std >= 0.0, but found std {std}")
    _fill(arr, _gen(generator).normal(mean, std, size=tuple(arr.shape)))
    return tensor


def constant_(tensor, val):
    """Fill with the value val."""
    arr = _target(tensor, "constant_")
    if isinstance(val, (bool, np.bool_)) or not isinstance(val, numbers.Number):
        raise TypeError(f"constant_: val must be a number, got {type(val).__name__}")
    arr[...] = val
    return tensor


def zeros_(tensor):
    """Fill with 0."""
    return constant_(tensor, 0)


def ones_(tensor):
    """Fill with 1."""
    return constant_(tensor, 1)


def xavier_uniform_(tensor, gain=1.0, generator=None):
    """Glorot uniform: U(-b, b) with b = gain * sqrt(6 / (fan_in + fan_out))."""
    arr = _float_target(tensor, "xavier_uniform_")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(arr)
    std = _real(gain, "gain") * math.sqrt(2.0 / float(fan_in + fan_out)) if fan_in + fan_out else 0.0
    bound = math.sqrt(3.0) * std
    _fill(arr, _gen(generator).uniform(-bound, bound, size=tuple(arr.shape)))
    return tensor


def xavier_normal_(tensor, gain=1.0, generator=None):
    """Glorot normal: N(0, std^2) with std = gain * sqrt(2 / (fan_in + fan_out))."""
    arr = _float_target(tensor, "xavier_normal_")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(arr)
    std = _real(gain, "gain") * math.sqrt(2.0 / float(fan_in + fan_out)) if fan_in + fan_out else 0.0
    _fill(arr, _gen(generator).normal(0.0, std, size=tuple(arr.shape)))
    return tensor


def _kaiming_std(arr, a, mode, nonlinearity):
    fan = _calculate_correct_fan(arr, mode)
    gain = calculate_gain(nonlinearity, a)
    return gain / math.sqrt(fan) if fan else 0.0


def kaiming_uniform_(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """He uniform: U(-b, b) with b = gain * sqrt(3 / fan), gain = calculate_gain(nonlinearity, a).

    ``a`` is the negative slope of the leaky ReLU that follows (0: plain ReLU, gain sqrt(2));
    ``mode`` "fan_in" keeps the forward variance, "fan_out" the backward one. PyTorch's
    default layer init is this with a = sqrt(5), which gives b = 1 / sqrt(fan_in).
    An array with no elements is left as is.
    """
    arr = _float_target(tensor, "kaiming_uniform_")
    if arr.size == 0:
        return tensor
    bound = math.sqrt(3.0) * _kaiming_std(arr, a, mode, nonlinearity)
    _fill(arr, _gen(generator).uniform(-bound, bound, size=tuple(arr.shape)))
    return tensor


def kaiming_normal_(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """He normal: N(0, std^2) with std = gain / sqrt(fan) (see kaiming_uniform_)."""
    arr = _float_target(tensor, "kaiming_normal_")
    if arr.size == 0:
        return tensor
    std = _kaiming_std(arr, a, mode, nonlinearity)
    _fill(arr, _gen(generator).normal(0.0, std, size=tuple(arr.shape)))
    return tensor
