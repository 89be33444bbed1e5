"""CUDA arrays at deepkern's boundary: read ``__cuda_array_interface__``, allocate results.

The cuda backend takes any array exposing ``__cuda_array_interface__`` (CAI, versions 2 and
3: https://numba.readthedocs.io/en/stable/cuda/cuda_array_interface.html) and gives results
back as arrays of the caller's library, on the same device: CuPy arrays -> ``cupy.empty``,
PyTorch CUDA tensors -> ``torch.empty(device=...)``. Kernels run on the CAI's stream when the
array names one (CAI v3, CuPy), else on the library's current stream (PyTorch exports no
stream: ``torch.cuda.current_stream(device)``).

This module is pure Python and imports neither CuPy nor PyTorch at import time (only the
library that made the arrays, when it allocates), so its parsing can be tested anywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

FLOAT32 = np.dtype(np.float32)
# Arguments that are not float32 on the cuda backend (the functional layer checked them).
_EXPECTED = {"indices": np.dtype(np.int64), "mask": np.dtype(np.uint8)}


@dataclass(frozen=True)
class Interface:
    """One array's ``__cuda_array_interface__``, parsed and checked."""

    ptr: int                    # device address of element 0 (0 for an empty array)
    shape: tuple[int, ...]
    dtype: np.dtype
    strides: tuple[int, ...] | None  # in bytes; None means C-contiguous
    readonly: bool
    stream: int | None          # CAI v3: the stream the producer works on (None: none given)
    version: int

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def c_contiguous(self) -> bool:
        """C order, ignoring the strides of size-1 dimensions (and of empty arrays)."""
        if self.strides is None or self.size == 0:
            return True
        expect = self.dtype.itemsize
        for n, s in zip(reversed(self.shape), reversed(self.strides)):
            if n != 1 and s != expect:
                return False
            expect *= n
        return True


def interface(a, name: str = "array") -> Interface:
    """Parse ``a.__cuda_array_interface__``; TypeError naming ``name`` if it is malformed."""
    try:
        cai = a.__cuda_array_interface__
    except AttributeError as e:  # e.g. a CPU torch tensor raises AttributeError from the property
        raise TypeError(f"{name} does not expose __cuda_array_interface__ ({e})") from None
    bad = f"{name}.__cuda_array_interface__ is malformed"
    if not isinstance(cai, dict):
        raise TypeError(f"{bad}: expected a dict, got {type(cai).__name__}")
    try:
        shape = tuple(int(s) for s in cai["shape"])
        dtype = np.dtype(cai["typestr"])
        ptr, readonly = cai["data"]
        ptr, readonly = int(ptr or 0), bool(readonly)
    except (KeyError, TypeError, ValueError) as e:
        raise TypeError(f"{bad}: {e!r}") from None
    if any(s < 0 for s in shape):
        raise TypeError(f"{bad}: negative dimension in shape {shape}")
    if cai.get("mask") is not None:
        raise TypeError(f"{name}: masked CUDA arrays are not supported")
    strides = cai.get("strides")
    if strides is not None:
        strides = tuple(int(s) for s in strides)
        if len(strides) != len(shape):
            raise TypeError(f"{bad}: strides {strides} do not match shape {shape}")
    stream = cai.get("stream")
    if stream is not None:
        stream = int(stream)
        if stream == 0:  # the spec forbids 0 (ambiguous between the legacy and per-thread default)
            raise TypeError(f"{bad}: stream 0 is not allowed (use 1 or 2 for the default streams)")
    if math.prod(shape) > 0 and ptr == 0:
        raise TypeError(f"{bad}: null data pointer for a non-empty array")
    return Interface(ptr, shape, dtype, strides, readonly, stream, int(cai.get("version", 0)))


def library(a) -> str:
    """'cupy' or 'torch': the library whose arrays the results will be."""
    root = type(a).__module__.split(".")[0]
    if root in ("cupy", "torch"):
        return root
    raise TypeError(
        f"the cuda backend returns arrays of the caller's library and supports CuPy arrays and "
        f"PyTorch CUDA tensors; got {type(a).__module__}.{type(a).__name__}")


def device_of(a, lib: str) -> int:
    if lib == "cupy":
        return int(a.device.id)
    dev = a.device
    if getattr(dev, "type", "cuda") != "cuda":
        raise TypeError(f"expected a CUDA tensor, got one on {dev}")
    return int(dev.index or 0)


def _overlap(a: Interface, b: Interface) -> bool:
    if a.nbytes == 0 or b.nbytes == 0:
        return False
    return a.ptr < b.ptr + b.nbytes and b.ptr < a.ptr + a.nbytes


def may_share_memory(a, b) -> bool:
    """Whether two CUDA arrays' byte ranges overlap (np.may_share_memory for device memory)."""
    return _overlap(interface(a), interface(b))


def check_inplace_target(a, name: str, *others, op: str = "batch_norm") -> None:
    """A CUDA array an op writes in place: never copied, so it must be usable as it is.

    ValueError if it is not C-contiguous, is read-only, or shares memory with ``others``
    (the same rules as for NumPy arrays in ``deepkern.functional``).
    """
    info = interface(a, name)
    if not info.c_contiguous:
        raise ValueError(f"{op}: {name} must be C-contiguous (it is updated in place)")
    if info.readonly:
        raise ValueError(f"{op}: {name} is not writeable (it is updated in place)")
    for other, other_name in others:
        if other is not None and _overlap(info, interface(other, other_name)):
            raise ValueError(f"{op}: {name} must not share memory with {other_name}")


class Call:
    """The library, device and stream of one op call on CUDA arrays; allocates its outputs."""

    def __init__(self, op: str, lib: str, device: int, stream: int, like):
        self.op, self.lib, self.device, self.stream, self._like = op, lib, device, stream, like

    def empty(self, shape, dtype=FLOAT32):
        shape = tuple(int(s) for s in shape)
        dtype = np.dtype(dtype)
        if self.lib == "cupy":
            import cupy
            with cupy.cuda.Device(self.device):
                return cupy.empty(shape, dtype=dtype)
        import torch
        return torch.empty(shape, dtype=_torch_dtype(torch, dtype), device=self._like.device)

    def ones(self, shape, dtype):
        shape = tuple(int(s) for s in shape)
        if self.lib == "cupy":
            import cupy
            with cupy.cuda.Device(self.device):
                return cupy.ones(shape, dtype=np.dtype(dtype))
        import torch
        return torch.ones(shape, dtype=_torch_dtype(torch, np.dtype(dtype)), device=self._like.device)

    def copy(self, a):
        """A C-contiguous copy of ``a`` (made by its library, on the current stream)."""
        if self.lib == "cupy":
            import cupy
            with cupy.cuda.Device(self.device):
                return cupy.array(a, copy=True, order="C")
        import torch
        return a.clone(memory_format=torch.contiguous_format)

    def contiguous(self, a, info: Interface | None = None):
        """``a`` itself if C-contiguous, else a C-contiguous copy made by its library."""
        if (info or interface(a)).c_contiguous:
            return a
        if self.lib == "cupy":
            import cupy
            with cupy.cuda.Device(self.device):
                return cupy.ascontiguousarray(a)
        return a.contiguous()


def _torch_dtype(torch, dtype: np.dtype):
    return {np.dtype(np.float32): torch.float32, np.dtype(np.int64): torch.int64,
            np.dtype(np.uint8): torch.uint8}[dtype]


def current_stream(lib: str, device: int) -> int:
    """The library's current stream on ``device``, as an integer cudaStream_t."""
    if lib == "cupy":
        import cupy
        with cupy.cuda.Device(device):
            return int(cupy.cuda.get_current_stream().ptr)
    import torch
    return int(torch.cuda.current_stream(device).cuda_stream)


def prepare(op: str, inplace=(), **arrays):
    """Check the CUDA arrays of one call; return ``(call, [arrays in the order given])``.

    Every non-None array must be float32 (``indices`` int64, ``mask`` uint8; anything else is
    a TypeError naming the dtype: the cuda backend is float32 only), come from one library
    and live on one device. Non-contiguous inputs are replaced by C-contiguous copies; the
    arrays named in ``inplace`` are written in place and are never copied: they must already
    be C-contiguous and writeable (ValueError). Nothing is allocated or written before all
    checks pass.
    """
    infos, lib, dev, like, stream = {}, None, None, None, None
    for name, a in arrays.items():
        if a is None:
            continue
        info = interface(a, name)
        want = _EXPECTED.get(name, FLOAT32)
        if info.dtype != want:
            extra = " (float64 runs on the cpu and numpy backends)" if info.dtype == np.float64 else ""
            raise TypeError(f"{op}: {name} has unsupported dtype {info.dtype.name} on the cuda "
                            f"backend; expected {want.name}{extra}")
        this_lib = library(a)
        this_dev = device_of(a, this_lib)
        if lib is None:
            lib, dev, like, first = this_lib, this_dev, a, name
        elif this_lib != lib:
            raise TypeError(f"{op}: {name} is a {this_lib} array but {first} is a {lib} array")
        elif this_dev != dev:
            raise ValueError(f"{op}: {name} is on CUDA device {this_dev} but {first} is on device {dev}")
        if stream is None and info.stream is not None:
            stream = info.stream
        infos[name] = info
    if lib is None:
        raise TypeError(f"{op}: no CUDA array among the arguments")
    for name in inplace:
        if arrays.get(name) is not None:
            others = [(b, n) for n, b in arrays.items() if n != name and b is not None]
            check_inplace_target(arrays[name], name, *others, op=op)
    if stream is None:
        stream = current_stream(lib, dev)
    call = Call(op, lib, dev, stream, like)
    out = [None if a is None else (a if n in inplace else call.contiguous(a, infos[n]))
           for n, a in arrays.items()]
    return call, out


# ---------------------------------------------------------------------------- arrays that live on
# (deepkern.optim's state, EMA averages, moving models): allocation and host <-> device copies
# with the array's own library, on its device. Used by the optimizers, the EMA, gradient
# clipping and deepkern.nn's device helpers.

def is_cuda(a) -> bool:
    """An array exposing __cuda_array_interface__ (not a NumPy array)."""
    return hasattr(a, "__cuda_array_interface__") and not isinstance(a, np.ndarray)


def require_cuda():
    """The cuda backend module (``deepkern._cuda_backend``), or RuntimeError naming why not."""
    from . import _backend

    mod = _backend._load_cuda()
    if mod is None:
        raise _backend._missing("cuda")
    return mod


def device_key(a) -> tuple[str, int]:
    """(library, device) of a CUDA array: arrays with the same key can share one launch."""
    lib = library(a)
    return lib, device_of(a, lib)


def dtype(a) -> np.dtype:
    """NumPy's dtype of any array (PyTorch's dtypes are not NumPy's: read the interface)."""
    if isinstance(a, np.ndarray) or library_name(a) == "cupy":
        return np.dtype(a.dtype)
    return interface(a).dtype


def library_name(a) -> str:
    return type(a).__module__.split(".")[0]


def c_contiguous(a) -> bool:
    if isinstance(a, np.ndarray) or library_name(a) == "cupy":
        return bool(a.flags.c_contiguous)
    return bool(a.is_contiguous()) if library_name(a) == "torch" else interface(a).c_contiguous


def zeros_like(a):
    """C-contiguous zeros of a's shape and dtype, of a's library, on a's device."""
    return full_like(a, 0)


def full_like(a, value):
    """A C-contiguous array of a's shape and dtype filled with value (a's library and device)."""
    if isinstance(a, np.ndarray):
        return np.full(a.shape, value, dtype=a.dtype)
    lib, dev = device_key(a)
    if lib == "cupy":
        import cupy
        with cupy.cuda.Device(dev):
            return cupy.full(tuple(a.shape), value, dtype=a.dtype)
    import torch
    return torch.full(tuple(a.shape), value, dtype=a.dtype, device=a.device)


def copy(a):
    """A C-contiguous copy of a (a's library, a's device)."""
    if isinstance(a, np.ndarray):
        return np.array(a, order="C", copy=True)
    lib, dev = device_key(a)
    if lib == "cupy":
        import cupy
        with cupy.cuda.Device(dev):
            return cupy.array(a, copy=True, order="C")
    import torch
    return a.clone(memory_format=torch.contiguous_format)


def contiguous(a):
    """a itself when C-contiguous, else a C-contiguous copy (a's library and device)."""
    if isinstance(a, np.ndarray):
        return np.ascontiguousarray(a)
    return a if c_contiguous(a) else copy(a)


def to_host(a) -> np.ndarray:
    """A NumPy copy of a CUDA array (synchronizes), or a NumPy array itself."""
    if isinstance(a, np.ndarray):
        return a
    lib = library(a)
    if lib == "cupy":
        import cupy
        return cupy.asnumpy(a)
    return a.detach().cpu().numpy()


def from_host(a: np.ndarray, like):
    """The NumPy array a copied to like's library and device (a's dtype is kept)."""
    a = np.ascontiguousarray(a)
    if isinstance(like, np.ndarray):
        return np.array(a, copy=True)
    lib, dev = device_key(like)
    if lib == "cupy":
        import cupy
        with cupy.cuda.Device(dev):
            return cupy.array(a, copy=True)
    import torch
    return torch.from_numpy(a.copy()).to(like.device)


def stream_for(a) -> int:
    """The stream a multi-tensor pass over arrays like ``a`` runs on: the library's current
    stream on a's device (what CuPy also exports as the interface's ``stream``)."""
    lib, dev = device_key(a)
    return current_stream(lib, dev)


def find_overlaps(infos, written) -> list[tuple[int, int]]:
    """Pairs (i, j), i before j in address order, of interfaces whose byte ranges intersect with
    at least one of the two written: a sorted sweep (O(n log n) when nothing overlaps)."""
    order = sorted((k for k in range(len(infos)) if infos[k].nbytes), key=lambda k: infos[k].ptr)
    out, open_ = [], []
    for j in order:
        lo = infos[j].ptr
        open_ = [i for i in open_ if infos[i].ptr + infos[i].nbytes > lo]
        out += [(i, j) for i in open_ if written[i] or written[j]]
        open_.append(j)
    return out
