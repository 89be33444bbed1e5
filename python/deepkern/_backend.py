"""Which implementation runs a call: the NumPy reference, the C++ CPU backend, or CUDA.

The arrays decide: NumPy arrays run on ``cpu`` (or on the ``numpy`` reference inside
``use_backend("numpy")``), arrays exposing ``__cuda_array_interface__`` run on ``cuda``.
Each backend is a module-like object with the same function names as ``deepkern.reference``,
called with arguments that ``deepkern.functional`` has already validated and normalized.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib

from . import _validate as V

_mode: contextvars.ContextVar[str | None] = contextvars.ContextVar("deepkern_backend", default=None)
_cuda_state: dict = {}


def _load_cuda():
    """Import the CUDA backend once; remember why it is unavailable."""
    if "module" not in _cuda_state:
        try:
            mod = importlib.import_module("deepkern._cuda_backend")
            reason = mod.unavailable_reason()
            _cuda_state["module"] = None if reason else mod
            _cuda_state["reason"] = reason
        except ImportError as e:  # no _cuda extension in this build
            _cuda_state["module"] = None
            _cuda_state["reason"] = f"this build has no CUDA module ({e})"
    return _cuda_state["module"]


def cuda_unavailable_reason() -> str | None:
    _load_cuda()
    return _cuda_state["reason"]


def backends() -> list[str]:
    """The backends this build can run here: always 'numpy' and 'cpu', 'cuda' when usable."""
    names = ["numpy", "cpu"]
    if _load_cuda() is not None:
        names.append("cuda")
    return names


def _missing(name: str) -> RuntimeError:
    hint = ""
    if name == "cuda":
        hint = (f": {cuda_unavailable_reason()}. Build it with "
                "`pip install . -C cmake.define.DEEPKERN_CUDA=ON` on a machine with nvcc")
    return RuntimeError(f"backend '{name}' is not available in this build{hint}")


@contextlib.contextmanager
def use_backend(name: str):
    """Route NumPy arrays to backend `name` inside the block ('numpy' = the reference).

    'cpu' is the default. 'cuda' is accepted where available; CUDA arrays always run on cuda
    and NumPy arrays on the CPU, whatever the block says. The setting is per thread/context.
    """
    if not isinstance(name, str):
        raise TypeError(f"backend name must be a str, got {type(name).__name__}")
    if name not in ("numpy", "cpu", "cuda"):
        raise ValueError(f"unknown backend '{name}'; expected one of 'numpy', 'cpu', 'cuda'")
    if name not in backends():
        raise _missing(name)
    token = _mode.set(name)
    try:
        yield
    finally:
        _mode.reset(token)


def current() -> str:
    return _mode.get() or "cpu"


def for_arrays(*arrays):
    """The backend module for these arrays (None entries are ignored)."""
    cuda = [a for a in arrays if a is not None and V.is_cuda_array(a)]
    if cuda:
        if len(cuda) != len([a for a in arrays if a is not None]):
            raise TypeError("cannot mix CUDA arrays and NumPy arrays in one call")
        mod = _load_cuda()
        if mod is None:
            raise _missing("cuda")
        return mod
    if _mode.get() == "numpy":
        from . import reference
        return reference
    from . import _cpu
    return _cpu
