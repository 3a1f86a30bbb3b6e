"""Weights in and out, one module per format: :mod:`.safetensors` (ours), :mod:`.torchvision`, :mod:`.timm`,
:mod:`.onnx` (out, and ONNX Runtime to run it); the names of a model's classes (:mod:`.classes`)
and how to preprocess its images (:mod:`.metadata`); :func:`load_model_file` for a file of any of
them (a run directory too: :func:`resnet_bottleneck.load_model`); and :func:`atomic_write`, with
which everything here writes: a file appears whole or not at all.

File formats only: nothing here imports training or inference."""

from __future__ import annotations

import os
from pathlib import Path

import jax.numpy as jnp

from .._files import atomic_write  # noqa: F401 - public here
from ..errors import InputError
from ..models import ResNet
from .classes import class_names, imagenet_classes
from .metadata import weights_preprocessing
from .safetensors import CHECKPOINT_FORMAT, load_variables, read_tensors
from .timm import load_timm
from .torchvision import (
    WeightsMismatch,
    _checked_layout,
    _either,
    detect_architecture,
    load_state_dict,
    load_torchvision,
)


def load_model_file(path: str | os.PathLike, name: str | None = None) -> tuple[ResNet, dict, dict[str, str]]:
    """``(model, variables, metadata)`` from a file written by ``train``/``export`` or ``convert``, or from
    torchvision's or timm's weights (``.pth``/``.pt``/``.safetensors``, a ``state_dict``: the same keys for
    either; metadata ``{}`` or the file's own). A run
    directory is read by :func:`resnet_bottleneck.load_model`, which calls this for files.

    Our files name their model, so ``name`` may be left out (given, it must agree); a trained model
    comes back in its run's compute dtype. Files that do not name it (torchvision's, timm's) need ``name``.
    :func:`~resnet_bottleneck.io.metadata.preprocessing` reads the image size and normalisation
    from ``metadata``, :func:`class_names` the class names.

    Raises:
      FileError: no such file.
      InputError: the file is unreadable, names another model than
        ``name``, names none and ``name`` is not given, or does not fit (a :class:`WeightsMismatch` naming the file and
        the model it fits).
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a directory, not a weights file (resnet_bottleneck.load_model reads a run's)")
    metadata = read_tensors(path, header_only=True)[1] if path.suffix.lower() == ".safetensors" else {}
    if metadata.get("format") != CHECKPOINT_FORMAT:
        if name is None:
            fits = detect_architecture(load_state_dict(path), every=True)
            hint = f" (its tensors fit {_either(fits)})" if fits else ""
            raise InputError(
                f"{path} does not name its model, as torchvision's and timm's weights do not{hint}: give the model "
                "name (--model)"
            )
        # foreign weights are read with the preprocessing convert would record for them (their metadata wins)
        return (*load_torchvision(path, name), {**weights_preprocessing(name), **metadata})
    saved = metadata.get("model")
    if name is not None and saved is not None and saved != name:
        raise InputError(f"{path} holds {saved!r} variables, not {name!r}")
    name = name or saved
    if name is None:
        raise InputError(f"{path} has no 'model' in its metadata: give the model name (--model)")
    variables, _ = load_variables(path)
    options = {"dtype": jnp.bfloat16} if metadata.get("dtype") == "bfloat16" else {}
    try:
        model, _, _ = _checked_layout(variables, name, **options)
    except WeightsMismatch as err:
        raise err.with_source(path) from None
    return model, variables, metadata


__all__ = [
    "WeightsMismatch",
    "class_names",
    "detect_architecture",
    "imagenet_classes",
    "load_model_file",
    "load_timm",
    "load_torchvision",
]


def __getattr__(name: str):
    """Name the new home of a moved name; ``hasattr`` stays False for it."""
    if name == "load_model":
        raise AttributeError(
            "resnet_bottleneck.io.load_model moved to resnet_bottleneck.load_model (resnet_bottleneck.inference"
            ".load_model); resnet_bottleneck.io.load_model_file reads a single file"
        )
    raise AttributeError(f"module 'resnet_bottleneck.io' has no attribute {name!r}")
