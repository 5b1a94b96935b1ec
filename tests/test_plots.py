"""Pictures: the content each picture shows, checked against plain numpy and loops; the PNGs
are valid, of their stated pixel size, and not blank; no matplotlib gives one error line."""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import cli_util
import numpy as np
import pytest
import yaml
from conftest import separable_data, small_config

from softmax_cls.errors import DataError, SoftmaxClsError
from softmax_cls.math.preprocess import Preprocessor
from softmax_cls.plots import drawing, evaluation
from softmax_cls.plots import pictures as plots
from softmax_cls.training.evaluate import evaluate_checkpoint
from softmax_cls.training.runs import train_run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the PNG's own header, read without any image library."""
    data = Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def packed_colours(pixels: np.ndarray) -> np.ndarray:
    """The distinct colours of (..., 3) uint8 pixels, each as one int 0xRRGGBB."""
    pixels = pixels.astype(np.int64)
    return np.unique((pixels[..., 0] << 16) | (pixels[..., 1] << 8) | pixels[..., 2])


def assert_valid_picture(path: Path, size: tuple[int, int], min_colours: int = 16,
                         min_ink: float = 0.02, shows: np.ndarray | None = None) -> None:
    """A PNG that decodes completely, has `size`, and is not blank: at least min_colours
    colours, and more than min_ink of its pixels away from the white background. With
    `shows` (K, 32, 32, 3) uint8 images: nearly all of their colours are in the picture (the
    images are drawn nearest-neighbour, so their pixels appear as they are)."""
    from PIL import Image

    assert png_size(path) == size
    with Image.open(path) as image:
        image.load()
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape == (size[1], size[0], 3)
    colours = packed_colours(pixels)
    assert len(colours) >= min_colours, f"{path}: only {len(colours)} colours"
    inked = (np.abs(pixels.astype(np.int64) - 255).sum(axis=2) > 30).mean()
    assert inked > min_ink, f"{path}: {inked:.1%} of the pixels drawn"
    if shows is not None:
        wanted = packed_colours(shows)
        found = np.isin(wanted, colours).mean()
        assert found > 0.95, f"{path}: {found:.1%} of the images' colours shown"


def random_preprocessor(rng: np.random.Generator, bias: bool = True) -> Preprocessor:
    return Preprocessor(mean=rng.uniform(0, 255, 3072), scale=rng.uniform(0.002, 0.05, 3072),
                        bias=bias)


def loop_templates(W: np.ndarray, pre: Preprocessor) -> np.ndarray:
    """The templates one pixel at a time: weight on raw pixel (channel, row, column) of class
    c is W[c, channel * 1024 + row * 32 + column] * scale[same], stretched min..max -> 0..255."""
    n_classes = W.shape[0]
    out = np.zeros((n_classes, 32, 32, 3), dtype=np.uint8)
    for c in range(n_classes):
        raw = {}
        for channel in range(3):
            for row in range(32):
                for column in range(32):
                    j = channel * 1024 + row * 32 + column
                    raw[row, column, channel] = float(W[c, j]) * float(pre.scale[j])
        low, high = min(raw.values()), max(raw.values())
        for where, value in raw.items():
            out[(c, *where)] = 128 if high == low else round((value - low) / (high - low) * 255)
    return out


# --- templates -------------------------------------------------------------------------------


def test_template_images_equal_a_pixel_by_pixel_computation():
    rng = np.random.default_rng(0)
    pre = random_preprocessor(rng)
    W = rng.standard_normal((3073, 3)).astype(np.float32).T.copy()
    templates = evaluation.template_images(W, pre)
    assert templates.shape == (3, 32, 32, 3) and templates.dtype == np.uint8
    assert np.array_equal(templates, loop_templates(W, pre))
    assert (templates.reshape(3, -1).min(axis=1) == 0).all()
    assert (templates.reshape(3, -1).max(axis=1) == 255).all()


def test_template_of_weights_made_from_an_image_is_that_image():
    """The layout pin: weights that are an image divided by the preprocessing scale come back
    as that image (R plane first, rows then columns); the mean and the bias column do not
    enter."""
    rng = np.random.default_rng(1)
    pre = random_preprocessor(rng)
    image = rng.integers(0, 256, size=(32, 32, 3)).astype(np.uint8)
    image[0, 0, 0], image[31, 31, 2] = 0, 255
    W = rng.standard_normal((3073, 2)).astype(np.float32).T.copy()
    W[1, :3072] = image.transpose(2, 0, 1).ravel() / pre.scale
    templates = evaluation.template_images(W, pre)
    assert np.array_equal(templates[1], image)
    assert templates[1, 0, 0, 0] == 0 and templates[1, 31, 31, 2] == 255
    W[:, 3072] += 100.0  # the bias column
    assert np.array_equal(evaluation.template_images(W, pre), templates)
    no_bias = Preprocessor(pre.mean, pre.scale, bias=False)
    assert np.array_equal(evaluation.template_images(W[:, :3072], no_bias), templates)


def test_a_constant_template_is_mid_grey():
    rng = np.random.default_rng(2)
    pre = Preprocessor(mean=rng.uniform(0, 255, 3072), scale=np.full(3072, 1 / 255))
    W = rng.standard_normal((3073, 2)).astype(np.float32).T.copy()
    W[0, :3072] = 0.5
    templates = evaluation.template_images(W, pre)
    assert (templates[0] == 128).all()
    assert np.array_equal(templates[1], loop_templates(W, pre)[1])


def test_templates_need_image_columns():
    pre = Preprocessor(mean=np.zeros(10), scale=np.ones(10))
    with pytest.raises(DataError, match="3072 pixel columns"):
        evaluation.template_images(np.zeros((2, 11), np.float32), pre)


@pytest.mark.parametrize("n, shape", [(1, (1, 1)), (2, (1, 2)), (10, (2, 5)), (20, (4, 5)),
                                      (25, (5, 5)), (26, (5, 6)), (100, (10, 10))])
def test_template_grid_shape(n, shape):
    assert drawing.grid_shape(n) == shape
    rows, columns = shape
    assert rows * columns >= n > (rows - 1) * columns
    assert drawing.templates_size(n) == (150 * columns, 165 * rows + 50)


def test_a_hundred_class_template_picture(tmp_path):
    rng = np.random.default_rng(3)
    W = rng.standard_normal((3073, 100)).astype(np.float32).T.copy()
    names = tuple(f"class_name_{i:03d}" for i in range(100))
    templates = evaluation.template_images(W, random_preprocessor(rng))
    path = drawing.draw_templates(templates, names, tmp_path / "templates.png")
    assert drawing.templates_size(100) == (1500, 1700)
    assert_valid_picture(path, (1500, 1700), min_ink=0.4, shows=templates)


# --- curves, confusion, mistakes --------------------------------------------------------------


def test_curves_table_takes_known_keys_and_leaves_gaps_as_nan():
    history = [
        {"epoch": 1, "lr": 0.1, "train_loss": 2.0, "train_acc": 0.3, "val_loss": 1.9,
         "val_acc": 0.35, "seconds": 0.5, "something_new": [1, 2]},
        {"epoch": 2, "lr": 0.05, "train_loss": 1.5, "train_acc": 0.4, "val_acc": 0.45},
        {"epoch": 3, "lr": 0.025, "train_loss": 1.4, "train_acc": 0.5, "val_loss": None,
         "val_acc": 0.45},
    ]
    table = evaluation.curves_table(history)
    assert set(table) == {"epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc",
                          "grad_max"}
    assert np.array_equal(table["epoch"], [1, 2, 3])
    assert np.array_equal(table["lr"], [0.1, 0.05, 0.025])
    assert np.array_equal(table["val_acc"], [0.35, 0.45, 0.45])
    assert table["val_loss"][0] == 1.9 and np.isnan(table["val_loss"][1:]).all()
    assert all(array.dtype == np.float64 for array in table.values())
    assert evaluation.best_epoch_of(table) == 2  # the first of equal bests, as the trainer keeps it
    assert evaluation.best_epoch_of(evaluation.curves_table([{"epoch": 1}])) is None


def test_confusion_rates_equal_row_by_row_division():
    rng = np.random.default_rng(4)
    confusion = rng.integers(0, 50, size=(6, 6))
    confusion[2] = 0  # a class with no images
    rates = evaluation.confusion_rates(confusion)
    for i in range(6):
        total = sum(int(v) for v in confusion[i])
        for j in range(6):
            assert rates[i, j] == (confusion[i, j] / total if total else 0.0)
    assert rates.dtype == np.float64


def test_confident_mistakes_are_the_wrong_ones_most_confident_first():
    images = np.arange(6 * 3072, dtype=np.int64).reshape(6, 3072).astype(np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2])
    probs = np.array([[0.9, 0.05, 0.05],   # right
                      [0.7, 0.2, 0.1],     # wrong, 0.7
                      [0.1, 0.8, 0.1],     # wrong, 0.8
                      [0.2, 0.1, 0.7],     # wrong, 0.7 (tie: later row)
                      [0.1, 0.6, 0.3],     # right
                      [0.2, 0.3, 0.5]])    # right
    mistakes = evaluation.confident_mistakes(images, labels, probs, k=2)
    assert mistakes.index.tolist() == [2, 1]
    assert mistakes.true.tolist() == [2, 1] and mistakes.predicted.tolist() == [1, 0]
    assert mistakes.confidence.tolist() == [0.8, 0.7]
    assert mistakes.images.shape == (2, 32, 32, 3) and mistakes.images.dtype == np.uint8
    assert np.array_equal(mistakes.images[0],
                          images[2].reshape(3, 32, 32).transpose(1, 2, 0))
    assert evaluation.confident_mistakes(images, labels, probs, k=10).index.tolist() == [2, 1, 3]
    none = evaluation.confident_mistakes(images[:1], labels[:1], probs[:1], k=5)
    assert none.index.size == 0 and none.images.shape == (0, 32, 32, 3)


def test_drawers_write_pictures_of_the_stated_size(tmp_path):
    rng = np.random.default_rng(5)
    history = [{"epoch": e, "lr": 0.01 / e, "train_loss": 2 - e / 10, "train_acc": 0.3 + e / 50,
                "val_loss": 2.1 - e / 12, "val_acc": 0.28 + e / 60} for e in range(1, 11)]
    path = drawing.draw_curves(evaluation.curves_table(history), 7, tmp_path / "curves.png")
    assert drawing.CURVES_SIZE == (1350, 420)
    assert_valid_picture(path, (1350, 420))

    names = tuple(f"class{i}" for i in range(10))
    confusion = rng.integers(0, 100, size=(10, 10)) + np.diag(rng.integers(300, 600, 10))
    path = drawing.draw_confusion(confusion, names, tmp_path / "confusion.png")
    assert drawing.confusion_size(10) == (930, 850)
    assert_valid_picture(path, (930, 850))
    wide = drawing.draw_confusion(rng.integers(0, 9, size=(100, 100)),
                                tuple(f"c{i}" for i in range(100)), tmp_path / "wide.png")
    assert_valid_picture(wide, drawing.confusion_size(100))

    images = rng.integers(0, 256, size=(40, 3072)).astype(np.uint8)
    labels = rng.integers(0, 10, size=40)
    probs = rng.dirichlet(np.ones(10), size=40)
    for k, size in ((24, (1280, 620)), (3, (480, 240)), (0, (160, 240))):
        mistakes = evaluation.confident_mistakes(images, labels, probs, k=k)
        assert len(mistakes.index) == k and drawing.mistakes_size(k) == size
        path = drawing.draw_mistakes(mistakes, names, tmp_path / f"mistakes{k}.png")
        if k:
            assert_valid_picture(path, size, min_ink=0.4, shows=mistakes.images)
        else:
            assert_valid_picture(path, size, min_colours=2)


# --- the fixed layouts: images pixel for pixel, every text inside the picture ------------------


def read_pixels(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def capture_figures(monkeypatch) -> list:
    """Make drawing._save keep each (figure, tiles) it writes, and still write it."""
    kept = []
    save = drawing._save

    def keep(figure, path, tiles=None):
        kept.append((figure, tiles))
        return save(figure, path, tiles)

    monkeypatch.setattr(drawing, "_save", keep)
    return kept


def assert_texts_inside(figure) -> None:
    """Everything drawn of the figure lies within it (1 pixel of rounding allowed): its own
    texts and each Axes with what it draws around it (the ticks and labels in view, titles,
    legends), as matplotlib's tight bounding boxes measure them."""
    renderer = figure.canvas.get_renderer()
    width, height = figure.bbox.width, figure.bbox.height
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in figure.texts]
    boxes += [(f"axes {k}", ax.get_tightbbox(renderer)) for k, ax in enumerate(figure.axes)]
    for what, box in boxes:
        assert box.x0 >= -1 and box.y0 >= -1 and box.x1 <= width + 1 and box.y1 <= height + 1, \
            f"{what!r} at {box} leaves the {width} x {height} picture"


@pytest.mark.parametrize("side", [32, 16, 141, 152, 33])
def test_enlarge_is_nearest_neighbour_pixel_by_pixel(side):
    rng = np.random.default_rng(side)
    images = rng.integers(0, 256, size=(3, 32, 32, 3)).astype(np.uint8)
    enlarged = drawing.enlarge(images, side)
    assert enlarged.shape == (3, side, side, 3) and enlarged.dtype == np.uint8
    for i in range(side):
        for j in range(side):
            # the source pixel whose extent [k, k + 1) * side / 32 holds the centre i + 0.5
            row, column = math.floor((i + 0.5) * 32 / side), math.floor((j + 0.5) * 32 / side)
            assert np.array_equal(enlarged[:, i, j], images[:, row, column])
    if side == 32:
        assert np.array_equal(enlarged, images)


@pytest.mark.parametrize("kind, n", [("templates", 1), ("templates", 10), ("templates", 26),
                                     ("templates", 100), ("mistakes", 1), ("mistakes", 3),
                                     ("mistakes", 8), ("mistakes", 24)])
def test_tiles_fill_their_cells_without_overlapping(kind, n):
    if kind == "templates":
        rows, columns = drawing.grid_shape(n)
        width, height = drawing.templates_size(n)
        cell, label = drawing.TEMPLATE_CELL, drawing.TEMPLATE_LABEL
    else:
        columns = min(n, drawing.MISTAKE_COLUMNS)
        rows = math.ceil(n / columns)
        width, height = drawing.mistakes_size(n)
        cell, label = drawing.MISTAKE_CELL, drawing.MISTAKE_LABEL
    corners, side = drawing.tile_boxes(n, columns, cell, label, height)
    assert side == {"templates": 141, "mistakes": 152}[kind]  # the sizes the Axes had
    assert corners.shape == (n, 2)
    x, y = corners[:, 0], corners[:, 1]
    assert (x >= 0).all() and (x + side <= width).all()
    assert (y - label >= drawing.GRID_TOP).all() and (y + side <= height).all()
    for k in range(n):  # row by row, each image inside its own column's cell
        assert x[k] // cell[0] == k % columns
        assert y[k] == y[(k // columns) * columns]
    # a row's labels start below the previous row's images
    row_tops = sorted(set(y.tolist()))
    assert len(row_tops) == rows
    assert all(b - label >= a + side for a, b in zip(row_tops, row_tops[1:], strict=False))
    assert len({(int(a), int(b)) for a, b in corners}) == n


def test_tiles_of_a_narrow_cell_take_its_width_less_the_margins():
    corners, side = drawing.tile_boxes(3, 3, (100, 300), 20, 400)
    assert side == 100 - 2 * drawing.TILE_MARGIN
    assert corners[:, 0].tolist() == [4, 104, 204]


@pytest.mark.parametrize("k", [24, 5])
def test_mistakes_are_drawn_pixel_for_pixel_under_their_labels(tmp_path, monkeypatch, k):
    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, size=(60, 3072)).astype(np.uint8)
    labels = rng.integers(0, 10, size=60)
    probs = rng.dirichlet(np.ones(10), size=60)
    mistakes = evaluation.confident_mistakes(images, labels, probs, k=k)
    names = tuple(f"class{i}" for i in range(10))
    kept = capture_figures(monkeypatch)
    path = drawing.draw_mistakes(mistakes, names, tmp_path / "m.png", title="the title")
    pixels = read_pixels(path)
    figure, tiles = kept[0]
    assert len(tiles.corners) == k
    enlarged = drawing.enlarge(mistakes.images, 152)
    for (x, y), image in zip(tiles.corners, enlarged, strict=True):
        assert np.array_equal(pixels[y:y + 152, x:x + 152], image)
    texts = [t.get_text() for t in figure.texts]
    assert texts[0] == "the title"
    assert texts[1:] == [f"true: {names[t]}\npredicted: {names[p]} {c:.0%}" for t, p, c in
                          zip(mistakes.true, mistakes.predicted, mistakes.confidence,
                              strict=True)]
    height = figure.bbox.height
    renderer = figure.canvas.get_renderer()
    for (x, y), label in zip(tiles.corners, figure.texts[1:], strict=True):
        box = label.get_window_extent(renderer)  # centred over its image, just above it
        assert abs((box.x0 + box.x1) / 2 - (x + 76)) <= 1
        assert 0 <= y - (height - box.y0) <= drawing.LABEL_GAP + 4
        assert (height - box.y1) >= y - drawing.MISTAKE_LABEL - 1
    assert_texts_inside(figure)
    assert not figure.axes  # no Axes at all: one array copy per image


def test_templates_are_drawn_pixel_for_pixel_under_their_names(tmp_path, monkeypatch):
    rng = np.random.default_rng(8)
    templates = rng.integers(0, 256, size=(10, 32, 32, 3)).astype(np.uint8)
    names = tuple(f"name {i}" for i in range(10))
    kept = capture_figures(monkeypatch)
    pixels = read_pixels(drawing.draw_templates(templates, names, tmp_path / "t.png"))
    figure, tiles = kept[0]
    for (x, y), image in zip(tiles.corners, drawing.enlarge(templates, 141), strict=True):
        assert np.array_equal(pixels[y:y + 141, x:x + 141], image)
    assert figure.texts[0].get_text().startswith("class templates:")
    assert [t.get_text() for t in figure.texts][1:] == list(names)
    assert_texts_inside(figure)
    # everything outside the images and their names is the white background
    blank = np.ones(pixels.shape[:2], dtype=bool)
    for x, y in tiles.corners:
        blank[y - drawing.TEMPLATE_LABEL:y + 141, x:x + 141] = False
    blank[:drawing.GRID_TOP] = False
    assert (pixels[blank] == 255).all()


def test_curves_keep_every_text_inside_and_apart(tmp_path, monkeypatch):
    kept = capture_figures(monkeypatch)
    for scale in (1.0, 1e-5, 1e4):  # tick labels of several widths
        history = [{"epoch": e, "lr": 0.03 * scale / e, "train_loss": scale * (2 - e / 70),
                    "train_acc": 0.3 + e / 200, "val_loss": scale * (2.1 - e / 80),
                    "val_acc": 0.28 + e / 250} for e in range(1, 61)]
        drawing.draw_curves(evaluation.curves_table(history), 45, tmp_path / "curves.png")
        figure, _ = kept[-1]
        assert_texts_inside(figure)
        renderer = figure.canvas.get_renderer()
        axes = figure.axes
        assert len(axes) == 3
        for left, right in zip(axes, axes[1:], strict=False):
            # the right panel's y tick labels and y label stay clear of the left panel
            assert right.yaxis.get_tightbbox(renderer).x0 > left.get_window_extent(renderer).x1


def test_an_lbfgs_runs_curves_keep_the_gradients_labels_apart(tmp_path, monkeypatch):
    """Two L-BFGS iterations, the gradient max-norm within one decade: the log axis labels
    its minor ticks (9x10^-3, ...), which the room left for the panel's y labels did not
    count, and the panel's y label lay over the accuracy panel."""
    kept = capture_figures(monkeypatch)
    history = [{"epoch": 1, "lr": None, "train_loss": 1.978, "grad_max": 0.0139},
               {"epoch": 2, "lr": None, "train_loss": 1.855, "grad_max": 0.00667,
                "val_loss": 1.854, "val_acc": 0.3776}]
    drawing.draw_curves(evaluation.curves_table(history), 2, tmp_path / "curves.png")
    figure, _ = kept[-1]
    assert_texts_inside(figure)
    renderer = figure.canvas.get_renderer()
    accuracy, gradient = figure.axes[1:]
    assert gradient.get_title() == "gradient max-norm"
    assert gradient.yaxis.get_tightbbox(renderer).x0 > accuracy.get_window_extent(renderer).x1


@pytest.mark.parametrize("names", [
    tuple(f"class{i}" for i in range(10)),
    ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    tuple(f"a very very long class name number {i} indeed" for i in range(5)),
    tuple(f"n{i:08d} a longer name" for i in range(250)),
])
def test_confusion_names_fit_beside_the_matrix(tmp_path, monkeypatch, names):
    kept = capture_figures(monkeypatch)
    n = len(names)
    counts = np.random.default_rng(n).integers(0, 50, (n, n))
    drawing.draw_confusion(counts, names, tmp_path / "c.png", title="a title")
    figure, _ = kept[0]
    assert_texts_inside(figure)
    renderer = figure.canvas.get_renderer()
    matrix, bar = figure.axes[0].get_window_extent(renderer), figure.axes[1].get_window_extent(
        renderer)
    assert abs(matrix.width - matrix.height) < 1  # square cells
    assert bar.x0 > matrix.x1  # the colour bar at its right, clear of it
    ax = figure.axes[0]
    assert ax.yaxis.get_tightbbox(renderer).x1 < matrix.x0
    assert ax.xaxis.get_tightbbox(renderer).y1 < matrix.y0
    title = ax.title.get_window_extent(renderer)
    assert title.y0 > matrix.y1
    shown = len(range(0, n, math.ceil(n / drawing.CONFUSION_CLASSES)))
    assert len(ax.get_xticklabels()) == len(ax.get_yticklabels()) == shown
    # the square is as large as the names leave room for: what is drawn reaches the figure's
    # margins across or down, and is centred the other way
    from matplotlib.transforms import Bbox

    drawn = Bbox.union([a.get_tightbbox(renderer) for a in figure.axes])
    width, height = figure.bbox.width, figure.bbox.height
    gaps = np.array([drawn.x0, width - drawn.x1, drawn.y0, height - drawn.y1])
    across, down = gaps[:2], gaps[2:]
    assert (np.abs(across - drawing.EDGE) <= 3).all() or (np.abs(down - drawing.EDGE) <= 3).all()
    if len(names[0]) < 30:  # the colour bar fits beside the matrix: centred the other way
        assert abs(across[0] - across[1]) <= 4 and abs(down[0] - down[1]) <= 4
    # the colour bar is at least as long as its label
    assert bar.height >= figure.axes[1].yaxis.label.get_window_extent(renderer).height


# --- what the pictures show, through the numbers given to matplotlib ---------------------------


def test_curves_draw_each_series_from_its_own_key(tmp_path, monkeypatch):
    """Each curve of curves.png is its own history key under its own label: train and val
    loss, train and val accuracy in %, the learning rate; the best epoch is a dashed line in
    every panel and a star at its val accuracy."""
    history = [{"epoch": e, "lr": 0.1 / e, "train_loss": 2 - e / 10, "val_loss": 2.5 - e / 20,
                "train_acc": 0.3 + e / 50, "val_acc": 0.2 + e / 40} for e in range(1, 9)]
    table = evaluation.curves_table(history)
    kept = capture_figures(monkeypatch)
    drawing.draw_curves(table, 6, tmp_path / "curves.png")
    loss_ax, acc_ax, lr_ax = kept[0][0].axes

    def curves(ax) -> dict:
        return {line.get_label(): np.asarray(line.get_ydata(), dtype=np.float64)
                for line in ax.get_lines()}

    loss, acc, lr = curves(loss_ax), curves(acc_ax), curves(lr_ax)
    assert np.array_equal(loss["train (with L2 penalty)"], table["train_loss"])
    assert np.array_equal(loss["val"], table["val_loss"])
    assert np.allclose(acc["train (running)"], 100 * table["train_acc"])
    assert np.allclose(acc["val"], 100 * table["val_acc"])
    assert np.allclose(acc[f"best val {100 * table['val_acc'][5]:.2f}%"],
                       [100 * table["val_acc"][5]])
    assert np.array_equal(lr["_child0"], table["lr"])
    for ax in (loss_ax, acc_ax, lr_ax):
        best = [line for line in ax.get_lines() if line.get_label() == "best epoch (6)"]
        assert len(best) == 1 and list(best[0].get_xdata()) == [6, 6]
        assert ax.get_xlabel() == "epoch"


def test_confusion_rows_are_the_true_classes(tmp_path, monkeypatch):
    """confusion.png's heat map is each row's rates (rows: the true class, columns: the
    predicted one), each count written in its own cell (white on the dark cells), each row
    named with its class and its number of images, each column with its class."""
    counts = np.array([[5, 1, 0], [7, 2, 1], [0, 0, 9]])
    names = ("ant", "bee", "cat")
    kept = capture_figures(monkeypatch)
    drawing.draw_confusion(counts, names, tmp_path / "c.png")
    ax = kept[0][0].axes[0]
    rates = counts / counts.sum(axis=1, keepdims=True)
    assert np.allclose(ax.images[0].get_array(), rates)
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t for t in ax.texts}
    assert {cell: t.get_text() for cell, t in cells.items()} == {
        (i, j): str(counts[i, j]) for i in range(3) for j in range(3)}
    assert {cell: t.get_color() for cell, t in cells.items()} == {
        (i, j): "white" if rates[i, j] > 0.4 else "black" for i in range(3) for j in range(3)}
    assert [t.get_text() for t in ax.get_yticklabels()] == ["ant (6)", "bee (10)", "cat (9)"]
    assert [t.get_text() for t in ax.get_xticklabels()] == list(names)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted class", "true class (images)")
    # the picture itself: near its corner (clear of the count), row 1's first cell (rate 0.7)
    # is darker than row 0's second (0.17), and row 2's last (1.0) darker still
    pixels = read_pixels(tmp_path / "c.png")
    height = kept[0][0].bbox.height

    def pixel(i: int, j: int) -> np.ndarray:
        x, y = ax.transData.transform((j - 0.35, i - 0.35))
        return pixels[round(height - y), round(x)].astype(np.int64)

    assert pixel(1, 0).sum() < pixel(0, 1).sum() and pixel(2, 2).sum() < pixel(1, 0).sum()


def test_run_pictures_name_their_split_and_files(tmp_path, monkeypatch):
    """draw_run_pictures writes the four files into out_dir, and titles the confusion matrix
    and the mistakes with the split that was scored and its accuracy."""
    rng = np.random.default_rng(11)
    images = rng.integers(0, 256, size=(24, 3072)).astype(np.uint8)
    labels = rng.integers(0, 3, size=24)
    probs = rng.dirichlet(np.ones(3), size=24)
    counts = np.array([[5, 1, 0], [7, 2, 1], [0, 0, 8]])
    pictures = evaluation.RunPictures(
        class_names=("ant", "bee", "cat"),
        curves=evaluation.curves_table([{"epoch": 1, "val_acc": 0.5}]), best_epoch=1,
        templates=rng.integers(0, 256, size=(3, 32, 32, 3)).astype(np.uint8), split="val",
        confusion=counts, accuracy=0.625,
        mistakes=evaluation.confident_mistakes(images, labels, probs, k=3))
    kept = capture_figures(monkeypatch)
    written = drawing.draw_run_pictures(pictures, tmp_path / "out")
    assert written == [tmp_path / "out" / name for name in
                       ("curves.png", "templates.png", "confusion.png", "mistakes.png")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert kept[2][0].axes[0].get_title() == "val split: accuracy 62.50% of 24 images"
    assert kept[3][0].texts[0].get_text() == "the 3 most confidently wrong of the val split"


def test_a_boolean_in_the_history_is_no_number():
    """A JSON true or false in a history row is a gap in its curve (NaN), not 1 or 0."""
    table = evaluation.curves_table([{"epoch": 1, "val_acc": True, "lr": False},
                                     {"epoch": 2, "val_acc": 0.5, "lr": 0.1}])
    assert np.isnan(table["val_acc"][0]) and np.isnan(table["lr"][0])
    assert table["val_acc"][1] == 0.5 and table["lr"][1] == 0.1


def test_each_mistake_shows_the_image_of_its_own_row():
    """The images of the mistakes are the rows they name, in their order (rows that differ,
    unlike the repeating ramp of the test above)."""
    images = np.random.default_rng(12).integers(0, 256, size=(6, 3072)).astype(np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2])
    probs = np.array([[0.9, 0.05, 0.05], [0.7, 0.2, 0.1], [0.1, 0.8, 0.1],
                      [0.2, 0.1, 0.7], [0.1, 0.6, 0.3], [0.2, 0.3, 0.5]])
    mistakes = evaluation.confident_mistakes(images, labels, probs, k=3)
    assert mistakes.index.tolist() == [2, 1, 3]
    for row, image in zip(mistakes.index, mistakes.images, strict=True):
        assert np.array_equal(image, images[row].reshape(3, 32, 32).transpose(1, 2, 0))


def test_each_template_is_drawn_under_its_own_class_name(tmp_path, monkeypatch):
    """The i-th template is drawn under the i-th class name, whatever the names' order."""
    names = ("truck", "ant", "horse")
    templates = np.stack([np.full((32, 32, 3), v, dtype=np.uint8) for v in (10, 120, 230)])
    kept = capture_figures(monkeypatch)
    pixels = read_pixels(drawing.draw_templates(templates, names, tmp_path / "t.png"))
    figure, tiles = kept[0]
    assert [t.get_text() for t in figure.texts[1:]] == list(names)
    renderer = figure.canvas.get_renderer()
    side = tiles.images.shape[1]
    for (x, y), name, value in zip(tiles.corners, figure.texts[1:], (10, 120, 230),
                                   strict=True):
        box = name.get_window_extent(renderer)
        assert abs((box.x0 + box.x1) / 2 - (x + side / 2)) <= 1
        assert (pixels[y:y + side, x:x + side] == value).all()


def test_features_of_3072_columns_get_no_image_pictures():
    """Rows of a features data set are not images even with 3072 columns: no templates and
    no mistakes, only the curves and the confusion matrix."""
    from softmax_cls.config import config_from_dict
    from softmax_cls.training.evaluate import ScoredSplit

    rng = np.random.default_rng(13)
    config = config_from_dict({"data": {"dataset": "features", "train": "x.npz"}})
    W = rng.normal(size=(3, 3073)).astype(np.float32)
    scored = ScoredSplit("test", rng.normal(size=(20, 3072)).astype(np.float32),
                         rng.integers(0, 3, size=20), rng.normal(size=(20, 3)))
    pictures = evaluation.run_pictures(config, random_preprocessor(rng), ("a", "b", "c"), [],
                                       None, W, scored)
    assert pictures.templates is None and pictures.mistakes is None
    assert pictures.confusion.sum() == 20


# --- a run folder, end to end -----------------------------------------------------------------


@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory):
    """A short run on synthetic data with every third label wrong, so that the model makes
    mistakes on both splits: (run folder, data)."""
    tmp_path = tmp_path_factory.mktemp("plots")
    data = separable_data(n_train=500, n_test=240, classes=5, seed=3, noise=120)
    for labels in (data.train_labels, data.test_labels):
        labels[::3] = (labels[::3] + 1) % 5
    config = small_config(tmp_path, optim={"epochs": 4, "lr": 0.001})
    train_run(config, data, tmp_path / "run", progress=False)
    return tmp_path / "run", data


@pytest.fixture
def patched_data(noisy_run, monkeypatch):
    run, data = noisy_run
    monkeypatch.setattr("softmax_cls.training.evaluate.load_data_for", lambda *a, **k: data)
    return run, data


def float64_probabilities(checkpoint_path: Path, images: np.ndarray) -> np.ndarray:
    """Class probabilities (N, C) float64 written out: x = [(u - mean) * scale, 1], S = x W.T."""
    with np.load(checkpoint_path) as npz:
        W, mean, scale = (npz[key].astype(np.float64) for key in ("W", "pre_mean", "pre_scale"))
    X = np.hstack([(images - mean) * scale, np.ones((len(images), 1))])
    S = X @ W.T
    E = np.exp(S - S.max(axis=1, keepdims=True))
    return E / E.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("split", ["test", "val"])
def test_run_pictures_show_the_eval_report_and_the_worst_mistakes(patched_data, split):
    run, data = patched_data
    pictures = evaluation.saved_run_pictures(run, split=split)
    report = evaluate_checkpoint(run / "best.npz", split)
    assert np.array_equal(pictures.confusion, report.confusion)
    assert pictures.accuracy == report.accuracy

    if split == "test":
        images, labels = data.test_images, data.test_labels
    else:
        with np.load(run / "best.npz") as npz:
            rows = npz["val_rows"]
        assert len(rows) == 100
        images, labels = data.train_images[rows], data.train_labels[rows]
    probs = float64_probabilities(run / "best.npz", images)
    predicted = probs.argmax(axis=1)
    counts = np.zeros((5, 5), dtype=np.int64)
    for true, guess in zip(labels, predicted, strict=True):
        counts[true, guess] += 1
    assert np.array_equal(pictures.confusion, counts)

    wrong = sorted((-probs[i, predicted[i]], i) for i in range(len(labels))
                   if predicted[i] != labels[i])[:24]
    assert len(wrong) == 24, "the fixture should make plenty of mistakes"
    mistakes = pictures.mistakes
    assert mistakes.index.tolist() == [i for _, i in wrong]
    assert np.allclose(mistakes.confidence, [-p for p, _ in wrong], rtol=0, atol=1e-5)
    assert mistakes.predicted.tolist() == predicted[mistakes.index].tolist()
    assert mistakes.true.tolist() == labels[mistakes.index].tolist()

    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert np.array_equal(pictures.curves["val_acc"], [row["val_acc"] for row in history])
    assert pictures.best_epoch == json.loads((run / "summary.json").read_text())["best_epoch"]


def test_plot_run_writes_four_pictures_into_the_run_folder(patched_data):
    run, _ = patched_data
    written = plots.plot_run(run)
    assert [p.name for p in written] == ["curves.png", "templates.png", "confusion.png",
                                         "mistakes.png"]
    assert all(p.parent == run / "plots" for p in written)
    sizes = [drawing.CURVES_SIZE, drawing.templates_size(5), drawing.confusion_size(5),
             drawing.mistakes_size(24)]
    pictures = evaluation.saved_run_pictures(run)
    shows = [None, pictures.templates, None, pictures.mistakes.images]
    for path, size, images in zip(written, sizes, shows, strict=True):
        assert_valid_picture(path, size, shows=images)


def test_plot_run_on_a_checkpoint_file_uses_its_own_history(patched_data, tmp_path):
    run, _ = patched_data
    pictures = evaluation.saved_run_pictures(run / "last.npz")
    with np.load(run / "last.npz") as npz:
        meta = json.loads(str(npz["meta_json"]))
    assert np.array_equal(pictures.curves["epoch"], [row["epoch"] for row in meta["history"]])
    assert pictures.best_epoch == meta["best_epoch"]
    assert plots.default_out_dir(run / "last.npz") == run / "plots-last"
    written = plots.plot_run(run / "last.npz", out_dir=tmp_path / "out")
    assert {p.name for p in tmp_path.joinpath("out").iterdir()} == {p.name for p in written}


def test_an_empty_split_is_an_error(noisy_run, monkeypatch):
    import dataclasses

    run, data = noisy_run
    no_test = dataclasses.replace(data, test_images=data.test_images[:0],
                                  test_labels=data.test_labels[:0])
    monkeypatch.setattr("softmax_cls.training.evaluate.load_data_for", lambda *a, **k: no_test)
    with pytest.raises(DataError, match="test split .* is empty: try --split val"):
        plots.plot_run(run)
    assert evaluation.saved_run_pictures(run, split="val").confusion.sum() == 100


def test_plot_run_errors_name_the_path(tmp_path):
    with pytest.raises(DataError, match="not found"):
        plots.plot_run(tmp_path / "nothing")
    with pytest.raises(DataError, match="neither a run folder"):
        plots.plot_run(tmp_path)
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="broken.npz"):
        plots.plot_run(tmp_path / "broken.npz")


def test_a_run_folders_curves_and_best_epoch_come_from_its_files(patched_data, tmp_path):
    """A run folder's curves are its history.jsonl (the whole run; best.npz's own history
    stops at the best epoch) and its best epoch is summary.json's."""
    run, _ = patched_data
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    rows = [{"epoch": e, "val_acc": 0.1 * e} for e in range(1, 8)]
    (copy / "history.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    summary = json.loads((copy / "summary.json").read_text())
    (copy / "summary.json").write_text(json.dumps({**summary, "best_epoch": 6}))
    pictures = evaluation.saved_run_pictures(copy)
    assert pictures.curves["epoch"].tolist() == list(range(1, 8))
    assert pictures.best_epoch == 6


def test_plot_path_scores_the_test_split_by_default(patched_data, tmp_path, monkeypatch):
    """softmax-plot without --split shows the test split: the confusion matrix of all its
    images, so titled."""
    run, data = patched_data
    kept = capture_figures(monkeypatch)
    plots.plot_path(run, tmp_path / "out")
    title = kept[2][0].axes[0].get_title()
    assert title.startswith("test split: accuracy ")
    assert title.endswith(f" of {len(data.test_labels)} images")


# --- a sweep folder ---------------------------------------------------------------------------

SWEEP_YAML = """\
base: configs/quick.yaml
trials: 8
space:
  optim.lr: {log_uniform: [1.0e-4, 1.0e-1]}
  loss.reg: {log_uniform: [1.0e-6, 1.0e-2]}
  optim.batch_size: {choice: [64, 128, 256]}
  preprocess.scale: {choice: [unit, std]}
  optim.momentum: {grid: [0.0, 0.5, 0.9]}
  model.init_std: {grid: [1.0e-5, 1.0e-4, 1.0e-3]}
"""
TRIALS_CSV = """\
number,state,optim.lr,loss.reg,optim.batch_size,preprocess.scale,optim.momentum,\
model.init_std,best_val_acc,best_epoch,epochs,seconds
0,complete,0.001,1e-05,128,unit,0.9,0.0001,0.38,3,3,2.0
2,complete,0.01,0.0001,64,std,0.5,1e-05,0.41,3,3,2.1
1,pruned,0.05,1e-06,256,std,0.0,0.001,0.44,1,1,0.7
3,failed,0.09,0.005,64,unit,0.9,0.0001,,,,0.1
4,complete,0.0003,2e-06,256,unit,0.0,1e-05,0.36,3,3,2.0
5,complete,0.004,3e-05,128,std,0.9,0.001,0.42,3,3,2.2
6,running,0.002,1e-04,64,,0.5,,,,,
"""


def write_sweep(folder: Path, importances: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sweep.yaml").write_text(SWEEP_YAML)
    (folder / "trials.csv").write_text(TRIALS_CSV)
    summary = {"best_trial": 5, "best_value": 0.42}
    if importances is not None:
        summary["param_importances"] = importances
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "best.yaml").write_text("optim: {lr: 0.004}\n")
    return folder


IMPORTANCES = {"loss.reg": 0.5, "preprocess.scale": 0.3, "optim.lr": 0.12,
               "optim.batch_size": 0.05, "optim.momentum": 0.02, "model.init_std": 0.01}


def test_sweep_table_reads_the_trials(tmp_path):
    table = plots.sweep_table(write_sweep(tmp_path / "sweep", IMPORTANCES))
    assert table.keys == ("loss.reg", "preprocess.scale", "optim.lr", "optim.batch_size",
                          "optim.momentum", "model.init_std")
    assert table.axes == ("loss.reg", "preprocess.scale")
    assert table.number.tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert table.state.tolist() == ["complete", "pruned", "complete", "failed", "complete",
                                    "complete", "running"]
    assert table.values["optim.lr"].tolist() == [0.001, 0.05, 0.01, 0.09, 0.0003, 0.004, 0.002]
    assert table.values["preprocess.scale"].tolist() == ["unit", "std", "std", "unit", "unit",
                                                         "std", ""]
    assert np.isnan(table.values["model.init_std"][6])
    accuracy = [0.38, 0.44, 0.41, math.nan, 0.36, 0.42, math.nan]
    assert np.array_equal(table.val_acc, accuracy, equal_nan=True)
    assert table.categories("preprocess.scale") == ["unit", "std"]
    logs = {key: table.is_log(key) for key in table.keys}
    assert logs == {"optim.lr": True, "loss.reg": True, "optim.batch_size": False,
                    "preprocess.scale": False, "optim.momentum": False, "model.init_std": True}
    # best so far counts complete trials only: the pruned 0.44 is not a finished result
    expected, best = [], -math.inf
    for state, acc in zip(table.state, accuracy, strict=True):
        if state == "complete" and not math.isnan(acc):
            best = max(best, acc)
        expected.append(best if best > -math.inf else math.nan)
    assert np.array_equal(table.best_so_far, expected, equal_nan=True)
    assert table.number[table.best_trial] == 5


def test_a_tie_for_the_best_val_accuracy_is_the_first_trials(tmp_path):
    """As optuna's best trial: of complete trials with the top val accuracy, the one of the
    lowest number (rows are read in file order, not number order)."""
    folder = write_sweep(tmp_path / "sweep")
    (folder / "trials.csv").write_text(TRIALS_CSV.replace(",0.41,3,3,2.1", ",0.42,3,3,2.1"))
    table = plots.sweep_table(folder)
    assert table.number[table.best_trial] == 2
    assert table.best_so_far.tolist()[:3] == [0.38, 0.38, 0.42]

def test_without_importances_the_first_two_keys_of_the_space(tmp_path):
    table = plots.sweep_table(write_sweep(tmp_path / "sweep"))
    assert table.axes == ("optim.lr", "loss.reg")
    assert table.importances == {}


def test_plot_sweep_writes_two_pictures(tmp_path):
    folder = write_sweep(tmp_path / "sweep", IMPORTANCES)
    assert plots.is_sweep_folder(folder) and not plots.is_run_folder(folder)
    written = plots.plot_path(folder)
    assert [p.name for p in written] == ["sweep.png", "trials.png"]
    assert all(p.parent == folder / "plots" for p in written)
    assert_valid_picture(written[0], (900, 700))
    assert_valid_picture(written[1], (1000, 450))
    numeric = plots.plot_sweep(write_sweep(tmp_path / "plain"), tmp_path / "out")
    assert_valid_picture(numeric[0], drawing.SWEEP_SIZE)


def test_the_sweep_pictures_keep_their_legends_inside(tmp_path, monkeypatch):
    # trials.png's legend stands right of its Axes: matplotlib's constrained layout makes room
    kept = capture_figures(monkeypatch)
    plots.plot_sweep(write_sweep(tmp_path / "sweep", IMPORTANCES), tmp_path / "out")
    assert len(kept) == 2
    for figure, _ in kept:
        assert_texts_inside(figure)
        # and the plot takes the height the texts leave (matplotlib's default margins: 77%)
        renderer = figure.canvas.get_renderer()
        assert figure.axes[0].get_window_extent(renderer).height > 0.8 * figure.bbox.height


def test_a_sweep_with_one_key_and_no_trials_yet(tmp_path):
    folder = tmp_path / "sweep"
    folder.mkdir()
    (folder / "sweep.yaml").write_text("space:\n  optim.lr: {log_uniform: [1.0e-4, 1.0e-1]}\n")
    with pytest.raises(DataError, match="trials.csv"):
        plots.plot_sweep(folder)
    (folder / "trials.csv").write_text("number,state,optim.lr,best_val_acc\n"
                                       "0,complete,0.001,0.3\n1,complete,0.01,0.35\n")
    assert plots.sweep_table(folder).axes == ("optim.lr",)
    written = plots.plot_sweep(folder)
    assert_valid_picture(written[0], drawing.SWEEP_SIZE)


def test_broken_sweep_files_are_data_errors(tmp_path):
    folder = write_sweep(tmp_path / "sweep")
    (folder / "trials.csv").write_text("number,best_val_acc\n0,0.3\n")
    with pytest.raises(DataError, match="missing column"):
        plots.sweep_table(folder)
    (folder / "trials.csv").write_text(TRIALS_CSV)
    (folder / "summary.json").write_text("{not json")
    with pytest.raises(DataError, match="summary.json"):
        plots.sweep_table(folder)
    (folder / "summary.json").write_text("{}")
    (folder / "sweep.yaml").write_text("space: [1, 2]\n")
    with pytest.raises(DataError, match="space"):
        plots.sweep_table(folder)


# --- without matplotlib -----------------------------------------------------------------------

WITHOUT_MATPLOTLIB = """
import sys
sys.modules["matplotlib"] = None  # makes every `import matplotlib...` fail
import softmax_cls.plots.pictures as plots
from softmax_cls.errors import SoftmaxClsError
for call in (lambda: plots.plot_sweep(sys.argv[1]), lambda: plots.plot_run(sys.argv[1])):
    try:
        call()
    except SoftmaxClsError as exc:
        print(exc)
"""


def test_without_matplotlib_one_error_line_names_the_extra(tmp_path):
    folder = write_sweep(tmp_path / "sweep")
    result = subprocess.run([sys.executable, "-c", WITHOUT_MATPLOTLIB, str(folder)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    hint = "softmax-plot needs matplotlib: pip install 'softmax-cls[plot]'"
    assert result.stdout.splitlines() == [hint, hint]
    assert not (folder / "plots").exists()


def test_importing_plots_does_not_import_matplotlib():
    code = "import sys, softmax_cls.plots.pictures; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.stdout.strip() == "False", result.stderr


def test_the_training_layer_does_not_import_the_pictures():
    code = ("import sys, softmax_cls.training.runs, softmax_cls.training.evaluate; "
            "print(sorted(m for m in sys.modules if m.startswith('softmax_cls.plots')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.stdout.strip() == "[]", result.stderr


def test_the_evaluation_behind_the_pictures_does_not_import_matplotlib():
    code = "import sys, softmax_cls.plots.evaluation; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.stdout.strip() == "False", result.stderr


def test_missing_matplotlib_through_a_monkeypatched_import(monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.split(".")[0] == "matplotlib":
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(SoftmaxClsError) as caught:
        drawing.draw_templates(np.zeros((1, 32, 32, 3), np.uint8), ("a",), tmp_path / "t.png")
    assert str(caught.value) == drawing.INSTALL_HINT
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "t.png").exists()


# --- the softmax-plot command -----------------------------------------------------------------

# Started in the softmax-plot process before the command runs (a sitecustomize module on
# PYTHONPATH): gives it the noisy_run fixture's data instead of a downloaded data set.
INJECT_DATA = """
import sys
sys.path.insert(0, {tests!r})
from conftest import separable_data
from softmax_cls.training import evaluate
data = separable_data(n_train=500, n_test=240, classes=5, seed=3, noise=120)
for labels in (data.train_labels, data.test_labels):
    labels[::3] = (labels[::3] + 1) % 5
evaluate.load_data_for = lambda *args, **kwargs: data
"""


def sitecustomize(monkeypatch, folder: Path, code: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(code)
    monkeypatch.setenv("PYTHONPATH", str(folder))


def test_softmax_plot_draws_a_run_folder(noisy_run, tmp_path, monkeypatch):
    run, _ = noisy_run
    sitecustomize(monkeypatch, tmp_path / "site",
                  INJECT_DATA.format(tests=str(Path(__file__).parent)))
    result = cli_util.run("softmax-plot", str(run), "--out", str(tmp_path / "pics"), "-q")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    names = ["curves.png", "templates.png", "confusion.png", "mistakes.png"]
    assert result.stdout.splitlines() == [str(tmp_path / "pics" / name) for name in names]
    sizes = [drawing.CURVES_SIZE, drawing.templates_size(5), drawing.confusion_size(5),
             drawing.mistakes_size(24)]
    for name, size in zip(names, sizes, strict=True):
        assert_valid_picture(tmp_path / "pics" / name, size)

    result = cli_util.run("softmax-plot", str(run / "last.npz"), "--split", "val", "-q")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [str(run / "plots-last" / name) for name in names]


@pytest.mark.parametrize("grad_max, loss", [
    ([1e270, 1.0], [2.0, 1.0]),  # a log axis over 270 decades: ticks past 10 ** 308
    ([1e-250, 1e250], [2.0, 1.0]),
    ([1.7e308, 1.79e308], [2.0, 1.0]),
    ([0.0, 0.0], [2.0, 1.0]),  # no positive value: matplotlib's raw UserWarning on stderr
    ([1e-3, 1e-4], [-1.79e308, 1.79e308]),
])
def test_softmax_plot_draws_curves_of_extreme_values(noisy_run, tmp_path, monkeypatch,
                                                     grad_max, loss):
    """Gradient max-norms or losses near the float64 limit, or over hundreds of decades, in
    a run folder's history.jsonl: softmax-plot ended in matplotlib's OverflowError (or
    LinAlgError, ValueError) with a traceback; values it cannot place are left out."""
    run, _ = noisy_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    rows = [{"epoch": e, "train_loss": loss[e - 1], "grad_max": grad_max[e - 1]}
            for e in (1, 2)]
    rows[-1].update(val_loss=1.0, val_acc=0.5)
    (copy / "history.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    sitecustomize(monkeypatch, tmp_path / "site",
                  INJECT_DATA.format(tests=str(Path(__file__).parent)))
    result = cli_util.run("softmax-plot", str(copy), "--out", str(tmp_path / "pics"), "-q")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert_valid_picture(tmp_path / "pics" / "curves.png", drawing.CURVES_SIZE)


def test_softmax_plot_draws_a_sweep_folder(tmp_path):
    folder = write_sweep(tmp_path / "sweep", IMPORTANCES)
    result = cli_util.run("softmax-plot", str(folder))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [str(folder / "plots" / "sweep.png"),
                                          str(folder / "plots" / "trials.png")]


def test_softmax_plot_root_on_a_sweep_folder_is_an_error_not_ignored(tmp_path):
    """A sweep's pictures come from its trials.csv and read no data: --root was ignored
    without a word (as on a linear probe's checkpoint before)."""
    folder = write_sweep(tmp_path / "sweep", IMPORTANCES)
    result = cli_util.run("softmax-plot", str(folder), "--root", str(tmp_path / "data"))
    cli_util.assert_one_line_error(result, 2, "--root", "sweep folder")
    assert not (folder / "plots").exists() and not (tmp_path / "data").exists()


@pytest.mark.parametrize("split", ["val", "test"])
def test_softmax_plot_split_on_a_sweep_folder_is_an_error_not_ignored(tmp_path, split):
    """A sweep's pictures show no split: --split val drew the same sweep.png and trials.png
    without a word."""
    folder = write_sweep(tmp_path / "sweep", IMPORTANCES)
    result = cli_util.run("softmax-plot", str(folder), "--split", split)
    cli_util.assert_one_line_error(result, 2, "--split", "sweep folder")
    assert not (folder / "plots").exists()


def test_softmax_plot_errors_are_one_line(tmp_path):
    missing = tmp_path / "missing"
    cli_util.assert_one_line_error(cli_util.run("softmax-plot", str(missing)), 1,
                                   f"not found: {missing}")
    cli_util.assert_one_line_error(cli_util.run("softmax-plot", str(tmp_path)), 1,
                                   "neither a run folder", "nor a sweep folder")
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.npz").write_bytes(b"PK\x03\x04 a truncated zip")
    cli_util.assert_one_line_error(cli_util.run("softmax-plot", str(run)), 1,
                                   str(run / "best.npz"), "corrupt")
    cli_util.assert_one_line_error(cli_util.run("softmax-plot", str(run), "--split", "train"),
                                   2, "--split")
    assert not (run / "plots").exists()


def test_softmax_plot_on_a_sweep_whose_trials_csv_is_a_pipe_or_a_folder(tmp_path):
    """trials.csv as a named pipe or a folder was 'not found (the sweep has no trials
    yet?)'; it is named for what it is, as a feature file or an image is, and the pipe is
    never opened (no writer: an open would wait)."""
    folder = write_sweep(tmp_path / "sweep")
    trials = folder / "trials.csv"
    trials.unlink()
    os.mkfifo(trials)
    line = cli_util.assert_one_line_error(cli_util.run("softmax-plot", str(folder), timeout=60),
                                          1, f"{trials}: not a regular file")
    assert "not found" not in line
    trials.unlink()
    trials.mkdir()
    line = cli_util.assert_one_line_error(cli_util.run("softmax-plot", str(folder), timeout=60),
                                          1, f"{trials}: a folder")
    assert "not found" not in line
    trials.rmdir()
    cli_util.assert_one_line_error(cli_util.run("softmax-plot", str(folder), timeout=60), 1,
                                   f"{trials}: not found (the sweep has no trials yet?)")
    assert not (folder / "plots").exists()


def test_softmax_plot_without_matplotlib(tmp_path, monkeypatch):
    sitecustomize(monkeypatch, tmp_path / "site",
                  "import sys\nsys.modules['matplotlib'] = None\n")
    folder = write_sweep(tmp_path / "sweep")
    cli_util.assert_one_line_error(
        cli_util.run("softmax-plot", str(folder)), 1,
        "softmax-plot needs matplotlib: pip install 'softmax-cls[plot]'")


def test_plots_wanted_follows_output_plots(monkeypatch):
    assert plots.plots_wanted(None) is True  # matplotlib is installed in the test environment
    assert plots.plots_wanted(True) is True
    assert plots.plots_wanted(False) is False

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    assert plots.plots_wanted(None) is False
    assert plots.plots_wanted(False) is False
    with pytest.raises(SoftmaxClsError, match=r"pip install 'softmax-cls\[plot\]'"):
        plots.plots_wanted(True)


@pytest.mark.parametrize("args,setting,drawn", [
    ([], None, True), (["--no-plots"], None, False), ([], False, False),
    (["--plots"], False, True),
])
def test_softmax_train_draws_the_pictures_at_the_end(tmp_path, monkeypatch, args, setting,
                                                      drawn):
    from click.testing import CliRunner

    from softmax_cls import cli
    from softmax_cls.training import runs

    data = separable_data(n_train=200, n_test=60, classes=3, seed=4)
    monkeypatch.setattr(runs, "load_config_data", lambda config, progress=True, **kw: data)
    monkeypatch.setattr("softmax_cls.training.evaluate.load_data_for", lambda *a, **k: data)
    config = tmp_path / "c.yaml"
    config.write_text(f"data: {{val_size: 40}}\noptim: {{epochs: 2}}\n"
                      f"output: {{plots: {json.dumps(setting)}}}\n")
    result = CliRunner().invoke(cli.train_command, ["--config", str(config), "--out",
                                                    str(tmp_path / "run"), "-q", *args])
    assert result.exit_code == 0, result.output
    pictures = sorted(p.name for p in (tmp_path / "run" / "plots").glob("*.png"))
    assert pictures == (["confusion.png", "curves.png", "mistakes.png", "templates.png"]
                        if drawn else [])
    assert ("pictures:" in result.output) == drawn


def test_plots_true_without_matplotlib_fails_before_training(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from softmax_cls import cli
    from softmax_cls.training import runs

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    monkeypatch.setattr(runs, "load_config_data", lambda *a, **k: pytest.fail("loaded data"))
    quick = Path(__file__).parents[1] / "configs" / "quick.yaml"
    result = CliRunner().invoke(cli.train_command, ["--config", str(quick), "--out",
                                                    str(tmp_path / "run"), "--plots"])
    assert result.exit_code == 1
    assert not (tmp_path / "run").exists()


def test_a_numeric_choice_axis_is_ticked_at_its_choices(tmp_path):
    from matplotlib.figure import Figure

    table = plots.sweep_table(write_sweep(tmp_path / "sweep"))
    ax = Figure().subplots()
    ax.plot([64, 256], [0, 1])
    drawing._label_axis(ax, "x", table, "optim.batch_size")
    assert list(ax.get_xticks()) == [64.0, 128.0, 256.0]
    drawing._label_axis(ax, "y", table, "optim.lr")
    assert ax.get_yscale() == "log"


def test_confusion_of_very_many_classes_stays_the_size_of_cifar100s(tmp_path):
    # an image folder may have any number of classes: a 1000-class matrix drawn at 20 pixels a
    # cell was a 20330-pixel square (92 s and 15 GB, so a few thousand classes were an OOM)
    assert drawing.confusion_size(100) == (2330, 2250)
    for n in (101, 1000, 100_000):
        assert drawing.confusion_size(n) == drawing.confusion_size(100)
    names = tuple(f"class {i}" for i in range(250))
    counts = np.random.default_rng(1).integers(0, 5, (250, 250))
    path = drawing.draw_confusion(counts, names, tmp_path / "many.png")
    assert_valid_picture(path, drawing.confusion_size(250))


def test_confusion_of_very_many_classes_names_every_kth_class(tmp_path, monkeypatch):
    # 250 names in 2000 pixels would overlap: every third class is named, its support too
    figures = []
    monkeypatch.setattr(drawing, "_save", lambda figure, path: figures.append(figure))
    counts = np.ones((250, 250), np.int64)
    drawing.draw_confusion(counts, tuple(f"class {i}" for i in range(250)), tmp_path / "x.png")
    ax = figures[0].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [f"class {i}"
                                                            for i in range(0, 250, 3)]
    assert ax.get_yticklabels()[1].get_text() == "class 3 (250)"


def test_a_reg_path_with_zero_in_its_grid_gets_a_symlog_axis(tmp_path):
    """A regularisation path's grid [0.1, ..., 1e-5, 0] (the unpenalised end) was drawn on a
    linear axis: every point below 0.01 piled up at the left edge with overlapping tick
    labels. Its axis is symlog, linear only below the smallest positive value."""
    import matplotlib.pyplot as plt

    folder = tmp_path / "path"
    folder.mkdir()
    grid = [0.1, 0.01, 0.001, 0.0001, 1.0e-5, 0.0]
    (folder / "sweep.yaml").write_text(yaml.safe_dump({
        "base": None, "set": {"optim.solver": "lbfgs"}, "sampler": "grid", "trials": 6,
        "seed": 0, "pruner": {"name": "none"}, "space": {"loss.reg": {"grid": grid}}}))
    rows = "".join(f"{i},complete,{reg},{0.3 + i / 100},10,10,1.0\n"
                   for i, reg in enumerate(grid))
    (folder / "trials.csv").write_text("number,state,loss.reg,best_val_acc,best_epoch,"
                                       "epochs,seconds\n" + rows)
    (folder / "summary.json").write_text(json.dumps({"best_trial": 5}))
    table = plots.sweep_table(folder)
    assert table.is_log("loss.reg")
    figure, ax = plt.subplots()
    try:
        drawing._label_axis(ax, "x", table, "loss.reg")
        assert ax.get_xscale() == "symlog"
        assert ax.xaxis.get_transform().linthresh == 1.0e-5
    finally:
        plt.close(figure)
    assert_valid_picture(plots.plot_path(folder)[0], (900, 700))


def test_an_lbfgs_run_draws_iterations_and_the_gradient_not_epochs_and_lr(tmp_path,
                                                                         monkeypatch):
    """curves.png of an optim.solver lbfgs run had an empty learning-rate panel (lr is null),
    an empty `train (running)` line and `epoch` under every axis: its history has one row
    per L-BFGS iteration with the gradient's max-norm, and val metrics in the last row."""
    history = [{"epoch": i, "lr": None, "train_loss": 1 / i, "train_acc": None,
                "val_loss": None, "val_acc": None, "grad_max": 10.0 ** -i}
               for i in range(1, 9)]
    history[-1].update(val_loss=0.5, val_acc=0.8)
    figures = []
    real = drawing._save
    monkeypatch.setattr(drawing, "_save", lambda figure, path: figures.append(figure)
                        or real(figure, path))
    path = drawing.draw_curves(evaluation.curves_table(history), 8, tmp_path / "curves.png")
    assert_valid_picture(path, (1350, 420))
    loss_ax, acc_ax, third = figures[0].axes[:3]
    assert {ax.get_xlabel() for ax in (loss_ax, acc_ax, third)} == {"L-BFGS iteration"}
    assert third.get_title() == "gradient max-norm" and third.get_yscale() == "log"
    assert np.allclose(third.lines[0].get_ydata(), [10.0 ** -i for i in range(1, 9)])
    labels = acc_ax.get_legend_handles_labels()[1]
    assert "train (running)" not in labels and "best val 80.00%" in labels
    # its one point is drawn over the iterations' range, not alone on an axis around it
    assert acc_ax.get_xlim() == loss_ax.get_xlim() and acc_ax.get_xlim()[0] < 2
    # an SGD run's picture is as it was
    sgd = [{"epoch": e, "lr": 0.1 / e, "train_loss": 1.0, "train_acc": 0.5, "val_loss": 1.0,
            "val_acc": 0.5} for e in range(1, 4)]
    drawing.draw_curves(evaluation.curves_table(sgd), 3, tmp_path / "sgd.png")
    assert figures[1].axes[2].get_title() == "learning rate"
    assert figures[1].axes[2].get_xlabel() == "epoch"


def test_a_sweep_of_one_trial_is_titled_in_the_singular(tmp_path, monkeypatch):
    from softmax_cls.plots import drawing
    from softmax_cls.sweep.results import SweepTable

    titles = []
    monkeypatch.setattr(drawing, "_save", lambda figure, path, tiles=None: titles.extend(
        ax.get_title() for ax in figure.axes))
    table = SweepTable(keys=("optim.lr",), specs={"optim.lr": {"log_uniform": [1e-4, 1e-1]}},
                       number=np.array([0]), state=np.array(["complete"]),
                       values={"optim.lr": np.array([0.01])}, val_acc=np.array([0.4]))
    drawing.draw_trials(table, tmp_path / "trials.png")
    drawing.draw_sweep(table, tmp_path / "sweep.png")
    assert "sweep: 1 trial" in titles
    assert any(title.startswith("sweep: val accuracy of 1 trial over") for title in titles)


def test_every_curve_in_a_legend_shows_after_many_lbfgs_iterations(tmp_path, monkeypatch):
    """An L-BFGS run of more than 30 iterations (the real CIFAR-10 default took 34) drew its
    curves without dots; its val loss, known at the solution alone, is one point, so the
    loss panel's legend named a `val` curve that did not show."""
    history = [{"epoch": i, "lr": None, "train_loss": 1 / i, "train_acc": None,
                "val_loss": None, "val_acc": None, "grad_max": 10.0 ** -i}
               for i in range(1, 41)]
    history[-1].update(val_loss=0.5, val_acc=0.8)
    figures = []
    monkeypatch.setattr(drawing, "_save", lambda figure, path: figures.append(figure))
    drawing.draw_curves(evaluation.curves_table(history), 40, tmp_path / "curves.png")
    for ax in figures[0].axes[:3]:
        for line in ax.lines:
            shown = np.isfinite(np.asarray(line.get_ydata(), float)).sum()
            if not line.get_label().startswith("_") and shown == 1:
                assert line.get_marker() not in (None, "None", ""), (ax.get_title(),
                                                                       line.get_label())
    assert any(line.get_label() == "val" for line in figures[0].axes[0].lines)
