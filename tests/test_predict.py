"""softmax-predict and inference.Model: a model trained on generated PNG and JPEG images
predicts new ones, through the command and through Python in both layouts, with the classes
and probabilities of a float64 recomputation from the checkpoint's arrays written here
(raw pixels -> pre_mean, pre_scale -> W); every wrong input is one error."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from cli_util import assert_one_line_error, run, script
from conftest import small_config, train_probe
from PIL import Image

from softmax_cls.data.images import read_image, to_rows
from softmax_cls.data.labelled import LabelledData
from softmax_cls.errors import DataError, InputError
from softmax_cls.inference import Model
from softmax_cls.inference.files import Predictions, expand_inputs
from softmax_cls.inference.model import top_k
from softmax_cls.inference.output import Table
from softmax_cls.training.runs import train_run

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("red", "green", "blue", "checker")


def class_picture(label: int, rng: np.random.Generator) -> np.ndarray:
    """(32, 32, 3) uint8: a smooth picture of the class (survives JPEG) plus a little noise."""
    ramp = np.linspace(40, 215, 32)
    picture = np.full((32, 32, 3), 60.0)
    if label < 3:
        picture[..., label] = ramp[None, :]
    else:
        picture[:] = np.where((np.arange(32)[:, None] // 8 + np.arange(32) // 8) % 2, 200, 50
                              )[..., None]
    picture += rng.integers(-12, 13, picture.shape)
    return np.clip(picture, 0, 255).astype(np.uint8)


def write_pictures(folder: Path, count: int, seed: int) -> tuple[list[Path], np.ndarray]:
    """`count` class pictures saved alternately as PNG and JPEG: (paths, labels (count,))."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths, labels = [], rng.integers(0, len(CLASSES), count)
    for i, label in enumerate(labels):
        path = folder / f"{i:03d}_{CLASSES[label]}.{'png' if i % 2 == 0 else 'jpg'}"
        Image.fromarray(class_picture(int(label), rng)).save(path, quality=95)
        paths.append(path)
    return paths, labels.astype(np.int64)


def decoded(paths: list[Path]) -> np.ndarray:
    """(N, 32, 32, 3) uint8 of 32 x 32 files, decoded by Pillow here (no resize needed)."""
    return np.stack([np.asarray(Image.open(path).convert("RGB")) for path in paths])


def reference(checkpoint: Path, pictures: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(classes (N,), probabilities (N, C)) in float64 from the checkpoint's own arrays:
    u = each picture's R plane, G plane, B plane; x = [(u - pre_mean) * pre_scale, 1];
    scores = x @ W.T, W (C, D)."""
    with np.load(checkpoint) as arrays:
        W = arrays["W"].astype(np.float64)
        mean, scale = arrays["pre_mean"], arrays["pre_scale"]
        assert bool(arrays["pre_bias"])
    u = np.stack([np.concatenate([p[:, :, c].ravel() for c in range(3)])
                  for p in pictures]).astype(np.float64)
    x = np.hstack([(u - mean) * scale, np.ones((len(u), 1))])
    scores = x @ W.T
    probabilities = np.exp(scores - scores.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    return scores.argmax(axis=1), probabilities


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A model trained on 240 generated PNG and JPEG files, and 16 new files to predict."""
    root = tmp_path_factory.mktemp("predict")
    paths, labels = write_pictures(root / "train", 320, seed=0)
    rows = to_rows(np.stack([read_image(path) for path in paths]))
    data = LabelledData("synthetic", CLASSES, rows[:240], labels[:240], rows[240:],
                        labels[240:], {"pictures": "seed0"})
    config = small_config(root, engine="numpy", data={"val_size": 40},
                          optim={"epochs": 4, "lr": 0.005})
    train_run(config, data, root / "run", progress=False)
    new, new_labels = write_pictures(root / "new", 16, seed=1)
    checkpoint = root / "run" / "best.npz"
    expected, probabilities = reference(checkpoint, decoded(new))
    assert (expected == new_labels).mean() >= 0.9  # the model learned the classes
    return {"root": root, "checkpoint": checkpoint, "new": new, "expected": expected,
            "probabilities": probabilities}


# -- the command


def test_command_gives_the_float64_classes_and_probabilities(trained):
    result = run("softmax-predict", str(trained["checkpoint"]), str(trained["root"] / "new"),
                 "--json", "--top-k", "4", "--batch-size", "5")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["input"] for line in lines] == [str(path) for path in trained["new"]]
    for line, expected, probabilities in zip(lines, trained["expected"],
                                             trained["probabilities"], strict=True):
        top = line["top_k"]
        assert top[0]["index"] == expected
        assert [entry["class"] for entry in top] == [CLASSES[e["index"]] for e in top]
        np.testing.assert_allclose([e["probability"] for e in top],
                                   probabilities[[e["index"] for e in top]], atol=1e-5)
        assert [e["probability"] for e in top] == sorted((e["probability"] for e in top),
                                                         reverse=True)


def test_table_is_aligned_one_row_per_image(trained):
    files = [str(path) for path in trained["new"][:3]]
    result = run("softmax-predict", str(trained["checkpoint"]), *files)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # three files: no progress bar
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["input", "top", "1", "top", "2", "top", "3"]
    assert len(rows) == 3
    for row, file, expected in zip(rows, files, trained["expected"][:3], strict=True):
        assert row.startswith(file)
        assert row.split()[1] == CLASSES[expected]
        assert row.index(row.split()[1], len(file)) == header.index("top 1")
        assert row.rindex(row.split()[-2]) == header.index("top 3")
        assert all(re.fullmatch(r"\d\.\d{4}", cell) for cell in row.split()[2::2])



def test_a_file_name_with_a_newline_or_escapes_stays_one_escaped_row(trained, tmp_path):
    # a name may hold a newline or a terminal escape sequence: each row stays one line, the
    # name escaped as shorten() writes it (a raw ESC would reach the user's terminal)
    odd = [tmp_path / "two\nlines.png", tmp_path / "\x1b[2Jclear.png"]
    for path in odd:
        shutil.copy(trained["new"][0], path)
    result = run("softmax-predict", str(trained["checkpoint"]), *map(str, odd))
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert len(rows) == 2
    assert "two\\nlines.png" in rows[0] and "\\x1b[2Jclear.png" in rows[1]
    for row in rows:
        assert row.index(row.split()[-2]) == header.index("top 3")  # still aligned


def test_class_names_with_a_newline_or_escapes_stay_in_one_aligned_row():
    # a probe's classes are its labels, any strings: each cell escaped as shorten() writes it
    names = ("plain", "two\nlines", "\x1b[2Jclear")
    table = Table(names, 3, len("a.npy[0]"))
    batch = Predictions(["a.npy[0]"], np.array([[1, 2, 0]]),
                        np.array([[0.5, 0.3, 0.2]], np.float32))
    (row,) = table.lines(batch)
    assert "\n" not in row and "\x1b" not in row
    assert row.split() == ["a.npy[0]", "'two\\nlines'", "0.5000", "'\\x1b[2Jclear'", "0.3000",
                           "plain", "0.2000"]
    assert row.index("plain") == table.header().index("top 3")

def test_a_picture_of_another_size_is_resized_as_read_image_does(trained, tmp_path):
    big = np.kron(decoded(trained["new"][:1])[0], np.ones((3, 2, 1), np.uint8))  # 96 x 64
    Image.fromarray(big).save(tmp_path / "big.png")
    result = run("softmax-predict", str(trained["checkpoint"]), str(tmp_path / "big.png"),
                 "--json", "--top-k", "1")
    assert result.returncode == 0, result.stderr
    expected, _ = reference(trained["checkpoint"], read_image(tmp_path / "big.png")[None])
    assert json.loads(result.stdout)["top_k"][0]["index"] == expected[0]


def test_progress_bar_only_for_more_than_one_batch(trained):
    many = run("softmax-predict", str(trained["checkpoint"]), str(trained["root"] / "new"),
               "--batch-size", "4")
    assert many.returncode == 0 and "predict" in many.stderr
    quiet = run("softmax-predict", str(trained["checkpoint"]), str(trained["root"] / "new"),
                "--batch-size", "4", "--quiet")
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert quiet.stdout == many.stdout
    one_batch = run("softmax-predict", str(trained["checkpoint"]), str(trained["root"] / "new"),
                    "--batch-size", str(len(trained["new"])))  # exactly one batch: no bar
    assert one_batch.returncode == 0 and one_batch.stderr == ""


def test_softmax_predict_by_name(trained):
    file = str(trained["new"][0])
    assert (run("softmax", "predict", str(trained["checkpoint"]), file).stdout
            == run("softmax-predict", str(trained["checkpoint"]), file).stdout)


# -- Python


def test_model_in_both_layouts_and_every_input_kind(trained):
    model = Model.load(trained["checkpoint"])
    pictures = decoded(trained["new"])
    expected = trained["expected"]
    assert model.is_image_model and model.class_names == CLASSES
    np.testing.assert_array_equal(model.predict(pictures), expected)
    np.testing.assert_array_equal(model.predict(pictures.transpose(0, 3, 1, 2)), expected)
    np.testing.assert_array_equal(model.predict(pictures, layout="nhwc"), expected)
    np.testing.assert_array_equal(model.predict(pictures.transpose(0, 3, 1, 2), layout="nchw"),
                                  expected)
    np.testing.assert_array_equal(model.predict(to_rows(pictures), layout="rows"), expected)
    np.testing.assert_array_equal(model.predict(trained["new"]), expected)
    np.testing.assert_array_equal(model.predict([str(p) for p in trained["new"]]), expected)
    np.testing.assert_array_equal(model.predict([Image.open(p) for p in trained["new"]]),
                                  expected)
    assert model.predict(pictures[3]).tolist() == [expected[3]]  # one (32, 32, 3) image
    assert model.predict(pictures[3].transpose(2, 0, 1)).tolist() == [expected[3]]
    assert model.predict(trained["new"][3]).tolist() == [expected[3]]
    assert model.predict(Image.open(trained["new"][3])).tolist() == [expected[3]]
    probabilities = model.predict_proba(pictures)
    assert probabilities.dtype == np.float32 and probabilities.shape == (16, 4)
    np.testing.assert_allclose(probabilities, trained["probabilities"], atol=1e-5)
    classes, top = model.top_k(pictures, 2)
    np.testing.assert_array_equal(classes[:, 0], expected)
    np.testing.assert_array_equal(top, np.take_along_axis(probabilities, classes, axis=1))
    assert (top[:, 0] >= top[:, 1]).all()
    assert model.predict(np.empty((0, 32, 32, 3), np.uint8)).shape == (0,)
    assert model.predict_proba([]).shape == (0, 4)


def test_top_k_orders_by_probability_then_class():
    probabilities = np.array([[0.1, 0.4, 0.1, 0.4], [0.7, 0.1, 0.15, 0.05]])
    classes, top = top_k(probabilities, 3)
    assert classes.tolist() == [[1, 3, 0], [0, 2, 1]]
    assert top.tolist() == [[0.4, 0.4, 0.1], [0.7, 0.15, 0.1]]
    many = np.tile([0.01, 0.03, 0.01, 0.03], (2, 25))  # 100 classes, long runs of ties
    classes, _ = top_k(many / many.sum(axis=1, keepdims=True), 60)
    assert classes.tolist() == [list(range(1, 100, 2)) + list(range(0, 20, 2))] * 2
    for k in (0, 5):
        with pytest.raises(InputError, match="between 1 and 4"):
            top_k(probabilities, k)
    assert top_k(probabilities, np.int64(2))[0].tolist() == [[1, 3], [0, 2]]


@pytest.mark.parametrize("k,shown", [(2.0, "2.0 (float)"), (True, "True (bool)"),
                                     (np.True_, "(bool"), ("2", "'2' (str)"),
                                     (np.float64(1), "(float64)")])
def test_top_k_takes_only_an_integer_count(probe, k, shown):
    """k=2.0 was numpy's TypeError from slicing, and k=True took 1 class."""
    probabilities = np.full((1, 4), 0.25)
    with pytest.raises(InputError, match=r"^top-k must be an integer between 1 and 4 "):
        top_k(probabilities, k)
    model = Model.load(probe["checkpoint"])
    with pytest.raises(InputError, match="between 1 and 3") as raised:
        model.top_k(object(), k=k)  # k is refused before the input is looked at
    assert shown in str(raised.value)
    classes, _ = model.top_k(probe["new"], k=np.int64(2))
    assert classes.shape == (4, 2)


PIXELS = np.random.default_rng(5).integers(0, 256, (2, 32, 32, 3), np.uint8)
WRONG_ARRAYS = {
    "float in [0, 1]": (PIXELS / 255.0, None, "float pixels in [0, 1] (float64): pass uint8 "
                        "pixels 0-255, e.g. (x * 255).round().astype(np.uint8)"),
    "float32 0-255": (PIXELS.astype(np.float32), None, "float pixels (float32): pass uint8"),
    "NaN": (np.full((1, 32, 32, 3), np.nan), None, "NaN"),
    "int64": (PIXELS.astype(np.int64), None, "int64 pixels: pass uint8 pixels 0-255 (these "
              "fit: x.astype(np.uint8))"),
    "int16 out of range": (PIXELS.astype(np.int16) * 2, None, "int16 pixels: pass uint8"),
    "bool": (PIXELS > 3, None, "a bool array"),
    "4-d wrong layout": (PIXELS.transpose(0, 1, 3, 2), None, "neither NHWC"),
    "nhwc as nchw": (PIXELS, "nchw", "layout='nchw' takes (N, 3, 32, 32), got shape "
                     "(2, 32, 32, 3)"),
    "nchw as nhwc": (PIXELS.transpose(0, 3, 1, 2), "nhwc", "layout='nhwc' takes"),
    "wrong size": (np.zeros((2, 64, 64, 3), np.uint8), None, "resize them first"),
    "wrong size nchw": (np.zeros((2, 3, 28, 28), np.uint8), None, "resize them first"),
    "grey": (np.zeros((2, 32, 32), np.uint8), None, "no colour axis"),
    "flattened": (PIXELS.reshape(2, -1), None, "is ambiguous"),
    "5-d": (PIXELS[None], None, "a 5-d array"),
    "1-d": (PIXELS.ravel(), None, "a 1-d array"),
    "rows wrong width": (PIXELS.reshape(4, -1), "rows", "layout='rows' takes (N, 3072)"),
    "rows given images": (PIXELS, "rows", "layout='rows' takes"),
    "unknown layout": (PIXELS, "hwc", "layout must be one of auto, nhwc, nchw, rows"),
}


@pytest.mark.parametrize("name", WRONG_ARRAYS)
def test_every_wrong_array_is_one_input_error(trained, name):
    array, layout, message = WRONG_ARRAYS[name]
    model = Model.load(trained["checkpoint"])
    with pytest.raises(InputError) as caught:
        model.predict(array, layout=layout or "auto")
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_other_objects_are_refused(trained):
    model = Model.load(trained["checkpoint"])
    with pytest.raises(InputError, match="cannot predict on a dict"):
        model.predict({"a": 1})
    with pytest.raises(InputError, match="not a list"):
        model.predict([PIXELS], layout="rows")
    with pytest.raises(InputError, match="no such image file: nowhere.png"):
        model.predict("nowhere.png")
    folder = str(trained["root"] / "new")
    with pytest.raises(InputError, match=f"{re.escape(folder)} is a folder: pass its files"):
        model.predict(folder)


# -- wrong inputs through the installed command


def test_float16_feature_rows_are_scored_as_their_float32_conversion(probe, tmp_path,
                                                                      monkeypatch):
    from softmax_cls.inference import model as model_module

    seen = []
    real = model_module.checkpoint_scores
    monkeypatch.setattr(model_module, "checkpoint_scores",
                        lambda checkpoint, rows: seen.append(rows.dtype) or real(checkpoint,
                                                                                 rows))
    model = Model.load(probe["checkpoint"])
    half = probe["new"].astype(np.float16)
    np.save(tmp_path / "half_X.npy", half)
    expected = model.scores(half.astype(np.float32))
    np.testing.assert_array_equal(model.scores(half), expected)
    np.testing.assert_array_equal(model.scores(tmp_path / "half_X.npy"), expected)
    assert seen == [np.float32, np.float16, np.float16]  # no float32 copy of float16 rows
    with pytest.raises(InputError, match="NaN or inf"):
        model.predict(np.full((1, 12), np.inf, np.float16))


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> dict:
    """A linear probe trained on 12 features, its checkpoint and new feature rows."""
    root = tmp_path_factory.mktemp("probe")
    rng = np.random.default_rng(2)
    centers = rng.normal(0, 3, (3, 12))
    y = rng.integers(0, 3, 400)
    X = (centers[y] + rng.standard_normal((400, 12))).astype(np.float32) * 4 + 2
    checkpoint = train_probe(root, X, y)
    new = (centers[[0, 1, 2, 1]] + rng.standard_normal((4, 12))) * 4 + 2
    np.save(root / "new_X.npy", new)
    np.savez(root / "new.npz", X=new.astype(np.float64))
    return {"root": root, "checkpoint": checkpoint, "new": new}


def test_a_probe_predicts_feature_files_and_rows(probe):
    with np.load(probe["checkpoint"]) as arrays:
        W, mean, scale = arrays["W"].astype(np.float64), arrays["pre_mean"], arrays["pre_scale"]
    expected = (((probe["new"] - mean) * scale) @ W[:, :-1].T + W[:, -1]).argmax(axis=1)
    model = Model.load(probe["checkpoint"])
    assert not model.is_image_model and model.n_inputs == 12
    np.testing.assert_array_equal(model.predict(probe["new"]), expected)
    np.testing.assert_array_equal(model.predict(probe["root"] / "new.npz"), expected)
    assert model.predict(probe["new"][2]).tolist() == [expected[2]]
    result = run("softmax-predict", str(probe["checkpoint"]), str(probe["root"] / "new_X.npy"),
                 str(probe["root"] / "new.npz"), "--json", "--top-k", "1")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["input"] for line in lines][:2] == [f"{probe['root'] / 'new_X.npy'}[0]",
                                                    f"{probe['root'] / 'new_X.npy'}[1]"]
    assert [line["top_k"][0]["index"] for line in lines] == expected.tolist() * 2
    for wrong, message in ((PIXELS, "feature rows (N, 12)"),
                           (np.full((1, 12), np.nan), "NaN or inf"),
                           (np.zeros((2, 11)), "feature rows (N, 12)"),
                           ([PIXELS[0]], "not an image model")):
        with pytest.raises(InputError, match=re.escape(message)):
            model.predict(wrong)




def test_a_probe_table_is_aligned_under_its_header(probe):
    # rows are named file[i]: the header is padded to the longest, known from the headers
    files = [str(probe["root"] / "new_X.npy"), str(probe["root"] / "new.npz")]
    result = run("softmax-predict", str(probe["checkpoint"]), *files, "--top-k", "1")
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert len(rows) == 8 and rows[-1].startswith(f"{files[1]}[3] ")
    for row in rows:
        assert row.index(row.split()[1], len(row.split()[0])) == header.index("top 1"), row

def test_the_default_top_k_fits_a_two_class_model(tmp_path):
    # the default, 3, is cut to the classes there are: a yes/no model works without --top-k;
    # a --top-k given larger than the classes stays an error
    rng = np.random.default_rng(6)
    y = rng.integers(0, 2, 200)
    X = (np.eye(2)[y] * 4 + rng.standard_normal((200, 2))).astype(np.float32)
    train_probe(tmp_path, X, np.array(["no", "yes"])[y])
    np.save(tmp_path / "new_X.npy", X[:3])
    checkpoint, new = str(tmp_path / "run" / "best.npz"), str(tmp_path / "new_X.npy")
    result = run("softmax-predict", checkpoint, new)
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["input", "top", "1", "top", "2"] and len(rows) == 3
    assert_one_line_error(run("softmax-predict", checkpoint, new, "--top-k", "3"), 2,
                          "3 is more than the model's 2 classes")
    classes, probabilities = Model.load(checkpoint).top_k(X[:3])  # Python: the same default
    assert classes.shape == probabilities.shape == (3, 2)
    with pytest.raises(InputError, match="between 1 and 2"):
        Model.load(checkpoint).top_k(X[:3], k=3)

def test_wrong_inputs_are_one_error_line(trained, probe, tmp_path):
    checkpoint = str(trained["checkpoint"])
    good = str(trained["new"][0])
    (tmp_path / "notes.png").write_text("not a picture")
    png = trained["new"][0].read_bytes()
    (tmp_path / "cut.png").write_bytes(png[: len(png) // 2])
    (tmp_path / "empty").mkdir()
    (tmp_path / "other.npz").write_bytes(trained["new"][0].read_bytes())
    np.savez(tmp_path / "arrays.npz", a=np.zeros(3))
    np.save(tmp_path / "wide_X.npy", np.zeros((3, 13), np.float32))
    cases = [
        (("softmax-predict", checkpoint, good, str(tmp_path / "notes.png")), 1,
         f"cannot read {tmp_path / 'notes.png'}: not an image Pillow can read"),
        (("softmax-predict", checkpoint, str(tmp_path / "cut.png")), 1,
         f"cannot read {tmp_path / 'cut.png'}: cannot be decoded"),
        (("softmax-predict", str(tmp_path / "missing.npz"), good), 1, "checkpoint not found"),
        (("softmax-predict", good, good), 1, "not a checkpoint of this tool"),
        (("softmax-predict", str(tmp_path / "other.npz"), good), 1, "not a checkpoint"),
        (("softmax-predict", str(tmp_path / "arrays.npz"), good), 1,
         "not a checkpoint of this tool"),
        (("softmax-predict", str(probe["checkpoint"]), good), 1,
         "this checkpoint is a linear probe on 12 features, not an image model"),
        (("softmax-predict", str(probe["checkpoint"]), str(tmp_path / "wide_X.npy")), 1,
         f"{tmp_path / 'wide_X.npy'}: this checkpoint takes feature rows (N, 12), got an "
         "array of shape (3, 13)"),
        (("softmax-predict", str(probe["checkpoint"]), str(tmp_path / "arrays.npz")), 1,
         "no X array in the .npz"),
        (("softmax-predict", checkpoint, str(tmp_path / "nowhere.png")), 1,
         "no such file or folder"),
        (("softmax-predict", checkpoint, str(tmp_path / "empty")), 1, "holds no files ending in"),
        (("softmax-predict", checkpoint, good, "--top-k", "5"), 2,
         "5 is more than the model's 4 classes"),
        (("softmax-predict", checkpoint, good, "--top-k", "0"), 2, "--top-k"),
        (("softmax-predict", checkpoint), 2, "IMAGE_OR_FOLDER"),
        (("softmax-predict", checkpoint, str(tmp_path / "notes.png"), "--skip-unreadable"), 1,
         "no file could be read; 1 unreadable file"),
    ]
    for args, code, message in cases:
        result = run(*args)
        assert_one_line_error(result, code, message)
        # nothing on stdout: a header above no rows (`> predictions.txt`) read as a result
        assert result.stdout == "", (args, result.stdout)



def test_a_named_pipe_or_device_is_refused_not_waited_on(trained, tmp_path):
    # opening a FIFO blocks until someone writes to it: the command would hang for ever
    os.mkfifo(tmp_path / "pipe.png")
    for path in (str(tmp_path / "pipe.png"), "/dev/zero"):
        result = run("softmax-predict", str(trained["checkpoint"]), path, timeout=30)
        assert_one_line_error(result, 1, f"{path} is not a regular file")


@pytest.mark.parametrize("kind", ["trained", "probe"])
def test_the_python_api_refuses_a_pipe_path_without_opening_it(trained, probe, tmp_path, kind):
    """Model.predict on a pipe's path said "no such image file" (it exists), or opened it
    and waited for a writer for ever (a probe's feature file)."""
    fifo = tmp_path / ("pipe.png" if kind == "trained" else "pipe_X.npy")
    os.mkfifo(fifo)
    # a writer after 5 s frees a reader that opened the pipe (the defect): a failure, no hang
    writer = threading.Timer(5, lambda: open(fifo, "wb").close())
    writer.daemon = True
    writer.start()
    model = Model.load({"trained": trained, "probe": probe}[kind]["checkpoint"])
    with pytest.raises((InputError, DataError), match=f"{fifo}: not a regular file"):
        model.predict(str(fifo))
    writer.cancel()
    os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))  # frees a writer already waiting


def tiff_with_a_tag_past_the_end(compression: int) -> bytes:
    """A 2 x 2 grey TIFF whose Software tag says its text lies past the end of the file (Pillow
    warns while it opens it), compressed by `compression` (99: a scheme that does not exist)."""
    entries = [(256, 3, 1, 2), (257, 3, 1, 2), (258, 3, 1, 8), (259, 3, 1, compression),
               (262, 3, 1, 1), (273, 4, 1, 8), (277, 3, 1, 1), (278, 3, 1, 2), (279, 4, 1, 4),
               (305, 2, 1000, 99999)]
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHII", *entry) for entry in entries) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 12) + bytes([0, 80, 160, 240]) + ifd


def test_pillows_warnings_about_a_damaged_file_are_not_printed(trained, tmp_path):
    # Pillow warns (several lines, with its source file) about a damaged header: the file is
    # still one error line, or read without a word
    (tmp_path / "bad.tif").write_bytes(tiff_with_a_tag_past_the_end(99))
    assert_one_line_error(run("softmax-predict", str(trained["checkpoint"]),
                              str(tmp_path / "bad.tif")), 1, "bad.tif")
    (tmp_path / "odd.tif").write_bytes(tiff_with_a_tag_past_the_end(1))
    result = run("softmax-predict", str(trained["checkpoint"]), str(tmp_path / "bad.tif"),
                 str(tmp_path / "odd.tif"), "--skip-unreadable")
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 2
    assert result.stderr.splitlines() == [f"skipped 1 unreadable file: {tmp_path / 'bad.tif'}"]

def test_skip_unreadable_counts_and_names_them(trained, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i, path in enumerate(trained["new"][:3]):
        (folder / f"b{i}{path.suffix}").write_bytes(path.read_bytes())
    for name in ("a_bad.png", "c_bad.jpg"):
        (folder / name).write_text("no")
    (folder / "readme.txt").write_text("not an image suffix: never read")
    # named relative to tmp_path: the line shortens a name past 80 characters
    result = run("softmax-predict", str(trained["checkpoint"]), "mixed", "--json",
                 "--skip-unreadable", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 3
    assert result.stderr.splitlines() == [
        "skipped 2 unreadable files: mixed/a_bad.png, mixed/c_bad.jpg"]



def test_a_dangling_link_or_a_pipe_in_a_folder_is_unreadable_not_left_out(trained, tmp_path):
    """A folder's names of image suffixes that are no regular file were left out without a
    word, skipped or not; a pipe must not be opened (it waits for a writer for ever)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "b_good.png").write_bytes(trained["new"][0].read_bytes())
    (folder / "a_gone.png").symlink_to(tmp_path / "deleted.png")
    (folder / "c_loop.png").symlink_to(folder / "c_loop.png")
    os.mkfifo(folder / "d_pipe.png")
    result = run("softmax-predict", str(trained["checkpoint"]), str(folder), timeout=30)
    assert_one_line_error(result, 1, f"{folder / 'a_gone.png'}: a link to nothing")
    assert result.stdout == ""
    result = run("softmax-predict", str(trained["checkpoint"]), "photos", "--json",
                 "--skip-unreadable", timeout=30, cwd=tmp_path)  # short names: not shortened
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["input"] for line in result.stdout.splitlines()] == [
        "photos/b_good.png"]
    assert result.stderr.splitlines() == [
        "skipped 3 unreadable files: photos/a_gone.png, photos/c_loop.png, photos/d_pipe.png"]
    result = run("softmax-predict", str(trained["checkpoint"]), str(folder / "d_pipe.png"),
                 str(folder / "b_good.png"), "--skip-unreadable", timeout=30)
    # named on the command line it is refused, skipping or not, in one line and at once
    assert_one_line_error(result, 1, f"{folder / 'd_pipe.png'} is not a regular file")
    # a link to the pipe leads somewhere: not a regular file, not "a link to nothing"
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "e.png").symlink_to(folder / "d_pipe.png")
    result = run("softmax-predict", str(trained["checkpoint"]), str(linked), timeout=30)
    assert_one_line_error(result, 1, f"{linked / 'e.png'}: not a regular file")


def test_a_pipe_in_a_folder_of_feature_files_is_not_opened(probe, tmp_path):
    """A probe's table measures each file's rows from its header first: a pipe's would wait
    for a writer for ever."""
    folder = tmp_path / "features"
    folder.mkdir()
    np.save(folder / "a_X.npy", probe["new"])
    os.mkfifo(folder / "b_X.npy")
    result = run("softmax-predict", str(probe["checkpoint"]), str(folder), timeout=30)
    assert_one_line_error(result, 1, f"{folder / 'b_X.npy'}: not a regular file")
    result = run("softmax-predict", str(probe["checkpoint"]), "features", "--skip-unreadable",
                 timeout=30, cwd=tmp_path)  # a short name: not shortened
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 1 + len(probe["new"])
    assert result.stderr.splitlines() == ["skipped 1 unreadable file: features/b_X.npy"]


def test_skip_unreadable_skips_a_named_file_it_may_not_read(trained, tmp_path):
    """A file named on the command line that this user may not read (mode 000) is skipped
    like a damaged one: click's path check (the inputs' empty-path refusal) refused it first,
    'Path ... is not readable', exit 2, so --skip-unreadable could not skip it."""
    from test_hostile import run_measured

    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("root reads any file, and setpriv is not here to drop that power")
    good, locked = trained["new"][0], tmp_path / f"locked{trained['new'][1].suffix}"
    locked.write_bytes(trained["new"][1].read_bytes())
    locked.chmod(0o000)
    result = run_measured("softmax-predict", str(trained["checkpoint"]), str(good),
                          locked.name, "--json", "--skip-unreadable", cwd=tmp_path,
                          without_root_powers=os.geteuid() == 0)  # a short name: not shortened
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1
    assert result.stderr.splitlines() == [f"skipped 1 unreadable file: {locked.name}"]


def test_folders_expand_recursively_sorted_by_suffix(tmp_path):
    for name in ("b/2.PNG", "b/1.jpg", "a.png", "c/notes.txt", "c/d/3.webp"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "link").symlink_to(tmp_path / "b")
    found = expand_inputs([str(tmp_path), str(tmp_path / "a.png")], (".png", ".jpg", ".webp"))
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "a.png", "b/1.jpg", "b/2.PNG", "c/d/3.webp", "a.png"]


def test_missing_checkpoint_from_python_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="checkpoint not found"):
        Model.load(tmp_path / "nothing.npz")


def test_without_pillow_one_line_names_the_pip_command(trained, tmp_path, monkeypatch):
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['PIL'] = None\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    assert_one_line_error(run("softmax-predict", str(trained["checkpoint"]),
                              str(trained["new"][0])), 1,
                          "reading images needs Pillow: pip install 'softmax-cls[images]'")


# -- the README's Predict section, run as written


def readme_predict_section() -> tuple[list[str], list[str]]:
    """(the bash lines, the Python blocks) of README.md's "## Predict" section."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Predict\n", 1)[1].split("\n## ", 1)[0]
    bash = re.findall(r"^```bash\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
    python = re.findall(r"^```python\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
    return [line for block in bash for line in block.splitlines() if line.strip()], python


def test_readme_predict_section_runs(trained, tmp_path, monkeypatch):
    commands, blocks = readme_predict_section()
    assert len(commands) == 2 and len(blocks) == 1
    (tmp_path / "runs" / "default").mkdir(parents=True)
    (tmp_path / "runs" / "default" / "best.npz").write_bytes(trained["checkpoint"].read_bytes())
    (tmp_path / "my_photos").mkdir()
    for name, source in (("cat.png", trained["new"][0]), ("ship.jpg", trained["new"][1])):
        (tmp_path / "my_photos" / name).write_bytes(source.read_bytes())
    outputs = []
    for command in commands:
        name, *args = shlex.split(command)
        result = run(name, *args, cwd=tmp_path)
        assert result.returncode == 0, (command, result.stderr)
        outputs.append(result.stdout)
    predicted = [line.split()[1] for line in outputs[0].splitlines()[1:]]
    assert predicted == [CLASSES[k] for k in trained["expected"][:2]]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], "README.md Predict", "exec"), namespace)
    expected, probabilities = reference(tmp_path / "runs/default/best.npz", namespace["images"])
    np.testing.assert_array_equal(namespace["labels"], expected)
    np.testing.assert_allclose(namespace["probabilities"], probabilities, atol=1e-5)
    np.testing.assert_array_equal(namespace["scores"].argmax(axis=1), expected)
    assert namespace["classes"][0, 0] == trained["expected"][0]


def test_help_and_umbrella_list_predict_and_export():
    listing = subprocess.run([sys.executable, "-m", "softmax_cls"], capture_output=True,
                             text=True).stdout
    assert "predict" in listing and "export" in listing
    assert "Usage: softmax-predict" in run("softmax-predict", "--help").stdout
    assert Path(script("softmax-export")).exists()


@pytest.mark.slow
@pytest.mark.parametrize("size", [(10_000, 10_000), (1, 60_000_000)], ids=["square", "strip"])
def test_a_huge_image_is_read_in_little_more_memory_than_its_pixels(trained, tmp_path, size):
    """100 megapixels (a camera's) decoded once: the EXIF transpose and the RGB conversion
    of an RGB image each made a copy (1.2 GB peak for 300 MB of pixels; the 1 x 60 million
    strip, whose 60 million row pointers double each copy, 2.1 GB)."""
    from test_hostile import run_measured

    Image.new("RGB", size, (200, 30, 30)).save(tmp_path / "big.png")
    result = run_measured("softmax-predict", str(trained["checkpoint"]),
                          str(tmp_path / "big.png"), "--top-k", "1", timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.peak_mb < 850, result.peak_mb


@pytest.mark.parametrize("more", [1, 0], ids=["one more than named", "as many as named"])
def test_skip_unreadable_names_as_many_as_its_help_says(trained, tmp_path, more):
    """`, ...` follows the names only where some unreadable file is left unnamed."""
    from softmax_cls.cli import SKIPPED_NAMED

    folder = tmp_path / "b"  # named relative to cwd: short enough to be named whole
    folder.mkdir()
    good = trained["new"][0]
    (folder / f"z_good{good.suffix}").write_bytes(good.read_bytes())
    bad = [Path("b") / f"{i}_bad.png" for i in range(SKIPPED_NAMED + more)]
    for path in bad:
        (tmp_path / path).write_text("no")
    result = run("softmax-predict", str(trained["checkpoint"]), "b", "--json",
                 "--skip-unreadable", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    named = ", ".join(map(str, bad[:SKIPPED_NAMED])) + (", ..." if more else "")
    assert result.stderr.splitlines() == [f"skipped {len(bad)} unreadable files: {named}"]
    helped = " ".join(run("softmax-predict", "--help").stdout.split())
    assert f"names the first {SKIPPED_NAMED}." in helped
    assert "the first such file ends the command with an error" in helped
    row = next(line for line in (Path(__file__).resolve().parents[1] / "docs" / "commands.md")
               .read_text().splitlines() if line.startswith("| `--skip-unreadable`"))
    words = {"two": 2, "three": 3, "four": 4, "five": 5}
    assert words[re.search(r"name the first (\w+)", row).group(1)] == SKIPPED_NAMED, row


# -- found by the mutation pass of 2026-12-07


def test_integer_feature_rows_are_scored_as_their_values(probe, tmp_path):
    """Feature rows of integers (counts, say) are real numbers, in Python and in a file."""
    with np.load(probe["checkpoint"]) as arrays:
        W, mean, scale = arrays["W"].astype(np.float64), arrays["pre_mean"], arrays["pre_scale"]
    counts = np.rint(np.abs(probe["new"]))
    expected = (((counts - mean) * scale) @ W[:, :-1].T + W[:, -1]).argmax(axis=1)
    model = Model.load(probe["checkpoint"])
    for dtype in (np.uint8, np.int32):
        assert model.predict(counts.astype(dtype)).tolist() == expected.tolist(), dtype
    np.save(tmp_path / "counts_X.npy", counts.astype(np.uint16))
    result = run("softmax-predict", str(probe["checkpoint"]), str(tmp_path / "counts_X.npy"),
                 "--json", "--top-k", "1")
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["top_k"][0]["index"]
            for line in result.stdout.splitlines()] == expected.tolist()


def test_a_feature_row_that_is_not_finite_is_named_by_its_row(probe):
    rows = np.ones((4, 12), np.float32)
    rows[2, 7] = np.nan
    with pytest.raises(InputError, match=r"^feature row 2 holds NaN or inf"):
        Model.load(probe["checkpoint"]).predict(rows)


def test_pil_images_of_any_size_and_mode_are_resized_and_made_rgb(trained):
    """A PIL image is read as a file is: a 64 x 48 flat colour is that colour in every
    plane, a grey one is grey in R, G and B."""
    model = Model.load(trained["checkpoint"])
    flat = model.rows(Image.new("RGB", (64, 48), (12, 34, 56)))
    assert flat.dtype == np.uint8
    assert flat.tolist() == [[12] * 1024 + [34] * 1024 + [56] * 1024]
    grey = np.arange(32 * 32, dtype=np.uint32).reshape(32, 32) % 251
    rows = model.rows(Image.fromarray(grey.astype(np.uint8), "L"))
    assert rows.tolist() == [grey.ravel().tolist() * 3]


def test_no_inputs_are_no_rows_of_pixels(trained):
    rows = Model.load(trained["checkpoint"]).rows([])
    assert rows.shape == (0, 3072) and rows.dtype == np.uint8


def test_each_batch_counts_its_files_not_its_rows(probe, tmp_path):
    """The progress bar counts files: a batch of feature files of 4 rows each, or of a
    skipped file, moves it by its files."""
    from softmax_cls.inference.files import predict_files

    np.save(tmp_path / "a_X.npy", probe["new"])
    np.save(tmp_path / "b_X.npy", probe["new"])
    (tmp_path / "c_X.npy").write_bytes(b"not an array")
    files = [tmp_path / "a_X.npy", tmp_path / "b_X.npy", tmp_path / "c_X.npy"]
    batches = list(predict_files(Model.load(probe["checkpoint"]), files, 1, 2,
                                 skip_unreadable=True))
    assert [len(batch.names) for batch in batches] == [8, 0]
    assert [batch.n_files for batch in batches] == [2, 1]


def test_feature_files_of_an_upper_case_suffix_are_read(probe, tmp_path):
    """A folder's files are taken whatever the case of their suffix (A_X.NPY): they were
    then refused, 'a feature file must be .npz (holding X) or .npy'; named, too. The table
    is as wide as the longest row name, told from the headers before the first batch."""
    folder = tmp_path / "upper"
    folder.mkdir()
    np.save(folder / "a_X.npy", probe["new"])
    (folder / "a_X.npy").rename(folder / "A_X.NPY")
    np.savez(folder / "b.npz", X=probe["new"])
    (folder / "b.npz").rename(folder / "B_LONGER.NPZ")
    np.save(tmp_path / "c_X.npy", probe["new"])
    expected = run("softmax-predict", str(probe["checkpoint"]), str(tmp_path / "c_X.npy"),
                   "--json")
    assert expected.returncode == 0, expected.stderr
    classes = [json.loads(line)["top_k"] for line in expected.stdout.splitlines()]
    for args in ([str(folder)], [str(folder / "A_X.NPY"), str(folder / "B_LONGER.NPZ")]):
        result = run("softmax-predict", str(probe["checkpoint"]), *args, "--json")
        assert result.returncode == 0, result.stderr
        lines = [json.loads(line) for line in result.stdout.splitlines()]
        assert [line["input"] for line in lines] == (
            [f"{folder / 'A_X.NPY'}[{i}]" for i in range(4)]
            + [f"{folder / 'B_LONGER.NPZ'}[{i}]" for i in range(4)])
        assert [line["top_k"] for line in lines] == classes * 2
    table = run("softmax-predict", str(probe["checkpoint"]), str(folder), "--batch-size", "1",
                "--top-k", "1", "--quiet")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert len(rows) == 8
    for row in rows:
        assert row.index(row.split()[1], len(row.split()[0])) == header.index("top 1"), row


def test_names_shorter_than_the_header_stay_aligned_under_it():
    """A file named `.png` (4 characters) is shorter than the header's `input`."""
    table = Table(("cat", "dog"), 1, len(".png"))
    (row,) = table.lines(Predictions([".png"], np.array([[1]]), np.array([[0.75]], np.float32)))
    assert row.index("dog") == table.header().index("top 1")


def test_a_png_broken_between_its_chunks_is_one_error_line(trained, tmp_path):
    """Pillow raises SyntaxError ('broken PNG file') for a chunk header of garbage after the
    first IDAT, found only as the pixels are read."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    pixels = zlib.compress(b"".join(b"\x00" + bytes(range(120)) for _ in range(40)))
    (tmp_path / "broken.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 40, 40, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", pixels[: len(pixels) // 2]) + b"\x00\x00\x00\x10\x01\x02\x03\x04"
        + b"x" * 20)
    result = run("softmax-predict", str(trained["checkpoint"]), str(tmp_path / "broken.png"))
    assert_one_line_error(result, 1, f"cannot read {tmp_path / 'broken.png'}: cannot be "
                          "decoded (SyntaxError)")
