"""Training engines: one epoch of minibatch SGD, behind one interface.

Two engines do exactly the same math (the contract in DESIGN.md, the step in optim.sgd_step):
- numpy (here): the reference and the fallback; each minibatch is gathered into preallocated
  buffers, augmented, converted once to float32 raw features [u, 1], and the preprocessing is
  folded into the weights;
- numba (softmax_cls.engines.numba_engine.kernels, the optional extra `softmax-cls[fast]`):
  an epoch in compiled
  calls of STEPS_PER_CALL steps that read the uint8 rows directly.

Weights inside an engine are (C, D): C classes, D features, the bias column last.
Every engine offers train_epoch, predict_scores and batch_loss_and_grad with the signatures
of the numpy functions below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from ..errors import SoftmaxClsError
from ..math import softmax
from ..math.augment import PADDING_CODES, apply_augmentation
from ..math.optim import sgd_step
from ..math.preprocess import Preprocessor, image_scores


class _StepBuffers:
    """Every array one SGD step of train_epoch needs, allocated once per epoch: a step
    allocates only what numpy's softmax helper returns (b x C).

    rows (b, P) of the data's dtype (gathered, augmented) and their copy `raw` in the weights'
    dtype (float32 in training); the folded weights W_fold (C, P) = W[:, :P] * scale and
    bias_fold (C,); scores (b, C); the gradients grad (C, D) and grad_raw (C, P + 1)
    (with respect to the folded weights; grad_pc (P, C) is its BLAS output), and a (C, P)
    scratch.
    """

    def __init__(self, batch_size: int, n_raw: int, n_classes: int, n_cols: int, rows_dtype,
                 dtype=np.float32):
        self.gathered = np.empty((batch_size, n_raw), dtype=rows_dtype)
        self.raw = np.empty((batch_size, n_raw), dtype=dtype)
        self.W_fold = np.empty((n_classes, n_raw), dtype=dtype)
        self.bias_fold = np.empty(n_classes, dtype=dtype)
        self.scores = np.empty((batch_size, n_classes), dtype=dtype)
        self.grad = np.empty((n_classes, n_cols), dtype=dtype)
        self.scratch = np.empty((n_classes, n_raw), dtype=dtype)
        self.grad_raw = np.empty((n_classes, n_raw + 1), dtype=dtype)
        self.grad_pc = np.empty((n_raw, n_classes), dtype=dtype)


def _unfold_grad(grad_raw, mean, scale, has_bias, grad, scratch):
    """grad (C, D) = the gradient with respect to W from grad_raw (C, P + 1), the one with
    respect to the folded weights [W_fold, bias_fold]: Preprocessor.unfold_grad in the
    engine layout, without transposed views or temporaries (scratch (C, P)):
        grad[:, :P] = scale * (grad_raw[:, :P] - outer(grad_raw[:, P], mean))
        grad[:, P] = grad_raw[:, P]   (with the bias column)
    """
    P = len(mean)
    bias_grad = grad_raw[:, P:]
    np.multiply(bias_grad, mean, out=scratch)
    np.subtract(grad_raw[:, :P], scratch, out=grad[:, :P])
    grad[:, :P] *= scale
    if has_bias:
        grad[:, P:] = bias_grad


def _step_loss_and_grad(W, raw, labels, weight, mean, scale, neg_mean, has_bias, reg,
                        reg_bias, clip, buffers):
    """Loss and gradient of one minibatch in the engine layout, the gradient into
    buffers.grad (C, D): the one code of train_epoch's steps and of batch_loss_and_grad.

    W (C, D) float32 or float64, raw (b, P) raw values in W's dtype, labels (b,), weight (b,)
    or None; mean, scale, neg_mean = -mean (P,) in W's dtype. The preprocessing is folded
    into the weights, W_fold = W[:, :P] * scale:
        scores = raw @ W_fold.T + (W[:, P] - W_fold @ mean)
    and the gradient unfolded (_unfold_grad): dW[:, :P] = scale * (dS.T @ raw -
    outer(sum(dS), mean)), dW[:, P] = sum(dS).
    Returns (loss incl. the L2 penalty, correct).
    """
    n = len(raw)
    P = raw.shape[1]
    W_fold, bias_fold, grad = buffers.W_fold, buffers.bias_fold, buffers.grad
    pixels = W[:, :P]
    np.multiply(pixels, scale, out=W_fold)
    np.matmul(W_fold, neg_mean, out=bias_fold)
    if has_bias:
        bias_fold += W[:, P]
    scores = buffers.scores[:n]
    np.matmul(raw, W_fold.T, out=scores)
    scores += bias_fold
    data_loss, dscores = softmax.softmax_loss_from_scores(scores, labels, clip, weight)
    correct = int(np.count_nonzero(scores.argmax(axis=1) == labels))
    grad_raw = buffers.grad_raw
    # (P, C) = raw.T @ dS then one transposed copy: OpenBLAS splits this shape better over
    # threads than (C, P) = dS.T @ raw (174 vs 218 us at b = 256, 2 threads; equal at 1)
    np.matmul(raw.T, dscores, out=buffers.grad_pc)
    np.copyto(grad_raw[:, :P], buffers.grad_pc.T)
    np.sum(dscores, axis=0, out=grad_raw[:, P])
    _unfold_grad(grad_raw, mean, scale, has_bias, grad, buffers.scratch)
    penalty = 0.0
    if reg:
        flat = W.ravel()  # W is C-contiguous: BLAS dot, then the bias column taken out
        squares = float(np.dot(flat, flat))
        if reg_bias or not has_bias:
            grad += W.dtype.type(2 * reg) * W
        else:
            squares -= float(np.dot(W[:, P], W[:, P]))
            np.multiply(pixels, W.dtype.type(2 * reg), out=buffers.scratch)
            grad[:, :P] += buffers.scratch
        penalty = reg * squares
    return softmax.finite_loss(data_loss + penalty), correct


def train_epoch(
    rows: np.ndarray, labels: np.ndarray, order: np.ndarray, sample_weight: np.ndarray,
    flip: np.ndarray, shift: np.ndarray, padding: int, W: np.ndarray, velocity: np.ndarray,
    average: np.ndarray, avg_alpha: np.ndarray, mean: np.ndarray, scale: np.ndarray,
    has_bias: bool, batch_size: int, lr: float, momentum: float, nesterov: bool,
    grad_clip: float, reg: float, reg_bias: bool, clip: float,
) -> tuple[float, int]:
    """One epoch of SGD over rows[order] in minibatches of batch_size, in place on W,
    velocity and average (all (C, D) float32, C-contiguous).

    rows (N, P) uint8 or float32; labels (N,) int64; order (n,) int64; sample_weight (N,)
    or (0,); flip (n,) bool or (0,); shift (n, 2) int64 or (0, 2); padding 0 zero, 1 edge,
    2 reflect; avg_alpha (steps,) float64: after step s, average += avg_alpha[s] * (W -
    average) unless it is 0; grad_clip 0 = off. Returns (sum over minibatches of loss *
    rows, number of rows predicted right before their step).

    Works in the engine layout throughout (no transposed views): per step, a gather into
    preallocated buffers, one conversion to float32, two BLAS products, optim.sgd_step.
    """
    n_classes, n_cols = W.shape
    P = rows.shape[1]
    batch_size = min(batch_size, len(order))
    buffers = _StepBuffers(batch_size, P, n_classes, n_cols, rows.dtype)
    scale32 = np.asarray(scale, dtype=np.float32)
    mean32 = np.asarray(mean, dtype=np.float32)
    weights = sample_weight if len(sample_weight) else None
    padding_name = next(name for name, code in PADDING_CODES.items() if code == padding)
    total_loss, total_correct = 0.0, 0
    for step, start in enumerate(range(0, len(order), batch_size)):
        batch_rows = order[start : start + batch_size]
        n = len(batch_rows)
        gathered, raw = buffers.gathered[:n], buffers.raw[:n]
        np.take(rows, batch_rows, axis=0, out=gathered)
        if len(flip) or len(shift):
            apply_augmentation(gathered, flip[start : start + n], shift[start : start + n],
                               padding_name)
        np.copyto(raw, gathered)
        loss, correct = _step_loss_and_grad(
            W, raw, labels[batch_rows], None if weights is None else weights[batch_rows],
            mean32, scale32, -mean32, has_bias, reg, reg_bias, clip, buffers)
        sgd_step(W, velocity, buffers.grad, lr, momentum, nesterov, grad_clip or None)
        if avg_alpha[step]:
            average += np.float32(avg_alpha[step]) * (W - average)
        total_loss += loss * n
        total_correct += correct
    return total_loss, total_correct


def batch_loss_and_grad(
    rows: np.ndarray, labels: np.ndarray, sample_weight: np.ndarray, W: np.ndarray,
    mean: np.ndarray, scale: np.ndarray, has_bias: bool, reg: float, reg_bias: bool,
    clip: float,
) -> tuple[float, np.ndarray, int]:
    """The loss, gradient dW and number of correct predictions of one minibatch, with the
    code of one train_epoch step.

    rows (b, P) raw values (uint8 pixels or float features), labels (b,) int64,
    sample_weight (b,) float or shape (0,) for all ones, W (C, D) float32 or float64.
    Returns (loss incl. the L2 penalty, dW (C, D) of W's dtype, correct).
    """
    W = np.ascontiguousarray(W)
    n_classes, n_cols = W.shape
    buffers = _StepBuffers(len(rows), rows.shape[1], n_classes, n_cols, rows.dtype, W.dtype)
    np.copyto(buffers.raw, rows)
    mean, scale = np.asarray(mean, dtype=W.dtype), np.asarray(scale, dtype=W.dtype)
    weight = np.asarray(sample_weight, dtype=W.dtype) if len(sample_weight) else None
    loss, correct = _step_loss_and_grad(W, buffers.raw, labels, weight, mean, scale, -mean,
                                        has_bias, reg, reg_bias or not has_bias, clip, buffers)
    return loss, buffers.grad, correct


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
    from .numba_engine import api as kernels  # imports numba; ImportError without it

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
