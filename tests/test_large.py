"""Large tensors: every index and offset is computed in 64 bits (issue 7; RELIABILITY.md D4).

The argument. Sizes reach the kernels as int64_t fields of the params structs
(csrc/common/params.h), element counts as int64_t, and each offset is a product of those
fields, so it is computed in int64 from the first multiplication (csrc/README.md rule 4); loop
counters are int64_t. Python bounds every window argument by 2**31 - 1 (deepkern._validate
MAX_ARG, re-checked by the bindings), so window_out_size's in + 2p - d(k-1) stays far from
2**63. Dropout's element i uses Philox counter i/4 as a 64-bit value (both words of it). What
could still go wrong is a stray 32-bit temporary; these tests look for one where it would show:

- always (no memory needed): inputs of more than 2**31 elements (3 planes of 2**30 + 2**15,
  12.9 GB of float32) that are never resident: np.zeros maps untouched pages to the shared
  zero page, and the ops read only a few windows of them (huge strides), so max_pool2d,
  avg_pool2d, conv2d and conv2d's weight gradient index planes that start beyond 2**31 and
  elements at flat index ~2**31 within a plane: values and int64 indices must be exact;
- always: the Philox generator for counters at and beyond 2**32 (the high word in use: masks of
  2**34+ elements) against the NumPy reference, through a _C._testing hook; window_out_size
  for sizes and arguments near 2**31 and 2**32 against Python integers;
- when 3 x 2.1 GiB is available (CI, usually): dropout's mask kernel over 2**31 + 17 elements,
  checked at the end against the reference;
- when 3 x the resident size is available (a large machine; DEEPKERN_LARGE_TESTS=force runs
  them anyway): relu, relu_backward, dropout and dropout_backward on 2**31 + 17 float32
  elements (8.6 GB per array; inputs lazily zero), and an SGD step when deepkern.optim exists.
"""

from __future__ import annotations

import numpy as np
import pytest

import deepkern.functional as F
import deepkern.reference as R
from deepkern import _C
from opinfo import optim_module, requires_memory, rss_bytes, under_sanitizer

N_BIG = 2**31 + 17
pytestmark = pytest.mark.skipif(under_sanitizer(), reason="ASan shadow memory for 8-13 GB arrays")

# ---------------------------------------------------------------------------- lazily zero inputs

H, W = 2**15, 2**15 + 1            # one plane: 2**30 + 2**15 elements; three planes: > 3 * 2**30
STRIDE = (H - 2, W - 2)            # kernel 2: windows at rows (0, 1), (H-2, H-1); likewise columns


@pytest.fixture(scope="module")
def lazy_planes():
    """(3, 1, H, W) float32 zeros that are not resident, with a few values set near the first and
    the last element of each plane (each write makes one page resident)."""
    before = rss_bytes()
    try:
        x = np.zeros((3, 1, H, W), np.float32)
    except MemoryError:
        pytest.skip("cannot map 12.9 GB of virtual memory here (vm.overcommit_memory=2?)")
    if rss_bytes() - before > 256 << 20:
        pytest.skip("np.zeros touched its pages here (no lazy calloc): the test would need 12.9 GB")
    for n in range(3):
        x[n, 0, -1, -1] = 10.0 * (n + 1)      # flat index in the plane: H*W - 1 = 2**30 + 2**15 - 1
        x[n, 0, -2, -1] = -3.0
        x[n, 0, 0, 0] = -(n + 1.0)
    assert x.size > 2**31 and (x.size - 1) * 4 > 2**33
    yield x
    assert rss_bytes() - before < 1 << 30, "the ops made the 12.9 GB input resident"


def test_max_pool2d_indexes_planes_beyond_2_31(lazy_planes):
    y, idx = F.max_pool2d(lazy_planes, 2, stride=STRIDE)
    assert y.shape == (3, 1, 2, 2)
    for n in range(3):
        assert y[n, 0, 1, 1] == 10.0 * (n + 1)
        assert idx[n, 0, 1, 1] == H * W - 1            # > 2**30: ih * W + iw in 64 bits
        assert y[n, 0, 0, 0] == 0.0 and idx[n, 0, 0, 0] == 1      # ties: the first 0, at (0, 1)
    assert idx.dtype == np.int64


def test_avg_pool2d_reads_the_far_corner_of_every_plane(lazy_planes):
    y = F.avg_pool2d(lazy_planes, 2, stride=STRIDE)
    for n in range(3):
        assert y[n, 0, 1, 1] == np.float32((10.0 * (n + 1) - 3.0) / 4)
        assert y[n, 0, 0, 0] == np.float32(-(n + 1.0) / 4)


def test_conv2d_and_its_weight_gradient_on_more_than_2_31_elements(lazy_planes):
    w = np.array([[[[1.0, 2.0], [4.0, 8.0]]]], np.float32)
    y = F.conv2d(lazy_planes, w, stride=STRIDE)
    for n in range(3):
        assert y[n, 0, 1, 1] == 8.0 * 10.0 * (n + 1) + 2.0 * -3.0
        assert y[n, 0, 0, 0] == -(n + 1.0)
    # the weight gradient reads the same taps; grad_x would be a resident 12.9 GB, so call _C
    dy = np.zeros((3, 1, 2, 2), np.float32)
    dy[:, 0, 1, 1] = 1.0
    dw, db = np.empty_like(w), np.empty(1, np.float32)
    _C.conv2d_backward_weight(dw, db, dy, lazy_planes, STRIDE, (0, 0), (1, 1), 1)
    assert np.array_equal(dw[0, 0], np.array([[0.0, -3.0 * 3], [0.0, 10.0 + 20.0 + 30.0]], np.float32))
    assert db[0] == 3.0


# ---------------------------------------------------------------------------- 64-bit counters and sizes

@pytest.mark.parametrize("counter", [0, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**32 + 1, 2**33 + 12345,
                                     2**62 + 7, 2**64 - 1])
@pytest.mark.parametrize("seed", [0, 1, 2**32 + 5, 2**64 - 1])
def test_philox_matches_the_reference_for_64_bit_counters(counter, seed):
    want = R.philox4x32(np.array([counter], np.uint64), seed)[0]
    assert _C._testing.philox4x32(counter, seed) == tuple(int(v) for v in want)


def test_philox_uses_the_high_word_of_the_counter():
    a = _C._testing.philox4x32(5, 1)
    assert a != _C._testing.philox4x32(5 + 2**32, 1) != _C._testing.philox4x32(5 + 2**33, 1)


@pytest.mark.parametrize("size,k,s,p,d,ceil", [
    (2**31 - 1, 3, 1, 1, 1, False), (2**31 + 5, 2, 2, 1, 1, True), (2**32 + 3, 3, 7, 0, 2, True),
    (2**40, 2**31 - 1, 2**31 - 1, 2**30, 2**31 - 1, True), (46341, 46341, 1, 0, 1, False),
    (2**31 - 1, 2**31 - 1, 1, 2**31 - 1, 2**31 - 1, False), (5, 2**31 - 1, 2**31 - 1, 2**31 - 1, 1, True),
])
def test_window_out_size_near_2_31_and_2_32(size, k, s, p, d, ceil):
    assert _C._testing.window_out_size(size, k, s, p, d, ceil) == R.window_out_size(size, k, s, p, d, ceil)


# ---------------------------------------------------------------------------- resident > 2**31

def _ref_mask_tail(n, p, seed, count):
    """The reference mask of the last `count` elements of an n-element mask (n - count: a multiple of 4)."""
    start = n - count
    assert start % 4 == 0
    words = R.philox4x32(np.arange(start // 4, (n + 3) // 4, dtype=np.uint64), seed).reshape(-1)[:count]
    return (words >= np.uint64(R._dropout_threshold(p))).astype(np.uint8)


@pytest.mark.slow
@requires_memory(N_BIG)
def test_dropout_mask_kernel_beyond_2_31_elements():
    mask = np.empty(N_BIG, np.uint8)
    _C.dropout_mask(mask, 0.3, 2**40 + 3)
    tail = 4097
    assert np.array_equal(mask[-tail:], _ref_mask_tail(N_BIG, 0.3, 2**40 + 3, tail))
    assert np.array_equal(mask[:1000], R.dropout_mask((1000,), 0.3, 2**40 + 3))
    keep = mask[-2**20:].mean()
    assert abs(keep - 0.7) < 0.01


def _lazy(values_at_end, values_at_start=()):
    """N_BIG float32 zeros, resident only where values are set (the first and last pages)."""
    a = np.zeros(N_BIG, np.float32)
    if len(values_at_end):
        a[-len(values_at_end):] = values_at_end
    a[:len(values_at_start)] = values_at_start
    return a


@pytest.mark.slow
@requires_memory(N_BIG * 4)
def test_relu_beyond_2_31_elements():
    y = F.relu(_lazy([-1.0, 2.0, np.nan, -np.inf, 3.5], [4.0, -4.0]))
    assert np.array_equal(y[-5:], [0.0, 2.0, np.nan, 0.0, 3.5], equal_nan=True)
    assert y[0] == 4.0 and y[1] == 0.0 and y[2**31] == 0.0
    del y
    dx = F.relu_backward(_lazy([1.0, 1.0, 1.0], [1.0, 1.0]), _lazy([0.0, 2.0, 3.0], [4.0, 0.0]))
    assert np.array_equal(dx[-3:], [0.0, 1.0, 1.0]) and dx[0] == 1.0 and dx[1] == 0.0 and dx[2**31] == 0.0


@pytest.mark.slow
@requires_memory(N_BIG * 4 + N_BIG)
def test_dropout_beyond_2_31_elements():
    y, mask = F.dropout(_lazy(np.ones(4097)), 0.5, seed=77)
    want = _ref_mask_tail(N_BIG, 0.5, 77, 4097)
    assert np.array_equal(mask[-4097:], want)
    assert np.array_equal(y[-4097:], want.astype(np.float32) * np.float32(2.0))
    del y
    dx = F.dropout_backward(_lazy(np.full(4097, 3.0)), mask, 0.5)
    assert np.array_equal(dx[-4097:], want.astype(np.float32) * np.float32(6.0))


@pytest.mark.slow
@requires_memory(N_BIG * 4)
def test_sgd_step_beyond_2_31_elements():
    optim = optim_module()
    if optim is None:
        pytest.skip("deepkern.optim is not in this checkout (written in parallel; runs once merged)")
    from deepkern.nn import Parameter
    p = Parameter(np.zeros(N_BIG, np.float32))        # becomes resident as the step writes it
    p.grad = _lazy([1.0, -2.0, 4.0])
    optim.SGD([p], lr=0.5).step()
    assert np.array_equal(p.data[-3:], [-0.5, 1.0, -2.0]) and p.data[0] == 0.0
