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


@pytest.mark.parametrize("precondition", [False, True])
def test_a_failed_line_search_is_named_and_explained(tmp_path, precondition):
    """Features of size 1e18 left unscaled: the warning read `it stopped after 156
    iterations (abnormal: ) ... optim.tol may be below what float64 rounding of the loss
    allows`: SciPy's bare status word, and a cause that was not this one. With the
    preconditioner, whose second moment of such rows overflowed float32, the run ended in an
    error instead."""
    config = features_config(tmp_path, scale=1e18, preprocess={"center": False,
                                                               "scale": "none"},
                             loss={"reg": 0.0},
                             optim={"solver": "lbfgs", "precondition": precondition})
    result = run("softmax-train", "--config", config, "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, result.stderr
    assert "abnormal" not in warnings[0].lower() and "preprocess.scale" in warnings[0]


def test_an_interrupted_solve_is_reported_in_iterations_not_epochs(tmp_path):
    """Ctrl-C during an L-BFGS solve said `last.npz holds the last completed epoch (0)`: in
    SGD's words, not the solve's."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from test_train import TRAINER  # softmax-train's command on 30,000 synthetic images

    config = tmp_path / "config.yaml"
    config.write_text("optim: {solver: lbfgs, tol: 1.0e-12}\ndata: {val_size: 100}\n"
                      "engine: numpy\n")
    out = tmp_path / "run"
    code = TRAINER.format(tests=str(Path(__file__).parent),
                          args=["--config", str(config), "--out", str(out), "-q"])
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300  # a bound for a failing run: a busy machine is slow
    while not (out / "last.npz").exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.01)
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: interrupted"), stderr
    assert "epoch" not in lines[0] and "L-BFGS" in lines[0], lines[0]
    assert f"--resume {out / 'last.npz'}" in lines[0]


def test_resuming_an_lbfgs_run_with_sgd_says_its_iterations_count_as_epochs(tmp_path):
    """--resume of an L-BFGS run with optim.solver=sgd said `the checkpoint has done 45
    epochs`: it had done 45 L-BFGS iterations, which its epoch count holds."""
    from cli_util import assert_one_line_error

    config = features_config(tmp_path)
    assert run("softmax-train", "--config", config, "--quiet", cwd=tmp_path).returncode == 0
    last = str(tmp_path / "run" / "last.npz")
    result = run("softmax-train", "--resume", last, "--quiet", "--set", "optim.solver=sgd",
                 "--set", "optim.epochs=2", cwd=tmp_path)
    assert_one_line_error(result, 2, "L-BFGS iterations", "optim.epochs >=")


def test_resuming_an_sgd_run_with_lbfgs_at_its_epochs_is_one_error_line(tmp_path):
    """--resume of a 3-epoch SGD run with optim.solver=lbfgs and optim.max_iter 3 (the SGD
    epochs count as the solve's iterations, as L-BFGS iterations count as epochs above) made
    no L-BFGS iteration, warned `3 iterations (optim.max_iter 3)`, and wrote a final line and
    summary.json claiming 3 L-BFGS iterations. Now one error line, the folder as it was; a
    max_iter above the epochs solves on, counting them."""
    import json

    from cli_util import assert_one_line_error

    config = features_config(tmp_path, optim={"solver": "sgd", "epochs": 3})
    assert run("softmax-train", "--config", config, "--quiet", cwd=tmp_path).returncode == 0
    folder = tmp_path / "run"
    before = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != ".lock"}
    last = str(folder / "last.npz")
    for max_iter in (2, 3):
        result = run("softmax-train", "--resume", last, "--quiet", "--set", "optim.solver=lbfgs",
                     "--set", f"optim.max_iter={max_iter}", cwd=tmp_path)
        assert_one_line_error(result, 2, "optim.max_iter: the checkpoint has done 3 SGD epochs",
                              f"needs optim.max_iter > 3, got {max_iter}")
    assert {p.name: p.read_bytes() for p in sorted(folder.iterdir())
            if p.name != ".lock"} == before
    result = run("softmax-train", "--resume", last, "--quiet", "--set", "optim.solver=lbfgs",
                 "--set", "optim.max_iter=100", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["converged"] and summary["iterations"] == summary["epochs"] > 3


# softmax-train whose process sends itself SIGINT (a real Ctrl-C) at the start of the
# full-batch evaluation number `at`: mid-solve, after a few accepted iterations
INTERRUPTED_TRAINER = """
import os, signal, sys
from softmax_cls import cli
from softmax_cls.engines.contract import Engine
calls = [0]
evaluate = Engine.full_loss_and_grad
def counted(self, *args, **kwargs):
    calls[0] += 1
    if calls[0] == {at}:
        os.kill(os.getpid(), signal.SIGINT)
    return evaluate(self, *args, **kwargs)
Engine.full_loss_and_grad = counted
sys.argv = ["softmax-train", *{args!r}]
cli.train_command()
"""


def _interrupted(tmp_path, at: int, args: list[str]) -> list[str]:
    """The stderr lines of softmax-train `args` run in tmp_path and sent SIGINT in its
    evaluation number `at` (INTERRUPTED_TRAINER); asserts exit 130 and one line."""
    import subprocess
    import sys

    code = INTERRUPTED_TRAINER.format(at=at, args=args)
    process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             cwd=tmp_path, timeout=120)
    assert process.returncode == 130, process.stderr
    lines = [line for line in process.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, process.stderr
    return lines


def test_an_interrupted_solve_keeps_its_last_iterate_and_resume_finishes_it(tmp_path):
    """Ctrl-C mid-solve kept nothing: last.npz held the zeros the solve started from. Now it
    holds the last accepted iterate (its history rows, its iteration count as epochs), the
    error line names it, and --resume continues to the same optimum as an uninterrupted
    solve."""
    import json

    from softmax_cls.training.checkpoint import load_checkpoint

    config = features_config(tmp_path)
    lines = _interrupted(tmp_path, 6, ["--config", config, "-q"])
    assert lines[0].startswith("error: interrupted"), lines
    last = tmp_path / "run" / "last.npz"
    saved = load_checkpoint(last)
    k = saved.state.epoch
    assert 1 <= k < 6, k  # an iteration takes at least one evaluation
    assert f"iteration {k}," in lines[0] and f"--resume {last}" in lines[0], lines[0]
    assert np.abs(saved.state.W).max() > 0  # not the zeros it started from
    # as a finished solve's: the average is W (what SGD resumed from it would average from)
    np.testing.assert_array_equal(saved.state.average, saved.state.W)
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl"
                                             ).read_text().splitlines()]
    assert [row["epoch"] for row in history] == list(range(1, k + 1))
    assert f"{history[-1]['grad_max']:.3g}" in lines[0]
    assert not (tmp_path / "run" / "summary.json").exists()

    # resumed, then interrupted again in its first evaluation: no new iterate to claim
    again = _interrupted(tmp_path, 1, ["--resume", str(last), "-q"])
    assert "before its first iteration" in again[0], again
    assert load_checkpoint(last).state.epoch == k

    resumed = run("softmax-train", "--resume", str(last), "--quiet", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["converged"] and summary["epochs"] > k
    whole = tmp_path / "whole"
    whole.mkdir()
    assert run("softmax-train", "--config", features_config(whole), "--quiet",
               cwd=whole).returncode == 0
    W_resumed = load_checkpoint(last).state.W
    W_whole = load_checkpoint(whole / "run" / "last.npz").state.W
    assert np.abs(W_resumed - W_whole).max() <= 1e-3 * np.abs(W_whole).max()


def test_a_solve_interrupted_before_its_first_iteration_says_it_kept_the_start(tmp_path):
    """Interrupted in its first evaluation, the solve has no iterate to keep: the line says
    last.npz holds the weights it started from, and no iteration is claimed."""

    from softmax_cls.training.checkpoint import load_checkpoint

    config = features_config(tmp_path)
    lines = _interrupted(tmp_path, 1, ["--config", config, "-q"])
    assert "before its first iteration" in lines[0], lines
    saved = load_checkpoint(tmp_path / "run" / "last.npz")
    assert saved.state.epoch == 0 and not saved.state.W.any()


def test_a_solved_run_resumed_in_place_is_finished_until_tol_or_max_iter_is_changed(tmp_path):
    """--resume of a converged L-BFGS run in its folder solved again (0 iterations), scored
    the test split again and rewrote its files; one stopped at optim.max_iter made
    optim.max_iter more iterations, while its warning said to raise optim.max_iter. As a
    finished SGD run, both now say so in one line and write nothing; lowering optim.tol,
    raising optim.max_iter (the solve's iterations in all) or another objective solves on."""
    import json

    from softmax_cls.training.checkpoint import load_checkpoint

    def folder_bytes(folder):
        return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != ".lock"}

    def resume(run_folder, *sets):
        args = [arg for key in sets for arg in ("--set", key)]
        result = run("softmax-train", "--resume", str(run_folder / "last.npz"), "--quiet",
                     *args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        return result

    converged, capped = tmp_path / "converged", tmp_path / "capped"
    converged.mkdir()
    capped.mkdir()
    for folder, optim in ((converged, {}), (capped, {"max_iter": 2})):
        config = features_config(folder, optim={"solver": "lbfgs", **optim})
        assert run("softmax-train", "--config", config, "--quiet", cwd=folder).returncode == 0

    run_folder = converged / "run"
    before = folder_bytes(run_folder)
    state = load_checkpoint(run_folder / "last.npz").state
    k, grad_max = state.epoch, state.history[-1]["grad_max"]
    assert resume(run_folder).stdout == (
        f"{run_folder} already finished: converged in {k} iterations (gradient max-norm "
        f"{grad_max:.3g} <= optim.tol 1e-05); lower optim.tol to solve further; nothing "
        "written\n")
    assert folder_bytes(run_folder) == before
    resume(run_folder, "optim.tol=1e-7")
    summary = json.loads((run_folder / "summary.json").read_text())
    assert summary["converged"] and summary["grad_max"] <= 1e-7 and summary["epochs"] > k
    # another objective is solved from the optimum of the first
    solved = load_checkpoint(run_folder / "last.npz").state.epoch
    resume(run_folder, "optim.tol=1e-7", "loss.reg=0.01")
    assert load_checkpoint(run_folder / "last.npz").state.epoch > solved

    run_folder = capped / "run"
    before = folder_bytes(run_folder)
    result = resume(run_folder)
    assert result.stdout.startswith(f"{run_folder} already finished: 2 iterations "
                                    "(optim.max_iter 2), gradient max-norm ")
    assert result.stdout.endswith("; raise optim.max_iter to solve further; nothing written\n")
    assert folder_bytes(run_folder) == before
    # another objective at optim.max_iter: the recorded gradient is the old objective's,
    # not quoted as this one's (it said 'gradient max-norm 5.63e-07' of a changed loss.reg)
    other = resume(run_folder, "loss.reg=0.01")
    assert other.stdout == (f"{run_folder} already finished: 2 iterations (optim.max_iter 2) "
                            "made on another objective (loss or augment since changed); "
                            "raise optim.max_iter to solve this one; nothing written\n")
    assert folder_bytes(run_folder) == before
    more = resume(run_folder, "optim.max_iter=3")  # one iteration more, not three
    assert "warning: L-BFGS did not converge: 3 iterations (optim.max_iter 3)" in more.stderr
    assert load_checkpoint(run_folder / "last.npz").state.epoch == 3


def test_a_resumed_solve_reports_its_iterations_in_all_everywhere(tmp_path):
    """After --resume of an L-BFGS run stopped at optim.max_iter 2 with max_iter 4, the final
    line and summary.json's `iterations` said 2 (this session's), while `epochs`, the
    history and the warning said 4 (the solve's in all). All say 4 now."""
    import json

    config = features_config(tmp_path, optim={"solver": "lbfgs", "max_iter": 2,
                                                     "tol": 1e-9})
    assert run("softmax-train", "--config", config, "--quiet", cwd=tmp_path).returncode == 0
    folder = tmp_path / "run"
    result = run("softmax-train", "--resume", str(folder / "last.npz"), "--quiet", "--set",
                 "optim.max_iter=4", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "warning: L-BFGS did not converge: 4 iterations (optim.max_iter 4)" in result.stderr
    assert "; 4 iterations, loss " in result.stdout, result.stdout
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["iterations"] == summary["epochs"] == 4, summary
    history = [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    assert history[-1]["iterations"] == 4


@pytest.mark.parametrize("engine", ["numpy", "torch"])
def test_the_objectives_chunks_are_sized_by_the_classes_too(tmp_path, engine):
    """The full-batch objective's chunk of rows was sized by the features alone: 2 features
    and 10,000 classes made (9,900, 10,000) score blocks (0.4 GB of float32, 0.8 of float64,
    several at once), out of memory under a 1 GiB RLIMIT_DATA; 20,000 classes needed 3 GB a
    block. Sized by the wider of the two, the blocks are a few MB."""
    from cli_util import limit_data

    if engine == "torch":
        pytest.importorskip("torch")
    rows, classes = 10_000, 10_000
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "wide.npz", X=rng.standard_normal((rows, 2)).astype(np.float32),
             y=np.arange(rows) % classes)
    raw = {"engine": engine, "device": "cpu",
           "data": {"dataset": "features", "train": str(tmp_path / "wide.npz"), "val_size": 100},
           "optim": {"solver": "lbfgs", "max_iter": 1, "precondition": False},
           "output": {"plots": False, "dir": str(tmp_path / "run")}}
    (tmp_path / "wide.yaml").write_text(yaml.safe_dump(raw))
    result = run("softmax-train", "--config", str(tmp_path / "wide.yaml"), "--quiet",
                 cwd=tmp_path, preexec_fn=limit_data(1 << 30), timeout=300)
    assert result.returncode == 0, result.stderr


def test_a_reg_paths_best_point_is_the_path_solution_not_solved_again(tmp_path):
    """A regularisation path wrote best.npz without a history, which no checkpoint may lack:
    the sweep's end found it unreadable and solved the best reg again from zeros (another
    solve, another set of iterations, its warnings as raw Python warnings), and a path
    stopped before its end left a best.npz that softmax-eval refused as damaged."""
    pytest.importorskip("optuna")
    config = features_config(tmp_path, optim={"solver": "lbfgs", "max_iter": 2,
                                                     "tol": 1e-9})
    sweep = tmp_path / "path.yaml"
    sweep.write_text(yaml.safe_dump({"base": config, "sampler": "grid", "space": {
        "loss.reg": {"grid": [1.0e-1, 1.0e-2, 1.0e-3]}}}))
    result = run("softmax-sweep", str(sweep), "--out", str(tmp_path / "sweep"), "--no-plots",
                 "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # each point stops at max_iter 2: three warning lines, one per point, each naming its
    # trial as a sweep's trials' warnings do (docs/lbfgs.md), and no fourth solve
    warnings = [line for line in result.stderr.splitlines() if line.strip()]
    assert [line.split(": L-BFGS did not converge")[0] for line in warnings] == [
        "warning: trial 0", "warning: trial 1", "warning: trial 2"], result.stderr
    rows = (tmp_path / "sweep" / "trials.csv").read_text().splitlines()[1:]
    best = max(rows, key=lambda row: float(row.split(",")[3]))
    evaluated = run("softmax-eval", str(tmp_path / "sweep" / "best.npz"), "--split", "val",
                    "--json", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    import json

    assert json.loads(evaluated.stdout)["accuracy"] == float(best.split(",")[3])
    meta = json.loads(str(np.load(tmp_path / "sweep" / "best.npz")["meta_json"]))
    assert len(meta["history"]) == meta["epoch"] == 2
    assert meta["history"][-1]["val_acc"] == float(best.split(",")[3])


def test_a_sweeps_unconverged_trials_and_their_best_solved_again_warn_in_one_line(tmp_path):
    """A sweep of L-BFGS trials (not a reg path) that stop at optim.max_iter printed each
    trial's warning as a raw Python warning from its worker (file, line, source), and so did
    the best trial solved again at the end (best.npz lost). Each is one line naming its trial."""
    pytest.importorskip("optuna")
    config = features_config(tmp_path, optim={"solver": "lbfgs", "max_iter": 2, "tol": 1e-9})
    sweep = tmp_path / "tols.yaml"
    sweep.write_text(yaml.safe_dump({"base": config, "sampler": "grid", "space": {
        "optim.tol": {"grid": [1.0e-9, 1.0e-10]}}}))

    def warnings_of(result) -> list[str]:
        assert result.returncode == 0, result.stderr
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert all(line.startswith("warning: trial ") for line in lines), result.stderr
        return sorted(line.split(":")[1] for line in lines)

    command = ("softmax-sweep", str(sweep), "--out", str(tmp_path / "sweep"), "--no-plots",
               "--quiet")
    assert warnings_of(run(*command, cwd=tmp_path)) == [" trial 0", " trial 1"]
    (tmp_path / "sweep" / "best.npz").unlink()
    assert warnings_of(run(*command, cwd=tmp_path)) == [" trial 0"]  # the best, solved again


def test_a_solve_that_needs_no_iteration_writes_checkpoints_that_load(tmp_path):
    """optim.tol above the gradient at zero weights: L-BFGS makes no iteration. The run
    ended 0 but wrote a history of one row (the solution's, epoch 0) beside epoch 0, so
    best.npz and last.npz were 'damaged' for softmax-eval, softmax-predict and --resume;
    and a sweep whose trial solved so died in a TypeError traceback (its trial had no val
    accuracy)."""
    config = features_config(tmp_path, optim={"solver": "lbfgs", "tol": 100.0})
    result = run("softmax-train", "--config", config, "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "0 iterations" in result.stdout and "(converged)" in result.stdout
    folder = tmp_path / "run"
    import json

    [row] = [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines()]
    assert row["epoch"] == row["iterations"] == 0 and row["val_acc"] is not None
    for name in ("best.npz", "last.npz"):
        evaluated = run("softmax-eval", str(folder / name), "--json", cwd=tmp_path)
        assert evaluated.returncode == 0, evaluated.stderr
    again = run("softmax-train", "--resume", str(folder / "last.npz"), "--quiet",
                cwd=tmp_path)
    assert again.returncode == 0 and "already finished: converged in 0 iterations" in (
        again.stdout), again.stderr
    # a lower tol solves on from it; the start's row gives way to the iterations' rows
    solved = run("softmax-train", "--resume", str(folder / "last.npz"), "--set",
                 "optim.tol=1e-5", "--quiet", cwd=tmp_path)
    assert solved.returncode == 0, solved.stderr
    history = [json.loads(line) for line in
               (folder / "history.jsonl").read_text().splitlines()]
    iterations = json.loads((folder / "summary.json").read_text())["iterations"]
    assert iterations > 0 and [row["epoch"] for row in history] == list(
        range(1, iterations + 1))
    assert run("softmax-eval", str(folder / "best.npz"), cwd=tmp_path).returncode == 0

    pytest.importorskip("optuna")
    sweep = tmp_path / "tol.yaml"
    sweep.write_text(yaml.safe_dump({"base": config, "sampler": "grid", "space": {
        "optim.tol": {"grid": [100.0, 50.0]}}}))
    swept = run("softmax-sweep", str(sweep), "--out", str(tmp_path / "sweep"), "--no-plots",
                "--quiet", cwd=tmp_path)
    assert swept.returncode == 0, swept.stderr
    rows = (tmp_path / "sweep" / "trials.csv").read_text().splitlines()[1:]
    assert [row.split(",")[1] for row in rows] == ["complete", "complete"]


def test_a_converged_solve_resumed_with_other_augmentation_solves_on():
    """Flips or shifts turned on change the objective (its views) as loss.reg does: a solve
    converged without them is not finished with them (the rule ignoring augment passed)."""
    from types import SimpleNamespace

    from softmax_cls.config import config_from_dict
    from softmax_cls.training import runs

    def config(**augment):
        return config_from_dict({"optim": {"solver": "lbfgs"},
                                 "augment": {"hflip": False, "translate": 0, **augment}})

    state = SimpleNamespace(epoch=5, history=[{"epoch": 5, "grad_max": 1e-9}])
    resume = SimpleNamespace(state=state, config=config())
    assert runs._solved(resume, config()).startswith("converged in 5 iterations")
    assert runs._solved(resume, config(hflip=True)) is None
    assert runs._solved(resume, config(translate=2)) is None


def test_a_second_command_on_a_running_path_is_one_error_line_and_solves_nothing(tmp_path):
    """Two softmax-sweep commands on one regularisation path solved every point twice (24
    complete trials for a grid of 18): a path is solved by one process, which holds the
    folder's lock; another command says so and adds no trial."""
    import os

    from cli_util import assert_one_line_error

    from softmax_cls.fsutil import folder_lock

    pytest.importorskip("optuna")
    config = features_config(tmp_path)
    sweep = tmp_path / "path.yaml"
    sweep.write_text(yaml.safe_dump({"base": config, "sampler": "grid", "space": {
        "loss.reg": {"grid": [1.0e-1, 1.0e-2, 1.0e-3]}}}))
    out = tmp_path / "sweep"
    command = ("softmax-sweep", str(sweep), "--out", str(out), "--no-plots", "--quiet")
    with folder_lock(out, wait=False):  # the path's process, as far as the second can tell
        refused = run(*command, cwd=tmp_path)
    assert_one_line_error(refused, 1, f"--out {out} is in use by process {os.getpid()}",
                          "regularisation path", "wait for it to end")
    assert (out / "trials.csv").read_text().splitlines()[1:] == []  # no point solved
    solved = run(*command, cwd=tmp_path)
    assert solved.returncode == 0, solved.stderr
    rows = (out / "trials.csv").read_text().splitlines()[1:]
    assert [row.split(",")[1] for row in rows] == ["complete"] * 3
