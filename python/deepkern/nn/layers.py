"""The layers: PyTorch's constructor arguments, defaults, attribute names and initialization,
with an explicit ``backward``.

Every layer keeps what its backward needs from the last forward (its input, the dropout
mask, the pooling indices, the batch statistics). ``backward(grad_out)`` returns the gradient
with respect to that input and adds the parameters' gradients to their ``.grad`` (a frozen
parameter, ``requires_grad=False``, gets none). Calling backward twice adds twice. What a
forward keeps goes straight into the instance ``__dict__`` (``self.__dict__["_saved"] = ...``):
Module.__setattr__'s registry checks cost more than the store, on every call, for private
names that are never parameters, buffers or modules.

The convolution, pooling, batch norm, dropout and ReLU layers call ``deepkern.functional``,
so they run on the backend their arrays select (NumPy arrays on the C++ ``cpu`` backend, or
on the NumPy reference inside ``deepkern.use_backend("numpy")``). For NumPy inputs they
validate through the public function once per input signature and then call the backend
directly (``functional._unchecked``): at the small sizes of a digits CNN, validation would
otherwise cost as much as the kernels. ``Linear`` and ``Sigmoid`` are NumPy (or CuPy)
expressions on the input's array module.

deepkern differences from PyTorch: no ``device`` argument (arrays live where you put them);
``padding_mode`` is only "zeros"; ``padding="same"`` needs an even total padding
(deepkern pads symmetrically); ``AvgPool2d`` has no ``divisor_override``; ``inplace=True``
(ReLU, Dropout) is accepted and computes out of place.
"""

from __future__ import annotations

import math

import numpy as np

from .. import _next_seed
from .._backend import _mode as _mode_var
from .. import _validate as V
from .. import functional as F
from . import init
from ._array import array_module
from .module import Module
from .parameter import Parameter

__all__ = [
    "Conv2d", "MaxPool2d", "AvgPool2d", "BatchNorm1d", "BatchNorm2d", "Dropout", "ReLU",
    "Sigmoid", "Linear", "Flatten", "Identity",
]

_FLOAT_DTYPES = V.FLOAT_DTYPES
_mode = _mode_var.get  # the backend use_backend() selects (None: the default, cpu)


def _param_dtype(dtype):
    dt = np.dtype(np.float32 if dtype is None else dtype)
    if dt not in _FLOAT_DTYPES:
        raise TypeError(f"dtype {dt.name} is not supported; deepkern layers hold float32 or float64")
    return dt


def _add_grad(p, g):
    """Accumulate gradient g into parameter p (frozen p: nothing).

    g is a fresh array that nothing else references, so the first gradient is taken as is
    instead of copied.
    """
    if p.requires_grad:
        if p.grad is None:
            p.grad = g
        else:
            p.grad += g


def _contiguous(a):
    """A C-contiguous NumPy array: what the backend functions take without conversion."""
    return type(a) is np.ndarray and a.flags.c_contiguous


def _fastable(a):
    """A 4-D C-contiguous NumPy array (conv and pools also take 3-D input, which only the
    public functions turn into 4-D)."""
    return type(a) is np.ndarray and a.ndim == 4 and a.flags.c_contiguous


def _run(layer, slot, key, op, *args):
    """``deepkern.functional.<op>(*args)``, validated once per key (the fast path).

    The public function, which validates everything, runs the first time and whenever
    ``key`` differs from the key stored in ``layer.<slot>``; while it stays the same (and the
    backend selected by ``use_backend`` too), the backend function of the same name runs
    directly: the slot keeps (key, backend mode, that function). A key holds everything the
    validation looked at: shapes, dtypes, the identity of the parameter arrays, the
    arguments. ``key`` None (an input the fast path does not take): always the public
    function. The slot lives in the instance ``__dict__`` (written without
    Module.__setattr__, whose registry checks a private slot never needs).
    """
    d = layer.__dict__
    hit = d[slot]
    if hit is not None and hit[0] == key and hit[1] == _mode():
        return hit[2](*args)
    out = getattr(F, op)(*args)
    d[slot] = None if key is None else (key, _mode(), getattr(F._unchecked(args[0]), op))
    return out


def _grad_key(layer, g):
    """The backward key: grad_out's shape and dtype, and the forward's key (None when either
    the forward input or grad_out cannot take the fast path)."""
    fkey = layer.__dict__["_fkey"]
    return (g.shape, g.dtype, fkey[0]) if fkey is not None and _contiguous(g) else None


def _no_forward(layer):
    return RuntimeError(f"{type(layer).__name__}.backward() called before forward()")


def _reset_fan_in_uniform(weight, bias):
    """PyTorch's default init of Conv and Linear: kaiming_uniform_(a=sqrt(5)), i.e.
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the weight, and the same bound for the bias."""
    init.kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        fan_in, _ = init._calculate_fan_in_and_fan_out(weight)
        if fan_in != 0:
            bound = 1.0 / math.sqrt(fan_in)
            init.uniform_(bias, -bound, bound)


# ---------------------------------------------------------------------------- Conv2d

class Conv2d(Module):
    """2-D convolution: y = conv2d(x, weight, bias), x (N, C_in, H, W) or (C_in, H, W).

    weight: (out_channels, in_channels / groups, KH, KW); bias: (out_channels,) or None.
    Default init: weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in =
    in_channels / groups * KH * KW (PyTorch's). ``padding`` may be an int, a pair,
    "valid" or "same" (stride 1, even total padding). With ``needs_input_grad = False``
    (see Module) backward computes only the parameters' gradients and returns None.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", dtype=None):
        super().__init__()
        self.in_channels = V.as_int(in_channels, "in_channels", 1)
        self.out_channels = V.as_int(out_channels, "out_channels", 1)
        self.kernel_size = V.check_positive_pair(V.pair(kernel_size, "kernel_size"), "kernel_size",
                                                 "kernel size should be greater than zero")
        self.stride = V.check_positive_pair(V.pair(stride, "stride"), "stride",
                                            "non-positive stride is not supported")
        self.dilation = V.check_positive_pair(V.pair(dilation, "dilation"), "dilation",
                                              "dilation should be greater than zero")
        self.groups = V.as_int(groups, "groups", 1, f"non-positive groups is not supported, but got groups={groups}")
        if self.in_channels % self.groups:
            raise ValueError("in_channels must be divisible by groups")
        if self.out_channels % self.groups:
            raise ValueError("out_channels must be divisible by groups")
        if padding_mode != "zeros":
            raise ValueError(f"padding_mode {padding_mode!r} is not supported; deepkern pads with zeros only")
        self.padding_mode = padding_mode
        self.padding = padding if isinstance(padding, str) else V.pair(padding, "padding")
        self._raw = None
        self._conv_args()                                   # validates padding now
        bias = V.as_bool(bias, "bias")
        dt = _param_dtype(dtype)
        kh, kw = self.kernel_size
        self.weight = Parameter(np.empty((self.out_channels, self.in_channels // self.groups, kh, kw), dt))
        if bias:
            self.bias = Parameter(np.empty(self.out_channels, dt))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()
        self._saved = None                      # (x, weight, args) of the last forward
        self._fkey = self._bkey = None

    def _numeric_padding(self, padding):
        if isinstance(padding, str):
            if padding == "valid":
                return (0, 0)
            if padding != "same":
                raise ValueError(f"Invalid padding string {padding!r}, should be one of {{'valid', 'same'}}")
            if self.stride != (1, 1):
                raise ValueError("padding='same' is not supported for strided convolutions")
            total = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size)]
            if total[0] % 2 or total[1] % 2:
                raise ValueError(f"padding='same' with kernel_size={self.kernel_size} and dilation={self.dilation} "
                                 "needs asymmetric padding, which deepkern does not support")
            return (total[0] // 2, total[1] // 2)
        p = V.pair(padding, "padding")
        if p[0] < 0 or p[1] < 0:
            raise ValueError(f"negative padding is not supported, but got padding={p}")
        return p

    def _conv_args(self):
        """(stride, padding, dilation, groups) normalized: recomputed when an attribute changed."""
        raw = (self.stride, self.padding, self.dilation, self.groups)
        if raw != self._raw:
            self._args = (V.pair(self.stride, "stride"), self._numeric_padding(self.padding),
                          V.pair(self.dilation, "dilation"), self.groups)
            self._raw = raw
        return self._args

    def reset_parameters(self):
        _reset_fan_in_uniform(self.weight, self.bias)

    def forward(self, x):
        w = self.weight.data
        b = None if self.bias is None else self.bias.data
        args = self._conv_args()
        key = (x.shape, x.dtype, id(w), id(b), args) if _fastable(x) else None
        y = _run(self, "_fkey", key, "conv2d", x, w, b, *args)
        self.__dict__["_saved"] = (x, w, args)
        return y

    def backward(self, grad_out):
        if self._saved is None:
            raise _no_forward(self)
        x, w, args = self._saved
        has_bias = self.bias is not None
        # needs_input_grad False (a first layer): the weight gradient only; gx is None
        gx, gw, gb = _run(self, "_bkey", _grad_key(self, grad_out), "conv2d_backward", grad_out, x, w, *args,
                          has_bias, bool(self.needs_input_grad))
        _add_grad(self.weight, gw)
        if has_bias:
            _add_grad(self.bias, gb)
        return gx

    def extra_repr(self):
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding!r}" if isinstance(self.padding, str) else f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s


# ---------------------------------------------------------------------------- pooling

def _pool_stride(stride, kernel_size):
    return kernel_size if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0) else stride


class MaxPool2d(Module):
    """Max pooling over (KH, KW) windows; x (N, C, H, W) or (C, H, W).

    ``stride`` defaults to ``kernel_size``. With ``return_indices=True`` forward returns
    (y, indices), indices int64 flat positions in each input plane (PyTorch's).
    """

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False,
                 ceil_mode=False):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = _pool_stride(stride, kernel_size)
        self.padding = padding
        self.dilation = dilation
        self.return_indices = V.as_bool(return_indices, "return_indices")
        self.ceil_mode = V.as_bool(ceil_mode, "ceil_mode")
        self._raw = None
        self._pool_args()
        self._saved = None                      # (input shape, indices) of the last forward
        self._fkey = self._bkey = None

    def _pool_args(self):
        """(kernel, stride, padding, dilation, ceil_mode) as pairs; recomputed when changed.

        Only the types are normalized here; the values are checked by functional.max_pool2d
        on the first call with these arguments (they are part of the fast-path key)."""
        raw = (self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)
        if raw != self._raw:
            self._args = (V.pair(self.kernel_size, "kernel_size"),
                          V.pair(_pool_stride(self.stride, self.kernel_size), "stride"),
                          V.pair(self.padding, "padding"), V.pair(self.dilation, "dilation"),
                          self.ceil_mode)
            self._raw = raw
        return self._args

    def forward(self, x):
        args = self._pool_args()
        key = (x.shape, x.dtype, args) if _fastable(x) else None
        y, idx = _run(self, "_fkey", key, "max_pool2d", x, *args)
        self.__dict__["_saved"] = (x.shape, idx)
        return (y, idx) if self.return_indices else y

    def backward(self, grad_out):
        if self._saved is None:
            raise _no_forward(self)
        x_shape, idx = self._saved
        return _run(self, "_bkey", _grad_key(self, grad_out), "max_pool2d_backward", grad_out, idx, x_shape)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")


class AvgPool2d(Module):
    """Average pooling over (KH, KW) windows; x (N, C, H, W) or (C, H, W).

    ``count_include_pad`` counts the zero padding in the divisor (PyTorch's default).
    deepkern has no ``divisor_override``.
    """

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 divisor_override=None):
        super().__init__()
        if divisor_override is not None:
            raise ValueError("divisor_override is not supported by deepkern's avg_pool2d")
        self.kernel_size = kernel_size
        self.stride = _pool_stride(stride, kernel_size)
        self.padding = padding
        self.ceil_mode = V.as_bool(ceil_mode, "ceil_mode")
        self.count_include_pad = V.as_bool(count_include_pad, "count_include_pad")
        self.divisor_override = None
        self._raw = None
        self._pool_args()
        self._saved = None                      # (input shape, args) of the last forward
        self._fkey = self._bkey = None

    def _pool_args(self):
        """(kernel, stride, padding, ceil_mode, count_include_pad); see MaxPool2d._pool_args."""
        raw = (self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad)
        if raw != self._raw:
            self._args = (V.pair(self.kernel_size, "kernel_size"),
                          V.pair(_pool_stride(self.stride, self.kernel_size), "stride"),
                          V.pair(self.padding, "padding"), self.ceil_mode, self.count_include_pad)
            self._raw = raw
        return self._args

    def forward(self, x):
        args = self._pool_args()
        key = (x.shape, x.dtype, args) if _fastable(x) else None
        y = _run(self, "_fkey", key, "avg_pool2d", x, *args)
        self.__dict__["_saved"] = (x.shape, args)
        return y

    def backward(self, grad_out):
        if self._saved is None:
            raise _no_forward(self)
        x_shape, args = self._saved
        return _run(self, "_bkey", _grad_key(self, grad_out), "avg_pool2d_backward", grad_out, x_shape, *args)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


# ---------------------------------------------------------------------------- batch norm

class _BatchNorm(Module):
    """Shared code of BatchNorm1d and BatchNorm2d (see those)."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 dtype=None):
        super().__init__()
        self.num_features = V.as_int(num_features, "num_features", 1)
        self.eps = V.as_float(eps, "eps")
        if not (self.eps > 0) or not math.isfinite(self.eps):
            raise ValueError(f"eps must be positive and finite, got {eps}")
        if momentum is not None:
            momentum = V.check_finite(V.as_float(momentum, "momentum"), "momentum")
        self.momentum = momentum
        self.affine = V.as_bool(affine, "affine")
        self.track_running_stats = V.as_bool(track_running_stats, "track_running_stats")
        dt = _param_dtype(dtype)
        C = self.num_features
        if self.affine:
            self.weight = Parameter(np.ones(C, dt))
            self.bias = Parameter(np.zeros(C, dt))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if self.track_running_stats:
            self.register_buffer("running_mean", np.zeros(C, dt))
            self.register_buffer("running_var", np.ones(C, dt))
            self.register_buffer("num_batches_tracked", np.zeros((), np.int64))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self._saved = None      # (x, weight, mean, invstd, use_batch, input shape) of the last forward
        self._fkey = self._bkey = None

    def reset_running_stats(self):
        if self.track_running_stats:
            self.running_mean[...] = 0
            self.running_var[...] = 1
            self.num_batches_tracked[...] = 0

    def reset_parameters(self):
        self.reset_running_stats()
        if self.affine:
            init.ones_(self.weight)
            init.zeros_(self.bias)

    def _as_2d_or_4d(self, x):
        """(x as the (N, C) or (N, C, H, W) array batch_norm takes, x's shape to restore or None)."""
        raise NotImplementedError

    def forward(self, x):
        return self._forward(x, False)

    def _forward_relu(self, x):
        """relu(forward(x)) in one op (functional.batch_norm_relu), for Sequential: the output
        is then the ReLU's, and Sequential's backward passes it to backward as ``_relu_y``."""
        return self._forward(x, True)

    def _forward(self, x, relu):
        x, in_shape = self._as_2d_or_4d(x)
        # PyTorch's rule: batch statistics in training, and also in eval when no running
        # statistics are tracked; the running statistics move only in training.
        use_batch = self.training or self.running_mean is None
        if self.training and self.track_running_stats:
            count = int(self.num_batches_tracked) + 1
            self.num_batches_tracked[()] = count                # in place: the buffer stays the same array
            momentum = 1.0 / count if self.momentum is None else self.momentum
        else:
            momentum = 0.0 if self.momentum is None else self.momentum
        w = None if self.weight is None else self.weight.data
        b = None if self.bias is None else self.bias.data
        rm = None if use_batch and not self.track_running_stats else self.running_mean
        rv = None if rm is None else self.running_var
        if _contiguous(x):
            key = (x.shape, x.dtype, id(w), id(b), id(rm), id(rv), use_batch, self.momentum, self.eps, relu)
        else:
            key = None
        y, mean, invstd = _run(self, "_fkey", key, "batch_norm_relu" if relu else "batch_norm",
                               x, w, b, rm, rv, use_batch, momentum, self.eps)
        self.__dict__["_saved"] = (x, w, mean, invstd, use_batch, in_shape)
        return y if in_shape is None else y.reshape(in_shape)

    def backward(self, grad_out):
        if self._saved is None:
            raise _no_forward(self)
        ry = self.__dict__.pop("_relu_y", None)    # Sequential's fused ReLU: its output (see there)
        x, w, mean, invstd, use_batch, in_shape = self._saved
        g = grad_out if in_shape is None else grad_out.reshape(x.shape)
        if ry is None:
            gx, gw, gb = _run(self, "_bkey", _grad_key(self, g), "batch_norm_backward", g, x, w, mean, invstd, use_batch)
        else:
            ry = ry if in_shape is None else ry.reshape(x.shape)
            key = _grad_key(self, g)
            key = (key, "relu") if key is not None and _contiguous(ry) else None
            gx, gw, gb = _run(self, "_bkey", key, "batch_norm_relu_backward", g, ry, x, w, mean, invstd, use_batch)
        if w is not None:
            _add_grad(self.weight, gw)
            _add_grad(self.bias, gb)
        return gx if in_shape is None else gx.reshape(in_shape)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm2d(_BatchNorm):
    """Batch normalization of (N, C, H, W) inputs over N, H and W, per channel.

    training: y = (x - mean) / sqrt(var + eps) * weight + bias with the batch mean and biased
    variance; running_mean and running_var move toward the batch mean and the *unbiased*
    variance by ``momentum`` (``momentum=None``: a cumulative average over
    ``num_batches_tracked`` batches). eval: the running statistics normalize. weight = 1,
    bias = 0, running_mean = 0, running_var = 1 initially. ``affine=False``: no weight and
    bias; ``track_running_stats=False``: batch statistics in eval too.
    """

    def _as_2d_or_4d(self, x):
        V.array_kind(x, "x")
        if x.ndim != 4:
            raise ValueError(f"BatchNorm2d: expected 4D input (got {x.ndim}D input)")
        return x, None


class BatchNorm1d(_BatchNorm):
    """Batch normalization of (N, C) or (N, C, L) inputs, per channel (see BatchNorm2d)."""

    def _as_2d_or_4d(self, x):
        V.array_kind(x, "x")
        if x.ndim == 2:
            return x, None
        if x.ndim == 3:
            return x.reshape(x.shape + (1,)), x.shape   # (N, C, L) -> (N, C, L, 1): the same statistics
        raise ValueError(f"BatchNorm1d: expected 2D or 3D input (got {x.ndim}D input)")


# ---------------------------------------------------------------------------- element-wise

class Dropout(Module):
    """Inverted dropout: in training, y = x * mask / (1 - p) with mask ~ Bernoulli(1 - p).

    The mask comes from ``functional.dropout``: a pure function of a seed and the element
    index; each forward draws its seed from deepkern's stream (``deepkern.manual_seed``).
    In eval mode (or with p = 0) forward returns x itself and backward passes the gradient
    through.
    """

    def __init__(self, p=0.5, inplace=False):
        super().__init__()
        p = V.as_float(p, "p")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p = p
        self.inplace = V.as_bool(inplace, "inplace")
        self._saved = None                      # (mask, p) of the last training forward
        self._fkey = self._bkey = None

    def forward(self, x):
        p = self.p
        if not self.training or p == 0.0:
            self._saved = None
            return x
        key = (x.shape, x.dtype, p) if _contiguous(x) else None
        y, mask = _run(self, "_fkey", key, "dropout", x, p, True, _next_seed())
        self.__dict__["_saved"] = (mask, p)
        return y

    def backward(self, grad_out):
        if self._saved is None:                 # eval mode or p = 0: the identity
            return grad_out
        mask, p = self._saved
        return _run(self, "_bkey", _grad_key(self, grad_out), "dropout_backward", grad_out, mask, p)

    def extra_repr(self):
        return f"p={self.p}, inplace={self.inplace}"


class ReLU(Module):
    """y = max(x, 0), any shape. ``inplace`` is accepted for PyTorch compatibility and ignored."""

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = V.as_bool(inplace, "inplace")
        self._y = None
        self._fkey = self._bkey = None

    def forward(self, x):
        self.__dict__["_y"] = y = _run(self, "_fkey", (x.shape, x.dtype) if _contiguous(x) else None, "relu", x)
        return y

    def backward(self, grad_out):
        y = self._y
        if y is None:
            raise _no_forward(self)
        return _run(self, "_bkey", _grad_key(self, grad_out), "relu_backward", grad_out, y)

    def extra_repr(self):
        return "inplace=True" if self.inplace else ""


# Sequential fuses a batch norm (through its _forward_relu) and the ReLU after it (module.py):
# these exact classes only
BatchNorm1d._fuse_role = BatchNorm2d._fuse_role = "batch_norm"
ReLU._fuse_role = "relu"


def _check_float_input(layer, x, dtype=None):
    V.array_kind(x, f"{layer} input")
    V.float_array(x, f"{layer} input")
    if dtype is not None and V.dtype_of(x) != dtype:
        raise TypeError(f"{layer}: input is {V.dtype_of(x).name} but the layer's parameters are "
                        f"{np.dtype(dtype).name} (convert one of them: model.float() / model.double())")


class Sigmoid(Module):
    """y = 1 / (1 + exp(-x)), computed without overflow for large |x|; any shape."""

    def __init__(self):
        super().__init__()
        self._y = None

    def forward(self, x):
        _check_float_input("Sigmoid", x)
        xp = array_module(x)
        e = xp.exp(-xp.abs(x))                       # in (0, 1]: never overflows
        y = xp.where(x >= 0, 1, e) / (1 + e)         # 1/(1+e^-x) for x >= 0, e^x/(1+e^x) below
        self._y = y
        return y

    def backward(self, grad_out):
        y = self._y
        if y is None:
            raise _no_forward(self)
        _check_float_input("Sigmoid backward", grad_out, V.dtype_of(y))
        if tuple(grad_out.shape) != tuple(y.shape):
            raise ValueError(f"Sigmoid.backward: grad_out has shape {V.shape_str(grad_out.shape)}, "
                             f"expected {V.shape_str(y.shape)}")
        return grad_out * (y * (1 - y))


class Identity(Module):
    """y = x (a placeholder, e.g. to remove a head for transfer learning)."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        return x

    def backward(self, grad_out):
        return grad_out


# ---------------------------------------------------------------------------- Linear, Flatten

class Linear(Module):
    """y = x @ weight.T + bias; x (*, in_features) -> y (*, out_features).

    weight: (out_features, in_features); bias: (out_features,) or None. Default init:
    U(-1/sqrt(in_features), 1/sqrt(in_features)) for both (PyTorch's). Computed with the
    input's array module (NumPy matmul on the CPU).
    """

    def __init__(self, in_features, out_features, bias=True, dtype=None):
        super().__init__()
        self.in_features = V.as_int(in_features, "in_features", 0)
        self.out_features = V.as_int(out_features, "out_features", 0)
        bias = V.as_bool(bias, "bias")
        dt = _param_dtype(dtype)
        self.weight = Parameter(np.empty((self.out_features, self.in_features), dt))
        if bias:
            self.bias = Parameter(np.empty(self.out_features, dt))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()
        self._saved = None                      # (x, weight) of the last forward
        self._fkey = None

    def reset_parameters(self):
        _reset_fan_in_uniform(self.weight, self.bias)

    def _check(self, x, w, what="input"):
        _check_float_input("Linear", x, V.dtype_of(w))
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            rows = int(np.prod(x.shape[:-1])) if x.ndim > 1 else 1
            raise ValueError(f"Linear: {what} of shape {V.shape_str(x.shape)} cannot be multiplied with the "
                             f"weight ({rows}x{x.shape[-1] if x.ndim else 0} and "
                             f"{self.in_features}x{self.out_features}); expected (*, {self.in_features})")

    def forward(self, x):
        w = self.weight.data
        key = (getattr(x, "shape", None), getattr(x, "dtype", None), id(w), type(x))
        if key != self._fkey:
            self._check(x, w)
            self._fkey = key
        xp = array_module(x)
        y = xp.matmul(x, w.T)
        if self.bias is not None:
            y += self.bias.data
        self.__dict__["_saved"] = (x, w)
        return y

    def backward(self, grad_out):
        if self._saved is None:
            raise _no_forward(self)
        x, w = self._saved
        g = grad_out
        if type(g) is not type(x) or g.dtype != x.dtype or g.shape != x.shape[:-1] + (self.out_features,):
            _check_float_input("Linear backward", g, V.dtype_of(x))
            want = tuple(x.shape[:-1]) + (self.out_features,)
            if tuple(g.shape) != want:
                raise ValueError(f"Linear.backward: grad_out has shape {V.shape_str(g.shape)}, "
                                 f"expected {V.shape_str(want)}")
        xp = array_module(x)
        g2 = g.reshape(-1, self.out_features)
        if self.weight.requires_grad:
            _add_grad(self.weight, xp.matmul(g2.T, x.reshape(-1, self.in_features)))
        if self.bias is not None and self.bias.requires_grad:
            _add_grad(self.bias, g2.sum(axis=0))
        return xp.matmul(g, w) if self.needs_input_grad else None

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Flatten(Module):
    """Flatten dimensions start_dim..end_dim into one: (N, C, H, W) -> (N, C*H*W) by default."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim = V.as_int(start_dim, "start_dim", None)
        self.end_dim = V.as_int(end_dim, "end_dim", None)
        self._x_shape = None
        self._fast = None

    def forward(self, x):
        fast = self.__dict__["_fast"]  # ((input shape, dims), output shape) of the last NumPy input
        if type(x) is np.ndarray and fast is not None and (x.shape, self.start_dim, self.end_dim) == fast[0]:
            self.__dict__["_x_shape"] = fast[0][0]
            return x.reshape(fast[1])
        V.array_kind(x, "Flatten input")
        shape = tuple(x.shape)
        nd = max(len(shape), 1)
        s = self.start_dim + nd if self.start_dim < 0 else self.start_dim
        e = self.end_dim + nd if self.end_dim < 0 else self.end_dim
        if not (0 <= s < nd and 0 <= e < nd):
            raise ValueError(f"Flatten: dimension out of range for a {len(shape)}-D input "
                             f"(start_dim={self.start_dim}, end_dim={self.end_dim})")
        if s > e:
            raise ValueError("flatten() has invalid args: start_dim cannot come after end_dim")
        self._x_shape = shape
        if len(shape) == 0:
            return x.reshape(1)
        n = 1
        for d in shape[s:e + 1]:
            n *= d
        out = shape[:s] + (n,) + shape[e + 1:]
        self.__dict__["_fast"] = ((shape, self.start_dim, self.end_dim), out) if type(x) is np.ndarray else None
        return x.reshape(out)

    def backward(self, grad_out):
        if self._x_shape is None:
            raise _no_forward(self)
        return grad_out.reshape(self._x_shape)

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"
