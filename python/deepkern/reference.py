"""deepkern.reference: every op of deepkern.functional in plain NumPy.

This module is written to be read. Each function states its math and then computes exactly
that, with NumPy's vectorized operations and no tricks beyond a strided "window view" of the
input. The C++ kernels in ``csrc/cpu/`` follow the same loop structure, and the tests compare
them against these functions on random inputs; the backward functions here are themselves
checked against finite differences in float64.

Conventions (as in PyTorch): NCHW layout; convolution is cross-correlation; ``stride``,
``padding``, ``dilation`` and ``kernel_size`` are an int or a pair ``(h, w)``. The functions
assume valid arguments: ``deepkern.functional`` validates before it calls here.
Shape legend: N batch, C channels, H W input size, OC output channels, KH KW kernel size,
OH OW output size, G groups.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "conv2d", "conv2d_backward",
    "max_pool2d", "max_pool2d_backward",
    "avg_pool2d", "avg_pool2d_backward",
    "batch_norm", "batch_norm_backward", "batch_norm_relu", "batch_norm_relu_backward",
    "dropout", "dropout_backward", "dropout_mask", "philox4x32",
    "relu", "relu_backward",
    "window_out_size",
    "fractional_max_pool2d", "fractional_max_pool2d_backward", "fractional_samples",
]


def _pair(v):
    if isinstance(v, (tuple, list)):
        return (int(v[0]), int(v[-1]))
    return (int(v), int(v))


def window_out_size(size, k, s, p, d=1, ceil_mode=False):
    """Number of window positions along one axis (PyTorch's formula).

    out = floor((size + 2p - d(k-1) - 1) / s) + 1, rounded up instead with ceil_mode, except
    that a last window starting inside the right padding is dropped.
    """
    span = size + 2 * p - d * (k - 1) - 1
    if span < 0:
        return 0
    out = (span + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def _windows(xp, kernel, out, stride, dilation):
    """View of the padded input xp (N, C, Hp, Wp) as windows (N, C, OH, OW, KH, KW).

    win[n, c, oh, ow, i, j] = xp[n, c, oh*sh + i*dh, ow*sw + j*dw]. No copy is made.
    """
    (KH, KW), (OH, OW), (sh, sw), (dh, dw) = kernel, out, stride, dilation
    sN, sC, sH, sW = xp.strides
    return np.lib.stride_tricks.as_strided(
        xp, shape=(xp.shape[0], xp.shape[1], OH, OW, KH, KW),
        strides=(sN, sC, sH * sh, sW * sw, sH * dh, sW * dw), writeable=False)


# ---------------------------------------------------------------------------- conv2d

def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D convolution.

    y[n, o, oh, ow] = bias[o] + sum_{c, i, j} weight[o, c, i, j]
                                  * xpad[n, g*C/G + c, oh*sh + i*dh, ow*sw + j*dw]
    where g = o // (OC/G) is the group of output channel o and xpad is x zero-padded.
    x (N, C, H, W), weight (OC, C/G, KH, KW), bias (OC,) or None -> y (N, OC, OH, OW).
    """
    (sh, sw), (ph, pw), (dh, dw), G = _pair(stride), _pair(padding), _pair(dilation), groups
    N, C, H, W = x.shape
    OC, cpg, KH, KW = weight.shape
    OH, OW = window_out_size(H, KH, sh, ph, dh), window_out_size(W, KW, sw, pw, dw)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    win = _windows(xp, (KH, KW), (OH, OW), (sh, sw), (dh, dw))   # (N, C, OH, OW, KH, KW)
    win = win.reshape(N, G, cpg, OH, OW, KH, KW)
    wg = weight.reshape(G, OC // G, cpg, KH, KW)
    y = np.einsum("ngchwij,gocij->ngohw", win, wg, optimize=True).reshape(N, OC, OH, OW)
    if bias is not None:
        y = y + bias.reshape(1, OC, 1, 1)
    return np.ascontiguousarray(y, dtype=x.dtype)


def conv2d_backward(grad_out, x, weight, stride=1, padding=0, dilation=1, groups=1, bias=True,
                    input_grad=True):
    """Gradients of conv2d with respect to x, weight and bias.

    grad_weight[o, c, i, j] = sum_{n, oh, ow} grad_out[n, o, oh, ow] * xpad[n, gC/G + c, oh*sh + i*dh, ...]
    grad_bias[o]            = sum_{n, oh, ow} grad_out[n, o, oh, ow]
    grad_x: every window position sends grad_out * weight back to the input taps it read.
    Returns (grad_x, grad_weight, grad_bias); grad_bias is None when bias=False, grad_x
    None when input_grad=False.
    """
    (sh, sw), (ph, pw), (dh, dw), G = _pair(stride), _pair(padding), _pair(dilation), groups
    N, C, H, W = x.shape
    OC, cpg, KH, KW = weight.shape
    OH, OW = grad_out.shape[2:]
    dy = grad_out.reshape(N, G, OC // G, OH, OW)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    win = _windows(xp, (KH, KW), (OH, OW), (sh, sw), (dh, dw)).reshape(N, G, cpg, OH, OW, KH, KW)
    wg = weight.reshape(G, OC // G, cpg, KH, KW)

    grad_w = np.einsum("ngohw,ngchwij->gocij", dy, win, optimize=True).reshape(weight.shape)
    grad_b = grad_out.sum(axis=(0, 2, 3)) if bias else None
    if not input_grad:
        return (None, np.ascontiguousarray(grad_w, dtype=x.dtype),
                None if grad_b is None else np.ascontiguousarray(grad_b, dtype=x.dtype))

    # The gradient of every window tap, then added back where the tap came from.
    dwin = np.einsum("ngohw,gocij->ngchwij", dy, wg, optimize=True).reshape(N, C, OH, OW, KH, KW)
    dxp = np.zeros(xp.shape, dtype=np.result_type(dwin, x))
    for i in range(KH):
        for j in range(KW):
            dxp[:, :, i * dh: i * dh + sh * (OH - 1) + 1: sh,
                      j * dw: j * dw + sw * (OW - 1) + 1: sw] += dwin[..., i, j]
    grad_x = dxp[:, :, ph: ph + H, pw: pw + W]
    return (np.ascontiguousarray(grad_x, dtype=x.dtype),
            np.ascontiguousarray(grad_w, dtype=x.dtype),
            None if grad_b is None else np.ascontiguousarray(grad_b, dtype=x.dtype))


# ---------------------------------------------------------------------------- pooling

def _tap_coords(o, s, p, k, d):
    """Input coordinate of tap t of window o along one axis: o*s - p + t*d, shape (O, K)."""
    return np.arange(o)[:, None] * s - p + np.arange(k)[None, :] * d


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Max pooling with the flat index of each maximum.

    y[n, c, oh, ow] = max over the window's taps inside the input (padding never wins);
    indices = ih * W + iw of that tap. A window holding NaN gives NaN (index of its last NaN);
    ties give the first tap in row-major order. Returns (y, indices int64).
    """
    (kh, kw) = _pair(kernel_size)
    (sh, sw) = _pair(stride if stride is not None else kernel_size)
    (ph, pw), (dh, dw) = _pair(padding), _pair(dilation)
    N, C, H, W = x.shape
    OH = window_out_size(H, kh, sh, ph, dh, ceil_mode)
    OW = window_out_size(W, kw, sw, pw, dw, ceil_mode)
    ih = _tap_coords(OH, sh, ph, kh, dh)                 # (OH, kh)
    iw = _tap_coords(OW, sw, pw, kw, dw)                 # (OW, kw)
    vh, vw = (ih >= 0) & (ih < H), (iw >= 0) & (iw < W)
    # Gather every tap (clipped into range), then mask out the ones outside the input.
    taps = x[:, :, np.clip(ih, 0, H - 1)[:, None, :, None], np.clip(iw, 0, W - 1)[None, :, None, :]]
    taps = taps.reshape(N, C, OH, OW, kh * kw)           # tap t = i*kw + j
    valid = (vh[:, None, :, None] & vw[None, :, None, :]).reshape(OH, OW, kh * kw)
    flat = (np.clip(ih, 0, H - 1)[:, None, :, None] * W
            + np.clip(iw, 0, W - 1)[None, :, None, :]).reshape(OH, OW, kh * kw)

    vals = np.where(valid, taps, -np.inf).astype(x.dtype)
    isnan = np.isnan(vals)
    best = np.where(isnan.any(-1), np.nan, np.max(np.where(isnan, -np.inf, vals), axis=-1))
    # first valid tap equal to the max; for NaN windows, the last NaN tap
    first_max = np.argmax(valid & (vals == best[..., None]), axis=-1)
    last_nan = kh * kw - 1 - np.argmax(isnan[..., ::-1], axis=-1)
    # a window with no tap inside the input at all (possible with dilation): -inf at the
    # first clipped tap, as the C++ kernel does
    hs = np.where(ih[:, 0] < 0, ih[:, 0] + ((-ih[:, 0] + dh - 1) // dh) * dh, ih[:, 0])
    ws = np.where(iw[:, 0] < 0, iw[:, 0] + ((-iw[:, 0] + dw - 1) // dw) * dw, iw[:, 0])
    fallback = (np.minimum(hs, H - 1)[:, None] * W + np.minimum(ws, W - 1)[None, :])
    tap = np.where(isnan.any(-1), last_nan, first_max)
    idx = np.take_along_axis(np.broadcast_to(flat, vals.shape), tap[..., None], axis=-1)[..., 0]
    idx = np.where(valid.any(-1), idx, fallback)
    return best.astype(x.dtype), idx.astype(np.int64)


def max_pool2d_backward(grad_out, indices, input_shape):
    """grad_x[n, c].flat[indices[n, c, oh, ow]] += grad_out[n, c, oh, ow]."""
    N, C, H, W = input_shape
    if indices.size and (indices.min() < 0 or indices.max() >= H * W):
        raise ValueError(f"max_pool2d_backward: an index is outside its input plane of {H * W} elements")
    grad_x = np.zeros((N * C, H * W), dtype=grad_out.dtype)
    plane = np.repeat(np.arange(N * C), indices[0, 0].size if indices.size else 0)
    np.add.at(grad_x, (plane, indices.reshape(-1)), grad_out.reshape(-1))
    return grad_x.reshape(N, C, H, W)


def _avg_windows(H, W, OH, OW, k, s, p, count_include_pad):
    """For each output (oh, ow): the tap range inside the input and the divisor."""
    (kh, kw), (sh, sw), (ph, pw) = k, s, p
    for oh in range(OH):
        h0 = oh * sh - ph
        h1 = min(h0 + kh, H + ph)          # clipped to the padded input (ceil_mode overhang)
        for ow in range(OW):
            w0 = ow * sw - pw
            w1 = min(w0 + kw, W + pw)
            hs, he, ws, we = max(h0, 0), min(h1, H), max(w0, 0), min(w1, W)
            inside = max(he - hs, 0) * max(we - ws, 0)
            divisor = (h1 - h0) * (w1 - w0) if count_include_pad else inside
            yield oh, ow, hs, he, ws, we, divisor


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    """Average pooling: y = (sum of the window's taps inside the input) / divisor.

    divisor = the window size clipped to the padded input when count_include_pad, else the
    number of taps inside the input (a window with none gives 0).
    """
    k = _pair(kernel_size)
    s = _pair(stride if stride is not None else kernel_size)
    p = _pair(padding)
    N, C, H, W = x.shape
    OH = window_out_size(H, k[0], s[0], p[0], 1, ceil_mode)
    OW = window_out_size(W, k[1], s[1], p[1], 1, ceil_mode)
    y = np.zeros((N, C, OH, OW), dtype=x.dtype)
    for oh, ow, hs, he, ws, we, divisor in _avg_windows(H, W, OH, OW, k, s, p, count_include_pad):
        if divisor > 0:
            y[:, :, oh, ow] = x[:, :, hs:he, ws:we].sum(axis=(2, 3)) / x.dtype.type(divisor)
    return y


def avg_pool2d_backward(grad_out, input_shape, kernel_size, stride=None, padding=0,
                        ceil_mode=False, count_include_pad=True):
    """Each output's gradient, divided by its divisor, is added to every tap of its window."""
    k = _pair(kernel_size)
    s = _pair(stride if stride is not None else kernel_size)
    p = _pair(padding)
    N, C, H, W = input_shape
    OH, OW = grad_out.shape[2:]
    grad_x = np.zeros((N, C, H, W), dtype=grad_out.dtype)
    for oh, ow, hs, he, ws, we, divisor in _avg_windows(H, W, OH, OW, k, s, p, count_include_pad):
        if divisor > 0:
            g = grad_out[:, :, oh, ow] / grad_out.dtype.type(divisor)
            grad_x[:, :, hs:he, ws:we] += g[:, :, None, None]
    return grad_x


# ---------------------------------------------------------------------------- batch norm

def _bn_axes(x):
    return (0,) if x.ndim == 2 else (0, 2, 3)


def _bn_shape(x):
    return (1, -1) if x.ndim == 2 else (1, -1, 1, 1)


def batch_norm(x, weight, bias, running_mean, running_var, training, momentum=0.1, eps=1e-5):
    """Batch normalization over every axis but the channel axis 1.

    training: mean = E[x], var = E[(x - mean)^2] (biased) over the M = N*H*W values of a
      channel; y = (x - mean) / sqrt(var + eps) * weight + bias; the running statistics, if
      given, move in place toward mean and the unbiased var * M/(M-1) by `momentum`.
    eval: the same y with running_mean and running_var.
    Returns (y, save_mean, save_invstd), save_invstd = 1/sqrt(var + eps). Statistics are
    computed in float64 and returned in x's dtype.
    """
    axes, shape = _bn_axes(x), _bn_shape(x)
    xd = x.astype(np.float64)
    if training:
        M = x.size // x.shape[1]
        mean = xd.mean(axis=axes)
        var = ((xd - mean.reshape(shape)) ** 2).mean(axis=axes)
        if running_mean is not None:
            running_mean[...] = (1 - momentum) * running_mean + momentum * mean
            running_var[...] = (1 - momentum) * running_var + momentum * var * M / (M - 1)
    else:
        mean = running_mean.astype(np.float64)
        var = running_var.astype(np.float64)
    invstd = 1.0 / np.sqrt(var + eps)
    y = (xd - mean.reshape(shape)) * invstd.reshape(shape)
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y.astype(x.dtype), mean.astype(x.dtype), invstd.astype(x.dtype)


def batch_norm_backward(grad_out, x, weight, save_mean, save_invstd, training=True):
    """Gradients of batch_norm, with xhat = (x - mean) * invstd and M values per channel.

    grad_bias = sum(dy);  grad_weight = sum(dy * xhat)
    training:  grad_x = weight * invstd * (dy - grad_bias/M - xhat * grad_weight/M)
               (the batch mean and variance depend on x, hence the two correction terms)
    eval:      grad_x = weight * invstd * dy
    Returns (grad_x, grad_weight, grad_bias); the last two are None when weight is None.
    """
    axes, shape = _bn_axes(x), _bn_shape(x)
    M = x.size // x.shape[1]
    dy = grad_out.astype(np.float64)
    mean = save_mean.astype(np.float64).reshape(shape)
    invstd = save_invstd.astype(np.float64).reshape(shape)
    xhat = (x.astype(np.float64) - mean) * invstd
    gb = dy.sum(axis=axes)
    gw = (dy * xhat).sum(axis=axes)
    w = 1.0 if weight is None else weight.astype(np.float64).reshape(shape)
    if training:
        gx = w * invstd * (dy - gb.reshape(shape) / M - xhat * gw.reshape(shape) / M)
    else:
        gx = w * invstd * dy
    if weight is None:
        return gx.astype(x.dtype), None, None
    return gx.astype(x.dtype), gw.astype(x.dtype), gb.astype(x.dtype)


# ---------------------------------------------------------------------------- dropout

_MASK32 = np.uint64(0xFFFFFFFF)


def philox4x32(counter, seed):
    """Philox4x32-10 (Salmon et al., SC'11): four 32-bit random words per 64-bit counter.

    counter: uint64 array; seed: int in [0, 2**64). Returns uint64 array (..., 4) of values
    < 2**32. Each round multiplies two words by fixed odd constants, splits the 64-bit products
    into high and low halves, and mixes them with the other words and the round key.
    """
    counter = np.asarray(counter, dtype=np.uint64)
    c0, c1 = counter & _MASK32, counter >> np.uint64(32)
    c2 = np.zeros_like(c0)
    c3 = np.zeros_like(c0)
    k0, k1 = seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF
    M0, M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
    for _ in range(10):
        p0, p1 = M0 * c0, M1 * c2                     # exact: both factors < 2**32
        hi0, lo0 = p0 >> np.uint64(32), p0 & _MASK32
        hi1, lo1 = p1 >> np.uint64(32), p1 & _MASK32
        c0, c1, c2, c3 = hi1 ^ c1 ^ np.uint64(k0), lo1, hi0 ^ c3 ^ np.uint64(k1), lo0
        k0, k1 = (k0 + 0x9E3779B9) & 0xFFFFFFFF, (k1 + 0xBB67AE85) & 0xFFFFFFFF
    return np.stack([c0, c1, c2, c3], axis=-1)


def _dropout_threshold(p):
    if not p > 0:
        return 0
    if p >= 1:
        return 1 << 32
    return int(p * 4294967296.0)   # floor(p * 2**32), in double, as the C++ kernel


def dropout_mask(shape, p, seed):
    """The keep-mask of dropout: mask[i] = philox(i // 4, seed)[i % 4] >= floor(p * 2**32).

    Element i is the flat (row-major) index, so the mask depends on (seed, i) only.
    """
    n = int(np.prod(shape, dtype=np.int64))
    words = philox4x32(np.arange((n + 3) // 4, dtype=np.uint64), seed).reshape(-1)[:n]
    return (words >= np.uint64(_dropout_threshold(p))).astype(np.uint8).reshape(shape)


def dropout(x, p=0.5, training=True, seed=None):
    """Inverted dropout: y = x * mask / (1 - p), mask ~ Bernoulli(1 - p) from (seed, index).

    Returns (y, mask uint8). Not training or p = 0: y = x, mask all ones. p = 1: zeros.
    The scale 1/(1-p) is computed in float64 and then rounded to x's dtype.
    """
    if not training or p == 0:
        return x.copy(), np.ones(x.shape, dtype=np.uint8)
    if seed is None:
        from deepkern import _next_seed
        seed = _next_seed()
    mask = dropout_mask(x.shape, p, seed)
    if p >= 1:
        return np.zeros_like(x), mask
    return x * mask * x.dtype.type(1.0 / (1.0 - p)), mask


def dropout_backward(grad_out, mask, p):
    """grad_x = grad_out * mask / (1 - p), zeros when p = 1. Any nonzero mask entry keeps its
    element (as the kernels do), so a 0/255 mask means the same as a 0/1 one."""
    if p >= 1:
        return np.zeros_like(grad_out)
    return grad_out * (mask != 0) * grad_out.dtype.type(1.0 / (1.0 - p))


def batch_norm_relu(x, weight, bias, running_mean, running_var, training, momentum=0.1, eps=1e-5):
    """relu(batch_norm(...)): returns (y, save_mean, save_invstd) with y = relu of batch_norm's
    y (deepkern's fused op, functional.batch_norm_relu; here simply the two in turn)."""
    y, save_mean, save_invstd = batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps)
    return relu(y), save_mean, save_invstd


def batch_norm_relu_backward(grad_out, y, x, weight, save_mean, save_invstd, training=True):
    """Gradients of batch_norm_relu (y: its output): batch_norm_backward of relu_backward(grad_out, y)."""
    return batch_norm_backward(relu_backward(grad_out, y), x, weight, save_mean, save_invstd, training)


# ---------------------------------------------------------------------------- relu

def relu(x):
    """y = max(x, 0), keeping NaN."""
    return np.where(x < 0, x.dtype.type(0), x)


def relu_backward(grad_out, y):
    """grad_x = 0 where y <= 0, else grad_out (PyTorch's threshold_backward: a NaN y passes
    the gradient through)."""
    return np.where(y <= 0, grad_out.dtype.type(0), grad_out)


# ============================================================================ fractional max pooling
#
# Graham, "Fractional Max-Pooling" (2014), with PyTorch's FractionalMaxPool2d regions.
# Each plane (n, c) has two samples in [0, 1): samples[n, c, 0] places the columns,
# samples[n, c, 1] the rows. Along one axis of length L with O outputs and regions of K taps:
#
#     alpha = (L - K) / (O - 1)
#     start[i] = int((i + u) * alpha) - int(u * alpha)     (i < O - 1),   start[O - 1] = L - K
#
# computed in the input's dtype (float32 rounding decides a start near an integer, so the same
# float32 samples give PyTorch's regions exactly). Consecutive starts differ by floor(alpha)
# or ceil(alpha): the regions overlap pseudo-randomly and shrink the image by H/O, a ratio that
# need not be an integer (2x2 max pooling can only halve).

def fractional_output_size(input_hw, output_size=None, output_ratio=None):
    """(OH, OW) from an explicit output size or a ratio (int(H * ratio), as PyTorch)."""
    if output_size is not None:
        return _pair(output_size)
    rh, rw = output_ratio if isinstance(output_ratio, (tuple, list)) else (output_ratio, output_ratio)
    return int(input_hw[0] * rh), int(input_hw[1] * rw)


def fractional_samples(n, c, seed, dtype=np.float32):
    """The (n, c, 2) samples drawn from ``seed``: sample i (flat) is philox(i // 4, seed)[i % 4]
    with its low 8 bits dropped, times 2**-24 -- exact in float32 and float64 and < 1, so the
    same seed places the same regions in both dtypes and on every backend."""
    count = int(n) * int(c) * 2
    words = philox4x32(np.arange((count + 3) // 4, dtype=np.uint64), seed).reshape(-1)[:count]
    return ((words >> np.uint64(8)).astype(np.float64) * 2.0**-24).astype(dtype).reshape(int(n), int(c), 2)


def fractional_starts(u, L, O, K, dtype):
    """The start of each of the O pooling regions along an axis of length L (formula above)."""
    T = np.dtype(dtype).type
    starts = np.empty(O, dtype=np.int64)
    if O > 1:
        u = T(u)
        alpha = T(L - K) / T(O - 1)
        pos = (np.arange(O - 1).astype(dtype) + u) * alpha        # rounded to dtype, as the kernels
        starts[:-1] = pos.astype(np.int64) - np.int64(T(u * alpha))
    starts[-1] = L - K
    return starts


def fractional_max_pool2d(x, kernel_size, output_size=None, output_ratio=None, samples=None, seed=None):
    """Fractional max pooling: y[n, c, i, j] = max of x[n, c] over the KH x KW region at
    (rows[i], cols[j]); returns (y, indices) like max_pool2d (indices int64 into each H*W plane).

    x (N, C, H, W); samples (N, C, 2) of x's dtype in [0, 1), or None to draw them from seed
    (see fractional_samples). Within a region taps are scanned row by row; a larger value wins
    (ties keep the first) and a NaN always wins (so the last NaN is reported, as PyTorch does).
    """
    KH, KW = _pair(kernel_size)
    N, C, H, W = x.shape
    OH, OW = fractional_output_size((H, W), output_size, output_ratio)
    if samples is None:
        if seed is None:
            from deepkern import _next_seed
            seed = _next_seed()
        samples = fractional_samples(N, C, seed, x.dtype)
    y = np.empty((N, C, OH, OW), dtype=x.dtype)
    idx = np.empty((N, C, OH, OW), dtype=np.int64)
    taps_h, taps_w = np.arange(KH), np.arange(KW)
    for n in range(N):
        for c in range(C):
            rows = fractional_starts(samples[n, c, 1], H, OH, KH, x.dtype)[:, None] + taps_h   # (OH, KH)
            cols = fractional_starts(samples[n, c, 0], W, OW, KW, x.dtype)[:, None] + taps_w   # (OW, KW)
            flat = (rows[:, None, :, None] * W + cols[None, :, None, :]).reshape(OH, OW, KH * KW)
            win = x[n, c].reshape(-1)[flat]                                 # (OH, OW, KH*KW)
            nan = np.isnan(win)
            last_nan = KH * KW - 1 - np.argmax(nan[..., ::-1], axis=-1)
            pick = np.where(nan.any(axis=-1), last_nan, np.argmax(np.where(nan, -np.inf, win), axis=-1))
            idx[n, c] = np.take_along_axis(flat, pick[..., None], axis=-1)[..., 0]
            y[n, c] = np.take_along_axis(win, pick[..., None], axis=-1)[..., 0]
    return y, idx


def fractional_max_pool2d_backward(grad_out, indices, input_shape):
    """grad_x: grad_out added at the indices (regions overlap, so a tap may collect several
    outputs' gradients); the same scatter as max_pool2d_backward."""
    return max_pool2d_backward(grad_out, indices, input_shape)
