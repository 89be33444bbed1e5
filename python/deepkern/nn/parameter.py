"""Parameter: an array that a model learns, with its gradient."""

from __future__ import annotations

import numpy as np

from .. import _validate as V


class Parameter:
    """A learnable array.

    Attributes:
      data          the values (an ndarray, or a CUDA array on the cuda backend); optimizers
                    update it in place, so keep it C-contiguous and writeable.
      grad          None, or an array of data's shape and dtype; layers accumulate into it in
                    backward, optimizers read it. May be written in place or reassigned.
      requires_grad False freezes the parameter: layers skip its gradient and optimizers skip it
                    (unlike PyTorch, which still steps a frozen parameter that has a grad).
    """

    __slots__ = ("data", "grad", "requires_grad", "__weakref__")

    def __init__(self, data, requires_grad: bool = True):
        V.array_kind(data, "Parameter data")
        if isinstance(data, np.ndarray) and not data.flags.c_contiguous:
            data = np.ascontiguousarray(data)
        self.data = data
        self.grad = None
        self.requires_grad = V.as_bool(requires_grad, "requires_grad")

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def size(self):
        return self.data.size

    def zero_grad(self):
        """Drop the gradient (PyTorch's default set_to_none=True)."""
        self.grad = None

    def accumulate_grad(self, g):
        """grad += g (grad = g when there is none yet); no-op when frozen."""
        if not self.requires_grad:
            return
        if self.grad is None:
            self.grad = g.copy() if isinstance(g, np.ndarray) else g
        else:
            self.grad += g

    def __repr__(self):
        return f"Parameter(shape={tuple(self.shape)}, dtype={self.dtype}, requires_grad={self.requires_grad})"
