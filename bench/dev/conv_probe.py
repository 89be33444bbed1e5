"""Dev probe: deepkern conv2d vs PyTorch (oneDNN) side by side on the issue-8 suite.

    python bench/dev/conv_probe.py [--cases c2,c3] [--dirs fwd,bwd_data,bwd_weight] [--reps 15]

Times forward, backward-data and backward-weight (+ bias gradient) of each case, interleaving
deepkern and torch runs, and prints medians, GFLOP/s (nominal: 2*N*OC*OH*OW*C/G*KH*KW per
direction) and % of the FMA peak measured by conv_fma_peak.cpp for the SIMD level in use.
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
from deepkern import _C

HERE = os.path.dirname(os.path.abspath(__file__))
STAT = "median"  # or "min" (--stat): on a busy machine the minimum estimates the quiet time

# name: (C, OC, H, W, k, stride, pad, groups), all at N = 64
SUITE = {
    "c1": (3, 32, 32, 32, 3, 1, 1, 1),
    "c2": (32, 64, 32, 32, 3, 1, 1, 1),
    "c3": (64, 128, 16, 16, 3, 1, 1, 1),
    "c4": (128, 256, 8, 8, 3, 1, 1, 1),
    "c5": (64, 64, 16, 16, 1, 1, 0, 1),
    "c6": (64, 64, 32, 32, 3, 2, 1, 1),
    "c7": (64, 64, 32, 32, 3, 1, 1, 64),
}


def fma_peak(threads):
    """GFLOP/s of the FMA loop for (avx2, avx512) on `threads` threads (compiled once, cached)."""
    exe = os.path.join("/tmp", f"dk_fma_peak_{os.getuid()}")
    src = os.path.join(HERE, "conv_fma_peak.cpp")
    if not os.path.exists(exe) or os.path.getmtime(exe) < os.path.getmtime(src):
        subprocess.check_call(["g++", "-O2", "-fopenmp", src, "-o", exe])
    out = json.loads(subprocess.check_output([exe, str(threads), "20000000"]))
    return {"avx2": out["avx2_gflops"], "avx512": out["avx512_gflops"], "scalar": None}


def median_times(fns, reps, warm=2, clock=time.perf_counter):
    """Run each fn `warm` times, then `reps` rounds interleaving them; medians in seconds.

    clock=time.process_time measures CPU time of all threads (robust to other processes
    taking the cores, as long as the threads do not spin-wait: use it with 1 thread)."""
    for f in fns:
        for _ in range(warm):
            f()
    ts = [[] for _ in fns]
    for _ in range(reps):
        for i, f in enumerate(fns):
            t0 = clock()
            f()
            ts[i].append(clock() - t0)
    stat = np.min if STAT == "min" else np.median
    return [float(stat(t)) for t in ts], ts


def make_case(name, N=64, seed=0):
    C, OC, H, W, k, s, p, g = SUITE[name]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = (rng.standard_normal((OC, C // g, k, k)) / np.sqrt(C // g * k * k)).astype(np.float32)
    b = rng.standard_normal(OC).astype(np.float32)
    OH = (H + 2 * p - k) // s + 1
    OW = (W + 2 * p - k) // s + 1
    dy = rng.standard_normal((N, OC, OH, OW)).astype(np.float32)
    flops = 2.0 * N * OC * OH * OW * (C // g) * k * k
    return dict(x=x, w=w, b=b, dy=dy, s=(s, s), p=(p, p), g=g, flops=flops)


def dk_fns(c):
    x, w, b, dy, s, p, g = c["x"], c["w"], c["b"], c["dy"], c["s"], c["p"], c["g"]
    d = (1, 1)

    def fwd():
        y = np.empty(dy.shape, np.float32)
        _C.conv2d_forward(y, x, w, b, s, p, d, g)
        return y

    def bwd_data():
        gx = np.empty_like(x)
        _C.conv2d_backward_input(gx, dy, w, s, p, d, g)
        return gx

    def bwd_weight():
        gw = np.empty_like(w)
        gb = np.empty(w.shape[0], np.float32)
        _C.conv2d_backward_weight(gw, gb, dy, x, s, p, d, g)
        return gw, gb

    return {"fwd": fwd, "bwd_data": bwd_data, "bwd_weight": bwd_weight}


def torch_fns(c):
    import torch
    x, w, b, dy = (torch.from_numpy(c[k]) for k in ("x", "w", "b", "dy"))
    s, p, g = list(c["s"]), list(c["p"]), c["g"]
    cb = torch.ops.aten.convolution_backward

    def fwd():
        return torch.nn.functional.conv2d(x, w, b, s, p, 1, g)

    def bwd_data():
        return cb(dy, x, w, [w.shape[0]], s, p, [1, 1], False, [0, 0], g, [True, False, False])

    def bwd_weight():
        return cb(dy, x, w, [w.shape[0]], s, p, [1, 1], False, [0, 0], g, [False, True, True])

    return {"fwd": fwd, "bwd_data": bwd_data, "bwd_weight": bwd_weight}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default=",".join(SUITE))
    ap.add_argument("--dirs", default="fwd,bwd_data,bwd_weight")
    ap.add_argument("--reps", type=int, default=11)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--check", action="store_true", help="compare values with torch")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time with process CPU time (use with --threads 1 on a busy machine)")
    ap.add_argument("--peak", type=float, default=0.0,
                    help="FMA peak in GFLOP/s for the thread count (default: measure it now)")
    ap.add_argument("--stat", choices=["median", "min"], default="median")
    a = ap.parse_args(argv)
    global STAT
    STAT = a.stat
    deepkern.set_num_threads(a.threads)
    isa = _C.get_isa()
    peak = a.peak or fma_peak(a.threads)[isa]
    print(f"# {deepkern.build_info()['cpu']}  isa={isa}  threads={a.threads}  "
          f"FMA peak {peak} GFLOP/s  clock={'cpu' if a.cpu_time else 'wall'} {STAT}  "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    if not a.no_torch:
        import torch
        torch.set_num_threads(a.threads)
    print(f"{'case':4} {'dir':10} {'dk ms':>8} {'torch ms':>8} {'dk/t':>6} {'dk GF/s':>8} "
          f"{'%peak':>6} {'t GF/s':>7} {'t%pk':>5}")
    for name in a.cases.split(","):
        c = make_case(name)
        dk = dk_fns(c)
        th = None if a.no_torch else torch_fns(c)
        for d in a.dirs.split(","):
            fns = [dk[d]] + ([] if th is None else [th[d]])
            if a.check and th is not None:
                got, want = dk[d](), th[d]()
                got = got if isinstance(got, tuple) else (got,)
                want = [t for t in (want if isinstance(want, (tuple, list)) else (want,)) if t is not None]
                for gg, ww in zip(got, want):
                    err = np.max(np.abs(gg - ww.numpy())) / (np.max(np.abs(ww.numpy())) + 1e-30)
                    if err > 1e-4:
                        print(f"  !! {name} {d}: rel err {err:.2e}")
            med, _ = median_times(fns, a.reps,
                                  clock=time.process_time if a.cpu_time else time.perf_counter)
            gf = c["flops"] / med[0] / 1e9
            line = f"{name:4} {d:10} {med[0]*1e3:8.3f} "
            if th is not None:
                tgf = c["flops"] / med[1] / 1e9
                line += f"{med[1]*1e3:8.3f} {med[0]/med[1]:6.2f} "
            else:
                line += f"{'':8} {'':6} "
            line += f"{gf:8.1f} {100*gf/peak if peak else 0:6.1f}"
            if th is not None:
                line += f" {tgf:7.1f} {100*tgf/peak if peak else 0:5.1f}"
            print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
