"""The cuda backend's API on a GPU: array kinds, devices, streams, dtypes, in-place targets.

Skipped (with the reason) unless ``"cuda" in deepkern.backends()`` and CuPy or PyTorch can
use the GPU. The kernels' numbers are checked in test_cuda_kernels.py (on the GPU and on the
host emulator); this file checks what a user of CuPy or PyTorch sees.
"""

from __future__ import annotations

import numpy as np
import pytest

import deepkern
import deepkern.functional as F
from deepkern._backend import cuda_unavailable_reason

pytestmark = pytest.mark.skipif("cuda" not in deepkern.backends(),
                                reason=f"no usable cuda backend: {cuda_unavailable_reason()}")


class Lib:
    """The few operations the tests need, for CuPy or PyTorch."""

    def __init__(self, name):
        self.name = name
        if name == "cupy":
            import cupy
            self.m = cupy
            self.kind = cupy.ndarray
        else:
            import torch
            self.m = torch
            self.kind = torch.Tensor

    def to(self, a, device=0):
        if self.name == "cupy":
            with self.m.cuda.Device(device):
                return self.m.asarray(a)
        return self.m.from_numpy(np.ascontiguousarray(a)).to(f"cuda:{device}")

    def np(self, a):
        return self.m.asnumpy(a) if self.name == "cupy" else a.cpu().numpy()

    def device(self, a):
        return a.device.id if self.name == "cupy" else a.device.index

    def ptr(self, a):
        return a.__cuda_array_interface__["data"][0]

    def device_count(self):
        if self.name == "cupy":
            return self.m.cuda.runtime.getDeviceCount()
        return self.m.cuda.device_count()

    def stream(self):
        """A context manager making a new non-blocking stream current, and a sync function."""
        if self.name == "cupy":
            s = self.m.cuda.Stream(non_blocking=True)
            return s, s.synchronize
        s = self.m.cuda.Stream()
        return self.m.cuda.stream(s), s.synchronize


@pytest.fixture(params=["cupy", "torch"])
def lib(request):
    try:
        lib = Lib(request.param)
        if lib.device_count() == 0:
            pytest.skip(f"{request.param} sees no CUDA device")
    except Exception as e:  # ImportError, or a CuPy built for another CUDA version
        pytest.skip(f"{request.param} is not usable here: {e!r}")
    return lib


def test_build_info_names_the_devices():
    info = deepkern.build_info()["cuda"]
    assert {"version", "archs", "driver", "devices", "tf32"} <= set(info)
    assert info["devices"] and all("name" in d and "compute_capability" in d for d in info["devices"])


def test_results_are_arrays_of_the_callers_library(lib, rng):
    x = lib.to(rng.standard_normal((2, 3, 8, 8)).astype(np.float32))
    w = lib.to(rng.standard_normal((4, 3, 3, 3)).astype(np.float32))
    outs = [F.conv2d(x, w, padding=1), *F.max_pool2d(x, 2), F.avg_pool2d(x, 2),
            *F.batch_norm(x, None, None, None, None, True), *F.dropout(x, 0.5, seed=1), F.relu(x)]
    for o in outs:
        assert isinstance(o, lib.kind) and lib.device(o) == 0
    assert str(outs[1].dtype).endswith("float32") and str(outs[2].dtype).endswith("int64")
    assert str(outs[-2].dtype).endswith("uint8")


def test_unbatched_and_empty_inputs(lib, rng):
    x = rng.standard_normal((3, 6, 6)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    y = F.conv2d(lib.to(x), lib.to(w), padding=1)
    assert tuple(y.shape) == (4, 6, 6)
    np.testing.assert_allclose(lib.np(y), F.conv2d(x, w, padding=1), rtol=1e-5, atol=2e-5)
    e = F.conv2d(lib.to(np.zeros((0, 3, 6, 6), np.float32)), lib.to(w), padding=1)
    assert tuple(e.shape) == (0, 4, 6, 6)


@pytest.mark.parametrize("call", [
    lambda x: F.relu(x),
    lambda x: F.conv2d(x, x[:1]),
    lambda x: F.max_pool2d(x, 2),
    lambda x: F.avg_pool2d(x, 2),
    lambda x: F.batch_norm(x, None, None, None, None, True),
    lambda x: F.dropout(x, 0.5, seed=0),
    lambda x: F.dropout(x, 0.5, training=False),
])
def test_float64_is_a_type_error_naming_the_dtype(lib, call):
    x = lib.to(np.ones((2, 2, 4, 4), np.float64))
    with pytest.raises(TypeError, match="float64"):
        call(x)


def test_mixing_numpy_and_cuda_arrays(lib):
    with pytest.raises(TypeError, match="cannot mix"):
        F.relu_backward(lib.to(np.ones(3, np.float32)), np.ones(3, np.float32))


def test_running_stats_are_updated_in_place(lib, rng):
    x = lib.to((rng.standard_normal((8, 3, 5, 5)) + 2).astype(np.float32))
    rm, rv = lib.to(np.zeros(3, np.float32)), lib.to(np.ones(3, np.float32))
    p_rm, p_rv = lib.ptr(rm), lib.ptr(rv)
    F.batch_norm(x, None, None, rm, rv, True, momentum=0.5)
    assert lib.ptr(rm) == p_rm and lib.ptr(rv) == p_rv
    xs = lib.np(x).astype(np.float64)
    np.testing.assert_allclose(lib.np(rm), 0.5 * xs.mean(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(lib.np(rv), 0.5 + 0.5 * xs.var(axis=(0, 2, 3), ddof=1), rtol=1e-5)


def test_inplace_targets_are_never_copied(lib, rng):
    x = lib.to(rng.standard_normal((4, 3, 5, 5)).astype(np.float32))
    big = lib.to(np.zeros(6, np.float32))
    rm, rv = big[::2], lib.to(np.ones(3, np.float32))  # rm: a strided view
    with pytest.raises(ValueError, match="running_mean must be C-contiguous"):
        F.batch_norm(x, None, None, rm, rv, True)
    assert not lib.np(big).any() and (lib.np(rv) == 1).all()  # nothing written
    flat = lib.to(np.zeros(6, np.float32))
    with pytest.raises(ValueError, match="must not share memory"):
        F.batch_norm(x, None, None, flat[:3], flat[2:5], True)


def test_noncontiguous_inputs_are_copied(lib, rng):
    x = rng.standard_normal((2, 3, 8, 10)).astype(np.float32)
    xd = lib.to(x)
    view = xd[:, :, :, ::2]  # not C-contiguous
    y = F.relu(view)
    np.testing.assert_array_equal(lib.np(y), np.maximum(x[:, :, :, ::2], 0))
    w = lib.to(np.ones((2, 3, 3, 3), np.float32))
    np.testing.assert_allclose(lib.np(F.conv2d(view, w)), F.conv2d(x[:, :, :, ::2], np.ones((2, 3, 3, 3), np.float32)),
                               rtol=1e-5, atol=1e-4)


def test_runs_on_the_current_stream(lib, rng):
    """Under a non-default stream, the kernels queue behind the library's own work there."""
    x = rng.standard_normal((16, 8, 32, 32)).astype(np.float32)
    w = (rng.standard_normal((8, 8, 3, 3)) / 8).astype(np.float32)
    want = F.conv2d(F.relu(x), w, padding=1)
    ctx, sync = lib.stream()
    with ctx:
        xd = lib.to(x)
        xd = xd * 1  # library work queued on the stream, which our kernels must wait for
        y = F.conv2d(F.relu(xd), lib.to(w), padding=1)
        sync()
    np.testing.assert_allclose(lib.np(y), want, rtol=1e-4, atol=1e-4)


def test_max_pool_bad_index_is_a_value_error(lib):
    idx = lib.to(np.full((1, 1, 2, 2), 99, np.int64))
    with pytest.raises(ValueError, match="outside its input plane"):
        F.max_pool2d_backward(lib.to(np.ones((1, 1, 2, 2), np.float32)), idx, (1, 1, 4, 4))


def test_dropout_edges(lib, rng):
    x = lib.to(rng.standard_normal((5, 7)).astype(np.float32))
    y, mask = F.dropout(x, 1.0, seed=3)
    assert not lib.np(y).any() and not lib.np(mask).any()
    y, mask = F.dropout(x, 0.5, training=False)
    assert isinstance(y, lib.kind) and lib.ptr(y) != lib.ptr(x)
    np.testing.assert_array_equal(lib.np(y), lib.np(x))
    assert (lib.np(mask) == 1).all()


def test_second_device(lib, rng):
    if lib.device_count() < 2:
        pytest.skip("one CUDA device: nothing to check across devices")
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    y = F.max_pool2d(lib.to(x, device=1), 2)[0]
    assert lib.device(y) == 1
    np.testing.assert_array_equal(lib.np(y), F.max_pool2d(x, 2)[0])
    with pytest.raises(ValueError, match="device"):
        F.relu_backward(lib.to(x, device=0), lib.to(x, device=1))


def test_gil_is_released(lib, rng):
    """Two Python threads calling kernels at once: no deadlock, correct results."""
    import threading
    x = rng.standard_normal((8, 4, 16, 16)).astype(np.float32)
    want = F.relu(x)
    errors = []

    def work():
        try:
            for _ in range(20):
                np.testing.assert_array_equal(lib.np(F.relu(lib.to(x))), want)
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)
    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and not any(t.is_alive() for t in threads)
