"""The settings of a run, one dataclass each, with their checks: the one source of their defaults.

``Config`` decides the result (it is saved with every checkpoint and a resume must match it);
``RunOptions`` only decides how the run goes (workers, checkpoint cadence). Each field's metadata
holds its ``help``, its ``kind`` (how its values are checked, see :data:`KINDS`) and, where the
flag's name differs from the field's, its ``flag``: the command line generates its flags from
these, and reports an error that names a field with that field's flag.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from .. import _checks, arch
from ..errors import ConfigError, DivergedError, TrainingError  # noqa: F401 - importable from here as before

#: The optimizers a run may use (optax's).
OPTIMIZERS = ("sgd", "adamw")

#: kind -> how its values are checked (``_checks.Kind``: parsed from text, type, range, what is expected).
#: The shared kinds are the library's own (``_checks.KINDS``); ``layers`` is ``trainable_layers``.
KINDS = {
    **{
        kind: _checks.KINDS[kind] for kind in ("positive_int", "count", "seed", "non_negative", "below_one", "fraction")
    },
    "layers": _checks.KINDS["trainable_layers"],
    "optimizer": _checks.Kind(f"one of {', '.join(OPTIMIZERS)}", str, lambda v: v in OPTIMIZERS),
}


def _meta(help: str, kind: str | None = None, **more) -> dict:
    return {"help": help, "kind": kind, **more}


def check_value(name: str, kind: str | None, value):
    """``value`` (a numpy scalar as the Python number it holds), or :class:`ConfigError` naming ``name``
    unless ``value`` is of ``kind`` (None: anything)."""
    if kind == "model":
        problem = _checks.name_problem(value, tuple(arch.FAMILY))
    elif kind is not None:
        problem = KINDS[kind].problem(value)
    else:
        return value
    if problem is not None:
        raise ConfigError(name, problem)
    return _checks._plain(value)


@dataclass
class Config:
    """Everything that decides a run's result."""

    model: str = field(default="resnet_tiny", metadata=_meta("model name", "model"))
    weights: str | None = field(
        default=None,
        metadata=_meta(
            "start from these weights instead of random ones: torchvision's or timm's (.pth, .pt, .safetensors) or a "
            "model "
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
    drop_path: float = field(
        default=0.0,
        metadata=_meta(
            "stochastic depth (timm's drop_path_rate): the last block's rate, rising linearly from 0 over the blocks; "
            "drawn from the seed and the step, so a resume stays exact",
            "below_one",
        ),
    )
    drop_rate: float = field(
        default=0.0, metadata=_meta("dropout before the classifier (timm's drop_rate), in training only", "below_one")
    )
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
    stop_on_signal: bool = field(
        default=True,
        metadata=_meta(
            "on SIGTERM or SIGINT, finish the step, checkpoint it and stop (exit status 0 or 130; the same command "
            "resumes there); off: the signals act as they otherwise would"
        ),
    )

    def check(self) -> None:
        _check(self)


def _check(settings) -> None:
    for f in fields(settings):
        value = getattr(settings, f.name)
        if value is not None or f.default is not None:
            setattr(settings, f.name, check_value(f.name, f.metadata["kind"], value))
