"""The family as data: one row a name, the block kinds, and ``describe``: options -> :class:`ResNetSpec`.

A row holds the options that make a model that name (its block kind as a string); every other
option has its default here, :data:`DEFAULTS`. A block kind is one :class:`BlockKind`: its
expansion, its constructor arguments for a stage, and its layers. The arithmetic is
torchvision's (``_make_layer``, the bottleneck's ``width``); errors name the option.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .. import _checks
from .._checks import TRAINABLE_LAYERS
from ..errors import InputError, InputTypeError
from .spec import (
    Act,
    Block,
    Conv,
    DropPath,
    Eca,
    Head,
    Linear,
    Norm,
    Pool,
    ResNetSpec,
    Shortcut,
    SqueezeExcite,
    Stage,
    Stem,
)
from .timm_family import TIMM_FAMILY

STAGE_NAMES = ("C2", "C3", "C4", "C5")
NORMS = ("batch", "frozen", "group")
STRIDE_PLACEMENTS = ("3x3", "1x1")
STEM_TYPES = ("", "deep", "deep_tiered")
ATTN_LAYERS = (None, "se", "eca")
AA_LAYERS = (None, "avg", "blur")

#: Every architecture option and its default (torchvision's ResNet-50 but for the row's own). The
#: options after ``stride_on`` are timm's (``timm.models.resnet.ResNet``), with timm's meaning.
DEFAULTS: dict[str, Any] = {
    "stage_sizes": (3, 4, 6, 3),
    "block": "bottleneck",
    "groups": 1,
    "width_per_group": 64,
    "stem_width": 64,
    "stride_on": "3x3",
    "stem_type": "",
    "channels": None,
    "replace_stem_pool": False,
    "avg_down": False,
    "down_kernel_size": 1,
    "block_reduce_first": 1,
    "attn_layer": None,
    "attn_rd_ratio": 1 / 16,
    "aa_layer": None,
    "drop_rate": 0.0,
    "drop_path_rate": 0.0,
    "replace_stride_with_dilation": (False, False, False),
    "norm": "batch",
    "zero_init_last": False,
    "trainable_layers": len(TRAINABLE_LAYERS),
    "num_classes": 1000,
    "in_features": 3,
}

#: The family, one row a name: the options that make it that model. torchvision's names, ours
#: (``resnet_tiny``), then timm 1.0.31's (``timm/models/resnet.py``; rows in :mod:`.timm_family`).
FAMILY: dict[str, dict[str, Any]] = {
    "resnet18": dict(block="basic", stage_sizes=(2, 2, 2, 2)),
    "resnet34": dict(block="basic", stage_sizes=(3, 4, 6, 3)),
    "resnet50": dict(block="bottleneck", stage_sizes=(3, 4, 6, 3)),
    "resnet101": dict(block="bottleneck", stage_sizes=(3, 4, 23, 3)),
    "resnet152": dict(block="bottleneck", stage_sizes=(3, 8, 36, 3)),
    "resnext50_32x4d": dict(block="bottleneck", stage_sizes=(3, 4, 6, 3), groups=32, width_per_group=4),
    "resnext101_32x8d": dict(block="bottleneck", stage_sizes=(3, 4, 23, 3), groups=32, width_per_group=8),
    "resnext101_64x4d": dict(block="bottleneck", stage_sizes=(3, 4, 23, 3), groups=64, width_per_group=4),
    "wide_resnet50_2": dict(block="bottleneck", stage_sizes=(3, 4, 6, 3), width_per_group=128),
    "wide_resnet101_2": dict(block="bottleneck", stage_sizes=(3, 4, 23, 3), width_per_group=128),
    # Not torchvision's: the full layout, one block a stage at a quarter of the width, for
    # tests, examples and laptops (0.5M parameters before the classifier).
    "resnet_tiny": dict(block="bottleneck", stage_sizes=(1, 1, 1, 1), stem_width=16),
    **TIMM_FAMILY,
}


def _pair(stride) -> tuple[int, int]:
    return tuple(stride) if isinstance(stride, (tuple, list)) else (stride, stride)


def _conv(name, c_in, c_out, kernel, stride=1, groups=1, dilation=1) -> Conv:
    """A conv padded as torchvision pads: ``dilation * (kernel - 1) // 2`` on each side."""
    padding = dilation * (kernel - 1) // 2
    return Conv(name, c_in, c_out, kernel, _pair(stride), groups, dilation, padding)


def make_divisible(v: float, divisor: int = 8) -> int:
    """timm's ``make_divisible(v, divisor, round_limit=0.)``: the nearest multiple of ``divisor``, at least it."""
    return max(divisor, int(v + divisor / 2) // divisor * divisor)


def eca_kernel(channels: int, gamma: float = 2, beta: float = 1) -> int:
    """timm's ``EcaModule`` kernel size for ``channels`` (odd, at least 3)."""
    t = int(abs(math.log(channels, 2) + beta) / gamma)
    return max(t if t % 2 else t + 1, 3)


# --- block kinds -------------------------------------------------------------------------

#: The block constructor arguments every kind takes beside its own widths: timm's block options.
COMMON_ARGS: dict[str, Any] = {
    "dilation": 1,
    "reduce_first": 1,
    "attn_layer": None,
    "attn_rd_ratio": 1 / 16,
    "aa_layer": None,
    "drop_path_rate": 0.0,
    "avg_down": False,
    "down_kernel_size": 1,
}


def _common_args(dilation=1, **block_options) -> dict:
    unknown = set(block_options) - set(COMMON_ARGS)
    if unknown:
        raise InputTypeError(f"unknown block options {', '.join(sorted(unknown))}; known: {', '.join(COMMON_ARGS)}")
    return {**COMMON_ARGS, **block_options, "dilation": dilation}


def _bottleneck_args(planes, *, groups=1, width_per_group=64, stride_on="3x3", **options) -> dict:
    """torchvision's (and timm's) widths: the 3x3 conv is ``int(planes * width_per_group / 64) * groups`` wide."""
    _checks.one_of("stride_on", stride_on, STRIDE_PLACEMENTS)
    return {
        "mid_features": int(planes * (width_per_group / 64.0)) * groups,
        "out_features": planes * BLOCK_KINDS["bottleneck"].expansion,
        "groups": groups,
        "stride_on": stride_on,
        **_common_args(**options),
    }


def _tail(p, out, args, norm, zero_init_last) -> tuple:
    """The block's last norm, then its attention and drop path (timm's order)."""
    layers = [Norm(f"{p}bn{args['_last']}", out, norm, zero_init_last)]
    if args["attn_layer"] == "se":
        layers.append(SqueezeExcite(f"{p}se", out, make_divisible(out * args["attn_rd_ratio"])))
    elif args["attn_layer"] == "eca":
        layers.append(Eca(f"{p}se", out, eca_kernel(out)))
    if args["drop_path_rate"] > 0:
        layers.append(DropPath(f"{p}drop_path", args["drop_path_rate"]))
    return tuple(layers)


def aa_pool(name: str, kind: str, stride: int = 2) -> Pool:
    """timm's anti-aliasing layer at ``stride``: ``'avg'`` (``nn.AvgPool2d(stride)``) or ``'blur'`` (``BlurPool2d``)."""
    if kind == "avg":
        return Pool(name, "avg", stride, stride, 0)
    return Pool(name, "blur", 3, stride, ((stride - 1) + 2) // 2)


def _bottleneck_layers(p, c_in, args, stride, norm, zero_init_last) -> tuple:
    """1x1 (squeeze) -> 3x3 (grouped, dilated; anti-aliased after) -> 1x1 (expand) -> attention;
    the stride on the 3x3 (v1.5) or the first 1x1."""
    mid, out, groups, dilation = args["mid_features"], args["out_features"], args["groups"], args["dilation"]
    first = mid // args["reduce_first"]
    s1, s3 = ((1, 1), stride) if args["stride_on"] == "3x3" else (stride, (1, 1))
    aa = args["aa_layer"] is not None and s3 != (1, 1)
    layers = [
        _conv(f"{p}conv1", c_in, first, 1, s1),
        Norm(f"{p}bn1", first, norm),
        Act(f"{p}act1"),
        _conv(f"{p}conv2", first, mid, 3, 1 if aa else s3, groups, dilation),
        Norm(f"{p}bn2", mid, norm),
        Act(f"{p}act2"),
    ]
    if aa:
        layers.append(aa_pool(f"{p}aa", args["aa_layer"], s3[0]))
    layers.append(_conv(f"{p}conv3", mid, out, 1))
    return tuple(layers) + _tail(p, out, {**args, "_last": 3}, norm, zero_init_last)


def _basic_args(planes, *, groups=1, width_per_group=64, stride_on="3x3", **options) -> dict:
    """One width; torchvision's basic block takes no groups, widths or dilation (it raises the same way)."""
    if (groups, width_per_group) != (1, 64):
        raise InputError(
            f"basic blocks support only groups=1, width_per_group=64; "
            f"got groups={groups!r}, width_per_group={width_per_group!r}"
        )
    common = _common_args(**options)
    if common["dilation"] != 1:
        raise InputError(f"basic blocks support only dilation=1, as torchvision's; got dilation={common['dilation']!r}")
    _checks.one_of("stride_on", stride_on, STRIDE_PLACEMENTS)
    return {"features": planes, **common}


def _basic_layers(p, c_in, args, stride, norm, zero_init_last) -> tuple:
    """3x3 (strided; anti-aliased after) -> 3x3 -> attention."""
    features, dilation = args["features"], args["dilation"]
    first = features // args["reduce_first"]
    aa = args["aa_layer"] is not None and stride != (1, 1)
    layers = [
        _conv(f"{p}conv1", c_in, first, 3, 1 if aa else stride, 1, dilation),
        Norm(f"{p}bn1", first, norm),
        Act(f"{p}act1"),
    ]
    if aa:
        layers.append(aa_pool(f"{p}aa", args["aa_layer"], stride[0]))
    layers.append(_conv(f"{p}conv2", first, features, 3, 1, 1, dilation))
    return tuple(layers) + _tail(p, features, {**args, "_last": 2}, norm, zero_init_last)


@dataclass(frozen=True)
class BlockKind:
    """A block kind: ``expansion`` (output channels per ``planes``), ``args`` (its constructor
    arguments for a stage at ``planes``; raises for options it lacks), ``layers`` (its main path),
    ``out_key`` (the argument that is its output width)."""

    expansion: int
    args: Callable[..., dict]
    layers: Callable[..., tuple]
    out_key: str


BLOCK_KINDS: dict[str, BlockKind] = {
    "bottleneck": BlockKind(4, _bottleneck_args, _bottleneck_layers, "out_features"),
    "basic": BlockKind(1, _basic_args, _basic_layers, "features"),
}


def block_kind(kind: Any) -> BlockKind:
    return BLOCK_KINDS[_checks.one_of("block", kind, tuple(BLOCK_KINDS))]


def needs_projection(in_features: int, out_features: int, stride) -> bool:
    """torchvision's rule: a projection exactly where the shape changes."""
    return in_features != out_features or _pair(stride) != (1, 1)


def _shortcut(prefix, in_features, out, stride, args, norm) -> Shortcut:
    """timm's ``downsample_conv`` (a ``down_kernel_size`` conv where it strides) or ``downsample_avg``
    (a 2x2 average pool, ``ceil_mode``, padding not counted, then a 1x1 conv); the norm after."""
    dilation = args.get("dilation", 1)
    if args.get("avg_down", False):
        layers = []
        if stride != (1, 1):
            layers.append(
                Pool(f"{prefix}downsample.0", "avg", 2, stride[0], 0, ceil_mode=True, count_include_pad=False)
            )
        conv = _conv(f"{prefix}downsample.1", in_features, out, 1)
        return Shortcut("projection", (*layers, conv, Norm(f"{prefix}downsample.2", out, norm)))
    kernel = args.get("down_kernel_size", 1) if stride != (1, 1) or dilation != 1 else 1
    conv = _conv(f"{prefix}downsample.0", in_features, out, kernel, stride, 1, dilation if kernel > 1 else 1)
    return Shortcut("projection", (conv, Norm(f"{prefix}downsample.1", out, norm)))


def describe_block(
    kind: str,
    in_features: int,
    args: Mapping[str, Any],
    *,
    stride=1,
    projection: bool | None = None,
    norm: str = "batch",
    zero_init_last: bool = False,
    name: str = "",
) -> Block:
    """One block of ``kind`` with constructor ``args`` (its kind's: ``mid_features``, ...; missing
    common ones at :data:`COMMON_ARGS`), named ``name`` (``''``: a standalone block, whose layers
    are ``conv1``, ``downsample.0``, ...)."""
    spec = block_kind(kind)
    stride = _pair(stride)
    prefix = f"{name}." if name else ""
    args = {**COMMON_ARGS, **args}
    check_block_args({key: args[key] for key in COMMON_ARGS})
    layers = spec.layers(prefix, in_features, args, stride, norm, zero_init_last)
    out = args[spec.out_key]
    project = needs_projection(in_features, out, stride) if projection is None else projection
    shortcut = _shortcut(prefix, in_features, out, stride, args, norm) if project else Shortcut("identity")
    return Block(name, kind, in_features, out, stride, args["dilation"], layers, shortcut, tuple(args.items()))


# --- whole models ------------------------------------------------------------------------


def stage_plan(replace_stride_with_dilation, stages: int) -> list[tuple[int, int, int]]:
    """(stride, first block's dilation, the other blocks' dilation) of each stage: torchvision's ``_make_layer``."""
    plan, dilation = [], 1
    for i in range(stages):
        strides, previous = (1 if i == 0 else 2), dilation
        if i > 0 and replace_stride_with_dilation[i - 1]:
            dilation, strides = dilation * strides, 1
        plan.append((strides, previous, dilation))
    return plan


def stem_out(options: Mapping[str, Any]) -> int:
    """The stem's output channels: ``stem_width`` (the 7x7 stem), twice it (timm's deep stems)."""
    return options["stem_width"] * (2 if options["stem_type"] else 1)


def stage_planes(options: Mapping[str, Any]) -> tuple[int, ...]:
    """Each stage's ``planes``: ``channels``, or the stem's width doubled each stage (64, 128, 256, 512)."""
    if options["channels"] is not None:
        return tuple(options["channels"])
    return tuple(stem_out(options) * 2**i for i in range(len(options["stage_sizes"])))


def stage_args(options: Mapping[str, Any], i: int, dilation: int = 1, drop_path_rate: float = 0.0) -> dict:
    """The block constructor arguments of stage ``i`` (``options`` as :data:`DEFAULTS`)."""
    return block_kind(options["block"]).args(
        stage_planes(options)[i],
        groups=options["groups"],
        width_per_group=options["width_per_group"],
        stride_on=options["stride_on"],
        dilation=dilation,
        reduce_first=options["block_reduce_first"],
        attn_layer=options["attn_layer"],
        attn_rd_ratio=options["attn_rd_ratio"],
        aa_layer=options["aa_layer"],
        drop_path_rate=drop_path_rate,
        avg_down=options["avg_down"],
        down_kernel_size=options["down_kernel_size"],
    )


def _is_bool(value: Any) -> bool:
    """A Python or numpy bool (no numpy import here: a numpy scalar's dtype says so)."""
    return isinstance(value, bool) or getattr(getattr(value, "dtype", None), "kind", None) == "b"


def _bool(key: str, value: Any) -> bool:
    if not _is_bool(value):
        raise InputError(f"{key} must be True or False; got {value!r}")
    return bool(value)


def _rate(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise InputError(f"{key} must be a number in [0, 1); got {value!r}")
    return float(value)


def _ratio(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise InputError(f"{key} must be a number in (0, 1]; got {value!r}")
    return float(value)


def _odd(key: str, value: Any) -> int:
    if _checks.positive_int(key, value) % 2 == 0:
        raise InputError(f"{key} must be odd; got {value!r}")
    return int(value)


#: The check of each timm option, by its name as a model option and as a block argument.
_OPTION_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "dilation": _checks.positive_int,
    "reduce_first": _checks.positive_int,
    "block_reduce_first": _checks.positive_int,
    "attn_layer": lambda key, value: _checks.one_of(key, value, ATTN_LAYERS),
    "attn_rd_ratio": _ratio,
    "aa_layer": lambda key, value: _checks.one_of(key, value, AA_LAYERS),
    "drop_rate": _rate,
    "drop_path_rate": _rate,
    "avg_down": _bool,
    "replace_stem_pool": _bool,
    "zero_init_last": _bool,
    "down_kernel_size": _odd,
    "stem_type": lambda key, value: _checks.one_of(key, value, STEM_TYPES),
}


def check_block_args(args: dict) -> dict:
    """``args`` (a block's :data:`COMMON_ARGS`) checked, each error naming the argument."""
    return {key: _OPTION_CHECKS[key](key, value) if key in _OPTION_CHECKS else value for key, value in args.items()}


def _check(o: dict) -> None:
    """Each option alone and the block kind's own checks of stage 0 (errors name the option)."""
    block_kind(o["block"])
    _checks.one_of("stride_on", o["stride_on"], STRIDE_PLACEMENTS)
    sizes = o["stage_sizes"]
    if not isinstance(sizes, (tuple, list)) or not sizes or len(sizes) > len(STAGE_NAMES):
        raise InputError(f"stage_sizes must list 1 to {len(STAGE_NAMES)} stages; got {sizes!r}")
    o["stage_sizes"] = tuple(_checks.positive_int("stage_sizes", n) for n in sizes)
    if o["num_classes"] is not None:
        _checks.positive_int("num_classes", o["num_classes"])
    for key in ("groups", "width_per_group", "stem_width"):
        _checks.positive_int(key, o[key])
    for key in _OPTION_CHECKS.keys() & o.keys():
        o[key] = _OPTION_CHECKS[key](key, o[key])
    channels = o["channels"]
    if channels is not None:
        if not isinstance(channels, (tuple, list)) or len(channels) != len(sizes):
            raise InputError(f"channels must be None or one width per stage ({len(sizes)}); got {channels!r}")
        o["channels"] = tuple(_checks.positive_int("channels", c) for c in channels)
    kernel = o["down_kernel_size"]
    stage_args(o, 0)  # the block kind's own checks of groups and widths
    _checks.one_of("norm", o["norm"], NORMS)
    _checks.trainable_layers(o["trainable_layers"])
    dilate = o["replace_stride_with_dilation"]
    if not isinstance(dilate, (tuple, list)) or len(dilate) != 3 or not all(_is_bool(d) for d in dilate):
        raise InputError(
            f"replace_stride_with_dilation must be three booleans (for the stages C3, C4, C5); got {dilate!r}"
        )
    o["replace_stride_with_dilation"] = tuple(bool(d) for d in dilate)
    if any(o["replace_stride_with_dilation"]):
        timm_only = [k for k in ("avg_down", "aa_layer") if o[k]] + (["down_kernel_size"] if kernel > 1 else [])
        if timm_only:
            raise InputError(
                f"replace_stride_with_dilation={o['replace_stride_with_dilation']!r} is not supported with "
                f"{', '.join(f'{k}={o[k]!r}' for k in timm_only)}: dilated stages take torchvision's downsampling only"
            )
    _checks.positive_int("in_features", o["in_features"])


def options_of(model: Any = None, **options) -> dict[str, Any]:
    """Every architecture option, checked (errors name the option): a row of :data:`FAMILY` (``model``
    a name) or a model's attributes (``model`` any object; a block class there gives its ``kind``),
    then ``options``, then :data:`DEFAULTS`."""
    if isinstance(model, str):
        found = dict(FAMILY[_checks.model_name(model, tuple(FAMILY))])
    elif model is not None:
        found = {key: getattr(model, key) for key in DEFAULTS if hasattr(model, key)}
    else:
        found = {}
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise InputTypeError(f"unknown architecture options {', '.join(sorted(unknown))}; known: {', '.join(DEFAULTS)}")
    merged = {**DEFAULTS, **found, **options}
    block = merged["block"]
    merged["block"] = getattr(block, "kind", block)  # a block class names its kind
    _check(merged)
    return merged


def _norm(name: str, features: int, kind: str) -> Norm:
    if kind == "group" and features % 32:
        raise InputError(
            f"norm='group' takes 32 groups, which must divide every norm's channels; {name} has {features}"
        )
    return Norm(name, features, kind)


def _stem(o: dict) -> Stem:
    """torchvision's 7x7 stem or timm's deep ones, then the pool (max, anti-aliased, or timm's conv)."""
    norm, width, out, aa = o["norm"], o["stem_width"], stem_out(o), o["aa_layer"]
    if o["stem_type"]:
        first = 3 * (width // 4) if o["stem_type"] == "deep_tiered" else width
        layers = (
            _conv("conv1.0", o["in_features"], first, 3, 2),
            _norm("conv1.1", first, norm),
            Act("conv1.2"),
            _conv("conv1.3", first, width, 3),
            _norm("conv1.4", width, norm),
            Act("conv1.5"),
            _conv("conv1.6", width, out, 3),
        )
        kind = "deep_tiered" if o["stem_type"] == "deep_tiered" else "deep"
    else:
        layers, kind = (_conv("conv1", o["in_features"], out, 7, 2),), "conv7"
    layers += (_norm("bn1", out, norm), Act("act1"))
    if o["replace_stem_pool"]:
        pool = [_conv("maxpool.0", out, out, 3, 1 if aa else 2)]
        if aa:
            pool.append(aa_pool("maxpool.1", aa))
        pool += [_norm(f"maxpool.{len(pool)}", out, norm), Act(f"maxpool.{len(pool) + 1}")]
    elif aa == "avg":
        pool = [Pool("maxpool", "avg", 2, 2, 0)]
    elif aa == "blur":
        pool = [Pool("maxpool.0", "max", 3, 1, 1), aa_pool("maxpool.1", aa)]
    else:
        pool = [Pool("maxpool", "max", 3, 2, 1)]
    return Stem(kind, layers, tuple(pool), out, 2)


def describe(model: Any = None, **options) -> ResNetSpec:
    """The full spec of a model: ``model`` a name of :data:`FAMILY` or an object with the options
    as attributes (a Linen or NNX ``ResNet``); ``options`` override (see :data:`DEFAULTS`).

    Raises ``ValueError`` for a combination the block kind cannot build (each message names the option).
    """
    o = options_of(model, **options)
    norm = o["norm"]
    stem = _stem(o)
    stages, channels, stride = [], stem.out_features, 4  # the stem's pool halves its stride 2 again
    dilate = o["replace_stride_with_dilation"]
    total, index = sum(o["stage_sizes"]), 0
    for i, (size, (strides, first_dilation, dilation)) in enumerate(
        zip(o["stage_sizes"], stage_plan(dilate, len(o["stage_sizes"])))
    ):
        try:
            args = stage_args(o, i, dilation)
        except ValueError as err:
            if dilation == 1:
                raise
            raise InputError(
                f"replace_stride_with_dilation={tuple(dilate)!r} dilates {STAGE_NAMES[i]} by {dilation}, but {err}"
            ) from None
        blocks = []
        for j in range(size):
            first = j == 0
            rate = o["drop_path_rate"] * index / (total - 1) if total > 1 else 0.0  # timm's linear rule
            block_args = {**args, "drop_path_rate": rate, **({"dilation": first_dilation} if first else {})}
            blocks.append(
                describe_block(
                    o["block"],
                    channels,
                    block_args,
                    stride=strides if first else 1,
                    norm=norm,
                    zero_init_last=o["zero_init_last"],
                    name=f"layer{i + 1}.{j}",
                )
            )
            channels, index = blocks[-1].out_features, index + 1
        stride *= strides
        stages.append(Stage(f"layer{i + 1}", STAGE_NAMES[i], tuple(blocks), channels, stride))
    if norm == "group":
        for layer in (
            *stem.layers,
            *stem.pool,
            *(x for b in (y for s in stages for y in s.blocks) for x in b.all_layers),
        ):
            if isinstance(layer, Norm):
                _norm(layer.name, layer.features, norm)
    head = None
    if o["num_classes"] is not None:
        head = Head("linear", Linear("fc", channels, o["num_classes"]), o["drop_rate"])
    return ResNetSpec(stem, tuple(stages), head, o)
