"""The optimizer's step plan (optimizer._StepPlan): after one step through the general path,
later steps re-check the recorded arrays by identity and skip the per-parameter bookkeeping.
It must give the general path's results bit for bit, hand every case it does not recognize
to the general path (which raises the same errors, before anything is written), and actually
run in a plain training loop."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from deepkern import optim
from deepkern.nn import Parameter
from deepkern.optim import optimizer as O

from optim_cases import CONFIGS


def _params(seed, dtype=np.float32):
    rng = np.random.default_rng(seed)
    shapes = [(3, 4), (7,), (2, 3, 5), (1,)]
    return [Parameter(rng.standard_normal(s).astype(dtype)) for s in shapes]


def _grads(step, params, skip=()):
    rng = np.random.default_rng(1000 + step)
    return [None if i in skip else rng.standard_normal(p.data.shape).astype(p.data.dtype)
            for i, p in enumerate(params)]


def _general_step(opt):
    opt._apply(opt._collect())


def _snapshot(opt, params):
    return ([p.data.copy() for p in params],
            {id(p): {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in st.items()}
             for p, st in opt.state.items()})


def _same(a, b):
    (da, sa), (db, sb) = a, b
    assert all(np.array_equal(x, y) for x, y in zip(da, db))
    assert [sorted(s) for s in sa.values()] == [sorted(s) for s in sb.values()]
    for x, y in zip(sa.values(), sb.values()):
        for k in x:
            assert np.array_equal(x[k], y[k]), k


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,config", [(n, c) for n, cs in CONFIGS.items() for c in cs])
def test_plan_gives_the_general_paths_bits(name, config, dtype, monkeypatch):
    """Two groups (the second with its own lr), a parameter skipped on some steps, lr changed
    midway: the planned steps equal steps through _collect/_apply, and the plan did run."""
    cls = getattr(optim, name)
    runs = {}
    ran = {"plan": 0}
    real_run = O._StepPlan.run

    def counting_run(self, opt):
        ok = real_run(self, opt)
        ran["plan"] += ok
        return ok

    monkeypatch.setattr(O._StepPlan, "run", counting_run)
    for how in ("plan", "general"):
        ps = _params(0, dtype)
        lr = config.get("lr", 1e-2)
        opt = cls([{"params": ps[:2]}, {"params": ps[2:], "lr": lr * 0.5}], **dict(config, lr=lr))
        for step in range(7):
            if step == 4:
                opt.param_groups[0]["lr"] = lr * 2  # a scheduler's change: checked, then planned again
            for p, g in zip(ps, _grads(step, ps, skip={1} if step in (2, 3) else ())):
                p.grad = g
            opt.step() if how == "plan" else _general_step(opt)
        runs[how] = _snapshot(opt, ps)
    _same(runs["plan"], runs["general"])
    assert ran["plan"] >= 4


def _trained(name="Adam", **kw):
    ps = _params(1)
    opt = getattr(optim, name)(ps, lr=1e-2, **kw)
    for step in range(2):
        for p, g in zip(ps, _grads(step, ps)):
            p.grad = g
        opt.step()
    assert opt._plan is not None
    for p, g in zip(ps, _grads(5, ps)):
        p.grad = g
    return ps, opt


def test_plan_runs_without_the_general_path(monkeypatch):
    ps, opt = _trained()
    before = [p.data.copy() for p in ps]

    def boom():
        raise AssertionError("the general path ran")

    monkeypatch.setattr(opt, "_collect", boom)
    opt.step()
    assert all(not np.array_equal(b, p.data) for b, p in zip(before, ps))
    assert all(st["step"] == 3 for st in opt.state.values())


def _bad_grad_dtype(ps, opt):
    ps[0].grad = ps[0].grad.astype(np.float64)


def _bad_grad_shape(ps, opt):
    ps[0].grad = ps[0].grad.reshape(4, 3)  # same size, other shape


def _grad_is_param(ps, opt):
    ps[2].grad = ps[2].data


def _grad_views_param(ps, opt):
    ps[0].grad = ps[0].data[::-1].copy()
    ps[1].grad = ps[0].data.reshape(-1)[:7]


def _read_only(ps, opt):
    ps[1].data.flags.writeable = False


def _reshaped_in_place(ps, opt):
    ps[0].data.shape = (4, 3)
    ps[0].grad = ps[0].grad.reshape(4, 3)


def _state_replaced(ps, opt):
    opt.state[ps[2]]["exp_avg"] = np.zeros((5,), np.float32)


def _data_replaced(ps, opt):
    ps[0].data = np.zeros((2, 2), np.float32)


def _bad_lr(ps, opt):
    opt.param_groups[0]["lr"] = -1.0


def _lr_as_string(ps, opt):
    opt.param_groups[0]["lr"] = "0.1"


def _betas_list_changed_in_place(ps, opt):
    """A list option, valid at the plan's last step, then changed inside the same list."""
    opt.param_groups[0]["betas"] = [0.9, 0.999]
    opt.step()
    opt.step()
    assert opt._plan is not None
    opt.param_groups[0]["betas"][1] = 1.5


def _option_swapped_for_another_key(ps, opt):
    """Same number of options, one of them gone: not the planned options any more."""
    del opt.param_groups[0]["eps"]
    opt.param_groups[0]["epsilon"] = 1e-8


@pytest.mark.parametrize("spoil,error,match", [
    (_bad_grad_dtype, TypeError, "grad has dtype float64 but the parameter is float32"),
    (_bad_grad_shape, ValueError, r"grad has shape \(4, 3\), expected \(3, 4\)"),
    (_grad_is_param, ValueError, "grad shares memory with the parameter's data"),
    (_grad_views_param, ValueError, "shares memory with"),
    (_read_only, ValueError, "read-only"),
    (_reshaped_in_place, ValueError, r"its state 'exp_avg' has shape \(3, 4\)"),
    (_state_replaced, ValueError, r"its state 'exp_avg' has shape \(5,\)"),
    (_data_replaced, ValueError, "grad has shape"),
    (_bad_lr, ValueError, "Invalid learning rate"),
    (_lr_as_string, TypeError, "lr must be a real number"),
    (_betas_list_changed_in_place, ValueError, "Invalid beta parameter at index 1: 1.5"),
    (_option_swapped_for_another_key, KeyError, "eps"),
])
def test_bad_input_after_the_plan_raises_before_writing(spoil, error, match):
    ps, opt = _trained()
    spoil(ps, opt)
    before = copy.deepcopy(([p.data for p in ps], opt.state, opt.param_groups))
    with pytest.raises(error, match=match):
        opt.step()
    after = ([p.data for p in ps], opt.state, opt.param_groups)
    for a, b in zip(before[0], after[0]):
        assert np.array_equal(a, b)
    for p_before, p_after in zip(before[1].values(), after[1].values()):
        for k in p_before:
            assert np.array_equal(p_before[k], p_after[k]), k


@pytest.mark.parametrize("change", ["strided_grad", "new_state_dict", "add_group", "requires_grad"])
def test_unrecognized_layouts_take_the_general_path(change):
    """Legal changes the plan does not cover run through the general path, with its results."""
    results = []
    for planned in (True, False):
        ps, opt = _trained()
        if change == "strided_grad":
            g = np.ascontiguousarray(np.broadcast_to(ps[0].grad[..., None], (3, 4, 2)))
            ps[0].grad = g[..., 1]
        elif change == "new_state_dict":
            opt.load_state_dict(opt.state_dict())
        elif change == "add_group":
            extra = Parameter(np.ones(3, np.float32))
            extra.grad = np.full(3, 0.5, np.float32)
            opt.add_param_group({"params": [extra]})
        else:
            ps[3].requires_grad = False
        if planned:
            opt.step()
            opt.step()  # and the rebuilt plan on the step after
        else:
            _general_step(opt)
            _general_step(opt)
        results.append(_snapshot(opt, ps))
    _same(*results)


def test_state_created_later_is_picked_up():
    """A parameter that gets its first gradient after the plan was built gets its state (the
    general path), then joins the plan."""
    ps = _params(2)
    opt = optim.Adam(ps, lr=1e-2)
    for step in range(5):
        for p, g in zip(ps, _grads(step, ps, skip={3} if step < 3 else ())):
            p.grad = g
        opt.step()
    assert opt.state[ps[3]]["step"] == 2 and opt.state[ps[0]]["step"] == 5
    assert all(e[4] is not None for e in opt._plan.entries)


@pytest.mark.parametrize("name,change", [
    ("Adam", {"amsgrad": True}), ("AdamW", {"amsgrad": True}), ("SGD", {"momentum": 0.9}),
    ("RMSprop", {"centered": True}), ("RMSprop", {"momentum": 0.5}), ("Adam", {"betas": (0.5, 0.9)}),
    ("Adagrad", {"lr_decay": 0.1}), ("Adadelta", {"rho": 0.5}),
])
def test_options_switched_mid_training_match_the_general_path(name, change):
    """An option that changes which state buffers the kernel needs (amsgrad, momentum,
    centered) or only the scalars: the planned steps keep the general path's bits."""
    results = []
    for planned in (True, False):
        ps = _params(3)
        opt = getattr(optim, name)(ps, lr=1e-2)
        for step in range(6):
            if step == 3:
                opt.param_groups[0].update(change)
            for p, g in zip(ps, _grads(step, ps)):
                p.grad = g
            opt.step() if planned else _general_step(opt)
        results.append(_snapshot(opt, ps))
    _same(*results)


def test_a_per_step_lr_schedule_keeps_the_plan(monkeypatch):
    """An lr changed before every step is re-checked and the plan kept (no rebuild)."""
    ps, opt = _trained()
    sched = optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.9)
    builds = []
    real_build = O._StepPlan.build.__func__
    monkeypatch.setattr(O._StepPlan, "build", classmethod(lambda cls, o: builds.append(1) or real_build(cls, o)))
    for step in range(5):
        for p, g in zip(ps, _grads(step, ps)):
            p.grad = g
        opt.step()
        sched.step()
    assert not builds
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.9 ** 5)


def test_a_layout_the_plan_never_takes_is_not_rebuilt_every_step(monkeypatch):
    """Strided gradients every step (the C++ call refuses them, the general path copies): the
    plan stops being rebuilt after three misses in a row, tries again every 64th step, and the
    results are the general path's."""
    builds = []
    real_build = O._StepPlan.build.__func__
    monkeypatch.setattr(O._StepPlan, "build", classmethod(lambda cls, o: builds.append(1) or real_build(cls, o)))
    results = []
    for planned in (True, False):
        ps = _params(4)
        opt = optim.Adam(ps, lr=1e-2)
        for step in range(150):
            for p, g in zip(ps, _grads(step % 7, ps)):
                p.grad = np.repeat(g[..., None], 2, axis=-1)[..., 0]  # the same values, strided
            opt.step() if planned else _general_step(opt)
        results.append(_snapshot(opt, ps))
    _same(*results)
    assert 3 <= len(builds) <= 8
