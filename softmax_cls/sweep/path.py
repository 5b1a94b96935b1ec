"""A regularisation path: a grid sweep over loss.reg alone with optim.solver lbfgs, run as one
warm-started sequence of L-BFGS solves.

softmax-sweep takes this route (run_sweep) when the sweep file's sampler is grid, its space
is only loss.reg and the base config's optim.solver is lbfgs. The reg values are solved from
the largest to the smallest, each from the previous solution (a larger reg's optimum is near
the next one's, so each solve takes a few iterations), in the driver's process: one split,
one set of statistics and one second moment of the rows for the preconditioner (reg changes
none of them), every point scored on the validation split.
Each solved point is a complete trial of the study, so trials.csv, best.npz, best.yaml,
summary.json and sweep.png (val accuracy against reg) are the files of any sweep; a resumed
path solves only the points not yet in the study.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..config import config_from_dict
from ..engines import get_engine
from ..training.fit import TrainState, end_history, iteration_row, validation_metrics
from ..training.lbfgs import fit_lbfgs, precondition_moment
from .results import save_trial_checkpoint, write_trials_csv
from .spec import SweepSpec, trial_raw_config
from .study import state_name
from .worker import TrialOutcome, open_cache

REG_KEY = "loss.reg"


def is_reg_path(spec: SweepSpec) -> bool:
    """Whether the sweep is a regularisation path: a grid over loss.reg only, solver lbfgs."""
    return (spec.sampler == "grid" and list(spec.space) == [REG_KEY]
            and spec.base_config.optim.solver == "lbfgs")


def path_order(values) -> list[float]:
    """The reg values in the order a path solves them: largest first, each once."""
    return sorted({float(v) for v in values}, reverse=True)


def run_path(study, spec: SweepSpec, folder: Path, meta: dict, progress: bool = True,
             warn=None) -> list[dict]:
    """Solve the path's points not yet complete in `study`, largest reg first, each from the
    previous solution (zeros for the first); add each as a complete trial (value: val
    accuracy), keep best.npz the best so far, rewrite trials.csv after each point. Returns
    the path's rows {reg, val_acc, val_loss, iterations, grad_max, converged, seconds} in
    solving order and prints them as a table when `progress`."""
    import optuna

    from ..math.preprocess import split_and_fit

    data = open_cache(folder / "cache")
    grid = spec.space[REG_KEY]["grid"]
    distribution = optuna.distributions.CategoricalDistribution(grid)
    done = {float(t.params[REG_KEY]) for t in study.get_trials(deepcopy=False)
            if state_name(t) == "complete" and REG_KEY in t.params}
    best_value = max((t.value for t in study.get_trials(deepcopy=False)
                      if state_name(t) == "complete"), default=-1.0)
    first = config_from_dict(trial_raw_config(spec, {REG_KEY: grid[0]}))
    split, pre = split_and_fit(first, data.rows, data.labels)
    engine = get_engine(first.engine, first.device, len(data.class_names), solver="lbfgs")
    W = np.zeros((len(data.class_names), pre.n_features))
    moment = precondition_moment(first, data.rows, split, pre)  # reg changes only H0
    rows: list[dict] = []
    for reg in path_order(grid):
        if reg in done:
            continue
        value = next(v for v in grid if float(v) == reg)  # as the grid spells it
        raw = trial_raw_config(spec, {REG_KEY: value})
        config = config_from_dict(raw)
        started = time.perf_counter()
        history: list[dict] = []

        def on_iteration(iteration, loss, grad_max, _W, history=history, started=started):
            history.append(iteration_row(iteration, loss, grad_max,
                                         time.perf_counter() - started))

        # The solve's warnings wait for the trial this point becomes: its number is known once
        # the trial is stored (another command sharing the study may add one meanwhile).
        warnings: list[str] = []
        result = fit_lbfgs(config, data.rows, data.labels, split, pre, W, engine=engine,
                           moment=moment, on_iteration=on_iteration, warn=warnings.append)
        W = result.W
        model = W.astype(np.float32)
        val_loss, val_acc = validation_metrics(engine, model, pre, data.rows[split.val_rows],
                                               data.labels[split.val_rows], config.loss.clip)
        seconds = time.perf_counter() - started
        # best.npz's history, one row per iteration: a checkpoint without it does not load,
        # and finish_sweep then solved the best point again from zeros
        end_history(history, result, val_loss, val_acc, seconds)
        row = {"reg": reg, "val_acc": val_acc, "val_loss": val_loss,
               "iterations": result.iterations, "grad_max": result.grad_max,
               "converged": result.converged, "seconds": seconds}
        rows.append(row)
        number = add_trial(study, optuna.trial.create_trial(
            params={REG_KEY: value}, distributions={REG_KEY: distribution}, value=val_acc,
            user_attrs={"best_val_acc": val_acc, "best_epoch": result.iterations,
                        "epochs": result.iterations, "seconds": round(seconds, 3),
                        **result.summary()}))
        for line in warnings if warn is not None else ():
            warn(f"trial {number}: {line}")
        if val_acc > best_value:
            best_value = val_acc
            state = TrainState(model, np.zeros_like(model), model.copy(), model,
                               epoch=result.iterations, best_epoch=result.iterations,
                               best_val_acc=val_acc, history=history)
            outcome = TrialOutcome(number, "complete",
                                   train_state=state, pre=pre, val_rows=split.val_rows)
            save_trial_checkpoint(folder / "best.npz", outcome, raw, meta)
        write_trials_csv(folder, study, spec)
        if progress:
            print(path_table([row], header=not rows[:-1]), flush=True)
    return rows


def add_trial(study, trial) -> int:
    """Study.add_trial, returning the number the storage gave the trial (the count of trials
    before it is not that number when another process adds one at the same time)."""
    storage = study._storage
    return storage.get_trial_number_from_id(
        storage.create_new_trial(study._study_id, template_trial=trial))


def path_table(rows: list[dict], header: bool = True) -> str:
    """The path's rows as a fixed-width text table (a header line first when `header`)."""
    lines = [f"{'loss.reg':>12} {'val_acc':>8} {'val_loss':>9} {'iters':>6} "
             f"{'grad_max':>9} {'seconds':>8}"] if header else []
    for row in rows:
        lines.append(f"{row['reg']:>12.4g} {row['val_acc']:>8.4f} {row['val_loss']:>9.4f} "
                     f"{row['iterations']:>6d} {row['grad_max']:>9.2e} {row['seconds']:>8.2f}"
                     f"{'' if row['converged'] else '  (not converged)'}")
    return "\n".join(lines)
