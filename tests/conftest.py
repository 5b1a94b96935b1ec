"""Shared fixtures: a small synthetic CIFAR-shaped data set, and where the real data lives."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest

from softmax_cls.config import config_from_dict
from softmax_cls.data.features import load_features
from softmax_cls.data.labelled import LabelledData
from softmax_cls.threads import THREAD_VARIABLES
from softmax_cls.training.runs import train_run

pytest_plugins = ["pytester", "leftover_processes"]


def pytest_configure(config):
    """A suite started with SIGINT ignored (a background job of a script, `trap "" INT`)
    passes that to every child it starts, and the tests of Ctrl-C then find it ignored, as
    the commands keep an ignored signal ignored. Caught here, it is the default again in
    each child."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)

@pytest.fixture(autouse=True)
def thread_variables_left_as_found():
    """Each test leaves the thread-count variables as it found them: a NUMBA_NUM_THREADS a
    test leaks (monkeypatch.delenv of an unset variable records nothing to undo) fails every
    later test of its worker that loads numba on fewer CPUs, far from its cause."""
    before = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    yield
    after = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    assert after == before, f"the test left thread variables changed: {before} -> {after}"


@pytest.fixture
def thread_variables_restored():
    """For a test whose library sets the thread-count variables in this process (distributed's
    nanny sets the BLAS and OpenMP counts to 1 before it spawns its workers): they are put
    back after it, before thread_variables_left_as_found looks."""
    before = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    yield
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


REAL_ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar-10-binary.tar.gz"
needs_real_data = pytest.mark.skipif(not REAL_ARCHIVE.is_file(),
                                     reason=f"real CIFAR-10 not present at {REAL_ARCHIVE}")


def separable_data(n_train: int = 600, n_test: int = 200, classes: int = 4, seed: int = 0,
                   noise: int = 40) -> LabelledData:
    """uint8 images (N, 3072) around one random template per class: linearly separable."""
    rng = np.random.default_rng(seed)
    templates = rng.integers(0, 256, size=(classes, 3072))

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, classes, size=n)
        pixels = templates[labels] + rng.integers(-noise, noise + 1, size=(n, 3072))
        return np.clip(pixels, 0, 255).astype(np.uint8), labels.astype(np.int64)

    train_images, train_labels = draw(n_train)
    test_images, test_labels = draw(n_test)
    return LabelledData("synthetic", tuple(f"class{i}" for i in range(classes)), train_images,
                     train_labels, test_images, test_labels, {"synthetic.bin": f"seed{seed}"})


@pytest.fixture
def small_data() -> LabelledData:
    return separable_data()


def small_config(tmp_path: Path, **sections):
    """A fast config for the synthetic data; keyword arguments override sections (a
    section's keys merge). Plain SGD without shifts or weight averaging, whatever the
    defaults, so the tests' independent references stay simple."""
    raw = {"data": {"val_size": 100},
           "optim": {"epochs": 3, "batch_size": 64, "lr": 0.01, "averaging": {"name": "none"}},
           "augment": {"translate": 0}, "output": {"dir": str(tmp_path / "run")}}
    for key, value in sections.items():
        if isinstance(value, dict):
            raw.setdefault(key, {}).update(value)
        else:
            raw[key] = value
    return config_from_dict(raw)


def train_probe(folder: Path, X: np.ndarray, y: np.ndarray, **sections) -> Path:
    """Trains a small linear probe (engine numpy, 50 validation rows, no augmentation) on
    features X (N, D) float32 with labels y (N,) (integers or strings), saved as
    folder/train.npz; keyword arguments override sections as small_config's. Returns the
    run's best.npz."""
    np.savez(folder / "train.npz", X=X, y=y)
    settings = {"engine": "numpy", **sections,
                "data": {"dataset": "features", "val_size": 50,
                         "train": str(folder / "train.npz"), **sections.get("data", {})},
                "augment": {"hflip": False, "translate": 0}}
    config = small_config(folder, **settings)
    train_run(config, load_features(config.data, progress=False), folder / "run",
              progress=False)
    return folder / "run" / "best.npz"


def random_problem(
    samples: int = 500, features: int = 3073, classes: int = 10, seed: int = 0,
    init_std: float = 1e-4,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A seeded float64 problem: W (classes, features), X (samples, features) with a bias
    column of ones last, y (samples,) int64."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((samples, features))
    X[:, -1] = 1.0
    W = np.ascontiguousarray((rng.standard_normal((features, classes)) * init_std).T)
    y = rng.integers(0, classes, size=samples)
    return W, X, y


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` run where a CUDA GPU is present and skip elsewhere."""
    cuda_items = [item for item in items if item.get_closest_marker("cuda")]
    if cuda_items and not _cuda_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
        for item in cuda_items:
            item.add_marker(skip)
