"""The optimizer of a run, and the optax utilities that freeze layers (torchvision's ``trainable_layers``).

:func:`make_optimizer` builds a run's optimizer from its :class:`~.config.Config`;
:func:`freeze` and :func:`trainable_mask` work on any ResNet's or FPN backbone's ``params``
(also ``resnet_bottleneck.freeze``): with ``trainable_layers=K`` only the last K of conv1+bn1,
layer1, ..., layer4 learn, and the others get exactly zero update, as torchvision's
``requires_grad_(False)`` keeps them. Light: optax and jax only, nothing of grain or orbax.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import jax
import optax

from .. import _checks

if TYPE_CHECKING:
    from .config import Config

_STAGE = re.compile(r"(layer\d+)_(\d+|scan)")
_STEM = re.compile(r"conv1|bn1|(conv1|maxpool)_\d+")  # timm's deep stem (conv1_0, ...) and conv pool (maxpool_0, ...)


def _decay_mask(params):
    """Weight decay on conv and dense kernels only: not on BatchNorm scales or biases."""
    return jax.tree_util.tree_map_with_path(lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def learning_rate_schedule(config: Config, steps_per_epoch: int) -> optax.Schedule:
    """Linear warmup over ``warmup_epochs``, then cosine decay to zero at the last step of ``epochs``."""
    total = config.epochs * steps_per_epoch
    warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), total - 1)
    return optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, max(warmup, 1), max(total, 2))


def make_optimizer(config: Config, steps_per_epoch: int) -> optax.GradientTransformation:
    """On the schedule above, with weight decay on kernels only: SGD with (Nesterov) momentum and
    the decay added to the gradient, or AdamW (optax's, decoupled decay). With ``trainable_layers``
    below 5 the frozen layers get exactly zero update (:func:`freeze`)."""
    schedule = learning_rate_schedule(config, steps_per_epoch)
    if config.optimizer == "adamw":
        optimizer = optax.adamw(schedule, weight_decay=config.weight_decay, mask=_decay_mask)
    else:
        optimizer = optax.chain(
            optax.add_decayed_weights(config.weight_decay, mask=_decay_mask),
            optax.sgd(schedule, momentum=config.momentum, nesterov=config.nesterov),
        )
    if config.trainable_layers < len(_checks.TRAINABLE_LAYERS):
        optimizer = freeze(optimizer, config.trainable_layers)
    return optimizer


def _layer_of(path) -> str | None:
    """The TRAINABLE_LAYERS entry a parameter belongs to (the whole stem goes with ``conv1``), or None."""
    for key in path:
        key = getattr(key, "key", key)
        if _STEM.fullmatch(str(key)):
            return "conv1"
        match = _STAGE.fullmatch(str(key))
        if match:
            return match.group(1)
    return None


def trainable_mask(params, trainable_layers: int):
    """``True`` for each parameter that learns under torchvision's ``trainable_layers=K``, else ``False``.

    The frozen ones are the body's conv1/bn1 and layer1..4 beyond the last K; everything
    else (a pyramid, a classifier) learns. Works on a ResNet's or an
    :class:`~resnet_bottleneck.backbones.FPNBackbone`'s ``params`` (use it with ``optax.masked``, or :func:`freeze`).
    """
    learning = {None, *_checks.TRAINABLE_LAYERS[: _checks.trainable_layers(trainable_layers)]}  # None: not a body layer
    return jax.tree_util.tree_map_with_path(lambda path, _: _layer_of(path) in learning, params)


def freeze(optimizer: optax.GradientTransformation, trainable_layers: int) -> optax.GradientTransformation:
    """``optimizer`` for the learning parameters; exactly zero updates for the frozen ones.

    ``optax.multi_transform`` with ``optax.set_to_zero()`` for the frozen part: the
    optimizer (its momentum, its weight decay) never sees those parameters, so they stay
    bit-identical, as torchvision's ``requires_grad_(False)`` keeps them.
    """
    trainable_layers = _checks.trainable_layers(trainable_layers)

    def labels(params):
        return jax.tree_util.tree_map(
            lambda learns: "train" if learns else "frozen", trainable_mask(params, trainable_layers)
        )

    return optax.multi_transform({"train": optimizer, "frozen": optax.set_to_zero()}, labels)
