"""Optimizer: parameter groups, per-parameter state, validation and state_dict.

The subclasses (sgd.py, adagrad.py, adadelta.py, rmsprop.py, adam.py) say only three things:
which options they take and how to check them, which state arrays a parameter carries, and
which per-tensor scalars the fused kernel needs this step. Everything else is here:

    step()
      1. validate every group and every parameter that will be stepped (types, dtypes,
         shapes, writeability, aliasing) -- nothing has been written yet;
      2. per parameter, find or create its state and compute its row of scalars in double
         (bias corrections, 1 - beta, the decayed lr, the sign for maximize);
      3. make ONE call into C++ per dtype: the kernel updates every parameter, gradient
         state and (with fused_step) EMA in a single pass over memory;
      4. commit the new state (step counts, created buffers).

    A training loop repeats that with the same arrays every time, so after a step through it
    the next steps go through a *step plan* (_StepPlan, below): the validated arrays, state
    buffers and options are re-checked by identity, the gradients by type and shape, and the
    C++ call checks the rest before it writes. Anything else goes through 1-4 again.

Differences from torch.optim, on purpose:
  * a parameter whose ``requires_grad`` is False is skipped even when it has a gradient;
  * the same Parameter twice in one group is a ValueError (PyTorch only warns);
  * ``state_dict()`` returns copies (PyTorch returns references to the live state), and
    ``load_state_dict()`` copies in, so a saved dict never changes under you;
  * Adagrad creates its state for every group, also ones added later (PyTorch: lazily).

Non-contiguous parameters (``p.data = big[..., 0]``, which PyTorch trains on) are supported:
such a parameter is copied into a contiguous buffer, stepped with the others, and written
back into the caller's view, so it is correct but pays two extra copies; keep parameters
contiguous for memory speed (``Parameter()`` makes its array contiguous). A non-contiguous
gradient is copied (it is only read). An array whose elements overlap (a zero stride) is
refused: an in-place update of it has no meaning.

CUDA parameters (CuPy arrays or PyTorch CUDA tensors, float32) step on the GPU: the same
per-tensor rows go to csrc/cuda/optim.cu, all parameters of a device in one launch (per up to
36 tensors), on the library's current stream, with the CPU's arithmetic (bit for bit the CPU's
AVX2/AVX-512 result). The state lives on the parameter's device, created with its library.
A group's parameters must be on one device, and one optimizer cannot mix NumPy and CUDA
parameters (TypeError). CUDA parameters must be C-contiguous (they are updated in place);
their gradients must be CUDA arrays of the same library and device. ``state_dict()`` returns
host (NumPy) copies, so it can be saved as .npz; ``load_state_dict()`` takes NumPy (or CUDA)
arrays and copies them to each parameter's device. (PyTorch's state_dict keeps device tensors.)
"""

from __future__ import annotations

import itertools
import numbers

import numpy as np

from .. import _C, _backend
from .. import _arrays as A
from ..nn.parameter import Parameter
from . import _kernel

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))

# ----------------------------------------------------------------------------- option checks
# The ValueError wordings are PyTorch's, so messages users search for find answers.

def real_option(group, key):
    v = group[key]
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise TypeError(f"{key} must be a real number, got {type(v).__name__} {v!r}")
    return float(v)


def nonneg_option(group, key, what):
    """A real option that must be >= 0 (NaN fails too), e.g. 'Invalid learning rate: -1'."""
    if not 0.0 <= real_option(group, key):
        raise ValueError(f"Invalid {what}: {group[key]}")


def bool_option(group, key):
    v = group[key]
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{key} must be a bool, got {type(v).__name__} {v!r}")
    return bool(v)


def _qualname(obj):
    t = type(obj)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


class _Job:
    """One parameter that this step updates, validated (gi, pi: its place in param_groups)."""

    __slots__ = ("param", "group", "gi", "pi", "data", "grad", "device")

    def __init__(self, param, group, gi, pi, data, grad):
        self.param, self.group, self.gi, self.pi, self.data, self.grad = param, group, gi, pi, data, grad
        self.device = None  # (library, device index) of a CUDA parameter

    @property
    def where(self):
        return f"param_groups[{self.gi}]['params'][{self.pi}] (shape {tuple(np.shape(self.param.data))})"


class Optimizer:
    """Base class of deepkern's optimizers (PyTorch's ``torch.optim.Optimizer`` interface).

    Args:
      params    an iterable of ``deepkern.nn.Parameter``, or of dicts (parameter groups), each
                with a ``"params"`` entry and any options that override the defaults for it.
      defaults  the options of every group that does not set its own.

    Attributes:
      param_groups  list of dicts: ``"params"`` (list of Parameter) and every option. ``lr``
                    (and any other option) may be changed between steps.
      state         dict Parameter -> dict of its state (``"step"`` an int, buffers ndarrays
                    of the parameter's shape and dtype).
    """

    # set by subclasses
    _kind: str = ""                       # kernel family in csrc/cpu/optim.h
    _reference = None                     # the NumPy update in deepkern.optim.reference
    _state_names: tuple[str, ...] = ()    # ndarray state entries (in kernel order)
    _has_step: bool = True                # state carries a "step" counter

    def __init__(self, params, defaults: dict):
        self._check_options(dict(defaults))
        self.defaults = dict(defaults)
        self.state: dict[Parameter, dict] = {}
        self.param_groups: list[dict] = []
        if isinstance(params, (set, frozenset)):
            raise TypeError("params argument given to the optimizer should be an iterable of Tensors or dicts "
                            "in a fixed order, but got a set (whose order changes between runs); use a list")
        if isinstance(params, (Parameter, np.ndarray, dict, str)):
            raise TypeError("params argument given to the optimizer should be an iterable of Tensors "
                            f"or dicts (deepkern.nn.Parameter or param groups), but got {_qualname(params)}")
        try:
            groups = list(params)
        except TypeError:
            raise TypeError("params argument given to the optimizer should be an iterable of Tensors "
                            f"or dicts (deepkern.nn.Parameter or param groups), but got {_qualname(params)}") from None
        if len(groups) == 0:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for g in groups:
            self.add_param_group(g)

    # ------------------------------------------------------------------ subclass interface
    def _check_options(self, group: dict) -> None:
        """Raise TypeError/ValueError for a bad option of `group` (all options present)."""
        raise NotImplementedError

    def _kernel_state(self, group, st, new, data):
        """The three state arrays of the kernel (None where unused), creating missing ones as
        zeros into `new`."""
        raise NotImplementedError

    def _row(self, group, st, new) -> dict:
        """This tensor's scalars for the kernel (computed in double); may set new['step']."""
        raise NotImplementedError

    def _init_state(self, p: Parameter, group: dict) -> None:
        """Eager state creation when a group is added (Adagrad); nothing by default."""

    @staticmethod
    def _buffers(wanted, st, new, data):
        """The kernel's three state slots: the buffers named in `wanted` (None: slot unused),
        created as zeros (into `new`) when the state lacks them."""
        try:  # the common case: every buffer exists
            return [None if k is None else st[k] for k in wanted] + [None] * (3 - len(wanted))
        except KeyError:
            pass
        out = []
        for k in wanted:
            if k is not None and k not in st:
                new[k] = zeros_like(data)
            out.append(None if k is None else new.get(k, st.get(k)))
        return out + [None] * (3 - len(out))

    # ------------------------------------------------------------------ groups
    def add_param_group(self, param_group: dict) -> None:
        """Add a group of parameters with its own options (e.g. to unfreeze layers later)."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {_qualname(param_group)}")
        if "params" not in param_group:
            raise ValueError("param_group must have a 'params' entry")
        params = param_group["params"]
        if isinstance(params, Parameter):
            params = [params]
        elif isinstance(params, (set, frozenset)):
            raise TypeError("optimizer parameters need to be organized in ordered collections, but the "
                            "ordering of tensors in sets will change between runs. Please use a list instead.")
        elif isinstance(params, (np.ndarray, str, dict)):
            raise TypeError(f"optimizer can only optimize Parameters (deepkern.nn.Parameter), "
                            f"but the group's params is {_qualname(params)}")
        else:
            params = list(params)
        for p in params:
            if not isinstance(p, Parameter):
                raise TypeError("optimizer can only optimize Parameters (deepkern.nn.Parameter), "
                                f"but one of the params is {_qualname(p)}")
            _check_data(p.data, "a parameter")
        _check_group_devices([p.data for p in params])
        if len({id(p) for p in params}) != len(params):
            raise ValueError("optimizer contains a parameter group with duplicate parameters "
                             "(each Parameter may appear once)")
        group = dict(param_group)
        group["params"] = params
        for k, v in self.defaults.items():
            group.setdefault(k, v)
        self._check_options(group)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in params):
            raise ValueError("some parameters appear in more than one parameter group")
        if self.param_groups and params:
            other = self.param_groups[0]["params"]
            if other and A.is_cuda(other[0].data) != A.is_cuda(params[0].data):
                raise TypeError("an optimizer cannot mix NumPy (CPU) and CUDA parameters; "
                                "use one optimizer per device kind")
        self.param_groups.append(group)
        for p in params:
            self._init_state(p, group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop every gradient (``grad = None``), or zero it in place with set_to_none=False."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad[...] = 0

    # ------------------------------------------------------------------ the step
    def step(self, closure=None):
        """Update every parameter that has a gradient (and requires_grad) in one fused pass.

        closure: optional callable re-evaluating the model and returning the loss, called
        first; its value is returned. Raises TypeError/ValueError, before any parameter or
        state is written, for a gradient of the wrong dtype or shape, a read-only parameter,
        a gradient sharing memory with a parameter, or an option made invalid since.
        """
        loss = None
        if closure is not None:
            loss = closure()
        d = self.__dict__
        plan = d.get("_plan")
        if plan is not None and plan.run(self):
            d["_plan_misses"] = 0
            return loss
        self._apply(self._collect())
        # the next step's plan: rebuilt after every general step, except after three misses in
        # a row (a layout the plan never takes, e.g. strided gradients every step), when only
        # every 64th step tries again
        if plan is not None:
            d["_plan_misses"] = misses = d.get("_plan_misses", 0) + 1
            d["_plan_wait"] = 64 if misses >= 3 else 0
        wait = d.get("_plan_wait", 0)
        d["_plan_wait"] = max(0, wait - 1)
        d["_plan"] = _StepPlan.build(self) if wait == 0 else None
        return loss

    def _collect(self) -> list[_Job]:
        """Validate everything the step will touch; return what to update.

        The common case (C-contiguous float arrays, matching grad, state as created) is
        checked with a few attribute tests per parameter; anything else goes through
        _check_job, which either accepts it or raises with a message naming the parameter.
        """
        jobs = []
        state = self.state
        for gi, group in enumerate(self.param_groups):
            self._check_options_if_changed(group)
            for pi, p in enumerate(group["params"]):
                grad = p.grad
                if grad is None or not p.requires_grad:
                    continue
                data = p.data
                job = _Job(p, group, gi, pi, data, grad)
                if not (type(data) is np.ndarray and type(grad) is np.ndarray and data.dtype in _FLOATS
                        and grad.dtype == data.dtype and grad.shape == data.shape and data.flags.c_contiguous
                        and data.flags.writeable):
                    _check_job(job)
                    if job.device is not None:
                        _check_cuda_group(job, jobs)
                st = state.get(p)
                if st:
                    _check_state(st, data, job)
                jobs.append(job)
        _check_no_overlap(jobs)
        return jobs

    def _check_options_if_changed(self, group: dict) -> None:
        """_check_options(group), skipped while the group's options are exactly (type and
        value) the ones last found valid: lr schedulers and users may change any option
        between steps, so every step compares; the full check costs more than the compare."""
        snap = _options_snapshot(group)
        seen = self.__dict__.setdefault("_valid_options", {})
        try:
            if seen.get(id(group)) == snap:
                return
        except (TypeError, ValueError):  # an option whose == is not a bool (an array): check it
            pass
        seen.pop(id(group), None)
        self._check_options(group)
        seen[id(group)] = snap

    def _apply(self, jobs: list[_Job], grad_scale: float = 1.0, ema=None) -> None:
        """Run the update of the validated jobs (grad_scale and ema: see fused_step)."""
        if _backend.current() == "numpy" and not any(j.device for j in jobs):
            return self._apply_reference(jobs, grad_scale, ema)
        rows_seen: dict = {}  # parameters of one group at one step count share their row
        batches: dict[np.dtype, tuple[list, list, list, list, list]] = {}
        commits = []
        empty: dict = {}
        for job in jobs:
            p, group = job.param, job.group
            st = self.state.get(p, empty)
            new: dict = {}
            if job.device is None:
                data = job.data if job.data.flags.c_contiguous else np.ascontiguousarray(job.data)
                grad = job.grad if job.grad.flags.c_contiguous else np.ascontiguousarray(job.grad)
            else:  # CUDA: the parameter is C-contiguous (checked); a strided grad is copied
                data, grad = job.data, A.contiguous(job.grad)
            states = self._kernel_state(group, st, new, data)
            shadow = ema._shadow_of(p) if ema is not None else None
            key = (id(group), st.get("step"), len(new), shadow is not None)
            row = rows_seen.get(key)
            if row is None:
                r = self._row(group, st, new)
                r["grad_scale"] = -grad_scale if group["maximize"] else grad_scale
                if shadow is not None:
                    r["ema_decay"] = ema.decay
                row = rows_seen[key] = _kernel.row(self._kind, r)
            elif "step" not in new and self._has_step:
                new["step"] = st.get("step", 0) + 1
            ps, gs, ss, es, rows = batches.setdefault(job.device or data.dtype, ([], [], [], [], []))
            ps.append(data)
            gs.append(grad)
            ss.append(states)
            es.append(shadow)
            rows.append(row)
            commits.append((p, st, new, data, job.data))
        for key, (ps, gs, ss, es, rows) in batches.items():
            step = _kernel.optim_step_cuda if isinstance(key, tuple) else _kernel.optim_step
            step(self._kind, ps, gs, ss, es if ema is not None else None, rows)
        self._commit(commits)
        if ema is not None:
            ema._finish_fused_update({id(j.param) for j in jobs})

    def _commit(self, commits):
        state = self.state
        for p, st, new, data, orig in commits:
            if data is not orig:  # a non-contiguous parameter: write the result back in place
                orig[...] = data
            if not new:
                continue
            if p in state:
                st.update(new)
            elif "step" in new:  # PyTorch's order: step first
                state[p] = {"step": new.pop("step"), **new}
            else:
                state[p] = new

    def _apply_reference(self, jobs, grad_scale, ema):
        """The same step through deepkern.optim.reference, in float64 (use_backend('numpy'))."""
        options = {k: None for k in self.defaults}
        commits = []
        for job in jobs:
            p, group = job.param, job.group
            st = self.state.get(p, {})
            opts = {k: group[k] for k in options}
            grad = job.grad * job.grad.dtype.type(grad_scale)  # what clip_grad_norm_ would store
            state64 = {k: (v.astype(np.float64) if isinstance(v, np.ndarray) else v) for k, v in st.items()}
            new_p, new_state = type(self)._reference(job.data.astype(np.float64), grad.astype(np.float64),
                                                     state64, **opts)
            data = new_p.astype(job.data.dtype)
            new = {k: (v.astype(job.data.dtype) if isinstance(v, np.ndarray) else v)
                   for k, v in new_state.items() if v is not None}
            commits.append((p, st, new, data, job.data))
        self._commit(commits)
        if ema is not None:
            ema.update()

    # ------------------------------------------------------------------ state_dict
    def state_dict(self) -> dict:
        """The optimizer's state, in PyTorch's layout, as host (NumPy) copies::

            {"state": {index: {"step": 0-d float32 array, "<buffer>": ndarray, ...}},
             "param_groups": [{<every option>, "params": [index, ...]}, ...]}

        Indices number the parameters across groups in order. Arrays are copies, NumPy arrays
        also for CUDA parameters (PyTorch keeps them on the device); save with
        ``deepkern.optim.save_state(sd, "opt.npz")`` (a plain .npz, no pickle).
        """
        index = {}
        groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            ids = []
            for p in group["params"]:
                index.setdefault(id(p), len(index))
                ids.append(index[id(p)])
            packed["params"] = ids
            groups.append(packed)
        state = {}
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state.get(p)
                if not st:
                    continue
                out = {}
                for k, v in st.items():
                    if k == "step":
                        out[k] = np.array(v, dtype=np.float32)  # PyTorch keeps a float32 scalar tensor
                    elif isinstance(v, np.ndarray):
                        out[k] = v.copy()
                    elif A.is_cuda(v):  # host copies: the dict can be saved as .npz
                        out[k] = A.to_host(v).copy()
                    else:
                        out[k] = v
                state[index[id(p)]] = out
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore a state_dict (ours, or PyTorch's converted to NumPy); validated first, so a
        bad one raises ValueError/TypeError and leaves the optimizer unchanged. Buffers are
        copied in the parameters' dtypes, onto each parameter's device (NumPy or CUDA arrays
        are accepted); each group's options are restored."""
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            raise ValueError("state_dict must be a dict with 'state' and 'param_groups' entries")
        saved_groups = list(state_dict["param_groups"])
        if len(saved_groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups "
                             f"({len(saved_groups)} vs {len(self.param_groups)})")
        by_index = {}
        new_groups = []
        for gi, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            if not isinstance(saved, dict) or "params" not in saved:
                raise ValueError(f"param_groups[{gi}] of the state dict must be a dict with 'params'")
            ids = [int(i) for i in saved["params"]]
            if len(ids) != len(group["params"]):
                raise ValueError("loaded state dict contains a parameter group that doesn't match the size "
                                 f"of optimizer's group (group {gi}: {len(ids)} vs {len(group['params'])})")
            new = {k: v for k, v in saved.items() if k != "params"}
            if "betas" in new and isinstance(new["betas"], (list, np.ndarray)):
                new["betas"] = tuple(float(b) for b in new["betas"])
            for k, v in self.defaults.items():
                new.setdefault(k, v)
            new["params"] = group["params"]
            try:
                self._check_options(new)
            except TypeError as e:
                raise TypeError(f"param_groups[{gi}] of the state dict: {e}") from None
            except ValueError as e:
                raise ValueError(f"param_groups[{gi}] of the state dict: {e}") from None
            new_groups.append(new)
            by_index.update(zip(ids, group["params"]))
        new_state = {}
        for key, saved in dict(state_dict["state"]).items():
            try:
                idx = int(key)
            except (TypeError, ValueError):
                raise ValueError(f"state dict: state key {key!r} is not a parameter index") from None
            if idx not in by_index:
                raise ValueError(f"state dict: state for parameter {idx}, which no group holds")
            p = by_index[idx]
            new_state[p] = self._load_param_state(dict(saved), p, idx)
        self.param_groups[:] = new_groups
        self.state = new_state

    def _load_param_state(self, saved: dict, p: Parameter, idx: int) -> dict:
        data = p.data
        st = {}
        for k, v in saved.items():
            where = f"state dict: state[{idx}][{k!r}]"
            if k == "step" and self._has_step:
                step = float(np.asarray(v))
                if not (step >= 0 and step == int(step)):
                    raise ValueError(f"{where}: step must be a non-negative integer, got {step}")
                st[k] = int(step)
            elif k in self._state_names:
                if v is None:  # PyTorch may store momentum_buffer=None
                    continue
                a = A.to_host(v) if A.is_cuda(v) else np.asarray(v)
                if a.dtype.kind != "f":
                    raise TypeError(f"{where}: expected a floating array, got dtype {a.dtype.name}")
                if a.shape != tuple(data.shape):
                    raise ValueError(f"{where}: has shape {a.shape}, the parameter has {tuple(data.shape)}")
                if A.is_cuda(data):
                    st[k] = A.from_host(a.astype(A.dtype(data)), like=data)
                else:
                    st[k] = np.array(a, dtype=data.dtype, order="C", copy=True)
            else:
                raise ValueError(f"{where}: unknown state entry for {type(self).__name__} "
                                 f"(expected {('step',) + self._state_names if self._has_step else self._state_names})")
        return st

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for k in sorted(group):
                if k != "params":
                    lines.append(f"    {k}: {group[k]}")
        lines.append(")")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- helpers

def zeros_like(data):
    """Zeros of data's shape and dtype, with data's array library on its device (new state)."""
    return np.zeros(data.shape, data.dtype) if type(data) is np.ndarray else A.zeros_like(data)


def full_like(data, value):
    return np.full(data.shape, value, dtype=data.dtype) if type(data) is np.ndarray else A.full_like(data, value)


def _check_data(data, where):
    if A.is_cuda(data):
        if A.library_name(data) not in ("cupy", "torch"):
            raise TypeError(f"{where}: deepkern.optim updates NumPy arrays or CUDA arrays of CuPy or PyTorch; "
                            f"the parameter's data is {_qualname(data)}")
        dt = A.dtype(data)
        if dt != np.float32:
            raise TypeError(f"{where}: the parameter has unsupported dtype {dt.name} on the cuda backend; "
                            "CUDA parameters must be float32")
        return
    if not isinstance(data, np.ndarray):
        raise TypeError(f"{where}: deepkern.optim updates NumPy arrays or CUDA arrays (CuPy, PyTorch); "
                        f"the parameter's data is {_qualname(data)}")
    if data.dtype not in _FLOATS:
        raise TypeError(f"{where}: the parameter has unsupported dtype {data.dtype.name}; "
                        "deepkern supports float32 or float64")


def _check_group_devices(arrays):
    """A group's parameters: all NumPy, or all CUDA arrays of one library on one device."""
    cuda = [a for a in arrays if A.is_cuda(a)]
    if cuda and len(cuda) != len(arrays):
        raise TypeError("an optimizer cannot mix NumPy (CPU) and CUDA parameters; "
                        "use one optimizer per device kind")
    keys = {A.device_key(a) for a in cuda}
    if len(keys) > 1:
        raise ValueError("a parameter group's CUDA parameters must all be on one device (and of one "
                         f"library), got {sorted(keys)}; put each device's parameters in its own group")


def _check_cuda_job(job):
    """A CUDA parameter and its gradient (float32 checked by _check_data)."""
    data, grad = job.data, job.grad
    if not A.is_cuda(grad):
        raise TypeError(f"{job.where}: the parameter is a CUDA array but its grad is {_qualname(grad)}; "
                        "the gradient must live on the parameter's device")
    job.device = A.device_key(data)
    if A.device_key(grad) != job.device:
        raise ValueError(f"{job.where}: grad is a {A.device_key(grad)} array, the parameter {job.device}")
    if A.dtype(grad) != np.float32:
        raise TypeError(f"{job.where}: grad has dtype {A.dtype(grad).name} but the parameter is float32")
    if tuple(grad.shape) != tuple(data.shape):
        raise ValueError(f"{job.where}: grad has shape {tuple(grad.shape)}, expected {tuple(data.shape)}")
    info = A.interface(data, "the parameter's data")
    if info.readonly:
        raise ValueError(f"{job.where}: the parameter's data is read-only (not writeable)")
    if not info.c_contiguous:
        raise ValueError(f"{job.where}: a CUDA parameter must be C-contiguous (it is updated in place); "
                         "give it its own array (cupy.ascontiguousarray)")


def _check_cuda_group(job, jobs):
    """The parameters of one group stay on one device (a .data may have been replaced)."""
    for other in reversed(jobs):
        if other.group is not job.group:
            break
        if other.device is None or other.device != job.device:
            raise ValueError(f"{job.where} is a {job.device} array but {other.where} is "
                             f"{other.device or 'a NumPy array'}; a group's parameters must be on one device")
        break


class _StepPlan:
    """The common step, with the per-parameter Python work of _collect/_apply done once.

    A training loop steps the same parameters, with the same arrays and state buffers and the
    same options, step after step; only the gradients and the step counts change. After a
    step through the general path, ``build`` records what that path validated: the groups,
    their options (snapshot), their parameter lists and, per parameter, its data array, shape,
    state dict and state buffers. ``run`` re-checks all of that by identity, checks each
    gradient's type and shape, computes one row per (group, step count), and makes the one
    kernel call. A changed option (an lr scheduler's step) is checked as the general path
    checks it, and the plan kept while the state buffers stay the same. Anything else it does
    not recognize (a new gradient layout, a replaced array or buffer, an option that needs
    other buffers, a parameter without state yet, the NumPy backend) makes it return False
    before anything is written, and step() takes the general path, which validates with its
    messages and rebuilds the plan. The C++ call checks dtypes, contiguity, writeability,
    sizes and overlaps before it writes; if it refuses, the general path runs instead and
    reports the problem in its own words. Same arithmetic, same results: only the bookkeeping
    is skipped (Adam over the digits CNN's 8 tensors: 47 -> 13 us a step, bench/NOTES.md).
    """

    __slots__ = ("groups", "entries", "kind", "option_ids", "rows")

    @classmethod
    def build(cls, opt):
        if _backend.current() == "numpy":
            return None
        first = next((g["params"][0] for g in opt.param_groups if g["params"]), None)
        if first is None or type(first.data) is not np.ndarray:  # CUDA optimizers (never mixed)
            return None
        groups, entries, dtype = [], [], None
        state = opt.state
        for gi, group in enumerate(opt.param_groups):
            params = group["params"]
            snap = opt.__dict__.get("_valid_options", {}).get(id(group))
            if snap is None or snap != _options_snapshot(group):
                return None
            groups.append((group, snap, list(params)))
            for p in params:
                data = p.data
                if type(data) is not np.ndarray or not (data.flags.c_contiguous and data.flags.writeable):
                    return None
                if dtype is None:
                    dtype = data.dtype
                elif data.dtype != dtype:  # one kernel call per dtype: leave mixes to _apply
                    return None
                st = state.get(p)  # None: no state (stepped yet, or stateless as plain SGD)
                bufs = buffers = None
                if st is None or _state_fits(st, data):  # else misfit state: the general path's job
                    bufs = _kernel_buffers(opt, group, st, data)
                if bufs is not None and st is not None:
                    buffers = tuple((k, st[k]) for k in opt._state_names if k in st)
                entries.append((p, data, data.shape, st, bufs, buffers or (), gi))
        plan = cls()
        plan.groups, plan.entries, plan.kind = groups, entries, _kernel.KINDS[opt._kind]
        plan.option_ids = [_option_ids(g) for g, _, _ in groups]
        plan.rows = np.empty((len(entries), len(_kernel.ROW_NAMES[opt._kind])), dtype=np.float64)
        return plan

    def _options_changed(self, opt, gi, group) -> bool:
        """Group gi's options changed since the plan was built (an lr scheduler's step): check
        them as the general path does (its errors, raised before anything is written), and
        keep the plan if every planned parameter of the group still gets the same state
        buffers from the kernel (amsgrad or momentum switched on would need new ones)."""
        opt._check_options_if_changed(group)
        for p, data, shape, st, bufs, buffers, g in self.entries:
            if g != gi or bufs is None:
                continue
            now = _kernel_buffers(opt, group, st, data)
            if now is None or len(now) != len(bufs) or any(a is not b for a, b in zip(now, bufs)):
                return False
        self.groups[gi] = (group, _options_snapshot(group), self.groups[gi][2])
        return True

    def run(self, opt) -> bool:
        groups = opt.param_groups
        if len(groups) != len(self.groups) or _backend.current() == "numpy":
            return False
        for gi, (group, (ref, snap, params)) in enumerate(zip(groups, self.groups)):
            if group is not ref or group["params"] != params:
                return False
            ids = self.option_ids[gi]
            if ids is not None and ids[0] == len(group) and ids[2] == tuple(map(id, map(group.get, ids[1], _OR_MISSING))):
                continue                    # the very option objects of the snapshot, all immutable
            if _options_snapshot(group) != snap and not self._options_changed(opt, gi, group):
                return False
            self.option_ids[gi] = _option_ids(group)
        state = opt.state
        ps, gs, ss, keys, sts = [], [], [], [], []
        for p, data, shape, st, bufs, buffers, gi in self.entries:
            grad = p.grad
            if grad is None or not p.requires_grad:
                continue
            if (bufs is None or p.data is not data or type(grad) is not np.ndarray or grad.shape != shape
                    or data.shape != shape or state.get(p) is not st):
                return False
            for k, b in buffers:
                if st.get(k) is not b:
                    return False
            ps.append(data)
            gs.append(grad)
            ss.append(bufs)
            sts.append(st)
            keys.append((gi, st.get("step") if st is not None else None))
        if not ps:
            return True
        rows, steps, made = self.rows[:len(ps)], [], {}
        for i, (key, st) in enumerate(zip(keys, sts)):
            hit = made.get(key)
            if hit is None:
                group = self.groups[key[0]][0]
                new: dict = {}
                r = opt._row(group, st if st is not None else {}, new)
                if new.keys() - {"step"}:
                    return False
                r["grad_scale"] = -1.0 if group["maximize"] else 1.0
                t = new.get("step", (key[1] or 0) + 1)
                hit = made[key] = (_kernel.row(opt._kind, r), t)
            steps.append(hit[1])
            if i == 0:
                first = hit[0]
                rows[:] = first             # the common case: one row for every parameter
            elif hit[0] is not first:
                rows[i] = hit[0]
        try:
            _C.optim_step(self.kind, ps, gs, ss, None, rows)
        except Exception:  # refused before writing: the general path explains why
            return False
        if opt._has_step:
            for st, t in zip(sts, steps):
                st["step"] = t
        return True


def _kernel_buffers(opt, group, st, data):
    """The kernel's three state slots for a parameter with state ``st`` (None: none yet), or
    None when the step would first have to create state (missing buffers, or a first step
    count): the general path's job."""
    if st is None and opt._has_step:
        return None
    new: dict = {}
    bufs = opt._kernel_state(group, st if st is not None else {}, new, data)
    return None if new else bufs


def _check_job(job):
    """The full checks of one parameter (the slow path of _collect); may normalize job.grad."""
    data, grad = job.data, job.grad
    _check_data(data, job.where)
    if A.is_cuda(data):
        return _check_cuda_job(job)
    if isinstance(grad, np.generic):  # e.g. -g of a 0-d array is a NumPy scalar
        grad = job.grad = np.asarray(grad)
    if not isinstance(grad, np.ndarray):
        raise TypeError(f"{job.where}: grad must be a numpy.ndarray, got {_qualname(grad)}")
    if grad.dtype != data.dtype:
        raise TypeError(f"{job.where}: grad has dtype {grad.dtype.name} but the parameter is {data.dtype.name}")
    if grad.shape != data.shape:
        raise ValueError(f"{job.where}: grad has shape {grad.shape}, expected {data.shape}")
    if not data.flags.writeable:
        raise ValueError(f"{job.where}: the parameter's data is read-only (not writeable)")
    if data.size > 1 and any(s == 0 and n > 1 for s, n in zip(data.strides, data.shape)):
        raise ValueError(f"{job.where}: the parameter's data has overlapping memory (a zero stride, e.g. from "
                         "np.broadcast_to); give it its own array")


_IMMUTABLE = (float, int, bool, str, type(None))
_MISSING = object()
_OR_MISSING = itertools.repeat(_MISSING)  # map(group.get, keys, _OR_MISSING): a removed key gives _MISSING


def _option_ids(group):
    """(len(group), keys, ids of their values) when every option is an immutable value (or a
    tuple of them): while the group holds the very same objects, its snapshot is the same.
    None when an option could change in place (a list, an array)."""
    keys = tuple(k for k in group if k != "params")
    vals = tuple(group[k] for k in keys)
    for v in vals:
        if not (type(v) in _IMMUTABLE or (type(v) is tuple and all(type(x) in _IMMUTABLE for x in v))):
            return None
    return len(group), keys, tuple(map(id, vals)), vals   # vals: held, so the ids stay theirs


def _options_snapshot(group):
    """The group's options with their types (1.0, 1 and True compare equal but are not equally
    valid), sequences element by element."""
    out = []
    for k, v in group.items():
        if k == "params":
            continue
        if type(v) in (tuple, list):
            v = (type(v), tuple((type(x), x) for x in v))
        out.append((k, type(v), v))
    return tuple(out)


def _state_fits(st, data):
    """Whether a NumPy parameter's state holds only ints and arrays of its shape and dtype."""
    if type(data) is not np.ndarray:
        return False
    shape, dtype = data.shape, data.dtype
    for v in st.values():
        if type(v) is np.ndarray:
            if v.shape != shape or v.dtype != dtype:
                return False
        elif type(v) is not int:
            return False
    return True


def _check_state(st, data, job):
    """State buffers are created with the parameter's shape and dtype; if .data was replaced
    since by an array of another shape or dtype, refuse (the buffers no longer fit)."""
    if _state_fits(st, data):  # the common case, with nothing to report
        return
    for k, v in st.items():
        if type(v) is np.ndarray:
            if A.is_cuda(data):
                raise TypeError(f"{job.where}: its state {k!r} is a NumPy array but the parameter is now a "
                                "CUDA array; move the model before creating the optimizer (or load_state_dict)")
            if v.shape != data.shape:
                raise ValueError(f"{job.where}: its state {k!r} has shape {v.shape} but the parameter now has "
                                 f"shape {data.shape}")
            if v.dtype != data.dtype:
                raise TypeError(f"{job.where}: its state {k!r} is {v.dtype.name} but the parameter is now "
                                f"{data.dtype.name}")
        elif A.is_cuda(v):
            if not A.is_cuda(data) or A.device_key(v) != A.device_key(data):
                raise TypeError(f"{job.where}: its state {k!r} lives on {A.device_key(v)} but the parameter "
                                f"is {A.device_key(data) if A.is_cuda(data) else 'a NumPy array'}")
            if tuple(v.shape) != tuple(data.shape):
                raise ValueError(f"{job.where}: its state {k!r} has shape {tuple(v.shape)} but the parameter "
                                 f"now has shape {tuple(data.shape)}")


def _check_no_overlap(jobs):
    """No parameter's data may share memory with any other array of the step (its own grad
    included): the kernel would read values it has already overwritten. One C++ sweep over
    the byte ranges; candidate pairs involving strided arrays are confirmed exactly."""
    cuda = [job for job in jobs if job.device is not None]
    if cuda:
        _check_no_overlap_cuda(cuda)
        jobs = [job for job in jobs if job.device is None]
    arrays, written = [], []
    for job in jobs:
        arrays += (job.data, job.grad)
        written += (True, False)
    for i, j in _C.find_overlaps(arrays, written):
        a, b = arrays[i], arrays[j]
        if not (a.flags.c_contiguous and b.flags.c_contiguous) and not np.shares_memory(a, b):
            continue  # interleaved views: their ranges cross but no element is shared
        raise _overlap_error(jobs, i, j)


def _overlap_error(jobs, i, j):
    """The ValueError for overlapping arrays i and j of a sweep over (data, grad) of each job."""
    ja, jb = jobs[i // 2], jobs[j // 2]
    if ja is jb:
        return ValueError(f"{jb.where}: grad shares memory with the parameter's data")
    what = ("data", "grad")
    return ValueError(f"{jb.where} {what[j % 2]} shares memory with {ja.where} {what[i % 2]}; an optimizer "
                      "step needs separate arrays")


def _check_no_overlap_cuda(jobs):
    """_check_no_overlap for CUDA parameters: byte ranges from the array interfaces (one sweep
    per device; a strided grad's range covers its whole span, which is conservative)."""
    by_device: dict = {}
    for job in jobs:
        by_device.setdefault(job.device, []).append(job)
    for group in by_device.values():
        infos, written = [], []
        for job in group:
            infos += (A.interface(job.data, "data"), _span(A.interface(job.grad, "grad")))
            written += (True, False)
        for i, j in A.find_overlaps(infos, written):
            raise _overlap_error(group, i, j)


def _span(info):
    """An interface covering the bytes a (possibly strided) array can touch."""
    if info.strides is None or info.size == 0:
        return info
    lo = sum(min(0, s * (n - 1)) for s, n in zip(info.strides, info.shape))
    hi = sum(max(0, s * (n - 1)) for s, n in zip(info.strides, info.shape)) + info.dtype.itemsize
    return A.Interface(info.ptr + lo, ((hi - lo) // info.dtype.itemsize,), info.dtype, None, info.readonly,
                       info.stream, info.version)
