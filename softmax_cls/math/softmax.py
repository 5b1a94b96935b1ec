"""Softmax cross-entropy (the math contract, docs/design.md), vectorized, and a plain-loop
reference.

Shapes: W (C, D) weights, one row per class, the last column the bias column when X carries
the bias column; X (N, D) features; y (N,) integer labels in [0, C). Scores S = X W.T are
(N, C). This is the one weight layout of the package: state, checkpoints and engines.
Every array function keeps the dtype of W (float32 for training, float64 for checks).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ..errors import SoftmaxClsError

DEFAULT_CLIP = 50.0
PREDICT_CHUNK = 4096  # rows: 50 MB of float32 CIFAR features at a time


class NonFiniteError(SoftmaxClsError):
    """Scores, loss or weights that are inf or NaN: reported, never propagated."""


def clipped_shifted_scores(S: np.ndarray, clip: float = DEFAULT_CLIP) -> np.ndarray:
    """Max-shifted scores clipped from below at -clip: Z (N, C), same dtype as S.

    Softmax is shift-invariant, so Z gives the same probabilities as S wherever nothing is
    clipped; the clip keeps every exp(Z) >= exp(-clip) > 0, so every log-probability is
    finite even in float32. Raises NonFiniteError when S has an inf or NaN.
    """
    if not np.isfinite(S).all():
        raise NonFiniteError("non-finite scores (inf or NaN in the inputs or the weights)")
    Z = S - S.max(axis=1, keepdims=True)
    np.maximum(Z, -clip, out=Z)
    return Z


def finite_loss(loss: float) -> float:
    """The loss itself, or NonFiniteError when it is inf or NaN."""
    if not math.isfinite(loss):
        raise NonFiniteError(f"non-finite loss ({loss})")
    return loss


def softmax_loss_from_scores(
    S: np.ndarray, y: np.ndarray, clip: float = DEFAULT_CLIP, weight: np.ndarray | None = None
) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of scores S (N, C) against labels y (N,), and dL/dS = (P - Y) / N.

    With `weight` (N,), row i's loss and gradient are multiplied by weight[i] (still divided
    by N, as scikit-learn's SGD does). P comes from the same clipped, max-shifted scores as
    the loss. The gradient has S's dtype.
    """
    n = S.shape[0]
    Z = clipped_shifted_scores(S, clip)
    exp_z = np.exp(Z)
    sum_exp = exp_z.sum(axis=1)
    rows = np.arange(n)
    row_losses = np.log(sum_exp) - Z[rows, y]
    loss = float(np.mean(row_losses) if weight is None else np.dot(weight, row_losses) / n)
    dS = exp_z
    dS /= sum_exp[:, None]
    dS[rows, y] -= 1
    if weight is not None:
        dS *= weight[:, None].astype(dS.dtype)
    dS /= n
    return loss, dS


def penalises_last_column(has_bias: bool, reg_bias: bool) -> bool:
    """Whether the L2 penalty covers W's last column: always when it is a feature column (no
    bias column), else only with loss.reg_bias. The one place this rule is decided."""
    return reg_bias or not has_bias


def penalised_squares(W: np.ndarray, penalise_last: bool = False) -> float:
    """sum(W * W) over the penalised columns of W (C, D) (all but the last unless
    penalise_last), float: summed in W's dtype by BLAS, and again in float64 when that
    overflows (a finite float32 W whose squares pass 3.4e38 has a finite penalty)."""
    penalised = W if penalise_last else W[:, :-1]
    with np.errstate(over="ignore"):
        value = float(np.vdot(penalised, penalised))
    if not math.isfinite(value):
        wide = penalised.astype(np.float64)
        value = float(np.vdot(wide, wide))
    return value


def l2_penalty(W: np.ndarray, reg: float, penalise_last: bool = False
               ) -> tuple[float, np.ndarray]:
    """reg * sum(W * W) over the penalised columns of W (C, D), and its gradient 2 reg W there
    (0 elsewhere), W's shape and dtype. The last (bias) column is left out unless
    penalise_last (penalises_last_column). The value is summed in W's dtype by BLAS, and
    again in float64 when that overflows."""
    penalised = W if penalise_last else W[:, :-1]
    value = penalised_squares(W, penalise_last)
    grad = np.zeros_like(W)
    np.multiply(penalised, 2 * reg, out=grad if penalise_last else grad[:, :-1])
    return value * reg, grad


def _check_problem(W: np.ndarray, X: np.ndarray, y: np.ndarray) -> None:
    if W.ndim != 2 or X.ndim != 2 or X.shape[1] != W.shape[1]:
        raise ValueError(f"shapes do not fit: X {X.shape} @ W.T, W {W.shape}")
    if X.dtype != W.dtype or W.dtype not in (np.float32, np.float64):
        raise TypeError(f"X and W must share a float32/float64 dtype, got {X.dtype} and {W.dtype}")
    if y.shape != (X.shape[0],):
        raise ValueError(f"y must have shape ({X.shape[0]},), got {y.shape}")
    if len(y) and (y.min() < 0 or y.max() >= W.shape[0]):
        raise ValueError(f"labels must lie in [0, {W.shape[0]}), got {y.min()}..{y.max()}")


def loss_and_grad(
    W: np.ndarray,
    X: np.ndarray,
    y: np.ndarray,
    reg: float = 0.0,
    clip: float = DEFAULT_CLIP,
    penalise_last: bool = False,
    sample_weight: np.ndarray | None = None,
) -> tuple[float, np.ndarray]:
    """Softmax loss mean(w * -log p[y]) + reg * sum(W*W) and its gradient
    (P - Y).T (w X) / N + 2 reg W: the reference every engine is tested against.

    W (C, D) and X (N, D) share a float dtype; y (N,) ints; sample_weight (N,) or None (all
    ones). Returns (loss, dW) with dW (C, D) of W's dtype. The last column of W (the bias
    column) is not penalised unless penalise_last.
    """
    _check_problem(W, X, y)
    weight = None if sample_weight is None else np.asarray(sample_weight, dtype=W.dtype)
    data_loss, dS = softmax_loss_from_scores(X @ W.T, y, clip, weight)
    penalty, dW = l2_penalty(W, reg, penalise_last)
    dW += dS.T @ X
    return finite_loss(data_loss + penalty), dW


def loss_and_grad_naive(
    W: np.ndarray,
    X: np.ndarray,
    y: np.ndarray,
    reg: float = 0.0,
    clip: float = DEFAULT_CLIP,
    penalise_last: bool = False,
) -> tuple[float, np.ndarray]:
    """Plain-loop reference of loss_and_grad: one sample and one class at a time, in float64.

    Slow and obvious on purpose; W (C, D); returns (loss, dW) with dW (C, D) in W's dtype.
    """
    _check_problem(W, X, y)
    n, c = X.shape[0], W.shape[0]
    W64, X64 = W.astype(np.float64), X.astype(np.float64)
    dW = np.zeros_like(W64)
    loss = 0.0
    for i in range(n):
        scores = [float(X64[i] @ W64[j]) for j in range(c)]
        top = max(scores)
        shifted = [max(s - top, -clip) for s in scores]
        total = sum(math.exp(z) for z in shifted)
        loss += math.log(total) - shifted[y[i]]
        for j in range(c):
            p = math.exp(shifted[j]) / total
            dW[j] += (p - (j == y[i])) * X64[i]
    loss /= n
    dW /= n
    last = W.shape[1] if penalise_last else W.shape[1] - 1
    for j in range(c):
        for column in range(last):
            loss += reg * W64[j, column] ** 2
            dW[j, column] += 2 * reg * W64[j, column]
    return loss, dW.astype(W.dtype)


def softmax_probs(S: np.ndarray, clip: float = DEFAULT_CLIP) -> np.ndarray:
    """Class probabilities (N, C) from scores S (N, C), rows summing to 1, S's dtype."""
    P = np.exp(clipped_shifted_scores(S, clip))
    P /= P.sum(axis=1, keepdims=True)
    return P


def scores(W: np.ndarray, X, chunk: int = PREDICT_CHUNK,
           transform: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Scores (N, C) in W's dtype: X @ W.T for W (C, D), computed `chunk` rows at a time.

    X is (N, D) features, or anything row-sliceable whose chunks `transform` turns into
    (rows, D) features (raw uint8 images and preprocess.raw_features, say), so only one
    chunk is ever converted at a time.
    """
    out = np.empty((len(X), W.shape[0]), dtype=W.dtype)
    for i in range(0, len(X), chunk):
        block = X[i : i + chunk]
        np.matmul(block if transform is None else transform(block), W.T, out=out[i : i + chunk])
    return out


def predict_proba(W: np.ndarray, X, clip: float = DEFAULT_CLIP, chunk: int = PREDICT_CHUNK,
                  transform: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Class probabilities (N, C) for features X (N, D) (see `scores` for transform)."""
    return softmax_probs(scores(W, X, chunk, transform), clip) if len(X) else np.empty(
        (0, W.shape[0]), W.dtype)


def predict(W: np.ndarray, X, chunk: int = PREDICT_CHUNK,
            transform: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Predicted labels (N,) int64 for features X (N, D): argmax of the scores."""
    return scores(W, X, chunk, transform).argmax(axis=1).astype(np.int64)
