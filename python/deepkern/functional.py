"""deepkern.functional: the ops, as forward/backward function pairs.

Every function validates its arguments (``TypeError`` for array kinds and dtypes,
``ValueError`` for shapes and arguments) before anything is allocated or written, then runs
on the backend its arrays select: NumPy arrays on ``cpu`` (C++/OpenMP), or on the NumPy
reference inside ``deepkern.use_backend("numpy")``; CUDA arrays on ``cuda``. Inputs are never
modified (only ``batch_norm``'s running statistics are updated in place, as documented).
Non-contiguous inputs are copied to C order first. Layout is NCHW; conv2d and the pools also
accept an unbatched (C, H, W) input, as PyTorch does.
"""

from __future__ import annotations

import math

import numpy as np

from . import _backend, _cpu
from . import _validate as V
from . import reference as _reference
from .reference import window_out_size

__all__ = [
    "conv2d", "conv2d_relu", "conv2d_backward", "max_pool2d", "max_pool2d_backward", "avg_pool2d",
    "avg_pool2d_backward", "batch_norm", "batch_norm_backward", "batch_norm_relu", "batch_norm_relu_backward",
    "dropout", "dropout_backward",
    "relu", "relu_backward", "fractional_max_pool2d", "fractional_max_pool2d_backward",
]


def _contig(a):
    """C-contiguous, aligned version of an input array (CUDA arrays are handled by their backend).

    An unaligned array (a view at an odd byte offset) is copied too: the kernels load whole
    floats, and a misaligned load is undefined behaviour in C++ (UBSan reports it).
    """
    if isinstance(a, np.ndarray) and not (a.flags.c_contiguous and a.flags.aligned):
        return np.array(a, order="C", copy=True)
    return a


def _batched(x, name):
    """(C, H, W) -> (1, C, H, W); returns (x4, was_unbatched)."""
    V.check_ndim(x, name, (3, 4), "(N, C, H, W) or unbatched (C, H, W)")
    if x.ndim == 3:
        return x.reshape((1,) + tuple(x.shape)), True
    return x, False


# ---------------------------------------------------------------------------- conv2d

def _conv_args(x, weight, stride, padding, dilation, groups):
    s = V.check_positive_pair(V.pair(stride, "stride"), "stride", "non-positive stride is not supported")
    p = V.pair(padding, "padding")
    if p[0] < 0 or p[1] < 0:
        raise ValueError(f"negative padding is not supported, but got padding={p}")
    d = V.check_positive_pair(V.pair(dilation, "dilation"), "dilation", "dilation should be greater than zero")
    g = V.as_int(groups, "groups", 1, f"non-positive groups is not supported, but got groups={groups}")
    V.check_ndim(weight, "conv2d weight", (4,), "(OC, C/groups, KH, KW)")
    N, C, H, W = (int(v) for v in x.shape)
    OC, cpg, KH, KW = (int(v) for v in weight.shape)
    if OC == 0 or cpg == 0 or KH == 0 or KW == 0:
        raise ValueError(f"conv2d: weight of shape {V.shape_str(weight.shape)} has a zero dimension")
    if OC % g != 0:
        raise ValueError(f"Given groups={g}, expected weight to be divisible by {g} at dimension 0, "
                         f"but got weight of size {V.shape_str(weight.shape)} instead")
    if C != cpg * g:
        raise ValueError(f"Given groups={g}, weight of size {V.shape_str(weight.shape)}, expected input "
                         f"{V.shape_str(x.shape)} to have {cpg * g} channels, but got {C} channels instead")
    if H == 0 or W == 0:
        raise ValueError(f"conv2d: input of shape {V.shape_str(x.shape)} has an empty spatial dimension")
    ekh, ekw = d[0] * (KH - 1) + 1, d[1] * (KW - 1) + 1
    if H + 2 * p[0] < ekh or W + 2 * p[1] < ekw:
        raise ValueError(f"Calculated padded input size per channel: ({H + 2 * p[0]} x {W + 2 * p[1]}). "
                         f"Kernel size: ({ekh} x {ekw}). Kernel size can't be greater than actual input size")
    OH, OW = window_out_size(H, KH, s[0], p[0], d[0]), window_out_size(W, KW, s[1], p[1], d[1])
    V.check_numel((N, OC, OH, OW), V.dtype_of(x), "conv2d output")
    return s, p, d, g, (N, OC, OH, OW)


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D convolution (cross-correlation), as ``torch.nn.functional.conv2d``.

    x: (N, C, H, W) or (C, H, W); weight: (OC, C/groups, KH, KW); bias: (OC,) or None.
    Returns y: (N, OC, OH, OW) with OH = floor((H + 2*ph - dh*(KH-1) - 1)/sh) + 1 (same for OW).
    NaN/Inf in x reach exactly the outputs whose receptive field holds them (Inf times a zero
    weight is NaN, as in IEEE arithmetic). NaN/Inf in weight reach the outputs of that filter
    where the tap reads the input; whether a tap over the zero padding propagates them is not
    specified (the cpu kernels multiply the padding too, as PyTorch's im2col path does).
    """
    x4, unbatched, args, be = _conv2d_prepare(x, weight, bias, stride, padding, dilation, groups, "conv2d")
    y = be.conv2d(*args)
    return y[0] if unbatched else y


def _conv2d_prepare(x, weight, bias, stride, padding, dilation, groups, op):
    """Validate conv2d's arguments: (x as 4-D, was_unbatched, the backend's arguments, backend)."""
    V.float_array(x, "x")
    V.float_array(weight, "weight")
    if bias is not None:
        V.float_array(bias, "bias")
    V.same_dtype(op, x=x, weight=weight, bias=bias)
    x4, unbatched = _batched(x, op)
    s, p, d, g, _ = _conv_args(x4, weight, stride, padding, dilation, groups)
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"{op}: bias must have shape ({weight.shape[0]},), got {V.shape_str(bias.shape)}")
    be = _backend.for_arrays(x, weight, bias)
    return x4, unbatched, (_contig(x4), _contig(weight), _contig(bias), s, p, d, g), be


def conv2d_relu(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """``relu(conv2d(x, weight, bias, ...))`` in one pass: a deepkern extension (PyTorch has
    no such function; its equivalent is ``F.relu(F.conv2d(...))``).

    Arguments and shapes as :func:`conv2d`. On the cpu backend the ReLU is applied as each
    output tile is stored, saving a read and a write of y; other backends compose conv2d and
    relu. The values are those of ``relu(conv2d(...))``, bit for bit. Backward: the gradient
    through the ReLU is ``relu_backward(grad_out, y)``, then :func:`conv2d_backward`.
    """
    x4, unbatched, args, be = _conv2d_prepare(x, weight, bias, stride, padding, dilation, groups,
                                              "conv2d_relu")
    fused = getattr(be, "conv2d_relu", None)
    y = fused(*args) if fused is not None else be.relu(be.conv2d(*args))
    return y[0] if unbatched else y


def conv2d_backward(grad_out, x, weight, stride=1, padding=0, dilation=1, groups=1, bias=True,
                    input_grad=True):
    """Gradients of conv2d: returns (grad_x, grad_weight, grad_bias).

    grad_out: the forward output's shape; grad_bias is None when ``bias=False``.
    ``input_grad=False`` (a deepkern extension) skips grad_x, which is then None: the first
    layer of a network never needs the gradient with respect to its input (the data).
    """
    for a, n in ((grad_out, "grad_out"), (x, "x"), (weight, "weight")):
        V.float_array(a, n)
    V.same_dtype("conv2d_backward", grad_out=grad_out, x=x, weight=weight)
    bias = V.as_bool(bias, "bias")
    input_grad = V.as_bool(input_grad, "input_grad")
    x4, unbatched = _batched(x, "conv2d_backward")
    s, p, d, g, yshape = _conv_args(x4, weight, stride, padding, dilation, groups)
    dy4 = grad_out.reshape((1,) + tuple(grad_out.shape)) if unbatched and grad_out.ndim == 3 else grad_out
    if tuple(dy4.shape) != yshape:
        want = yshape[1:] if unbatched else yshape
        raise ValueError(f"conv2d_backward: grad_out has shape {V.shape_str(grad_out.shape)}, "
                         f"expected {V.shape_str(want)}")
    be = _backend.for_arrays(grad_out, x, weight)
    gx, gw, gb = be.conv2d_backward(_contig(dy4), _contig(x4), _contig(weight), s, p, d, g, bias, input_grad)
    return (gx[0] if unbatched and gx is not None else gx), gw, gb


# ---------------------------------------------------------------------------- pooling

def _pool_args(x, kernel_size, stride, padding, dilation, ceil_mode, op):
    k = V.check_positive_pair(V.pair(kernel_size, "kernel_size"), "kernel_size",
                              "kernel size should be greater than zero")
    s = k if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0) else \
        V.check_positive_pair(V.pair(stride, "stride"), "stride", "stride should be greater than zero")
    p = V.pair(padding, "padding")
    if p[0] < 0 or p[1] < 0:
        raise ValueError(f"pad must be non-negative, but got padding={p}")
    d = V.check_positive_pair(V.pair(dilation, "dilation"), "dilation", "dilation should be greater than zero")
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise ValueError(f"pad should be at most half of effective kernel size, but got pad={p}, "
                         f"kernel_size={k} and dilation={d}")
    ceil_mode = V.as_bool(ceil_mode, "ceil_mode")
    N, C, H, W = (int(v) for v in x.shape)
    if C == 0 or H == 0 or W == 0:
        raise ValueError(f"{op}: expected input with non-zero channel and spatial sizes "
                         f"(an empty batch is fine), got {V.shape_str(x.shape)}")
    OH = window_out_size(H, k[0], s[0], p[0], d[0], ceil_mode)
    OW = window_out_size(W, k[1], s[1], p[1], d[1], ceil_mode)
    if OH < 1 or OW < 1:
        raise ValueError(f"Given input size: ({C}x{H}x{W}). Calculated output size: ({C}x{OH}x{OW}). "
                         "Output size is too small")
    return k, s, p, d, ceil_mode, (N, C, OH, OW)


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Max pooling with indices, as ``torch.nn.functional.max_pool2d(..., return_indices=True)``.

    x: (N, C, H, W) or (C, H, W). Returns (y, indices), both (N, C, OH, OW); indices are int64
    flat positions ih*W + iw in each input plane. NaN propagates; ties pick the first tap.
    """
    V.float_array(x, "x")
    x4, unbatched = _batched(x, "max_pool2d")
    k, s, p, d, cm, _ = _pool_args(x4, kernel_size, stride, padding, dilation, ceil_mode, "max_pool2d")
    y, idx = _backend.for_arrays(x).max_pool2d(_contig(x4), k, s, p, d, cm)
    return (y[0], idx[0]) if unbatched else (y, idx)


def _input_shape(input_shape):
    if not isinstance(input_shape, (tuple, list)) or len(input_shape) not in (3, 4):
        raise ValueError(f"input_shape must be a tuple (N, C, H, W) or (C, H, W), got {input_shape!r}")
    shape = tuple(V.as_int(v, "input_shape", 0) for v in input_shape)
    return shape


def max_pool2d_backward(grad_out, indices, input_shape):
    """Gradient of max_pool2d: grad_out is routed to the input positions in ``indices``.

    An index outside its H*W plane is a ValueError (nothing is written).
    """
    V.float_array(grad_out, "grad_out")
    V.array_kind(indices, "indices")
    if V.dtype_of(indices) != np.int64:
        raise TypeError(f"indices must be int64, got {V.dtype_name(V.dtype_of(indices))}")
    shape = _input_shape(input_shape)
    unbatched = len(shape) == 3
    shape4 = (1,) + shape if unbatched else shape
    if tuple(grad_out.shape) != tuple(indices.shape):
        raise ValueError(f"max_pool2d_backward: indices has shape {V.shape_str(indices.shape)}, "
                         f"expected grad_out's {V.shape_str(grad_out.shape)}")
    if grad_out.ndim != len(shape) or tuple(grad_out.shape[:-2]) != shape[:-2]:
        raise ValueError(f"max_pool2d_backward: grad_out of shape {V.shape_str(grad_out.shape)} does not "
                         f"match input_shape {V.shape_str(shape)}")
    if shape4[2] == 0 or shape4[3] == 0:
        raise ValueError(f"max_pool2d_backward: input_shape {V.shape_str(shape)} has an empty plane")
    dy4 = grad_out.reshape((1,) + tuple(grad_out.shape)) if unbatched else grad_out
    idx4 = indices.reshape((1,) + tuple(indices.shape)) if unbatched else indices
    be = _backend.for_arrays(grad_out, indices)
    gx = be.max_pool2d_backward(_contig(dy4), _contig(idx4), shape4)
    return gx[0] if unbatched else gx


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    """Average pooling, as ``torch.nn.functional.avg_pool2d`` (no divisor_override).

    x: (N, C, H, W) or (C, H, W) -> y (N, C, OH, OW). The divisor is the window clipped to the
    padded input if count_include_pad, else the number of real input taps (a ceil_mode
    overhang beyond the padding never counts). A window without real taps gives 0 where
    PyTorch gives NaN (pytorch#36977); with padding <= kernel/2 that cannot happen.
    """
    V.float_array(x, "x")
    x4, unbatched = _batched(x, "avg_pool2d")
    k, s, p, _, cm, _ = _pool_args(x4, kernel_size, stride, padding, 1, ceil_mode, "avg_pool2d")
    cip = V.as_bool(count_include_pad, "count_include_pad")
    y = _backend.for_arrays(x).avg_pool2d(_contig(x4), k, s, p, cm, cip)
    return y[0] if unbatched else y


def avg_pool2d_backward(grad_out, input_shape, kernel_size, stride=None, padding=0,
                        ceil_mode=False, count_include_pad=True):
    """Gradient of avg_pool2d: each output's gradient / divisor goes to its window's taps."""
    V.float_array(grad_out, "grad_out")
    shape = _input_shape(input_shape)
    unbatched = len(shape) == 3
    shape4 = (1,) + shape if unbatched else shape
    probe = np.empty((0,) + shape4[1:], dtype=np.uint8)  # shape carrier for the checks only
    k, s, p, _, cm, yshape = _pool_args(probe, kernel_size, stride, padding, 1, ceil_mode, "avg_pool2d_backward")
    cip = V.as_bool(count_include_pad, "count_include_pad")
    want = (shape4[0],) + yshape[1:]
    dy4 = grad_out.reshape((1,) + tuple(grad_out.shape)) if unbatched and grad_out.ndim == 3 else grad_out
    if tuple(dy4.shape) != want:
        raise ValueError(f"avg_pool2d_backward: grad_out has shape {V.shape_str(grad_out.shape)}, "
                         f"expected {V.shape_str(want[1:] if unbatched else want)}")
    gx = _backend.for_arrays(grad_out).avg_pool2d_backward(_contig(dy4), shape4, k, s, p, cm, cip)
    return gx[0] if unbatched else gx


# ---------------------------------------------------------------------------- batch norm

def _channel_vec(a, name, C, dtype):
    if a is None:
        return None
    V.float_array(a, name)
    if V.dtype_of(a) != dtype:
        raise TypeError(f"batch_norm: {name} is {V.dtype_of(a).name} but x is {np.dtype(dtype).name}")
    if tuple(a.shape) != (C,):
        raise ValueError(f"{name} should contain {C} elements not {int(np.prod(a.shape))}"
                         if a.ndim == 1 else f"{name} must have shape ({C},), got {V.shape_str(a.shape)}")
    return a


def _inplace_target(a, name, *others):
    """An array batch_norm writes into: never silently copied (RELIABILITY.md C3)."""
    if V.is_cuda_array(a):  # the same rules, read from __cuda_array_interface__
        from ._arrays import check_inplace_target
        check_inplace_target(a, name)
        for other, oname in others:
            if other is not None and _may_share_memory(a, other):
                raise ValueError(f"batch_norm: {name} must not share memory with {oname}")
        return a
    if not isinstance(a, np.ndarray):
        return a
    if not a.flags.c_contiguous:
        raise ValueError(f"batch_norm: {name} must be C-contiguous (it is updated in place)")
    if not a.flags.aligned:
        raise ValueError(f"batch_norm: {name} must be aligned to its item size (it is updated in place)")
    if not a.flags.writeable:
        raise ValueError(f"batch_norm: {name} is not writeable (it is updated in place)")
    for other, oname in others:
        if other is not None and _may_share_memory(a, other):
            raise ValueError(f"batch_norm: {name} must not share memory with {oname}")
    return a


def _may_share_memory(a, b):
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return np.may_share_memory(a, b)
    if V.is_cuda_array(a) and V.is_cuda_array(b):
        from ._arrays import may_share_memory
        return may_share_memory(a, b)
    return False  # a NumPy array and a CUDA array: the backend dispatch rejects the mix


def batch_norm(x, weight, bias, running_mean, running_var, training, momentum=0.1, eps=1e-5):
    """Batch normalization, as ``torch.nn.functional.batch_norm``; returns (y, save_mean, save_invstd).

    x: (N, C, H, W) or (N, C); weight, bias, running_mean, running_var: (C,) or None.
    training: batch mean and biased variance normalize; running stats (if given) are updated
    in place, running_var with the unbiased variance. eval: running stats required, untouched;
    save_mean = running_mean, save_invstd = 1/sqrt(running_var + eps).
    ``momentum`` must be finite (values outside [0, 1] are accepted, as in PyTorch).
    NaN: a constant channel normalizes to exactly ``bias`` (finite, variance 0, even for
    constants like 1e30); a channel holding NaN or Inf gives NaN outputs for that channel only.
    """
    be, args = _batch_norm_prepare(x, weight, bias, running_mean, running_var, training, momentum, eps,
                                   "batch_norm")
    return be.batch_norm(*args)


def batch_norm_relu(x, weight, bias, running_mean, running_var, training, momentum=0.1, eps=1e-5):
    """``relu(batch_norm(...))`` in one op: a deepkern extension (PyTorch composes
    ``F.relu(F.batch_norm(...))``). Returns (y, save_mean, save_invstd).

    Arguments, checks and running-statistics updates as :func:`batch_norm`; y is
    ``relu(batch_norm(...)[0])`` bit for bit. On the cpu backend the ReLU is applied as batch
    norm writes y (no pass of its own over y), and on the cuda backend as its apply kernel
    stores y; the numpy reference composes the two. Backward:
    :func:`batch_norm_relu_backward` with this y. ``nn.Sequential`` runs a BatchNorm followed
    by a ReLU this way by itself.
    """
    be, args = _batch_norm_prepare(x, weight, bias, running_mean, running_var, training, momentum, eps,
                                   "batch_norm_relu")
    fused = getattr(be, "batch_norm_relu", None)
    if fused is not None:
        return fused(*args)
    y, mean, invstd = be.batch_norm(*args)
    return be.relu(y), mean, invstd


def _batch_norm_prepare(x, weight, bias, running_mean, running_var, training, momentum, eps, op):
    """batch_norm's checks (for batch_norm and batch_norm_relu): (backend, its arguments)."""
    V.float_array(x, "x")
    V.check_ndim(x, op, (2, 4), "(N, C) or (N, C, H, W)")
    training = V.as_bool(training, "training")
    momentum = V.check_finite(V.as_float(momentum, "momentum"), "momentum")
    eps = V.as_float(eps, "eps")
    if not (eps > 0) or not np.isfinite(eps):
        raise ValueError(f"batch_norm: eps must be positive and finite, got {eps}")
    dt, C = V.dtype_of(x), int(x.shape[1])
    if C == 0:
        raise ValueError("batch_norm: x has no channels")
    weight = _channel_vec(weight, "weight", C, dt)
    bias = _channel_vec(bias, "bias", C, dt)
    running_mean = _channel_vec(running_mean, "running_mean", C, dt)
    running_var = _channel_vec(running_var, "running_var", C, dt)
    if (running_mean is None) != (running_var is None):
        raise ValueError("batch_norm: running_mean and running_var must be given together")
    if not training and running_mean is None:
        raise ValueError("batch_norm: running_mean and running_var are required when training=False")
    if training and running_mean is not None:
        inputs = ((x, "x"), (weight, "weight"), (bias, "bias"))
        _inplace_target(running_mean, "running_mean", *inputs)
        _inplace_target(running_var, "running_var", *inputs)
        if _may_share_memory(running_mean, running_var):
            raise ValueError("batch_norm: running_mean and running_var must not share memory")
    M = math.prod(int(v) for v in x.shape) // C  # (x.size is a method on torch tensors)
    if training and M <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {V.shape_str(x.shape)}")
    be = _backend.for_arrays(x, weight, bias, running_mean, running_var)
    if not training:  # read-only inputs in eval: copied like any other input if need be
        running_mean, running_var = _contig(running_mean), _contig(running_var)
    return be, (_contig(x), _contig(weight), _contig(bias), running_mean, running_var, training, momentum, eps)


def batch_norm_backward(grad_out, x, weight, save_mean, save_invstd, training=True):
    """Gradients of batch_norm: returns (grad_x, grad_weight, grad_bias).

    grad_weight and grad_bias are None when weight is None. save_mean and save_invstd are
    the ones batch_norm returned.
    """
    be, args = _batch_norm_backward_prepare(grad_out, None, x, weight, save_mean, save_invstd, training,
                                            "batch_norm_backward")
    return be.batch_norm_backward(*args)


def batch_norm_relu_backward(grad_out, y, x, weight, save_mean, save_invstd, training=True):
    """Gradients of :func:`batch_norm_relu` (y: its output): returns (grad_x, grad_weight,
    grad_bias), bit for bit ``batch_norm_backward(relu_backward(grad_out, y), x, ...)``. On the
    cpu and cuda backends the ReLU's mask is applied as batch norm's backward reads grad_out.
    """
    be, (g, x, weight, save_mean, save_invstd, training) = _batch_norm_backward_prepare(
        grad_out, y, x, weight, save_mean, save_invstd, training, "batch_norm_relu_backward")
    y = _contig(y)
    fused = getattr(be, "batch_norm_relu_backward", None)
    if fused is not None:
        return fused(g, y, x, weight, save_mean, save_invstd, training)
    return be.batch_norm_backward(be.relu_backward(g, y), x, weight, save_mean, save_invstd, training)


def _batch_norm_backward_prepare(grad_out, y, x, weight, save_mean, save_invstd, training, op):
    """batch_norm_backward's checks (y: batch_norm_relu's output, or None): (backend, arguments)."""
    for a, n in ((grad_out, "grad_out"), (y, "y"), (x, "x"), (weight, "weight"), (save_mean, "save_mean"),
                 (save_invstd, "save_invstd")):
        if a is not None or n not in ("weight", "y"):
            V.float_array(a, n)
    V.same_dtype(op, grad_out=grad_out, y=y, x=x, weight=weight, save_mean=save_mean, save_invstd=save_invstd)
    V.check_ndim(x, op, (2, 4), "(N, C) or (N, C, H, W)")
    training = V.as_bool(training, "training")
    for a, n in ((grad_out, "grad_out"), (y, "y")):
        if a is not None and tuple(a.shape) != tuple(x.shape):
            raise ValueError(f"{op}: {n} has shape {V.shape_str(a.shape)}, expected x's {V.shape_str(x.shape)}")
    C, dt = int(x.shape[1]), V.dtype_of(x)
    weight = _channel_vec(weight, "weight", C, dt)
    _channel_vec(save_mean, "save_mean", C, dt)
    _channel_vec(save_invstd, "save_invstd", C, dt)
    be = _backend.for_arrays(grad_out, y, x, weight, save_mean, save_invstd)
    return be, (_contig(grad_out), _contig(x), _contig(weight), _contig(save_mean), _contig(save_invstd), training)


# ---------------------------------------------------------------------------- dropout

def _probability(p):
    p = V.as_float(p, "p")
    if not (0.0 <= p <= 1.0):
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    return p


def _seed(seed):
    if seed is None:
        from . import _next_seed
        return _next_seed()
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    seed = int(seed)
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    return seed


def dropout(x, p=0.5, training=True, seed=None):
    """Inverted dropout: returns (y, mask) with y = x * mask / (1 - p), mask uint8 of x's shape.

    The mask is a pure function of (seed, flat index): the same on any thread count, dtype,
    shape and backend. ``seed=None`` draws the next seed from the stream ``manual_seed`` sets.
    training=False or p=0: y equals x and the mask is all ones; p=1: zeros.
    NaN in x stays NaN where kept and also where dropped (0 * NaN is NaN, as in PyTorch); p=1
    gives zeros even there (PyTorch gives NaN).
    """
    V.float_array(x, "x")
    p = _probability(p)
    training = V.as_bool(training, "training")
    seed = _seed(seed)
    return _backend.for_arrays(x).dropout(_contig(x), p, training, seed)


def dropout_backward(grad_out, mask, p):
    """grad_x = grad_out * mask / (1 - p) (zeros when p = 1).

    mask: uint8 of grad_out's shape, as dropout returned it; any nonzero entry keeps its
    element. NaN/Inf in grad_out propagate where the mask keeps (and, as NaN, also where it
    drops, since 0 * NaN is NaN), except with p = 1, which gives zeros.
    """
    V.float_array(grad_out, "grad_out")
    V.array_kind(mask, "mask")
    if V.dtype_of(mask) != np.uint8:
        raise TypeError(f"mask must be uint8, got {V.dtype_of(mask).name}")
    if tuple(mask.shape) != tuple(grad_out.shape):
        raise ValueError(f"dropout_backward: mask has shape {V.shape_str(mask.shape)}, "
                         f"expected grad_out's {V.shape_str(grad_out.shape)}")
    p = _probability(p)
    return _backend.for_arrays(grad_out, mask).dropout_backward(_contig(grad_out), _contig(mask), p)


# ---------------------------------------------------------------------------- relu

def relu(x):
    """y = max(x, 0) element-wise (NaN stays NaN), any shape."""
    V.float_array(x, "x")
    return _backend.for_arrays(x).relu(_contig(x))


def relu_backward(grad_out, y):
    """grad_x = 0 where y <= 0, else grad_out; y is relu's output.

    PyTorch's rule (threshold_backward): where y is NaN, y <= 0 is false and grad_out passes
    through.
    """
    V.float_array(grad_out, "grad_out")
    V.float_array(y, "y")
    V.same_dtype("relu_backward", grad_out=grad_out, y=y)
    if tuple(grad_out.shape) != tuple(y.shape):
        raise ValueError(f"relu_backward: y has shape {V.shape_str(y.shape)}, expected grad_out's "
                         f"{V.shape_str(grad_out.shape)}")
    return _backend.for_arrays(grad_out, y).relu_backward(_contig(grad_out), _contig(y))


# ---------------------------------------------------------------------------- fast path for nn layers
#
# A layer of deepkern.nn calls the same op thousands of times with the same shapes, and at
# small sizes the validation above costs as much as the kernel (~8 us for conv2d). So a layer
# calls the public function the first time, and again whenever its input's shape, dtype or
# contiguity or its parameter arrays change; in between it calls the backend directly:
#
#     y = F._unchecked(x).conv2d(x, w, b, stride, padding, dilation, groups)
#
# with the normalized arguments it computed once (pairs as tuples, 4-D C-contiguous arrays,
# the argument order of deepkern.reference). Only NumPy arrays take this path. The C++
# bindings still check every array they are given (dtype, contiguity, sizes), so a stale
# check can give a less friendly error, never a crash or a silent wrong answer.

def _unchecked(x):
    """The backend module for NumPy array ``x``: the reference inside use_backend("numpy"), else cpu."""
    return _reference if _backend._mode.get() == "numpy" else _cpu


# ---------------------------------------------------------------------------- fractional max pooling

def _ratio(v):
    vals = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    if len(vals) != 2:
        raise ValueError(f"output_ratio must be a number or a pair of numbers, got {v!r}")
    vals = tuple(V.as_float(r, "output_ratio") for r in vals)
    if not all(0.0 < r < 1.0 for r in vals):
        raise ValueError(f"output_ratio must be between 0 and 1 (got {v!r})")
    return vals


def _fractional_args(x4, kernel_size, output_size, output_ratio):
    """((KH, KW), (OH, OW)) for a (N, C, H, W) input, validated as PyTorch validates them."""
    k = V.check_positive_pair(V.pair(kernel_size, "kernel_size"), "kernel_size",
                              "fractional_max_pool2d: kernel_size must be greater than zero")
    if output_size is None and output_ratio is None:
        raise ValueError("fractional_max_pool2d requires specifying either an output_size or an output_ratio")
    if output_size is not None and output_ratio is not None:
        raise ValueError("fractional_max_pool2d: only one of output_size and output_ratio may be specified")
    N, C, H, W = (int(v) for v in x4.shape)
    if C == 0 or H == 0 or W == 0:
        raise ValueError(f"fractional_max_pool2d: expected input with non-zero channel and spatial sizes "
                         f"(an empty batch is fine), got {V.shape_str(x4.shape)}")
    if output_size is not None:
        out = V.check_positive_pair(V.pair(output_size, "output_size"), "output_size",
                                    "fractional_max_pool2d: output_size must be greater than zero")
    else:
        out = _reference.fractional_output_size((H, W), None, _ratio(output_ratio))
        if out[0] < 1 or out[1] < 1:
            raise ValueError(f"fractional_max_pool2d: output_ratio={output_ratio!r} of an input of "
                             f"{H}x{W} gives an empty output {out}")
    if out[0] + k[0] - 1 > H or out[1] + k[1] - 1 > W:
        raise ValueError(f"fractional_max_pool2d: an output of {out[0]}x{out[1]} with kernel_size {k} needs an "
                         f"input of at least {out[0] + k[0] - 1}x{out[1] + k[1] - 1}, got {H}x{W} "
                         f"(kernel_size too large relative to the input)")
    return k, out


def fractional_max_pool2d(x, kernel_size, output_size=None, output_ratio=None, samples=None, seed=None):
    """Fractional max pooling (Graham 2014), as ``torch.nn.functional.fractional_max_pool2d(...,
    return_indices=True)``. Returns (y, indices) like :func:`max_pool2d`.

    x: (N, C, H, W) or (C, H, W), float32/float64. kernel_size: the pooling region (an int or
    a pair). Exactly one of output_size (int or pair (OH, OW)) and output_ratio (a number or a
    pair in (0, 1); OH = int(H * ratio)). Needs OH + KH - 1 <= H (same for W).
    samples: (N, C, 2) of x's dtype in [0, 1) -- PyTorch's ``_random_samples``: [n, c, 0]
    places the columns, [n, c, 1] the rows; the same samples give PyTorch's regions exactly.
    For unbatched x, samples is (1, C, 2). samples=None draws them from ``seed`` with the
    counter-based generator (deepkern.reference.fractional_samples: the same regions on
    every backend, dtype and thread count); seed=None takes the next seed of the stream that
    ``deepkern.manual_seed`` sets. PyTorch draws from its own generator instead.

    y, indices: (N, C, OH, OW); indices int64 flat positions ih*W + iw in each input plane.
    A region holding NaN gives NaN and the index of its LAST NaN (PyTorch's rule); ties keep
    the first tap in row-major order. The backward is :func:`fractional_max_pool2d_backward`.
    CUDA arrays (float32) run the CUDA kernel, bitwise the cpu result; samples are then still
    a NumPy array (validated on the host and copied to the device). A CUDA array on a build
    without a usable CUDA backend is a RuntimeError (never a silent copy to the host).
    """
    V.float_array(x, "x")
    x4, unbatched = _batched(x, "fractional_max_pool2d")
    k, out = _fractional_args(x4, kernel_size, output_size, output_ratio)
    N, C = int(x4.shape[0]), int(x4.shape[1])
    if samples is None:
        samples = _reference.fractional_samples(N, C, _seed(seed), V.dtype_of(x))
    else:
        if seed is not None:
            raise ValueError("fractional_max_pool2d: give samples or seed, not both")
        if V.is_cuda_array(samples):
            raise TypeError("fractional_max_pool2d: samples must be a numpy.ndarray (on CUDA too: "
                            "they are checked on the host, then copied to the device)")
        V.float_array(samples, "samples")
        V.same_dtype("fractional_max_pool2d", x=x, samples=samples)
        if tuple(samples.shape) != (N, C, 2):
            raise ValueError(f"fractional_max_pool2d: samples must have shape {V.shape_str((N, C, 2))}, "
                             f"got {V.shape_str(samples.shape)}")
        if samples.size and not bool(np.all((samples >= 0) & (samples < 1))):
            raise ValueError("fractional_max_pool2d: samples must lie in [0, 1) (NaN is not allowed)")
    be = _backend.for_arrays(x)          # a CUDA array without a usable CUDA build: RuntimeError
    if not hasattr(be, "fractional_max_pool2d"):
        raise RuntimeError(f"fractional_max_pool2d has no kernel in {getattr(be, '__name__', be)} of this build")
    y, idx = be.fractional_max_pool2d(_contig(x4), k, out, None, _contig(samples), None)
    return (y[0], idx[0]) if unbatched else (y, idx)


def fractional_max_pool2d_backward(grad_out, indices, input_shape):
    """Gradient of fractional_max_pool2d: grad_out added at ``indices`` (overlapping regions
    can send several outputs to one input). The same scatter as :func:`max_pool2d_backward`,
    with its arguments and checks (this one also runs on CUDA arrays)."""
    return max_pool2d_backward(grad_out, indices, input_shape)
