"""Reading .npz files safely: no pickle, every damage is a ValueError, the file is closed.

Used by every loader of files a user may hand us (data sets, optimizer states, checkpoints).
NumPy's own np.load leaves its file handle open when the zip directory is damaged, and damaged
files reach a surprising set of exceptions (found by tests/test_fuzz_files.py): zipfile raises
NotImplementedError for a flipped "version needed" byte, the .npy header parser SyntaxError or
tokenize.TokenError, zlib its own error. All of them become one ValueError naming the file.
"""

from __future__ import annotations

import os
import tokenize
import zipfile
import zlib

import numpy as np

_DAMAGED = (zipfile.BadZipFile, EOFError, OSError, zlib.error, KeyError, ValueError,
            NotImplementedError, SyntaxError, tokenize.TokenError, RecursionError, MemoryError)


def _name(file):
    return os.fspath(file) if isinstance(file, (str, os.PathLike)) else repr(file)


def read_npz(file, what="file"):
    """All arrays of the .npz `file` (a path or a binary file object) as a dict name -> ndarray.

    Object arrays are refused (allow_pickle=False). A missing path is FileNotFoundError; a file
    that is not a readable .npz archive is a ValueError whose message starts with `what` and
    names the file.
    """
    name = _name(file)
    if isinstance(file, (str, os.PathLike)) and not os.path.isfile(file):
        raise FileNotFoundError(f"{what}: no such file: {name}")
    try:
        f = open(file, "rb") if isinstance(file, (str, os.PathLike)) else file
        try:
            z = np.load(f, allow_pickle=False)
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise ValueError("a single .npy array, not an .npz archive")
            with z:
                return {k: z[k] for k in z.files}
        finally:
            if f is not file:
                f.close()
    except _DAMAGED as e:
        raise ValueError(f"{what}: cannot read {name}: not a readable .npz archive "
                         f"({type(e).__name__}: {e})") from None
