"""Detection and segmentation backbones: torchvision's feature pyramid over the family, and frozen layers.

:func:`create_fpn_backbone` is torchvision's ``resnet_fpn_backbone`` (the backbone of
``fasterrcnn_resnet50_fpn``) in Linen: a headless :class:`~.models.ResNet` body with
frozen BatchNorm and only its last ``trainable_layers`` learning, and a
:class:`FeaturePyramidNetwork` over the stages it returns, giving torchvision's dict
(``'0'``...``'3'``, ``'pool'``) in NHWC. The variables are torchvision's tensors under
flax's names (``body/...`` as :func:`~.io.torchvision.from_torchvision`,
``fpn/inner_blocks_i``, ``fpn/layer_blocks_i``); ``io.torchvision.from_torchvision_fpn``
reads a torchvision ``BackboneWithFPN`` state dict.

``trainable_layers=K`` has torchvision's meaning (only the last K of conv1+bn1, layer1,
..., layer4 learn). The model cuts the frozen part from autodiff, so it gets exactly zero
gradient; :func:`~resnet_bottleneck.training.optim.freeze` (also ``resnet_bottleneck.freeze``) wraps
an optax optimizer so that it also gets exactly zero *update* (a plain optimizer would still
move it by weight decay). A training step uses both with the same K::

    model = create_fpn_backbone("resnet50", trainable_layers=3)
    tx = freeze(optax.sgd(0.02, momentum=0.9), trainable_layers=3)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from . import _checks
from .blocks import FastConv
from .errors import InputError, InputTypeError
from .models import STAGE_NAMES, ResNet, create_model

#: torchvision's FPN initialisation, ``kaiming_uniform_(a=1)``: uniform with variance ``1 / fan_in``.
fpn_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")


def _nearest_indices(in_size: int, out_size: int) -> np.ndarray | None:
    """The source row of each output row of PyTorch's ``'nearest'`` resize; ``None`` for the identity.

    PyTorch's rule, float32 arithmetic included: ``min(floor(i * float(in) / out), in - 1)``,
    with exact shortcuts for equal and doubled sizes.
    """
    if out_size == in_size:
        return None
    if out_size == 2 * in_size:
        return np.arange(out_size) // 2
    scale = np.float32(in_size) / np.float32(out_size)
    return np.minimum(np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64), in_size - 1)


def upsample_nearest(x, size: tuple[int, int]):
    """``torch.nn.functional.interpolate(x, size, mode='nearest')`` on NHWC ``x`` (not jax.image's rule)."""
    for axis, out_size in ((1, size[0]), (2, size[1])):
        index = _nearest_indices(x.shape[axis], out_size)
        if index is None:
            continue
        if out_size == 2 * x.shape[axis]:
            x = jnp.repeat(x, 2, axis=axis)
        else:
            x = jnp.take(x, jnp.asarray(index), axis=axis)
    return x


class FeaturePyramidNetwork(nn.Module):
    """torchvision's ``FeaturePyramidNetwork`` (with ``LastLevelMaxPool``) on NHWC feature maps.

    Each input map gets a lateral 1x1 conv (``inner_blocks_i``); from the coarsest down,
    the running top-down map is upsampled to the next finer lateral's size (PyTorch's
    ``'nearest'``) and added to it; each sum gets a 3x3 output conv (``layer_blocks_i``).
    ``extra_pool`` appends the last output subsampled by 2 (``max_pool2d(1, 2)``).
    Convs have biases and torchvision's ``kaiming_uniform_(a=1)`` initialisation.

    Attributes:
      out_channels: channels of every output level.
      extra_pool: append the ``'pool'`` level.
      conv: the convolution constructor (``nn.Conv`` signature).
      dtype, param_dtype: as the models'.
    """

    out_channels: int = 256
    extra_pool: bool = True
    conv: Any = FastConv
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: Sequence) -> list:
        """Output maps for ``features`` (finest first), plus the pooled level if ``extra_pool``."""

        def conv(kernel: int, name: str):
            return self.conv(
                self.out_channels,
                (kernel, kernel),
                padding=((kernel // 2, kernel // 2),) * 2,
                kernel_init=fpn_kernel_init,
                bias_init=nn.initializers.zeros_init(),
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=name,
            )

        n = len(features)
        last = conv(1, f"inner_blocks_{n - 1}")(features[-1])
        results = [conv(3, f"layer_blocks_{n - 1}")(last)]
        for i in range(n - 2, -1, -1):
            lateral = conv(1, f"inner_blocks_{i}")(features[i])
            last = lateral + upsample_nearest(last, lateral.shape[1:3])
            results.insert(0, conv(3, f"layer_blocks_{i}")(last))
        if self.extra_pool:
            results.append(results[-1][:, ::2, ::2, :])
        return results


def _returned_layers(value: Any) -> tuple[int, ...]:
    expected = "returned_layers must list increasing stage numbers from 1 to 4 (layer1..layer4), e.g. (2, 3, 4)"
    if not isinstance(value, (tuple, list)) or not value or not all(_checks.is_int(v) for v in value):
        raise InputError(f"{expected}; got {value!r}")
    layers = tuple(int(v) for v in value)
    if not all(1 <= v <= 4 for v in layers) or list(layers) != sorted(set(layers)):
        raise InputError(f"{expected}; got {value!r}")
    return layers


class FPNBackbone(nn.Module):
    """A ResNet body with a feature pyramid over its stages: torchvision's ``BackboneWithFPN``, NHWC.

    ``__call__(x, train=False)`` returns ``{'0': ..., '1': ..., ..., 'pool': ...}``: one
    ``out_channels`` map per returned stage, finest first, then the pooled level. Build it
    with :func:`create_fpn_backbone`.

    Attributes:
      body: a headless :class:`~.models.ResNet` with at least ``max(returned_layers)`` stages.
      returned_layers: the stages (1 = layer1/C2 ... 4 = layer4/C5) the pyramid reads.
      out_channels: channels of every output level.
      extra_pool: add the ``'pool'`` level (torchvision's ``LastLevelMaxPool``).
    """

    body: ResNet
    returned_layers: Sequence[int] = (1, 2, 3, 4)
    out_channels: int = 256
    extra_pool: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False) -> dict:
        returned = _returned_layers(self.returned_layers)
        if len(self.body.stage_sizes) < returned[-1]:
            raise InputError(
                f"returned_layers={returned!r} needs layer{returned[-1]}, but the body has "
                f"{len(self.body.stage_sizes)} stages"
            )
        stages = self.body(x, train=train, features=True)
        levels = FeaturePyramidNetwork(
            _checks.positive_int("out_channels", self.out_channels),
            self.extra_pool,
            conv=self.body.conv,
            dtype=self.body.dtype,
            param_dtype=self.body.param_dtype,
            name="fpn",
        )([stages[STAGE_NAMES[k - 1]] for k in returned])
        names = [str(i) for i in range(len(returned))] + (["pool"] if self.extra_pool else [])
        return dict(zip(names, levels))


def create_fpn_backbone(
    name: str,
    out_channels: int = 256,
    trainable_layers: int = 3,
    returned_layers: Sequence[int] = (1, 2, 3, 4),
    extra_pool: bool = True,
    *,
    norm: str = "frozen",
    **options,
) -> FPNBackbone:
    """torchvision's ``resnet_fpn_backbone(backbone_name=name, ...)`` as a Linen module.

    Args:
      name: a family model (a key of :data:`~.models.CONFIGS`).
      out_channels: channels of every pyramid level.
      trainable_layers: how many of layer4, layer3, layer2, layer1, conv1 learn (0 to 5).
      returned_layers: the stages the pyramid reads, increasing, from 1 to 4. The body
        stops at the last of them, as torchvision's ``IntermediateLayerGetter`` does.
      extra_pool: add the ``'pool'`` level.
      norm: ``'frozen'`` (torchvision's default here) or ``'batch'``.
      **options: further :class:`~.models.ResNet` options for the body (``dtype``, ...).
    """
    returned = _returned_layers(returned_layers)
    trainable_layers = _checks.trainable_layers(trainable_layers)
    out_channels = _checks.positive_int("out_channels", out_channels)
    if not isinstance(extra_pool, bool):
        raise InputTypeError(f"extra_pool must be True or False; got {extra_pool!r}")
    body = create_model(name, num_classes=None, norm=norm, trainable_layers=trainable_layers, **options)
    body = body.clone(stage_sizes=tuple(body.stage_sizes[: returned[-1]]))
    return FPNBackbone(body=body, returned_layers=returned, out_channels=out_channels, extra_pool=extra_pool)


def __getattr__(name: str):
    """Name the new home of a moved name; ``hasattr`` stays False for it."""
    if name in ("freeze", "trainable_mask"):
        raise AttributeError(
            f"resnet_bottleneck.backbones.{name} moved to resnet_bottleneck.training.optim.{name}"
            f" (also resnet_bottleneck.{name})"
        )
    raise AttributeError(f"module 'resnet_bottleneck.backbones' has no attribute {name!r}")
