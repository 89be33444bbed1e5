"""Models, optimizers and batches shared by the distributed tests' ranks (dist_worker.py) and
their single-process references (test_distributed_mpi.py)."""

from __future__ import annotations

import numpy as np

import deepkern
from deepkern import nn, optim
from deepkern.data import DataLoader
from deepkern.distributed import DistributedLoader

STEPS = 5            # k optimizer steps compared
BATCH = 24           # the global batch B; 2 ranks take B/2 each
N = 3 * BATCH + 8    # 80 samples: 3 full batches + a smaller last one, a second epoch after
SEED = 7
CASES = [(m, o, d) for m in ("plain", "bn") for o in ("sgd", "adam") for d in ("float64", "float32")]


def make_model(kind, dtype, seed, width=4):
    """'plain': conv-relu-pool-linear (no BatchNorm); 'bn': conv-BatchNorm2d-relu-pool-linear."""
    deepkern.manual_seed(seed)
    # no convolution bias before BatchNorm (as models.digits_cnn): its true gradient is exactly
    # zero, so what backward computes is rounding noise, which Adam would scale up to lr-sized steps
    layers = [nn.Conv2d(2, width, 3, padding=1, bias=kind != "bn", dtype=dtype)]
    if kind == "bn":
        layers.append(nn.BatchNorm2d(width, dtype=dtype))
    layers += [nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(width * 4 * 4, 8, dtype=dtype),
               nn.ReLU(), nn.Linear(8, 3, dtype=dtype)]
    return nn.Sequential(*layers)


def make_optimizer(kind, params):
    if kind == "sgd":
        return optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)
    return optim.Adam(params, lr=1e-2)


def data(dtype):
    rng = np.random.default_rng(1234)
    x = rng.standard_normal((N, 2, 8, 8)).astype(dtype)
    y = rng.integers(0, 3, N)
    return x, y


def batches(dtype, per_rank=False, rank=0, size=1):
    """STEPS batches: one process's DataLoader at BATCH, or rank's DistributedLoader at BATCH/size."""
    x, y = data(dtype)
    if per_rank:
        loader = DistributedLoader(x, y, BATCH // size, seed=SEED, num_replicas=size, rank=rank)
    else:
        loader = DataLoader(x, y, batch_size=BATCH, shuffle=True, seed=SEED)
    out = []
    epoch = 0
    while len(out) < STEPS:
        loader.set_epoch(epoch)
        out.extend(loader)
        epoch += 1
    return out[:STEPS]
