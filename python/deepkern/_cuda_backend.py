"""The ``cuda`` backend: the ops on arrays exposing ``__cuda_array_interface__``.

Importing this module raises ImportError when the build has no ``_cuda`` extension; the
backend registry (``_backend.py``) turns that into ``backends()`` without "cuda" and a
RuntimeError naming the reason when a CUDA array is passed.
"""

from __future__ import annotations

from . import _cuda  # noqa: F401  (ImportError here means: no CUDA in this build)


def unavailable_reason():
    """None when kernels can run; else why not (no driver, no device)."""
    try:
        n = _cuda.device_count()
    except RuntimeError as e:
        return f"the CUDA driver is not usable ({e})"
    if n == 0:
        return "no CUDA device is visible"
    return "the CUDA kernels are not implemented in this build yet"


def build_info():
    return dict(_cuda.build_info())
