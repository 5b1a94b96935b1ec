"""Text for messages: a user's value, a file or member name, a URL is never quoted whole."""

from __future__ import annotations


def shorten(text: str, limit: int) -> str:
    """`text` itself when it has at most `limit` characters, else its first `limit` characters
    followed by `... (N characters)`, N its full length."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"
