"""Module: the base class of every layer, with explicit forward and backward.

deepkern has no autograd engine. A layer computes its output in ``forward(x)`` and keeps
what its gradient needs (its input, a mask, pooling indices); ``backward(grad_out)`` then
returns the gradient with respect to the input and *adds* the gradients of its parameters
to their ``.grad`` (skipping frozen ones). A ``Sequential`` runs its children's forward in
order and their backward in reverse order, which is backpropagation written out by hand::

    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    loss = crit(model(x), y)        # forward: every layer caches its inputs
    model.zero_grad()
    model.backward(crit.backward()) # backward: every layer adds into its parameters' .grad

Parameters, buffers and submodules are registered when they are assigned as attributes
(``self.weight = Parameter(...)``, ``self.fc = Linear(...)``) or with ``register_buffer``,
and named as in PyTorch: ``"0.weight"``, ``"fc.bias"``, ``"1.running_mean"``.
"""

from __future__ import annotations

from collections import OrderedDict, namedtuple

import numpy as np

from .. import _validate as V
from ._array import array_module, is_array
from .parameter import Parameter

__all__ = ["Module", "Sequential", "IncompatibleKeys"]

# Bumped whenever any module gains or loses a parameter or a child: modules() and
# parameters() cache their lists and rebuild them only after a change (zero_grad runs every
# step and would otherwise walk the whole tree).
_structure_version = 0


def _structure_changed():
    global _structure_version
    _structure_version += 1


IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])
IncompatibleKeys.__doc__ = """What load_state_dict(strict=False) did not load (PyTorch's _IncompatibleKeys)."""


def _dtype_name(a):
    return V.dtype_of(a).name


class Module:
    """Base class of deepkern layers and models.

    Subclasses call ``super().__init__()`` first, then assign their parameters, buffers and
    submodules, and implement ``forward(x)`` and ``backward(grad_out)``.

    Attributes:
      training   True after ``train()`` (the default), False after ``eval()``; layers whose
                 behavior differs (BatchNorm, Dropout) read it.
      needs_input_grad
                 True (the default): ``backward`` returns the gradient with respect to the
                 input. False: nobody will read it (the first layer of a model, whose input
                 is the data), so a layer may skip computing it and return None; Conv2d and
                 Linear do (for a first convolution that is most of its backward). A
                 deepkern addition: PyTorch's autograd knows this from the input's
                 ``requires_grad``. On a Sequential it is the flag of its first layer.
    """

    needs_input_grad = True

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent", set())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # ------------------------------------------------------------------ registration
    #
    # Registered objects live both in their registry (which fixes their order and name) and
    # in the instance __dict__, so that reading ``self.weight`` is a plain attribute lookup
    # (PyTorch uses __getattr__ for that, which costs a Python call on every access).

    def __setattr__(self, name, value):
        d = self.__dict__
        if "_parameters" not in d:
            if isinstance(value, (Parameter, Module)):
                raise AttributeError(f"cannot assign {type(value).__name__} '{name}' before Module.__init__() call")
            object.__setattr__(self, name, value)
            return
        params, modules, buffers = d["_parameters"], d["_modules"], d["_buffers"]
        if isinstance(value, Parameter):
            self._forget(name, keep=params)
            params[name] = value
        elif isinstance(value, Module):
            self._forget(name, keep=modules)
            modules[name] = value
        elif name in params:
            if value is not None:
                raise TypeError(f"cannot assign '{type(value).__name__}' as parameter '{name}' "
                                "(deepkern.nn.Parameter or None expected)")
            params[name] = None
            _structure_changed()
        elif name in modules:
            if value is not None:
                raise TypeError(f"cannot assign '{type(value).__name__}' as child module '{name}' "
                                "(deepkern.nn.Module or None expected)")
            modules[name] = None
            _structure_changed()
        elif name in buffers:
            if value is not None and not is_array(value):
                raise TypeError(f"cannot assign '{type(value).__name__}' as buffer '{name}' "
                                "(an array or None expected)")
            buffers[name] = value
        object.__setattr__(self, name, value)

    def _forget(self, name, keep):
        """Remove name from the registries other than keep (the one it is about to join)."""
        for reg in (self.__dict__["_parameters"], self.__dict__["_modules"], self.__dict__["_buffers"]):
            if reg is not keep:
                reg.pop(name, None)
        self.__dict__["_non_persistent"].discard(name)
        _structure_changed()

    def __delattr__(self, name):
        self._forget(name, keep=None)
        object.__delattr__(self, name)

    def _check_name(self, name, what):
        if not isinstance(name, str):
            raise TypeError(f"{what} name should be a string, got {type(name).__name__}")
        if name == "" or "." in name:
            raise KeyError(f"{what} name can't be empty or contain \".\", got {name!r}")
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"cannot assign {what} before Module.__init__() call")

    def register_parameter(self, name, param):
        """Add a parameter (a Parameter, or None for an absent one such as bias=False)."""
        self._check_name(name, "parameter")
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"cannot assign '{type(param).__name__}' as parameter '{name}' "
                            "(deepkern.nn.Parameter or None expected)")
        self._forget(name, keep=self._parameters)
        self._parameters[name] = param
        object.__setattr__(self, name, param)

    def register_buffer(self, name, array, persistent=True):
        """Add a buffer: an array that is state but not learned (running statistics).

        Persistent buffers appear in ``state_dict``. ``array`` may be None (absent).
        """
        self._check_name(name, "buffer")
        if array is not None and not is_array(array):
            raise TypeError(f"cannot assign '{type(array).__name__}' as buffer '{name}' (an array or None expected)")
        self._forget(name, keep=self._buffers)
        self._buffers[name] = array
        if not persistent:
            self._non_persistent.add(name)
        object.__setattr__(self, name, array)

    def add_module(self, name, module):
        """Add a child module (or None)."""
        self._check_name(name, "module")
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{type(module).__name__} is not a Module subclass")
        self._forget(name, keep=self._modules)
        self._modules[name] = module
        object.__setattr__(self, name, module)

    # ------------------------------------------------------------------ forward / backward

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, x):
        raise NotImplementedError(f"{type(self).__name__} does not implement forward()")

    def backward(self, grad_out):
        """Gradient with respect to the input of the last forward; adds parameter gradients."""
        raise NotImplementedError(f"{type(self).__name__} does not implement backward()")

    # ------------------------------------------------------------------ traversal

    def named_modules(self, prefix=""):
        """(name, module) for this module and every descendant, each module once."""
        seen = set()
        stack = [(prefix, self)]
        while stack:
            name, m = stack.pop()
            if id(m) in seen:
                continue
            seen.add(id(m))
            yield name, m
            children = [(f"{name}.{k}" if name else k, c) for k, c in m._modules.items() if c is not None]
            stack.extend(reversed(children))

    def modules(self):
        """This module and every descendant, each once, in the order of named_modules."""
        cache = self.__dict__.get("_cached_modules")
        if cache is None or cache[0] != _structure_version:
            cache = (_structure_version, [m for _, m in self.named_modules()])
            object.__setattr__(self, "_cached_modules", cache)
        return iter(cache[1])

    def named_children(self):
        for k, m in self._modules.items():
            if m is not None:
                yield k, m

    def children(self):
        for _, m in self.named_children():
            yield m

    def _named_members(self, registry, prefix, recurse):
        """(name, object) of every non-None entry of each module's ``registry`` dict, each
        object once (an object shared by two modules is listed under its first name)."""
        seen = set()
        mods = self.named_modules(prefix) if recurse else [(prefix, self)]
        for mname, m in mods:
            for k, v in getattr(m, registry).items():
                if v is None or id(v) in seen:
                    continue
                seen.add(id(v))
                yield (f"{mname}.{k}" if mname else k), v

    def named_parameters(self, prefix="", recurse=True):
        """(name, Parameter) pairs, each Parameter once (shared ones under their first name)."""
        return self._named_members("_parameters", prefix, recurse)

    def parameters(self, recurse=True):
        """Every Parameter once, in the order of named_parameters."""
        if not recurse:
            return (p for p in self._parameters.values() if p is not None)
        cache = self.__dict__.get("_cached_parameters")
        if cache is None or cache[0] != _structure_version:
            cache = (_structure_version, [p for _, p in self.named_parameters()])
            object.__setattr__(self, "_cached_parameters", cache)
        return iter(cache[1])

    def named_buffers(self, prefix="", recurse=True):
        """(name, array) pairs of the buffers (running statistics), each array once."""
        return self._named_members("_buffers", prefix, recurse)

    def buffers(self, recurse=True):
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    # ------------------------------------------------------------------ modes and gradients

    def train(self, mode=True):
        """Set training mode (BatchNorm uses batch statistics, Dropout drops). Returns self."""
        mode = V.as_bool(mode, "mode")
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        """Evaluation mode: ``train(False)``. Returns self."""
        return self.train(False)

    def zero_grad(self, set_to_none=True):
        """Drop every parameter's gradient (PyTorch's default), or fill it with zeros in place."""
        for p in self.parameters():
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad[...] = 0

    def requires_grad_(self, requires_grad=True):
        """Freeze (False) or unfreeze (True) every parameter. Returns self.

        Frozen parameters get no gradient in backward, and optimizers skip them.
        """
        requires_grad = V.as_bool(requires_grad, "requires_grad")
        for p in self.parameters():
            p.requires_grad = requires_grad
        return self

    # ------------------------------------------------------------------ dtype conversion

    def _apply(self, fn):
        """Replace every parameter's data (and grad) and every buffer by fn(array)."""
        for m in self.modules():
            for p in m._parameters.values():
                if p is not None:
                    p.data = fn(p.data)
                    if p.grad is not None:
                        p.grad = fn(p.grad)
            for k, b in list(m._buffers.items()):
                if b is not None:
                    setattr(m, k, fn(b))
        return self

    def _to_float(self, dtype):
        def cast(a):
            if V.dtype_of(a).kind != "f":
                return a                      # integer buffers (num_batches_tracked) stay
            return a if V.dtype_of(a) == dtype else a.astype(dtype)
        return self._apply(cast)

    def double(self):
        """Convert floating parameters and buffers to float64 (in place of the module). Returns self."""
        return self._to_float(np.dtype(np.float64))

    def float(self):
        """Convert floating parameters and buffers to float32. Returns self."""
        return self._to_float(np.dtype(np.float32))

    # ------------------------------------------------------------------ state

    def _state_modules(self, prefix=""):
        """(prefix, module) for every module of the tree, a shared module under each of its
        names (as PyTorch's state_dict, which lists a shared layer once per place it is used)."""
        yield prefix, self
        for k, m in self._modules.items():
            if m is not None:
                yield from m._state_modules(f"{prefix}{k}.")

    def _state_arrays(self):
        """name -> the module's own array, for every parameter and persistent buffer."""
        out = OrderedDict()
        for pre, m in self._state_modules():
            for k, p in m._parameters.items():
                if p is not None:
                    out[pre + k] = p.data
            for k, b in m._buffers.items():
                if b is not None and k not in m._non_persistent:
                    out[pre + k] = b
        return out

    def state_dict(self, copy=False):
        """An ordered dict name -> array of every parameter and persistent buffer.

        Keys as in PyTorch (``"0.weight"``, ``"1.running_mean"``, ``"1.num_batches_tracked"``).
        The arrays are the module's own (as in PyTorch): later training changes them, so
        pass ``copy=True`` (a deepkern addition) to keep a snapshot, e.g. the best model.
        """
        out = self._state_arrays()
        if copy:
            for k, v in out.items():
                out[k] = v.copy()
        return out

    def load_state_dict(self, state_dict, strict=True):
        """Copy arrays from ``state_dict`` into this module's parameters and buffers, in place.

        Every entry is checked before anything is written: with ``strict=True`` keys missing
        from ``state_dict`` and unexpected keys are errors; with ``strict=False`` they are
        skipped and returned (transfer learning: load a pretrained body into a model with a
        new head). An entry whose shape or dtype differs from the module's array, or that is
        not an array, is always an error (as PyTorch's "size mismatch"; PyTorch would cast a
        different float dtype, deepkern refuses it). On error a ValueError names every
        problem and nothing is changed.

        Returns ``IncompatibleKeys(missing_keys, unexpected_keys)``.
        """
        if not hasattr(state_dict, "keys") or not hasattr(state_dict, "__getitem__"):
            raise TypeError(f"expected state_dict to be a dict-like, got {type(state_dict).__name__}")
        strict = V.as_bool(strict, "strict")
        targets = self._state_arrays()
        keys = list(state_dict.keys())
        missing = [k for k in targets if k not in state_dict]
        unexpected = [k for k in keys if k not in targets]
        bad = []
        for k, dst in targets.items():
            if k not in state_dict:
                continue
            src = state_dict[k]
            if not is_array(src):
                bad.append(f"{k}: expected an array, got {type(src).__name__}")
                continue
            if tuple(src.shape) != tuple(dst.shape):
                bad.append(f"{k}: shape {V.shape_str(src.shape)} in the state_dict, "
                           f"{V.shape_str(dst.shape)} in the model")
            elif V.dtype_of(src) != V.dtype_of(dst):
                bad.append(f"{k}: dtype {_dtype_name(src)} in the state_dict, {_dtype_name(dst)} in the model")
        problems = []
        if strict and missing:
            problems.append("missing keys: " + ", ".join(repr(k) for k in missing))
        if strict and unexpected:
            problems.append("unexpected keys: " + ", ".join(repr(k) for k in unexpected))
        if bad:
            problems.append("mismatched entries: " + "; ".join(bad))
        if problems:
            raise ValueError(f"Error(s) in loading state_dict for {type(self).__name__} (nothing was "
                             "changed): " + ". ".join(problems))
        for k, dst in targets.items():
            if k in state_dict:
                src = state_dict[k]
                xp = array_module(dst)
                if dst is not src:
                    dst[...] = src if xp is np else xp.asarray(src)
        return IncompatibleKeys(missing, unexpected)

    # ------------------------------------------------------------------ printing

    def extra_repr(self):
        """The text between the parentheses of this module's repr (layers override it)."""
        return ""

    def __repr__(self):
        lines = []
        for k, m in self._modules.items():
            sub = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({k}): {sub}")
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n" + "\n".join(lines) + "\n)"


def _fuse_role(m):
    """The part m plays in a fused pair, as its own class declares it (``_fuse_role``:
    "batch_norm" on BatchNorm1d/2d, "relu" on ReLU); None for a subclass, which may change
    forward (the declaration is read from the class itself, not inherited)."""
    return type(m).__dict__.get("_fuse_role")


class Sequential(Module):
    """Modules applied in order; ``backward`` runs their backward in reverse order.

    ``Sequential(m0, m1, ...)`` names the children "0", "1", ...; ``Sequential(OrderedDict)``
    uses the dict's names. Indexable (an int gives a module, a slice a new Sequential of the
    same modules), iterable, ``len()``, ``append()``.

    A BatchNorm1d/BatchNorm2d followed by a ReLU runs as one op (``functional.batch_norm_relu``
    and its backward: the ReLU applied as batch norm writes its output, its mask as batch norm's
    backward reads the gradient), with the same bits as the two layers one after the other; the
    ReLU module still keeps its output, so each module's own ``backward`` gives what it gave
    before. Not when either module's ``forward`` (or the ReLU's ``backward``) is replaced on the
    instance. A wrapper on the batch norm's ``backward`` (as DDP's hooks) still runs, and
    receives the gradient of the ReLU's output (the mask is applied inside). ``seq.fuse =
    False`` turns it off (a deepkern extension; PyTorch has no fusion in eager mode).
    """

    fuse = True

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], OrderedDict):
            for name, m in modules[0].items():
                self.add_module(name, m)
        else:
            for i, m in enumerate(modules):
                if not isinstance(m, Module):
                    raise TypeError(f"Sequential: argument {i} is a {type(m).__name__}, not a Module")
                self.add_module(str(i), m)
        self._refresh()

    def _refresh(self):
        # The children as a tuple: forward and backward loop over it without dict overhead.
        seq = tuple(m for m in self._modules.values() if m is not None)
        object.__setattr__(self, "_seq", seq)
        # the positions i of a batch norm whose next module is a ReLU (fused in forward)
        object.__setattr__(self, "_bn_relu", frozenset(
            i for i in range(len(seq) - 1)
            if _fuse_role(seq[i]) == "batch_norm" and _fuse_role(seq[i + 1]) == "relu"))
        object.__setattr__(self, "_fused", ())

    def append(self, module):
        """Add a module at the end. Returns self."""
        if not isinstance(module, Module):
            raise TypeError(f"Sequential.append: {type(module).__name__} is not a Module")
        self.add_module(str(len(self._modules)), module)
        self._refresh()
        return self

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        if "_seq" in self.__dict__ and name in self._modules:
            self._refresh()

    def __delattr__(self, name):
        super().__delattr__(name)
        self._refresh()

    def __setitem__(self, idx, module):
        """Replace the module at position idx (e.g. a new head: ``model[-1] = Linear(128, 5)``)."""
        if not isinstance(module, Module):
            raise TypeError(f"Sequential: {type(module).__name__} is not a Module")
        _ = self[idx]                               # the same index checks as reading
        name = list(self._modules)[idx]
        setattr(self, name, module)

    @property
    def needs_input_grad(self):
        """The first layer's flag (see Module): whether backward must return the input gradient."""
        return self._seq[0].needs_input_grad if self._seq else True

    @needs_input_grad.setter
    def needs_input_grad(self, value):
        if not self._seq:
            raise ValueError("needs_input_grad of an empty Sequential: add its layers first")
        self._seq[0].needs_input_grad = V.as_bool(value, "needs_input_grad")

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, idx):
        mods = list(self._modules.values())
        if isinstance(idx, slice):
            return Sequential(OrderedDict(list(self._modules.items())[idx]))
        if isinstance(idx, (bool, np.bool_)) or not isinstance(idx, (int, np.integer)):
            raise TypeError(f"Sequential indices must be integers or slices, not {type(idx).__name__}")
        if not -len(mods) <= idx < len(mods):
            raise IndexError(f"index {idx} is out of range for a Sequential of {len(mods)} modules")
        return mods[idx]

    def forward(self, x):
        pairs = self._bn_relu
        if not pairs or not self.fuse:
            self.__dict__["_fused"] = ()
            for m in self._seq:
                x = m.forward(x)
            return x
        seq, fused, i, n = self._seq, [], 0, len(self._seq)
        while i < n:
            m = seq[i]
            if i in pairs:
                r = seq[i + 1]
                if "forward" not in m.__dict__ and "forward" not in r.__dict__ and "backward" not in r.__dict__:
                    x = m._forward_relu(x)
                    r.__dict__["_y"] = x            # the ReLU's output, for its own backward
                    fused.append(i + 1)
                    i += 2
                    continue
            x = m.forward(x)
            i += 1
        self.__dict__["_fused"] = fused
        return x

    def backward(self, grad_out):
        fused = self._fused
        if not fused:
            for m in reversed(self._seq):
                grad_out = m.backward(grad_out)
            return grad_out
        seq, i = self._seq, len(self._seq) - 1
        while i >= 0:
            # a ReLU fused into the batch norm before it (unless a wrapper came on its backward
            # since the forward: then the two backward in turn, which give the same values)
            if i in fused and "backward" not in seq[i].__dict__:
                bn = seq[i - 1]
                bn.__dict__["_relu_y"] = seq[i]._y  # one backward of bn through the ReLU's mask
                try:
                    grad_out = bn.backward(grad_out)    # (through any wrapper, e.g. DDP's hook)
                finally:
                    bn.__dict__.pop("_relu_y", None)
                i -= 2
                continue
            grad_out = seq[i].backward(grad_out)
            i -= 1
        return grad_out
