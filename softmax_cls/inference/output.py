"""What softmax-predict prints: an aligned table, or one JSON object per line (JSON lines)."""

from __future__ import annotations

import json

from ..text import shorten
from .files import Predictions

PROBABILITY_DIGITS = 4


def display_name(name: object) -> str:
    """An input's name as its table row shows it: whole, but escaped as shorten() escapes
    it when it holds a newline, a terminal escape sequence or another control character."""
    return shorten(name, limit=len(str(name)))


class Table:
    """Rows `name  class p  class p ...`, the columns aligned across every batch: names
    and class names (display_name both) are padded to `name_width` and to the longest class
    name."""

    def __init__(self, class_names: tuple[str, ...], k: int, name_width: int):
        self.class_names, self.k = tuple(map(display_name, class_names)), k
        self.name_width = max(name_width, len("input"))
        self.class_width = max(map(len, self.class_names))
        self.cell_width = self.class_width + 1 + PROBABILITY_DIGITS + 2

    def header(self) -> str:
        cells = [f"{f'top {rank}':<{self.cell_width}}" for rank in range(1, self.k + 1)]
        return f"{'input':<{self.name_width}}  {'  '.join(cells)}".rstrip()

    def lines(self, batch: Predictions) -> list[str]:
        lines = []
        for name, classes, probabilities in zip(batch.names, batch.classes,
                                                batch.probabilities, strict=True):
            cells = [f"{self.class_names[c]:<{self.class_width}} {p:.{PROBABILITY_DIGITS}f}"
                     for c, p in zip(classes, probabilities, strict=True)]
            lines.append(f"{display_name(name):<{self.name_width}}  {'  '.join(cells)}"
                         .rstrip())
        return lines


def json_lines(batch: Predictions, class_names: tuple[str, ...]) -> list[str]:
    """One JSON object per input: {"input": name, "top_k": [{"class", "index",
    "probability"}, ...]}, most probable first."""
    return [json.dumps({"input": name, "top_k": [
        {"class": class_names[c], "index": int(c), "probability": float(p)}
        for c, p in zip(classes, probabilities, strict=True)]})
        for name, classes, probabilities in zip(batch.names, batch.classes,
                                                batch.probabilities, strict=True)]
