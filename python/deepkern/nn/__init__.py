"""deepkern.nn: layers with explicit forward and backward (no autograd engine).

    import deepkern.nn as nn
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.25), nn.Linear(16 * 4 * 4, 10))
    crit = nn.CrossEntropyLoss(label_smoothing=0.1)
    loss = crit(model(x), y)              # forward: a float
    model.zero_grad()
    model.backward(crit.backward())       # backward: fills every parameter's .grad

Names, arguments, defaults and initialization follow PyTorch; ``Module`` documents the
forward/backward contract, ``layers`` the differences from PyTorch.
"""

from . import functional, init
from .layers import (AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, Dropout, Flatten, Identity, Linear,
                     MaxPool2d, ReLU, Sigmoid)
from .loss import CrossEntropyLoss
from .module import IncompatibleKeys, Module, Sequential
from .parameter import Parameter
from .regularize import (DropConnect, FractionalMaxPool2d, GaussianNoise, Residual, StochasticDepth, WeightNoise,
                         with_weight_noise)
from . import utils  # noqa: E402  (clip_grad_norm_)

__all__ = [
    "Parameter", "Module", "Sequential", "IncompatibleKeys",
    "Conv2d", "MaxPool2d", "AvgPool2d", "BatchNorm1d", "BatchNorm2d", "Dropout", "ReLU", "Sigmoid",
    "Linear", "Flatten", "Identity", "CrossEntropyLoss", "functional", "init",
    "FractionalMaxPool2d", "DropConnect", "WeightNoise", "with_weight_noise", "GaussianNoise", "Residual",
    "StochasticDepth",
]
