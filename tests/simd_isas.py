"""Helpers for the tests that run every SIMD level this CPU supports (test_*_paths.py)."""

import contextlib

import deepkern
from deepkern import _C


def available_isas():
    """The SIMD levels this build has and this CPU runs, best first, always ending in scalar."""
    info = deepkern.build_info()
    out = [i for i in ("avx512", "avx2") if i in info["simd_variants"] and info[f"cpu_{i}"]]
    return out + ["scalar"]


@contextlib.contextmanager
def isa(name):
    """Run the block with the kernels of SIMD level `name` (deepkern._C.set_isa)."""
    old = _C.get_isa()
    try:
        assert _C.set_isa(name) == name
        yield
    finally:
        _C.set_isa(old)
