"""The bottleneck family as data: ResNet-18...152, ResNeXt, Wide ResNet, and their backbones.

One :class:`ResNet` module and one table, :data:`CONFIGS`; every named model is a row
of that table, with torchvision's names, widths and parameter counts. The layout is
torchvision's: a 7x7/2 stem conv, BN, ReLU and a 3x3/2 max-pool, four stages of
blocks at strides 4, 8, 16 and 32, global average pooling and a linear classifier.
Padding is torchvision's explicit, symmetric padding (flax's ``'SAME'`` pads a
stride-2 conv on an even input (0, 1) instead of (1, 1)), and the stride of a
bottleneck stage sits on its 3x3 conv (ResNet v1.5) unless ``stride_on='1x1'``.

The model is unaware of the training loop: ``__call__(x, train)`` builds the BatchNorm
for batch statistics (``train=True``) or running averages (``train=False``) once and
injects it into every block.

For detection and segmentation backbones it has torchvision's three options:
``replace_stride_with_dilation`` (DeepLab's output stride 8 or 16), ``norm='frozen'``
(``FrozenBatchNorm2d``) and ``trainable_layers`` (only the last K of conv1, layer1..4 learn).
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from . import _checks, arch
from .arch import NORMS, STAGE_NAMES, STRIDE_PLACEMENTS, TRAINABLE_LAYERS  # noqa: F401 - names models exports
from .blocks import BLOCKS, BasicBlock, BottleneckBlock, FastConv, run_layers  # noqa: F401 - BasicBlock: exported
from .errors import InputError, InputTypeError
from .layers import (  # noqa: F401 - the pools' home was here
    POOLS,
    DropPath,
    _max_of,
    _windows,
    conv_kernel_init,
    global_average_pool,
    kind_of,
    max_pool,
)
from .norm import BatchNorm, FrozenBatchNorm

#: The family, one row a model: the :class:`ResNet` constructor arguments of each of
#: torchvision's names (``create_model(name)`` is ``ResNet(**CONFIGS[name])``): a view of
#: :data:`resnet_bottleneck.arch.FAMILY` with each block kind as its Linen class.
CONFIGS: dict[str, dict[str, Any]] = {name: {**row, "block": BLOCKS[row["block"]]} for name, row in arch.FAMILY.items()}


class _ScanStep(nn.Module):
    """Wraps a block as an ``nn.scan`` body: carry in, carry out."""

    block: Any

    @nn.compact
    def __call__(self, x, _):
        return self.block(name="block")(x), None


def _identity(x):
    return x


def folded_norm(**_):
    """Stands where a BatchNorm was folded into the conv before it: the identity, no variables."""
    return _identity


class ResNet(nn.Module):
    """A ResNet of basic or bottleneck blocks, on NHWC input.

    Attributes:
      stage_sizes: blocks in each stage (four for the torchvision layouts).
      block: the block class, :class:`~.blocks.BottleneckBlock` or :class:`~.blocks.BasicBlock`
        (or any class with their ``kind``, a key of :data:`resnet_bottleneck.arch.BLOCK_KINDS`).
      groups: groups of the bottleneck 3x3 convs (ResNeXt cardinality).
      width_per_group: channels per group of the 3x3 convs at the first stage (64 for
        ResNet, 128 for Wide ResNet); see :meth:`~.blocks.BottleneckBlock.stage_args`.
      num_classes: classifier outputs; ``None`` for a headless backbone whose
        ``__call__`` returns the last stage's feature map.
      stem_width: channels of the stem (and the base width of the stages).
      stride_on: ``'3x3'`` (v1.5, torchvision) or ``'1x1'`` (v1, the paper, Keras).
      zero_init_last: zero-init each block's last BN scale (Goyal et al., 2017).
      bn_momentum: Flax's convention: the weight of the *old* running value.
        PyTorch's ``momentum=0.1`` is Flax's ``0.9``. The running variance folds in the
        unbiased batch variance, as PyTorch's does (:class:`~resnet_bottleneck.norm.BatchNorm`).
      bn_epsilon: BatchNorm epsilon.
      axis_name: a mapped axis to synchronise BatchNorm statistics over (``pmap`` /
        ``shard_map``); not needed under ``jit`` with sharded inputs.
      dtype: compute dtype (``jnp.bfloat16`` for mixed precision); parameters and
        BatchNorm statistics stay ``param_dtype``; logits are returned in float32 (or wider).
      param_dtype: parameter dtype.
      remat: recompute each block's activations in the backward pass
        (``jax.checkpoint``): less memory for deep models, one more forward.
      folded: inference form made by :func:`~resnet_bottleneck.fold.fold_batchnorm`:
        every BatchNorm folded into the conv before it (which gains a bias).
      scan: run the identical blocks of each stage (all but the first) as one
        ``nn.scan``, so a deep model traces and compiles two blocks per stage (the first and
        the scanned one). Its parameters are stacked under ``layerN_scan``; :func:`unscan_variables` and
        :func:`scan_variables` convert between the two layouts.
      conv: the blocks' convolution constructor; :data:`~resnet_bottleneck.blocks.FastConv`
        (1x1 convs as matrix products) by default, ``nn.Conv`` for the plain form. The
        variables are the same either way.
      replace_stride_with_dilation: three booleans, for the stages C3, C4 and C5, as
        torchvision's: a ``True`` stage keeps the resolution (stride 1) and dilates its
        3x3 convs instead, by twice the previous stage's dilation; its first block keeps the
        previous dilation, as torchvision's ``_make_layer``. ``(False, True, True)`` is
        DeepLab's output stride 8. Bottleneck models only (torchvision's basic block refuses).
      norm: ``'batch'`` (:class:`~resnet_bottleneck.norm.BatchNorm`) or ``'frozen'``
        (:class:`~resnet_bottleneck.norm.FrozenBatchNorm`: torchvision's
        ``FrozenBatchNorm2d``, all four vectors fixed in ``batch_stats``, the same in train
        and eval, ``bn_epsilon`` its epsilon).
      trainable_layers: how many of conv1 (with bn1), layer1, ..., layer4 learn, counted from
        layer4 (torchvision's meaning; 5, the default, is all). The input side of the frozen
        part is cut from autodiff (``stop_gradient``), so its parameters get exactly zero
        gradient and no backward pass is spent on it; pair it with
        :func:`resnet_bottleneck.freeze` so that the optimizer does not move them
        either (weight decay would).

    timm's options (``timm.models.resnet.ResNet``'s, with its meaning; the timm names' rows set them):
      stem_type: ``''`` (the 7x7 conv), ``'deep'`` (three 3x3 convs, ``stem_width``, ``stem_width``,
        ``2 * stem_width`` wide) or ``'deep_tiered'`` (``3 * (stem_width // 4)``, ``stem_width``, ``2 * stem_width``).
        Unlike timm's, our ``stem_width`` also sizes the 7x7 stem (timm's is always 64 wide).
      channels: each stage's planes; ``None``: the stem's output width doubled each stage.
      replace_stem_pool: a 3x3/2 conv, norm and ReLU instead of the stem's max-pool (ResNet-RS).
      avg_down: projection shortcuts average-pool 2x2 (``ceil_mode``, padding not counted) before a
        1x1 conv at stride 1 (ResNet-D).
      down_kernel_size: the projection conv's kernel where it strides (3 for SENet-154).
      block_reduce_first: the first conv of each block is this many times narrower (2 for SENet-154).
      attn_layer: ``'se'`` (squeeze-excitation, timm's ``SEModule``) or ``'eca'`` after each block's
        last norm; ``attn_rd_ratio``: SE's reduction (``make_divisible(C * ratio, 8)`` channels).
      aa_layer: anti-aliased downsampling, ``'blur'`` (``BlurPool2d``) or ``'avg'`` (2x2 average pool)
        after the strided conv (which then runs at stride 1), and in the stem's pool.
      drop_rate: dropout before the classifier in training (``rngs={'dropout': key}``).
      drop_path_rate: stochastic depth, rising linearly from 0 at the first block to this at the
        last, in training only (``rngs={'dropout': key}``).
    """

    stage_sizes: Sequence[int]
    block: type = BottleneckBlock
    groups: int = 1
    width_per_group: int = 64
    num_classes: int | None = 1000
    stem_width: int = 64
    stride_on: str = "3x3"
    zero_init_last: bool = False
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    axis_name: str | None = None
    dtype: Any = None
    param_dtype: Any = jnp.float32
    remat: bool = False
    scan: bool = False
    folded: bool = False
    conv: Any = FastConv
    replace_stride_with_dilation: Sequence[bool] = (False, False, False)
    norm: str = "batch"
    trainable_layers: int = len(TRAINABLE_LAYERS)
    stem_type: str = ""
    channels: Sequence[int] | None = None
    replace_stem_pool: bool = False
    avg_down: bool = False
    down_kernel_size: int = 1
    block_reduce_first: int = 1
    attn_layer: str | None = None
    attn_rd_ratio: float = 1 / 16
    aa_layer: str | None = None
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0

    def forward_features(self, x, train: bool = False):
        """timm's ``forward_features``: the last stage's feature map, before pooling."""
        return self(x, train, part="features")

    def forward_head(self, x, train: bool = False, pre_logits: bool = False):
        """timm's ``forward_head``: the head on ``forward_features``' output; ``pre_logits``: the pooled
        features (after the head's dropout) instead of the logits."""
        return self(x, train, part="pre_logits" if pre_logits else "head")

    @nn.compact
    def __call__(self, x, train: bool = False, *, features: bool = False, part: str = "all"):
        """Logits, the last feature map (headless), or every stage's output.

        Args:
          x: images, ``(N, H, W, 3)`` (for ``part='head'`` or ``'pre_logits'``: the last feature map).
          train: batch statistics (and running-average updates: apply with
            ``mutable=['batch_stats']``) if true, running averages if false; with ``drop_rate`` or
            ``drop_path_rate`` it drops too (apply with ``rngs={'dropout': key}``).
          features: return ``{'stem': ..., 'C2': ..., ..., 'C5': ...}`` (see
            :func:`feature_info`) instead of running the head.
          part: ``'all'``; ``'features'``, ``'head'``, ``'pre_logits'``: see :meth:`forward_features`
            and :meth:`forward_head`.
        """
        spec = check_layout(self)
        _checks.one_of("part", part, PARTS)
        if x.ndim != 4:
            raise InputError(f"x must be a 4-D batch of images (N, H, W, C); got shape {x.shape}")
        if part in ("head", "pre_logits"):
            if spec.head is None:
                raise InputError("a headless model (num_classes=None) has no head to apply")
            x = jnp.asarray(x, self.dtype) if self.dtype is not None else x
            return self._head(x, spec, train, pre_logits=part == "pre_logits")
        if self.scan and self.drop_path_rate > 0:
            raise InputError(
                f"scan=True needs identical blocks, but drop_path_rate={self.drop_path_rate!r} gives each its own rate"
            )
        if self.norm == "frozen":
            norm = partial(FrozenBatchNorm, epsilon=self.bn_epsilon)
        elif self.norm == "group":
            norm = partial(nn.GroupNorm, num_groups=32, epsilon=self.bn_epsilon)
        else:
            norm = partial(
                BatchNorm,
                use_running_average=not train,
                momentum=self.bn_momentum,
                epsilon=self.bn_epsilon,
                axis_name=self.axis_name,
            )
        if self.folded:
            if train:
                raise InputError(
                    "a folded model (BatchNorm folded into convs) is for inference: call it with train=False"
                )
            if self.norm == "group":
                raise InputError(
                    "norm='group': a GroupNorm normalises each image by its own statistics; it cannot be folded"
                )
            norm = folded_norm
        common = dict(
            norm=norm,
            conv=self.conv,
            use_bias=self.folded,
            padding="torch",
            kernel_init=conv_kernel_init,
            zero_init_last=self.zero_init_last,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            drop_path=partial(DropPath, deterministic=not train),
        )
        block_cls = nn.remat(self.block) if self.remat else self.block
        paths = arch.linen_names(spec, scan=self.scan)  # a scanned block's own path is layerN_scan

        x = jnp.asarray(x, self.dtype) if self.dtype is not None else x
        stem = _Stem(nn.Conv, norm, "torch", self.folded, conv_kernel_init, self.dtype, self.param_dtype, DropPath)
        x = run_layers(stem, x, spec.stem.layers, paths)
        frozen = len(TRAINABLE_LAYERS) - self.trainable_layers  # frozen from the input side: stem, layer1, ...
        x = jax.lax.stop_gradient(x) if frozen > 0 else x
        outputs = {"stem": x}
        x = run_layers(stem, x, spec.stem.pool, paths)
        x = jax.lax.stop_gradient(x) if frozen > 0 and spec.stem.pool else x  # timm's pool may hold a conv

        for i, stage in enumerate(spec.stages):
            names = [paths[block.all_layers[0].name][0] for block in stage.blocks]  # layerN_j
            x = block_cls(**block_options(stage.blocks[0]), **common, name=names[0])(x)
            if self.scan and len(stage.blocks) > 1:
                make = partial(block_cls, **block_options(stage.blocks[1]), **common)
                body = nn.scan(
                    _ScanStep,
                    variable_axes={"params": 0, "batch_stats": 0},
                    split_rngs={"params": True},
                    length=len(stage.blocks) - 1,
                )
                x, _ = body(make, name=paths[stage.blocks[1].all_layers[0].name][0])(x, None)  # layerN_scan
            else:
                for block, name in zip(stage.blocks[1:], names[1:]):
                    x = block_cls(**block_options(block), **common, name=name)(x)
            x = jax.lax.stop_gradient(x) if frozen > i + 1 else x
            outputs[stage.feature] = x

        if features:
            return outputs
        if spec.head is None or part == "features":
            return x
        return self._head(x, spec, train)

    def _head(self, x, spec: arch.ResNetSpec, train: bool, pre_logits: bool = False):
        x = kind_of(HEADS, "head", spec.head.kind)(self, x, spec.head, train, pre_logits)
        return jnp.asarray(x, jnp.promote_types(x.dtype, jnp.float32))  # bf16 logits come back as float32


#: What :class:`ResNet` computes: everything, or timm's ``forward_features`` / ``forward_head`` parts.
PARTS = ("all", "features", "head", "pre_logits")


@dataclasses.dataclass(frozen=True)
class _Stem:
    """What the stem's layers are built with (the attributes a block gives :func:`~.blocks.run_layers`)."""

    conv: Any
    norm: Any
    padding: str
    use_bias: bool
    kernel_init: Any
    dtype: Any
    param_dtype: Any
    drop_path: Any


def _linear_head(model: ResNet, x, head: arch.Head, train: bool, pre_logits: bool):
    """Global average pool, dropout (``drop_rate``, training only), then the dense classifier."""
    x = global_average_pool(x)
    if head.drop_rate > 0:
        x = nn.Dropout(head.drop_rate, deterministic=not train, name="head_drop")(x)
    if pre_logits:
        return x
    fc = head.layer
    return nn.Dense(fc.out_features, dtype=model.dtype, param_dtype=model.param_dtype, name=fc.name)(x)


#: Each spec head kind's Linen implementation, ``(model, x, head, train, pre_logits) -> logits``.
HEADS = {"linear": _linear_head}


# The layout's arithmetic and checks, as functions of a ResNet's attributes: shared by the
# Linen ResNet and its Flax NNX twin (resnet_bottleneck.nnx.ResNet), which has the same ones.


def block_options(block: arch.Block) -> dict:
    """A block class's constructor arguments for the block ``block`` of a spec (Linen and NNX alike)."""
    return {
        **dict(block.args),
        "strides": block.stride[0] if block.stride[0] == block.stride[1] else block.stride,
        "projection": block.shortcut.kind == "projection",
    }


def check_layout(model) -> arch.ResNetSpec:
    """``model``'s spec, its attributes checked (errors name the attribute; see
    :func:`resnet_bottleneck.arch.options_of`) and its ``block`` a block class."""
    if getattr(model.block, "kind", None) not in arch.BLOCK_KINDS:
        raise InputTypeError(f"block must be a block class such as BottleneckBlock or BasicBlock; got {model.block!r}")
    return arch.describe(model)


def _model_name(name: Any) -> str:
    return _checks.model_name(name, tuple(CONFIGS))


def create_model(name: str, num_classes: int | None = 1000, **options) -> ResNet:
    """A family member by torchvision's or timm's name, e.g. ``create_model('resnet50d')``.

    Args:
      name: a key of :data:`CONFIGS` (see :func:`list_models`).
      num_classes: classifier outputs, or ``None`` for a headless backbone.
      **options: any other :class:`ResNet` attribute (``dtype``, ``remat``, ``scan``,
        ``stride_on``, ``zero_init_last``, ``bn_momentum``, ...).
    """
    config = model_config(name, options)
    if num_classes is not None:
        num_classes = _checks.positive_int("num_classes", num_classes)
    known = {f.name for f in dataclasses.fields(ResNet) if f.init and f.name not in ("parent", "name", "num_classes")}
    unknown = set(options) - known
    if unknown:
        raise InputTypeError(f"unknown options {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    return ResNet(**config, **options, num_classes=num_classes)


def model_config(name: str, options) -> dict:
    """``CONFIGS[name]``, after checking the name and that ``options`` leave the architecture the name's."""
    config = CONFIGS[_model_name(name)]
    # what makes the architecture the name's: every option a row sets, but the backbones' norm where the row
    # leaves it (resnet50_gn's GroupNorm is its own; norm='frozen' is any other name's backbone option)
    fixed = ((set().union(*CONFIGS.values()) - {"norm"}) | set(config)) & set(options)
    if fixed:
        raise InputTypeError(f"create_model({name!r}) fixes {', '.join(sorted(fixed))}; use ResNet(...) to change them")
    return config


def list_models(pattern: str | None = None) -> list[str]:
    """The registered names (torchvision's, ``resnet_tiny`` and timm's), sorted; ``pattern``: only those
    matching it (``fnmatch``, e.g. ``'seresnext*'``), as ``timm.list_models``."""
    if pattern is not None and not isinstance(pattern, str):
        raise InputTypeError(f"pattern must be a string such as 'resnet50*' or None; got {pattern!r}")
    names = sorted(CONFIGS)
    return names if pattern is None else fnmatch.filter(names, pattern)


def reset_classifier(model: ResNet, variables, num_classes: int | None, *, seed: int = 0) -> tuple[ResNet, dict]:
    """timm's ``reset_classifier`` for Linen: ``model`` with a new head of ``num_classes`` outputs
    (``None``: headless), freshly initialised from ``seed``; every other variable kept.

    Returns ``(model, variables)``; the input ``variables`` are not modified.
    """
    if num_classes is not None:
        _checks.positive_int("num_classes", num_classes)
    new = model.clone(num_classes=num_classes)
    spec = check_layout(new)
    params = {k: v for k, v in variables["params"].items() if k != "fc"}
    if spec.head is not None:
        fc = spec.head.layer
        dense = nn.Dense(fc.out_features, dtype=model.dtype, param_dtype=model.param_dtype)
        shape = jnp.zeros((1, fc.in_features), model.param_dtype)
        params[fc.name] = dense.init(jax.random.PRNGKey(_checks.seed(seed)), shape)["params"]
    return new, {**variables, "params": params}


def feature_info(model: Any) -> list[dict]:
    """Name, channels and stride of each output of ``model(x, features=True)``.

    ``model`` is a ResNet (Linen or NNX) or a name of :data:`CONFIGS`.

    ``stem`` is the stem's activation before the max-pool (stride 2, as timm's
    ``act1``); ``C2``...``C5`` are the stages' outputs at strides 4 to 32 (a stage
    dilated by ``replace_stride_with_dilation`` keeps the stride of the one before), the
    inputs detection and segmentation heads (FPN, DeepLab) consume.
    """
    if isinstance(model, str):
        model = create_model(model)
    return check_layout(model).feature_info()


def count_params(variables) -> int:
    """Number of trainable parameters (the ``params`` collection; BN statistics excluded)."""
    params = variables.get("params", variables) if hasattr(variables, "get") else variables
    return int(sum(leaf.size for leaf in jax.tree_util.tree_leaves(params)))


def _per_collection(variables, fn):
    return {collection: fn(dict(tree)) for collection, tree in variables.items()}


def unscan_variables(variables):
    """Variables of a ``scan=True`` model in the layout of the plain model (``layerN_j``)."""

    def unstack(tree):
        result = {}
        for key, value in tree.items():
            if key.endswith("_scan"):
                stage = key[: -len("_scan")]
                inner = value["block"]
                n = jax.tree_util.tree_leaves(inner)[0].shape[0]
                for j in range(n):
                    result[f"{stage}_{j + 1}"] = jax.tree_util.tree_map(lambda a, j=j: a[j], inner)
            else:
                result[key] = value
        return result

    return _per_collection(variables, unstack)


def scan_variables(variables):
    """Variables of a plain model in the layout of its ``scan=True`` twin."""

    def stack(tree):
        result, stages = {}, {}
        for key, value in tree.items():
            stage, _, index = key.rpartition("_")
            if key.startswith("layer") and index.isdigit() and index != "0":
                stages.setdefault(stage, {})[int(index)] = value
            else:
                result[key] = value
        for stage, blocks in stages.items():
            ordered = [blocks[j] for j in sorted(blocks)]
            result[f"{stage}_scan"] = {"block": jax.tree_util.tree_map(lambda *a: jnp.stack(a), *ordered)}
        return result

    return _per_collection(variables, stack)
