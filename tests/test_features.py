"""Feature files (data.dataset features): loading, bad files through softmax-train, runs on
them (train, resume, eval), and a file trained from disk with bounded anonymous memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from cli_util import assert_one_line_error, limit_data, run, script

from softmax_cls.config import config_from_dict
from softmax_cls.data.features import labels_path, load_features, read_feature_rows
from softmax_cls.errors import DataError
from softmax_cls.math.preprocess import split_and_fit
from softmax_cls.training.checkpoint import load_checkpoint
from softmax_cls.training.fit import fit


def linear_data(n=600, d=16, classes=3, seed=0):
    """float32 features (n, d) of Gaussian blobs with per-feature scales, int labels (n,)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 2, (classes, d))
    y = rng.integers(0, classes, n)
    X = (centers[y] + rng.standard_normal((n, d))) * rng.uniform(0.5, 5, d) + 3
    return X.astype(np.float32), y.astype(np.int64)


def data_config(**data):
    return config_from_dict({"data": {"dataset": "features", **data},
                             "augment": {"hflip": False, "translate": 0}}).data


def test_npz_is_memory_mapped_and_labels_are_sorted_class_names(tmp_path):
    X, _ = linear_data(n=6, d=4)
    y = np.array([10, 2, 3, 2, 10, 3])
    np.savez(tmp_path / "train.npz", X=X, y=y)
    np.savez(tmp_path / "test.npz", X=X[:2], y=y[:2])
    data = load_features(data_config(train=str(tmp_path / "train.npz"),
                                     test=str(tmp_path / "test.npz")), progress=False)
    assert isinstance(data.train_images, np.memmap) and data.train_images.dtype == np.float32
    np.testing.assert_array_equal(data.train_images, X)
    assert data.class_names == ("2", "3", "10")  # numeric order for integer labels
    np.testing.assert_array_equal(data.train_labels, [2, 0, 1, 0, 2, 1])
    np.testing.assert_array_equal(data.test_labels, [2, 0])
    assert data.train_labels.dtype == np.int64
    import hashlib
    assert data.fingerprint == {
        "train train.npz": hashlib.md5((tmp_path / "train.npz").read_bytes()).hexdigest(),
        "test test.npz": hashlib.md5((tmp_path / "test.npz").read_bytes()).hexdigest()}


def test_npy_pair_string_labels_no_test_and_float64_conversion(tmp_path):
    X, _ = linear_data(n=5, d=3)
    np.save(tmp_path / "train_X.npy", X.astype(np.float64))
    np.save(tmp_path / "train_y.npy", np.array(["dog", "cat", "dog", "emu", "cat"]))
    data = load_features(data_config(train=str(tmp_path / "train_X.npy")), progress=False)
    assert not isinstance(data.train_images, np.memmap)  # converted into memory
    assert data.train_images.dtype == np.float32
    np.testing.assert_array_equal(data.train_images, X)
    assert data.class_names == ("cat", "dog", "emu")
    np.testing.assert_array_equal(data.train_labels, [1, 0, 1, 2, 0])
    assert data.test_images.shape == (0, 3) and data.test_labels.shape == (0,)
    assert set(data.fingerprint) == {"train train_X.npy", "train train_y.npy"}


@pytest.mark.parametrize("container", ["npz", "npy"])
def test_float16_X_is_memory_mapped_as_stored(tmp_path, container):
    X, y = linear_data(n=7, d=5)
    X16 = X.astype(np.float16)
    if container == "npz":
        np.savez(tmp_path / "train.npz", X=X16, y=y)
        path = tmp_path / "train.npz"
    else:
        np.save(tmp_path / "X.npy", X16)
        np.save(tmp_path / "y.npy", y)
        path = tmp_path / "X.npy"
    data = load_features(data_config(train=str(path), test=str(path)), progress=False)
    for rows in (data.train_images, data.test_images, read_feature_rows(path)):
        assert isinstance(rows, np.memmap) and rows.dtype == np.float16  # no float32 copy
        np.testing.assert_array_equal(rows, X16)


def test_big_endian_float16_is_converted_to_native_float32(tmp_path):
    """Only native float16 is mapped as stored: the engines take native dtypes only."""
    X, y = linear_data(n=7, d=5)
    np.savez(tmp_path / "train.npz", X=X.astype(">f2"), y=y)
    rows = load_features(data_config(train=str(tmp_path / "train.npz")),
                         progress=False).train_images
    assert not isinstance(rows, np.memmap) and rows.dtype == np.dtype("=f4")
    np.testing.assert_array_equal(rows, X.astype(np.float16))


def test_a_float16_file_trains_as_its_float32_conversion(tmp_path):
    """softmax-train on a float16 file and on the float32 file of the same values: the same
    weights, bit for bit (every float16 is a float32; the engines convert per minibatch)."""
    X, y = linear_data(n=400)
    X16 = X.astype(np.float16)
    np.savez(tmp_path / "half.npz", X=X16, y=y)
    np.savez(tmp_path / "single.npz", X=X16.astype(np.float32), y=y)
    weights = []
    for name in ("half", "single"):
        config = write_config(tmp_path, train=str(tmp_path / f"{name}.npz"),
                              test=str(tmp_path / f"{name}.npz"))
        result = run("softmax-train", "--config", str(config), "--quiet", "--out",
                     str(tmp_path / name))
        assert result.returncode == 0, result.stderr
        weights.append(load_checkpoint(tmp_path / name / "best.npz").W)
        report = run("softmax-eval", str(tmp_path / name / "best.npz"), "--json", "--quiet")
        assert report.returncode == 0, report.stderr
        weights.append(json.loads(report.stdout)["accuracy"])
    np.testing.assert_array_equal(weights[0], weights[2])
    assert weights[1] == weights[3]


@pytest.mark.parametrize("name, expected", [("X.npy", "y.npy"), ("train_X.npy", "train_y.npy"),
                                            ("X_test.npy", "y_test.npy"),
                                            ("XX.npy", "Xy.npy")])
def test_labels_path_replaces_the_last_capital_x(name, expected):
    assert labels_path(Path("d") / name) == Path("d") / expected


def test_unsigned_bytes_and_1024_byte_labels_are_classes(tmp_path):
    """uint8 training labels with int64 test labels are one kind (integers); byte-string
    labels (S) are class names as text; a label of LABEL_BYTES_CAP bytes (S1024, or U256) is
    read, one byte more is refused from the header."""
    X, y = linear_data(n=6, d=3)
    np.savez(tmp_path / "train.npz", X=X, y=(y % 2).astype(np.uint8) + 5)
    np.savez(tmp_path / "test.npz", X=X[:2], y=np.array([6, 5], np.int64))
    data = load_features(data_config(train=str(tmp_path / "train.npz"),
                                     test=str(tmp_path / "test.npz")), progress=False)
    assert data.class_names == ("5", "6")
    np.testing.assert_array_equal(data.test_labels, [1, 0])
    long = "d" + "o" * 254 + "g"  # 256 characters
    for dtype in ("S1024", "U256"):
        np.savez(tmp_path / "train.npz", X=X, y=np.array(["cat", long], dtype=dtype)[y % 2])
        data = load_features(data_config(train=str(tmp_path / "train.npz")), progress=False)
        assert data.class_names == ("cat", long)
    np.savez(tmp_path / "train.npz", X=X, y=np.array(["cat", "dog"], dtype="S1025")[y % 2])
    with pytest.raises(DataError, match="y's labels are 1025 bytes each"):
        load_features(data_config(train=str(tmp_path / "train.npz")), progress=False)


def test_a_non_finite_value_is_named_by_its_row_in_the_file_past_the_first_chunk(tmp_path,
                                                                                  monkeypatch):
    from softmax_cls.data import features

    monkeypatch.setattr(features, "CHECK_BYTES", 64)  # 4 rows of 4 float32 a chunk
    X, y = linear_data(n=20, d=4)
    for dtype in (np.float32, np.float64):  # read in place, converted chunk by chunk
        bad = X.astype(dtype)
        bad[13, 2] = np.nan
        np.savez(tmp_path / "train.npz", X=bad, y=y)
        with pytest.raises(DataError, match=r"X\[13, 2\] is nan"):
            load_features(data_config(train=str(tmp_path / "train.npz")), progress=False)


def write_config(tmp_path: Path, **data) -> Path:
    raw = {"seed": 1, "engine": "numpy",
           "data": {"dataset": "features", "val_size": 100, **data},
           "preprocess": {"scale": "std"},
           "optim": {"epochs": 4, "batch_size": 64, "lr": 0.05},
           "augment": {"hflip": False, "translate": 0}, "output": {"dir": str(tmp_path / "run")}}
    path = tmp_path / "probe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def bad_file(tmp_path: Path, kind: str) -> tuple[str, str | None, str]:
    """(train path, test path or None, a phrase the error must contain) of a bad file."""
    X, y = linear_data(n=200, d=4)
    train = tmp_path / "train.npz"
    test = None
    if kind == "missing":
        return str(tmp_path / "nope.npz"), None, "not found"
    if kind == "csv":
        (tmp_path / "train.csv").write_text("1,2\n")
        return str(tmp_path / "train.csv"), None, ".npz"
    if kind == "not a zip":
        train.write_bytes(b"hello, not a zip")
        return str(train), None, "not a valid .npz"
    if kind == "X 1-d":
        np.savez(train, X=X[:, 0], y=y)
        return str(train), None, "2-d"
    if kind == "no y":
        np.savez(train, X=X)
        return str(train), None, "no y array"
    if kind == "length":
        np.savez(train, X=X, y=y[:-1])
        return str(train), None, "200 rows but y has 199"
    if kind == "nan":
        X[7, 2] = np.nan
        np.savez(train, X=X, y=y)
        return str(train), None, "X[7, 2] is nan"
    if kind == "inf":
        X[3, 1] = np.inf
        np.savez(train, X=X, y=y)
        return str(train), None, "X[3, 1] is inf"
    if kind == "float64 overflow":
        X64 = X.astype(np.float64)
        X64[5, 0] = 1e300
        np.savez(train, X=X64, y=y)
        return str(train), None, "after conversion to float32"
    if kind == "float16 inf":
        X16 = X.astype(np.float16)
        X16[9, 3] = np.inf
        np.savez(train, X=X16, y=y)
        return str(train), None, "X[9, 3] is inf"
    if kind == "bfloat16":  # what np.save writes for an ml_dtypes bfloat16 array: '<V2'
        np.savez(train, X=X.astype(np.float16).view(np.dtype("V2")), y=y)
        return str(train), None, "bfloat16, which the .npy format has no type for"
    if kind == "float labels":
        np.savez(train, X=X, y=y.astype(np.float64))
        return str(train), None, "integer or string labels"
    if kind == "object labels":
        np.savez(train, X=X, y=np.array([f"c{v}" for v in y], dtype=object))
        return str(train), None, "pickle"
    if kind == "newline label":  # a class name is printed: softmax-eval's table broke
        np.savez(train, X=X, y=np.array(["cat", "dog\nbird"])[y % 2])
        return str(train), None, "label 'dog\\nbird' is not printable text"
    if kind == "object X":
        np.save(tmp_path / "X.npy", np.array([[1, "a"]] * 200, dtype=object))
        np.save(tmp_path / "y.npy", y)
        return str(tmp_path / "X.npy"), None, "object array"
    if kind == "compressed":
        np.savez_compressed(train, X=X, y=y)
        return str(train), None, "np.savez_compressed"
    if kind == "one class":
        np.savez(train, X=X, y=np.zeros_like(y))
        return str(train), None, "single class"
    if kind == "no y.npy":
        np.save(tmp_path / "X.npy", X)
        return str(tmp_path / "X.npy"), None, "y.npy are missing"
    if kind == "no features":
        np.savez(train, X=X[:, :0], y=y)
        return str(train), None, "X is empty, shape (200, 0)"
    if kind == "truncated y":
        np.save(tmp_path / "X.npy", X)
        np.save(tmp_path / "y.npy", y)
        data = (tmp_path / "y.npy").read_bytes()
        (tmp_path / "y.npy").write_bytes(data[:-8])
        return str(tmp_path / "X.npy"), None, "truncated: y needs"
    if kind == "truncated":
        np.save(tmp_path / "X.npy", X)
        np.save(tmp_path / "y.npy", y)
        data = (tmp_path / "X.npy").read_bytes()
        (tmp_path / "X.npy").write_bytes(data[:-100])
        return str(tmp_path / "X.npy"), None, "truncated"
    np.savez(train, X=X, y=y)
    test = tmp_path / "test.npz"
    if kind == "D mismatch":
        np.savez(test, X=X[:, :3], y=y)
        return str(train), str(test), "3 features"
    if kind == "unknown test label":
        np.savez(test, X=X, y=y + 7)
        return str(train), str(test), "does not occur in the training labels"
    raise AssertionError(kind)


BAD_KINDS = ["missing", "csv", "not a zip", "X 1-d", "no y", "length", "nan", "inf",
             "float64 overflow", "float16 inf", "bfloat16", "float labels", "object labels",
             "newline label",
             "object X", "compressed",
             "one class", "no y.npy", "truncated", "no features", "truncated y", "D mismatch",
             "unknown test label"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_feature_files_are_one_error_line(tmp_path, kind):
    train, test, phrase = bad_file(tmp_path, kind)
    config = write_config(tmp_path, train=train, test=test)
    result = run("softmax-train", "--config", str(config), "--quiet")
    assert_one_line_error(result, 1, phrase)
    assert not (tmp_path / "run").exists()


def test_features_run_trains_and_evaluates(tmp_path):
    X, y = linear_data(n=800)
    X, y, Xt, yt = X[:600], y[:600], X[600:], y[600:]
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    np.savez(tmp_path / "test.npz", X=Xt, y=yt)
    config = write_config(tmp_path, train=str(tmp_path / "X.npy"),
                          test=str(tmp_path / "test.npz"))
    whole = run("softmax-train", "--config", str(config), "--quiet", "--out",
                str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    # eval: accuracy from the checkpoint, recomputed in float64 from the raw files
    best = load_checkpoint(tmp_path / "whole" / "best.npz")
    report = run("softmax-eval", str(tmp_path / "whole" / "best.npz"), "--json", "--quiet")
    assert report.returncode == 0, report.stderr
    pre, W = best.preprocessor, best.W.astype(np.float64)
    scores = ((Xt - pre.mean) * pre.scale) @ W[:, :-1].T + W[:, -1]  # W (C, D)
    assert json.loads(report.stdout)["accuracy"] == pytest.approx(
        np.mean(scores.argmax(axis=1) == yt), abs=1e-12)
    assert json.loads(report.stdout)["accuracy"] > 0.9
    val = run("softmax-eval", str(tmp_path / "whole" / "best.npz"), "--split", "val", "--json",
              "--quiet")
    assert val.returncode == 0 and json.loads(val.stdout)["accuracy"] == pytest.approx(
        best.state.best_val_acc)

    # --root names no place a probe reads (its feature files are where it was trained): it
    # was ignored without a word
    for command in ("softmax-eval", "softmax-plot"):
        assert_one_line_error(
            run(command, str(tmp_path / "whole" / "best.npz"), "--root", str(tmp_path / "x"),
                "--quiet"), 2, "--root", "linear probe", str(tmp_path / "X.npy"))
    assert not (tmp_path / "x").exists()
    assert_one_line_error(run("softmax-eval", str(tmp_path / "whole" / "best.npz"),
                              "--download", "--quiet"), 2, "--download", "nothing to download")

    # changed data: the fingerprint refuses it
    np.savez(tmp_path / "test.npz", X=Xt + 1, y=yt)
    changed = run("softmax-eval", str(tmp_path / "whole" / "best.npz"), "--quiet")
    assert_one_line_error(changed, 1, "does not match the checkpoint")


def test_eval_of_the_test_split_of_a_run_without_one_is_one_error_line(tmp_path):
    """A probe trained with data.test null: softmax-eval's default --split test printed
    `accuracy: 0.0000 (0 of 0)` and a table of zeros, and exited 0 (softmax-plot already
    refused the empty split)."""
    X, y = linear_data()
    np.savez(tmp_path / "train.npz", X=X, y=y)
    config = write_config(tmp_path, train=str(tmp_path / "train.npz"))
    assert run("softmax-train", "--config", str(config), "--quiet", "--no-plots").returncode == 0
    best = str(tmp_path / "run" / "best.npz")
    for args in ((), ("--json",), ("--engine", "torch", "--device", "cpu")):
        assert_one_line_error(run("softmax-eval", best, "--quiet", *args), 1,
                              "test split", "is empty", "--split val")
    assert run("softmax-eval", best, "--split", "val", "--quiet").returncode == 0


@pytest.mark.parametrize("engine", ["numpy", "torch"])
def test_an_npz_memory_map_is_gathered_row_by_row_not_copied_whole(tmp_path, engine):
    """X mapped from an .npz starts at an odd offset in the zip: unaligned, which np.take
    copies whole on every call (a 200,000 x 64 file trained 40 times slower with numpy); each
    minibatch or chunk must gather only its rows, to the same weights."""
    import tracemalloc

    if engine == "torch":
        pytest.importorskip("torch")
    X, y = linear_data(n=20000, d=64)
    np.savez(tmp_path / "train.npz", X=X, y=y)
    data = load_features(data_config(train=str(tmp_path / "train.npz"), val_size=100),
                         progress=False)
    assert not data.train_images.flags.aligned and data.train_images.nbytes == 5_120_000
    config = config_from_dict({"engine": engine, "device": "cpu", "data": {"val_size": 100},
                               "optim": {"epochs": 1, "batch_size": 64},
                               "augment": {"hflip": False, "translate": 0}})
    split, pre = split_and_fit(config, data.train_images, data.train_labels)
    runs = []
    for rows in (data.train_images, np.array(data.train_images)):  # unaligned, then aligned
        tracemalloc.start()
        result = fit(config, rows, data.train_labels, split, pre, 3, progress=False)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        runs.append((result.state.best_W, peak))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    assert runs[0][1] < runs[1][1] + 1_000_000, (runs[0][1], runs[1][1])  # X is 5 MB


def test_resume_of_a_features_run_equals_the_uninterrupted_run(tmp_path):
    X, y = linear_data()
    np.savez(tmp_path / "train.npz", X=X, y=y)
    config = write_config(tmp_path, train=str(tmp_path / "train.npz"))
    text = yaml.safe_load(config.read_text())
    text["optim"]["schedule"] = {"name": "constant"}
    config.write_text(yaml.safe_dump(text))
    for out, epochs in (("whole", 4), ("half", 2)):
        result = run("softmax-train", "--config", str(config), "--quiet", "--out",
                     str(tmp_path / out), "--set", f"optim.epochs={epochs}")
        assert result.returncode == 0, result.stderr
    resumed = run("softmax-train", "--resume", str(tmp_path / "half" / "last.npz"), "--quiet",
                  "--set", "optim.epochs=4")
    assert resumed.returncode == 0, resumed.stderr
    whole = load_checkpoint(tmp_path / "whole" / "last.npz")
    again = load_checkpoint(tmp_path / "half" / "last.npz")
    assert again.state.epoch == whole.state.epoch == 4
    np.testing.assert_array_equal(again.state.W, whole.state.W)
    changed = run("softmax-train", "--resume", str(tmp_path / "half" / "last.npz"), "--quiet",
                  "--set", f"data.train={tmp_path / 'other.npz'}")
    assert_one_line_error(changed, 2, "data.train: cannot change when resuming")


def _anon_peak(pid: int, process: subprocess.Popen) -> int:
    """Peak RssAnon (bytes) of a running process, polled every 5 ms until it exits."""
    peak = 0
    status = Path(f"/proc/{pid}/status")
    while process.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("RssAnon:"):
                    peak = max(peak, int(line.split()[1]) * 1024)
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.005)
    return peak


def _one_blas_thread() -> dict[str, str]:
    return {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


def _train_polled(config: Path, overrides: list[str], limit: int | None) -> int:
    """softmax-train on `config` for 2 epochs with `overrides` (--set), one BLAS thread,
    under limit_data(limit), its RssAnon polled; asserts it succeeded. Returns the peak."""
    sets = [arg for override in ["optim.epochs=2", *overrides] for arg in ("--set", override)]
    process = subprocess.Popen([script("softmax-train"), "--config", str(config), "--quiet",
                                *sets], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=_one_blas_thread(),
                               preexec_fn=limit_data(limit))
    peak = _anon_peak(process.pid, process)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    return peak


BIG_ROWS, BIG_FEATURES, BIG_CLASSES = 160_000, 512, 4


def _write_big_features(tmp_path: Path, dtype) -> np.ndarray:
    """X.npy (BIG_ROWS, BIG_FEATURES) of `dtype`, written in slices through a memory map
    (never whole in memory): BIG_CLASSES Gaussian clusters; y.npy beside it. Returns y."""
    X = np.lib.format.open_memmap(tmp_path / "X.npy", mode="w+", dtype=dtype,
                                  shape=(BIG_ROWS, BIG_FEATURES))
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 1, (BIG_CLASSES, BIG_FEATURES)).astype(np.float32)
    y = rng.integers(0, BIG_CLASSES, BIG_ROWS)
    for start in range(0, BIG_ROWS, 20_000):
        stop = start + 20_000
        X[start:stop] = centers[y[start:stop]] + rng.standard_normal(
            (stop - start, BIG_FEATURES), dtype=np.float32)
    X.flush()
    del X
    np.save(tmp_path / "y.npy", y)
    return y


def _fit_in_memory(config: Path, overrides: list[str], rows: np.ndarray, y: np.ndarray):
    """(FitResult, Preprocessor) of fit() on rows held in memory, as the run `config` with
    `overrides` splits and trains them."""
    in_memory = config_from_dict(yaml.safe_load(config.read_text()), overrides)
    labels = np.searchsorted(np.unique(y), y).astype(np.int64)
    split, pre = split_and_fit(in_memory, rows, labels)
    return fit(in_memory, rows, labels, split, pre, BIG_CLASSES), pre


@pytest.mark.slow  # about 14 s: writing and hashing 320 MB, two epochs, the in-memory fit
def test_a_file_larger_than_the_allowed_memory_trains_to_the_in_memory_weights(tmp_path):
    """A 320 MB float32 X.npy, trained by softmax-train under RLIMIT_DATA 200 MB (private
    writable memory: heap and anonymous maps, not the file-backed read-only map) while its
    RssAnon is polled; the weights equal fit() on the same data loaded into memory."""

    n = BIG_ROWS
    y = _write_big_features(tmp_path, np.float32)
    file_size = (tmp_path / "X.npy").stat().st_size
    config = write_config(tmp_path, train=str(tmp_path / "X.npy"), val_size=1000)
    limit = 200 << 20
    limit_memory, env = limit_data(limit), _one_blas_thread()
    peak = _train_polled(config, [], limit)
    assert file_size > 300 << 20 and limit < file_size
    print(f"peak RssAnon {peak / 2**20:.1f} MB, X.npy {file_size / 2**20:.0f} MB")
    assert 0 < peak < 100 << 20, peak  # measured: 38 MB
    trained = load_checkpoint(tmp_path / "run" / "last.npz")

    # evaluating the whole train split under the same limit reads it chunk by chunk too
    evaluated = subprocess.run([script("softmax-eval"), str(tmp_path / "run" / "best.npz"),
                                "--split", "train", "--json", "--quiet"], capture_output=True,
                               text=True, env=env, preexec_fn=limit_memory, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["n"] == n - 1000

    # the limit bites: the same process start under it cannot hold the file in memory
    control = subprocess.run([sys.executable, "-c", "import numpy as np, sys; "
                              "np.array(np.load(sys.argv[1], mmap_mode='r'))",
                              str(tmp_path / "X.npy")], capture_output=True, text=True,
                             env=env, preexec_fn=limit_memory, timeout=120)
    assert control.returncode != 0 and "MemoryError" in control.stderr, control.stderr

    rows = np.load(tmp_path / "X.npy")  # the whole file in memory, not a memory map
    assert not isinstance(rows, np.memmap)
    result, pre = _fit_in_memory(config, ["optim.epochs=2"], rows, y)
    np.testing.assert_array_equal(trained.state.W, result.state.W)
    np.testing.assert_array_equal(trained.preprocessor.mean, pre.mean)


@pytest.mark.slow  # about 20 s: writing and hashing 160 MB, two runs of two epochs
@pytest.mark.parametrize("engine", ["numpy", "torch"])
def test_a_float16_file_trains_without_a_float32_copy(tmp_path, engine):
    """A 160 MB float16 X.npy whose float32 conversion is 320 MB: softmax-train trains it
    (the numpy engine under an RLIMIT_DATA of 200 MB; the torch engine's import alone needs
    more, its OpenBLAS buffers) with an RssAnon peak far below the conversion, to the
    weights of fit() on the float32 conversion held in memory."""
    if engine == "torch":
        pytest.importorskip("torch")

    n, d = BIG_ROWS, BIG_FEATURES
    y = _write_big_features(tmp_path, np.float16)
    config = write_config(tmp_path, train=str(tmp_path / "X.npy"), val_size=1000)
    limit = 200 << 20
    assert limit < n * d * 4
    peak = _train_polled(config, [f"engine={engine}", "device=cpu"],
                         limit if engine == "numpy" else None)
    print(f"{engine}: peak RssAnon {peak / 2**20:.1f} MB")
    # measured: numpy 62 MB; torch 185 MB, most of it PyTorch's own (a float32 copy alone
    # would be 312 MB more)
    assert 0 < peak < n * d * 4 // (2 if engine == "numpy" else 1), peak
    trained = load_checkpoint(tmp_path / "run" / "last.npz")

    rows = np.load(tmp_path / "X.npy").astype(np.float32)
    result, _ = _fit_in_memory(config, ["optim.epochs=2", f"engine={engine}", "device=cpu"],
                               rows, y)
    np.testing.assert_array_equal(trained.state.W, result.state.W)


def test_feature_files_load_without_the_cifar_modules():
    """features.py and the CIFAR reader share LabelledData through its own module: importing
    one pulls in neither the CIFAR loader nor the fetching code."""
    code = ("import sys, softmax_cls.data.features; "
            "print(*sorted(m for m in sys.modules if m.startswith('softmax_cls.data.')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
                            check=True)
    assert result.stdout.split() == ["softmax_cls.data.features", "softmax_cls.data.labelled"]


@pytest.mark.parametrize("epochs, said", [(1, "; 1 epoch; "), (2, "; 2 epochs; ")])
def test_the_last_line_counts_epochs_in_the_singular_or_plural(tmp_path, epochs, said):
    X, y = linear_data(n=300)
    np.savez(tmp_path / "train.npz", X=X, y=y)
    config = write_config(tmp_path, train=str(tmp_path / "train.npz"))
    result = run("softmax-train", "--config", str(config), "--quiet", "--no-plots",
                 "--set", f"optim.epochs={epochs}")
    assert result.returncode == 0, result.stderr
    assert said in result.stdout.splitlines()[-1]


def test_the_lbfgs_last_line_counts_one_iteration_in_the_singular(tmp_path):
    pytest.importorskip("scipy")
    X, y = linear_data(n=300)
    np.savez(tmp_path / "train.npz", X=X, y=y)
    config = write_config(tmp_path, train=str(tmp_path / "train.npz"))
    result = run("softmax-train", "--config", str(config), "--quiet", "--no-plots",
                 "--set", "optim.solver=lbfgs", "--set", "optim.max_iter=1")
    assert result.returncode == 0, result.stderr
    assert "; 1 iteration, loss " in result.stdout.splitlines()[-1], result.stdout


def test_softmax_train_prints_the_pictures_then_its_one_line(tmp_path):
    """commands.md: the pictures it drew, then the line of the test accuracy, the best epoch
    and its val accuracy, the epochs run and the run folder."""
    import re

    pytest.importorskip("matplotlib")
    X, y = linear_data(n=300)
    np.savez(tmp_path / "train.npz", X=X, y=y)
    train = str(tmp_path / "train.npz")
    config = write_config(tmp_path, train=train, test=train)
    result = run("softmax-train", "--config", str(config), "--quiet", "--plots",
                 "--set", "optim.epochs=2")
    assert result.returncode == 0, result.stderr
    pictures, last = result.stdout.splitlines()
    assert pictures.startswith("pictures: ") and "curves.png" in pictures
    assert re.fullmatch(r"test accuracy [\d.]+ \(loss [\d.]+\) with the best weights on "
                        r"validation: epoch [12], val accuracy [\d.]+; 2 epochs; run folder "
                        + re.escape(str(tmp_path / "run")), last), last


def test_the_evaluation_table_escapes_a_class_name_that_breaks_its_line():
    """A checkpoint of a feature file labelled 'dog\\nbird' (trained before such labels were
    refused): softmax-eval printed the newline, and the table's rows broke in two."""
    from softmax_cls.math.metrics import classification_report, format_report

    labels = np.array([0, 1, 1, 0, 2])
    text = format_report(classification_report(labels, labels, ("cat", "dog\nbird", "\x1b[31m")))
    lines = text.splitlines()
    assert len(lines) == 3 + 3 + 3 + 3  # accuracy, blank, header, 3 rows; blank, 2 heads, 3 rows
    assert sum("'dog\\nbird'" in line for line in lines) == 2  # its table row and matrix row
    assert "\x1b" not in text
