"""The click layer of the commands (softmax_cls/cli.py): the error-line wrapper's handling of
each kind of failure, and options whose effect no other test sees (defaults, flags passed
through, exit codes). Each case was a mutation of cli.py that the suite let through
(docs/development.md, "Mutations of the command line")."""

from __future__ import annotations

import errno
import json
import re
import socket
import subprocess
import sys

import pytest
from cli_util import assert_one_line_error, run
from test_run_folder import features_config

# A command run as its console script would run it, with one library function replaced by
# one that raises: the failures a user can meet only with a full disk, a pressed Ctrl-C or
# too little memory, at a point chosen here.
RAISING = """
import importlib, sys
from softmax_cls import cli
from softmax_cls.errors import ConfigError, DataError, InputError
from softmax_cls.interrupts import Terminated

def fail(*args, **kwargs):
    raise {exception}

setattr(importlib.import_module({module!r}), {name!r}, fail)
getattr(cli, {command!r}).main({args!r}, prog_name="softmax-cls-test")
"""


def run_raising(exception: str, *args: str, command: str = "gradcheck_command",
                module: str = "softmax_cls.training.gradcheck",
                name: str = "random_image_problem") -> subprocess.CompletedProcess:
    """`command` with `args`, `module.name` raising `exception` (Python source) when called;
    by default the gradient check's random problem, made before any computing."""
    code = RAISING.format(exception=exception, module=module, name=name, command=command,
                          args=list(args))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("exception, code, line", [
    ("MemoryError('Unable to allocate 3.5 GiB for an array')", 1,
     "error: out of memory: Unable to allocate 3.5 GiB for an array"),
    ("MemoryError()", 1, "error: out of memory"),
    (f"PermissionError({errno.EPERM}, 'Operation not permitted', '/data/x.bin')", 1,
     "error: /data/x.bin: permission denied (Operation not permitted)"),
    (f"PermissionError({errno.EACCES}, 'Permission denied', '/data/x.bin')", 1,
     "error: /data/x.bin: Permission denied"),
    (f"OSError({errno.ENOSPC}, 'No space left on device')", 1,
     "error: No space left on device"),
    ("InputError('x' * 3000)", 1, f"error: {'x' * 1000}...(3000 characters)"),
    ("ConfigError('optim.lr: must be > 0')", 2, "error: optim.lr: must be > 0"),
    ("DataError('x.npz: not found')", 1, "error: x.npz: not found"),
    ("KeyboardInterrupt()", 130, "error: interrupted"),
    ("Terminated()", 143, "error: terminated"),
], ids=["memory", "memory unnamed", "EPERM", "EACCES", "no file", "long line", "config",
        "data", "ctrl-c", "sigterm"])
def test_each_failure_in_a_command_is_its_one_line_and_exit_code(exception, code, line):
    """The host's MemoryError and OSError (a permission error said as one, whatever its
    errno's words), a line past MESSAGE_CAP cut with its length, Ctrl-C and SIGTERM: exactly
    one line on stderr, nothing before it (click's own Ctrl-C handling wrote an empty line)."""
    result = run_raising(exception)
    assert result.returncode == code, result.stderr
    assert result.stderr == line + "\n"


def test_ctrl_c_while_the_options_are_read_is_one_line_too():
    """A signal before the command itself runs (in an option's callback: --threads): its
    line and exit code are still the signal's, and stderr holds that line alone (click's
    own handling writes an empty line before its Abort)."""
    for exception, code, line in (("Terminated()", 143, "error: terminated\n"),
                                  ("KeyboardInterrupt()", 130, "error: interrupted\n")):
        result = run_raising(exception, "--threads", "1", module="softmax_cls.threads",
                             name="use_threads")
        assert (result.returncode, result.stderr) == (code, line)


def closed_port_url() -> str:
    """An archive URL on a loopback port nothing listens on: a download is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}/cifar-10-binary.tar.gz"


def test_softmax_download_defaults_to_cifar10_binary_in_data(tmp_path):
    """Without options: CIFAR-10 in the binary format under ./data (its damaged copy there is
    named, with the --root to give to replace it); no download is tried for a copy present,
    and --force tries one."""
    (tmp_path / "data" / "cifar-10-batches-bin").mkdir(parents=True)
    url = closed_port_url()
    result = run("softmax-download", "--url", url, "--quiet", cwd=tmp_path)
    assert_one_line_error(result, 1, "data/cifar-10-batches-bin/batches.meta.txt: missing",
                          "--force --root data,")
    forced = run("softmax-download", "--url", url, "--quiet", "--force", cwd=tmp_path)
    assert_one_line_error(forced, 1, "refused")
    assert (tmp_path / "data" / "cifar-10-batches-bin").is_dir()  # the old copy stays


def test_gradcheck_checks_the_reg_given_and_refuses_set_without_a_config():
    """--reg is the reg of the second check; --set without --config would change nothing,
    so it is refused rather than ignored."""
    checked = run("softmax-gradcheck", "--samples", "20", "--checks", "1", "--reg", "0.5")
    assert checked.returncode == 0, checked.stderr
    assert "loss_and_grad, reg=0.5\n" in checked.stdout
    refused = run("softmax-gradcheck", "--set", "loss.reg=0.5")
    assert_one_line_error(refused, 2, "--set needs --config")


def test_softmax_train_says_when_it_stopped_early(tmp_path):
    """The last line counts the epochs trained and says that early stopping ended the run."""
    config = features_config(tmp_path)
    result = run("softmax-train", "--config", str(config), "--out", "run", "--quiet",
                 "--set", "optim.epochs=40", "--set", "optim.early_stopping.patience=1",
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    epochs = json.loads((tmp_path / "run" / "summary.json").read_text())["epochs"]
    assert epochs < 40
    assert result.stdout.strip().endswith(f"; {epochs} epochs, stopped early; run folder run")


@pytest.mark.parametrize("args, option, low", [
    (["softmax-gradcheck", "--classes", "1"], "--classes", 2),
    (["softmax-gradcheck", "--samples", "0"], "--samples", 1),
    (["softmax-gradcheck", "--checks", "0"], "--checks", 1),
    (["softmax-gradcheck", "--seed", "-1"], "--seed", 0),
    (["softmax-sweep", "missing.yaml", "--workers", "0"], "--workers", 1),
    (["softmax-predict", "missing.npz", "x.png", "--top-k", "0"], "--top-k", 1),
    (["softmax-predict", "missing.npz", "x.png", "--batch-size", "0"], "--batch-size", 1),
], ids=lambda value: value if isinstance(value, str) and value.startswith("--") else None)
def test_a_count_below_its_range_is_refused_by_its_option(tmp_path, args, option, low):
    """Each count is checked where it is read, before any file is opened: one class, no
    worker or no row per batch never reach the library."""
    result = run(*args, cwd=tmp_path)
    assert_one_line_error(result, 2, f"Invalid value for '{option}'",
                          f"is not in the range x>={low}")


def test_softmax_eval_json_names_the_split_it_evaluated(tmp_path):
    """--json's "split" is the --split given (test by default), as the text's first line."""
    config = features_config(tmp_path)
    trained = run("softmax-train", "--config", str(config), "--out", "run", "--quiet",
                  cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    for args, split in (([], "test"), (["--split", "val"], "val")):
        result = run("softmax-eval", "run/best.npz", "--json", "--quiet", *args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert (report["checkpoint"], report["split"]) == ("run/best.npz", split)
        text = run("softmax-eval", "run/best.npz", "--quiet", *args, cwd=tmp_path)
        assert text.stdout.splitlines()[0] == f"run/best.npz on the {split} split"


def test_softmax_sweep_counts_only_the_trial_states_it_met(tmp_path):
    """The last line counts the trials by state, leaving out the states no trial ended in
    (no `0 pruned, 0 failed`); --trials overrides the sweep file's count."""
    pytest.importorskip("optuna")
    features_config(tmp_path)
    (tmp_path / "s.yaml").write_text("base: probe.yaml\ntrials: 3\nsampler: random\n"
                                     "space:\n  optim.lr: {log_uniform: [0.01, 0.1]}\n")
    result = run("softmax-sweep", "s.yaml", "--trials", "2", "--out", "sweep", "--quiet",
                 "--no-plots", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"best trial [01]: val accuracy [0-9.]+, test accuracy [0-9.]+; "
                        r"trials: 2 complete; sweep folder sweep", line), line
