"""The ``cpu`` backend: allocate outputs, call the C++ kernels of ``_C``.

Same function names and argument order as ``deepkern.reference``; arguments arrive validated
and normalized by ``deepkern.functional`` (pairs as tuples, inputs C-contiguous, one dtype).
"""

from __future__ import annotations

import numpy as np

from . import _C
from .reference import window_out_size


def conv2d(x, weight, bias, stride, padding, dilation, groups, relu=False):
    N, _, H, W = x.shape
    OC, _, KH, KW = weight.shape
    OH = window_out_size(H, KH, stride[0], padding[0], dilation[0])
    OW = window_out_size(W, KW, stride[1], padding[1], dilation[1])
    y = np.empty((N, OC, OH, OW), dtype=x.dtype)
    _C.conv2d_forward(y, x, weight, bias, stride, padding, dilation, groups, relu=relu)
    return y


def conv2d_relu(x, weight, bias, stride, padding, dilation, groups):
    """relu(conv2d(...)), the ReLU fused into the convolution's stores (functional.conv2d_relu)."""
    return conv2d(x, weight, bias, stride, padding, dilation, groups, relu=True)


def conv2d_backward(grad_out, x, weight, stride, padding, dilation, groups, bias, input_grad=True):
    grad_x = np.empty_like(x) if input_grad else None
    grad_w = np.empty_like(weight)
    grad_b = np.empty(weight.shape[0], dtype=x.dtype) if bias else None
    if input_grad:
        _C.conv2d_backward_input(grad_x, grad_out, weight, stride, padding, dilation, groups)
    _C.conv2d_backward_weight(grad_w, grad_b, grad_out, x, stride, padding, dilation, groups)
    return grad_x, grad_w, grad_b


def max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode):
    N, C, H, W = x.shape
    OH = window_out_size(H, kernel_size[0], stride[0], padding[0], dilation[0], ceil_mode)
    OW = window_out_size(W, kernel_size[1], stride[1], padding[1], dilation[1], ceil_mode)
    y = np.empty((N, C, OH, OW), dtype=x.dtype)
    idx = np.empty((N, C, OH, OW), dtype=np.int64)
    _C.max_pool2d_forward(y, idx, x, kernel_size, stride, padding, dilation, ceil_mode)
    return y, idx


def max_pool2d_backward(grad_out, indices, input_shape):
    grad_x = np.empty(input_shape, dtype=grad_out.dtype)
    _C.max_pool2d_backward(grad_x, grad_out, indices)
    return grad_x


def avg_pool2d(x, kernel_size, stride, padding, ceil_mode, count_include_pad):
    N, C, H, W = x.shape
    OH = window_out_size(H, kernel_size[0], stride[0], padding[0], 1, ceil_mode)
    OW = window_out_size(W, kernel_size[1], stride[1], padding[1], 1, ceil_mode)
    y = np.empty((N, C, OH, OW), dtype=x.dtype)
    _C.avg_pool2d_forward(y, x, kernel_size, stride, padding, ceil_mode, count_include_pad)
    return y


def avg_pool2d_backward(grad_out, input_shape, kernel_size, stride, padding, ceil_mode,
                        count_include_pad):
    grad_x = np.empty(input_shape, dtype=grad_out.dtype)
    _C.avg_pool2d_backward(grad_x, grad_out, kernel_size, stride, padding, ceil_mode,
                           count_include_pad)
    return grad_x


def _batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps, relu):
    C = x.shape[1]
    y = np.empty_like(x)
    save_mean = np.empty(C, dtype=x.dtype)
    save_invstd = np.empty(C, dtype=x.dtype)
    _C.batch_norm_forward(y, save_mean, save_invstd, x, weight, bias, running_mean, running_var,
                          training, momentum, eps, relu)
    return y, save_mean, save_invstd


def batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps):
    return _batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps, False)


def batch_norm_relu(x, weight, bias, running_mean, running_var, training, momentum, eps):
    """relu(batch_norm(...)), the ReLU applied as batch norm writes y (functional.batch_norm_relu)."""
    return _batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps, True)


def _batch_norm_backward(grad_out, x, weight, save_mean, save_invstd, training, relu_y):
    C = x.shape[1]
    grad_x = np.empty_like(x)
    grad_w = np.empty(C, dtype=x.dtype) if weight is not None else None
    grad_b = np.empty(C, dtype=x.dtype) if weight is not None else None
    _C.batch_norm_backward(grad_x, grad_w, grad_b, grad_out, x, weight, save_mean, save_invstd,
                           training, relu_y)
    return grad_x, grad_w, grad_b


def batch_norm_backward(grad_out, x, weight, save_mean, save_invstd, training):
    return _batch_norm_backward(grad_out, x, weight, save_mean, save_invstd, training, None)


def batch_norm_relu_backward(grad_out, y, x, weight, save_mean, save_invstd, training):
    """batch_norm_backward(relu_backward(grad_out, y), ...), the ReLU's mask applied as batch
    norm's backward reads grad_out (y: batch_norm_relu's output)."""
    return _batch_norm_backward(grad_out, x, weight, save_mean, save_invstd, training, y)


def dropout(x, p, training, seed):
    if not training or p == 0:
        return x.copy(), np.ones(x.shape, dtype=np.uint8)
    y = np.empty_like(x)
    mask = np.empty(x.shape, dtype=np.uint8)
    _C.dropout_forward(y, mask, x, p, seed)
    return y, mask


def dropout_backward(grad_out, mask, p):
    grad_x = np.empty_like(grad_out)
    _C.dropout_backward(grad_x, grad_out, mask, p)
    return grad_x


def relu(x):
    y = np.empty_like(x)
    _C.relu_forward(y, x)
    return y


def relu_backward(grad_out, y):
    grad_x = np.empty_like(grad_out)
    _C.relu_backward(grad_x, grad_out, y)
    return grad_x


def fractional_max_pool2d(x, kernel_size, output_size, output_ratio, samples, seed):
    """functional passes output_size as a pair and the samples (never a ratio or a seed)."""
    N, C = x.shape[:2]
    y = np.empty((N, C) + tuple(output_size), dtype=x.dtype)
    idx = np.empty(y.shape, dtype=np.int64)
    _C.fractional_max_pool2d_forward(y, idx, x, samples, kernel_size[0], kernel_size[1])
    return y, idx


def fractional_max_pool2d_backward(grad_out, indices, input_shape):
    return max_pool2d_backward(grad_out, indices, input_shape)


# ---------------------------------------------------------------------------- memory
#
# Every op above allocates its outputs with np.empty, and a training step frees them again:
# at the sizes of a small CNN (100 KB - 4 MB per array) glibc's malloc gives such blocks back
# to the kernel (it trims the top of the heap, or munmaps), so the next step's outputs are
# first touched page by page. On the digits CNN that was 75-110 page faults and 0.2-0.35 ms
# of system time per step (bench/NOTES.md), a cost that grows as the kernels get faster.
# M_TOP_PAD asks glibc to keep 64 MiB of freed memory at the top of the heap instead, so
# outputs reuse pages that are already mapped. Setting it also freezes glibc's dynamic mmap
# threshold wherever it stands (128 KiB at start), so every larger block would be a fresh mmap,
# first touched page by page on every call: 520 page faults and ~1.5 ms for one 16 MiB relu
# output (bench/NOTES.md). M_MMAP_THRESHOLD = 32 MiB (glibc's largest) keeps blocks up to that
# size on the heap as well. Only the process's retained memory changes (at most 64 MiB more
# after a peak), never a result. DEEPKERN_MALLOC_TUNE=0 turns both off.

_M_TOP_PAD = -2                                       # glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_TOP_PAD_BYTES = 64 << 20
_MMAP_THRESHOLD_BYTES = 32 << 20                      # DEFAULT_MMAP_THRESHOLD_MAX on 64-bit


def _keep_freed_memory():
    """Set glibc's M_TOP_PAD and M_MMAP_THRESHOLD (see above). Returns True when both were set."""
    import ctypes
    import os
    import platform

    if os.environ.get("DEEPKERN_MALLOC_TUNE", "1") == "0" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(_M_TOP_PAD, _TOP_PAD_BYTES)) and bool(
            libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False


_malloc_tuned = _keep_freed_memory()
