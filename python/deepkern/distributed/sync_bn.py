"""SyncBatchNorm: batch statistics over the global batch (every rank's samples).

With plain BatchNorm each rank normalizes by its own shard's mean and variance: R ranks at
per-rank batch b train a different model than one process at batch b*R (noisier statistics,
and different ones on every rank). SyncBatchNorm makes them the same model, for the price of
two small allreduces per layer and step (2C+1 numbers forward, 2C backward), blocking ones:
the next layer needs the result.

Forward, per channel c over the M values of every rank (x float64 while summing)::

    S1 = allreduce(sum x),  S2 = allreduce(sum x^2),  M = allreduce(count)
    mean = S1 / M,  var = S2 / M - mean^2                   (biased, as BatchNorm)
    y = (x - mean) / sqrt(var + eps) * weight + bias         running var gets var * M/(M-1)

Backward: with xhat = (x - mean) * invstd and dy the gradient of the (rank's) loss,

    A = allreduce(sum dy),  B = allreduce(sum dy * xhat)
    dx = weight * invstd * (dy - A / M - xhat * B / M)
    dweight = sum dy * xhat,  dbias = sum dy                (this rank's: DDP sums them)

The allreduced A and B carry the other ranks' losses' dependence on this rank's x (through the
shared mean and variance), so the gradient DDP averages is exactly the single-process one.
A world of size 1 (or eval mode) runs the ordinary BatchNorm kernels.
"""

from __future__ import annotations

import numpy as np

from .. import nn
from ..nn.layers import _BatchNorm
from ._comm import group

__all__ = ["SyncBatchNorm", "convert_sync_batchnorm"]


class SyncBatchNorm(_BatchNorm):
    """Batch normalization of (N, C, ...) inputs with statistics over every rank's batch.

    The arguments of BatchNorm2d (num_features, eps, momentum, affine, track_running_stats,
    dtype) plus ``group`` (default: the default process group, looked up at the first
    forward). Takes (N, C), (N, C, L) and (N, C, H, W) inputs, as PyTorch's SyncBatchNorm.
    The synchronized path is NumPy (float64 sums); eval mode and a world of size 1 use the
    BatchNorm kernels.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, dtype=None,
                 group=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, dtype)
        object.__setattr__(self, "group", group)
        self._sync_saved = None

    def _as_2d_or_4d(self, x):
        if not isinstance(x, np.ndarray):
            raise TypeError(f"SyncBatchNorm: expected a numpy array, got {type(x).__name__}")
        if x.ndim == 2 or x.ndim == 4:
            return x, None
        if x.ndim == 3:
            return x.reshape(x.shape + (1,)), x.shape
        raise ValueError(f"SyncBatchNorm: expected 2D, 3D or 4D input (got {x.ndim}D input)")

    def _group(self):
        return self.group if self.group is not None else group()

    def forward(self, x):
        g = self._group()
        self._sync_saved = None
        if not self.training or g.size == 1:
            return super().forward(x)
        x4, in_shape = self._as_2d_or_4d(x)
        C = self.num_features
        if x4.shape[1] != C:
            raise ValueError(f"SyncBatchNorm: expected {C} channels, got input of shape {x.shape}")
        axes = (0,) if x4.ndim == 2 else (0, 2, 3)
        shape = (1, C) if x4.ndim == 2 else (1, C, 1, 1)
        xd = x4.astype(np.float64)
        stats = np.empty(2 * C + 1, np.float64)
        stats[:C] = xd.sum(axis=axes)
        stats[C:2 * C] = np.square(xd).sum(axis=axes)
        stats[2 * C] = x4.size // C
        g.allreduce_(stats, "SyncBatchNorm forward statistics")
        M = stats[2 * C]
        mean = stats[:C] / M
        var = np.maximum(stats[C:2 * C] / M - mean * mean, 0.0)
        invstd = 1.0 / np.sqrt(var + self.eps)
        if self.track_running_stats:
            count = int(self.num_batches_tracked) + 1
            self.num_batches_tracked[()] = count
            mom = 1.0 / count if self.momentum is None else self.momentum
            unbiased = var * M / max(M - 1.0, 1.0)
            self.running_mean[...] = (1 - mom) * self.running_mean + mom * mean
            self.running_var[...] = (1 - mom) * self.running_var + mom * unbiased
        xhat = (xd - mean.reshape(shape)) * invstd.reshape(shape)
        y = xhat
        if self.weight is not None:
            y = xhat * self.weight.data.reshape(shape).astype(np.float64) + self.bias.data.reshape(shape)
        self._sync_saved = (xhat, invstd, M, axes, shape, x4.dtype, in_shape)
        y = y.astype(x4.dtype)
        return y if in_shape is None else y.reshape(in_shape)

    def backward(self, grad_out):
        if self._sync_saved is None:
            return super().backward(grad_out)
        xhat, invstd, M, axes, shape, dtype, in_shape = self._sync_saved
        C = self.num_features
        dy = (grad_out if in_shape is None else grad_out.reshape(xhat.shape)).astype(np.float64)
        local = np.empty(2 * C, np.float64)
        local[:C] = dy.sum(axis=axes)
        local[C:] = (dy * xhat).sum(axis=axes)
        sums = local.copy()
        self._group().allreduce_(sums, "SyncBatchNorm backward sums")
        w = np.ones(C) if self.weight is None else self.weight.data.astype(np.float64)
        dx = (w * invstd).reshape(shape) * (dy - (sums[:C] / M).reshape(shape) - xhat * (sums[C:] / M).reshape(shape))
        if self.weight is not None:
            nn.layers._add_grad(self.weight, local[C:].astype(dtype))
            nn.layers._add_grad(self.bias, local[:C].astype(dtype))
        dx = dx.astype(dtype)
        return dx if in_shape is None else dx.reshape(in_shape)


def convert_sync_batchnorm(module, group=None):
    """Replace every BatchNorm1d/BatchNorm2d of ``module`` (in place, and the module itself
    if it is one) by a SyncBatchNorm with the same parameters, buffers and options. Returns
    the module (or its replacement)."""
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and not isinstance(module, SyncBatchNorm):
        dt = (module.weight.data.dtype if module.weight is not None
              else module.running_mean.dtype if module.running_mean is not None else None)
        new = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats, dtype=dt, group=group)
        if module.affine:
            new.weight, new.bias = module.weight, module.bias          # the same Parameter objects
        if module.track_running_stats:
            new.running_mean[...] = module.running_mean
            new.running_var[...] = module.running_var
            new.num_batches_tracked[...] = module.num_batches_tracked
        new.training = module.training
        return new
    for name, child in list(module._modules.items()):
        if child is not None:
            new = convert_sync_batchnorm(child, group)
            if new is not child:
                setattr(module, name, new)
    return module
