"""The gradient-check command: passes on the real functions, fails on a wrong gradient."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_util import assert_one_line_error, limit_data, run
from conftest import random_problem

from softmax_cls.errors import SoftmaxClsError
from softmax_cls.math import softmax
from softmax_cls.math.preprocess import Preprocessor
from softmax_cls.training import gradcheck

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_command_passes_and_prints_the_table():
    result = run("softmax-gradcheck", "--samples", "200", "--checks", "5")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "coordinate" in result.stdout and "beyond rounding" in result.stdout
    assert "numpy engine minibatch objective" in result.stdout
    # a passing check shows its raw error beside the judged one: a row of only zeros would
    # look like a check that does nothing
    rows = [line.split() for line in result.stdout.splitlines()
            if line.strip().startswith("(") and len(line.split()) == 7]
    assert len(rows) >= 5
    raw, judged = [float(row[5]) for row in rows], [float(row[6]) for row in rows]
    assert any(value > 0 for value in raw)
    assert all(b <= a for a, b in zip(raw, judged, strict=True))
    assert "maximum relative error" in result.stdout
    assert "gradient check passed" in result.stdout


WRONG_GRADIENT = """
import sys
import softmax_cls.math.softmax as s
original = s.loss_and_grad
def wrong(*args, **kwargs):
    loss, grad = original(*args, **kwargs)
    grad[:, {column}] *= -1
    return loss, grad
s.loss_and_grad = wrong
from softmax_cls.cli import gradcheck_command
sys.argv = ["softmax-gradcheck", "--samples", "100", "--checks", "5"]
gradcheck_command()
"""


def test_a_column_with_its_sign_flipped_makes_the_command_exit_1():
    result = subprocess.run([sys.executable, "-c", WRONG_GRADIENT.format(column=7)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "gradient check FAILED" in result.stdout
    assert "Traceback" not in result.stderr


WRONG_TRAINER_BIAS = """
import dataclasses, sys
import softmax_cls.engines.numpy_engine as engines
original = engines.ENGINE.loss_and_grad_function
def wrong(*args, **kwargs):
    loss, dW, correct = original(*args, **kwargs)
    dW = dW.copy()
    dW[:, -1] *= -3  # the bias column of the engine's (C, D) gradient
    return loss, dW, correct
engines.ENGINE = dataclasses.replace(engines.ENGINE, loss_and_grad_function=wrong)
from softmax_cls.cli import gradcheck_command
sys.argv = ["softmax-gradcheck", "--samples", "100", "--checks", "3"]
gradcheck_command()
"""


def test_a_wrong_bias_column_in_the_trainer_path_makes_the_command_exit_1():
    result = subprocess.run([sys.executable, "-c", WRONG_TRAINER_BIAS], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "numpy engine objective vs loss_and_grad on the features" in result.stdout
    assert "gradient check FAILED" in result.stdout


def test_the_bias_column_is_always_checked():
    W, X, y = random_problem(20, 50, 3, seed=0)
    for seed in range(5):
        result = gradcheck.check_gradient(lambda w: softmax.loss_and_grad(w, X, y), W, 2,
                                          np.random.default_rng(seed))
        assert any(c.coordinate[1] == 49 for c in result.checks)


def test_raw_pixel_features_pass_with_the_scaled_step():
    rng = np.random.default_rng(0)
    X = np.hstack([rng.integers(0, 256, size=(200, 300)).astype(np.float64), np.ones((200, 1))])
    W = np.ascontiguousarray(rng.standard_normal((301, 10)).T) * 1e-4
    y = rng.integers(0, 10, 200)
    result = gradcheck.check_gradient(lambda w: softmax.loss_and_grad(w, X, y, 0.01), W, 20, rng,
                                      column_scale=np.sqrt(np.mean(X * X, axis=0)))
    assert result.passed, result.max_rel_error


def test_a_wrong_gradient_fails_the_sparse_check_itself():
    W, X, y = random_problem(100, 30, 4, seed=0)

    def wrong(w):
        loss, grad = softmax.loss_and_grad(w, X, y)
        return loss, grad * 1.001

    result = gradcheck.check_gradient(wrong, W, 10, np.random.default_rng(0))
    assert not result.passed
    assert result.max_rel_error > 1e-4


def test_check_uses_each_engines_objective_on_the_same_problem():
    problem = gradcheck.random_image_problem(samples=50, classes=3, seed=1)
    assert "numpy" in problem.trainer_objectives
    loss_plain, grad_plain = softmax.loss_and_grad(problem.W, problem.X, problem.y, problem.reg,
                                                   problem.clip, problem.penalise_last)
    for objective in problem.trainer_objectives.values():
        loss_trainer, grad_trainer = objective(problem.W)
        assert abs(loss_trainer - loss_plain) < 1e-12
        np.testing.assert_allclose(grad_trainer, grad_plain, atol=1e-12)


def test_the_first_gradient_check_says_it_compiles_once(monkeypatch, capsys):
    numba_engine = pytest.importorskip("softmax_cls.engines.numba_engine")
    monkeypatch.setattr(numba_engine, "_announced", False)
    monkeypatch.setattr(numba_engine, "_ready", set())
    asked = []
    monkeypatch.setattr(numba_engine.kernels, "batch_kernel_is_compiled",
                        lambda *kinds: asked.append(kinds) or False)
    gradcheck.run_gradcheck(gradcheck.random_image_problem(samples=20, classes=3), 2)
    assert capsys.readouterr().err.count("compiling the numba kernels once") == 1
    assert len(asked) == 1  # checked once per kind of call, not per coordinate


@pytest.mark.parametrize("option", ["--step", "--tol", "--reg"])
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_non_finite_step_tolerance_or_reg_is_a_command_line_error(option, value):
    """nan passes a `> 0` range (every comparison with it is false): --step nan ended in
    `non-finite scores`, --tol nan in a FAILED check with every error 0, exit 1."""
    result = run("softmax-gradcheck", "--samples", "5", "--checks", "2", option, value)
    assert_one_line_error(result, 2, option, "finite")


@pytest.mark.slow
def test_correct_gradients_pass_at_ten_thousand_rows():
    """The numba objective sums its row losses one after another: at 10000 rows its rounding
    exceeded the 2-row bound 8 eps |f| / h and the correct gradient FAILED (2.0e-06)."""
    result = run("softmax-gradcheck", "--samples", "10000", "--classes", "3", "--checks", "20",
                 timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert "gradient check passed" in result.stdout


@pytest.mark.parametrize("samples,classes", [("10", "100000"), ("100000", "100000")])
def test_a_problem_larger_than_memory_is_refused_before_it_is_allocated(samples, classes):
    """100000 classes x 3073 features of float64 (2.3 GiB) under a 1 GiB data limit: numpy's
    MemoryError was a traceback, then an `out of memory` line once the memory was spent (12.6
    GB at 100000 x 100000 without a limit). The memory is now estimated from the shapes."""
    result = run("softmax-gradcheck", "--samples", samples, "--classes", classes, "--checks",
                 "2", preexec_fn=limit_data(1 << 30))
    assert_one_line_error(result, 1, "not enough memory", f"{samples} samples x 3073 features "
                          f"x {classes} classes needs about", "GiB", "lower --samples or --classes")


def test_the_memory_estimate_refuses_only_what_exceeds_the_budget(monkeypatch):
    need = gradcheck.needed_bytes(500, 3072, 3073, 10)  # the command's default problem
    assert 30e6 < need < 100e6
    monkeypatch.setattr(gradcheck, "host_available_bytes", lambda: None)  # unknown: no check
    gradcheck.check_memory(10**6, 3072, 3073, 10**6, "--samples")
    monkeypatch.setattr(gradcheck, "host_available_bytes", lambda: 1 << 30)  # 512 MiB budget
    gradcheck.check_memory(500, 3072, 3073, 10, "--samples")
    with pytest.raises(SoftmaxClsError, match="about 1.0 GiB.*0.5 GiB may be used.*; lower X$"):
        gradcheck.check_memory(200, 3072, 3073, 4000, "X")  # 0.96 GiB: free, not in budget
    assert gradcheck.needed_bytes(1, 0, 1, 2) == 8 * (5 + 10 * 2 + 4 * 2)


def test_the_config_problem_is_refused_before_the_sample_is_copied(tmp_path, monkeypatch):
    from softmax_cls.config import load_config

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "train.npz", X=rng.standard_normal((200, 6)).astype(np.float32),
             y=rng.integers(0, 3, 200))
    config = load_config(CONFIGS / "probe.yaml", [f"data.train={tmp_path / 'train.npz'}"])
    monkeypatch.setattr(gradcheck, "host_available_bytes", lambda: 1 << 30)
    assert len(gradcheck.config_problem(config, 1000, 0).X) == 180  # the training split
    monkeypatch.setattr(gradcheck, "needed_bytes", lambda *shape: shape)
    monkeypatch.setattr(gradcheck, "check_memory", lambda *args: pytest.fail(repr(args)))
    with pytest.raises(pytest.fail.Exception, match=r"\(180, 24, 7, 3, '--samples'\)"):
        gradcheck.config_problem(config, 1000, 0)


def test_folded_magnitude_sums_every_product_of_the_folded_scores():
    """The rounding allowance of the engines' objectives: per row and class, the sum of
    |u_j scale_j W_cj| and |mean_j scale_j W_cj| (the offset folded into the bias) and the
    bias |W_cP|, the largest over rows and classes; written out term by term here."""
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (4, 6)).astype(np.uint8)
    pre = Preprocessor(rng.uniform(50, 200, 6), rng.uniform(0.01, 2, 6), bias=True)
    W = rng.standard_normal((3, 7))
    expected = max(sum(abs(images[i, j] * pre.scale[j] * W[c, j])
                       + abs(pre.mean[j] * pre.scale[j] * W[c, j]) for j in range(6))
                   + abs(W[c, 6]) for i in range(4) for c in range(3))
    assert gradcheck.folded_magnitude(images, pre, W) == pytest.approx(expected, rel=1e-12)
    assert gradcheck.score_magnitude(pre.transform(images, np.float64), W) == pytest.approx(
        max(np.abs(pre.transform(images, np.float64)[i]) @ np.abs(W[c])
            for i in range(4) for c in range(3)), rel=1e-12)


@pytest.mark.parametrize("bad", ["nan", "inf"])
@pytest.mark.parametrize("where", ["bias", "every"])
def test_a_non_finite_gradient_fails_its_check_not_passes_it(bad, where):
    """A NaN compares false with everything: its relative error came out 0 (or was skipped
    by max()), so a NaN in the analytic gradient passed, and one on the bias coordinate
    was called a step too small to resolve."""
    W, X, y = random_problem(40, 12, 3, seed=0)

    def broken(w):
        loss, grad = softmax.loss_and_grad(w, X, y)
        grad = grad.copy()
        if where == "bias":
            grad[:, -1] = float(bad)
        else:
            grad[:] = float(bad)
        return loss, grad

    result = gradcheck.check_gradient(broken, W, 30, np.random.default_rng(0))
    assert not result.passed
    assert result.max_rel_error == np.inf


NAN_COLUMN = """
import sys
import softmax_cls.math.softmax as s
original = s.loss_and_grad
def nan_column(*args, **kwargs):
    loss, grad = original(*args, **kwargs)
    grad[:, :-1] = float("nan")
    return loss, grad
s.loss_and_grad = nan_column
from softmax_cls.cli import gradcheck_command
sys.argv = ["softmax-gradcheck", "--samples", "20", "--checks", "4"]
gradcheck_command()
"""


def test_a_nan_gradient_is_reported_as_a_failed_check_through_the_command():
    """The sparse checks of loss_and_grad printed `max relative error 0.00e+00 ...: ok` over
    rows of nan, and the last line said the maximum relative error was 0."""
    result = subprocess.run([sys.executable, "-c", NAN_COLUMN], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    verdicts = [line for line in result.stdout.splitlines() if "max relative error" in line]
    assert len(verdicts) >= 3 and all(line.endswith("FAIL") for line in verdicts[:2]), verdicts
    assert "maximum relative error: inf" in result.stdout
    loop = next(line for line in result.stdout.splitlines() if line.startswith("loop reference"))
    assert loop.endswith("FAIL"), loop
    assert "Traceback" not in result.stderr


def test_a_large_reg_passes_correct_gradients():
    """The loop and engine comparisons held the loss to 1e-10 absolute: at --reg 1e9 the loss
    is about 3e5 and its rounding alone (3.5e-10) FAILED correct gradients; at 1e11 the torch
    objective's loss differs from loss_and_grad's by its rounding too."""
    result = run("softmax-gradcheck", "--samples", "50", "--checks", "3", "--reg", "1e11")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert "gradient check passed" in result.stdout


@pytest.mark.parametrize("option, value, remedy, not_said", [
    ("--reg", "1e308", "lower the reg", "use a step"),
    ("--step", "1e-300", "use a step near 1e-05", "lower the reg")])
def test_a_check_that_cannot_fail_names_what_to_change(option, value, remedy, not_said):
    """At --reg 1e308 the loss is about 1e304: no step resolves its derivatives, and the
    refusal said `use a step near 1e-05` to a step of 1e-05."""
    result = run("softmax-gradcheck", "--samples", "50", "--checks", "3", option, value)
    line = assert_one_line_error(result, 2, remedy)
    assert not_said not in line


def test_difference_is_absolute_up_to_one_and_relative_beyond():
    assert gradcheck.difference(0.5, 0.5 + 1e-11) == pytest.approx(1e-11)
    assert gradcheck.difference(1e6, 1e6 + 1e-4) == pytest.approx(1e-10)
    assert gradcheck.difference(np.array([1.0, 3e5]), np.array([1.0 + 2e-11, 3e5])) == \
        pytest.approx(2e-11 / 3e5)
    assert np.isnan(gradcheck.difference(np.inf, np.inf))
    assert np.isnan(gradcheck.difference(1.0, np.nan))


def test_more_checks_than_the_weights_have_entries_are_refused(tmp_path):
    """--checks 1000000000 checked every entry of W (30,730 at the defaults: hours), as
    many as there are, silently: the coordinates are drawn without replacement, so more than
    W's entries is one error line naming the most; as many as it has are checked."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "train.npz", X=rng.standard_normal((200, 6)).astype(np.float32),
             y=rng.integers(0, 3, 200))
    sample = ("--config", str(CONFIGS / "probe.yaml"), "--set",
              f"data.train={tmp_path / 'train.npz'}", "--samples", "50")
    for checks in ("22", "1000000000"):  # W: 3 classes x (6 features + bias) = 21 entries
        result = run("softmax-gradcheck", *sample, "--checks", checks, cwd=tmp_path)
        line = assert_one_line_error(result, 2, "--checks: at most 21 ")
        assert line.endswith(f"3 classes x 7 features), got {checks}"), line
    result = run("softmax-gradcheck", *sample, "--checks", "21", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    first = result.stdout.split("max relative error")[0]  # the first objective's table
    checked = re.findall(r"^ +\((\d+), (\d+)\) ", first, re.MULTILINE)
    assert sorted(checked) == sorted((str(c), str(d)) for c in range(3) for d in range(7))
    result = run("softmax-gradcheck", "--samples", "5", "--classes", "2", "--checks",
                 "1000000000", timeout=60)
    assert_one_line_error(result, 2, "--checks: at most 6146 ", "2 classes x 3073 features")


def test_a_gradient_wrong_by_1e_5_fails_at_500_rows_and_the_right_one_passes():
    """The rounding allowance grows as sqrt(N) (a random walk of N row losses): grown as N it
    was 2e-7 here, enough to pass every coordinate of a gradient 1e-5 too large. The right
    gradient passes on the same coordinates, its smallest derivative (2.6e-7, a bias entry)
    below what the step resolves: only the largest decides whether the check can fail."""
    W, X, y = random_problem(500, 200, 10, seed=0)

    def right(w):
        return softmax.loss_and_grad(w, X, y, 0.01)

    def too_large(w):
        loss, grad = right(w)
        return loss, grad * (1 + 1e-5)

    for objective, passes in ((right, True), (too_large, False)):
        result = gradcheck.check_gradient(objective, W, 10, np.random.default_rng(0),
                                          rows=len(X), magnitude=gradcheck.score_magnitude(X, W))
        assert result.passed == passes, result.max_rel_error
    assert min(abs(c.analytic) for c in result.checks) < 1e3 * result.checks[0].rounding


def test_a_loss_computed_through_cancelling_terms_passes_within_their_rounding():
    """The engines' folded scores are two large sums that cancel: f carries the rounding of
    the terms' magnitude, not of |f|. A loss computed as (loss + 1e4) - 1e4 has a raw error
    of about 4e-6 on the right gradient; given magnitude 1e4 the check passes it, judged
    within f's rounding (without the allowance, or with |f| alone, it FAILED)."""
    W, X, y = random_problem(200, 40, 4, seed=1)
    big = 1e4

    def cancelling(w):
        loss, grad = softmax.loss_and_grad(w, X, y, 0.01)
        return (loss + big) - big, grad

    result = gradcheck.check_gradient(cancelling, W, 10, np.random.default_rng(0),
                                      rows=len(X), magnitude=big)
    assert max(c.raw_rel_error for c in result.checks) > 10 * result.tolerance
    assert result.passed, result.max_rel_error


def test_a_step_that_resolves_only_a_few_percent_of_the_derivatives_is_refused():
    """--step 1e-11: float64 differences resolve derivatives to about 6e-3 of the largest,
    so an error below that could not show; the check refuses, a ratio of 1e-3 is the most
    it accepts (a ratio of 1e3 accepted this step and called the gradient correct)."""
    result = run("softmax-gradcheck", "--samples", "50", "--checks", "3", "--step", "1e-11")
    assert_one_line_error(result, 2, "--step 1e-11 cannot check", "use a step near 1e-05")


def test_the_loop_comparison_sees_one_wrong_entry_of_the_vectorized_gradient(monkeypatch):
    """Every coordinate of loss_and_grad against the loop reference: one entry off by 1e-6,
    in no sparse check, is a grad_diff of 1e-6."""
    W, X, y = random_problem(40, 12, 3, seed=0)
    original = softmax.loss_and_grad

    def one_entry_off(*args, **kwargs):
        loss, grad = original(*args, **kwargs)
        grad = grad.copy()
        grad[1, 4] += 1e-6
        return loss, grad

    monkeypatch.setattr(softmax, "loss_and_grad", one_entry_off)
    found = gradcheck.compare_with_loop(W, X, y, 0.01, softmax.DEFAULT_CLIP)
    assert found["grad_diff"] == pytest.approx(1e-6, rel=1e-3)
    assert found["loss_diff"] < gradcheck.LOOP_TOLERANCE


def test_the_engine_comparison_sees_one_wrong_entry_of_its_gradient():
    """The numpy engine's gradient against loss_and_grad on every coordinate: one entry off
    by 1e-6 (far from the bias column the command's test breaks) fails the comparison."""
    problem = gradcheck.random_image_problem(samples=30, classes=3, seed=2)
    right = problem.trainer_objectives["numpy"]

    def one_entry_off(w):
        loss, grad = right(w)
        grad = grad.copy()
        grad[2, 100] += 1e-6
        return loss, grad

    problem = dataclasses.replace(problem, trainer_objectives={"numpy": one_entry_off})
    results = gradcheck.run_gradcheck(problem, 2)
    assert results[-1].extra["numpy_grad_diff"] == pytest.approx(1e-6, rel=1e-3)
    assert not gradcheck.full_comparisons_agree(results)


def test_the_step_of_a_raw_pixel_column_is_the_step_over_its_rms(monkeypatch):
    """h = step / max(1, RMS of the column) on each coordinate run_gradcheck moves: the mean
    square instead of the RMS made h 150 times smaller on raw pixels, and the rounding
    allowance 150 times larger (a weaker check that still passed)."""
    rng = np.random.default_rng(0)
    X = np.hstack([rng.integers(0, 256, (30, 5)).astype(np.float64), np.ones((30, 1))])
    W = rng.standard_normal((3, 6)) * 1e-4
    problem = gradcheck.GradcheckProblem(W, X, rng.integers(0, 3, 30), 0.01,
                                         softmax.DEFAULT_CLIP, False, {})
    moved: dict[int, list[float]] = {}
    original = softmax.loss_and_grad

    def spy(w, *args, **kwargs):
        changed = np.argwhere(w != W)
        if len(changed) == 1:
            c, j = changed[0]
            moved.setdefault(int(j), []).append(abs(w[c, j] - W[c, j]))
        return original(w, *args, **kwargs)

    monkeypatch.setattr(softmax, "loss_and_grad", spy)
    gradcheck.run_gradcheck(problem, 18)  # every entry of W
    assert sorted(moved) == list(range(6))
    for j, steps in moved.items():
        rms = np.linalg.norm(X[:, j]) / np.sqrt(len(X))
        assert steps == pytest.approx([gradcheck.DEFAULT_STEP / max(1.0, rms)] * len(steps),
                                      rel=1e-9)


def test_commands_md_names_each_engine_objective_the_command_checks():
    """commands.md named numpy's and numba's objectives, not torch's, which is checked (on
    the CPU) whenever PyTorch is installed."""
    result = run("softmax-gradcheck", "--samples", "20", "--checks", "1", "--classes", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    checked = re.findall(r"^(\w+) engine minibatch objective", result.stdout, re.M)
    assert "numpy" in checked
    page = (Path(__file__).resolve().parents[1] / "docs" / "commands.md").read_text()
    bullet = re.search(r"^- each engine's own minibatch objective.*?(?=^\S|^- )", page,
                       re.M | re.S).group(0)
    assert [name for name in checked if f"{name}'s" not in bullet] == []
