"""The CUDA boundary without a GPU: __cuda_array_interface__ parsing, argument checks, routing.

Fake objects expose ``__cuda_array_interface__`` (no memory behind the pointer): everything
checked here happens before any CUDA call, so it runs on every machine. The kernels
themselves are tested in test_cuda.py (GPU) and test_cuda_host.py (their math on the CPU).
"""

import re

import numpy as np
import pytest

import deepkern
import deepkern.functional as F
from deepkern import _arrays as A
from deepkern import _backend


class _Dev:
    def __init__(self, i):
        self.id = i


class FakeCupy:
    """Looks like a CuPy array to deepkern: module 'cupy', .device.id, a CAI v3 dict."""

    __module__ = "cupy"

    def __init__(self, shape, typestr="<f4", ptr=0x7F0000000000, strides=None, readonly=False,
                 stream=1, device=0, version=3, **extra):
        self.shape = tuple(shape)
        self.ndim = len(self.shape)
        self.dtype = np.dtype(typestr)
        self.device = _Dev(device)
        self.__cuda_array_interface__ = dict(shape=self.shape, typestr=typestr, data=(ptr, readonly),
                                             strides=strides, version=version, **extra)
        if stream is not None:
            self.__cuda_array_interface__["stream"] = stream

    def reshape(self, shape):
        return FakeCupy(shape, self.dtype.str, self.__cuda_array_interface__["data"][0])


class FakeOther(FakeCupy):
    __module__ = "numba.cuda"


# ---------------------------------------------------------------- parsing

def test_interface_v3_defaults_to_c_contiguous():
    info = A.interface(FakeCupy((2, 3, 4)), "x")
    assert info.shape == (2, 3, 4) and info.dtype == np.float32 and info.strides is None
    assert info.c_contiguous and info.size == 24 and info.nbytes == 96
    assert info.stream == 1 and info.version == 3 and not info.readonly


def test_interface_v2_without_stream():
    info = A.interface(FakeCupy((5,), "<i8", stream=None, version=2), "idx")
    assert info.stream is None and info.dtype == np.int64


@pytest.mark.parametrize("shape, strides, contiguous", [
    ((2, 3), (12, 4), True),          # explicit C strides
    ((2, 3), (4, 8), False),          # transposed (Fortran order)
    ((2, 3), (24, 8), False),         # every other element
    ((2, 1, 3), (12, 999, 4), True),  # the stride of a size-1 dimension does not matter
    ((0, 3), (4, 8), True),           # empty: any strides
    ((3,), (-4,), False),             # negative stride
    ((3,), (0,), False),              # broadcast (zero stride)
])
def test_contiguity(shape, strides, contiguous):
    assert A.interface(FakeCupy(shape, strides=strides), "x").c_contiguous is contiguous


def test_empty_array_may_have_a_null_pointer():
    assert A.interface(FakeCupy((0, 4), ptr=0), "x").size == 0


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("shape"), "malformed"),
    (lambda d: d.update(typestr="not a dtype"), "malformed"),
    (lambda d: d.update(data=None), "malformed"),
    (lambda d: d.update(data=(0, False)), "null data pointer"),
    (lambda d: d.update(mask=object()), "masked"),
    (lambda d: d.update(stream=0), "stream 0"),
    (lambda d: d.update(strides=(4,)), "do not match"),
    (lambda d: d.update(shape=(2, -1)), "negative"),
])
def test_malformed_interface_is_a_type_error(mutate, message):
    a = FakeCupy((2, 3))
    mutate(a.__cuda_array_interface__)
    with pytest.raises(TypeError, match=message):
        A.interface(a, "x")


def test_interface_that_is_not_a_dict():
    class Odd:
        __cuda_array_interface__ = [1, 2]
    with pytest.raises(TypeError, match="expected a dict"):
        A.interface(Odd(), "x")


def test_property_raising_attribute_error():
    class CpuTensor:  # torch's CPU tensors raise AttributeError from the property
        @property
        def __cuda_array_interface__(self):
            raise AttributeError("Can't get __cuda_array_interface__ on non-CUDA tensor")
    with pytest.raises(TypeError, match="non-CUDA"):
        A.interface(CpuTensor(), "x")


def test_library_detection():
    assert A.library(FakeCupy((1,))) == "cupy"
    with pytest.raises(TypeError, match="CuPy arrays and PyTorch CUDA tensors"):
        A.library(FakeOther((1,)))


# ---------------------------------------------------------------- prepare()

def test_prepare_returns_the_arrays_and_the_interface_stream():
    x, w = FakeCupy((2, 3), stream=0xABC), FakeCupy((3,), ptr=0x7F0000100000, stream=0xABC)
    call, (x2, none, w2) = A.prepare("op", x=x, bias=None, weight=w)
    assert x2 is x and w2 is w and none is None  # contiguous inputs are not copied
    assert call.lib == "cupy" and call.device == 0 and call.stream == 0xABC


def test_prepare_rejects_float64_naming_the_dtype():
    with pytest.raises(TypeError, match=r"x has unsupported dtype float64 on the cuda backend"):
        A.prepare("relu", x=FakeCupy((2,), "<f8"))


def test_prepare_expects_int64_indices_and_uint8_masks():
    A.prepare("op", grad_out=FakeCupy((2,)), indices=FakeCupy((2,), "<i8"), mask=FakeCupy((2,), "|u1"))
    with pytest.raises(TypeError, match="indices has unsupported dtype int32"):
        A.prepare("op", grad_out=FakeCupy((2,)), indices=FakeCupy((2,), "<i4"))


def test_prepare_rejects_other_libraries_and_mixed_devices():
    with pytest.raises(TypeError, match="PyTorch CUDA tensors"):
        A.prepare("op", x=FakeOther((2,)))
    with pytest.raises(ValueError, match="device 1 but x is on device 0"):
        A.prepare("op", x=FakeCupy((2,)), weight=FakeCupy((2,), device=1))


def test_prepare_never_copies_inplace_targets():
    x = FakeCupy((4, 3))
    strided = FakeCupy((3,), ptr=0x7F0000200000, strides=(8,))
    with pytest.raises(ValueError, match="running_mean must be C-contiguous"):
        A.prepare("batch_norm", inplace=("running_mean",), x=x, running_mean=strided)
    ro = FakeCupy((3,), ptr=0x7F0000200000, readonly=True)
    with pytest.raises(ValueError, match="running_mean is not writeable"):
        A.prepare("batch_norm", inplace=("running_mean",), x=x, running_mean=ro)
    inside_x = FakeCupy((3,), ptr=0x7F0000000000 + 8)
    with pytest.raises(ValueError, match="running_mean must not share memory with x"):
        A.prepare("batch_norm", inplace=("running_mean",), x=x, running_mean=inside_x)


def test_may_share_memory_on_byte_ranges():
    a = FakeCupy((4,), ptr=0x1000)
    assert A.may_share_memory(a, FakeCupy((4,), ptr=0x100C))       # last element of a
    assert not A.may_share_memory(a, FakeCupy((4,), ptr=0x1010))   # right after a
    assert not A.may_share_memory(a, FakeCupy((0,), ptr=0x1000))   # empty


# ---------------------------------------------------------------- functional + routing

@pytest.fixture
def no_cuda(monkeypatch):
    """Pretend the CUDA backend is unavailable for a known reason (whatever the machine)."""
    monkeypatch.setattr(_backend, "_cuda_state", {"module": None, "reason": "test: no driver here"})


def test_cuda_array_without_backend_is_a_runtime_error_naming_the_reason(no_cuda):
    with pytest.raises(RuntimeError, match=r"backend 'cuda' is not available.*test: no driver here"):
        F.relu(FakeCupy((2, 3)))
    assert "cuda" not in deepkern.backends()


def test_mixing_numpy_and_cuda_arrays_is_a_type_error(no_cuda):
    with pytest.raises(TypeError, match="cannot mix"):
        F.relu_backward(FakeCupy((2,)), np.ones(2, np.float32))


def test_use_backend_cuda_without_backend(no_cuda):
    with pytest.raises(RuntimeError, match="test: no driver here"):
        with deepkern.use_backend("cuda"):
            pass


@pytest.mark.parametrize("make_rm, message", [
    (lambda: FakeCupy((3,), ptr=0x7F0000200000, strides=(8,)), "C-contiguous"),
    (lambda: FakeCupy((3,), ptr=0x7F0000200000, readonly=True), "not writeable"),
    (lambda: FakeCupy((3,), ptr=0x7F0000000000), "share memory with x"),
])
def test_batch_norm_checks_cuda_running_stats_before_dispatch(no_cuda, make_rm, message):
    x = FakeCupy((4, 3))
    rv = FakeCupy((3,), ptr=0x7F0000300000)
    with pytest.raises(ValueError, match=message):
        F.batch_norm(x, None, None, make_rm(), rv, training=True)


def test_batch_norm_running_stats_sharing_memory(no_cuda):
    x = FakeCupy((4, 3))
    rm, rv = FakeCupy((3,), ptr=0x7F0000200000), FakeCupy((3,), ptr=0x7F0000200004)
    with pytest.raises(ValueError, match="running_mean and running_var must not share memory"):
        F.batch_norm(x, None, None, rm, rv, training=True)


# ---------------------------------------------------------------- the compiled module, if built

def _cuda_module():
    try:
        from deepkern import _cuda
    except ImportError as e:
        pytest.skip(f"this build has no CUDA module ({e}); build with -C cmake.define.DEEPKERN_CUDA=ON")
    return _cuda


def test_backends_tell_the_truth_about_the_cuda_module():
    cu = _cuda_module()
    reason = _backend.cuda_unavailable_reason()
    has_device = cu.probe_error() == ""
    assert ("cuda" in deepkern.backends()) == has_device
    info = deepkern.build_info()
    if has_device:
        assert reason is None and {"version", "archs", "devices"} <= set(info["cuda"])
    else:
        assert "is built, but" in reason and cu.probe_error() in reason
        assert info["cuda"] is None and info["cuda_unavailable"] == reason
    assert set(cu.build_info()["archs"]) and cu.build_info()["tf32"] is False


def test_binding_checks_arguments_before_touching_cuda():
    cu = _cuda_module()
    x, y = FakeCupy((2, 3)), FakeCupy((2, 3), ptr=0x7F0000100000)
    with pytest.raises(TypeError, match="x must be float32 on the cuda backend, got float64"):
        cu.relu_forward(y, FakeCupy((2, 3), "<f8"), 0)
    with pytest.raises(ValueError, match="y has 5 elements, expected 6"):
        cu.relu_forward(FakeCupy((5,), ptr=0x7F0000100000), x, 0)
    with pytest.raises(ValueError, match="y is read-only"):
        cu.relu_forward(FakeCupy((2, 3), ptr=0x7F0000100000, readonly=True), x, 0)
    with pytest.raises(ValueError, match="must be C-contiguous"):
        cu.relu_forward(y, FakeCupy((2, 3), strides=(4, 8)), 0)
    with pytest.raises(TypeError, match="must be a CUDA array"):
        cu.relu_forward(y, np.ones((2, 3), np.float32), 0)
    broken = FakeCupy((2, 3))
    del broken.__cuda_array_interface__["shape"]
    with pytest.raises(TypeError, match="x.__cuda_array_interface__ is malformed"):
        cu.relu_forward(y, broken, 0)
    with pytest.raises(ValueError, match="indices has shape"):
        cu.max_pool2d_backward(FakeCupy((1, 1, 4, 4)), FakeCupy((1, 1, 2, 2)),
                               FakeCupy((1, 1, 3, 3), "<i8"), 0)
    with pytest.raises(ValueError, match="conv2d: output size does not match"):
        cu.conv2d_forward(FakeCupy((1, 2, 5, 5)), FakeCupy((1, 1, 5, 5)), FakeCupy((2, 1, 3, 3)),
                          None, (1, 1), (0, 0), (1, 1), 1, 0)
    with pytest.raises(ValueError, match="running_mean must not share memory with running_var"):
        cu.batch_norm_forward(FakeCupy((4, 3), ptr=0x7F0000100000), FakeCupy((3,), ptr=0x7F0000200000),
                              FakeCupy((3,), ptr=0x7F0000300000), x.reshape((4, 3)), None, None,
                              FakeCupy((3,), ptr=0x7F0000400000), FakeCupy((3,), ptr=0x7F0000400004),
                              True, 0.1, 1e-5, 0)


def test_binding_with_pointers_that_are_not_gpu_memory_raises():
    """Valid-looking arguments whose pointers are not device memory: an error, never a crash."""
    cu = _cuda_module()
    with pytest.raises((RuntimeError, ValueError), match="pointer|not in GPU memory"):
        cu.relu_forward(FakeCupy((2, 3), ptr=0x7F0000100000), FakeCupy((2, 3)), 0)


def test_empty_arrays_launch_nothing():
    cu = _cuda_module()
    cu.relu_forward(FakeCupy((0, 3), ptr=0), FakeCupy((0, 3), ptr=0), 0)  # no pointer query, no launch


# ---------------------------------------------------------------- the Python -> C++ contract

class HostArray:
    """A 'CuPy array' backed by NumPy memory: real shapes and pointers, but host memory."""

    __module__ = "cupy"

    def __init__(self, a):
        self.a = a
        self.shape, self.ndim, self.device = a.shape, a.ndim, _Dev(0)
        # not a NumPy dtype (like torch.float32): deepkern must read the dtype from the CAI
        self.dtype = object()

    @property
    def __cuda_array_interface__(self):
        a = self.a
        return dict(shape=a.shape, typestr=a.dtype.str, data=(a.ctypes.data, False),
                    strides=None if a.flags.c_contiguous else a.strides, version=3, stream=1)

    def reshape(self, shape):
        return HostArray(self.a.reshape(shape))

    def __getitem__(self, i):
        return HostArray(self.a[i])


@pytest.fixture
def fake_cupy_backend(monkeypatch):
    """The real _cuda_backend and _cuda module, with a fake 'cupy' that allocates host memory."""
    _cuda_module()
    import sys
    import types
    from deepkern import _cuda_backend

    class Device:
        def __init__(self, i):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    fake = types.ModuleType("cupy")
    fake.empty = lambda shape, dtype: HostArray(np.empty(shape, dtype))
    fake.ones = lambda shape, dtype: HostArray(np.ones(shape, dtype))
    fake.array = lambda a, copy, order: HostArray(np.array(a.a, copy=True, order=order))
    fake.ascontiguousarray = lambda a: HostArray(np.ascontiguousarray(a.a))
    fake.cuda = types.SimpleNamespace(Device=Device,
                                      get_current_stream=lambda: types.SimpleNamespace(ptr=0))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(_backend, "_cuda_state", {"module": _cuda_backend, "reason": None})
    probe = BindingProbe(_cuda_backend._cuda)
    monkeypatch.setattr(_cuda_backend, "_cuda", probe)
    return probe


class BindingProbe:
    """Stands in for _cuda: calls the real binding, which must get through every argument
    check and stop only at the device check (host memory is not GPU memory, or there is no
    driver); records the calls that did."""

    DEVICE_CHECK = re.compile("cannot query its pointer|not in GPU memory")

    def __init__(self, real):
        self.real, self.calls = real, []

    def __getattr__(self, name):
        fn = getattr(self.real, name)

        def call(*args):
            try:
                fn(*args)
            except (RuntimeError, ValueError) as e:
                if not self.DEVICE_CHECK.search(str(e)):
                    raise
            self.calls.append(name)
        return call


def _h(shape, dtype=np.float32, fill=None):
    a = np.ones(shape, dtype) if fill is None else np.full(shape, fill, dtype)
    return HostArray(a)


OPS = {
    "conv2d": lambda: F.conv2d(_h((2, 4, 9, 9)), _h((6, 2, 3, 3)), _h((6,)), stride=2, padding=1,
                               dilation=(1, 2), groups=2),
    "conv2d_backward": lambda: F.conv2d_backward(_h((2, 6, 5, 4)), _h((2, 4, 9, 9)), _h((6, 2, 3, 3)),
                                                 stride=2, padding=1, dilation=(1, 2), groups=2),
    "max_pool2d": lambda: F.max_pool2d(_h((2, 3, 7, 7)), 3, 2, 1, dilation=1, ceil_mode=True),
    "max_pool2d_backward": lambda: F.max_pool2d_backward(_h((2, 3, 4, 4)), _h((2, 3, 4, 4), np.int64, 0),
                                                         (2, 3, 7, 7)),
    "avg_pool2d": lambda: F.avg_pool2d(_h((2, 3, 7, 7)), 3, 2, 1, ceil_mode=True,
                                       count_include_pad=False),
    "avg_pool2d_backward": lambda: F.avg_pool2d_backward(_h((2, 3, 4, 4)), (2, 3, 7, 7), 3, 2, 1,
                                                         ceil_mode=True),
    "batch_norm train": lambda: F.batch_norm(_h((4, 3, 5, 5)), _h((3,)), _h((3,)), _h((3,), fill=0),
                                             _h((3,)), True),
    "batch_norm eval": lambda: F.batch_norm(_h((4, 3)), None, None, _h((3,), fill=0), _h((3,)), False),
    "batch_norm_backward": lambda: F.batch_norm_backward(_h((4, 3, 5, 5)), _h((4, 3, 5, 5)), _h((3,)),
                                                         _h((3,)), _h((3,)), True),
    "batch_norm_relu": lambda: F.batch_norm_relu(_h((4, 3, 5, 5)), _h((3,)), _h((3,)), _h((3,), fill=0),
                                                 _h((3,)), True),
    "batch_norm_relu_backward": lambda: F.batch_norm_relu_backward(
        _h((4, 3, 5, 5)), _h((4, 3, 5, 5)), _h((4, 3, 5, 5)), _h((3,)), _h((3,)), _h((3,)), True),
    "dropout": lambda: F.dropout(_h((5, 7)), 0.3, seed=1),
    "dropout_backward": lambda: F.dropout_backward(_h((5, 7)), _h((5, 7), np.uint8), 0.3),
    "relu": lambda: F.relu(_h((5, 7))),
    "relu_backward": lambda: F.relu_backward(_h((5, 7)), _h((5, 7))),
}


BINDINGS = {
    "conv2d": ["conv2d_forward"],
    "conv2d_backward": ["conv2d_backward_input", "conv2d_backward_weight"],
    "max_pool2d": ["max_pool2d_forward"], "max_pool2d_backward": ["max_pool2d_backward"],
    "avg_pool2d": ["avg_pool2d_forward"], "avg_pool2d_backward": ["avg_pool2d_backward"],
    "batch_norm train": ["batch_norm_forward"], "batch_norm eval": ["batch_norm_forward"],
    "batch_norm_backward": ["batch_norm_backward"], "dropout": ["dropout_forward"],
    "batch_norm_relu": ["batch_norm_forward"], "batch_norm_relu_backward": ["batch_norm_backward"],
    "dropout_backward": ["dropout_backward"], "relu": ["relu_forward"],
    "relu_backward": ["relu_backward"],
}


@pytest.mark.parametrize("op", sorted(OPS))
def test_backend_calls_pass_every_binding_check(fake_cupy_backend, op):
    """Every binding call of each op gets through the binding's checks to its device check:
    arguments in the order, shapes and dtypes the binding wants (a swap of differently shaped
    or typed arrays fails a check; a swap of two same-shaped inputs cannot be seen here)."""
    OPS[op]()
    assert fake_cupy_backend.calls == BINDINGS[op]


def test_backend_rejects_float64_before_the_binding(fake_cupy_backend):
    with pytest.raises(TypeError, match="float64 on the cuda backend"):
        F.relu(_h((2, 3), np.float64))


def test_dropout_identity_path_returns_library_arrays(fake_cupy_backend):
    x = _h((3, 4), fill=2.5)
    y, mask = F.dropout(x, 0.5, training=False)
    assert isinstance(y, HostArray) and isinstance(mask, HostArray) and y.a is not x.a
    assert (y.a == 2.5).all() and mask.a.dtype == np.uint8 and (mask.a == 1).all()
