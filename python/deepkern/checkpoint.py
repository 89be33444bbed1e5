"""Checkpoint files: a training state as one plain ``.npz``, written and read without pickle.

Layout of the archive (every entry a NumPy array; ``np.load(path, allow_pickle=False)`` opens
it, and so can any tool that reads .npz):

    __deepkern_checkpoint__   a 0-d string array: JSON with the format name and version, the
                              list of model keys, and the rest of the tree (see below)
    model/<key>               the model's state_dict, one array per entry, under its own
                              name ("model/0.weight", "model/1.running_mean", ...): a reader
                              needs no deepkern to get the weights out
    state/a<i>                every other array of the tree (optimizer moments, EMA averages,
                              snapshots, ...), referenced from the JSON

The tree besides the model (optimizer and scheduler state dicts, epoch, seed, history, ...)
is encoded by ``deepkern.optim.serialization``: dicts, lists, tuples, numbers, strings, bools
and None go into the JSON, arrays into ``state/`` entries. Loading can never run code.

``save`` writes to a temporary file next to the target and renames it, so an interrupted
save leaves the previous checkpoint intact. ``load`` turns every kind of damage (not a zip,
truncated, CRC error, missing entries, malformed JSON, wrong format) into a ValueError naming
the file; checking the contents against a model is the caller's job (``deepkern.train``).
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np

from ._npz import read_npz
from .optim import serialization as _ser

__all__ = ["save", "load", "FORMAT", "VERSION"]

FORMAT = "deepkern.checkpoint"
VERSION = 1
_META = "__deepkern_checkpoint__"


def save(path, model_state, tree) -> None:
    """Write a checkpoint: ``model_state`` (name -> ndarray, e.g. ``model.state_dict()``) and
    ``tree`` (a dict of everything else; see the module doc for what it may hold)."""
    path = os.fspath(path)
    for k, v in model_state.items():
        if not isinstance(k, str) or not isinstance(v, np.ndarray):
            raise TypeError(f"checkpoint: model state entries must be str -> ndarray, got {k!r}: {type(v).__name__}")
    arrays: dict[str, np.ndarray] = {}
    encoded = _ser._encode(dict(tree), arrays)
    meta = json.dumps({"format": FORMAT, "version": VERSION, "model": list(model_state), "tree": encoded})
    entries = {_META: np.array(meta)}
    entries.update({f"model/{k}": np.asarray(v) for k, v in model_state.items()})
    entries.update({f"state/{k}": v for k, v in arrays.items()})
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".ckpt-", suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **entries)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def load(path):
    """Read a checkpoint written by ``save``: returns (model_state dict, tree dict).

    Raises FileNotFoundError for a missing file and ValueError (naming the file and the
    problem) for anything that is not an intact deepkern checkpoint of a known version.
    """
    name = os.fspath(path)
    arrays = read_npz(path, "load_checkpoint")
    meta = arrays.pop(_META, None)
    if meta is None:
        raise ValueError(f"load_checkpoint: {name} is not a deepkern checkpoint (no {_META} entry; "
                         f"it holds {sorted(arrays)[:5]}{'...' if len(arrays) > 5 else ''})")
    try:
        if meta.dtype.kind != "U" or meta.ndim != 0:
            raise ValueError(f"the metadata entry is a {meta.dtype.name} array of shape {meta.shape}")
        info = json.loads(str(meta))
        if not isinstance(info, dict):
            raise ValueError("the metadata is not a JSON object")
    except (ValueError, RecursionError) as e:
        raise ValueError(f"load_checkpoint: {name}: malformed metadata ({e})") from None
    if info.get("format") != FORMAT:
        raise ValueError(f"load_checkpoint: {name} is not a deepkern checkpoint (format {info.get('format')!r})")
    if info.get("version") != VERSION:
        raise ValueError(f"load_checkpoint: {name} has checkpoint version {info.get('version')!r}; "
                         f"this deepkern reads version {VERSION}")
    keys = info.get("model")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise ValueError(f"load_checkpoint: {name}: malformed metadata (the model keys are not a list of names)")
    missing = [k for k in keys if f"model/{k}" not in arrays]
    if missing:
        raise ValueError(f"load_checkpoint: {name} is incomplete: missing model entries "
                         + ", ".join(repr(k) for k in missing[:5]) + ("..." if len(missing) > 5 else ""))
    model_state = {k: arrays[f"model/{k}"] for k in keys}
    state_arrays = {k[len("state/"):]: v for k, v in arrays.items() if k.startswith("state/")}
    try:
        tree = _ser._decode(info.get("tree"), state_arrays)
    except (KeyError, TypeError, ValueError, RecursionError) as e:
        raise ValueError(f"load_checkpoint: {name} is incomplete or malformed: "
                         f"{type(e).__name__}: {e}") from None
    if not isinstance(tree, dict):
        raise ValueError(f"load_checkpoint: {name}: malformed metadata (the state is not a dict)")
    return model_state, tree
