"""Errors a user can cause. The CLI turns each into one line on stderr and an exit code;
softmax_cls.text.shorten puts a value of any length or content into that one line."""

from __future__ import annotations


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


class DeviceOutOfMemory(SoftmaxClsError):
    """The torch engine's device ran out of memory `during` some work. `remedies` are
    (what to do, config key, value) triples, e.g. ("lower the batch size",
    "optim.batch_size", "N") or ("run on the CPU", "device", "cpu"); each entry point spells
    the key its own way (the console scripts as their options, the estimator as its
    parameters: `spelled`). The default message spells them as config keys."""

    def __init__(self, device: str, during: str, remedies: tuple = (), spell=None):
        self.device, self.during, self.remedies = str(device), during, tuple(remedies)
        spell = spell or (lambda key, value: f"{key}: {value}")
        parts = []
        for what, key, value in self.remedies:
            setting = spell(key, value)
            parts.append(f"{what} ({setting})" if setting else what)
        tail = f": {', or '.join(parts)}" if parts else ""
        super().__init__(f"out of memory on {self.device} {during}{tail}")

    def spelled(self, spell, prefix: str = "") -> DeviceOutOfMemory:
        """The same error, its settings spelt by spell(key, value) -> text or None (then
        named by the words alone), its message after `prefix`."""
        error = DeviceOutOfMemory(self.device, self.during, self.remedies, spell)
        error.args = (prefix + str(error),)
        return error
