"""deepkern.data augmentation: shapes, determinism by seed, and what each transform does."""

import numpy as np
import pytest

import deepkern
from deepkern import data as D

ALL = [D.RandomCrop(8, padding=2), D.RandomCrop(6), D.RandomScale((0.8, 1.2)),
       D.RandomAffine(degrees=20, translate=(0.1, 0.1), scale=(0.9, 1.1)), D.RandomHorizontalFlip(),
       D.ColorJitter(0.3, 0.3, clip=(0, 16)), D.GaussianNoise(0.5),
       D.Compose([D.RandomCrop(8, padding=1), D.RandomScale((0.9, 1.1)), D.GaussianNoise(0.1)])]


def batch(rng, dtype=np.float32):
    return (rng.random((16, 2, 8, 8)) * 16).astype(dtype)


@pytest.mark.parametrize("t", ALL, ids=lambda t: type(t).__name__)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_shape_dtype_determinism_and_no_mutation(t, dtype, rng):
    x = batch(rng, dtype)
    before = x.copy()
    a = t(x, np.random.default_rng(5))
    b = t(x, np.random.default_rng(5))
    c = t(x, np.random.default_rng(6))
    np.testing.assert_array_equal(x, before)
    want = (16, 2, 6, 6) if isinstance(t, D.RandomCrop) and t.size == (6, 6) else x.shape
    assert a.shape == want and a.dtype == dtype and a.flags.c_contiguous
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.isfinite(a).all()
    deepkern.manual_seed(1)
    d = t(x)
    deepkern.manual_seed(1)
    np.testing.assert_array_equal(d, t(x))


def test_random_crop_is_a_shift_of_the_padded_image(rng):
    x = batch(rng)
    out = D.RandomCrop(8, padding=2, fill=-1.0)(x, np.random.default_rng(0))
    xp = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)), constant_values=-1.0)
    offsets = set()
    for n in range(len(x)):
        hits = [(i, j) for i in range(5) for j in range(5) if np.array_equal(out[n], xp[n, :, i:i + 8, j:j + 8])]
        assert hits, f"image {n} is not a window of the padded image"
        offsets.add(hits[0])
    assert len(offsets) > 3                                  # the windows differ between images
    np.testing.assert_array_equal(D.RandomCrop(8)(x, rng), x)              # no padding, full size
    with pytest.raises(ValueError, match="larger than the padded input"):
        D.RandomCrop(11, padding=1)(x, rng)


def test_affine_identity_and_scaling(rng):
    x = batch(rng, np.float64)
    np.testing.assert_allclose(D.RandomScale((1.0, 1.0))(x, rng), x, atol=1e-12)
    np.testing.assert_allclose(D.RandomAffine(degrees=0)(x, rng), x, atol=1e-12)
    # a 90 degree rotation of a square image is a transpose-and-flip, exactly
    one = x[:1]
    theta_fixed = D.augment._affine_sample(one, np.zeros(1), np.ones(1), -np.ones(1), np.zeros(1),
                                           np.zeros(1), np.zeros(1), 0.0)
    assert np.allclose(theta_fixed, np.rot90(one, k=1, axes=(2, 3)), atol=1e-12) or \
        np.allclose(theta_fixed, np.rot90(one, k=-1, axes=(2, 3)), atol=1e-12)
    # zooming out (scale < 1) brings the fill in at the border; zooming in keeps the sum up
    dot = np.zeros((1, 1, 9, 9))
    dot[0, 0, 4, 4] = 1.0                                     # the center pixel stays put
    np.testing.assert_allclose(D.RandomScale((0.5, 0.5))(dot, rng)[0, 0, 4, 4], 1.0)
    ones = np.ones((4, 1, 8, 8))
    small = D.RandomScale((0.5, 0.6), fill=0.0)(ones, rng)
    assert (small[:, :, 0, :] < 1).all() and abs(small[:, :, 3:5, 3:5] - 1).max() < 1e-12
    assert np.allclose(D.RandomScale((1.5, 2.0))(ones, rng), 1.0)       # zoom in: only inside pixels
    shifted = D.RandomAffine(translate=(0.25, 0.25))(ones, np.random.default_rng(3))
    assert (shifted <= 1 + 1e-12).all() and (shifted < 1).any()


def test_flip(rng):
    x = batch(rng)
    np.testing.assert_array_equal(D.RandomHorizontalFlip(1.0)(x, rng), x[..., ::-1])
    np.testing.assert_array_equal(D.RandomHorizontalFlip(0.0)(x, rng), x)
    half = D.RandomHorizontalFlip(0.5)(x, np.random.default_rng(0))
    flipped = [np.array_equal(half[n], x[n, :, :, ::-1]) for n in range(len(x))]
    kept = [np.array_equal(half[n], x[n]) for n in range(len(x))]
    assert all(f or k for f, k in zip(flipped, kept)) and 0 < sum(flipped) < len(x)


def test_color_jitter(rng):
    x = batch(rng, np.float64)
    np.testing.assert_array_equal(D.ColorJitter()(x, rng), x)
    out = D.ColorJitter(brightness=0.5)(x, np.random.default_rng(0))
    ratio = out.reshape(16, -1) / x.reshape(16, -1)
    assert np.allclose(ratio, ratio[:, :1]) and (ratio[:, 0] >= 0.5).all() and (ratio[:, 0] <= 1.5).all()
    out = D.ColorJitter(contrast=0.5)(x, np.random.default_rng(0))
    np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), x.mean(axis=(1, 2, 3)), rtol=1e-12)
    clipped = D.ColorJitter(brightness=0.9, clip=(0, 16))(x, np.random.default_rng(0))
    assert clipped.min() >= 0 and clipped.max() <= 16


def test_gaussian_noise_statistics(rng):
    x = np.zeros((64, 1, 32, 32), np.float32)
    noise = D.GaussianNoise(0.3)(x, np.random.default_rng(0))
    assert abs(noise.std() - 0.3) < 0.01 and abs(noise.mean()) < 0.01
    np.testing.assert_array_equal(D.GaussianNoise(0.0)(x, rng), x)


def test_bad_arguments():
    with pytest.raises(ValueError, match="size"):
        D.RandomCrop(0)
    with pytest.raises(ValueError, match="padding"):
        D.RandomCrop(8, padding=-1)
    with pytest.raises(ValueError, match="positive"):
        D.RandomScale((0.0, 1.0))
    with pytest.raises(ValueError, match="lo must be <= hi"):
        D.RandomScale((1.2, 0.8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        D.RandomHorizontalFlip(2.0)
    with pytest.raises(ValueError, match=">= 0"):
        D.GaussianNoise(-1.0)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        D.GaussianNoise(0.1)(np.zeros((3, 8, 8), np.float32))
    with pytest.raises(TypeError, match="float"):
        D.GaussianNoise(0.1)(np.zeros((1, 1, 8, 8), np.uint8))
    with pytest.raises(TypeError, match="Generator"):
        D.GaussianNoise(0.1)(np.zeros((1, 1, 8, 8), np.float32), rng=1)
    with pytest.raises(TypeError, match="not callable"):
        D.Compose([3])
