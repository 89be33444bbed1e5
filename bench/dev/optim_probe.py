"""Probe: each optimizer's fused step over 10M float32 parameters in 20 tensors, side by side
with PyTorch's fastest CPU mode and a triad on the same working set (2 threads).

    python bench/dev/optim_probe.py [--n 10000000] [--tensors 20] [--threads 2] [--reps 15]
                                    [--only adam,sgd] [--json out.json]

Per optimizer: median ms per step (deepkern's step() and the bare kernel call), GB/s of the
minimal bytes (each parameter, gradient and state element read once, each updated value
written once: no write-allocate, since every write is in place), % of the triad bandwidth
measured on a working set of the same size, and PyTorch's for-loop / foreach / fused times
(its fastest is the reference). Then the clip + step + EMA training step: deepkern's
fused_step vs its three separate calls vs PyTorch's three passes.

Timings interleave deepkern and PyTorch rounds (the machine is shared: medians of rounds
taken side by side, never numbers from different runs). The first steps are not timed: they
allocate state (first-touch page faults) that later in-place steps do not pay.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import numpy as np

import deepkern as dk
from deepkern import optim
from deepkern.nn import Parameter
from deepkern.nn.utils import clip_grad_norm_

# name -> (deepkern class, torch class name, options, bytes per element moved at minimum
#          (float32: params r+w, grads r, each state buffer r+w))
CASES = {
    "sgd":      (optim.SGD, "SGD", dict(lr=1e-3), 12),
    "momentum": (optim.Momentum, "SGD", dict(lr=1e-3, momentum=0.9), 20),
    "nag":      (optim.NAG, "SGD", dict(lr=1e-3, momentum=0.9), 20),
    "adagrad":  (optim.Adagrad, "Adagrad", dict(lr=1e-2), 20),
    "adadelta": (optim.Adadelta, "Adadelta", dict(), 28),
    "rmsprop":  (optim.RMSprop, "RMSprop", dict(lr=1e-2), 20),
    "adam":     (optim.Adam, "Adam", dict(lr=1e-3), 28),
    "adamw":    (optim.AdamW, "AdamW", dict(lr=1e-3), 28),
}


def interleaved(fns: dict, reps: int, rounds: int = 3, stat="median"):
    """ms of each callable, measured in alternating rounds of `reps` calls each. stat="median":
    the median of all calls; stat="min": the median over rounds of each round's fastest call
    -- on a shared machine that estimates what the code does when nobody else is using the
    cores and the memory bus, and the alternation keeps the comparison fair."""
    samples = {k: [[] for _ in range(rounds)] for k in fns}
    for r in range(rounds):
        for k, fn in fns.items():
            for _ in range(reps):
                t = time.perf_counter()
                fn()
                samples[k][r].append((time.perf_counter() - t) * 1e3)
    if stat == "min":
        return {k: statistics.median(min(r) for r in v) for k, v in samples.items()}
    return {k: statistics.median(x for r in v for x in r) for k, v in samples.items()}


_TRIAD_C = r"""
#include <stdint.h>
void triad(float* a, const float* b, const float* c, int64_t n, float s, int threads) {
  #pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < n; ++i) a[i] = b[i] + s * c[i];
}
"""


def _compiled_triad():
    """STREAM's triad loop compiled here with the system C compiler (-O3 -march=native
    -fopenmp), or None when there is no compiler."""
    import ctypes
    import os
    import subprocess
    import tempfile
    d = tempfile.mkdtemp(prefix="dk_triad_")
    src, lib = os.path.join(d, "triad.c"), os.path.join(d, "triad.so")
    with open(src, "w") as f:
        f.write(_TRIAD_C)
    try:
        subprocess.run(["cc", "-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", src, "-o", lib],
                       check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    fn = ctypes.CDLL(lib).triad
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int]
    return fn


class Triad:
    """STREAM triad a = b + 3 c on three float32 arrays, sized so that the three together are
    as large as a given working set, on the same thread count. STREAM counts 12 bytes per
    element (the write-allocate read of `a` it also causes is not counted). Compiled C when
    a compiler is present, else PyTorch's add(out=) (one pass too, usually slower)."""

    _c = None

    def __init__(self, torch, working_set_elems, threads):
        self.n = working_set_elems // 3
        if Triad._c is None:
            Triad._c = _compiled_triad() or False
        self.kind = "C" if Triad._c else "torch.add"
        if Triad._c:
            self.b = np.random.default_rng(1).random(self.n, dtype=np.float32)
            self.c = np.random.default_rng(2).random(self.n, dtype=np.float32)
            self.a = np.zeros(self.n, np.float32)
            self.args = (self.a.ctypes.data, self.b.ctypes.data, self.c.ctypes.data, self.n, 3.0, threads)
        elif torch is not None:
            self.b, self.c, self.a = torch.rand(self.n), torch.rand(self.n), torch.empty(self.n)
            self.torch = torch
        else:
            raise RuntimeError("no C compiler and no PyTorch: cannot measure a triad")
        self()

    def __call__(self):
        if Triad._c:
            Triad._c(*self.args)
        else:
            self.torch.add(self.b, self.c, alpha=3.0, out=self.a)

    def gbs(self, ms):
        return 12 * self.n / ms / 1e6


def make_params(rng, n, k, dtype=np.float32):
    sizes = [n // k + (1 if i < n % k else 0) for i in range(k)]
    ps = [Parameter(rng.standard_normal(s).astype(dtype)) for s in sizes]
    for p in ps:
        p.grad = rng.standard_normal(p.shape).astype(dtype) * dtype(1e-2)
    return ps


def torch_modes(torch, name, opts, tparams):
    cls = getattr(torch.optim, name)
    modes = {"forloop": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}
    out = {}
    for mode, kw in modes.items():
        try:
            o = cls(tparams, **opts, **kw)
            o.step()
            o.step()
            out[mode] = o
        except (TypeError, RuntimeError, ValueError):
            pass  # this optimizer has no such mode in this PyTorch
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--tensors", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="")
    ap.add_argument("--stat", choices=["median", "min"], default="median",
                    help="report the median of all timed calls (default) or the fastest")
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)

    try:
        import torch
    except ImportError:
        torch = None
    dk.set_num_threads(args.threads)
    if torch is not None:
        torch.set_num_threads(args.threads)
    info = dk.build_info()
    print(f"# {info['cpu']} | simd {info['simd']} | threads {args.threads} | n {args.n:,} float32 in "
          f"{args.tensors} tensors | torch {torch.__version__ if torch else 'absent'} | {platform.python_version()} | "
          f"{args.stat} of {args.rounds}x{args.reps} calls | triad: {'C' if _compiled_triad() else 'torch.add'}")

    rng = np.random.default_rng(0)
    params = make_params(rng, args.n, args.tensors)
    tparams = None
    if torch is not None:
        tparams = [torch.nn.Parameter(torch.from_numpy(p.data.copy())) for p in params]
        for tp, p in zip(tparams, params):
            tp.grad = torch.from_numpy(p.grad.copy())

    results = {"cpu": info["cpu"], "simd": info["simd"], "threads": args.threads, "n": args.n, "stat": args.stat,
               "tensors": args.tensors, "optimizers": {}}
    names = [s for s in args.only.split(",") if s] or list(CASES)
    hdr = (f"{'optimizer':9s} {'B/elem':>6s} {'step ms':>8s} {'kernel':>7s} {'GB/s':>6s} {'triad':>6s} "
           f"{'%triad':>6s} {'torch ms (loop/foreach/fused)':>30s} {'best':>7s} {'speedup':>7s}")
    print(hdr)
    for name in names:
        cls, tname, opts, bpe = CASES[name]
        opt = cls(params, **opts)
        opt.step()
        opt.step()  # state allocated and touched: later steps are pure in-place traffic
        jobs = opt._collect()

        def kernel_only(opt=opt, jobs=jobs):  # the C++ call alone (no Python validation)
            opt._apply(jobs)

        fns = {"step": opt.step, "kernel": kernel_only}
        topts = dict(opts, nesterov=True) if name == "nag" else opts
        tmodes = torch_modes(torch, tname, topts, tparams) if torch is not None else {}
        for mode, o in tmodes.items():
            fns["torch_" + mode] = o.step
        # the working set: params, grads and state buffers, n float32 each (the grad is only
        # read: 4 bytes per element; every other array is read and written: 8)
        triad = Triad(torch, (1 + (bpe - 4) // 8) * args.n, args.threads)
        fns["triad"] = triad
        t = interleaved(fns, args.reps, args.rounds, args.stat)
        gbs = bpe * args.n / t["step"] / 1e6
        tri = triad.gbs(t["triad"])
        tms = {m: t.get("torch_" + m) for m in ("forloop", "foreach", "fused")}
        best = min((v for v in tms.values() if v), default=float("nan"))
        tstr = "/".join(f"{v:.2f}" if v else "-" for v in tms.values())
        print(f"{name:9s} {bpe:6d} {t['step']:8.2f} {t['kernel']:7.2f} {gbs:6.1f} {tri:6.1f} {100 * gbs / tri:5.0f}% "
              f"{tstr:>30s} {best:7.2f} {best / t['step']:6.2f}x", flush=True)
        results["optimizers"][name] = dict(bytes_per_elem=bpe, step_ms=t["step"], kernel_ms=t["kernel"], gbs=gbs,
                                           triad_gbs=tri, pct_triad=100 * gbs / tri,
                                           torch_ms=tms, torch_best_ms=best, speedup=best / t["step"])

    # ---- clip + step + EMA: fused vs separate vs PyTorch's three passes (Adam)
    if not args.only or "fused" in names or "adam" in names:
        opt = optim.Adam(params, lr=1e-3)
        ema = optim.EMA(params, decay=0.999)
        opt.step()
        opt.step()

        def separate():
            clip_grad_norm_(params, 1e9)  # max_norm huge: the grads keep their values
            opt.step()
            ema.update()

        fns = {"fused_step": lambda: optim.fused_step(opt, max_norm=1e9, ema=ema), "separate": separate}
        if torch is not None:
            topt = torch.optim.Adam(tparams, lr=1e-3, fused=True)
            tema = [tp.detach().clone() for tp in tparams]
            topt.step()

            def torch_three():
                torch.nn.utils.clip_grad_norm_(tparams, 1e9, foreach=True)
                topt.step()
                with torch.no_grad():
                    torch._foreach_lerp_(tema, [tp.detach() for tp in tparams], 1 - 0.999)

            fns["torch"] = torch_three
        t = interleaved(fns, args.reps, args.rounds, args.stat)
        # bytes per float32 element: norm read g (4) + Adam (28) + EMA r/w (8): 40 fused;
        # separate: norm 4 + scale r/w 8 + Adam 28 + EMA (read p 4, r/w avg 8) = 52
        print(f"\nclip+Adam+EMA (n={args.n:,}): fused_step {t['fused_step']:.2f} ms (40 B/elem, "
              f"{40 * args.n / t['fused_step'] / 1e6:.1f} GB/s) | separate deepkern calls {t['separate']:.2f} ms "
              f"(52 B/elem) | torch clip+fused Adam+foreach lerp "
              f"{t.get('torch', float('nan')):.2f} ms (52 B/elem)")
        results["clip_step_ema"] = {k: v for k, v in t.items()}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
