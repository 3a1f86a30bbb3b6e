"""Weights in and out, one module per format: :mod:`.safetensors` (ours), :mod:`.torchvision`."""

from __future__ import annotations

import os
from pathlib import Path

from ..models import ResNet
from .safetensors import CHECKPOINT_FORMAT, load_variables, read_tensors
from .torchvision import _checked_layout, from_torchvision, load_state_dict


def load_model(path: str | os.PathLike, name: str) -> tuple[ResNet, dict]:
    """``(model, variables)`` from a file written by ``convert`` or from torchvision weights.

    Raises:
      ValueError: the file is unreadable, holds another model, or does not fit ``name``.
    """
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        _, metadata = read_tensors(path, header_only=True)
        if metadata.get("format") == CHECKPOINT_FORMAT:
            if metadata.get("model") != name:
                raise ValueError(f"{path} holds {metadata.get('model')!r} variables, not {name!r}")
            variables, _ = load_variables(path)
            model, _, _ = _checked_layout(variables, name)
            return model, variables
    return from_torchvision(load_state_dict(path), name)
