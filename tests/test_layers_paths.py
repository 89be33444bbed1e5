"""The vector kernels of the memory-bound layers (csrc/cpu/layers_fast.h) on every SIMD level
this CPU runs, against the NumPy reference, on the edges vector code gets wrong: sizes that
are not multiples of the vector width (16 lanes for AVX-512, 8 for AVX2), NaN, -0.0 and
infinities, ties, ceil-mode windows past the input, divisors that differ per window, and
dropout masks that must equal the scalar Philox generator bit for bit.
"""


import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import deepkern
import deepkern.functional as F
import deepkern.reference as R
from conftest import assert_bitwise, assert_close, f64, num_threads
from simd_isas import available_isas, isa, run_with_every_job_split
from tolerances import tol


ISAS = available_isas()


SIZES = [1, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 129, 255, 257, 1000, 4099, 65537]


def special_values(n, rng):
    x = rng.standard_normal(n).astype(np.float32)
    picks = rng.integers(0, n, size=max(1, n // 10))
    x[picks] = rng.choice(np.array([np.nan, -0.0, 0.0, np.inf, -np.inf], np.float32), size=picks.size)
    return x


# ---------------------------------------------------------------------------------- relu

@pytest.mark.parametrize("isa_name", ISAS)
@pytest.mark.parametrize("n", SIZES)
def test_relu_bitwise(isa_name, n):
    rng = np.random.default_rng(n)
    x, dy = special_values(n, rng), special_values(n, rng)
    with isa(isa_name):
        y = F.relu(x)
        gx = F.relu_backward(dy, y)
    assert_bitwise(y, R.relu(x), "relu y")
    assert_bitwise(gx, R.relu_backward(dy, y), "relu grad_x")


# ---------------------------------------------------------------------------------- dropout

@pytest.mark.parametrize("isa_name", ISAS)
@pytest.mark.parametrize("n", SIZES)
def test_dropout_mask_and_values_bitwise(isa_name, n):
    rng = np.random.default_rng(n + 1)
    x, dy = special_values(n, rng), rng.standard_normal(n).astype(np.float32)
    for p, seed in ((0.5, 0), (0.1, 12345), (0.9, 2**64 - 1), (0.3, 0xDEADBEEFCAFEF00D)):
        with isa(isa_name):
            y, mask = F.dropout(x, p, seed=seed)
            gx = F.dropout_backward(dy, mask, p)
        with np.errstate(invalid="ignore"):  # inf * 0 in dropped lanes is NaN, as in the kernel
            ry, rmask = R.dropout(x, p, True, seed)
        assert_bitwise(mask, rmask, f"mask p={p} seed={seed}")
        assert_bitwise(y, ry, f"y p={p} seed={seed}")
        assert_bitwise(gx, R.dropout_backward(dy, rmask, p), f"grad_x p={p}")


@pytest.mark.parametrize("isa_name", ISAS)
def test_dropout_float64_mask_matches(isa_name):
    """float64 runs the scalar apply, but its mask comes from the same (vector) generator."""
    x = np.random.default_rng(3).standard_normal((5, 77)).astype(np.float64)
    with isa(isa_name):
        y, mask = F.dropout(x, 0.4, seed=77)
    ry, rmask = R.dropout(x, 0.4, True, 77)
    assert_bitwise(mask, rmask, "mask")
    assert_bitwise(y, ry, "y")


def test_dropout_thread_split_never_cuts_a_counter():
    """Each Philox counter covers 4 elements: thread ranges must start at multiples of 4."""
    x = np.ones(100_003, np.float32)
    want = R.dropout_mask(x.shape, 0.5, 99)
    for t in (1, 2, 3, 5, 7):
        with num_threads(t):
            assert_bitwise(F.dropout(x, 0.5, seed=99)[1], want, f"mask on {t} threads")


@pytest.mark.parametrize("isa_name", ISAS)
@pytest.mark.parametrize("first", [0, 2**34 - 512, 2**34 + 4, 3 * 2**34 - 100, 2**40 + 12, 2**64 - 2**12])
def test_dropout_generator_counter_high_word(isa_name, first):
    """Counters of 2**32 and beyond (masks past 2**34 elements, here through a test hook): the
    vector generators' counter high word and its carry out of the low word, against the
    reference Philox; the ranges start a few counters before a carry and run over it."""
    seed, p, n = 0x9E3779B97F4A7C15, 0.3, 2000
    k = np.arange(n, dtype=np.uint64)
    counters = (np.uint64(first) + k) // np.uint64(4)       # never past 2**62: no uint64 wrap
    words = R.philox4x32(counters, seed)[np.arange(n), (k % np.uint64(4)).astype(np.int64)]
    want = (words.astype(np.uint64) >= np.uint64(int(p * 2**32))).astype(np.uint8)
    with isa(isa_name):
        got = deepkern._C._testing.dropout_mask_from(first, n, p, seed)
    assert_bitwise(got, want, f"mask from element {first}")


# ---------------------------------------------------------------------------------- max pool

@st.composite
def maxpool2_cases(draw):
    H, W = draw(st.integers(1, 37)), draw(st.integers(2, 37))
    return dict(shape=(draw(st.integers(1, 3)), draw(st.integers(1, 3)), max(H, 2), W),
                ceil_mode=draw(st.booleans()), ties=draw(st.booleans()), nans=draw(st.booleans()))


@pytest.mark.parametrize("isa_name", ISAS)
@settings(max_examples=30)
@given(c=maxpool2_cases(), seed=st.integers(0, 2**32 - 1))
def test_max_pool_2x2_stride_2(isa_name, c, seed):
    """The branch-free 2x2/s2 path: ties keep the first tap, NaN wins with its last index,
    -inf windows, odd sizes and ceil-mode windows past the input."""
    rng = np.random.default_rng(seed)
    x = (rng.integers(-2, 3, c["shape"]) if c["ties"] else rng.standard_normal(c["shape"])).astype(np.float32)
    if c["nans"]:
        flat = x.reshape(-1)
        flat[rng.integers(0, flat.size, max(1, flat.size // 7))] = np.nan
        flat[rng.integers(0, flat.size, max(1, flat.size // 7))] = -np.inf
    with isa(isa_name):
        y, idx = F.max_pool2d(x, 2, 2, ceil_mode=c["ceil_mode"])
        dy = rng.standard_normal(y.shape).astype(np.float32)
        gx = F.max_pool2d_backward(dy, idx, x.shape)
    ry, ridx = R.max_pool2d(x, 2, 2, ceil_mode=c["ceil_mode"])
    assert_bitwise(y, ry, "y")
    assert_bitwise(idx, ridx, "indices")
    assert_close(gx, R.max_pool2d_backward(f64(dy), ridx, x.shape), 1e-6, 1e-6, "grad_x")


@pytest.mark.parametrize("isa_name", ISAS)
@pytest.mark.parametrize("shape", [(64, 16, 8, 8), (64, 32, 4, 4), (3, 5, 2, 2), (7, 3, 16, 16), (2, 3, 6, 8),
                                   (1, 1, 2, 2), (5, 3, 4, 2), (3, 7, 130, 2), (2, 5, 10, 4), (1, 3, 12, 16)])
def test_max_pool_2x2_narrow_planes(isa_name, shape):
    """Planes narrower than a vector (OW = 1, 2, 4, 8), pooled in groups of row pairs across
    row and plane boundaries: totals that are not a multiple of the vector, index patterns
    that repeat over several vectors (OH = 3, 5, 6), one longer than the table (OH = 65: the
    row-by-row code), ties, NaN and -inf; the backward pass against the scatter-add, and with
    an index of another window (the generic path redoes it)."""
    rng = np.random.default_rng(sum(shape))
    x = rng.integers(-2, 3, shape).astype(np.float32)
    flat = x.reshape(-1)
    flat[rng.integers(0, flat.size, max(1, flat.size // 9))] = np.nan
    flat[rng.integers(0, flat.size, max(1, flat.size // 9))] = -np.inf
    with isa(isa_name):
        y, idx = F.max_pool2d(x, 2, 2)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        dy.reshape(-1)[::5] = -0.0
        gx = F.max_pool2d_backward(dy, idx, x.shape)
    ry, ridx = R.max_pool2d(x, 2, 2)
    assert_bitwise(y, ry, "y")
    assert_bitwise(idx, ridx, "indices")
    want = R.max_pool2d_backward(dy, ridx, x.shape)
    assert_bitwise(gx, want + np.float32(0), "grad_x")        # (+0.0: the scatter adds to zeros)
    bad = idx.copy()
    bad.reshape(-1)[-1] = 0 if bad.reshape(-1)[-1] != 0 else 1
    with isa(isa_name):
        gx = F.max_pool2d_backward(dy, bad, x.shape)
    assert_close(gx, R.max_pool2d_backward(f64(dy), bad, x.shape), 1e-6, 1e-6, "grad_x, foreign index")


def test_max_pool_backward_bindings_open_the_2x2_fast_paths():
    """The backward gets indices, not the window: its bindings pass the 2x2/s2 geometry when the
    input tiles into 2x2 windows exactly (the fast paths check every index against its own
    window), and nothing otherwise (before this hint no backward took them)."""
    geometry = deepkern._C._testing.pool_backward_geometry
    assert geometry([64, 64, 32, 32], [64, 64, 16, 16]) == (2, 2, 2, 2, 1, 1)
    assert geometry([3, 5, 2, 2], [3, 5, 1, 1]) == (2, 2, 2, 2, 1, 1)
    for dx, dy in [([1, 1, 5, 4], [1, 1, 2, 2]), ([1, 1, 4, 4], [1, 1, 3, 3]), ([1, 1, 4, 4], [1, 1, 4, 4])]:
        assert geometry(dx, dy) == (0, 0, 0, 0, 0, 0)


@pytest.mark.parametrize("isa_name", ISAS)
def test_max_pool_backward_of_other_windows_that_tile_2x2(isa_name):
    """Indices from windows other than 2x2/s2 whose outputs still halve the input (1x1/s2, and
    3x3/s2/p1, whose windows overlap: two outputs may pick one element): the fast path accepts
    only indices inside their own 2x2 window and leaves the rest to the scatter-add."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 3, 8, 32)).astype(np.float32)
    for k, s, p in [(1, 2, 0), (3, 2, 1)]:
        with isa(isa_name):
            y, idx = F.max_pool2d(x, k, s, p)
            assert y.shape[2:] == (4, 16)
            dy = rng.standard_normal(y.shape).astype(np.float32)
            gx = F.max_pool2d_backward(dy, idx, x.shape)
        want = R.max_pool2d_backward(f64(dy), R.max_pool2d(x, k, s, p)[1], x.shape)
        assert_close(gx, want, 1e-6, 1e-6, f"grad_x of {k}x{k}/s{s}/p{p}")


# ---------------------------------------------------------------------------------- avg pool

@st.composite
def avgpool_s1_cases(draw):
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    H = draw(st.integers(max(1, kh - 2 * ph), 35))
    W = draw(st.integers(max(1, kw - 2 * pw), 35))
    return dict(shape=(draw(st.integers(1, 2)), draw(st.integers(1, 3)), H, W), kernel_size=(kh, kw),
                padding=(ph, pw), ceil_mode=draw(st.booleans()), count_include_pad=draw(st.booleans()))


@pytest.mark.parametrize("isa_name", ISAS)
@settings(max_examples=30)
@given(c=avgpool_s1_cases(), seed=st.integers(0, 2**32 - 1))
def test_avg_pool_stride_1(isa_name, c, seed):
    """The stride-1 stencils: every kernel size and padding, per-window divisors (padding not
    counted), row lengths that are not multiples of the vector width; bitwise the portable
    loops."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(c["shape"]).astype(np.float32)
    kw = dict(kernel_size=c["kernel_size"], stride=1, padding=c["padding"], ceil_mode=c["ceil_mode"],
              count_include_pad=c["count_include_pad"])
    with isa(isa_name):
        y = F.avg_pool2d(x, **kw)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        gx = F.avg_pool2d_backward(dy, x.shape, **kw)
    t = tol("avg_pool2d", np.float32)
    assert_close(y, R.avg_pool2d(f64(x), **kw), *t, what="y")
    assert_close(gx, R.avg_pool2d_backward(f64(dy), x.shape, **kw), *t, what="grad_x")
    # the vector stencils add in the scalar loops' order and divide: the same bits (the CUDA
    # kernels are held to these bits too, tests/test_cuda_kernels.py)
    with isa("scalar"):
        assert_bitwise(y, F.avg_pool2d(x, **kw), "y vs the portable loops")
        assert_bitwise(gx, F.avg_pool2d_backward(dy, x.shape, **kw), "grad_x vs the portable loops")


@pytest.mark.parametrize("isa_name", ISAS)
@pytest.mark.parametrize("W", [1, 2, 7, 8, 9, 15, 16, 17, 24, 31, 32, 33, 48, 63, 64, 65])
def test_avg_pool_3x3_pad_1_register_planes(isa_name, W):
    """The 3x3 / stride 1 / padding 1 window on planes up to 4 vectors wide (whole planes in
    registers, layers_fast.h box3_plane): every width class around the vector widths, 1-row and
    3-row planes, both divisor rules, -0.0 / inf / NaN inputs; bitwise the portable loops."""
    rng = np.random.default_rng(W)
    for H in (1, 3, 6):
        x = rng.standard_normal((2, 3, H, W)).astype(np.float32)
        x.reshape(-1)[rng.integers(0, x.size, 3)] = [-0.0, np.inf, np.nan]
        for cip in (True, False):
            kw = dict(kernel_size=3, stride=1, padding=1, count_include_pad=cip)
            with isa(isa_name):
                y = F.avg_pool2d(x, **kw)
                dy = rng.standard_normal(y.shape).astype(np.float32)
                dy.reshape(-1)[rng.integers(0, dy.size, 2)] = [-0.0, np.inf]
                gx = F.avg_pool2d_backward(dy, x.shape, **kw)
            with isa("scalar"):
                assert_bitwise(y, F.avg_pool2d(x, **kw), f"y H={H} cip={cip}")
                assert_bitwise(gx, F.avg_pool2d_backward(dy, x.shape, **kw), f"grad_x H={H} cip={cip}")
            finite = np.isfinite(x).all(axis=(2, 3), keepdims=True)
            t = tol("avg_pool2d", np.float32)
            assert_close(np.where(finite, y, 0), np.where(finite, R.avg_pool2d(f64(x), **kw), 0), *t, what="y")


# ---------------------------------------------------------------------------------- batch norm

@pytest.mark.parametrize("isa_name", ISAS)
@pytest.mark.parametrize("shape", [(2, 1, 1, 1), (2, 3, 1, 1), (5, 7, 3, 5), (4, 17, 8, 9), (3, 5, 32, 32),
                                   (9, 33), (2, 4), (70, 6, 4, 4), (67, 3, 5, 7), (130, 40, 2, 2)])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm(isa_name, shape, training):
    rng = np.random.default_rng(len(shape) * 100 + shape[0])
    C = shape[1]
    x = (rng.standard_normal(shape) * 3 + 2).astype(np.float32)
    w, b = rng.standard_normal(C).astype(np.float32), rng.standard_normal(C).astype(np.float32)
    rm, rv = rng.standard_normal(C).astype(np.float32), (rng.random(C) + 0.5).astype(np.float32)
    rm2, rv2 = f64(rm, rv)
    with isa(isa_name):
        y, sm, si = F.batch_norm(x, w, b, rm, rv, training, 0.1, 1e-5)
        dy = rng.standard_normal(shape).astype(np.float32)
        got = F.batch_norm_backward(dy, x, w, sm, si, training)
    ry, rsm, rsi = R.batch_norm(f64(x), *f64(w, b), rm2, rv2, training, 0.1, 1e-5)
    t = tol("batch_norm", np.float32)
    assert_close(y, ry, *t, what="y")
    assert_close(rm, rm2, *t, what="running_mean")
    assert_close(rv, rv2, *t, what="running_var")
    want = R.batch_norm_backward(*f64(dy, x, w, sm, si), training)
    for g, r, name in zip(got, want, ("grad_x", "grad_weight", "grad_bias")):
        assert_close(g, r, *tol("batch_norm_backward", np.float32), what=name)


@pytest.mark.parametrize("isa_name", [i for i in ISAS if i != "scalar"])
def test_batch_norm_long_runs_in_memory_order(isa_name, monkeypatch):
    """Channels of > 256 KB in runs of >= 1 KB (the training forward and the backward then make
    two passes in memory order instead of channel blocks, layers_fast.h): against the reference, run lengths
    that are not a multiple of the vector width, and the same bits on 1, 2 and 3 threads, with
    the outputs' streaming stores (DEEPKERN_STREAM_STORES; runs start at every alignment) and
    without."""
    rng = np.random.default_rng(31)
    x = (rng.standard_normal((66, 3, 17, 61)) * 3 + 2).astype(np.float32)
    w, b = rng.standard_normal(3).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    res = []
    with isa(isa_name):
        for stream in ("0", "1"):
            monkeypatch.setenv("DEEPKERN_STREAM_STORES", stream)
            for t in (1, 2, 3):
                with num_threads(t):
                    y, sm, si = F.batch_norm(x, w, b, None, None, True)
                    res.append([y, sm, si, *F.batch_norm_backward(dy, x, w, sm, si, True),
                                *F.batch_norm_backward(dy, x, w, sm, si, False)])
    for r in res[1:]:
        for k, (g, e) in enumerate(zip(r, res[0])):
            assert_bitwise(g, e, f"output {k}")
    ry, _, _ = R.batch_norm(f64(x), *f64(w, b), None, None, True, 0.1, 1e-5)
    assert_close(res[0][0], ry, *tol("batch_norm", np.float32), what="y")
    want = R.batch_norm_backward(*f64(dy, x, w, res[0][1], res[0][2]), True)
    for g, r, name in zip(res[0][3:6], want, ("grad_x", "grad_weight", "grad_bias")):
        assert_close(g, r, *tol("batch_norm_backward", np.float32), what=name)
    want = R.batch_norm_backward(*f64(dy, x, w, res[0][1], res[0][2]), False)
    for g, r, name in zip(res[0][6:], want, ("eval grad_x", "eval grad_weight", "eval grad_bias")):
        assert_close(g, r, *tol("batch_norm_backward", np.float32), what=name)


@pytest.mark.parametrize("isa_name", [i for i in ISAS if i != "scalar"])
def test_layers_thread_count_invariance(isa_name):
    """Bitwise identical outputs on 1, 2, 3 and 5 threads (the batch-norm sums included)."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((6, 10, 13, 17)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    w, b = rng.standard_normal(10).astype(np.float32), rng.standard_normal(10).astype(np.float32)

    def run():
        out = list(F.max_pool2d(x, 2, 2, ceil_mode=True))
        out.append(F.avg_pool2d(x, 3, 1, 1))
        out.append(F.avg_pool2d_backward(dy, x.shape, 3, 1, 1))
        y, sm, si = F.batch_norm(x, w, b, None, None, True)
        out += [y, sm, si, *F.batch_norm_backward(dy, x, w, sm, si, True)]
        out += list(F.dropout(x, 0.3, seed=4)) + [F.relu(x), F.relu_backward(dy, x)]
        return out

    with isa(isa_name):
        with num_threads(1):
            ref = run()
        for t in (2, 3, 5):
            with num_threads(t):
                for k, (g, r) in enumerate(zip(run(), ref)):
                    assert_bitwise(g, r, f"output {k} on {t} threads")


@pytest.mark.parametrize("isa_name", ISAS)
def test_max_pool_backward_with_foreign_indices(isa_name):
    """Indices not from the forward (another window's pixel, repeated ones) take the generic
    scatter-add, plane by plane; an index outside its plane is a ValueError."""
    rng = np.random.default_rng(21)
    x = rng.standard_normal((2, 3, 8, 34)).astype(np.float32)
    with isa(isa_name):
        y, idx = F.max_pool2d(x, 2, 2)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    bad = idx.copy()
    bad[1, 2, 3, 5] = 0          # a pixel of another window
    bad[0, 1, 0, :4] = 7         # the same pixel four times (summed in order)
    with isa(isa_name):
        gx = F.max_pool2d_backward(dy, bad, x.shape)
    assert_close(gx, R.max_pool2d_backward(f64(dy), bad, x.shape), 1e-6, 1e-6, "grad_x")
    bad[0, 0, 0, 0] = 8 * 34
    with isa(isa_name), pytest.raises(ValueError, match="outside its input plane"):
        F.max_pool2d_backward(dy, bad, x.shape)


# ---------------------------------------------------------------------------------- page faults

LARGE_OUTPUT_PROBE = """
import resource, numpy as np, deepkern.functional as F
x = np.ones((64, 64, 32, 32), np.float32)           # 16 MiB: beyond glibc's default mmap threshold
for _ in range(3):
    F.relu(x)
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    F.relu(x)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 10)
"""


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="glibc's mallopt only")
@pytest.mark.skipif(__import__("opinfo").under_sanitizer(), reason="ASan replaces glibc's malloc: mallopt has no effect")
def test_large_outputs_reuse_mapped_memory():
    """A 16 MiB output allocated per call is not a fresh mmap each time (deepkern/_cpu.py sets
    M_MMAP_THRESHOLD with M_TOP_PAD): measured 520 page faults per call before, 0 after."""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", LARGE_OUTPUT_PROBE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) < 16, f"{out.stdout.strip()} page faults per 16 MiB relu call"


SPLIT_EVERYTHING = """
import os, numpy as np, deepkern, deepkern.functional as F
from deepkern import _C
rng = np.random.default_rng(5)
for isa in %(isas)r:
    _C.set_isa(isa)
    # (130, 40, 5, 5), (3, 300, 1, 3): small planes in channel blocks that start wherever a
    # thread's range does, folds into double every 64 samples, spans ending mid-vector
    for shape in ((64, 16, 8, 8), (64, 32, 4, 4), (9, 5, 7, 6), (33, 20), (6, 10, 13, 17), (130, 40, 5, 5),
                  (3, 300, 1, 3)):
        x = rng.standard_normal(shape).astype(np.float32)
        dy = rng.standard_normal(shape).astype(np.float32)
        C = shape[1]
        w, b = rng.standard_normal(C).astype(np.float32), rng.standard_normal(C).astype(np.float32)
        res = []
        for t, stream in ((1, "0"), (2, "0"), (3, "0"), (5, "0"), (1, "1"), (3, "1"), (5, "1")):
            deepkern.set_num_threads(t)
            os.environ["DEEPKERN_STREAM_STORES"] = stream  # streaming stores where a kernel has them
            y, sm, si = F.batch_norm(x, w, b, None, None, True)
            out = [y, sm, si, *F.batch_norm_backward(dy, x, w, sm, si, True), F.relu(x), F.relu_backward(dy, x)]
            out += list(F.dropout(x, 0.3, seed=4))
            if len(shape) == 4 and shape[2] > 1:
                yp, idx = F.max_pool2d(x, 2, 2)
                out += [yp, idx, F.max_pool2d_backward(yp, idx, x.shape)]
                out += [F.avg_pool2d(x, 3, 1, 1), F.avg_pool2d_backward(dy, x.shape, 3, 1, 1)]
            res.append(out)
        for r in res[1:]:
            for k, (a, e) in enumerate(zip(r, res[0])):
                assert a.tobytes() == e.tobytes(), (isa, shape, k)
print("ok")
"""


def test_thread_count_invariance_of_small_jobs():
    """Small jobs run on one thread (csrc/cpu/threading.h); with DEEPKERN_PARALLEL_MIN_NS=0 they
    are split like large ones, and the results must not change with the thread count, nor with
    streaming stores forced on (split points at every alignment)."""
    run_with_every_job_split(SPLIT_EVERYTHING)


@pytest.mark.parametrize("isa_name", [i for i in ISAS if i != "scalar"])
def test_dropout_forward_streaming_stores_match_normal_ones(isa_name, monkeypatch):
    """Dropout forward with streaming stores for y (DEEPKERN_STREAM_STORES=1) gives the normal
    stores' bits for outputs at every 16-byte offset from a vector boundary (the head before the
    first aligned block) and for a 4-byte-aligned output (no streaming), on 1-3 threads."""
    rng = np.random.default_rng(8)
    for n in (100003, 4099, 13):
        base = rng.standard_normal(n + 16).astype(np.float32)
        for off in (0, 1, 4, 8, 12):
            x = base[off:off + n]
            out = {}
            for stream in ("0", "1"):
                monkeypatch.setenv("DEEPKERN_STREAM_STORES", stream)
                for t in (1, 2, 3):
                    with isa(isa_name), num_threads(t):
                        yb = np.empty(n + 16, np.float32)
                        y, mask = yb[off:off + n], np.empty(n, np.uint8)
                        deepkern._C.dropout_forward(y, mask, x, 0.3, 11)
                    out[stream, t] = (y.copy(), mask)
            for k, (y, mask) in out.items():
                assert_bitwise(y, out["0", 1][0], f"y {n} {off} {k}")
                assert_bitwise(mask, out["0", 1][1], f"mask {n} {off} {k}")


@pytest.mark.parametrize("isa_name", [i for i in ISAS if i != "scalar"])
@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool_3x3_divides_bit_for_bit_on_special_values(isa_name, count_include_pad):
    """The 3x3/s1/p1 register stencil (box3_plane): the portable loops' bits for zeros of both
    signs, subnormals, values near 2^-100 and 2^100, huge values, infinities and NaN, forward
    and backward (a reciprocal-and-FMA division, exact on 2^-100 <= |a| <= 2^100, was tried
    here and is slower than vdivps on Zen 5: bench/NOTES.md)."""
    rng = np.random.default_rng(12)
    special = np.array([0.0, -0.0, 1e-45, -1e-40, 2.0**-100, -(2.0**-100) * 0.999, 2.0**-99, 1e-30,
                        2.0**100, 2.0**100 * 1.001, -1e38, 3.4e38, np.inf, -np.inf, np.nan, 1.0, -3.0],
                       dtype=np.float32)
    for W in (5, 16, 29):
        x = (rng.standard_normal((2, 3, 7, W)) * 10.0 ** rng.integers(-40, 38, (2, 3, 7, W))).astype(np.float32)
        picks = rng.random(x.shape) < 0.4
        x[picks] = rng.choice(special, picks.sum())
        kw = dict(kernel_size=3, stride=1, padding=1, count_include_pad=count_include_pad)
        with np.errstate(all="ignore"):
            with isa(isa_name):
                y = F.avg_pool2d(x, **kw)
                gx = F.avg_pool2d_backward(x, x.shape, **kw)
            with isa("scalar"):
                assert_bitwise(y, F.avg_pool2d(x, **kw), f"y W={W}")
                assert_bitwise(gx, F.avg_pool2d_backward(x, x.shape, **kw), f"grad_x W={W}")
