"""Sweep throughput and memory: trials per minute and the workers' memory, 1 worker against K.

    python scripts/benchmark_sweep.py --root /tmp/realdata --trials 8 --epochs 3 --workers 1 2 \
        --single-core

For each worker count, runs `softmax-sweep` (a random search over optim.lr and loss.reg on top
of configs/default.yaml, --epochs each, no pruning) into a fresh folder, and meanwhile samples
/proc/<pid>/smaps_rollup of every worker process every --interval seconds. Reports, as JSON:

- trials_per_minute: trials / the span from the first trial's start to the last one's end
  (from the study's own timestamps, so the data loading, cache writing and the final test
  evaluation are not counted), and wall_seconds of the whole command;
- per worker process: peak Rss, Pss and Anonymous (kB); and their sums over the workers.
  Rss counts the shared memory-mapped training cache once in every worker; Pss splits shared
  pages between the processes that map them, so the sum of Pss is the memory the workers
  take together; Anonymous is each worker's private memory (not the cache).

The machine's load average is recorded before and after: other work on a shared machine slows
trials down.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIELDS = ("Rss", "Pss", "Anonymous")


def sweep_file(folder: Path, root: str, trials: int, epochs: int) -> Path:
    path = folder / "bench.yaml"
    path.write_text(
        f"base: {REPO / 'configs' / 'default.yaml'}\n"
        f"set: {{data.root: {root}, data.download: false, optim.epochs: {epochs}}}\n"
        f"sampler: random\ntrials: {trials}\nseed: 0\npruner: none\nspace:\n"
        "  optim.lr: {log_uniform: [1.0e-3, 1.0e-2]}\n"
        "  loss.reg: {log_uniform: [1.0e-6, 1.0e-3]}\n")
    return path


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def is_worker(pid: int) -> bool:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return b"spawn_main" in command and b"resource_tracker" not in command


def rollup(pid: int) -> dict[str, int] | None:
    """Rss, Pss and Anonymous of a process in kB, from /proc/<pid>/smaps_rollup."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in FIELDS:
            values[name] = int(rest.split()[0])
    return values


def measure(workers: int, args, scratch: Path, cores: int | None = None) -> dict:
    """One sweep with `workers` workers; `cores`: pin it to that many of this process's cores
    (the workers then get cores // workers threads each)."""
    folder = scratch / f"workers{workers}-cores{cores or 'all'}"
    shutil.rmtree(folder, ignore_errors=True)
    sweep = sweep_file(scratch, args.root, args.trials, args.epochs)
    command = [str(Path(sys.executable).parent / "softmax-sweep"), str(sweep), "--workers",
               str(workers), "--out", str(folder), "--quiet", "--no-plots"]
    load_before = os.getloadavg()
    started = time.perf_counter()
    allowed = sorted(os.sched_getaffinity(0))[:cores] if cores else None
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, preexec_fn=(lambda: os.sched_setaffinity(0, allowed))
                               if allowed else None)
    peaks: dict[int, dict[str, int]] = {}
    driver_peak: dict[str, int] = {}
    while process.poll() is None:
        driver = rollup(process.pid) or {}
        for name, value in driver.items():
            driver_peak[name] = max(driver_peak.get(name, 0), value)
        for pid in children(process.pid):
            if not is_worker(pid):
                continue
            values = rollup(pid)
            if values:
                peak = peaks.setdefault(pid, dict.fromkeys(FIELDS, 0))
                for name, value in values.items():
                    peak[name] = max(peak[name], value)
        time.sleep(args.interval)
    out, err = process.communicate()
    wall = time.perf_counter() - started
    if process.returncode:
        raise SystemExit(f"softmax-sweep failed: {err.strip()}")

    import optuna

    from softmax_cls.sweep.driver import open_storage_for

    study = optuna.load_study(study_name="bench", storage=open_storage_for(folder))
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    span = (max(t.datetime_complete for t in done)
            - min(t.datetime_start for t in done)).total_seconds()
    return {
        "workers": workers, "cores": len(allowed or os.sched_getaffinity(0)),
        "trials": len(done), "epochs_per_trial": args.epochs,
        "trial_span_seconds": round(span, 2),
        "trials_per_minute": round(60 * len(done) / span, 2),
        "wall_seconds": round(wall, 2),
        "mean_trial_seconds": round(sum(t.user_attrs["seconds"] for t in done) / len(done), 2),
        "worker_peaks_kB": list(peaks.values()),
        "workers_sum_kB": {name: sum(p[name] for p in peaks.values()) for name in FIELDS},
        "driver_peak_kB": driver_peak,
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "result": out.strip(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="/tmp/realdata", help="data.root of CIFAR-10")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--single-core", action="store_true",
                        help="also run 1 worker pinned to one core (1 thread)")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between samples")
    parser.add_argument("--keep", help="folder for the sweep folders (default: a temporary one)")
    args = parser.parse_args()
    scratch = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        results = [measure(k, args, scratch) for k in args.workers]
        if args.single_core:
            results.append(measure(1, args, scratch, cores=1))
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps({"cores": len(os.sched_getaffinity(0)), "runs": results}, indent=2))


if __name__ == "__main__":
    main()
