"""Optimizers as users see them (RELIABILITY.md D2.6, D4): the loss goes the right way, a
parabola and Rosenbrock's function are minimized, random configurations match the reference
(hypothesis), separate optimizers run concurrently in Python threads, huge tensors index right."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from deepkern import optim
from deepkern.nn import Parameter
from optim_cases import REFERENCE, grad_stream, make, make_params, ref_options

from conftest import assert_bitwise, assert_close
from opinfo import mem_available

# learning rates that make each optimizer converge on the problems below
CONVERGE = {
    "SGD": dict(lr=0.05), "Momentum": dict(lr=0.01), "NAG": dict(lr=0.01), "Adagrad": dict(lr=0.5),
    "Adadelta": dict(lr=5.0), "RMSprop": dict(lr=0.01), "Adam": dict(lr=0.05), "AdamW": dict(lr=0.05, weight_decay=0.0),
}


def quadratic(x, c):
    """f = sum (x - c)^2 / 2, grad = x - c."""
    return 0.5 * float(np.sum((x - c) ** 2)), x - c


@pytest.mark.parametrize("noncontiguous", [False, True])
@pytest.mark.parametrize("name", list(CONVERGE))
def test_loss_goes_the_right_way(name, noncontiguous):
    rng = np.random.default_rng(1)
    c = rng.standard_normal((6, 5)).astype(np.float32)
    base = rng.standard_normal((6, 5, 2)).astype(np.float32)
    p = Parameter(np.zeros((6, 5), np.float32))
    p.data = base[..., 0] if noncontiguous else base[..., 0].copy()
    q = Parameter(p.data.copy())
    opt, up = make(name, [p], **CONVERGE[name]), make(name, [q], maximize=True, **CONVERGE[name])
    f0 = quadratic(p.data, c)[0]
    for _ in range(20):
        p.grad = quadratic(p.data, c)[1]
        q.grad = quadratic(q.data, c)[1]
        opt.step()
        up.step()
    assert quadratic(p.data, c)[0] < f0 < quadratic(q.data, c)[0]  # maximize climbs instead


@pytest.mark.parametrize("name", list(CONVERGE))
def test_parabola_converges(name):
    c = np.array([1.5, -2.0, 0.25], np.float64)
    p = Parameter(np.zeros(3))
    opt = make(name, [p], **CONVERGE[name])
    sched = optim.lr_scheduler.StepLR(opt, step_size=2000, gamma=0.3)  # settle the oscillating ones
    for _ in range(10_000):
        p.grad = quadratic(p.data, c)[1]
        opt.step()
        sched.step()
    assert_close(p.data, c, 3e-2, 3e-2)


@pytest.mark.parametrize("name,cfg", [("Adam", dict(lr=0.02)), ("SGD", dict(lr=1e-3, momentum=0.9)),
                                      ("RMSprop", dict(lr=1e-3)), ("AdamW", dict(lr=0.02, weight_decay=0.0)),
                                      ("NAG", dict(lr=1e-3))])
def test_rosenbrock_converges(name, cfg):
    def grad(v):
        x, y = v
        return np.array([-2 * (1 - x) - 400 * x * (y - x * x), 200 * (y - x * x)])
    p = Parameter(np.array([-1.5, 2.0]))
    opt = make(name, [p], **cfg)
    sched = optim.lr_scheduler.StepLR(opt, step_size=3000, gamma=0.5)
    for _ in range(10_000):
        p.grad = grad(p.data)
        opt.step()
        sched.step()
    assert_close(p.data, [1.0, 1.0], 3e-2, 3e-2)


OPTION_SPACE = {
    "SGD": dict(lr=st.floats(0, 1), momentum=st.floats(0, 1.2), dampening=st.floats(-0.5, 1),
                weight_decay=st.floats(0, 0.5), maximize=st.booleans()),
    "Adagrad": dict(lr=st.floats(0, 1), lr_decay=st.floats(0, 1), weight_decay=st.floats(0, 0.5),
                    initial_accumulator_value=st.floats(0, 1), eps=st.floats(1e-10, 1e-2), maximize=st.booleans()),
    "Adadelta": dict(lr=st.floats(0, 2), rho=st.floats(0, 1), eps=st.floats(1e-8, 1e-2),
                     weight_decay=st.floats(0, 0.5), maximize=st.booleans()),
    "RMSprop": dict(lr=st.floats(0, 0.1), alpha=st.floats(0, 0.999), eps=st.floats(1e-8, 1e-2),
                    weight_decay=st.floats(0, 0.5), momentum=st.floats(0, 0.99), centered=st.booleans(),
                    maximize=st.booleans()),
    "Adam": dict(lr=st.floats(0, 0.1), betas=st.tuples(st.floats(0, 0.999), st.floats(0, 0.999)),
                 eps=st.floats(1e-8, 1e-2), weight_decay=st.floats(0, 0.5), amsgrad=st.booleans(),
                 maximize=st.booleans()),
}
OPTION_SPACE["AdamW"] = OPTION_SPACE["Adam"]


@st.composite
def configs(draw):
    name = draw(st.sampled_from(sorted(OPTION_SPACE)))
    cfg = draw(st.fixed_dictionaries({}, optional=OPTION_SPACE[name]))
    shapes = draw(st.lists(st.sampled_from([(), (0,), (1,), (5,), (16,), (17,), (3, 7), (65,), (2, 0, 3)]),
                           min_size=1, max_size=5))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    return name, cfg, shapes, dtype


@given(configs(), st.integers(0, 2**32 - 1))
def test_random_configurations_match_the_reference(case, seed):
    name, cfg, shapes, dtype = case
    rng = np.random.default_rng(seed)
    params = make_params(rng, shapes, dtype)
    opt = make(name, params, **cfg)
    ref = [(p.data.astype(np.float64), {}) for p in params]
    for grads in grad_stream(seed, shapes, dtype, 3):
        for k, (p, g) in enumerate(zip(params, grads)):
            p.grad = g
            ref[k] = REFERENCE[name](ref[k][0], g.astype(np.float64), ref[k][1], **ref_options(opt, opt.param_groups[0]))
        opt.step()
    tol = (1e-4, 1e-5) if dtype == np.float32 else (1e-9, 1e-11)
    for k, p in enumerate(params):
        scale = max(1.0, float(np.abs(ref[k][0]).max(initial=0)))
        assert_close(p.data, ref[k][0], tol[0], tol[1] * scale, f"{name} {cfg} param {k}")


def test_separate_optimizers_in_python_threads():
    """8 threads, each its own parameters and optimizer, 20 steps, started together: bitwise
    the serial results (the kernels release the GIL and share no state)."""
    shapes = [(5000,), (33,), (70_000,)]
    names = ["SGD", "Adam", "RMSprop", "Adagrad", "Adadelta", "AdamW", "NAG", "Momentum"]

    def run(name, out, barrier=None):
        rng = np.random.default_rng(len(name))
        params = make_params(rng, shapes, np.float32)
        opt = make(name, params)
        stream = grad_stream(len(name), shapes, np.float32, 20)
        if barrier is not None:
            barrier.wait()
        for grads in stream:
            for p, g in zip(params, grads):
                p.grad = g
            opt.step()
        out[name] = [p.data for p in params]

    serial, threaded = {}, {}
    for n in names:
        run(n, serial)
    barrier = threading.Barrier(len(names))
    threads = [threading.Thread(target=run, args=(n, threaded, barrier)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    for n in names:
        for a, b in zip(threaded[n], serial[n]):
            assert_bitwise(a, b)


@pytest.mark.slow
@pytest.mark.skipif(mem_available() < 3 * 2 * 4 * (2**31 + 17), reason="needs ~52 GB of free memory")
def test_sgd_step_beyond_2_to_the_31_elements():
    """Offsets are int64 everywhere: the last elements of a 2^31 + 17 element tensor update."""
    n = 2**31 + 17
    p = Parameter(np.zeros(n, np.float32))
    p.grad = np.ones(n, np.float32)
    optim.SGD([p], lr=0.5).step()
    assert p.data[-17:].tolist() == [-0.5] * 17 and p.data[0] == -0.5
