"""Preprocessing: the seeded train/val split, statistics fitted on train only, 3073 features.

A feature row is x = (u - mean) * scale for the 3072 uint8 pixels u, then a constant 1 (the
bias trick). Because that map is affine, training never materialises x: it converts uint8 rows
to "raw features" r = [u, 1] (float32) and folds the preprocessing into the weights,
x @ W == r @ fold(W). `transform` builds x explicitly, for checks and for users.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import ConfigError

N_PIXELS = 3072
STATS_CHUNK = 256  # rows per float64 chunk: 6 MB, reused rather than fresh pages each time
MIN_STD = 1e-3  # a constant pixel column (std 0) must not become an infinite scale


@dataclass(frozen=True)
class Preprocessor:
    """Fitted statistics: mean (3072,) float64 (zeros if not centred), scale (3072,) float64."""

    mean: np.ndarray
    scale: np.ndarray
    bias: bool = True
    _cast: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def n_features(self) -> int:
        return N_PIXELS + int(self.bias)

    def _vectors(self, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(scale (3072, 1), -mean * scale (3072,), mean (3072,)) in `dtype`, cast once: fold
        and unfold_grad run on every minibatch."""
        key = np.dtype(dtype)
        if key not in self._cast:
            self._cast[key] = (self.scale[:, None].astype(key),
                               (-(self.mean * self.scale)).astype(key), self.mean.astype(key))
        return self._cast[key]

    def transform(self, images: np.ndarray, dtype: np.dtype = np.float32) -> np.ndarray:
        """Features (N, n_features) of `dtype` from images (N, 3072) uint8."""
        features = np.empty((len(images), self.n_features), dtype=dtype)
        np.subtract(images, self.mean.astype(dtype), out=features[:, :N_PIXELS])
        features[:, :N_PIXELS] *= self.scale.astype(dtype)
        if self.bias:
            features[:, N_PIXELS] = 1
        return features

    def fold(self, W: np.ndarray) -> np.ndarray:
        """Weights (3073, C) acting on raw features [u, 1] that give the same scores as W.

        W is (n_features, C); the result has W's dtype.
        """
        scale, shift, _ = self._vectors(W.dtype)
        pixel_rows = W[:N_PIXELS]
        W_raw = np.empty((N_PIXELS + 1, W.shape[1]), dtype=W.dtype)
        np.multiply(pixel_rows, scale, out=W_raw[:N_PIXELS])
        np.matmul(shift, pixel_rows, out=W_raw[N_PIXELS])
        if self.bias:
            W_raw[N_PIXELS] += W[N_PIXELS]
        return W_raw

    def unfold_grad(self, dW_raw: np.ndarray) -> np.ndarray:
        """The gradient with respect to W (n_features, C) from the one w.r.t. fold(W) (3073, C).

        This is the transpose of `fold`: dW[j] = scale_j (dW_raw[j] - mean_j dW_raw[bias]).
        """
        dtype = dW_raw.dtype
        scale, _, mean = self._vectors(dtype)
        dW = np.empty((self.n_features, dW_raw.shape[1]), dtype=dtype)
        bias_grad = dW_raw[N_PIXELS]
        np.subtract(dW_raw[:N_PIXELS], np.outer(mean, bias_grad), out=dW[:N_PIXELS])
        dW[:N_PIXELS] *= scale
        if self.bias:
            dW[N_PIXELS] = bias_grad
        return dW

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Arrays for a checkpoint (no pickle needed)."""
        return {"pre_mean": self.mean, "pre_scale": self.scale, "pre_bias": np.array(self.bias)}

    @classmethod
    def from_arrays(cls, arrays) -> Preprocessor:
        return cls(mean=np.asarray(arrays["pre_mean"], dtype=np.float64),
                   scale=np.asarray(arrays["pre_scale"], dtype=np.float64),
                   bias=bool(arrays["pre_bias"]))


def pixel_mean_std(
    images: np.ndarray, rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel mean and standard deviation (3072,) float64 of images (N, 3072) uint8,
    over the given rows only (int indices) when `rows` is given.

    Sums run over chunks in float64 (exact for uint8 data), so memory stays small and the
    selected rows are never copied as a whole.
    """
    rows = np.arange(len(images)) if rows is None else rows
    total = np.zeros(images.shape[1])
    total_sq = np.zeros(images.shape[1])
    for start in range(0, len(rows), STATS_CHUNK):
        chunk = images[rows[start : start + STATS_CHUNK]].astype(np.float64)
        total += chunk.sum(axis=0)
        total_sq += np.einsum("ij,ij->j", chunk, chunk)
    mean = total / len(rows)
    variance = np.maximum(total_sq / len(rows) - mean * mean, 0.0)
    return mean, np.sqrt(variance)


def fit_preprocessor(
    images: np.ndarray, center: bool = True, scale: str = "std", bias: bool = True,
    rows: np.ndarray | None = None,
) -> Preprocessor:
    """Fit preprocessing statistics on training images (N, 3072) uint8 only (the given
    `rows` of them, when given).

    center: subtract the mean image; scale: "none", "unit" (divide by 255) or "std"
    (divide each pixel by its standard deviation over the training images).
    """
    if scale not in ("none", "unit", "std"):
        raise ValueError(f"scale must be none, unit or std, got {scale!r}")
    mean, std = pixel_mean_std(images, rows)
    scales = {"none": np.ones(N_PIXELS), "unit": np.full(N_PIXELS, 1 / 255),
              "std": 1 / np.maximum(std, MIN_STD)}
    return Preprocessor(mean=mean if center else np.zeros(N_PIXELS), scale=scales[scale],
                        bias=bias)


def raw_features(images: np.ndarray, out: np.ndarray | None = None,
                 dtype: np.dtype = np.float32) -> np.ndarray:
    """Raw features [u, 1] (N, 3073) of `dtype` from images (N, 3072) uint8, into `out` if given."""
    if out is None:
        out = np.empty((len(images), N_PIXELS + 1), dtype=dtype)
    out[:, :N_PIXELS] = images
    out[:, N_PIXELS] = 1
    return out


def split_train_val(
    labels: np.ndarray, val_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """A seeded, stratified split of indices into (train_idx, val_idx), each sorted int64.

    Each class gives val_size * (its share of the data) rows to validation, the remainders
    going to the classes with the largest fractional parts.
    """
    n = len(labels)
    if not 0 < val_size < n:
        raise ConfigError(f"data.val_size: must be between 1 and {n - 1} (the training images "
                          f"less one), got {val_size}")
    rng = np.random.default_rng([seed, 0x5A1])
    classes, counts = np.unique(labels, return_counts=True)
    quota = val_size * counts / n
    take = np.floor(quota).astype(np.int64)
    shortfall = val_size - take.sum()
    take[np.argsort(-(quota - take), kind="stable")[:shortfall]] += 1
    val_parts = [rng.permutation(np.flatnonzero(labels == c))[:k]
                 for c, k in zip(classes, take, strict=True)]
    val_idx = np.sort(np.concatenate(val_parts))
    train_mask = np.ones(n, dtype=bool)
    train_mask[val_idx] = False
    return np.flatnonzero(train_mask), val_idx


def image_scores(
    W: np.ndarray, pre: Preprocessor, images: np.ndarray, chunk: int = 4096
) -> np.ndarray:
    """Class scores (N, C) in W's dtype for images (N, 3072) uint8, in chunks of rows.

    One uint8 -> float conversion per pixel; the preprocessing is folded into W.
    """
    W_raw = pre.fold(W)
    scores = np.empty((len(images), W.shape[1]), dtype=W.dtype)
    buffer = np.empty((min(chunk, len(images)), N_PIXELS + 1), dtype=W.dtype)
    for start in range(0, len(images), chunk):
        block = raw_features(images[start : start + chunk], out=buffer[: len(images) - start])
        np.matmul(block, W_raw, out=scores[start : start + len(block)])
    return scores
