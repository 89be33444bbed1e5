"""Model builders: the default CNN of ``deepkern train`` and its PyTorch twin.

One place for the architectures so that ``deepkern train``, ``compare``, ``finetune``, the
benchmark's training epoch and the studies all train the same network::

    from deepkern import models
    deepkern.manual_seed(0)                       # the initialization draws from this stream
    model = models.digits_cnn()                   # 1x8x8 digits -> 10 logits
    twin = models.torch_twin(model)               # the same network and weights in PyTorch

The default CNN (for 8x8 inputs; other sizes change only the classifier's input width)::

    Conv2d(1, 16, 3, padding=1, bias=False) - BatchNorm2d(16) - ReLU - MaxPool2d(2)    8x8 -> 4x4
    Conv2d(16, 32, 3, padding=1, bias=False) - BatchNorm2d(32) - ReLU - MaxPool2d(2)   4x4 -> 2x2
    Flatten - Dropout(0.25) - Linear(32 * 2 * 2, 10)

Why these choices (measured in bench/NOTES.md, "deepkern train"):

- widths 16 and 32: over 8 seeds, 30 epochs of Adam reach 98.1-99.4% test accuracy
  (mean 98.7%); 8/16 is faster but drops to 96.9% on some seeds, and 32/64 costs 2.4x the
  time for no gain on 1,294 training images.
- no bias in the convolutions: the BatchNorm that follows subtracts the channel mean, which
  removes any constant a bias would add (BatchNorm's own ``bias`` takes that role), so a
  conv bias is a parameter with zero gradient in expectation and costs a reduction per step.
- He (Kaiming) normal initialization, ``std = sqrt(2 / fan_in)``, for the ReLU network
  (Xavier's variance is half that: the signal shrinks by sqrt(2) per ReLU layer); biases 0.
- the first convolution computes no input gradient (``needs_input_grad = False``): the
  gradient with respect to the images is never used, and it is 2/3 of that layer's backward.
"""

from __future__ import annotations

import numbers

import numpy as np

from . import nn
from .nn import init as _init

__all__ = ["DIGITS_CHANNELS", "digits_cnn", "init_weights", "replace_head", "torch_twin"]

DIGITS_CHANNELS = (16, 32)
INITS = ("he", "xavier", "default")


def _pair(v, name):
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        v = (int(v), int(v))
    if (not isinstance(v, (tuple, list)) or len(v) != 2
            or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0 for s in v)):
        raise ValueError(f"{name} must be a positive int or a pair of them, got {v!r}")
    return int(v[0]), int(v[1])


def init_weights(model, scheme="he"):
    """Initialize every Conv2d and Linear weight of ``model`` in place; biases to 0.

    scheme: "he" (kaiming_normal_, fan_in, ReLU gain sqrt(2)), "xavier" (xavier_normal_,
    gain 1) or "default" (leave PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as the
    layers drew it). BatchNorm layers keep weight 1 and bias 0. Returns the model.
    """
    if scheme not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}, got {scheme!r}")
    if scheme == "default":
        return model
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if scheme == "he":
                _init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            else:
                _init.xavier_normal_(m.weight)
            if m.bias is not None:
                _init.zeros_(m.bias)
    return model


def digits_cnn(num_classes=10, channels=DIGITS_CHANNELS, *, in_channels=1, image_size=8, dropout=0.25,
               init="he", dtype=np.float32):
    """The default CNN of ``deepkern train``: conv-bn-relu-pool x2, dropout, linear.

    Args:
      num_classes  outputs of the classifier (10 digits)
      channels     (c1, c2): output channels of the two convolutions (default (16, 32))
      in_channels  input channels (1 for grey images)
      image_size   the input's (H, W) or one int; each pooling halves it (floor), so the
                   classifier sees c2 * (H // 4) * (W // 4) features. At least 4x4.
      dropout      the dropout probability before the classifier (0 disables it)
      init         "he" (default), "xavier" or "default" (see ``init_weights``)
      dtype        float32 (default) or float64

    Draws its initial weights from deepkern's random stream: call ``deepkern.manual_seed``
    first for a reproducible model. The first convolution has ``needs_input_grad = False``
    (its backward returns None instead of the gradient with respect to the images).
    """
    c1, c2 = _pair(channels, "channels")
    H, W = _pair(image_size, "image_size")
    if H < 4 or W < 4:
        raise ValueError(f"image_size must be at least 4x4 (two 2x2 poolings), got {(H, W)}")
    model = nn.Sequential(
        nn.Conv2d(in_channels, c1, 3, padding=1, bias=False, dtype=dtype), nn.BatchNorm2d(c1, dtype=dtype),
        nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1, bias=False, dtype=dtype), nn.BatchNorm2d(c2, dtype=dtype),
        nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(dropout), nn.Linear(c2 * (H // 4) * (W // 4), num_classes, dtype=dtype))
    init_weights(model, init)
    model[0].needs_input_grad = False
    return model


def replace_head(model, num_classes, init="he"):
    """Give a Sequential classifier a new last Linear layer with ``num_classes`` outputs
    (transfer learning: a new task's classes), initialized with ``init``. Returns the new
    layer; the rest of the model is unchanged."""
    old = model[-1]
    if not isinstance(old, nn.Linear):
        raise TypeError(f"the model's last layer is a {type(old).__name__}, expected Linear")
    head = nn.Linear(old.in_features, num_classes, bias=old.bias is not None, dtype=old.weight.dtype)
    init_weights(head, init)
    model[-1] = head
    return head


# ---------------------------------------------------------------------------- PyTorch twin

def torch_twin(model, torch=None):
    """The same network in PyTorch (``torch.nn.Sequential``), with model's current weights
    and BatchNorm statistics copied in, in training mode.

    For side-by-side benchmarks and tests: the two compute the same function, so the same
    inputs give the same outputs up to float rounding. Supports the layers the builders
    here use (Conv2d, BatchNorm2d, ReLU, MaxPool2d, Flatten, Dropout, Linear). Raises
    RuntimeError when PyTorch is not installed.
    """
    if torch is None:
        try:
            import torch
        except ImportError:
            raise RuntimeError("PyTorch is not installed (pip install torch)") from None
    t = torch.nn
    layers = []
    for m in model:
        if isinstance(m, nn.Conv2d):
            layers.append(t.Conv2d(m.in_channels, m.out_channels, m.kernel_size, stride=m.stride,
                                   padding=m.padding, dilation=m.dilation, groups=m.groups,
                                   bias=m.bias is not None))
        elif isinstance(m, nn.BatchNorm2d):
            layers.append(t.BatchNorm2d(m.num_features, eps=m.eps, momentum=m.momentum))
        elif isinstance(m, nn.ReLU):
            layers.append(t.ReLU())
        elif isinstance(m, nn.MaxPool2d):
            layers.append(t.MaxPool2d(m.kernel_size, m.stride, m.padding, m.dilation, ceil_mode=m.ceil_mode))
        elif isinstance(m, nn.Flatten):
            layers.append(t.Flatten(m.start_dim, m.end_dim))
        elif isinstance(m, nn.Dropout):
            layers.append(t.Dropout(m.p))
        elif isinstance(m, nn.Linear):
            layers.append(t.Linear(m.in_features, m.out_features, bias=m.bias is not None))
        else:
            raise TypeError(f"torch_twin: no PyTorch counterpart for {type(m).__name__}")
    twin = t.Sequential(*layers)
    dtype = torch.float64 if model[0].weight.dtype == np.float64 else torch.float32
    twin = twin.to(dtype)
    state = {k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()}
    twin.load_state_dict(state)
    return twin.train()
