"""Shared test helpers: seeded RNG, one comparison helper, thread-count control, hypothesis profiles."""

from __future__ import annotations

import contextlib
import os
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import deepkern

# CI: deterministic and bounded ("ci-deep": more examples, .ci/extra); "dev" for longer local
# fuzzing (HYPOTHESIS_PROFILE=dev).
settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci-deep", max_examples=150, deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", max_examples=400, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def rng(request):
    """A generator seeded from the test's name: reproducible, different per test."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def assert_close(got, want, rtol, atol, what="result"):
    """Shape, then dtype-compatible values: |got - want| <= atol + rtol*|want| everywhere.

    On failure, report the worst element, both values and the tolerance applied.
    """
    got = np.asarray(got)
    want = np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != expected {want.shape}"
    if got.size == 0:
        return
    g, w = got.astype(np.float64), want.astype(np.float64)
    both_nan = np.isnan(g) & np.isnan(w)
    err = np.where(both_nan, 0.0, np.abs(g - w))
    err = np.where(np.isnan(err), np.inf, err)
    tol = atol + rtol * np.abs(np.where(np.isnan(w), 0.0, w))
    bad = err > tol
    if bad.any():
        i = np.unravel_index(np.argmax(np.where(bad, err - tol, -np.inf)), got.shape)
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {got.size} elements differ; worst at {tuple(int(v) for v in i)}: "
            f"got {got[i]!r}, expected {want[i]!r} (|err| {err[i]:.3g} > tol {tol[i]:.3g}, "
            f"rtol={rtol}, atol={atol})")


def assert_bitwise(got, want, what="result"):
    """Identical shape, dtype and bytes (NaN payloads included)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    if got.size == 0:
        return
    gb = np.ascontiguousarray(got).reshape(-1).view(np.uint8).reshape(got.size, -1)
    wb = np.ascontiguousarray(want).reshape(-1).view(np.uint8).reshape(want.size, -1)
    diff = np.flatnonzero((gb != wb).any(axis=1))
    if diff.size:
        i = diff[0]
        raise AssertionError(f"{what}: {diff.size} of {got.size} elements differ bitwise; first at flat "
                             f"index {i}: {got.reshape(-1)[i]!r} vs {want.reshape(-1)[i]!r}")


def f64(*arrays):
    """float64 copies of the given arrays (None passes through)."""
    out = tuple(None if a is None else np.asarray(a, dtype=np.float64) for a in arrays)
    return out if len(out) > 1 else out[0]


@contextlib.contextmanager
def num_threads(n):
    old = deepkern.get_num_threads()
    deepkern.set_num_threads(n)
    try:
        yield
    finally:
        deepkern.set_num_threads(old)


def noncontiguous(a):
    """A non-contiguous view with the same values (every other element of a larger buffer)."""
    if a.ndim == 0:
        return a
    big = np.full(a.shape[:-1] + (2 * a.shape[-1],), np.nan, dtype=a.dtype)
    big[..., ::2] = a
    v = big[..., ::2]
    # NumPy calls any empty array, and one with a last axis of 1, contiguous.
    assert not v.flags.c_contiguous or a.shape[-1] <= 1 or a.size == 0
    return v


@contextlib.contextmanager
def assert_unchanged(*arrays):
    """Every given array holds the same bytes after the block (inputs are never modified)."""
    before = [None if a is None else np.array(a, copy=True) for a in arrays]
    yield
    for k, (a, b) in enumerate(zip(arrays, before)):
        if a is not None:
            assert np.array_equal(np.asarray(a).view(np.uint8), b.view(np.uint8)), f"argument {k} was modified"


def pytest_terminal_summary(terminalreporter):
    """The fuzz-case counts of tests/opinfo.py, when fuzz tests ran (also as JSON to the file
    named by $DEEPKERN_FUZZ_STATS)."""
    import json
    import sys
    opinfo = sys.modules.get("opinfo")
    if opinfo is None or not opinfo.FUZZ_STATS:
        return
    s = opinfo.fuzz_summary()
    terminalreporter.section("deepkern fuzz cases")
    for op, c in s["ops"].items():
        terminalreporter.write_line(f"{op:28s} valid {c['valid']:6d}   invalid {c['invalid']:6d}")
    t = s["total"]
    terminalreporter.write_line(f"{'total':28s} valid {t['valid']:6d}   invalid {t['invalid']:6d}   "
                                f"all {t['valid'] + t['invalid']}")
    path = os.environ.get("DEEPKERN_FUZZ_STATS")
    if path:
        with open(path, "w") as f:
            json.dump(s, f, indent=1)
