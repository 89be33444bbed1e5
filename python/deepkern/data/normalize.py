"""Standardizer: shift and scale inputs to mean 0 and standard deviation 1.

Fit on the training set only, then apply the same shift and scale to validation and test
data: statistics computed on the test set would leak it into the model.

    std = Standardizer().fit(x_train)
    x_train, x_test = std.transform(x_train), std.transform(x_test)
"""

from __future__ import annotations

import numpy as np

__all__ = ["Standardizer"]


class Standardizer:
    """x -> (x - mean) / std, with mean and std fitted on training data.

    per_channel=True (default): one mean and std per channel (axis 1) over every other axis,
    as for images (N, C, H, W) or features (N, F); False: one mean and std over everything.
    A channel with std below ``eps`` (constant) is only shifted. Statistics are computed in
    float64; transform returns the input's float dtype (float32 for integer input).

    Attributes after fit: ``mean``, ``std`` (float64 arrays of shape (C,), or 0-d).
    """

    def __init__(self, per_channel=True, eps=1e-8):
        if not isinstance(per_channel, (bool, np.bool_)):
            raise TypeError(f"per_channel must be a bool, got {type(per_channel).__name__}")
        self.per_channel = bool(per_channel)
        self.eps = float(eps)
        self.mean = None
        self.std = None

    def _axes(self, x):
        if x.ndim < 2 and self.per_channel:
            raise ValueError(f"per-channel statistics need inputs of shape (N, C, ...), got {x.shape}")
        return tuple(a for a in range(x.ndim) if a != 1) if self.per_channel else None

    def fit(self, x):
        """Compute mean and std of x (N, C, ...). Returns self."""
        x = np.asarray(x)
        if x.dtype.kind not in "iuf":
            raise TypeError(f"Standardizer.fit: expected a numeric array, got {x.dtype.name}")
        if x.size == 0:
            raise ValueError("Standardizer.fit: x is empty")
        axes = self._axes(x)
        xd = x.astype(np.float64)
        mean = xd.mean(axis=axes)
        std = xd.std(axis=axes)                 # two-pass: sqrt(mean((x - mean)^2))
        if not (np.isfinite(mean).all() and np.isfinite(std).all()):
            raise ValueError("Standardizer.fit: x holds NaN or infinite values")
        self.mean, self.std = mean, np.where(std < self.eps, 1.0, std)
        return self

    def _shape(self, x):
        if self.mean is None:
            raise RuntimeError("Standardizer: call fit() first")
        if not self.per_channel:
            return ()
        if x.ndim < 2 or x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"Standardizer was fitted on {self.mean.shape[0]} channels, got input of shape {x.shape}")
        return (1, -1) + (1,) * (x.ndim - 2)

    def transform(self, x):
        """(x - mean) / std as a new array of x's float dtype (float32 for integers)."""
        x = np.asarray(x)
        shape = self._shape(x)
        dt = x.dtype if x.dtype.kind == "f" else np.dtype(np.float32)
        mean = np.asarray(self.mean).reshape(shape).astype(dt)
        inv = (1.0 / np.asarray(self.std)).reshape(shape).astype(dt)
        out = x.astype(dt, copy=True)
        out -= mean
        out *= inv
        return out

    def fit_transform(self, x):
        return self.fit(x).transform(x)

    def inverse_transform(self, x):
        """x * std + mean: back to the original units."""
        x = np.asarray(x)
        shape = self._shape(x)
        dt = x.dtype if x.dtype.kind == "f" else np.dtype(np.float32)
        return (x * np.asarray(self.std).reshape(shape) + np.asarray(self.mean).reshape(shape)).astype(dt)

    def state_dict(self):
        """{"mean": ..., "std": ...} (float64 arrays), for checkpoints."""
        if self.mean is None:
            raise RuntimeError("Standardizer: call fit() first")
        return {"mean": np.array(self.mean), "std": np.array(self.std)}

    def load_state_dict(self, d):
        """Restore mean and std saved by state_dict (checked: finite, same shape, std > 0)."""
        try:
            mean = np.asarray(d["mean"], dtype=np.float64)
            std = np.asarray(d["std"], dtype=np.float64)
        except (KeyError, TypeError) as e:
            raise ValueError(f"Standardizer.load_state_dict: expected keys 'mean' and 'std' ({e})") from e
        if mean.shape != std.shape or mean.ndim > 1:
            raise ValueError(f"Standardizer.load_state_dict: mean {mean.shape} and std {std.shape} must be "
                             "0-d or (C,) of the same shape")
        if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
            raise ValueError("Standardizer.load_state_dict: mean and std must be finite, std positive")
        self.per_channel = mean.ndim == 1
        self.mean, self.std = mean, std
        return self

    def __repr__(self):
        if self.mean is None:
            return f"Standardizer(per_channel={self.per_channel}) (not fitted)"
        return f"Standardizer(mean={np.round(self.mean, 4).tolist()}, std={np.round(self.std, 4).tolist()})"
