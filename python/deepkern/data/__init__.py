"""deepkern.data: the embedded digits data set, file loaders, splits, normalization,
mini-batches and augmentation.

    from deepkern import data
    (x_tr, y_tr), (x_val, y_val), (x_te, y_te) = data.digits_splits(val_size=0.1, seed=0)
    std = data.Standardizer().fit(x_tr)                  # statistics of the training set only
    x_tr, x_val, x_te = std.transform(x_tr), std.transform(x_val), std.transform(x_te)
    aug = data.Compose([data.RandomCrop(8, padding=1), data.GaussianNoise(0.05)])
    for xb, yb in data.DataLoader(x_tr, y_tr, batch_size=64, shuffle=True, seed=0, transform=aug):
        ...

Loaders for your own data: ``load_mnist(directory)`` (IDX files, plain or .gz),
``load_npz(path)`` (arrays x and y), ``load(path_or_"digits")``.
"""

from . import augment
from .augment import (ColorJitter, Compose, GaussianNoise, RandomAffine, RandomCrop, RandomHorizontalFlip,
                      RandomScale)
from .digits import DIGITS_TEST_SEED, DIGITS_TEST_SIZE, Splits, digits_splits, load_digits
from .files import load, load_idx, load_mnist, load_npz
from .loader import DataLoader
from .normalize import Standardizer
from .split import split_indices, train_test_split

__all__ = [
    "load_digits", "digits_splits", "Splits", "DIGITS_TEST_SEED", "DIGITS_TEST_SIZE",
    "load", "load_idx", "load_mnist", "load_npz", "split_indices", "train_test_split",
    "Standardizer", "DataLoader", "augment", "Compose", "RandomCrop", "RandomAffine", "RandomScale",
    "RandomHorizontalFlip", "ColorJitter", "GaussianNoise",
]
