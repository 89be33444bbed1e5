"""conv2d: every fast float32 path against the float64 reference, on the shapes blocked code gets
wrong, on every SIMD level this CPU runs.

The fast kernels (csrc/cpu/conv2d_fast.h) tile the work: MR output channels x NR pixels per
micro-kernel call, K blocks of the reduction, NR-channel tiles in the weight gradient, chunks of
samples. The cases below are drawn so that every tile boundary has a remainder: channel counts
that are not multiples of 6 or 16, planes that are not multiples of 8 or 16 pixels, K split
into several blocks (DEEPKERN_CONV_KC), batch 1, 1x1 images, strides, dilations and paddings
that need the phase split or a wider compute grid.
"""

import contextlib
import os

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


@contextlib.contextmanager
def env(**kv):
    old = {k: os.environ.get(k) for k in kv}
    os.environ.update({k: str(v) for k, v in kv.items()})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def case(N, C, OC, H, W, KH, KW, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    return dict(N=N, C=C, OC=OC, H=H, W=W, KH=KH, KW=KW, stride=tuple(stride),
                padding=tuple(padding), dilation=tuple(dilation), groups=groups)


def run_and_check(c, rng, bias=True, what=""):
    """Forward, backward-data, backward-weight and bias gradient of float32 `c` vs float64."""
    K = c["C"] // c["groups"] * c["KH"] * c["KW"]
    x = rng.standard_normal((c["N"], c["C"], c["H"], c["W"])).astype(np.float32)
    w = (rng.standard_normal((c["OC"], c["C"] // c["groups"], c["KH"], c["KW"])) / np.sqrt(K)).astype(np.float32)
    b = rng.standard_normal(c["OC"]).astype(np.float32) if bias else None
    a = dict(stride=c["stride"], padding=c["padding"], dilation=c["dilation"], groups=c["groups"])
    y = F.conv2d(x, w, b, **a)
    want = R.conv2d(*f64(x, w), f64(b) if bias else None, **a)
    assert_close(y, want, *tol("conv2d", np.float32), what=f"{what} y")
    dy = rng.standard_normal(y.shape).astype(np.float32)
    gx, gw, gb = F.conv2d_backward(dy, x, w, bias=bias, **a)
    rx, rw, rb = R.conv2d_backward(*f64(dy, x, w), bias=bias, **a)
    # the weight gradient sums N*OH*OW products: scale the tolerance with that length
    n_sum = y.shape[0] * y.shape[2] * y.shape[3]
    rt, at = tol("conv2d_backward", np.float32)
    assert_close(gx, rx, rt, at, what=f"{what} grad_x")
    assert_close(gw, rw, rt, at * max(1.0, np.sqrt(n_sum) / 8), what=f"{what} grad_weight")
    if bias:
        assert_close(gb, rb, rt, at * max(1.0, np.sqrt(n_sum) / 8), what=f"{what} grad_bias")


@st.composite
def blocked_cases(draw):
    """Shapes whose tiles all have remainders; strides, dilations, paddings, groups."""
    G = draw(st.sampled_from([1, 1, 1, 2, 3]))
    cpg = draw(st.integers(1, 13))
    ocpg = draw(st.integers(1, 21))  # crosses the 6-row blocks and 16-lane channel vectors
    KH, KW = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    sh, sw = draw(st.sampled_from([1, 1, 2, 3])), draw(st.sampled_from([1, 1, 2, 3]))
    dh, dw = draw(st.sampled_from([1, 1, 2])), draw(st.sampled_from([1, 1, 2]))
    ph = draw(st.integers(0, KH))  # beyond "same" too: padding wider than half the kernel
    pw = draw(st.integers(0, KW))
    H = draw(st.integers(max(1, dh * (KH - 1) + 1 - 2 * ph), 21))
    W = draw(st.integers(max(1, dw * (KW - 1) + 1 - 2 * pw), 21))
    N = draw(st.integers(1, 3))
    return case(N, cpg * G, ocpg * G, H, W, KH, KW, (sh, sw), (ph, pw), (dh, dw), G)


@pytest.mark.parametrize("isa_name", ISAS)
@settings(max_examples=25)
@given(c=blocked_cases(), seed=st.integers(0, 2**32 - 1), bias=st.booleans())
def test_random_shapes_every_isa(isa_name, c, seed, bias):
    with isa(isa_name):
        run_and_check(c, np.random.default_rng(seed), bias, what=f"{isa_name} {c}")


@st.composite
def winograd_cases(draw):
    """3x3 stride-1 shapes Winograd takes (padding 1 or 2 on the width), odd sizes included."""
    C, OC = draw(st.integers(1, 20)), draw(st.integers(1, 20))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(1, 2))
    H = draw(st.integers(max(1, 3 - 2 * ph), 19))
    W = draw(st.integers(1, 19))
    return case(draw(st.integers(1, 4)), C, OC, H, W, 3, 3, padding=(ph, pw))


@pytest.mark.parametrize("isa_name", [i for i in ISAS if i != "scalar"])
@pytest.mark.parametrize("algo", ["winograd", "direct"])
@settings(max_examples=20)
@given(c=winograd_cases(), seed=st.integers(0, 2**32 - 1))
def test_forced_algorithm(isa_name, algo, c, seed):
    """The same 3x3 shapes through Winograd (even with few channels) and through the flat GEMM
    and direct weight gradient."""
    with isa(isa_name), env(DEEPKERN_CONV_ALGO=algo):
        run_and_check(c, np.random.default_rng(seed), what=f"{isa_name} {algo} {c}")


# Shapes chosen by hand: the suite's layer shapes (smaller batch), and the edges.
EDGES = {
    "suite c2 (same 3x3)": case(2, 32, 64, 32, 32, 3, 3, padding=(1, 1)),
    "suite c4 (8x8 planes)": case(3, 128, 256, 8, 8, 3, 3, padding=(1, 1)),
    "suite c5 (1x1)": case(2, 64, 64, 16, 16, 1, 1),
    "suite c6 (stride 2)": case(2, 64, 64, 32, 32, 3, 3, stride=(2, 2), padding=(1, 1)),
    "suite c1 (3 channels)": case(2, 3, 32, 32, 32, 3, 3, padding=(1, 1)),
    "batch 1, 1x1 image, 3x3 padded": case(1, 5, 7, 1, 1, 3, 3, padding=(1, 1)),
    "1x1 image, 1x1 kernel": case(4, 17, 33, 1, 1, 1, 1),
    "1x1 kernel with padding (wider output)": case(2, 5, 9, 6, 7, 1, 1, padding=(2, 1)),
    "valid 3x3 (narrower output)": case(2, 6, 10, 9, 13, 3, 3),
    "7x7 planes (49 pixels: vector tails)": case(3, 16, 19, 7, 7, 3, 3, padding=(1, 1)),
    "stride 2 odd sizes": case(2, 7, 13, 15, 9, 3, 3, stride=(2, 2), padding=(1, 1)),
    # rows of 48 and 70: whole-vector phase copies (plain loads/stores) then a masked tail
    "stride 2 wide rows": case(2, 5, 7, 5, 48, 3, 3, stride=(2, 2), padding=(1, 1)),
    "stride 2 wider odd rows": case(1, 3, 4, 4, 70, 3, 3, stride=(2, 2), padding=(0, 1)),
    "stride 3 with dilation 2": case(2, 4, 6, 17, 19, 3, 3, stride=(3, 3), padding=(2, 2), dilation=(2, 2)),
    "stride larger than the kernel": case(2, 3, 5, 11, 12, 2, 2, stride=(3, 3)),
    "asymmetric stride and kernel": case(2, 5, 8, 12, 10, 3, 5, stride=(1, 2), padding=(1, 2)),
    "dilation 2 same": case(2, 8, 11, 14, 14, 3, 3, padding=(2, 2), dilation=(2, 2)),
    "groups 4": case(2, 16, 24, 10, 10, 3, 3, padding=(1, 1), groups=4),
    "depthwise": case(2, 20, 20, 11, 13, 3, 3, padding=(1, 1), groups=20),
    "depthwise multiplier 2, stride 2": case(2, 6, 12, 11, 13, 3, 3, stride=(2, 2), padding=(1, 1), groups=6),
    "5x5 pad 2": case(2, 9, 14, 12, 12, 5, 5, padding=(2, 2)),
    "wide plane (several pixel tiles, row tail)": case(1, 3, 8, 5, 70, 3, 3, padding=(1, 1)),
    "many output channels (channel-vector tails)": case(2, 4, 70, 6, 6, 3, 3, padding=(1, 1)),
    # planes of fewer pixels than a micro-kernel tile: tiles span several samples
    "digits conv2 (4x4 planes, tiles across samples)": case(9, 16, 32, 4, 4, 3, 3, padding=(1, 1)),
    "digits conv1 (8x8 planes, 1 channel)": case(5, 1, 16, 8, 8, 3, 3, padding=(1, 1)),
    "5x5 planes (tiles across samples, vector tails)": case(5, 6, 7, 5, 5, 3, 3, padding=(1, 1)),
    "2x2 planes (8 samples per tile on AVX2)": case(11, 5, 9, 2, 2, 3, 3, padding=(1, 1)),
}


@pytest.mark.parametrize("isa_name", [i for i in ISAS if i != "scalar"])
@pytest.mark.parametrize("name", list(EDGES))
def test_edge_shapes(name, isa_name):
    with isa(isa_name):
        run_and_check(EDGES[name], np.random.default_rng(7), what=f"{isa_name} {name}")


@pytest.mark.parametrize("kc", [1, 5, 64])
@pytest.mark.parametrize("name", ["suite c2 (same 3x3)", "stride 2 odd sizes", "valid 3x3 (narrower output)",
                                  "digits conv2 (4x4 planes, tiles across samples)",
                                  "5x5 planes (tiles across samples, vector tails)"])
def test_k_blocks(name, kc):
    """The reduction split into K blocks (the output tile reloaded and accumulated), and the
    weight gradient summed one sample at a time (N = 19: several samples per chunk)."""
    with env(DEEPKERN_CONV_KC=kc):
        run_and_check(dict(EDGES[name], N=19), np.random.default_rng(3), what=f"kc={kc} {name}")


@pytest.mark.parametrize("name", ["suite c4 (8x8 planes)", "stride 2 odd sizes", "groups 4", "depthwise",
                                  "many output channels (channel-vector tails)",
                                  "digits conv2 (4x4 planes, tiles across samples)",
                                  "5x5 planes (tiles across samples, vector tails)"])
def test_thread_count_invariance(name):
    """Bitwise identical results on 1, 2, 3 and 5 threads, including the weight-gradient sums."""
    c = dict(EDGES[name], N=7)
    rng = np.random.default_rng(11)
    K = c["C"] // c["groups"] * c["KH"] * c["KW"]
    x = rng.standard_normal((c["N"], c["C"], c["H"], c["W"])).astype(np.float32)
    w = (rng.standard_normal((c["OC"], c["C"] // c["groups"], c["KH"], c["KW"])) / np.sqrt(K)).astype(np.float32)
    b = rng.standard_normal(c["OC"]).astype(np.float32)
    a = dict(stride=c["stride"], padding=c["padding"], dilation=c["dilation"], groups=c["groups"])

    def run():
        y = F.conv2d(x, w, b, **a)
        return (y,) + F.conv2d_backward(y, x, w, bias=True, **a)

    with num_threads(1):
        ref = run()
    for t in (2, 3, 5):
        with num_threads(t):
            got = run()
        for g, r, k in zip(got, ref, ("y", "grad_x", "grad_weight", "grad_bias")):
            assert_bitwise(g, r, f"{name}: {k} on {t} threads")


def test_fast_path_differs_from_portable_only_by_rounding():
    """Sanity check of the test itself: the fast and the portable paths really are different
    code (their float32 results differ in the last bits) yet both match the reference."""
    if len(ISAS) < 2:
        pytest.skip("no SIMD variant on this CPU")
    c = EDGES["suite c2 (same 3x3)"]
    rng = np.random.default_rng(5)
    x = rng.standard_normal((c["N"], c["C"], c["H"], c["W"])).astype(np.float32)
    w = rng.standard_normal((c["OC"], c["C"], 3, 3)).astype(np.float32)
    with isa(ISAS[0]):
        fast = F.conv2d(x, w, None, padding=1)
    with isa("scalar"):
        slow = F.conv2d(x, w, None, padding=1)
    assert not np.array_equal(fast, slow)
    np.testing.assert_allclose(fast, slow, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("isa_name", ISAS)
@pytest.mark.parametrize("name", ["suite c2 (same 3x3)", "suite c5 (1x1)", "stride 2 odd sizes", "depthwise",
                                  "valid 3x3 (narrower output)", "7x7 planes (49 pixels: vector tails)"])
def test_conv2d_relu_is_relu_of_conv2d_bitwise(isa_name, name):
    """The fused extension: the ReLU in the stores (flat GEMM, Winograd) or as a pass after
    (depthwise, portable) gives relu(conv2d(...)) bit for bit, NaN included; unbatched input;
    the numpy backend composes the two."""
    c = EDGES[name]
    rng = np.random.default_rng(17)
    x = rng.standard_normal((c["N"], c["C"], c["H"], c["W"])).astype(np.float32)
    x.reshape(-1)[::97] = np.nan
    w = rng.standard_normal((c["OC"], c["C"] // c["groups"], c["KH"], c["KW"])).astype(np.float32)
    b = rng.standard_normal(c["OC"]).astype(np.float32)
    a = dict(stride=c["stride"], padding=c["padding"], dilation=c["dilation"], groups=c["groups"])
    with isa(isa_name):
        fused = F.conv2d_relu(x, w, b, **a)
        want = F.relu(F.conv2d(x, w, b, **a))
        assert_bitwise(fused, want, f"{isa_name} {name}")
        assert_bitwise(F.conv2d_relu(x[0], w, None, **a), F.relu(F.conv2d(x[0], w, None, **a)), "unbatched")
    with deepkern.use_backend("numpy"):
        ref = F.conv2d_relu(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), **a)
    assert_close(fused, ref, *tol("conv2d", np.float32), what="vs the numpy composition")


def test_conv2d_relu_validates_like_conv2d():
    x, w = np.zeros((1, 3, 5, 5), np.float32), np.zeros((2, 3, 3, 3), np.float32)
    with pytest.raises(ValueError, match="conv2d_relu: bias must have shape"):
        F.conv2d_relu(x, w, np.zeros(3, np.float32))
    with pytest.raises(TypeError):
        F.conv2d_relu(x, w.astype(np.float64))


SPLIT_EVERYTHING = """
import numpy as np, deepkern, deepkern.functional as F
from deepkern import _C
rng = np.random.default_rng(2)
out = {}
for isa in %(isas)r:
    _C.set_isa(isa)
    for (N, C, OC, H, W) in ((9, 16, 32, 4, 4), (7, 1, 16, 8, 8), (5, 6, 7, 5, 5), (11, 5, 9, 2, 2)):
        x = rng.standard_normal((N, C, H, W)).astype(np.float32)
        w = rng.standard_normal((OC, C, 3, 3)).astype(np.float32)
        b = rng.standard_normal(OC).astype(np.float32)
        res = []
        for t in (1, 2, 3, 5):
            deepkern.set_num_threads(t)
            y = F.conv2d(x, w, b, padding=1)
            res.append((y,) + F.conv2d_backward(y, x, w, padding=1, bias=True))
        for r in res[1:]:
            for a, e in zip(r, res[0]):
                assert a.tobytes() == e.tobytes(), (isa, N, C, OC, H, W)
print("ok")
"""


def test_thread_count_invariance_of_small_jobs():
    """Small jobs run on one thread (csrc/cpu/threading.h); with DEEPKERN_PARALLEL_MIN_NS=0 they
    are split like large ones, and the results must not change with the thread count."""
    run_with_every_job_split(SPLIT_EVERYTHING)
