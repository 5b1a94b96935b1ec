"""The pictures of a run or a sweep, end to end: what softmax-plot and the end of a run call.

A run folder or a checkpoint .npz gives, by `plot_run`, curves.png, templates.png,
confusion.png and mistakes.png (plots/evaluation.py computes what they show, from the files
and the data set on disk); a run that just finished gives the same from memory, by
`draw_training_run`. A sweep folder gives, by `plot_sweep`, sweep.png and trials.png from its
trials.csv. plots/drawing.py draws them all (matplotlib only).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError, SoftmaxClsError
from ..training.runs import RunResult
from .drawing import INSTALL_HINT, draw_run_pictures, draw_sweep, draw_trials, require_matplotlib
from .evaluation import pictures_of_training, saved_run_pictures

TRIAL_COLUMNS = ("number", "state", "best_val_acc", "best_epoch", "epochs", "seconds")
LOG_DECADES = 2.0  # a numeric choice/grid spanning at least this many decades gets a log axis


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
        grid of positive values that spans LOG_DECADES decades or more."""
        spec = self.specs.get(key, {})
        if not self.is_numeric(key):
            return False
        if "log_uniform" in spec or spec.get("log") is True:
            return True
        listed = spec.get("choice", spec.get("grid"))
        if isinstance(listed, list) and listed and all(_is_number(v) for v in listed):
            low, high = min(listed), max(listed)
            return low > 0 and math.log10(high / low) >= LOG_DECADES
        return False

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


def is_run_folder(path: str | os.PathLike) -> bool:
    """A training run folder: it holds best.npz."""
    path = Path(path)
    return path.is_dir() and (path / "best.npz").is_file()


def sweep_table(folder: str | os.PathLike) -> SweepTable:
    """Read a sweep folder's trials.csv, sweep.yaml (its `space`) and summary.json (its
    `param_importances`, when there); any problem is a DataError naming the file."""
    from ..config import parse_yaml

    folder = Path(folder)
    space: dict = {}
    sweep_file = folder / "sweep.yaml"
    if sweep_file.is_file():
        raw = parse_yaml(_read_text(sweep_file), str(sweep_file))
        space = raw.get("space") if isinstance(raw, dict) else None
        if not isinstance(space, dict):
            raise DataError(f"{sweep_file}: no `space:` mapping of searched keys")
    rows, columns = _read_trials(folder / "trials.csv")
    searched = [c for c in columns if c not in TRIAL_COLUMNS]
    keys = [k for k in space if k in searched] + [k for k in searched if k not in space]
    importances = _importances(folder / "summary.json")
    ranked = sorted(keys, key=lambda k: (-importances.get(k, -math.inf), keys.index(k)))
    rows.sort(key=lambda row: _int(row["number"], folder / "trials.csv"))
    specs = {k: space[k] if isinstance(space.get(k), dict) else {} for k in keys}
    return SweepTable(
        keys=tuple(ranked), specs=specs,
        number=np.array([_int(r["number"], folder / "trials.csv") for r in rows], dtype=np.int64),
        state=np.array([r["state"].strip() for r in rows], dtype=str),
        values={k: _column(rows, k, specs[k]) for k in keys},
        val_acc=_floats([r["best_val_acc"] for r in rows]), importances=importances)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None


def _read_trials(path: Path) -> tuple[list[dict], list[str]]:
    if not path.is_file():
        raise DataError(f"{path}: not found (the sweep has no trials yet?)")
    reader = csv.DictReader(_read_text(path).splitlines())
    columns = list(reader.fieldnames or [])
    missing = [c for c in ("number", "state", "best_val_acc") if c not in columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    rows = [row for row in reader if any((v or "").strip() for v in row.values())]
    for row in rows:
        if None in row or any(v is None for v in row.values()):
            raise DataError(f"{path}: a row has {len(row)} cells, the header {len(columns)}")
    return rows, columns


def _int(text: str, path: Path) -> int:
    try:
        return int(text)
    except ValueError:
        raise DataError(f"{path}: trial number {text!r} is not an integer") from None


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
        summary = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    found = summary.get("param_importances") if isinstance(summary, dict) else None
    if not isinstance(found, dict):
        return {}
    return {str(k): float(v) for k, v in found.items() if _is_number(v)}



def default_out_dir(path: str | os.PathLike) -> Path:
    """Where pictures go without --out: a run or sweep folder's `plots` folder; for a
    checkpoint file, `plots-<its name>` beside it."""
    path = Path(path)
    return path / "plots" if path.is_dir() else path.parent / f"plots-{path.stem}"


def plot_run(path: str | os.PathLike, out_dir: str | os.PathLike | None = None,
             split: str = "test", root: str | os.PathLike | None = None,
             progress: bool = False) -> list[Path]:
    """Write curves.png, templates.png, confusion.png and mistakes.png for a run folder or a
    checkpoint file into out_dir (default: default_out_dir(path)); returns their paths."""
    require_matplotlib()
    pictures = saved_run_pictures(path, split, root, progress)
    return draw_run_pictures(pictures, default_out_dir(path) if out_dir is None else out_dir)


def draw_training_run(result: RunResult) -> list[Path]:
    """Write the pictures of a run that just finished into RUN/plots, from what the run holds
    in memory (nothing is read back from its folder, no split is scored again)."""
    require_matplotlib()
    return draw_run_pictures(pictures_of_training(result), default_out_dir(result.out_dir))


def plot_sweep(folder: str | os.PathLike, out_dir: str | os.PathLike | None = None
               ) -> list[Path]:
    """Write sweep.png and trials.png for a sweep folder into out_dir (default:
    default_out_dir(folder)); returns their paths."""
    require_matplotlib()
    table = sweep_table(folder)
    out_dir = default_out_dir(folder) if out_dir is None else Path(out_dir)
    return [draw_sweep(table, out_dir / "sweep.png"), draw_trials(table, out_dir / "trials.png")]


def plot_path(path: str | os.PathLike, out_dir: str | os.PathLike | None = None,
              split: str = "test", root: str | os.PathLike | None = None,
              progress: bool = False) -> list[Path]:
    """plot_sweep for a sweep folder, plot_run for anything else (a run folder, a checkpoint)."""
    if is_sweep_folder(path):
        return plot_sweep(path, out_dir)
    return plot_run(path, out_dir, split, root, progress)


def matplotlib_installed() -> bool:
    """Whether matplotlib is installed, found without importing it: a training run asks at
    its start and imports it (about 30 MB) only to draw, after the training rows are freed."""
    try:
        return importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):  # a broken entry in sys.modules
        return False


def plots_wanted(setting: bool | None) -> bool:
    """output.plots: true draws (and needs matplotlib: one SoftmaxClsError line without it),
    false never, null when matplotlib is installed."""
    if setting is None:
        return matplotlib_installed()
    if setting and not matplotlib_installed():
        raise SoftmaxClsError(INSTALL_HINT)
    return setting
