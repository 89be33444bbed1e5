"""Loading data sets from files: MNIST-format IDX files and NumPy ``.npz`` files.

Everything read is checked before it is used: a file that is truncated, has trailing bytes,
a wrong magic number, inconsistent sizes, or labels that do not match the images is a
``ValueError`` naming the file and the problem. Nothing is ever unpickled
(``np.load(..., allow_pickle=False)``).

Results follow one convention: images ``x`` float32 (N, C, H, W) with their stored values
(0..255 for MNIST: normalize them with ``Standardizer``), labels ``y`` int64 (N,).
"""

from __future__ import annotations

import gzip
import os
import tokenize
import zipfile
import zlib

import numpy as np

__all__ = ["load_idx", "load_mnist", "load_npz", "load"]

# IDX (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT"): two zero bytes, a type
# code, the number of dimensions, then each dimension as a big-endian uint32, then the data
# in row-major order, big-endian.
_IDX_TYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_MAX_BYTES = 1 << 34          # 16 GiB: refuse headers that announce more (a corrupt size)


def _open(path):
    """A binary file object; gzip-decompressing when the file starts with gzip's magic."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path}")
    with open(path, "rb") as f:
        head = f.read(2)
    return gzip.open(path, "rb") if head == b"\x1f\x8b" else open(path, "rb")


def _read_exact(f, n, path, what):
    data = f.read(n)
    if len(data) != n:
        raise ValueError(f"{path}: truncated IDX file: expected {n} bytes of {what}, found {len(data)}")
    return data


def load_idx(path):
    """Read one IDX file (plain or gzip-compressed) into an ndarray of its type and shape.

    Raises ValueError for a bad magic number, an unknown type code, no dimensions, a zero
    dimension size that does not match the data, a truncated file or trailing bytes, and for
    a damaged gzip stream.
    """
    path = os.fspath(path)
    try:
        with _open(path) as f:
            magic = f.read(4)
            if len(magic) < 4:
                raise ValueError(f"{path}: not an IDX file (only {len(magic)} bytes)")
            if magic[0] != 0 or magic[1] != 0:
                raise ValueError(f"{path}: not an IDX file (magic number {magic.hex()} does not start with 0000)")
            code, ndim = magic[2], magic[3]
            if code not in _IDX_TYPES:
                raise ValueError(f"{path}: unknown IDX data type code 0x{code:02x} "
                                 f"(expected one of {', '.join(f'0x{c:02x}' for c in _IDX_TYPES)})")
            if ndim == 0:
                raise ValueError(f"{path}: IDX header declares 0 dimensions")
            dims = tuple(int(d) for d in np.frombuffer(_read_exact(f, 4 * ndim, path, "header"), dtype=">u4"))
            dtype = _IDX_TYPES[code]
            n = dtype.itemsize
            for d in dims:
                n *= d
            if n > _MAX_BYTES:
                raise ValueError(f"{path}: IDX header announces {n} bytes of data (dims {dims}); refusing")
            data = _read_exact(f, n, path, f"data for shape {dims}")
            if f.read(1):
                raise ValueError(f"{path}: IDX file has bytes after the {n} bytes of data its header "
                                 f"declares (dims {dims}, type {dtype.name})")
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: damaged gzip stream ({e})") from e
    return np.frombuffer(data, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


_MNIST_NAMES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find(directory, stem):
    """The file for an MNIST stem: 'stem', 'stem.gz', or the 'train-images.idx3-ubyte' spelling."""
    alt = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", alt, alt + ".gz"):
        p = os.path.join(directory, name)
        if os.path.isfile(p):
            return p
    raise FileNotFoundError(f"{directory}: no {stem}[.gz] file (MNIST-format directory expected)")


def _check_images_labels(images, labels, ipath, lpath):
    if images.ndim != 3:
        raise ValueError(f"{ipath}: expected images of shape (N, H, W), got {images.shape}")
    if labels.ndim != 1:
        raise ValueError(f"{lpath}: expected labels of shape (N,), got {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{ipath} holds {images.shape[0]} images but {lpath} holds {labels.shape[0]} labels")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"{lpath}: labels must be integers, got {labels.dtype.name}")
    if labels.size and labels.min() < 0:
        raise ValueError(f"{lpath}: negative label {labels.min()}")


def load_mnist(path, train=True):
    """MNIST (or Fashion-MNIST, or any data set in its format) from a directory.

    path: a directory holding train-images-idx3-ubyte and train-labels-idx1-ubyte (train=True)
    or t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (train=False), each optionally
    .gz-compressed. Returns (x float32 (N, 1, H, W) with values as stored, y int64 (N,)).
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no such directory: {path}")
    istem, lstem = _MNIST_NAMES[bool(train)]
    ipath, lpath = _find(path, istem), _find(path, lstem)
    images, labels = load_idx(ipath), load_idx(lpath)
    _check_images_labels(images, labels, ipath, lpath)
    return images.astype(np.float32)[:, None], labels.astype(np.int64)


def load_npz(path, x_key="x", y_key="y"):
    """A data set stored as a .npz file with an images array and a labels array.

    x: (N, H, W) -> (N, 1, H, W), (N, C, H, W), or (N, F) features; any integer or float
    dtype, finite. y: (N,) non-negative integers. Returns (x float32, y int64). Object
    arrays (pickles) are refused.
    """
    from .._npz import read_npz

    path = os.fspath(path)
    arrays = read_npz(path, "load_npz")
    missing = [k for k in (x_key, y_key) if k not in arrays]
    if missing:
        raise ValueError(f"{path}: missing array(s) {', '.join(repr(k) for k in missing)}; "
                         f"the file holds {sorted(arrays)}")
    x, y = arrays[x_key], arrays[y_key]
    if x.dtype.kind not in "iuf":
        raise ValueError(f"{path}: '{x_key}' must hold numbers, got dtype {x.dtype.name}")
    if x.ndim not in (2, 3, 4) or x.shape[0] == 0:
        raise ValueError(f"{path}: '{x_key}' must have shape (N, H, W), (N, C, H, W) or (N, F) with N > 0, "
                         f"got {x.shape}")
    if y.dtype.kind not in "iu":
        raise ValueError(f"{path}: '{y_key}' must hold integer class labels, got dtype {y.dtype.name}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"{path}: '{y_key}' must have shape ({x.shape[0]},) to match '{x_key}' {x.shape}, "
                         f"got {y.shape}")
    if y.min() < 0:
        raise ValueError(f"{path}: '{y_key}' holds a negative label ({y.min()})")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f"{path}: '{x_key}' holds NaN or infinite values")
    if x.ndim == 3:
        x = x[:, None]
    return np.ascontiguousarray(x), y.astype(np.int64)


def load(path, train=True):
    """Load a data set by name or path: "digits" (the embedded set), a .npz file (x, y),
    or an MNIST-format directory (the train or t10k files). Returns (x float32, y int64)."""
    if os.fspath(path) == "digits":
        from .digits import load_digits
        return load_digits()
    path = os.fspath(path)
    if os.path.isdir(path):
        return load_mnist(path, train=train)
    if path.endswith(".npz"):
        return load_npz(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file or directory: {path}")
    raise ValueError(f"{path}: unknown data format (expected 'digits', a .npz file or an MNIST directory)")
