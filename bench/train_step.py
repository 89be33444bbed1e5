"""Where one training step of `deepkern train`'s default model spends its time, per op.

    python bench/train_step.py [--threads 1] [--steps 300] [--repeat 7] [--torch]

One step = forward of the default digits CNN (batch 64 of 1x8x8), the label-smoothed
cross-entropy, backward, and an Adam step: exactly what one of the 28 steps of
`deepkern bench`'s train/epoch case does. For every layer it prints the time of the layer's
forward and backward (what the training loop pays) next to the time of the bare kernel call
with the same arguments (``deepkern._cpu``, i.e. the C++ kernel plus the output allocation),
so the difference is the Python layer's overhead. With one thread the clock is the thread's
CPU time (immune to other processes on a shared machine); with more it is the wall clock.
Medians of --repeat runs of --steps steps. ``--torch`` adds PyTorch's whole step (same
model, loss, fused Adam) for the ratio.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import deepkern
from deepkern import _cpu, models, nn, optim


def _median_us(fn, steps, repeat, clock):
    runs = []
    for _ in range(repeat):
        t0 = clock()
        for _ in range(steps):
            fn()
        runs.append((clock() - t0) / steps * 1e6)
    return float(np.median(runs))


def layer_table(model, crit, opt, x, y, steps, repeat, clock):
    """(name, fwd us, bwd us) per layer, then the loss and the optimizer, of whole steps."""
    n = len(model)
    fwd, bwd = np.zeros((repeat, n)), np.zeros((repeat, n))
    extra = {k: np.zeros(repeat) for k in ("loss fwd", "loss bwd", "zero_grad", "Adam step")}
    for r in range(repeat):
        for _ in range(steps):
            h = x
            for i, m in enumerate(model):
                t0 = clock()
                h = m(h)
                fwd[r, i] += clock() - t0
            t0 = clock()
            crit(h, y)
            t1 = clock()
            g = crit.backward()
            t2 = clock()
            model.zero_grad()
            t3 = clock()
            extra["loss fwd"][r] += t1 - t0
            extra["loss bwd"][r] += t2 - t1
            extra["zero_grad"][r] += t3 - t2
            for i in reversed(range(n)):
                t0 = clock()
                g = model[i].backward(g)
                bwd[r, i] += clock() - t0
            t0 = clock()
            opt.step()
            extra["Adam step"][r] += clock() - t0
    scale = 1e6 / steps
    rows = [(f"{i} {type(m).__name__}", float(np.median(fwd[:, i])) * scale, float(np.median(bwd[:, i])) * scale)
            for i, m in enumerate(model)]
    return rows, {k: float(np.median(v)) * scale for k, v in extra.items()}


def kernel_table(model, x, steps, repeat, clock):
    """The bare kernel calls of each layer with the shapes of this model (no Python layer)."""
    out = {}
    h = x
    for i, m in enumerate(model):
        y = m(h)
        g = np.ones_like(y)
        if isinstance(m, nn.Conv2d):
            args = (m.stride, m._conv_args()[1], m.dilation, m.groups)
            f = (lambda h=h, m=m, args=args: _cpu.conv2d(h, m.weight.data, None, *args))
            b = (lambda g=g, h=h, m=m, args=args: _cpu.conv2d_backward(g, h, m.weight.data, *args, False,
                                                                        m.needs_input_grad))
        elif isinstance(m, nn.BatchNorm2d):
            _, mean, inv = _cpu.batch_norm(h, m.weight.data, m.bias.data, m.running_mean.copy(),
                                           m.running_var.copy(), True, 0.1, 1e-5)
            rm, rv = m.running_mean.copy(), m.running_var.copy()
            f = (lambda h=h, m=m, rm=rm, rv=rv: _cpu.batch_norm(h, m.weight.data, m.bias.data, rm, rv, True, 0.1,
                                                                1e-5))
            b = (lambda g=g, h=h, m=m, mean=mean, inv=inv: _cpu.batch_norm_backward(g, h, m.weight.data, mean, inv,
                                                                                    True))
        elif isinstance(m, nn.ReLU):
            f = (lambda h=h: _cpu.relu(h))
            b = (lambda g=g, y=y: _cpu.relu_backward(g, y))
        elif isinstance(m, nn.MaxPool2d):
            _, idx = _cpu.max_pool2d(h, (2, 2), (2, 2), (0, 0), (1, 1), False)
            f = (lambda h=h: _cpu.max_pool2d(h, (2, 2), (2, 2), (0, 0), (1, 1), False))
            b = (lambda g=g, idx=idx, s=h.shape: _cpu.max_pool2d_backward(g, idx, s))
        elif isinstance(m, nn.Dropout):
            _, mask = _cpu.dropout(h, m.p, True, 1)
            f = (lambda h=h, p=m.p: _cpu.dropout(h, p, True, 1))
            b = (lambda g=g, mask=mask, p=m.p: _cpu.dropout_backward(g, mask, p))
        elif isinstance(m, nn.Linear):
            w = m.weight.data
            f = (lambda h=h, w=w, bias=m.bias.data: np.matmul(h, w.T) + bias)
            b = (lambda g=g, h=h, w=w: (g.T @ h, g.sum(0), g @ w))
        else:
            h = y
            continue
        out[i] = (_median_us(f, steps, repeat, clock), _median_us(b, steps, repeat, clock))
        h = y
    return out


def torch_step_us(model, x, y, steps, repeat, clock):
    import torch

    twin = models.torch_twin(model, torch)
    crit = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    opt = torch.optim.Adam(twin.parameters(), lr=2e-3, fused=True)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def step():
        opt.zero_grad()
        crit(twin(tx), ty).backward()
        opt.step()
    for _ in range(20):
        step()
    return _median_us(step, steps, repeat, clock), torch.__version__


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--torch", action="store_true")
    args = ap.parse_args(argv)

    deepkern.set_num_threads(args.threads)
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    deepkern.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 64)
    model = models.digits_cnn()
    crit = nn.CrossEntropyLoss(label_smoothing=0.1)
    opt = optim.Adam(model.parameters(), lr=2e-3)

    def step():
        crit(model(x), y)
        model.zero_grad()
        model.backward(crit.backward())
        opt.step()
    for _ in range(50):
        step()
    total = _median_us(step, args.steps, args.repeat, clock)
    rows, extra = layer_table(model, crit, opt, x, y, args.steps, args.repeat, clock)
    kern = kernel_table(model, x, args.steps, args.repeat, clock)
    what = "thread CPU time" if args.threads == 1 else "wall clock"
    print(f"deepkern {deepkern.__version__}, {deepkern.build_info()['cpu']}, {args.threads} thread(s), {what}; "
          f"default CNN {models.DIGITS_CHANNELS}, batch 64 of 1x8x8; median of {args.repeat} x {args.steps} steps")
    print(f"\n| layer | fwd us | fwd kernel us | bwd us | bwd kernel us |")
    print("|---|---:|---:|---:|---:|")
    for i, (name, f, b) in enumerate(rows):
        kf, kb = kern.get(i, (None, None))
        ks = (lambda v: "" if v is None else f"{v:.1f}")
        print(f"| {name} | {f:.1f} | {ks(kf)} | {b:.1f} | {ks(kb)} |")
    for k, v in extra.items():
        print(f"| {k} | {v:.1f} | | | |")
    summed = sum(f + b for _, f, b in rows) + sum(extra.values())
    kernels = sum(f + b for f, b in kern.values())
    print(f"\nwhole step {total:.1f} us (sum of the parts {summed:.1f}); bare kernels of the layers {kernels:.1f} us")
    print(f"epoch of 28 steps: {28 * total / 1e3:.2f} ms")
    if args.torch:
        import torch
        torch.set_num_threads(args.threads)
        t, version = torch_step_us(model, x, y, args.steps, args.repeat, clock)
        print(f"PyTorch {version} step (fused Adam): {t:.1f} us; PyTorch / deepkern: {t / total:.2f}x")


if __name__ == "__main__":
    main()
