"""Optimizers and learning-rate schedules by name, with the defaults of the commands.

The learning rates below are per optimizer, because one lr does not suit all eight: Adadelta's
lr multiplies an update that is already in the parameters' units (1.0 is its paper's value),
SGD without momentum needs a larger step than SGD with momentum 0.9 (whose steps add up to
about 1 / (1 - 0.9) = 10 gradients), and Adam/RMSprop divide by a running RMS of the gradient,
so their steps are about lr in size whatever the gradient's scale. The values are the
conventional ones (PyTorch's defaults where it has one: Adagrad 0.01, Adadelta 1.0, RMSprop
0.01 -> 1e-3 here, Adam/AdamW 1e-3). A sweep over x1/3, x1, x3 on the default digits CNN
(bench/NOTES.md, "deepkern train") finds them within a factor of 3 of the best for every
optimizer; SGD, Momentum, NAG and Adagrad would do better at 3x on the 30-epoch budget. They
are kept conventional so that `deepkern compare` shows the textbook picture, not a tuned one.
"""

from __future__ import annotations

from .. import optim
from ..optim import lr_scheduler as _sched

__all__ = ["OPTIMIZERS", "SCHEDULES", "make_optimizer", "make_scheduler"]

# name -> (class, default keyword arguments of deepkern train / compare)
OPTIMIZERS = {
    "sgd": (optim.SGD, {"lr": 0.01}),
    "momentum": (optim.Momentum, {"lr": 0.01, "momentum": 0.9}),
    "nag": (optim.NAG, {"lr": 0.01, "momentum": 0.9}),
    "adagrad": (optim.Adagrad, {"lr": 0.01}),
    "adadelta": (optim.Adadelta, {"lr": 1.0}),
    "rmsprop": (optim.RMSprop, {"lr": 1e-3}),
    "adam": (optim.Adam, {"lr": 1e-3}),
    "adamw": (optim.AdamW, {"lr": 1e-3, "weight_decay": 1e-2}),
}

SCHEDULES = ("none", "step", "cosine", "restarts", "plateau")


def make_optimizer(name, params, lr=None, momentum=None, weight_decay=None):
    """The optimizer ``name`` (a key of OPTIMIZERS) over ``params`` with its default options,
    overridden by the arguments that are not None. ``momentum`` only applies to SGD-family
    and RMSprop optimizers (a ValueError for the others)."""
    key = str(name).lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}")
    cls, kwargs = OPTIMIZERS[key]
    kwargs = dict(kwargs)
    if lr is not None:
        kwargs["lr"] = lr
    if momentum is not None:
        if key not in ("sgd", "momentum", "nag", "rmsprop"):
            raise ValueError(f"{cls.__name__} has no momentum option (sgd, momentum, nag and rmsprop do)")
        kwargs["momentum"] = momentum
    if weight_decay is not None:
        kwargs["weight_decay"] = weight_decay
    return cls([p for p in params if p.requires_grad], **kwargs)


def make_scheduler(name, optimizer, epochs, cycle=None):
    """A learning-rate schedule by name, for a run of ``epochs`` epochs (None for "none").

    step: StepLR, lr x 0.1 every epochs // 3 epochs;
    cosine: CosineAnnealingLR down to 0 over the run; restarts: CosineAnnealingWarmRestarts
    with cycles of ``cycle`` epochs (default epochs // 3: three snapshots); plateau:
    ReduceLROnPlateau halving the lr after 2 epochs without a better validation loss.
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; expected one of {', '.join(SCHEDULES)}")
    if name == "none":
        return None
    if name == "step":
        return _sched.StepLR(optimizer, step_size=max(1, epochs // 3), gamma=0.1)
    if name == "cosine":
        return _sched.CosineAnnealingLR(optimizer, T_max=max(1, epochs))
    if name == "restarts":
        return _sched.CosineAnnealingWarmRestarts(optimizer, T_0=max(1, cycle or epochs // 3))
    return _sched.ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=2)
