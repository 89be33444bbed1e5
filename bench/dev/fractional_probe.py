"""Dev probe: fractional_max_pool2d forward (+ its backward, the max_pool2d scatter) on the cpu
backend vs PyTorch's CPU kernel and the NumPy reference, with the same samples.

    python bench/dev/fractional_probe.py [--reps 21] [--threads 2]

Shapes: (64, 32, 32, 32) -> 22x22 with 2x2 regions (ratio ~0.7, Graham's CIFAR setting) and
(64, 16, 8, 8) -> 5x5 (the digits). Medians of --reps runs, interleaved per case.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import deepkern
import deepkern.functional as F
import deepkern.reference as R


def median_ms(fn, reps):
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1e3)
    return float(np.median(ts))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=21)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    deepkern.set_num_threads(a.threads)
    try:
        import torch
        torch.set_num_threads(a.threads)
    except ImportError:
        torch = None
    rng = np.random.default_rng(0)
    print(f"{deepkern.build_info()['cpu']}, {a.threads} threads, median of {a.reps}")
    print(f"{'case':34s} {'deepkern ms':>12s} {'torch ms':>9s} {'numpy ms':>9s} {'vs torch':>9s}")
    for shape, out in (((64, 32, 32, 32), (22, 22)), ((64, 16, 8, 8), (5, 5))):
        x = rng.standard_normal(shape).astype(np.float32)
        s = rng.random(shape[:2] + (2,)).astype(np.float32) * np.float32(0.999)
        y, idx = F.fractional_max_pool2d(x, 2, output_size=out, samples=s)
        g = np.ones_like(y)
        cases = [("fwd", lambda: F.fractional_max_pool2d(x, 2, output_size=out, samples=s),
                  lambda: R.fractional_max_pool2d(x, 2, output_size=out, samples=s))]
        cases.append(("bwd", lambda: F.fractional_max_pool2d_backward(g, idx, x.shape),
                      lambda: R.fractional_max_pool2d_backward(g, idx, x.shape)))
        if torch is not None:
            tx, ts = torch.from_numpy(x), torch.from_numpy(s)
            txg = tx.clone().requires_grad_(True)
            ty = torch.nn.functional.fractional_max_pool2d(txg, 2, output_size=out, _random_samples=ts)
            tg = torch.ones_like(ty)
            tfwd = lambda: torch.nn.functional.fractional_max_pool2d(tx, 2, output_size=out,  # noqa: E731
                                                                      return_indices=True, _random_samples=ts)
            tbwd = lambda: torch.autograd.grad(ty, txg, tg, retain_graph=True)  # noqa: E731
        for (name, fn, ref), tfn in zip(cases, (tfwd, tbwd) if torch is not None else (None, None)):
            t_dk = median_ms(fn, a.reps)
            t_t = median_ms(tfn, a.reps) if tfn else float("nan")
            t_np = median_ms(ref, max(1, min(a.reps, 3)))
            label = f"{name} {shape} -> {out}"
            print(f"{label:34s} {t_dk:12.3f} {t_t:9.3f} {t_np:9.1f} {t_t / t_dk:8.2f}x")


if __name__ == "__main__":
    main()
