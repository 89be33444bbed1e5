"""Shared infrastructure of the reliability tests (RELIABILITY.md D0).

- layouts:      the same values in other memory layouts (poisoned non-contiguous, negative and
                zero strides, channels-last, Fortran, read-only, unaligned), as PyTorch's
                ``noncontiguous_like`` does;
- Snapshot:     bytes of every argument *and of the buffer behind it*, to prove that a call
                left its inputs alone (a write into the poisoned gaps of a strided view shows too);
- assert_same_values: NaN/Inf-aware comparison (NaN where the reference has NaN, the same
                infinities, finite values within tolerance, or bitwise);
- KERNEL_CALLS: every public kernel on fixed inputs, as zero-argument callables returning their
                outputs (used by the concurrency, determinism, memory and aliasing tests);
- memory gate:  ``mem_available()`` and ``requires_memory(nbytes)`` (PyTorch's largeTensorTest);
- FUZZ_STATS:   a counter of fuzz cases by op and outcome, printed at the end of the session
                (conftest.py) and written to $DEEPKERN_FUZZ_STATS as JSON when that is set.
"""

from __future__ import annotations

import collections
import os
import threading

import numpy as np
import pytest

import deepkern.functional as F

# ---------------------------------------------------------------------------- layouts

LAYOUTS = ("contiguous", "noncontiguous", "negative_stride", "channels_last", "fortran",
           "readonly", "unaligned", "broadcast")


def _poisoned(a):
    """Every other element of a NaN-filled buffer, starting at offset 1: same values, gaps full
    of NaN, so a kernel that ignores the strides reads NaN (PyTorch's noncontiguous_like)."""
    if a.ndim == 0 or a.size == 0:
        return a.copy()
    fill = np.nan if a.dtype.kind == "f" else 0x5A
    buf = np.full(a.shape[:-1] + (2 * a.shape[-1] + 1,), fill, dtype=a.dtype)
    buf[..., 1::2] = a
    return buf[..., 1::2]


def _unaligned(a):
    """A C-contiguous copy whose data pointer is *not* a multiple of the item size."""
    raw = np.empty(a.nbytes + a.itemsize + 1, dtype=np.uint8)
    off = 1 if raw.ctypes.data % a.itemsize == 0 else 0
    if (raw.ctypes.data + off) % a.itemsize == 0:
        off += 1
    v = raw[off:off + a.nbytes].view(a.dtype).reshape(a.shape)
    v[...] = a
    return v


def as_layout(a, layout):
    """`a`'s values in the given memory layout (for 'broadcast': a zero-stride view of a[..., :1]
    along the last axis, so the values change; callers compute references from np.array(view))."""
    if layout == "contiguous" or a.ndim == 0:
        return a
    if layout == "noncontiguous":
        return _poisoned(a)
    if layout == "negative_stride":
        return np.flip(np.flip(a, -1).copy(), -1)
    if layout == "channels_last":
        if a.ndim != 4:
            return np.asfortranarray(a)
        return a.transpose(0, 2, 3, 1).copy().transpose(0, 3, 1, 2)
    if layout == "fortran":
        return np.asfortranarray(a)
    if layout == "readonly":
        r = a.copy()
        r.flags.writeable = False
        return r
    if layout == "unaligned":
        return _unaligned(a)
    if layout == "broadcast":
        if a.shape[-1] == 0:
            return a
        return np.broadcast_to(a[..., :1], a.shape)
    raise ValueError(layout)


# ---------------------------------------------------------------------------- snapshots

def _buffer_of(a):
    """The outermost ndarray owning a's memory (the poisoned buffer behind a strided view)."""
    while isinstance(a, np.ndarray) and isinstance(a.base, np.ndarray):
        a = a.base
    return a


class Snapshot:
    """Bytes of every ndarray argument and of its base buffer, taken now; ``.assert_same()``
    checks that nothing changed (inputs are never written; on error, nothing is written)."""

    def __init__(self, *objs, skip=()):
        self.items = []
        skip_ids = {id(s) for s in skip}
        for o in objs:
            for a in ([o] if isinstance(o, np.ndarray) else (o if isinstance(o, (list, tuple)) else [])):
                if isinstance(a, np.ndarray) and id(a) not in skip_ids and a.dtype != object:
                    for arr in (a, _buffer_of(a)):
                        self.items.append((arr, np.array(arr, copy=True)))

    def assert_same(self, what="argument"):
        for arr, before in self.items:
            now = np.array(arr, copy=True)
            assert now.shape == before.shape and now.tobytes() == before.tobytes(), \
                f"{what} of shape {arr.shape} was modified"


# ---------------------------------------------------------------------------- comparisons

def assert_same_values(got, want, rtol=0.0, atol=0.0, what="result"):
    """got matches want: same shape; NaN exactly where want is NaN; equal infinities; finite
    elements within atol + rtol*|want| (bitwise equal when rtol = atol = 0)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != expected {want.shape}"
    if got.size == 0:
        return
    with np.errstate(all="ignore"):
        _compare(got, want, rtol, atol, what)


def _compare(got, want, rtol, atol, what):
    g, w = got.astype(np.float64), want.astype(np.float64)
    gn, wn = np.isnan(g), np.isnan(w)
    if not np.array_equal(gn, wn):
        i = np.flatnonzero((gn != wn).reshape(-1))[0]
        raise AssertionError(f"{what}: NaN pattern differs, first at flat index {i}: got "
                             f"{got.reshape(-1)[i]!r}, expected {want.reshape(-1)[i]!r}")
    gi, wi = np.isinf(g) & ~gn, np.isinf(w) & ~wn
    if not np.array_equal(np.where(gi, g, 0), np.where(wi, w, 0)):
        i = np.flatnonzero((np.where(gi, g, 0) != np.where(wi, w, 0)).reshape(-1))[0]
        raise AssertionError(f"{what}: infinities differ, first at flat index {i}: got "
                             f"{got.reshape(-1)[i]!r}, expected {want.reshape(-1)[i]!r}")
    fin = ~(gn | gi)
    err = np.abs(np.where(fin, g - w, 0.0))
    tol = atol + rtol * np.abs(np.where(fin, w, 0.0))
    bad = err > tol
    if bad.any():
        i = int(np.argmax(np.where(bad, err - tol, -np.inf).reshape(-1)))
        raise AssertionError(f"{what}: {int(bad.sum())} of {got.size} elements differ; worst at flat "
                             f"index {i}: got {got.reshape(-1)[i]!r}, expected {want.reshape(-1)[i]!r} "
                             f"(rtol={rtol}, atol={atol})")


def shares_memory_with_any(out, inputs):
    """True when the output array overlaps any of the input arrays."""
    return any(isinstance(a, np.ndarray) and isinstance(out, np.ndarray) and np.shares_memory(out, a)
               for a in inputs)


# ---------------------------------------------------------------------------- every kernel, fixed inputs

def make_kernel_calls(seed=0, dtype=np.float32, scale=1):
    """{name: (call, inputs)}: call() runs one public op on fixed inputs and returns its outputs
    as a tuple of arrays (running statistics included: they start from the same values on every
    call); inputs lists the arrays it reads. `scale` grows the batch (and the element-wise sizes)
    so that the work spans several parallel chunks."""
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    N = 3 * scale + seed % 3          # different shapes per seed: different partitions
    x = rng.standard_normal((N, 6, 11, 13)).astype(dt)
    w = (rng.standard_normal((8, 3, 3, 3)) / 5).astype(dt)
    b = rng.standard_normal(8).astype(dt)
    conv_kw = dict(stride=(1, 2), padding=1, dilation=(2, 1), groups=2)
    y = F.conv2d(x, w, b, **conv_kw)
    dy = rng.standard_normal(y.shape).astype(dt)
    pool_kw = dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)
    py, idx = F.max_pool2d(x, dilation=1, **pool_kw)
    pdy = rng.standard_normal(py.shape).astype(dt)
    ay = F.avg_pool2d(x, count_include_pad=False, **pool_kw)
    bw, bb = rng.standard_normal(6).astype(dt), rng.standard_normal(6).astype(dt)
    rm0, rv0 = rng.standard_normal(6).astype(dt), (rng.random(6) + 0.5).astype(dt)
    _, sm, si = F.batch_norm(x, bw, bb, None, None, True)
    bdy = rng.standard_normal(x.shape).astype(dt)
    e = rng.standard_normal(40_000 * scale + 7 * seed).astype(dt)   # several 16 Ki-element chunks
    ey = F.relu(e)
    _, mask = F.dropout(e, 0.3, seed=seed)

    def bn_train():
        rm, rv = rm0.copy(), rv0.copy()
        return F.batch_norm(x, bw, bb, rm, rv, True, 0.1, 1e-5) + (rm, rv)

    nonc = _poisoned(x)  # a non-contiguous input through every layer that takes one
    calls = {
        "conv2d": (lambda: (F.conv2d(x, w, b, **conv_kw),), (x, w, b)),
        "conv2d_noncontig": (lambda: (F.conv2d(nonc, w, None, **conv_kw),), (nonc, w)),
        "conv2d_backward": (lambda: F.conv2d_backward(dy, x, w, bias=True, **conv_kw), (dy, x, w)),
        "max_pool2d": (lambda: F.max_pool2d(x, **pool_kw), (x,)),
        "max_pool2d_backward": (lambda: (F.max_pool2d_backward(pdy, idx, x.shape),), (pdy, idx)),
        "avg_pool2d": (lambda: (F.avg_pool2d(nonc, count_include_pad=False, **pool_kw),), (nonc,)),
        "avg_pool2d_backward": (lambda: (F.avg_pool2d_backward(ay, x.shape, count_include_pad=False,
                                                               **pool_kw),), (ay,)),
        "batch_norm_train": (bn_train, (x, bw, bb)),
        "batch_norm_eval": (lambda: F.batch_norm(x, bw, bb, rm0, rv0, False), (x, bw, bb, rm0, rv0)),
        "batch_norm_backward": (lambda: F.batch_norm_backward(bdy, x, bw, sm, si, True), (bdy, x, bw, sm, si)),
        "batch_norm_backward_eval": (lambda: F.batch_norm_backward(x, x, None, sm, si, False), (x, sm, si)),
        "dropout": (lambda: F.dropout(e, 0.3, seed=seed + 1), (e,)),
        "dropout_backward": (lambda: (F.dropout_backward(e, mask, 0.3),), (e, mask)),
        "relu": (lambda: (F.relu(e),), (e,)),
        "relu_backward": (lambda: (F.relu_backward(e, ey),), (e, ey)),
    }
    return calls


def run_calls(calls):
    """{name: tuple of output copies} for every call."""
    return {k: tuple(None if o is None else np.array(o, copy=True) for o in c())
            for k, (c, _) in calls.items()}


# ---------------------------------------------------------------------------- optimizers (when present)

def optim_module():
    """deepkern.optim when this checkout has it (written in parallel; API.md), else None."""
    try:
        import deepkern.optim as optim
    except ImportError:
        return None
    return optim


# The constructor keyword arguments of API.md's optimizers that every test steps through.
OPTIM_CONFIGS = {
    "SGD": dict(lr=0.1),
    "Momentum": dict(lr=0.1, momentum=0.9),
    "NAG": dict(lr=0.1, momentum=0.9),
    "Adagrad": dict(lr=0.1),
    "Adadelta": dict(lr=1.0),
    "RMSprop": dict(lr=0.01, momentum=0.5, centered=True),
    "Adam": dict(lr=0.01, amsgrad=True),
    "AdamW": dict(lr=0.01),
}


def optim_trajectory(name, seed, steps, dtype=np.float32):
    """Params (copies) after `steps` steps of optimizer `name` on fixed params and fixed grads
    (grads drawn from an RNG, not computed: the optimizer is the only thing under test)."""
    optim = optim_module()
    from deepkern.nn import Parameter
    rng = np.random.default_rng(seed)
    params = [Parameter(rng.standard_normal(s).astype(dtype)) for s in ((7, 5), (3,), (1000 + seed,))]
    grads = [[rng.standard_normal(p.shape).astype(dtype) for p in params] for _ in range(4)]
    opt = getattr(optim, name)(params, **OPTIM_CONFIGS[name])
    for t in range(steps):
        for p, g in zip(params, grads[t % 4]):
            p.grad = g
        opt.step()
    return [p.data.copy() for p in params]


# ---------------------------------------------------------------------------- memory

def mem_available():
    """MemAvailable from /proc/meminfo in bytes (0 if unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def requires_memory(nbytes, factor=3.0):
    """Skip unless MemAvailable >= factor * nbytes (PyTorch's largeTensorTest rule), or unless
    DEEPKERN_LARGE_TESTS=force asks to run anyway (on a big machine, by hand)."""
    forced = os.environ.get("DEEPKERN_LARGE_TESTS") == "force"
    avail = mem_available()
    return pytest.mark.skipif(not forced and avail < factor * nbytes,
                              reason=f"needs {factor:g} x {nbytes / 2**30:.1f} GiB available memory, "
                                     f"{avail / 2**30:.1f} GiB available (DEEPKERN_LARGE_TESTS=force runs it)")


def rss_bytes():
    """Resident set size of this process (/proc/self/statm; tracemalloc cannot see C++)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def under_sanitizer():
    """True when the tests run under ASan/UBSan (.ci/extra sets DEEPKERN_SANITIZED=1)."""
    return os.environ.get("DEEPKERN_SANITIZED") == "1" or "libasan" in os.environ.get("LD_PRELOAD", "")


# ---------------------------------------------------------------------------- fuzz statistics

FUZZ_STATS: collections.Counter = collections.Counter()
_stats_lock = threading.Lock()


def count_case(op, outcome):
    """Record one fuzz case of `op`: outcome 'valid' (result checked against the reference) or
    'invalid' (ValueError/TypeError checked, nothing written)."""
    with _stats_lock:
        FUZZ_STATS[(op, outcome)] += 1


def fuzz_summary():
    """{op: {valid, invalid}} plus totals, for the terminal summary and the JSON file."""
    ops = collections.defaultdict(lambda: {"valid": 0, "invalid": 0})
    for (op, outcome), n in FUZZ_STATS.items():
        ops[op][outcome] += n
    total = {"valid": sum(v["valid"] for v in ops.values()),
             "invalid": sum(v["invalid"] for v in ops.values())}
    return {"ops": dict(sorted(ops.items())), "total": total}
