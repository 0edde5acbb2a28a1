"""Data that ships with a package or is generated: nothing is downloaded.

* Handwritten digits: the UCI optical-digits 8x8 set (1,797 images, 10 classes; Alpaydin
  and Kaynak 1998, CC BY 4.0), shipped with the package as ``_data/digits.npz`` (the same
  arrays scikit-learn bundles), scaled to [0, 1].  The shifted task is the same digits
  rotated by a fixed angle.
* Token tasks for the tiny transformer: "output the token ``lag`` positions back".
  A model pretrained on one lag cannot do another until its attention is re-aimed,
  which is what LoRA on q and v has to learn.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from importlib import resources

import numpy as np

from .backend import as_generator, get_array_module


@dataclass
class Split:
    X_train: np.ndarray  # (n_train, 64) float32 in [0, 1]
    y_train: np.ndarray  # (n_train,) int64 in [0, 10)
    X_test: np.ndarray
    y_test: np.ndarray


def load_digits():
    """The shipped digits as ``(images, target)``.

    images: (1797, 64) uint8, pixel counts in 0..16 (rows of 8x8 images, row-major);
    target: (1797,) int64, the digit 0-9.  The same arrays, in the same order, as
    scikit-learn's ``load_digits()`` ``data`` and ``target``.
    """
    with resources.files(__package__).joinpath("_data", "digits.npz").open("rb") as f:
        with np.load(f, allow_pickle=False) as z:
            images, target = z["images"], z["target"]
    return images, target.astype(np.int64)


def load_digits_split(test_fraction=0.3, seed=0) -> Split:
    """The shipped digits, scaled to [0, 1], shuffled with ``seed`` and split into train and test."""
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float, np.floating)) \
            or not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}")
    images, target = load_digits()
    X = (images.astype(np.float64) / 16.0).astype(np.float32)
    y = target
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(len(y) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return Split(X[train], y[train], X[test], y[test])


def rotate_digits(X, degrees) -> np.ndarray:
    """Rotate each 8x8 image (rows of X, shape (n, 64)) by ``degrees`` about its centre.

    Bilinear interpolation; pixels that come from outside the image are 0 (background).
    """
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[1] != 64:
        raise ValueError(f"rotate_digits expects images of shape (n, 64), got {X.shape}")
    theta = np.deg2rad(degrees)
    c, s = np.cos(theta), np.sin(theta)
    rows, cols = np.mgrid[0:8, 0:8].astype(np.float64)
    y0, x0 = rows - 3.5, cols - 3.5
    # inverse map: where in the source image each output pixel comes from
    src_r = c * y0 + s * x0 + 3.5
    src_c = -s * y0 + c * x0 + 3.5
    r0, c0 = np.floor(src_r).astype(int), np.floor(src_c).astype(int)
    fr, fc = src_r - r0, src_c - c0
    imgs = X.reshape(-1, 8, 8).astype(np.float64)
    out = np.zeros_like(imgs)
    for dr, dc, w in ((0, 0, (1 - fr) * (1 - fc)), (1, 0, fr * (1 - fc)), (0, 1, (1 - fr) * fc), (1, 1, fr * fc)):
        rr, cc = r0 + dr, c0 + dc
        inside = (rr >= 0) & (rr < 8) & (cc >= 0) & (cc < 8)
        out += np.where(inside, imgs[:, rr.clip(0, 7), cc.clip(0, 7)], 0.0) * w
    return out.reshape(-1, 64).astype(X.dtype)


def lag_task(n, seq_len, vocab_size, lag, rng=None):
    """Random token sequences whose target at position t is the token at t - ``lag``.

    Returns ``idx`` (n, seq_len) int64 and ``targets`` (n, seq_len) int64, with target -1
    (ignored by the loss) where t < lag.
    """
    if not 1 <= lag < seq_len:
        raise ValueError(f"lag must lie in [1, seq_len={seq_len}), got {lag}")
    rng = as_generator(rng)
    idx = rng.integers(0, vocab_size, size=(n, seq_len))
    targets = np.full_like(idx, -1)
    targets[:, lag:] = idx[:, :-lag]
    return idx, targets


def batches(X, y, batch_size, rng=None):
    """An endless stream of shuffled minibatches (x, y), reshuffled every epoch.

    X and y may be NumPy or CuPy arrays (the same kind); the shuffling is drawn on the host
    either way.  batch_size is a positive int; one larger than the data gives the whole data.
    """
    for name, arr in (("X", X), ("y", y)):
        if not hasattr(arr, "shape") or not hasattr(arr, "dtype") or arr.ndim < 1:
            raise TypeError(f"batches: {name} must be an array with a leading sample axis, got {type(arr).__name__}")
    if type(X) is not type(y):
        raise TypeError(f"batches: X and y must be the same kind of array, got {type(X).__name__} and {type(y).__name__}")
    if len(X) != len(y):
        raise ValueError(f"X and y must have the same length, got {len(X)} and {len(y)}")
    if len(X) == 0:
        raise ValueError("batches: X and y are empty, there is nothing to draw a batch from")
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return _batches(X, y, int(batch_size), as_generator(rng))


def _batches(X, y, batch_size, rng):
    xp = get_array_module(X)
    n = len(X)
    batch_size = min(batch_size, n)
    while True:
        order = xp.asarray(rng.permutation(n))  # drawn on the host, moved once per epoch, not once per batch
        for start in range(0, n - batch_size + 1, batch_size):
            take = order[start : start + batch_size]
            yield X[take], y[take]
