"""Every shipped config in configs/ loads and trains one epoch on a tiny problem: synthetic
images for the CIFAR configs, a small generated feature file for the probe config (its own
data.val_size, a fraction, fits any file size), and the sweep file loads with its base."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from cli_util import run
from conftest import separable_data

from softmax_cls.config import load_config
from softmax_cls.data.cifar import load_config_data
from softmax_cls.sweep.spec import load_sweep
from softmax_cls.training.runs import train_run

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SHIPPED = sorted(path.name for path in CONFIGS.glob("*.yaml"))
# A tiny, quick epoch whatever the file says: numpy (no numba compile), one epoch, no plots.
TINY = ["engine=numpy", "optim.epochs=1", "output.plots=false"]


def write_features(folder: Path, n: int = 120, d: int = 6, classes: int = 3) -> Path:
    """A float32 feature file (n, d) of separable blobs with integer labels (n,)."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, classes, n)
    X = rng.normal(0, 4, (classes, d))[y] + rng.standard_normal((n, d))
    path = folder / "train.npz"
    np.savez(path, X=X.astype(np.float32), y=y)
    return path


def test_the_shipped_configs_are_found():
    assert {"default.yaml", "probe.yaml", "quick.yaml", "sweep.yaml"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_trains_one_epoch(name, tmp_path):
    path = CONFIGS / name
    if "space" in yaml.safe_load(path.read_text()):
        spec = load_sweep(path)
        assert spec.trials > 0 and spec.space
        config = spec.base_config
        assert config == load_config(CONFIGS / "default.yaml")
        return
    overrides = [*TINY, f"output.dir={tmp_path / 'run'}"]
    if load_config(path).data.dataset == "features":
        overrides.append(f"data.train={write_features(tmp_path)}")
        config = load_config(path, overrides)
        data = load_config_data(config.data, progress=False)
    else:
        # 600 synthetic images: fewer than the 5000 held out by default
        config = load_config(path, [*overrides, "data.val_size=100"])
        data = separable_data()
    result = train_run(config, data, config.output.dir, progress=False)
    assert result.state.epoch == 1
    assert (Path(config.output.dir) / "summary.json").is_file()


def test_readme_probe_command_runs_on_a_small_feature_file(tmp_path):
    train = write_features(tmp_path)
    result = run("softmax-train", "--config", str(CONFIGS / "probe.yaml"),
                 "--set", f"data.train={train}", "--set", f"output.dir={tmp_path / 'run'}",
                 *[arg for item in TINY for arg in ("--set", item)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "run" / "summary.json").is_file()
