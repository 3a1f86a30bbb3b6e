"""timm's ResNet weights in and out, exactly: ``timm.models.resnet.ResNet``'s ``state_dict``.

timm keeps torchvision's names (``conv1``, ``bn1``, ``layer{i}.{j}.conv{k}``, ``fc``) and adds its
own layers' (a deep stem's ``conv1.{0,1,3,4,6}``, an average-pool shortcut's ``downsample.{1,2}``,
``se.fc1``/``se.fc2`` as 1x1 convs, ``eca.conv`` as a ``Conv1d``, GroupNorm's ``weight``/``bias``);
:mod:`resnet_bottleneck.io.torchvision` maps them all, and this module is its timm face: the same
layouts, checks and errors, timm's name in the messages. ``num_batches_tracked`` is accepted on the
way in and written as 0 on the way out for every BatchNorm (timm's ``BatchNorm2d`` has one, its
``GroupNorm`` none); every other tensor goes both ways bit for bit.

Some names hold the same tensors: anti-aliasing (``resnetaa*``, ``resnetblur*``, ``seresnextaa*``)
adds pools without any, so ``resnetblur50``'s file loads as ``resnet50`` as well and no file can
tell them apart (:func:`~resnet_bottleneck.io.torchvision.detect_architecture` names the first, or
every one with ``every=True``; a mismatch names them all: "it fits resnet50d, resnetaa50d or
resnetblur50d (the same tensors)"). ``resnet50c`` and ``resnet50d`` differ in timm's keys (the
average pool before ``resnet50d``'s projection shifts its index) but not in our variables, so
:func:`to_timm` needs the right name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from .torchvision import _FROM_FC, WeightsMismatch, _checked_layout, _from_state_dict, _write, load_state_dict


def _headless(num_classes):
    """timm's ``num_classes=0`` (no classifier) is our ``None``."""
    return (
        None if isinstance(num_classes, int) and not isinstance(num_classes, bool) and num_classes == 0 else num_classes
    )


def from_timm(state_dict: Mapping[str, Any], name: str, *, num_classes: Any = _FROM_FC, api: str = "linen", **options):
    """A model and its variables from ``timm.create_model(name).state_dict()`` (or a file of it).

    Args:
      state_dict: tensor name -> tensor or array (a checkpoint wrapping it under ``'state_dict'``
        or ``'model'`` is unwrapped).
      name: the timm model name (any of :func:`~resnet_bottleneck.list_models`).
      num_classes: by default read from ``fc``, or ``None`` (headless: ``num_classes=0`` in timm) when
        the state dict has no ``fc``.
      api: ``'linen'``, or ``'nnx'`` for the Flax NNX twin holding the weights.
      **options: further :func:`~resnet_bottleneck.create_model` options (``dtype``,
        ``drop_path_rate``, ...).

    Returns:
      As :func:`~resnet_bottleneck.from_torchvision`: ``(model, {'params': ..., 'batch_stats': ...})``
      for Linen (no ``batch_stats`` for ``resnet50_gn``), the NNX model for ``api='nnx'``.

    Raises:
      WeightsMismatch: the tensors do not fit timm's ``name``; the message names the family
        models they fit (all of them where several hold the same tensors) or the nearest.
    """
    if num_classes is _FROM_FC and isinstance(state_dict, Mapping):
        from .torchvision import _unwrap

        if "fc.weight" not in _unwrap(state_dict):
            num_classes = None
    return _from_state_dict(state_dict, name, _headless(num_classes), api, "timm", options)


def to_timm(variables, name: str, *, as_numpy: bool = False, dtype=np.float32, **options) -> dict:
    """A ``state_dict`` that ``timm.create_model(name).load_state_dict(..., strict=True)`` accepts.

    Args:
      variables: ``{'params': ..., 'batch_stats': ...}`` of ``create_model(name)`` (plain layout;
        a scanned model's through ``unscan_variables`` first).
      name: the timm model name the variables are of.
      as_numpy: numpy arrays instead of ``torch.Tensor`` (needs no PyTorch).
      dtype: the floating dtype of the tensors (timm's is float32).
      **options: ``num_classes`` (by default ``fc``'s, ``None`` without one; ``None`` or 0 for a
        headless model, timm's ``num_classes=0``) and ``norm`` where they change the variables.

    Raises:
      WeightsMismatch: the variables do not fit ``name``.
    """
    if "num_classes" in options:
        options["num_classes"] = _headless(options["num_classes"])
    elif (
        isinstance(variables, Mapping)
        and isinstance(variables.get("params"), Mapping)
        and "fc" not in variables["params"]
    ):
        options["num_classes"] = None  # as from_timm reads a state dict without fc
    _, flat, expected = _checked_layout(variables, name, **options)
    return _write(flat, expected, as_numpy, dtype)


def load_timm(path: str | os.PathLike, name: str, **options):
    """:func:`from_timm` of a weights file (``.pth``/``.pt``/``.bin`` or ``.safetensors``, as timm saves
    them; see :func:`~resnet_bottleneck.io.torchvision.load_state_dict`); a mismatch names the file."""
    try:
        return from_timm(load_state_dict(path), name, **options)
    except WeightsMismatch as err:
        raise err.with_source(path) from None
