"""Small data and a command runner for sweep tests.

`sweep_data()` is the conftest's separable images with 30% of the labels redrawn, so the val
accuracy depends on the hyper-parameters (a tiny learning rate stays near chance) and the
pruner has something to prune. `write_runner(folder)` writes a script that serves this data
to softmax_cls.data.cifar.load_config_data and runs the softmax-sweep command's main: the console
script's own code, on data that needs no download.
"""

from __future__ import annotations

import csv
import dataclasses
import sys
from pathlib import Path

import numpy as np
from conftest import separable_data

TESTS = Path(__file__).resolve().parent


def sweep_data(n_train: int = 400, flip: float = 0.3, seed: int = 0):
    data = separable_data(n_train=n_train, n_test=100, classes=4, seed=seed, noise=120)
    rng = np.random.default_rng(seed + 1)
    labels = data.train_labels.copy()
    redraw = rng.random(len(labels)) < flip
    labels[redraw] = rng.integers(0, 4, redraw.sum())
    return dataclasses.replace(data, train_labels=labels)


RUNNER = """\
import sys
sys.path.insert(0, {tests!r})
import softmax_cls.data.cifar
from sweep_util import sweep_data

softmax_cls.data.cifar.load_config_data = lambda section, progress=True, **kw: sweep_data({n_train})

if __name__ == "__main__":
    from softmax_cls.cli import sweep_command
    sweep_command.main(sys.argv[1:], prog_name="softmax-sweep")
"""


def write_runner(folder: Path, n_train: int = 400) -> list[str]:
    """The command line prefix [python, script] of a softmax-sweep on sweep_data()."""
    script = folder / "run_sweep.py"
    script.write_text(RUNNER.format(tests=str(TESTS), n_train=n_train))
    return [sys.executable, str(script)]


def read_trials(folder: Path) -> list[dict]:
    with open(folder / "trials.csv", newline="") as handle:
        return list(csv.DictReader(handle))
