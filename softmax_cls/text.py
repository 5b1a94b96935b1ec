"""Text for messages: a user's value, a file or member name, a URL is never quoted whole, and
never breaks its line."""

from __future__ import annotations

import sys


def shorten(value: object, limit: int = 160, *, quote: bool = False) -> str:
    """`value` as one line of a message shows it: str() of it (a numpy string as its plain
    text), in quotes with control characters escaped as repr() writes them when `quote` or
    when the part shown holds any, and cut to its first `limit` characters followed by
    `... (N characters)`, N its full length, when it is longer."""
    text = str(value)
    body = text[:limit]
    if quote or not body.isprintable():
        body = repr(body)
    return body if len(text) <= limit else f"{body}... ({len(text)} characters)"


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """`count noun` with the noun in the plural unless count is 1: "1 epoch", "3 epochs"
    (`plural` where adding s is wrong: counted(n, "class", "classes"))."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


def print_warning(line: str) -> None:
    """A warning the user should see (L-BFGS not converged, files skipped) as one line on
    stderr: `warning: ` and the line, flushed at once."""
    print(f"warning: {line}", file=sys.stderr, flush=True)
