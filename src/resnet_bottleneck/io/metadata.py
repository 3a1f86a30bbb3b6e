"""What a model file says about using it: the metadata of our ``.safetensors`` files.

A flat ``str -> str`` map; values that are not names are JSON. Written by ``convert`` (``format``,
``model``, ``num_classes``) and, for a trained model, by ``train``/``export``, which add what
``predict`` and ``evaluate`` need to use it as the run did: ``classes`` (a JSON list),
``image_size``, ``mean`` and ``std`` (JSON lists, per channel, on the [0, 1] scale), ``dtype``
(the compute dtype), ``batch_size``, ``split`` (``{"data", "test_fraction", "seed"}``: how the
run held out its test images; ``data`` null for the digits) and ``config`` (the run's settings).
``crop_pct`` (a JSON number in (0, 1]) and ``interpolation`` (``bilinear`` or ``bicubic``) say how the
evaluation transform resizes (shorter side to ``floor(image_size / crop_pct)``, then a centre crop);
``convert`` records the model's data config (image size, mean, std, crop_pct, interpolation).
Files without these (torchvision's, older files) get torchvision's ImageNet preprocessing (224,
ImageNet's mean and std, ``crop_pct`` 0.875, bilinear).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

from .. import _checks
from ..data.transforms import CROP_FRACTION, IMAGENET_MEAN, IMAGENET_STD, check_crop_pct, check_interpolation
from ..errors import InputError

#: The evaluation size of torchvision's ImageNet weights: what a file that does not say is used at.
DEFAULT_IMAGE_SIZE = 224
#: torchvision's evaluation resize: what a file that does not record ``crop_pct``/``interpolation`` gets.
DEFAULT_CROP_PCT = CROP_FRACTION
DEFAULT_INTERPOLATION = "bilinear"


def _json(metadata: Mapping[str, str], key: str, source: str, check, expected: str):
    try:
        value = json.loads(metadata[key])
    except (TypeError, json.JSONDecodeError):
        value = None
    if not check(value):
        raise InputError(f"{source}'s metadata {key!r} must be {expected}; got {str(metadata[key])[:60]!r}")
    return value


def _channels(value) -> bool:
    return isinstance(value, list) and len(value) == 3 and all(_checks.is_number(v) and math.isfinite(v) for v in value)


def preprocessing(metadata: Mapping[str, str], source: str = "the file") -> tuple[int, tuple, tuple]:
    """``(image_size, mean, std)`` the model was trained with; 224 and ImageNet's where the file does not say.

    Raises:
      InputError: a value that is there but malformed, naming ``source`` and the key.
    """
    size = DEFAULT_IMAGE_SIZE
    if "image_size" in metadata:
        size = _json(
            metadata,
            "image_size",
            source,
            _checks.KINDS["positive_int"].valid,
            _checks.KINDS["positive_int"].expected,
        )
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if "mean" in metadata:
        mean = tuple(_json(metadata, "mean", source, _channels, "a JSON list of 3 numbers"))
    if "std" in metadata:
        std = tuple(
            _json(metadata, "std", source, lambda v: _channels(v) and min(v) > 0, "a JSON list of 3 positive numbers")
        )
    return size, mean, std


def _valid(check, value) -> bool:
    try:
        check(value)
    except (TypeError, ValueError):
        return False
    return True


def eval_crop(metadata: Mapping[str, str], source: str = "the file") -> tuple[float, str]:
    """``(crop_pct, interpolation)`` of the model's evaluation transform; torchvision's (0.875, bilinear)
    where the file does not say (files written before these keys).

    Raises:
      InputError: a value that is there but malformed, naming ``source`` and the key.
    """
    crop_pct, interpolation = DEFAULT_CROP_PCT, DEFAULT_INTERPOLATION
    if "crop_pct" in metadata:
        crop_pct = float(
            _json(metadata, "crop_pct", source, lambda v: _valid(check_crop_pct, v), "a JSON number in (0, 1]")
        )
    if "interpolation" in metadata:
        interpolation = metadata["interpolation"]
        if not _valid(check_interpolation, interpolation):
            raise InputError(
                f"{source}'s metadata 'interpolation' must be 'bilinear' or 'bicubic'; got {str(interpolation)[:60]!r}"
            )
    return crop_pct, interpolation


def describe_preprocessing(config: Mapping) -> dict[str, str]:
    """A data config (:func:`resnet_bottleneck.arch.data_configs.data_config`'s) as metadata:
    ``image_size``, ``mean``, ``std``, ``crop_pct`` and ``interpolation``."""
    size = config["input_size"]
    if config.get("crop_mode", "center") != "center":
        raise InputError(f"the data config's crop_mode must be 'center'; got {config['crop_mode']!r}")
    if size[1] != size[2]:
        raise InputError(f"the data config's input_size must be square; got {tuple(size)}")
    return {
        "image_size": str(int(size[1])),
        "mean": json.dumps([float(m) for m in config["mean"]]),
        "std": json.dumps([float(s) for s in config["std"]]),
        "crop_pct": json.dumps(check_crop_pct(config["crop_pct"], "the data config's crop_pct")),
        "interpolation": check_interpolation(config["interpolation"], "the data config's interpolation"),
    }


#: Whose preprocessing foreign weights (torchvision's or timm's files) are read with.
WEIGHTS_PREPROCESSING = ("auto", "timm", "torchvision")


def weights_preprocessing(name: str, source: str = "auto") -> dict[str, str]:
    """The preprocessing metadata of foreign weights of model ``name`` (what ``convert`` records and
    ``predict``/``evaluate``/``export`` assume for such a file): a row of
    :mod:`resnet_bottleneck.arch.data_configs` as metadata (none for a name the table lacks).

    ``source``: ``'auto'``, torchvision's for the names torchvision has (a torchvision ``resnet50.pth`` and
    timm's hold the same keys; timm's row of ``resnet50`` is its ``a1_in1k`` weights'), the name's own row
    for the others; ``'timm'``, the name's row; ``'torchvision'``, torchvision's.
    """
    from ..arch.data_configs import DATA_CONFIGS, TORCHVISION_DATA_CONFIG, TORCHVISION_NAMES

    _checks.one_of("preprocessing", source, WEIGHTS_PREPROCESSING)
    if source == "torchvision" or (source == "auto" and name in TORCHVISION_NAMES):
        return describe_preprocessing(TORCHVISION_DATA_CONFIG)
    if source == "timm" and name not in DATA_CONFIGS:
        raise InputError(f"timm has no data config of {name!r}")
    return describe_preprocessing(DATA_CONFIGS[name]) if name in DATA_CONFIGS else {}


def recorded_batch_size(metadata: Mapping[str, str], source: str = "the file", default: int = 64) -> int:
    """The run's batch size (``batch_size``), or ``default`` where the file does not record one.

    Raises:
      InputError: a value that is there but not a positive integer, naming ``source`` and the key.
    """
    if "batch_size" not in metadata:
        return default
    kind = _checks.KINDS["positive_int"]
    return _json(metadata, "batch_size", source, kind.valid, kind.expected)


def held_out(metadata: Mapping[str, str], source: str = "the file") -> dict | None:
    """The run's held-out split (``{"data": path or None, "test_fraction", "seed"}``), or None if not recorded."""
    if "split" not in metadata:
        return None
    return _json(
        metadata,
        "split",
        source,
        lambda v: isinstance(v, dict) and {"data", "test_fraction", "seed"} <= set(v),
        'a JSON object with "data", "test_fraction" and "seed"',
    )


def describe_run(
    *,
    model: str,
    classes,
    image_size: int,
    mean,
    std,
    dtype: str,
    batch_size: int,
    split: dict,
    config: dict,
    step: int,
    test_accuracy: float | None,
    crop_pct: float = DEFAULT_CROP_PCT,
    interpolation: str = DEFAULT_INTERPOLATION,
) -> dict[str, str]:
    """The metadata of a trained model (see the module's docstring), ready for ``save_variables``."""
    from .safetensors import CHECKPOINT_FORMAT

    return {
        "format": CHECKPOINT_FORMAT,
        "model": model,
        "num_classes": str(len(classes)),
        "classes": json.dumps(list(classes)),
        "image_size": str(image_size),
        "mean": json.dumps([float(m) for m in mean]),
        "std": json.dumps([float(s) for s in std]),
        "crop_pct": json.dumps(check_crop_pct(crop_pct)),
        "interpolation": check_interpolation(interpolation),
        "dtype": dtype,
        "batch_size": str(batch_size),
        "split": json.dumps(split),
        "config": json.dumps(config),
        "step": str(step),
        **({"test_accuracy": repr(float(test_accuracy))} if test_accuracy is not None else {}),
    }
