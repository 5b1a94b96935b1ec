"""Errors a user can cause. The CLI turns each into one line on stderr and an exit code;
`shown` puts a value of any length or content into that one line."""


class SoftmaxClsError(Exception):
    """A problem with the user's input or environment (not a bug); exit code 1."""

    exit_code = 1


class ConfigError(SoftmaxClsError):
    """A bad config file, key, value or override; exit code 2 (a usage error)."""

    exit_code = 2


class DataError(SoftmaxClsError):
    """Missing, corrupt or unverifiable data: archives, batch files, checkpoints."""


class DownloadError(DataError):
    """A download that failed after its retries, or that cannot start."""


def shown(value: object, limit: int = 160, *, quote: bool = False) -> str:
    """`value` as one line of an error message shows it: str() of it (a numpy string as its
    plain text), in quotes with control characters escaped as repr() writes them when
    `quote` or when it holds any, and cut to `limit` characters, saying how long it was."""
    text = str(value)
    body = text[:limit]
    if quote or not body.isprintable():
        body = repr(body)
    return body if len(text) <= limit else f"{body}...({len(text)} characters)"
