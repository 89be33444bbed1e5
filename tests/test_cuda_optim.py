"""The CUDA optimizers, EMA, gradient scaling and norms (csrc/cuda/optim.cu) against the CPU's.

Three levels, each runnable without a GPU:

1. the kernels' own code on the host emulator (cuda_host/emulate.cpp) against the CPU kernels
   of deepkern.optim, step for step: the emulator is swapped in for ``_kernel.optim_step``, so
   it receives exactly the rows a real step computes. Bitwise where the CPU runs its FMA builds
   (AVX2 / AVX-512, csrc/cpu/optim_vec.h); a few ulp against the portable build.
2. the launch planner's edge cases: a zero-size tensor last, tensors larger than a chunk, more
   tensors (or distinct rows) than one launch table holds, odd sizes.
3. the Python dispatch (deepkern.optim, EMA, clip_grad_norm_, fused_step, deepkern.nn) on CUDA
   arrays, with a NumPy-backed CuPy and an emulator-backed _cuda (cuda_host/fake_cupy.py).

On a GPU, test_gpu_* repeat the comparisons with CuPy on the real kernels (skipped otherwise,
with the reason).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import deepkern
from deepkern import _C, optim
from deepkern.nn import Parameter
from deepkern.nn.utils import clip_grad_norm_, total_norm
from deepkern.optim import _kernel

from cuda_host.emulator import emulator
from optim_cases import ALL, CASE_IDS, SHAPES, grad_stream, make

F32 = np.float32
CHUNK = 16384  # csrc/cuda/optim.cu kChunk
MAX_TENSORS = 36  # kMaxTensors
MAX_ROWS = 8  # kMaxRows
# The CPU's optimizer kernels fuse multiply-adds only on AVX2/AVX-512: there the CUDA kernels'
# arithmetic is the same, bit for bit. The portable build rounds twice (a few ulp apart).
FMA = deepkern.build_info()["simd"] in ("avx2", "avx512")

# every SHAPES case plus tensors around the chunk size (more than one block per tensor)
CUDA_SHAPES = [s for s in SHAPES if s != (0,)] + [(CHUNK,), (CHUNK + 5,), (2 * CHUNK + 3,), (0,)]


@pytest.fixture(scope="module")
def emu():
    return emulator()


def assert_same(got, want, what):
    got, want = np.asarray(got), np.asarray(want)
    if FMA:
        assert got.tobytes() == want.tobytes(), f"{what}: not bitwise equal (max |d| {np.max(np.abs(got - want))})"
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=what)


class OnEmulator:
    """Within the block, deepkern.optim's CPU kernel calls go to the emulator instead (same
    arguments: lists of NumPy arrays and the float64 rows)."""

    def __init__(self, monkeypatch, emu):
        self.launches = []

        def step(kind, params, grads, states, emas, rows):
            emu.optim_step(_kernel.KINDS[kind], params, grads, states, emas, _kernel.rows_to_matrix(kind, rows))
            self.launches.append(emu.last_launches)

        monkeypatch.setattr(_kernel, "optim_step", step)
        monkeypatch.setattr(_kernel, "ema_update", lambda a, x, d: emu.ema_update(list(a), list(x), d))
        monkeypatch.setattr(_C, "multi_scale", lambda xs, s: emu.multi_scale(list(xs), s), raising=False)
        monkeypatch.setattr(_C, "multi_norm_reduce", lambda xs, p: emu.multi_norm_reduce(list(xs), p), raising=False)


def _params(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [Parameter(rng.standard_normal(s).astype(F32)) for s in shapes]


def _state_arrays(opt):
    return [(k, v) for st in opt.state.values() for k, v in sorted(st.items()) if isinstance(v, np.ndarray)]


# ============================================================ 1. every optimizer, step for step

@pytest.mark.parametrize("name, cfg", ALL, ids=CASE_IDS)
def test_step_matches_cpu_step_for_step(name, cfg, emu, monkeypatch):
    ref_params, params = _params(CUDA_SHAPES), _params(CUDA_SHAPES)
    ref, opt = make(name, ref_params, **cfg), make(name, params, **cfg)
    stream = grad_stream(1, CUDA_SHAPES, F32, 4)
    for step, grads in enumerate(stream):
        for p, q, g in zip(ref_params, params, grads):
            p.grad, q.grad = g.copy(), g.copy()
        ref.step()
        with monkeypatch.context() as m:
            OnEmulator(m, emu)
            opt.step()
        for k, (p, q) in enumerate(zip(ref_params, params)):
            assert_same(q.data, p.data, f"step {step}: param {k} {CUDA_SHAPES[k]}")
        for (k1, a), (k2, b) in zip(_state_arrays(opt), _state_arrays(ref)):
            assert k1 == k2
            assert_same(a, b, f"step {step}: state {k1}")


@pytest.mark.parametrize("name, cfg", [("Adam", {"amsgrad": True}), ("SGD", {"momentum": 0.9, "nesterov": True}),
                                       ("RMSprop", {"centered": True, "momentum": 0.5}), ("Adagrad", {}),
                                       ("Adadelta", {})])
@pytest.mark.parametrize("max_norm", [None, 0.5])
def test_fused_clip_step_ema_matches_cpu(name, cfg, max_norm, emu, monkeypatch):
    """fused_step (clip factor applied as grads load, EMA from the new parameter in registers)."""
    shapes = CUDA_SHAPES[:-1]
    ref_params, params = _params(shapes), _params(shapes)
    ref, opt = make(name, ref_params, **cfg), make(name, params, **cfg)
    ref_ema, ema = optim.EMA(ref_params, 0.9), optim.EMA(params, 0.9)
    for grads in grad_stream(2, shapes, F32, 3):
        for p, q, g in zip(ref_params, params, grads):
            p.grad, q.grad = g.copy(), g.copy()
        t_ref = optim.fused_step(ref, max_norm=max_norm, ema=ref_ema)
        with monkeypatch.context() as m:
            OnEmulator(m, emu)
            t = optim.fused_step(opt, max_norm=max_norm, ema=ema)
        if max_norm is not None:
            assert t == pytest.approx(t_ref, rel=1e-12)
        for p, q in zip(ref_params, params):
            assert_same(q.data, p.data, "param")
        for a, b in zip(ema.shadow, ref_ema.shadow):
            assert_same(a, b, "ema")


# ============================================================ 2. the launch planner

def _rows(kind, n, **values):
    return _kernel.rows_to_matrix(kind, [dict(values, grad_scale=1.0)] * n)


def _sgd_on_both(emu, sizes, rows, seed=3):
    """Plain SGD over tensors of `sizes` on the emulator and the CPU; returns the launches."""
    rng = np.random.default_rng(seed)
    ps = [rng.standard_normal(n).astype(F32) for n in sizes]
    gs = [rng.standard_normal(n).astype(F32) for n in sizes]
    qs = [p.copy() for p in ps]
    states = [[None] * 3 for _ in sizes]
    emu.optim_step(_kernel.KINDS["sgd"], qs, gs, states, None, rows)
    _C.optim_step(_kernel.KINDS["sgd"], ps, gs, states, None, rows)
    for k, (p, q) in enumerate(zip(ps, qs)):
        assert_same(q, p, f"tensor {k} of size {sizes[k]}")
    return emu.last_launches


@pytest.mark.parametrize("sizes, launches", [
    ([0], 0),                                        # nothing to do: no launch
    ([5, 0], 1),                                     # a zero-size tensor last
    ([0, 0, 7, 0], 1),                               # empty tensors have no slot anywhere
    ([CHUNK - 1, CHUNK, CHUNK + 1, 1], 1),           # chunk boundaries, one table
    ([3 * CHUNK + 17], 1),                           # one tensor, four blocks
    ([1] * MAX_TENSORS, 1),                          # exactly one full table
    ([1] * (MAX_TENSORS + 1), 2),                    # one more: a second launch
    ([(k * 7919) % 5000 for k in range(100)] + [0], 3),  # odd sizes, several tables (one empty)
])
def test_launch_tables(emu, sizes, launches):
    rows = _rows("sgd", len(sizes), lr=0.1)
    assert _sgd_on_both(emu, sizes, rows) == launches


def test_distinct_rows_start_new_tables(emu):
    """At most MAX_ROWS different rows per table (compared bit for bit); equal rows share one."""
    n = 3 * MAX_ROWS
    lrs = [0.01 * (1 + k // 2) for k in range(n)]  # pairs of tensors share a row
    rows = _kernel.rows_to_matrix("sgd", [dict(lr=lr, grad_scale=1.0) for lr in lrs])
    assert _sgd_on_both(emu, [11] * n, rows) == math.ceil(n / 2 / MAX_ROWS)


def test_unaligned_and_strided_pointers(emu):
    """Arrays starting at any 4-byte offset (the device kernel then takes its scalar path)."""
    rng = np.random.default_rng(4)
    base = rng.standard_normal(1000).astype(F32)
    p, g = base[1:301].copy(), base[301:601]  # g: a view 4 bytes past an alignment
    q = p.copy()
    rows = _rows("sgd", 1, lr=0.5)
    emu.optim_step(_kernel.KINDS["sgd"], [q], [np.ascontiguousarray(g)], [[None] * 3], None, rows)
    _C.optim_step(_kernel.KINDS["sgd"], [p], [np.ascontiguousarray(g)], [[None] * 3], None, rows)
    assert_same(q, p, "unaligned")


# ============================================================ EMA, scale, copy, norms

def test_ema_update_scale_and_copy_match_cpu(emu):
    rng = np.random.default_rng(5)
    sizes = [1, 7, CHUNK + 9, 0, 130]
    xs = [rng.standard_normal(n).astype(F32) for n in sizes]
    avgs = [rng.standard_normal(n).astype(F32) for n in sizes]
    a1, a2 = [a.copy() for a in avgs], [a.copy() for a in avgs]
    emu.ema_update(a1, xs, 0.999)
    _C.ema_update(a2, xs, 0.999)
    for a, b in zip(a1, a2):
        assert_same(a, b, "ema_update")
    emu.multi_scale(a1, 0.37)
    _C.multi_scale(a2, 0.37)
    for a, b in zip(a1, a2):
        assert a.tobytes() == b.tobytes()  # one multiply: bitwise on every build
    dst = [np.zeros(n, F32) for n in sizes]
    emu.multi_copy(dst, xs)
    assert all(d.tobytes() == x.tobytes() for d, x in zip(dst, xs))


@pytest.mark.parametrize("p", [2.0, 1.0, math.inf, -math.inf, 0.0, 3.0, 0.5])
def test_norm_matches_cpu(emu, p):
    rng = np.random.default_rng(6)
    sizes = [1, 0, 33, CHUNK * 2 + 1, 1000] + [17] * 40  # two tables
    xs = [(rng.standard_normal(n) * 3).astype(F32) for n in sizes]
    xs[2][5] = 0.0
    got, want = emu.multi_norm_reduce(xs, p), _C.multi_norm_reduce(xs, p)
    assert emu.last_launches == 2
    if p in (math.inf, -math.inf, 0.0):
        assert got == want  # exact operations: the same number whatever the order
    else:
        assert got == pytest.approx(want, rel=1e-12)  # double sums in another order
    assert emu.multi_norm_reduce(xs, p) == got  # deterministic: the same bits every time


def test_norm_nan_and_empty(emu):
    xs = [np.ones(100, F32), np.array([1.0, np.nan], F32)]
    for p in (2.0, math.inf, -math.inf, 1.0):
        assert math.isnan(emu.multi_norm_reduce(xs, p))
    assert emu.multi_norm_reduce([np.zeros(0, F32)], 2.0) == 0.0
    assert emu.multi_norm_reduce([np.zeros(0, F32)], -math.inf) == math.inf


# ============================================================ 3. the Python dispatch on "CUDA" arrays

@pytest.fixture
def fake(monkeypatch):
    from cuda_host import fake_cupy
    return fake_cupy.install(monkeypatch)


def _dev(cp, params):
    """CUDA copies of Parameters (data and grad)."""
    out = []
    for p in params:
        q = Parameter(cp.asarray(p.data))
        q.grad = None if p.grad is None else cp.asarray(p.grad)
        out.append(q)
    return out


@pytest.mark.parametrize("name, cfg", [("Adam", {}), ("AdamW", {"amsgrad": True}), ("SGD", {"momentum": 0.9}),
                                       ("Adagrad", {"initial_accumulator_value": 0.1}), ("Adadelta", {}),
                                       ("RMSprop", {"centered": True, "momentum": 0.9}), ("NAG", {}),
                                       ("Momentum", {})])
def test_cuda_parameters_step_like_cpu(fake, name, cfg):
    cp = fake[0]
    shapes = [(3, 4), (7,), (0,), (CHUNK + 1,)]
    ref_params = _params(shapes)
    params = _dev(cp, ref_params)
    ref, opt = make(name, ref_params, **cfg), make(name, params, **cfg)
    for grads in grad_stream(7, shapes, F32, 3):
        for p, q, g in zip(ref_params, params, grads):
            p.grad, q.grad = g.copy(), cp.asarray(g)
        ref.step()
        opt.step()
        for p, q in zip(ref_params, params):
            assert isinstance(q.data, cp.ndarray)
            assert_same(cp.asnumpy(q.data), p.data, name)
    for st in opt.state.values():  # the state lives on the device, made by the array's library
        assert all(isinstance(v, cp.ndarray) for v in st.values() if not isinstance(v, int))
    # state_dict: host copies, saveable as .npz; load_state_dict moves them to the device
    sd = opt.state_dict()
    assert all(isinstance(v, np.ndarray) for st in sd["state"].values() for v in st.values())
    opt2 = make(name, params, **cfg)
    opt2.load_state_dict(sd)
    for st in opt2.state.values():
        assert all(isinstance(v, cp.ndarray) for v in st.values() if not isinstance(v, int))
    g = [cp.asarray(x) for x in grad_stream(8, shapes, F32, 1)[0]]
    snapshot = [cp.asnumpy(q.data) for q in params]
    for q, x in zip(params, g):
        q.grad = x
    opt.step()
    after1 = [cp.asnumpy(q.data) for q in params]
    for q, s in zip(params, snapshot):
        q.data[...] = cp.asarray(s)
    opt2.step()
    for q, a in zip(params, after1):  # the round trip gives the identical next step
        assert cp.asnumpy(q.data).tobytes() == a.tobytes()


def test_save_state_round_trip_on_cuda(fake, tmp_path):
    cp = fake[0]
    params = _dev(cp, _params([(5,), (2, 3)]))
    opt = optim.Adam(params, lr=0.1)
    for q in params:
        q.grad = cp.ones(q.data.shape, dtype=F32)
    opt.step()
    optim.save_state(opt.state_dict(), tmp_path / "opt.npz")
    opt2 = optim.Adam(params, lr=0.1)
    opt2.load_state_dict(optim.load_state(tmp_path / "opt.npz"))
    for a, b in zip(opt.state.values(), opt2.state.values()):
        assert a["step"] == b["step"]
        assert cp.asnumpy(a["exp_avg"]).tobytes() == cp.asnumpy(b["exp_avg"]).tobytes()
        assert isinstance(b["exp_avg"], cp.ndarray)


def test_dispatch_errors(fake):
    cp = fake[0]
    host = Parameter(np.ones(3, F32))
    dev = Parameter(cp.ones(3, dtype=F32))
    with pytest.raises(TypeError, match="cannot mix NumPy"):
        optim.SGD([host, dev])
    with pytest.raises(TypeError, match="cannot mix NumPy"):
        optim.SGD([{"params": [dev]}, {"params": [host]}])
    with cp.cuda.Device(1):
        dev1 = Parameter(cp.ones(3, dtype=F32))
    with pytest.raises(ValueError, match="one device"):
        optim.SGD([dev, dev1])
    optim.SGD([{"params": [dev]}, {"params": [dev1]}])  # one group per device is fine
    with pytest.raises(TypeError, match="float32"):
        optim.Adam([Parameter(cp.ones(3, dtype=np.float64))])
    opt = optim.Adam([dev])
    dev.grad = np.ones(3, F32)
    with pytest.raises(TypeError, match="grad is numpy.ndarray"):
        opt.step()
    dev.grad = cp.ones(4, dtype=F32)
    with pytest.raises(ValueError, match="grad has shape"):
        opt.step()
    dev.grad = dev.data  # the same memory
    with pytest.raises(ValueError, match="shares memory"):
        opt.step()
    assert not opt.state  # nothing was written on any error
    strided = Parameter(cp.ones(6, dtype=F32)[::2])
    strided.grad = cp.ones(3, dtype=F32)
    with pytest.raises(ValueError, match="C-contiguous"):
        optim.SGD([strided]).step()


def test_missing_cuda_backend_is_a_runtime_error(monkeypatch):
    """A CUDA parameter in a build or on a machine without the cuda backend: the reason."""
    from deepkern import _backend

    from cuda_host import fake_cupy
    cp = fake_cupy._make_cupy()
    monkeypatch.setitem(__import__("sys").modules, "cupy", cp)
    monkeypatch.setattr(_backend, "_cuda_state", {"module": None, "reason": "test: no driver here"})
    p = Parameter(cp.ones(3, dtype=F32))
    p.grad = cp.ones(3, dtype=F32)
    opt = optim.SGD([p], lr=0.1)
    with pytest.raises(RuntimeError, match="test: no driver here"):
        opt.step()
    with pytest.raises(RuntimeError, match="test: no driver here"):
        clip_grad_norm_([p], 1.0)


def test_clip_grad_norm_on_cuda_matches_cpu(fake):
    cp = fake[0]
    ref = _params([(4, 5), (CHUNK + 3,), (1,)])
    for k, p in enumerate(ref):
        p.grad = np.random.default_rng(k).standard_normal(p.data.shape).astype(F32) * 3
    dev = _dev(cp, ref)
    for p in (2.0, 1.0, math.inf):
        assert total_norm([q.grad for q in dev], p) == pytest.approx(total_norm([r.grad for r in ref], p), rel=1e-12)
    t_ref = clip_grad_norm_(ref, 1.5)
    t = clip_grad_norm_(dev, 1.5)
    assert t == pytest.approx(t_ref, rel=1e-12)
    for r, q in zip(ref, dev):
        assert_same(cp.asnumpy(q.grad), r.grad, "clipped grad")
    with pytest.raises(TypeError, match="cannot mix"):
        total_norm([ref[0].grad, dev[0].grad])


def test_ema_on_cuda(fake):
    cp = fake[0]
    ref = _params([(3, 3), (CHUNK + 1,)])
    dev = _dev(cp, ref)
    ref_ema, ema = optim.EMA(ref, 0.9), optim.EMA(dev, 0.9)
    assert all(isinstance(a, cp.ndarray) for a in ema.shadow)
    for step in range(3):
        for r, q in zip(ref, dev):
            r.data += F32(0.5)
            q.data += F32(0.5)
        ref_ema.update()
        ema.update()
    for a, b in zip(ema.shadow, ref_ema.shadow):
        assert_same(cp.asnumpy(a), b, "ema")
    targets = [Parameter(cp.zeros(q.data.shape, dtype=F32)) for q in dev]
    ema.copy_to(targets)
    for t, b in zip(targets, ref_ema.shadow):
        assert_same(cp.asnumpy(t.data), b, "copy_to")
    sd = ema.state_dict()
    assert all(isinstance(a, np.ndarray) for a in sd["shadow"])
    ema2 = optim.EMA(dev, 0.5)
    ema2.load_state_dict(sd)
    assert isinstance(ema2.shadow[0], cp.ndarray) and ema2.decay == 0.9
    with pytest.raises(TypeError, match="create the EMA after moving"):
        optim.EMA(ref).copy_to(dev)


def test_nn_model_trains_on_cuda_arrays_like_on_numpy(fake):
    """A CNN with every layer kind: forward, loss, backward and an Adam step with CuPy arrays
    (kernels on the emulator) against the same model on NumPy arrays (the CPU kernels)."""
    from deepkern import nn
    from deepkern.nn import _array as NA
    cp = fake[0]

    def model():
        deepkern.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(4, 6, 3, padding=1), nn.AvgPool2d(2), nn.Flatten(), nn.Dropout(0.3),
            nn.Linear(6 * 2 * 2, 8), nn.Sigmoid(), nn.Linear(8, 5))

    rng = np.random.default_rng(9)
    x = rng.standard_normal((6, 1, 8, 8)).astype(F32)
    y = rng.integers(0, 5, 6)
    losses = []
    for on_gpu in (False, True):
        m = model()
        crit = nn.CrossEntropyLoss(label_smoothing=0.1)
        if on_gpu:
            NA.module_to(m, "cuda")
            assert all(isinstance(p.data, cp.ndarray) for p in m.parameters())
        opt = optim.Adam(m.parameters(), lr=1e-2)
        xb, yb = (NA.to_device(x, "cuda"), NA.to_device(y, "cuda")) if on_gpu else (x, y)
        deepkern.manual_seed(1)
        run = []
        for _ in range(3):
            loss = crit(m(xb), yb)
            m.zero_grad()
            m.backward(crit.backward())
            optim.fused_step(opt, max_norm=1.0)
            run.append(loss)
        if on_gpu:
            NA.module_to(m, "cpu")
            assert all(isinstance(p.data, np.ndarray) for p in m.parameters())
        losses.append(run)
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4)


def test_device_helpers_without_cuda(monkeypatch):
    from deepkern import _backend
    from deepkern.nn import _array as NA
    monkeypatch.setattr(_backend, "_cuda_state", {"module": None, "reason": "test: no driver here"})
    with pytest.raises(RuntimeError, match="test: no driver here"):
        NA.require_cuda()
    with pytest.raises(RuntimeError, match="test: no driver here"):
        NA.to_device(np.ones(3, F32), "cuda")
    assert NA.to_device(np.ones(3, F32), "cpu").dtype == F32
    with pytest.raises(ValueError, match="device"):
        NA.to_device(np.ones(3, F32), "tpu")


# ============================================================ the compiled bindings (CUDA build only)
# The real _cuda bindings on host memory (test_cuda_arrays.HostArray): every argument must get
# through the binding's checks to its device check; bad ones must be refused before it.

from test_cuda_arrays import HostArray, fake_cupy_backend  # noqa: E402,F401  (fixture)


def _h(*shape, fill=1.0, dtype=F32):
    return HostArray(np.full(shape, fill, dtype))


def _adam_rows(n, amsgrad=False):
    return _kernel.rows_to_matrix("adam", [dict(grad_scale=1.0, step_size=1e-3, bias_correction2_sqrt=0.1,
                                                param_scale=1.0, beta1=0.9, one_minus_beta1=0.1, beta2=0.999,
                                                one_minus_beta2=1e-3, eps=1e-8, amsgrad=amsgrad)] * n)


def test_bindings_pass_every_check(fake_cupy_backend):
    from deepkern import _cuda_backend as B
    ps = [_h(3), _h(40, 2), _h(0)]
    grads = [_h(3), _h(40, 2), _h(0)]
    states = [[_h(3), _h(3), None], [_h(40, 2), _h(40, 2), None], [_h(0), _h(0), None]]
    emas = [_h(3), None, _h(0)]
    B.optim_step(_kernel.KINDS["adam"], ps, grads, states, emas, _adam_rows(3))
    B.ema_update([_h(5)], [_h(5)], 0.9)
    B.multi_scale([_h(5), _h(7)], 0.5)
    B.multi_copy([_h(5)], [_h(5)])
    fake_cupy_backend.multi_norm_reduce([_h(5), _h(2, 2)], 2.0, 0)  # (B's float() of the probe's None)
    assert fake_cupy_backend.calls == ["optim_step", "ema_update", "multi_scale", "multi_copy", "multi_norm_reduce"]


def test_bindings_refuse_bad_arguments_before_the_device(fake_cupy_backend):
    cu = fake_cupy_backend.real
    adam = _kernel.KINDS["adam"]
    p, g = _h(4), _h(4)
    with pytest.raises(ValueError, match=r"states\[0\]\[2\] is required"):
        cu.optim_step(adam, [p], [g], [[_h(4), _h(4), None]], None, _adam_rows(1, amsgrad=True), 0)
    with pytest.raises(ValueError, match=r"grads\[0\] has 5 elements, expected 4"):
        cu.optim_step(adam, [p], [_h(5)], [[_h(4), _h(4), None]], None, _adam_rows(1), 0)
    with pytest.raises(ValueError, match="hyper must have shape"):
        cu.optim_step(adam, [p], [g], [[_h(4), _h(4), None]], None, _adam_rows(2), 0)
    with pytest.raises(TypeError, match="float32 on the cuda backend, got float64"):
        cu.optim_step(adam, [_h(4, dtype=np.float64)], [g], [[_h(4), _h(4), None]], None, _adam_rows(1), 0)
    with pytest.raises(ValueError, match="shares memory"):
        cu.optim_step(adam, [p], [g], [[p, _h(4), None]], None, _adam_rows(1), 0)
    with pytest.raises(ValueError, match="shares memory"):
        cu.multi_copy([p], [p], 0)
    with pytest.raises(TypeError, match="list of CUDA arrays"):
        cu.multi_scale((p,), 2.0, 0)
    with pytest.raises(ValueError, match="unknown optimizer kind"):
        cu.optim_step(99, [p], [g], [[None] * 3], None, _adam_rows(1), 0)


# ============================================================ on a GPU (CuPy)

def _gpu_cupy():
    if "cuda" not in deepkern.backends():
        from deepkern._backend import cuda_unavailable_reason
        pytest.skip(f"no usable cuda backend: {cuda_unavailable_reason()}")
    try:
        import cupy
        cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # ImportError, or a CuPy built for another CUDA
        pytest.skip(f"CuPy is not usable here: {e!r}")
    return cupy


@pytest.mark.parametrize("name, cfg", ALL, ids=CASE_IDS)
def test_gpu_step_matches_cpu(name, cfg):
    cp = _gpu_cupy()
    ref_params = _params(CUDA_SHAPES)
    params = [Parameter(cp.asarray(p.data)) for p in ref_params]
    ref, opt = make(name, ref_params, **cfg), make(name, params, **cfg)
    for grads in grad_stream(1, CUDA_SHAPES, F32, 4):
        for p, q, g in zip(ref_params, params, grads):
            p.grad, q.grad = g.copy(), cp.asarray(g)
        ref.step()
        opt.step()
        for p, q in zip(ref_params, params):
            assert_same(cp.asnumpy(q.data), p.data, name)


def test_gpu_fused_step_norm_and_ema():
    cp = _gpu_cupy()
    shapes = [(s,) for s in (1, 7, CHUNK + 3, 100_000)] + [(1,)] * 50  # two launch tables
    ref = _params(shapes)
    dev = [Parameter(cp.asarray(p.data)) for p in ref]
    ref_opt, opt = optim.AdamW(ref, lr=1e-2), optim.AdamW(dev, lr=1e-2)
    ref_ema, ema = optim.EMA(ref, 0.99), optim.EMA(dev, 0.99)
    for grads in grad_stream(3, shapes, F32, 3):
        for p, q, g in zip(ref, dev, grads):
            p.grad, q.grad = g.copy(), cp.asarray(g)
        t_ref = optim.fused_step(ref_opt, max_norm=1.0, ema=ref_ema)
        t = optim.fused_step(opt, max_norm=1.0, ema=ema)
        assert t == pytest.approx(t_ref, rel=1e-12)
        assert optim.fused_step.__module__  # (the total came back as a float)
        assert total_norm([q.grad for q in dev]) == total_norm([q.grad for q in dev])  # deterministic
    for p, q in zip(ref, dev):
        np.testing.assert_allclose(cp.asnumpy(q.data), p.data, rtol=1e-6, atol=1e-7)
    for a, b in zip(ema.shadow, ref_ema.shadow):
        np.testing.assert_allclose(cp.asnumpy(a), b, rtol=1e-6, atol=1e-7)
