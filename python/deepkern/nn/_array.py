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
