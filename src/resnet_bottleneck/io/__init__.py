"""Weights in and out, one module per format: :mod:`.safetensors` (ours), :mod:`.torchvision`;
and the names of a model's classes (:mod:`.classes`); and :func:`atomic_write`, with which
everything here writes: a file appears whole or not at all."""

from __future__ import annotations

import os
from pathlib import Path

from .._files import atomic_write  # noqa: F401 - public here
from ..models import ResNet
from .classes import class_names, imagenet_classes
from .safetensors import CHECKPOINT_FORMAT, load_variables, read_tensors
from .torchvision import WeightsMismatch, _checked_layout, detect_architecture, load_torchvision


def load_model(path: str | os.PathLike, name: str) -> tuple[ResNet, dict]:
    """``(model, variables)`` from a file written by ``convert`` or from torchvision weights.

    Raises:
      ValueError: the file is unreadable, holds another model, or does not fit ``name``
        (a :class:`WeightsMismatch` naming the file and the model it fits).
    """
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        _, metadata = read_tensors(path, header_only=True)
        if metadata.get("format") == CHECKPOINT_FORMAT:
            if metadata.get("model") != name:
                raise ValueError(f"{path} holds {metadata.get('model')!r} variables, not {name!r}")
            variables, _ = load_variables(path)
            try:
                model, _, _ = _checked_layout(variables, name)
            except WeightsMismatch as err:
                raise err.with_source(path) from None
            return model, variables
    return load_torchvision(path, name)


__all__ = ["WeightsMismatch", "class_names", "detect_architecture", "imagenet_classes", "load_model", "load_torchvision"]
