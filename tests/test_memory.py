"""What a training run holds in memory, and when: checked with tracemalloc (which counts
numpy's arrays and Python's bytes exactly), not with timings or RSS thresholds.

While it trains, a run holds the training rows and small arrays: the test split waits on
disk, a batch file is never held whole on top of the rows, and the training rows are freed
before the test split is read for the final evaluation. matplotlib is imported only to draw,
after training.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np

from softmax_cls.data import batches
from softmax_cls.data import cifar as data_module
from softmax_cls.data.datasets import CIFAR10_BINARY, CIFAR10_CLASSES, IMAGE_BYTES
from softmax_cls.training import runs

TESTS = Path(__file__).resolve().parent
RECORD = 1 + IMAGE_BYTES  # a CIFAR-10 binary record: the label byte, then the pixels
SLACK = 4 << 20  # labels, indices, statistics, weight copies, Python objects: 1-3 MB


def write_binary_cifar10(folder: Path, counts: dict[str, int], n_test_files: int = 1):
    """A CIFAR-10 binary folder (the last n_test_files files are the test split) of images
    around one random template per class, so that a linear model separates them, and the
    spec that accepts it (its md5s). Returns (spec, images, labels): each file's arrays."""
    rng = np.random.default_rng(0)
    templates = rng.integers(0, 256, (10, IMAGE_BYTES))
    folder.mkdir(parents=True)
    images, labels, md5s = {}, {}, {}
    for name, count in counts.items():
        labels[name] = rng.integers(0, 10, count).astype(np.int64)
        noisy = templates[labels[name]] + rng.integers(-40, 41, (count, IMAGE_BYTES))
        images[name] = np.clip(noisy, 0, 255).astype(np.uint8)
        content = np.hstack([labels[name].astype(np.uint8)[:, None], images[name]]).tobytes()
        (folder / name).write_bytes(content)
        md5s[name] = hashlib.md5(content).hexdigest()
    (folder / "batches.meta.txt").write_text("\n".join(CIFAR10_CLASSES) + "\n")
    names = tuple(counts)
    spec = dataclasses.replace(
        CIFAR10_BINARY, files=md5s, counts=dict(counts),
        sizes={name: count * RECORD for name, count in counts.items()},
        train_files=names[:-n_test_files], test_files=names[-n_test_files:])
    return spec, images, labels


def test_a_run_holds_only_the_training_rows_while_it_trains(tmp_path, monkeypatch):
    counts = {"data_batch_1.bin": 5000, "data_batch_2.bin": 5000, "test_batch.bin": 5000}
    folder = tmp_path / CIFAR10_BINARY.folder
    spec, images, labels = write_binary_cifar10(folder, counts)
    train_bytes = 10000 * IMAGE_BYTES  # 30.7 MB; a whole batch file is 15.4 MB
    test_bytes = 5000 * IMAGE_BYTES
    monkeypatch.setattr(data_module, "get_spec", lambda dataset, fmt: spec)
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({
        "engine": "numpy", "data": {"root": str(folder), "download": False, "val_size": 200},
        "optim": {"epochs": 1, "batch_size": 500}, "output": {"plots": False}}))
    seen = {}

    def spy(name, function):
        def call(*args, **kwargs):
            seen[name] = tracemalloc.get_traced_memory()  # (now, peak so far)
            if name == "load":
                tracemalloc.reset_peak()
            result = function(*args, **kwargs)
            if name == "load":
                seen["loaded"] = tracemalloc.get_traced_memory()
            return result
        return call

    monkeypatch.setattr(runs, "load_config_data", spy("load", runs.load_config_data))
    monkeypatch.setattr(runs, "fit", spy("fit", runs.fit))
    monkeypatch.setattr(runs, "score_split", spy("test", runs.score_split))
    tracemalloc.start()
    try:
        result = runs.run_plan(runs.plan_run(str(config), out=str(tmp_path / "run")),
                               progress=False)
    finally:
        tracemalloc.stop()

    before = seen["load"][0]
    held, peak = (value - before for value in seen["loaded"])
    assert train_bytes <= held < train_bytes + SLACK  # the training rows, no test images
    # reads of 1024 records, never a whole 15 MB file, on top of the rows
    assert peak - held < batches.READ_RECORDS * RECORD + SLACK
    assert seen["fit"][0] - before < train_bytes + SLACK  # still no test images
    # the final evaluation: the test images, the training rows freed
    assert test_bytes <= seen["test"][0] - before < test_bytes + SLACK

    # ... and it is the test split that was evaluated: an independent float64 computation
    test_images, test_labels = images["test_batch.bin"], labels["test_batch.bin"]
    with np.load(tmp_path / "run" / "best.npz", allow_pickle=False) as npz:
        W, mean, scale = npz["W"].astype(np.float64), npz["pre_mean"], npz["pre_scale"]
    X = np.hstack([(test_images - mean) * scale, np.ones((len(test_images), 1))])
    assert result.test_acc == float(np.mean(np.argmax(X @ W.T, axis=1) == test_labels))


# Runs softmax-train's command in a child on a synthetic data set (tests/conftest.py), and
# reports whether matplotlib was imported when training began and whether it was in the end.
MATPLOTLIB_PROBE = """
import json, sys
sys.path.insert(0, {tests!r})
from conftest import separable_data
from softmax_cls import cli
from softmax_cls.training import runs
data = separable_data(n_train=300, n_test=60, classes=3, seed=0)
runs.load_config_data = lambda config, progress=True, **kw: data
seen = {{}}
fit = runs.fit
def probe(*args, **kwargs):
    seen["while_training"] = "matplotlib" in sys.modules
    return fit(*args, **kwargs)
runs.fit = probe
sys.argv = ["softmax-train", *{args!r}]
try:
    cli.train_command()
finally:
    seen["at_the_end"] = "matplotlib" in sys.modules
    print(json.dumps(seen))
"""


def test_matplotlib_is_imported_only_to_draw_after_training(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"engine": "numpy", "data": {"val_size": 60},
                                  "optim": {"epochs": 1}}))  # output.plots: null
    code = MATPLOTLIB_PROBE.format(tests=str(TESTS), args=[
        "--config", str(config), "--out", str(tmp_path / "run"), "--quiet"])
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=120)

    assert child.returncode == 0, child.stderr
    assert json.loads(child.stdout.strip().splitlines()[-1]) == {
        "while_training": False, "at_the_end": True}
    assert (tmp_path / "run" / "plots" / "mistakes.png").is_file()
