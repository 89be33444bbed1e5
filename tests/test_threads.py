"""Every op gives bitwise identical results on 1, 2, 3 and 8 threads (8 oversubscribes CI).

The kernels split work at boundaries that depend only on the problem size and fold
reductions in a fixed order (csrc/common/parallel.h), so even the reductions (conv weight
gradient, batch-norm statistics) are bitwise stable.
"""

import threading

import numpy as np
import pytest

import deepkern
import deepkern.functional as F
from conftest import assert_bitwise, num_threads


def run_all(rng_seed=0):
    rng = np.random.default_rng(rng_seed)
    x = rng.standard_normal((5, 6, 11, 13)).astype(np.float32)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    out = {}
    y = F.conv2d(x, w, b, stride=1, padding=1, groups=2)
    out["conv y"] = y
    out.update(zip(("conv gx", "conv gw", "conv gb"), F.conv2d_backward(y, x, w, padding=1, groups=2)))
    py, idx = F.max_pool2d(x, 3, 2, 1, ceil_mode=True)
    out["maxpool y"], out["maxpool idx"] = py, idx
    out["maxpool gx"] = F.max_pool2d_backward(py, idx, x.shape)
    ay = F.avg_pool2d(x, 3, 1, 1)
    out["avgpool y"] = ay
    out["avgpool gx"] = F.avg_pool2d_backward(ay, x.shape, 3, 1, 1)
    rm, rv = np.zeros(6, np.float32), np.ones(6, np.float32)
    by, sm, si = F.batch_norm(x, np.ones(6, np.float32), np.zeros(6, np.float32), rm, rv, True)
    out.update({"bn y": by, "bn mean": sm, "bn invstd": si, "bn rm": rm, "bn rv": rv})
    out.update(zip(("bn gx", "bn gw", "bn gb"), F.batch_norm_backward(x, x, np.ones(6, np.float32), sm, si)))
    big = rng.standard_normal(300_001).astype(np.float32)
    dy, mask = F.dropout(big, 0.3, seed=5)
    out["dropout y"], out["dropout mask"] = dy, mask
    out["dropout gx"] = F.dropout_backward(big, mask, 0.3)
    out["relu y"] = F.relu(big)
    out["relu gx"] = F.relu_backward(big, out["relu y"])
    return out


def test_thread_count_invariance():
    with num_threads(1):
        ref = run_all()
    for t in (2, 3, 8):
        with num_threads(t):
            got = run_all()
        for k in ref:
            assert_bitwise(got[k], ref[k], f"{k} with {t} threads")


def test_python_threads_in_parallel_match_serial():
    """8 Python threads calling the kernels at once (the GIL is released) match serial calls."""
    serial = {s: run_all(s) for s in range(8)}
    results, errors = {}, []
    barrier = threading.Barrier(8)

    def work(s):
        try:
            barrier.wait()
            for _ in range(3):
                results[s] = run_all(s)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    for s in range(8):
        for k in serial[s]:
            assert_bitwise(results[s][k], serial[s][k], f"{k} (thread {s})")


def test_get_set_num_threads_roundtrip():
    old = deepkern.get_num_threads()
    deepkern.set_num_threads(3)
    assert deepkern.get_num_threads() == 3
    assert deepkern.build_info()["num_threads"] == 3
    deepkern.set_num_threads(old)


@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512"])
def test_every_simd_variant_matches(isa):
    """The float products dispatch on the CPU's ISA: each variant this CPU runs agrees (tolerance:
    FMA contraction may differ between variants)."""
    from deepkern import _C
    info = deepkern.build_info()
    if isa not in info["simd_variants"] or (isa == "avx512" and not info["cpu_avx512"]) or \
            (isa == "avx2" and not info["cpu_avx2"]):
        pytest.skip(f"{isa} is not available on this CPU/build")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 8, 9, 9)).astype(np.float32)
    w = rng.standard_normal((5, 8, 3, 3)).astype(np.float32)
    ref = deepkern.reference.conv2d(x.astype(np.float64), w.astype(np.float64), padding=1)
    old = _C.get_isa()
    try:
        assert _C.set_isa(isa) == isa
        y = F.conv2d(x, w, padding=1)
        gx, gw, _ = F.conv2d_backward(y, x, w, padding=1)
    finally:
        _C.set_isa(old)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
    rgx, rgw, _ = deepkern.reference.conv2d_backward(y.astype(np.float64), x.astype(np.float64),
                                                     w.astype(np.float64), padding=1)
    np.testing.assert_allclose(gx, rgx, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gw, rgw, rtol=1e-4, atol=1e-3)
