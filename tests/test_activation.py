"""relu: bitwise equal to the reference, NaN propagates (forward and backward, as PyTorch)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import deepkern.functional as F
import deepkern.reference as R
from conftest import assert_bitwise, noncontiguous


@given(hnp.arrays(st.sampled_from([np.float32, np.float64]), hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=9)),
       st.booleans())
def test_relu_matches_reference_bitwise(x, noncontig):
    xin = noncontiguous(x) if noncontig and x.ndim else x
    y = F.relu(xin)
    assert_bitwise(y, R.relu(x))
    dy = np.full(x.shape, 0.5, x.dtype)
    assert_bitwise(F.relu_backward(dy, y), R.relu_backward(dy, R.relu(x)))


def test_relu_nan_and_large_input():
    x = np.array([np.nan, -1.0, 0.0, 2.0, -np.inf, np.inf], np.float32)
    y = F.relu(x)
    assert np.isnan(y[0]) and list(y[1:]) == [0.0, 0.0, 2.0, 0.0, np.inf]
    big = np.linspace(-1, 1, 1_000_003, dtype=np.float32)
    assert_bitwise(F.relu(big), R.relu(big))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_backward_zero_where_not_positive(dtype):
    y = np.array([0.0, 1.0, 3.0, 0.0], dtype)
    dy = np.array([5.0, 6.0, 7.0, 8.0], dtype)
    assert list(F.relu_backward(dy, y)) == [0.0, 6.0, 7.0, 0.0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [7, 16, 33, 100])          # vector bodies and masked tails
def test_relu_backward_nan_y_passes_the_gradient(dtype, n):
    """PyTorch's rule: zero where y <= 0 (-0.0 and -inf included), grad_out elsewhere, so a
    NaN y passes grad_out through."""
    rng = np.random.default_rng(n)
    y = rng.choice(np.array([np.nan, -0.0, 0.0, 1.5, -np.inf, np.inf, -2.0], dtype), n)
    dy = rng.standard_normal(n).astype(dtype)
    want = np.where(np.isnan(y) | (y > 0), dy, 0).astype(dtype)
    assert_bitwise(F.relu_backward(dy, y), want)
    assert_bitwise(R.relu_backward(dy, y), want)


def test_relu_backward_matches_torch_threshold_backward():
    torch = pytest.importorskip("torch")
    y = np.array([np.nan, -0.0, 0.0, 1.0, -np.inf, np.inf, -1.0] * 5, np.float32)
    dy = np.arange(y.size, dtype=np.float32) + 1
    want = torch.ops.aten.threshold_backward(torch.from_numpy(dy), torch.from_numpy(y), 0).numpy()
    assert_bitwise(F.relu_backward(dy, y), want)
