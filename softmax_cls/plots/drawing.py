"""The pictures as PNGs, drawn with matplotlib (the optional extra softmax-cls[plot]).

Each drawer takes the numbers a picture shows (plots/evaluation.py for a run, the trials
table for a sweep) and writes a PNG of a stated pixel size through
matplotlib.figure.Figure and the Agg canvas: no pyplot, no global state, no display. A
run's pictures are drawn at the end of every training run, so they are laid out at fixed
pixel positions (the confusion matrix's and the curves' margins from their labels' measured
extents) rather than by matplotlib's constrained layout, and the image grids (templates,
mistakes) are pasted into the rendered picture pixel for pixel rather than drawn as one
Axes per image; the sweep's pictures keep the constrained layout.
matplotlib is imported only to draw, so importing this module never fails; without it,
drawing raises one SoftmaxClsError line.

| file | what | size in pixels (width x height) |
| --- | --- | --- |
| curves.png | loss, accuracy and learning rate per epoch, the best epoch marked | 1350 x 420 |
| templates.png | each class's weights in pixel space, as an RGB image | `templates_size(C)` |
| confusion.png | the row-normalised confusion matrix, with counts | `confusion_size(C)` |
| mistakes.png | the most confidently wrong images of a split | `mistakes_size(k)` |
| sweep.png | a sweep's val accuracy over the two most important parameters | 900 x 700 |
| trials.png | each trial of a sweep and the best so far | 1000 x 450 |
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from ..errors import SoftmaxClsError
from ..fsutil import atomic_write
from ..text import counted
from .evaluation import Mistakes, RunPictures, confusion_rates

if TYPE_CHECKING:
    from ..sweep.results import SweepTable

INSTALL_HINT = "softmax-plot needs matplotlib: pip install 'softmax-cls[plot]'"
DPI = 100  # every size below is in pixels; a figure is (width / DPI, height / DPI) inches
CURVES_SIZE = (1350, 420)
# the three panels of curves.png in pixels: top edge (room for a title), bottom margin (room
# for the x tick labels, whole epochs, and the x label), and the space left of the first
# panel, right of the last and between panels beside what their y labels take
CURVES_TOP, CURVES_BOTTOM, CURVES_EDGE, CURVES_GAP = 26, 48, 4, 9
# curves.png draws values of magnitude at most CURVES_LIMIT, and gradient max-norms (a log
# axis) from 1 / LOG_CURVES_LIMIT to LOG_CURVES_LIMIT; others, as an inf or a NaN, not at all:
# matplotlib's tick locators overflow past 10.0 ** 308 (a log axis's ticks a few strides of
# decades beyond its highest value) and raised OverflowError
CURVES_LIMIT, LOG_CURVES_LIMIT = 1e300, 1e100
SWEEP_SIZE = (900, 700)
TRIALS_SIZE = (1000, 450)
TEMPLATE_CELL = (150, 165)  # one class panel: its image and its name
MISTAKE_CELL = (160, 190)  # one image panel: the image and two lines of text
MISTAKE_COLUMNS = 8
TITLE_HEIGHT = 50
TITLE_TOP = 5  # pixels from the top edge to a figure title's top
GRID_TOP = 26  # pixels from the top edge to the first row of a grid's labels
TILE_MARGIN = 4  # pixels between an image of a grid and its cell's edges
LABEL_GAP = 4  # pixels between an image of a grid and its label above
TEMPLATE_LABEL = 20  # pixels above a template for its class name (11 points: 15 pixels)
MISTAKE_LABEL = 34  # pixels above a mistake for its two lines (8 points: 28 pixels)
CONFUSION_CLASSES = 100  # beyond, the matrix keeps this many cells' size and names every k-th
NAME_ROTATION = 60  # degrees: the confusion matrix's column names
# its colour bar: pixels from the matrix, pixels wide, height as a fraction of the matrix's
BAR_GAP, BAR_WIDTH, BAR_SHRINK = 30, 30, 0.95
BAR_LABEL = "fraction of the true class's images"
EDGE = 8  # pixels between the confusion matrix's outermost texts and the figure's edge
AXIS_LABEL_SIZE, TITLE_SIZE = 10, 12  # points: matplotlib's defaults ("medium", "large")
POINT = DPI / 72  # pixels
# points, matplotlib's defaults: a tick (3.5) and its label's pad (3.5); an axis label's pad;
# an Axes title's pad
TICK_ROOM, LABEL_PAD, TITLE_PAD = 7, 4, 6


def require_matplotlib():
    """The matplotlib Figure class and Agg canvas class, or one SoftmaxClsError line."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise SoftmaxClsError(INSTALL_HINT) from None
    return Figure, FigureCanvasAgg


def grid_shape(n_panels: int) -> tuple[int, int]:
    """(rows, columns) of the template grid: 5 columns up to 25 panels (CIFAR-10: 2 x 5,
    CIFAR-100 coarse: 4 x 5), else a square-ish grid (CIFAR-100: 10 x 10)."""
    columns = max(1, min(n_panels, 5) if n_panels <= 25 else math.ceil(math.sqrt(n_panels)))
    return max(1, math.ceil(n_panels / columns)), columns


def templates_size(n_classes: int) -> tuple[int, int]:
    """(width, height) in pixels of templates.png: 150 x 165 per class plus a 50-pixel title."""
    rows, columns = grid_shape(n_classes)
    return columns * TEMPLATE_CELL[0], rows * TEMPLATE_CELL[1] + TITLE_HEIGHT


def confusion_size(n_classes: int) -> tuple[int, int]:
    """(width, height) in pixels of confusion.png: a square cell per pair of classes (60
    pixels up to 20 classes, with its count written in it; 20 beyond) plus margins for names;
    beyond CONFUSION_CLASSES classes the matrix keeps CIFAR-100's 2000 pixels (the drawing's
    memory grows with its area: 1000 classes at 20 pixels took 15 GB)."""
    cell = 60 if n_classes <= 20 else 20
    side = min(n_classes, CONFUSION_CLASSES) * cell
    return side + 330, side + 250


def mistakes_size(n_images: int) -> tuple[int, int]:
    """(width, height) in pixels of mistakes.png: 8 columns of 160 x 190 panels (fewer columns
    for fewer images), at least one row, plus a 50-pixel title."""
    columns = max(1, min(n_images, MISTAKE_COLUMNS))
    rows = max(1, math.ceil(n_images / columns))
    return columns * MISTAKE_CELL[0], rows * MISTAKE_CELL[1] + TITLE_HEIGHT


def _figure(size: tuple[int, int], constrained: bool = False):
    """A Figure of `size` pixels on an Agg canvas. The run's pictures place everything at
    fixed pixel positions (constrained layout measured every artist twice: a third of their
    drawing time); the sweep's pictures, whose legends and labels vary more, keep
    matplotlib's constrained layout."""
    Figure, FigureCanvasAgg = require_matplotlib()
    figure = Figure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI,
                    layout="constrained" if constrained else None)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: str | os.PathLike, tiles: Tiles | None = None) -> Path:
    """Render the figure on its Agg canvas, put the `tiles` (images placed pixel for pixel)
    over it, and write it as an RGB PNG. zlib level 1 (Pillow's default is 6) takes a third
    of the encoding time for files about 10% larger; the pixels are the same."""
    from PIL import Image

    figure.canvas.draw()  # runs the layout engine, if the figure has one
    # the figure is opaque: RGB carries all of it
    pixels = np.ascontiguousarray(np.asarray(figure.canvas.buffer_rgba())[..., :3])
    if tiles is not None:
        for (x, y), image in zip(tiles.corners, tiles.images, strict=True):
            pixels[y:y + image.shape[0], x:x + image.shape[1]] = image
    path = Path(path)
    with atomic_write(path) as handle:
        Image.fromarray(pixels).save(handle, format="png", compress_level=1)
    return path


def _pixel_box(figure, left: float, top: float, width: float, height: float) -> list[float]:
    """[left, bottom, width, height] in figure fractions (what add_axes takes) of a box given
    in pixels from the figure's top-left corner."""
    figure_width, figure_height = figure.bbox.width, figure.bbox.height
    return [left / figure_width, 1 - (top + height) / figure_height, width / figure_width,
            height / figure_height]


def _text_at(figure, x: float, y: float, text: str, **kwargs):
    """figure.text at (x, y) pixels from the figure's top-left corner."""
    return figure.text(x / figure.bbox.width, 1 - y / figure.bbox.height, text, **kwargs)


def _text_extents(figure, texts: list[str], size: float) -> np.ndarray:
    """(len(texts), 2) float64: the width and height in pixels of each text drawn at `size`
    points in the figure's default font (one row of zeros for no texts)."""
    from matplotlib.cbook import is_math_text
    from matplotlib.font_manager import FontProperties

    renderer = figure.canvas.get_renderer()
    prop = FontProperties(size=size)
    return np.array([renderer.get_text_width_height_descent(text, prop,
                                                            ismath=is_math_text(text))[:2]
                     for text in texts] or [(0.0, 0.0)], dtype=np.float64)


def _y_axis_room(ax) -> float:
    """Pixels an Axes needs at its left for its y tick labels and its y label, measured as
    matplotlib draws them (each locator's ticks formatted together, those in view shown:
    the minor ones too, which a log axis spanning less than a decade labels) without
    drawing the figure."""
    figure = ax.get_figure()
    axis = ax.yaxis
    low, high = sorted(axis.get_view_interval())
    slack = 1e-10 * (high - low)
    shown = []
    for locator, formatter in ((axis.get_major_locator(), axis.get_major_formatter()),
                               (axis.get_minor_locator(), axis.get_minor_formatter())):
        ticks = locator()
        labels = formatter.format_ticks(ticks)
        shown += [label for tick, label in zip(ticks, labels, strict=True)
                  if low - slack <= tick <= high + slack]
    size = axis.get_majorticklabels()[0].get_fontsize() if shown else AXIS_LABEL_SIZE
    widest = _text_extents(figure, shown, size)[:, 0].max()
    label = _text_extents(figure, [axis.label.get_text()], axis.label.get_fontsize())[0, 1]
    return (TICK_ROOM + LABEL_PAD) * POINT + widest + label


def _title(figure, text: str):
    """The figure's title, 12 points, centred, TITLE_TOP pixels below the top edge."""
    return _text_at(figure, figure.bbox.width / 2, TITLE_TOP, text, ha="center", va="top",
                    fontsize=12)


def tile_boxes(n: int, columns: int, cell: tuple[int, int], label_height: int,
               height: int) -> tuple[np.ndarray, int]:
    """(n, 2) int64 top-left pixel corners (x, y) of the n images of a grid of `columns`
    cells of `cell` (width, height) pixels, row by row, in a figure `height` pixels high,
    and the side of each (square) image: a cell holds `label_height` pixels of text, then
    the image, TILE_MARGIN pixels from its cell's other edges. The rows share the height
    below the title's GRID_TOP pixels evenly, as matplotlib's constrained layout placed them."""
    side = min(cell[0] - 2 * TILE_MARGIN, cell[1] - label_height - TILE_MARGIN)
    k = np.arange(n)
    pitch = (height - GRID_TOP) / max(1, math.ceil(n / columns))
    x = (k % columns) * cell[0] + (cell[0] - side) // 2
    y = np.round(GRID_TOP + (k // columns) * pitch).astype(np.int64) + label_height
    return np.stack([x, y], axis=1), side


def enlarge(images: np.ndarray, side: int) -> np.ndarray:
    """(N, side, side, 3) uint8: the (N, h, w, 3) uint8 images enlarged nearest-neighbour,
    each output pixel taking the source pixel whose extent holds its centre."""
    rows = (np.arange(side) * 2 + 1) * images.shape[1] // (2 * side)
    columns = (np.arange(side) * 2 + 1) * images.shape[2] // (2 * side)
    return images[:, rows][:, :, columns]


@dataclass(frozen=True)
class Tiles:
    """Images to put into a rendered picture pixel for pixel: (N, side, side, 3) uint8
    `images`, the top-left pixel (x, y) of each in `corners` (N, 2)."""

    corners: np.ndarray
    images: np.ndarray


def _draw_tiles(figure, images: np.ndarray, labels: list[str], columns: int,
                cell: tuple[int, int], label_height: int, fontsize: float) -> Tiles:
    """Label each image of a grid (its text of `labels`, centred, LABEL_GAP pixels above the
    image) and return the images enlarged and placed, for _save to put in: one array copy
    each, where an Axes per image cost matplotlib's layout, resampling and ticks."""
    corners, side = tile_boxes(len(images), columns, cell, label_height,
                               round(figure.bbox.height))
    for (x, y), label in zip(corners, labels, strict=True):
        _text_at(figure, x + side / 2, y - LABEL_GAP, label, ha="center", va="bottom",
                 fontsize=fontsize)
    return Tiles(corners, enlarge(images, side))


def draw_curves(table: dict[str, np.ndarray], best_epoch: int | None,
                path: str | os.PathLike) -> Path:
    """curves.png, 1350 x 420: loss, accuracy and learning rate per epoch (from curves_table),
    a dashed line at the best epoch. An optim.solver lbfgs run's history (no learning rate,
    a gradient max-norm per iteration) gets loss, the solution's val accuracy and the
    gradient max-norm (log scale) per L-BFGS iteration instead."""
    figure = _figure(CURVES_SIZE)
    height = CURVES_SIZE[1] - CURVES_TOP - CURVES_BOTTOM
    loss_ax, acc_ax, third_ax = panels = [figure.add_axes(_pixel_box(figure, 0, CURVES_TOP, 1,
                                                                     height)) for _ in range(3)]
    grad_max = table.get("grad_max", np.full(len(table["epoch"]), np.nan))
    lbfgs = np.isfinite(grad_max).any() and not np.isfinite(table["lr"]).any()
    table, grad_max = ({key: np.where(np.abs(values) <= CURVES_LIMIT, values, np.nan)
                        for key, values in table.items()},
                       np.where((1 / LOG_CURVES_LIMIT <= grad_max)
                                & (grad_max <= LOG_CURVES_LIMIT), grad_max, np.nan))
    epochs = table["epoch"]
    step, best = ("L-BFGS iteration", "solution") if lbfgs else ("epoch", "best epoch")
    def marker(values: np.ndarray) -> str | None:
        """Dots where a series has few points: an L-BFGS run's val loss, known at the
        solution alone, is one point, which a line without them does not show."""
        return "o" if np.isfinite(values).sum() <= 30 else None

    loss_ax.plot(epochs, table["train_loss"], marker=marker(table["train_loss"]),
                 label="train (with L2 penalty)")
    loss_ax.plot(epochs, table["val_loss"], marker=marker(table["val_loss"]), label="val")
    if np.isfinite(table["train_acc"]).any():
        acc_ax.plot(epochs, 100 * table["train_acc"], marker=marker(table["train_acc"]),
                    label="train (running)")
    acc_ax.plot(epochs, 100 * table["val_acc"], marker=marker(table["val_acc"]), label="val")
    if lbfgs:
        third_ax.plot(epochs, grad_max, marker=marker(grad_max), color="tab:green")
        third_ax.set_yscale("log")
        third = ("gradient max-norm", "max |gradient|")
    else:
        third_ax.plot(epochs, table["lr"], marker=marker(table["lr"]), color="tab:green")
        third_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        third = ("learning rate", "learning rate")
    for ax, title, ylabel in ((loss_ax, "loss", "cross-entropy"),
                              (acc_ax, "accuracy", "accuracy (%)"), (third_ax, *third)):
        ax.set_title(title)
        ax.set_xlabel(step)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="black", linestyle="--", linewidth=1,
                       label=f"{best} ({best_epoch})")
    if best_epoch is not None and best_epoch in epochs:
        best_val = 100 * table["val_acc"][list(epochs).index(best_epoch)]
        acc_ax.plot([best_epoch], [best_val], marker="*", markersize=14, color="black",
                    linestyle="none", label=f"best val {best_val:.2f}%")
    if lbfgs:  # val accuracy is known at the solution alone: keep the iterations' range
        acc_ax.set_xlim(loss_ax.get_xlim())
    loss_ax.legend()
    acc_ax.legend(loc="lower right")
    # the panels share the width that their y labels leave (the y ticks depend on the height
    # alone, so the widths do not change them)
    rooms = [_y_axis_room(ax) for ax in panels]
    width = (CURVES_SIZE[0] - sum(rooms) - 2 * CURVES_EDGE - 2 * CURVES_GAP) / 3
    left = CURVES_EDGE
    for ax, room in zip(panels, rooms, strict=True):
        left += room
        ax.set_position(_pixel_box(figure, left, CURVES_TOP, width, height))
        left += width + CURVES_GAP
    return _save(figure, path)


def draw_templates(templates: np.ndarray, class_names: tuple[str, ...],
                   path: str | os.PathLike) -> Path:
    """templates.png, templates_size(C): each (32, 32, 3) uint8 template as an RGB image
    (nearest-neighbour, no colormap) under its class name, in a grid_shape(C) grid."""
    n = min(len(templates), len(class_names))
    figure = _figure(templates_size(len(templates)))
    _, columns = grid_shape(len(templates))
    _title(figure, "class templates: each class's weights on raw pixels, stretched to 0-255")
    tiles = _draw_tiles(figure, templates[:n], list(class_names[:n]), columns, TEMPLATE_CELL,
                        TEMPLATE_LABEL, fontsize=11 if len(templates) <= 25 else 9)
    return _save(figure, path, tiles)


def draw_confusion(confusion: np.ndarray, class_names: tuple[str, ...],
                   path: str | os.PathLike, title: str = "confusion matrix") -> Path:
    """confusion.png, confusion_size(C): confusion_rates of the (C, C) counts as a sequential
    heat map (0 white, 1 dark blue, on a square-root scale), counts written in the cells up
    to 20 classes, each row named with its class and support (beyond CONFUSION_CLASSES
    classes, every k-th class is named, so that the names do not overlap)."""
    confusion = np.asarray(confusion)
    rates = confusion_rates(confusion)
    n = len(class_names)
    figure = _figure(confusion_size(n))
    font = 10 if n <= 20 else 7
    shown = range(0, n, math.ceil(n / CONFUSION_CLASSES))  # names 20 pixels apart at least
    support = confusion.sum(axis=1)
    x_names = [class_names[i] for i in shown]
    y_names = [f"{class_names[i]} ({support[i]})" for i in shown]
    layout = confusion_layout(figure, x_names, y_names, font, title)
    ax = figure.add_axes(_pixel_box(figure, layout.left, layout.top, layout.side, layout.side))
    from matplotlib.colors import PowerNorm

    # a square-root colour scale: off-diagonal rates are mostly a few percent, and they are
    # what a confusion matrix is read for; the colour bar shows the scale
    image = ax.imshow(rates, cmap="Blues", norm=PowerNorm(0.5, vmin=0, vmax=1),
                      interpolation="nearest")
    ax.set_xticks(shown, x_names, rotation=NAME_ROTATION, ha="right", rotation_mode="anchor",
                  fontsize=font)
    ax.set_yticks(shown, y_names, fontsize=font)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (images)")
    ax.set_title(title)
    if n <= 20:
        for (i, j), count in np.ndenumerate(confusion):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=9,
                    color="white" if rates[i, j] > 0.4 else "black")
    figure.colorbar(image, cax=figure.add_axes(_pixel_box(figure, *layout.bar)),
                    label=BAR_LABEL)
    return _save(figure, path)


class ConfusionLayout(NamedTuple):
    """Where confusion.png's parts go, in pixels from the figure's top-left corner: the
    matrix, a square (left, top, side), and its colour bar (left, top, width, height)."""

    left: float
    top: float
    side: float
    bar: tuple[float, float, float, float]


def confusion_layout(figure, x_names: list[str], y_names: list[str], fontsize: float,
                     title: str) -> ConfusionLayout:
    """The largest matrix that leaves room, within the figure, for the class names (their
    extents measured with the Agg renderer, as matplotlib's constrained layout did, but only
    theirs), the axis labels, the title and the colour bar at its right, whose height is
    BAR_SHRINK of the matrix's (at least its label's length). The room the square leaves in
    one direction is shared on both sides."""
    def extents(texts: list[str], size: float) -> np.ndarray:
        return _text_extents(figure, texts, size)

    label_width, label_height = extents([BAR_LABEL], AXIS_LABEL_SIZE)[0]
    ticks = TICK_ROOM * POINT
    axis_label = label_height + LABEL_PAD * POINT
    angle = math.radians(NAME_ROTATION)
    x = extents(x_names, fontsize)
    left = EDGE + axis_label + ticks + extents(y_names, fontsize)[:, 0].max()
    bottom = EDGE + axis_label + ticks + (x[:, 0] * math.sin(angle)
                                          + x[:, 1] * math.cos(angle)).max()
    top = EDGE + extents([title], TITLE_SIZE)[0, 1] + TITLE_PAD * POINT
    right = (EDGE + axis_label + ticks + extents(["0.0"], AXIS_LABEL_SIZE)[0, 0] + BAR_WIDTH
             + BAR_GAP)
    width, height = figure.bbox.width, figure.bbox.height
    across, down = width - left - right, height - top - bottom
    side = max(min(across, down), 1.0)
    left += max(across - side, 0) / 2
    top += max(down - side, 0) / 2
    bar_height = min(max(BAR_SHRINK * side, label_width + 2 * EDGE), height - 2 * EDGE)
    bar_top = min(max(top + (side - bar_height) / 2, EDGE), height - EDGE - bar_height)
    return ConfusionLayout(left, top, side,
                           (left + side + BAR_GAP, bar_top, BAR_WIDTH, bar_height))


def draw_mistakes(mistakes: Mistakes, class_names: tuple[str, ...], path: str | os.PathLike,
                  title: str = "most confidently wrong") -> Path:
    """mistakes.png, mistakes_size(k): each image with its true class, the predicted class and
    the probability the model gave it."""
    n = len(mistakes.index)
    figure = _figure(mistakes_size(n))
    _title(figure, title)
    if n == 0:
        figure.text(0.5, 0.5, "no mistakes", ha="center", va="center", fontsize=14)
        return _save(figure, path)
    labels = [f"true: {class_names[true]}\npredicted: {class_names[predicted]} {p:.0%}"
              for true, predicted, p in zip(mistakes.true, mistakes.predicted,
                                            mistakes.confidence, strict=True)]
    tiles = _draw_tiles(figure, mistakes.images, labels, max(1, min(n, MISTAKE_COLUMNS)),
                        MISTAKE_CELL, MISTAKE_LABEL, fontsize=8)
    return _save(figure, path, tiles)


def draw_sweep(table: SweepTable, path: str | os.PathLike) -> Path:
    """sweep.png, 900 x 700: each trial's val accuracy (colour) over the two most important
    keys (log axes where the space is logarithmic); pruned trials as triangles, trials without
    an accuracy as grey crosses, the best trial ringed in red. One key: accuracy over it."""
    figure = _figure(SWEEP_SIZE, constrained=True)
    ax = figure.subplots()
    keys = table.axes
    if not keys:
        figure.text(0.5, 0.5, "no searched parameters", ha="center", va="center", fontsize=14)
        return _save(figure, path)
    x = _positions(table, keys[0])
    y = _positions(table, keys[1]) if len(keys) > 1 else 100 * table.val_acc
    has_acc = np.isfinite(table.val_acc)
    finite_acc = 100 * table.val_acc[has_acc]
    low, high = (finite_acc.min(), finite_acc.max()) if len(finite_acc) else (0, 1)
    style = {"cmap": "viridis", "vmin": low, "vmax": high if high > low else low + 1,
             "edgecolors": "black", "linewidths": 0.5}
    mappable = None
    for state, marker, size in (("complete", "o", 70), ("pruned", "^", 45)):
        chosen = has_acc & (table.state == state)
        if chosen.any():
            mappable = ax.scatter(x[chosen], y[chosen], c=100 * table.val_acc[chosen],
                                  marker=marker, s=size, label=f"{state} ({chosen.sum()})",
                                  **style)
    other = has_acc & ~np.isin(table.state, ["complete", "pruned"])
    if other.any():
        ax.scatter(x[other], y[other], c=100 * table.val_acc[other], marker="s", s=45,
                   label=f"other states ({other.sum()})", **style)
    placed = ~has_acc & np.isfinite(x) & np.isfinite(y)
    if placed.any() and len(keys) > 1:
        ax.scatter(x[placed], y[placed], marker="x", color="grey",
                   label=f"no accuracy: failed or running ({placed.sum()})")
    best = table.best_trial
    if best is not None:
        ax.scatter([x[best]], [y[best]], s=260, facecolors="none", edgecolors="red",
                   linewidths=2, label=f"best: trial {table.number[best]}, "
                   f"{100 * table.val_acc[best]:.2f}%")
    _label_axis(ax, "x", table, keys[0])
    if len(keys) > 1:
        _label_axis(ax, "y", table, keys[1])
        if mappable is not None:
            figure.colorbar(mappable, ax=ax, label="best val accuracy (%)")
    else:
        ax.set_ylabel("best val accuracy (%)")
    ax.grid(alpha=0.3)
    legend = ax.legend(loc="best", fontsize=9)
    for handle, text in zip(legend.legend_handles, legend.get_texts(), strict=True):
        if text.get_text().startswith(("complete", "pruned", "other states")):
            handle.set_array(None)  # a marker shape, not one trial's colour
            handle.set_facecolor("lightgrey")
    ax.set_title(f"sweep: val accuracy of {counted(len(table.number), 'trial')} over "
                 f"{' and '.join(keys)}")
    return _save(figure, path)


def _positions(table: SweepTable, key: str) -> np.ndarray:
    """(T,) float64 plot coordinates of a key: its values, or a category's index."""
    if table.is_numeric(key):
        return table.values[key]
    order = table.categories(key)
    return np.array([order.index(v) if v in order else np.nan for v in table.values[key]],
                    dtype=np.float64)


def _label_axis(ax, axis: str, table: SweepTable, key: str) -> None:
    importance = table.importances.get(key)
    label = key + (f" (importance {importance:.2f})" if importance is not None else "")
    getattr(ax, f"set_{axis}label")(label)
    listed = table.specs.get(key, {}).get("choice", table.specs.get(key, {}).get("grid"))
    if table.is_log(key) and table.zero_listed(key) is not None:  # 0 has no log position
        getattr(ax, f"set_{axis}scale")("symlog", linthresh=table.zero_listed(key))
    elif table.is_log(key):
        getattr(ax, f"set_{axis}scale")("log")
    elif table.is_numeric(key) and isinstance(listed, list) and listed:
        getattr(ax, f"set_{axis}ticks")(sorted(float(v) for v in listed))  # the choices only
    elif not table.is_numeric(key):
        order = table.categories(key)
        getattr(ax, f"set_{axis}ticks")(range(len(order)), order)
        getattr(ax, f"set_{axis}lim")(-0.5, len(order) - 0.5)


def draw_trials(table: SweepTable, path: str | os.PathLike) -> Path:
    """trials.png, 1000 x 450: each trial's val accuracy by trial number, coloured by state
    (a trial without an accuracy as a cross on the bottom edge), and the best complete trial
    so far as a step line."""
    from matplotlib.transforms import blended_transform_factory

    figure = _figure(TRIALS_SIZE, constrained=True)
    ax = figure.subplots()
    colours = {"complete": "tab:blue", "pruned": "tab:orange", "failed": "tab:red",
               "running": "tab:grey"}
    bottom_edge = blended_transform_factory(ax.transData, ax.transAxes)
    accuracy = 100 * table.val_acc
    for state in sorted(set(table.state), key=lambda s: (s not in colours, s)):
        colour = colours.get(state, "tab:purple")
        chosen = table.state == state
        scored = chosen & np.isfinite(accuracy)
        unscored = chosen & ~np.isfinite(accuracy)
        label = f"{state} ({chosen.sum()})"
        if unscored.any():
            none = "no accuracy" if unscored.sum() == chosen.sum() else \
                f"{unscored.sum()} with no accuracy"
            label = f"{state} ({chosen.sum()}, {none})"
        if scored.any():
            ax.scatter(table.number[scored], accuracy[scored], s=30, color=colour, label=label)
            label = None
        if unscored.any():
            ax.scatter(table.number[unscored], np.full(unscored.sum(), 0.03), marker="x", s=40,
                       color=colour, transform=bottom_edge, clip_on=False, label=label)
    best = table.best_so_far
    if np.isfinite(best).any():
        ax.step(table.number, 100 * best, where="post", color="black",
                label=f"best complete so far ({100 * np.nanmax(best):.2f}%)")
    ax.set_xlabel("trial number")
    ax.set_ylabel("best val accuracy (%)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=9)
    ax.set_title(f"sweep: {counted(len(table.number), 'trial')}")
    return _save(figure, path)


def draw_run_pictures(pictures: RunPictures, out_dir: str | os.PathLike) -> list[Path]:
    """curves.png, templates.png, confusion.png and mistakes.png in out_dir (templates and
    mistakes only for image data, confusion and mistakes only when a split was scored)."""
    out_dir = Path(out_dir)
    names = pictures.class_names
    written = [draw_curves(pictures.curves, pictures.best_epoch, out_dir / "curves.png")]
    if pictures.templates is not None:
        written.append(draw_templates(pictures.templates, names, out_dir / "templates.png"))
    if pictures.confusion is not None:
        n = int(pictures.confusion.sum())
        written.append(draw_confusion(pictures.confusion, names, out_dir / "confusion.png",
                                      title=f"{pictures.split} split: accuracy "
                                            f"{pictures.accuracy:.2%} of {n} images"))
    if pictures.mistakes is not None:
        written.append(draw_mistakes(
            pictures.mistakes, names, out_dir / "mistakes.png",
            title=f"the {len(pictures.mistakes.index)} most confidently wrong of the "
                  f"{pictures.split} split"))
    return written
