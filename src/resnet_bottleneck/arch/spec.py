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

#: What a :class:`Norm` holds, per kind: (parameters, statistics) vectors of ``features`` each.
NORM_VECTORS = {"batch": (2, 2), "frozen": (0, 4)}


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

    def params(self, folded: bool = False) -> int:
        return 0 if folded else NORM_VECTORS[self.kind][0] * self.features

    def stats(self, folded: bool = False) -> int:
        return 0 if folded else NORM_VECTORS[self.kind][1] * self.features


@dataclass(frozen=True)
class Pool:
    """A pooling window: ``kind`` ``'max'`` (padding with -inf, as torch)."""

    name: str
    kind: str
    kernel: int
    stride: int
    padding: int


@dataclass(frozen=True)
class Linear:
    """A dense layer (the classifier)."""

    name: str
    in_features: int
    out_features: int
    bias: bool = True

    def params(self, folded: bool = False) -> int:
        return self.in_features * self.out_features + (self.out_features if self.bias else 0)


Layer = Conv | Norm | Pool | Linear


@dataclass(frozen=True)
class Shortcut:
    """A block's shortcut: ``kind`` ``'identity'`` (no layers) or ``'projection'`` (1x1 conv + norm)."""

    kind: str
    layers: tuple[Layer, ...] = ()


@dataclass(frozen=True)
class Block:
    """A residual block: ``layers`` (conv, norm, conv, norm, ...; ReLU between the pairs, not after
    the last) added to ``shortcut``, then ReLU.

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
    """The input side: ``kind`` (``'conv7'``: torchvision's 7x7/2 conv, norm, ReLU), then ``pool``."""

    kind: str
    layers: tuple[Layer, ...]
    pool: Pool | None
    out_features: int
    stride: int


@dataclass(frozen=True)
class Head:
    """The output side: ``kind`` ``'linear'`` (global average pool, then ``layer``)."""

    kind: str
    layer: Linear


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
        if self.stem.pool is not None:
            yield self.stem.pool
        for block in self.blocks():
            yield from block.all_layers
        if self.head is not None:
            yield self.head.layer

    def conv_norm_pairs(self) -> Iterator[tuple[Conv, Norm]]:
        """Each norm with the conv before it (the pairs BatchNorm folding merges)."""
        sequences = [self.stem.layers] + [seq for b in self.blocks() for seq in (b.layers, b.shortcut.layers)]
        for layers in sequences:
            for before, layer in zip(layers, layers[1:]):
                if isinstance(layer, Norm):
                    if not isinstance(before, Conv):
                        raise ValueError(f"norm {layer.name} follows {before.name}, not a conv")
                    yield before, layer

    def param_count(self, folded: bool = False) -> int:
        """Trainable parameters (``params``); ``folded``: of the BatchNorm-folded inference form."""
        return sum(layer.params(folded) for layer in self.layers() if not isinstance(layer, Pool))

    def stats_count(self) -> int:
        """BatchNorm statistics (``batch_stats``)."""
        return sum(layer.stats() for layer in self.layers() if isinstance(layer, Norm))

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
