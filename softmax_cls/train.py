"""Minibatch SGD for the linear softmax classifier, readable top to bottom.

The training images stay uint8 (N, 3072); each minibatch is gathered into a preallocated uint8
buffer, optionally augmented, converted once into a preallocated float32 buffer of raw
features [u, 1], and the preprocessing is folded into the weights (see preprocess.py).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import softmax
from .augment import augment_batch
from .checkpoint import TrainState, save_checkpoint
from .config import Config, OptimConfig, config_to_yaml
from .datasets import CifarData
from .errors import SoftmaxClsError
from .fsutil import atomic_write
from .preprocess import (
    N_PIXELS,
    Preprocessor,
    fit_preprocessor,
    image_scores,
    raw_features,
    split_train_val,
)


class TrainingDiverged(SoftmaxClsError):
    """The loss or the weights stopped being finite."""


class TrainingInterrupted(SoftmaxClsError):
    """Ctrl-C: the last completed epoch is saved in last.npz."""

    exit_code = 130


@dataclass
class TrainResult:
    state: TrainState
    out_dir: Path
    test_loss: float
    test_acc: float
    stopped_early: bool


def batch_loss_and_grad(
    W: np.ndarray, raw: np.ndarray, y: np.ndarray, pre: Preprocessor,
    reg: float, clip: float, reg_bias: bool,
) -> tuple[float, np.ndarray, int]:
    """The trainer's minibatch objective: (loss, dW, number of correct predictions).

    W (D, C) and raw features [u, 1] (B, 3073) share a float dtype; y (B,) int64. The loss is
    the softmax loss of the math contract on the preprocessed features pre.transform(u), with
    the preprocessing folded into the weights instead of applied to every pixel.
    """
    scores = raw @ pre.fold(W)
    data_loss, dscores = softmax.softmax_loss_from_scores(scores, y, clip)
    correct = int(np.count_nonzero(scores.argmax(axis=1) == y))
    dW = pre.unfold_grad(raw.T @ dscores)
    penalty, dW = softmax.l2_penalty(W, reg, reg_bias or not pre.bias, add_to=dW)
    return softmax.finite_loss(data_loss + penalty), dW, correct


def learning_rate(optim: OptimConfig, epoch: int) -> float:
    """The learning rate of epoch `epoch` (0-based) under the configured schedule."""
    schedule = optim.schedule
    if schedule.name == "step":
        return optim.lr * schedule.gamma ** (epoch // schedule.step_size)
    if schedule.name == "exponential":
        return optim.lr * schedule.gamma**epoch
    if schedule.name == "cosine":
        cosine = 0.5 * (1 + math.cos(math.pi * epoch / optim.epochs))
        return schedule.min_lr + (optim.lr - schedule.min_lr) * cosine
    return optim.lr


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The randomness (shuffling, augmentation) of one epoch: a pure function of seed and epoch."""
    return np.random.default_rng([seed, epoch])


def evaluate(W: np.ndarray, pre: Preprocessor, images: np.ndarray, labels: np.ndarray,
             clip: float) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of W on images (N, 3072) uint8 with labels (N,)."""
    scores = image_scores(W, pre, images)
    loss, _ = softmax.softmax_loss_from_scores(scores, labels, clip)
    return loss, float(np.mean(scores.argmax(axis=1) == labels))


def initial_state(config: Config, n_features: int, n_classes: int) -> TrainState:
    rng = np.random.default_rng(config.seed)
    W = (rng.standard_normal((n_features, n_classes)) * config.model.init_std).astype(np.float32)
    return TrainState(W=W, velocity=np.zeros_like(W), best_W=W.copy())


@np.errstate(over="ignore", invalid="ignore")  # non-finite values raise NonFiniteError instead
def train(
    config: Config,
    data: CifarData,
    out_dir: str | Path,
    resume: TrainState | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train on `data` as `config` says, writing the run folder `out_dir`.

    The folder gets config.yaml, history.jsonl, last.npz (after every epoch, and before the
    first), best.npz (the best weights on validation so far) and summary.json.
    Raises TrainingDiverged or TrainingInterrupted; last.npz then holds the last good epoch.
    """
    train_rows, val_rows = split_train_val(data.train_labels, config.data.val_size, config.seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config_yaml = config_to_yaml(config)
    with atomic_write(out_dir / "config.yaml", "w") as handle:
        handle.write(config_yaml)

    pre = fit_preprocessor(data.train_images, config.preprocess.center, config.preprocess.scale,
                           config.preprocess.bias, rows=train_rows)
    n_classes = len(data.class_names)
    state = resume or initial_state(config, pre.n_features, n_classes)
    val_images, val_labels = data.train_images[val_rows], data.train_labels[val_rows]

    def save(name: str, weights: np.ndarray | None = None, status: str = "running") -> None:
        save_checkpoint(out_dir / name, state, pre, data.class_names, config_yaml,
                        data.fingerprint, status, W=weights)

    save("last.npz")
    if state.best_epoch > 0:  # a resumed run, perhaps into another folder
        save("best.npz", weights=state.best_W)
    optim, loss_cfg, patience = config.optim, config.loss, config.optim.early_stopping.patience
    stopped_early = patience is not None and state.epochs_since_best >= patience
    batch_size = min(optim.batch_size, len(train_rows))
    uint8_batch = np.empty((batch_size, N_PIXELS), dtype=np.uint8)
    float_batch = np.empty((batch_size, N_PIXELS + 1), dtype=np.float32)
    first_epoch = optim.epochs if stopped_early else state.epoch  # a stopped run stays stopped
    epochs = tqdm(range(first_epoch, optim.epochs), desc="epochs", disable=not progress,
                  initial=state.epoch, total=optim.epochs, unit="epoch")
    try:
        for epoch in epochs:
            started = time.perf_counter()
            lr = learning_rate(optim, epoch)
            rng = epoch_rng(config.seed, epoch)
            order = train_rows[rng.permutation(len(train_rows))]
            total_loss, total_correct = 0.0, 0
            batches = tqdm(range(0, len(order), batch_size), desc=f"epoch {epoch + 1}",
                           leave=False, disable=not progress, unit="batch")
            for start in batches:
                rows = order[start : start + batch_size]
                n = len(rows)
                np.take(data.train_images, rows, axis=0, out=uint8_batch[:n])
                augment_batch(uint8_batch[:n], rng, config.augment.hflip, config.augment.translate)
                raw = raw_features(uint8_batch[:n], out=float_batch[:n])
                loss, dW, correct = batch_loss_and_grad(
                    state.W, raw, data.train_labels[rows], pre, loss_cfg.reg, loss_cfg.clip,
                    loss_cfg.reg_bias)
                if optim.grad_clip is not None:
                    norm = float(np.linalg.norm(dW))
                    if norm > optim.grad_clip:
                        dW *= optim.grad_clip / norm
                state.velocity *= optim.momentum
                state.velocity += dW
                if optim.nesterov:  # dW is this step's own array: it becomes the step
                    dW += optim.momentum * state.velocity
                step = dW if optim.nesterov else state.velocity
                state.W -= np.float32(lr) * step
                total_loss += loss * n
                total_correct += correct
                if progress:
                    batches.set_postfix(loss=f"{total_loss / (start + n):.3f}",
                                        acc=f"{total_correct / (start + n):.3f}", refresh=False)
            if not np.isfinite(state.W).all():
                raise softmax.NonFiniteError("non-finite weights")
            val_loss, val_acc = evaluate(state.W, pre, val_images, val_labels, loss_cfg.clip)
            state.epoch = epoch + 1
            state.history.append({
                "epoch": epoch + 1, "lr": lr,
                "train_loss": total_loss / len(order), "train_acc": total_correct / len(order),
                "val_loss": val_loss, "val_acc": val_acc,
                "seconds": time.perf_counter() - started,
            })
            if val_acc > state.best_val_acc:
                state.best_val_acc, state.best_epoch = val_acc, epoch + 1
                state.epochs_since_best = 0
                state.best_W = state.W.copy()
                save("best.npz", weights=state.best_W)
            else:
                state.epochs_since_best += 1
            save("last.npz")
            write_history(out_dir / "history.jsonl", state.history)
            epochs.set_postfix(val_acc=f"{val_acc:.3f}", best=f"{state.best_val_acc:.3f}")
            if patience is not None and state.epochs_since_best >= patience:
                stopped_early = True
                break
    except softmax.NonFiniteError as exc:
        raise TrainingDiverged(
            f"training diverged in epoch {state.epoch + 1} ({exc}) with optim.lr = "
            f"{optim.lr:g}: lower the learning rate, e.g. --set optim.lr={optim.lr / 10:g}; "
            f"last.npz keeps the last good epoch") from None
    except KeyboardInterrupt:
        raise TrainingInterrupted(
            f"interrupted: {out_dir / 'last.npz'} holds epoch {state.epoch}; resume with "
            f"softmax-train --resume {out_dir / 'last.npz'}") from None
    finally:
        epochs.close()

    test_loss, test_acc = evaluate(state.best_W, pre, data.test_images, data.test_labels,
                                   loss_cfg.clip)
    save("last.npz", status="complete")
    summary = {"epochs": state.epoch, "best_epoch": state.best_epoch,
               "best_val_acc": state.best_val_acc, "test_loss": test_loss, "test_acc": test_acc,
               "stopped_early": stopped_early}
    with atomic_write(out_dir / "summary.json", "w") as handle:
        json.dump(summary, handle, indent=2)
    return TrainResult(state, out_dir, test_loss, test_acc, stopped_early)


def write_history(path: Path, history: list[dict]) -> None:
    """The per-epoch history as JSON lines, rewritten atomically."""
    with atomic_write(path, "w") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in history)
