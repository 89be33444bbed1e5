"""deepkern.data: the embedded digits, splits, the IDX and .npz loaders (on files the tests
write, intact and damaged), Standardizer, and DataLoader."""

import gzip
import os
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import deepkern
from deepkern import data as D


# ---------------------------------------------------------------------------- digits

def test_digits_are_the_uci_set():
    x, y = D.load_digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == np.float32
    assert y.shape == (1797,) and y.dtype == np.int64
    assert x.min() == 0 and x.max() == 16 and (x == np.round(x)).all()
    assert np.bincount(y).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    x2, _ = D.load_digits()
    x2[0] = -1                                         # each call returns fresh arrays
    assert D.load_digits()[0][0].min() == 0


def test_embedded_file_is_small_and_attributed():
    here = os.path.dirname(D.digits.__file__)
    assert os.path.getsize(os.path.join(here, "digits.npz")) < 100_000
    with open(os.path.join(here, "DIGITS_LICENSE.txt")) as f:
        text = f.read()
    assert "Alpaydin" in text and "CC BY 4.0" in text


def test_digits_test_split_is_fixed_stratified_and_disjoint():
    a = D.digits_splits(val_size=0.1, seed=0)
    b = D.digits_splits(val_size=0.25, seed=5)
    assert len(a.test[1]) == 359 == round(0.2 * 1797)
    np.testing.assert_array_equal(a.test[0], b.test[0])                 # the same 20% whatever the seed
    np.testing.assert_array_equal(a.test[1], b.test[1])
    assert not np.array_equal(a.val[1], b.val[1][:len(a.val[1])])
    assert len(a.train[1]) + len(a.val[1]) + len(a.test[1]) == 1797
    assert len(a.val[1]) == round(0.1 * (1797 - 359))
    counts = np.bincount(a.test[1], minlength=10)
    assert counts.min() >= 34 and counts.max() <= 37                     # ~20% of 174..183 each
    # a partition: together the three parts are exactly the data set (as a multiset of rows)
    x, y = D.load_digits()
    whole = np.concatenate([x.reshape(1797, -1), y[:, None]], axis=1)
    parts = np.concatenate([np.concatenate([px.reshape(len(px), -1), py[:, None]], axis=1) for px, py in a])
    np.testing.assert_array_equal(np.unique(whole, axis=0, return_counts=True)[1],
                                  np.unique(parts, axis=0, return_counts=True)[1])
    np.testing.assert_array_equal(np.unique(whole, axis=0), np.unique(parts, axis=0))
    empty = D.digits_splits(val_size=0.0)
    assert len(empty.val[1]) == 0 and len(empty.train[1]) == 1797 - 359


def test_split_indices_partition_and_determinism(rng):
    y = rng.integers(0, 3, 101)
    rest, a, b = D.split_indices(y, [0.2, 0.1], seed=3)
    assert len(a) == 20 and len(b) == 10 and len(rest) == 71
    np.testing.assert_array_equal(np.sort(np.concatenate([rest, a, b])), np.arange(101))
    again = D.split_indices(y, [0.2, 0.1], seed=3)
    for p, q in zip((rest, a, b), again):
        np.testing.assert_array_equal(p, q)
    other = D.split_indices(y, [0.2, 0.1], seed=4)
    assert not np.array_equal(a, other[1])
    for frac, part in ((0.2, a), (0.1, b)):                              # stratified, up to rounding
        for c in range(3):
            assert abs((y[part] == c).sum() - frac * (y == c).sum()) <= 1
    unstrat = D.split_indices(y, [0.2], seed=3, stratify=False)
    assert len(unstrat[1]) == 20
    xtr, xte, ytr, yte = D.train_test_split(np.arange(101) * 10, y, test_size=0.2, seed=3)
    np.testing.assert_array_equal(xte, a * 10)
    np.testing.assert_array_equal(yte, y[a])
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        D.split_indices(y, [1.2])
    with pytest.raises(ValueError, match="nothing for the rest"):
        D.split_indices(y, [0.6, 0.5])
    with pytest.raises(ValueError, match="non-negative"):
        D.split_indices(y, [0.2], seed=-1)
    with pytest.raises(ValueError, match="different lengths"):
        D.train_test_split(np.zeros(3), np.zeros(4))


# ---------------------------------------------------------------------------- IDX files

def idx_bytes(arr, code=0x08):
    """An IDX file: 00 00 code ndim, big-endian dims, big-endian data."""
    dt = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    head = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return head + np.asarray(arr, dtype=dt).tobytes()


def write(path, content, gz=False):
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(content)
    else:
        with open(path, "wb") as f:
            f.write(content)
    return str(path)


def mnist_dir(tmp_path, rng, n=7, gz=False, train=True, dotted=False):
    images = rng.integers(0, 256, (n, 5, 4)).astype(np.uint8)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    stem = ("train" if train else "t10k")
    iname, lname = f"{stem}-images-idx3-ubyte", f"{stem}-labels-idx1-ubyte"
    if dotted:
        iname, lname = iname.replace("-idx", ".idx"), lname.replace("-idx", ".idx")
    sfx = ".gz" if gz else ""
    write(tmp_path / (iname + sfx), idx_bytes(images), gz)
    write(tmp_path / (lname + sfx), idx_bytes(labels), gz)
    return images, labels


@pytest.mark.parametrize("code,dtype", [(0x08, np.uint8), (0x09, np.int8), (0x0B, np.int16), (0x0C, np.int32),
                                        (0x0D, np.float32), (0x0E, np.float64)])
@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(code, dtype, gz, tmp_path, rng):
    arr = (rng.standard_normal((3, 4, 2)) * 50).astype(dtype) if code != 0x08 else \
        rng.integers(0, 256, (3, 4, 2)).astype(dtype)
    p = write(tmp_path / "a.idx", idx_bytes(arr, code), gz)
    got = D.load_idx(p)
    assert got.dtype == np.dtype(dtype).newbyteorder("=") and got.shape == arr.shape
    np.testing.assert_array_equal(got, arr)
    assert got.flags.writeable


@pytest.mark.parametrize("gz,train,dotted", [(False, True, False), (True, True, False), (True, False, True)])
def test_load_mnist(gz, train, dotted, tmp_path, rng):
    images, labels = mnist_dir(tmp_path, rng, gz=gz, train=train, dotted=dotted)
    x, y = D.load_mnist(tmp_path, train=train)
    assert x.shape == (7, 1, 5, 4) and x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(x[:, 0], images)
    np.testing.assert_array_equal(y, labels)
    x2, y2 = D.load(str(tmp_path), train=train)
    np.testing.assert_array_equal(x2, x)


@pytest.mark.parametrize("damage,match", [
    (lambda b: b[:-3], "truncated IDX file: expected 140 bytes of data"),
    (lambda b: b[:6], "truncated IDX file: expected 12 bytes of header"),
    (lambda b: b[:2], "not an IDX file"),
    (lambda b: b + b"\x00", "bytes after"),
    (lambda b: b"\x01" + b[1:], "magic number"),
    (lambda b: b[:2] + b"\x07" + b[3:], "unknown IDX data type code 0x07"),
    (lambda b: b[:3] + b"\x00" + b[4:], "0 dimensions"),
    (lambda b: b[:4] + struct.pack(">I", 2**31) + b[8:], "refusing"),
])
@pytest.mark.parametrize("gz", [False, True])
def test_corrupt_idx_files_are_clear_errors(damage, match, gz, tmp_path, rng):
    good = idx_bytes(rng.integers(0, 256, (7, 5, 4)).astype(np.uint8))
    p = write(tmp_path / "bad.idx", damage(good), gz)
    with pytest.raises(ValueError, match=match):
        D.load_idx(p)


def test_damaged_gzip_is_a_clear_error(tmp_path, rng):
    good = idx_bytes(rng.integers(0, 256, (50, 5, 4)).astype(np.uint8))
    raw = gzip.compress(good)
    p = write(tmp_path / "cut.gz", raw[:len(raw) // 2])
    with pytest.raises(ValueError, match="damaged gzip|truncated"):
        D.load_idx(p)
    flipped = bytearray(raw)
    flipped[-6] ^= 0xFF                                    # the CRC no longer matches
    p = write(tmp_path / "crc.gz", bytes(flipped))
    with pytest.raises(ValueError, match="damaged gzip"):
        D.load_idx(p)


def test_mnist_images_and_labels_must_agree(tmp_path, rng):
    mnist_dir(tmp_path, rng)
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(np.zeros(6, np.uint8)))
    with pytest.raises(ValueError, match="7 images but .* 6 labels"):
        D.load_mnist(tmp_path)
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(np.zeros((7, 2), np.uint8)))
    with pytest.raises(ValueError, match=r"expected labels of shape \(N,\)"):
        D.load_mnist(tmp_path)
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(np.zeros(7, np.float32), 0x0D))
    with pytest.raises(ValueError, match="labels must be integers"):
        D.load_mnist(tmp_path)
    with pytest.raises(FileNotFoundError, match="t10k-images"):
        D.load_mnist(tmp_path, train=False)
    with pytest.raises(FileNotFoundError):
        D.load_mnist(tmp_path / "nowhere")


# ---------------------------------------------------------------------------- .npz files

def test_load_npz(tmp_path, rng):
    x = rng.integers(0, 256, (5, 6, 6)).astype(np.uint8)
    y = rng.integers(0, 3, 5)
    p = tmp_path / "d.npz"
    np.savez(p, x=x, y=y)
    gx, gy = D.load_npz(p)
    assert gx.shape == (5, 1, 6, 6) and gx.dtype == np.float32 and gy.dtype == np.int64
    np.testing.assert_array_equal(gx[:, 0], x)
    np.testing.assert_array_equal(D.load(str(p))[1], y)
    np.savez_compressed(tmp_path / "c.npz", images=rng.standard_normal((4, 3, 2, 2)),
                        labels=np.arange(4, dtype=np.uint8))
    gx, gy = D.load_npz(tmp_path / "c.npz", x_key="images", y_key="labels")
    assert gx.shape == (4, 3, 2, 2)


@pytest.mark.parametrize("arrays,match", [
    (dict(x=np.zeros((3, 2, 2))), "missing array"),
    (dict(x=np.zeros((3, 2, 2)), y=np.zeros(3)), "integer class labels"),
    (dict(x=np.zeros((3, 2, 2)), y=np.zeros(4, np.int64)), r"shape \(3,\)"),
    (dict(x=np.zeros((3, 2, 2)), y=np.array([0, -1, 2])), "negative label"),
    (dict(x=np.zeros(3), y=np.zeros(3, np.int64)), "must have shape"),
    (dict(x=np.zeros((0, 2, 2)), y=np.zeros(0, np.int64)), "N > 0"),
    (dict(x=np.array([[[np.nan]]]), y=np.zeros(1, np.int64)), "NaN or infinite"),
    (dict(x=np.zeros((3, 2, 2), bool), y=np.zeros(3, np.int64)), "must hold numbers"),
    (dict(x=np.array([None, 1], dtype=object), y=np.zeros(2, np.int64)), "Object arrays cannot be loaded"),
])
def test_bad_npz_contents(arrays, match, tmp_path):
    p = tmp_path / "bad.npz"
    np.savez(p, **arrays)
    with pytest.raises(ValueError, match=match):
        D.load_npz(p)


def test_damaged_npz_files(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, x=np.zeros((4, 8, 8)), y=np.zeros(4, np.int64))
    raw = p.read_bytes()
    write(tmp_path / "cut.npz", raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="cut.npz"):
        D.load_npz(tmp_path / "cut.npz")
    write(tmp_path / "text.npz", b"this is not a zip file at all")
    with pytest.raises(ValueError, match="text.npz"):
        D.load_npz(tmp_path / "text.npz")
    np.save(tmp_path / "single.npy", np.zeros(3))
    os.rename(tmp_path / "single.npy", tmp_path / "single.npz")
    with pytest.raises(ValueError, match="single .npy array"):
        D.load_npz(tmp_path / "single.npz")
    with pytest.raises(FileNotFoundError):
        D.load_npz(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="unknown data format"):
        D.load(write(tmp_path / "data.csv", b"1,2"))


def test_no_pickle_in_the_data_package():
    import deepkern.data
    root = os.path.dirname(deepkern.data.__file__)
    for name in os.listdir(root):
        if name.endswith(".py"):
            with open(os.path.join(root, name)) as f:
                text = f.read()
            assert "allow_pickle=True" not in text and "import pickle" not in text, name


# ---------------------------------------------------------------------------- Standardizer

def test_standardizer_fits_on_train_and_applies_to_test(rng):
    tr = (rng.standard_normal((200, 3, 4, 4)) * [[[[2.0]], [[5.0]], [[0.5]]]] + [[[[1.0]], [[-3.0]], [[10.0]]]])
    tr = tr.astype(np.float32)
    te = (rng.standard_normal((50, 3, 4, 4)) * 2).astype(np.float32)
    s = D.Standardizer().fit(tr)
    out = s.transform(tr)
    assert out.dtype == np.float32 and out is not tr
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(0, 2, 3)), 1, atol=1e-5)
    np.testing.assert_allclose(s.transform(te), (te - s.mean.reshape(1, 3, 1, 1)) / s.std.reshape(1, 3, 1, 1),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s.inverse_transform(out), tr, rtol=1e-5, atol=1e-4)
    g = D.Standardizer(per_channel=False).fit(tr)
    assert g.mean.shape == () and abs(g.transform(tr).std() - 1) < 1e-5
    s2 = D.Standardizer().load_state_dict(s.state_dict())
    np.testing.assert_array_equal(s2.transform(te), s.transform(te))
    const = D.Standardizer().fit(np.ones((4, 2, 2, 2)))
    assert np.isfinite(const.transform(np.ones((1, 2, 2, 2)))).all()
    with pytest.raises(RuntimeError, match="fit"):
        D.Standardizer().transform(te)
    with pytest.raises(ValueError, match="3 channels"):
        s.transform(np.zeros((2, 2, 4, 4)))
    with pytest.raises(ValueError, match="std positive"):
        D.Standardizer().load_state_dict({"mean": np.zeros(2), "std": np.zeros(2)})


# ---------------------------------------------------------------------------- DataLoader

def test_loader_batches_in_order():
    x = np.arange(10, dtype=np.float32).reshape(10, 1)
    y = np.arange(10)
    loader = D.DataLoader(x, y, batch_size=4)
    batches = list(loader)
    assert len(loader) == 3 and [len(b[1]) for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y)
    assert [len(b[1]) for b in D.DataLoader(x, y, batch_size=4, drop_last=True)] == [4, 4]
    assert len(D.DataLoader(x, y, batch_size=4, drop_last=True)) == 2
    assert [len(b[1]) for b in D.DataLoader(x, y, batch_size=1)] == [1] * 10        # SGD
    assert [len(b[1]) for b in D.DataLoader(x, y, batch_size=10)] == [10]           # full batch
    assert [len(b[1]) for b in D.DataLoader(x, y, batch_size=64)] == [10]
    assert len(D.DataLoader(x, y, batch_size=64, drop_last=True)) == 0
    only_x = list(D.DataLoader(x, batch_size=5))
    assert len(only_x) == 2 and only_x[0].shape == (5, 1)


def test_loader_shuffles_by_seed_and_epoch():
    x = np.arange(100, dtype=np.float32).reshape(100, 1)
    y = np.arange(100)
    a = D.DataLoader(x, y, batch_size=16, shuffle=True, seed=1)
    e0 = np.concatenate([b[1] for b in a])
    e1 = np.concatenate([b[1] for b in a])
    assert sorted(e0.tolist()) == list(range(100)) and not np.array_equal(e0, np.arange(100))
    assert not np.array_equal(e0, e1)                                     # a new order each epoch
    b = D.DataLoader(x, y, batch_size=16, shuffle=True, seed=1)
    np.testing.assert_array_equal(np.concatenate([t[1] for t in b]), e0)  # same seed, same order
    b.set_epoch(1)
    np.testing.assert_array_equal(np.concatenate([t[1] for t in b]), e1)  # resumable by epoch
    for xb, yb in D.DataLoader(x, y, batch_size=16, shuffle=True, seed=2):
        np.testing.assert_array_equal(xb[:, 0], yb)                      # pairs stay together
    deepkern.manual_seed(9)
    c = np.concatenate([t[1] for t in D.DataLoader(x, y, batch_size=16, shuffle=True)])
    deepkern.manual_seed(9)
    np.testing.assert_array_equal(np.concatenate([t[1] for t in D.DataLoader(x, y, batch_size=16, shuffle=True)]), c)


def test_loader_applies_the_transform_with_a_seeded_generator():
    x = np.zeros((8, 1, 2, 2), np.float32)
    seen = []

    def tf(xb, rng):
        seen.append(rng.random())
        return xb + 1

    out = [b for b, _ in D.DataLoader(x, np.zeros(8, np.int64), batch_size=4, seed=3, transform=tf)]
    assert all((b == 1).all() for b in out) and (x == 0).all()
    first = list(seen)
    seen.clear()
    list(D.DataLoader(x, np.zeros(8, np.int64), batch_size=4, seed=3, transform=tf))
    assert seen == first


def test_loader_errors():
    x = np.zeros((4, 2), np.float32)
    with pytest.raises(ValueError, match="same length"):
        D.DataLoader(x, np.zeros(3))
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        D.DataLoader(x, batch_size=0)
    with pytest.raises(TypeError, match="batch_size must be an int"):
        D.DataLoader(x, batch_size=2.0)
    with pytest.raises(TypeError, match="numpy.ndarray"):
        D.DataLoader([[1.0]])
    with pytest.raises(TypeError, match="callable"):
        D.DataLoader(x, transform=3)


@given(st.integers(0, 40), st.integers(1, 50), st.booleans(), st.booleans(), st.integers(0, 2**31))
def test_loader_partitions_the_data(n, batch_size, shuffle, drop_last, seed):
    x = np.arange(n, dtype=np.float32).reshape(n, 1)
    loader = D.DataLoader(x, np.arange(n), batch_size=batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last)
    batches = list(loader)
    assert len(batches) == len(loader)
    assert all(len(yb) == batch_size for _, yb in batches[:-1])
    seen = np.concatenate([yb for _, yb in batches]) if batches else np.zeros(0, int)
    assert len(set(seen.tolist())) == len(seen)                          # no item twice
    assert len(seen) == (n - n % batch_size if drop_last else n)
    for xb, yb in batches:
        np.testing.assert_array_equal(xb[:, 0], yb)
