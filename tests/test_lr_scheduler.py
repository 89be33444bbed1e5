"""deepkern.optim.lr_scheduler: closed forms, chainability, state_dict, errors, and the same
learning rates as torch.optim.lr_scheduler (when PyTorch is installed)."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest

from deepkern import optim
from deepkern.nn import Parameter
from deepkern.optim import lr_scheduler as S


def make_opt(lrs=(0.1, 0.02)):
    return optim.SGD([{"params": [Parameter(np.zeros(2, np.float32))], "lr": lr} for lr in lrs], lr=1.0,
                     momentum=0.9)


def run(sched, epochs, metrics=None):
    out = [sched.get_last_lr()]
    for e in range(epochs):
        sched.optimizer.step()
        if metrics is None:
            sched.step()
        else:
            sched.step(metrics[e])
        out.append(sched.get_last_lr())
    return out


def test_step_lr_closed_form():
    lrs = run(S.StepLR(make_opt(), step_size=3, gamma=0.5), 10)
    for e, got in enumerate(lrs):
        assert got == pytest.approx([0.1 * 0.5 ** (e // 3), 0.02 * 0.5 ** (e // 3)], rel=1e-15)


def test_cosine_closed_form_and_jump():
    sched = S.CosineAnnealingLR(make_opt(), T_max=10, eta_min=0.001)
    lrs = run(sched, 25)  # past T_max the cosine climbs back, as in PyTorch
    for e, got in enumerate(lrs):
        want = [0.001 + (b - 0.001) * (1 + math.cos(math.pi * e / 10)) / 2 for b in (0.1, 0.02)]
        assert got == pytest.approx(want, rel=1e-12, abs=1e-15)
    sched.step(7)  # jump with the closed form
    assert sched.get_last_lr() == pytest.approx([0.001 + 0.099 * (1 + math.cos(0.7 * math.pi)) / 2,
                                                0.001 + 0.019 * (1 + math.cos(0.7 * math.pi)) / 2])


def test_warm_restarts_closed_form():
    sched = S.CosineAnnealingWarmRestarts(make_opt((0.1,)), T_0=3, T_mult=2, eta_min=0.0)
    lrs = [l[0] for l in run(sched, 20)]
    # cycles of 3, 6, 12 epochs restarting at base_lr
    t_cur, t_i, want = 0, 3, []
    for _ in range(21):
        want.append(0.1 * (1 + math.cos(math.pi * t_cur / t_i)) / 2)
        t_cur += 1
        if t_cur >= t_i:
            t_cur, t_i = 0, t_i * 2
    assert lrs == pytest.approx(want, rel=1e-14)
    assert lrs[3] == lrs[9] == 0.1  # restarts
    sched.step(4.5)  # fractional epochs (per-iteration stepping)
    assert sched.get_last_lr()[0] == pytest.approx(0.1 * (1 + math.cos(math.pi * 1.5 / 6)) / 2)


def test_reduce_on_plateau():
    opt = make_opt((1.0,))
    sched = S.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=1, cooldown=1, min_lr=0.2)
    metrics = [5, 4, 4, 4, 4, 4, 3, 3, 3, 3, 3, 3]
    lrs = [l[0] for l in run(sched, len(metrics), metrics)]
    assert lrs == [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.2]
    opt = make_opt((1.0,))
    sched = S.ReduceLROnPlateau(opt, mode="max", threshold_mode="abs", threshold=0.5, patience=0)
    assert [l[0] for l in run(sched, 3, [1.0, 1.4, 2.0])] == pytest.approx([1.0, 1.0, 0.1, 0.1])


def test_chainable_like_pytorch():
    """StepLR multiplies the *current* lr: a change made in between carries on."""
    opt = make_opt((1.0,))
    sched = S.StepLR(opt, step_size=2, gamma=0.1)
    sched.step()
    opt.param_groups[0]["lr"] = 0.5
    sched.step()
    assert sched.get_last_lr() == [pytest.approx(0.05)]


@pytest.mark.parametrize("make_sched", [
    lambda o: S.StepLR(o, 3, 0.5), lambda o: S.CosineAnnealingLR(o, 7, 0.01),
    lambda o: S.CosineAnnealingWarmRestarts(o, 2, 3, 0.001),
    lambda o: S.ReduceLROnPlateau(o, patience=0, cooldown=1),
])
def test_state_dict_round_trip(make_sched):
    metrics = list(np.linspace(1, 0.9, 30)) + [1.0] * 30
    opt = make_opt()
    sched = make_sched(opt)
    plateau = isinstance(sched, S.ReduceLROnPlateau)
    run(sched, 9, metrics if plateau else None)
    buf = io.BytesIO()
    optim.save_state({"opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    buf.seek(0)
    saved = optim.load_state(buf)
    opt2 = make_opt((5.0, 5.0))
    opt2.load_state_dict(saved["opt"])
    sched2 = make_sched(opt2)
    sched2.load_state_dict(saved["sched"])
    for g, g2 in zip(opt.param_groups, opt2.param_groups):
        g2["lr"] = g["lr"]
    a = run(sched, 15, metrics[9:] if plateau else None)
    b = run(sched2, 15, metrics[9:] if plateau else None)
    assert a == b


@pytest.mark.parametrize("call,exc,match", [
    (lambda o: S.StepLR([1], 3), TypeError, "is not an Optimizer"),
    (lambda o: S.StepLR(o, 0), ValueError, "step_size"),
    (lambda o: S.StepLR(o, 2.5), ValueError, "step_size"),
    (lambda o: S.CosineAnnealingLR(o, 0), ValueError, "T_max"),
    (lambda o: S.CosineAnnealingWarmRestarts(o, 0), ValueError, "Expected positive integer T_0"),
    (lambda o: S.CosineAnnealingWarmRestarts(o, 2, T_mult=0), ValueError, "Expected integer T_mult >= 1"),
    (lambda o: S.CosineAnnealingWarmRestarts(o, 2, eta_min="0"), ValueError, "Expected float or int eta_min"),
    (lambda o: S.ReduceLROnPlateau(o, factor=1.0), ValueError, "Factor should be < 1.0."),
    (lambda o: S.ReduceLROnPlateau(o, mode="up"), ValueError, "mode up is unknown"),
    (lambda o: S.ReduceLROnPlateau(o, threshold_mode="x"), ValueError, "threshold mode x is unknown"),
    (lambda o: S.ReduceLROnPlateau(o, min_lr=[0.1]), ValueError, "expected 2 min_lrs, got 1"),
    (lambda o: S.StepLR(o, 2, last_epoch=4), KeyError, "initial_lr"),
    (lambda o: S.StepLR(o, 2).load_state_dict({"bogus": 1}), ValueError, "unexpected keys"),
])
def test_bad_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call(make_opt())


def test_like_torch():
    torch = pytest.importorskip("torch")

    def pair():
        ours = make_opt()
        theirs = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": lr} for lr in (0.1, 0.02)],
                                 lr=1.0, momentum=0.9)
        return ours, theirs

    metrics = [3.0, 2.0, 2.0, 2.5, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.2] * 3
    cases = [
        (lambda o: S.StepLR(o, 4, 0.3), lambda t: torch.optim.lr_scheduler.StepLR(t, 4, 0.3)),
        (lambda o: S.CosineAnnealingLR(o, 6, 0.005), lambda t: torch.optim.lr_scheduler.CosineAnnealingLR(t, 6, 0.005)),
        (lambda o: S.CosineAnnealingWarmRestarts(o, 3, 2, 0.001),
         lambda t: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(t, 3, 2, 0.001)),
        (lambda o: S.ReduceLROnPlateau(o, factor=0.5, patience=1, cooldown=2, min_lr=[0.01, 0.001]),
         lambda t: torch.optim.lr_scheduler.ReduceLROnPlateau(t, factor=0.5, patience=1, cooldown=2,
                                                              min_lr=[0.01, 0.001])),
    ]
    for ours_f, theirs_f in cases:
        o, t = pair()
        so, st = ours_f(o), theirs_f(t)
        plateau = isinstance(so, S.ReduceLROnPlateau)
        assert so.get_last_lr() == pytest.approx(st.get_last_lr(), rel=1e-15)
        for e in range(len(metrics)):
            o.step()
            t.step()
            if plateau:
                so.step(metrics[e])
                st.step(metrics[e])
            else:
                so.step()
                st.step()
            assert so.get_last_lr() == pytest.approx(st.get_last_lr(), rel=1e-13, abs=1e-16), (type(so).__name__, e)
            assert [g["lr"] for g in o.param_groups] == pytest.approx([g["lr"] for g in t.param_groups], rel=1e-13)
