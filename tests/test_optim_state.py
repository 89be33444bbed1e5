"""Optimizer state_dict: PyTorch's layout, copies, .npz round trip giving the identical next
steps (bitwise), options restored, bad dicts rejected with the optimizer unchanged."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest

from deepkern import optim
from deepkern.nn import Parameter
from optim_cases import ALL, CASE_IDS, SHAPES, grad_stream, make, make_params

from conftest import assert_bitwise


def _run(opt, params, grads_list):
    for grads in grads_list:
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()


@pytest.mark.parametrize("name,cfg", ALL, ids=CASE_IDS)
def test_npz_round_trip_gives_identical_steps(name, cfg):
    """10 steps, save to .npz, load into a fresh optimizer on copied parameters (built with
    different options), then 10 steps in lockstep: bitwise equal parameters and state."""
    rng = np.random.default_rng(1)
    params = make_params(rng, SHAPES, np.float32)
    opt = make(name, params, **cfg)
    stream = grad_stream(2, SHAPES, np.float32, 20)
    _run(opt, params, stream[:10])
    opt.param_groups[0]["lr"] *= 0.5  # options changed since construction are saved too
    buf = io.BytesIO()
    optim.save_state(opt.state_dict(), buf)
    buf.seek(0)
    loaded = optim.load_state(buf)

    twins = [Parameter(p.data.copy()) for p in params]
    opt2 = make(name, twins, lr=123.0)  # different lr: load_state_dict must restore the saved one
    opt2.load_state_dict(loaded)
    assert {k: v for k, v in opt2.param_groups[0].items() if k != "params"} == \
           {k: v for k, v in opt.param_groups[0].items() if k != "params"}
    for grads in stream[10:]:
        for p, t, g in zip(params, twins, grads):
            p.grad, t.grad = g, g.copy()
        opt.step()
        opt2.step()
        for p, t in zip(params, twins):
            assert_bitwise(t.data, p.data)
            for k, v in opt.state.get(p, {}).items():
                assert_bitwise(np.asarray(opt2.state[t][k]), np.asarray(v), k)


def test_layout_is_pytorchs():
    rng = np.random.default_rng(3)
    a, b, c = make_params(rng, [(3,), (2, 2), (5,)], np.float32)
    opt = optim.Adam([{"params": [a, b]}, {"params": [c], "lr": 0.1}], amsgrad=True)
    a.grad = np.ones(3, np.float32)
    c.grad = np.ones(5, np.float32)
    opt.step()
    sd = opt.state_dict()
    assert set(sd) == {"state", "param_groups"}
    assert list(sd["state"]) == [0, 2]  # only parameters that have state; indices across groups
    assert list(sd["state"][0]) == ["step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"]
    step = sd["state"][0]["step"]
    assert isinstance(step, np.ndarray) and step.shape == () and step.dtype == np.float32 and step == 1
    assert sd["param_groups"][0]["params"] == [0, 1] and sd["param_groups"][1]["params"] == [2]
    assert sd["param_groups"][1]["lr"] == 0.1 and sd["param_groups"][0]["betas"] == (0.9, 0.999)
    # SGD without momentum has no state; Adagrad has state for every parameter from the start
    assert optim.SGD([a]).state_dict()["state"] == {}
    assert list(optim.Adagrad([a, b]).state_dict()["state"]) == [0, 1]


def test_state_dict_is_a_snapshot():
    p = Parameter(np.ones(4, np.float32))
    opt = optim.SGD([p], lr=0.1, momentum=0.9)
    p.grad = np.ones(4, np.float32)
    opt.step()
    sd = opt.state_dict()
    saved = sd["state"][0]["momentum_buffer"].copy()
    opt.step()  # later steps do not change the saved dict...
    assert_bitwise(sd["state"][0]["momentum_buffer"], saved)
    sd["state"][0]["momentum_buffer"][:] = 99  # ...and editing the dict does not change the optimizer
    assert opt.state[p]["momentum_buffer"][0] != 99
    opt.load_state_dict(sd)
    sd["state"][0]["momentum_buffer"][:] = -1  # nor after loading it
    assert opt.state[p]["momentum_buffer"][0] == 99


def test_float64_state_is_cast_to_the_parameter_dtype():
    p = Parameter(np.ones(3, np.float32))
    opt = optim.Adagrad([p])
    sd = opt.state_dict()
    sd["state"][0]["sum"] = np.full(3, 0.25, np.float64)
    opt.load_state_dict(sd)
    assert opt.state[p]["sum"].dtype == np.float32 and opt.state[p]["sum"][0] == 0.25


def _snapshot(opt):
    return copy.deepcopy(opt.state_dict())


def _assert_same(opt, snap):
    now = opt.state_dict()
    assert now["param_groups"] == snap["param_groups"]
    assert set(now["state"]) == set(snap["state"])
    for i, st in snap["state"].items():
        for k, v in st.items():
            assert_bitwise(np.asarray(now["state"][i][k]), np.asarray(v))


@pytest.mark.parametrize("mutate,exc,match", [
    (lambda sd: sd["param_groups"].append(dict(sd["param_groups"][0])), ValueError, "different number of parameter groups"),
    (lambda sd: sd["param_groups"][0]["params"].pop(), ValueError, "doesn't match the size"),
    (lambda sd: sd["state"][0].update(exp_avg=np.zeros(7)), ValueError, "has shape"),
    (lambda sd: sd["state"][0].update(exp_avg=np.zeros(3, np.int32)), TypeError, "floating"),
    (lambda sd: sd["state"][0].update(bogus=np.zeros(3)), ValueError, "unknown state entry"),
    (lambda sd: sd["state"][0].update(step=np.float32(-2)), ValueError, "step"),
    (lambda sd: sd["state"].update({5: {}}), ValueError, "no group holds"),
    (lambda sd: sd["param_groups"][0].update(lr=-1.0), ValueError, "Invalid learning rate"),
    (lambda sd: sd["param_groups"][0].update(betas=(1.0, 0.5)), ValueError, "Invalid beta parameter at index 0"),
    (lambda sd: sd.pop("state"), ValueError, "'state' and 'param_groups'"),
])
def test_bad_state_dict_leaves_optimizer_unchanged(mutate, exc, match):
    rng = np.random.default_rng(4)
    params = make_params(rng, [(3,), (2,)], np.float32)
    opt = optim.Adam(params)
    _run(opt, params, grad_stream(5, [(3,), (2,)], np.float32, 2))
    snap = _snapshot(opt)
    bad = _snapshot(opt)
    mutate(bad)
    with pytest.raises(exc, match=match):
        opt.load_state_dict(bad)
    _assert_same(opt, snap)


def test_load_state_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="cannot read"):
        optim.load_state(str(bad))
    plain = tmp_path / "plain.npz"
    np.savez(plain, x=np.zeros(2))
    with pytest.raises(ValueError, match="not a deepkern state file"):
        optim.load_state(str(plain))
    good = tmp_path / "good.npz"
    optim.save_state({"a": [1, 2.5, None, "s", (True,)], 3: np.arange(3)}, str(good))
    back = optim.load_state(str(good))
    assert back["a"] == [1, 2.5, None, "s", (True,)] and list(back[3]) == [0, 1, 2]
    with pytest.raises(TypeError, match="cannot store"):
        optim.save_state({"f": object()}, str(tmp_path / "x.npz"))


def test_load_state_damaged_files_are_value_errors(tmp_path):
    """Truncated, overwritten or extended copies of a valid file: a ValueError or a valid dict,
    never another exception (zipfile raises NotImplementedError for an unknown version, json
    RecursionError for deep nesting) and never a file left open (warnings are errors here)."""
    p = Parameter(np.ones(3, np.float32))
    opt = optim.Adam([p])
    p.grad = np.ones(3, np.float32)
    opt.step()
    buf = io.BytesIO()
    optim.save_state(opt.state_dict(), buf)
    blob = buf.getvalue()
    rng = np.random.default_rng(0)
    path = tmp_path / "x.npz"
    for _ in range(300):
        b = bytearray(blob)
        kind = rng.integers(3)
        if kind == 0:
            b = b[:rng.integers(len(b))]
        elif kind == 1:
            for _ in range(rng.integers(1, 5)):
                b[rng.integers(len(b))] = rng.integers(256)
        else:
            b += bytes(rng.integers(0, 256, rng.integers(1, 17)).tolist())
        path.write_bytes(bytes(b))
        try:
            optim.load_state(str(path))
        except ValueError:
            pass
    np.savez(path, __deepkern_state__=np.array("[" * 100_000 + "]" * 100_000))
    with pytest.raises(ValueError, match="malformed"):
        optim.load_state(str(path))
