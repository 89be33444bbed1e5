"""The benchmark suite: every case, its napkin math, and how each backend runs it.

A case is one op in one direction on one shape. Beside each case is the work it counts:

- **FLOPs** for convolutions: ``2 * N * OC * OH * OW * (C/G) * KH * KW`` per direction
  (forward, backward-data and backward-weight each do exactly this many multiply-adds x 2).
- **Minimal bytes** for memory-bound ops: what the op must read and write at least once
  (float32 = 4 bytes, int64 indices = 8, uint8/bool masks = 1), never what a particular
  implementation happens to move. n below is the number of elements of x.
- **Footprint**: the distinct bytes the op touches (its working set), used to pick the triad
  bandwidth "on a working set of the same size" (see calibrate.py). For ops that read and
  write different arrays once, footprint = minimal bytes; for in-place updates (optimizers)
  the footprint is smaller than the bytes moved.

The default shapes are fixed (later work and outside checks compare on them): conv layers
c1..c7 at N=64; pools, batch norm, dropout and relu on (64, 64, 32, 32); optimizer steps over
10,000,000 float32 parameters in 20 tensors; one training epoch of `deepkern train`'s model.
``--quick`` keeps every case but shrinks the batch to 2 and the parameters to 200,000.

Each case gives:
  setup()            host inputs (NumPy), shared by the cases of one group (one layer)
  reference(inp)     the expected outputs (the NumPy reference), computed once, not timed
  deepkern(b, inp)   a Prepared call on backend b (numpy / cpu / cuda), or raise Unavailable
  torch(b, inp)      a list of (implementation name, Prepared) for PyTorch on the same inputs
  check(...)         how outputs are compared with the reference (llm.c's validate-then-time)
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .backends import Unavailable

F32 = 4  # bytes per float32
I64 = 8  # bytes per int64 index
U8 = 1   # bytes per uint8 / bool mask element


class ValidationError(AssertionError):
    """A backend's result differs from the reference: its timing would be meaningless."""


@dataclass
class Prepared:
    """A benchmark call. ``fn()`` is what is timed; ``first()`` (default: ``fn``) is the first,
    validated call and returns the outputs compared with the reference."""

    fn: Callable
    first: Callable | None = None

    def run_first(self):
        return (self.first or self.fn)()


@dataclass
class Case:
    id: str                     # "conv2d/c3/fwd": what --ops matches
    op: str                     # "conv2d"
    direction: str              # fwd, bwd_data, bwd_weight, bwd, train_fwd, eval_fwd, step, epoch
    shape: str                  # human-readable shape and arguments
    group: str                  # cases of one group share setup() and reference outputs
    setup: Callable[[], dict]
    deepkern: Callable          # (backend, inputs) -> Prepared; may raise Unavailable
    torch: Callable | None      # (torch backend, inputs) -> [(impl, Prepared)]; may raise Unavailable
    reference: Callable | None  # (inputs) -> outputs to compare with, or None
    flops: float | None = None
    bytes: float | None = None
    footprint: float | None = None
    work_note: str = ""         # how flops / bytes were counted, shown in --json and the README
    rtol: float = 1e-3          # |got - ref| <= rtol * max|ref| (exact for integer outputs)
    check: Callable | None = None        # custom (got, ref, inputs, backend_name) check
    torch_check: Callable | None = None  # custom check for PyTorch's outputs
    numpy_na: str | None = None          # why the numpy backend has no row for this case
    numpy_is_reference: bool = True      # the numpy backend runs deepkern.reference itself

    @property
    def bound(self) -> str | None:
        """What limits this case: 'flops' (conv: roofline of FMA peak and bandwidth),
        'bytes' (memory-bound ops: triad bandwidth), or None (no machine limit: epoch)."""
        if self.flops:
            return "flops"
        if self.bytes:
            return "bytes"
        return None


# ---------------------------------------------------------------------------- checks

def _as_list(out):
    if isinstance(out, (list, tuple)):
        return list(out)
    return [out]


def compare(got, want, rtol, what):
    """Positional comparison of outputs; None entries of ``want`` are skipped.

    Floats: max |got - want| <= rtol * max(max |want|, 1e-30) (a scale-aware tolerance, as
    llm.c's validate_result uses, suited to float32 sums of up to a few thousand terms);
    integer and boolean outputs must be identical.
    """
    got, want = _as_list(got), _as_list(want)
    if len(got) < len(want):
        raise ValidationError(f"{what}: {len(got)} outputs, expected {len(want)}")
    for k, (g, w) in enumerate(zip(got, want)):
        if w is None:
            continue
        if g is None:
            raise ValidationError(f"{what}: output {k} is None")
        g, w = np.asarray(g), np.asarray(w)
        if g.shape != w.shape:
            raise ValidationError(f"{what}: output {k} has shape {g.shape}, expected {w.shape}")
        if w.dtype.kind in "biu":
            bad = int(np.count_nonzero(g.astype(np.int64) != w.astype(np.int64)))
            if bad:
                raise ValidationError(f"{what}: output {k}: {bad} of {w.size} integer elements differ")
            continue
        if w.size == 0:
            continue
        g64, w64 = g.astype(np.float64), w.astype(np.float64)
        if not np.isfinite(g64).all():
            raise ValidationError(f"{what}: output {k} has non-finite values")
        err = float(np.max(np.abs(g64 - w64)))
        scale = max(float(np.max(np.abs(w64))), 1e-30)
        if err > rtol * scale:
            raise ValidationError(f"{what}: output {k}: max |error| {err:.3g} > {rtol:g} x max |ref| {scale:.3g}")


# ---------------------------------------------------------------------------- helpers

def _F():
    from .. import functional

    return functional


def _ref():
    from .. import reference

    return reference


def _rng(tag: str) -> np.random.Generator:
    """Inputs depend only on the case group, never on the order cases run in."""
    import zlib

    return np.random.default_rng(zlib.crc32(tag.encode()))


def _randn(rng, shape, scale=1.0):
    return (rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)).astype(np.float32)


def _fmt_shape(shape) -> str:
    return "x".join(str(int(s)) for s in shape)


def _deepkern_call(f):
    """Prepared for a deepkern op: the same functional call on every deepkern backend."""
    def build(b, inp):
        d = b.to_device(inp)
        return Prepared(lambda: f(d))
    return build


def _torch_call(f):
    def build(b, inp):
        d = b.to_device(inp)
        t = b.torch
        return [("aten", Prepared(lambda: f(t, d)))]
    return build


# ---------------------------------------------------------------------------- conv2d

# name, C, OC, H(=W), kernel, stride, padding, groups — keep these: later work compares on them.
CONV_LAYERS = (
    ("c1", 3, 32, 32, 3, 1, 1, 1),
    ("c2", 32, 64, 32, 3, 1, 1, 1),
    ("c3", 64, 128, 16, 3, 1, 1, 1),
    ("c4", 128, 256, 8, 3, 1, 1, 1),
    ("c5", 64, 64, 16, 1, 1, 0, 1),
    ("c6", 64, 64, 32, 3, 2, 1, 1),
    ("c7", 64, 64, 32, 3, 1, 1, 64),
)


def conv_flops(N, C, OC, OH, OW, KH, KW, G) -> float:
    """2 * N * OC * OH * OW * (C/G) * KH * KW: one multiply and one add per tap, per direction."""
    return 2.0 * N * OC * OH * OW * (C // G) * KH * KW


def conv_bytes(direction, N, C, H, W, OC, OH, OW, KH, KW, G) -> float:
    """Minimal bytes of one conv direction (float32): each tensor read or written once.

    fwd: read x, w, write y; bwd_data: read dy, w, write dx; bwd_weight: read dy, x, write dw;
    bwd (both): read dy, x, w, write dx, dw.
    """
    x, w, y = N * C * H * W, OC * (C // G) * KH * KW, N * OC * OH * OW
    elems = {"fwd": x + w + y, "bwd_data": y + w + x, "bwd_weight": y + x + w,
             "bwd": y + x + w + x + w}[direction]
    return float(F32 * elems)


def _conv_backward_split(b, which):
    """The one-direction conv backward of deepkern backend ``b``: run(dy, x, w, stride,
    padding, dilation, groups) -> grad_x or grad_weight (pairs for stride/padding/dilation).

    The public API has one ``conv2d_backward`` returning both gradients; the cpu and cuda
    backends compute them with two kernels each, which are timed here separately through the
    same calls ``deepkern._cpu`` / ``deepkern._cuda_backend`` make (output allocated inside,
    as the public call does).
    """
    if b.name == "cpu":
        from .. import _C

        def run(dy, x, w, s, p, d, g):
            if which == "bwd_data":
                gx = np.empty_like(x)
                _C.conv2d_backward_input(gx, dy, w, s, p, d, g)
                return gx
            gw = np.empty_like(w)
            _C.conv2d_backward_weight(gw, None, dy, x, s, p, d, g)
            return gw
        return run
    if b.name == "cuda":
        try:
            from .. import _arrays as A
            from .. import _cuda
        except ImportError as e:
            raise Unavailable(f"no CUDA module ({e})") from None

        def run(dy, x, w, s, p, d, g):
            c, (dy, x, w) = A.prepare("conv2d_backward", grad_out=dy, x=x, weight=w)
            if which == "bwd_data":
                gx = c.empty(tuple(x.shape))
                _cuda.conv2d_backward_input(gx, dy, w, s, p, d, g, c.stream)
                return gx
            gw = c.empty(tuple(w.shape))
            _cuda.conv2d_backward_weight(gw, None, dy, x, s, p, d, g, c.stream)
            return gw
        return run
    raise Unavailable(f"backend {b.name} has no separate {which} conv kernel")


def conv_cases(N: int) -> list[Case]:
    cases = []
    for name, C, OC, H, k, s, p, G in CONV_LAYERS:
        W = H
        OH = OW = (H + 2 * p - k) // s + 1
        group = f"conv2d/{name}"
        desc = f"{name} {C}->{OC} {H}x{W} {k}x{k}" + (f" s{s}" if s != 1 else "") + \
            (f" p{p}" if p else "") + (f" g{G}" if G != 1 else "") + f" N={N}"

        def setup(C=C, OC=OC, H=H, W=W, k=k, G=G, OH=OH, OW=OW, group=group):
            rng = _rng(group)
            fan_in = (C // G) * k * k
            return {"x": _randn(rng, (N, C, H, W)),
                    "w": _randn(rng, (OC, C // G, k, k), 1.0 / np.sqrt(fan_in)),
                    "dy": _randn(rng, (N, OC, OH, OW))}

        sp = dict(stride=s, padding=p, dilation=1, groups=G)
        flops = conv_flops(N, C, OC, OH, OW, k, k, G)
        dims = (N, C, H, W, OC, OH, OW, k, k, G)

        # forward
        cases.append(Case(
            id=f"{group}/fwd", op="conv2d", direction="fwd", shape=desc, group=group, setup=setup,
            flops=flops, bytes=conv_bytes("fwd", *dims), footprint=conv_bytes("fwd", *dims),
            work_note="2*N*OC*OH*OW*(C/G)*KH*KW flops; bytes: read x, w, write y",
            deepkern=_deepkern_call(lambda d, sp=sp: _F().conv2d(d["x"], d["w"], None, **sp)),
            torch=_torch_call(lambda t, d, s=s, p=p, G=G: t.nn.functional.conv2d(
                d["x"], d["w"], None, s, p, 1, G)),
            reference=lambda inp, sp=sp: _ref().conv2d(inp["x"], inp["w"], None, **sp)))

        # the public backward (both gradients, as a training step calls it)
        def ref_bwd(inp, sp=sp):  # computed once per layer, shared by three cases
            if "_ref_bwd" not in inp:
                inp["_ref_bwd"] = _ref().conv2d_backward(inp["dy"], inp["x"], inp["w"], bias=False, **sp)
            return inp["_ref_bwd"]

        def torch_bwd(mask, s=s, p=p, G=G):
            def f(t, d):
                out = t.ops.aten.convolution_backward(
                    d["dy"], d["x"], d["w"], None, [s, s], [p, p], [1, 1], False, [0, 0], G, mask)
                return tuple(out)
            return f

        cases.append(Case(
            id=f"{group}/bwd", op="conv2d", direction="bwd", shape=desc, group=group, setup=setup,
            flops=2 * flops, bytes=conv_bytes("bwd", *dims), footprint=conv_bytes("bwd", *dims),
            work_note="2 x (2*N*OC*OH*OW*(C/G)*KH*KW) flops (data + weight); bytes: read dy, x, w, write dx, dw",
            deepkern=_deepkern_call(lambda d, sp=sp: _F().conv2d_backward(d["dy"], d["x"], d["w"], bias=False, **sp)),
            torch=_torch_call(torch_bwd([True, True, False])),
            reference=ref_bwd))

        # backward, one direction at a time (the reference computes both in one call: its
        # time is in the bwd row above)
        for which, idx, mask, note in (
                ("bwd_data", 0, [True, False, False], "read dy, w, write dx"),
                ("bwd_weight", 1, [False, True, False], "read dy, x, write dw")):
            def dk_split(b, inp, which=which, sp=sp):
                run = _conv_backward_split(b, which)
                d = b.to_device(inp)
                st, pd = (sp["stride"],) * 2, (sp["padding"],) * 2
                return Prepared(lambda: run(d["dy"], d["x"], d["w"], st, pd, (1, 1), sp["groups"]))

            def torch_split(t, d, f=torch_bwd(mask), idx=idx):
                return f(t, d)[idx]

            cases.append(Case(
                id=f"{group}/{which}", op="conv2d", direction=which, shape=desc, group=group,
                setup=setup, flops=flops, bytes=conv_bytes(which, *dims), footprint=conv_bytes(which, *dims),
                work_note=f"2*N*OC*OH*OW*(C/G)*KH*KW flops; bytes: {note}",
                deepkern=dk_split, torch=_torch_call(torch_split),
                reference=lambda inp, idx=idx, ref_bwd=ref_bwd: ref_bwd(inp)[idx],
                numpy_na=f"the reference computes both gradients in one call: see {group}/bwd"))
    return cases


# ---------------------------------------------------------------------------- memory-bound ops

def layer_cases(N: int) -> list[Case]:
    """max/avg pool, batch norm, dropout, relu on x of shape (N, 64, 32, 32)."""
    shape = (N, 64, 32, 32)
    n = int(np.prod(shape))
    n4 = n // 4  # max pool 2x2 s2 outputs
    C = shape[1]
    sh = _fmt_shape(shape)
    group = "layers"

    def setup():
        rng = _rng(group)
        x = _randn(rng, shape)
        inp = {"x": x, "dy": _randn(rng, shape), "dy_pool": _randn(rng, (N, C, 16, 16)),
               "bn_w": (1 + 0.1 * rng.standard_normal(C)).astype(np.float32),
               "bn_b": (0.1 * rng.standard_normal(C)).astype(np.float32),
               "rm": (0.1 * rng.standard_normal(C)).astype(np.float32),
               "rv": (1 + 0.1 * rng.random(C)).astype(np.float32)}
        # training updates running stats in place: its own copies, so eval sees fixed ones
        inp["rm_train"], inp["rv_train"] = inp["rm"].copy(), inp["rv"].copy()
        ref = _ref()
        _, inp["pool_idx"] = ref.max_pool2d(x, 2, 2)
        bn_y, inp["bn_mean"], inp["bn_invstd"] = ref.batch_norm(
            x, inp["bn_w"], inp["bn_b"], None, None, True)
        inp["bnr_y"] = ref.relu(bn_y)  # batch_norm_relu's output, for its backward
        _, inp["mask"] = ref.dropout(x, 0.5, True, seed=1234)
        inp["relu_y"] = ref.relu(x)
        return inp

    cases = []

    def add(op, direction, nbytes, note, dk, th, ref, **kw):
        cases.append(Case(
            id=f"{op}/{direction}", op=op, direction=direction, shape=kw.pop("desc", sh),
            group=group, setup=setup, bytes=float(nbytes), footprint=float(kw.pop("footprint", nbytes)),
            work_note=note, deepkern=_deepkern_call(dk), torch=_torch_call(th) if th else None,
            reference=ref, **kw))

    # max pool 2x2 stride 2: n inputs, n/4 outputs with an int64 index each.
    add("max_pool2d", "fwd", F32 * n + F32 * n4 + I64 * n4, "read x 4n, write y 4(n/4) + indices 8(n/4)",
        lambda d: _F().max_pool2d(d["x"], 2, 2),
        lambda t, d: tuple(t.nn.functional.max_pool2d(d["x"], 2, 2, return_indices=True)),
        lambda inp: _ref().max_pool2d(inp["x"], 2, 2), desc=f"{sh} 2x2 s2")
    add("max_pool2d", "bwd", F32 * n4 + I64 * n4 + F32 * n, "read dy 4(n/4) + indices 8(n/4), write dx 4n",
        lambda d: _F().max_pool2d_backward(d["dy_pool"], d["pool_idx"], shape),
        lambda t, d: t.ops.aten.max_pool2d_with_indices_backward(
            d["dy_pool"], d["x"], [2, 2], [2, 2], [0, 0], [1, 1], False, d["pool_idx"]),
        lambda inp: _ref().max_pool2d_backward(inp["dy_pool"], inp["pool_idx"], shape), desc=f"{sh} 2x2 s2")
    # avg pool 3x3 stride 1 pad 1: same-size output.
    add("avg_pool2d", "fwd", 2 * F32 * n, "read x 4n, write y 4n",
        lambda d: _F().avg_pool2d(d["x"], 3, 1, 1),
        lambda t, d: t.nn.functional.avg_pool2d(d["x"], 3, 1, 1),
        lambda inp: _ref().avg_pool2d(inp["x"], 3, 1, 1), desc=f"{sh} 3x3 s1 p1")
    add("avg_pool2d", "bwd", 2 * F32 * n, "read dy 4n, write dx 4n",
        lambda d: _F().avg_pool2d_backward(d["dy"], shape, 3, 1, 1),
        lambda t, d: t.ops.aten.avg_pool2d_backward(d["dy"], d["x"], [3, 3], [1, 1], [1, 1], False, True, None),
        lambda inp: _ref().avg_pool2d_backward(inp["dy"], shape, 3, 1, 1), desc=f"{sh} 3x3 s1 p1")

    # batch norm: per-channel vectors are negligible. Training forward must see x twice
    # (statistics, then normalize) unless x stays in cache: the minimum counts it once.
    def bn_train(d):
        return _F().batch_norm(d["x"], d["bn_w"], d["bn_b"], d["rm_train"], d["rv_train"], True)

    add("batch_norm", "train_fwd", 2 * F32 * n, "read x 4n (once: the minimum), write y 4n",
        bn_train,
        lambda t, d: tuple(t.native_batch_norm(d["x"], d["bn_w"], d["bn_b"], d["rm_train"], d["rv_train"], True, 0.1, 1e-5)),
        lambda inp: _ref().batch_norm(inp["x"], inp["bn_w"], inp["bn_b"], None, None, True))
    add("batch_norm", "train_bwd", 3 * F32 * n, "read dy 4n + x 4n, write dx 4n",
        lambda d: _F().batch_norm_backward(d["dy"], d["x"], d["bn_w"], d["bn_mean"], d["bn_invstd"], True),
        lambda t, d: tuple(t.ops.aten.native_batch_norm_backward(
            d["dy"], d["x"], d["bn_w"], d["rm"], d["rv"], d["bn_mean"], d["bn_invstd"], True, 1e-5,
            [True, True, True])),
        lambda inp: _ref().batch_norm_backward(inp["dy"], inp["x"], inp["bn_w"], inp["bn_mean"],
                                               inp["bn_invstd"], True), rtol=2e-3)
    add("batch_norm", "eval_fwd", 2 * F32 * n, "read x 4n, write y 4n",
        lambda d: _F().batch_norm(d["x"], d["bn_w"], d["bn_b"], d["rm"], d["rv"], False)[0],
        lambda t, d: t.nn.functional.batch_norm(d["x"], d["rm"], d["rv"], d["bn_w"], d["bn_b"], False),
        lambda inp: _ref().batch_norm(inp["x"], inp["bn_w"], inp["bn_b"], inp["rm"].copy(),
                                      inp["rv"].copy(), False)[0])

    # batch norm + ReLU (deepkern's fused op; PyTorch runs the two ops): the same minimal bytes
    # as batch norm's forward, and its backward also reads y (for the ReLU's mask).
    add("batch_norm_relu", "train_fwd", 2 * F32 * n, "read x 4n (once: the minimum), write y 4n",
        lambda d: _F().batch_norm_relu(d["x"], d["bn_w"], d["bn_b"], d["rm_train"], d["rv_train"], True),
        lambda t, d: (lambda r: (t.relu(r[0]), r[1], r[2]))(
            t.native_batch_norm(d["x"], d["bn_w"], d["bn_b"], d["rm_train"], d["rv_train"], True, 0.1, 1e-5)),
        lambda inp: _ref().batch_norm_relu(inp["x"], inp["bn_w"], inp["bn_b"], None, None, True))
    add("batch_norm_relu", "train_bwd", 4 * F32 * n, "read dy 4n + y 4n + x 4n, write dx 4n",
        lambda d: _F().batch_norm_relu_backward(d["dy"], d["bnr_y"], d["x"], d["bn_w"], d["bn_mean"],
                                                d["bn_invstd"], True),
        lambda t, d: tuple(t.ops.aten.native_batch_norm_backward(
            t.ops.aten.threshold_backward(d["dy"], d["bnr_y"], 0.0), d["x"], d["bn_w"], d["rm"], d["rv"],
            d["bn_mean"], d["bn_invstd"], True, 1e-5, [True, True, True])),
        lambda inp: _ref().batch_norm_relu_backward(inp["dy"], inp["bnr_y"], inp["x"], inp["bn_w"],
                                                    inp["bn_mean"], inp["bn_invstd"], True), rtol=2e-3)

    # dropout p=0.5: the mask is 1 byte per element (uint8 in deepkern, bool in PyTorch).
    def check_torch_dropout(got, ref, inp, backend):
        y, mask = (np.asarray(v) for v in got)
        want = np.where(mask.astype(bool), inp["x"] * np.float32(2.0), np.float32(0.0))
        compare([y], [want], 1e-6, f"dropout/fwd on {backend} (against its own mask)")
        frac = float(mask.mean())
        if not 0.45 < frac < 0.55 and mask.size > 10000:
            raise ValidationError(f"dropout/fwd on {backend}: kept fraction {frac:.3f}, expected about 0.5")

    add("dropout", "fwd", F32 * n + F32 * n + U8 * n, "read x 4n, write y 4n + mask 1n",
        lambda d: _F().dropout(d["x"], 0.5, True, seed=1234),
        lambda t, d: tuple(t.native_dropout(d["x"], 0.5, True)),
        lambda inp: _ref().dropout(inp["x"], 0.5, True, seed=1234),
        desc=f"{sh} p=0.5", torch_check=check_torch_dropout)

    def torch_dropout_bwd(t, d):
        if "mask_bool" not in d:
            d["mask_bool"] = d["mask"].to(t.bool)  # PyTorch keeps a bool mask (1 byte too)
        return t.ops.aten.native_dropout_backward(d["dy"], d["mask_bool"], 2.0)

    add("dropout", "bwd", F32 * n + U8 * n + F32 * n, "read dy 4n + mask 1n, write dx 4n",
        lambda d: _F().dropout_backward(d["dy"], d["mask"], 0.5), torch_dropout_bwd,
        lambda inp: _ref().dropout_backward(inp["dy"], inp["mask"], 0.5), desc=f"{sh} p=0.5")

    add("relu", "fwd", 2 * F32 * n, "read x 4n, write y 4n",
        lambda d: _F().relu(d["x"]), lambda t, d: t.relu(d["x"]),
        lambda inp: _ref().relu(inp["x"]))
    add("relu", "bwd", 3 * F32 * n, "read dy 4n + y 4n, write dx 4n",
        lambda d: _F().relu_backward(d["dy"], d["relu_y"]),
        lambda t, d: t.ops.aten.threshold_backward(d["dy"], d["relu_y"], 0),
        lambda inp: _ref().relu_backward(inp["dy"], inp["relu_y"]))
    return cases


# ---------------------------------------------------------------------------- optimizers

@dataclass(frozen=True)
class OptimSpec:
    """One optimizer of API.md, its PyTorch equivalent and its memory traffic.

    arrays_read / arrays_written count float32 arrays of the parameters' size touched by one
    fused step (the minimum: each read once, each write once); state = arrays besides p and g.
    """

    name: str            # deepkern.optim class
    torch_name: str      # torch.optim class
    kwargs: dict         # deepkern constructor arguments (explicit, = PyTorch's defaults)
    torch_kwargs: dict
    arrays_read: int
    arrays_written: int
    note: str


OPTIMIZERS = (
    OptimSpec("SGD", "SGD", {"lr": 1e-3}, {"lr": 1e-3}, 2, 1, "read p, g; write p"),
    OptimSpec("Momentum", "SGD", {"lr": 1e-3, "momentum": 0.9}, {"lr": 1e-3, "momentum": 0.9}, 3, 2,
              "read p, g, buf; write p, buf"),
    OptimSpec("NAG", "SGD", {"lr": 1e-3, "momentum": 0.9}, {"lr": 1e-3, "momentum": 0.9, "nesterov": True},
              3, 2, "read p, g, buf; write p, buf"),
    OptimSpec("Adagrad", "Adagrad", {"lr": 1e-2}, {"lr": 1e-2}, 3, 2, "read p, g, sum; write p, sum"),
    OptimSpec("Adadelta", "Adadelta", {"lr": 1.0}, {"lr": 1.0}, 4, 3,
              "read p, g, square_avg, acc_delta; write p, square_avg, acc_delta"),
    OptimSpec("RMSprop", "RMSprop", {"lr": 1e-2}, {"lr": 1e-2}, 3, 2, "read p, g, square_avg; write p, square_avg"),
    OptimSpec("Adam", "Adam", {"lr": 1e-3}, {"lr": 1e-3}, 4, 3, "read p, g, m, v; write p, m, v"),
    OptimSpec("AdamW", "AdamW", {"lr": 1e-3, "weight_decay": 1e-2}, {"lr": 1e-3, "weight_decay": 1e-2}, 4, 3,
              "read p, g, m, v; write p, m, v"),
)


def optim_bytes(spec: OptimSpec, numel: int) -> tuple[float, float]:
    """(minimal bytes moved, footprint) of one step over ``numel`` float32 parameters."""
    moved = F32 * numel * (spec.arrays_read + spec.arrays_written)
    footprint = F32 * numel * spec.arrays_read  # every array written is also read
    return float(moved), float(footprint)


def optim_first_step(spec: OptimSpec, p, g):
    """The first step's update in float64 from zero state, straight from torch.optim's
    equations with the defaults above: an independent check of every backend's first step
    (the optimizer tests check many steps against the references; this catches a benchmark
    that times the wrong thing)."""
    p, g = p.astype(np.float64), g.astype(np.float64)
    kw = spec.torch_kwargs
    lr = kw["lr"]
    if spec.torch_name == "SGD":
        m = kw.get("momentum", 0.0)
        # first step: buf = g; nesterov uses g + m*buf
        step = g * (1 + m) if kw.get("nesterov") else g
        return p - lr * step
    if spec.name == "Adagrad":
        return p - lr * g / (np.sqrt(g * g) + 1e-10)
    if spec.name == "Adadelta":
        rho, eps = 0.9, 1e-6
        sq = (1 - rho) * g * g
        return p - lr * np.sqrt(eps) / np.sqrt(sq + eps) * g
    if spec.name == "RMSprop":
        alpha, eps = 0.99, 1e-8
        return p - lr * g / (np.sqrt((1 - alpha) * g * g) + eps)
    if spec.name in ("Adam", "AdamW"):
        b1, b2, eps = 0.9, 0.999, 1e-8
        if spec.name == "AdamW":
            p = p * (1 - lr * kw["weight_decay"])
        m, v = (1 - b1) * g, (1 - b2) * g * g
        return p - (lr / (1 - b1)) * m / (np.sqrt(v) / np.sqrt(1 - b2) + eps)
    raise AssertionError(spec.name)  # pragma: no cover


def _import_or_na(name: str):
    """Import a deepkern module that a case needs, or raise Unavailable ("n/a" row)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name == name:
            raise Unavailable(f"{name} not available") from None
        raise Unavailable(f"{name} not available ({e})") from None
    except ImportError as e:
        raise Unavailable(f"{name} not available ({e})") from None


def _deepkern_optim(spec: OptimSpec):
    optim = _import_or_na("deepkern.optim")
    nn = _import_or_na("deepkern.nn")
    cls = getattr(optim, spec.name, None)
    if cls is None:
        raise Unavailable(f"deepkern.optim has no {spec.name}")
    return cls, nn.Parameter


def optim_cases(numel: int, ntensors: int = 20) -> list[Case]:
    sizes = [numel // ntensors + (1 if k < numel % ntensors else 0) for k in range(ntensors)]
    desc = f"{numel / 1e6:g}M params in {ntensors} tensors"
    group = "optim"

    def setup():
        rng = _rng(group)
        return {"p": [_randn(rng, (s,)) for s in sizes], "g": [_randn(rng, (s,), 0.1) for s in sizes]}

    def check_delta(got, ref, inp, backend, name):
        # compare the updates (p1 - p0), not p1: an update of 1e-3 hides in p1's rounding
        got = [np.asarray(a, np.float64) - p0 for a, p0 in zip(got, inp["p"])]
        want = [r - p0 for r, p0 in zip(ref, inp["p"])]
        compare(got, want, 2e-3, f"optim/{name} first step on {backend}")

    cases = []
    for spec in OPTIMIZERS:
        moved, footprint = optim_bytes(spec, numel)

        def deepkern_build(b, inp, spec=spec):
            cls, Parameter = _deepkern_optim(spec)
            d = b.to_device(inp)
            params = [Parameter(p.copy()) for p in d["p"]]
            for prm, g in zip(params, d["g"]):
                prm.grad = g.copy()
            opt = cls(params, **spec.kwargs)

            def first():
                opt.step()
                return [b.to_host(prm.data) for prm in params]
            return Prepared(opt.step, first)

        def torch_build(b, inp, spec=spec):
            torch = b.torch
            cls = getattr(torch.optim, spec.torch_name)
            out = []
            for mode, flags in (("fused", {"fused": True}), ("foreach", {"foreach": True}),
                                ("for-loop", {"foreach": False})):
                params = [b.tensor(p) for p in inp["p"]]  # on the backend's device
                for prm, g in zip(params, inp["g"]):
                    prm.requires_grad_(True)
                    # a private copy: PyTorch's foreach SGD with nesterov adds the momentum
                    # into .grad in place (deepkern's step never writes .grad)
                    prm.grad = b.tensor(g)
                try:
                    opt = cls(params, **spec.torch_kwargs, **flags)
                except (TypeError, ValueError, RuntimeError):
                    continue  # this optimizer has no such mode in this PyTorch
                def first(opt=opt, params=params):
                    opt.step()
                    return [b.to_host(prm) for prm in params]
                out.append((mode, Prepared(opt.step, first)))
            return out

        cases.append(Case(
            id=f"optim/{spec.name.lower()}", op=f"optim.{spec.name}", direction="step", shape=desc,
            group=group, setup=setup, bytes=moved, footprint=footprint,
            work_note=f"{F32 * (spec.arrays_read + spec.arrays_written)} bytes/param: {spec.note}",
            deepkern=deepkern_build, torch=torch_build,
            reference=lambda inp, spec=spec: [optim_first_step(spec, p, g) for p, g in zip(inp["p"], inp["g"])],
            check=lambda got, ref, inp, backend, name=spec.name: check_delta(got, ref, inp, backend, name),
            numpy_is_reference=False))
    return cases


# ---------------------------------------------------------------------------- training epoch

def _epoch_hook():
    """``deepkern.train.benchmark_epoch``, the hook the training-epoch case calls.

    Contract (for deepkern.train to implement):

        benchmark_epoch(framework, *, batch_size=64, seed=0, steps=None) -> Callable[[], float]

    framework is "numpy", "cpu" or "cuda" (deepkern on that backend) or "torch" (the same model,
    loss and optimizer written in PyTorch). The returned function trains the default model of
    ``deepkern train`` (its default optimizer, loss and data: the digits training split) for one
    epoch of mini-batches of ``batch_size`` (or only the first ``steps`` of them) and returns
    the mean training loss. Every call continues training the same model. A framework it cannot
    run raises RuntimeError saying why.
    """
    train = _import_or_na("deepkern.train")
    hook = getattr(train, "benchmark_epoch", None)
    if hook is None:
        raise Unavailable("deepkern.train has no benchmark_epoch hook yet")
    return hook


def epoch_cases(steps: int | None) -> list[Case]:
    def build(framework, steps=steps):
        try:
            fn = _epoch_hook()(framework, batch_size=64, seed=0, steps=steps)
        except (RuntimeError, NotImplementedError) as e:
            raise Unavailable(str(e)) from None
        return Prepared(fn, lambda: [np.float64(fn())])

    def check_loss(got, ref, inp, backend):
        loss = float(np.asarray(got[0]))
        if not np.isfinite(loss) or loss <= 0:
            raise ValidationError(f"train/epoch on {backend}: mean loss {loss!r} is not a positive finite number")

    desc = "default CNN, digits 8x8, batch 64" + (f", first {steps} steps" if steps else "")
    return [Case(
        id="train/epoch", op="train", direction="epoch", shape=desc, group="train",
        setup=dict, deepkern=lambda b, inp: build(b.name),
        torch=lambda b, inp: [("torch", build(b.name))], reference=None,
        work_note="wall time of one epoch (forward, loss, backward, optimizer step per batch)",
        check=check_loss, torch_check=check_loss)]


# ---------------------------------------------------------------------------- the suite

def suite(quick: bool = False) -> list[Case]:
    """Every case of the default suite (``quick``: the same cases on small shapes)."""
    N = 2 if quick else 64
    return (conv_cases(N) + layer_cases(N)
            + optim_cases(200_000 if quick else 10_000_000)
            + epoch_cases(2 if quick else None))


def select(cases: list[Case], patterns: list[str] | None) -> list[Case]:
    """The cases matching any pattern: an op name ("conv2d", "optim"), a case id with shell
    wildcards ("conv2d/c3/*", "*/bwd*", "optim/adam*"), or a prefix of the id."""
    import fnmatch

    if not patterns:
        return list(cases)
    out = []
    for c in cases:
        for pat in patterns:
            pat = pat.strip()
            if not pat:
                continue
            if (c.op == pat or c.op.split(".")[0] == pat or fnmatch.fnmatchcase(c.id, pat)
                    or c.id.startswith(pat.rstrip("/") + "/") or c.id == pat):
                out.append(c)
                break
    return out
