"""Preprocessing: the seeded train/val split, statistics fitted on train only, the bias column.

A feature row is x = (u - mean) * scale for the P raw values u of a row (P = 3072 uint8 pixels
for CIFAR, or the columns of a feature file), then a constant 1 (the bias trick). Because that
map is affine, training never materialises x: it reads raw rows r = [u, 1] and folds the
preprocessing into the weights, x @ W.T == r @ fold(W).T. `transform` builds x explicitly, for
checks and for users. `split_and_fit` is the one place where a run's split and statistics
are made: training, eval, the gradient check, the sweep and the benchmark all call it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..config import Config
from ..data.datasets import IMAGE_BYTES, IMAGE_SHAPE
from ..errors import ConfigError
from .softmax import PREDICT_CHUNK, scores

STATS_CHUNK = 256  # rows per chunk (float64: 6 MB), reused rather than fresh pages each time
MIN_STD = 1e-3  # a constant pixel column (std 0) must not become an infinite scale


@dataclass(frozen=True)
class Preprocessor:
    """Fitted statistics: mean (P,) float64 (zeros if not centred), scale (P,) float64."""

    mean: np.ndarray
    scale: np.ndarray
    bias: bool = True
    _cast: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def n_raw(self) -> int:
        """P: raw values per row (3072 for CIFAR pixels)."""
        return len(self.mean)

    @property
    def n_features(self) -> int:
        """D = P + 1 with the bias column, else P."""
        return self.n_raw + int(self.bias)

    def transform(self, images: np.ndarray, dtype: np.dtype = np.float32) -> np.ndarray:
        """Features (N, D) of `dtype` from raw rows (N, P) (uint8 pixels or float features)."""
        P = self.n_raw
        features = np.empty((len(images), self.n_features), dtype=dtype)
        np.subtract(images, self.mean.astype(dtype), out=features[:, :P])
        features[:, :P] *= self.scale.astype(dtype)
        if self.bias:
            features[:, P] = 1
        return features

    def fold(self, W: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Raw weights W_raw (C, P + 1) acting on raw rows [u, 1] that give W's (C, D) scores:
            W_raw[:, :P] = W[:, :P] * scale
            W_raw[:, P] = W_raw[:, :P] @ -mean (+ W[:, P] with the bias column)
        so that x @ W.T == [u, 1] @ W_raw.T. In W's dtype; into `out` when given. This is
        the reference of the fold every engine makes once per step."""
        P = self.n_raw
        _, scale = self.vectors(W.dtype)
        W_raw = np.empty((W.shape[0], P + 1), dtype=W.dtype) if out is None else out
        np.multiply(W[:, :P], scale, out=W_raw[:, :P])
        np.matmul(W_raw[:, :P], self._negated_mean(W.dtype), out=W_raw[:, P])
        if self.bias:
            W_raw[:, P] += W[:, P]
        return W_raw

    def unfold(self, W_raw: np.ndarray) -> np.ndarray:
        """The inverse of `fold`: weights W (C, D) whose fold is W_raw (C, P + 1).

        Exact only where such W exists: with the bias column always; without it only when
        W_raw's last column equals W_raw[:, :P] @ -mean, as fold makes it.
        """
        P = self.n_raw
        mean, scale = self.vectors(W_raw.dtype)
        W = np.empty((W_raw.shape[0], self.n_features), dtype=W_raw.dtype)
        np.divide(W_raw[:, :P], scale, out=W[:, :P])
        if self.bias:
            W[:, P] = W_raw[:, P] + W_raw[:, :P] @ mean
        return W

    def unfold_grad(self, grad_raw: np.ndarray, out: np.ndarray | None = None,
                    scratch: np.ndarray | None = None) -> np.ndarray:
        """The gradient with respect to W (C, D) from grad_raw (C, P + 1), the one with
        respect to fold(W): the transpose of `fold`,
            grad[:, :P] = scale * (grad_raw[:, :P] - outer(grad_raw[:, P], mean))
            grad[:, P] = grad_raw[:, P]   (with the bias column)
        In grad_raw's dtype; into `out` (C, D) when given, with `scratch` (C, P) for the
        outer product. This is the reference of the unfold every engine makes once per step.
        """
        P = self.n_raw
        mean, scale = self.vectors(grad_raw.dtype)
        C = grad_raw.shape[0]
        grad = np.empty((C, self.n_features), dtype=grad_raw.dtype) if out is None else out
        scratch = np.empty((C, P), dtype=grad_raw.dtype) if scratch is None else scratch
        bias_grad = grad_raw[:, P:]
        np.multiply(bias_grad, mean, out=scratch)
        np.subtract(grad_raw[:, :P], scratch, out=grad[:, :P])
        grad[:, :P] *= scale
        if self.bias:
            grad[:, P:] = bias_grad
        return grad

    def _negated_mean(self, dtype: np.dtype) -> np.ndarray:
        """-mean (P,) in `dtype`, cast once, as fold needs it on every step."""
        key = ("negated", np.dtype(dtype))
        if key not in self._cast:
            self._cast[key] = -self.vectors(dtype)[0]
        return self._cast[key]

    def vectors(self, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        """(mean (P,), scale (P,)) in `dtype`, cast once: fold and unfold_grad run on every
        minibatch."""
        key = np.dtype(dtype)
        if key not in self._cast:
            self._cast[key] = (self.mean.astype(key), self.scale.astype(key))
        return self._cast[key]

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Arrays for a checkpoint (no pickle needed)."""
        return {"pre_mean": self.mean, "pre_scale": self.scale, "pre_bias": np.array(self.bias)}

    @classmethod
    def from_arrays(cls, arrays) -> Preprocessor:
        return cls(mean=np.asarray(arrays["pre_mean"], dtype=np.float64),
                   scale=np.asarray(arrays["pre_scale"], dtype=np.float64),
                   bias=bool(arrays["pre_bias"]))


def pixel_mean_std(
    images: np.ndarray, rows: np.ndarray | None = None, std: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-column mean and standard deviation (P,) float64 of raw rows (N, P) (uint8 pixels or
    float features, possibly memory-mapped), over the given rows only (int indices) when
    `rows` is given; without `std`, the mean and None.

    Sums run over chunks, so memory stays small and the selected rows are never copied as a
    whole: in int64 for uint8 pixels (exact, and several times faster than converting them),
    in float64 otherwise (exact for uint8 data too: the two give the same bits).
    """
    rows = np.arange(len(images)) if rows is None else rows
    exact = images.dtype == np.uint8
    total = np.zeros(images.shape[1], dtype=np.int64 if exact else np.float64)
    total_sq = np.zeros_like(total)
    for start in range(0, len(rows), STATS_CHUNK):
        chunk = images[rows[start : start + STATS_CHUNK]]
        if exact:
            total += chunk.sum(axis=0, dtype=np.int64)
            if std:  # 255 ** 2 fits in uint16
                total_sq += np.square(chunk, dtype=np.uint16).sum(axis=0, dtype=np.int64)
            continue
        chunk = chunk.astype(np.float64)
        total += chunk.sum(axis=0)
        if std:
            total_sq += np.einsum("ij,ij->j", chunk, chunk)
    mean = total / len(rows)
    if not std:
        return mean, None
    variance = np.maximum(total_sq / len(rows) - mean * mean, 0.0)
    return mean, np.sqrt(variance)


def fit_preprocessor(
    images: np.ndarray, center: bool = True, scale: str = "std", bias: bool = True,
    rows: np.ndarray | None = None,
) -> Preprocessor:
    """Fit preprocessing statistics on training rows (N, P) only (the given `rows` of them,
    when given).

    center: subtract the mean image; scale: "none", "unit" (divide by 255) or "std"
    (divide each pixel by its standard deviation over the training images).
    """
    if scale not in ("none", "unit", "std"):
        raise ValueError(f"scale must be none, unit or std, got {scale!r}")
    P = images.shape[1]
    if scale == "std" or center:
        mean, std = pixel_mean_std(images, rows, std=scale == "std")
    if scale == "std":
        scaled = 1 / np.maximum(std, MIN_STD)
    else:
        scaled = np.ones(P) if scale == "none" else np.full(P, 1 / 255)
    return Preprocessor(mean=mean if center else np.zeros(P), scale=scaled, bias=bias)


def raw_features(images: np.ndarray, out: np.ndarray | None = None,
                 dtype: np.dtype = np.float32) -> np.ndarray:
    """Raw features [u, 1] (N, P + 1) of `dtype` from raw rows (N, P), into `out` if given."""
    P = images.shape[1]
    if out is None:
        out = np.empty((len(images), P + 1), dtype=dtype)
    out[:, :P] = images
    out[:, P] = 1
    return out


@dataclass(frozen=True, eq=False)
class Split:
    """Indices into the training rows: train_rows and val_rows, each sorted int64, disjoint."""

    train_rows: np.ndarray
    val_rows: np.ndarray


def split_train_val(labels: np.ndarray, val_size: int, seed: int) -> Split:
    """A seeded, stratified split of the row indices of `labels` (N,) into train and val.

    Each class gives val_size * (its share of the data) rows to validation, the remainders
    going to the classes with the largest fractional parts. val_size 0 gives an empty val.
    Raises ValueError unless 0 <= val_size < N.
    """
    n = len(labels)
    if not 0 <= val_size < n:
        raise ValueError(f"must be between 1 and {n - 1} (the training rows less one), "
                         f"got {val_size}")
    rng = np.random.default_rng([seed, 0x5A1])
    classes, counts = np.unique(labels, return_counts=True)
    quota = val_size * counts / n
    take = np.floor(quota).astype(np.int64)
    shortfall = val_size - take.sum()
    take[np.argsort(-(quota - take), kind="stable")[:shortfall]] += 1
    val_parts = [rng.permutation(np.flatnonzero(labels == c))[:k]
                 for c, k in zip(classes, take, strict=True)]
    val_rows = np.sort(np.concatenate(val_parts)).astype(np.int64)
    train_mask = np.ones(n, dtype=bool)
    train_mask[val_rows] = False
    return Split(np.flatnonzero(train_mask).astype(np.int64), val_rows)


def split_and_fit(config: Config, rows: np.ndarray, labels: np.ndarray
                  ) -> tuple[Split, Preprocessor]:
    """The run's split of the training rows (N, P) with labels (N,), and the preprocessing
    statistics fitted on its train rows only: the one way every command makes them."""
    try:
        split = split_train_val(labels, config.data.val_rows(len(labels)), config.seed)
    except ValueError as exc:
        raise ConfigError(f"data.val_size: {exc}") from None
    pre = fit_preprocessor(rows, config.preprocess.center, config.preprocess.scale,
                           config.preprocess.bias, rows=split.train_rows)
    return split, pre


def image_scores(W: np.ndarray, pre: Preprocessor, images: np.ndarray) -> np.ndarray:
    """Class scores (N, C) in W's dtype for raw rows (N, P), W (C, D).

    The preprocessing is folded into W; the rows are converted one chunk at a time into a
    reused buffer (softmax.scores).
    """
    buffer = np.empty((min(PREDICT_CHUNK, len(images)), pre.n_raw + 1), dtype=W.dtype)
    return scores(pre.fold(W), images,
                  transform=lambda block: raw_features(block, out=buffer[: len(block)]))


def mirror_weights(W: np.ndarray, pre: Preprocessor) -> np.ndarray:
    """Weights (C, D), W's dtype, whose scores are the mean of W's scores on an image and on
    its left-right mirror image: flip test-time augmentation folded into one linear model.

    In raw pixel space (fold) that is the average of the pixel weights with their mirror;
    the raw bias is unchanged. Exact up to rounding; needs 3072 pixel columns and the bias.
    """
    if pre.n_raw != IMAGE_BYTES or not pre.bias:
        raise ValueError("mirror-symmetric weights need 3072 image columns and the bias column")
    W_raw = pre.fold(W.astype(np.float64))
    pixels = W_raw[:, :IMAGE_BYTES].reshape(-1, *IMAGE_SHAPE)
    W_raw[:, :IMAGE_BYTES] = ((pixels + pixels[..., ::-1]) / 2).reshape(-1, IMAGE_BYTES)
    return pre.unfold(W_raw).astype(W.dtype)
