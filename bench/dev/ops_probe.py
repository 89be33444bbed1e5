"""Dev probe: the memory-bound layer ops of deepkern vs PyTorch, as bandwidth.

    python bench/dev/ops_probe.py [--ops relu,dropout] [--reps 15] [--threads 2] [--cpu-time]

Shape (64, 64, 32, 32) float32. Each op's speed is its minimal bytes (every input read once,
every output written once) over the median time, compared with a STREAM-like triad
(bench/dev/ops_triad.cpp) on a working set of the same size, measured in the same run.
Not a test: a tool for the design notes in bench/NOTES.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

import deepkern
import deepkern.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
SHAPE = (64, 64, 32, 32)


def triad_gbs(nbytes, threads):
    exe = os.path.join("/tmp", f"dk_ops_triad_{os.getuid()}")
    src = os.path.join(HERE, "ops_triad.cpp")
    if not os.path.exists(exe) or os.path.getmtime(exe) < os.path.getmtime(src):
        subprocess.check_call(["g++", "-O3", "-march=x86-64-v3", "-fopenmp", src, "-o", exe])
    return json.loads(subprocess.check_output([exe, str(int(nbytes)), str(threads)]))["median_gbs"]


def cases():
    """name -> (deepkern fn, torch fn, minimal bytes)."""
    import torch
    rng = np.random.default_rng(0)
    x = rng.standard_normal(SHAPE).astype(np.float32)
    n = x.size
    f4 = 4
    tx = torch.from_numpy(x)
    out = {}
    # max pool 2x2 s2
    y, idx = F.max_pool2d(x, 2, 2)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    ty, tidx = torch.nn.functional.max_pool2d(tx, 2, 2, return_indices=True)
    tdy = torch.from_numpy(dy)
    m = y.size
    out["maxpool fwd"] = (lambda: F.max_pool2d(x, 2, 2),
                          lambda: torch.nn.functional.max_pool2d(tx, 2, 2, return_indices=True),
                          n * f4 + m * f4 + m * 8)
    out["maxpool bwd"] = (lambda: F.max_pool2d_backward(dy, idx, x.shape),
                          lambda: torch.ops.aten.max_pool2d_with_indices_backward(
                              tdy, tx, [2, 2], [2, 2], [0, 0], [1, 1], False, tidx),
                          m * f4 + m * 8 + n * f4)
    # avg pool 3x3 s1 p1
    gy = rng.standard_normal(SHAPE).astype(np.float32)
    tgy = torch.from_numpy(gy)
    out["avgpool fwd"] = (lambda: F.avg_pool2d(x, 3, 1, 1),
                          lambda: torch.nn.functional.avg_pool2d(tx, 3, 1, 1), 2 * n * f4)
    out["avgpool bwd"] = (lambda: F.avg_pool2d_backward(gy, x.shape, 3, 1, 1),
                          lambda: torch.ops.aten.avg_pool2d_backward(tgy, tx, [3, 3], [1, 1], [1, 1],
                                                                     False, True, None), 2 * n * f4)
    # batch norm, training
    C = SHAPE[1]
    w = rng.standard_normal(C).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
    tw, tb, trm, trv = (torch.from_numpy(a.copy()) for a in (w, b, rm, rv))
    _, sm, si = F.batch_norm(x, w, b, rm.copy(), rv.copy(), training=True)
    _, tsm, tsi = torch.ops.aten.native_batch_norm(tx, tw, tb, trm, trv, True, 0.1, 1e-5)
    out["batchnorm fwd"] = (lambda: F.batch_norm(x, w, b, rm, rv, training=True),
                            lambda: torch.ops.aten.native_batch_norm(tx, tw, tb, trm, trv, True, 0.1, 1e-5),
                            2 * n * f4)
    out["batchnorm bwd"] = (lambda: F.batch_norm_backward(gy, x, w, sm, si, training=True),
                            lambda: torch.ops.aten.native_batch_norm_backward(
                                tgy, tx, tw, trm, trv, tsm, tsi, True, 1e-5, [True, True, True]),
                            3 * n * f4)
    # dropout p = 0.5
    _, mask = F.dropout(x, 0.5, seed=1)
    _, tmask = torch.ops.aten.native_dropout(tx, 0.5, True)
    out["dropout fwd"] = (lambda: F.dropout(x, 0.5, seed=1),
                          lambda: torch.ops.aten.native_dropout(tx, 0.5, True), 2 * n * f4 + n)
    out["dropout bwd"] = (lambda: F.dropout_backward(gy, mask, 0.5),
                          lambda: torch.ops.aten.native_dropout_backward(tgy, tmask, 2.0), 2 * n * f4 + n)
    # relu
    r = F.relu(x)
    tr = torch.relu(tx)
    out["relu fwd"] = (lambda: F.relu(x), lambda: torch.relu(tx), 2 * n * f4)
    out["relu bwd"] = (lambda: F.relu_backward(gy, r),
                       lambda: torch.ops.aten.threshold_backward(tgy, tr, 0), 3 * n * f4)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--ops", default="")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cpu-time", action="store_true")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--stat", choices=["median", "min"], default="median",
                    help="min estimates the quiet-machine time on a busy one")
    a = ap.parse_args(argv)
    import torch
    deepkern.set_num_threads(a.threads)
    torch.set_num_threads(a.threads)
    clock = time.process_time if a.cpu_time else time.perf_counter
    print(f"# {deepkern.build_info()['cpu']}  threads={a.threads}  shape={SHAPE} float32  "
          f"clock={'cpu' if a.cpu_time else 'wall'} {a.stat}  load {os.getloadavg()[0]:.1f}")
    print(f"{'op':14} {'MB':>5} {'dk ms':>7} {'t ms':>7} {'t/dk':>6} {'dk GB/s':>8} {'t GB/s':>7} "
          f"{'triad':>6} {'dk/triad':>8}")
    want = set(a.ops.split(",")) if a.ops else None
    for name, (fdk, ft, nbytes) in cases().items():
        if want and not any(w in name for w in want):
            continue
        fns = [fdk] if a.no_torch else [fdk, ft]
        for f in fns:
            for _ in range(3):
                f()
        ts = [[] for _ in fns]
        for _ in range(a.reps):
            for i, f in enumerate(fns):
                t0 = clock()
                f()
                ts[i].append(clock() - t0)
        med = [float((np.min if a.stat == "min" else np.median)(t)) for t in ts]
        tri = triad_gbs(nbytes, a.threads)
        gdk = nbytes / med[0] / 1e9
        line = f"{name:14} {nbytes / 1e6:5.1f} {med[0] * 1e3:7.3f} "
        line += f"{med[1] * 1e3:7.3f} {med[1] / med[0]:6.2f} " if len(med) > 1 else f"{'':7} {'':6} "
        line += f"{gdk:8.1f} " + (f"{nbytes / med[1] / 1e9:7.1f} " if len(med) > 1 else f"{'':7} ")
        line += f"{tri:6.1f} {gdk / tri:8.2f}"
        print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
