"""Benchmark softmax-cls against a bare numpy floor and PyTorch on the CPU, on the real data.

    python scripts/benchmark.py [--archive PATH | --root DIR] [--reps 5] [--threads N]
                                [--batch-sizes 64,256,1024] [--out FILE] [--skip-torch] [--quick]

Everything runs in ONE process (plus the child processes named below) with the BLAS and OpenMP
thread count pinned to --threads: the script re-executes itself with OMP_NUM_THREADS,
OPENBLAS_NUM_THREADS and MKL_NUM_THREADS set before numpy is loaded, and the children inherit
them. Progress notes go to stderr; one JSON object goes to stdout (and to --out).

What is measured (all times are wall-clock seconds, medians over the repetitions, every raw
per-repetition time is kept in the JSON):

- data.cold: archive -> arrays: `load_dataset(archive=...)` into a fresh empty root (safe
  extraction with fsync, per-file size + md5 verification, reading). The archive's own bytes
  may be in the OS page cache after the first repetition. --cold-reps repetitions (default 3,
  as each writes 180 MB). data.warm: `load_dataset(root)` from the extracted folder (md5 of
  every file + reading), --reps repetitions, interleaved with the cold ones.
- epochs: for each batch size B, one epoch over the same 49,000 training rows (val_size 1000)
  of three methods, interleaved: for each repetition, for each B, each method once (the method
  order rotates from one repetition to the next), after one warm-up epoch of each (not counted).
  * floor: a bare numpy pass over the preprocessed float32 X (49,000 x 3073, bias column
    included), materialised once outside the timing, in contiguous minibatches X[i:i+B]:
    S = Xb @ W; S -= max; exp; normalise; subtract one-hot; /B; dW = Xb.T @ S; W -= lr dW.
    No shuffling, no gather, no regularisation, no momentum: the least work an epoch needs.
  * trainer: `softmax_cls.train.train` itself, as users run it, on a config with
    optim.epochs=1, early stopping off, augmentation off, momentum 0.9, val_size 1000 and the
    batch size B (configs/default.yaml is the base when it exists, else the schema defaults).
    Its epoch time is the "seconds" the trainer records in its history: the SGD loop over
    shuffled, gathered uint8 rows (conversion to float32, folded preprocessing, L2 penalty,
    momentum, per-batch loss and accuracy) PLUS the validation pass over 1000 images. This is
    the number compared with the floor. Also reported, so nothing is hidden: the whole train()
    call (statistics fitting, checkpoint writes, the test evaluation), the validation pass and
    the statistics fitting timed on their own, and the loop-only ratio (epoch - validation).
  * torch (when torch imports and not --skip-torch; never a dependency): nn.Linear(3073, 10,
    bias=False) on the same preprocessed float32 X (the bias is X's constant column, as in
    the trainer), CrossEntropyLoss, torch.optim.SGD(lr, momentum=0.9, weight_decay=0),
    torch.set_num_threads(threads). Each epoch gathers random rows like the trainer does:
    a fresh permutation, then X.index_select(0, idx[i:i+B]) per minibatch (= X[idx]).
    Ratio = torch seconds / trainer seconds (how many times the trainer's throughput).
- children: `softmax-train --config configs/default.yaml --quiet` in a child process:
  * warm: data.root = the extracted folder; peak RSS from os.wait4's rusage of that very
    child (ru_maxrss, KiB on Linux) and its wall time;
  * cold: a fresh empty data.root with data.archive = the archive: archive to trained
    checkpoint, wall time (and peak RSS); median of --cold-train-reps runs (default 3: with
    2 BLAS threads, epoch times on a small VM can switch between two speeds for a while).
  Until configs/default.yaml exists, a stand-in config with optim.epochs: 20 is used (the JSON
  says so).
- eval: `image_scores(W, pre, test_images).argmax(1)` for the 10,000 test images with the
  weights of the warm child run's best.npz (median of --reps), and the full `softmax-eval`
  CLI once (wall: interpreter start, checkpoint load, data verification, report).

Targets (pass/fail in the JSON): trainer epoch <= 1.2x floor at B=256; throughput >= 1.5x
PyTorch at B=256 (same threads); peak RSS of the default run <= 500 MB; archive to trained
checkpoint, cold, <= 30 s; evaluation of the 10,000 test images <= 1 s.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from softmax_cls.checkpoint import load_checkpoint
from softmax_cls.config import Config, load_config
from softmax_cls.datasets import CifarData, get_spec, load_dataset
from softmax_cls.errors import SoftmaxClsError
from softmax_cls.preprocess import fit_preprocessor, image_scores, split_train_val
from softmax_cls.train import evaluate, train

REPO = Path(__file__).resolve().parent.parent
DEFAULT_ARCHIVE = REPO.parent / "shared" / "data" / "cifar-10-binary.tar.gz"
DEFAULT_CONFIG = REPO / "configs" / "default.yaml"
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
PINNED_MARK = "SOFTMAX_CLS_BENCH_THREADS"
VAL_SIZE = 1000
LR = 1e-3
MOMENTUM = 0.9
TARGETS = {"trainer_over_floor_max": 1.2, "torch_over_trainer_min": 1.5,
           "peak_rss_mb_max": 500.0, "archive_to_checkpoint_cold_s_max": 30.0,
           "eval_10k_s_max": 1.0, "at_batch_size": 256}


def note(message: str) -> None:
    print(f"[benchmark] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archive", type=Path, help="cifar-10-binary.tar.gz (default: "
                        f"{DEFAULT_ARCHIVE} if present)")
    parser.add_argument("--root", type=Path, help="a data folder holding cifar-10-batches-bin/ "
                        "(or the archive) instead of --archive")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions (default 5)")
    parser.add_argument("--cold-reps", type=int, default=3,
                        help="cold archive->arrays repetitions (default 3)")
    parser.add_argument("--cold-train-reps", type=int, default=3,
                        help="archive -> trained checkpoint child runs (default 3, median)")
    parser.add_argument("--batch-sizes", default="64,256,1024",
                        help="comma-separated (default 64,256,1024)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="BLAS / OpenMP / torch threads (default: os.cpu_count())")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help="config of the child training runs (default configs/default.yaml)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--skip-torch", action="store_true", help="do not measure PyTorch")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 repetitions, 1 cold "
                        "load, 2-epoch child runs (numbers not comparable to the targets)")
    args = parser.parse_args(argv)
    try:
        args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    except ValueError:
        parser.error(f"--batch-sizes: expected integers like 64,256,1024, got {args.batch_sizes}")
    if not args.batch_sizes or min(args.batch_sizes) < 1:
        parser.error("--batch-sizes: need at least one positive batch size")
    if min(args.reps, args.cold_reps, args.cold_train_reps, args.threads) < 1:
        parser.error("--reps, --cold-reps, --cold-train-reps and --threads must be at least 1")
    if args.quick:
        args.reps, args.cold_reps, args.cold_train_reps = min(args.reps, 2), 1, 1
    return args


def pin_threads(threads: int) -> None:
    """Re-execute this script with the thread variables set, unless they already are.

    numpy's BLAS reads them only when it is loaded, so they must be in the environment
    before the interpreter starts; the child processes inherit them.
    """
    if os.environ.get(PINNED_MARK) == str(threads):
        return
    env = dict(os.environ, **dict.fromkeys(THREAD_VARS, str(threads)))
    env[PINNED_MARK] = str(threads)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]], env)


class CpuMeter:
    """CPU seconds the OTHER processes on this machine used while the meter ran.

    Busy time of all CPUs (/proc/stat, including time stolen by a hypervisor) less this
    process's and its children's own CPU time: anything well above 0 means contention, which
    spoils timings (OpenBLAS threads that wait for a busy core are slowed many times over).
    None where /proc/stat is missing.
    """

    def __init__(self):
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float, float] | None:
        try:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        except OSError:
            return None
        ticks = [int(x) for x in fields]
        busy = sum(ticks) - ticks[3] - (ticks[4] if len(ticks) > 4 else 0)  # less idle, iowait
        own = sum(os.times()[:4])
        tick = os.sysconf("SC_CLK_TCK")
        steal = ticks[7] if len(ticks) > 7 else 0
        return busy / tick, own, time.monotonic(), steal / tick

    def report(self) -> dict | None:
        end = self._sample()
        if self.start is None or end is None:
            return None
        busy, own, wall, steal = (b - a for a, b in zip(self.start, end, strict=True))
        foreign = max(busy - own, 0.0)
        share = foreign / (wall * (os.cpu_count() or 1))
        return {"wall_s": wall, "foreign_cpu_s": foreign, "foreign_cpu_share": share,
                "hypervisor_steal_s": steal, "contended": share > 0.05}


def median(values: list[float]) -> float:
    return statistics.median(values)


def timed(fn: Callable[..., object], *args, **kwargs) -> tuple[float, object]:
    """(seconds, result) of fn(*args, **kwargs), after a garbage collection."""
    gc.collect()
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - started, result


# ---------------------------------------------------------------------------------------------
# Data


def resolve_data(args: argparse.Namespace) -> tuple[Path | None, Path | None]:
    """(archive or None, user data folder or None); exits with one line when there is none."""
    archive_name = get_spec("cifar10", "binary").archive_name
    archive = args.archive
    if archive is None and args.root is not None and (args.root / archive_name).is_file():
        archive = args.root / archive_name
    if archive is None and args.root is None and DEFAULT_ARCHIVE.is_file():
        archive = DEFAULT_ARCHIVE
    if archive is not None and not archive.is_file():
        sys.exit(f"error: archive {archive} does not exist")
    if archive is None and args.root is None:
        sys.exit(f"error: no data: {DEFAULT_ARCHIVE} is missing; pass --archive PATH to "
                 f"{archive_name} or --root DIR holding cifar-10-batches-bin/")
    if archive is None and not holds_extracted(args.root):
        sys.exit(f"error: no data in {args.root}: neither cifar-10-batches-bin/ nor "
                 f"{archive_name}; pass --archive PATH")
    return archive, args.root


def holds_extracted(root: Path) -> bool:
    """Whether `root` is, or holds, an extracted cifar-10-batches-bin folder."""
    folder = get_spec("cifar10", "binary").folder
    return (root / folder).is_dir() or (root / "data_batch_1.bin").is_file()


def bench_loading(archive: Path | None, user_root: Path | None, scratch: Path, reps: int,
                  cold_reps: int) -> tuple[dict, Path]:
    """Cold (archive -> arrays, fresh root) and warm (extracted folder) loads, interleaved.

    Returns the results and the warm data root used by everything after.
    """
    cold, warm = [], []
    warm_root = user_root if user_root is not None and holds_extracted(user_root) else None
    for rep in range(max(reps, cold_reps if archive else 0)):
        if archive is not None and rep < cold_reps:
            root = scratch / f"cold-{rep}"
            seconds, _ = timed(load_dataset, root=root, archive=archive, download=False,
                               progress=False)
            cold.append(seconds)
            if warm_root is None:
                warm_root = root
            elif root != warm_root:
                shutil.rmtree(root, ignore_errors=True)
        seconds, _ = timed(load_dataset, root=warm_root, download=False, progress=False)
        warm.append(seconds)
        cold_note = f"cold {cold[-1]:.2f} s, " if archive is not None and rep < cold_reps else ""
        note(f"load rep {rep + 1}: {cold_note}warm {warm[-1]:.2f} s")
    result = {"cold_archive_to_arrays_s": median(cold) if cold else None, "cold_raw": cold,
              "cold_reps": len(cold), "warm_cache_to_arrays_s": median(warm), "warm_raw": warm,
              "archive": str(archive) if archive else None, "warm_root": str(warm_root)}
    return result, warm_root


# ---------------------------------------------------------------------------------------------
# One epoch of each method


class Floor:
    """The bare numpy pass: contiguous float32 minibatches of the preprocessed X."""

    name = "floor"

    def __init__(self, X: np.ndarray, y: np.ndarray, n_classes: int):
        self.X, self.y = X, y
        self.W = np.zeros((X.shape[1], n_classes), dtype=np.float32)

    def epoch(self, batch_size: int) -> float:
        X, y, W = self.X, self.y, self.W
        lr = np.float32(LR)
        started = time.perf_counter()
        for start in range(0, len(X), batch_size):
            Xb, yb = X[start : start + batch_size], y[start : start + batch_size]
            n = len(Xb)
            S = Xb @ W
            S -= S.max(axis=1, keepdims=True)
            np.exp(S, out=S)
            S /= S.sum(axis=1, keepdims=True)
            S[np.arange(n), yb] -= 1
            S /= n
            dW = Xb.T @ S
            dW *= lr
            W -= dW
        return time.perf_counter() - started


def trainer_overrides(batch_size: int) -> list[str]:
    """What the trainer benchmark changes in its base config: one epoch, nothing skipped."""
    return [f"optim.batch_size={batch_size}", "optim.epochs=1",
            "optim.early_stopping.patience=null", f"optim.momentum={MOMENTUM}",
            "augment.hflip=false", "augment.translate=0", f"data.val_size={VAL_SIZE}"]


class Trainer:
    """softmax_cls.train.train for one epoch; keeps the whole-call time and the history's."""

    name = "trainer"

    def __init__(self, data: CifarData, config_path: Path | None, out_dir: Path):
        self.data, self.out_dir = data, out_dir
        self.config_path = config_path
        self.calls: dict[int, list[float]] = {}

    def config(self, batch_size: int) -> Config:
        return load_config(self.config_path, trainer_overrides(batch_size))

    def epoch(self, batch_size: int) -> float:
        config = self.config(batch_size)
        started = time.perf_counter()
        result = train(config, self.data, self.out_dir, progress=False)
        self.calls.setdefault(batch_size, []).append(time.perf_counter() - started)
        return float(result.state.history[-1]["seconds"])


class Torch:
    """nn.Linear + CrossEntropyLoss + SGD(momentum) with the trainer's random-row gather."""

    name = "torch"

    def __init__(self, torch, X: np.ndarray, y: np.ndarray, n_classes: int, threads: int):
        torch.set_num_threads(threads)
        self.torch = torch
        self.X, self.y = torch.from_numpy(X), torch.from_numpy(y)
        self.model = torch.nn.Linear(X.shape[1], n_classes, bias=False)
        torch.nn.init.zeros_(self.model.weight)
        self.loss = torch.nn.CrossEntropyLoss()
        self.optim = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM,
                                     weight_decay=0)
        self.rng = np.random.default_rng(0)

    def epoch(self, batch_size: int) -> float:
        torch, X, y, model, optim, loss_fn = (self.torch, self.X, self.y, self.model,
                                              self.optim, self.loss)
        started = time.perf_counter()
        order = torch.from_numpy(self.rng.permutation(len(X)))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            xb, yb = X.index_select(0, idx), y.index_select(0, idx)
            optim.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            optim.step()
        return time.perf_counter() - started


def import_torch(skip: bool):
    if skip:
        return None
    try:
        import torch
    except ImportError:
        note("torch not importable: PyTorch comparison skipped")
        return None
    return torch


def bench_epochs(data: CifarData, args: argparse.Namespace, config_path: Path | None,
                 scratch: Path, torch) -> dict:
    """Interleaved epochs of floor, trainer (and torch) at every batch size."""
    train_rows, val_rows = split_train_val(data.train_labels, VAL_SIZE, 0)
    pre = fit_preprocessor(data.train_images, rows=train_rows)
    X = pre.transform(data.train_images[train_rows])  # (49000, 3073) float32, materialised once
    y = data.train_labels[train_rows]
    n_classes = len(data.class_names)
    methods = [Floor(X, y, n_classes),
               Trainer(data, config_path, scratch / "trainer-run")]
    if torch is not None:
        methods.append(Torch(torch, X, y, n_classes, args.threads))
    raw: dict[str, dict[int, list[float]]] = {m.name: {b: [] for b in args.batch_sizes}
                                              for m in methods}
    note("warm-up epochs (not counted)")
    for batch_size in args.batch_sizes:
        for method in methods:
            method.epoch(batch_size)
    methods[1].calls.clear()
    side = {"val_pass_s": [], "fit_statistics_s": [], "test_eval_s": []}
    for rep in range(args.reps):
        order = methods[rep % len(methods):] + methods[: rep % len(methods)]
        for batch_size in args.batch_sizes:
            for method in order:
                gc.collect()
                raw[method.name][batch_size].append(method.epoch(batch_size))
            note(f"rep {rep + 1}/{args.reps} B={batch_size}: " + ", ".join(
                f"{m.name} {raw[m.name][batch_size][-1]:.3f} s" for m in methods))
        side_timings(side, data, pre, methods[1], val_rows, train_rows)
    return summarise_epochs(raw, methods[1].calls, side, args.batch_sizes)


def side_timings(side: dict, data: CifarData, pre, trainer: Trainer, val_rows: np.ndarray,
                 train_rows: np.ndarray) -> None:
    """What the trainer does besides its SGD loop, each timed on its own."""
    W = np.zeros((pre.n_features, len(data.class_names)), dtype=np.float32)
    val_images, val_labels = data.train_images[val_rows], data.train_labels[val_rows]
    clip = trainer.config(256).loss.clip
    side["val_pass_s"].append(timed(evaluate, W, pre, val_images, val_labels, clip)[0])
    side["fit_statistics_s"].append(timed(fit_preprocessor, data.train_images,
                                          rows=train_rows)[0])
    side["test_eval_s"].append(timed(evaluate, W, pre, data.test_images, data.test_labels,
                                     clip)[0])


def summarise_epochs(raw: dict, calls: dict, side: dict, batch_sizes: list[int]) -> dict:
    val_pass = median(side["val_pass_s"])
    per_batch = {}
    for b in batch_sizes:
        floor, trainer = median(raw["floor"][b]), median(raw["trainer"][b])
        row = {"floor_s": floor, "trainer_epoch_s": trainer,
               "trainer_over_floor": trainer / floor,
               "trainer_loop_only_s": trainer - val_pass,
               "trainer_loop_only_over_floor": (trainer - val_pass) / floor,
               "trainer_train_call_s": median(calls[b]),
               "trainer_train_call_overhead_s": median(calls[b]) - trainer,
               "raw": {"floor": raw["floor"][b], "trainer_epoch": raw["trainer"][b],
                       "trainer_train_call": calls[b]}}
        # Paired: the median of the per-repetition ratios. The methods of one repetition run
        # back to back, so a slow spell of the machine hits both sides of each ratio.
        row["paired_trainer_over_floor"] = median(
            [t / f for t, f in zip(raw["trainer"][b], raw["floor"][b], strict=True)])
        if "torch" in raw:
            torch_s = median(raw["torch"][b])
            row.update(torch_s=torch_s, torch_over_trainer=torch_s / trainer,
                       torch_over_floor=torch_s / floor)
            row["paired_torch_over_trainer"] = median(
                [t / s for t, s in zip(raw["torch"][b], raw["trainer"][b], strict=True)])
            row["raw"]["torch"] = raw["torch"][b]
        per_batch[str(b)] = row
    return {"per_batch_size": per_batch,
            "trainer_side": {k: median(v) for k, v in side.items()},
            "trainer_side_raw": side}


# ---------------------------------------------------------------------------------------------
# Child processes: peak RSS, archive to checkpoint, the eval CLI


def console_script(name: str) -> list[str]:
    """The console script `name` beside this interpreter (no shim in between), else on PATH."""
    candidate = Path(sysconfig.get_path("scripts")) / name
    if candidate.is_file():
        return [str(candidate)]
    found = shutil.which(name)
    if found:
        return [found]
    module, func = {"softmax-train": ("softmax_cls.cli", "train_command"),
                    "softmax-eval": ("softmax_cls.cli", "eval_command")}[name]
    return [sys.executable, "-c", f"from {module} import {func}; {func}()"]


# Runs in a bare interpreter (python -S) that forks and execs the command: ru_maxrss of the
# grandchild then starts from this small process, not from the benchmark's gigabyte (Linux
# carries the forking process's high-water RSS over fork and exec, and subprocess may vfork).
LAUNCHER = """
import json, os, sys, time
log = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.dup2(log, 1)
    os.dup2(log, 2)
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
print(json.dumps({"wall_s": time.perf_counter() - started,
                  "exit_code": os.waitstatus_to_exitcode(status),
                  "peak_rss_mb": usage.ru_maxrss / 1024, "user_s": usage.ru_utime,
                  "sys_s": usage.ru_stime}))
"""


def run_child(command: list[str], log: Path) -> dict:
    """Run a command; its wall time, exit code and peak RSS (ru_maxrss of that process alone,
    KiB on Linux, reported in MiB), measured by LAUNCHER."""
    note("running " + " ".join(command))
    launched = subprocess.run([sys.executable, "-S", "-c", LAUNCHER, str(log), *command],
                              capture_output=True, text=True, check=True)
    result = json.loads(launched.stdout)
    lines = log.read_text(errors="replace").strip().splitlines()
    if result["exit_code"] != 0:
        note(f"exit code {result['exit_code']}: " + " | ".join(lines[-3:]))
    result["output_tail"] = lines[-1:]
    return result


def child_config(args: argparse.Namespace, scratch: Path) -> tuple[Path, bool]:
    """(config file, whether it is the stand-in used while configs/default.yaml is missing)."""
    if args.config.is_file():
        return args.config, False
    stand_in = scratch / "stand-in-default.yaml"
    stand_in.write_text("optim:\n  epochs: 20\n")
    note(f"{args.config} is missing: the child runs use a stand-in config with epochs: 20")
    return stand_in, True


def bench_children(args: argparse.Namespace, config: Path, warm_root: Path,
                   archive: Path | None, scratch: Path) -> dict:
    extra = ["--set", "optim.epochs=2"] if args.quick else []
    base = [*console_script("softmax-train"), "--config", str(config), "--quiet",
            "--set", "data.download=false", *extra]
    warm_out = scratch / "run-warm"
    warm = run_child([*base, "--set", f"data.root={warm_root}",
                      "--set", f"output.dir={warm_out}"], scratch / "run-warm.log")
    result = {"default_run_warm": warm, "default_run_out": str(warm_out)}
    if archive is not None:
        runs = []
        for rep in range(args.cold_train_reps):
            cold_root = scratch / f"cold-run-data-{rep}"
            runs.append(run_child([*base, "--set", f"data.root={cold_root}",
                                   "--set", f"data.archive={archive}",
                                   "--set", f"output.dir={scratch / f'run-cold-{rep}'}"],
                                  scratch / f"run-cold-{rep}.log"))
            shutil.rmtree(cold_root, ignore_errors=True)
        walls = [run["wall_s"] for run in runs]
        result["archive_to_checkpoint_cold"] = {
            "wall_s": median(walls), "raw_wall_s": walls,
            "exit_code": max((run["exit_code"] for run in runs), key=abs),
            "peak_rss_mb": max(run["peak_rss_mb"] for run in runs), "runs": runs}
    else:
        note("no archive: archive-to-checkpoint (cold) not measured")
        result["archive_to_checkpoint_cold"] = None
    return result


def predict(W: np.ndarray, pre, images: np.ndarray) -> np.ndarray:
    """Predicted labels (N,) of images (N, 3072) uint8, as evaluate_checkpoint computes them."""
    return image_scores(W, pre, images).argmax(axis=1)


def bench_eval(data: CifarData, checkpoint: Path, warm_root: Path, reps: int,
               scratch: Path) -> dict:
    """In-process prediction of the test images, and the softmax-eval CLI once."""
    if not checkpoint.is_file():
        note(f"{checkpoint} is missing: evaluation not measured")
        return {"predict_10k_s": None}
    ckpt = load_checkpoint(checkpoint)
    W, pre = ckpt.W, ckpt.preprocessor
    times, accuracy = [], None
    for _ in range(reps + 1):  # the first is a warm-up
        seconds, predictions = timed(predict, W, pre, data.test_images)
        times.append(seconds)
        accuracy = float(np.mean(predictions == data.test_labels))
    cli = run_child([*console_script("softmax-eval"), str(checkpoint), "--quiet", "--json",
                     "--root", str(warm_root)], scratch / "eval.log")
    return {"predict_10k_s": median(times[1:]), "predict_raw": times[1:],
            "n_test": len(data.test_images), "test_accuracy": accuracy, "eval_cli": cli}


# ---------------------------------------------------------------------------------------------
# Report


def machine_info(torch, threads: int) -> dict:
    blas = None
    try:
        deps = np.show_config(mode="dicts").get("Build Dependencies", {})
        blas = {k: deps.get("blas", {}).get(k) for k in ("name", "version",
                                                         "openblas configuration")}
    except (TypeError, AttributeError):  # numpy < 1.26 has no mode="dicts"
        pass
    return {"cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else None,
            "threads": threads, "thread_env": {v: os.environ.get(v) for v in THREAD_VARS},
            "platform": platform.platform(), "python": platform.python_version(),
            "numpy": np.__version__, "blas": blas,
            "torch": getattr(torch, "__version__", None) if torch else None,
            "torch_threads": torch.get_num_threads() if torch else None,
            "load_average_start": list(os.getloadavg())}


def check(value: float | None, limit: float, at_most: bool = True) -> dict:
    passed = None if value is None else (value <= limit if at_most else value >= limit)
    return {"value": value, ("max" if at_most else "min"): limit, "pass": passed}


def targets(epochs: dict, children: dict, evaluation: dict, quick: bool) -> dict:
    at = epochs["per_batch_size"].get(str(TARGETS["at_batch_size"]), {})
    cold = children.get("archive_to_checkpoint_cold")
    result = {
        "trainer_over_floor_at_256": check(at.get("trainer_over_floor"),
                                           TARGETS["trainer_over_floor_max"]),
        "torch_over_trainer_at_256": check(at.get("torch_over_trainer"),
                                           TARGETS["torch_over_trainer_min"], at_most=False),
        "peak_rss_mb_default_run": check(children["default_run_warm"]["peak_rss_mb"],
                                         TARGETS["peak_rss_mb_max"]),
        "archive_to_checkpoint_cold_s": check(cold["wall_s"] if cold else None,
                                              TARGETS["archive_to_checkpoint_cold_s_max"]),
        "eval_10k_s": check(evaluation.get("predict_10k_s"), TARGETS["eval_10k_s_max"]),
    }
    for name in ("peak_rss_mb_default_run", "archive_to_checkpoint_cold_s"):
        run = children["default_run_warm"] if name.startswith("peak") else cold
        if run and run["exit_code"] != 0:
            result[name]["pass"] = False
    if quick:  # 2-epoch child runs are not the default run
        result["archive_to_checkpoint_cold_s"]["pass"] = None
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pin_threads(args.threads)
    archive, user_root = resolve_data(args)
    torch = import_torch(args.skip_torch)
    info = machine_info(torch, args.threads)
    note(f"threads {args.threads}, load average {info['load_average_start']}")
    whole = CpuMeter()
    with tempfile.TemporaryDirectory(prefix="softmax-bench-") as tmp:
        scratch = Path(tmp)
        loading, warm_root = bench_loading(archive, user_root, scratch, args.reps,
                                           args.cold_reps)
        data = load_dataset(root=warm_root, download=False, progress=False)
        config, stand_in = child_config(args, scratch)
        meter = CpuMeter()
        epochs = bench_epochs(data, args, args.config if args.config.is_file() else None,
                              scratch, torch)
        epochs["other_processes"] = meter.report()
        gc.collect()
        children = bench_children(args, config, warm_root, archive, scratch)
        evaluation = bench_eval(data, Path(children["default_run_out"]) / "best.npz",
                                warm_root, args.reps, scratch)
    info["load_average_end"] = list(os.getloadavg())
    info["other_processes_whole_run"] = whole.report()
    if (info["other_processes_whole_run"] or {}).get("contended"):
        note("WARNING: other processes used the CPUs during this run: timings are unreliable")
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick, "reps": args.reps, "batch_sizes": args.batch_sizes,
        "machine": info, "child_config": str(config), "child_config_is_stand_in": stand_in,
        "trainer_config_base": str(args.config) if args.config.is_file() else "schema defaults",
        "trainer_overrides": trainer_overrides(0)[1:],
        "targets": targets(epochs, children, evaluation, args.quick),
        "loading": loading, "epochs": epochs, "children": children, "eval": evaluation,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SoftmaxClsError as exc:  # bad data or config: one line, no traceback
        sys.exit(f"error: {exc}")
