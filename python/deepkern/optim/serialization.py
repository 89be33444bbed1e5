"""save_state / load_state: state dicts as plain .npz files (no pickle).

A state dict (of an optimizer, an EMA, a scheduler) is a tree of dicts, lists and tuples
whose leaves are ndarrays, numbers, bools, strings and None. ``save_state`` stores every
array as its own .npz entry and the rest of the tree as one JSON string that points to them;
``load_state`` reverses it with ``np.load(..., allow_pickle=False)``, so loading a file can
never run code. Dict keys keep their type (the integer parameter indices of an optimizer's
``"state"`` come back as ints), floats round-trip exactly (JSON uses their shortest repr).
"""

from __future__ import annotations

import json
import numbers
import os

import numpy as np

__all__ = ["save_state", "load_state"]

_META = "__deepkern_state__"


def _encode(obj, arrays):
    if isinstance(obj, np.ndarray):
        key = f"a{len(arrays)}"
        arrays[key] = obj
        return {"__array__": key}
    if isinstance(obj, np.generic):
        return _encode(np.asarray(obj), arrays)
    if isinstance(obj, dict):
        items = []
        for k, v in obj.items():
            if isinstance(k, (bool, np.bool_)) or not isinstance(k, (str, numbers.Integral)):
                raise TypeError(f"save_state: dict keys must be str or int, got {type(k).__name__} {k!r}")
            items.append([k if isinstance(k, str) else int(k), _encode(v, arrays)])
        return {"__dict__": items}
    if isinstance(obj, (list, tuple)):
        return {"__tuple__" if isinstance(obj, tuple) else "__list__": [_encode(v, arrays) for v in obj]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"save_state: cannot store a {type(obj).__name__} ({obj!r}); use arrays, numbers, "
                    "strings, bools, None, lists, tuples and dicts")


def _decode(obj, arrays):
    if isinstance(obj, dict):
        if "__array__" in obj:
            return arrays[obj["__array__"]]
        if "__dict__" in obj:
            return {k: _decode(v, arrays) for k, v in obj["__dict__"]}
        if "__tuple__" in obj:
            return tuple(_decode(v, arrays) for v in obj["__tuple__"])
        if "__list__" in obj:
            return [_decode(v, arrays) for v in obj["__list__"]]
        raise ValueError("unknown node in the metadata")
    return obj


def save_state(state_dict, file) -> None:
    """Write `state_dict` (e.g. ``optimizer.state_dict()``) to `file` (a path or file object)
    as an uncompressed .npz."""
    arrays: dict[str, np.ndarray] = {}
    meta = json.dumps(_encode(state_dict, arrays))
    np.savez(file, **{_META: np.array(meta)}, **arrays)


def load_state(file):
    """Read a state dict written by save_state. A file that is not one (truncated, damaged, not
    a zip, missing entries, hostile metadata) is a ValueError; the file is always closed."""
    if isinstance(file, (str, os.PathLike)):
        try:
            with open(file, "rb") as f:
                return _load(f, file)
        except OSError as e:
            raise ValueError(f"load_state: cannot read {file!r}: {e}") from None
    return _load(file, file)


def _load(f, name):
    # Anything NumPy or zipfile raises on a damaged file (BadZipFile, EOFError, zlib.error,
    # NotImplementedError for an unknown zip version, MemoryError for a forged header...) means
    # "not a readable state file": one ValueError for all of them.
    try:
        z = np.load(f, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 (see above)
        raise ValueError(f"load_state: cannot read {name!r}: {type(e).__name__}: {e}") from None
    if not hasattr(z, "files"):  # a bare .npy loads as an array
        raise ValueError(f"load_state: {name!r} is not a deepkern state file (not an .npz)")
    try:
        with z:
            if _META not in z.files:
                raise ValueError(f"load_state: {name!r} is not a deepkern state file (no {_META} entry)")
            meta = str(z[_META])
            arrays = {k: z[k] for k in z.files if k != _META}
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"load_state: cannot read {name!r}: {type(e).__name__}: {e}") from None
    try:
        return _decode(json.loads(meta), arrays)
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise ValueError(f"load_state: malformed file {name!r}: {type(e).__name__}: {e}") from None
