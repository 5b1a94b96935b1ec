"""The sweep folder's result files: trials.csv (written and read), best.npz, best.yaml and
summary.json.

trials.csv: one row per trial that has started, in trial-number order: TRIAL_COLUMNS (number,
state), then each searched key of the sweep file's `space` (empty where the trial has no value
yet), then RESULT_COLUMNS (best_val_acc, best_epoch, epochs, seconds). state is complete,
pruned, failed, interrupted (failed by a killed sweep and re-queued: not counted) or running.
Floats are written with repr, so they read back exactly. The reader (sweep_table, for
softmax-plot and the sweep's own pictures) takes files of at most MAX_TRIALS_CSV_BYTES with
cells of at most MAX_CELL_CHARS characters; anything else is one DataError line.

summary.json: the sweep file, study name, budget and counts of each state; then the best
trial's number, parameters, val accuracy and epoch, its test accuracy and loss (the one read
of the test split), the paths of best.npz and best.yaml and optuna's parameter importances.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import MAX_CONFIG_BYTES, Config, config_from_dict, config_to_yaml, parse_yaml
from ..errors import DataError, SoftmaxClsError
from ..fsutil import atomic_write, read_text_file, require_file
from ..text import counted as counted_words
from ..text import print_warning
from .spec import SweepSpec, set_dotted, trial_raw_config
from .study import counted, state_name, stored_study

if TYPE_CHECKING:
    from .worker import TrialOutcome

TRIAL_COLUMNS = ("number", "state")
RESULT_COLUMNS = ("best_val_acc", "best_epoch", "epochs", "seconds")
MAX_TRIALS_CSV_BYTES = 16 << 20  # a 10,000-trial sweep over 20 keys writes about 3 MB
MAX_CELL_CHARS = 1000
MAX_JSON_BYTES = 1 << 20
LOG_DECADES = 2.0  # a numeric choice/grid spanning at least this many decades gets a log axis
MAX_TRIAL_NUMBER = 2**63 - 1  # optuna's numbers are int64


@dataclass
class SweepResult:
    """What run_sweep returns: the folder, the best trial (None: none completed), its test
    metrics (None without a test split), the count of each trial state and summary.json."""

    folder: Path
    best_number: int | None
    best_val_acc: float | None
    test_acc: float | None
    test_loss: float | None
    counts: dict[str, int]
    summary: dict
    finished: str | None = None  # a finished sweep run again: its one line (finished_line)


# ---------------------------------------------------------------------------------------------
# trials.csv


def trial_params_cell(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def write_trials_csv(folder: Path, study, spec: SweepSpec) -> Path:
    """trials.csv: one row per trial (not waiting ones): number, state, each searched key,
    best_val_acc, best_epoch, epochs, seconds."""
    keys = list(spec.space)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*TRIAL_COLUMNS, *keys, *RESULT_COLUMNS])
    for trial in study.get_trials(deepcopy=False):
        state = state_name(trial)
        if state == "waiting":
            continue
        attrs = trial.user_attrs
        best = attrs.get("best_val_acc")
        if best is None and trial.intermediate_values:
            best = max(trial.intermediate_values.values())
        writer.writerow([trial.number, state,
                         *(trial_params_cell(trial.params[k]) if k in trial.params else ""
                           for k in keys),
                         "" if best is None else repr(float(best)),
                         attrs.get("best_epoch", ""), attrs.get("epochs", ""),
                         attrs.get("seconds", "")])
    with atomic_write(folder / "trials.csv", "w") as handle:
        handle.write(buffer.getvalue())
    return folder / "trials.csv"


@dataclass
class SweepTable:
    """The trials of a sweep folder, sorted by trial number.

    keys: the searched config keys, most important first when importances are known, else in
    the order of sweep.yaml's space; number (T,) int64; state (T,) str; values: key -> (T,)
    float64 for a numeric key (NaN where empty) or (T,) str for a categorical one; val_acc
    (T,) float64 (NaN where empty); importances: key -> importance from summary.json.
    """

    keys: tuple[str, ...]
    specs: dict[str, dict]
    number: np.ndarray
    state: np.ndarray
    values: dict[str, np.ndarray]
    val_acc: np.ndarray
    importances: dict[str, float] = field(default_factory=dict)

    @property
    def axes(self) -> tuple[str, ...]:
        """The (at most) two keys sweep.png shows: the two most important."""
        return self.keys[:2]

    def is_numeric(self, key: str) -> bool:
        return self.values[key].dtype == np.float64

    def is_log(self, key: str) -> bool:
        """True for a log_uniform key (or a spec with `log: true`), and for a numeric choice or
        grid whose positive values span LOG_DECADES decades or more, with 0 as the only other
        value allowed (a regularisation path's unpenalised end: see zero_listed)."""
        spec = self.specs.get(key, {})
        if not self.is_numeric(key):
            return False
        if "log_uniform" in spec or spec.get("log") is True:
            return True
        listed = spec.get("choice", spec.get("grid"))
        if isinstance(listed, list) and listed and all(_is_number(v) for v in listed):
            positive = [v for v in listed if v > 0]
            return (len(positive) >= 2 and all(v >= 0 for v in listed)
                    and math.log10(max(positive) / min(positive)) >= LOG_DECADES)
        return False

    def zero_listed(self, key: str) -> float | None:
        """For a log key whose choice or grid lists 0: its smallest positive value (where a
        symlog axis turns linear), else None."""
        listed = self.specs.get(key, {}).get("choice", self.specs.get(key, {}).get("grid"))
        if not (self.is_log(key) and isinstance(listed, list) and 0 in listed):
            return None
        return float(min(v for v in listed if v > 0))

    def categories(self, key: str) -> list[str]:
        """The values of a categorical key in the order sweep.yaml lists them (then any others
        in order of appearance)."""
        listed = self.specs.get(key, {}).get("choice", self.specs.get(key, {}).get("grid", []))
        order = [str(v) for v in listed] if isinstance(listed, list) else []
        for value in self.values[key]:
            if value and value not in order:
                order.append(value)
        return order

    @property
    def best_so_far(self) -> np.ndarray:
        """(T,) float64: the highest val accuracy among complete trials up to each trial (in
        number order), NaN before the first complete one. Pruned trials stopped early, so their
        accuracy is not a finished result and does not count, as in optuna's best trial."""
        done = np.where((self.state == "complete") & np.isfinite(self.val_acc), self.val_acc,
                        -np.inf)
        best = np.maximum.accumulate(done) if len(done) else done
        return np.where(np.isfinite(best), best, np.nan)

    @property
    def best_trial(self) -> int | None:
        """Position (not number) of the first complete trial with the top val accuracy."""
        best = self.best_so_far
        if not np.isfinite(best).any():
            return None
        done = np.where((self.state == "complete") & np.isfinite(self.val_acc), self.val_acc,
                        -np.inf)
        return int(np.argmax(done))


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_sweep_folder(path: str | os.PathLike) -> bool:
    """A folder holding a sweep: sweep.yaml or trials.csv."""
    path = Path(path)
    return path.is_dir() and ((path / "sweep.yaml").is_file() or (path / "trials.csv").is_file())


def sweep_table(folder: str | os.PathLike) -> SweepTable:
    """Read a sweep folder's trials.csv, sweep.yaml (its `space`) and summary.json (its
    `param_importances`, when there); any problem is a DataError naming the file."""
    folder = Path(folder)
    space: dict = {}
    sweep_file = folder / "sweep.yaml"
    if sweep_file.is_file():
        raw = parse_yaml(read_text_file(sweep_file, MAX_CONFIG_BYTES), str(sweep_file))
        space = raw.get("space") if isinstance(raw, dict) else None
        if not isinstance(space, dict):
            raise DataError(f"{sweep_file}: no `space:` mapping of searched keys")
    rows, columns = _read_trials(folder / "trials.csv")
    searched = [c for c in columns if c not in (*TRIAL_COLUMNS, *RESULT_COLUMNS)]
    keys = [k for k in space if k in searched] + [k for k in searched if k not in space]
    importances = _importances(folder / "summary.json")
    ranked = sorted(keys, key=lambda k: (-importances.get(k, -math.inf), keys.index(k)))
    numbers = [_trial_number(row["number"], folder / "trials.csv") for row in rows]
    order = sorted(range(len(rows)), key=numbers.__getitem__)
    rows = [rows[i] for i in order]
    specs = {k: space[k] if isinstance(space.get(k), dict) else {} for k in keys}
    return SweepTable(
        keys=tuple(ranked), specs=specs,
        number=np.array([numbers[i] for i in order], dtype=np.int64),
        state=np.array([r["state"].strip() for r in rows], dtype=str),
        values={k: _column(rows, k, specs[k]) for k in keys},
        val_acc=_floats([r["best_val_acc"] for r in rows]), importances=importances)


def _read_trials(path: Path) -> tuple[list[dict], list[str]]:
    """The rows of trials.csv as {column: cell} and its columns; DataError for a file over
    MAX_TRIALS_CSV_BYTES, a cell over MAX_CELL_CHARS, a missing column or a ragged row."""
    require_file(path, f"{path}: not found (the sweep has no trials yet?)", str(path))
    reader = csv.DictReader(io.StringIO(read_text_file(path, MAX_TRIALS_CSV_BYTES), newline=""))
    try:
        columns = list(reader.fieldnames or [])
        rows = [row for row in reader if any((v or "").strip() for v in row.values())]
    except csv.Error as exc:
        raise DataError(f"{path}: line {reader.line_num}: not valid CSV ({exc})") from None
    missing = [c for c in (*TRIAL_COLUMNS, "best_val_acc") if c not in columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    for line, row in enumerate(rows, 2):
        if None in row or any(v is None for v in row.values()):
            raise DataError(f"{path}: a row has {len(row)} cells, the header {len(columns)}")
        longest = max(len(v) for v in row.values())
        if longest > MAX_CELL_CHARS:
            raise DataError(f"{path}: row {line}: a cell of {longest} characters; at most "
                            f"{MAX_CELL_CHARS}")
    return rows, columns


def _trial_number(text: str, path: Path) -> int:
    """A trial number: an integer from 0 to MAX_TRIAL_NUMBER."""
    try:
        number = int(text)
    except ValueError:
        raise DataError(f"{path}: trial number {text!r} is not an integer") from None
    if not 0 <= number <= MAX_TRIAL_NUMBER:
        raise DataError(f"{path}: trial number {text} is out of range (0 to "
                        f"{MAX_TRIAL_NUMBER})")
    return number


def _floats(cells: list[str]) -> np.ndarray:
    """(T,) float64 of csv cells, NaN where empty or not a number."""
    out = np.full(len(cells), np.nan)
    for i, cell in enumerate(cells):
        try:
            out[i] = float(cell)
        except (TypeError, ValueError):
            pass
    return out


def _column(rows: list[dict], key: str, spec: dict) -> np.ndarray:
    """A searched key's column: float64 when numeric (its spec says so, or every non-empty
    cell is a number), else str."""
    cells = [(row[key] or "").strip() for row in rows]
    listed = spec.get("choice", spec.get("grid"))
    categorical = isinstance(listed, list) and not all(_is_number(v) for v in listed)
    if not categorical:
        numbers = _floats(cells)
        if all(np.isfinite(n) or not c for n, c in zip(numbers, cells, strict=True)):
            return numbers
    return np.array(cells, dtype=str)


def _importances(path: Path) -> dict[str, float]:
    if not path.is_file():
        return {}
    try:
        summary = json.loads(read_text_file(path, MAX_JSON_BYTES))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    found = summary.get("param_importances") if isinstance(summary, dict) else None
    if not isinstance(found, dict):
        return {}
    return {str(k): float(v) for k, v in found.items() if _is_number(v)}


# ---------------------------------------------------------------------------------------------
# best.npz, best.yaml, summary.json


def save_trial_checkpoint(path: Path, outcome: TrialOutcome, raw_config: dict, meta: dict
                          ) -> None:
    """A complete trial's checkpoint, in the format of a run's best.npz (its model: the
    weights of the trial's best val epoch)."""
    from ..training.checkpoint import save_checkpoint

    state = outcome.train_state
    save_checkpoint(path, state, outcome.pre, tuple(meta["class_names"]),
                    config_to_yaml(config_from_dict(raw_config)), meta["fingerprint"],
                    "complete", outcome.val_rows, W=state.best_W)


def _counts(trials) -> dict[str, int]:
    counts = dict.fromkeys(("complete", "pruned", "failed", "interrupted"), 0)
    for trial in trials:
        name = state_name(trial)
        counts[name] = counts.get(name, 0) + 1
    return counts


def best_checkpoint(folder: Path, study, spec: SweepSpec, meta: dict, best) -> Path:
    """best.npz of the best trial. It was written when that trial finished; when it holds
    another trial (a tie told in another order, a best.npz of a killed session), the best
    trial's config is trained again here, which gives the same weights (training is
    deterministic given the config)."""
    from ..math.preprocess import split_and_fit
    from ..training.checkpoint import load_checkpoint
    from ..training.fit import fit
    from .worker import TrialOutcome, open_cache

    path = folder / "best.npz"
    raw = trial_raw_config(spec, best.params)
    config_yaml = config_to_yaml(config_from_dict(raw))
    if path.is_file():
        with contextlib.suppress(SoftmaxClsError):
            found = load_checkpoint(path)
            if (found.config_yaml == config_yaml and found.state.best_val_acc == best.value
                    and found.fingerprint == meta["fingerprint"]):
                return path
    config = config_from_dict(raw)
    data = open_cache(folder / "cache")
    split, pre = split_and_fit(config, data.rows, data.labels)
    state = fit(config, data.rows, data.labels, split, pre, len(data.class_names),
                warn=lambda line: print_warning(f"trial {best.number}: {line}")).state
    outcome = TrialOutcome(best.number, "complete", train_state=state, pre=pre,
                           val_rows=split.val_rows)
    save_trial_checkpoint(path, outcome, raw, meta)
    return path


def param_importances(study, seed: int) -> dict[str, float] | None:
    """optuna's fANOVA importance of each searched key for val accuracy (seeded), or None
    when it cannot be computed (fewer than two complete trials, a constant objective...)."""
    import optuna

    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
        found = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except Exception:  # optuna raises several types when the trials cannot support it
        return None
    return {key: float(value) for key, value in found.items()}


def finished_line(folder: Path, spec: SweepSpec, storage: str, study_name: str
                  ) -> SweepResult | None:
    """A sweep run again with nothing to do: a SweepResult from its summary.json with the one
    line to print (`finished`), or None. Nothing to do: best.npz and best.yaml are there (a
    trial completed), the study holds this sweep, and summary.json records its end as the
    study holds it now: the same budget, the same count of trials in each state and the
    study's best trial (an edited summary.json is not taken at its word). (It is written
    after the budget's last trial; a trial running or waiting, or one more finished, changes
    the counts.) Finishing again would only read the test split again to score the
    same weights and rewrite the same files, as resuming a finished run would (softmax-train's
    finished_line). Reads only; otherwise (a budget raised or lowered, no trial complete, a
    file missing) the sweep goes on and finishes as before."""
    if not ((folder / "best.yaml").is_file() and (folder / "best.npz").is_file()):
        return None
    try:
        summary = json.loads(read_text_file(folder / "summary.json", MAX_JSON_BYTES))
    except (DataError, ValueError):  # missing or unreadable
        return None
    study = stored_study(storage, study_name)
    if study is None or study.user_attrs.get("sweep") != json.loads(
            json.dumps(spec.identity())):
        return None  # the refusal of another sweep comes after
    trials = study.get_trials(deepcopy=False)
    if (not isinstance(summary, dict) or summary.get("trials") != spec.trials
            or summary.get("counts") != _counts(trials)
            or not any(state_name(t) == "complete" for t in trials)):
        return None
    best = study.best_trial  # the study's, not summary.json's word (an edited file's)
    if summary.get("best_trial") != best.number:
        return None
    counts = ", ".join(f"{n} {state}" for state, n in summary["counts"].items() if n)
    more = ("each point of its grid has run" if spec.sampler == "grid"
            else "raise --trials to run more")
    line = (f"{folder} already finished: {counted_words(counted(trials), 'trial')} "
            f"({counts}), best trial {best.number}; {more}; nothing written")
    return SweepResult(folder, best.number, best.value, summary.get("test_acc"),
                       summary.get("test_loss"), summary["counts"], summary, finished=line)


def finish_sweep(folder: Path, study, spec: SweepSpec, meta: dict, progress: bool = True,
                 plots: bool | None = None) -> SweepResult:
    """After the last trial: best.npz, the one evaluation of its weights on the test split,
    best.yaml, summary.json and (when asked or auto) the pictures."""
    from ..data import cifar as data_module
    from ..engines import get_engine
    from ..training.checkpoint import load_checkpoint
    from ..training.fit import validation_metrics

    trials = study.get_trials(deepcopy=False)
    counts = _counts(trials)
    summary: dict[str, Any] = {"sweep": str(spec.path), "study": study.study_name,
                               "trials": spec.trials, "counts": counts}
    complete = [t for t in trials if state_name(t) == "complete"]
    if not complete:
        errors = [t.user_attrs["error"] for t in trials if t.user_attrs.get("error")]
        summary["best_trial"] = None
        _write_json(folder / "summary.json", summary)
        first = f" (first error: {errors[0]})" if errors else ""
        raise SoftmaxClsError(f"no trial completed: {counts['pruned']} pruned, "
                              f"{counts['failed']} failed{first}")
    best = study.best_trial
    raw = trial_raw_config(spec, best.params)
    checkpoint_path = best_checkpoint(folder, study, spec, meta, best)

    # The one read of the test split, after the last trial. An image folder's skipped files
    # were named when the sweep read it into its cache: not again here.
    config = config_from_dict(raw)
    loaded = data_module.load_config_data(config.data, progress, warn=False)
    if dict(loaded.fingerprint) != meta["fingerprint"]:
        raise DataError(f"the data changed during the sweep (its files' md5 differ from "
                        f"{folder / 'cache'}); delete that folder and run the sweep again")
    test_loss = test_acc = None
    if len(loaded.test_labels):
        checkpoint = load_checkpoint(checkpoint_path)
        engine = get_engine(config.engine, config.device, checkpoint.W.shape[0])
        test_loss, test_acc = validation_metrics(engine, checkpoint.W, checkpoint.preprocessor,
                                                 loaded.test_images, loaded.test_labels,
                                                 config.loss.clip)
    del loaded

    best_run = config_from_dict(set_dotted(raw, "output.dir", str(folder / "best-run")))
    with atomic_write(folder / "best.yaml", "w") as handle:
        handle.write(f"# The best trial ({best.number}, val accuracy {best.value:.4f}) of the "
                     f"sweep {spec.path}.\n# softmax-train --config {folder / 'best.yaml'} "
                     "trains it again into output.dir.\n")
        handle.write(config_to_yaml(best_run))
    summary.update({
        "best_trial": best.number, "best_params": best.params, "best_val_acc": best.value,
        "best_epoch": best.user_attrs.get("best_epoch"), "test_acc": test_acc,
        "test_loss": test_loss, "checkpoint": str(checkpoint_path),
        "config": str(folder / "best.yaml"),
        "param_importances": param_importances(study, spec.seed),
    })
    _write_json(folder / "summary.json", summary)
    if want_plots(plots, spec.base_config):  # a plots link made while the trials ran: as
        # the driver's check before them, the way out is --no-plots (--out moves the sweep)
        from ..plots.pictures import NO_PLOTS_HINT, default_out_dir, plot_sweep

        out_dir = default_out_dir(folder, run_folder=True, hint=NO_PLOTS_HINT)
        summary["plots"] = [str(p) for p in plot_sweep(folder, out_dir)]
    return SweepResult(folder, best.number, best.value, test_acc, test_loss, counts, summary)


def want_plots(plots: bool | None, base: Config) -> bool:
    """Whether the sweep draws its pictures: --plots/--no-plots, else the base config's
    output.plots, else whether matplotlib is installed."""
    if plots is not None:
        return plots
    if base.output.plots is not None:
        return base.output.plots
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _write_json(path: Path, payload: dict) -> None:
    with atomic_write(path, "w") as handle:
        json.dump(payload, handle, indent=2)
        handle.write("\n")
