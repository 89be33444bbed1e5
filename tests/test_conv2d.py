"""conv2d: the cpu kernels against the NumPy reference (evaluated in float64)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import deepkern.functional as F
import deepkern.reference as R
from conftest import assert_bitwise, assert_close, f64, noncontiguous
from tolerances import tol


@st.composite
def conv_cases(draw):
    G = draw(st.sampled_from([1, 1, 2, 3]))
    cpg, ocpg = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    KH, KW = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    H = draw(st.integers(max(1, dh * (KH - 1) + 1 - 2 * ph), 12))
    W = draw(st.integers(max(1, dw * (KW - 1) + 1 - 2 * pw), 12))
    N = draw(st.integers(1, 3))
    return dict(N=N, C=cpg * G, H=H, W=W, OC=ocpg * G, KH=KH, KW=KW, stride=(sh, sw),
                padding=(ph, pw), dilation=(dh, dw), groups=G,
                dtype=draw(st.sampled_from([np.float32, np.float64])),
                bias=draw(st.booleans()), noncontig=draw(st.booleans()))


def make(c, rng, integer=False):
    K = c["C"] // c["groups"] * c["KH"] * c["KW"]
    if integer:  # small integers: every partial sum is exact in float32
        x = rng.integers(-4, 5, (c["N"], c["C"], c["H"], c["W"])).astype(c["dtype"])
        w = rng.integers(-2, 3, (c["OC"], c["C"] // c["groups"], c["KH"], c["KW"])).astype(c["dtype"])
        b = rng.integers(-3, 4, c["OC"]).astype(c["dtype"])
    else:
        x = rng.standard_normal((c["N"], c["C"], c["H"], c["W"])).astype(c["dtype"])
        w = (rng.standard_normal((c["OC"], c["C"] // c["groups"], c["KH"], c["KW"])) / np.sqrt(K)).astype(c["dtype"])
        b = rng.standard_normal(c["OC"]).astype(c["dtype"])
    return x, w, (b if c["bias"] else None)


def args(c):
    return dict(stride=c["stride"], padding=c["padding"], dilation=c["dilation"], groups=c["groups"])


@given(conv_cases(), st.integers(0, 2**32 - 1))
def test_forward_matches_reference(c, seed):
    rng = np.random.default_rng(seed)
    x, w, b = make(c, rng)
    xin, win = (noncontiguous(x), noncontiguous(w)) if c["noncontig"] else (x, w)
    y = F.conv2d(xin, win, b, **args(c))
    want = R.conv2d(*f64(x, w), f64(b) if b is not None else None, **args(c))
    assert y.dtype == x.dtype and y.flags.c_contiguous
    assert_close(y, want, *tol("conv2d", x.dtype), what="conv2d y")


@given(conv_cases(), st.integers(0, 2**32 - 1))
def test_backward_matches_reference(c, seed):
    rng = np.random.default_rng(seed)
    x, w, _ = make(c, rng)
    y = F.conv2d(x, w, None, **args(c))
    dy = rng.standard_normal(y.shape).astype(c["dtype"])
    dyin = noncontiguous(dy) if c["noncontig"] else dy
    gx, gw, gb = F.conv2d_backward(dyin, x, w, bias=c["bias"], **args(c))
    rx, rw, rb = R.conv2d_backward(*f64(dy, x, w), bias=c["bias"], **args(c))
    rt = tol("conv2d_backward", x.dtype)
    assert_close(gx, rx, *rt, what="grad_x")
    assert_close(gw, rw, *rt, what="grad_weight")
    if c["bias"]:
        assert_close(gb, rb, *rt, what="grad_bias")
    else:
        assert gb is None


@given(conv_cases(), st.integers(0, 2**32 - 1))
def test_exact_integer_inputs_give_bitwise_results(c, seed):
    """Small-integer inputs make every float sum exact: any indexing slip shows as a bit flip."""
    c = dict(c, bias=True)
    rng = np.random.default_rng(seed)
    x, w, b = make(c, rng, integer=True)
    y = F.conv2d(x, w, b, **args(c))
    assert_bitwise(y, R.conv2d(*f64(x, w, b), **args(c)).astype(x.dtype), "y")
    dy = rng.integers(-3, 4, y.shape).astype(x.dtype)
    gx, gw, gb = F.conv2d_backward(dy, x, w, **args(c))
    rx, rw, rb = R.conv2d_backward(*f64(dy, x, w), **args(c))
    assert_bitwise(gx, rx.astype(x.dtype), "grad_x")
    assert_bitwise(gw, rw.astype(x.dtype), "grad_weight")
    assert_bitwise(gb, rb.astype(x.dtype), "grad_bias")


SAMPLES = [
    # (N, C, H, W, OC, K, stride, padding, dilation, groups)
    (1, 1, 1, 1, 1, 1, 1, 0, 1, 1),        # 1x1 image, 1x1 kernel
    (1, 3, 1, 1, 5, 3, 1, 1, 1, 1),        # 1x1 image, padding makes the 3x3 fit
    (2, 3, 7, 5, 4, 3, 2, 1, 1, 1),        # odd sizes, stride 2
    (2, 4, 8, 8, 4, 3, 1, 1, 1, 4),        # depthwise
    (3, 6, 9, 11, 9, 2, 1, 0, 2, 3),       # groups 3, dilation 2
    (2, 16, 8, 8, 8, 1, 1, 0, 1, 1),       # pointwise (no im2col path)
    (2, 16, 8, 8, 8, 1, 2, 0, 1, 1),       # 1x1 with stride
    (1, 5, 13, 13, 7, 5, 3, 2, 1, 1),      # 5x5 stride 3
    (4, 17, 6, 6, 33, 3, 1, 1, 1, 1),      # sizes that are not multiples of a vector
]


@pytest.mark.parametrize("case", SAMPLES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_samples(case, dtype, rng):
    N, C, H, W, OC, K, s, p, d, g = case
    c = dict(N=N, C=C, H=H, W=W, OC=OC, KH=K, KW=K, stride=s, padding=p, dilation=d, groups=g,
             dtype=dtype, bias=True)
    x, w, b = make(c, rng)
    y = F.conv2d(x, w, b, s, p, d, g)
    assert_close(y, R.conv2d(*f64(x, w, b), s, p, d, g), *tol("conv2d", dtype))
    dy = rng.standard_normal(y.shape).astype(dtype)
    for got, want, name in zip(F.conv2d_backward(dy, x, w, s, p, d, g),
                               R.conv2d_backward(*f64(dy, x, w), s, p, d, g), ("gx", "gw", "gb")):
        assert_close(got, want, *tol("conv2d_backward", dtype), what=name)


def test_unbatched_input(rng):
    x = rng.standard_normal((3, 6, 6)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    y = F.conv2d(x, w, padding=1)
    assert y.shape == (4, 6, 6)
    assert_close(y, F.conv2d(x[None], w, padding=1)[0], 0, 0)
    gx, gw, gb = F.conv2d_backward(np.ones_like(y), x, w, padding=1)
    assert gx.shape == x.shape and gw.shape == w.shape and gb.shape == (4,)


def test_empty_batch():
    x = np.zeros((0, 3, 5, 5), np.float32)
    w = np.ones((2, 3, 3, 3), np.float32)
    y = F.conv2d(x, w, np.ones(2, np.float32))
    assert y.shape == (0, 2, 3, 3)
    gx, gw, gb = F.conv2d_backward(y, x, w)
    assert gx.shape == x.shape
    assert np.array_equal(gw, np.zeros_like(w)) and np.array_equal(gb, np.zeros(2, np.float32))


def test_nan_stays_in_its_receptive_field():
    x = np.ones((1, 1, 7, 7), np.float32)
    x[0, 0, 3, 3] = np.nan
    y = F.conv2d(x, np.ones((1, 1, 3, 3), np.float32), padding=1)
    nan = np.isnan(y[0, 0])
    assert nan[2:5, 2:5].all() and nan.sum() == 9


def test_inputs_are_not_modified(rng):
    from conftest import assert_unchanged
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    with assert_unchanged(x, w, b):
        y = F.conv2d(x, w, b, padding=1)
        F.conv2d_backward(y, x, w, padding=1)


@pytest.mark.parametrize("N", [0, 1])
def test_huge_stride_needs_no_stride_sized_memory(N):
    """Regression (deep fuzz, OOM-killed CI): the phase split kept a table with one entry per
    stride phase, 2**31 entries for this legal stride."""
    x = np.ones((N, 2, 3, 3), np.float32)
    w = np.ones((2, 2, 1, 1), np.float32)
    y = F.conv2d(x, w, stride=(1, 2**31 - 1))
    assert y.shape == (N, 2, 3, 1)
    assert np.array_equal(y, R.conv2d(x, w, stride=(1, 2**31 - 1)))
    gx, gw, _ = F.conv2d_backward(y, x, w, stride=(1, 2**31 - 1))
    assert gx.shape == x.shape and gw.shape == w.shape


def test_hostile_stride_padding_dilation_stay_small_and_correct():
    """Legal but hostile arguments: every pass must use memory proportional to the real work.

    With stride = padding = dilation = 2**30, tap (kh, kw) of output (oh, ow) reads input pixel
    ((oh + kh - 1) * 2**30, (ow + kw - 1) * 2**30): only pixel (0, 0) is ever read, once per
    output, exactly as a stride-1, padding-1 convolution of the 1x1 image x[0, 0] would."""
    x = np.arange(1, 5, dtype=np.float32).reshape(1, 1, 2, 2)
    w = np.arange(1, 5, dtype=np.float32).reshape(1, 1, 2, 2)
    kw = dict(stride=2**30, padding=2**30, dilation=2**30)
    x00 = f64(x[:, :, :1, :1])
    y = F.conv2d(x, w, **kw)
    assert_close(y, R.conv2d(x00, f64(w), padding=1), 0, 0)
    g = np.arange(y.size, dtype=np.float32).reshape(y.shape)
    gx, gw, gb = F.conv2d_backward(g, x, w, **kw)
    rx, rw, rb = R.conv2d_backward(f64(g), x00, f64(w), padding=1)
    want_gx = np.zeros((1, 1, 2, 2))
    want_gx[0, 0, 0, 0] = rx[0, 0, 0, 0]
    assert_close(gx, want_gx, 0, 0)
    assert_close(gw, rw, 0, 0)
    assert_close(gb, rb, 0, 0)
