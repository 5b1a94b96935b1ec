"""numba's compile cache is never a reason for softmax-train to fail: with no writable cache
folder anywhere the kernels compile in memory, and a corrupted cache file is recompiled over.
Each test compiles the kernels (15-60 s) in a child with its own NUMBA_CACHE_DIR; where that
folder starts from helpers_cache, the kernels compile in a quarter of that time."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from cli_util import script
from test_features import linear_data, write_config

import softmax_cls

pytest.importorskip("numba")

COMPILE_TIMEOUT = 300


def train(tmp_path: Path, out: str, **env: str) -> subprocess.CompletedProcess:
    """softmax-train, engine numba, one epoch on 300 rows of 4 features."""
    if not (tmp_path / "train.npz").exists():
        X, y = linear_data(n=300, d=4)
        np.savez(tmp_path / "train.npz", X=X, y=y)
    config = write_config(tmp_path, train=str(tmp_path / "train.npz"))
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", "MPLCONFIGDIR": str(tmp_path / "mpl"),
                   **env}
    return subprocess.run([script("softmax-train"), "--config", str(config), "--quiet",
                           "--set", "engine=numba", "--set", "optim.epochs=1",
                           "--out", str(tmp_path / out)],
                          capture_output=True, text=True, env=environment, cwd=tmp_path,
                          timeout=COMPILE_TIMEOUT)


def numba_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("numba:")]


# The compiled code that each child may take from a shared cache: every helper of the engine,
# never an entry kernel (what kernels_are_compiled and full.py's compile check ask about, so
# a child still finds the kernels uncompiled, compiles them and says so, exactly as with an
# empty cache folder; only the helpers' part of the compile, about three quarters of SGD's,
# is saved).
ENTRY_KERNELS = ("entry.train_epoch_kernel-", "entry.predict_kernel-",
                 "entry.batch_loss_and_grad_kernel-", "full.full_kernel-")


@pytest.fixture(scope="module")
def helpers_cache(tmp_path_factory) -> Path:
    """A NUMBA_CACHE_DIR template holding the engine's helpers compiled for float32 rows
    (SGD and both precisions of L-BFGS, as the children here train) without its entry
    kernels. Compiled in this process, into its own cache (which the other numba tests
    fill anyway), and copied to the folder a child's NUMBA_CACHE_DIR would use. Empty where
    this process caches nothing."""
    import numba.core.caching

    import softmax_cls.engines.numba_engine as numba_engine
    from softmax_cls.engines.numba_engine import entry

    template = tmp_path_factory.mktemp("numba-helpers")
    numba_engine.prepare(np.dtype(np.float32))
    numba_engine.prepare_full(np.dtype(np.float32), 3)
    own = getattr(entry.train_epoch_kernel._cache, "_cache_path", None)
    if own is None:  # NullCache: compiled in memory only
        return template
    folder = template / numba.core.caching._CacheLocator.get_suitable_cache_subpath(
        entry.__file__)
    folder.mkdir()
    for path in Path(own).glob("*.nb[ic]"):
        if not path.name.startswith(ENTRY_KERNELS):
            shutil.copy2(path, folder / path.name)
    return template


def cache_from(template: Path, folder: Path) -> str:
    """A copy of the helpers_cache `template` at `folder`, as a NUMBA_CACHE_DIR."""
    shutil.copytree(template, folder)
    return str(folder)


def test_without_any_writable_cache_folder_training_compiles_in_memory(tmp_path):
    """The package's __pycache__, NUMBA_CACHE_DIR and the user's cache folder all impossible
    (beneath a plain file, which not even root can make a folder in). The package runs from
    a copy, so that its __pycache__ can be one."""
    site = tmp_path / "site"
    shutil.copytree(Path(softmax_cls.__file__).parent, site / "softmax_cls",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (site / "softmax_cls" / "engines" / "numba_engine" / "__pycache__").write_text("a file")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    env = {"PYTHONPATH": str(site), "NUMBA_CACHE_DIR": str(blocker / "numba"),
           "XDG_CACHE_HOME": str(blocker / "xdg"), "HOME": str(blocker / "home")}
    where = subprocess.run([sys.executable, "-c", "import softmax_cls as s; print(s.__file__)"],
                           capture_output=True, text=True, env={**os.environ, **env},
                           cwd=tmp_path)
    assert where.stdout.strip() == str(site / "softmax_cls" / "__init__.py"), where

    result = train(tmp_path, "run", **env)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = numba_lines(result)
    assert len(lines) == 1 and "no writable cache folder" in lines[0], result.stderr
    assert "cached for later runs" not in result.stderr  # the compile line would say so
    assert (tmp_path / "run" / "best.npz").exists()


def test_a_corrupted_cache_file_is_recompiled_over_once(tmp_path, helpers_cache):
    cache = Path(cache_from(helpers_cache, tmp_path / "numba-cache"))
    first = train(tmp_path, "first", NUMBA_CACHE_DIR=str(cache))
    assert first.returncode == 0 and not numba_lines(first), first.stderr
    [index] = cache.glob("*/entry.train_epoch_kernel-*.nbi")
    index.write_bytes(index.read_bytes()[:20])  # truncated
    [data] = cache.glob("*/entry.predict_kernel-*.nbc")
    data.write_bytes(bytes(range(256)) * 8)  # garbled

    second = train(tmp_path, "second", NUMBA_CACHE_DIR=str(cache))
    assert second.returncode == 0, second.stderr
    assert "Traceback" not in second.stderr
    lines = numba_lines(second)
    assert len(lines) == 1 and "unreadable cache files" in lines[0], second.stderr

    third = train(tmp_path, "third", NUMBA_CACHE_DIR=str(cache))  # repaired: no compile
    assert third.returncode == 0 and third.stderr.strip() == "", third.stderr


# A child's view of predict_kernel (entry.py, which calls fold in step.py): whether numba's
# cache holds it before the call (api._is_compiled, what kernels_are_compiled asks of each
# kernel), then one score of zero weights, which fold's bias term alone decides.
SCORE_ONE_ROW = """
import numpy as np
from softmax_cls.engines.numba_engine import api, entry
rows, W = api._readonly(np.ones((1, 4), np.float32)), np.zeros((2, 5), np.float32)
zeros, ones = np.zeros(4, np.float32), np.ones(4, np.float32)
cached = api._is_compiled(entry.predict_kernel, (rows, W, zeros, ones, True, np.float32(0), 64))
print(cached, api.predict_scores(rows, W, zeros, ones, True)[0, 0])
"""


@pytest.mark.slow  # about 15 s: predict_kernel compiles three times in children
def test_a_kernel_recompiles_when_only_a_helper_in_another_module_changes(tmp_path):
    """numba stamps a kernel's cache entry with its own file only; an edit of step.py alone
    (a line added, then a digit changed: the same size) must still reach
    entry.predict_kernel, in the package's own __pycache__, and the cached-or-not answer
    must follow."""
    site = tmp_path / "site"
    shutil.copytree(Path(softmax_cls.__file__).parent, site / "softmax_cls",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = {key: value for key, value in os.environ.items() if key != "NUMBA_CACHE_DIR"}
    env["PYTHONPATH"] = str(site)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # no step.pyc whose stamp (mtime, size) could miss
    #                                       a same-size edit within the second

    def score() -> str:
        result = subprocess.run([sys.executable, "-c", SCORE_ONE_ROW], capture_output=True,
                                text=True, env=env, cwd=tmp_path, timeout=COMPILE_TIMEOUT)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    assert score() == "False 0.0"
    assert score() == "True 0.0"  # from the cache
    step = site / "softmax_cls" / "engines" / "numba_engine" / "step.py"
    source = step.read_text()
    folded = "    fold_bias(W, has_bias, parts, bias_fold)\n"
    assert source.count(folded) == 1
    step.write_text(source.replace(folded, folded + "    bias_fold += 1.0\n"))
    assert score() == "False 1.0"  # the edited helper runs
    assert score() == "True 1.0"  # and is cached in place of the stale code
    step.write_text(source.replace(folded, folded + "    bias_fold += 2.0\n"))
    assert score() == "False 2.0"  # an edit that keeps the file's size, too


@pytest.mark.slow  # the kernels compile once (15-60 s), then two workers load them
@pytest.mark.parametrize("solver, searched", [("optim.epochs: 1", True),
                                              ("optim.solver: lbfgs", False),
                                              ("optim.epochs: 1", "optim.solver")])
def test_a_sweep_of_two_workers_says_it_compiles_once(tmp_path, helpers_cache, solver,
                                                      searched):
    """The sweep compiles the kernels before its workers start, whether the base config names
    numba (L-BFGS's full-batch kernel here) or `engine` is in the search space (SGD's kernels
    here, the base engine numpy); each worker compiled them itself, at the same moment, and
    said so: the line came once per worker. With optim.solver searched over both solvers it
    compiled the base solver's kernels only, and the worker of an L-BFGS trial compiled its
    own (the line twice); it compiles both. The same command again, on the finished sweep
    with the kernels uncompiled, compiles nothing: no trial is left to run."""
    pytest.importorskip("optuna")
    if "lbfgs" in solver or searched == "optim.solver":
        pytest.importorskip("scipy")
    from softmax_cls.engines.numba_engine import COMPILING

    X, y = linear_data(n=300, d=4)
    np.savez(tmp_path / "train.npz", X=X, y=y)
    write_config(tmp_path, train=str(tmp_path / "train.npz"))
    engine = ("", "engine: {grid: [numba]}, ") if searched is True else ("engine: numba, ", "")
    space = ("optim.solver: {grid: [sgd, lbfgs]}, seed: {grid: [0]}"
             if searched == "optim.solver" else "seed: {grid: [0, 1]}")
    (tmp_path / "s.yaml").write_text(
        f"base: probe.yaml\nset: {{{engine[0]}{solver}, output.plots: false}}\n"
        f"sampler: grid\nspace: {{{engine[1]}{space}}}\n")

    def sweep(cache: str) -> subprocess.CompletedProcess:
        environment = {**os.environ, "PYTHONUNBUFFERED": "1",
                       "NUMBA_CACHE_DIR": cache_from(helpers_cache, tmp_path / cache)}
        return subprocess.run([script("softmax-sweep"), "s.yaml", "--workers", "2", "--quiet",
                               "--out", "sweep"], capture_output=True, text=True,
                              env=environment, cwd=tmp_path, timeout=COMPILE_TIMEOUT)

    first = sweep("numba")
    assert first.returncode == 0, first.stderr
    assert first.stderr.count(COMPILING) == 1, first.stderr
    if searched:
        again = sweep("cold")
        assert again.returncode == 0, again.stderr
        assert COMPILING not in again.stderr, again.stderr


@pytest.mark.parametrize("searched, solvers", [(None, ["sgd"]), (["lbfgs"], ["lbfgs"]),
                                               (["lbfgs", "sgd"], ["lbfgs", "sgd"])])
def test_a_sweep_compiles_the_kernels_of_each_solver_its_trials_use(tmp_path, searched,
                                                                     solvers):
    """optim.solver searched: the sweep compiled the base solver's kernels alone (SGD's here),
    needless where no trial trains with it, and missing L-BFGS's, which each worker then
    compiled itself."""
    pytest.importorskip("optuna")
    from softmax_cls.sweep import driver
    from softmax_cls.sweep.spec import load_sweep

    write_config(tmp_path, train=str(tmp_path / "train.npz"))
    space = {"seed": {"grid": [0]}}
    if searched is not None:
        space["optim.solver"] = {"grid": searched}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({
        "base": "probe.yaml", "set": {"engine": "numba"}, "sampler": "grid", "space": space}))
    configs = driver._likeliest_numba(load_sweep(tmp_path / "s.yaml"))
    assert [config.optim.solver for config in configs] == solvers
    assert all(config.engine == "numba" for config in configs)


@pytest.mark.parametrize("engines, picked", [(["numpy", "auto", "numba"], "numba"),
                                             (["numpy", "auto"], "auto"),
                                             (["torch", "numpy"], "torch")])
def test_a_sweep_searching_engine_compiles_for_numba_before_auto(tmp_path, engines, picked):
    """`engine` searched: the kernels compiled first are numba's where a trial can pick it by
    name, else auto's pick, else the first engine's (then none: it is not numba)."""
    pytest.importorskip("optuna")
    from softmax_cls.sweep import driver
    from softmax_cls.sweep.spec import load_sweep

    write_config(tmp_path, train=str(tmp_path / "train.npz"))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({
        "base": "probe.yaml", "sampler": "grid", "space": {"engine": {"grid": engines}}}))
    configs = driver._likeliest_numba(load_sweep(tmp_path / "s.yaml"))
    assert [config.engine for config in configs] == [picked]


def test_a_sweep_whose_searched_engines_leave_numba_out_compiles_nothing(tmp_path):
    """`engine` searched over numpy alone, the base engine auto: no trial trains with numba,
    so the sweep compiles no kernels (it compiled the base engine's, 20-60 s for nothing)."""
    pytest.importorskip("optuna")
    from softmax_cls.engines.numba_engine import COMPILING

    X, y = linear_data(n=300, d=4)
    np.savez(tmp_path / "train.npz", X=X, y=y)
    write_config(tmp_path, train=str(tmp_path / "train.npz"))
    (tmp_path / "s.yaml").write_text(
        "base: probe.yaml\nset: {optim.epochs: 1, output.plots: false}\n"
        "sampler: grid\nspace: {engine: {grid: [numpy]}, seed: {grid: [0]}}\n")
    base = tmp_path / "probe.yaml"
    assert "engine: numpy" in base.read_text()
    base.write_text(base.read_text().replace("engine: numpy", "engine: auto"))
    result = subprocess.run([script("softmax-sweep"), "s.yaml", "--quiet", "--out", "sweep"],
                            capture_output=True, text=True, cwd=tmp_path,
                            timeout=COMPILE_TIMEOUT,
                            env={**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cold")})
    assert result.returncode == 0, result.stderr
    assert COMPILING not in result.stderr, result.stderr


LBFGS = ["optim.solver=lbfgs", "optim.early_stopping.patience=null"]


@pytest.mark.parametrize("overrides, disabled, compiled", [
    (["engine=numba"], False, "sgd"), (["engine=auto"], False, "sgd"),  # auto picks numba
    (["engine=numba"], True, None),
    (["engine=numba", *LBFGS], False, "lbfgs"), (["engine=auto", *LBFGS], False, "lbfgs"),
    (["engine=numba", *LBFGS], True, None)])
def test_a_sweep_compiles_before_its_workers_only_where_they_can_load_the_cache(
        tmp_path, monkeypatch, overrides, disabled, compiled):
    """The sweep's own process compiles the kernels its workers will use (SGD's training
    kernels, or L-BFGS's full-batch one) for them to load from the cache; not with no
    writable cache folder (each worker compiles in memory anyway: a compile first would only
    delay them)."""
    import dataclasses

    import softmax_cls.engines as engines
    import softmax_cls.engines.numba_engine as numba_engine
    from softmax_cls.config import load_config
    from softmax_cls.sweep import driver

    X, y = linear_data(n=300, d=4)
    np.savez(tmp_path / "train.npz", X=X, y=y)
    config = load_config(write_config(tmp_path, train=str(tmp_path / "train.npz")), overrides)
    driver.prepare_cache(tmp_path, config, progress=False)
    prepared = {"sgd": [], "lbfgs": []}
    monkeypatch.setattr(numba_engine, "ENGINE", dataclasses.replace(
        numba_engine.ENGINE, prepare_function=prepared["sgd"].append))
    monkeypatch.setattr(numba_engine, "prepare_full",
                        lambda *args: prepared["lbfgs"].append(args))
    monkeypatch.setattr(numba_engine.cache, "caching_disabled", lambda: disabled)
    # auto picks numba only when asked for the config's solver: an L-BFGS config asking with
    # SGD's rule (which picks torch where L-BFGS measured numba faster) compiles nothing
    monkeypatch.setattr(engines, "auto_engine_name", lambda *args, solver="sgd", **kwargs:
                        "numba" if solver == config.optim.solver else "numpy")
    driver._compile_before_workers(config, tmp_path / "cache")
    assert [kind for kind, calls in prepared.items() if calls] == (
        [compiled] if compiled else [])
