"""Shared cases for the optimizer tests: configurations per optimizer, parameter shapes, a
deterministic gradient stream, and helpers to run deepkern / the reference side by side."""

from __future__ import annotations

import numpy as np

from deepkern import optim
from deepkern.nn import Parameter
from deepkern.optim import reference

# Every option of every optimizer appears in at least one configuration (PyTorch's
# optim_inputs_func_* lists, adapted).
CONFIGS = {
    "SGD": [
        {}, {"lr": 0.1}, {"momentum": 0.9}, {"momentum": 0.9, "dampening": 0.5},
        {"momentum": 0.9, "nesterov": True}, {"weight_decay": 0.1},
        {"momentum": 0.9, "weight_decay": 0.1, "nesterov": True, "maximize": True},
        {"lr": 0.05, "momentum": 1.5, "dampening": -0.5, "maximize": True},  # accepted, as in PyTorch
    ],
    "Momentum": [{}, {"dampening": 0.3, "weight_decay": 0.01}],
    "NAG": [{}, {"weight_decay": 0.1, "maximize": True}],
    "Adagrad": [
        {}, {"lr_decay": 0.1}, {"weight_decay": 0.1}, {"initial_accumulator_value": 0.1},
        {"eps": 1e-3, "maximize": True}, {"lr": 0.1, "lr_decay": 0.5, "weight_decay": 0.2},
    ],
    "Adadelta": [
        {}, {"rho": 0.5, "eps": 1e-4}, {"weight_decay": 0.1}, {"lr": 0.5, "maximize": True}, {"rho": 1.0},
    ],
    "RMSprop": [
        {}, {"centered": True}, {"momentum": 0.9}, {"centered": True, "momentum": 0.5},
        {"weight_decay": 0.1}, {"alpha": 0.5, "eps": 1e-3}, {"maximize": True, "lr": 1e-3},
    ],
    "Adam": [
        {}, {"amsgrad": True}, {"weight_decay": 0.1}, {"betas": (0.5, 0.9)}, {"maximize": True},
        {"amsgrad": True, "weight_decay": 0.1, "lr": 1e-2}, {"betas": (0.0, 0.0), "eps": 1e-3},
    ],
    "AdamW": [{}, {"amsgrad": True}, {"weight_decay": 0.5}, {"maximize": True, "betas": (0.8, 0.99)}],
}

ALL = [(name, cfg) for name, cfgs in CONFIGS.items() for cfg in cfgs]


def case_id(name, cfg):
    return name + ("-" + ",".join(f"{k}={v}" for k, v in cfg.items()) if cfg else "")


CASE_IDS = [case_id(n, c) for n, c in ALL]

# a scalar, odd sizes (vector tails), more than one vector, a 3-D tensor, a 0-size tensor last
SHAPES = [(), (1,), (7,), (33,), (4, 5, 3), (129,), (0,)]

# The reference update of each class, with the options deepkern's group holds.
REFERENCE = {
    "SGD": reference.sgd, "Momentum": reference.sgd, "NAG": reference.sgd, "Adagrad": reference.adagrad,
    "Adadelta": reference.adadelta, "RMSprop": reference.rmsprop, "Adam": reference.adam,
    "AdamW": reference.adamw,
}


def make_params(rng, shapes, dtype):
    return [Parameter(np.asarray(rng.standard_normal(s), dtype=dtype)) for s in shapes]


def grad_stream(seed, shapes, dtype, steps):
    """Gradients for `steps` steps: a fixed RNG, so every consumer sees the same values."""
    rng = np.random.default_rng(seed)
    return [[np.asarray(rng.standard_normal(s), dtype=dtype) for s in shapes] for _ in range(steps)]


def ref_options(opt, group):
    """The options the reference function takes, from a deepkern group."""
    return {k: group[k] for k in opt.defaults}


def reference_step(name, opt, group, p64, g64, state64):
    return REFERENCE[name](p64, g64, state64, **ref_options(opt, group))


def make(name, params, **cfg):
    return getattr(optim, name)(params, **cfg)
