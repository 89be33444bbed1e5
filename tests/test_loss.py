"""CrossEntropyLoss and deepkern.nn.functional.cross_entropy: against a plainly written
float64 reference, finite differences, PyTorch (when installed), and on bad input."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import deepkern.nn as nn
import deepkern.nn.functional as NF
from conftest import assert_close


def ref_loss(z, t, weight=None, ignore_index=-100, reduction="mean", eps=0.0):
    """PyTorch's definition, one row at a time in float64 (no shared code with deepkern)."""
    z = np.asarray(z, np.float64)
    N, C = z.shape
    w = np.ones(C) if weight is None else np.asarray(weight, np.float64)
    losses, denom = [], 0.0
    for n in range(N):
        m = max(z[n])
        logp = [z[n, c] - m - math.log(sum(math.exp(z[n, k] - m) for k in range(C))) for c in range(C)]
        if np.asarray(t).dtype.kind == "f":                          # probabilities
            q = [(1 - eps) * t[n, c] + eps / C for c in range(C)]
            losses.append(-sum(w[c] * q[c] * logp[c] for c in range(C)))
            denom += 1
            continue
        y = int(t[n])
        if y == ignore_index:
            losses.append(0.0)
            continue
        nll = -w[y] * logp[y]
        smooth = -sum(w[c] * logp[c] for c in range(C))
        losses.append((1 - eps) * nll + eps / C * smooth)
        denom += w[y]
    if reduction == "none":
        return np.array(losses)
    return sum(losses) if reduction == "sum" else sum(losses) / denom


def numeric_grad(f, z, h=1e-6):
    g = np.zeros_like(z)
    for i in np.ndindex(z.shape):
        old = z[i]
        z[i] = old + h
        fp = f(z)
        z[i] = old - h
        fm = f(z)
        z[i] = old
        g[i] = (fp - fm) / (2 * h)
    return g


CASES = [dict(), dict(eps=0.1), dict(eps=0.3, reduction="sum"), dict(weight=True),
         dict(weight=True, eps=0.2), dict(ignore=True), dict(ignore=True, weight=True, eps=0.1),
         dict(reduction="none", eps=0.1), dict(probs=True), dict(probs=True, eps=0.2, weight=True)]


def make_case(rng, case, dtype=np.float64, N=7, C=5):
    z = (rng.standard_normal((N, C)) * 3).astype(dtype)
    if case.get("probs"):
        t = rng.random((N, C))
        t = (t / t.sum(1, keepdims=True)).astype(dtype)
    else:
        t = rng.integers(0, C, N)
        if case.get("ignore"):
            t[[1, 4]] = -100
    w = (rng.random(C) + 0.5).astype(dtype) if case.get("weight") else None
    kw = dict(weight=w, reduction=case.get("reduction", "mean"), label_smoothing=case.get("eps", 0.0))
    return z, t, kw


@pytest.mark.parametrize("case", CASES)
def test_matches_reference_and_finite_differences(case, rng):
    z, t, kw = make_case(rng, case)
    crit = nn.CrossEntropyLoss(**kw)
    loss = crit(z, t)
    want = ref_loss(z, t, kw["weight"], reduction=kw["reduction"], eps=kw["label_smoothing"])
    if kw["reduction"] == "none":
        assert_close(loss, want, 1e-12, 1e-12)
        go = rng.standard_normal(len(z))
        grad = crit.backward(go)
        f = lambda zz: float(np.dot(ref_loss(zz, t, kw["weight"], reduction="none", eps=kw["label_smoothing"]), go))  # noqa: E731
    else:
        assert isinstance(loss, float)
        assert abs(loss - want) <= 1e-12 * abs(want)
        grad = crit.backward()
        f = lambda zz: ref_loss(zz, t, kw["weight"], reduction=kw["reduction"], eps=kw["label_smoothing"])  # noqa: E731
    assert grad.shape == z.shape and grad.dtype == z.dtype
    assert_close(grad, numeric_grad(f, z.copy()), 1e-6, 1e-9)
    np.testing.assert_array_equal(grad, NF.cross_entropy_backward(z, t, **kw, grad_output=go)
                                  if kw["reduction"] == "none" else NF.cross_entropy_backward(z, t, **kw))


def test_label_smoothing_by_hand():
    # C = 2, logits equal: p = (1/2, 1/2); target 0 with eps = 0.2 -> q = (0.9, 0.1)
    crit = nn.CrossEntropyLoss(label_smoothing=0.2)
    assert abs(crit(np.zeros((1, 2)), np.array([0])) - math.log(2)) < 1e-15
    np.testing.assert_allclose(crit.backward(), [[0.5 - 0.9, 0.5 - 0.1]], rtol=1e-15)
    # eps = 1: the target is ignored, only the uniform distribution remains
    z = np.array([[2.0, -1.0, 0.5]])
    full = nn.CrossEntropyLoss(label_smoothing=1.0)
    assert abs(full(z, np.array([0])) - full(z, np.array([2]))) < 1e-15


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stable_for_huge_logits(dtype, rng):
    z = (rng.standard_normal((16, 10)) * 1e4).astype(dtype)
    z[0, 3] = 3e4 if dtype == np.float32 else 1e300
    t = rng.integers(0, 10, 16)
    crit = nn.CrossEntropyLoss(label_smoothing=0.1)
    with np.errstate(all="raise", under="ignore"):
        loss = crit(z, t)
        g = crit.backward()
    want = ref_loss(z.astype(np.float64), t, eps=0.1)
    assert math.isfinite(loss) and abs(loss - want) <= 1e-6 * want
    assert np.isfinite(g).all()
    np.testing.assert_allclose(g.sum(axis=1), 0, atol=1e-6)           # rows of p - q sum to 0


def test_float32_matches_float64(rng):
    z = (rng.standard_normal((64, 10)) * 4).astype(np.float32)
    t = rng.integers(0, 10, 64)
    c32, c64 = nn.CrossEntropyLoss(label_smoothing=0.1), nn.CrossEntropyLoss(label_smoothing=0.1)
    l32, l64 = c32(z, t), c64(z.astype(np.float64), t)
    assert abs(l32 - l64) <= 1e-6 * l64
    assert_close(c32.backward(), c64.backward(), 1e-5, 1e-8)


def test_reduction_and_grad_output_scaling(rng):
    z, t = rng.standard_normal((6, 4)), rng.integers(0, 4, 6)
    mean, total = nn.CrossEntropyLoss(), nn.CrossEntropyLoss(reduction="sum")
    assert abs(total(z, t) - 6 * mean(z, t)) < 1e-12
    np.testing.assert_allclose(total.backward(), 6 * mean.backward(), rtol=1e-14)
    np.testing.assert_allclose(mean.backward(2.5), 2.5 * mean.backward(), rtol=1e-14)


def test_all_rows_ignored_gives_nan_like_pytorch():
    crit = nn.CrossEntropyLoss()
    assert math.isnan(crit(np.zeros((2, 3)), np.array([-100, -100])))


@pytest.mark.parametrize("args,err,match", [
    ((np.zeros((2, 3)), np.array([0, 3])), ValueError, "Target 3 is out of bounds"),
    ((np.zeros((2, 3)), np.array([-1, 0])), ValueError, "Target -1 is out of bounds"),
    ((np.zeros((2, 3)), np.array([0.0, 1.0])), TypeError, "integer class indices"),
    ((np.zeros((2, 3)), np.array([0, 1, 2])), ValueError, r"shape \(2,\)"),
    ((np.zeros((2, 3)), np.zeros((2, 3), np.float32)), TypeError, "float32"),
    ((np.zeros((2, 3, 4)), np.array([0, 1])), ValueError, r"\(N, C\)"),
    ((np.zeros((2, 3), np.int64), np.array([0, 1])), TypeError, "int64"),
    (([[0.0, 1.0]], np.array([0])), TypeError, "list"),
    ((np.zeros((2, 0)), np.array([0, 1])), ValueError, "no classes"),
])
def test_bad_inputs(args, err, match):
    with pytest.raises(err, match=match):
        nn.CrossEntropyLoss()(*args)


def test_bad_options():
    with pytest.raises(ValueError, match="label_smoothing must be between"):
        nn.CrossEntropyLoss(label_smoothing=1.5)
    with pytest.raises(ValueError, match="not a valid value for reduction"):
        nn.CrossEntropyLoss(reduction="avg")
    with pytest.raises(RuntimeError, match="before forward"):
        nn.CrossEntropyLoss().backward()
    with pytest.raises(TypeError, match="weight is float32"):
        nn.CrossEntropyLoss(weight=np.ones(3, np.float32))(np.zeros((2, 3)), np.array([0, 1]))
    crit = nn.CrossEntropyLoss(reduction="none")
    crit(np.zeros((2, 3)), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"grad_output must have shape \(2,\)"):
        crit.backward(np.ones(3))


# ---------------------------------------------------------------------------- PyTorch

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES)
def test_matches_pytorch(case, dtype, rng):
    torch = pytest.importorskip("torch")
    z, t, kw = make_case(rng, case, dtype, N=9, C=6)
    tz = torch.tensor(z, requires_grad=True)
    tt = torch.from_numpy(t)
    tw = None if kw["weight"] is None else torch.from_numpy(kw["weight"])
    tl = torch.nn.CrossEntropyLoss(weight=tw, reduction=kw["reduction"], label_smoothing=kw["label_smoothing"])(tz, tt)
    crit = nn.CrossEntropyLoss(**kw)
    loss = crit(z, t)
    rtol, atol = (2e-6, 1e-6) if dtype == np.float32 else (1e-12, 1e-13)
    assert_close(loss, tl.detach().numpy(), rtol, atol, "loss")
    go = rng.standard_normal(len(z)).astype(dtype) if kw["reduction"] == "none" else None
    tl.backward(None if go is None else torch.from_numpy(go))
    assert_close(crit.backward(go), tz.grad.numpy(), rtol * 5, atol, "grad")


@given(st.integers(1, 6), st.integers(1, 5), st.floats(0.0, 1.0), st.booleans(), st.booleans(),
       st.sampled_from(["mean", "sum"]), st.integers(0, 2**32 - 1))
def test_random_cases_match_reference(N, C, eps, weighted, ignore, reduction, seed):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((N, C)) * 5
    t = rng.integers(0, C, N)
    if ignore and N > 1:
        t[0] = -100
    w = rng.random(C) + 0.1 if weighted else None
    crit = nn.CrossEntropyLoss(w, reduction=reduction, label_smoothing=eps)
    loss = crit(z, t)
    want = ref_loss(z, t, w, reduction=reduction, eps=eps)
    assert abs(loss - want) <= 1e-12 * max(1.0, abs(want))
    f = lambda zz: ref_loss(zz, t, w, reduction=reduction, eps=eps)  # noqa: E731
    assert_close(crit.backward(), numeric_grad(f, z.copy()), 1e-6, 1e-8)


# ---- the cpu backend's fused kernel (csrc/cpu/loss.cpp) against the NumPy path -------------

@given(st.integers(1, 40), st.integers(1, 30), st.sampled_from([0.0, 0.1, 1.0]),
       st.sampled_from(["mean", "sum"]), st.sampled_from([np.float32, np.float64]),
       st.sampled_from([np.int64, np.int32, np.uint8]), st.integers(0, 2**32 - 1))
def test_fused_cpu_kernel_matches_numpy_path(N, C, eps, reduction, dtype, ydtype, seed):
    import deepkern
    rng = np.random.default_rng(seed)
    z = (rng.standard_normal((N, C)) * 5).astype(dtype)
    y = rng.integers(0, C, N).astype(ydtype)
    go = float(rng.uniform(0.5, 2.0))
    assert NF._forward_fused(z, y, None, reduction, eps) is not None   # the kernel is what runs
    loss = NF.cross_entropy(z, y, reduction=reduction, label_smoothing=eps)
    g = NF.cross_entropy_backward(z, y, reduction=reduction, label_smoothing=eps, grad_output=go)
    with deepkern.use_backend("numpy"):
        assert NF._forward_fused(z, y, None, reduction, eps) is None
        loss_np = NF.cross_entropy(z, y, reduction=reduction, label_smoothing=eps)
        g_np = NF.cross_entropy_backward(z, y, reduction=reduction, label_smoothing=eps, grad_output=go)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert g.dtype == dtype and g.shape == z.shape
    assert math.isclose(loss, loss_np, rel_tol=tol, abs_tol=tol)
    assert math.isclose(loss, ref_loss(z, y, reduction=reduction, eps=eps), rel_tol=10 * tol, abs_tol=10 * tol)
    assert_close(g, g_np, rtol=tol, atol=tol * max(1.0, go))


def test_fused_kernel_propagates_nan_and_falls_back_for_ignored_or_bad_targets():
    z = np.zeros((3, 4), np.float32)
    z[1, 2] = np.nan
    loss = NF.cross_entropy(z, np.array([0, 1, 2]))
    assert math.isnan(loss)
    g = NF.cross_entropy_backward(z, np.array([0, 1, 2]))
    assert np.isnan(g[1]).all() and np.isfinite(g[[0, 2]]).all()
    # an ignored row (-100) is the general path's business: the kernel writes nothing, says None
    y = np.array([0, -100, 3])
    assert NF._forward_fused(np.ones((3, 4), np.float32), y, None, "mean", 0.0) is None
    zf = np.ones((3, 4), np.float32)
    assert math.isclose(NF.cross_entropy(zf, y), math.log(4), rel_tol=1e-6)
    with pytest.raises(ValueError, match="out of bounds"):
        NF.cross_entropy(zf, np.array([0, 1, 4]))


@pytest.mark.parametrize("args, err", [
    ((np.empty((2, 3), np.float32), np.ones((2, 3), np.float32), np.zeros(2, np.int32)), TypeError),
    ((np.empty((2, 3), np.float64), np.ones((2, 3), np.float32), np.zeros(2, np.int64)), TypeError),
    ((np.empty((3, 2), np.float32), np.ones((2, 3), np.float32), np.zeros(2, np.int64)), ValueError),
    ((np.empty((2, 3), np.float32), np.ones((2, 3), np.float32), np.zeros(3, np.int64)), ValueError),
    ((np.empty((0, 3), np.float32), np.ones((0, 3), np.float32), np.zeros(0, np.int64)), ValueError),
    ((np.empty(6, np.float32), np.ones(6, np.float32), np.zeros(2, np.int64)), ValueError),
    ((np.empty((2, 3), np.float32)[:, :2], np.ones((2, 2), np.float32), np.zeros(2, np.int64)), ValueError),
])
def test_fused_binding_rejects_bad_arrays(args, err):
    from deepkern import _C
    with pytest.raises(err):
        _C.cross_entropy_indices(*args, 0.0, 1.0)
    with pytest.raises(ValueError):
        _C.cross_entropy_indices(np.empty((2, 3), np.float32), np.ones((2, 3), np.float32),
                                 np.zeros(2, np.int64), float("nan"), 1.0)
