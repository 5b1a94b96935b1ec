"""Benchmark: reading an image folder (data.dataset folder) the first time and from its cache.

Needs no data set: it writes --images pictures (JPEG photos of --size pixels, every tenth a
PNG) in --classes class folders under a temporary folder, then times, each in a fresh
process so nothing is shared but the files:
- the scan alone (the fingerprint: a stat of every file, nothing decoded),
- the first load (every image decoded, resized, written to the cache),
- the second load (the cache memory-mapped, nothing decoded),
with each process's peak RSS. Prints JSON.

    python scripts/benchmark_folders.py --images 5000 --size 320x240
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

STEP = """
import json, resource, sys, time
from softmax_cls.config import config_from_dict
from softmax_cls.data import folders
data = config_from_dict({"data": {"dataset": "folder", "train": sys.argv[1],
                                  "root": sys.argv[2]}}).data
start = time.perf_counter()
if sys.argv[3] == "scan":
    count = len(folders.scan_folder(data.train).files)
else:
    loaded = folders.load_folders(data, progress=False)
    count = len(loaded.train_labels) + len(loaded.test_labels)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "images": count,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_folder(folder: Path, images: int, classes: int, size: tuple[int, int]) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(images):
        label = i % classes
        where = folder / f"class{label:02d}"
        where.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 256, 3)
        pixels = np.clip(base + rng.normal(0, 30, (size[1], size[0], 3)), 0, 255)
        suffix = "png" if i % 10 == 0 else "jpg"
        Image.fromarray(pixels.astype(np.uint8)).save(where / f"{i:06d}.{suffix}")


def step(folder: Path, root: Path, what: str) -> dict:
    result = subprocess.run([sys.executable, "-c", STEP, str(folder), str(root), what],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--size", default="320x240", help="WIDTHxHEIGHT of each picture")
    args = parser.parse_args()
    size = tuple(int(n) for n in args.size.split("x"))
    with tempfile.TemporaryDirectory() as temp:
        folder, root = Path(temp) / "images", Path(temp) / "data"
        start = time.perf_counter()
        write_folder(folder, args.images, args.classes, size)
        made = time.perf_counter() - start
        report = {"machine": platform.platform(), "python": platform.python_version(),
                  "images": args.images, "size": args.size, "written_seconds": made,
                  "scan": step(folder, root, "scan"), "first_load": step(folder, root, "load"),
                  "cached_load": step(folder, root, "load")}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
