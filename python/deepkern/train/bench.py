"""The training-epoch case of ``deepkern bench``: one epoch of ``deepkern train``'s default
model, in deepkern and in PyTorch, on the same data.

An epoch is BENCH_STEPS = 28 optimizer steps of 64 digits (1,797 / 64 = 28): forward, the
label-smoothed cross-entropy, backward, and an Adam step, per batch. The batches are drawn
once (seeded shuffles of the standardized digits training split, repeated until there are
28) and are the same arrays for both frameworks, so the timing covers the frameworks' work,
not data loading. Both models start from the same weights. PyTorch's Adam is its fused CPU
implementation (fused=True), the fastest it has for these small tensors.
"""

from __future__ import annotations

import numpy as np

__all__ = ["BENCH_STEPS", "benchmark_epoch"]

BENCH_STEPS = 28


def _batches(batch_size, seed, steps):
    from .. import data

    (x, y), _, _ = data.digits_splits(val_size=0.1, seed=seed)
    x = data.Standardizer().fit(x).transform(x)
    rng = np.random.default_rng([seed, 3])
    out = []
    while len(out) < steps:
        order = rng.permutation(len(x))
        for start in range(0, len(x) - batch_size + 1, batch_size):
            idx = order[start:start + batch_size]
            out.append((np.ascontiguousarray(x[idx]), y[idx]))
    return out[:steps]


def benchmark_epoch(framework, *, batch_size=64, seed=0, steps=None):
    """A function that trains the default model for one epoch and returns its mean loss.

    framework: "cpu" or "numpy" (deepkern on that backend), "torch" (the same model, loss and
    optimizer in PyTorch, on torch's current thread count: the bench sets it to deepkern's),
    or "cuda" (deepkern with the model and the batches as CuPy arrays on the GPU; RuntimeError
    naming the reason where that cannot run). steps: optimizer steps per call (default
    BENCH_STEPS). Every call continues training the same model.
    """
    import deepkern
    from .. import models, nn
    from .setup import make_optimizer

    if batch_size < 1 or batch_size > 1000:
        raise ValueError(f"batch_size must be in [1, 1000], got {batch_size}")
    steps = BENCH_STEPS if steps is None else int(steps)
    if framework not in ("cpu", "numpy", "cuda", "torch"):
        raise RuntimeError(f"unknown framework {framework!r}")
    batches = _batches(batch_size, seed, steps)
    deepkern.manual_seed(seed)
    model = models.digits_cnn()
    lr = 2e-3
    if framework == "torch":
        try:
            import torch
        except ImportError:
            raise RuntimeError("PyTorch is not installed") from None
        torch.manual_seed(seed)
        twin = models.torch_twin(model, torch)
        crit = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
        # PyTorch's fastest Adam on the CPU: fused=True runs one kernel over every parameter
        # (its default here, a loop of ~10 small ops per tensor, is ~3.5x slower per step)
        try:
            opt = torch.optim.Adam(twin.parameters(), lr=lr, fused=True)
        except (RuntimeError, TypeError, ValueError):
            opt = torch.optim.Adam(twin.parameters(), lr=lr)
        tb = [(torch.from_numpy(xb), torch.from_numpy(yb)) for xb, yb in batches]

        def torch_epoch():
            total = 0.0
            with torch.enable_grad():          # the bench times PyTorch's ops under no_grad
                for xb, yb in tb:
                    opt.zero_grad()
                    loss = crit(twin(xb), yb)
                    loss.backward()
                    opt.step()
                    total += loss.item()
            return total / len(tb)
        return torch_epoch

    crit = nn.CrossEntropyLoss(label_smoothing=0.1)
    if framework == "cuda":
        from ..nn import _array
        _array.module_to(model, "cuda")          # RuntimeError without a usable GPU
        batches = [(_array.to_device(xb, "cuda"), _array.to_device(yb, "cuda")) for xb, yb in batches]
    opt = make_optimizer("adam", model.parameters(), lr=lr)

    def epoch():
        total = 0.0
        for xb, yb in batches:
            loss = crit(model(xb), yb)
            model.zero_grad()
            model.backward(crit.backward())
            opt.step()
            total += float(loss)                 # (a device synchronization on cuda, like torch's .item())
        return total / len(batches)

    if framework in ("cpu", "cuda"):
        return epoch

    def numpy_epoch():
        with deepkern.use_backend("numpy"):
            return epoch()
    return numpy_epoch
