"""fit(): minibatch SGD for the linear softmax classifier, pure and readable top to bottom.

fit() takes a config, the training rows and labels, the run's split and preprocessing, and
optionally a state to continue from and a per-epoch callback. It returns the final state.
It writes no files and never sees the test split: the run folder (runs.py), the sweep and
the scikit-learn estimator all train through it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from ..config import Config
from ..engines import get_engine
from ..engines.contract import Engine, EpochPlan, OptimizerState, StepRule, TrainingRows
from ..errors import SoftmaxClsError
from ..math import softmax
from ..math.augment import draw_augmentation
from ..math.optim import averaging_alphas, learning_rate
from ..math.preprocess import Preprocessor, Split, mirror_weights


class TrainingDiverged(SoftmaxClsError):
    """The loss or the weights stopped being finite."""


@dataclass
class TrainState:
    """Where training stands after `epoch` completed epochs.

    W, velocity, average and best_W are (C, D) float32, C-contiguous. `average` is the running
    weight average (optim.averaging); best_W the model weights of the best epoch on validation.
    The shuffling and augmentation of epoch e are a pure function of (config seed, e), so
    `epoch` is the whole random state.
    """

    W: np.ndarray
    velocity: np.ndarray
    average: np.ndarray
    best_W: np.ndarray
    epoch: int = 0
    best_epoch: int = 0
    best_val_acc: float = -1.0
    epochs_since_best: int = 0
    history: list[dict] = field(default_factory=list)


@dataclass
class FitResult:
    """The final state, whether it stopped early, and for optim.solver lbfgs what the solver
    reports (LbfgsResult.summary(): iterations, evaluations, final_loss, grad_max,
    converged), else None."""

    state: TrainState
    stopped_early: bool
    solver: dict | None = None


def initial_state(config: Config, n_features: int, n_classes: int) -> TrainState:
    """Gaussian weights (C, D) float32 with std model.init_std, seeded by config.seed
    (zeros for optim.solver lbfgs: the optimum does not depend on the start).

    The draws are made in (D, C) order and transposed, so a seed gives the weights it gave
    when the package stored W as (D, C)."""
    if config.optim.solver == "lbfgs":
        W = np.zeros((n_classes, n_features), np.float32)
        return TrainState(W=W, velocity=W.copy(), average=W.copy(), best_W=W.copy())
    rng = np.random.default_rng(config.seed)
    draws = rng.standard_normal((n_features, n_classes)) * config.model.init_std
    W = np.ascontiguousarray(draws.T, dtype=np.float32)
    return TrainState(W=W, velocity=np.zeros_like(W), average=W.copy(), best_W=W.copy())


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The randomness (shuffling, augmentation) of one epoch: a pure function of seed and epoch."""
    return np.random.default_rng([seed, epoch])


def model_weights(config: Config, state: TrainState, pre: Preprocessor) -> np.ndarray:
    """The weights (C, D) float32 that are validated, checkpointed and evaluated: the weight
    average when optim.averaging is on (else W), made mirror-symmetric when configured."""
    W = state.W if config.optim.averaging.name == "none" else state.average
    return mirror_weights(W, pre) if config.model.mirror_symmetric else W.copy()


def validation_metrics(engine: Engine, W: np.ndarray, pre: Preprocessor, rows: np.ndarray,
                       labels: np.ndarray, clip: float) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of weights W (C, D) on raw rows (N, P), labels (N,)."""
    scores = engine.predict_scores(rows, W, pre)
    loss, _ = softmax.softmax_loss_from_scores(scores, labels, clip)
    return loss, float(np.mean(scores.argmax(axis=1) == labels))


@np.errstate(over="ignore", invalid="ignore")  # non-finite values raise NonFiniteError instead
def fit(
    config: Config,
    rows: np.ndarray,
    labels: np.ndarray,
    split: Split,
    pre: Preprocessor,
    n_classes: int,
    *,
    state: TrainState | None = None,
    sample_weight: np.ndarray | None = None,
    on_epoch: Callable[[TrainState], None] | None = None,
    progress: bool = False,
    engine: Engine | None = None,
    warn: Callable[[str], None] | None = None,
) -> FitResult:
    """Train on rows[split.train_rows] as `config` says; validate on rows[split.val_rows].

    rows (N, P) uint8 pixels or float32 or float16 features (a memory map is fine), labels
    (N,) int64 in [0, n_classes), split and pre from preprocess.split_and_fit, sample_weight
    (N,) or None.
    Trains with `engine` when given (the caller chose it), else get_engine(config.engine,
    config.device, n_classes, config.augment.active, rows).
    Continues `state` when given (it is updated in place). Calls on_epoch(state) after every
    epoch. Returns the final state (best_W: the model weights of the best validation epoch,
    or of the last epoch when there is no validation row) and whether it stopped early.
    Raises TrainingDiverged when the loss or weights stop being finite; `state` then still
    holds the last completed epoch, as it does on KeyboardInterrupt.

    With optim.solver lbfgs it is fit_full_batch's instead: one L-BFGS solve (`warn` takes
    its line when it does not converge).
    """
    if state is not None:  # an L-BFGS solution's row at epoch 0 (no iteration): replaced
        del state.history[state.epoch:]
    if config.optim.solver == "lbfgs":
        return fit_full_batch(config, rows, labels, split, pre, n_classes, state=state,
                              sample_weight=sample_weight, on_epoch=on_epoch,
                              progress=progress, engine=engine, warn=warn)
    # -- setup: engine, starting state, the fixed parts of every epoch
    engine = (get_engine(config.engine, config.device, n_classes, config.augment.active, rows)
              if engine is None else engine)
    engine.prepare(rows.dtype)  # a compile, if any, before the bar: not in its rate
    state = state or initial_state(config, pre.n_features, n_classes)
    optim, loss_cfg, augment = config.optim, config.loss, config.augment
    patience = optim.early_stopping.patience
    train_rows, val_rows = split.train_rows, split.val_rows
    val_images, val_labels = rows[val_rows], labels[val_rows]  # gathered once, not per epoch
    batch_size = min(optim.batch_size, len(train_rows))
    steps_per_epoch = -(-len(train_rows) // batch_size)
    data = TrainingRows(rows, np.asarray(labels, dtype=np.int64),
                        None if sample_weight is None
                        else np.ascontiguousarray(sample_weight, dtype=np.float32))
    stopped_early = patience is not None and state.epochs_since_best >= patience
    first_epoch = optim.epochs if stopped_early else state.epoch  # a stopped run stays stopped
    epochs = tqdm(range(first_epoch, optim.epochs), desc="epochs", disable=not progress,
                  initial=state.epoch, total=optim.epochs, unit="epoch")
    try:
        for epoch in epochs:
            started = time.perf_counter()
            # -- this epoch's learning rate and randomness: order, flips, shifts
            lr = learning_rate(optim, epoch)
            rng = epoch_rng(config.seed, epoch)
            order = train_rows[rng.permutation(len(train_rows))]
            flip, shift = draw_augmentation(rng, len(order), augment.hflip, augment.translate)
            plan = EpochPlan(order, batch_size,
                             averaging_alphas(optim.averaging, epoch, steps_per_epoch,
                                              optim.epochs),
                             flip if len(flip) else None, shift if len(shift) else None,
                             augment.padding)

            # -- SGD steps over the epoch, on working copies of the weights
            W, velocity, average = (a.copy() for a in (state.W, state.velocity, state.average))
            loss_sum, correct = engine.train_epoch(
                data, plan, StepRule.from_config(config, lr, pre.bias), pre,
                OptimizerState(W, velocity, average))
            if not (np.isfinite(W).all() and np.isfinite(average).all()):
                raise softmax.NonFiniteError("non-finite weights")

            # -- validation of the model weights
            candidate = TrainState(W, velocity, average, state.best_W)
            model = model_weights(config, candidate, pre)
            val_loss, val_acc = (validation_metrics(engine, model, pre, val_images,
                                                    val_labels, loss_cfg.clip)
                                 if len(val_rows) else (None, None))

            # -- the new state: weights, history, best epoch
            improved = val_acc is None or val_acc > state.best_val_acc
            state.W, state.velocity, state.average = candidate.W, candidate.velocity, \
                candidate.average
            state.epoch = epoch + 1
            state.history.append({
                "epoch": epoch + 1, "lr": lr,
                "train_loss": loss_sum / len(order), "train_acc": correct / len(order),
                "val_loss": val_loss, "val_acc": val_acc,
                "seconds": time.perf_counter() - started,
            })
            if improved:
                state.best_W, state.best_epoch = model, epoch + 1
                state.best_val_acc = -1.0 if val_acc is None else val_acc
                state.epochs_since_best = 0
            else:
                state.epochs_since_best += 1

            # -- report, then stop early when validation stopped improving
            if on_epoch is not None:
                on_epoch(state)
            epochs.set_postfix(loss=f"{loss_sum / len(order):.3f}",
                               val_acc="-" if val_acc is None else f"{val_acc:.3f}")
            if patience is not None and state.epochs_since_best >= patience:
                stopped_early = True
                break
    except softmax.NonFiniteError as exc:
        # initial weights past the features' own scale can overflow the scores before any step
        if state.epoch == 0 and config.model.init_std > 1:
            raise TrainingDiverged(
                f"training diverged in epoch 1 ({exc}) from initial weights of model.init_std "
                f"= {config.model.init_std:g}: lower model.init_std (default 1e-4), or the "
                f"learning rate optim.lr = {optim.lr:g} or loss.reg = {loss_cfg.reg:g}") from None
        raise TrainingDiverged(
            f"training diverged in epoch {state.epoch + 1} ({exc}) with optim.lr = "
            f"{optim.lr:g} and loss.reg = {loss_cfg.reg:g}: lower the learning rate (e.g. "
            f"--set optim.lr={optim.lr / 10:g}) or the L2 strength loss.reg") from None
    finally:
        epochs.close()
    # patience that runs out in the last epoch stopped nothing: every epoch was trained
    return FitResult(state, stopped_early and state.epoch < optim.epochs)


def iteration_row(epoch: int, loss: float, grad_max: float, seconds: float) -> dict:
    """The history row of L-BFGS iteration `epoch` (counted from 1): no val metrics."""
    return {"epoch": epoch, "lr": None, "train_loss": loss, "train_acc": None,
            "val_loss": None, "val_acc": None, "grad_max": grad_max, "seconds": seconds}


def end_history(history: list[dict], result, val_loss: float | None, val_acc: float | None,
                seconds: float) -> None:
    """Close an L-BFGS history (iteration_row rows) with the solution's row: its val metrics
    and the solver's numbers, in place of the last iteration's row, so that the history
    holds one row per iteration (result.iterations in all), as a checkpoint requires."""
    if history and history[-1]["epoch"] == result.iterations:
        history.pop()  # the last iteration's row, written again with the val metrics
    history.append({**iteration_row(result.iterations, result.loss, result.grad_max, seconds),
                    "val_loss": val_loss, "val_acc": val_acc, **result.numbers()})


def fit_full_batch(config: Config, rows: np.ndarray, labels: np.ndarray, split: Split,
                   pre: Preprocessor, n_classes: int, *, state: TrainState | None = None,
                   sample_weight: np.ndarray | None = None,
                   on_epoch: Callable[[TrainState], None] | None = None,
                   progress: bool = False, engine: Engine | None = None,
                   warn: Callable[[str], None] | None = None) -> FitResult:
    """fit() for optim.solver lbfgs: training.lbfgs.fit_lbfgs from state.W (zeros for a new
    state: initial_state), the solution validated once. optim.max_iter bounds the solve's
    iterations in all, those of the state it continues (state.epoch) included.

    The state's history gets one row per L-BFGS iteration (epoch: the iteration, train_loss
    and grad_max, no val metrics) and a last row with the solution's val metrics; W, average
    and best_W are the solution (float32), best_epoch and epoch the iterations so far.
    on_epoch(state) is called once, at the end, or on KeyboardInterrupt (Ctrl-C, SIGTERM)
    after an iteration: the state then holds the last accepted iterate as W and average (not
    validated: best_W and best_epoch unchanged), epoch the iterations so far, and the
    interrupt is raised again. Raises TrainingDiverged when the objective stops being finite.
    """
    from .lbfgs import fit_lbfgs

    engine = (get_engine(config.engine, config.device, n_classes, solver="lbfgs")
              if engine is None else engine)
    state = state or initial_state(config, pre.n_features, n_classes)
    first = state.epoch
    started = time.perf_counter()
    bar = tqdm(desc="L-BFGS", disable=not progress, unit="it")

    accepted: list[np.ndarray] = []  # the last iterate L-BFGS accepted

    def on_iteration(iteration: int, loss: float, grad_max: float, W: np.ndarray) -> None:
        state.history.append(iteration_row(first + iteration, loss, grad_max,
                                           time.perf_counter() - started))
        accepted[:] = [W]
        bar.update()
        bar.set_postfix(loss=f"{loss:.5f}", grad=f"{grad_max:.2e}")

    try:
        result = fit_lbfgs(config, rows, labels, split, pre, state.W.astype(np.float64),
                           sample_weight=sample_weight, engine=engine,
                           on_iteration=on_iteration, warn=warn, done=first)
    except KeyboardInterrupt:
        if accepted:  # kept as SGD keeps its last completed epoch; resuming warm-starts
            state.W = accepted[0].astype(np.float32)
            state.average = state.W.copy()
            state.epoch = state.history[-1]["epoch"]
            if on_epoch is not None:
                on_epoch(state)
        raise
    except softmax.NonFiniteError as exc:
        raise TrainingDiverged(
            f"L-BFGS diverged ({exc}) with loss.reg = {config.loss.reg:g}: raise loss.reg or "
            "check the features for huge values") from None
    finally:
        bar.close()
    W = result.W.astype(np.float32)
    val_rows = split.val_rows
    val_loss, val_acc = (validation_metrics(engine, W, pre, rows[val_rows], labels[val_rows],
                                            config.loss.clip)
                         if len(val_rows) else (None, None))
    state.W, state.velocity, state.average, state.best_W = W, np.zeros_like(W), W.copy(), W
    state.epoch = state.best_epoch = result.iterations  # the solve's in all
    state.best_val_acc = -1.0 if val_acc is None else val_acc
    state.epochs_since_best = 0
    end_history(state.history, result, val_loss, val_acc, time.perf_counter() - started)
    if on_epoch is not None:
        on_epoch(state)
    return FitResult(state, False, result.summary())
