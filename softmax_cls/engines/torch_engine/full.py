"""The full-batch objective on the device: the engine contract's full_loss_and_grad (the
L-BFGS solver's, training/lbfgs.py) with torch ops, the numpy engine's arithmetic step for
step (numpy_engine.full_loss_and_grad).

Per chunk of rows: the rows on the device (an index_select of the resident rows, or the
chunk gathered on the host and moved there), per augmented view one device augmentation
(step.augment, the training steps' own), the rows centred in `precision` (x_c = u - mean;
the scale folded into the weights), the scores x_c @ (W * scale).T in `precision`, the
softmax and its loss in float64, and x_c.T @ dS in `precision` added into a float64 sum.
Centring before the product, not step.Folding's offset in the bias, keeps float32 products
as accurate as the numpy engine's (the offset would cancel large terms near the optimum).
Matmuls run without TF32 on CUDA (_ieee_float32): the float32 products are IEEE float32, as
docs/lbfgs.md's tolerances assume.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from ...math.augment import SIDE
from ...math.preprocess import Preprocessor
from ..contract import StepRule, TrainingRows, full_objective, gather_rows
from .device import out_of_memory_as_error
from .rows import as_tensor, device_rows, fits, resident_rows
from .step import TORCH_DTYPES, augment

# Values (rows x raw values) per chunk. CPU: 8 M (32 MB of float32; 16,384 rows of 512
# features), eight times the numpy engine's: each of the dozen element-wise ops per chunk
# ends at an OpenMP barrier, which on a loaded machine waits for a descheduled thread
# (20,000 x 512, 100 classes, 2 threads, load 3 on 2 cores: 0.71 s per evaluation in
# chunks of 2,048 rows, 0.24 s in one chunk). GPU: 64 M values (256 MB of float32), few
# enough launches to keep it busy.
CHUNK_VALUES = {"cpu": 1 << 23, "cuda": 1 << 26}


def full_loss_and_grad(device, data: TrainingRows, index: np.ndarray, W: np.ndarray,
                       pre: Preprocessor, rule: StepRule, views: tuple, padding: str,
                       precision: str, chunk: int | None = None,
                       memory_budget: int | None = None) -> tuple[float, np.ndarray]:
    """The full-batch objective of the contract over data.rows[index] (rows (N, P) uint8 or
    float32, index (n,) int64) and `views` ((flip, dy, dx), math.augment.augmented_views), and
    its gradient (C, D) float64 numpy, for W (C, D) float64, computed on `device` with
    products in `precision` ("float32" or "float64") and float64 sums.

    The rows stay where they are: resident on the device when they already are (or on a GPU
    when they fit `memory_budget` bytes, by default the epochs' budget: rows.fits; moved once
    per TrainingRows object as the epochs do), else `chunk` rows at a time (default
    CHUNK_VALUES values) gathered on the host and moved to the device: a memory-mapped file
    larger than memory is fine. The default chunk holds CHUNK_VALUES values of the rows or
    of the (chunk, C) scores, whichever is wider.
    """
    with _ieee_float32(device), out_of_memory_as_error(device, "in the L-BFGS objective"):
        return _evaluate(device, data, index, W, pre, rule, views, padding, precision, chunk,
                         memory_budget)


def _evaluate(device, data, index, W, pre, rule, views, padding, precision, chunk,
              memory_budget):
    loss_sum, grad_cp, grad_bias = _sums(device, data, index, W, pre, rule, views, padding,
                                         precision, chunk, memory_budget)
    return full_objective(W, pre, rule, float(loss_sum), len(index) * len(views),
                          grad_cp.cpu().numpy(), grad_bias.cpu().numpy())


def _sums(device, data, index, W, pre, rule, views, padding, precision, chunk, memory_budget):
    """The objective's sums on the device, read nowhere on the host: the loss sum (0-d), the
    sum of dS.T @ x_c (C, P) and of dS (C,), float64, dS divided by the rows times the views.

    The centred rows go into one buffer made once (a fresh 32 MB tensor per chunk cost
    more than the subtraction: the pages are touched anew each time), and both products
    take the (C, P) operand transposed (x_c @ W.T, dS.T @ x_c), the layouts PyTorch's CPU
    GEMM runs two to three times faster at ten classes (docs/development.md, "The torch engine's CPU
    evaluation")."""
    rows, labels, weights = data.rows, data.labels, data.sample_weight
    dtype = np.dtype(precision)
    kind = TORCH_DTYPES[dtype]
    n_classes, P = W.shape[0], pre.n_raw
    f64 = dict(dtype=torch.float64, device=device)
    mean = (torch.as_tensor(pre.vectors(dtype)[0], device=device) if pre.mean.any()
            else None)
    W_scaled = torch.as_tensor(np.ascontiguousarray(W[:, :P] * pre.scale, dtype=dtype),
                               device=device)  # (C, P)
    bias = torch.as_tensor(W[:, P] if pre.bias else np.zeros(n_classes), **f64)
    total = len(index) * len(views)
    grad_cp = torch.zeros((n_classes, P), **f64)  # sum of dS.T @ x_c
    grad_bias = torch.zeros(n_classes, **f64)
    loss_sum = torch.zeros((), **f64)
    resident = _resident(data, device, memory_budget)
    if chunk is None:
        chunk = max(64, CHUNK_VALUES["cpu" if device.type == "cpu" else "cuda"]
                    // max(P, n_classes))  # the (chunk, C) scores too: few features, many classes
    contiguous = bool(np.all(np.diff(index) == 1))
    index_t = torch.as_tensor(index, device=device) if resident is not None else None
    positions = torch.arange(SIDE, device=device)
    centred = torch.empty((min(chunk, len(index)), P), dtype=kind, device=device)
    for start in range(0, len(index), chunk):
        stop = min(start + chunk, len(index))
        n = stop - start
        if resident is not None:
            block = torch.index_select(resident.rows, 0, index_t[start:stop])
        elif contiguous:  # a slice of the file: no gather copy on the host
            block = as_tensor(rows[index[start] : index[start] + n], device)
        else:
            block = as_tensor(gather_rows(rows, index[start:stop]), device)
        chunk_labels = as_tensor(labels[index[start:stop]], device)[:, None]
        chunk_weight = (None if weights is None else
                        torch.as_tensor(weights[index[start:stop]], **f64)[:, None])
        for flip, dy, dx in views:
            u = block
            if flip or dy or dx:
                u = augment(block, torch.ones(n, dtype=torch.bool, device=device)
                            if flip else None,
                            torch.tensor([[dy, dx]], device=device).expand(n, 2)
                            if dy or dx else None, padding, positions)
            x = centred[:n]
            if mean is None:
                x.copy_(u)
            else:
                torch.sub(u, mean, out=x)
            S = torch.mm(x, W_scaled.T).to(torch.float64).add_(bias)
            # softmax.softmax_loss_from_scores: max-shifted scores clipped from below
            Z = S.sub_(S.amax(dim=1, keepdim=True)).clamp_(min=-rule.clip)
            exp = Z.exp()
            sum_exp = exp.sum(dim=1, keepdim=True)
            row_losses = sum_exp.log() - Z.gather(1, chunk_labels)
            dS = exp.div_(sum_exp)
            dS.scatter_add_(1, chunk_labels, torch.full_like(row_losses, -1.0))
            if chunk_weight is not None:
                row_losses = row_losses * chunk_weight
                dS.mul_(chunk_weight)
            loss_sum += row_losses.sum()
            dS.div_(total)
            grad_bias += dS.sum(dim=0)
            grad_cp += torch.mm(dS.to(kind).T, x)
    return loss_sum, grad_cp, grad_bias


def _resident(data: TrainingRows, device, budget: int | None = None):
    """The rows' DeviceRows when they are on the device to stay: already resident, or on a
    GPU when they fit `budget` bytes (rows.fits: the epochs' rule; then moved now, once);
    else None (the CPU reads the host's rows in place)."""
    if device.type == "cpu":
        return None
    held = resident_rows(data, device)
    if held is not None:
        return held
    return device_rows(data, device, budget) if fits(data, device, budget) else None


@contextmanager
def _ieee_float32(device):
    """TF32 matmuls off on CUDA for the duration (restored after): float32 means float32.

    Through torch.backends.cuda.matmul.fp32_precision ("ieee" or "tf32"), the setting that
    PyTorch's cuBLAS calls read from 2.9 on, where it exists: there the older allow_tf32
    refuses to be read (a RuntimeError about mixing the legacy and new APIs) once a process
    has set TF32 with the new API, and setting it back after the user's
    set_float32_matmul_precision("medium") left that one unreadable. allow_tf32 before 2.9.
    """
    if device.type != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul
    try:
        name, before, ieee = "fp32_precision", matmul.fp32_precision, "ieee"
    except AttributeError:  # PyTorch before 2.9
        name, before, ieee = "allow_tf32", matmul.allow_tf32, False
    setattr(matmul, name, ieee)
    try:
        yield
    finally:
        setattr(matmul, name, before)
