"""A frozen copy of the hand-written Linen ResNet and blocks as they were before the architecture
became data (issue 23): the oracle that a model built from :mod:`resnet_bottleneck.arch` must equal
bit for bit. Copied from ``models.py`` and ``blocks.py``; only the imports changed (the argument
checks are reduced to what the oracle needs). Do not edit: it is what "unchanged" means.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from resnet_bottleneck.norm import FLAX_BATCH_NORM, BatchNorm, FrozenBatchNorm


class _checks:  # noqa: N801 - the oracle's stand-in for resnet_bottleneck._checks
    @staticmethod
    def positive_int(name, value):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"{name} must be a positive integer; got {value!r}")
        return int(value)

    @staticmethod
    def one_of(name, value, allowed):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}; got {value!r}")
        return value

    @staticmethod
    def int_in_range(name, value, low, high, meaning=""):
        if not low <= value <= high:
            raise ValueError(f"{name} must be from {low} to {high}; got {value!r}")
        return int(value)


ModuleDef = Any

STRIDE_PLACEMENTS = ("3x3", "1x1")
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
            raise ValueError(f"{name} must be an int or a pair of ints; got {value!r}")
        return (_checks.positive_int(name, value[0]), _checks.positive_int(name, value[1]))
    n = _checks.positive_int(name, value)
    return (n, n)


def conv_options(block, kernel: int, strides=(1, 1), groups: int = 1, dilation: int = 1) -> dict:
    """The keyword arguments of a block's ``kernel`` x ``kernel`` conv, padded as ``block.padding`` says.

    Shared by the Linen blocks and their Flax NNX twins, whose ``conv`` constructors take the same keywords.
    """
    if kernel == 1:
        padding = "VALID"  # a 1x1 conv never pads, whatever the stride
    elif block.padding == "SAME":
        padding = "SAME"
    else:  # torchvision: padding=dilation on both sides, also when strided
        padding = ((dilation, dilation), (dilation, dilation))
    return dict(
        strides=strides,
        padding=padding,
        kernel_dilation=(dilation, dilation),
        feature_group_count=groups,
        use_bias=block.use_bias,
        kernel_init=block.kernel_init,
        dtype=block.dtype,
        param_dtype=block.param_dtype,
    )


def _conv(block, index: int, features: int, kernel: int, strides=(1, 1), groups: int = 1, dilation: int = 1):
    """The block's ``index``-th convolution."""
    return block.conv(
        features, (kernel, kernel), **conv_options(block, kernel, strides, groups, dilation), name=f"Conv_{index}"
    )


def _norm(block, index: int, zero_init: bool = False):
    kwargs = {"scale_init": nn.initializers.zeros_init()} if zero_init else {}
    return block.norm(dtype=block.dtype, param_dtype=block.param_dtype, name=f"BatchNorm_{index}", **kwargs)


def projects(block, in_features: int, features: int, strides: tuple[int, int]) -> bool:
    """Whether ``block``'s shortcut is a projection; an error if ``projection=False`` cannot be."""
    needed = in_features != features or strides != (1, 1)
    project = needed if block.projection is None else bool(block.projection)
    if needed and not project:
        raise ValueError(
            f"projection=False needs an identity shortcut, but the input has {in_features} channels "
            f"and strides {strides} while the block outputs {features} channels at stride (1, 1); "
            "use projection=None (automatic) or True"
        )
    return project


def _shortcut(block, x, features: int, strides: tuple[int, int], index: int):
    """Identity, or a 1x1 conv + BN projection (``Conv_index``/``BatchNorm_index``)."""
    if not projects(block, x.shape[-1], features, strides):
        return x
    residual = _conv(block, index, features, 1, strides=strides)(x)
    return _norm(block, index)(residual)


def _check_common(block) -> tuple[int, int]:
    _checks.one_of("padding", block.padding, PADDINGS)
    if block.projection is not None and not isinstance(block.projection, bool):
        raise TypeError(f"projection must be None (automatic), True or False; got {block.projection!r}")
    _checks.positive_int("dilation", block.dilation)
    return _pair("strides", block.strides)


def bottleneck_plan(block) -> tuple[int, int, int, tuple[int, int], tuple[int, int], tuple[int, int]]:
    """A bottleneck block's checked attributes: ``(mid, out, groups, strides, 1x1 strides, 3x3 strides)``.

    Shared by :class:`BottleneckBlock` and its Flax NNX twin, so both check and place the
    stride the same way; every error names the attribute.
    """
    mid = _checks.positive_int("mid_features", block.mid_features)
    out = _checks.positive_int("out_features", block.out_features)
    groups = _checks.positive_int("groups", block.groups)
    strides = _check_common(block)
    _checks.one_of("stride_on", block.stride_on, STRIDE_PLACEMENTS)
    if mid % groups:
        raise ValueError(f"groups must divide mid_features; got groups={groups}, mid_features={mid}")
    s1, s3 = ((1, 1), strides) if block.stride_on == "3x3" else (strides, (1, 1))
    return mid, out, groups, strides, s1, s3


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

    expansion: ClassVar[int] = 4
    shortcut_index: ClassVar[int] = 3

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

    @classmethod
    def stage_args(
        cls, planes: int, *, groups: int = 1, width_per_group: int = 64, stride_on: str = "3x3", dilation: int = 1
    ) -> dict:
        """Constructor arguments of a stage's blocks at ``planes`` (torchvision's widths).

        The 3x3 conv is ``int(planes * width_per_group / 64) * groups`` wide (ResNeXt
        groups it, Wide ResNet doubles it) and the block outputs ``planes * expansion``.
        ``dilation`` is the stage's (its first block may be given the previous stage's).
        """
        mid = int(planes * (width_per_group / 64.0)) * groups
        return {
            "mid_features": mid,
            "out_features": planes * cls.expansion,
            "groups": groups,
            "stride_on": stride_on,
            "dilation": _checks.positive_int("dilation", dilation),
        }

    @nn.compact
    def __call__(self, x):
        mid, out, groups, strides, s1, s3 = bottleneck_plan(self)
        y = _conv(self, 0, mid, 1, strides=s1)(x)
        y = nn.relu(_norm(self, 0)(y))
        y = _conv(self, 1, mid, 3, strides=s3, groups=groups, dilation=self.dilation)(y)
        y = nn.relu(_norm(self, 1)(y))
        y = _conv(self, 2, out, 1)(y)
        y = _norm(self, 2, zero_init=self.zero_init_last)(y)
        return nn.relu(y + _shortcut(self, x, out, strides, self.shortcut_index).astype(y.dtype))


class BasicBlock(nn.Module):
    """ResNet basic block: ``Conv3x3 -> BN -> ReLU -> Conv3x3 -> BN -> (+ shortcut) -> ReLU``.

    The companion of :class:`BottleneckBlock` (ResNet-18/34). The stride sits on the
    first 3x3 conv. Attributes mean what they mean for :class:`BottleneckBlock`;
    ``features`` is both the width and the output channels.
    """

    expansion: ClassVar[int] = 1
    shortcut_index: ClassVar[int] = 2

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
        if (groups, width_per_group) != (1, 64):
            raise ValueError(
                f"basic blocks support only groups=1, width_per_group=64; "
                f"got groups={groups!r}, width_per_group={width_per_group!r}"
            )
        if dilation != 1:
            raise ValueError(f"basic blocks support only dilation=1, as torchvision's; got dilation={dilation!r}")
        _checks.one_of("stride_on", stride_on, STRIDE_PLACEMENTS)
        return {"features": planes * cls.expansion, "dilation": 1}

    @nn.compact
    def __call__(self, x):
        features, strides = basic_plan(self)

        y = _conv(self, 0, features, 3, strides=strides, dilation=self.dilation)(x)
        y = nn.relu(_norm(self, 0)(y))
        y = _conv(self, 1, features, 3, dilation=self.dilation)(y)
        y = _norm(self, 1, zero_init=self.zero_init_last)(y)
        return nn.relu(y + _shortcut(self, x, features, strides, self.shortcut_index).astype(y.dtype))


STAGE_NAMES = ("C2", "C3", "C4", "C5")
NORMS = ("batch", "frozen")
#: torchvision's ``trainable_layers`` order: with ``trainable_layers=K`` the first K of these
#: learn (``bn1`` with ``conv1``), the rest are frozen.
TRAINABLE_LAYERS = ("layer4", "layer3", "layer2", "layer1", "conv1")

# torchvision's initialisation: He normal, fan-out, for every conv.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _windows(x, window: int, stride: int, padding: int) -> list:
    """The ``window**2`` strided views of ``x`` padded with -inf, one per window offset."""
    n, h, w, c = x.shape
    oh, ow = (h + 2 * padding - window) // stride + 1, (w + 2 * padding - window) // stride + 1
    xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)), constant_values=-jnp.inf)
    return [
        jax.lax.slice(
            xp, (0, i, j, 0), (n, i + stride * (oh - 1) + 1, j + stride * (ow - 1) + 1, c), (1, stride, stride, 1)
        )
        for i in range(window)
        for j in range(window)
    ]


def _max_of(views):
    y = views[0]
    for view in views[1:]:
        y = jnp.maximum(y, view)
    return y


def global_average_pool(x):
    """Mean over the spatial axes of NHWC ``x``, as ``(N, C)``; accumulated in float32 or wider.

    Written as a product with a vector of ones, not a reduction: under our XLA:CPU options
    a reduction goes to YNNPACK, whose fusion then swallows every conv of the last stage
    above it and runs them slower than XLA's own kernels.
    """
    n, h, w, c = x.shape
    ones = jnp.ones((h * w,), x.dtype)
    total = jnp.einsum(
        "nsc,s->nc", x.reshape(n, h * w, c), ones, preferred_element_type=jnp.promote_types(x.dtype, jnp.float32)
    )
    return (total / (h * w)).astype(x.dtype)


@partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(x, window: int, stride: int, padding: int):
    """Max-pool over square windows, padding with -inf (as torch); NHWC.

    The same values as ``nn.max_pool``. Its gradient goes to the first maximum of each
    window in row-major order, as PyTorch's does; computed from strided views rather
    than XLA's ``select_and_scatter``, which is several times slower on XLA:CPU.
    """
    return _max_pool_fwd(x, window, stride, padding)[0]


def _max_pool_fwd(x, window, stride, padding):
    y = _max_of(_windows(x, window, stride, padding))
    return y, (x, y)


def _max_pool_bwd(window, stride, padding, residuals, g):
    x, y = residuals
    views, to_input = jax.vjp(lambda x: _windows(x, window, stride, padding), x)
    taken = jnp.zeros(y.shape, bool)
    routed = []
    for view in views:
        first = (view == y) & ~taken
        taken = taken | first
        routed.append(jnp.where(first, g, jnp.zeros_like(g)))
    return to_input(routed)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


#: The family, one row a model: the :class:`ResNet` constructor arguments of each of
#: torchvision's names (``create_model(name)`` is ``ResNet(**CONFIGS[name])``).
CONFIGS: dict[str, dict[str, Any]] = {
    "resnet18": dict(block=BasicBlock, stage_sizes=(2, 2, 2, 2)),
    "resnet34": dict(block=BasicBlock, stage_sizes=(3, 4, 6, 3)),
    "resnet50": dict(block=BottleneckBlock, stage_sizes=(3, 4, 6, 3)),
    "resnet101": dict(block=BottleneckBlock, stage_sizes=(3, 4, 23, 3)),
    "resnet152": dict(block=BottleneckBlock, stage_sizes=(3, 8, 36, 3)),
    "resnext50_32x4d": dict(block=BottleneckBlock, stage_sizes=(3, 4, 6, 3), groups=32, width_per_group=4),
    "resnext101_32x8d": dict(block=BottleneckBlock, stage_sizes=(3, 4, 23, 3), groups=32, width_per_group=8),
    "resnext101_64x4d": dict(block=BottleneckBlock, stage_sizes=(3, 4, 23, 3), groups=64, width_per_group=4),
    "wide_resnet50_2": dict(block=BottleneckBlock, stage_sizes=(3, 4, 6, 3), width_per_group=128),
    "wide_resnet101_2": dict(block=BottleneckBlock, stage_sizes=(3, 4, 23, 3), width_per_group=128),
    # Not torchvision's: the full layout, one block a stage at a quarter of the width, for
    # tests, examples and laptops (0.5M parameters before the classifier).
    "resnet_tiny": dict(block=BottleneckBlock, stage_sizes=(1, 1, 1, 1), stem_width=16),
}


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
        (or any class with their ``expansion``, ``shortcut_index`` and ``stage_args``).
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
        ``nn.scan``, so a deep model traces and compiles one block per stage. Its
        parameters are stacked under ``layerN_scan``; :func:`unscan_variables` and
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
        :func:`resnet_bottleneck.backbones.freeze` so that the optimizer does not move them
        either (weight decay would).
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

    @nn.compact
    def __call__(self, x, train: bool = False, *, features: bool = False):
        """Logits, the last feature map (headless), or every stage's output.

        Args:
          x: images, ``(N, H, W, 3)``.
          train: batch statistics (and running-average updates: apply with
            ``mutable=['batch_stats']``) if true, running averages if false.
          features: return ``{'stem': ..., 'C2': ..., ..., 'C5': ...}`` (see
            :func:`feature_info`) instead of running the head.
        """
        sizes = check_layout(self)
        if x.ndim != 4:
            raise ValueError(f"x must be a 4-D batch of images (N, H, W, C); got shape {x.shape}")
        if self.norm == "frozen":
            norm = partial(FrozenBatchNorm, epsilon=self.bn_epsilon)
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
                raise ValueError(
                    "a folded model (BatchNorm folded into convs) is for inference: call it with train=False"
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
        )
        block_cls = nn.remat(self.block) if self.remat else self.block

        x = jnp.asarray(x, self.dtype) if self.dtype is not None else x
        x = nn.Conv(
            self.stem_width,
            (7, 7),
            strides=(2, 2),
            padding=((3, 3), (3, 3)),
            use_bias=self.folded,
            kernel_init=conv_kernel_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="conv1",
        )(x)
        x = nn.relu(norm(dtype=self.dtype, param_dtype=self.param_dtype, name="bn1")(x))
        frozen = len(TRAINABLE_LAYERS) - self.trainable_layers  # frozen from the input side: stem, layer1, ...
        x = jax.lax.stop_gradient(x) if frozen > 0 else x
        outputs = {"stem": x}
        x = max_pool(x, 3, 2, 1)

        for i, (size, (strides, first_dilation, dilation)) in enumerate(zip(sizes, stage_plan(self, len(sizes)))):
            make = partial(block_cls, **stage_args(self, i, dilation), **common)
            x = make(strides=strides, dilation=first_dilation, name=f"layer{i + 1}_0")(x)
            if self.scan and size > 1:
                body = nn.scan(
                    _ScanStep,
                    variable_axes={"params": 0, "batch_stats": 0},
                    split_rngs={"params": True},
                    length=size - 1,
                )
                x, _ = body(make, name=f"layer{i + 1}_scan")(x, None)
            else:
                for j in range(1, size):
                    x = make(name=f"layer{i + 1}_{j}")(x)
            x = jax.lax.stop_gradient(x) if frozen > i + 1 else x
            if i < len(STAGE_NAMES):
                outputs[STAGE_NAMES[i]] = x

        if features:
            return outputs
        if self.num_classes is None:
            return x
        x = global_average_pool(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="fc")(x)
        return jnp.asarray(x, jnp.promote_types(x.dtype, jnp.float32))  # bf16 logits come back as float32


# The layout's arithmetic and checks, as functions of a ResNet's attributes: shared by the
# Linen ResNet and its Flax NNX twin (resnet_bottleneck.nnx.ResNet), which has the same ones.


def stage_args(model, i: int, dilation: int = 1) -> dict:
    """The block constructor arguments of stage ``i``."""
    return model.block.stage_args(
        model.stem_width * 2**i,
        groups=model.groups,
        width_per_group=model.width_per_group,
        stride_on=model.stride_on,
        dilation=dilation,
    )


def stage_plan(model, stages: int) -> list[tuple[int, int, int]]:
    """(stride, first block's dilation, the other blocks' dilation) of each stage: torchvision's ``_make_layer``."""
    plan, dilation = [], 1
    for i in range(stages):
        strides, previous = (1 if i == 0 else 2), dilation
        if i > 0 and model.replace_stride_with_dilation[i - 1]:
            dilation, strides = dilation * strides, 1
        plan.append((strides, previous, dilation))
    return plan


def check_layout(model) -> tuple[int, ...]:
    """The attributes checked (errors name the attribute); the stage sizes as ints."""
    if not all(hasattr(model.block, a) for a in ("expansion", "shortcut_index", "stage_args")):
        raise TypeError(f"block must be a block class such as BottleneckBlock or BasicBlock; got {model.block!r}")
    _checks.one_of("stride_on", model.stride_on, STRIDE_PLACEMENTS)
    if not model.stage_sizes or len(model.stage_sizes) > len(STAGE_NAMES):
        raise ValueError(f"stage_sizes must list 1 to {len(STAGE_NAMES)} stages; got {model.stage_sizes!r}")
    sizes = tuple(_checks.positive_int("stage_sizes", n) for n in model.stage_sizes)
    if model.num_classes is not None:
        _checks.positive_int("num_classes", model.num_classes)
    _checks.positive_int("groups", model.groups)
    _checks.positive_int("width_per_group", model.width_per_group)
    _checks.positive_int("stem_width", model.stem_width)
    stage_args(model, 0)  # the block's own checks of groups and widths
    _checks.one_of("norm", model.norm, NORMS)
    _checks.int_in_range(
        "trainable_layers",
        model.trainable_layers,
        0,
        len(TRAINABLE_LAYERS),
        " (how many of layer4, layer3, layer2, layer1, conv1 learn)",
    )
    dilate = model.replace_stride_with_dilation
    if (
        not isinstance(dilate, (tuple, list))
        or len(dilate) != 3
        or not all(isinstance(d, (bool, np.bool_)) for d in dilate)
    ):
        raise ValueError(
            f"replace_stride_with_dilation must be three booleans (for the stages C3, C4, C5); got {dilate!r}"
        )
    for i, (_, _, dilation) in enumerate(stage_plan(model, len(sizes))):
        try:
            stage_args(model, i, dilation)
        except ValueError as err:
            raise ValueError(
                f"replace_stride_with_dilation={tuple(dilate)!r} dilates {STAGE_NAMES[i]} by {dilation}, but {err}"
            ) from None
    return sizes


def _model_name(name: Any) -> str:
    if not isinstance(name, str) or name not in CONFIGS:
        raise ValueError(f"name must be one of {', '.join(CONFIGS)}; got {name!r}")
    return name


def create_model(name: str, num_classes: int | None = 1000, **options) -> ResNet:
    """A family member by torchvision's name, e.g. ``create_model('resnet50')``.

    Args:
      name: a key of :data:`CONFIGS`.
      num_classes: classifier outputs, or ``None`` for a headless backbone.
      **options: any other :class:`ResNet` attribute (``dtype``, ``remat``, ``scan``,
        ``stride_on``, ``zero_init_last``, ``bn_momentum``, ...).
    """
    return ResNet(**model_config(name, options), **options, num_classes=num_classes)


def model_config(name: str, options) -> dict:
    """``CONFIGS[name]``, after checking the name and that ``options`` leave the architecture the name's."""
    config = CONFIGS[_model_name(name)]
    fixed = set().union(*CONFIGS.values()) & set(options)  # what makes the architecture the name's
    if fixed:
        raise TypeError(f"create_model({name!r}) fixes {', '.join(sorted(fixed))}; use ResNet(...) to change them")
    return config


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
    sizes = check_layout(model)
    info, stride = [{"name": "stem", "channels": model.stem_width, "stride": 2}], 4  # the max-pool halves again
    for i, (strides, _, _) in enumerate(stage_plan(model, len(sizes))):
        stride *= strides
        info.append(
            {"name": STAGE_NAMES[i], "channels": model.stem_width * 2**i * model.block.expansion, "stride": stride}
        )
    return info


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
