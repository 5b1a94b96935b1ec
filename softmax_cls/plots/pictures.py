"""Pictures of a run or a sweep, drawn with matplotlib (the optional extra softmax-cls[plot]).

Each picture is made in two steps: a pure builder computes the array or table it shows (the
tests check those), then a drawer turns it into a PNG through matplotlib.figure.Figure and the
Agg canvas: no pyplot, no global state, no display. matplotlib is imported only to draw, so
importing this module never fails; without it, drawing raises one SoftmaxClsError line.

A run folder (or a checkpoint .npz) gives, by `plot_run`:

| file | what | size in pixels (width x height) |
| --- | --- | --- |
| curves.png | loss, accuracy and learning rate per epoch, the best epoch marked | 1350 x 420 |
| templates.png | each class's weights in pixel space, as an RGB image | `templates_size(C)` |
| confusion.png | the row-normalised confusion matrix, with counts | `confusion_size(C)` |
| mistakes.png | the most confidently wrong images of a split | `mistakes_size(k)` |

A sweep folder gives, by `plot_sweep`: sweep.png (900 x 700, the val accuracy over the two
most important parameters) and trials.png (1000 x 450, each trial and the best so far).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError, SoftmaxClsError
from ..fsutil import atomic_write, read_capped
from ..math.preprocess import Preprocessor

INSTALL_HINT = "softmax-plot needs matplotlib: pip install 'softmax-cls[plot]'"
DPI = 100  # every size below is in pixels; a figure is (width / DPI, height / DPI) inches
IMAGE_SIDE = 32
N_PIXELS = 3 * IMAGE_SIDE * IMAGE_SIDE  # a CIFAR row: the R, G and B planes, each row-major
CURVES_SIZE = (1350, 420)
SWEEP_SIZE = (900, 700)
TRIALS_SIZE = (1000, 450)
TEMPLATE_CELL = (150, 165)  # one class panel: its image and its name
MISTAKE_CELL = (160, 190)  # one image panel: the image and two lines of text
MISTAKE_COLUMNS = 8
TITLE_HEIGHT = 50
CONSTANT_TEMPLATE_GREY = 128  # a template with max == min has no contrast to stretch
HISTORY_KEYS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc")
TRIAL_COLUMNS = ("number", "state", "best_val_acc", "best_epoch", "epochs", "seconds")
# The most bytes read of history.jsonl, summary.json, trials.csv or sweep.yaml: a history row
# is about 200 bytes, so this is some 300,000 epochs.
TEXT_CAP = 64 << 20
LOG_DECADES = 2.0  # a numeric choice/grid spanning at least this many decades gets a log axis


def require_matplotlib():
    """The matplotlib Figure class and Agg canvas class, or one SoftmaxClsError line."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise SoftmaxClsError(INSTALL_HINT) from None
    return Figure, FigureCanvasAgg


# ---------------------------------------------------------------------------------------------
# Builders: plain numpy, no matplotlib.


def pixel_images(rows: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) images from rows (N, 3072): 3 planes R, G, B of 32 x 32, row-major.

    Keeps the dtype; the result is a view when it can be.
    """
    return rows.reshape(len(rows), 3, IMAGE_SIDE, IMAGE_SIDE).transpose(0, 2, 3, 1)


def template_images(W: np.ndarray, preprocessor: Preprocessor) -> np.ndarray:
    """(C, 32, 32, 3) uint8: each class's weights as an image in raw pixel space.

    W (3073 or 3072, C) acts on preprocessed features x = (u - mean) * scale. On raw pixels u
    the weight of pixel j is W[j] * scale[j] (Preprocessor.fold), computed in float64. Each
    template is then stretched on its own, over all three colour planes at once so its hues
    are kept: its minimum becomes 0 and its maximum 255 (rounded to the nearest integer). A
    constant template becomes mid-grey (128) everywhere.
    """
    if W.ndim != 2 or W.shape[0] < N_PIXELS or preprocessor.scale.shape != (N_PIXELS,):
        raise DataError(f"templates need {N_PIXELS} pixel rows of W, got W of shape {W.shape}")
    W = W[: preprocessor.n_features].astype(np.float64)
    raw = preprocessor.fold(W)[:N_PIXELS].T  # (C, 3072): pixel weights on raw pixels
    low = raw.min(axis=1, keepdims=True)
    span = raw.max(axis=1, keepdims=True) - low
    flat = np.full(raw.shape, CONSTANT_TEMPLATE_GREY, dtype=np.uint8)
    varying = span[:, 0] > 0
    flat[varying] = np.rint((raw[varying] - low[varying]) / span[varying] * 255).astype(np.uint8)
    return np.ascontiguousarray(pixel_images(flat))


def grid_shape(n_panels: int) -> tuple[int, int]:
    """(rows, columns) of the template grid: 5 columns up to 25 panels (CIFAR-10: 2 x 5,
    CIFAR-100 coarse: 4 x 5), else a square-ish grid (CIFAR-100: 10 x 10)."""
    columns = max(1, min(n_panels, 5) if n_panels <= 25 else math.ceil(math.sqrt(n_panels)))
    return max(1, math.ceil(n_panels / columns)), columns


def templates_size(n_classes: int) -> tuple[int, int]:
    """(width, height) in pixels of templates.png: 150 x 165 per class plus a 50-pixel title."""
    rows, columns = grid_shape(n_classes)
    return columns * TEMPLATE_CELL[0], rows * TEMPLATE_CELL[1] + TITLE_HEIGHT


def curves_table(history: list[dict]) -> dict[str, np.ndarray]:
    """Per-epoch arrays (E,) float64 for each of HISTORY_KEYS, from history rows (dicts).

    Rows keep their order; a key a row lacks (or holds null) is NaN; unknown keys are ignored.
    """
    def value(row: dict, key: str) -> float:
        item = row.get(key)
        return float(item) if isinstance(item, (int, float)) and not isinstance(item, bool) \
            else math.nan

    return {key: np.array([value(row, key) for row in history], dtype=np.float64)
            for key in HISTORY_KEYS}


def best_epoch_of(table: dict[str, np.ndarray]) -> int | None:
    """The first epoch with the highest val accuracy (the trainer's rule), or None."""
    val = table["val_acc"]
    if not np.isfinite(val).any():
        return None
    return int(table["epoch"][int(np.nanargmax(val))])


def confusion_rates(confusion: np.ndarray) -> np.ndarray:
    """(C, C) float64: each row of the (C, C) counts divided by its sum (the true class's
    support), so row i is where images of class i went; a row with no images is all 0."""
    counts = np.asarray(confusion, dtype=np.float64)
    support = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, support, out=np.zeros_like(counts), where=support > 0)


def confusion_size(n_classes: int) -> tuple[int, int]:
    """(width, height) in pixels of confusion.png: a square cell per pair of classes (60
    pixels up to 20 classes, with its count written in it; 20 beyond) plus margins for names."""
    cell = 60 if n_classes <= 20 else 20
    return n_classes * cell + 330, n_classes * cell + 250


@dataclass
class Mistakes:
    """The most confidently wrong predictions, most confident first (ties: lower row first).

    index (k,) int64 rows of the split; images (k, 32, 32, 3) uint8; true and predicted (k,)
    int64 classes; confidence (k,) float64, the probability given to the predicted class.
    """

    index: np.ndarray
    images: np.ndarray
    true: np.ndarray
    predicted: np.ndarray
    confidence: np.ndarray


def confident_mistakes(images: np.ndarray, labels: np.ndarray, probs: np.ndarray,
                       k: int = 24) -> Mistakes:
    """The k images (N, 3072) uint8 whose predicted class (argmax of probs (N, C)) is not the
    label (N,) and gets the highest probability; fewer when there are fewer mistakes."""
    predicted = probs.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    confidence = probs[wrong, predicted[wrong]].astype(np.float64)
    order = np.lexsort((wrong, -confidence))[:k]
    index = wrong[order]
    return Mistakes(index=index.astype(np.int64), images=pixel_images(images[index]),
                    true=np.asarray(labels)[index].astype(np.int64),
                    predicted=predicted[index].astype(np.int64), confidence=confidence[order])


def mistakes_size(n_images: int) -> tuple[int, int]:
    """(width, height) in pixels of mistakes.png: 8 columns of 160 x 190 panels (fewer columns
    for fewer images), at least one row, plus a 50-pixel title."""
    columns = max(1, min(n_images, MISTAKE_COLUMNS))
    rows = max(1, math.ceil(n_images / columns))
    return columns * MISTAKE_CELL[0], rows * MISTAKE_CELL[1] + TITLE_HEIGHT


@dataclass
class SweepTable:
    """The trials of a sweep folder, sorted by trial number.

    keys: the searched config keys, most important first when importances are known, else in
    the order of sweep.yaml's space; number (T,) int64; state (T,) str; values: key -> (T,)
    float64 for a numeric key (NaN where empty) or (T,) str for a categorical one; val_acc
    (T,) float64 (NaN where empty); importances: key -> importance from summary.json.
    """

    keys: tuple[str, ...]
    specs: dict[str, dict]
    number: np.ndarray
    state: np.ndarray
    values: dict[str, np.ndarray]
    val_acc: np.ndarray
    importances: dict[str, float] = field(default_factory=dict)

    @property
    def axes(self) -> tuple[str, ...]:
        """The (at most) two keys sweep.png shows: the two most important."""
        return self.keys[:2]

    def is_numeric(self, key: str) -> bool:
        return self.values[key].dtype == np.float64

    def is_log(self, key: str) -> bool:
        """True for a log_uniform key (or a spec with `log: true`), and for a numeric choice or
        grid of positive values that spans LOG_DECADES decades or more."""
        spec = self.specs.get(key, {})
        if not self.is_numeric(key):
            return False
        if "log_uniform" in spec or spec.get("log") is True:
            return True
        listed = spec.get("choice", spec.get("grid"))
        if isinstance(listed, list) and listed and all(_is_number(v) for v in listed):
            low, high = min(listed), max(listed)
            return low > 0 and math.log10(high / low) >= LOG_DECADES
        return False

    def categories(self, key: str) -> list[str]:
        """The values of a categorical key in the order sweep.yaml lists them (then any others
        in order of appearance)."""
        listed = self.specs.get(key, {}).get("choice", self.specs.get(key, {}).get("grid", []))
        order = [str(v) for v in listed] if isinstance(listed, list) else []
        for value in self.values[key]:
            if value and value not in order:
                order.append(value)
        return order

    @property
    def best_so_far(self) -> np.ndarray:
        """(T,) float64: the highest val accuracy among complete trials up to each trial (in
        number order), NaN before the first complete one. Pruned trials stopped early, so their
        accuracy is not a finished result and does not count, as in optuna's best trial."""
        done = np.where((self.state == "complete") & np.isfinite(self.val_acc), self.val_acc,
                        -np.inf)
        best = np.maximum.accumulate(done) if len(done) else done
        return np.where(np.isfinite(best), best, np.nan)

    @property
    def best_trial(self) -> int | None:
        """Position (not number) of the first complete trial with the top val accuracy."""
        best = self.best_so_far
        if not np.isfinite(best).any():
            return None
        done = np.where((self.state == "complete") & np.isfinite(self.val_acc), self.val_acc,
                        -np.inf)
        return int(np.argmax(done))


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_sweep_folder(path: str | os.PathLike) -> bool:
    """A folder holding a sweep: sweep.yaml or trials.csv."""
    path = Path(path)
    return path.is_dir() and ((path / "sweep.yaml").is_file() or (path / "trials.csv").is_file())


def is_run_folder(path: str | os.PathLike) -> bool:
    """A training run folder: it holds best.npz."""
    path = Path(path)
    return path.is_dir() and (path / "best.npz").is_file()


def sweep_table(folder: str | os.PathLike) -> SweepTable:
    """Read a sweep folder's trials.csv, sweep.yaml (its `space`) and summary.json (its
    `param_importances`, when there); any problem is a DataError naming the file."""
    from ..config import parse_yaml

    folder = Path(folder)
    space: dict = {}
    sweep_file = folder / "sweep.yaml"
    if sweep_file.is_file():
        raw = parse_yaml(_read_text(sweep_file), str(sweep_file))
        space = raw.get("space") if isinstance(raw, dict) else None
        if not isinstance(space, dict):
            raise DataError(f"{sweep_file}: no `space:` mapping of searched keys")
    rows, columns = _read_trials(folder / "trials.csv")
    searched = [c for c in columns if c not in TRIAL_COLUMNS]
    keys = [k for k in space if k in searched] + [k for k in searched if k not in space]
    importances = _importances(folder / "summary.json")
    ranked = sorted(keys, key=lambda k: (-importances.get(k, -math.inf), keys.index(k)))
    rows.sort(key=lambda row: _int(row["number"], folder / "trials.csv"))
    specs = {k: space[k] if isinstance(space.get(k), dict) else {} for k in keys}
    return SweepTable(
        keys=tuple(ranked), specs=specs,
        number=np.array([_int(r["number"], folder / "trials.csv") for r in rows], dtype=np.int64),
        state=np.array([r["state"].strip() for r in rows], dtype=str),
        values={k: _column(rows, k, specs[k]) for k in keys},
        val_acc=_floats([r["best_val_acc"] for r in rows]), importances=importances)


def _read_text(path: Path) -> str:
    """The UTF-8 text of a run's or sweep's file, at most TEXT_CAP bytes (checked first)."""
    try:
        return read_capped(path, TEXT_CAP).decode("utf-8")
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"cannot read {path}: not UTF-8 text (byte {exc.start})") from None


def _read_trials(path: Path) -> tuple[list[dict], list[str]]:
    if not path.is_file():
        raise DataError(f"{path}: not found (the sweep has no trials yet?)")
    reader = csv.DictReader(_read_text(path).splitlines())
    columns = list(reader.fieldnames or [])
    missing = [c for c in ("number", "state", "best_val_acc") if c not in columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    rows = [row for row in reader if any((v or "").strip() for v in row.values())]
    for row in rows:
        if None in row or any(v is None for v in row.values()):
            raise DataError(f"{path}: a row has {len(row)} cells, the header {len(columns)}")
    return rows, columns


def _int(text: str, path: Path) -> int:
    try:
        return int(text)
    except ValueError:
        raise DataError(f"{path}: trial number {text!r} is not an integer") from None


def _floats(cells: list[str]) -> np.ndarray:
    """(T,) float64 of csv cells, NaN where empty or not a number."""
    out = np.full(len(cells), np.nan)
    for i, cell in enumerate(cells):
        try:
            out[i] = float(cell)
        except (TypeError, ValueError):
            pass
    return out


def _column(rows: list[dict], key: str, spec: dict) -> np.ndarray:
    """A searched key's column: float64 when numeric (its spec says so, or every non-empty
    cell is a number), else str."""
    cells = [(row[key] or "").strip() for row in rows]
    listed = spec.get("choice", spec.get("grid"))
    categorical = isinstance(listed, list) and not all(_is_number(v) for v in listed)
    if not categorical:
        numbers = _floats(cells)
        if all(np.isfinite(n) or not c for n, c in zip(numbers, cells, strict=True)):
            return numbers
    return np.array(cells, dtype=str)


def _importances(path: Path) -> dict[str, float]:
    if not path.is_file():
        return {}
    try:
        summary = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    found = summary.get("param_importances") if isinstance(summary, dict) else None
    if not isinstance(found, dict):
        return {}
    return {str(k): float(v) for k, v in found.items() if _is_number(v)}


# ---------------------------------------------------------------------------------------------
# Drawers: arrays in, a PNG of a stated pixel size out.


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
    a dashed line at the best epoch."""
    figure = _figure(CURVES_SIZE)
    loss_ax, acc_ax, lr_ax = figure.subplots(1, 3)
    epochs = table["epoch"]
    marker = "o" if len(epochs) <= 30 else None
    loss_ax.plot(epochs, table["train_loss"], marker=marker, label="train (with L2 penalty)")
    loss_ax.plot(epochs, table["val_loss"], marker=marker, label="val")
    acc_ax.plot(epochs, 100 * table["train_acc"], marker=marker, label="train (running)")
    acc_ax.plot(epochs, 100 * table["val_acc"], marker=marker, label="val")
    lr_ax.plot(epochs, table["lr"], marker=marker, color="tab:green")
    for ax, title, ylabel in ((loss_ax, "loss", "cross-entropy"),
                              (acc_ax, "accuracy", "accuracy (%)"),
                              (lr_ax, "learning rate", "learning rate")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="black", linestyle="--", linewidth=1,
                       label=f"best epoch ({best_epoch})")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
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
    to 20 classes, each row named with its class and support."""
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
    ax.set_xticks(range(n), class_names, rotation=60, ha="right", rotation_mode="anchor",
                  fontsize=font)
    ax.set_yticks(range(n), [f"{name} ({support})" for name, support in
                             zip(class_names, confusion.sum(axis=1), strict=True)], fontsize=font)
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
    if table.is_log(key):
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


# ---------------------------------------------------------------------------------------------
# A run or a sweep folder, end to end.


@dataclass
class RunPictures:
    """Everything the run pictures show, computed before anything is drawn.

    curves: curves_table of the history; best_epoch or None; templates (C, 32, 32, 3) uint8;
    confusion (C, C) int64 counts on `split` (the eval report's); mistakes of that split.
    templates and mistakes are None when the rows are not 32 x 32 RGB images (data.dataset
    features).
    """

    class_names: tuple[str, ...]
    curves: dict[str, np.ndarray]
    best_epoch: int | None
    templates: np.ndarray | None
    split: str
    confusion: np.ndarray
    accuracy: float
    mistakes: Mistakes | None
    source: Path


def run_pictures(path: str | os.PathLike, split: str = "test",
                 root: str | os.PathLike | None = None, progress: bool = False,
                 n_mistakes: int = 24, data=None) -> RunPictures:
    """Build every run picture's content for a run folder (its best.npz, history.jsonl and
    summary.json) or a checkpoint file (its own history and best epoch), on `split` of the
    checked data the checkpoint was trained on (`data` when the caller has it in memory,
    else loaded from `root`, default the config's)."""
    from ..math.metrics import classification_report
    from ..math.preprocess import image_scores
    from ..math.softmax import softmax_probs
    from ..training import evaluate
    from ..training.checkpoint import check_matches, load_checkpoint

    path = Path(path)
    if path.is_dir():
        if not is_run_folder(path):
            raise DataError(f"{path}: neither a run folder (no best.npz) nor a sweep folder "
                            f"(no sweep.yaml or trials.csv)")
        checkpoint_path = path / "best.npz"
    elif path.exists():
        checkpoint_path = path
    else:
        raise DataError(f"not found: {path}")
    checkpoint = load_checkpoint(checkpoint_path)
    history, best_epoch = checkpoint.state.history, checkpoint.state.best_epoch or None
    if path.is_dir():
        history, best_epoch = _folder_history(path, history, best_epoch)
    images_data = (len(checkpoint.preprocessor.mean) == N_PIXELS
                   and checkpoint.config.data.dataset != "features")
    templates = template_images(checkpoint.W, checkpoint.preprocessor) if images_data else None

    if data is None:
        data = evaluate.load_data_for(checkpoint, root, progress)
    check_matches(checkpoint, data, checkpoint_path)
    images, labels = evaluate.split_arrays(checkpoint, data, split)
    if len(labels) == 0:
        raise DataError(f"the {split} split of {checkpoint_path}'s data is empty"
                        + (": try --split val" if split == "test" else ""))
    scores = image_scores(checkpoint.W, checkpoint.preprocessor, images)
    report = classification_report(labels, scores.argmax(axis=1), checkpoint.class_names)
    probs = softmax_probs(scores.astype(np.float64))
    return RunPictures(
        class_names=checkpoint.class_names, curves=curves_table(history), best_epoch=best_epoch,
        templates=templates, split=split, confusion=report.confusion, accuracy=report.accuracy,
        mistakes=confident_mistakes(images, labels, probs, n_mistakes) if images_data else None,
        source=path)


def _folder_history(folder: Path, history: list[dict], best_epoch: int | None
                    ) -> tuple[list[dict], int | None]:
    """The run folder's history.jsonl (the whole run; best.npz's own stops at the best epoch)
    and summary.json's best epoch, when there."""
    history_file = folder / "history.jsonl"
    if history_file.is_file():
        history = []
        for number, line in enumerate(_read_text(history_file).splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise DataError(f"{history_file}: line {number} is not JSON") from None
            if not isinstance(row, dict):
                raise DataError(f"{history_file}: line {number} is not a JSON object")
            history.append(row)
    summary_file = folder / "summary.json"
    if summary_file.is_file():
        try:
            summary = json.loads(_read_text(summary_file))
        except json.JSONDecodeError:
            raise DataError(f"{summary_file}: not valid JSON") from None
        if isinstance(summary, dict) and isinstance(summary.get("best_epoch"), int):
            best_epoch = summary["best_epoch"] or None
    return history, best_epoch


def draw_run_pictures(pictures: RunPictures, out_dir: str | os.PathLike) -> list[Path]:
    """curves.png, templates.png, confusion.png and mistakes.png in out_dir (templates and
    mistakes only for image data)."""
    out_dir = Path(out_dir)
    names = pictures.class_names
    n = int(pictures.confusion.sum())
    written = [draw_curves(pictures.curves, pictures.best_epoch, out_dir / "curves.png")]
    if pictures.templates is not None:
        written.append(draw_templates(pictures.templates, names, out_dir / "templates.png"))
    written.append(draw_confusion(pictures.confusion, names, out_dir / "confusion.png",
                                  title=f"{pictures.split} split: accuracy "
                                        f"{pictures.accuracy:.2%} of {n} images"))
    if pictures.mistakes is not None:
        written.append(draw_mistakes(
            pictures.mistakes, names, out_dir / "mistakes.png",
            title=f"the {len(pictures.mistakes.index)} most confidently wrong of the "
                  f"{pictures.split} split"))
    return written


def default_out_dir(path: str | os.PathLike) -> Path:
    """Where pictures go without --out: a run or sweep folder's `plots` folder; for a
    checkpoint file, `plots-<its name>` beside it. That folder may be shared: a symbolic link
    there raises DataError rather than leading the pictures into the folder it names."""
    path = Path(path)
    out_dir = path / "plots" if path.is_dir() else path.parent / f"plots-{path.stem}"
    if out_dir.is_symlink():
        raise DataError(f"{out_dir} is a symbolic link; refusing to draw into the folder it "
                        "names (remove it, or choose the folder with --out)")
    return out_dir


def plot_run(path: str | os.PathLike, out_dir: str | os.PathLike | None = None,
             split: str = "test", root: str | os.PathLike | None = None,
             progress: bool = False, data=None) -> list[Path]:
    """Write curves.png, templates.png, confusion.png and mistakes.png for a run folder or a
    checkpoint file into out_dir (default: default_out_dir(path)); returns their paths.
    `data`: the checkpoint's data set when the caller already holds it (else loaded)."""
    require_matplotlib()
    pictures = run_pictures(path, split, root, progress, data=data)
    return draw_run_pictures(pictures, default_out_dir(path) if out_dir is None else out_dir)


def plot_sweep(folder: str | os.PathLike, out_dir: str | os.PathLike | None = None
               ) -> list[Path]:
    """Write sweep.png and trials.png for a sweep folder into out_dir (default:
    default_out_dir(folder)); returns their paths."""
    require_matplotlib()
    table = sweep_table(folder)
    out_dir = default_out_dir(folder) if out_dir is None else Path(out_dir)
    return [draw_sweep(table, out_dir / "sweep.png"), draw_trials(table, out_dir / "trials.png")]


def plot_path(path: str | os.PathLike, out_dir: str | os.PathLike | None = None,
              split: str = "test", root: str | os.PathLike | None = None,
              progress: bool = False) -> list[Path]:
    """plot_sweep for a sweep folder, plot_run for anything else (a run folder, a checkpoint)."""
    if is_sweep_folder(path):
        return plot_sweep(path, out_dir)
    return plot_run(path, out_dir, split, root, progress)


def matplotlib_installed() -> bool:
    """Whether matplotlib is installed, found without importing it: a training run asks at
    its start and imports it (about 30 MB) only to draw, after the training rows are freed."""
    try:
        return importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):  # a broken entry in sys.modules
        return False


def plots_wanted(setting: bool | None) -> bool:
    """output.plots: true draws (and needs matplotlib: one SoftmaxClsError line without it),
    false never, null when matplotlib is installed."""
    if setting is None:
        return matplotlib_installed()
    if setting and not matplotlib_installed():
        raise SoftmaxClsError(INSTALL_HINT)
    return setting
