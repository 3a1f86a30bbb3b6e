"""The layers of a model as data: frozen dataclasses, no JAX.

A :class:`ResNetSpec` lists every layer of a model with its geometry and its name. The names
are the foreign checkpoints' own (torchvision's: ``conv1``, ``bn1``, ``layer1.0.conv2``,
``layer1.0.downsample.0``, ``fc``); the Linen and NNX paths are derived from them by
:mod:`resnet_bottleneck.arch.names`. Each backend (Linen, NNX, the ONNX writer) interprets a
spec; a new layer kind is a new ``kind`` string (or a new dataclass) here and one
implementation per backend there.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError

#: What a :class:`Norm` holds, per kind: (parameters, statistics) vectors of ``features`` each.
NORM_VECTORS = {"batch": (2, 2), "frozen": (0, 4), "group": (2, 0)}

#: The norm kinds a BatchNorm folding merges into the conv before them (a GroupNorm's statistics are per image).
FOLDABLE_NORMS = ("batch", "frozen")


@dataclass(frozen=True)
class Conv:
    """A 2-D convolution: ``kernel`` x ``kernel``, symmetric ``padding`` on each side (torchvision's)."""

    name: str
    in_features: int
    out_features: int
    kernel: int
    stride: tuple[int, int] = (1, 1)
    groups: int = 1
    dilation: int = 1
    padding: int = 0
    bias: bool = False

    @property
    def kernel_shape(self) -> tuple[int, int, int, int]:
        """The kernel's shape, HWIO (ours; torchvision's is OIHW)."""
        return (self.kernel, self.kernel, self.in_features // self.groups, self.out_features)

    def params(self, folded: bool = False) -> int:
        """Weights and bias; ``folded``: with the bias a folded BatchNorm gives it."""
        k, _, i, o = self.kernel_shape
        return k * k * i * o + (o if self.bias or folded else 0)


@dataclass(frozen=True)
class Norm:
    """A normalisation of ``features`` channels after the conv before it; ``kind`` as :data:`NORM_VECTORS`."""

    name: str
    features: int
    kind: str = "batch"
    zero_init: bool = False
    groups: int = 32  # a GroupNorm's groups (timm's default); unused by the other kinds

    @property
    def foldable(self) -> bool:
        return self.kind in FOLDABLE_NORMS

    def params(self, folded: bool = False) -> int:
        return 0 if folded and self.foldable else NORM_VECTORS[self.kind][0] * self.features

    def stats(self, folded: bool = False) -> int:
        return 0 if folded and self.foldable else NORM_VECTORS[self.kind][1] * self.features


@dataclass(frozen=True)
class Act:
    """An activation, ``kind`` ``'relu'`` (no variables)."""

    name: str
    kind: str = "relu"


@dataclass(frozen=True)
class Pool:
    """A pooling window, ``padding`` on each side, as torch's.

    ``kind``: ``'max'`` (padding with -inf), ``'avg'`` (``ceil_mode`` and ``count_include_pad`` as
    ``nn.AvgPool2d``'s) or ``'blur'`` (timm's ``BlurPool2d``: a fixed binomial ``kernel`` x ``kernel``
    filter per channel, reflect padding, then the stride).
    """

    name: str
    kind: str
    kernel: int
    stride: int
    padding: int
    ceil_mode: bool = False
    count_include_pad: bool = True

    def params(self, folded: bool = False) -> int:
        return 0


@dataclass(frozen=True)
class SqueezeExcite:
    """timm's ``SEModule``: global mean, 1x1 conv to ``reduced`` (bias), ReLU, 1x1 conv back (bias),
    sigmoid, times the input. Its convs are ``fc1`` and ``fc2`` under ``name``."""

    name: str
    features: int
    reduced: int

    def params(self, folded: bool = False) -> int:
        return 2 * self.features * self.reduced + self.reduced + self.features


@dataclass(frozen=True)
class Eca:
    """timm's ``EcaModule``: global mean, a ``kernel``-tap 1-D conv across channels (no bias), sigmoid,
    times the input. Its conv is ``conv`` under ``name``."""

    name: str
    features: int
    kernel: int

    def params(self, folded: bool = False) -> int:
        return self.kernel


@dataclass(frozen=True)
class DropPath:
    """Stochastic depth: in training, each image's residual branch is dropped with probability ``rate``
    (the rest scaled by ``1 / (1 - rate)``); the identity in evaluation."""

    name: str
    rate: float

    def params(self, folded: bool = False) -> int:
        return 0


@dataclass(frozen=True)
class Linear:
    """A dense layer (the classifier)."""

    name: str
    in_features: int
    out_features: int
    bias: bool = True

    def params(self, folded: bool = False) -> int:
        return self.in_features * self.out_features + (self.out_features if self.bias else 0)


Layer = Conv | Norm | Act | Pool | SqueezeExcite | Eca | DropPath | Linear

#: The layer kinds that hold variables (whose names the checkpoint maps carry).
WEIGHTED = (Conv, Norm, SqueezeExcite, Eca, Linear)


@dataclass(frozen=True)
class Shortcut:
    """A block's shortcut: ``kind`` ``'identity'`` (no layers) or ``'projection'`` (its ``layers``:
    a conv and its norm, after an average pool where ``avg_down``)."""

    kind: str
    layers: tuple[Layer, ...] = ()


@dataclass(frozen=True)
class Block:
    """A residual block: ``layers`` (conv, norm, act, ..., the last norm, attention, drop path: run in
    order) added to ``shortcut``, then ReLU.

    ``args`` are the block kind's own constructor arguments (``mid_features``, ``groups``, ...), as
    ``(key, value)`` pairs, which a backend's block class of that kind takes.
    """

    name: str
    kind: str
    in_features: int
    out_features: int
    stride: tuple[int, int]
    dilation: int
    layers: tuple[Layer, ...]
    shortcut: Shortcut
    args: tuple[tuple[str, Any], ...] = ()

    @property
    def all_layers(self) -> tuple[Layer, ...]:
        """The main path's layers, then the shortcut's."""
        return self.layers + self.shortcut.layers


@dataclass(frozen=True)
class Stage:
    """Blocks at one resolution: ``name`` (``layer1``), ``feature`` (``C2``), output channels and stride."""

    name: str
    feature: str
    blocks: tuple[Block, ...]
    out_features: int
    stride: int


@dataclass(frozen=True)
class Stem:
    """The input side: ``layers`` (run in order; their output is the ``stem`` feature, timm's ``act1``),
    then ``pool`` (the layers timm's ``maxpool`` holds). ``kind``: ``'conv7'`` (torchvision's 7x7/2
    conv), ``'deep'`` or ``'deep_tiered'`` (timm's three 3x3 convs)."""

    kind: str
    layers: tuple[Layer, ...]
    pool: tuple[Layer, ...]
    out_features: int
    stride: int


@dataclass(frozen=True)
class Head:
    """The output side: ``kind`` ``'linear'`` (global average pool, dropout at ``drop_rate`` in
    training, then ``layer``)."""

    kind: str
    layer: Linear
    drop_rate: float = 0.0


@dataclass(frozen=True)
class ResNetSpec:
    """A whole model: stem, stages, head (``None``: headless), and the options it was described with."""

    stem: Stem
    stages: tuple[Stage, ...]
    head: Head | None
    options: dict = field(compare=False, hash=False)

    def blocks(self) -> Iterator[Block]:
        for stage in self.stages:
            yield from stage.blocks

    def layers(self) -> Iterator[Layer]:
        """Every layer in model order: the stem's, each block's (main path, then shortcut), the head's."""
        yield from self.stem.layers
        yield from self.stem.pool
        for block in self.blocks():
            yield from block.all_layers
        if self.head is not None:
            yield self.head.layer

    def conv_norm_pairs(self) -> Iterator[tuple[Conv, Norm]]:
        """Each foldable norm (BatchNorm, frozen) with the conv before it (the pairs BatchNorm folding merges)."""
        sequences = [self.stem.layers, self.stem.pool]
        sequences += [seq for b in self.blocks() for seq in (b.layers, b.shortcut.layers)]
        for layers in sequences:
            for before, layer in zip(layers, layers[1:]):
                if isinstance(layer, Norm) and layer.foldable:
                    if not isinstance(before, Conv):
                        raise InputError(f"norm {layer.name} follows {before.name}, not a conv: it cannot be folded")
                    yield before, layer

    def param_count(self, folded: bool = False) -> int:
        """Trainable parameters (``params``); ``folded``: of the BatchNorm-folded inference form (each
        foldable norm gone, the conv before it with a bias)."""
        total = sum(layer.params() for layer in self.layers() if isinstance(layer, WEIGHTED))
        if folded:
            total -= sum(norm.params() - conv.out_features * (not conv.bias) for conv, norm in self.conv_norm_pairs())
        return total

    def stats_count(self) -> int:
        """BatchNorm statistics (``batch_stats``)."""
        return sum(layer.stats() for layer in self.layers() if isinstance(layer, Norm))

    def weighted_layers(self) -> Iterator[Layer]:
        """The layers that hold variables, in model order."""
        return (layer for layer in self.layers() if isinstance(layer, WEIGHTED))

    @property
    def out_features(self) -> int:
        return self.stages[-1].out_features

    @property
    def num_classes(self) -> int | None:
        return None if self.head is None else self.head.layer.out_features

    def feature_info(self) -> list[dict]:
        """Name, channels and stride of the stem's activation and of each stage's output."""
        info = [{"name": "stem", "channels": self.stem.out_features, "stride": self.stem.stride}]
        return info + [{"name": s.feature, "channels": s.out_features, "stride": s.stride} for s in self.stages]
