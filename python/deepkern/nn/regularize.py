"""Regularizing layers: fractional max pooling, DropConnect, weight noise, Gaussian noise,
residual blocks and stochastic depth.

Each follows the explicit forward/backward contract of ``Module``. The random ones draw a
fresh seed from deepkern's stream (``deepkern.manual_seed``) on every training forward, so a
seeded run is reproducible, and act only in training mode (except FractionalMaxPool2d, which
draws new regions on every call, as PyTorch's does)::

    block = nn.Residual(nn.Sequential(
        nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16),
        nn.StochasticDepth(0.2)))                        # y = x + drop(branch(x))
    fc = nn.DropConnect(nn.Linear(64, 10), p=0.5)        # drops weights, not activations
    noisy = nn.WeightNoise(nn.Conv2d(1, 8, 3), std=0.01) # trains under perturbed weights
"""

from __future__ import annotations

import numpy as np

from .. import _next_seed
from .. import _validate as V
from .. import functional as F
from .. import reference as _reference
from .layers import Conv2d, Linear, _add_grad, _no_forward
from .module import Module

__all__ = ["FractionalMaxPool2d", "DropConnect", "WeightNoise", "GaussianNoise", "Residual", "StochasticDepth",
           "with_weight_noise"]


def _probability(p, what):
    p = V.as_float(p, "p")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{what} probability has to be between 0 and 1, but got {p}")
    return p


# ---------------------------------------------------------------------------- fractional max pooling

class FractionalMaxPool2d(Module):
    """Fractional max pooling (Graham 2014), as ``torch.nn.FractionalMaxPool2d``.

    x (N, C, H, W) or (C, H, W) -> (N, C, OH, OW), OH = output_size or int(H * output_ratio).
    Every forward draws new pseudo-random regions (from deepkern's stream, so
    ``deepkern.manual_seed`` makes a run reproducible), in training and in eval mode alike --
    PyTorch's behavior. ``_random_samples`` (N, C, 2) fixes the regions instead, as in PyTorch.
    With ``return_indices=True`` forward returns (y, indices).
    """

    def __init__(self, kernel_size, output_size=None, output_ratio=None, return_indices=False,
                 _random_samples=None):
        super().__init__()
        self.kernel_size = kernel_size
        self.output_size = output_size
        self.output_ratio = output_ratio
        self.return_indices = V.as_bool(return_indices, "return_indices")
        self._random_samples = _random_samples
        if output_size is None and output_ratio is None:
            raise ValueError("FractionalMaxPool2d requires specifying either an output size, or a pooling ratio")
        if output_size is not None and output_ratio is not None:
            raise ValueError("only one of output_size and output_ratio may be specified")
        if output_ratio is not None:
            F._ratio(output_ratio)
        self._saved = None

    def forward(self, x):
        samples = self._random_samples
        y, idx = F.fractional_max_pool2d(x, self.kernel_size, self.output_size, self.output_ratio,
                                         samples=samples, seed=None if samples is not None else _next_seed())
        self._saved = (tuple(x.shape), idx)
        return (y, idx) if self.return_indices else y

    def backward(self, grad_out):
        if self._saved is None:
            raise _no_forward(self)
        shape, idx = self._saved
        return F.fractional_max_pool2d_backward(grad_out, idx, shape)

    def extra_repr(self):
        out = f"output_size={self.output_size}" if self.output_size is not None else f"output_ratio={self.output_ratio}"
        return f"kernel_size={self.kernel_size}, {out}"


# ---------------------------------------------------------------------------- weight perturbations

class _WeightPerturbation(Module):
    """Runs a Linear or Conv2d with a perturbed copy of its weight in training.

    forward: w_used = perturb(w); y = layer(x) computed with w_used (the parameter keeps its
    clean array, which the optimizer updates). backward: the layer's backward runs with
    w_used (so the input gradient is the perturbed network's), and the weight gradient
    dL/dw = dL/dw_used * dw_used/dw is added to the clean weight's .grad.
    """

    def __init__(self, layer):
        super().__init__()
        if not isinstance(layer, (Linear, Conv2d)):
            raise TypeError(f"{type(self).__name__} wraps a Linear or Conv2d layer, got {type(layer).__name__}")
        self.layer = layer
        self._ctx = None

    @property
    def needs_input_grad(self):
        return self.layer.needs_input_grad

    @needs_input_grad.setter
    def needs_input_grad(self, value):
        self.layer.needs_input_grad = V.as_bool(value, "needs_input_grad")

    def _active(self):
        return self.training

    def forward(self, x):
        if not self._active():
            self._ctx = None
            return self.layer(x)
        w = self.layer.weight
        clean = w.data
        used, self._ctx = self._perturb(clean)
        w.data = used
        try:
            return self.layer(x)
        finally:
            w.data = clean

    def backward(self, grad_out):
        if self._ctx is None:
            return self.layer.backward(grad_out)
        w = self.layer.weight
        before, w.grad = w.grad, None
        try:
            gx = self.layer.backward(grad_out)
            g_used = w.grad
        finally:
            w.grad = before
        if g_used is not None:
            _add_grad(w, self._grad(g_used, self._ctx))
        return gx


class DropConnect(_WeightPerturbation):
    """DropConnect (Wan et al. 2013): in training, each weight of the wrapped Linear or Conv2d
    is zeroed independently with probability p and the survivors scaled by 1/(1-p)
    (inverted, like Dropout, so eval needs no rescaling); in eval it is the plain layer.

    The mask comes from ``functional.dropout`` applied to the weight (a pure function of a seed
    drawn per forward and the weight's flat index); the weight gradient is masked and scaled
    the same way. The bias is not dropped. PyTorch has no DropConnect layer.
    """

    def __init__(self, layer, p=0.5):
        super().__init__(layer)
        self.p = _probability(p, "DropConnect")

    def _active(self):
        return self.training and self.p > 0

    def _perturb(self, w):
        used, mask = F.dropout(w, self.p, True, _next_seed())
        return used, mask

    def _grad(self, g, mask):
        return F.dropout_backward(g, mask, self.p)

    def extra_repr(self):
        return f"p={self.p}"


class WeightNoise(_WeightPerturbation):
    """Weight noise (Graves 2011; the lecture notes' "noise on the weights"): in training the
    wrapped Linear or Conv2d computes with w + std * N(0, 1), a fresh draw per forward; the
    gradient (the same for the clean and the noisy weight, since d(w + e)/dw = 1) updates the
    clean weight. In eval it is the plain layer."""

    def __init__(self, layer, std=0.01):
        super().__init__(layer)
        self.std = V.check_finite(V.as_float(std, "std"), "std")
        if self.std < 0:
            raise ValueError(f"std must be >= 0, got {self.std}")

    def _active(self):
        return self.training and self.std > 0

    def _perturb(self, w):
        if V.is_cuda_array(w):
            raise RuntimeError("WeightNoise has no CUDA implementation; use it on NumPy parameters")
        noise = np.random.default_rng(_next_seed()).standard_normal(w.shape).astype(w.dtype)
        return w + w.dtype.type(self.std) * noise, None

    def _grad(self, g, _ctx):
        return g

    def extra_repr(self):
        return f"std={self.std}"


def with_weight_noise(model, std):
    """Wrap every Linear and Conv2d inside ``model`` (Sequentials and Residuals, recursively)
    in WeightNoise(std), in place; returns the model. The training loop is unchanged: the
    noise acts in the forward and backward of each training step, the optimizer updates the
    clean weights, and evaluation (eval mode) uses them."""
    if isinstance(model, (Linear, Conv2d)):
        return WeightNoise(model, std)
    for name, child in list(model.named_children()):
        if isinstance(child, (Linear, Conv2d)):
            setattr(model, name, WeightNoise(child, std))
        elif child is not None and not isinstance(child, _WeightPerturbation):
            with_weight_noise(child, std)
    return model


# ---------------------------------------------------------------------------- activation noise

class GaussianNoise(Module):
    """y = x + std * N(0, 1) in training (a fresh draw per forward), y = x in eval; any shape.

    Put it first to add noise to the inputs, or between layers for the activations (noise
    robustness as a regularizer). The gradient passes through unchanged. PyTorch has no such
    layer (its users write ``x + std * torch.randn_like(x)``).
    """

    def __init__(self, std=0.1):
        super().__init__()
        self.std = V.check_finite(V.as_float(std, "std"), "std")
        if self.std < 0:
            raise ValueError(f"std must be >= 0, got {self.std}")

    def forward(self, x):
        V.float_array(x, "GaussianNoise input")
        if not self.training or self.std == 0:
            return x
        if V.is_cuda_array(x):
            raise RuntimeError("GaussianNoise has no CUDA implementation; use it on NumPy arrays")
        noise = np.random.default_rng(_next_seed()).standard_normal(x.shape).astype(x.dtype)
        return x + x.dtype.type(self.std) * noise

    def backward(self, grad_out):
        return grad_out

    def extra_repr(self):
        return f"std={self.std}"


# ---------------------------------------------------------------------------- residual, stochastic depth

class Residual(Module):
    """y = x + block(x) (He et al. 2016): the block must keep the input's shape.

    backward: grad_x = grad_out + block.backward(grad_out) -- the identity path carries the
    gradient past the block unchanged, which is what lets deep residual networks train.
    """

    def __init__(self, block):
        super().__init__()
        if not isinstance(block, Module):
            raise TypeError(f"Residual: block must be a Module, got {type(block).__name__}")
        self.block = block

    def forward(self, x):
        fx = self.block(x)
        if tuple(fx.shape) != tuple(x.shape):
            raise ValueError(f"Residual: the block maps {V.shape_str(x.shape)} to {V.shape_str(fx.shape)}; "
                             "y = x + block(x) needs the same shape")
        return x + fx

    def backward(self, grad_out):
        g = self.block.backward(grad_out)
        return grad_out + g


class StochasticDepth(Module):
    """Stochastic depth (Huang et al. 2016), as ``torchvision.ops.StochasticDepth(p, mode)``.

    Put it at the end of a residual branch: in training, mode="row" zeroes the branch of each
    sample independently with probability p, mode="batch" the whole batch's at once; the
    survivors are scaled by 1/(1-p) (p = 1 gives zeros). In eval, or with p = 0, y = x. The
    keep decisions come from the counter-based generator (``reference.dropout_mask`` on one
    value per sample, or one for the batch) with a seed drawn per forward.
    """

    MODES = ("row", "batch")

    def __init__(self, p, mode="row"):
        super().__init__()
        self.p = _probability(p, "drop")
        if mode not in self.MODES:
            raise ValueError(f"mode has to be either 'batch' or 'row', but got {mode!r}")
        self.mode = mode
        self._scale = None

    def forward(self, x):
        V.float_array(x, "StochasticDepth input")
        if not self.training or self.p == 0.0:
            self._scale = None
            return x
        if x.ndim < 1:
            raise ValueError("StochasticDepth needs a batch dimension")
        if V.is_cuda_array(x):
            raise RuntimeError("StochasticDepth has no CUDA implementation; use it on NumPy arrays")
        shape = (x.shape[0],) + (1,) * (x.ndim - 1) if self.mode == "row" else (1,) * x.ndim
        keep = _reference.dropout_mask(shape, self.p, _next_seed())
        scale = keep.astype(x.dtype)
        if self.p < 1.0:
            scale *= x.dtype.type(1.0 / (1.0 - self.p))
        self._scale = scale
        return x * scale

    def backward(self, grad_out):
        return grad_out if self._scale is None else grad_out * self._scale

    def extra_repr(self):
        return f"p={self.p}, mode={self.mode}"



