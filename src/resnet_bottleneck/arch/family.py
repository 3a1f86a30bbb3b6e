"""The family as data: one row a name, the block kinds, and ``describe``: options -> :class:`ResNetSpec`.

A row holds the options that make a model that name (its block kind as a string); every other
option has its default here, :data:`DEFAULTS`. A block kind is one :class:`BlockKind`: its
expansion, its constructor arguments for a stage, and its layers. The arithmetic is
torchvision's (``_make_layer``, the bottleneck's ``width``); errors name the option.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .. import _checks
from .._checks import TRAINABLE_LAYERS
from .spec import Block, Conv, Head, Linear, Norm, Pool, ResNetSpec, Shortcut, Stage, Stem

STAGE_NAMES = ("C2", "C3", "C4", "C5")
NORMS = ("batch", "frozen")
STRIDE_PLACEMENTS = ("3x3", "1x1")

#: Every architecture option and its default (torchvision's ResNet-50 but for the row's own).
DEFAULTS: dict[str, Any] = {
    "stage_sizes": (3, 4, 6, 3),
    "block": "bottleneck",
    "groups": 1,
    "width_per_group": 64,
    "stem_width": 64,
    "stride_on": "3x3",
    "replace_stride_with_dilation": (False, False, False),
    "norm": "batch",
    "zero_init_last": False,
    "trainable_layers": len(TRAINABLE_LAYERS),
    "num_classes": 1000,
    "in_features": 3,
}

#: The family, one row a name: the options that make it that model.
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
}


def _pair(stride) -> tuple[int, int]:
    return tuple(stride) if isinstance(stride, (tuple, list)) else (stride, stride)


def _conv(name, c_in, c_out, kernel, stride=1, groups=1, dilation=1) -> Conv:
    """A conv padded as torchvision pads: ``dilation * (kernel - 1) // 2`` on each side."""
    padding = dilation * (kernel - 1) // 2
    return Conv(name, c_in, c_out, kernel, _pair(stride), groups, dilation, padding)


# --- block kinds -------------------------------------------------------------------------


def _bottleneck_args(planes, *, groups=1, width_per_group=64, stride_on="3x3", dilation=1) -> dict:
    """torchvision's widths: the 3x3 conv is ``int(planes * width_per_group / 64) * groups`` wide."""
    _checks.one_of("stride_on", stride_on, STRIDE_PLACEMENTS)
    return {
        "mid_features": int(planes * (width_per_group / 64.0)) * groups,
        "out_features": planes * BLOCK_KINDS["bottleneck"].expansion,
        "groups": groups,
        "stride_on": stride_on,
        "dilation": dilation,
    }


def _bottleneck_layers(p, c_in, args, stride, norm, zero_init_last) -> tuple:
    """1x1 (squeeze) -> 3x3 (grouped, dilated) -> 1x1 (expand); the stride on the 3x3 (v1.5) or the first 1x1."""
    mid, out, groups, dilation = args["mid_features"], args["out_features"], args["groups"], args["dilation"]
    s1, s3 = ((1, 1), stride) if args["stride_on"] == "3x3" else (stride, (1, 1))
    return (
        _conv(f"{p}conv1", c_in, mid, 1, s1),
        Norm(f"{p}bn1", mid, norm),
        _conv(f"{p}conv2", mid, mid, 3, s3, groups, dilation),
        Norm(f"{p}bn2", mid, norm),
        _conv(f"{p}conv3", mid, out, 1),
        Norm(f"{p}bn3", out, norm, zero_init_last),
    )


def _basic_args(planes, *, groups=1, width_per_group=64, stride_on="3x3", dilation=1) -> dict:
    """One width; torchvision's basic block takes no groups, widths or dilation (it raises the same way)."""
    if (groups, width_per_group) != (1, 64):
        raise ValueError(
            f"basic blocks support only groups=1, width_per_group=64; "
            f"got groups={groups!r}, width_per_group={width_per_group!r}"
        )
    if dilation != 1:
        raise ValueError(f"basic blocks support only dilation=1, as torchvision's; got dilation={dilation!r}")
    _checks.one_of("stride_on", stride_on, STRIDE_PLACEMENTS)
    return {"features": planes, "dilation": 1}


def _basic_layers(p, c_in, args, stride, norm, zero_init_last) -> tuple:
    """3x3 (strided) -> 3x3."""
    features, dilation = args["features"], args["dilation"]
    return (
        _conv(f"{p}conv1", c_in, features, 3, stride, 1, dilation),
        Norm(f"{p}bn1", features, norm),
        _conv(f"{p}conv2", features, features, 3, 1, 1, dilation),
        Norm(f"{p}bn2", features, norm, zero_init_last),
    )


@dataclass(frozen=True)
class BlockKind:
    """A block kind: ``expansion`` (output channels per ``planes``), ``args`` (its constructor
    arguments for a stage at ``planes``; raises for options it lacks), ``layers`` (its main path)."""

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
    """One block of ``kind`` with constructor ``args`` (its kind's: ``mid_features``, ...), named
    ``name`` (``''``: a standalone block, whose layers are ``conv1``, ``downsample.0``, ...)."""
    spec = block_kind(kind)
    stride = _pair(stride)
    prefix = f"{name}." if name else ""
    layers = spec.layers(prefix, in_features, args, stride, norm, zero_init_last)
    out = args[spec.out_key]
    project = needs_projection(in_features, out, stride) if projection is None else projection
    if project:
        shortcut = Shortcut(
            "projection",
            (_conv(f"{prefix}downsample.0", in_features, out, 1, stride), Norm(f"{prefix}downsample.1", out, norm)),
        )
    else:
        shortcut = Shortcut("identity")
    dilation = args.get("dilation", 1)
    return Block(name, kind, in_features, out, stride, dilation, layers, shortcut, tuple(args.items()))


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


def stage_args(options: Mapping[str, Any], i: int, dilation: int = 1) -> dict:
    """The block constructor arguments of stage ``i`` (``options`` as :data:`DEFAULTS`)."""
    return block_kind(options["block"]).args(
        options["stem_width"] * 2**i,
        groups=options["groups"],
        width_per_group=options["width_per_group"],
        stride_on=options["stride_on"],
        dilation=dilation,
    )


def _is_bool(value: Any) -> bool:
    """A Python or numpy bool (no numpy import here: a numpy scalar's dtype says so)."""
    return isinstance(value, bool) or getattr(getattr(value, "dtype", None), "kind", None) == "b"


def _check(o: dict) -> None:
    """Each option alone and the block kind's own checks of stage 0 (errors name the option)."""
    block_kind(o["block"])
    _checks.one_of("stride_on", o["stride_on"], STRIDE_PLACEMENTS)
    sizes = o["stage_sizes"]
    if not isinstance(sizes, (tuple, list)) or not sizes or len(sizes) > len(STAGE_NAMES):
        raise ValueError(f"stage_sizes must list 1 to {len(STAGE_NAMES)} stages; got {sizes!r}")
    o["stage_sizes"] = tuple(_checks.positive_int("stage_sizes", n) for n in sizes)
    if o["num_classes"] is not None:
        _checks.positive_int("num_classes", o["num_classes"])
    for key in ("groups", "width_per_group", "stem_width"):
        _checks.positive_int(key, o[key])
    stage_args(o, 0)  # the block kind's own checks of groups and widths
    _checks.one_of("norm", o["norm"], NORMS)
    _checks.trainable_layers(o["trainable_layers"])
    dilate = o["replace_stride_with_dilation"]
    if not isinstance(dilate, (tuple, list)) or len(dilate) != 3 or not all(_is_bool(d) for d in dilate):
        raise ValueError(
            f"replace_stride_with_dilation must be three booleans (for the stages C3, C4, C5); got {dilate!r}"
        )
    o["replace_stride_with_dilation"] = tuple(bool(d) for d in dilate)
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
        raise TypeError(f"unknown architecture options {', '.join(sorted(unknown))}; known: {', '.join(DEFAULTS)}")
    merged = {**DEFAULTS, **found, **options}
    block = merged["block"]
    merged["block"] = getattr(block, "kind", block)  # a block class names its kind
    _check(merged)
    return merged


def describe(model: Any = None, **options) -> ResNetSpec:
    """The full spec of a model: ``model`` a name of :data:`FAMILY` or an object with the options
    as attributes (a Linen or NNX ``ResNet``); ``options`` override (see :data:`DEFAULTS`).

    Raises ``ValueError`` for a combination the block kind cannot build (each message names the option).
    """
    o = options_of(model, **options)
    norm = o["norm"]
    width = o["stem_width"]
    conv1 = _conv("conv1", o["in_features"], width, 7, 2)
    stem = Stem("conv7", (conv1, Norm("bn1", width, norm)), Pool("maxpool", "max", 3, 2, 1), width, 2)
    stages, channels, stride = [], width, 4  # the max-pool halves the stem's stride 2 again
    dilate = o["replace_stride_with_dilation"]
    for i, (size, (strides, first_dilation, dilation)) in enumerate(
        zip(o["stage_sizes"], stage_plan(dilate, len(o["stage_sizes"])))
    ):
        try:
            args = stage_args(o, i, dilation)
        except ValueError as err:
            if dilation == 1:
                raise
            raise ValueError(
                f"replace_stride_with_dilation={tuple(dilate)!r} dilates {STAGE_NAMES[i]} by {dilation}, but {err}"
            ) from None
        blocks = []
        for j in range(size):
            first = j == 0
            block_args = {**args, "dilation": first_dilation} if first else args
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
            channels = blocks[-1].out_features
        stride *= strides
        stages.append(Stage(f"layer{i + 1}", STAGE_NAMES[i], tuple(blocks), channels, stride))
    head = None if o["num_classes"] is None else Head("linear", Linear("fc", channels, o["num_classes"]))
    return ResNetSpec(stem, tuple(stages), head, o)
