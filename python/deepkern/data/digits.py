"""The embedded default data set: 1,797 handwritten digits, 8x8 pixels with values 0..16.

The UCI "Optical Recognition of Handwritten Digits" test set (Alpaydin & Kaynak, 1998;
CC BY 4.0) as scikit-learn ships it, stored in ``digits.npz`` next to this file; see
``DIGITS_LICENSE.txt`` there for the attribution. No network and no scikit-learn needed.

The held-out test split is fixed: ``DIGITS_TEST_SIZE`` = 20% of the images (360), drawn
stratified with ``DIGITS_TEST_SEED``, whatever seed a training run uses. It must never be
used for training or model selection; use the validation split for early stopping.
"""

from __future__ import annotations

import hashlib
import os
from collections import namedtuple

import numpy as np

from .split import _fraction, split_indices

__all__ = ["load_digits", "digits_splits", "Splits", "DIGITS_TEST_SEED", "DIGITS_TEST_SIZE"]

DIGITS_TEST_SEED = 20240611
DIGITS_TEST_SIZE = 0.2
_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits.npz")
_SHA256 = "87ff0c9e40dc7e2c0e34e7257799c2e3f3aec1a016363bb11cad869ec428a826"

Splits = namedtuple("Splits", ["train", "val", "test"])
Splits.__doc__ = "Three (x, y) pairs: train, validation and test."


def load_digits():
    """All 1,797 digits: (x float32 (1797, 1, 8, 8) with values 0..16, y int64 (1797,)).

    The file's contents are checked against their SHA-256 (a damaged install is a clear
    error, not a silently different data set).
    """
    with np.load(_PATH, allow_pickle=False) as z:
        images, labels = z["images"], z["labels"]
    if hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest() != _SHA256:
        raise ValueError(f"{_PATH}: the embedded digits data set is damaged (checksum mismatch); "
                         "reinstall deepkern")
    return images.astype(np.float32)[:, None], labels.astype(np.int64)


def digits_splits(val_size=0.1, seed=0):
    """The digits as Splits(train, val, test) of (x, y) pairs.

    test: the fixed 20% (DIGITS_TEST_SEED, independent of ``seed``). val: ``val_size`` of
    the remaining 80% (0 gives an empty validation set), drawn with ``seed``; train: the
    rest. All three stratified by class. Values are raw (0..16): fit a ``Standardizer`` on
    train and apply it to all three.
    """
    val_size = _fraction(val_size, "val_size")
    x, y = load_digits()
    rest, test = split_indices(y, [DIGITS_TEST_SIZE], seed=DIGITS_TEST_SEED)
    train, val = split_indices(y[rest], [val_size], seed=seed)
    train, val = rest[train], rest[val]
    return Splits((x[train], y[train]), (x[val], y[val]), (x[test], y[test]))
