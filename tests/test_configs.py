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


def test_the_documented_lbfgs_probe_command_runs_and_without_null_is_one_error(tmp_path):
    """docs/estimator.md's L-BFGS probe command, as written, on small feature files: it
    solves to the optimum; leaving out its patience=null is one error line naming the key."""
    import shlex

    from cli_util import assert_one_line_error

    pytest.importorskip("scipy")
    page = (CONFIGS.parent / "docs" / "estimator.md").read_text(encoding="utf-8")
    block = next(block for block in page.split("\n\n") if "optim.solver=lbfgs" in block
                 and block.lstrip().startswith("softmax-train"))
    argv = shlex.split(block.replace("\\\n", " "))
    assert argv[:3] == ["softmax-train", "--config", "configs/probe.yaml"]
    argv[2] = str(CONFIGS / "probe.yaml")
    (tmp_path / "test.npz").write_bytes(write_features(tmp_path).read_bytes())  # train.npz
    tiny = ["--set", "output.plots=false", "--set", "engine=numpy", "--quiet"]  # no compile
    result = run(*argv, *tiny, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "at the L-BFGS optimum" in result.stdout and "(converged)" in result.stdout
    without = [arg for arg in argv if arg != "optim.early_stopping.patience=null"]
    assert without[-1] == "--set"
    refused = run(*without[:-1], *tiny, "--out", "other", cwd=tmp_path)
    assert_one_line_error(refused, 2, "optim.early_stopping.patience", "set it to null")
    assert not (tmp_path / "other").exists()
