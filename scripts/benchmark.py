"""Benchmark the training engines against a bare numpy floor and PyTorch on the CPU, real data.

    python scripts/benchmark.py [--root DIR] [--archive PATH] [--threads N] [--reps 5]
                                [--batch-sizes 64,256,1024] [--out FILE] [--skip-torch] [--quick]
                                [--device cpu|cuda|cuda:N] [--skip-runs]
    python scripts/benchmark.py --probe [--scale 0.02] [--probe-classes 100,1000]
                                [--probe-batch 1024] [--device ...] [--threads N] [--reps 5]

Threads are pinned: the script re-executes itself with OMP_NUM_THREADS, OPENBLAS_NUM_THREADS,
MKL_NUM_THREADS (BLAS: floor, numpy engine, PyTorch via torch.set_num_threads too) and
NUMBA_NUM_THREADS (the numba engine) all set to --threads before numpy is loaded; the child
processes inherit them. The numba engine's thread governor (which moves a contended run to one
thread) is switched off for the epoch timings, so they are always at --threads; the default
runs in child processes keep it, as users do. One method runs at a time, after a pause of
IDLE_S in which the previous method's idle threads stop spinning, so BLAS threads and numba
threads are never busy at once. Progress notes go to stderr; one JSON object goes to stdout
(and to --out).

The machine may be shared: a CpuMeter reads /proc/stat around every phase and reports the
CPU seconds OTHER processes used meanwhile (`other_processes`, `contended` above 5 % of the
CPUs). Timings taken while `contended` is true are not the machine's quiet speed.

What is measured (wall-clock seconds; medians over --reps interleaved repetitions, every raw
time kept in the JSON; ratios also as medians of per-repetition ratios, "paired"):

- epochs, on the 49,000 training rows of the real CIFAR-10 training set (val_size 1000):
  * floor: a bare numpy float32 pass over contiguous minibatches of the preprocessed X
    (49,000 x 3073, bias column included, materialised once outside the timing):
    S = Xb @ W; softmax; dW = Xb.T @ (P - Y) / B; W -= lr dW. No gather, no regularisation,
    no momentum: the least work an epoch needs.
  * numpy and numba: `engine.train_epoch` (what fit() calls once per epoch) on the uint8
    rows, with the default config's optimizer and loss (momentum, Nesterov, L2, clip) and a
    fresh permutation per epoch (the gather), augmentation off ("plain") and on ("augmented":
    hflip + translate, the default config's padding; translate 2 when the config has 0).
    The permutation and the augmentation draws are made outside the timing (fit() makes
    them in numpy before calling the engine).
  * torch (unless --skip-torch or torch is missing): nn.Linear(3073, C, bias=False) on the
    same preprocessed float32 X, CrossEntropyLoss, torch.optim.SGD(lr, momentum=0.9,
    weight_decay=0), the same gather: a fresh permutation, X.index_select(0, idx) per
    minibatch. torch.set_num_threads(--threads). On --device.
  * torch_manual: the same SGD written by hand, without autograd: S = Xb @ W.T, softmax,
    dW = (P - Y).T @ Xb / B, heavy-ball momentum: the least PyTorch an epoch needs.
  * torch_engine (plain, augmented): the torch engine's train_epoch on --device (its CUDA
    graph when that is a GPU), like numpy and numba.
  Cases: CIFAR-10 shape (C = 10) at every batch size; CIFAR-100 shape (C = 100: random
  labels over the CIFAR-10 pixels) at batch 256. Floor and torch do not augment.
- default_run: `softmax-train --config configs/default.yaml --quiet` in child processes, run
  under a tiny launcher (LAUNCHER) so that ru_maxrss is the child's own peak RSS:
  * warm: data.root = the extracted data (md5 check of every file, training, the test
    evaluation, checkpoints, the pictures when matplotlib is installed), --cold-train-reps
    times;
  * cold: a fresh empty data.root with data.archive = the archive (safe extraction and
    verification first), --cold-train-reps times.
  An untimed 1-epoch default run comes first, so that every kernel the timed runs use is
  in numba's disk cache (this process compiled only the training ones; the JSON records
  kernels_are_compiled() as it was before that run).
- eval: predict_scores of each engine on the 10,000 test images with the warm run's
  best.npz weights (argmax; median of --reps), and the `softmax-eval` CLI once (wall).
  --skip-runs leaves out the default runs and eval (epochs only). With --device cuda the
  default run trains with engine torch on that device.
- --probe (no CIFAR needed): a linear probe's shape, scaled by --scale: 500,000 * scale rows
  of 1024 standardised float32 features, --probe-classes classes (random labels), batch
  --probe-batch, no augmentation: numpy, numba, torch_engine, torch and torch_manual epochs,
  interleaved as above (no floor), and torch_engine_momentum_only: the torch engine on the
  baselines' own rule (momentum, no Nesterov, no L2, no averaging), the same SGD as theirs.

Targets (pass/fail in the JSON, at batch 256 with 2 threads): numba augmented epoch <= 0.6x
the floor and >= 3x PyTorch's throughput; numpy plain epoch <= 1.3x the floor; default run
from the extracted data <= 17.6 s / 2 and from the archive <= 19.0 s / 2 (the medians before
issue 10); its peak RSS <= 310 MB.
"""

from __future__ import annotations

import argparse
import copy
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
from pathlib import Path

import numpy as np

from softmax_cls.config import load_config
from softmax_cls.data.cifar import load_dataset
from softmax_cls.data.labelled import LabelledData
from softmax_cls.engines import get_engine
from softmax_cls.engines.contract import EpochPlan, OptimizerState, StepRule, TrainingRows
from softmax_cls.errors import SoftmaxClsError
from softmax_cls.math.augment import draw_augmentation
from softmax_cls.math.optim import averaging_alphas
from softmax_cls.math.preprocess import fit_preprocessor, split_train_val
from softmax_cls.training.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parent.parent
DEFAULT_ARCHIVE = REPO.parent / "shared" / "data" / "cifar-10-binary.tar.gz"
DEFAULT_ROOT = Path("/tmp/realdata")
DEFAULT_CONFIG = REPO / "configs" / "default.yaml"
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS", "NUMBA_NUM_THREADS")
PINNED_MARK = "SOFTMAX_CLS_BENCH_THREADS"
VAL_SIZE = 1000
TRANSLATE_IF_NONE = 2
# Pause before each timed epoch: OpenBLAS's idle threads keep spinning for about 2^28 cycles
# (0.1 s here) after a call, and libgomp's (numba's) for a shorter while; a spinning thread
# of the previous method would take a core from the next one.
IDLE_S = 0.25
BEFORE = {"default_run_warm_s": 17.6, "default_run_cold_s": 19.0, "peak_rss_mb": 310.0}
TARGETS = {"numba_augmented_over_floor_max": 0.6, "torch_over_numba_min": 3.0,
           "numpy_plain_over_floor_max": 1.3, "speedup_default_run_min": 2.0,
           "peak_rss_mb_max": BEFORE["peak_rss_mb"], "at_batch_size": 256}


def note(message: str) -> None:
    print(f"[benchmark] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT,
                        help=f"extracted data folder (default {DEFAULT_ROOT})")
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE,
                        help=f"cifar-10-binary.tar.gz for the cold run (default "
                        f"{DEFAULT_ARCHIVE}; skipped when missing)")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions (default 5)")
    parser.add_argument("--cold-train-reps", type=int, default=3,
                        help="default runs from the extracted data and from the archive, "
                        "each (default 3, median)")
    parser.add_argument("--batch-sizes", default="64,256,1024",
                        help="comma-separated (default 64,256,1024)")
    parser.add_argument("--threads", type=int, default=2,
                        help="BLAS / numba / torch threads (default 2)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help="the default run's config (default configs/default.yaml)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--skip-torch", action="store_true", help="do not measure PyTorch")
    parser.add_argument("--device", default="cpu",
                        help="where the torch engine and PyTorch run: cpu, cuda, cuda:N "
                        "(default cpu)")
    parser.add_argument("--skip-runs", action="store_true",
                        help="epochs only: no default runs, no eval")
    parser.add_argument("--probe", action="store_true",
                        help="the linear-probe shape instead of CIFAR-10 (see --scale)")
    parser.add_argument("--scale", type=float, default=0.02,
                        help="probe rows = 500,000 * scale (default 0.02: 10,000 rows)")
    parser.add_argument("--probe-classes", default="100,1000",
                        help="comma-separated class counts of the probe (default 100,1000)")
    parser.add_argument("--probe-batch", type=int, default=1024,
                        help="probe batch size (default 1024)")
    parser.add_argument("--quick", action="store_true", help="smoke run of about a minute: "
                        "2 repetitions, batch 256 only, 2-epoch default runs (numbers not "
                        "comparable to the targets)")
    args = parser.parse_args(argv)
    try:
        args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    except ValueError:
        parser.error(f"--batch-sizes: expected integers like 64,256,1024, got {args.batch_sizes}")
    if not args.batch_sizes or min(args.batch_sizes) < 1:
        parser.error("--batch-sizes: need at least one positive batch size")
    if min(args.reps, args.cold_train_reps, args.threads) < 1:
        parser.error("--reps, --cold-train-reps and --threads must be at least 1")
    if args.quick:
        args.reps, args.cold_train_reps, args.batch_sizes = min(args.reps, 2), 1, [256]
    try:
        args.probe_classes = [int(c) for c in args.probe_classes.split(",") if c.strip()]
    except ValueError:
        parser.error(f"--probe-classes: expected integers like 100,1000, got "
                     f"{args.probe_classes}")
    if not args.probe_classes or min(args.probe_classes) < 2 or not 0 < args.scale <= 1 \
            or args.probe_batch < 1:
        parser.error("--probe-classes >= 2, --scale in (0, 1] and --probe-batch >= 1")
    return args


def pin_threads(threads: int) -> None:
    """Re-execute this script with the thread variables set, unless they already are.

    numpy's BLAS and numba read them only when they are loaded, so they must be in the
    environment before the interpreter starts; the child processes inherit them.
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
    spoils timings (threads that wait for a busy core are slowed many times over).
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
                "hypervisor_steal_s": steal, "contended": share > 0.05,
                "load_average": list(os.getloadavg())}


def median(values: list[float]) -> float:
    return statistics.median(values)


# ---------------------------------------------------------------------------------------------
# One epoch of each method


class Floor:
    """The bare numpy pass: contiguous float32 minibatches of the preprocessed X."""

    name = "floor"

    def __init__(self, X: np.ndarray, y: np.ndarray, n_classes: int, lr: float):
        self.X, self.y, self.lr = X, y, np.float32(lr)
        self.W = np.zeros((X.shape[1], n_classes), dtype=np.float32)  # (D, C): X @ W

    def epoch(self, batch_size: int) -> float:
        X, y, W, lr = self.X, self.y, self.W, self.lr
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


class EngineEpoch:
    """engine.train_epoch over the training rows, as fit() calls it for one epoch."""

    def __init__(self, engine_name: str, rows: np.ndarray, labels: np.ndarray,
                 train_rows: np.ndarray, pre, n_classes: int, config, augment: dict | None,
                 device: str = "cpu"):
        self.engine = get_engine(engine_name, device if engine_name == "torch" else "cpu")
        if engine_name == "numba":  # measure the pinned thread count, never the governor's pick
            from softmax_cls.engines.numba_engine.api import THREAD_GOVERNOR

            THREAD_GOVERNOR.enabled = False
        label = "torch_engine" if engine_name == "torch" else engine_name
        self.name = f"{label}_{'augmented' if augment else 'plain'}"
        self.rows, self.labels, self.train_rows, self.pre = rows, labels, train_rows, pre
        self.config, self.augment = config, augment
        self.data = TrainingRows(rows, labels)
        rng = np.random.default_rng(0)
        W = (rng.standard_normal((n_classes, pre.n_features))
             * config.model.init_std).astype(np.float32)
        self.state = OptimizerState(W, np.zeros_like(W), W.copy())
        self.rng = np.random.default_rng(1)

    def epoch(self, batch_size: int) -> float:
        optim, augment = self.config.optim, self.augment
        order = self.train_rows[self.rng.permutation(len(self.train_rows))]
        flip, shift = draw_augmentation(self.rng, len(order), bool(augment and augment["hflip"]),
                                        augment["translate"] if augment else 0)
        steps = -(-len(order) // batch_size)
        plan = EpochPlan(order, batch_size,
                         averaging_alphas(optim.averaging, 0, steps, optim.epochs),
                         flip if len(flip) else None, shift if len(shift) else None,
                         augment["padding"] if augment else "edge")
        started = time.perf_counter()
        self.engine.train_epoch(self.data, plan, StepRule.from_config(self.config, optim.lr,
                                                                       self.pre.bias),
                                self.pre, self.state)  # returns after the device finished
        return time.perf_counter() - started


class Torch:
    """nn.Linear + CrossEntropyLoss + SGD(momentum) with the engines' random-row gather."""

    name = "torch"

    def __init__(self, torch, X: np.ndarray, y: np.ndarray, n_classes: int, threads: int,
                 lr: float, momentum: float, device: str = "cpu"):
        torch.set_num_threads(threads)
        self.torch, self.device = torch, torch.device(device)
        self.X, self.y = torch.from_numpy(X).to(device), torch.from_numpy(y).to(device)
        self.model = torch.nn.Linear(X.shape[1], n_classes, bias=False, device=device)
        torch.nn.init.zeros_(self.model.weight)
        self.loss = torch.nn.CrossEntropyLoss()
        self.optim = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=momentum,
                                     weight_decay=0)
        self.rng = np.random.default_rng(0)

    def epoch(self, batch_size: int) -> float:
        torch, X, y, model, optim, loss_fn = (self.torch, self.X, self.y, self.model,
                                              self.optim, self.loss)
        order = torch.from_numpy(self.rng.permutation(len(X))).to(self.device)
        synchronize(torch, self.device)
        started = time.perf_counter()
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            xb, yb = X.index_select(0, idx), y.index_select(0, idx)
            optim.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            optim.step()
        synchronize(torch, self.device)
        return time.perf_counter() - started


def synchronize(torch, device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TorchManual:
    """The same SGD by hand in PyTorch, no autograd: S = Xb @ W.T, softmax, dW = (P - Y).T @
    Xb / B, velocity = momentum * velocity + dW, W -= lr * velocity."""

    name = "torch_manual"

    def __init__(self, torch, X: np.ndarray, y: np.ndarray, n_classes: int, threads: int,
                 lr: float, momentum: float, device: str = "cpu"):
        torch.set_num_threads(threads)
        self.torch, self.device, self.lr, self.momentum = torch, torch.device(device), lr, momentum
        self.X, self.y = torch.from_numpy(X).to(device), torch.from_numpy(y).to(device)
        self.W = torch.zeros((n_classes, X.shape[1]), device=device)
        self.velocity = torch.zeros_like(self.W)
        self.rng = np.random.default_rng(0)

    def epoch(self, batch_size: int) -> float:
        torch, X, y, W, velocity = self.torch, self.X, self.y, self.W, self.velocity
        order = torch.from_numpy(self.rng.permutation(len(X))).to(self.device)
        synchronize(torch, self.device)
        started = time.perf_counter()
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            xb, yb = X.index_select(0, idx), y.index_select(0, idx)
            P = torch.softmax(xb @ W.T, dim=1)
            P[torch.arange(len(idx), device=self.device), yb] -= 1
            grad = P.T @ xb
            velocity.mul_(self.momentum).add_(grad, alpha=1 / len(idx))
            W.sub_(velocity, alpha=self.lr)
        synchronize(torch, self.device)
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


def augmentation_of(config) -> dict:
    """The augmented case: the default config's hflip, translate (TRANSLATE_IF_NONE when it
    has none: the issue's target is with translation) and padding."""
    augment = config.augment
    return {"hflip": True, "translate": augment.translate or TRANSLATE_IF_NONE,
            "padding": augment.padding}


def shape_methods(data: LabelledData, labels: np.ndarray, n_classes: int, config, torch,
                  threads: int, device: str = "cpu") -> list:
    """Floor, the engines plain and augmented, and torch for one label set."""
    split = split_train_val(labels, VAL_SIZE, 0)
    pre = fit_preprocessor(data.train_images, config.preprocess.center, config.preprocess.scale,
                           config.preprocess.bias, rows=split.train_rows)
    X = pre.transform(data.train_images[split.train_rows])  # (49000, 3073) float32, once
    y = labels[split.train_rows]
    lr = config.optim.lr
    methods = [Floor(X, y, n_classes, lr)]
    engines = ("numpy", "numba") if torch is None else ("numpy", "numba", "torch")
    for augment in (None, augmentation_of(config)):
        for engine in engines:
            methods.append(EngineEpoch(engine, data.train_images, labels, split.train_rows, pre,
                                       n_classes, config, augment, device))
    if torch is not None:
        for baseline in (Torch, TorchManual):
            methods.append(baseline(torch, X, y, n_classes, threads, lr, config.optim.momentum,
                                    device))
    return methods


def bench_epochs(data: LabelledData, args: argparse.Namespace, config, torch) -> dict:
    """Interleaved epochs of every method, case by case, repetition by repetition."""
    random_labels = np.random.default_rng(100).integers(0, 100, len(data.train_labels))
    shapes = {"cifar10": shape_methods(data, data.train_labels, 10, config, torch,
                                       args.threads, args.device),
              "cifar100_shape_random_labels": shape_methods(data, random_labels, 100, config,
                                                            torch, args.threads, args.device)}
    cases = [("cifar10", b) for b in args.batch_sizes]
    cases.append(("cifar100_shape_random_labels", TARGETS["at_batch_size"]))
    return interleaved_epochs(shapes, cases, args.reps) | {
        "augmented_means": augmentation_of(config)}


def probe_methods(n_rows: int, n_classes: int, config, torch, threads: int, device: str,
                  n_features: int = 1024) -> list:
    """The engines and PyTorch on a random probe: standardised float32 features (N, F)."""
    from softmax_cls.math.preprocess import Preprocessor

    rng = np.random.default_rng(n_classes)
    rows = rng.standard_normal((n_rows, n_features), dtype=np.float32)
    labels = rng.integers(0, n_classes, n_rows).astype(np.int64)
    pre = Preprocessor(np.zeros(n_features), np.ones(n_features), bias=True)
    train_rows = np.arange(n_rows, dtype=np.int64)
    engines = ("numpy", "numba") if torch is None else ("numpy", "numba", "torch")
    methods = [EngineEpoch(engine, rows, labels, train_rows, pre, n_classes, config, None,
                           device) for engine in engines]
    if torch is not None:  # and the torch engine on the baselines' own rule: momentum alone
        bare = copy.deepcopy(config)
        bare.optim.nesterov, bare.loss.reg, bare.optim.averaging.name = False, 0.0, "none"
        same_sgd = EngineEpoch("torch", rows, labels, train_rows, pre, n_classes, bare, None,
                               device)
        same_sgd.name = "torch_engine_momentum_only"
        methods.append(same_sgd)
        X = pre.transform(rows)
        for baseline in (Torch, TorchManual):
            methods.append(baseline(torch, X, labels, n_classes, threads, config.optim.lr,
                                    config.optim.momentum, device))
    return methods


def bench_probe(args: argparse.Namespace, config, torch) -> dict:
    """Interleaved probe epochs at each class count."""
    n_rows = round(500_000 * args.scale)
    shapes = {f"probe_{n_rows}x1024_C={c}": probe_methods(n_rows, c, config, torch,
                                                          args.threads, args.device)
              for c in args.probe_classes}
    cases = [(shape, args.probe_batch) for shape in shapes]
    return interleaved_epochs(shapes, cases, args.reps) | {"rows": n_rows, "features": 1024}


def interleaved_epochs(shapes: dict[str, list], cases: list[tuple[str, int]],
                       reps: int) -> dict:
    """A warm-up epoch of every method, then `reps` rounds of every case, the methods of a
    case in a rotating order; medians and ratios per case."""
    raw = {f"{shape}/B={b}": {m.name: [] for m in shapes[shape]} for shape, b in cases}
    note("warm-up epochs (not counted; the first numba call loads or compiles the kernels)")
    for shape, b in cases:
        for method in shapes[shape]:
            time.sleep(IDLE_S)
            method.epoch(b)
    meter = CpuMeter()
    for rep in range(reps):
        for shape, b in cases:
            methods = shapes[shape]
            turn = rep % len(methods)
            for method in methods[turn:] + methods[:turn]:
                gc.collect()
                time.sleep(IDLE_S)
                raw[f"{shape}/B={b}"][method.name].append(method.epoch(b))
            times = raw[f"{shape}/B={b}"]
            note(f"rep {rep + 1}/{reps} {shape} B={b}: " + ", ".join(
                f"{name} {values[-1]:.3f}" for name, values in times.items()))
    return {"cases": {key: summarise_case(times) for key, times in raw.items()},
            "other_processes": meter.report()}


def summarise_case(times: dict[str, list[float]]) -> dict:
    """Medians, ratios to the floor and to torch, and the raw times of one case."""
    medians = {name: median(values) for name, values in times.items()}
    ratios, paired = {}, {}
    for name in medians:
        if name in ("floor", "torch", "torch_manual"):
            continue
        if "floor" in medians:
            ratios[f"{name}_over_floor"] = medians[name] / medians["floor"]
            paired[f"{name}_over_floor"] = median(
                [a / f for a, f in zip(times[name], times["floor"], strict=True)])
        for base in ("torch", "torch_manual"):  # how many times PyTorch's throughput
            if base in medians:  # (its time / ours)
                ratios[f"{base}_over_{name}"] = medians[base] / medians[name]
                paired[f"{base}_over_{name}"] = median(
                    [t / a for t, a in zip(times[base], times[name], strict=True)])
    if "torch" in medians and "floor" in medians:
        ratios["torch_over_floor"] = medians["torch"] / medians["floor"]
    return {"median_s": medians, "ratios": ratios, "paired_ratios": paired, "raw_s": times}


# ---------------------------------------------------------------------------------------------
# Child processes: the default run (peak RSS), the eval CLI


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
    KiB on Linux, reported in MiB), measured by LAUNCHER, and what other processes did."""
    note("running " + " ".join(command))
    meter = CpuMeter()
    launched = subprocess.run([sys.executable, "-S", "-c", LAUNCHER, str(log), *command],
                              capture_output=True, text=True, check=True)
    result = json.loads(launched.stdout)
    result["other_processes"] = meter.report()
    lines = log.read_text(errors="replace").strip().splitlines()
    if result["exit_code"] != 0:
        note(f"exit code {result['exit_code']}: " + " | ".join(lines[-3:]))
    result["output_tail"] = lines[-1:]
    return result


def summarise_runs(runs: list[dict]) -> dict:
    walls = [run["wall_s"] for run in runs]
    return {"wall_s": median(walls), "raw_wall_s": walls,
            "exit_code": max((run["exit_code"] for run in runs), key=abs),
            "peak_rss_mb": max(run["peak_rss_mb"] for run in runs), "runs": runs}


def bench_default_run(args: argparse.Namespace, scratch: Path) -> dict:
    """The default config, extracted data -> checkpoint and archive -> checkpoint, interleaved."""
    from softmax_cls.engines.numba_engine import kernels_are_compiled

    extra = ["--set", "optim.epochs=2"] if args.quick else []
    if args.device.startswith("cuda"):
        extra += ["--set", "engine=torch", "--set", f"device={args.device}"]
    base = [*console_script("softmax-train"), "--config", str(args.config), "--quiet",
            "--set", "data.download=false", *extra]
    archive = args.archive if args.archive.is_file() else None
    if archive is None:
        note(f"{args.archive} is missing: archive -> checkpoint not measured")
    cached_before = kernels_are_compiled(np.uint8)
    note("an untimed 1-epoch default run first: the timed runs must find every kernel they use "
         "(this process compiled only the training ones) in numba's disk cache")
    run_child([*base, "--set", f"data.root={args.root}", "--set", "optim.epochs=1",
               "--set", f"output.dir={scratch / 'run-warm-up'}"], scratch / "run-warm-up.log")
    warm, cold = [], []
    for rep in range(args.cold_train_reps):
        out = scratch / f"run-warm-{rep}"
        warm.append(run_child([*base, "--set", f"data.root={args.root}",
                               "--set", f"output.dir={out}"], scratch / f"run-warm-{rep}.log"))
        if archive is not None:
            cold_root = scratch / f"cold-data-{rep}"
            cold.append(run_child([*base, "--set", f"data.root={cold_root}",
                                   "--set", f"data.archive={archive}",
                                   "--set", f"output.dir={scratch / f'run-cold-{rep}'}"],
                                  scratch / f"run-cold-{rep}.log"))
            shutil.rmtree(cold_root, ignore_errors=True)
    return {"config": str(args.config), "quick_two_epochs": args.quick,
            "kernels_cached_before_warm_up": cached_before,
            "from_extracted": summarise_runs(warm),
            "from_archive": summarise_runs(cold) if cold else None,
            "checkpoint": str(scratch / "run-warm-0" / "best.npz")}


def bench_eval(data: LabelledData, checkpoint: Path, root: Path, reps: int,
               scratch: Path) -> dict:
    """predict_scores of each engine on the test images, and the softmax-eval CLI once."""
    if not checkpoint.is_file():
        note(f"{checkpoint} is missing: evaluation not measured")
        return {"predict_10k_s": None}
    ckpt = load_checkpoint(checkpoint)
    pre = ckpt.preprocessor
    W = ckpt.W
    result = {"n_test": len(data.test_images)}
    for name in ("numpy", "numba"):
        engine = get_engine(name)
        times, accuracy = [], None
        for _ in range(reps + 1):  # the first is a warm-up
            gc.collect()
            started = time.perf_counter()
            predicted = engine.predict_scores(data.test_images, W, pre).argmax(axis=1)
            times.append(time.perf_counter() - started)
            accuracy = float(np.mean(predicted == data.test_labels))
        result[name] = {"predict_10k_s": median(times[1:]), "raw_s": times[1:],
                        "test_accuracy": accuracy}
    result["eval_cli"] = run_child([*console_script("softmax-eval"), str(checkpoint), "--quiet",
                                    "--json", "--root", str(root)], scratch / "eval.log")
    return result


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
    import numba

    return {"cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else None,
            "threads": threads, "thread_env": {v: os.environ.get(v) for v in THREAD_VARS},
            "numba_threads": numba.get_num_threads(), "numba": numba.__version__,
            "platform": platform.platform(), "python": platform.python_version(),
            "numpy": np.__version__, "blas": blas,
            "torch": getattr(torch, "__version__", None) if torch else None,
            "torch_threads": torch.get_num_threads() if torch else None,
            "load_average_start": list(os.getloadavg())}


def check(value: float | None, limit: float, at_most: bool = True) -> dict:
    passed = None if value is None else (value <= limit if at_most else value >= limit)
    return {"value": value, ("max" if at_most else "min"): limit, "pass": passed}


def targets(epochs: dict, default_run: dict, quick: bool) -> dict:
    at = epochs["cases"].get(f"cifar10/B={TARGETS['at_batch_size']}", {}).get("ratios", {})
    warm, cold = default_run["from_extracted"], default_run["from_archive"]
    speedup = TARGETS["speedup_default_run_min"]
    result = {
        "numba_augmented_over_floor_at_256": check(at.get("numba_augmented_over_floor"),
                                                   TARGETS["numba_augmented_over_floor_max"]),
        "torch_over_numba_augmented_at_256": check(at.get("torch_over_numba_augmented"),
                                                   TARGETS["torch_over_numba_min"],
                                                   at_most=False),
        "numpy_plain_over_floor_at_256": check(at.get("numpy_plain_over_floor"),
                                               TARGETS["numpy_plain_over_floor_max"]),
        "default_run_from_extracted_s": check(warm["wall_s"],
                                              BEFORE["default_run_warm_s"] / speedup),
        "default_run_from_archive_s": check(cold["wall_s"] if cold else None,
                                            BEFORE["default_run_cold_s"] / speedup),
        "peak_rss_mb_default_run": check(warm["peak_rss_mb"], TARGETS["peak_rss_mb_max"]),
    }
    for name, run in (("default_run_from_extracted_s", warm),
                      ("default_run_from_archive_s", cold), ("peak_rss_mb_default_run", warm)):
        if run and run["exit_code"] != 0:
            result[name]["pass"] = False
    if quick:  # 2-epoch runs are not the default run
        for name in ("default_run_from_extracted_s", "default_run_from_archive_s"):
            result[name]["pass"] = None
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pin_threads(args.threads)
    if args.probe:
        return probe_main(args)
    if not (args.root / "cifar-10-batches-bin").is_dir():
        sys.exit(f"error: no extracted CIFAR-10 in {args.root} (cifar-10-batches-bin/); "
                 "pass --root DIR")
    torch = import_torch(args.skip_torch)
    info = machine_info(torch, args.threads)
    note(f"threads {args.threads}, load average {info['load_average_start']}")
    whole = CpuMeter()
    data = load_dataset(root=args.root, download=False, progress=False)
    config = load_config(args.config if args.config.is_file() else None)
    with tempfile.TemporaryDirectory(prefix="softmax-bench-") as tmp:
        scratch = Path(tmp)
        epochs = bench_epochs(data, args, config, torch)
        gc.collect()
        if args.skip_runs:
            default_run = evaluation = None
        else:
            default_run = bench_default_run(args, scratch)
            evaluation = bench_eval(data, Path(default_run["checkpoint"]), args.root,
                                    args.reps, scratch)
    info["load_average_end"] = list(os.getloadavg())
    info["other_processes_whole_run"] = whole.report()
    if (info["other_processes_whole_run"] or {}).get("contended"):
        note("WARNING: other processes used the CPUs during this run: timings are not the "
             "quiet machine's")
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick, "reps": args.reps, "batch_sizes": args.batch_sizes,
        "machine": info, "before": BEFORE,
        "device": args.device,
        "targets": None if default_run is None else targets(epochs, default_run, args.quick),
        "epochs": epochs, "default_run": default_run, "eval": evaluation,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


def probe_main(args: argparse.Namespace) -> int:
    """--probe: the probe epochs alone, one JSON object."""
    torch = import_torch(args.skip_torch)
    info = machine_info(torch, args.threads)
    config = load_config(args.config if args.config.is_file() else None)
    probe = bench_probe(args, config, torch)
    info["load_average_end"] = list(os.getloadavg())
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "probe": True, "scale": args.scale, "reps": args.reps, "device": args.device,
              "machine": info, "epochs": probe}
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
