"""Bad input to the optimizers (RELIABILITY.md D1.7): PyTorch's wording, raised before anything
is written -- at step() every parameter is validated before any is updated."""

from __future__ import annotations

import numpy as np
import pytest

from deepkern import optim
from deepkern.nn import Parameter

ALL_CLASSES = ["SGD", "Momentum", "NAG", "Adagrad", "Adadelta", "RMSprop", "Adam", "AdamW"]


def P(*shape, dtype=np.float32, fill=1.0):
    return Parameter(np.full(shape, fill, dtype))


@pytest.mark.parametrize("name", ALL_CLASSES)
def test_negative_or_nan_lr(name):
    cls = getattr(optim, name)
    for lr in (-1, -1e-3, float("nan")):
        with pytest.raises(ValueError, match="Invalid learning rate"):
            cls([P(2)], lr=lr)
    with pytest.raises(TypeError, match="lr must be a real number"):
        cls([P(2)], lr="0.1")


@pytest.mark.parametrize("call,match", [
    (lambda ps: optim.Adagrad(ps, eps=-1e-3), "Invalid epsilon value: -0.001"),
    (lambda ps: optim.Adadelta(ps, eps=-1), "Invalid epsilon value"),
    (lambda ps: optim.RMSprop(ps, eps=-1), "Invalid epsilon value"),
    (lambda ps: optim.Adam(ps, eps=-1), "Invalid epsilon value"),
    (lambda ps: optim.Adam(ps, betas=(1.0, 0.0)), "Invalid beta parameter at index 0: 1.0"),
    (lambda ps: optim.AdamW(ps, betas=(0.9, 1.0)), "Invalid beta parameter at index 1: 1.0"),
    (lambda ps: optim.Adam(ps, betas=(-0.1, 0.9)), "Invalid beta parameter at index 0: -0.1"),
    (lambda ps: optim.SGD(ps, weight_decay=-1), r"Invalid weight_decay value: -1$"),
    (lambda ps: optim.Adam(ps, weight_decay=-1), "Invalid weight_decay value: -1"),
    (lambda ps: optim.Adagrad(ps, weight_decay=-1), "Invalid weight_decay value: -1"),
    (lambda ps: optim.SGD(ps, momentum=-0.5), "Invalid momentum value: -0.5"),
    (lambda ps: optim.RMSprop(ps, momentum=-0.5), "Invalid momentum value: -0.5"),
    (lambda ps: optim.RMSprop(ps, alpha=-0.5), "Invalid alpha value: -0.5"),
    (lambda ps: optim.Adadelta(ps, rho=1.1), "Invalid rho value: 1.1"),
    (lambda ps: optim.Adadelta(ps, rho=-0.1), "Invalid rho value: -0.1"),
    (lambda ps: optim.Adagrad(ps, lr_decay=-0.5), "Invalid lr_decay value: -0.5"),
    (lambda ps: optim.Adagrad(ps, initial_accumulator_value=-1), "Invalid initial_accumulator_value value: -1"),
    (lambda ps: optim.SGD(ps, nesterov=True), "Nesterov momentum requires a momentum and zero dampening"),
    (lambda ps: optim.SGD(ps, momentum=0.9, dampening=0.1, nesterov=True), "Nesterov momentum requires"),
    (lambda ps: optim.NAG(ps, dampening=0.1), "Nesterov momentum requires a momentum and zero dampening"),
    (lambda ps: optim.NAG(ps, momentum=0), "Nesterov momentum requires"),
])
def test_bad_hyperparameters(call, match):
    with pytest.raises(ValueError, match=match):
        call([P(2)])


def test_accepted_like_pytorch():
    """What PyTorch accepts is accepted: momentum > 1, negative dampening, rho = 1, inf lr."""
    optim.SGD([P(2)], momentum=1.5, dampening=-1)
    optim.Adadelta([P(2)], rho=1.0)
    optim.Adam([P(2)], lr=float("inf"), betas=[0.0, 0.5])


@pytest.mark.parametrize("call,exc,match", [
    (lambda: optim.SGD(P(3)), TypeError, "params argument given to the optimizer should be an iterable of Tensors or dicts"),
    (lambda: optim.Adam(np.zeros(3)), TypeError, "should be an iterable of Tensors or dicts"),
    (lambda: optim.Adam(5), TypeError, "should be an iterable"),
    (lambda: optim.Adam([]), ValueError, "optimizer got an empty parameter list"),
    (lambda: optim.Adam(iter([])), ValueError, "optimizer got an empty parameter list"),
    (lambda: optim.Adam({P(2)}), TypeError, "should be an iterable"),  # a set is not ordered
    (lambda: optim.Adam([{"params": {P(2)}}]), TypeError, "ordered collections"),
    (lambda: optim.Adam([np.zeros(3)]), TypeError, "can only optimize Parameters"),
    (lambda: optim.Adam([P(2), "w"]), TypeError, "can only optimize Parameters"),
    (lambda: optim.Adam([P(2, dtype=np.float16)]), TypeError, "float16"),
    (lambda: optim.Adam([Parameter(np.zeros(2, np.int32))]), TypeError, "int32"),
    (lambda: optim.Adam([{"params": [P(2)]}, [P(2)]]), TypeError, "param_group must be a dict"),
    (lambda: optim.Adam([{"lr": 0.1}]), ValueError, "'params' entry"),
    (lambda: optim.Adam([{"params": [P(2)], "lr": -1}]), ValueError, "Invalid learning rate"),
    (lambda: optim.SGD([P(2)], nesterov=1), TypeError, "nesterov must be a bool"),
    (lambda: optim.Adam([P(2)], betas=0.9), TypeError, "betas must be a pair"),
])
def test_bad_params_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_same_parameter_twice():
    p = P(3)
    with pytest.raises(ValueError, match="some parameters appear in more than one parameter group"):
        optim.SGD([{"params": [p]}, {"params": [P(2), p]}])
    with pytest.raises(ValueError, match="duplicate parameters"):  # PyTorch warns; we refuse
        optim.SGD([p, P(2), p])
    opt = optim.SGD([p])
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": p})
    assert len(opt.param_groups) == 1


def test_cuda_like_data_is_rejected_clearly():
    class FakeCuda:
        __cuda_array_interface__ = {"shape": (2,), "typestr": "<f4", "data": (0, False), "version": 3}
        dtype = np.dtype(np.float32)
        shape = (2,)
    with pytest.raises(TypeError, match="NumPy arrays"):
        optim.Adam([Parameter(FakeCuda())])


# ---------------------------------------------------------------- at step(): nothing written on error

def _setup(rng, n=4):
    params = [Parameter(rng.standard_normal(5).astype(np.float32)) for _ in range(n)]
    for p in params:
        p.grad = rng.standard_normal(5).astype(np.float32)
    return params


def _checksums(opt, params):
    out = [p.data.tobytes() for p in params] + [p.grad.tobytes() for p in params if isinstance(p.grad, np.ndarray)]
    for p in params:
        for k, v in sorted(opt.state.get(p, {}).items()):
            out.append((k, np.asarray(v).tobytes()))
    return out


BAD_LAST = [  # each breaks the LAST parameter: the earlier ones must not have been stepped
    ("grad shape", lambda ps: setattr(ps[-1], "grad", np.zeros(6, np.float32)), ValueError, "grad has shape"),
    ("grad dtype", lambda ps: setattr(ps[-1], "grad", np.zeros(5, np.float64)), TypeError,
     "grad has dtype float64 but the parameter is float32"),
    ("grad list", lambda ps: setattr(ps[-1], "grad", [0.0] * 5), TypeError, "grad must be a numpy.ndarray"),
    ("read-only", lambda ps: ps[-1].data.setflags(write=False), ValueError, "read-only"),
    ("grad is data", lambda ps: setattr(ps[-1], "grad", ps[-1].data), ValueError, "grad shares memory"),
    ("grad views data", lambda ps: setattr(ps[-1], "grad", ps[-1].data[::-1]), ValueError, "grad shares memory"),
    ("grad is another param", lambda ps: setattr(ps[-1], "grad", ps[0].data), ValueError, "shares memory"),
    ("params share a buffer", lambda ps: setattr(ps[-1], "data", ps[0].data), ValueError, "shares memory"),
    ("zero stride", lambda ps: setattr(ps[-1], "data", np.lib.stride_tricks.as_strided(
        np.zeros(1, np.float32), shape=(5,), strides=(0,), writeable=True)), ValueError, "zero stride"),
    ("float16 data", lambda ps: setattr(ps[-1], "data", np.zeros(5, np.float16)), TypeError, "float16"),
]


@pytest.mark.parametrize("name", ["SGD", "Adam", "RMSprop"])
@pytest.mark.parametrize("what,breaker,exc,match", BAD_LAST, ids=[b[0] for b in BAD_LAST])
def test_step_validates_everything_first(name, what, breaker, exc, match):
    rng = np.random.default_rng(1)
    params = _setup(rng)
    kw = {"momentum": 0.9} if name in ("SGD", "RMSprop") else {}
    opt = getattr(optim, name)(params, **kw)
    opt.step()  # state exists now
    for p in params:
        p.grad = rng.standard_normal(5).astype(np.float32)
    breaker(params)
    before = _checksums(opt, params)
    with pytest.raises(exc, match=match):
        opt.step()
    assert _checksums(opt, params) == before


def test_invalid_option_set_between_steps_is_caught():
    rng = np.random.default_rng(2)
    params = _setup(rng)
    opt = optim.Adam(params)
    opt.param_groups[0]["lr"] = -0.1
    before = _checksums(opt, params)
    with pytest.raises(ValueError, match="Invalid learning rate"):
        opt.step()
    assert _checksums(opt, params) == before and not opt.state


def test_parameter_reshaped_after_state_exists():
    rng = np.random.default_rng(3)
    params = _setup(rng, 2)
    opt = optim.Adam(params)
    opt.step()
    params[1].data = np.zeros(6, np.float32)
    params[1].grad = np.zeros(6, np.float32)
    before = _checksums(opt, params)
    with pytest.raises(ValueError, match="state 'exp_avg' has shape"):
        opt.step()
    assert _checksums(opt, params) == before
    params[1].data = np.zeros(5, np.float64)
    params[1].grad = np.zeros(5, np.float64)
    with pytest.raises(TypeError, match="state 'exp_avg' is float32"):
        opt.step()


def test_direct_kernel_calls_are_checked():
    """The _C entry point re-checks what the Python layer validates (no crash on misuse)."""
    from deepkern import _C
    from deepkern.optim import _kernel
    p = np.zeros(4, np.float32)
    h = _kernel.rows_to_matrix("adam", [{}])
    with pytest.raises(ValueError, match="required"):
        _C.optim_step(_kernel.KINDS["adam"], [p], [np.zeros(4, np.float32)], [(None, None, None)], None, h)
    with pytest.raises(ValueError, match="shares memory"):
        _C.optim_step(_kernel.KINDS["sgd"], [p], [p], [(None, None, None)], None, _kernel.rows_to_matrix("sgd", [{}]))
    with pytest.raises(TypeError):
        _C.optim_step(_kernel.KINDS["sgd"], [p], [np.zeros(4)], [(None, None, None)], None,
                      _kernel.rows_to_matrix("sgd", [{}]))
    with pytest.raises(ValueError, match="elements"):
        _C.optim_step(_kernel.KINDS["sgd"], [p], [np.zeros(5, np.float32)], [(None, None, None)], None,
                      _kernel.rows_to_matrix("sgd", [{}]))
    with pytest.raises(ValueError, match="not writeable"):
        ro = np.zeros(4, np.float32)
        ro.setflags(write=False)
        _C.optim_step(_kernel.KINDS["sgd"], [ro], [np.zeros(4, np.float32)], [(None, None, None)], None,
                      _kernel.rows_to_matrix("sgd", [{}]))
    with pytest.raises(ValueError, match="hyper"):
        _C.optim_step(_kernel.KINDS["sgd"], [p], [np.zeros(4, np.float32)], [(None, None, None)], None, np.zeros((1, 2)))
    with pytest.raises(ValueError, match="unknown optimizer kind"):
        _C.optim_step(99, [], [], [], None, np.zeros((0, 1)))
