"""Helpers for the tests that run every SIMD level this CPU supports (test_*_paths.py)."""

import contextlib
import os
import subprocess
import sys

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


def run_with_every_job_split(script):
    """Run `script` (Python source; %(isas)r is replaced by the vector ISAs to try) in a fresh
    process with DEEPKERN_PARALLEL_MIN_NS=0: every kernel then splits even tiny jobs across
    threads (csrc/cpu/threading.h), which small jobs otherwise run on one thread. The script
    prints "ok" when its checks pass."""
    isas = [i for i in available_isas() if i != "scalar"]
    env = dict(os.environ, DEEPKERN_PARALLEL_MIN_NS="0")
    out = subprocess.run([sys.executable, "-c", script % dict(isas=isas)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
