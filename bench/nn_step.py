"""Forward + backward of the default digits CNN: deepkern.nn against PyTorch, side by side.

    python bench/nn_step.py [--batch 64] [--repeat 7] [--steps 200] [--threads 2] [--layers]

The model is the one `deepkern train` uses by default (conv-bn-relu-pool x2, dropout,
linear) on 8x8 inputs. One step = zero_grad, forward, cross-entropy (label smoothing 0.1),
backward; no optimizer. Both libraries run in this process, alternating, on the same thread
count; the medians of `repeat` runs of `steps` steps are printed with their ratio.
``--layers`` adds deepkern's time per layer (forward and backward).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import deepkern
import deepkern.nn as nn


def dk_model(c1=16, c2=32, classes=10):
    return nn.Sequential(
        nn.Conv2d(1, c1, 3, padding=1), nn.BatchNorm2d(c1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1), nn.BatchNorm2d(c2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.25), nn.Linear(c2 * 2 * 2, classes))


def torch_model(torch, c1=16, c2=32, classes=10):
    t = torch.nn
    return t.Sequential(
        t.Conv2d(1, c1, 3, padding=1), t.BatchNorm2d(c1), t.ReLU(), t.MaxPool2d(2),
        t.Conv2d(c1, c2, 3, padding=1), t.BatchNorm2d(c2), t.ReLU(), t.MaxPool2d(2),
        t.Flatten(), t.Dropout(0.25), t.Linear(c2 * 2 * 2, classes))


def median_us(fn, steps, repeat):
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        runs.append((time.perf_counter() - t0) / steps * 1e6)
    runs.sort()
    return runs[len(runs) // 2], runs[0], runs[-1]


def layer_times(model, crit, x, y, steps):
    """deepkern time per layer, forward and backward (microseconds per step)."""
    fwd = [0.0] * len(model)
    bwd = [0.0] * len(model)
    for _ in range(steps):
        h = x
        for i, m in enumerate(model):
            t0 = time.perf_counter()
            h = m(h)
            fwd[i] += time.perf_counter() - t0
        crit(h, y)
        g = crit.backward()
        model.zero_grad()
        for i in reversed(range(len(model))):
            t0 = time.perf_counter()
            g = model[i].backward(g)
            bwd[i] += time.perf_counter() - t0
    return [(repr(m).split("(")[0], f / steps * 1e6, b / steps * 1e6) for m, f, b in zip(model, fwd, bwd)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layers", action="store_true")
    args = ap.parse_args(argv)

    deepkern.set_num_threads(args.threads)
    deepkern.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, args.batch)
    model, crit = dk_model(), nn.CrossEntropyLoss(label_smoothing=0.1)

    def dk_step():
        model.zero_grad()
        crit(model(x), y)
        model.backward(crit.backward())

    for _ in range(50):
        dk_step()
    print(f"deepkern {deepkern.__version__}, {deepkern.build_info()['cpu']}, {args.threads} threads, "
          f"batch {args.batch} of 1x8x8")

    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        torch.set_num_threads(args.threads)
        tmodel = torch_model(torch)
        with torch.no_grad():      # same weights, so both do the same arithmetic
            for (_, p), (_, tp) in zip(model.named_parameters(), tmodel.named_parameters()):
                tp.copy_(torch.from_numpy(p.data))
        tcrit = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)

        def torch_step():
            tmodel.zero_grad()
            tcrit(tmodel(tx), ty).backward()

        for _ in range(50):
            torch_step()

    res_dk, res_t = [], []
    for _ in range(args.repeat):                     # alternate, so both see the same noise
        res_dk.append(median_us(dk_step, args.steps, 1)[0])
        if torch is not None:
            res_t.append(median_us(torch_step, args.steps, 1)[0])
    med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
    print(f"deepkern  fwd+bwd: median {med(res_dk):8.1f} us/step (min {min(res_dk):.1f}, max {max(res_dk):.1f})")
    if torch is not None:
        print(f"PyTorch   fwd+bwd: median {med(res_t):8.1f} us/step (min {min(res_t):.1f}, max {max(res_t):.1f}) "
              f"torch {torch.__version__}")
        print(f"speed-up (PyTorch / deepkern, medians): {med(res_t) / med(res_dk):.2f}x")
    if args.layers:
        print(f"{'layer':14s} {'fwd us':>8s} {'bwd us':>8s}")
        for name, f, b in layer_times(model, crit, x, y, args.steps):
            print(f"{name:14s} {f:8.1f} {b:8.1f}")


if __name__ == "__main__":
    main()
