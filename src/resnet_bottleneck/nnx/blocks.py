"""The residual blocks as Flax NNX modules: twins of :mod:`resnet_bottleneck.blocks`.

Same arithmetic in the same order as the Linen blocks, from the same pieces (the checks and
stride placement of :func:`~resnet_bottleneck.blocks.bottleneck_plan`, the conv options of
:func:`~resnet_bottleneck.blocks.conv_options`, 1x1 convs as dots through
:func:`~resnet_bottleneck.blocks.conv_1x1_as_dot`, the shared BatchNorm arithmetic), so a
block converted from Linen (:func:`~resnet_bottleneck.nnx.to_nnx`) gives the Linen block's
bits. NNX builds eagerly, so a block takes its input channels, ``in_features``, first.

Submodules carry torchvision's names: ``conv1, bn1, conv2, bn2[, conv3, bn3]`` and the
projection ``downsample[0]`` (conv) / ``downsample[1]`` (BN), ``None`` for an identity shortcut.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from flax import nnx

from .. import _checks
from .. import blocks as linen
from . import _rngs
from .norm import FLAX_BATCH_NORM

#: ``nnx.Conv`` with 1x1 convolutions as dots: the twin of :data:`resnet_bottleneck.blocks.FastConv`.
FastConv = partial(nnx.Conv, conv_general_dilated=linen.conv_1x1_as_dot)


def _conv(
    block, in_features: int, features: int, kernel: int, strides=(1, 1), groups: int = 1, dilation: int = 1, *, rngs
):
    return block.conv(
        in_features,
        features,
        (kernel, kernel),
        **linen.conv_options(block, kernel, strides, groups, dilation),
        rngs=rngs,
    )


def _norm(block, features: int, zero_init: bool = False, *, rngs):
    kwargs = {"scale_init": nn.initializers.zeros_init()} if zero_init else {}
    return block.norm(features, dtype=block.dtype, param_dtype=block.param_dtype, rngs=rngs, **kwargs)


def _downsample(block, in_features: int, features: int, strides, *, rngs):
    """``nnx.List([conv, bn])``, torchvision's ``downsample``, or ``None`` for an identity shortcut."""
    if not linen.projects(block, in_features, features, strides):
        return None
    return nnx.List(
        [_conv(block, in_features, features, 1, strides=strides, rngs=rngs), _norm(block, features, rngs=rngs)]
    )


def _add_shortcut(block, y, x):
    shortcut = x if block.downsample is None else block.downsample[1](block.downsample[0](x))
    return nnx.relu(y + shortcut.astype(y.dtype))


def _keep(block, options: dict) -> None:
    """Store the constructor's options as attributes, under the Linen block's field names."""
    for key, value in options.items():
        setattr(block, key, value)


class BottleneckBlock(nnx.Module):
    """ResNet bottleneck block: 1x1 squeeze -> 3x3 at low width -> 1x1 expand, + shortcut.

    The twin of :class:`resnet_bottleneck.blocks.BottleneckBlock`, whose attributes the
    arguments are; ``in_features`` is the input's channels, ``norm`` a constructor with
    this package's :class:`~resnet_bottleneck.nnx.BatchNorm` signature (default: Flax's
    statistics, as the Linen block) and ``conv`` one with ``nnx.Conv``'s (default
    :data:`FastConv`). Starts in training mode (batch statistics), as the Linen block's default.
    """

    expansion = linen.BottleneckBlock.expansion
    shortcut_index = linen.BottleneckBlock.shortcut_index
    stage_args = classmethod(linen.BottleneckBlock.stage_args.__func__)

    def __init__(
        self,
        in_features: int,
        mid_features: int,
        out_features: int,
        *,
        strides: int | tuple[int, int] = 1,
        stride_on: str = "3x3",
        projection: bool | None = None,
        groups: int = 1,
        dilation: int = 1,
        use_bias: bool = True,
        zero_init_last: bool = False,
        padding: str = "SAME",
        norm: Callable = FLAX_BATCH_NORM,
        conv: Callable = FastConv,
        kernel_init: Callable = nn.linear.default_kernel_init,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        rngs = _rngs.checked(rngs)
        _keep(
            self,
            dict(
                in_features=in_features,
                mid_features=mid_features,
                out_features=out_features,
                strides=strides,
                stride_on=stride_on,
                projection=projection,
                groups=groups,
                dilation=dilation,
                use_bias=use_bias,
                zero_init_last=zero_init_last,
                padding=padding,
                norm=norm,
                conv=conv,
                kernel_init=kernel_init,
                dtype=dtype,
                param_dtype=param_dtype,
            ),
        )
        c_in = _checks.positive_int("in_features", in_features)
        mid, out, groups, strides, s1, s3 = linen.bottleneck_plan(self)
        self.conv1 = _conv(self, c_in, mid, 1, strides=s1, rngs=rngs)
        self.bn1 = _norm(self, mid, rngs=rngs)
        self.conv2 = _conv(self, mid, mid, 3, strides=s3, groups=groups, dilation=dilation, rngs=rngs)
        self.bn2 = _norm(self, mid, rngs=rngs)
        self.conv3 = _conv(self, mid, out, 1, rngs=rngs)
        self.bn3 = _norm(self, out, zero_init=zero_init_last, rngs=rngs)
        self.downsample = _downsample(self, c_in, out, strides, rngs=rngs)

    def __call__(self, x):
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = nnx.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return _add_shortcut(self, y, x)


class BasicBlock(nnx.Module):
    """ResNet basic block: ``Conv3x3 -> BN -> ReLU -> Conv3x3 -> BN -> (+ shortcut) -> ReLU``.

    The twin of :class:`resnet_bottleneck.blocks.BasicBlock`; arguments as for
    :class:`BottleneckBlock`, ``features`` being both the width and the output channels.
    """

    expansion = linen.BasicBlock.expansion
    shortcut_index = linen.BasicBlock.shortcut_index
    stage_args = classmethod(linen.BasicBlock.stage_args.__func__)

    def __init__(
        self,
        in_features: int,
        features: int,
        *,
        strides: int | tuple[int, int] = 1,
        projection: bool | None = None,
        dilation: int = 1,
        use_bias: bool = True,
        zero_init_last: bool = False,
        padding: str = "SAME",
        norm: Callable = FLAX_BATCH_NORM,
        conv: Callable = FastConv,
        kernel_init: Callable = nn.linear.default_kernel_init,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        rngs = _rngs.checked(rngs)
        _keep(
            self,
            dict(
                in_features=in_features,
                features=features,
                strides=strides,
                projection=projection,
                dilation=dilation,
                use_bias=use_bias,
                zero_init_last=zero_init_last,
                padding=padding,
                norm=norm,
                conv=conv,
                kernel_init=kernel_init,
                dtype=dtype,
                param_dtype=param_dtype,
            ),
        )
        c_in = _checks.positive_int("in_features", in_features)
        features, strides = linen.basic_plan(self)
        self.conv1 = _conv(self, c_in, features, 3, strides=strides, dilation=dilation, rngs=rngs)
        self.bn1 = _norm(self, features, rngs=rngs)
        self.conv2 = _conv(self, features, features, 3, dilation=dilation, rngs=rngs)
        self.bn2 = _norm(self, features, zero_init=zero_init_last, rngs=rngs)
        self.downsample = _downsample(self, c_in, features, strides, rngs=rngs)

    def __call__(self, x):
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return _add_shortcut(self, y, x)


#: Each Linen block class's NNX twin.
TWINS = {linen.BottleneckBlock: BottleneckBlock, linen.BasicBlock: BasicBlock}
