"""The library's exception classes, in one place.

Bad input is an :class:`InputError`, a ``ValueError``: ``except ValueError`` keeps catching it.
A setting's error names the setting (:class:`SettingError`'s ``field``), so the library says
``batch_size: <message>`` and the command line ``argument --batch-size: <message>``. A run that
cannot go on is a :class:`TrainingError`. ``io.torchvision.WeightsMismatch`` (weights that do not
fit a model, an :class:`InputError`) lives with the format it describes.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input to the library: a value, a file or data it cannot use; the message says which and why."""


class SettingError(InputError):
    """A bad setting, named by its ``field``: the library says ``batch_size: <message>``, the
    command line ``argument --batch-size: <message>``."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


class DataError(SettingError):
    """Bad data: missing or empty folders, mismatched classes, too few images, unreadable images."""


class ImageError(OSError):
    """An image file that cannot be opened or decoded; the message names the file."""


class TrainingError(Exception):
    """A run that cannot go on: bad data, bad settings, a bad checkpoint."""


class ConfigError(TrainingError, SettingError):
    """A bad setting of a run; ``field`` names it (see :class:`SettingError`)."""


class DivergedError(TrainingError):
    """The loss became NaN or infinite."""


__all__ = ["ConfigError", "DataError", "DivergedError", "ImageError", "InputError", "SettingError", "TrainingError"]
