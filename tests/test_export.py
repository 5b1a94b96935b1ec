"""softmax-export: the npz's folded W_raw and the ONNX model (run in onnxruntime) give the
tool's own predictions; an existing file, a link, a folder and a missing extra are one line."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import conftest
import numpy as np
import pytest
from cli_util import assert_one_line_error, run
from conftest import REAL_ARCHIVE, needs_real_data, separable_data, small_config, train_probe

from softmax_cls.data.cifar import load_config_data
from softmax_cls.data.features import load_features
from softmax_cls.errors import InputError
from softmax_cls.inference import Model
from softmax_cls.inference.export import export, onnx_model
from softmax_cls.training.runs import train_run

onnxruntime = pytest.importorskip("onnxruntime")
Image = pytest.importorskip("PIL.Image")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("export")
    config = small_config(root, engine="numpy", preprocess={"scale": "std"})
    train_run(config, separable_data(), root / "run", progress=False)
    return root / "run" / "best.npz"


def session(path: Path):
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), np.uint8)


def test_npz_scores_are_raw_pixels_times_w_raw(checkpoint, tmp_path):
    result = run("softmax-export", str(checkpoint), "--format", "npz", "-o",
                 str(tmp_path / "model.npz"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"wrote {tmp_path / 'model.npz'}\n"
    model = Model.load(checkpoint)
    pictures = images(50)
    with np.load(tmp_path / "model.npz", allow_pickle=False) as export:
        W_raw = export["W_raw"]
        assert W_raw.dtype == np.float64 and W_raw.shape == (4, 3073)
        assert tuple(export["class_names"]) == model.class_names
        assert "NHWC" in str(export["input_layout"])
    # CIFAR order written out here: the R plane, then G, then B, each row after row
    u = np.stack([np.concatenate([p[:, :, c].ravel() for c in range(3)]) for p in pictures])
    scores = np.hstack([u, np.ones((len(u), 1))]) @ W_raw.T
    np.testing.assert_allclose(scores, model.scores(pictures), rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(scores.argmax(axis=1), model.predict(pictures))
    # and the same as the checkpoint's own W applied to preprocessed pixels
    with np.load(checkpoint) as arrays:
        x = (u - arrays["pre_mean"]) * arrays["pre_scale"]
        direct = np.hstack([x, np.ones((len(x), 1))]) @ arrays["W"].astype(np.float64).T
    np.testing.assert_allclose(scores, direct, rtol=1e-9, atol=1e-9)


def test_onnx_matches_the_tool_on_random_images(checkpoint, tmp_path):
    out = tmp_path / "model.onnx"
    result = run("softmax-export", str(checkpoint), "--format", "onnx", "-o", str(out))
    assert result.returncode == 0, result.stderr
    runtime = session(out)
    (graph_input,), (output,) = runtime.get_inputs(), runtime.get_outputs()
    assert (graph_input.name, graph_input.type, graph_input.shape[1:]) == (
        "pixels", "tensor(uint8)", [32, 32, 3])
    assert output.name == "probabilities"
    model = Model.load(checkpoint)
    pictures = images(300, seed=1)
    probabilities = runtime.run(None, {"pixels": pictures})[0]
    np.testing.assert_array_equal(probabilities.argmax(axis=1), model.predict(pictures))
    np.testing.assert_allclose(probabilities, model.predict_proba(pictures), atol=1e-5)
    # the model's own test images too, where the classes are confident
    test = separable_data().test_images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    probabilities = runtime.run(None, {"pixels": np.ascontiguousarray(test)})[0]
    np.testing.assert_array_equal(probabilities.argmax(axis=1), model.predict(test))
    np.testing.assert_allclose(probabilities, model.predict_proba(test), atol=1e-5)


def test_onnx_of_a_probe_takes_float_features(tmp_path):
    rng = np.random.default_rng(3)
    centers = rng.normal(0, 3, (3, 10))
    y = rng.integers(0, 3, 300)
    X = ((centers[y] + rng.standard_normal((300, 10))) * 5 - 1).astype(np.float32)
    train_probe(tmp_path, X, y, preprocess={"bias": False})
    model = Model.load(tmp_path / "run" / "best.npz")
    runtime = session(_write(onnx_model(model), tmp_path / "probe.onnx"))
    assert runtime.get_inputs()[0].name == "features"
    probabilities = runtime.run(None, {"features": X})[0]
    np.testing.assert_array_equal(probabilities.argmax(axis=1), model.predict(X))
    np.testing.assert_allclose(probabilities, model.predict_proba(X), atol=1e-5)
    result = run("softmax-export", str(tmp_path / "run" / "best.npz"), "--format", "npz", "-o",
                 str(tmp_path / "probe.npz"))
    assert result.returncode == 0, result.stderr
    W_raw = np.load(tmp_path / "probe.npz")["W_raw"]
    scores = np.hstack([X, np.ones((len(X), 1))]) @ W_raw.T  # no bias column: still [u, 1]
    np.testing.assert_allclose(scores, model.scores(X), rtol=1e-4, atol=1e-4)


def _write(proto, path: Path) -> Path:
    path.write_bytes(proto.SerializeToString())
    return path


def test_existing_files_links_and_folders_are_refused(checkpoint, tmp_path):
    out = tmp_path / "model.npz"
    out.write_text("keep me")
    assert_one_line_error(run("softmax-export", str(checkpoint), "--format", "npz", "-o",
                              str(out)), 1, "model.npz exists; pass --overwrite to replace it")
    assert out.read_text() == "keep me"
    target = tmp_path / "target.txt"
    target.write_text("someone else's")
    link = tmp_path / "link.onnx"
    link.symlink_to(target)
    assert_one_line_error(run("softmax-export", str(checkpoint), "--format", "onnx", "-o",
                              str(link)), 1, "exists; pass --overwrite")
    dangling = tmp_path / "dangling.npz"
    dangling.symlink_to(tmp_path / "nowhere")
    assert_one_line_error(run("softmax-export", str(checkpoint), "--format", "npz", "-o",
                              str(dangling)), 1, "exists")
    assert not (tmp_path / "nowhere").exists()
    replaced = run("softmax-export", str(checkpoint), "--format", "onnx", "-o", str(link),
                   "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert not link.is_symlink() and target.read_text() == "someone else's"  # the link replaced
    session(link)
    assert run("softmax-export", str(checkpoint), "--format", "npz", "-o", str(out),
               "--overwrite").returncode == 0
    assert np.load(out)["W_raw"].shape == (4, 3073)
    (tmp_path / "folder").mkdir()
    assert_one_line_error(run("softmax-export", str(checkpoint), "--format", "npz", "-o",
                              str(tmp_path / "folder"), "--overwrite"), 2, "is a directory")
    with pytest.raises(InputError, match="is a folder"):
        export(checkpoint, "npz", tmp_path / "folder", overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["dangling.npz", "folder", "link.onnx", "model.npz",
                                            "target.txt"]  # no temporary file left


def test_a_fifo_or_socket_at_out_is_never_replaced_even_with_overwrite(checkpoint, tmp_path):
    """--overwrite renamed the export over whatever OUT was: `-o /dev/null --overwrite`, run
    as root, replaced the system's /dev/null with a regular file. A fifo or a socket stands
    in for the device here."""
    import socket
    import stat

    fifo = tmp_path / "pipe.npz"
    os.mkfifo(fifo)
    sock = tmp_path / "sock.npz"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(sock))
        for out, kind in ((fifo, stat.S_ISFIFO), (sock, stat.S_ISSOCK)):
            result = run("softmax-export", str(checkpoint), "--format", "npz", "-o", str(out),
                         "--overwrite", timeout=60)
            assert_one_line_error(result, 1, f"{out.name} is not a regular file")
            assert kind(os.lstat(out).st_mode)
    assert sorted(os.listdir(tmp_path)) == ["pipe.npz", "sock.npz"]


def test_an_out_ending_in_a_slash_names_a_folder_not_a_file(checkpoint, tmp_path):
    """`-o exports/` wrote a file named `exports` (pathlib drops the slash)."""
    result = run("softmax-export", str(checkpoint), "--format", "npz", "-o",
                 f"{tmp_path / 'exports'}/", timeout=60)
    assert_one_line_error(result, 1, "exports/ ends in /", "name the file to write")
    assert os.listdir(tmp_path) == []


def test_bad_arguments_are_one_error_line(checkpoint, tmp_path):
    out = str(tmp_path / "m.onnx")
    assert_one_line_error(run("softmax-export", str(tmp_path / "none.npz"), "--format", "onnx",
                              "-o", out), 1, "checkpoint not found")
    (tmp_path / "fake.npz").write_bytes(b"PK\x03\x04 not really")
    assert_one_line_error(run("softmax-export", str(tmp_path / "fake.npz"), "--format", "npz",
                              "-o", str(tmp_path / "m.npz")), 1, "fake.npz")
    assert_one_line_error(run("softmax-export", str(checkpoint), "--format", "tflite", "-o",
                              out), 2, "tflite")
    line = assert_one_line_error(run("softmax-export", str(checkpoint), "-o", out), 2,
                                 "--format", "Choose from: onnx, npz")
    assert "\\" not in line, line  # click's one-per-line list, not escaped newlines and tabs
    assert_one_line_error(run("softmax-export", str(checkpoint), "--format", "npz"), 2, "-o")
    assert sorted(os.listdir(tmp_path)) == ["fake.npz"]


def test_an_out_named_for_the_other_format_is_refused(checkpoint, tmp_path):
    """`--format npz -o model.onnx` wrote an npz named .onnx, which onnxruntime then failed
    to read; the other way round the same. Other names (no suffix, .bin) are the user's."""
    for fmt, name, fixed in [("npz", "model.onnx", "model.npz"),
                             ("onnx", "model.NPZ", "model.onnx")]:
        result = run("softmax-export", str(checkpoint), "--format", fmt, "-o",
                     str(tmp_path / name), timeout=60)
        assert_one_line_error(result, 1, f"{name} names an", f"--format {fmt} writes {fmt}",
                              f"name it {fixed}")
    assert os.listdir(tmp_path) == []
    written = run("softmax-export", str(checkpoint), "--format", "npz", "-o",
                  str(tmp_path / "model.bin"), timeout=60)
    assert written.returncode == 0, written.stderr
    assert "W_raw" in np.load(tmp_path / "model.bin")


def test_without_onnx_one_line_names_the_pip_command(checkpoint, tmp_path, monkeypatch):
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['onnx'] = None\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    assert_one_line_error(run("softmax-export", str(checkpoint), "--format", "onnx", "-o",
                              str(tmp_path / "m.onnx")), 1,
                          "exporting to ONNX needs onnx: pip install 'softmax-cls[onnx]'")
    assert not (tmp_path / "m.onnx").exists()
    npz = run("softmax-export", str(checkpoint), "--format", "npz", "-o", str(tmp_path / "m.npz"))
    assert npz.returncode == 0, npz.stderr  # the npz export needs no onnx


def test_umbrella_runs_export(checkpoint, tmp_path):
    result = run("softmax", "export", str(checkpoint), "--format", "npz", "-o",
                 str(tmp_path / "m.npz"))
    assert result.returncode == 0, result.stderr


@needs_real_data
@pytest.mark.slow
def test_onnx_matches_the_tool_on_the_real_cifar10_test_split(tmp_path):
    """A short run on real CIFAR-10; its ONNX export on all 10,000 test images: argmax
    identical, probabilities within 1e-5."""
    config = small_config(tmp_path, engine="numpy", seed=0,
                          data={"root": str(tmp_path / "data"), "archive": str(REAL_ARCHIVE),
                                "val_size": 1000},
                          optim={"epochs": 1, "batch_size": 200, "lr": 1e-3})
    data = load_config_data(config.data, progress=False)
    train_run(config, data, tmp_path / "run", progress=False)
    model = Model.load(tmp_path / "run" / "best.npz")
    runtime = session(_write(onnx_model(model), tmp_path / "model.onnx"))
    test = data.with_test()
    pictures = np.ascontiguousarray(
        np.asarray(test.test_images).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    assert len(pictures) == 10_000
    probabilities = runtime.run(None, {"pixels": pictures})[0]
    tool = model.predict_proba(pictures)
    np.testing.assert_array_equal(probabilities.argmax(axis=1), tool.argmax(axis=1))
    np.testing.assert_array_equal(probabilities.argmax(axis=1),
                                  model.predict(np.asarray(test.test_images), layout="rows"))
    np.testing.assert_allclose(probabilities, tool, atol=1e-5)
    assert (tool.argmax(axis=1) == test.test_labels).mean() > 0.25


def test_the_wrote_line_stays_one_line_for_any_name(checkpoint, tmp_path):
    out = tmp_path / "two\nlines.npz"
    result = run("softmax-export", str(checkpoint), "--format", "npz", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"wrote {repr(str(out))}"]
    assert np.load(out)["W_raw"].shape == (4, 3073)


def test_onnx_refuses_class_names_its_one_per_line_metadata_cannot_hold(tmp_path,
                                                                        monkeypatch):
    # a probe's classes are its string labels: one with a newline would shift every class
    # after it in the metadata's list, one with bytes that are not UTF-8 cannot be written.
    # A feature file with such labels is refused now (test_features); a checkpoint of an
    # earlier version may hold them, made here by renaming the classes of a loaded file
    def with_old_names(data, **kwargs):
        loaded = load_features(data, **kwargs)
        return replace(loaded, class_names=("caf\udce9", "plain", "two\nlines"))  # sorted

    monkeypatch.setattr(conftest, "load_features", with_old_names)
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 200)
    X = (np.eye(3)[y] * 4 + rng.standard_normal((200, 3))).astype(np.float32)
    train_probe(tmp_path, X, np.array(["a", "b", "c"])[y])
    result = run("softmax-export", str(tmp_path / "run" / "best.npz"), "--format", "onnx",
                 "-o", str(tmp_path / "probe.onnx"))
    assert_one_line_error(result, 1, "class name 'caf\\udce9'", "--format npz")
    assert not (tmp_path / "probe.onnx").exists()
    assert run("softmax-export", str(tmp_path / "run" / "best.npz"), "--format", "npz", "-o",
               str(tmp_path / "probe.npz")).returncode == 0


def test_an_export_given_back_as_a_checkpoint_says_what_it_is(checkpoint, tmp_path):
    out = tmp_path / "model.npz"
    assert run("softmax-export", str(checkpoint), "--format", "npz", "-o",
               str(out)).returncode == 0
    picture = tmp_path / "a.png"
    Image.new("RGB", (32, 32)).save(picture)
    for command in (("softmax-predict", str(out), str(picture)),
                    ("softmax-export", str(out), "--format", "onnx", "-o", str(tmp_path / "m"))):
        assert_one_line_error(run(*command), 1, "model.npz: an export of softmax-export",
                              "not a checkpoint", "best.npz")


def test_the_checkpoint_itself_is_never_overwritten(checkpoint, tmp_path):
    copy = tmp_path / "best.npz"
    copy.write_bytes(checkpoint.read_bytes())
    (tmp_path / "link.npz").symlink_to(copy)
    os.link(copy, tmp_path / "hard.npz")
    for out in (copy, tmp_path / "link.npz", tmp_path / "hard.npz"):
        assert_one_line_error(run("softmax-export", str(copy), "--format", "npz", "-o", str(out),
                                  "--overwrite"), 1, "is the checkpoint itself")
    assert copy.read_bytes() == checkpoint.read_bytes()


def file_size_limit(limit: int):
    """A child's preexec_fn: files of at most `limit` bytes; a longer write is an error
    (EFBIG), not the SIGXFSZ that would kill the process."""
    import resource
    import signal

    def limit_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return limit_files


@pytest.mark.parametrize("fmt", ["npz", "onnx"])
def test_a_failed_export_removes_exactly_the_folders_it_made(checkpoint, tmp_path, fmt):
    """-o below missing folders creates them; when the write then fails (here: the file size
    limit), the folders it made are removed again, and folders that were there stay, an
    empty one and one holding a user's file alike."""
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "user.txt").write_text("mine")
    (tmp_path / "empty").mkdir()
    for parent in ("kept", "empty"):
        out = tmp_path / parent / "new" / "deeper" / f"model.{fmt}"
        result = run("softmax-export", str(checkpoint), "--format", fmt, "-o", str(out),
                     preexec_fn=file_size_limit(1000))
        assert_one_line_error(result, 1, f"model.{fmt}")
        assert not (tmp_path / parent / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "kept"]
    assert [p.name for p in (tmp_path / "kept").iterdir()] == ["user.txt"]
    assert list((tmp_path / "empty").iterdir()) == []
    out = tmp_path / "kept" / "new" / "deeper" / f"model.{fmt}"
    assert run("softmax-export", str(checkpoint), "--format", fmt, "-o", str(out)).returncode == 0
    assert out.is_file()
