"""The library's exception classes, in one place: one hierarchy under :class:`Error`.

Everything the library raises on purpose is an :class:`Error`; anything else escaping it is a bug.
``status`` is the command line's exit status for it: 2 for bad input (an :class:`InputError`, a
``ValueError``, so ``except ValueError`` keeps catching it; :class:`InputTypeError` is also a
``TypeError``; :class:`ImageError` and :class:`FileError` are also ``OSError``s; :class:`DependencyError`, a
missing optional dependency, an ``ImportError``), 2 for a run that
cannot go on from what it was given (:class:`TrainingError`: a foreign or damaged checkpoint, a
directory another live run holds), 1 for a run that failed on its way (:class:`DivergedError`, a
write that failed: :class:`WriteError`). A setting's error names the setting (:class:`SettingError`'s
``field``), so the library says ``batch_size: <message>`` and the command line
``argument --batch-size: <message>``. ``io.torchvision.WeightsMismatch`` (weights that do not fit a
model, an :class:`InputError`) lives with the format it describes.
"""

from __future__ import annotations


class Error(Exception):
    """Every error the library raises on purpose; ``status``: the command line's exit status."""

    status = 2


class InputError(Error, ValueError):
    """Bad input to the library: a value, a file or data it cannot use; the message says which and why."""


class InputTypeError(InputError, TypeError):
    """An argument of the wrong type (also a ``TypeError``); the message names it and what was expected."""


class FileError(InputError, OSError):
    """A file or folder named by the user that is missing or cannot be read (also an ``OSError``)."""


class SettingError(InputError):
    """A bad setting, named by its ``field``: the library says ``batch_size: <message>``, the
    command line ``argument --batch-size: <message>``."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


class DataError(SettingError):
    """Bad data: missing or empty folders, mismatched classes, too few images, unreadable images."""


class ImageError(InputError, OSError):
    """An image file that cannot be opened or decoded (also an ``OSError``); the message names the file."""


class TrainingError(Error):
    """A run that cannot go on from what it was given: a bad or foreign checkpoint, a busy directory."""


class ConfigError(TrainingError, SettingError):
    """A bad setting of a run; ``field`` names it (see :class:`SettingError`)."""


class CheckpointError(TrainingError):
    """No checkpoint of a run can be restored (each one damaged, unreadable or foreign)."""


class BusyError(TrainingError):
    """An output directory that a live run holds; the message names the directory and the process."""


class DivergedError(TrainingError):
    """The loss became NaN or infinite."""

    status = 1


class DependencyError(Error, ImportError):
    """An optional dependency a feature needs is not installed (also an ``ImportError``); the message says
    what to install."""


class WriteError(Error, OSError):
    """A write that failed (a full disk, an I/O error), naming the path; nothing half-written is left."""

    status = 1


__all__ = [
    "BusyError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DependencyError",
    "DivergedError",
    "Error",
    "FileError",
    "ImageError",
    "InputError",
    "InputTypeError",
    "SettingError",
    "TrainingError",
    "WriteError",
]
