"""Where a benchmark row runs: deepkern's backends and PyTorch, behind one small interface.

A ``Backend`` knows how to move the case's host inputs to its device, bring results back for
validation, which timer measures it, and the context a call runs in. The deepkern rows are

    numpy   the reference (``deepkern.use_backend("numpy")`` around every call)
    cpu     the C++/OpenMP kernels (NumPy arrays, the default routing)
    cuda    the CUDA kernels on CuPy arrays, timed with CUDA events

and ``torch`` is PyTorch's CPU path on the same inputs (``torch.from_numpy``), with
``torch.set_num_threads`` set to deepkern's thread count; ``torch_cuda`` is PyTorch on the GPU
(cuDNN, its fused optimizers), timed with CUDA events, TF32 off (as deepkern's FP32 kernels).

To add a device, register a factory in ``FACTORIES`` (and its name in ``ORDER``): the cases
call only ``to_device``, ``to_host`` and ``context()``, the runner only ``timer`` (a
``timing.CpuTimer``-like object whose ``time(fn)`` returns the seconds ``fn`` took on the
device).
"""

from __future__ import annotations

import contextlib

import numpy as np

ORDER = ("numpy", "cpu", "cuda", "torch", "torch_cuda")


class Unavailable(Exception):
    """This backend or this case cannot run here; the message says why (shown as n/a)."""


def _map(x, f):
    """Apply f to every ndarray in a nested structure of dicts, lists and tuples."""
    if isinstance(x, np.ndarray):
        return f(x)
    if isinstance(x, dict):  # keys starting with "_" are the harness's memos, not inputs
        return {k: _map(v, f) for k, v in x.items() if not k.startswith("_")}
    if isinstance(x, (list, tuple)):
        return type(x)(_map(v, f) for v in x)
    return x


class Backend:
    """A deepkern backend on host (NumPy) arrays."""

    kind = "deepkern"
    device = "cpu"  # whose limits apply: calibrate.py measures the CPU's only

    def __init__(self, name: str):
        from .timing import CpuTimer

        self.name = name
        self.timer = CpuTimer()

    def context(self):
        """The context every call of this backend runs in."""
        import deepkern

        return deepkern.use_backend(self.name)

    def to_device(self, inputs):
        return inputs

    def to_host(self, out):
        return out

    def describe(self) -> str:
        return self.name


class CudaBackend(Backend):
    """deepkern's cuda backend on CuPy arrays (API.md: a CUDA array runs on cuda)."""

    device = "cuda"

    def __init__(self, name: str = "cuda"):
        super().__init__(name)
        try:
            import cupy
        except ImportError as e:
            raise Unavailable(f"the cuda rows need CuPy for device arrays ({e})") from None
        from .timing import CudaEventTimer

        self._cp = cupy
        self.timer = CudaEventTimer()

    def context(self):
        return contextlib.nullcontext()

    def to_device(self, inputs):
        return _map(inputs, self._cp.asarray)

    def to_host(self, out):
        cp = self._cp

        def host(v):
            return cp.asnumpy(v) if isinstance(v, cp.ndarray) else v

        if isinstance(out, (list, tuple)):
            return type(out)(host(v) for v in out)
        return host(out)

    def describe(self) -> str:
        dev = self._cp.cuda.Device()
        return f"cuda ({self._cp.cuda.runtime.getDeviceProperties(dev.id)['name'].decode()})"


class TorchBackend(Backend):
    """PyTorch's CPU path; inputs become tensors sharing the NumPy arrays' memory."""

    kind = "torch"

    def __init__(self, name: str = "torch", threads: int | None = None):
        super().__init__(name)
        try:
            import torch
        except ImportError as e:
            raise Unavailable(f"PyTorch is not installed ({e})") from None
        import deepkern

        self.torch = torch
        torch.set_num_threads(threads or deepkern.get_num_threads())

    def context(self):
        return self.torch.no_grad()

    def to_device(self, inputs):
        return _map(inputs, self.torch.from_numpy)

    def to_host(self, out):
        def host(v):
            return v.detach().numpy() if isinstance(v, self.torch.Tensor) else v

        if isinstance(out, (list, tuple)):
            return type(out)(host(v) for v in out)
        return host(out)

    def describe(self) -> str:
        return f"torch {self.torch.__version__} ({self.torch.get_num_threads()} threads)"

    def tensor(self, a):
        """A tensor of this backend holding a copy of the NumPy array a."""
        return self.torch.tensor(a)


class TorchCudaBackend(TorchBackend):
    """PyTorch on the GPU: cuDNN convolutions, its CUDA kernels and fused optimizers, on the
    current CUDA device, timed with CUDA events. TF32 is switched off for the comparison."""

    device = "cuda"

    def __init__(self, name: str = "torch_cuda", threads: int | None = None):
        super().__init__(name, threads)
        torch = self.torch
        if not torch.cuda.is_available():
            raise Unavailable(f"PyTorch {torch.__version__} sees no CUDA device")
        from .timing import TorchCudaEventTimer

        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        self.timer = TorchCudaEventTimer(torch)

    def to_device(self, inputs):
        return _map(inputs, lambda a: self.torch.from_numpy(a).cuda())

    def to_host(self, out):
        def host(v):
            return v.detach().cpu().numpy() if isinstance(v, self.torch.Tensor) else v

        if isinstance(out, (list, tuple)):
            return type(out)(host(v) for v in out)
        return host(out)

    def tensor(self, a):
        return self.torch.tensor(a, device="cuda")

    def describe(self) -> str:
        return f"torch {self.torch.__version__} on {self.torch.cuda.get_device_name()}"


# name -> factory(name, threads) of the Backend; a new device registers here.
FACTORIES = {
    "numpy": lambda name, threads: Backend(name),
    "cpu": lambda name, threads: Backend(name),
    "cuda": lambda name, threads: CudaBackend(name),
    "torch": lambda name, threads: TorchBackend(name, threads),
    "torch_cuda": lambda name, threads: TorchCudaBackend(name, threads),
}


def available(name: str, threads: int | None = None) -> Backend:
    """The Backend called ``name``, or raise Unavailable saying why it cannot run here."""
    import deepkern

    if name not in FACTORIES:
        raise ValueError(f"unknown backend '{name}'; expected some of {', '.join(FACTORIES)}")
    if name not in ("torch", "torch_cuda") and name not in deepkern.backends():
        from .._backend import cuda_unavailable_reason

        raise Unavailable(f"deepkern's {name} backend is not available: {cuda_unavailable_reason()}")
    return FACTORIES[name](name, threads)
