"""The architecture as data: every layer of every family model, its geometry and its name.

No JAX, and nothing of this package but its argument checks (``_checks``): :func:`describe` turns a
name of :data:`FAMILY` (or a model's attributes) and options into a :class:`ResNetSpec`; the Linen
and NNX models, the ONNX writer and the checkpoint name maps (:mod:`.names`) are all derived
from it. A new variant is a row of :data:`FAMILY`; a new layer kind a :class:`BlockKind` (or a
new layer dataclass) here and one implementation per backend.
"""

from .family import (
    BLOCK_KINDS,
    DEFAULTS,
    FAMILY,
    NORMS,
    STAGE_NAMES,
    STRIDE_PLACEMENTS,
    TRAINABLE_LAYERS,
    BlockKind,
    block_kind,
    describe,
    describe_block,
    needs_projection,
    options_of,
    stage_args,
    stage_plan,
)
from .names import linen_names, linen_path, nnx_names, nnx_path
from .spec import NORM_VECTORS, Block, Conv, Head, Layer, Linear, Norm, Pool, ResNetSpec, Shortcut, Stage, Stem

__all__ = [
    "BLOCK_KINDS",
    "DEFAULTS",
    "FAMILY",
    "NORMS",
    "NORM_VECTORS",
    "STAGE_NAMES",
    "STRIDE_PLACEMENTS",
    "TRAINABLE_LAYERS",
    "Block",
    "BlockKind",
    "Conv",
    "Head",
    "Layer",
    "Linear",
    "Norm",
    "Pool",
    "ResNetSpec",
    "Shortcut",
    "Stage",
    "Stem",
    "block_kind",
    "describe",
    "describe_block",
    "linen_names",
    "linen_path",
    "needs_projection",
    "nnx_names",
    "nnx_path",
    "options_of",
    "stage_args",
    "stage_plan",
]
