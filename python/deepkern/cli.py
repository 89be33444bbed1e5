"""The deepkern command line: ``deepkern <command>`` or ``python -m deepkern <command>``.

Each command lives in its own function ``cmd_<name>(args)`` and registers its options in
``_parser()``. Commands import what they need lazily so ``deepkern info`` stays instant.
"""

from __future__ import annotations

import argparse
import sys
import time


def _fmt_bytes(n):
    if not n:
        return "unknown"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.4g} {unit}"
        n /= 1024


def info_lines(info=None):
    """build_info() in words, one fact a line."""
    import deepkern

    info = info or deepkern.build_info()
    lines = [
        f"deepkern {info['version']}",
        f"  CPU:        {info['cpu']}",
        f"  SIMD:       {info['simd']} in use (CPU has avx2: {'yes' if info['cpu_avx2'] else 'no'}, "
        f"avx512: {'yes' if info['cpu_avx512'] else 'no'}; build has {', '.join(info['simd_variants'])})",
        f"  caches:     L1d {_fmt_bytes(info['l1d_bytes'])}, L2 {_fmt_bytes(info['l2_bytes'])}, "
        f"L3 {_fmt_bytes(info['l3_bytes'])}",
        f"  threads:    {info['num_threads']} (OpenMP: {'yes' if info['openmp'] else 'no'})",
        f"  compiler:   {info['compiler']}",
    ]
    if info.get("cuda"):
        c = info["cuda"]
        lines.append(f"  CUDA:       {c.get('version')} (archs {', '.join(map(str, c.get('archs', [])))})")
    else:
        lines.append(f"  CUDA:       no ({info.get('cuda_unavailable', 'not built')})")
    lines.append(f"  backends:   {', '.join(deepkern.backends())}")
    return lines


def cmd_info(args):
    print("\n".join(info_lines()))
    return 0


def _median_ms(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return times[len(times) // 2]


def cmd_demo(args):
    """Forward and backward of every op on a real-sized batch, cpu vs the NumPy reference."""
    import numpy as np

    import deepkern
    from deepkern import functional as F

    if args.threads:
        deepkern.set_num_threads(args.threads)
    print("\n".join(info_lines()))
    rng = np.random.default_rng(0)
    N = args.batch
    x = rng.standard_normal((N, 32, 32, 32), dtype=np.float32)
    w = (rng.standard_normal((64, 32, 3, 3)) / np.sqrt(32 * 9)).astype(np.float32)
    b = rng.standard_normal(64).astype(np.float32)
    y = F.conv2d(x, w, b, padding=1)
    gy = rng.standard_normal(y.shape, dtype=np.float32)
    yp, idx = F.max_pool2d(y, 2)
    bn_w, bn_b = np.ones(64, np.float32), np.zeros(64, np.float32)
    rm, rv = np.zeros(64, np.float32), np.ones(64, np.float32)
    _, sm, si = F.batch_norm(y, bn_w, bn_b, rm, rv, True)
    _, mask = F.dropout(y, 0.5, seed=1)
    cases = [
        ("conv2d fwd  32->64 3x3 p1", lambda: F.conv2d(x, w, b, padding=1)),
        ("conv2d bwd  32->64 3x3 p1", lambda: F.conv2d_backward(gy, x, w, padding=1)),
        ("max_pool2d fwd 2x2", lambda: F.max_pool2d(y, 2)),
        ("max_pool2d bwd 2x2", lambda: F.max_pool2d_backward(yp, idx, y.shape)),
        ("avg_pool2d fwd 3x3 p1 s1", lambda: F.avg_pool2d(y, 3, 1, 1)),
        ("avg_pool2d bwd 3x3 p1 s1", lambda: F.avg_pool2d_backward(gy, y.shape, 3, 1, 1)),
        ("batch_norm fwd train", lambda: F.batch_norm(y, bn_w, bn_b, rm.copy(), rv.copy(), True)),
        ("batch_norm bwd train", lambda: F.batch_norm_backward(gy, y, bn_w, sm, si)),
        ("dropout fwd p=0.5", lambda: F.dropout(y, 0.5, seed=1)),
        ("dropout bwd p=0.5", lambda: F.dropout_backward(gy, mask, 0.5)),
        ("relu fwd", lambda: F.relu(y)),
        ("relu bwd", lambda: F.relu_backward(gy, y)),
    ]
    print(f"\nevery op, forward and backward, float32, batch {N} of 32x32 images "
          f"(median of {args.repeat} runs, {deepkern.get_num_threads()} threads)")
    print(f"{'op':28s} {'cpu ms':>9s} {'numpy ms':>10s} {'speed-up':>9s}")
    for name, fn in cases:
        fn()
        t_cpu = _median_ms(fn, args.repeat)
        with deepkern.use_backend("numpy"):
            t_ref = _median_ms(fn, max(1, min(args.repeat, 3)))
        print(f"{name:28s} {t_cpu:9.2f} {t_ref:10.2f} {t_ref / t_cpu:8.1f}x")
    return 0


# Commands defined in other modules register here: (name, "module:function_adding_parser").
# Each function receives the subparsers object and adds its parser with set_defaults(func=...).
# The module is imported when the parser is built, so keep those imports light.
EXTERNAL_COMMANDS = [
    ("bench", "deepkern.bench:add_parser"),
    ("train", "deepkern.train.commands:add_train_parser"),
    ("compare", "deepkern.train.commands:add_compare_parser"),
    ("finetune", "deepkern.train.commands:add_finetune_parser"),
    ("study", "deepkern.studies:add_parser"),
]


def _parser():
    import importlib

    p = argparse.ArgumentParser(prog="deepkern", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for _name, target in EXTERNAL_COMMANDS:
        mod, fn = target.split(":")
        getattr(importlib.import_module(mod), fn)(sub)

    sp = sub.add_parser("info", help="what this build and this machine can do")
    sp.set_defaults(func=cmd_info)

    sp = sub.add_parser("demo", help="forward and backward of every op, timed against NumPy")
    sp.add_argument("--batch", type=int, default=64)
    sp.add_argument("--repeat", type=int, default=5)
    sp.add_argument("--threads", type=int, default=0)
    sp.set_defaults(func=cmd_demo)
    return p


def main(argv=None):
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
