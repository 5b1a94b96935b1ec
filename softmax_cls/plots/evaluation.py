"""What the pictures of a training run show, as numbers (numpy only, no matplotlib).

The curves of the history, each class's weights as an image (templates), and, on one split,
the confusion counts and the most confidently wrong images, both from the class scores the
split was evaluated with. A finished training run hands over its history and the scores of
its final evaluation from memory (pictures_of_training); softmax-plot reads a run folder or a
checkpoint from disk and scores the split itself (saved_run_pictures).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import Config
from ..errors import DataError
from ..fsutil import read_text_file
from ..math.metrics import confusion_matrix
from ..math.preprocess import Preprocessor, image_scores
from ..math.softmax import softmax_probs
from ..training.evaluate import ScoredSplit
from ..training.runs import RunResult

IMAGE_SIDE = 32
N_PIXELS = 3 * IMAGE_SIDE * IMAGE_SIDE  # a CIFAR row: the R, G and B planes, each row-major
CONSTANT_TEMPLATE_GREY = 128  # a template with max == min has no contrast to stretch
# The most bytes read of a run's history.jsonl or summary.json: a history row is about 200
# bytes, so this is some 300,000 epochs.
TEXT_CAP = 64 << 20
# grad_max: the rows of an optim.solver lbfgs run, one per iteration
HISTORY_KEYS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "grad_max")
N_MISTAKES = 24


def pixel_images(rows: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) images from rows (N, 3072): 3 planes R, G, B of 32 x 32, row-major.

    Keeps the dtype; the result is a view when it can be.
    """
    return rows.reshape(len(rows), 3, IMAGE_SIDE, IMAGE_SIDE).transpose(0, 2, 3, 1)


def template_images(W: np.ndarray, preprocessor: Preprocessor) -> np.ndarray:
    """(C, 32, 32, 3) uint8: each class's weights as an image in raw pixel space.

    W (C, 3073 or 3072) acts on preprocessed features x = (u - mean) * scale. On raw pixels u
    the weight of pixel j is W[:, j] * scale[j] (Preprocessor.fold), computed in float64. Each
    template is then stretched on its own, over all three colour planes at once so its hues
    are kept: its minimum becomes 0 and its maximum 255 (rounded to the nearest integer). A
    constant template becomes mid-grey (128) everywhere.
    """
    if W.ndim != 2 or W.shape[1] < N_PIXELS or preprocessor.scale.shape != (N_PIXELS,):
        raise DataError(f"templates need {N_PIXELS} pixel columns of W, got W of shape "
                        f"{W.shape}")
    W = W[:, : preprocessor.n_features].astype(np.float64)
    raw = preprocessor.fold(W)[:, :N_PIXELS]  # (C, 3072): pixel weights on raw pixels
    low = raw.min(axis=1, keepdims=True)
    span = raw.max(axis=1, keepdims=True) - low
    flat = np.full(raw.shape, CONSTANT_TEMPLATE_GREY, dtype=np.uint8)
    varying = span[:, 0] > 0
    flat[varying] = np.rint((raw[varying] - low[varying]) / span[varying] * 255).astype(np.uint8)
    return np.ascontiguousarray(pixel_images(flat))


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


@dataclass
class RunPictures:
    """Everything the run pictures show, computed before anything is drawn.

    curves: curves_table of the history; best_epoch or None; templates (C, 32, 32, 3) uint8;
    confusion (C, C) int64 counts on `split` and its accuracy; mistakes of that split.
    templates and mistakes are None when the rows are not 32 x 32 RGB images (data.dataset
    features); split, confusion, accuracy and mistakes are None when no split was scored
    (a run without test and validation rows).
    """

    class_names: tuple[str, ...]
    curves: dict[str, np.ndarray]
    best_epoch: int | None
    templates: np.ndarray | None
    split: str | None
    confusion: np.ndarray | None
    accuracy: float | None
    mistakes: Mistakes | None


def run_pictures(config: Config, pre: Preprocessor, class_names: tuple[str, ...],
                 history: list[dict], best_epoch: int | None, W: np.ndarray,
                 scored: ScoredSplit | None, n_mistakes: int = N_MISTAKES) -> RunPictures:
    """The pictures' content of a run: its config, preprocessing, class names, history rows,
    best epoch (None: unknown), model weights W (D, C) float32 and one scored split."""
    images_data = pre.n_raw == N_PIXELS and config.data.dataset != "features"
    confusion = accuracy = mistakes = None
    if scored is not None:
        predicted = scored.scores.argmax(axis=1)
        confusion = confusion_matrix(scored.labels, predicted, len(class_names))
        accuracy = float(np.mean(predicted == scored.labels))
        if images_data:
            probs = softmax_probs(scored.scores.astype(np.float64))
            mistakes = confident_mistakes(scored.images, scored.labels, probs, n_mistakes)
    return RunPictures(
        class_names=class_names, curves=curves_table(history), best_epoch=best_epoch,
        templates=template_images(W, pre) if images_data else None,
        split=None if scored is None else scored.name, confusion=confusion, accuracy=accuracy,
        mistakes=mistakes)


def pictures_of_training(result: RunResult) -> RunPictures:
    """The pictures' content of a run that just finished, from what it holds in memory: its
    history and the scores of its final evaluation (the test split, or val without one)."""
    state = result.state
    return run_pictures(result.config, result.pre, result.class_names, state.history,
                        state.best_epoch or None, state.best_W, result.scored)


def saved_run_pictures(path: str | os.PathLike, split: str = "test",
                       root: str | os.PathLike | None = None, progress: bool = False,
                       n_mistakes: int = N_MISTAKES) -> RunPictures:
    """The pictures' content of a run folder (its best.npz, history.jsonl and summary.json)
    or a checkpoint file (its own history and best epoch), with `split` of the checked data
    the checkpoint was trained on (loaded from `root`, default the config's) scored now."""
    from ..training import evaluate
    from ..training.checkpoint import check_matches, load_checkpoint

    path = Path(path)
    if path.is_dir():
        if not (path / "best.npz").is_file():
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
    data = evaluate.load_data_for(checkpoint, root, progress)
    check_matches(checkpoint, data, checkpoint_path)
    images, labels = evaluate.split_arrays(checkpoint, data, split)
    if len(labels) == 0:
        raise DataError(f"the {split} split of {checkpoint_path}'s data is empty"
                        + (": try --split val" if split == "test" else ""))
    scores = image_scores(checkpoint.W, checkpoint.preprocessor, images)
    return run_pictures(checkpoint.config, checkpoint.preprocessor, checkpoint.class_names,
                        history, best_epoch, checkpoint.W,
                        ScoredSplit(split, images, labels, scores), n_mistakes)


def _folder_history(folder: Path, history: list[dict], best_epoch: int | None
                    ) -> tuple[list[dict], int | None]:
    """The run folder's history.jsonl (the whole run; best.npz's own stops at the best epoch)
    and summary.json's best epoch, when there."""
    history_file = folder / "history.jsonl"
    if history_file.is_file():
        history = []
        for number, line in enumerate(read_text_file(history_file, TEXT_CAP).splitlines(), 1):
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
            summary = json.loads(read_text_file(summary_file, TEXT_CAP))
        except json.JSONDecodeError:
            raise DataError(f"{summary_file}: not valid JSON") from None
        if isinstance(summary, dict) and isinstance(summary.get("best_epoch"), int):
            best_epoch = summary["best_epoch"] or None
    return history, best_epoch


