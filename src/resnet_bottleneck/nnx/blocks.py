"""The residual blocks as Flax NNX modules: twins of :mod:`resnet_bottleneck.blocks`.

Same arithmetic in the same order as the Linen blocks, from the same pieces (the block's spec,
:func:`~resnet_bottleneck.blocks.block_spec`, which places the stride; the checks of
:func:`~resnet_bottleneck.blocks.bottleneck_plan`, the conv options of
:func:`~resnet_bottleneck.blocks.conv_options`, 1x1 convs as dots through
:func:`~resnet_bottleneck.blocks.conv_1x1_as_dot`, the shared BatchNorm arithmetic), so a
block converted from Linen (:func:`~resnet_bottleneck.nnx.to_nnx`) gives the Linen block's
bits. NNX builds eagerly, so a block takes its input channels, ``in_features``, first.

Submodules carry timm's (torchvision's) names, every spec layer one (:data:`LAYERS`): ``conv1, bn1, act1,
conv2, bn2, act2[, aa][, conv3, bn3][, se][, drop_path]`` and the projection ``downsample[0]`` (conv) /
``downsample[1]`` (BN) (with ``avg_down``: ``downsample[0]`` the pool, then conv and BN), ``None`` for an
identity shortcut. timm's block options (``reduce_first``, ``attn_layer``, ``aa_layer``, ``drop_path_rate``,
...) are the Linen blocks' attributes, with their meaning.
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
from . import _rngs, layers
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


def _se(block, layer: arch.SqueezeExcite, *, rngs):
    return layers.SqueezeExcite(
        layer.features, layer.reduced, dtype=block.dtype, param_dtype=block.param_dtype, rngs=rngs
    )


#: How each spec layer kind is built in NNX: ``(block, layer, rngs=) -> module`` (the twin of
#: :data:`resnet_bottleneck.blocks.LAYERS`; ``block`` any object with a block's ``conv``, ``norm``,
#: ``padding``, ``use_bias``, ``kernel_init``, ``dtype`` and ``param_dtype``).
LAYERS = {
    arch.Conv: _conv,
    arch.Norm: _norm,
    arch.Act: lambda block, layer, *, rngs: layers.Act(layer.kind),
    arch.Pool: lambda block, layer, *, rngs: layers.Pool(layer),
    arch.SqueezeExcite: _se,
    arch.Eca: lambda block, layer, *, rngs: layers.Eca(
        layer.kernel, dtype=block.dtype, param_dtype=block.param_dtype, rngs=rngs
    ),
    arch.DropPath: lambda block, layer, *, rngs: layers.DropPath(layer.rate),
}


def build_layers(owner, context, spec_layers, *, rngs) -> None:
    """Each of ``spec_layers`` built by :data:`LAYERS` (with ``context``'s options) as an attribute of
    ``owner`` at its name's NNX path: ``conv1``, ``downsample[0]``, ``conv1[2]``
    (an ``nnx.List``, as timm's and torchvision's ``nn.Sequential``; ``None`` at an index without a layer:
    timm's ``nn.Identity``, as ``downsample[0]`` of an ``avg_down`` shortcut that does not stride)."""
    lists: dict[str, dict[int, Any]] = {}
    for layer in spec_layers:
        module = LAYERS[type(layer)](context, layer, rngs=rngs)
        path = arch.nnx_path(layer.name)
        if len(path) == 1:
            setattr(owner, path[0], module)
        else:
            lists.setdefault(path[0], {})[path[1]] = module
    for name, modules in lists.items():  # an index without a layer (timm's nn.Identity) holds None
        setattr(owner, name, nnx.List([modules.get(i) for i in range(max(modules) + 1)]))


def module_at(owner, path: tuple):
    """The submodule of ``owner`` at the NNX ``path`` (``('downsample', 0)`` -> ``owner.downsample[0]``)."""
    for part in path:
        owner = owner[part] if isinstance(part, int) else getattr(owner, part)
    return owner


def run_layers(owner, x, spec_layers, keys: layers.DropoutKeys):
    """``spec_layers`` in order, each the module of ``owner`` at its NNX path; a drop path takes its key
    from ``keys`` under its Linen name (the spec name's last part)."""
    for layer in spec_layers:
        module = module_at(owner, arch.nnx_path(layer.name))
        if isinstance(layer, arch.DropPath):
            x = module(x, rngs=keys, name=layer.name.rpartition(".")[2])
        else:
            x = module(x)
    return x


def _build(block, spec: arch.Block, *, rngs) -> None:
    """The block's layers as attributes at their spec names' NNX paths (``conv1``, ``downsample[0]``, ...)."""
    build_layers(block, block, spec.all_layers, rngs=rngs)
    if spec.shortcut.kind == "identity":
        block.downsample = None


#: How each shortcut kind is computed in NNX: ``(block, x, shortcut spec, keys) -> residual``.
SHORTCUTS = {
    "identity": lambda block, x, shortcut, keys: x,
    "projection": lambda block, x, shortcut, keys: run_layers(block, x, shortcut.layers, keys),
}


def _residual(block, x, rngs):
    """The block's spec: the main path, plus the shortcut, then ReLU (as :func:`resnet_bottleneck.blocks.residual`)."""
    spec, keys = block.spec, layers.DropoutKeys.of(rngs)
    y = run_layers(block, x, spec.layers, keys)
    return nnx.relu(y + SHORTCUTS[spec.shortcut.kind](block, x, spec.shortcut, keys).astype(y.dtype))


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
        reduce_first: int = 1,
        attn_layer: str | None = None,
        attn_rd_ratio: float = 1 / 16,
        aa_layer: str | None = None,
        drop_path_rate: float = 0.0,
        avg_down: bool = False,
        down_kernel_size: int = 1,
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
                reduce_first=reduce_first,
                attn_layer=attn_layer,
                attn_rd_ratio=attn_rd_ratio,
                aa_layer=aa_layer,
                drop_path_rate=drop_path_rate,
                avg_down=avg_down,
                down_kernel_size=down_kernel_size,
            ),
        )
        c_in = _checks.positive_int("in_features", in_features)
        mid, out, groups, strides = linen.bottleneck_plan(self)
        args = dict(mid_features=mid, out_features=out, groups=groups, stride_on=stride_on, **linen.common_args(self))
        self.spec = linen.block_spec(self, c_in, args, strides)
        _build(self, self.spec, rngs=rngs)

    def __call__(self, x, *, rngs=None):
        """The block on ``x``; ``rngs`` (an ``nnx.Rngs``, whose ``'dropout'`` stream is used, or a JAX
        key): the drop path's randomness in training mode, needed only where ``drop_path_rate > 0``."""
        return _residual(self, x, rngs)


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
        reduce_first: int = 1,
        attn_layer: str | None = None,
        attn_rd_ratio: float = 1 / 16,
        aa_layer: str | None = None,
        drop_path_rate: float = 0.0,
        avg_down: bool = False,
        down_kernel_size: int = 1,
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
                reduce_first=reduce_first,
                attn_layer=attn_layer,
                attn_rd_ratio=attn_rd_ratio,
                aa_layer=aa_layer,
                drop_path_rate=drop_path_rate,
                avg_down=avg_down,
                down_kernel_size=down_kernel_size,
            ),
        )
        c_in = _checks.positive_int("in_features", in_features)
        features, strides = linen.basic_plan(self)
        self.spec = linen.block_spec(self, c_in, dict(features=features, **linen.common_args(self)), strides)
        _build(self, self.spec, rngs=rngs)

    def __call__(self, x, *, rngs=None):
        """The block on ``x``; ``rngs`` (an ``nnx.Rngs``, whose ``'dropout'`` stream is used, or a JAX
        key): the drop path's randomness in training mode, needed only where ``drop_path_rate > 0``."""
        return _residual(self, x, rngs)


#: Each Linen block class's NNX twin.
TWINS = {linen.BottleneckBlock: BottleneckBlock, linen.BasicBlock: BasicBlock}
#: Each block kind's NNX implementation.
BLOCKS = {BottleneckBlock.kind: BottleneckBlock, BasicBlock.kind: BasicBlock}
