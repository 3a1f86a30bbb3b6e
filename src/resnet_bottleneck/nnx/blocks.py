"""The residual blocks as Flax NNX modules: twins of :mod:`resnet_bottleneck.blocks`.

Same arithmetic in the same order as the Linen blocks, from the same pieces (the block's spec,
:func:`~resnet_bottleneck.blocks.block_spec`, which places the stride; the checks of
:func:`~resnet_bottleneck.blocks.bottleneck_plan`, the conv options of
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

from .. import _checks, arch
from .. import blocks as linen
from . import _rngs
from .norm import FLAX_BATCH_NORM

#: ``nnx.Conv`` with 1x1 convolutions as dots: the twin of :data:`resnet_bottleneck.blocks.FastConv`.
FastConv = partial(nnx.Conv, conv_general_dilated=linen.conv_1x1_as_dot)


def _conv(block, layer: arch.Conv, *, rngs):
    kernel = layer.kernel
    options = linen.conv_options(block, layer)
    return block.conv(layer.in_features, layer.out_features, (kernel, kernel), **options, rngs=rngs)


def _norm(block, layer: arch.Norm, *, rngs):
    kwargs = {"scale_init": nn.initializers.zeros_init()} if layer.zero_init else {}
    return block.norm(layer.features, dtype=block.dtype, param_dtype=block.param_dtype, rngs=rngs, **kwargs)


#: How each spec layer kind is built in NNX: ``(block, layer, rngs=) -> module``.
LAYERS = {arch.Conv: _conv, arch.Norm: _norm}


def _build(block, spec: arch.Block, *, rngs) -> None:
    """The block's layers as attributes at their spec names' NNX paths (``conv1``, ``downsample[0]``, ...)."""
    lists: dict[str, list] = {}
    for layer in spec.all_layers:
        module = LAYERS[type(layer)](block, layer, rngs=rngs)
        path = arch.nnx_path(layer.name)
        if len(path) == 1:
            setattr(block, path[0], module)
        else:  # ('downsample', 0): an nnx.List, as torchvision's nn.Sequential
            lists.setdefault(path[0], []).append(module)
    for name, modules in lists.items():
        setattr(block, name, nnx.List(modules))
    if spec.shortcut.kind == "identity":
        block.downsample = None


def _sequence(block, x, layers, relu_between: bool):
    for k, layer in enumerate(layers):
        module = block
        for part in arch.nnx_path(layer.name):
            module = module[part] if isinstance(part, int) else getattr(module, part)
        x = module(x)
        if relu_between and isinstance(layer, arch.Norm) and k < len(layers) - 1:
            x = nnx.relu(x)
    return x


#: How each shortcut kind is computed in NNX: ``(block, x, shortcut spec) -> residual``.
SHORTCUTS = {
    "identity": lambda block, x, shortcut: x,
    "projection": lambda block, x, shortcut: _sequence(block, x, shortcut.layers, False),
}


def _residual(block, x):
    """The block's spec: the main path, plus the shortcut, then ReLU (as :func:`resnet_bottleneck.blocks.residual`)."""
    spec = block.spec
    y = _sequence(block, x, spec.layers, True)
    return nnx.relu(y + SHORTCUTS[spec.shortcut.kind](block, x, spec.shortcut).astype(y.dtype))


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

    kind = linen.BottleneckBlock.kind
    expansion = linen.BottleneckBlock.expansion
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
        mid, out, groups, strides = linen.bottleneck_plan(self)
        args = dict(mid_features=mid, out_features=out, groups=groups, stride_on=stride_on, dilation=dilation)
        self.spec = linen.block_spec(self, c_in, args, strides)
        _build(self, self.spec, rngs=rngs)

    def __call__(self, x):
        return _residual(self, x)


class BasicBlock(nnx.Module):
    """ResNet basic block: ``Conv3x3 -> BN -> ReLU -> Conv3x3 -> BN -> (+ shortcut) -> ReLU``.

    The twin of :class:`resnet_bottleneck.blocks.BasicBlock`; arguments as for
    :class:`BottleneckBlock`, ``features`` being both the width and the output channels.
    """

    kind = linen.BasicBlock.kind
    expansion = linen.BasicBlock.expansion
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
        self.spec = linen.block_spec(self, c_in, dict(features=features, dilation=dilation), strides)
        _build(self, self.spec, rngs=rngs)

    def __call__(self, x):
        return _residual(self, x)


#: Each Linen block class's NNX twin.
TWINS = {linen.BottleneckBlock: BottleneckBlock, linen.BasicBlock: BasicBlock}
#: Each block kind's NNX implementation.
BLOCKS = {BottleneckBlock.kind: BottleneckBlock, BasicBlock.kind: BasicBlock}
