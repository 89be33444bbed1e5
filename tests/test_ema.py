"""deepkern.optim.EMA: the fused average against the reference, copy_to, state_dict, errors,
thread counts, and the EMA fused into an optimizer step (bitwise equal to step + update)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from deepkern import optim
from deepkern.nn import Parameter
from optim_cases import ALL, CASE_IDS, SHAPES, grad_stream, make, make_params

from conftest import assert_bitwise, assert_close, num_threads


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_update_matches_reference(dtype):
    rng = np.random.default_rng(1)
    params = make_params(rng, SHAPES, dtype)
    ema = optim.EMA(params, decay=0.9)
    ref = [p.data.astype(np.float64) for p in params]
    for _ in range(10):
        for k, p in enumerate(params):
            p.data[...] = rng.standard_normal(p.shape)
            ref[k] = optim.reference.ema(ref[k], p.data.astype(np.float64), 0.9)
        ema.update()
    tol = (1e-5, 1e-6) if dtype == np.float32 else (1e-13, 1e-14)
    for avg, r, p in zip(ema.shadow, ref, params):
        assert avg.dtype == dtype
        assert_close(avg, r, *tol)
    assert ema.num_updates == 10


def test_starts_as_a_copy_and_edge_decays():
    p = Parameter(np.arange(5, dtype=np.float32))
    e0, e1 = optim.EMA([p], decay=0.0), optim.EMA([p], decay=1.0)
    assert not np.shares_memory(e0.shadow[0], p.data)
    p.data += np.float32(3.5)
    e0.update()
    e1.update()
    assert_bitwise(e0.shadow[0], p.data)  # decay 0: the average is the parameter
    assert_bitwise(e1.shadow[0], np.arange(5, dtype=np.float32))  # decay 1: frozen


def test_copy_to_and_state_dict_round_trip():
    rng = np.random.default_rng(2)
    params = make_params(rng, [(3, 4), (5,)], np.float32)
    ema = optim.EMA(params, decay=0.5)
    for _ in range(3):
        for p in params:
            p.data[...] = rng.standard_normal(p.shape)
        ema.update()
    buf = io.BytesIO()
    optim.save_state(ema.state_dict(), buf)
    buf.seek(0)
    twin = optim.EMA([Parameter(p.data.copy()) for p in params], decay=0.99)
    twin.load_state_dict(optim.load_state(buf))
    assert twin.decay == 0.5 and twin.num_updates == 3
    for p, t in zip(params, twin.params):
        t.data[...] = p.data
    ema.update()
    twin.update()
    for a, b in zip(ema.shadow, twin.shadow):
        assert_bitwise(a, b)
    targets = [np.zeros((3, 4), np.float64), Parameter(np.zeros(5, np.float32))]
    ema.copy_to(targets)
    assert_close(targets[0], ema.shadow[0], 0, 0)
    assert_bitwise(targets[1].data, ema.shadow[1])
    ema.copy_to()
    assert_bitwise(params[0].data, ema.shadow[0])


def test_errors_change_nothing():
    p, q = Parameter(np.ones(3, np.float32)), Parameter(np.ones(2, np.float32))
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="Invalid decay value"):
            optim.EMA([p], decay=bad)
    with pytest.raises(TypeError, match="decay must be a real number"):
        optim.EMA([p], decay="0.9")
    with pytest.raises(TypeError, match="float16"):
        optim.EMA([Parameter(np.ones(2, np.float16))])
    with pytest.raises(ValueError, match="same parameter twice"):
        optim.EMA([p, p])
    ema = optim.EMA([p, q])
    ro = np.zeros(2, np.float32)
    ro.setflags(write=False)
    dst = np.full(3, 7, np.float32)
    with pytest.raises(ValueError, match="read-only"):
        ema.copy_to([dst, ro])
    assert_bitwise(dst, np.full(3, 7, np.float32))  # nothing written before the error
    with pytest.raises(ValueError, match="tracks 2"):
        ema.copy_to([dst])
    with pytest.raises(ValueError, match="shape"):
        ema.copy_to([dst, np.zeros(3, np.float32)])
    snap = [a.copy() for a in ema.shadow]
    for bad, exc in [({"decay": 0.5, "num_updates": 1, "shadow": [np.zeros(3)]}, ValueError),
                     ({"decay": 0.5, "num_updates": 1, "shadow": [np.zeros(3), np.zeros(4)]}, ValueError),
                     ({"decay": 0.5, "num_updates": -1, "shadow": [np.zeros(3), np.zeros(2)]}, ValueError),
                     ({"decay": 0.5, "num_updates": 1, "shadow": [np.zeros(3), np.zeros(2, int)]}, TypeError),
                     ({"decay": 2.0, "num_updates": 1, "shadow": [np.zeros(3), np.zeros(2)]}, ValueError),
                     ({"decay": 0.5}, ValueError)]:
        with pytest.raises(exc):
            ema.load_state_dict(bad)
    for a, b in zip(ema.shadow, snap):
        assert_bitwise(a, b)
    q.data = np.ones(4, np.float32)  # a tracked parameter changed shape: update refuses
    with pytest.raises(ValueError, match="now has shape"):
        ema.update()
    for a, b in zip(ema.shadow, snap):
        assert_bitwise(a, b)


def test_thread_count_invariance_and_noncontiguous():
    rng = np.random.default_rng(3)
    base = rng.standard_normal((300_001, 2)).astype(np.float32)
    orig = base[:, 0].copy()
    outs = []
    for nt in (1, 2, 3, 8):
        p = Parameter(np.zeros(1, np.float32))
        p.data = base[:, 0]  # a strided view
        ema = optim.EMA([p, Parameter(base[:, 1].copy())], decay=0.7)
        with num_threads(nt):
            for s in range(3):
                p.data[...] = base[:, 1] * (s + 1)
                ema.update()
        outs.append(ema.shadow)
        p.data[...] = orig
    for o in outs[1:]:
        for a, b in zip(o, outs[0]):
            assert_bitwise(a, b)


@pytest.mark.parametrize("name,cfg", ALL, ids=CASE_IDS)
def test_fused_into_the_step_is_bitwise_step_then_update(name, cfg):
    """fused_step(opt, ema=ema) == opt.step(); ema.update(), also for EMA-tracked parameters the
    optimizer does not step (no grad) and stepped ones the EMA does not track."""
    rng = np.random.default_rng(4)
    init = [np.asarray(rng.standard_normal(s), dtype=np.float32) for s in SHAPES]
    a = [Parameter(x.copy()) for x in init]
    b = [Parameter(x.copy()) for x in init]
    oa, ob = make(name, a, **cfg), make(name, b, **cfg)
    ea, eb = optim.EMA(a[1:], decay=0.9), optim.EMA(b[1:], decay=0.9)
    for step, grads in enumerate(grad_stream(5, SHAPES, np.float32, 6)):
        for k, (pa, pb, g) in enumerate(zip(a, b, grads)):
            skip = k == 2 and step % 2 == 0  # sometimes no gradient: not stepped, still averaged
            pa.grad, pb.grad = (None, None) if skip else (g, g.copy())
        assert optim.fused_step(oa, ema=ea) is None
        ob.step()
        eb.update()
        for pa, pb in zip(a, b):
            assert_bitwise(pa.data, pb.data)
        for x, y in zip(ea.shadow, eb.shadow):
            assert_bitwise(x, y)
    assert ea.num_updates == eb.num_updates == 6


def test_numpy_backend_matches_cpu():
    import deepkern
    rng = np.random.default_rng(6)
    params = make_params(rng, SHAPES, np.float32)
    a, b = optim.EMA(params, 0.9), optim.EMA(params, 0.9)
    for _ in range(3):
        for p in params:
            p.data[...] = rng.standard_normal(p.shape)
        with deepkern.use_backend("numpy"):
            a.update()
        b.update()
    for x, y in zip(a.shadow, b.shadow):
        assert_close(x, y, 1e-6, 1e-7)
