"""Classification metrics: accuracy, per-class precision / recall / F1, the confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..text import shorten


@dataclass
class ClassificationReport:
    """confusion (C, C) int64, rows the true class, columns the predicted one; loss the mean
    cross-entropy of the scores the predictions came from, when known."""

    class_names: tuple[str, ...]
    confusion: np.ndarray
    loss: float | None = None

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.confusion) / max(self.confusion.sum(), 1))

    @property
    def support(self) -> np.ndarray:
        return self.confusion.sum(axis=1)

    @property
    def precision(self) -> np.ndarray:
        return _ratio(np.diag(self.confusion), self.confusion.sum(axis=0))

    @property
    def recall(self) -> np.ndarray:
        return _ratio(np.diag(self.confusion), self.support)

    @property
    def f1(self) -> np.ndarray:
        p, r = self.precision, self.recall
        return _ratio(2 * p * r, p + r)

    def to_dict(self) -> dict:
        return {
            "accuracy": self.accuracy,
            "loss": self.loss,
            "n": int(self.confusion.sum()),
            "per_class": [
                {"class": name, "precision": float(p), "recall": float(r), "f1": float(f),
                 "support": int(s)}
                for name, p, r, f, s in zip(self.class_names, self.precision, self.recall,
                                            self.f1, self.support, strict=True)
            ],
            "confusion": self.confusion.tolist(),
        }


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (a class never predicted)."""
    numerator = np.asarray(numerator, dtype=np.float64)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator),
                     where=np.asarray(denominator) > 0)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, C) int64 counts of (true label, predicted label) pairs."""
    return np.bincount(labels * n_classes + predictions,
                       minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def classification_report(labels: np.ndarray, predictions: np.ndarray,
                          class_names: tuple[str, ...], loss: float | None = None
                          ) -> ClassificationReport:
    return ClassificationReport(tuple(class_names),
                                confusion_matrix(labels, predictions, len(class_names)), loss)


def format_report(report: ClassificationReport) -> str:
    """Accuracy, a per-class table and the confusion matrix as aligned text. A class name
    with a newline or another control character (a checkpoint of an older version's feature
    file) is escaped, as shorten() escapes it, so each row stays one line."""
    names = tuple(shorten(name, limit=len(name)) for name in report.class_names)
    width = max(len(name) for name in names)
    lines = [f"accuracy: {report.accuracy:.4f} ({int(np.trace(report.confusion))} of "
             f"{int(report.confusion.sum())})"]
    if report.loss is not None:
        lines.append(f"loss: {report.loss:.4f} (mean cross-entropy)")
    lines += ["",
             f"{'class':<{width}}  precision  recall      f1  support"]
    for name, p, r, f, s in zip(names, report.precision, report.recall, report.f1,
                                report.support, strict=True):
        lines.append(f"{name:<{width}}  {p:9.4f}  {r:6.4f}  {f:6.4f}  {s:7d}")
    cell = max(len(str(report.confusion.max())), 5)
    short = [name[:cell] for name in names]
    lines += ["", "confusion matrix (rows: true class, columns: predicted class)",
              " " * width + "  " + " ".join(f"{s:>{cell}}" for s in short)]
    for name, row in zip(names, report.confusion, strict=True):
        lines.append(f"{name:<{width}}  " + " ".join(f"{v:>{cell}d}" for v in row))
    return "\n".join(lines)
