"""Scores and one minibatch's loss and gradient on the device, with the step's code."""

from __future__ import annotations

import math

import numpy as np
import torch

from ...math.preprocess import Preprocessor
from ...math.softmax import PREDICT_CHUNK, NonFiniteError
from ..contract import StepRule
from .device import out_of_memory_as_error
from .rows import as_tensor
from .step import TORCH_DTYPES, Folding, StepBuffers, loss_and_grad, score_bias


def predict_scores(device, rows: np.ndarray, W: np.ndarray, pre: Preprocessor) -> np.ndarray:
    """Class scores (N, C) in W's dtype (float32 or float64) of raw rows (N, P) under W
    (C, D): (u * scale) @ W[:, :P].T + score_bias, PREDICT_CHUNK rows at a time through one
    reused buffer."""
    with out_of_memory_as_error(device, "scoring rows"):
        return _scores(device, rows, W, pre)


def _scores(device, rows: np.ndarray, W: np.ndarray, pre: Preprocessor) -> np.ndarray:
    dtype = TORCH_DTYPES[W.dtype]
    W_t = as_tensor(W, device)
    folding = Folding.of(pre, dtype, device)
    wb = score_bias(W_t, folding, torch.empty(W.shape[0], dtype=dtype, device=device))
    weights = W_t[:, : pre.n_raw].T
    out = np.empty((len(rows), W.shape[0]), dtype=W.dtype)
    chunk = torch.empty((min(PREDICT_CHUNK, len(rows)), pre.n_raw), dtype=dtype, device=device)
    for start in range(0, len(rows), PREDICT_CHUNK):
        block = as_tensor(rows[start : start + PREDICT_CHUNK], device)
        scaled = torch.mul(block, folding.scale, out=chunk[: len(block)])
        out[start : start + len(block)] = torch.addmm(wb, scaled, weights).cpu().numpy()
    return out


def batch_loss_and_grad(device, rows: np.ndarray, labels: np.ndarray,
                        sample_weight: np.ndarray | None, W: np.ndarray, pre: Preprocessor,
                        rule: StepRule) -> tuple[float, np.ndarray, int]:
    """(loss, dW (C, D) in W's dtype, correct) of one minibatch of raw rows (b, P), computed
    in W's dtype by the code of a training step."""
    with out_of_memory_as_error(device, "in one minibatch's gradient"):
        return _batch(device, rows, labels, sample_weight, W, pre, rule)


def _batch(device, rows, labels, sample_weight, W, pre, rule):
    dtype = TORCH_DTYPES[W.dtype]
    rows_t = as_tensor(rows, device)
    buffers = StepBuffers(len(rows), pre.n_raw, W.shape[0], W.shape[1], rows_t.dtype, dtype,
                          device)
    folding = Folding.of(pre, dtype, device)
    raw = torch.mul(rows_t, folding.scale, out=buffers.raw[: len(rows)])
    weight = None if sample_weight is None else torch.as_tensor(
        np.asarray(sample_weight), dtype=dtype, device=device)
    loss, correct = loss_and_grad(as_tensor(W, device), raw, as_tensor(labels, device), weight,
                                  folding, rule, buffers)
    value = float(loss)
    if not math.isfinite(value):
        raise NonFiniteError(f"non-finite loss ({value}): inf or NaN in the scores")
    return value, buffers.grad.cpu().numpy().copy(), int(correct)
