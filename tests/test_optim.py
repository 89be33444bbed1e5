"""deepkern.optim: every optimizer and option against the NumPy reference, step by step and over
whole trajectories, in float32 and float64; param groups, lr changes, skipped parameters,
odd and empty shapes, non-contiguous parameters, thread counts and SIMD levels."""

from __future__ import annotations

import numpy as np
import pytest

import deepkern
from deepkern import _C, optim
from deepkern.nn import Parameter
from optim_cases import (ALL, CASE_IDS, REFERENCE, SHAPES, grad_stream, make, make_params, ref_options)

from conftest import assert_bitwise, assert_close, num_threads

# D3: one step from identical state (float32 kernel vs float64 reference of the same inputs),
# and whole trajectories (the kernel's rounding accumulates; the reference stays in float64).
# The step's atol is scaled by the tensor's largest input magnitude: a buffer like
# momentum * b + g rounds at the scale of its terms, which may cancel to a small result.
STEP_TOL = {np.float32: (1e-6, 2e-7), np.float64: (1e-12, 1e-14)}
TRAJ_TOL = {np.float32: (1e-4, 1e-6), np.float64: (1e-10, 1e-12)}


def _state64(st):
    return {k: (np.array(v, dtype=np.float64) if isinstance(v, np.ndarray) else v) for k, v in st.items()}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,cfg", ALL, ids=CASE_IDS)
def test_matches_reference(name, cfg, dtype):
    """30 steps: each step against the reference started from the kernel's own state (tight),
    and the whole trajectory against an independent float64 reference run (looser)."""
    steps = 30
    rng = np.random.default_rng(7)
    params = make_params(rng, SHAPES, dtype)
    opt = make(name, params, **cfg)
    group = opt.param_groups[0]
    traj = [(p.data.astype(np.float64), {}) for p in params]
    rtol, atol = STEP_TOL[dtype]
    for step, grads in enumerate(grad_stream(1, SHAPES, dtype, steps)):
        before = [(p.data.astype(np.float64), _state64(opt.state.get(p, {}))) for p in params]
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        for k, (p, g) in enumerate(zip(params, grads)):
            want_p, want_st = REFERENCE[name](before[k][0], g.astype(np.float64), before[k][1],
                                              **ref_options(opt, group))
            scale = max([1.0] + [float(np.abs(a).max(initial=0)) for a in
                                 [before[k][0], g] + [v for v in before[k][1].values() if isinstance(v, np.ndarray)]])
            assert_close(p.data, want_p, rtol, atol * scale, f"step {step} param {k}")
            st = opt.state.get(p, {})
            assert set(st) == set(want_st), f"state keys {set(st)} != {set(want_st)}"
            for key, v in want_st.items():
                if key == "step":
                    assert st[key] == v
                else:
                    assert st[key].dtype == dtype and st[key].shape == p.data.shape
                    assert_close(st[key], v, rtol, atol * scale, f"step {step} state {key} of param {k}")
            traj[k] = REFERENCE[name](traj[k][0], g.astype(np.float64), traj[k][1], **ref_options(opt, group))
    rtol, atol = TRAJ_TOL[dtype]
    for k, p in enumerate(params):
        assert_close(p.data, traj[k][0], rtol, atol, f"trajectory param {k}")


@pytest.mark.parametrize("name", ["SGD", "Adagrad", "Adadelta", "RMSprop", "Adam", "AdamW"])
def test_defaults_match_torch_signatures(name):
    """Defaults and option names as in shared/API.md (PyTorch's)."""
    want = {
        "SGD": dict(lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, maximize=False),
        "Adagrad": dict(lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=1e-10, maximize=False),
        "Adadelta": dict(lr=1.0, rho=0.9, eps=1e-6, weight_decay=0, maximize=False),
        "RMSprop": dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False, maximize=False),
        "Adam": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, maximize=False),
        "AdamW": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, maximize=False),
    }[name]
    opt = make(name, [Parameter(np.zeros(3, np.float32))])
    assert opt.defaults == want
    g = opt.param_groups[0]
    assert {k: g[k] for k in want} == want


def test_momentum_and_nag_are_sgd():
    """Momentum == SGD(momentum=0.9), NAG == SGD(momentum=0.9, nesterov=True), bitwise."""
    rng = np.random.default_rng(3)
    init = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    for cls, kw in ((optim.Momentum, dict(momentum=0.9)), (optim.NAG, dict(momentum=0.9, nesterov=True))):
        a = [Parameter(x.copy()) for x in init]
        b = [Parameter(x.copy()) for x in init]
        oa, ob = cls(a, lr=0.1, weight_decay=0.01), optim.SGD(b, lr=0.1, weight_decay=0.01, **kw)
        assert oa.param_groups[0]["nesterov"] == kw.get("nesterov", False)
        for grads in grad_stream(2, SHAPES, np.float32, 5):
            for pa, pb, g in zip(a, b, grads):
                pa.grad, pb.grad = g, g.copy()
            oa.step()
            ob.step()
        for pa, pb in zip(a, b):
            assert_bitwise(pa.data, pb.data)


@pytest.mark.parametrize("name", ["SGD", "Adagrad", "Adadelta", "RMSprop", "Adam", "AdamW"])
def test_maximize_is_descent_on_negated_grad(name):
    rng = np.random.default_rng(4)
    init = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    a = [Parameter(x.copy()) for x in init]
    b = [Parameter(x.copy()) for x in init]
    extra = {"momentum": 0.9} if name in ("SGD", "RMSprop") else {}
    oa, ob = make(name, a, maximize=True, **extra), make(name, b, **extra)
    for grads in grad_stream(5, SHAPES, np.float32, 4):
        for pa, pb, g in zip(a, b, grads):
            pa.grad, pb.grad = g, -g
        oa.step()
        ob.step()
    for pa, pb in zip(a, b):
        assert_bitwise(pa.data, pb.data)


def test_param_groups_and_lr_changes():
    """Two groups with their own options; lr (and momentum) changed between steps."""
    rng = np.random.default_rng(5)
    params = make_params(rng, [(5,), (6, 2), (3,)], np.float64)
    opt = optim.SGD([{"params": params[:2], "momentum": 0.9, "lr": 0.1},
                     {"params": params[2:], "weight_decay": 0.5}], lr=0.01, nesterov=False)
    g0, g1 = opt.param_groups
    assert (g0["lr"], g0["momentum"], g0["weight_decay"]) == (0.1, 0.9, 0)
    assert (g1["lr"], g1["momentum"], g1["weight_decay"]) == (0.01, 0, 0.5)
    ref = [(p.data.copy(), {}) for p in params]
    for step, grads in enumerate(grad_stream(6, [p.shape for p in params], np.float64, 6)):
        if step == 3:
            g0["lr"], g1["lr"], g1["momentum"] = 0.02, 0.3, 0.5  # the schedule changes mid-run
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        for k, (p, g) in enumerate(zip(params, grads)):
            group = g0 if k < 2 else g1
            ref[k] = optim.reference.sgd(ref[k][0], g, ref[k][1], **ref_options(opt, group))
            assert_close(p.data, ref[k][0], 1e-12, 1e-14, f"step {step} param {k}")


def test_skips_none_grads_and_frozen_params():
    rng = np.random.default_rng(6)
    a, b, c = make_params(rng, [(4,), (4,), (4,)], np.float32)
    opt = optim.Adam([a, b, c], lr=0.1)
    a.grad = rng.standard_normal(4).astype(np.float32)
    c.grad = rng.standard_normal(4).astype(np.float32)
    c.requires_grad = False  # deliberately differs from PyTorch: frozen means untouched
    b0, c0, ga = b.data.copy(), c.data.copy(), a.grad.copy()
    opt.step()
    assert_bitwise(b.data, b0)
    assert_bitwise(c.data, c0)
    assert_bitwise(a.grad, ga)  # step() never writes into .grad
    assert b not in opt.state and c not in opt.state and opt.state[a]["step"] == 1
    b.grad = np.ones(4, np.float32)
    opt.step()
    assert opt.state[a]["step"] == 2 and opt.state[b]["step"] == 1  # per-parameter step counts


def test_zero_size_and_scalar_params():
    params = [Parameter(np.full((), 2.0, np.float32)), Parameter(np.zeros((3, 0), np.float32))]
    for p in params:
        p.grad = np.ones(p.shape, np.float32)
    opt = optim.SGD(params, lr=0.5, momentum=0.9)
    opt.step()
    assert params[0].data == np.float32(1.5)
    assert opt.state[params[1]]["momentum_buffer"].shape == (3, 0)


def test_large_odd_parameter():
    """278 011 elements (odd, several vector widths and thread parts) against the reference."""
    rng = np.random.default_rng(8)
    p = Parameter(rng.standard_normal(278_011).astype(np.float32))
    opt = optim.Adam([p], lr=1e-2, amsgrad=True)
    ref = (p.data.astype(np.float64), {})
    for _ in range(3):
        p.grad = rng.standard_normal(p.shape).astype(np.float32)
        opt.step()
        ref = optim.reference.adam(ref[0], p.grad.astype(np.float64), ref[1], **ref_options(opt, opt.param_groups[0]))
    assert_close(p.data, ref[0], 1e-5, 1e-6)


@pytest.mark.parametrize("name,cfg", [("SGD", {"momentum": 0.9, "nesterov": True}), ("Adagrad", {}),
                                      ("Adadelta", {}), ("RMSprop", {"centered": True, "momentum": 0.9}),
                                      ("Adam", {"amsgrad": True}), ("AdamW", {})])
def test_thread_count_invariance(name, cfg):
    """Bitwise identical parameters and state for 1, 2, 3 and 8 threads (8 oversubscribes)."""
    shapes = [(70_001,), (3,), (65_536,), (40_000,), (0,)]
    results = []
    for nt in (1, 2, 3, 8):
        rng = np.random.default_rng(9)
        params = make_params(rng, shapes, np.float32)
        opt = make(name, params, **cfg)
        with num_threads(nt):
            for grads in grad_stream(10, shapes, np.float32, 3):
                for p, g in zip(params, grads):
                    p.grad = g
                opt.step()
        results.append((params, opt))
    for params, opt in results[1:]:
        for p, p1 in zip(params, results[0][0]):
            assert_bitwise(p.data, p1.data)
            for k, v in opt.state[p].items():
                assert_bitwise(np.asarray(v), np.asarray(results[0][1].state[p1][k]), k)


@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512"])
def test_every_simd_level(isa):
    """Each compiled SIMD variant (that this CPU runs) against the reference."""
    prev = _C.get_isa()
    try:
        got = _C.set_isa(isa)
        if got != isa:
            pytest.skip(f"this CPU/build cannot run {isa}")
        for name, cfg in [("SGD", {"momentum": 0.9}), ("Adagrad", {}), ("Adadelta", {}),
                          ("RMSprop", {"centered": True, "momentum": 0.5}), ("Adam", {"amsgrad": True}),
                          ("AdamW", {})]:
            for dtype in (np.float32, np.float64):
                rng = np.random.default_rng(11)
                params = make_params(rng, SHAPES, dtype)
                opt = make(name, params, **cfg)
                ref = [(p.data.astype(np.float64), {}) for p in params]
                for grads in grad_stream(12, SHAPES, dtype, 5):
                    for k, (p, g) in enumerate(zip(params, grads)):
                        p.grad = g
                        ref[k] = REFERENCE[name](ref[k][0], g.astype(np.float64), ref[k][1],
                                                 **ref_options(opt, opt.param_groups[0]))
                    opt.step()
                for k, p in enumerate(params):
                    assert_close(p.data, ref[k][0], *TRAJ_TOL[dtype], f"{isa} {name} {np.dtype(dtype).name}")
    finally:
        _C.set_isa(prev)


def test_noncontiguous_param_and_grad_updated_in_place():
    """PyTorch trains on randn(10, 5, 2)[..., 0]: the caller's view is updated in place (copied in
    and written back), with the same values as a contiguous parameter."""
    rng = np.random.default_rng(13)
    base = rng.standard_normal((10, 5, 2)).astype(np.float32)
    view = base[..., 0]
    assert not view.flags.c_contiguous
    p = Parameter(np.zeros((10, 5), np.float32))
    p.data = view  # Parameter() itself copies to C order; .data may be reassigned to any view
    q = Parameter(view.copy())
    other = base[..., 1].copy()
    opt_p, opt_q = optim.Adam([p], lr=0.1), optim.Adam([q], lr=0.1)
    for _ in range(3):
        g = rng.standard_normal((5, 10)).astype(np.float32).T  # a non-contiguous gradient
        p.grad, q.grad = g, np.ascontiguousarray(g)
        opt_p.step()
        opt_q.step()
    assert p.data is view
    assert_bitwise(base[..., 0], q.data)
    assert_bitwise(base[..., 1], other)  # the interleaved neighbours are untouched


def test_mixed_dtypes_in_one_optimizer():
    rng = np.random.default_rng(14)
    a = Parameter(rng.standard_normal(9).astype(np.float32))
    b = Parameter(rng.standard_normal(9).astype(np.float64))
    opt = optim.RMSprop([a, b], lr=0.01, momentum=0.9)
    ra, rb = (a.data.astype(np.float64), {}), (b.data.copy(), {})
    for grads in grad_stream(15, [(9,), (9,)], np.float64, 4):
        a.grad, b.grad = grads[0].astype(np.float32), grads[1]
        opt.step()
        ra = optim.reference.rmsprop(ra[0], a.grad.astype(np.float64), ra[1], **ref_options(opt, opt.param_groups[0]))
        rb = optim.reference.rmsprop(rb[0], b.grad, rb[1], **ref_options(opt, opt.param_groups[0]))
    assert a.data.dtype == np.float32 and opt.state[a]["square_avg"].dtype == np.float32
    assert_close(a.data, ra[0], *TRAJ_TOL[np.float32])
    assert_close(b.data, rb[0], *TRAJ_TOL[np.float64])


def test_closure_and_zero_grad():
    p = Parameter(np.ones(3, np.float32))
    opt = optim.SGD([p], lr=0.5)
    calls = []

    def closure():
        calls.append(1)
        p.grad = np.full(3, 2.0, np.float32)
        return 7.0

    assert opt.step(closure) == 7.0 and calls == [1]
    assert_bitwise(p.data, np.zeros(3, np.float32))
    opt.zero_grad(set_to_none=False)
    assert_bitwise(p.grad, np.zeros(3, np.float32))
    opt.zero_grad()
    assert p.grad is None


def test_option_toggled_later_creates_missing_state():
    """Switching on momentum / centered / amsgrad mid-run starts those buffers at zero."""
    p = Parameter(np.ones(4, np.float64))
    opt = optim.RMSprop([p])
    p.grad = np.ones(4)
    opt.step()
    opt.param_groups[0].update(momentum=0.5, centered=True)
    opt.step()
    assert {"momentum_buffer", "grad_avg"} <= set(opt.state[p])
    q = Parameter(np.ones(4, np.float64))
    opt = optim.Adam([q])
    q.grad = np.ones(4)
    opt.step()
    opt.param_groups[0]["amsgrad"] = True
    opt.step()
    assert "max_exp_avg_sq" in opt.state[q]


def test_numpy_backend_runs_the_reference():
    """Inside use_backend('numpy') the step is the NumPy reference (float64 math)."""
    rng = np.random.default_rng(16)
    init = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    a = [Parameter(x.copy()) for x in init]
    b = [Parameter(x.copy()) for x in init]
    oa, ob = optim.Adam(a, amsgrad=True), optim.Adam(b, amsgrad=True)
    for grads in grad_stream(17, SHAPES, np.float32, 5):
        for pa, pb, g in zip(a, b, grads):
            pa.grad, pb.grad = g, g
        with deepkern.use_backend("numpy"):
            oa.step()
        ob.step()
    for pa, pb in zip(a, b):
        assert_close(pa.data, pb.data, 1e-5, 1e-6)
        assert set(oa.state[pa]) == set(ob.state[pb]) if pa.size else True


def test_repr_lists_group_options():
    r = repr(optim.Adam([Parameter(np.zeros(2, np.float32))], lr=0.5))
    assert r.startswith("Adam (") and "lr: 0.5" in r and "betas: (0.9, 0.999)" in r


def test_interleaved_views_of_one_buffer_are_not_aliases():
    """Two parameters that are interleaved views of one array share byte ranges but no
    element: accepted (the overlap check confirms with np.shares_memory), both updated."""
    base = np.arange(20, dtype=np.float64).reshape(10, 2)
    a, b = Parameter(np.zeros(10)), Parameter(np.zeros(10))
    a.data, b.data = base[:, 0], base[:, 1]
    a.grad, b.grad = np.ones(10), np.full(10, 2.0)
    optim.SGD([a, b], lr=0.5).step()
    assert_bitwise(base[:, 0], np.arange(0, 20, 2, dtype=np.float64) - 0.5)
    assert_bitwise(base[:, 1], np.arange(1, 20, 2, dtype=np.float64) - 1.0)
