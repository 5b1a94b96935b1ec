"""One minibatch on the device: the gather and augmentation of its rows, its loss and
gradient (the preprocessing's scale applied to the rows as they become float, its mean
folded into the bias: the features are never built), and the SGD and averaging update.

The math is the engine contract's (softmax_cls.engines.contract), written with torch ops
that never read a tensor's value on the host, so the same code runs eagerly or inside a
captured CUDA graph: the learning rate and the averaging factor may be 0-d device tensors,
and the gradient clip is a `where`, not a branch. Shapes: b rows of P raw values, C classes,
W (C, D) with D = P + 1 (bias column last) or P.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ...math.augment import SIDE
from ...math.preprocess import Preprocessor
from ..contract import StepRule

TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}
# On the CPU, below this many classes the scores are one (C, b) product W[:, :P] @ raw.T,
# copied into the (b, C) scores: PyTorch's CPU GEMM ran it 1.1 to 1.5 times faster than
# raw @ W[:, :P].T at 10 and 20 classes on one thread, slower at 32 and 64, level from 100
# on; CIFAR-10 epochs 1.04 to 1.15 times faster on one thread and 1.03 to 1.11 on two
# (docs/development.md, "The torch engine's CPU SGD step").
TRANSPOSED_SCORES_BELOW = 32


@dataclass(frozen=True)
class Folding:
    """The preprocessing x = (u - mean) * scale on the device, split in two: scale (P,),
    applied to the raw rows u as they are converted to float (scaled rows u * scale), and
    offset = -mean * scale (P,), folded into the bias; both in the weights' dtype. bias:
    whether W has the bias column."""

    scale: torch.Tensor
    offset: torch.Tensor
    bias: bool

    @classmethod
    def of(cls, pre: Preprocessor, dtype: torch.dtype, device) -> Folding:
        scale = torch.as_tensor(pre.scale, dtype=dtype, device=device)
        return cls(scale, torch.as_tensor(-pre.mean * pre.scale, dtype=dtype, device=device),
                   pre.bias)

    def load(self, pre: Preprocessor) -> None:
        """Copy pre's statistics into these tensors (a captured graph reads them in place)."""
        self.scale.copy_(torch.from_numpy(pre.scale))
        self.offset.copy_(torch.from_numpy(-pre.mean * pre.scale))


class StepBuffers:
    """The tensors one step writes, allocated once: gathered (b, P) rows as stored, raw
    (b + 1, P) scaled rows and dscores (b + 1, C) in the weights' dtype (one row more than
    the minibatch: see loss_and_grad), the bias of the scores wb (C,), scores (b, C), grad
    (C, D), the pixel positions 0..31 used by augmentation, and scores_t (C * b,), room for
    the scores' (C, n) product on the CPU below TRANSPOSED_SCORES_BELOW classes (else
    None: the scores are one (n, C) product; CUDA and the meta device keep that one)."""

    def __init__(self, batch: int, n_raw: int, n_classes: int, n_cols: int,
                 rows_dtype: torch.dtype, dtype: torch.dtype, device):
        def empty(*shape, kind=dtype):
            return torch.empty(shape, dtype=kind, device=device)

        self.gathered = empty(batch, n_raw, kind=rows_dtype)
        self.raw = empty(batch + 1, n_raw)
        self.dscores = empty(batch + 1, n_classes)
        self.wb = empty(n_classes)
        self.scores = empty(batch, n_classes)
        self.grad = empty(n_classes, n_cols)
        self.positions = torch.arange(SIDE, device=device)
        self.scores_t = (empty(n_classes * batch) if torch.device(device).type == "cpu"
                         and n_classes < TRANSPOSED_SCORES_BELOW else None)


# ---------------------------------------------------------------------------------------------
# The minibatch's rows


def _padded(index: torch.Tensor, padding: str) -> torch.Tensor:
    """Source positions in [0, 31] for positions `index` that may lie up to 8 outside: edge
    repeats the border pixel, reflect mirrors about it, zero clamps (its mask zeroes them)."""
    if padding == "reflect":
        index = torch.where(index < 0, -index, index)
        return torch.where(index > SIDE - 1, 2 * (SIDE - 1) - index, index)
    return index.clamp(0, SIDE - 1)


def augment(images: torch.Tensor, flip: torch.Tensor | None, shift: torch.Tensor | None,
            padding: str, positions: torch.Tensor) -> torch.Tensor:
    """Images (b, 3072) uint8 mirrored where flip (b,) bool, then moved by shift (b, 2) =
    (dy, dx): out[i, j] = image[pad(i - dy), pad(j - dx)], as augment.apply_augmentation.
    Two gathers along the columns and the rows; returns a new (b, 3072) uint8 tensor."""
    b = images.shape[0]
    planes = images.view(b, 3, SIDE, SIDE)
    cols = positions.expand(b, SIDE)
    rows = None
    inside = None
    if shift is not None:
        rows = positions - shift[:, :1]
        cols = positions - shift[:, 1:]
        if padding == "zero":
            inside = ((rows >= 0) & (rows < SIDE))[:, :, None] \
                & ((cols >= 0) & (cols < SIDE))[:, None, :]
        rows, cols = _padded(rows, padding), _padded(cols, padding)
    if flip is not None:
        cols = torch.where(flip[:, None], SIDE - 1 - cols, cols)
    out = torch.gather(planes, 3, cols[:, None, None, :].expand(b, 3, SIDE, SIDE))
    if rows is not None:
        out = torch.gather(out, 2, rows[:, None, :, None].expand(b, 3, SIDE, SIDE))
    if inside is not None:
        out = out.masked_fill(~inside[:, None], 0)
    return out.reshape(b, -1)


def scaled_minibatch(rows: torch.Tensor, index: torch.Tensor | None,
                     flip: torch.Tensor | None, shift: torch.Tensor | None, padding: str,
                     scale: torch.Tensor, buffers: StepBuffers) -> torch.Tensor:
    """Scaled rows (n, P) in the weights' dtype: rows[index] (n,) after the flips and shifts,
    times scale (P,), in the first n rows of buffers.raw; with index None, rows (n, P) are the
    minibatch itself (streamed: already gathered). The scale rides in the conversion to float
    (uint8 or float16 rows), or is one pass over the gathered float32 rows: n x P values,
    fewer than the C x P of folding it into the weights once classes outnumber the rows."""
    n = rows.shape[0] if index is None else index.shape[0]
    raw = buffers.raw[:n]
    if index is None:
        gathered = rows
    elif flip is None and shift is None and rows.dtype == raw.dtype:
        return torch.index_select(rows, 0, index, out=raw).mul_(scale)
    else:
        gathered = torch.index_select(rows, 0, index, out=buffers.gathered[:n])
    if flip is not None or shift is not None:
        gathered = augment(gathered, flip, shift, padding, buffers.positions)
    return torch.mul(gathered, scale, out=raw)


# ---------------------------------------------------------------------------------------------
# Loss and gradient


def score_bias(W: torch.Tensor, folding: Folding, out: torch.Tensor) -> torch.Tensor:
    """The mean folded into the bias: wb (C,) = W[:, :P] @ offset (+ W[:, P] with the bias
    column), so that x @ W.T == (u * scale) @ W[:, :P].T + wb for raw rows u (P values)."""
    P = folding.scale.shape[0]
    torch.mv(W[:, :P], folding.offset, out=out)
    if folding.bias:
        out.add_(W[:, P])
    return out


def loss_and_grad(W: torch.Tensor, raw: torch.Tensor, labels: torch.Tensor,
                  weight: torch.Tensor | None, folding: Folding, rule: StepRule,
                  buffers: StepBuffers) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and gradient of one minibatch, the gradient into buffers.grad (C, D).

    W (C, D), raw (n, P) scaled rows in W's dtype (scaled_minibatch: the first n rows of
    buffers.raw), labels (n,) int64, weight (n,) or None. Returns 0-d tensors (loss incl. the
    L2 penalty, in W's dtype, float64 on the CPU where it passes float32's range; correct,
    int64: rows whose first maximal score is their label).
    Non-finite scores give a non-finite loss.

    The features x = u * scale + offset are never built: the scores read W as it is, the
    offset folded into their bias (score_bias), and the gradient's GEMM carries the offset
    as one extra row: row n of raw holds offset and row n of dscores the bias gradient
    (dscores' column sums), so dscores[:n + 1].T @ raw[:n + 1] is dscores.T @ x, the
    gradient of W[:, :P], written straight into grad. This is Preprocessor.fold and
    unfold_grad with the scale moved to the rows: no pass over a (C, P) array.
    """
    n, P = raw.shape
    wb = score_bias(W, folding, buffers.wb)
    if buffers.scores_t is None:
        scores = torch.addmm(wb, raw, W[:, :P].T, out=buffers.scores[:n])
    else:  # the faster (C, n) product on the CPU at few classes (TRANSPOSED_SCORES_BELOW)
        scores_t = torch.addmm(wb[:, None], W[:, :P], raw.T,
                               out=buffers.scores_t[: W.shape[0] * n].view(-1, n))
        scores = buffers.scores[:n].copy_(scores_t.T)
    correct = (scores.argmax(dim=1) == labels).sum()
    # max-shifted scores clipped from below: softmax.softmax_loss_from_scores
    shifted = (scores - scores.amax(dim=1, keepdim=True)).clamp_(min=-rule.clip)
    exp = torch.exp(shifted, out=buffers.dscores[:n])
    sum_exp = exp.sum(dim=1)
    labels_2d = labels[:, None]
    row_losses = sum_exp.log() - shifted.gather(1, labels_2d).squeeze(1)
    data_loss = row_losses.mean() if weight is None else torch.dot(weight, row_losses) / n
    dscores = exp.div_(sum_exp[:, None])
    dscores.scatter_(1, labels_2d, dscores.gather(1, labels_2d) - 1)
    if weight is not None:
        dscores.mul_(weight[:, None])
    dscores.div_(n)
    # the gradient: dscores.T @ x, the offset's outer product inside the GEMM
    raw_bias_grad = torch.sum(dscores, dim=0, out=buffers.dscores[n])
    buffers.raw[n].copy_(folding.offset)
    grad = buffers.grad
    torch.mm(buffers.dscores[: n + 1].T, buffers.raw[: n + 1], out=grad[:, :P])
    if folding.bias:
        grad[:, P] = raw_bias_grad
    loss = data_loss
    if rule.reg:
        flat = W.view(-1)
        squares = torch.dot(flat, flat)
        penalised, penalised_grad = W, grad
        if not rule.penalise_last:  # W's last column is the bias column: left out
            squares = squares - torch.dot(W[:, -1], W[:, -1])
            penalised, penalised_grad = W[:, :-1], grad[:, :-1]
        penalised_grad.add_(penalised, alpha=2 * rule.reg)
        # past float32's range, summed in float64 as softmax.penalised_squares does; only on
        # the CPU: a captured CUDA graph cannot branch on a value (a float64 sum every step
        # cost 1.4 to 2.7 ms at 1000 classes on the CPU, the float32 dots 0.1 to 0.2)
        if W.device.type == "cpu" and not torch.isfinite(squares):
            squares = torch.linalg.vector_norm(penalised, dtype=torch.float64).square()
        loss = loss + rule.reg * squares
    return loss, correct


# ---------------------------------------------------------------------------------------------
# The update


def sgd_update(W: torch.Tensor, velocity: torch.Tensor, grad: torch.Tensor, rule: StepRule,
               neg_lr) -> None:
    """optim.sgd_step in place: grad (used up) rescaled to norm grad_clip when longer, then
    velocity = momentum * velocity + grad and W -= lr * (grad + momentum * velocity) with
    Nesterov, else W -= lr * velocity. neg_lr is -lr, a float or a 0-d tensor. Each line is
    one pass over the (C, D) arrays (their rounding may differ from numpy's two-operation
    forms by an ulp: the engines agree within float32 tolerance, not bit for bit)."""
    if rule.grad_clip is not None:
        norm = torch.linalg.vector_norm(grad)
        grad.mul_(torch.where(norm > rule.grad_clip, rule.grad_clip / norm,
                              torch.ones_like(norm)))
    torch.add(grad, velocity, alpha=rule.momentum, out=velocity)
    step = grad.add_(velocity, alpha=rule.momentum) if rule.nesterov else velocity
    if isinstance(neg_lr, torch.Tensor):
        W.addcmul_(step, neg_lr)
    else:
        W.add_(step, alpha=neg_lr)


def average_update(average: torch.Tensor, W: torch.Tensor, alpha) -> None:
    """optim.average_step: average += alpha * (W - average) (lerp), alpha a float or a 0-d
    tensor (a captured graph applies alpha 0 too, which leaves a finite average as it is)."""
    average.lerp_(W, alpha)
