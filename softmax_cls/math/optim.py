"""The optimizer: the learning-rate schedule, the one SGD step, and weight averaging.

`sgd_step` and `average_step` are the reference of every engine's update (the engine
contract, softmax_cls.engines.contract): the numpy engine calls them, compiled engines are
tested against them.
"""

from __future__ import annotations

import math

import numpy as np

from ..config import AveragingConfig, OptimConfig


def learning_rate(optim: OptimConfig, epoch: int) -> float:
    """The learning rate of epoch `epoch` (0-based) under the configured schedule.

    constant: lr; step: lr * gamma^(epoch // step_size); exponential: lr * gamma^epoch;
    cosine: min_lr + (lr - min_lr) * (1 + cos(pi * epoch / epochs)) / 2.
    """
    schedule = optim.schedule
    if schedule.name == "step":
        return optim.lr * schedule.gamma ** (epoch // schedule.step_size)
    if schedule.name == "exponential":
        return optim.lr * schedule.gamma**epoch
    if schedule.name == "cosine":
        cosine = 0.5 * (1 + math.cos(math.pi * epoch / optim.epochs))
        return schedule.min_lr + (optim.lr - schedule.min_lr) * cosine
    return optim.lr


def sgd_step(W: np.ndarray, velocity: np.ndarray, grad: np.ndarray, lr: float,
             momentum: float, nesterov: bool = False, grad_clip: float | None = None) -> None:
    """One SGD step with momentum, in place on W and velocity (same shape and float dtype).

    grad is the minibatch gradient (data term plus L2 term); it is used up (scaled in place):
        if grad_clip and |grad| > grad_clip: grad *= grad_clip / |grad|   (L2 norm)
        velocity = momentum * velocity + grad
        W -= lr * (grad + momentum * velocity)   with Nesterov, else   W -= lr * velocity
    """
    if grad_clip is not None:
        norm = float(np.linalg.norm(grad))
        if norm > grad_clip:
            grad *= grad_clip / norm
    velocity *= momentum
    velocity += grad
    if nesterov:
        grad += momentum * velocity
        step = grad
    else:
        step = velocity
    W -= W.dtype.type(lr) * step


def average_step(average: np.ndarray, W: np.ndarray, alpha: float) -> None:
    """average += alpha * (W - average), in place (same shape and float dtype); nothing when
    alpha is 0 (no average is kept)."""
    if alpha:
        average += average.dtype.type(alpha) * (W - average)


def averaging_alphas(averaging: AveragingConfig, epoch: int, steps_per_epoch: int,
                     epochs: int) -> np.ndarray:
    """(steps_per_epoch,) float64: after global step t the average moves by
    average += alpha_t * (W - average).

    Before the averaging starts (global step t, from 0, with t + 1 <= start * total steps:
    the steps that end within the first `start` of training), alpha = 1: the average is W
    itself. Uniform: alpha = 1 / k for the k-th averaged step, so the average is the
    plain mean of the weights after each of those steps. EMA: alpha = 1 - decay. None: all 0
    (no average is kept; the model is W). Each alpha is a function of the global step alone,
    so a resumed run averages exactly as an uninterrupted one.
    """
    if averaging.name == "none":
        return np.zeros(steps_per_epoch)
    step = np.arange(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch, dtype=np.float64)
    alphas = np.ones(steps_per_epoch)
    first = math.floor(averaging.start * epochs * steps_per_epoch)
    averaged = step >= first
    if averaging.name == "uniform":
        alphas[averaged] = 1.0 / (step[averaged] - first + 1)
    else:
        alphas[averaged] = 1.0 - averaging.decay
    return alphas
