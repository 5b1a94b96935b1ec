"""optim.solver lbfgs as a user meets it through the console scripts: what the hostile review
of issue 21 found (each test failed before its fix)."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from cli_util import run

pytest.importorskip("scipy")


def features_config(folder, scale: float = 1.0, **top) -> str:
    """A 5-class features problem (500 training rows of 8 features, times `scale`)."""
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 3, (5, 8))
    labels = rng.integers(0, 5, 600)
    X = ((centers[labels] + rng.standard_normal((600, 8))) * scale).astype(np.float32)
    np.savez(folder / "train.npz", X=X[:500], y=labels[:500])
    np.savez(folder / "test.npz", X=X[500:], y=labels[500:])
    raw = {"engine": "numpy", "data": {"dataset": "features", "train": str(folder / "train.npz"),
                                       "test": str(folder / "test.npz"), "val_size": 100},
           "optim": {"solver": "lbfgs"}, "output": {"plots": False, "dir": str(folder / "run")},
           **top}
    path = folder / "probe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_a_failed_line_search_is_named_and_explained(tmp_path):
    """Features of size 1e18 left unscaled: the warning read `it stopped after 156
    iterations (abnormal: ) ... optim.tol may be below what float64 rounding of the loss
    allows`: SciPy's bare status word, and a cause that was not this one."""
    config = features_config(tmp_path, scale=1e18, preprocess={"center": False,
                                                               "scale": "none"},
                             loss={"reg": 0.0})
    result = run("softmax-train", "--config", config, "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, result.stderr
    assert "abnormal" not in warnings[0].lower() and "line search" in warnings[0]
    assert "preprocess.scale" in warnings[0]
