"""deepkern.nn.init: fans, gains, the statistics of every initializer, in-place filling,
reproducibility, and errors."""

import math

import numpy as np
import pytest

import deepkern
import deepkern.nn as nn
from deepkern.nn import init


def test_fans():
    assert init._calculate_fan_in_and_fan_out(np.empty((16, 8, 3, 5))) == (8 * 15, 16 * 15)
    assert init._calculate_fan_in_and_fan_out(np.empty((10, 128))) == (128, 10)
    assert init._calculate_fan_in_and_fan_out(nn.Parameter(np.empty((4, 2, 3)))) == (6, 12)
    with pytest.raises(ValueError, match="fewer than 2 dimensions"):
        init.xavier_uniform_(np.empty(5))


def test_calculate_gain():
    assert init.calculate_gain("linear") == 1 and init.calculate_gain("conv2d") == 1
    assert init.calculate_gain("sigmoid") == 1
    assert init.calculate_gain("tanh") == 5 / 3
    assert init.calculate_gain("relu") == math.sqrt(2)
    assert init.calculate_gain("leaky_relu") == math.sqrt(2 / (1 + 0.01 ** 2))
    assert init.calculate_gain("leaky_relu", 0.2) == math.sqrt(2 / 1.04)
    assert init.calculate_gain("selu") == 0.75
    with pytest.raises(ValueError, match="Unsupported nonlinearity gelu"):
        init.calculate_gain("gelu")
    with pytest.raises(ValueError, match="not a valid number"):
        init.calculate_gain("leaky_relu", "x")


SHAPE = (256, 128, 3, 3)          # fan_in 1152, fan_out 2304, 294 912 values
FAN_IN, FAN_OUT = 128 * 9, 256 * 9


@pytest.mark.parametrize("fn,kw,std,bound", [
    (init.xavier_uniform_, {}, math.sqrt(2 / (FAN_IN + FAN_OUT)), math.sqrt(6 / (FAN_IN + FAN_OUT))),
    (init.xavier_uniform_, {"gain": 2.0}, 2 * math.sqrt(2 / (FAN_IN + FAN_OUT)), 2 * math.sqrt(6 / (FAN_IN + FAN_OUT))),
    (init.xavier_normal_, {"gain": 5 / 3}, 5 / 3 * math.sqrt(2 / (FAN_IN + FAN_OUT)), None),
    (init.kaiming_uniform_, {"nonlinearity": "relu"}, math.sqrt(2 / FAN_IN), math.sqrt(6 / FAN_IN)),
    (init.kaiming_uniform_, {"a": math.sqrt(5)}, 1 / math.sqrt(3 * FAN_IN), 1 / math.sqrt(FAN_IN)),
    (init.kaiming_normal_, {"mode": "fan_out", "nonlinearity": "relu"}, math.sqrt(2 / FAN_OUT), None),
    (init.kaiming_normal_, {"a": 0.1}, math.sqrt(2 / (1.01 * FAN_IN)), None),
    (init.normal_, {"mean": 0.0, "std": 0.02}, 0.02, None),
    (init.uniform_, {"a": -0.3, "b": 0.3}, 0.3 / math.sqrt(3), 0.3),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_statistics_follow_the_formulas(fn, kw, std, bound, dtype):
    w = np.zeros(SHAPE, dtype)
    out = fn(w, **kw, generator=np.random.default_rng(0))
    assert out is w                                             # filled in place, returned
    wd = w.astype(np.float64)
    # the sample std of 294 912 draws is within 0.5% of the true one (its own s.e. is ~0.15%)
    assert abs(wd.std() - std) < 0.005 * std
    assert abs(wd.mean()) < 0.01 * std
    if bound is not None:
        assert np.abs(wd).max() <= bound * (1 + 1e-6) and np.abs(wd).max() > 0.99 * bound


def test_normal_and_uniform_means():
    w = init.normal_(np.zeros(100000), mean=3.0, std=0.5, generator=np.random.default_rng(1))
    assert abs(w.mean() - 3.0) < 0.01 and abs(w.std() - 0.5) < 0.01
    w = init.uniform_(np.zeros(100000), 2.0, 4.0, generator=np.random.default_rng(1))
    assert w.min() >= 2.0 and w.max() <= 4.0 and abs(w.mean() - 3.0) < 0.01


def test_parameters_are_filled_in_place():
    p = nn.Parameter(np.zeros((8, 4), np.float32))
    data = p.data
    assert init.kaiming_normal_(p) is p and p.data is data and p.data.any()
    assert init.zeros_(p) is p and not p.data.any()
    assert init.ones_(p) is p and (p.data == 1).all()
    assert init.constant_(p, 0.25) is p and (p.data == 0.25).all()
    ints = np.zeros(3, np.int64)
    assert init.ones_(ints) is ints and (ints == 1).all()             # constants need no float


def test_reproducible_with_manual_seed():
    deepkern.manual_seed(7)
    a = init.xavier_uniform_(np.zeros((20, 30)))
    b = init.kaiming_normal_(np.zeros((20, 30)))
    deepkern.manual_seed(7)
    np.testing.assert_array_equal(a, init.xavier_uniform_(np.zeros((20, 30))))
    np.testing.assert_array_equal(b, init.kaiming_normal_(np.zeros((20, 30))))
    assert not np.array_equal(a, init.xavier_uniform_(np.zeros((20, 30))))


def test_empty_arrays_are_left_alone():
    assert init.kaiming_uniform_(np.zeros((0, 3))).shape == (0, 3)


def test_errors():
    ro = np.zeros((3, 3))
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        init.xavier_normal_(ro)
    with pytest.raises(TypeError, match="int32"):
        init.normal_(np.zeros(3, np.int32))
    with pytest.raises(TypeError, match="ndarray"):
        init.uniform_([1.0, 2.0])
    with pytest.raises(ValueError, match="Mode fan_avg not supported"):
        init.kaiming_uniform_(np.zeros((3, 3)), mode="fan_avg")
    with pytest.raises(ValueError, match="a <= b"):
        init.uniform_(np.zeros(3), 1.0, 0.0)
    with pytest.raises(ValueError, match="std >= 0"):
        init.normal_(np.zeros(3), std=-1.0)
    with pytest.raises(TypeError, match="Generator"):
        init.normal_(np.zeros(3), generator=3)


def test_same_formulas_as_pytorch():
    torch = pytest.importorskip("torch")
    for shape in [(16, 8, 3, 5), (10, 128), (4, 2, 3)]:
        assert init._calculate_fan_in_and_fan_out(np.empty(shape)) == \
            torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))
    for nl, param in [("relu", None), ("leaky_relu", None), ("leaky_relu", 0.3), ("tanh", None), ("selu", None)]:
        assert init.calculate_gain(nl, param) == pytest.approx(torch.nn.init.calculate_gain(nl, param), rel=1e-15)
    # PyTorch's default layer init: the same bounds (U(-1/sqrt(fan_in), 1/sqrt(fan_in)))
    torch.manual_seed(0)
    tconv = torch.nn.Conv2d(6, 64, 3)
    conv = nn.Conv2d(6, 64, 3)
    for p, tp in ((conv.weight, tconv.weight), (conv.bias, tconv.bias)):
        tb = float(tp.detach().abs().max())
        assert float(np.abs(p.data).max()) <= 1 / math.sqrt(54) and tb <= 1 / math.sqrt(54)
        assert float(np.abs(p.data).max()) > 0.9 / math.sqrt(54) and tb > 0.9 / math.sqrt(54)
