"""deepkern.nn.utils.clip_grad_norm_ and deepkern.optim.fused_step's clipping: the global norm
against the reference (and PyTorch), bitwise determinism for any thread count, the in-place
scale, errors, and the fused clip + step + EMA against the three separate calls."""

from __future__ import annotations

import math

import numpy as np
import pytest

import deepkern
from deepkern import optim
from deepkern.nn import Parameter
from deepkern.nn.utils import clip_grad_norm_, total_norm
from optim_cases import ALL, CASE_IDS, SHAPES, grad_stream, make

from conftest import assert_bitwise, assert_close, num_threads

NORMS = [2.0, 1.0, math.inf, -math.inf, 0.0, 0.5, 3.0]


def grads_params(rng, shapes, dtype=np.float32, scale=1.0):
    ps = [Parameter(np.zeros(s, dtype)) for s in shapes]
    for p in ps:
        p.grad = np.asarray(np.asarray(rng.standard_normal(p.shape)) * scale, dtype=dtype)
    return ps


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("norm_type", NORMS)
def test_matches_reference(norm_type, dtype):
    rng = np.random.default_rng(1)
    ps = grads_params(rng, SHAPES + [(70_000,)], dtype)
    ps[1].grad[...] = 0  # a zero for norm 0 and -inf
    before = [p.grad.copy() for p in ps]
    want = optim.reference.total_norm(before, norm_type)
    got = clip_grad_norm_(ps, max_norm=0.5, norm_type=norm_type)
    assert isinstance(got, float)
    assert_close(got, want, 1e-12, 0)
    coef = optim.reference.clip_coef(want, 0.5)
    for p, g in zip(ps, before):
        assert_close(p.grad, g * coef, 1e-6 if dtype == np.float32 else 1e-14, 0)


def test_no_clip_below_max_norm_and_edge_cases():
    rng = np.random.default_rng(2)
    ps = grads_params(rng, [(10,), (3,)], scale=1e-3)
    before = [p.grad.copy() for p in ps]
    total = clip_grad_norm_(ps, 1.0)
    assert total < 1.0
    for p, g in zip(ps, before):
        assert_bitwise(p.grad, g)  # multiplied by exactly 1
    assert clip_grad_norm_([Parameter(np.zeros(3, np.float32))], 1.0) == 0.0  # no grads at all
    single = Parameter(np.zeros(2, np.float32))
    single.grad = np.array([3.0, 4.0], np.float32)
    assert clip_grad_norm_(single, 1.0) == 5.0  # one Parameter, not a list
    assert_close(single.grad, [0.6, 0.8], 1e-6, 0)
    mixed = [Parameter(np.zeros(1, np.float32)), Parameter(np.zeros(1, np.float64))]
    mixed[0].grad, mixed[1].grad = np.array([3.0], np.float32), np.array([4.0])
    assert clip_grad_norm_(mixed, 10.0) == 5.0


def test_deterministic_for_any_thread_count():
    rng = np.random.default_rng(3)
    ps = grads_params(rng, [(300_001,), (65_536,), (7,), (140_000,)])
    totals = []
    for nt in (1, 2, 3, 8):
        with num_threads(nt):
            totals.append([total_norm([p.grad for p in ps], n) for n in NORMS])
    for t in totals[1:]:
        assert np.array_equal(np.array(t), np.array(totals[0]))


def test_noncontiguous_grads_scaled_in_place():
    rng = np.random.default_rng(4)
    base = rng.standard_normal((50, 2)).astype(np.float32)
    p = Parameter(np.zeros(50, np.float32))
    p.grad = base[:, 0]
    other = base[:, 1].copy()
    want = optim.reference.total_norm([base[:, 0].copy()])
    got = clip_grad_norm_([p], 0.1)
    assert_close(got, want, 1e-12, 0)
    assert p.grad.base is base
    assert_close(base[:, 0], base[:, 0] * 0 + p.grad, 0, 0)
    assert_close(np.linalg.norm(p.grad.astype(np.float64)), 0.1, 1e-5, 0)
    assert_bitwise(base[:, 1], other)


def test_nonfinite():
    p = Parameter(np.zeros(3, np.float32))
    p.grad = np.array([1.0, np.inf, 2.0], np.float32)
    g0 = p.grad.copy()
    with pytest.raises(RuntimeError, match="non-finite"):
        clip_grad_norm_([p], 1.0, error_if_nonfinite=True)
    assert_bitwise(p.grad, g0)  # nothing scaled
    p.grad = np.array([1.0, np.nan, 2.0], np.float32)
    assert math.isnan(clip_grad_norm_([p], 1.0))
    assert np.isnan(p.grad).all()  # scaled by the NaN coefficient, as PyTorch does


@pytest.mark.parametrize("call,exc,match", [
    (lambda ps: clip_grad_norm_(ps, -1.0), ValueError, "max_norm must be >= 0"),
    (lambda ps: clip_grad_norm_(ps, float("nan")), ValueError, "max_norm"),
    (lambda ps: clip_grad_norm_(ps, "1"), TypeError, "max_norm must be a real number"),
    (lambda ps: clip_grad_norm_(ps, 1.0, norm_type="two"), TypeError, "norm_type"),
    (lambda ps: clip_grad_norm_(ps, 1.0, norm_type=float("nan")), ValueError, "norm_type"),
    (lambda ps: clip_grad_norm_([np.zeros(2)], 1.0), TypeError, "takes Parameters"),
])
def test_bad_arguments(call, exc, match):
    rng = np.random.default_rng(5)
    ps = grads_params(rng, [(4,)])
    with pytest.raises(exc, match=match):
        call(ps)


def test_read_only_grad_nothing_scaled():
    rng = np.random.default_rng(6)
    ps = grads_params(rng, [(4,), (4,)], scale=10.0)
    ps[1].grad.setflags(write=False)
    g0 = ps[0].grad.copy()
    with pytest.raises(ValueError, match="read-only"):
        clip_grad_norm_(ps, 1.0)
    assert_bitwise(ps[0].grad, g0)


# ------------------------------------------------------------------------ fused_step

@pytest.mark.parametrize("name,cfg", ALL, ids=CASE_IDS)
def test_fused_step_equals_clip_step_update(name, cfg):
    """fused_step(opt, max_norm, ema) == clip_grad_norm_ + opt.step() + ema.update(), bitwise,
    with the gradients left unscaled by the fused version."""
    rng = np.random.default_rng(7)
    init = [np.asarray(rng.standard_normal(s), dtype=np.float32) for s in SHAPES]
    a = [Parameter(x.copy()) for x in init]
    b = [Parameter(x.copy()) for x in init]
    oa, ob = make(name, a, **cfg), make(name, b, **cfg)
    ea, eb = optim.EMA(a, decay=0.99), optim.EMA(b, decay=0.99)
    for step, grads in enumerate(grad_stream(8, SHAPES, np.float32, 5)):
        for pa, pb, g in zip(a, b, grads):
            pa.grad, pb.grad = np.asarray(g * (step + 1)), np.asarray(g * (step + 1))
        kept = [p.grad.copy() for p in a]
        max_norm = 2.0 if step != 2 else 1e9  # clipping on most steps, not on step 2
        ta = optim.fused_step(oa, max_norm=max_norm, ema=ea)
        tb = clip_grad_norm_(b, max_norm)
        ob.step()
        eb.update()
        assert ta == tb
        for pa, pb, g in zip(a, b, kept):
            assert_bitwise(pa.data, pb.data)
            assert_bitwise(pa.grad, g)
        for x, y in zip(ea.shadow, eb.shadow):
            assert_bitwise(x, y)


def test_fused_step_errors_write_nothing():
    rng = np.random.default_rng(9)
    ps = grads_params(rng, [(4,), (3,)])
    opt = optim.Adam(ps)
    with pytest.raises(TypeError, match="deepkern.optim optimizer"):
        optim.fused_step(object())
    with pytest.raises(TypeError, match="EMA"):
        optim.fused_step(opt, ema=[1])
    with pytest.raises(ValueError, match="max_norm"):
        optim.fused_step(opt, max_norm=-1)
    ps[1].grad[0] = np.inf
    before = [p.data.copy() for p in ps]
    with pytest.raises(RuntimeError, match="non-finite"):
        optim.fused_step(opt, max_norm=1.0, error_if_nonfinite=True)
    for p, d in zip(ps, before):
        assert_bitwise(p.data, d)
    assert not opt.state


def test_fused_step_numpy_backend():
    rng = np.random.default_rng(10)
    init = [np.asarray(rng.standard_normal(s), dtype=np.float32) for s in SHAPES]
    a = [Parameter(x.copy()) for x in init]
    b = [Parameter(x.copy()) for x in init]
    oa, ob = optim.AdamW(a), optim.AdamW(b)
    ea, eb = optim.EMA(a), optim.EMA(b)
    for grads in grad_stream(11, SHAPES, np.float32, 3):
        for pa, pb, g in zip(a, b, grads):
            pa.grad, pb.grad = g, g.copy()
        with deepkern.use_backend("numpy"):
            ta = optim.fused_step(oa, max_norm=1.0, ema=ea)
        tb = optim.fused_step(ob, max_norm=1.0, ema=eb)
        assert_close(ta, tb, 1e-12, 0)
    for pa, pb in zip(a, b):
        assert_close(pa.data, pb.data, 1e-5, 1e-6)
    for x, y in zip(ea.shadow, eb.shadow):
        assert_close(x, y, 1e-5, 1e-6)


def test_like_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(12)
    for norm_type in (2.0, 1.0, math.inf, 3.0):
        ps = grads_params(rng, [s for s in SHAPES if s != (0,)] + [(1000,)])  # torch: no inf-norm of empties
        tps = [torch.nn.Parameter(torch.zeros(p.shape)) for p in ps]
        for p, tp in zip(ps, tps):
            tp.grad = torch.from_numpy(p.grad.copy())
        got = clip_grad_norm_(ps, 1.0, norm_type=norm_type)
        want = torch.nn.utils.clip_grad_norm_(tps, 1.0, norm_type=norm_type)
        assert_close(got, float(want), 1e-6, 0)
        for p, tp in zip(ps, tps):
            assert_close(p.grad, tp.grad.numpy(), 1e-5, 1e-8)


def test_clip_numpy_backend_matches_cpu():
    rng = np.random.default_rng(13)
    a = grads_params(rng, SHAPES + [(1000,)])
    b = [Parameter(np.zeros(p.shape, np.float32)) for p in a]
    for pa, pb in zip(a, b):
        pb.grad = pa.grad.copy()
    with deepkern.use_backend("numpy"):
        ta = clip_grad_norm_(a, 1.0)
    tb = clip_grad_norm_(b, 1.0)
    assert_close(ta, tb, 1e-12, 0)
    for pa, pb in zip(a, b):
        assert_close(pa.grad, pb.grad, 1e-6, 1e-9)
