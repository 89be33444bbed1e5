"""Dev probe: every kernel of the default digits CNN at its real (tiny) shapes, deepkern vs PyTorch.

    python bench/dev/small_probe.py [--c1 16] [--c2 32] [--batch 64] [--threads 1,2]
                                    [--reps 9] [--calls 200] [--raw] [--json out.json]

The model of `deepkern train` (issue 6): Conv2d(1, C1, 3, p=1) - BN - ReLU - MaxPool(2) ->
Conv2d(C1, C2, 3, p=1) - BN - ReLU - MaxPool(2) -> Flatten -> Dropout(0.25) -> Linear(C2*4, 10)
on 8x8 inputs, batch 64. Each op is called the way a training step calls it: deepkern through
the cpu backend functions the nn layers call (`deepkern._cpu`, outputs allocated per call),
PyTorch through the aten ops its autograd calls (`aten.convolution_backward`, ...), so neither
side pays validation or autograd bookkeeping. `--raw` adds the bare `_C` call with
preallocated outputs (the kernel alone, without NumPy allocations).

Timing: per op, `calls` back-to-back calls timed as one block, µs per call; deepkern and
PyTorch blocks alternate `reps` times and the medians are printed (the machine is shared:
compare within a run). At these sizes a call is mostly fixed cost, so this is a per-call
overhead measurement as much as a kernel one. Not a test: a tool for bench/NOTES.md.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

import deepkern
from deepkern import _C, _cpu


def build_ops(N, C1, C2, torch):
    """[(name, deepkern fn, raw fn or None, torch fn or None)] in the order of one step."""
    rng = np.random.default_rng(0)
    f32 = np.float32
    r = lambda *s: rng.standard_normal(s).astype(f32)  # noqa: E731
    x = r(N, 1, 8, 8)
    w1, b1 = r(C1, 1, 3, 3) * 0.3, r(C1) * 0.1
    w2, b2 = r(C2, C1, 3, 3) * 0.1, r(C2) * 0.1
    g1, be1, g2, be2 = r(C1) + 1, r(C1), r(C2) + 1, r(C2)
    rm1, rv1, rm2, rv2 = np.zeros(C1, f32), np.ones(C1, f32), np.zeros(C2, f32), np.ones(C2, f32)
    s, p1, d = (1, 1), (1, 1), (1, 1)
    # forward values, computed once (every op gets realistic inputs)
    a1 = _cpu.conv2d(x, w1, b1, s, p1, d, 1)
    n1, m1, i1 = _cpu.batch_norm(a1, g1, be1, rm1.copy(), rv1.copy(), True, 0.1, 1e-5)
    r1 = _cpu.relu(n1)
    p1o, idx1 = _cpu.max_pool2d(r1, (2, 2), (2, 2), (0, 0), (1, 1), False)
    a2 = _cpu.conv2d(p1o, w2, b2, s, p1, d, 1)
    n2, m2, i2 = _cpu.batch_norm(a2, g2, be2, rm2.copy(), rv2.copy(), True, 0.1, 1e-5)
    r2 = _cpu.relu(n2)
    p2o, idx2 = _cpu.max_pool2d(r2, (2, 2), (2, 2), (0, 0), (1, 1), False)
    flat = p2o.reshape(N, -1)
    dro, mask = _cpu.dropout(flat, 0.25, True, 123)
    wl, bl = r(10, C2 * 4) * 0.1, r(10) * 0.1
    gl = r(N, 10)
    gdro = gl @ wl
    gflat = _cpu.dropout_backward(gdro, mask, 0.25)
    gp2 = gflat.reshape(p2o.shape)
    gr2 = _cpu.max_pool2d_backward(gp2, idx2, r2.shape)
    gn2 = _cpu.relu_backward(gr2, r2)
    ga2, _, _ = _cpu.batch_norm_backward(gn2, a2, g2, m2, i2, True)
    gp1, _, _ = _cpu.conv2d_backward(ga2, p1o, w2, s, p1, d, 1, True)
    gr1 = _cpu.max_pool2d_backward(gp1, idx1, r1.shape)
    gn1 = _cpu.relu_backward(gr1, r1)
    ga1, _, _ = _cpu.batch_norm_backward(gn1, a1, g1, m1, i1, True)

    def pre(shape, dtype=f32):
        return np.empty(shape, dtype)

    ops = []

    def add(name, dk, raw=None, th=None):
        ops.append((name, dk, raw, th))

    # preallocated outputs for the raw calls
    o_a1, o_a2 = pre(a1.shape), pre(a2.shape)
    o_n1, o_n2 = pre(a1.shape), pre(a2.shape)
    sm1, si1, sm2, si2 = pre(C1), pre(C1), pre(C2), pre(C2)
    o_p1, o_i1 = pre(p1o.shape), pre(p1o.shape, np.int64)
    o_p2, o_i2 = pre(p2o.shape), pre(p2o.shape, np.int64)
    o_dro, o_mask = pre(flat.shape), pre(flat.shape, np.uint8)
    o_gw2, o_gb2, o_gw1, o_gb1 = pre(w2.shape), pre(C2), pre(w1.shape), pre(C1)
    o_gx1 = pre(x.shape)
    o_gp1 = pre(p1o.shape)
    o_gbn = pre(C2)
    o_gbn1 = pre(C1)
    rm1c, rv1c, rm2c, rv2c = rm1.copy(), rv1.copy(), rm2.copy(), rv2.copy()

    T = None
    if torch is not None:
        A = torch.ops.aten
        T = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
        tx, tw1, tb1, tw2, tb2 = T(x), T(w1), T(b1), T(w2), T(b2)
        tg1, tbe1, tg2, tbe2 = T(g1), T(be1), T(g2), T(be2)
        trm1, trv1, trm2, trv2 = T(rm1.copy()), T(rv1.copy()), T(rm2.copy()), T(rv2.copy())
        ta1, ta2, tr1, tr2 = T(a1), T(a2), T(r1), T(r2)
        tp1o, tflat = T(p1o), T(flat)
        tgp2, tgr2, tgn2, tga2 = T(gp2), T(gr2), T(gn2), T(ga2)
        tgp1, tgr1, tgn1, tga1 = T(gp1), T(gr1), T(gn1), T(ga1)
        tgdro = T(gdro)
        tn1, tn2 = T(n1), T(n2)
        _, tm1, ti1 = A.native_batch_norm(ta1, tg1, tbe1, trm1, trv1, True, 0.1, 1e-5)
        _, tm2, ti2 = A.native_batch_norm(ta2, tg2, tbe2, trm2, trv2, True, 0.1, 1e-5)
        _, tidx1 = A.max_pool2d_with_indices(tr1, [2, 2], [2, 2])
        _, tidx2 = A.max_pool2d_with_indices(tr2, [2, 2], [2, 2])
        _, tmask = A.native_dropout(tflat, 0.25, True)
        twl, tbl, tgl = T(wl), T(bl), T(gl)

    def th(fn):
        return fn if torch is not None else None

    tt = (lambda *a: a)  # noqa: E731  (torch arguments, kept apart for readability)

    def block_forward(k, xin, w, b, a, g, be, rm, rv, n, r, o_a, o_n, sm, si, o_p, o_i,
                      txin, tw, tb, ta, tg, tbe, trm, trv, tn, tr):
        """conv, batch-norm, relu and pool forward of conv block k."""
        add(f"conv{k} fwd", lambda: _cpu.conv2d(xin, w, b, s, p1, d, 1),
            lambda: _C.conv2d_forward(o_a, xin, w, b, s, p1, d, 1),
            th(lambda: A.convolution(txin, tw, tb, [1, 1], [1, 1], [1, 1], False, [0, 0], 1)))
        add(f"bn{k} fwd", lambda: _cpu.batch_norm(a, g, be, rm, rv, True, 0.1, 1e-5),
            lambda: _C.batch_norm_forward(o_n, sm, si, a, g, be, rm, rv, True, 0.1, 1e-5),
            th(lambda: A.native_batch_norm(ta, tg, tbe, trm, trv, True, 0.1, 1e-5)))
        add(f"relu{k} fwd", lambda: _cpu.relu(n), lambda: _C.relu_forward(o_n, n), th(lambda: A.relu(tn)))
        add(f"pool{k} fwd", lambda: _cpu.max_pool2d(r, (2, 2), (2, 2), (0, 0), (1, 1), False),
            lambda: _C.max_pool2d_forward(o_p, o_i, r, (2, 2), (2, 2), (0, 0), (1, 1), False),
            th(lambda: A.max_pool2d_with_indices(tr, [2, 2], [2, 2])))

    block_forward(1, x, w1, b1, a1, g1, be1, rm1c, rv1c, n1, r1, o_a1, o_n1, sm1, si1, o_p1, o_i1,
                  *tt(tx, tw1, tb1, ta1, tg1, tbe1, trm1, trv1, tn1, tr1))
    block_forward(2, p1o, w2, b2, a2, g2, be2, rm2c, rv2c, n2, r2, o_a2, o_n2, sm2, si2, o_p2, o_i2,
                  *tt(tp1o, tw2, tb2, ta2, tg2, tbe2, trm2, trv2, tn2, tr2))
    add("dropout fwd", lambda: _cpu.dropout(flat, 0.25, True, 7),
        lambda: _C.dropout_forward(o_dro, o_mask, flat, 0.25, 7),
        th(lambda: A.native_dropout(tflat, 0.25, True)))
    add("linear fwd (numpy)", lambda: flat @ wl.T + bl, None, th(lambda: A.addmm(tbl, tflat, twl.t())))
    add("linear bwd (numpy)", lambda: (gl.T @ flat, gl.sum(0), gl @ wl), None,
        th(lambda: (A.mm(tgl.t(), tflat), A.sum(tgl, [0]), A.mm(tgl, twl))))
    add("dropout bwd", lambda: _cpu.dropout_backward(gdro, mask, 0.25),
        lambda: _C.dropout_backward(o_dro, gdro, mask, 0.25),
        th(lambda: A.native_dropout_backward(tgdro, tmask, 1 / 0.75)))
    def block_backward(k, gp, idx, r, gr, gn, a, g, m, i, tgp, tr, tidx, tgr, tgn, ta, tg, tm, ti, trm, trv,
                       o_n, o_a, o_gbn):
        """pool, relu and batch-norm backward of conv block k (in the order of the backward pass)."""
        add(f"pool{k} bwd", lambda: _cpu.max_pool2d_backward(gp, idx, r.shape),
            lambda: _C.max_pool2d_backward(o_n, gp, idx),
            th(lambda: A.max_pool2d_with_indices_backward(tgp, tr, [2, 2], [2, 2], [0, 0], [1, 1], False, tidx)))
        add(f"relu{k} bwd", lambda: _cpu.relu_backward(gr, r), lambda: _C.relu_backward(o_n, gr, r),
            th(lambda: A.threshold_backward(tgr, tr, 0)))
        add(f"bn{k} bwd", lambda: _cpu.batch_norm_backward(gn, a, g, m, i, True),
            lambda: _C.batch_norm_backward(o_a, o_gbn, o_gbn.copy(), gn, a, g, m, i, True),
            th(lambda: A.native_batch_norm_backward(tgn, ta, tg, trm, trv, tm, ti, True, 1e-5,
                                                    [True, True, True])))

    def conv_backward(k, gy, xin, w, C, o_gx, o_gw, o_gb, tgy, txin, tw):
        add(f"conv{k} bwd (data+weight)", lambda: _cpu.conv2d_backward(gy, xin, w, s, p1, d, 1, True),
            lambda: (_C.conv2d_backward_input(o_gx, gy, w, s, p1, d, 1),
                     _C.conv2d_backward_weight(o_gw, o_gb, gy, xin, s, p1, d, 1)),
            th(lambda: A.convolution_backward(tgy, txin, tw, [C], [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                              [True, True, True])))
        add(f"  conv{k} bwd data", lambda: _C.conv2d_backward_input(o_gx, gy, w, s, p1, d, 1), None,
            th(lambda: A.convolution_backward(tgy, txin, tw, [C], [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                              [True, False, False])))
        add(f"  conv{k} bwd weight", lambda: _C.conv2d_backward_weight(o_gw, o_gb, gy, xin, s, p1, d, 1), None,
            th(lambda: A.convolution_backward(tgy, txin, tw, [C], [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                              [False, True, True])))

    block_backward(2, gp2, idx2, r2, gr2, gn2, a2, g2, m2, i2,
                   *tt(tgp2, tr2, tidx2, tgr2, tgn2, ta2, tg2, tm2, ti2, trm2, trv2), o_n2, o_a2, o_gbn)
    conv_backward(2, ga2, p1o, w2, C2, o_gp1, o_gw2, o_gb2, *tt(tga2, tp1o, tw2))
    block_backward(1, gp1, idx1, r1, gr1, gn1, a1, g1, m1, i1,
                   *tt(tgp1, tr1, tidx1, tgr1, tgn1, ta1, tg1, tm1, ti1, trm1, trv1), o_n1, o_a1, o_gbn1)
    conv_backward(1, ga1, x, w1, C1, o_gx1, o_gw1, o_gb1, *tt(T(ga1), tx, tw1))
    return ops


def block_us(fn, calls):
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e6


def measure(ops, threads, reps, calls, torch, raw):
    deepkern.set_num_threads(threads)
    if torch is not None:
        torch.set_num_threads(threads)
    rows = []
    for name, dk, rw, th in ops:
        for f in (dk, rw, th):  # warm-up
            if f is not None:
                for _ in range(20):
                    f()
        res = {"dk": [], "raw": [], "torch": []}
        for _ in range(reps):
            res["dk"].append(block_us(dk, calls))
            if raw and rw is not None:
                res["raw"].append(block_us(rw, calls))
            if th is not None:
                res["torch"].append(block_us(th, calls))
        med = {k: float(np.median(v)) if v else None for k, v in res.items()}
        rows.append({"op": name, "threads": threads, **med})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--c1", type=int, default=16)
    ap.add_argument("--c2", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--raw", action="store_true", help="also time the bare _C calls (preallocated outputs)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    import torch  # the probe compares with PyTorch: pip install torch==2.13.0
    ops = build_ops(args.batch, args.c1, args.c2, torch)
    info = deepkern.build_info()
    print(f"deepkern {deepkern.__version__} ({info.get('simd', info.get('isa', '?'))}), {info['cpu']}, "
          f"torch {torch.__version__ if torch else '-'}, batch {args.batch}, C1={args.c1} C2={args.c2}, "
          f"load {os.getloadavg()[0]:.1f}")
    allrows = []
    for t in (int(v) for v in args.threads.split(",")):
        rows = measure(ops, t, args.reps, args.calls, torch, args.raw)
        allrows += rows
        print(f"\n{t} thread(s), median us per call")
        hdr = f"{'op':26s} {'deepkern':>9s}" + (f" {'raw _C':>8s}" if args.raw else "") + f" {'torch':>8s} {'torch/dk':>8s}"
        print(hdr)
        tot_dk = tot_t = 0.0
        for r in rows:
            sub = r["op"].startswith("  ")
            if not sub:
                tot_dk += r["dk"]
                tot_t += r["torch"] or 0.0
            line = f"{r['op']:26s} {r['dk']:9.1f}"
            if args.raw:
                line += f" {r['raw']:8.1f}" if r["raw"] is not None else f" {'':8s}"
            if r["torch"] is not None:
                line += f" {r['torch']:8.1f} {r['torch'] / r['dk']:8.2f}"
            print(line)
        print(f"{'sum (one step, no optimizer)':26s} {tot_dk:9.1f}" + (f" {'':8s}" if args.raw else "")
              + (f" {tot_t:8.1f} {tot_t / tot_dk:8.2f}" if torch else ""))
        print(f"load average now {os.getloadavg()[0]:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": info["cpu"], "c1": args.c1, "c2": args.c2, "batch": args.batch, "rows": allrows}, f, indent=1)


if __name__ == "__main__":
    main()
