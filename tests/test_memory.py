"""Memory: no leak over 10,000 calls of each kernel, on success and on error; outputs never
alias inputs (nor each other).

Resident memory is read from /proc/self/statm (tracemalloc cannot see C++ allocations: the
im2col workspaces, the batch_norm partials, pybind11's exception objects). After a warm-up
(allocator pools, caches), 10,000 more calls may grow the resident set by less than 1 MiB: a
leak of one float per call of a (2, 3, 8, 8) conv output would already be 15 MiB.
"""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest

import deepkern.functional as F
from deepkern import _C
from conftest import num_threads
from opinfo import make_kernel_calls, rss_bytes, shares_memory_with_any, under_sanitizer

CALLS = 10_000
LIMIT = 1 << 20

needs_rss = pytest.mark.skipif(under_sanitizer() or not os.path.exists("/proc/self/statm"),
                               reason="RSS is meaningless under ASan's quarantine / no /proc here")


def _tiny_calls():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    y = F.conv2d(x, w, b, padding=1)
    py, idx = F.max_pool2d(x, 2)
    _, sm, si = F.batch_norm(x, None, None, None, None, True)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    e = rng.standard_normal(1000).astype(np.float32)
    mask = F.dropout(e, 0.5, seed=0)[1]
    xn = x[:, :, :, ::2]                                  # non-contiguous: the copy path
    return {
        "conv2d": lambda: F.conv2d(x, w, b, padding=1),
        "conv2d_noncontig": lambda: F.conv2d(xn, w, None, padding=1),
        "conv2d_backward": lambda: F.conv2d_backward(y, x, w, padding=1),
        "max_pool2d": lambda: F.max_pool2d(x, 2),
        "max_pool2d_backward": lambda: F.max_pool2d_backward(py, idx, x.shape),
        "avg_pool2d": lambda: F.avg_pool2d(x, 3, 1, 1),
        "avg_pool2d_backward": lambda: F.avg_pool2d_backward(x, x.shape, 3, 1, 1),
        "batch_norm_train": lambda: F.batch_norm(x, None, None, rm, rv, True),
        "batch_norm_eval": lambda: F.batch_norm(x, None, None, rm, rv, False),
        "batch_norm_backward": lambda: F.batch_norm_backward(x, x, None, sm, si),
        "dropout": lambda: F.dropout(e, 0.5, seed=1),
        "dropout_backward": lambda: F.dropout_backward(e, mask, 0.5),
        "relu": lambda: F.relu(e),
        "relu_backward": lambda: F.relu_backward(e, e),
        # errors raised in C++ (pybind11 exception translation) and in Python
        "error_in_C": lambda: _C.relu_forward(np.empty(3, np.float64), e),
        "error_in_C_window": lambda: _C.conv2d_forward(np.empty((2, 4, 5, 5), np.float32), x, w, None,
                                                        (1, 1), (0, 0), (1, 1), 1),
        "error_in_python": lambda: F.conv2d(x, w, stride=0),
    }


def _run(call, n):
    for _ in range(n):
        try:
            call()
        except ValueError:
            pass
        except TypeError:
            pass


def _growth(call, n):
    _run(call, 1000)                      # warm-up: pools, caches, first-touch pages
    gc.collect()
    before = rss_bytes()
    _run(call, n)
    gc.collect()
    return rss_bytes() - before


@needs_rss
@pytest.mark.parametrize("name", sorted(_tiny_calls()))
def test_no_resident_memory_growth_over_10000_calls(name):
    # one thread: tiny calls then never wait on OpenMP's scheduling (seconds on a loaded box)
    with num_threads(1):
        grown = _growth(_tiny_calls()[name], CALLS)
    assert grown < LIMIT, f"{name}: resident memory grew {grown / 1024:.0f} KiB over {CALLS} calls"


@needs_rss
@pytest.mark.parametrize("name", ["conv2d", "conv2d_backward", "batch_norm_train", "dropout"])
def test_no_growth_on_the_parallel_path(name):
    """Per-chunk workspaces (im2col, weight-gradient partials) on 2 threads: 2,000 calls."""
    with num_threads(2):
        grown = _growth(_tiny_calls()[name], 2000)
    assert grown < LIMIT, f"{name}: resident memory grew {grown / 1024:.0f} KiB over 2000 calls on 2 threads"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_outputs_never_alias_inputs_or_each_other(dtype):
    for name, (call, inputs) in make_kernel_calls(seed=1, dtype=dtype).items():
        outs = [o for o in call() if isinstance(o, np.ndarray)]
        for k, o in enumerate(outs):
            assert not shares_memory_with_any(o, inputs), f"{name}: output {k} shares memory with an input"
            others = outs[:k] + outs[k + 1:]
            if name != "batch_norm_train":        # (its last two outputs are the running stats)
                assert not shares_memory_with_any(o, others), f"{name}: output {k} shares memory with another output"


def test_identity_paths_return_copies():
    """Paths that could return the input itself (dropout off, p = 0) return a new array."""
    x = np.ones((3, 4), np.float32)
    for y, mask in (F.dropout(x, 0.0, seed=0), F.dropout(x, 0.5, training=False, seed=0)):
        assert not np.shares_memory(y, x) and not np.shares_memory(mask, x)
        y[...] = 7
        assert (x == 1).all()
