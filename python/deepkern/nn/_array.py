"""Which array library an array belongs to: NumPy for ndarrays, CuPy for CUDA arrays.

The few layers that compute with array expressions instead of deepkern kernels (Linear,
Sigmoid, the loss) take their array module from their input, so that the same code runs on
NumPy arrays on the CPU and on CuPy arrays on the GPU::

    xp = array_module(x)
    y = xp.matmul(x, w.T)
"""

from __future__ import annotations

import numpy as np


def array_module(a):
    """numpy for a NumPy array (or anything that is not a CUDA array), cupy for a CUDA array.

    A CUDA array that is not a CuPy array (a PyTorch CUDA tensor) is a TypeError: the NumPy-
    style expressions of these layers need CuPy's API.
    """
    if type(a) is np.ndarray or not hasattr(a, "__cuda_array_interface__"):
        return np
    mod = type(a).__module__.split(".")[0]
    if mod == "cupy":
        import cupy
        return cupy
    raise TypeError(f"{type(a).__name__} is a CUDA array but not a CuPy array; deepkern.nn layers "
                    "compute on CUDA through CuPy (convert with cupy.asarray)")


def is_array(a) -> bool:
    """An ndarray or an array exposing __cuda_array_interface__."""
    return isinstance(a, np.ndarray) or hasattr(a, "__cuda_array_interface__")


# ---------------------------------------------------------------------------- devices
# What `deepkern train --backend cuda` needs: the model's parameters and each batch as CuPy
# arrays, and a clear error when that cannot be. (deepkern.nn has no Module.to() of its own;
# ``module_to(model, "cuda")`` is the equivalent.)

def parse_device(device) -> tuple[str, int]:
    """"cpu" -> ("cpu", 0); "cuda" / "cuda:1" / 1 -> ("cuda", index). ValueError otherwise."""
    if isinstance(device, (int, np.integer)) and not isinstance(device, bool) and device >= 0:
        return "cuda", int(device)
    if isinstance(device, str):
        name, _, index = device.partition(":")
        if name == "cpu" and not index:
            return "cpu", 0
        if name == "cuda" and (not index or index.isdigit()):
            return "cuda", int(index or 0)
    raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or a CUDA device index, got {device!r}")


def require_cuda():
    """CuPy (the array library of deepkern.nn on the GPU), after checking that deepkern's cuda
    backend can run here. RuntimeError naming the reason otherwise (no CUDA module in this
    build, no driver, no device, CuPy missing)."""
    from .. import _arrays as A

    A.require_cuda()
    try:
        import cupy
    except ImportError as e:
        raise RuntimeError("deepkern.nn runs on the GPU with CuPy arrays, but CuPy is not installed "
                           f"({e}); install the CuPy wheel for your CUDA version (e.g. cupy-cuda12x)") from None
    return cupy


def to_device(x, device):
    """x (a NumPy or CUDA array) on ``device``: "cpu" gives a NumPy array, "cuda[:N]" a CuPy
    array on device N (a copy when x lives elsewhere; x itself when it is already there)."""
    from .. import _arrays as A

    kind, index = parse_device(device)
    if kind == "cpu":
        return A.to_host(x) if A.is_cuda(x) else x
    cupy = require_cuda()
    if isinstance(x, cupy.ndarray) and x.device.id == index:
        return x
    with cupy.cuda.Device(index):
        return cupy.array(A.to_host(x) if A.is_cuda(x) and not isinstance(x, cupy.ndarray) else x, copy=True)


def module_to(module, device):
    """Move a model's parameters (their data and grad) and floating buffers to ``device``, in
    place; returns the model. Integer buffers (BatchNorm's num_batches_tracked) stay NumPy:
    the layers read them on the host. The cuda backend is float32: a float64 model is a
    TypeError (``model.float()`` first). Create the optimizer after moving, as in PyTorch.
    """
    kind, _ = parse_device(device)
    if kind == "cuda":
        for name, p in module.named_parameters():
            dt = np.dtype(p.data.dtype) if hasattr(p.data.dtype, "kind") else None
            if dt is not None and dt != np.float32:
                raise TypeError(f"module_to: parameter {name} is {dt.name}; the cuda backend is float32 "
                                "(convert with model.float() first)")
        require_cuda()

    def move(a):
        dt = getattr(a, "dtype", None)
        if kind == "cuda" and not (hasattr(dt, "kind") and dt.kind == "f"):
            return a
        return to_device(a, device)
    return module._apply(move)
