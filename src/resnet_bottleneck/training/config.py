"""The settings of a run, one dataclass each, with their checks: the one source of their defaults.

``Config`` decides the result (it is saved with every checkpoint and a resume must match it);
``RunOptions`` only decides how the run goes (workers, checkpoint cadence). Each field's metadata
holds its ``help``, its ``kind`` (how its values are checked, see :data:`KINDS`) and, where the
flag's name differs from the field's, its ``flag``: the command line generates its flags from
these, and reports an error that names a field with that field's flag.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from ..data.folder import SettingError


class TrainingError(Exception):
    """A run that cannot go on: bad data, bad settings, a bad checkpoint."""


class ConfigError(TrainingError, SettingError):
    """A bad setting; ``field`` names it (see :class:`SettingError`)."""


class DivergedError(TrainingError):
    """The loss became NaN or infinite."""


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


#: The optimizers a run may use (optax's).
OPTIMIZERS = ("sgd", "adamw")

#: kind -> (the type a value is parsed to, whether a value is accepted, what is expected).
KINDS = {
    "positive_int": (int, lambda v: _is_int(v) and v > 0, "a positive integer"),
    "count": (int, lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "seed": (int, lambda v: _is_int(v) and 0 <= v < 2**32, "an integer in [0, 2**32)"),
    "non_negative": (float, lambda v: _is_number(v) and math.isfinite(v) and v >= 0, "a finite number >= 0"),
    "below_one": (float, lambda v: _is_number(v) and 0 <= v < 1, "in [0, 1)"),
    "fraction": (float, lambda v: _is_number(v) and 0 < v < 1, "in (0, 1)"),
    "layers": (
        int,
        lambda v: _is_int(v) and 0 <= v <= 5,
        "an integer from 0 to 5 (how many of layer4, layer3, layer2, layer1, conv1 learn)",
    ),
    "optimizer": (str, lambda v: v in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
}


def _meta(help: str, kind: str | None = None, **more) -> dict:
    return {"help": help, "kind": kind, **more}


def check_value(name: str, kind: str | None, value) -> None:
    """Raises :class:`ConfigError` naming ``name`` unless ``value`` is of ``kind`` (None: anything)."""
    if kind == "model":
        from ..models import CONFIGS

        if value not in CONFIGS:
            raise ConfigError(name, f"must be one of {', '.join(CONFIGS)}; got {value!r}")
    elif kind is not None and not KINDS[kind][1](value):
        raise ConfigError(name, f"must be {KINDS[kind][2]}; got {value!r}")


@dataclass
class Config:
    """Everything that decides a run's result."""

    model: str = field(default="resnet_tiny", metadata=_meta("model name", "model"))
    weights: str | None = field(
        default=None,
        metadata=_meta(
            "start from these weights instead of random ones: torchvision's (.pth, .pt, .safetensors) or a model "
            "exported from a run (.safetensors); every backbone tensor and BatchNorm statistic is taken, the "
            "classifier re-initialised if the class count differs"
        ),
    )
    data: str | None = field(
        default=None,
        metadata=_meta(
            "ImageFolder root: ROOT/train and ROOT/val (ImageNet's layout), or ROOT/<class>/<image> with a held-out "
            "share; default: scikit-learn's digits"
        ),
    )
    image_size: int = field(
        default=32, metadata=_meta("training crops and evaluation images are this square", "positive_int")
    )
    epochs: int = field(default=15, metadata=_meta("epochs; the learning-rate schedule spans them all", "positive_int"))
    batch_size: int = field(default=64, metadata=_meta("global batch size, over every device and host", "positive_int"))
    optimizer: str = field(
        default="sgd",
        metadata=_meta(
            "sgd (with --momentum, --nesterov) or adamw (decoupled weight decay; use a smaller --lr, e.g. 0.001)",
            "optimizer",
        ),
    )
    learning_rate: float = field(default=0.1, metadata=_meta("peak learning rate", "non_negative", flag="lr"))
    momentum: float = field(default=0.9, metadata=_meta("SGD momentum", "non_negative"))
    nesterov: bool = field(default=True, metadata=_meta("Nesterov's momentum"))
    weight_decay: float = field(default=5e-4, metadata=_meta("on conv and dense kernels only", "non_negative"))
    trainable_layers: int = field(
        default=5,
        metadata=_meta(
            "how many of layer4, layer3, layer2, layer1, conv1 (with bn1) learn, counted from layer4 (torchvision's "
            "meaning): the others get no gradient and no update, bit for bit; their BatchNorm statistics too only "
            "with --freeze-bn",
            "layers",
        ),
    )
    freeze_bn: bool = field(
        default=False,
        metadata=_meta(
            "BatchNorm in eval mode while training: normalise with the running statistics and never update them "
            "(the usual choice for fine-tuning at small batch sizes); the scales and biases still learn"
        ),
    )
    warmup_epochs: float = field(default=1.0, metadata=_meta("linear warmup before the cosine decay", "non_negative"))
    label_smoothing: float = field(default=0.1, metadata=_meta("label smoothing", "below_one"))
    augment: bool = field(
        default=True,
        metadata=_meta("random resized crops and flips of image-folder training images (digits are never augmented)"),
    )
    bf16: bool = field(default=False, metadata=_meta("compute in bfloat16 (float32 parameters)"))
    seed: int = field(default=0, metadata=_meta("seeds the weights, the data order and the augmentation", "seed"))
    test_fraction: float = field(
        default=0.2, metadata=_meta("held-out share of a flat folder or of digits", "fraction")
    )

    def check(self) -> None:
        """Raises :class:`ConfigError` naming the first bad field."""
        _check(self)


@dataclass
class RunOptions:
    """How a run goes, never what it computes: a resume may change these."""

    workers: int | None = field(
        default=None,
        metadata=_meta(
            "processes decoding and augmenting images (0: in this process, on a thread); default: the machine's cores "
            "for image folders when training on an accelerator, 0 on the CPU (they would take the step's cores) and "
            "for in-memory digits",
            "count",
        ),
    )
    checkpoint_every: int = field(default=50, metadata=_meta("steps between checkpoints", "positive_int"))
    keep: int = field(default=3, metadata=_meta("checkpoints kept", "positive_int"))
    log_every: int = field(
        default=10,
        metadata=_meta(
            "steps between reads of the loss (the NaN check lags by at most this, never past a checkpoint)",
            "positive_int",
        ),
    )

    def check(self) -> None:
        _check(self)


def _check(settings) -> None:
    for f in fields(settings):
        value = getattr(settings, f.name)
        if value is not None or f.default is not None:
            check_value(f.name, f.metadata["kind"], value)
