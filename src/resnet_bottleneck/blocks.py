"""Residual blocks: the founding specification's bottleneck block and the companion basic block.

Both blocks are plain Flax Linen modules. With their defaults they are the textbook
blocks of the founding specification (flax's ``Conv`` and ``BatchNorm``, batch
statistics, ``'SAME'`` padding, identity shortcut): the same variable tree and initial
values as anyone's ``@nn.compact`` textbook solution, and the same outputs and gradients
up to float32 rounding, because the 1x1 convs are computed as matrix products
(:data:`FastConv`) and BatchNorm's gradient in closed form (:data:`~.norm.FLAX_BATCH_NORM`).
Every option below defaults to that behaviour.

Each block class carries what a model needs to build a stage of it, as torchvision's and
timm's do: ``kind`` (its :data:`resnet_bottleneck.arch.BLOCK_KINDS` entry), ``expansion`` (output
channels per ``planes``) and ``stage_args`` (its constructor arguments for a stage).

The blocks do not know about train/eval: like the Flax ImageNet example, the caller
injects ``norm`` (for example ``partial(nn.BatchNorm, use_running_average=not train)``)
and ``conv``. Submodules keep the textbook names (``Conv_0``, ``BatchNorm_0``, ...)
whatever is injected, the way torchvision's ``bn1`` stays ``bn1`` for any
``norm_layer``, so checkpoints and weight conversion do not depend on the choice.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from . import _checks, arch, layers
from .arch import STRIDE_PLACEMENTS
from .errors import InputError, InputTypeError
from .layers import DropPath
from .norm import FLAX_BATCH_NORM

ModuleDef = Any

PADDINGS = ("SAME", "torch")

_NHWC = lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), ("NHWC", "HWIO", "NHWC"))


def conv_1x1_as_dot(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    precision=None,
    **kwargs,
):
    """``lax.conv_general_dilated``, with 1x1 convolutions computed as a matrix product.

    A 1x1 conv is a dot over channels at every (strided) position, and XLA:CPU runs it
    (and far more so its gradient) much faster as a dot (see BENCHMARKS.md). Everything
    else goes to ``lax.conv_general_dilated`` unchanged. Pass it to
    ``nn.Conv(conv_general_dilated=...)``: parameters and their names stay flax's.
    """
    kwargs = {k: v for k, v in kwargs.items() if v is not None}  # flax NNX's Conv passes out_sharding=None
    unpadded = padding in ("VALID", "SAME") or all(tuple(p) == (0, 0) for p in padding)
    pointwise = (
        rhs.ndim == 4
        and rhs.shape[:2] == (1, 1)
        and feature_group_count == 1
        and unpadded
        and tuple(lhs_dilation or (1, 1)) == (1, 1)
        and dimension_numbers == _NHWC
        and not kwargs
    )
    if not pointwise:
        return lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count,
            precision=precision,
            **kwargs,
        )
    sh, sw = window_strides
    x = lhs[:, ::sh, ::sw, :] if (sh, sw) != (1, 1) else lhs  # a 1x1 conv reads only the strided positions
    # As a 2-D product: the weight gradient then contracts one axis, not three, which
    # XLA:CPU would first transpose into a copy.
    y = lax.dot_general(x.reshape(-1, x.shape[-1]), rhs[0, 0], (((1,), (0,)), ((), ())), precision=precision)
    return y.reshape(*x.shape[:-1], rhs.shape[-1])


#: ``nn.Conv`` with 1x1 convolutions as dots: the same module, parameters and names.
FastConv = partial(nn.Conv, conv_general_dilated=conv_1x1_as_dot)


def _pair(name: str, value: Any) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise InputError(f"{name} must be an int or a pair of ints; got {value!r}")
        return (_checks.positive_int(name, value[0]), _checks.positive_int(name, value[1]))
    n = _checks.positive_int(name, value)
    return (n, n)


def conv_options(block, layer: arch.Conv) -> dict:
    """The keyword arguments of a block's conv ``layer`` (a spec), padded as ``block.padding`` says:
    ``'torch'``, the spec's own (torchvision's) symmetric padding; ``'SAME'``, flax's.

    Shared by the Linen blocks and their Flax NNX twins, whose ``conv`` constructors take the same keywords.
    """
    if layer.kernel == 1:
        padding = "VALID"  # a 1x1 conv never pads, whatever the stride
    elif block.padding == "SAME":
        padding = "SAME"
    else:  # torchvision: the spec's padding on both sides, also when strided
        padding = ((layer.padding, layer.padding), (layer.padding, layer.padding))
    return dict(
        strides=layer.stride,
        padding=padding,
        kernel_dilation=(layer.dilation, layer.dilation),
        feature_group_count=layer.groups,
        use_bias=block.use_bias,
        kernel_init=block.kernel_init,
        dtype=block.dtype,
        param_dtype=block.param_dtype,
    )


def _conv(block, layer: arch.Conv, name: str):
    """The block's conv ``layer`` (a spec), as the Linen module ``name``."""
    return block.conv(layer.out_features, (layer.kernel, layer.kernel), **conv_options(block, layer), name=name)


def _norm(block, layer: arch.Norm, name: str):
    kwargs = {"scale_init": nn.initializers.zeros_init()} if layer.zero_init else {}
    return block.norm(dtype=block.dtype, param_dtype=block.param_dtype, name=name, **kwargs)


def _se(block, layer: arch.SqueezeExcite, name: str):
    return layers.SqueezeExcite(layer.reduced, dtype=block.dtype, param_dtype=block.param_dtype, name=name)


def _eca(block, layer: arch.Eca, name: str):
    return layers.Eca(layer.kernel, dtype=block.dtype, param_dtype=block.param_dtype, name=name)


#: How each spec layer kind is built in Linen: ``(block, layer, name) -> module or function``.
LAYERS = {
    arch.Conv: _conv,
    arch.Norm: _norm,
    arch.Act: lambda block, layer, name: nn.relu,
    arch.Pool: lambda block, layer, name: partial(layers.kind_of(layers.POOLS, "pool", layer.kind), p=layer),
    arch.SqueezeExcite: _se,
    arch.Eca: _eca,
    arch.DropPath: lambda block, layer, name: block.drop_path(rate=layer.rate, name=name),
}


def run_layers(block, x, spec_layers, names: dict):
    """``spec_layers`` in order, each built by :data:`LAYERS` as the Linen module ``names[layer.name][-1]``
    (the spec name's last part for layers without variables)."""
    for layer in spec_layers:
        name = names[layer.name][-1] if layer.name in names else layer.name.rpartition(".")[2]
        x = LAYERS[type(layer)](block, layer, name)(x)
    return x


def projects(block, in_features: int, features: int, strides: tuple[int, int]) -> bool:
    """Whether ``block``'s shortcut is a projection; an error if ``projection=False`` cannot be."""
    needed = arch.needs_projection(in_features, features, strides)
    project = needed if block.projection is None else bool(block.projection)
    if needed and not project:
        raise InputError(
            f"projection=False needs an identity shortcut, but the input has {in_features} channels "
            f"and strides {strides} while the block outputs {features} channels at stride (1, 1); "
            "use projection=None (automatic) or True"
        )
    return project


#: How each shortcut kind is computed in Linen: ``(block, x, shortcut spec, names) -> residual``.
SHORTCUTS = {
    "identity": lambda block, x, shortcut, names: x,
    "projection": lambda block, x, shortcut, names: run_layers(block, x, shortcut.layers, names),
}


def residual(block, x, spec: arch.Block):
    """A residual block from its spec: the main path, plus the shortcut, then ReLU.

    Its modules are named by :func:`resnet_bottleneck.arch.names.linen_names` (``Conv_k``,
    ``BatchNorm_k``): the founding block's textbook tree.
    """
    names = arch.linen_names(spec)
    y = run_layers(block, x, spec.layers, names)
    shortcut = SHORTCUTS[spec.shortcut.kind](block, x, spec.shortcut, names)
    if y.shape[1:3] != shortcut.shape[1:3]:
        raise InputError(
            f"block {getattr(block, 'name', None) or spec.name}, on a {tuple(x.shape[1:3])} map, gives "
            f"{tuple(y.shape[1:3])} on its main path but {tuple(shortcut.shape[1:3])} on its shortcut: aa_layer='avg' "
            "(a 2x2 pool, as timm's) needs even maps at every strided block; use an input size divisible by 32"
        )
    return nn.relu(y + shortcut.astype(y.dtype))


def block_spec(block, in_features: int, args: dict, strides: tuple[int, int]) -> arch.Block:
    """The spec of a block module of ``block.kind`` (Linen or NNX) on ``in_features`` channels."""
    project = projects(block, in_features, args[arch.block_kind(block.kind).out_key], strides)
    return arch.describe_block(
        block.kind, in_features, args, stride=strides, projection=project, zero_init_last=block.zero_init_last
    )


def _check_common(block) -> tuple[int, int]:
    _checks.one_of("padding", block.padding, PADDINGS)
    if block.projection is not None and not isinstance(block.projection, bool):
        raise InputTypeError(f"projection must be None (automatic), True or False; got {block.projection!r}")
    _checks.positive_int("dilation", block.dilation)
    return _pair("strides", block.strides)


def common_args(block) -> dict:
    """The block's timm options (:data:`resnet_bottleneck.arch.family.COMMON_ARGS`), checked (errors name them)."""
    return arch.check_block_args({key: getattr(block, key) for key in arch.COMMON_ARGS})


def bottleneck_plan(block) -> tuple[int, int, int, tuple[int, int]]:
    """A bottleneck block's checked attributes: ``(mid, out, groups, strides)``.

    Shared by :class:`BottleneckBlock` and its Flax NNX twin, so both check the same way (the
    spec places the stride); every error names the attribute.
    """
    mid = _checks.positive_int("mid_features", block.mid_features)
    out = _checks.positive_int("out_features", block.out_features)
    groups = _checks.positive_int("groups", block.groups)
    strides = _check_common(block)
    _checks.one_of("stride_on", block.stride_on, STRIDE_PLACEMENTS)
    if mid % groups:
        raise InputError(f"groups must divide mid_features; got groups={groups}, mid_features={mid}")
    return mid, out, groups, strides


def basic_plan(block) -> tuple[int, tuple[int, int]]:
    """A basic block's checked attributes: ``(features, strides)`` (see :func:`bottleneck_plan`)."""
    return _checks.positive_int("features", block.features), _check_common(block)


class BottleneckBlock(nn.Module):
    """ResNet bottleneck block: 1x1 squeeze -> 3x3 at low width -> 1x1 expand, + shortcut.

    ``Conv1x1(mid) -> BN -> ReLU -> Conv3x3(mid) -> BN -> ReLU -> Conv1x1(out) -> BN
    -> (+ shortcut) -> ReLU``. There is no ReLU between the last BN and the add.

    Attributes:
      mid_features: width of the squeezed representation (usually ``out_features // 4``;
        ResNeXt and Wide ResNet widen it).
      out_features: channels out.
      strides: spatial stride of the block, an int or an (h, w) pair.
      stride_on: where the stride sits. ``'3x3'`` is ResNet v1.5 (torchvision, timm,
        the Flax ImageNet example): the strided conv sees every input position and
        the model is about 0.5% top-1 better. ``'1x1'`` is the paper's v1 (Keras,
        Caffe): the first 1x1 conv strides, skipping three in four positions unseen.
      projection: ``None`` adds a 1x1 conv + BN on the shortcut exactly when the input's
        channels differ from ``out_features`` or ``strides`` is not 1; ``True`` always
        adds it; ``False`` never does (and refuses inputs that then cannot be added).
      groups: groups of the 3x3 conv (ResNeXt cardinality); divides ``mid_features``.
      dilation: dilation of the 3x3 conv (detection/segmentation backbones).
      use_bias: conv biases. ``True`` is flax's default and the specification's; the models use
        ``False`` because every conv is followed by BN.
      zero_init_last: start the last BN's scale at zero, so the block starts as the
        identity (Goyal et al., 2017).
      padding: ``'SAME'`` (flax's, the specification's) or ``'torch'`` (symmetric, as torchvision).
        They differ only for the strided 3x3 on an even input: ``'SAME'`` pads (0, 1),
        torchvision (1, 1). Use ``'torch'`` with torchvision weights.
      norm: the normalisation constructor; by default the textbook's training-mode
        BatchNorm (flax's ``nn.BatchNorm``, with its gradient in closed form). Pass
        ``partial(nn.BatchNorm, use_running_average=True, ...)`` for eval, momentum or
        epsilon (or ``partial(FLAX_BATCH_NORM, ...)`` for the same with the fast gradient).
      conv: the convolution constructor (``nn.Conv`` signature). The default,
        :data:`FastConv`, is ``nn.Conv`` with the 1x1 convs computed as matrix products:
        the same variables and initial values, results within float32 rounding of
        ``nn.Conv``'s, faster on XLA:CPU. Pass ``nn.Conv`` for the plain form.
      kernel_init: initializer of the conv kernels (flax's default, LeCun normal).
      dtype: compute dtype (e.g. ``jnp.bfloat16``); ``None`` follows the inputs.
      param_dtype: parameter dtype; BatchNorm statistics stay in it.
    """

    kind: ClassVar[str] = "bottleneck"
    expansion: ClassVar[int] = arch.BLOCK_KINDS["bottleneck"].expansion

    mid_features: int
    out_features: int
    strides: int | tuple[int, int] = 1
    stride_on: str = "3x3"
    projection: bool | None = None
    groups: int = 1
    dilation: int = 1
    use_bias: bool = True
    zero_init_last: bool = False
    padding: str = "SAME"
    norm: ModuleDef = FLAX_BATCH_NORM
    conv: ModuleDef = FastConv
    kernel_init: Callable = nn.linear.default_kernel_init
    dtype: Any = None
    param_dtype: Any = jnp.float32
    reduce_first: int = 1
    attn_layer: str | None = None
    attn_rd_ratio: float = 1 / 16
    aa_layer: str | None = None
    drop_path_rate: float = 0.0
    avg_down: bool = False
    down_kernel_size: int = 1
    drop_path: ModuleDef = DropPath

    @classmethod
    def stage_args(
        cls, planes: int, *, groups: int = 1, width_per_group: int = 64, stride_on: str = "3x3", dilation: int = 1
    ) -> dict:
        """Constructor arguments of a stage's blocks at ``planes`` (torchvision's widths).

        The 3x3 conv is ``int(planes * width_per_group / 64) * groups`` wide (ResNeXt
        groups it, Wide ResNet doubles it) and the block outputs ``planes * expansion``.
        ``dilation`` is the stage's (its first block may be given the previous stage's).
        """
        _checks.positive_int("dilation", dilation)
        return arch.stage_args(
            dict(
                block=cls.kind, stem_width=planes, groups=groups, width_per_group=width_per_group, stride_on=stride_on
            ),
            0,
            dilation,
        )

    @nn.compact
    def __call__(self, x):
        mid, out, groups, strides = bottleneck_plan(self)
        args = dict(mid_features=mid, out_features=out, groups=groups, stride_on=self.stride_on, **common_args(self))
        return residual(self, x, block_spec(self, x.shape[-1], args, strides))


class BasicBlock(nn.Module):
    """ResNet basic block: ``Conv3x3 -> BN -> ReLU -> Conv3x3 -> BN -> (+ shortcut) -> ReLU``.

    The companion of :class:`BottleneckBlock` (ResNet-18/34). The stride sits on the
    first 3x3 conv. Attributes mean what they mean for :class:`BottleneckBlock`;
    ``features`` is both the width and the output channels.
    """

    kind: ClassVar[str] = "basic"
    expansion: ClassVar[int] = arch.BLOCK_KINDS["basic"].expansion

    features: int
    strides: int | tuple[int, int] = 1
    projection: bool | None = None
    dilation: int = 1
    use_bias: bool = True
    zero_init_last: bool = False
    padding: str = "SAME"
    norm: ModuleDef = FLAX_BATCH_NORM
    conv: ModuleDef = FastConv
    kernel_init: Callable = nn.linear.default_kernel_init
    dtype: Any = None
    param_dtype: Any = jnp.float32
    reduce_first: int = 1
    attn_layer: str | None = None
    attn_rd_ratio: float = 1 / 16
    aa_layer: str | None = None
    drop_path_rate: float = 0.0
    avg_down: bool = False
    down_kernel_size: int = 1
    drop_path: ModuleDef = DropPath

    @classmethod
    def stage_args(
        cls, planes: int, *, groups: int = 1, width_per_group: int = 64, stride_on: str = "3x3", dilation: int = 1
    ) -> dict:
        """Constructor arguments of a stage's blocks at ``planes``.

        A basic block has one width, so ``groups`` and ``width_per_group`` must keep their
        defaults, and a stage of them is not dilated (torchvision raises the same way:
        "Dilation > 1 not supported in BasicBlock"); the stride always sits on the first
        3x3 conv, so ``stride_on`` is only checked.
        """
        return arch.stage_args(
            dict(
                block=cls.kind, stem_width=planes, groups=groups, width_per_group=width_per_group, stride_on=stride_on
            ),
            0,
            dilation,
        )

    @nn.compact
    def __call__(self, x):
        features, strides = basic_plan(self)
        return residual(self, x, block_spec(self, x.shape[-1], dict(features=features, **common_args(self)), strides))


#: Each block kind's Linen implementation.
BLOCKS = {BottleneckBlock.kind: BottleneckBlock, BasicBlock.kind: BasicBlock}
