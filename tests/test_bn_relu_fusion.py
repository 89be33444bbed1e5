"""The fused batch norm + ReLU: functional.batch_norm_relu / batch_norm_relu_backward, their
NumPy references, and nn.Sequential running a BatchNorm1d/2d followed by a ReLU as one op.

The contract is bit for bit: on every SIMD level (and on the NumPy backend) the fused forward
gives the bits of ``relu(batch_norm(...)[0])`` (y, save_mean, save_invstd and the running
statistics updated in place), the fused backward the bits of
``batch_norm_backward(relu_backward(grad_out, y), ...)``, and a Sequential gives the same
output, input gradient, parameter gradients and running statistics with fusion (default) as
with ``seq.fuse = False``. The inputs hold the edges: outputs of both signs (ReLU zeroes some),
constant channels whose pre-activation is exactly +0.0 or -0.0, a NaN (which stays NaN through
the ReLU, and whose gradient relu_backward passes through), vector tails and thread splits.
The references are checked against central finite differences in float64.
"""

import numpy as np
import pytest

import deepkern
import deepkern.functional as F
import deepkern.nn as nn
import deepkern.reference as R
from deepkern import models, optim
from conftest import assert_bitwise, assert_close, f64, num_threads
from simd_isas import available_isas, isa, run_with_every_job_split
from test_reference_grad import check
from tolerances import tol


ISAS = available_isas()
DTYPES = [np.float32, np.float64]

# (2, 3, 1, 1): one value per plane; (5, 7, 3, 5): planes shorter than a vector; (70, 6, 4, 4)
# and (4, 17, 8, 9): small planes, odd channel counts; (3, 5, 32, 32): large planes; (9, 33)
# and (2, 4): (N, C) inputs.
SHAPES = [(2, 3, 1, 1), (5, 7, 3, 5), (70, 6, 4, 4), (4, 17, 8, 9), (3, 5, 32, 32), (9, 33), (2, 4)]


def _at(shape, c):
    """The index of the first element of channel c."""
    return (0, c) + (0,) * (len(shape) - 2)


def make_case(shape, dtype, seed, nan=True):
    """Inputs of batch_norm_relu: x of both signs; weight of both signs; running statistics.

    Edges, where the channels exist: channel 0 is constant (1.5) with bias +0.0 and channel 1
    constant (-2.25) with bias -0.0 and a negative weight, so their pre-activations are exact
    zeros, +0.0 and -0.0 (ReLU keeps a -0.0, so the sign must survive the fusion; a constant
    channel normalizes to exactly bias in training; running_mean is set to the constant for
    eval); with ``nan``, the last channel (C >= 4) holds one NaN. grad_out has exact zeros.
    Returns dict(x, w, b, rm, rv, dy).
    """
    rng = np.random.default_rng(seed)
    C = shape[1]
    x = (rng.standard_normal(shape) * 2 + 0.3).astype(dtype)
    w = rng.standard_normal(C).astype(dtype)
    b = (rng.standard_normal(C) * 0.5).astype(dtype)
    rm = (rng.standard_normal(C) * 0.3).astype(dtype)
    rv = (rng.random(C) + 0.5).astype(dtype)
    if C >= 2:
        x[:, 0] = 1.5
        rm[0], b[0] = 1.5, 0.0
    if C >= 3:
        x[:, 1] = -2.25
        rm[1], b[1], w[1] = -2.25, -0.0, -abs(w[1])     # 0 * (w < 0) + -0.0: exactly -0.0
    if nan and C >= 4:
        x[_at(shape, C - 1)] = np.nan
    dy = rng.standard_normal(shape).astype(dtype)
    dy.reshape(-1)[::7] = 0.0
    return dict(x=x, w=w, b=b, rm=rm, rv=rv, dy=dy)


def _fused_and_composed(c, w, b, with_stats, training, momentum=0.1, eps=1e-5):
    """Run the fused op and the composition on copies of the running statistics:
    ((y, save_mean, save_invstd, rm, rv, grad_x, grad_weight, grad_bias) fused, the same composed)."""
    x, dy = c["x"], c["dy"]
    out = []
    for fused in (True, False):
        rm, rv = (c["rm"].copy(), c["rv"].copy()) if with_stats else (None, None)
        if fused:
            y, sm, si = F.batch_norm_relu(x, w, b, rm, rv, training, momentum, eps)
            grads = F.batch_norm_relu_backward(dy, y, x, w, sm, si, training)
        else:
            pre, sm, si = F.batch_norm(x, w, b, rm, rv, training, momentum, eps)
            y = F.relu(pre)
            grads = F.batch_norm_backward(F.relu_backward(dy, y), x, w, sm, si, training)
        out.append((y, sm, si, rm, rv, *grads))
    return out


NAMES = ("y", "save_mean", "save_invstd", "running_mean", "running_var", "grad_x", "grad_weight", "grad_bias")


def _assert_all_bitwise(got, want, what):
    for g, e, name in zip(got, want, NAMES):
        if e is None:
            assert g is None, f"{what}: {name} should be None"
        else:
            assert_bitwise(g, e, f"{what}: {name}")


# ---------------------------------------------------------------------------------- functional

@pytest.mark.parametrize("isa_name", ISAS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False])
def test_fused_equals_composed_bitwise(isa_name, shape, dtype, training):
    """batch_norm_relu is relu(batch_norm(...)) bit for bit (y, saved statistics, running
    statistics updated in place) and batch_norm_relu_backward is batch_norm_backward of
    relu_backward bit for bit, on every SIMD level: with weight and bias, without (affine
    False: no parameter gradients), and in training without running statistics."""
    c = make_case(shape, dtype, seed=sum(shape) + len(shape) * 1000)
    variants = [("affine", c["w"], c["b"], True), ("no affine", None, None, True)]
    if training:
        variants.append(("no running stats", c["w"], c["b"], False))
    for what, w, b, with_stats in variants:
        with isa(isa_name):
            fused, composed = _fused_and_composed(c, w, b, with_stats, training)
        _assert_all_bitwise(fused, composed, what)
        y = fused[0]
        assert y.dtype == np.dtype(dtype) and y.shape == shape
        # the edges are there: ReLU zeroed some outputs and kept others, NaN stayed NaN
        assert (y == 0).any() and (y > 0).any(), what
        C = shape[1]
        if C >= 4:
            assert np.isnan(y[_at(shape, C - 1)]), f"{what}: NaN did not stay NaN"
        if C >= 3 and w is not None:
            assert (y[:, :2] == 0).all(), f"{what}: constant channels with bias +-0 must give zeros"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False])
def test_fused_equals_composed_on_the_numpy_backend(dtype, training):
    """Inside use_backend("numpy") the functional ops run the reference: still the composition
    bit for bit."""
    for shape in [(5, 7, 3, 5), (9, 33)]:
        c = make_case(shape, dtype, seed=len(shape))
        with deepkern.use_backend("numpy"):
            fused, composed = _fused_and_composed(c, c["w"], c["b"], True, training)
        _assert_all_bitwise(fused, composed, f"numpy backend {shape}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False])
def test_momentum_and_eps_pass_through(dtype, training):
    """momentum (also 0, 1 and a cumulative-average 1/3) and eps reach the fused kernel as they
    reach batch_norm: the same running statistics and outputs, bit for bit."""
    c = make_case((6, 5, 3, 3), dtype, seed=11)
    for momentum, eps in [(0.0, 1e-5), (1.0, 1e-3), (1 / 3, 0.5), (0.1, 1e-1)]:
        fused, composed = _fused_and_composed(c, c["w"], c["b"], True, training, momentum, eps)
        _assert_all_bitwise(fused, composed, f"momentum={momentum} eps={eps}")


@pytest.mark.parametrize("isa_name", ISAS)
@pytest.mark.parametrize("shape", [(4, 17, 8, 9), (3, 5, 32, 32), (9, 33)])
@pytest.mark.parametrize("training", [True, False])
def test_fused_float32_against_float64_reference(isa_name, shape, training):
    """The fused float32 op against the float64 reference, within batch_norm's tolerances (the
    backward's ReLU mask taken from the kernel's own y, so both sides mask the same elements)."""
    c = make_case(shape, np.float32, seed=5, nan=False)
    x, w, b, dy = c["x"], c["w"], c["b"], c["dy"]
    rm, rv = c["rm"].copy(), c["rv"].copy()
    rm2, rv2 = f64(rm, rv)
    with isa(isa_name):
        y, sm, si = F.batch_norm_relu(x, w, b, rm, rv, training)
        got = F.batch_norm_relu_backward(dy, y, x, w, sm, si, training)
    ry, rsm, rsi = R.batch_norm_relu(f64(x), *f64(w, b), rm2, rv2, training)
    t = tol("batch_norm", np.float32)
    assert_close(y, ry, *t, what="y")
    assert_close(sm, rsm, *t, what="save_mean")
    assert_close(rm, rm2, *t, what="running_mean")
    assert_close(rv, rv2, *t, what="running_var")
    want = R.batch_norm_relu_backward(*f64(dy, y, x, w, sm, si), training)
    for g, r, name in zip(got, want, ("grad_x", "grad_weight", "grad_bias")):
        assert_close(g, r, *tol("batch_norm_backward", np.float32), what=name)


def _bad_forward_cases(dtype):
    """(name, args) of batch_norm calls that must fail, each in training with running stats."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 3, 2, 2)).astype(dtype)
    w, b = np.ones(3, dtype), np.zeros(3, dtype)
    other = np.float64 if dtype == np.float32 else np.float32
    return [
        ("3-D x", (x[:, :, 0], w, b)),
        ("5-D x", (x[..., None], w, b)),
        ("weight of another dtype", (x, w.astype(other), b)),
        ("bias of another dtype", (x, w, b.astype(other))),
        ("weight of another length", (x, np.ones(4, dtype), b)),
        ("one value per channel (N, C)", (x[:1, :, 0, 0], w, b)),
        ("one value per channel (N, C, 1, 1)", (x[:1, :, :1, :1], w, b)),
        ("integer x", (x.astype(np.int32), w, b)),
    ]


@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_validation_matches_batch_norm(dtype):
    """Bad arguments raise what batch_norm raises (type, and message but for the op's name),
    before anything is written: the running statistics keep their bytes."""
    for name, (x, w, b) in _bad_forward_cases(dtype):
        errs = []
        for op in (F.batch_norm, F.batch_norm_relu):
            rm, rv = np.full(3, 0.25, dtype), np.full(3, 2.0, dtype)
            with pytest.raises((TypeError, ValueError)) as e:
                op(x, w, b, rm, rv, True)
            assert_bitwise(rm, np.full(3, 0.25, dtype), f"{name}: running_mean written before the error")
            assert_bitwise(rv, np.full(3, 2.0, dtype), f"{name}: running_var written before the error")
            errs.append(e.value)
        assert type(errs[1]) is type(errs[0]), f"{name}: {errs[1]!r} vs batch_norm's {errs[0]!r}"
        assert str(errs[1]).replace("batch_norm_relu", "batch_norm") == str(errs[0]), name
    # running statistics of another dtype, or only one of them, or none in eval
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 3)).astype(dtype)
    other = np.float64 if dtype == np.float32 else np.float32
    for name, stats, training, exc in [("running_mean of another dtype", (np.zeros(3, other), np.ones(3, dtype)),
                                        True, TypeError),
                                       ("running_var alone", (None, np.ones(3, dtype)), True, ValueError),
                                       ("eval without running stats", (None, None), False, ValueError)]:
        keep = [None if s is None else s.copy() for s in stats]
        for op in (F.batch_norm, F.batch_norm_relu):
            with pytest.raises(exc):
                op(x, None, None, *stats, training)
            for s, k in zip(stats, keep):
                if s is not None:
                    assert_bitwise(s, k, f"{name}: a running statistic was written before the error")
    for eps in (0.0, -1.0, np.nan):
        with pytest.raises(ValueError):
            F.batch_norm_relu(x, None, None, None, None, True, 0.1, eps)


@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_validation(dtype):
    """batch_norm_relu_backward refuses a y of another shape (ValueError) or dtype
    (TypeError) than x, and what batch_norm_backward refuses (grad_out's shape and dtype)."""
    c = make_case((4, 5, 3, 3), dtype, seed=1, nan=False)
    x, w, b, dy = c["x"], c["w"], c["b"], c["dy"]
    y, sm, si = F.batch_norm_relu(x, w, b, None, None, True)
    other = np.float64 if dtype == np.float32 else np.float32
    with pytest.raises(ValueError):
        F.batch_norm_relu_backward(dy, y[:, :, :2], x, w, sm, si)            # y of another shape
    with pytest.raises(ValueError):
        F.batch_norm_relu_backward(dy, y.reshape(4, 5, 9), x, w, sm, si)     # same size, 3-D
    with pytest.raises(TypeError):
        F.batch_norm_relu_backward(dy, y.astype(other), x, w, sm, si)        # y of another dtype
    with pytest.raises(ValueError):
        F.batch_norm_relu_backward(dy[:3], y, x, w, sm, si)                  # grad_out's shape
    with pytest.raises(TypeError):
        F.batch_norm_relu_backward(dy.astype(other), y, x, w, sm, si)        # grad_out's dtype
    with pytest.raises(TypeError):
        F.batch_norm_relu_backward(dy, y, x, w.astype(other), sm, si)        # weight's dtype
    # and the valid call still works after those
    gx, gw, gb = F.batch_norm_relu_backward(dy, y, x, w, sm, si)
    assert gx.shape == x.shape and gw.shape == gb.shape == (5,)
    _, gw, gb = F.batch_norm_relu_backward(dy, y, x, None, sm, si)
    assert gw is None and gb is None


# ---------------------------------------------------------------------------------- reference

@pytest.mark.parametrize("shape", [(5, 7, 3, 5), (2, 3, 1, 1), (9, 33), (2, 4)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False])
def test_reference_is_the_composition(shape, dtype, training):
    """reference.batch_norm_relu is R.relu(R.batch_norm(...)[0]) (running statistics updated
    alike) and reference.batch_norm_relu_backward is R.batch_norm_backward(R.relu_backward(g, y),
    ...), bit for bit, with and without weight."""
    c = make_case(shape, dtype, seed=sum(shape))
    x, dy = c["x"], c["dy"]
    for w, b in ((c["w"], c["b"]), (None, None)):
        rm1, rv1, rm2, rv2 = c["rm"].copy(), c["rv"].copy(), c["rm"].copy(), c["rv"].copy()
        y, sm, si = R.batch_norm_relu(x, w, b, rm1, rv1, training, 0.1, 1e-5)
        pre, sm0, si0 = R.batch_norm(x, w, b, rm2, rv2, training, 0.1, 1e-5)
        want = (R.relu(pre), sm0, si0, rm2, rv2)
        got = (y, sm, si, rm1, rv1)
        got += tuple(R.batch_norm_relu_backward(dy, y, x, w, sm, si, training))
        want += tuple(R.batch_norm_backward(R.relu_backward(dy, want[0]), x, w, sm0, si0, training))
        _assert_all_bitwise(got, want, f"reference, weight {'given' if w is not None else 'None'}")


@pytest.mark.parametrize("shape", [(3, 2, 3, 3), (6, 2)])
@pytest.mark.parametrize("training", [True, False])
def test_reference_backward_finite_differences(shape, training, rng):
    """The reference backward against central differences of sum(G * batch_norm_relu(...)) in
    float64 (test_reference_grad.py's helper), for x, weight and bias. The inputs are drawn
    until every pre-activation is at least 1e-3 away from ReLU's kink (far more than the 1e-6
    steps move it), and ReLU zeroes some outputs, so the mask is exercised."""
    C = shape[1]
    for _ in range(100):
        x = rng.standard_normal(shape) * 2 + 1
        w, b = rng.standard_normal(C), rng.standard_normal(C) * 0.5
        rm, rv = rng.standard_normal(C), rng.random(C) + 0.5
        pre = R.batch_norm(x, w, b, rm.copy(), rv.copy(), training)[0]
        if np.abs(pre).min() > 1e-3 and (pre < 0).any() and (pre > 0).any():
            break
    else:
        pytest.fail("no input away from the ReLU kink in 100 draws")

    def f(xx, ww, bb):
        return R.batch_norm_relu(xx, ww, bb, rm.copy(), rv.copy(), training)[0]

    y, sm, si = R.batch_norm_relu(x, w, b, rm.copy(), rv.copy(), training)
    g = rng.standard_normal(shape)
    gx, gw, gb = R.batch_norm_relu_backward(g, y, x, w, sm, si, training)
    check(gx, lambda t: f(t, w, b), x, g, "grad_x")
    check(gw, lambda t: f(x, t, b), w, g, "grad_weight")
    check(gb, lambda t: f(x, w, t), b, g, "grad_bias")


# ---------------------------------------------------------------------------------- threads

@pytest.mark.parametrize("isa_name", ISAS)
@pytest.mark.parametrize("shape", [(130, 40, 5, 5), (64, 16, 8, 8), (3, 5, 32, 32), (37, 20)])
def test_thread_count_invariance(isa_name, shape):
    """The fused forward and backward (training and eval, running statistics included) give
    the same bits on 1, 2 and 3 threads, and the composition's bits on each: small planes
    (channel blocks split across threads), large planes and (N, C) inputs."""
    c = make_case(shape, np.float32, seed=shape[1])
    results = {}
    for t in (1, 2, 3):
        with isa(isa_name), num_threads(t):
            for training in (True, False):
                fused, composed = _fused_and_composed(c, c["w"], c["b"], True, training)
                _assert_all_bitwise(fused, composed, f"{t} threads, training={training}")
                results[t, training] = fused
    for (t, training), r in results.items():
        _assert_all_bitwise(r, results[1, training], f"{t} threads vs 1, training={training}")


SPLIT_FUSED = """
import os, numpy as np, deepkern, deepkern.functional as F
from deepkern import _C
rng = np.random.default_rng(9)
for isa in %(isas)r + ["scalar"]:
    _C.set_isa(isa)
    for shape in ((130, 40, 5, 5), (64, 16, 8, 8), (3, 5, 32, 32), (37, 20), (3, 300, 1, 3), (9, 5, 7, 6)):
        C = shape[1]
        x = rng.standard_normal(shape).astype(np.float32)
        x[:, 0] = 1.5
        dy = rng.standard_normal(shape).astype(np.float32)
        w, b = rng.standard_normal(C).astype(np.float32), rng.standard_normal(C).astype(np.float32)
        b[0] = 0.0
        rm0, rv0 = rng.standard_normal(C).astype(np.float32), (rng.random(C) + 0.5).astype(np.float32)
        res = []
        for t, stream in ((1, "0"), (2, "0"), (3, "0"), (5, "0"), (1, "1"), (3, "1")):
            deepkern.set_num_threads(t)
            os.environ["DEEPKERN_STREAM_STORES"] = stream
            out = []
            for training in (True, False):
                rm, rv = rm0.copy(), rv0.copy()
                y, sm, si = F.batch_norm_relu(x, w, b, rm, rv, training)
                got = [y, sm, si, rm, rv, *F.batch_norm_relu_backward(dy, y, x, w, sm, si, training)]
                rm, rv = rm0.copy(), rv0.copy()
                pre, sm, si = F.batch_norm(x, w, b, rm, rv, training)
                yc = F.relu(pre)
                want = [yc, sm, si, rm, rv, *F.batch_norm_backward(F.relu_backward(dy, yc), x, w, sm, si, training)]
                for k, (a, e) in enumerate(zip(got, want)):
                    assert a.tobytes() == e.tobytes(), ("fused != composed", isa, shape, t, stream, training, k)
                out += got
            res.append(out)
        for r in res[1:]:
            for k, (a, e) in enumerate(zip(r, res[0])):
                assert a.tobytes() == e.tobytes(), ("thread count", isa, shape, k)
print("ok")
"""


def test_thread_count_invariance_of_small_jobs():
    """With DEEPKERN_PARALLEL_MIN_NS=0 even small jobs split across threads: the fused op
    still gives the composition's bits and the same bits on every thread count, with and
    without streaming stores, on every SIMD level."""
    run_with_every_job_split(SPLIT_FUSED)


# ---------------------------------------------------------------------------------- nn.Sequential

def _twins(build, seed=0):
    """Two identical models from build() (deepkern.manual_seed(seed) before each): the first
    fuses (the default), the second has fuse = False."""
    deepkern.manual_seed(seed)
    fused = build()
    deepkern.manual_seed(seed)
    plain = build()
    assert getattr(fused, "fuse", None) is True, "Sequential.fuse should default to True"
    plain.fuse = False
    assert_same_state(fused, plain, "after construction")
    return fused, plain


def _state(model):
    """Every parameter's values and .grad and every buffer, by name."""
    out = {}
    for n, p in model.named_parameters():
        out[n] = p.data
        out[n + ".grad"] = p.grad
    for n, b in model.named_buffers():
        out[n] = b
    return out


def assert_same_state(a, b, what):
    sa, sb = _state(a), _state(b)
    assert list(sa) == list(sb), what
    for k in sa:
        if sa[k] is None or sb[k] is None:
            assert sa[k] is None and sb[k] is None, f"{what}: {k} is None on one side only"
        else:
            assert_bitwise(sa[k], sb[k], f"{what}: {k}")


def _assert_same(got, want, what):
    if want is None:
        assert got is None, f"{what}: expected None"
    else:
        assert_bitwise(got, want, what)


def _step_pair(fused, plain, x, g, what, seed=None):
    """One forward and backward through each model (deepkern.manual_seed(seed) right before each
    forward when given): output, input gradient, parameter gradients and buffers bitwise equal.
    Returns the fused model's (output, input gradient)."""
    outs = []
    for m in (fused, plain):
        m.zero_grad()
        if seed is not None:
            deepkern.manual_seed(seed)
        y = m(x)
        outs.append((y, m.backward(g)))
    assert_bitwise(outs[0][0], outs[1][0], f"{what}: output")
    _assert_same(outs[0][1], outs[1][1], f"{what}: input gradient")
    assert_same_state(fused, plain, what)
    return outs[0]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_digits_cnn_fused_equals_unfused(dtype, mode, opt):
    """models.digits_cnn (conv-bn-relu-pool x2, dropout, linear) with fusion and with
    fuse = False: the same logits, loss, parameter gradients, running statistics and, after
    each optimizer step, parameters, bit for bit, over several steps; in eval mode after one
    training step (so the running statistics are not the initial 0 and 1)."""
    fused, plain = _twins(lambda: models.digits_cnn(dtype=dtype))
    rng = np.random.default_rng(4)
    make_opt = {"sgd": lambda m: optim.SGD(m.parameters(), lr=0.05, momentum=0.9),
                "adam": lambda m: optim.Adam(m.parameters(), lr=1e-2)}[opt]
    opts = [make_opt(fused), make_opt(plain)]
    crits = [nn.CrossEntropyLoss(), nn.CrossEntropyLoss()]
    steps = ["train"] * 4 if mode == "train" else ["train"] + ["eval"] * 3
    for k, phase in enumerate(steps):
        x = rng.standard_normal((16, 1, 8, 8)).astype(dtype)
        t = rng.integers(0, 10, 16)
        res = []
        for m, o, crit in zip((fused, plain), opts, crits):
            m.train(phase == "train")
            o.zero_grad()
            deepkern.manual_seed(100 + k)                      # the dropout mask's seed
            logits = m(x)
            loss = crit(logits, t)
            gx = m.backward(crit.backward())
            res.append((logits, loss, gx))
        what = f"step {k} ({phase})"
        assert_bitwise(res[0][0], res[1][0], f"{what}: logits")
        assert res[0][1] == res[1][1], f"{what}: loss"
        _assert_same(res[0][2], res[1][2], f"{what}: input gradient")
        assert_same_state(fused, plain, f"{what}: before the step")
        for o in opts:
            o.step()
        assert_same_state(fused, plain, f"{what}: after the step")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kw", [dict(), dict(affine=False), dict(track_running_stats=False),
                                dict(momentum=None), dict(eps=0.1, momentum=0.5)],
                         ids=["default", "no_affine", "no_running_stats", "cumulative", "eps_momentum"])
def test_linear_batchnorm1d_relu(dtype, kw):
    """Sequential(Linear, BatchNorm1d, ReLU) on (N, C) input, with the BatchNorm options that
    change what the fused call gets (no weight, no running statistics, a cumulative momentum):
    output, input gradient, parameter gradients and running statistics bitwise equal to the
    unfused path, in training (three steps) and in eval."""
    fused, plain = _twins(lambda: nn.Sequential(nn.Linear(7, 9, dtype=dtype), nn.BatchNorm1d(9, dtype=dtype, **kw),
                                                nn.ReLU()))
    fused[0].needs_input_grad = plain[0].needs_input_grad = True
    rng = np.random.default_rng(7)
    for k in range(3):
        x = rng.standard_normal((13, 7)).astype(dtype)
        y, _ = _step_pair(fused, plain, x, rng.standard_normal((13, 9)).astype(dtype), f"train step {k}")
        assert (y == 0).any() and (y > 0).any()
    fused.eval(), plain.eval()
    x = rng.standard_normal((5, 7)).astype(dtype)
    _step_pair(fused, plain, x, rng.standard_normal((5, 9)).astype(dtype), "eval")


@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm1d_relu_on_three_dim_input(dtype):
    """BatchNorm1d on (N, C, L) input (batch norm over N and L) followed by ReLU: the fused path
    keeps the input's shape and gives the unfused bits."""
    fused, plain = _twins(lambda: nn.Sequential(nn.BatchNorm1d(4, dtype=dtype), nn.ReLU()))
    rng = np.random.default_rng(8)
    for phase in ("train", "train", "eval"):
        fused.train(phase == "train"), plain.train(phase == "train")
        x = rng.standard_normal((3, 4, 6)).astype(dtype)
        y, gx = _step_pair(fused, plain, x, rng.standard_normal((3, 4, 6)).astype(dtype), phase)
        assert y.shape == gx.shape == (3, 4, 6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False])
def test_modules_own_backward_after_a_fused_forward(dtype, training):
    """After a fused forward the modules still work on their own: the ReLU keeps its output, so
    relu.backward(g) is relu_backward(g, y); bn.backward(g) is the plain batch-norm backward of
    g (no ReLU mask), with the parameter gradients it accumulates; both as in the unfused model."""
    rm0 = np.array([0.2, -0.1, 0.0, 0.5, 0.3], dtype)
    rv0 = np.array([1.2, 0.8, 2.0, 0.6, 1.0], dtype)

    def build():
        m = nn.Sequential(nn.BatchNorm2d(5, dtype=dtype), nn.ReLU())
        m[0].weight.data[:] = np.array([1.5, -0.5, 2.0, 0.7, -1.2], dtype)
        m[0].bias.data[:] = np.array([0.1, 0.3, -0.2, 0.0, 0.4], dtype)
        m[0].running_mean[:] = rm0
        m[0].running_var[:] = rv0
        return m.train(training)

    fused, plain = _twins(build)
    rng = np.random.default_rng(9)
    x = rng.standard_normal((4, 5, 3, 3)).astype(dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    y, y0 = fused(x), plain(x)
    assert_bitwise(y, y0, "output")
    bn, relu = fused[0], fused[1]
    assert_bitwise(relu.backward(g), F.relu_backward(g, y), "ReLU.backward after a fused forward")
    assert_bitwise(relu.backward(g), plain[1].backward(g), "ReLU.backward vs unfused")
    fused.zero_grad(), plain.zero_grad()
    gx = bn.backward(g)
    assert_bitwise(gx, plain[0].backward(g), "BatchNorm.backward vs unfused")
    assert_same_state(fused, plain, "after BatchNorm.backward")
    # explicitly: batch_norm_backward of g with the forward's statistics
    _, sm, si = F.batch_norm(x, bn.weight.data, bn.bias.data, rm0.copy(), rv0.copy(), training)
    want = F.batch_norm_backward(g, x, bn.weight.data, sm, si, training)
    assert_bitwise(gx, want[0], "BatchNorm.backward: grad_x")
    assert_bitwise(bn.weight.grad, want[1], "BatchNorm.backward: grad_weight")
    assert_bitwise(bn.bias.grad, want[2], "BatchNorm.backward: grad_bias")
    # and the Sequential's own backward still works after those calls
    fused.zero_grad(), plain.zero_grad()
    assert_bitwise(fused.backward(g), plain.backward(g), "Sequential.backward afterwards")
    assert_same_state(fused, plain, "after Sequential.backward")


def _manual(model, x, g):
    """Each module's forward in order, then each backward in reverse: the layer-by-layer run."""
    for m in model:
        x = m.forward(x)
    y = x
    for m in reversed(list(model)):
        g = m.backward(g)
    return y, g


# name: (builder(dtype), output width) on (N, 6) input
UNFUSED_PATTERNS = {
    "bn_sigmoid": (lambda dt: nn.Sequential(nn.Linear(6, 5, dtype=dt), nn.BatchNorm1d(5, dtype=dt), nn.Sigmoid()), 5),
    "relu_without_bn": (lambda dt: nn.Sequential(nn.Linear(6, 5, dtype=dt), nn.ReLU(), nn.Linear(5, 4, dtype=dt)), 4),
    "bn_last": (lambda dt: nn.Sequential(nn.Linear(6, 5, dtype=dt), nn.BatchNorm1d(5, dtype=dt)), 5),
    "relu_first": (lambda dt: nn.Sequential(nn.ReLU(), nn.BatchNorm1d(6, dtype=dt)), 6),
    "bn_identity_relu": (lambda dt: nn.Sequential(nn.BatchNorm1d(6, dtype=dt), nn.Identity(), nn.ReLU()), 6),
    "bn_relu_relu": (lambda dt: nn.Sequential(nn.BatchNorm1d(6, dtype=dt), nn.ReLU(), nn.ReLU()), 6),
    "two_pairs": (lambda dt: nn.Sequential(nn.BatchNorm1d(6, dtype=dt), nn.ReLU(), nn.BatchNorm1d(6, dtype=dt),
                                           nn.ReLU()), 6),
    "bn_bn_relu": (lambda dt: nn.Sequential(nn.BatchNorm1d(6, dtype=dt), nn.BatchNorm1d(6, dtype=dt), nn.ReLU()), 6),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pattern", list(UNFUSED_PATTERNS))
def test_other_neighbours(pattern, dtype):
    """A BatchNorm followed by something else (Sigmoid, Identity, nothing), a ReLU not preceded
    by a BatchNorm, and mixes with fusible pairs (back to back, a second ReLU, two BatchNorms):
    the same bits (output, input gradient, parameter gradients, running statistics) as the
    unfused Sequential and as running the layers one by one, training and eval."""
    builder, width = UNFUSED_PATTERNS[pattern]
    fused, plain = _twins(lambda: builder(dtype))
    deepkern.manual_seed(0)
    by_hand = builder(dtype)
    rng = np.random.default_rng(10)
    for phase in ("train", "train", "eval"):
        for m in (fused, plain, by_hand):
            m.train(phase == "train")
        x = rng.standard_normal((8, 6)).astype(dtype)
        g = rng.standard_normal((8, width)).astype(dtype)
        y, gx = _step_pair(fused, plain, x, g, f"{pattern} {phase}")
        by_hand.zero_grad()
        y1, gx1 = _manual(by_hand, x, g)
        assert_bitwise(y, y1, f"{pattern} {phase}: output vs layer by layer")
        _assert_same(gx, gx1, f"{pattern} {phase}: input gradient vs layer by layer")
        assert_same_state(fused, by_hand, f"{pattern} {phase}: vs layer by layer")


def test_fusion_follows_changes_to_the_sequence():
    """Replacing the ReLU after a BatchNorm (seq[2] = Sigmoid()) or appending a ReLU after a
    trailing BatchNorm changes which pairs run fused: always the unfused bits."""
    dt = np.float64
    rng = np.random.default_rng(12)
    fused, plain = _twins(lambda: nn.Sequential(nn.Linear(6, 5, dtype=dt), nn.BatchNorm1d(5, dtype=dt), nn.ReLU()))
    x, g = rng.standard_normal((8, 6)), rng.standard_normal((8, 5))
    _step_pair(fused, plain, x, g, "BN-ReLU")
    fused[2], plain[2] = nn.Sigmoid(), nn.Sigmoid()
    y, _ = _step_pair(fused, plain, x, g, "ReLU replaced by Sigmoid")
    assert (y > 0).all() and (y < 1).all(), "the Sigmoid must run after the replacement"
    fused, plain = _twins(lambda: nn.Sequential(nn.Linear(6, 5, dtype=dt), nn.BatchNorm1d(5, dtype=dt)))
    y, _ = _step_pair(fused, plain, x, g, "trailing BatchNorm")
    assert (y < 0).any()
    fused.append(nn.ReLU()), plain.append(nn.ReLU())
    y, _ = _step_pair(fused, plain, x, g, "ReLU appended")
    assert (y >= 0).all() and (y == 0).any()


def _wrap_backward(module):
    """Replace module.backward by a counting wrapper, as DistributedDataParallel hooks layers
    (an instance attribute set with object.__setattr__). Returns the list of calls."""
    inner, calls = module.backward, []

    def backward(g):
        calls.append(1)
        return inner(g)

    object.__setattr__(module, "backward", backward)
    return calls


@pytest.mark.parametrize("training", [True, False])
def test_fused_path_fires_batchnorm_backward_wrapper(training):
    """A wrapper installed on the BatchNorm's backward (DDP's hook) is called once per
    Sequential.backward on the fused path, and the results stay the unfused ones."""
    def build():
        return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                             nn.Linear(3 * 4 * 4, 2)).train(training)

    fused, plain = _twins(build)
    calls = _wrap_backward(fused[1])
    rng = np.random.default_rng(13)
    for k in range(3):
        x = rng.standard_normal((5, 2, 4, 4)).astype(np.float32)
        g = rng.standard_normal((5, 2)).astype(np.float32)
        _step_pair(fused, plain, x, g, f"step {k}")
        assert len(calls) == k + 1, f"the BatchNorm's backward wrapper ran {len(calls)} times in {k + 1} backwards"


def test_fused_path_fires_wrappers_on_both_modules():
    """Wrappers on both the BatchNorm's and the ReLU's backward each run once per backward
    (a hook on either module is never skipped), with the unfused results."""
    fused, plain = _twins(lambda: nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)))
    bn_calls, relu_calls = _wrap_backward(fused[1]), _wrap_backward(fused[2])
    rng = np.random.default_rng(14)
    for k in range(2):
        x = rng.standard_normal((7, 4)).astype(np.float32)
        _step_pair(fused, plain, x, rng.standard_normal((7, 3)).astype(np.float32), f"step {k}")
        assert (len(bn_calls), len(relu_calls)) == (k + 1, k + 1)


def test_relu_wrapper_installed_between_forward_and_backward_runs():
    """A wrapper put on the ReLU's backward after a fused forward (and before the backward)
    still runs: that backward then goes through the two modules in turn, with the same bits."""
    fused, plain = _twins(lambda: nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)))
    rng = np.random.default_rng(16)
    x = rng.standard_normal((7, 4)).astype(np.float32)
    g = rng.standard_normal((7, 3)).astype(np.float32)
    outs = []
    for m in (fused, plain):
        m.zero_grad()
        y = m(x)
        calls = _wrap_backward(m[2])                     # after the forward
        outs.append((y, m.backward(g)))
        assert len(calls) == 1
    assert_bitwise(outs[0][0], outs[1][0], "output")
    _assert_same(outs[0][1], outs[1][1], "input gradient")
    assert_same_state(fused, plain, "after backward")


def test_sequential_runs_the_fused_op(monkeypatch):
    """Fusion happens: with fuse on, the BatchNorm-ReLU pair calls batch_norm_relu and
    batch_norm_relu_backward (the public function or the cpu backend's), and never with
    fuse = False (which calls only batch_norm and relu)."""
    import deepkern._cpu as cpu
    counts = {}

    def counting(mod, name):
        fn = getattr(mod, name)

        def wrapper(*args, **kwargs):
            counts[name] = counts.get(name, 0) + 1
            return fn(*args, **kwargs)

        monkeypatch.setattr(mod, name, wrapper)

    for mod in (F, cpu):
        for name in ("batch_norm_relu", "batch_norm_relu_backward"):
            counting(mod, name)
    rng = np.random.default_rng(15)
    x = rng.standard_normal((6, 3, 4, 4)).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    for fuse in (False, True):
        counts.clear()
        deepkern.manual_seed(0)
        m = nn.Sequential(nn.BatchNorm2d(3), nn.ReLU())
        m.fuse = fuse
        for _ in range(3):                                # the first call and the cached fast path
            m(x)
            m.backward(g)
        if fuse:
            assert counts.get("batch_norm_relu", 0) >= 3, counts
            assert counts.get("batch_norm_relu_backward", 0) >= 3, counts
        else:
            assert counts == {}, f"fuse = False called the fused op: {counts}"


def test_fuse_is_a_plain_attribute():
    """fuse defaults to True, is no parameter or buffer (the state_dict keys do not change),
    and survives copying the model's state."""
    m = nn.Sequential(nn.BatchNorm1d(3), nn.ReLU())
    keys = list(m.state_dict())
    assert m.fuse is True
    m.fuse = False
    assert m.fuse is False and list(m.state_dict()) == keys
    m2 = nn.Sequential(nn.BatchNorm1d(3), nn.ReLU())
    m2.load_state_dict(m.state_dict())
    assert m2.fuse is True


class ShiftedBatchNorm2d(nn.BatchNorm2d):
    """A subclass whose forward differs (adds 0.25): not the fused op's function."""

    def forward(self, x):
        return super().forward(x) + 0.25


def test_modified_modules_keep_their_own_forward():
    """A BatchNorm subclass with its own forward, and a BatchNorm whose forward is replaced on
    the instance, followed by a ReLU: their forward runs (the shift shows in the output), with
    the unfused bits."""
    rng = np.random.default_rng(16)
    x = rng.standard_normal((4, 3, 5, 5))
    g = rng.standard_normal(x.shape)
    fused, plain = _twins(lambda: nn.Sequential(ShiftedBatchNorm2d(3, dtype=np.float64), nn.ReLU()))
    y, _ = _step_pair(fused, plain, x, g, "BatchNorm subclass")
    assert_bitwise(y, F.relu(F.batch_norm(x, None, None, None, None, True)[0] + 0.25), "the subclass's forward ran")

    fused, plain = _twins(lambda: nn.Sequential(nn.BatchNorm2d(3, dtype=np.float64), nn.ReLU()))
    for m in (fused, plain):
        bn = m[0]
        inner = bn.forward
        object.__setattr__(bn, "forward", lambda t, inner=inner: inner(t) * 2.0)
    y, _ = _step_pair(fused, plain, x, g, "forward replaced on the instance")
    assert_bitwise(y, F.relu(F.batch_norm(x, None, None, None, None, True)[0] * 2.0), "the replaced forward ran")


@pytest.mark.parametrize("training", [True, False])
def test_noncontiguous_input_gradient_and_frozen_parameters(training):
    """The fused path with arrays the layers' cached fast path does not take: a non-contiguous
    input (a channels-last view) and a non-contiguous upstream gradient; and frozen BatchNorm
    parameters (requires_grad False: no gradient accumulated): the unfused bits throughout."""
    def build():
        m = nn.Sequential(nn.BatchNorm2d(3), nn.ReLU(), nn.BatchNorm2d(3), nn.ReLU()).train(training)
        m[2].weight.requires_grad = False
        m[2].bias.requires_grad = False
        return m

    fused, plain = _twins(build)
    rng = np.random.default_rng(17)
    for k in range(3):
        x = rng.standard_normal((4, 5, 6, 3)).astype(np.float32).transpose(0, 3, 1, 2)   # (4, 3, 5, 6) view
        g = rng.standard_normal((4, 5, 6, 3)).astype(np.float32).transpose(0, 3, 1, 2)
        assert not x.flags.c_contiguous and not g.flags.c_contiguous
        _step_pair(fused, plain, x, g, f"step {k}")
        assert fused[2].weight.grad is None and fused[2].bias.grad is None
        # and contiguous copies give the same bits as the views
        _step_pair(fused, plain, np.ascontiguousarray(x), np.ascontiguousarray(g), f"step {k}, contiguous")


def test_errors_inside_a_fused_pair_match_the_unfused_ones():
    """Bad input to a fused BatchNorm-ReLU pair (another dtype than the parameters, 2-D input to
    BatchNorm2d, one value per channel in training) raises what the unfused layers raise, and
    leaves the same state (parameters, running statistics, num_batches_tracked)."""
    cases = [np.ones((4, 3, 2, 2), np.float64), np.ones((4, 3), np.float32), np.ones((1, 3, 1, 1), np.float32)]
    fused, plain = _twins(lambda: nn.Sequential(nn.BatchNorm2d(3), nn.ReLU()))
    for x in cases:
        errs = []
        for m in (fused, plain):
            with pytest.raises((TypeError, ValueError)) as e:
                m(x)
            errs.append(e.value)
        assert type(errs[0]) is type(errs[1]) and str(errs[0]) == str(errs[1]), (errs, x.shape, x.dtype)
        assert_same_state(fused, plain, f"after the error on {x.shape} {x.dtype}")
    # and the models still work
    x = np.random.default_rng(18).standard_normal((4, 3, 2, 2)).astype(np.float32)
    _step_pair(fused, plain, x, np.ones_like(x), "after the errors")


def test_fused_sequential_on_the_numpy_backend():
    """Inside use_backend("numpy") the fused pair runs the reference's batch_norm_relu: the
    unfused bits, over two training steps and an eval step."""
    dt = np.float64
    fused, plain = _twins(lambda: nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, dtype=dt), nn.BatchNorm2d(3, dtype=dt),
                                                nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 2, dtype=dt)))
    rng = np.random.default_rng(19)
    with deepkern.use_backend("numpy"):
        for phase in ("train", "train", "eval"):
            fused.train(phase == "train"), plain.train(phase == "train")
            x = rng.standard_normal((5, 2, 4, 4))
            _step_pair(fused, plain, x, rng.standard_normal((5, 2)), f"numpy backend, {phase}")
