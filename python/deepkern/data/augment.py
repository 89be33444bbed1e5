"""Data augmentation on batches: each transform draws its random numbers for the whole batch
at once and works with vectorized NumPy, never a Python loop over images.

Every transform is a callable ``t(x, rng=None) -> new array`` with x (N, C, H, W) float;
``rng`` is a ``numpy.random.Generator`` (None: one drawn from deepkern's stream), so a
seeded generator gives the same augmentation every time. Inputs are never modified.

    aug = Compose([RandomCrop(8, padding=1), RandomScale((0.9, 1.1)), GaussianNoise(0.1)])
    loader = DataLoader(x, y, batch_size=64, shuffle=True, seed=0, transform=aug)

Apply augmentation to the training data only. Horizontal flips change the meaning of
digits (a flipped 2 is no digit), so the digits defaults leave them off.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = ["Compose", "RandomCrop", "RandomAffine", "RandomScale", "RandomHorizontalFlip",
           "ColorJitter", "GaussianNoise"]


def _rng(rng):
    if rng is None:
        from .. import _generator
        return _generator()
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator or None, got {type(rng).__name__}")
    return rng


def _batch(x, name):
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray batch, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{name}: expected a batch of shape (N, C, H, W), got {x.shape}")
    if x.dtype.kind != "f":
        raise TypeError(f"{name}: expected a float batch, got {x.dtype.name}")
    return x


def _number(v, name, minimum=None):
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real) or not math.isfinite(v):
        raise TypeError(f"{name} must be a finite number, got {v!r}")
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return float(v)


def _range(v, name, minimum=None):
    """A (lo, hi) pair with lo <= hi."""
    if not isinstance(v, (tuple, list)) or len(v) != 2:
        raise TypeError(f"{name} must be a pair (lo, hi), got {v!r}")
    lo, hi = _number(v[0], name, minimum), _number(v[1], name, minimum)
    if lo > hi:
        raise ValueError(f"{name}: lo must be <= hi, got {v!r}")
    return lo, hi


class Transform:
    """Base class: subclasses implement ``__call__(x, rng=None)``."""

    def __call__(self, x, rng=None):
        raise NotImplementedError

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Compose(Transform):
    """Apply transforms in order, with one generator."""

    def __init__(self, transforms):
        transforms = list(transforms)
        for t in transforms:
            if not callable(t):
                raise TypeError(f"Compose: {t!r} is not callable")
        self.transforms = transforms

    def __call__(self, x, rng=None):
        rng = _rng(rng)
        for t in self.transforms:
            x = t(x, rng)
        return x


class RandomCrop(Transform):
    """Pad each side by ``padding`` (with ``fill``), then cut a random size (h, w) window per image.

    With size equal to the input size this is a random shift of up to ``padding`` pixels.
    """

    def __init__(self, size, padding=0, fill=0.0):
        if isinstance(size, numbers.Integral) and not isinstance(size, bool):
            size = (int(size), int(size))
        if not isinstance(size, (tuple, list)) or len(size) != 2 or not all(
                isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0 for s in size):
            raise ValueError(f"size must be a positive int or a pair of them, got {size!r}")
        self.size = (int(size[0]), int(size[1]))
        if isinstance(padding, bool) or not isinstance(padding, numbers.Integral) or padding < 0:
            raise ValueError(f"padding must be a non-negative int, got {padding!r}")
        self.padding = int(padding)
        self.fill = _number(fill, "fill")

    def __call__(self, x, rng=None):
        _batch(x, "RandomCrop")
        rng = _rng(rng)
        N, C, H, W = x.shape
        p, (h, w) = self.padding, self.size
        if h > H + 2 * p or w > W + 2 * p:
            raise ValueError(f"RandomCrop: size {self.size} is larger than the padded input {(H + 2 * p, W + 2 * p)}")
        xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=self.fill) if p else x
        top = rng.integers(0, H + 2 * p - h + 1, size=N)
        left = rng.integers(0, W + 2 * p - w + 1, size=N)
        rows = top[:, None] + np.arange(h)                  # (N, h)
        cols = left[:, None] + np.arange(w)                 # (N, w)
        n = np.arange(N)[:, None, None]
        # advanced indices on axes 0, 2, 3 around the channel slice: result (N, h, w, C)
        out = xp[n, :, rows[:, :, None], cols[:, None, :]]
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def _affine_sample(x, a, b, c, d, ty, tx, fill):
    """Bilinear resampling of each image n by the inverse map, around the image center:

        [src_y, src_x] = [[a, b], [c, d]] @ [dst_y - cy - ty, dst_x - cx - tx] + [cy, cx]

    a, b, c, d, ty, tx: (N,) arrays. Pixels sampled outside the image get ``fill``.
    """
    N, C, H, W = x.shape
    cy, cx = (H - 1) / 2.0, (W - 1) / 2.0
    gy = np.arange(H, dtype=np.float64)[None, :, None] - cy - ty[:, None, None]   # (N, H, 1)
    gx = np.arange(W, dtype=np.float64)[None, None, :] - cx - tx[:, None, None]   # (N, 1, W)
    sy = a[:, None, None] * gy + b[:, None, None] * gx + cy                        # (N, H, W)
    sx = c[:, None, None] * gy + d[:, None, None] * gx + cx
    y0, x0 = np.floor(sy), np.floor(sx)
    wy, wx = (sy - y0).astype(x.dtype), (sx - x0).astype(x.dtype)
    # pad by one pixel of fill; indices clipped into [-1, H] land on it when outside
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=fill)
    iy0 = np.clip(y0, -1, H).astype(np.intp) + 1
    ix0 = np.clip(x0, -1, W).astype(np.intp) + 1
    iy1 = np.clip(y0 + 1, -1, H).astype(np.intp) + 1
    ix1 = np.clip(x0 + 1, -1, W).astype(np.intp) + 1
    n = np.arange(N)[:, None, None]
    wy, wx = wy[..., None], wx[..., None]                                          # (N, H, W, 1)
    out = ((1 - wy) * ((1 - wx) * xp[n, :, iy0, ix0] + wx * xp[n, :, iy0, ix1])
           + wy * ((1 - wx) * xp[n, :, iy1, ix0] + wx * xp[n, :, iy1, ix1]))       # (N, H, W, C)
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2), dtype=x.dtype)


class RandomAffine(Transform):
    """Random rotation, scaling and translation per image, bilinear, same output size.

    degrees: rotation angle drawn from U(-degrees, degrees). scale: (lo, hi) zoom factor
    (> 1 enlarges the content). translate: (fy, fx) maximal shift as fractions of H and W.
    Areas coming from outside the image are ``fill``.
    """

    def __init__(self, degrees=0.0, translate=None, scale=None, fill=0.0):
        self.degrees = _number(degrees, "degrees", 0.0)
        self.translate = None if translate is None else _range(translate, "translate", 0.0)
        self.scale = None if scale is None else _range(scale, "scale", 0.0)
        if self.scale is not None and self.scale[0] <= 0:
            raise ValueError(f"scale factors must be positive, got {scale!r}")
        self.fill = _number(fill, "fill")

    def __call__(self, x, rng=None):
        _batch(x, "RandomAffine")
        rng = _rng(rng)
        N, _, H, W = x.shape
        theta = np.deg2rad(rng.uniform(-self.degrees, self.degrees, N)) if self.degrees else np.zeros(N)
        s = rng.uniform(*self.scale, N) if self.scale else np.ones(N)
        if self.translate:
            ty = rng.uniform(-1, 1, N) * self.translate[0] * H
            tx = rng.uniform(-1, 1, N) * self.translate[1] * W
        else:
            ty = tx = np.zeros(N)
        # the inverse of (scale s, rotation theta): rotation by -theta, divided by s
        cos, sin = np.cos(theta) / s, np.sin(theta) / s
        return _affine_sample(x, cos, sin, -sin, cos, ty, tx, self.fill)


class RandomScale(RandomAffine):
    """Zoom each image about its center by a factor drawn from U(scale[0], scale[1])."""

    def __init__(self, scale=(0.9, 1.1), fill=0.0):
        super().__init__(degrees=0.0, scale=scale, fill=fill)


class RandomHorizontalFlip(Transform):
    """Mirror each image left-right with probability p."""

    def __init__(self, p=0.5):
        self.p = _number(p, "p", 0.0)
        if self.p > 1:
            raise ValueError(f"p must be in [0, 1], got {p}")

    def __call__(self, x, rng=None):
        _batch(x, "RandomHorizontalFlip")
        flip = _rng(rng).random(len(x)) < self.p
        out = x.copy()
        out[flip] = x[flip, :, :, ::-1]
        return out


class ColorJitter(Transform):
    """Random brightness and contrast per image (torchvision's definitions).

    brightness b: x * f with f ~ U(max(0, 1 - b), 1 + b). contrast c: (x - m) * f + m with
    f ~ U(max(0, 1 - c), 1 + c) and m the image's mean. ``clip`` (lo, hi): clamp the result
    (e.g. (0, 16) for raw digits); None leaves it unclamped.
    """

    def __init__(self, brightness=0.0, contrast=0.0, clip=None):
        self.brightness = _number(brightness, "brightness", 0.0)
        self.contrast = _number(contrast, "contrast", 0.0)
        self.clip = None if clip is None else _range(clip, "clip")

    def __call__(self, x, rng=None):
        _batch(x, "ColorJitter")
        rng = _rng(rng)
        N = len(x)
        out = x.copy()
        if self.brightness:
            f = rng.uniform(max(0.0, 1 - self.brightness), 1 + self.brightness, N).astype(x.dtype)
            out *= f[:, None, None, None]
        if self.contrast:
            f = rng.uniform(max(0.0, 1 - self.contrast), 1 + self.contrast, N).astype(x.dtype)
            m = out.mean(axis=(1, 2, 3), keepdims=True)
            out -= m
            out *= f[:, None, None, None]
            out += m
        if self.clip is not None:
            np.clip(out, self.clip[0], self.clip[1], out=out)
        return out


class GaussianNoise(Transform):
    """Add N(0, std^2) noise to every pixel."""

    def __init__(self, std=0.1):
        self.std = _number(std, "std", 0.0)

    def __call__(self, x, rng=None):
        _batch(x, "GaussianNoise")
        noise = _rng(rng).standard_normal(x.shape, dtype=x.dtype)
        noise *= x.dtype.type(self.std)
        return x + noise
