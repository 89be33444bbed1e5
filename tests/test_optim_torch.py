"""deepkern.optim against torch.optim (skipped when PyTorch is not installed): 100 steps with
identical gradients drawn from a fixed RNG, parameters and every state buffer compared
(RELIABILITY.md D2.5: float64 rtol 1e-12; float32 rtol 6.5e-6, atol 5e-5, PyTorch's own
fused-vs-for-loop bound); the NumPy reference against PyTorch in float64; state dicts
exchanged both ways."""

from __future__ import annotations

import numpy as np
import pytest

from deepkern.nn import Parameter
from optim_cases import ALL, CASE_IDS, REFERENCE, SHAPES, grad_stream, make, ref_options

from conftest import assert_close

torch = pytest.importorskip("torch")

TOL = {np.float32: (6.5e-6, 5e-5), np.float64: (1e-12, 1e-13)}


@pytest.fixture(autouse=True)
def _torch_one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def torch_optimizer(name, tparams, cfg):
    if name == "Momentum":
        return torch.optim.SGD(tparams, **{"lr": 1e-3, "momentum": 0.9, **cfg})
    if name == "NAG":
        return torch.optim.SGD(tparams, **{"lr": 1e-3, "momentum": 0.9, "nesterov": True, **cfg})
    return getattr(torch.optim, name)(tparams, **cfg)


def pair(name, cfg, dtype, seed=0):
    rng = np.random.default_rng(seed)
    init = [np.asarray(rng.standard_normal(s), dtype=dtype) for s in SHAPES]
    ours = [Parameter(x.copy()) for x in init]
    theirs = [torch.nn.Parameter(torch.from_numpy(x.copy())) for x in init]
    return ours, theirs, make(name, ours, **cfg), torch_optimizer(name, theirs, cfg)


def compare_states(opt, topt, ours, theirs, rtol, atol, what):
    sd, tsd = opt.state_dict(), topt.state_dict()
    assert set(sd["state"]) == set(tsd["state"]), what
    for idx, tst in tsd["state"].items():
        st = sd["state"][idx]
        tkeys = {k for k, v in tst.items() if v is not None}
        assert set(st) == tkeys, f"{what}: state keys {set(st)} != torch's {tkeys}"
        for k in tkeys:
            if k == "step":
                assert float(st[k]) == float(tst[k]) and st[k].dtype == np.float32
            else:
                assert_close(st[k], tst[k].numpy(), rtol, atol, f"{what}: state[{idx}][{k}]")
    for k, (p, tp) in enumerate(zip(ours, theirs)):
        assert_close(p.data, tp.detach().numpy(), rtol, atol, f"{what}: param {k}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,cfg", ALL, ids=CASE_IDS)
def test_100_steps_like_torch(name, cfg, dtype):
    ours, theirs, opt, topt = pair(name, cfg, dtype)
    rtol, atol = TOL[dtype]
    for step, grads in enumerate(grad_stream(1, SHAPES, dtype, 100)):
        for p, tp, g in zip(ours, theirs, grads):
            p.grad = g
            tp.grad = torch.from_numpy(g.copy())
        opt.step()
        topt.step()
        if step % 25 == 24:
            compare_states(opt, topt, ours, theirs, rtol, atol, f"{name} {cfg} step {step}")


@pytest.mark.parametrize("name,cfg", ALL, ids=CASE_IDS)
def test_reference_like_torch_float64(name, cfg):
    """The NumPy reference itself agrees with PyTorch to float64 rounding over 20 steps."""
    ours, theirs, opt, topt = pair(name, cfg, np.float64, seed=3)
    ref = [(p.data.copy(), {}) for p in ours]
    for grads in grad_stream(4, SHAPES, np.float64, 20):
        for k, (tp, g) in enumerate(zip(theirs, grads)):
            tp.grad = torch.from_numpy(g.copy())
            ref[k] = REFERENCE[name](ref[k][0], g, ref[k][1], **ref_options(opt, opt.param_groups[0]))
        topt.step()
    for k, tp in enumerate(theirs):
        assert_close(ref[k][0], tp.detach().numpy(), 1e-12, 1e-13, f"param {k}")


def _to_torch_sd(sd):
    return {"state": {i: {k: torch.from_numpy(np.array(v)) for k, v in st.items()} for i, st in sd["state"].items()},
            "param_groups": [dict(g) for g in sd["param_groups"]]}


def _from_torch_sd(tsd):
    return {"state": {i: {k: (None if v is None else v.numpy().copy()) for k, v in st.items()}
                      for i, st in tsd["state"].items()},
            "param_groups": [dict(g) for g in tsd["param_groups"]]}


@pytest.mark.parametrize("name,cfg", [("SGD", {"momentum": 0.9}), ("Adagrad", {"lr_decay": 0.1}),
                                      ("Adadelta", {}), ("RMSprop", {"centered": True, "momentum": 0.9}),
                                      ("Adam", {"amsgrad": True}), ("AdamW", {})])
def test_state_dicts_exchange_with_torch(name, cfg):
    """Our state_dict loads into torch.optim and torch's into ours; both then step alike."""
    ours, theirs, opt, topt = pair(name, cfg, np.float64, seed=5)
    stream = grad_stream(6, SHAPES, np.float64, 10)
    for grads in stream[:5]:
        for p, g in zip(ours, grads):
            p.grad = g
        opt.step()
    for p, tp in zip(ours, theirs):
        tp.data.copy_(torch.from_numpy(p.data))
    topt.load_state_dict(_to_torch_sd(opt.state_dict()))
    # ...and back: a fresh deepkern optimizer from torch's state dict
    again = [Parameter(p.data.copy()) for p in ours]
    opt2 = make(name, again, **cfg)
    opt2.load_state_dict(_from_torch_sd(topt.state_dict()))
    for grads in stream[5:]:
        for p, p2, tp, g in zip(ours, again, theirs, grads):
            p.grad, p2.grad, tp.grad = g, g.copy(), torch.from_numpy(g.copy())
        opt.step()
        opt2.step()
        topt.step()
    compare_states(opt, topt, ours, theirs, 1e-12, 1e-13, "ours -> torch")
    compare_states(opt2, topt, again, theirs, 1e-12, 1e-13, "torch -> ours")
