"""The bottleneck family as Flax NNX modules: the twin of :mod:`resnet_bottleneck.models`.

One :class:`ResNet` over the same table, :data:`resnet_bottleneck.models.CONFIGS` (its
rows name Linen block classes; :data:`~resnet_bottleneck.nnx.blocks.TWINS` maps each to its
NNX twin), with timm's (torchvision's) attribute names: ``model.conv1`` (a deep stem's
``model.conv1[0]``, ...), ``model.bn1``, ``model.maxpool``, ``model.layer1[0].conv1``, ..., ``model.fc``:
each spec layer at its name (:func:`resnet_bottleneck.arch.nnx_path`). The arithmetic is the Linen
model's, in the same order and from the same functions (torchvision padding, the pools, SE and ECA
of :mod:`resnet_bottleneck.layers`, the shared BatchNorm), so a model converted from Linen variables
gives the Linen model's output.

Train/eval is NNX's: ``model.train()`` (batch statistics, running averages updated in
place, drop path and dropout on; the state after construction, as PyTorch's) and ``model.eval()``
(running averages, nothing dropped).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from .. import _checks, arch
from .. import models as linen
from ..errors import InputError, InputTypeError
from . import _rngs, layers
from .blocks import TWINS, BottleneckBlock, FastConv, build_layers, run_layers
from .norm import BatchNorm, FrozenBatchNorm


class ResNet(nnx.Module):
    """A ResNet of basic or bottleneck blocks, on NHWC input: the twin of :class:`resnet_bottleneck.models.ResNet`.

    The arguments are the Linen model's attributes (``stage_sizes``, ``block`` (an NNX block
    class), ``groups``, ``width_per_group``, ``num_classes`` (``None``: headless),
    ``stem_width``, ``stride_on``, ``zero_init_last``, ``bn_momentum`` (Flax's convention),
    ``bn_epsilon``, ``axis_name``, ``dtype``, ``param_dtype``, ``conv``,
    ``replace_stride_with_dilation``, ``norm`` (``'batch'``, ``'frozen'`` or ``'group'``),
    ``trainable_layers`` and timm's ``stem_type``, ``channels``, ``replace_stem_pool``, ``avg_down``,
    ``down_kernel_size``, ``block_reduce_first``, ``attn_layer``, ``attn_rd_ratio``, ``aa_layer``,
    ``drop_rate``, ``drop_path_rate``), plus ``in_features``, the input's channels, which NNX needs up
    front. The Linen model's ``remat``, ``scan`` and ``folded`` have no twin here: convert
    with :func:`~resnet_bottleneck.nnx.to_linen` for those.

    Every spec layer is an attribute at timm's name (``model.conv1[0]`` of a deep stem,
    ``model.maxpool``, ``model.layer1[0].se.fc1``, ``model.head_drop``). A model that drops
    (``drop_rate`` or ``drop_path_rate`` above 0) keeps a fork of ``rngs``' ``'dropout'`` stream as
    ``dropout_rngs`` and draws one key from it per training-mode call (``rngs=`` at the call overrides).
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
        stem_type: str = "",
        channels: Sequence[int] | None = None,
        replace_stem_pool: bool = False,
        avg_down: bool = False,
        down_kernel_size: int = 1,
        block_reduce_first: int = 1,
        attn_layer: str | None = None,
        attn_rd_ratio: float = 1 / 16,
        aa_layer: str | None = None,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
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
        self.stem_type, self.replace_stem_pool, self.avg_down = stem_type, replace_stem_pool, avg_down
        self.channels = tuple(channels) if isinstance(channels, list) else channels
        self.down_kernel_size, self.block_reduce_first = down_kernel_size, block_reduce_first
        self.attn_layer, self.attn_rd_ratio, self.aa_layer = attn_layer, attn_rd_ratio, aa_layer
        self.drop_rate, self.drop_path_rate = drop_rate, drop_path_rate
        if isinstance(block, type) and issubclass(block, nn.Module):
            raise InputTypeError(
                f"block must be an NNX block class such as resnet_bottleneck.nnx.BottleneckBlock; "
                f"got the Linen {block.__module__}.{block.__name__}"
            )
        spec = linen.check_layout(self)  # in_features too
        if norm == "frozen":
            norm_layer = partial(FrozenBatchNorm, epsilon=bn_epsilon)
        elif norm == "group":
            norm_layer = partial(nnx.GroupNorm, num_groups=32, epsilon=bn_epsilon)
        else:
            norm_layer = partial(BatchNorm, momentum=bn_momentum, epsilon=bn_epsilon, axis_name=axis_name)
        kind = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.stem_spec, self.head_spec = spec.stem, spec.head
        stem = _Stem(nnx.Conv, norm_layer, "torch", False, linen.conv_kernel_init, dtype, param_dtype)
        build_layers(self, stem, (*spec.stem.layers, *(spec.stem.pool or ())), rngs=rngs)
        common = dict(
            norm=norm_layer,
            conv=conv,
            use_bias=False,
            padding="torch",
            kernel_init=linen.conv_kernel_init,
            zero_init_last=zero_init_last,
            **kind,
        )
        paths = arch.linen_names(spec)
        for stage in spec.stages:
            blocks = [block(b.in_features, **linen.block_options(b), **common) for b in stage.blocks]
            setattr(self, stage.name, nnx.List(blocks))
        self.stage_names = tuple(stage.name for stage in spec.stages)
        #: each stage's blocks' Linen module names (``layer1_0``): the prefixes of their dropout keys
        self.block_scopes = tuple(tuple(paths[b.all_layers[0].name][0] for b in s.blocks) for s in spec.stages)
        self.fc = nnx.data(None)
        if spec.head is not None:
            linen.kind_of(HEADS, "head", spec.head.kind)[0](self, spec.head, kind)
        drops = spec.head is not None and spec.head.drop_rate > 0
        drops = drops or any(isinstance(layer, arch.DropPath) for layer in spec.layers())
        self.dropout_rngs = nnx.data(rngs["dropout"].fork() if drops else None)  # last: parameters unchanged

    def forward_features(self, x, *, rngs=None):
        """timm's ``forward_features``: the last stage's feature map, before pooling."""
        return self(x, part="features", rngs=rngs)

    def forward_head(self, x, *, pre_logits: bool = False, rngs=None):
        """timm's ``forward_head``: the head on :meth:`forward_features`' output; ``pre_logits``: the pooled
        features (after the head's dropout) instead of the logits."""
        return self(x, part="pre_logits" if pre_logits else "head", rngs=rngs)

    def reset_classifier(self, num_classes: int | None, *, rngs: nnx.Rngs) -> None:
        """timm's ``reset_classifier``, in place: a new head of ``num_classes`` outputs (``None``: headless),
        initialised from ``rngs``; every other variable kept."""
        if num_classes is not None:
            _checks.positive_int("num_classes", num_classes)
        rngs = _rngs.checked(rngs)
        self.num_classes = num_classes
        spec = linen.check_layout(self)
        self.head_spec, self.fc = spec.head, None
        if hasattr(self, "head_drop"):
            del self.head_drop
        if spec.head is not None:
            linen.kind_of(HEADS, "head", spec.head.kind)[0](
                self, spec.head, dict(dtype=self.dtype, param_dtype=self.param_dtype, rngs=rngs)
            )

    def __call__(self, x, *, features: bool = False, part: str = "all", rngs=None):
        """Logits, the last feature map (headless), or every stage's output.

        Args:
          x: images, ``(N, H, W, C)`` (for ``part='head'`` or ``'pre_logits'``: the last feature map).
          features: return ``{'stem': ..., 'C2': ..., ..., 'C5': ...}`` (see
            :func:`~resnet_bottleneck.models.feature_info`) instead of running the head.
          part: ``'all'``; ``'features'``, ``'head'``, ``'pre_logits'``: see :meth:`forward_features` and
            :meth:`forward_head`.
          rngs: the dropout randomness of this call in training mode (an ``nnx.Rngs``, whose ``'dropout'``
            stream gives one key, or a JAX key ``K``: then the model drops exactly as the Linen model
            applied with ``rngs={'dropout': K}``); by default a key from ``dropout_rngs``.
        """
        _checks.one_of("part", part, linen.PARTS)
        if x.ndim != 4:
            raise InputError(f"x must be a 4-D batch of images (N, H, W, C); got shape {x.shape}")
        keys = layers.DropoutKeys(self.dropout_rngs if rngs is None else rngs)
        x = jnp.asarray(x, self.dtype) if self.dtype is not None else x
        if part in ("head", "pre_logits"):
            if self.head_spec is None:
                raise InputError("a headless model (num_classes=None) has no head to apply")
            return self._head(x, keys, pre_logits=part == "pre_logits")
        x = run_layers(self, x, self.stem_spec.layers, keys)
        frozen = len(linen.TRAINABLE_LAYERS) - self.trainable_layers  # frozen from the input side: stem, layer1, ...
        x = jax.lax.stop_gradient(x) if frozen > 0 else x
        outputs = {"stem": x}
        x = run_layers(self, x, self.stem_spec.pool or (), keys)
        for i, stage in enumerate(self.stage_names):
            for block, scope in zip(getattr(self, stage), self.block_scopes[i]):
                x = block(x, rngs=keys.child(scope))
            x = jax.lax.stop_gradient(x) if frozen > i + 1 else x
            outputs[arch.STAGE_NAMES[i]] = x
        if features:
            return outputs
        if self.head_spec is None or part == "features":
            return x
        return self._head(x, keys)

    def _head(self, x, keys, pre_logits: bool = False):
        x = HEADS[self.head_spec.kind][1](self, x, self.head_spec, keys, pre_logits)
        return jnp.asarray(x, jnp.promote_types(x.dtype, jnp.float32))  # bf16 logits come back as float32


@dataclasses.dataclass(frozen=True)
class _Stem:
    """What the stem's layers are built with (the attributes a block gives :func:`~.blocks.build_layers`):
    the Linen stem's, plain ``nnx.Conv`` (the twin of its ``nn.Conv``) and torchvision's padding."""

    conv: Any
    norm: Any
    padding: str
    use_bias: bool
    kernel_init: Any
    dtype: Any
    param_dtype: Any


def _linear_build(model: ResNet, head: arch.Head, kind: dict) -> None:
    if head.drop_rate > 0:
        model.head_drop = nnx.Dropout(head.drop_rate)  # its key comes from the call (see ResNet.__call__)
    fc = head.layer
    setattr(model, fc.name, nnx.Linear(fc.in_features, fc.out_features, **kind))


def _linear_apply(model: ResNet, x, head: arch.Head, keys: layers.DropoutKeys, pre_logits: bool):
    """Global average pool, dropout (``drop_rate``, training only), then the classifier (as Linen's head)."""
    x = linen.global_average_pool(x)
    if head.drop_rate > 0 and not model.head_drop.deterministic:
        x = model.head_drop(x, rngs=keys.key("head_drop"))
    if pre_logits:
        return x
    return getattr(model, head.layer.name)(x)


#: Each spec head kind's NNX implementation: ``(build(model, head, kind), apply(model, x, head, keys, pre_logits))``.
HEADS = {"linear": (_linear_build, _linear_apply)}


def create_model(name: str, *, num_classes: int | None = 1000, rngs: nnx.Rngs, **options) -> ResNet:
    """A family member by name, e.g. ``create_model('resnet50d', rngs=nnx.Rngs(0))``.

    Args:
      name: a key of :data:`resnet_bottleneck.models.CONFIGS` (:func:`resnet_bottleneck.list_models`).
      num_classes: classifier outputs, or ``None`` for a headless backbone.
      rngs: the ``nnx.Rngs`` that initialise the parameters (and whose ``'dropout'`` stream a model
        that drops forks).
      **options: any other :class:`ResNet` argument (``dtype``, ``stride_on``,
        ``zero_init_last``, ``bn_momentum``, ``bn_epsilon``, ``conv``, ``in_features``, ...).
    """
    config = linen.model_config(name, options)
    rngs = _rngs.checked(rngs)
    return ResNet(**{**config, "block": TWINS[config["block"]]}, **options, num_classes=num_classes, rngs=rngs)
