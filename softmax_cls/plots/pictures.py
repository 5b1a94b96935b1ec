"""The pictures of a run or a sweep, end to end: what softmax-plot and the end of a run call.

A run folder or a checkpoint .npz gives, by `plot_run`, curves.png, templates.png,
confusion.png and mistakes.png (plots/evaluation.py computes what they show, from the files
and the data set on disk); a run that just finished gives the same from memory, by
`draw_training_run`. A sweep folder gives, by `plot_sweep`, sweep.png and trials.png from its
trials.csv. plots/drawing.py draws them all (matplotlib only).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from ..errors import ConfigError, DataError, SoftmaxClsError
from ..sweep.results import SweepTable, is_sweep_folder, sweep_table  # noqa: F401
from ..training.runs import RunResult
from .drawing import INSTALL_HINT, draw_run_pictures, draw_sweep, draw_trials, require_matplotlib
from .evaluation import pictures_of_training, saved_run_pictures


def is_run_folder(path: str | os.PathLike) -> bool:
    """A training run folder: it holds best.npz."""
    path = Path(path)
    return path.is_dir() and (path / "best.npz").is_file()




def default_out_dir(path: str | os.PathLike, run_folder: bool = False,
                    hint: str = "choose the folder with --out") -> Path:
    """Where pictures go without --out: a run or sweep folder's `plots` folder; for a
    checkpoint file, `plots-<its name>` beside it. That folder may be shared: a symbolic link
    there raises DataError rather than leading the pictures into the folder it names, and so
    does anything there that is not a folder (a file the drawing would fail on). `run_folder`:
    `path` is a run or sweep folder, perhaps not made yet (checked before training), never a
    checkpoint. `hint`: the way out the error names besides removing it, for the command
    (softmax-train and softmax-sweep, whose --out moves the whole folder: --no-plots)."""
    path = Path(path)
    out_dir = (path / "plots" if run_folder or path.is_dir()
               else path.parent / f"plots-{path.stem}")
    if out_dir.is_symlink():
        raise DataError(f"{out_dir} is a symbolic link; refusing to draw into the folder it "
                        f"names (remove it, or {hint})")
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir} is not a folder; the pictures go in a folder of that name "
                        f"(remove it, or {hint})")
    return out_dir


NO_PLOTS_HINT = "pass --no-plots"  # softmax-train and softmax-sweep: --out moves the whole folder


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
    return draw_run_pictures(pictures_of_training(result),
                             default_out_dir(result.out_dir, True, NO_PLOTS_HINT))


def plot_sweep(folder: str | os.PathLike, out_dir: str | os.PathLike | None = None
               ) -> list[Path]:
    """Write sweep.png and trials.png for a sweep folder into out_dir (default:
    default_out_dir(folder)); returns their paths."""
    require_matplotlib()
    table = sweep_table(folder)
    out_dir = default_out_dir(folder) if out_dir is None else Path(out_dir)
    return [draw_sweep(table, out_dir / "sweep.png"), draw_trials(table, out_dir / "trials.png")]


def plot_path(path: str | os.PathLike, out_dir: str | os.PathLike | None = None,
              split: str | None = None, root: str | os.PathLike | None = None,
              progress: bool = False) -> list[Path]:
    """plot_sweep for a sweep folder, plot_run for anything else (a run folder, a checkpoint;
    `split` None: test). `root` or `split` on a sweep folder, whose pictures read no data and
    show no split, is a ConfigError (not ignored)."""
    if is_sweep_folder(path):
        for option, value in (("--root", root), ("--split", split)):
            if value is not None:
                raise ConfigError(f"{option}: a sweep folder's pictures come from its "
                                  f"trials.csv, with no data and no split; {option} is for a "
                                  "run folder or a checkpoint")
        return plot_sweep(path, out_dir)
    return plot_run(path, out_dir, split or "test", root, progress)


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
