"""Fuzzing the file loaders: truncated, corrupt and mismatched files are a clear ValueError.

Valid files are written, then damaged by hypothesis (truncated anywhere, bytes overwritten, the
header's sizes replaced by hostile values, junk appended, gzip streams cut or flipped, object
arrays and NaN smuggled into .npz files). The property: the loader returns well-formed arrays
or raises ValueError naming the file; never another exception, never a pickle, never a huge
allocation from a lying header. For the optimizer state files: a damaged file never changes
the optimizer it is loaded into.

deepkern.data (IDX / .npz data sets) and deepkern.optim (save_state / load_state) are written
in parallel with this file: each test runs when its module is in the checkout.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import tempfile

import numpy as np
import pytest
from hypothesis import given, note
from hypothesis import strategies as st

from opinfo import count_case, optim_module


def _module(name):
    try:
        return __import__(name, fromlist=["_"])
    except ImportError:
        return None


data = _module("deepkern.data")
needs_data = pytest.mark.skipif(data is None, reason="deepkern.data is not in this checkout (written in parallel)")
needs_optim = pytest.mark.skipif(optim_module() is None,
                                 reason="deepkern.optim is not in this checkout (written in parallel)")

IDX_CODES = {np.dtype("u1"): 0x08, np.dtype("i1"): 0x09, np.dtype(">i2"): 0x0B, np.dtype(">i4"): 0x0C,
             np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}


def idx_bytes(a, dtype):
    """The IDX encoding of array a stored as `dtype` (big-endian)."""
    dt = np.dtype(dtype)
    head = bytes([0, 0, IDX_CODES[dt], a.ndim]) + np.array(a.shape, ">u4").tobytes()
    return head + np.ascontiguousarray(a, dtype=dt).tobytes()


class Blob(bytes):
    """File contents that print as their length (hypothesis prints every draw)."""

    def __repr__(self):
        return f"<{len(self)} bytes>"


@st.composite
def damage(draw, blob, header_len):
    """blob with one to three kinds of damage (or none: the valid file must load)."""
    kinds = draw(st.lists(st.sampled_from(["truncate", "overwrite", "header_size", "append", "none"]),
                          min_size=1, max_size=3), label="damage")
    b = bytearray(blob)
    for kind in kinds:
        if kind == "truncate" and b:
            b = b[:draw(st.integers(0, len(b) - 1), label="cut at")]
        elif kind == "overwrite" and b:
            for _ in range(draw(st.integers(1, 4))):
                hi = min(len(b), header_len) if draw(st.booleans()) else len(b)
                b[draw(st.integers(0, max(0, hi - 1)))] = draw(st.integers(0, 255))
        elif kind == "header_size" and len(b) >= header_len and header_len >= 8:
            pos = draw(st.sampled_from(list(range(4, header_len - 3, 4))), label="size field")
            value = draw(st.sampled_from([0, 1, 2, 3, 2**16, 2**31 - 1, 2**31, 2**32 - 1]) | st.integers(0, 2**32 - 1))
            b[pos:pos + 4] = value.to_bytes(4, "big")
        elif kind == "append":
            b += bytes(draw(st.lists(st.integers(0, 255), min_size=1, max_size=16)))
    return Blob(b), kinds


def _write(path, blob, gz):
    with open(path, "wb") as f:
        f.write(gzip.compress(blob) if gz else blob)


def _check_idx_result(a, path):
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    ndim = raw[3]
    dims = tuple(int(v) for v in np.frombuffer(raw[4:4 + 4 * ndim], ">u4"))
    assert isinstance(a, np.ndarray) and a.shape == dims and a.dtype.isnative


@needs_data
@given(st.data())
def test_load_idx_damaged_files(data_):
    rng = np.random.default_rng(data_.draw(st.integers(0, 2**32 - 1), label="values"))
    dtype = data_.draw(st.sampled_from(sorted(IDX_CODES, key=str)), label="dtype")
    shape = tuple(data_.draw(st.lists(st.integers(0, 5), min_size=1, max_size=3), label="shape"))
    a = (rng.standard_normal(shape) * 50).astype(dtype)
    blob, kinds = data_.draw(damage(idx_bytes(a, dtype), 4 + 4 * len(shape)))
    gz = data_.draw(st.booleans(), label="gzip")
    if gz and data_.draw(st.booleans(), label="damage the gzip stream too"):
        z = bytearray(gzip.compress(blob))
        z[data_.draw(st.integers(0, len(z) - 1))] ^= 0xFF
        blob, gz = bytes(z), False
    note(f"damage {kinds}, {len(blob)} bytes, gzip {gz}")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "f-idx3-ubyte")
        _write(path, blob, gz)
        try:
            out = data.load_idx(path)
        except ValueError as e:
            assert "f-idx3-ubyte" in str(e), f"the message does not name the file: {e}"
            count_case("data.load_idx", "invalid")
            return
        _check_idx_result(out, path)
        if kinds == ["none"]:
            assert np.array_equal(out, a.astype(np.dtype(dtype).newbyteorder("=")))
        count_case("data.load_idx", "valid")


@needs_data
@given(st.data())
def test_load_mnist_damaged_pairs(data_):
    rng = np.random.default_rng(data_.draw(st.integers(0, 2**32 - 1), label="values"))
    N, H, W = data_.draw(st.integers(0, 4)), data_.draw(st.integers(1, 4)), data_.draw(st.integers(1, 4))
    images = rng.integers(0, 256, (N, H, W)).astype(np.uint8)
    labels = rng.integers(0, 10, N + data_.draw(st.sampled_from([0, 0, 0, 1, -1]) if N else st.just(0))).astype(np.uint8)
    which = data_.draw(st.sampled_from(["images", "labels", "neither"]), label="damaged file")
    ib, lb = idx_bytes(images, "u1"), idx_bytes(labels, "u1")
    if which == "images":
        ib, _ = data_.draw(damage(ib, 16))
    elif which == "labels":
        lb, _ = data_.draw(damage(lb, 8))
    with tempfile.TemporaryDirectory() as d:
        _write(os.path.join(d, "train-images-idx3-ubyte"), ib, False)
        _write(os.path.join(d, "train-labels-idx1-ubyte.gz"), lb, True)
        try:
            x, y = data.load_mnist(d, train=True)
        except ValueError as e:
            assert "ubyte" in str(e), f"the message does not name the file: {e}"
            count_case("data.load_mnist", "invalid")
            return
        assert x.dtype == np.float32 and x.ndim == 4 and x.shape[1] == 1
        assert y.dtype == np.int64 and y.shape == (x.shape[0],) and (y >= 0).all()
        count_case("data.load_mnist", "valid")


@st.composite
def npz_blob(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="values"))
    N = draw(st.integers(0, 4))
    x = rng.standard_normal((N, 2, 3, 3)).astype(draw(st.sampled_from([np.float32, np.float64, np.uint8])))
    y = rng.integers(0, 10, N)
    trick = draw(st.sampled_from(["none", "object", "nan", "negative", "missing", "shape", "string", "npy"]))
    arrays = {"x": x, "y": y}
    if trick == "object":
        arrays["x"] = np.array([{"payload": 1}] * max(N, 1), dtype=object)
    elif trick == "nan" and x.dtype.kind == "f" and N:
        x.reshape(-1)[0] = np.nan
    elif trick == "negative" and N:
        y[0] = -1
    elif trick == "missing":
        del arrays["y"]
    elif trick == "shape":
        arrays["y"] = np.zeros(N + 1, np.int64)
    elif trick == "string":
        arrays["x"] = np.array(["a"] * max(N, 1))
    buf = io.BytesIO()
    if trick == "npy":
        np.save(buf, x)
    elif trick == "object":
        np.savez(buf, **arrays)        # np.savez pickles object arrays: the loader must refuse them
    else:
        (np.savez_compressed if draw(st.booleans()) else np.savez)(buf, **arrays)
    return Blob(buf.getvalue()), trick


@needs_data
@given(st.data())
def test_load_npz_damaged_files(data_):
    blob, trick = data_.draw(npz_blob(), label="file")
    blob, kinds = data_.draw(damage(blob, 64))
    note(f"trick {trick}, damage {kinds}")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "set.npz")
        _write(path, blob, False)
        try:
            x, y = data.load_npz(path)
        except ValueError as e:
            assert "set.npz" in str(e), f"the message does not name the file: {e}"
            count_case("data.load_npz", "invalid")
            return
        assert trick == "none" or (trick == "nan" and not np.isnan(x).any()) or trick == "negative", trick
        assert x.dtype == np.float32 and np.isfinite(x).all() and x.flags.c_contiguous
        assert y.dtype == np.int64 and y.shape == (x.shape[0],) and (y >= 0).all()
        count_case("data.load_npz", "valid")


def _optimizer(seed):
    optim = optim_module()
    from deepkern.nn import Parameter
    rng = np.random.default_rng(seed)
    params = [Parameter(rng.standard_normal((3, 4)).astype(np.float32)), Parameter(np.ones(5, np.float32))]
    opt = optim.Adam(params, lr=0.01, amsgrad=True)
    for _ in range(2):
        for p in params:
            p.grad = rng.standard_normal(p.shape).astype(np.float32)
        opt.step()
    return opt, params


def _fingerprint(opt, params):
    sd = opt.state_dict()
    blobs = [p.data.tobytes() for p in params]

    def walk(o):
        if isinstance(o, np.ndarray):
            blobs.append(o.tobytes())
        elif isinstance(o, dict):
            for k in sorted(o, key=str):
                blobs.append(repr(k).encode())
                walk(o[k])
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v)
        else:
            blobs.append(repr(o).encode())
    walk(sd)
    return blobs


@needs_optim
@given(st.data())
def test_optimizer_state_files_damaged(data_):
    optim = optim_module()
    opt, _ = _optimizer(0)
    buf = io.BytesIO()
    optim.save_state(opt.state_dict(), buf)
    blob, kinds = data_.draw(damage(buf.getvalue(), 64))
    target, tparams = _optimizer(1)
    before = _fingerprint(target, tparams)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "opt.npz")
        _write(path, blob, False)
        try:
            sd = optim.load_state(path)
            target.load_state_dict(sd)
        except (ValueError, TypeError):
            assert _fingerprint(target, tparams) == before, "a failed load changed the optimizer"
            count_case("optim.load_state", "invalid")
            return
        count_case("optim.load_state", "valid")


@needs_optim
def test_optimizer_state_file_with_deeply_nested_metadata():
    """A hostile JSON tree 100,000 levels deep: json raises RecursionError, which must come out
    as the documented ValueError."""
    optim = optim_module()
    meta = "[" * 100_000 + "]" * 100_000
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "deep.npz")
        np.savez(path, __deepkern_state__=np.array(meta))
        with pytest.raises(ValueError):
            optim.load_state(path)
        np.savez(path, __deepkern_state__=np.array(json.dumps({"__array__": "missing"})))
        with pytest.raises(ValueError):
            optim.load_state(path)


# ---------------------------------------------------------------------------- regressions found by the fuzzer

def _npz_with_extract_version_64():
    """A valid .npz whose central directory says 'version 6.4 needed to extract' (one flipped
    byte): zipfile raises NotImplementedError, not BadZipFile."""
    buf = io.BytesIO()
    np.savez(buf, x=np.ones((2, 1, 2, 2), np.float32), y=np.zeros(2, np.int64))
    b = bytearray(buf.getvalue())
    cd = b.index(b"PK\x01\x02")
    b[cd + 6:cd + 8] = (64).to_bytes(2, "little")
    return bytes(b)


def _npy_with_bad_header_length():
    """A .npy whose header-length field is off (one byte): numpy's header parser raises
    tokenize.TokenError (neither ValueError nor OSError). Other single bytes give SyntaxError."""
    buf = io.BytesIO()
    np.save(buf, np.ones(3, np.float32))
    b = bytearray(buf.getvalue())
    b[8] = 0x27
    return bytes(b)


@needs_data
@pytest.mark.parametrize("make", [_npz_with_extract_version_64, _npy_with_bad_header_length])
def test_load_npz_regressions(make):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "bad.npz")
        _write(path, make(), False)
        with pytest.raises(ValueError, match="bad.npz"):
            data.load_npz(path)


@needs_optim
@pytest.mark.parametrize("make", [_npz_with_extract_version_64, _npy_with_bad_header_length])
def test_load_state_regressions(make):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "bad.npz")
        _write(path, make(), False)
        with pytest.raises(ValueError):
            optim_module().load_state(path)
