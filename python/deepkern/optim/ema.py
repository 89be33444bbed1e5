"""EMA: an exponential moving average (Polyak averaging) of the parameters."""

from __future__ import annotations

import numbers

import numpy as np

from .. import _arrays as A
from .. import _backend
from ..nn.parameter import Parameter
from . import _kernel, reference

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _data(x, where):
    """The array behind a Parameter (or an array given directly)."""
    a = x.data if isinstance(x, Parameter) else x
    if A.is_cuda(a):
        if A.dtype(a) != np.float32:
            raise TypeError(f"{where}: unsupported dtype {A.dtype(a).name} on the cuda backend; CUDA "
                            "parameters must be float32")
        A.library(a)
        return a
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{where}: EMA tracks Parameters or numpy.ndarrays (or CUDA arrays), got {type(x).__name__}")
    if a.dtype not in _FLOATS:
        raise TypeError(f"{where}: unsupported dtype {a.dtype.name}; deepkern supports float32 or float64")
    return a


class EMA:
    """Exponential moving average of parameters, updated in one fused pass.

    Args:
      params  iterable of ``deepkern.nn.Parameter`` (or ndarrays) to average
      decay   in [0, 1] (default 0.999): the weight of the old average

    The average starts as a copy of the parameters; each ``update()`` does, element-wise,

        avg <- decay * avg + (1 - decay) * p

    for every tracked parameter in one C++ call (per dtype; CUDA parameters: one kernel launch
    per device, the average living on the parameter's device). With decay 0.999 the average
    spans roughly the last 1 / (1 - decay) = 1000 updates. Evaluating with the averaged
    weights (``copy_to``) often generalizes better than the last iterate: Polyak-Ruppert
    averaging, the cheap cousin of snapshot ensembles.

    ``deepkern.optim.fused_step(optimizer, ema=ema)`` updates the average inside the
    optimizer's pass (the new parameter value is still in a register), saving a read of
    every parameter; the result is bitwise the same as ``optimizer.step(); ema.update()``.

    Attributes: ``decay``, ``num_updates``, ``params`` (what is tracked), ``shadow`` (the
    averages, C-contiguous arrays in the parameters' dtypes, libraries and devices).
    ``state_dict()`` holds host (NumPy) copies; ``load_state_dict`` copies them back to the
    averages' devices.
    """

    def __init__(self, params, decay: float = 0.999):
        self.decay = _check_decay(decay)
        if isinstance(params, (Parameter, np.ndarray)):
            params = [params]
        self.params = list(params)
        if len({id(p) for p in self.params}) != len(self.params):
            raise ValueError("EMA got the same parameter twice")
        self.shadow = [A.copy(_data(p, f"params[{i}]")) for i, p in enumerate(self.params)]
        self.num_updates = 0
        self._index = {id(p): i for i, p in enumerate(self.params)}

    def _check(self):
        """Every tracked parameter still matches its average (checked before any write)."""
        current = []
        for i, (p, avg) in enumerate(zip(self.params, self.shadow)):
            a = _data(p, f"params[{i}]")
            if A.is_cuda(a) or A.is_cuda(avg):
                _check_same_device(a, avg, f"EMA params[{i}]")
            if tuple(a.shape) != tuple(avg.shape):
                raise ValueError(f"EMA params[{i}] now has shape {tuple(a.shape)}, its average {tuple(avg.shape)}")
            if A.dtype(a) != A.dtype(avg):
                raise TypeError(f"EMA params[{i}] is now {A.dtype(a).name}, its average {A.dtype(avg).name}")
            if A.may_share_memory(a, avg) if A.is_cuda(a) else np.may_share_memory(a, avg):
                raise ValueError(f"EMA params[{i}] shares memory with its average")
            current.append(a)
        return current

    def update(self) -> None:
        """avg <- decay * avg + (1 - decay) * p for every tracked parameter."""
        self._update_indices(range(len(self.params)), self._check())
        self.num_updates += 1

    def _update_indices(self, indices, current):
        if _backend.current() == "numpy":  # the NumPy reference, in float64
            for i in indices:
                avg = self.shadow[i]
                avg[...] = reference.ema(avg.astype(np.float64), current[i].astype(np.float64), self.decay)
            return
        batches: dict = {}
        for i in indices:
            avg = self.shadow[i]
            key = A.device_key(avg) if A.is_cuda(avg) else avg.dtype
            avgs, xs = batches.setdefault(key, ([], []))
            avgs.append(avg)
            xs.append(A.contiguous(current[i]))
        for key, (avgs, xs) in batches.items():
            (_kernel.ema_update_cuda if isinstance(key, tuple) else _kernel.ema_update)(avgs, xs, self.decay)

    def _shadow_of(self, p):
        i = self._index.get(id(p))
        return None if i is None else self.shadow[i]

    def _finish_fused_update(self, stepped_ids) -> None:
        """After a fused step updated the averages of the stepped parameters: update the rest."""
        rest = [i for i, p in enumerate(self.params) if id(p) not in stepped_ids]
        if rest:
            current = self._check()
            self._update_indices(rest, current)
        self.num_updates += 1

    def copy_to(self, params=None) -> None:
        """Write the averages into `params` (default: the tracked parameters), in place.

        `params` must list as many arrays/Parameters, of the same shapes, as were tracked; all
        are checked before any is written."""
        targets = self.params if params is None else list([params] if isinstance(params, (Parameter, np.ndarray))
                                                           else params)
        if len(targets) != len(self.shadow):
            raise ValueError(f"copy_to got {len(targets)} parameters, the EMA tracks {len(self.shadow)}")
        arrays = []
        for i, (t, avg) in enumerate(zip(targets, self.shadow)):
            a = _data(t, f"params[{i}]")
            if tuple(a.shape) != tuple(avg.shape):
                raise ValueError(f"copy_to: params[{i}] has shape {tuple(a.shape)}, its average {tuple(avg.shape)}")
            if A.is_cuda(a) or A.is_cuda(avg):
                _check_same_device(a, avg, f"copy_to: params[{i}]")
                if A.interface(a).readonly:
                    raise ValueError(f"copy_to: params[{i}] is read-only")
            elif not a.flags.writeable:
                raise ValueError(f"copy_to: params[{i}] is read-only")
            arrays.append(a)
        cuda: dict = {}  # contiguous CUDA targets: one launch per device
        for a, avg in zip(arrays, self.shadow):
            if A.is_cuda(a) and A.c_contiguous(a):
                dsts, srcs = cuda.setdefault(A.device_key(a), ([], []))
                dsts.append(a)
                srcs.append(avg)
            elif A.is_cuda(a):
                a[...] = avg  # a strided CUDA view: its library's copy
            else:
                np.copyto(a, avg, casting="same_kind")
        for dsts, srcs in cuda.values():
            _kernel.multi_copy_cuda(dsts, srcs)

    def state_dict(self) -> dict:
        """{"decay": float, "num_updates": int, "shadow": [ndarray copies]} (host copies also for
        CUDA averages; save with deepkern.optim.save_state)."""
        return {"decay": self.decay, "num_updates": self.num_updates,
                "shadow": [A.to_host(a).copy() for a in self.shadow]}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore averages, decay and count; validated first (ValueError/TypeError, nothing
        changed on error). Averages are cast to the tracked parameters' dtypes."""
        if not isinstance(state_dict, dict) or not {"decay", "num_updates", "shadow"} <= set(state_dict):
            raise ValueError("EMA state_dict must be a dict with 'decay', 'num_updates' and 'shadow'")
        decay = _check_decay(state_dict["decay"])
        n = state_dict["num_updates"]
        if isinstance(n, np.ndarray):
            n = n.item()
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
            raise ValueError(f"EMA state_dict: num_updates must be a non-negative int, got {n!r}")
        saved = list(state_dict["shadow"])
        if len(saved) != len(self.shadow):
            raise ValueError(f"EMA state_dict holds {len(saved)} averages, this EMA tracks {len(self.shadow)}")
        new = []
        for i, (s, cur) in enumerate(zip(saved, self.shadow)):
            a = A.to_host(s) if A.is_cuda(s) else np.asarray(s)
            if a.dtype.kind != "f":
                raise TypeError(f"EMA state_dict shadow[{i}]: expected a floating array, got {a.dtype.name}")
            if a.shape != tuple(cur.shape):
                raise ValueError(f"EMA state_dict shadow[{i}] has shape {a.shape}, expected {tuple(cur.shape)}")
            if A.is_cuda(cur):
                new.append(A.from_host(a.astype(A.dtype(cur)), like=cur))
            else:
                new.append(np.array(a, dtype=cur.dtype, order="C", copy=True))
        self.decay, self.num_updates, self.shadow = decay, int(n), new

    def __repr__(self):
        return f"EMA(decay={self.decay}, tensors={len(self.shadow)}, num_updates={self.num_updates})"


def _check_same_device(a, avg, where):
    """A parameter and its average are both CUDA arrays on one device (or both NumPy)."""
    if A.is_cuda(a) != A.is_cuda(avg):
        here = "a CUDA array" if A.is_cuda(a) else "a NumPy array"
        raise TypeError(f"{where} is {here} but its average is not; create the EMA after moving the model")
    if A.device_key(a) != A.device_key(avg):
        raise ValueError(f"{where} is a {A.device_key(a)} array, its average {A.device_key(avg)}")


def _check_decay(decay):
    if isinstance(decay, np.ndarray) and decay.ndim == 0:
        decay = decay.item()
    if isinstance(decay, (bool, np.bool_)) or not isinstance(decay, numbers.Real):
        raise TypeError(f"decay must be a real number, got {type(decay).__name__} {decay!r}")
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"Invalid decay value: {decay} (expected 0 <= decay <= 1)")
    return float(decay)
