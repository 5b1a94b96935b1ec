"""Errors a user can cause. The CLI turns each into one line on stderr and an exit code;
softmax_cls.text.shorten puts a value of any length or content into that one line."""


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


class InputError(SoftmaxClsError):
    """An image, array or file handed to a trained model that it cannot take as it is
    (a wrong layout, size or dtype): refused rather than given silently wrong classes."""


class UnreadableImage(DataError):
    """One image file that cannot be read: not an image, truncated, or too many pixels."""
