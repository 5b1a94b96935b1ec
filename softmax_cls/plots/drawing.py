"""The pictures as PNGs, drawn with matplotlib (the optional extra softmax-cls[plot]).

Each drawer takes the numbers a picture shows (plots/evaluation.py for a run, the trials
table for a sweep) and writes a PNG of a stated pixel size through
matplotlib.figure.Figure and the Agg canvas: no pyplot, no global state, no display.
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
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import SoftmaxClsError
from ..fsutil import atomic_write
from .evaluation import Mistakes, RunPictures, confusion_rates

if TYPE_CHECKING:
    from ..sweep.results import SweepTable

INSTALL_HINT = "softmax-plot needs matplotlib: pip install 'softmax-cls[plot]'"
DPI = 100  # every size below is in pixels; a figure is (width / DPI, height / DPI) inches
CURVES_SIZE = (1350, 420)
SWEEP_SIZE = (900, 700)
TRIALS_SIZE = (1000, 450)
TEMPLATE_CELL = (150, 165)  # one class panel: its image and its name
MISTAKE_CELL = (160, 190)  # one image panel: the image and two lines of text
MISTAKE_COLUMNS = 8
TITLE_HEIGHT = 50
CONFUSION_CLASSES = 100  # beyond, the matrix keeps this many cells' size and names every k-th


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


def _figure(size: tuple[int, int]):
    Figure, FigureCanvasAgg = require_matplotlib()
    figure = Figure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_write(path) as handle:
        figure.savefig(handle, format="png", dpi=DPI)
    return path


def draw_curves(table: dict[str, np.ndarray], best_epoch: int | None,
                path: str | os.PathLike) -> Path:
    """curves.png, 1350 x 420: loss, accuracy and learning rate per epoch (from curves_table),
    a dashed line at the best epoch. An optim.solver lbfgs run's history (no learning rate,
    a gradient max-norm per iteration) gets loss, the solution's val accuracy and the
    gradient max-norm (log scale) per L-BFGS iteration instead."""
    figure = _figure(CURVES_SIZE)
    loss_ax, acc_ax, third_ax = figure.subplots(1, 3)
    epochs = table["epoch"]
    grad_max = table.get("grad_max", np.full(len(epochs), np.nan))
    lbfgs = np.isfinite(grad_max).any() and not np.isfinite(table["lr"]).any()
    step, best = ("L-BFGS iteration", "solution") if lbfgs else ("epoch", "best epoch")
    marker = "o" if len(epochs) <= 30 else None
    loss_ax.plot(epochs, table["train_loss"], marker=marker, label="train (with L2 penalty)")
    loss_ax.plot(epochs, table["val_loss"], marker=marker, label="val")
    if np.isfinite(table["train_acc"]).any():
        acc_ax.plot(epochs, 100 * table["train_acc"], marker=marker, label="train (running)")
    acc_ax.plot(epochs, 100 * table["val_acc"], marker=marker, label="val")
    if lbfgs:
        third_ax.plot(epochs, grad_max, marker=marker, color="tab:green")
        third_ax.set_yscale("log")
        third = ("gradient max-norm", "max |gradient|")
    else:
        third_ax.plot(epochs, table["lr"], marker=marker, color="tab:green")
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
    loss_ax.legend()
    acc_ax.legend(loc="lower right")
    return _save(figure, path)


def draw_templates(templates: np.ndarray, class_names: tuple[str, ...],
                   path: str | os.PathLike) -> Path:
    """templates.png, templates_size(C): each (32, 32, 3) uint8 template as an RGB image
    (nearest-neighbour, no colormap) under its class name, in a grid_shape(C) grid."""
    n = len(templates)
    figure = _figure(templates_size(n))
    rows, columns = grid_shape(n)
    axes = np.atleast_1d(figure.subplots(rows, columns)).ravel()
    font = 11 if n <= 25 else 9
    for ax in axes:
        ax.set_axis_off()
    for ax, image, name in zip(axes, templates, class_names, strict=False):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(name, fontsize=font)
    figure.suptitle("class templates: each class's weights on raw pixels, stretched to 0-255",
                    fontsize=12)
    return _save(figure, path)


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
    ax = figure.subplots()
    from matplotlib.colors import PowerNorm

    # a square-root colour scale: off-diagonal rates are mostly a few percent, and they are
    # what a confusion matrix is read for; the colour bar shows the scale
    image = ax.imshow(rates, cmap="Blues", norm=PowerNorm(0.5, vmin=0, vmax=1),
                      interpolation="nearest")
    font = 10 if n <= 20 else 7
    shown = range(0, n, math.ceil(n / CONFUSION_CLASSES))  # names 20 pixels apart at least
    ax.set_xticks(shown, [class_names[i] for i in shown], rotation=60, ha="right",
                  rotation_mode="anchor", fontsize=font)
    support = confusion.sum(axis=1)
    ax.set_yticks(shown, [f"{class_names[i]} ({support[i]})" for i in shown], fontsize=font)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (images)")
    ax.set_title(title)
    if n <= 20:
        for (i, j), count in np.ndenumerate(confusion):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=9,
                    color="white" if rates[i, j] > 0.4 else "black")
    figure.colorbar(image, ax=ax, label="fraction of the true class's images", shrink=0.8)
    return _save(figure, path)


def draw_mistakes(mistakes: Mistakes, class_names: tuple[str, ...], path: str | os.PathLike,
                  title: str = "most confidently wrong") -> Path:
    """mistakes.png, mistakes_size(k): each image with its true class, the predicted class and
    the probability the model gave it."""
    n = len(mistakes.index)
    figure = _figure(mistakes_size(n))
    figure.suptitle(title, fontsize=12)
    if n == 0:
        figure.text(0.5, 0.5, "no mistakes", ha="center", va="center", fontsize=14)
        return _save(figure, path)
    columns = max(1, min(n, MISTAKE_COLUMNS))
    rows = math.ceil(n / columns)
    axes = np.atleast_1d(figure.subplots(rows, columns)).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, image, true, predicted, p in zip(axes, mistakes.images, mistakes.true,
                                             mistakes.predicted, mistakes.confidence,
                                             strict=False):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(f"true: {class_names[true]}\npredicted: {class_names[predicted]} "
                     f"{p:.0%}", fontsize=8)
    return _save(figure, path)


def draw_sweep(table: SweepTable, path: str | os.PathLike) -> Path:
    """sweep.png, 900 x 700: each trial's val accuracy (colour) over the two most important
    keys (log axes where the space is logarithmic); pruned trials as triangles, trials without
    an accuracy as grey crosses, the best trial ringed in red. One key: accuracy over it."""
    figure = _figure(SWEEP_SIZE)
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
    ax.set_title(f"sweep: val accuracy of {len(table.number)} trials over "
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

    figure = _figure(TRIALS_SIZE)
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
    ax.set_title(f"sweep: {len(table.number)} trials")
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
