"""Training engines: one epoch of minibatch SGD, behind one interface.

Two engines do exactly the same math (the contract in DESIGN.md, the step in optim.sgd_step):
- numpy (here): the reference and the fallback; each minibatch is gathered into preallocated
  buffers, augmented, converted once to float32 raw features [u, 1], and the preprocessing is
  folded into the weights;
- numba (softmax_cls.kernels, the optional extra `softmax-cls[fast]`): the whole epoch in one
  compiled call that reads the uint8 rows directly.

Weights inside an engine are (C, D): C classes, D features, the bias column last.
Every engine offers train_epoch, predict_scores and batch_loss_and_grad with the signatures
of the numpy functions below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from . import softmax
from .augment import PADDING_CODES, apply_augmentation
from .errors import SoftmaxClsError
from .optim import sgd_step
from .preprocess import Preprocessor, image_scores, raw_features


def batch_loss_and_grad(
    rows: np.ndarray, labels: np.ndarray, sample_weight: np.ndarray, W: np.ndarray,
    mean: np.ndarray, scale: np.ndarray, has_bias: bool, reg: float, reg_bias: bool,
    clip: float,
) -> tuple[float, np.ndarray, int]:
    """The loss, gradient dW and number of correct predictions of one minibatch.

    rows (b, P) raw values (uint8 pixels or float features), labels (b,) int64,
    sample_weight (b,) float or shape (0,) for all ones, W (C, D) float32 or float64.
    Returns (loss incl. the L2 penalty, dW (C, D) of W's dtype, correct).
    """
    pre = Preprocessor(mean, scale, has_bias)
    raw = raw_features(rows, dtype=W.dtype)
    loss, dW_dc, correct = _folded_loss_and_grad(W.T, raw, labels, sample_weight, pre, reg,
                                                 reg_bias, clip)
    return loss, np.ascontiguousarray(dW_dc.T), correct


def _folded_loss_and_grad(W_dc, raw, labels, sample_weight, pre, reg, reg_bias, clip):
    """batch_loss_and_grad on raw features [u, 1] (b, P + 1) and weights W_dc (D, C)."""
    scores = raw @ pre.fold(W_dc)
    weight = sample_weight if len(sample_weight) else None
    data_loss, dscores = softmax.softmax_loss_from_scores(scores, labels, clip, weight)
    correct = int(np.count_nonzero(scores.argmax(axis=1) == labels))
    dW = pre.unfold_grad(raw.T @ dscores)
    penalty, dW = softmax.l2_penalty(W_dc, reg, reg_bias or not pre.bias, add_to=dW)
    return softmax.finite_loss(data_loss + penalty), dW, correct


def train_epoch(
    rows: np.ndarray, labels: np.ndarray, order: np.ndarray, sample_weight: np.ndarray,
    flip: np.ndarray, shift: np.ndarray, padding: int, W: np.ndarray, velocity: np.ndarray,
    average: np.ndarray, avg_alpha: np.ndarray, mean: np.ndarray, scale: np.ndarray,
    has_bias: bool, batch_size: int, lr: float, momentum: float, nesterov: bool,
    grad_clip: float, reg: float, reg_bias: bool, clip: float,
) -> tuple[float, int]:
    """One epoch of SGD over rows[order] in minibatches of batch_size, in place on W,
    velocity and average (all (C, D) float32).

    rows (N, P) uint8 or float32; labels (N,) int64; order (n,) int64; sample_weight (N,)
    or (0,); flip (n,) bool or (0,); shift (n, 2) int64 or (0, 2); padding 0 zero, 1 edge,
    2 reflect; avg_alpha (steps,) float64: after step s, average += avg_alpha[s] * (W -
    average) unless it is 0; grad_clip 0 = off. Returns (sum over minibatches of loss *
    rows, number of rows predicted right before their step).
    """
    pre = Preprocessor(mean, scale, has_bias)
    batch_size = min(batch_size, len(order))
    gathered = np.empty((batch_size, rows.shape[1]), dtype=rows.dtype)
    raw_buffer = np.empty((batch_size, rows.shape[1] + 1), dtype=np.float32)
    W_dc, velocity_dc = W.T, velocity.T  # views: the numpy code works in (D, C)
    weights = sample_weight if len(sample_weight) else None
    no_weight = np.empty(0, dtype=np.float32)
    padding_name = next(name for name, code in PADDING_CODES.items() if code == padding)
    total_loss, total_correct = 0.0, 0
    for step, start in enumerate(range(0, len(order), batch_size)):
        batch_rows = order[start : start + batch_size]
        n = len(batch_rows)
        np.take(rows, batch_rows, axis=0, out=gathered[:n])
        if len(flip) or len(shift):
            apply_augmentation(gathered[:n], flip[start : start + n], shift[start : start + n],
                               padding_name)
        raw = raw_features(gathered[:n], out=raw_buffer[:n])
        batch_weight = no_weight if weights is None else weights[batch_rows]
        loss, dW, correct = _folded_loss_and_grad(W_dc, raw, labels[batch_rows], batch_weight,
                                                  pre, reg, reg_bias, clip)
        sgd_step(W_dc, velocity_dc, dW, lr, momentum, nesterov, grad_clip or None)
        if avg_alpha[step]:
            average += np.float32(avg_alpha[step]) * (W - average)
        total_loss += loss * n
        total_correct += correct
    return total_loss, total_correct


def predict_scores(rows: np.ndarray, W: np.ndarray, mean: np.ndarray, scale: np.ndarray,
                   has_bias: bool) -> np.ndarray:
    """Class scores (N, C) in W's dtype of raw rows (N, P) under weights W (C, D)."""
    return image_scores(W.T, Preprocessor(mean, scale, has_bias), rows)


@dataclass(frozen=True)
class Engine:
    """An engine's name and its three functions (the numpy ones' signatures)."""

    name: str
    train_epoch: Callable[..., tuple[float, int]]
    predict_scores: Callable[..., np.ndarray]
    batch_loss_and_grad: Callable[..., tuple[float, np.ndarray, int]]


NUMPY = Engine("numpy", train_epoch, predict_scores, batch_loss_and_grad)
FAST_INSTALL = "pip install 'softmax-cls[fast]'"


def _numba_kernels() -> ModuleType:
    from . import kernels  # imports numba; ImportError without it

    return kernels


def get_engine(name: str = "auto") -> Engine:
    """The engine called `name`: numba, numpy, or auto (numba when it is installed)."""
    if name == "numpy":
        return NUMPY
    try:
        kernels = _numba_kernels()
    except ImportError:
        if name == "auto":
            return NUMPY
        raise SoftmaxClsError(f"engine numba needs numba: {FAST_INSTALL} (or --set "
                              "engine=numpy)") from None
    return Engine("numba", kernels.train_epoch, kernels.predict_scores,
                  kernels.batch_loss_and_grad)
