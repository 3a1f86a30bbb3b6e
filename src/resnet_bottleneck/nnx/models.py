"""The bottleneck family as Flax NNX modules: the twin of :mod:`resnet_bottleneck.models`.

One :class:`ResNet` over the same table, :data:`resnet_bottleneck.models.CONFIGS` (its
rows name Linen block classes; :data:`~resnet_bottleneck.nnx.blocks.TWINS` maps each to its
NNX twin), with torchvision's attribute names: ``model.conv1``, ``model.bn1``,
``model.layer1[0].conv1``, ..., ``model.fc``. The arithmetic is the Linen model's, in the
same order and from the same functions (torchvision padding, :func:`~resnet_bottleneck.models.max_pool`,
:func:`~resnet_bottleneck.models.global_average_pool`, the shared BatchNorm), so a model
converted from Linen variables gives the Linen model's output.

Train/eval is NNX's: ``model.train()`` (batch statistics, running averages updated in
place; the state after construction, as PyTorch's) and ``model.eval()`` (running averages).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from .. import arch
from .. import models as linen
from . import _rngs
from .blocks import TWINS, BottleneckBlock, FastConv
from .norm import BatchNorm, FrozenBatchNorm


class ResNet(nnx.Module):
    """A ResNet of basic or bottleneck blocks, on NHWC input: the twin of :class:`resnet_bottleneck.models.ResNet`.

    The arguments are the Linen model's attributes (``stage_sizes``, ``block`` (an NNX block
    class), ``groups``, ``width_per_group``, ``num_classes`` (``None``: headless),
    ``stem_width``, ``stride_on``, ``zero_init_last``, ``bn_momentum`` (Flax's convention),
    ``bn_epsilon``, ``axis_name``, ``dtype``, ``param_dtype``, ``conv``,
    ``replace_stride_with_dilation``, ``norm`` (``'batch'`` or ``'frozen'``),
    ``trainable_layers``), plus ``in_features``, the input's channels, which NNX needs up
    front. The Linen model's ``remat``, ``scan`` and ``folded`` have no twin here: convert
    with :func:`~resnet_bottleneck.nnx.to_linen` for those.
    """

    def __init__(
        self,
        stage_sizes: Sequence[int],
        *,
        block: type = BottleneckBlock,
        groups: int = 1,
        width_per_group: int = 64,
        num_classes: int | None = 1000,
        stem_width: int = 64,
        stride_on: str = "3x3",
        zero_init_last: bool = False,
        bn_momentum: float = 0.9,
        bn_epsilon: float = 1e-5,
        axis_name: str | None = None,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        conv: Any = FastConv,
        replace_stride_with_dilation: Sequence[bool] = (False, False, False),
        norm: str = "batch",
        trainable_layers: int = len(linen.TRAINABLE_LAYERS),
        in_features: int = 3,
        rngs: nnx.Rngs,
    ):
        rngs = _rngs.checked(rngs)
        self.stage_sizes = tuple(stage_sizes) if isinstance(stage_sizes, (list, tuple)) else stage_sizes
        self.block, self.groups, self.width_per_group = block, groups, width_per_group
        self.num_classes, self.stem_width, self.stride_on = num_classes, stem_width, stride_on
        self.zero_init_last, self.bn_momentum, self.bn_epsilon = zero_init_last, bn_momentum, bn_epsilon
        self.axis_name, self.dtype, self.param_dtype, self.conv = axis_name, dtype, param_dtype, conv
        self.replace_stride_with_dilation = (
            tuple(replace_stride_with_dilation)
            if isinstance(replace_stride_with_dilation, list)
            else replace_stride_with_dilation
        )
        self.norm, self.trainable_layers, self.in_features = norm, trainable_layers, in_features
        if isinstance(block, type) and issubclass(block, nn.Module):
            raise TypeError(
                f"block must be an NNX block class such as resnet_bottleneck.nnx.BottleneckBlock; "
                f"got the Linen {block.__module__}.{block.__name__}"
            )
        spec = linen.check_layout(self)  # in_features too
        if norm == "frozen":
            norm_layer = partial(FrozenBatchNorm, epsilon=bn_epsilon)
        else:
            norm_layer = partial(BatchNorm, momentum=bn_momentum, epsilon=bn_epsilon, axis_name=axis_name)
        kind = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.stem_spec, self.head_spec = spec.stem, spec.head
        linen.kind_of(STEMS, "stem", spec.stem.kind)[0](self, spec.stem, norm_layer, kind)
        common = dict(
            norm=norm_layer,
            conv=conv,
            use_bias=False,
            padding="torch",
            kernel_init=linen.conv_kernel_init,
            zero_init_last=zero_init_last,
            **kind,
        )
        for stage in spec.stages:
            blocks = [block(b.in_features, **linen.block_options(b), **common) for b in stage.blocks]
            setattr(self, stage.name, nnx.List(blocks))
        self.stage_names = tuple(stage.name for stage in spec.stages)
        if spec.head is None:
            self.fc = None
        else:
            linen.kind_of(HEADS, "head", spec.head.kind)[0](self, spec.head, kind)

    def __call__(self, x, *, features: bool = False):
        """Logits, the last feature map (headless), or every stage's output.

        Args:
          x: images, ``(N, H, W, C)``.
          features: return ``{'stem': ..., 'C2': ..., ..., 'C5': ...}`` (see
            :func:`~resnet_bottleneck.models.feature_info`) instead of running the head.
        """
        if x.ndim != 4:
            raise ValueError(f"x must be a 4-D batch of images (N, H, W, C); got shape {x.shape}")
        x = jnp.asarray(x, self.dtype) if self.dtype is not None else x
        x = STEMS[self.stem_spec.kind][1](self, x, self.stem_spec)
        frozen = len(linen.TRAINABLE_LAYERS) - self.trainable_layers  # frozen from the input side: stem, layer1, ...
        x = jax.lax.stop_gradient(x) if frozen > 0 else x
        outputs = {"stem": x}
        pool = self.stem_spec.pool
        if pool is not None:
            x = linen.POOLS[pool.kind](x, pool.kernel, pool.stride, pool.padding)
        for i, stage in enumerate(self.stage_names):
            for block in getattr(self, stage):
                x = block(x)
            x = jax.lax.stop_gradient(x) if frozen > i + 1 else x
            outputs[arch.STAGE_NAMES[i]] = x
        if features:
            return outputs
        if self.head_spec is None:
            return x
        x = HEADS[self.head_spec.kind][1](self, x, self.head_spec)
        return jnp.asarray(x, jnp.promote_types(x.dtype, jnp.float32))  # bf16 logits come back as float32


def _conv7_build(model: ResNet, stem: arch.Stem, norm_layer, kind: dict) -> None:
    conv, bn = stem.layers
    p = conv.padding
    module = nnx.Conv(
        conv.in_features,
        conv.out_features,
        (conv.kernel, conv.kernel),
        strides=conv.stride,
        padding=((p, p), (p, p)),
        use_bias=False,
        kernel_init=linen.conv_kernel_init,
        **kind,
    )
    setattr(model, conv.name, module)
    setattr(model, bn.name, norm_layer(bn.features, **kind))


def _conv7_apply(model: ResNet, x, stem: arch.Stem):
    conv, bn = stem.layers
    return nnx.relu(getattr(model, bn.name)(getattr(model, conv.name)(x)))


def _linear_build(model: ResNet, head: arch.Head, kind: dict) -> None:
    fc = head.layer
    setattr(model, fc.name, nnx.Linear(fc.in_features, fc.out_features, **kind))


def _linear_apply(model: ResNet, x, head: arch.Head):
    return getattr(model, head.layer.name)(linen.global_average_pool(x))


#: Each spec stem kind's NNX implementation: ``(build(model, stem, norm_layer, kind), apply(model, x, stem))``;
#: ``build`` sets the stem's modules on the model, ``apply`` runs them (the stem's pool, if any, comes after).
STEMS = {"conv7": (_conv7_build, _conv7_apply)}

#: Each spec head kind's NNX implementation: ``(build(model, head, kind), apply(model, x, head))``.
HEADS = {"linear": (_linear_build, _linear_apply)}


def create_model(name: str, *, num_classes: int | None = 1000, rngs: nnx.Rngs, **options) -> ResNet:
    """A family member by torchvision's name, e.g. ``create_model('resnet50', rngs=nnx.Rngs(0))``.

    Args:
      name: a key of :data:`resnet_bottleneck.models.CONFIGS`.
      num_classes: classifier outputs, or ``None`` for a headless backbone.
      rngs: the ``nnx.Rngs`` that initialise the parameters.
      **options: any other :class:`ResNet` argument (``dtype``, ``stride_on``,
        ``zero_init_last``, ``bn_momentum``, ``bn_epsilon``, ``conv``, ``in_features``, ...).
    """
    config = linen.model_config(name, options)
    rngs = _rngs.checked(rngs)
    return ResNet(**{**config, "block": TWINS[config["block"]]}, **options, num_classes=num_classes, rngs=rngs)
