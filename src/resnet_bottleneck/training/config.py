"""The settings of a run, one dataclass each, with their checks: the one source of their defaults.

``Config`` decides the result (it is saved with every checkpoint and a resume must match it);
``RunOptions`` only decides how the run goes (workers, checkpoint cadence). The command line
generates its flags from these fields (``help`` and, where it differs, ``flag`` in each field's
metadata) and maps the ``field`` that an error names to that flag.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from .. import _checks
from ..data.folder import SettingError


class TrainingError(Exception):
    """A run that cannot go on: bad data, bad settings, a bad checkpoint."""


class ConfigError(TrainingError, SettingError):
    """A bad setting; ``field`` names it (see :class:`SettingError`)."""


class DivergedError(TrainingError):
    """The loss became NaN or infinite."""


def _help(text: str, **more) -> dict:
    return {"help": text, **more}


@dataclass
class Config:
    """Everything that decides a run's result."""

    model: str = field(default="resnet_tiny", metadata=_help("model name"))
    data: str | None = field(default=None, metadata=_help(
        "ImageFolder root: ROOT/train and ROOT/val (ImageNet's layout), or ROOT/<class>/<image> with a held-out "
        "share; default: scikit-learn's digits"))
    image_size: int = field(default=32, metadata=_help("training crops and evaluation images are this square"))
    epochs: int = field(default=15, metadata=_help("epochs; the learning-rate schedule spans them all"))
    batch_size: int = field(default=64, metadata=_help("global batch size, over every device and host"))
    learning_rate: float = field(default=0.1, metadata=_help("peak learning rate", flag="lr"))
    momentum: float = field(default=0.9, metadata=_help("SGD momentum"))
    nesterov: bool = field(default=True, metadata=_help("Nesterov's momentum"))
    weight_decay: float = field(default=5e-4, metadata=_help("on conv and dense kernels only"))
    warmup_epochs: float = field(default=1.0, metadata=_help("linear warmup before the cosine decay"))
    label_smoothing: float = field(default=0.1, metadata=_help("label smoothing, in [0, 1)"))
    augment: bool = field(default=True, metadata=_help(
        "random resized crops and flips of image-folder training images (digits are never augmented)"))
    bf16: bool = field(default=False, metadata=_help("compute in bfloat16 (float32 parameters)"))
    seed: int = field(default=0, metadata=_help("seeds the weights, the data order and the augmentation"))
    test_fraction: float = field(default=0.2, metadata=_help("held-out share of a flat folder or of digits"))

    def check(self) -> None:
        """Raises :class:`ConfigError` naming the first bad field."""
        _check_fields(self, ints=("image_size", "epochs", "batch_size"),
                      numbers=("learning_rate", "weight_decay", "warmup_epochs", "momentum"))
        try:
            _checks.seed(self.seed)
        except (TypeError, ValueError) as err:
            raise ConfigError("seed", str(err).replace("seed", "{field}", 1)) from None
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError("label_smoothing", f"{{field}} must be in [0, 1); got {self.label_smoothing}")
        if not 0 < self.test_fraction < 1:
            raise ConfigError("test_fraction", f"{{field}} must be in (0, 1); got {self.test_fraction}")
        from ..models import CONFIGS

        if self.model not in CONFIGS:
            raise ConfigError("model", f"{{field}} must be one of {', '.join(sorted(CONFIGS))}; got {self.model!r}")


@dataclass
class RunOptions:
    """How a run goes, never what it computes: a resume may change these."""

    workers: int | None = field(default=None, metadata=_help(
        "processes decoding and augmenting images (0: in this process, on a thread); default: the machine's cores "
        "for image folders, 0 for in-memory digits"))
    checkpoint_every: int = field(default=50, metadata=_help("steps between checkpoints"))
    keep: int = field(default=3, metadata=_help("checkpoints kept"))
    log_every: int = field(default=10, metadata=_help(
        "steps between reads of the loss (the NaN check lags by at most this, never past a checkpoint)"))

    def check(self) -> None:
        _check_fields(self, ints=("checkpoint_every", "keep", "log_every"), numbers=())
        if self.workers is not None and not (isinstance(self.workers, int) and self.workers >= 0):
            raise ConfigError("workers", f"{{field}} must be an integer >= 0; got {self.workers!r}")


def _check_fields(settings, ints, numbers) -> None:
    for name in ints:
        try:
            _checks.positive_int(name, getattr(settings, name))
        except (TypeError, ValueError) as err:
            raise ConfigError(name, str(err).replace(name, "{field}", 1)) from None
    for name in numbers:
        value = getattr(settings, name)
        if not (isinstance(value, (int, float)) and value >= 0 and math.isfinite(value)):
            raise ConfigError(name, f"{{field}} must be a finite number >= 0; got {value}")


def field_names(cls) -> list[str]:
    return [f.name for f in fields(cls)]
