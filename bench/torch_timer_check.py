"""Cross-check: do `deepkern bench`'s PyTorch figures agree with PyTorch's own timer?

For a few cases, alternately (so both see the same machine load) time PyTorch's call with
the harness (``deepkern.bench.run_suite``, backend torch only) and with
``torch.utils.benchmark.Timer.blocked_autorange`` on the same shapes and thread count, and
print both medians and their ratio. Agreement within the run-to-run spread means the harness
adds no overhead of its own to what it times.

    python bench/torch_timer_check.py [--rounds 3] [--threads N]
"""

import argparse

import numpy as np
import torch
import torch.utils.benchmark as tb

import deepkern
from deepkern.bench import calibrate, run_suite

# case id -> (PyTorch statement, inputs) on the suite's shapes
CASES = {
    "conv2d/c3/fwd": ("torch.nn.functional.conv2d(x, w, None, 1, 1)",
                      {"x": (64, 64, 16, 16), "w": (128, 64, 3, 3)}),
    "relu/fwd": ("torch.relu(x)", {"x": (64, 64, 32, 32)}),
    "avg_pool2d/fwd": ("torch.nn.functional.avg_pool2d(x, 3, 1, 1)", {"x": (64, 64, 32, 32)}),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--cases", nargs="+", default=list(CASES))
    args = ap.parse_args()
    if args.threads:
        deepkern.set_num_threads(args.threads)
    threads = deepkern.get_num_threads()
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    calib = calibrate.get()  # once: the check is about timing, not the limits
    print(f"{threads} threads, torch {torch.__version__}; median ms per call")
    print(f"{'case':18s} {'round':>5s} {'deepkern bench':>15s} {'torch Timer':>12s} {'ratio':>7s}")
    for case in args.cases:
        stmt, shapes = CASES[case]
        env = {k: torch.from_numpy(rng.standard_normal(s, dtype=np.float32)) for k, s in shapes.items()}
        env["torch"] = torch
        for k in range(args.rounds):
            doc = run_suite(ops=[case], backends=["torch"], progress=False, calibration=calib)
            ours = doc["results"][0]["median_ms"]
            m = tb.Timer(stmt, globals=env, num_threads=threads).blocked_autorange(min_run_time=1.0)
            theirs = m.median * 1e3
            print(f"{case:18s} {k + 1:5d} {ours:15.3f} {theirs:12.3f} {ours / theirs:7.2f}")


if __name__ == "__main__":
    main()
