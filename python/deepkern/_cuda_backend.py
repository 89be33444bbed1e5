"""The ``cuda`` backend: the ops on arrays exposing ``__cuda_array_interface__``.

Same function names and argument order as ``deepkern._cpu`` (and ``deepkern.reference``);
arguments arrive validated and normalized by ``deepkern.functional``. Each function checks
the CUDA arrays (``_arrays.prepare``: float32 only, one library, one device; non-contiguous
inputs copied by their library, in-place targets never), allocates the outputs with the
caller's library on the same device, and queues the kernels of ``_cuda`` on the library's
current stream (or the stream the arrays' interface names). Nothing synchronizes except
``max_pool2d_backward``, which reads back whether an index was out of range.

Importing this module raises ImportError when the build has no ``_cuda`` extension; the
backend registry (``_backend.py``) turns that into ``backends()`` without "cuda" and a
RuntimeError naming the reason when a CUDA array is passed.
"""

from __future__ import annotations

import numpy as np

from . import _arrays as A
from . import _cuda  # ImportError here means: no CUDA module in this build
from .reference import window_out_size


def _built() -> str:
    info = _cuda.build_info()
    return f"the CUDA module (CUDA {info['version']}, archs {', '.join(map(str, info['archs']))})"


def unavailable_reason():
    """None when the kernels can run here; else why not (no driver, no device)."""
    try:
        err = _cuda.probe_error()
    except RuntimeError as e:  # defensive: probe_error itself does not throw
        err = str(e)
    return f"{_built()} is built, but {err}" if err else None


def build_info() -> dict:
    """Compile-time facts (version, archs, tf32) plus the driver and the visible devices."""
    info = dict(_cuda.build_info())
    drv = _cuda.driver_version()
    info["driver"] = f"{drv // 1000}.{(drv % 1000) // 10}" if drv else None
    info["devices"] = [dict(_cuda.device_properties(i)) for i in range(_cuda.device_count())]
    return info


def _shape(a):
    return tuple(int(s) for s in a.shape)


# ---------------------------------------------------------------------------- conv2d

def conv2d(x, weight, bias, stride, padding, dilation, groups):
    c, (x, weight, bias) = A.prepare("conv2d", x=x, weight=weight, bias=bias)
    N, _, H, W = _shape(x)
    OC, _, KH, KW = _shape(weight)
    OH = window_out_size(H, KH, stride[0], padding[0], dilation[0])
    OW = window_out_size(W, KW, stride[1], padding[1], dilation[1])
    y = c.empty((N, OC, OH, OW))
    _cuda.conv2d_forward(y, x, weight, bias, stride, padding, dilation, groups, c.stream)
    return y


def conv2d_backward(grad_out, x, weight, stride, padding, dilation, groups, bias, input_grad=True):
    c, (grad_out, x, weight) = A.prepare("conv2d_backward", grad_out=grad_out, x=x, weight=weight)
    grad_x = c.empty(_shape(x)) if input_grad else None
    grad_w = c.empty(_shape(weight))
    grad_b = c.empty((_shape(weight)[0],)) if bias else None
    if input_grad:
        _cuda.conv2d_backward_input(grad_x, grad_out, weight, stride, padding, dilation, groups, c.stream)
    _cuda.conv2d_backward_weight(grad_w, grad_b, grad_out, x, stride, padding, dilation, groups,
                                 c.stream)
    return grad_x, grad_w, grad_b


# ---------------------------------------------------------------------------- pooling

def max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode):
    c, (x,) = A.prepare("max_pool2d", x=x)
    N, C, H, W = _shape(x)
    OH = window_out_size(H, kernel_size[0], stride[0], padding[0], dilation[0], ceil_mode)
    OW = window_out_size(W, kernel_size[1], stride[1], padding[1], dilation[1], ceil_mode)
    y = c.empty((N, C, OH, OW))
    idx = c.empty((N, C, OH, OW), np.int64)
    _cuda.max_pool2d_forward(y, idx, x, kernel_size, stride, padding, dilation, ceil_mode, c.stream)
    return y, idx


def max_pool2d_backward(grad_out, indices, input_shape):
    c, (grad_out, indices) = A.prepare("max_pool2d_backward", grad_out=grad_out, indices=indices)
    grad_x = c.empty(input_shape)
    _cuda.max_pool2d_backward(grad_x, grad_out, indices, c.stream)
    return grad_x


def fractional_max_pool2d(x, kernel_size, output_size, output_ratio, samples, seed):
    """functional passes output_size as a pair and the samples as a validated NumPy float32
    array (N, C, 2), which is copied to x's device here (a few bytes per plane)."""
    c, (x,) = A.prepare("fractional_max_pool2d", x=x)
    N, C = _shape(x)[:2]
    y = c.empty((N, C) + tuple(output_size))
    idx = c.empty((N, C) + tuple(output_size), np.int64)
    s = A.from_host(np.ascontiguousarray(samples, dtype=np.float32), x)
    _cuda.fractional_max_pool2d_forward(y, idx, x, s, kernel_size[0], kernel_size[1], c.stream)
    return y, idx


def fractional_max_pool2d_backward(grad_out, indices, input_shape):
    return max_pool2d_backward(grad_out, indices, input_shape)


def avg_pool2d(x, kernel_size, stride, padding, ceil_mode, count_include_pad):
    c, (x,) = A.prepare("avg_pool2d", x=x)
    N, C, H, W = _shape(x)
    OH = window_out_size(H, kernel_size[0], stride[0], padding[0], 1, ceil_mode)
    OW = window_out_size(W, kernel_size[1], stride[1], padding[1], 1, ceil_mode)
    y = c.empty((N, C, OH, OW))
    _cuda.avg_pool2d_forward(y, x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                             c.stream)
    return y


def avg_pool2d_backward(grad_out, input_shape, kernel_size, stride, padding, ceil_mode,
                        count_include_pad):
    c, (grad_out,) = A.prepare("avg_pool2d_backward", grad_out=grad_out)
    grad_x = c.empty(input_shape)
    _cuda.avg_pool2d_backward(grad_x, grad_out, kernel_size, stride, padding, ceil_mode,
                              count_include_pad, c.stream)
    return grad_x


# ---------------------------------------------------------------------------- batch norm

def _batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps, relu, op):
    inplace = ("running_mean", "running_var") if training else ()
    c, (x, weight, bias, running_mean, running_var) = A.prepare(
        op, inplace=inplace, x=x, weight=weight, bias=bias, running_mean=running_mean,
        running_var=running_var)
    C = _shape(x)[1]
    y = c.empty(_shape(x))
    save_mean = c.empty((C,))
    save_invstd = c.empty((C,))
    _cuda.batch_norm_forward(y, save_mean, save_invstd, x, weight, bias, running_mean, running_var,
                             training, momentum, eps, c.stream, relu)
    return y, save_mean, save_invstd


def batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps):
    return _batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps, False,
                       "batch_norm")


def batch_norm_relu(x, weight, bias, running_mean, running_var, training, momentum, eps):
    """relu(batch_norm(...)), the ReLU applied as the apply kernel stores y (batch_norm.cu)."""
    return _batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps, True,
                       "batch_norm_relu")


def _batch_norm_backward(grad_out, y, x, weight, save_mean, save_invstd, training, op):
    c, (grad_out, y, x, weight, save_mean, save_invstd) = A.prepare(
        op, grad_out=grad_out, y=y, x=x, weight=weight, save_mean=save_mean, save_invstd=save_invstd)
    C = _shape(x)[1]
    grad_x = c.empty(_shape(x))
    grad_w = c.empty((C,)) if weight is not None else None
    grad_b = c.empty((C,)) if weight is not None else None
    _cuda.batch_norm_backward(grad_x, grad_w, grad_b, grad_out, x, weight, save_mean, save_invstd,
                              training, c.stream, y)
    return grad_x, grad_w, grad_b


def batch_norm_backward(grad_out, x, weight, save_mean, save_invstd, training):
    return _batch_norm_backward(grad_out, None, x, weight, save_mean, save_invstd, training,
                                "batch_norm_backward")


def batch_norm_relu_backward(grad_out, y, x, weight, save_mean, save_invstd, training):
    """batch_norm_backward of relu_backward(grad_out, y), the mask applied as the kernels read it."""
    return _batch_norm_backward(grad_out, y, x, weight, save_mean, save_invstd, training,
                                "batch_norm_relu_backward")


# ---------------------------------------------------------------------------- dropout, relu

def dropout(x, p, training, seed):
    c, (x,) = A.prepare("dropout", x=x)
    if not training or p == 0:
        return c.copy(x), c.ones(_shape(x), np.uint8)
    y = c.empty(_shape(x))
    mask = c.empty(_shape(x), np.uint8)
    _cuda.dropout_forward(y, mask, x, p, seed, c.stream)
    return y, mask


def dropout_backward(grad_out, mask, p):
    c, (grad_out, mask) = A.prepare("dropout_backward", grad_out=grad_out, mask=mask)
    grad_x = c.empty(_shape(grad_out))
    _cuda.dropout_backward(grad_x, grad_out, mask, p, c.stream)
    return grad_x


def relu(x):
    c, (x,) = A.prepare("relu", x=x)
    y = c.empty(_shape(x))
    _cuda.relu_forward(y, x, c.stream)
    return y


def relu_backward(grad_out, y):
    c, (grad_out, y) = A.prepare("relu_backward", grad_out=grad_out, y=y)
    grad_x = c.empty(_shape(grad_out))
    _cuda.relu_backward(grad_x, grad_out, y, c.stream)
    return grad_x


# ---------------------------------------------------------------------------- multi-tensor passes
# deepkern.optim, EMA and clip_grad_norm_ call these with lists of float32 CUDA arrays of one
# library on one device (they checked it); each is ONE pass (a launch per up to 36 tensors) on
# the library's current stream. The binding re-checks every array.

def optim_step(kind: int, params, grads, states, emas, hyper: np.ndarray) -> None:
    """One fused optimizer step (csrc/cuda/optim.cu): _C.optim_step's arguments, on the GPU."""
    if not params:
        return
    _cuda.optim_step(kind, list(params), list(grads), list(states), None if emas is None else list(emas),
                     hyper, A.stream_for(params[0]))


def ema_update(avgs, xs, decay: float) -> None:
    if avgs:
        _cuda.ema_update(list(avgs), list(xs), float(decay), A.stream_for(avgs[0]))


def multi_scale(xs, scale: float) -> None:
    if xs:
        _cuda.multi_scale(list(xs), float(scale), A.stream_for(xs[0]))


def multi_copy(dsts, srcs) -> None:
    if dsts:
        _cuda.multi_copy(list(dsts), list(srcs), A.stream_for(dsts[0]))


def multi_norm_reduce(xs, p: float) -> float:
    """The p-norm reduction of all elements in double (synchronizes: the value comes back)."""
    if not xs:
        return 0.0
    return float(_cuda.multi_norm_reduce(list(xs), float(p), A.stream_for(xs[0])))


# ---------------------------------------------------------------------------- the GPU's limits

def calibrate(device: int = 0, copy_bytes: int = 1 << 30, repeats: int = 10) -> dict:
    """deepkern bench's limits of a GPU, measured now (synchronizes; ~1 s):

    copy_gbps   device-to-device cudaMemcpy of copy_bytes, counting the bytes read and written
                (2 x copy_bytes per copy): the bandwidth a streaming kernel can reach
    fma_gflops  float32 FMAs in registers on every SM (2 flops per FMA)

    Best of ``repeats`` runs (and the medians).
    """
    import statistics

    secs = _cuda.calibrate_copy(int(device), int(copy_bytes), int(repeats))
    fma = _cuda.calibrate_fma(int(device), int(repeats))
    props = _cuda.device_properties(int(device))
    return {"device": props["name"], "compute_capability": props["compute_capability"],
            "copy_bytes": int(copy_bytes),
            "copy_gbps": 2 * copy_bytes / min(secs) / 1e9,
            "copy_gbps_median": 2 * copy_bytes / statistics.median(secs) / 1e9,
            "fma_gflops": fma["flops_per_run"] / min(fma["seconds"]) / 1e9,
            "fma_gflops_median": fma["flops_per_run"] / statistics.median(fma["seconds"]) / 1e9}
