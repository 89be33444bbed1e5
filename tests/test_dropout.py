"""dropout: the mask is a pure function of (seed, index); semantics at p = 0, 1 and near 1."""

import numpy as np
import pytest

import deepkern
import deepkern.functional as F
import deepkern.reference as R
from conftest import assert_bitwise, num_threads


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_rate_within_5_sigma(p):
    x = np.ones(1_000_000, np.float32)
    _, mask = F.dropout(x, p, seed=1234)
    keep, n = mask.mean(), x.size
    assert abs(keep - (1 - p)) < 5 * np.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cpu_equals_reference_bitwise(dtype, rng):
    x = rng.standard_normal((3, 5, 7, 9)).astype(dtype)
    y, mask = F.dropout(x, 0.3, seed=42)
    ry, rmask = R.dropout(x, 0.3, True, 42)
    assert_bitwise(mask, rmask, "mask")
    assert_bitwise(y, ry, "y")
    assert_bitwise(y, x * mask * dtype(1 / (1 - 0.3)), "y = x * mask * scale")
    dy = rng.standard_normal(x.shape).astype(dtype)
    assert_bitwise(F.dropout_backward(dy, mask, 0.3), R.dropout_backward(dy, rmask, 0.3), "grad_x")


def test_mask_depends_only_on_seed_and_flat_index():
    a = F.dropout(np.zeros((1000,), np.float32), 0.5, seed=7)[1]
    b = F.dropout(np.zeros((10, 100), np.float64), 0.5, seed=7)[1]
    c = F.dropout(np.zeros((3, 7), np.float32), 0.5, seed=7)[1]
    assert np.array_equal(a, b.reshape(-1))
    assert np.array_equal(a[:21], c.reshape(-1))
    for t in (1, 2, 3, 8):
        with num_threads(t):
            assert np.array_equal(F.dropout(np.zeros(100_003, np.float32), 0.5, seed=99)[1],
                                  R.dropout_mask((100_003,), 0.5, 99))
    assert not np.array_equal(a, F.dropout(np.zeros(1000, np.float32), 0.5, seed=8)[1])


def test_philox_known_answer():
    # Random123's published known-answer vector for philox4x32-10 (counter 0, key 0).
    out = R.philox4x32(np.array([0], np.uint64), 0)[0]
    assert [int(v) for v in out] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


def test_p_zero_and_eval_are_identity():
    x = np.array([1.0, -2.0, np.nan, np.inf], np.float32)
    for y, mask in (F.dropout(x, 0.0, seed=1), F.dropout(x, 0.5, training=False, seed=1)):
        assert_bitwise(y, x)
        assert mask.dtype == np.uint8 and mask.all()
        assert y is not x


def test_p_one_gives_zeros_and_no_nan():
    x = np.ones((100,), np.float32)
    y, mask = F.dropout(x, 1.0, seed=3)
    assert not mask.any() and np.array_equal(y, np.zeros_like(x))
    assert np.array_equal(F.dropout_backward(x, mask, 1.0), np.zeros_like(x))


def test_p_near_one_stays_finite():
    x = np.ones((10_000,), np.float32)
    for p in (float(np.nextafter(np.float32(1), np.float32(0))), 0.999999999, 1e-10):
        y, mask = F.dropout(x, p, seed=5)
        assert np.isfinite(y).all()
    y, mask = F.dropout(x, 1e-10, seed=5)
    assert mask.all() and np.array_equal(y, x * np.float32(1 / (1 - 1e-10)))


def test_seed_none_follows_manual_seed():
    x = np.zeros(1000, np.float32)
    deepkern.manual_seed(11)
    a = F.dropout(x, 0.5)[1]
    deepkern.manual_seed(11)
    b = F.dropout(x, 0.5)[1]
    c = F.dropout(x, 0.5)[1]
    assert np.array_equal(a, b) and not np.array_equal(b, c)
