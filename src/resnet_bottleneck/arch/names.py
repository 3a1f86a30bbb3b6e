"""Layer names: a spec's (torchvision's) -> the Linen module path and the NNX attribute path.

One rule each, from the spec alone. Linen: the stem's and head's layers keep their names, dots
as underscores (``conv1``, ``bn1``, ``conv1_0`` for timm's deep stem's ``conv1.0``, ``fc``); a
block ``layer1.0`` is the module ``layer1_0`` whose k-th conv, main path then shortcut, is
``Conv_k`` and whose norm after it is ``BatchNorm_k`` (flax's automatic names, the founding
block's textbook tree): ``layer1.0.conv2`` is ``layer1_0/Conv_1``, ``layer1.0.downsample.0``
is ``layer1_0/Conv_3``; its attention keeps timm's name (``layer1_0/se``). Under ``scan`` a
stage's blocks after its first are one stacked module ``layerN_scan/block``. NNX: the name's
own parts, numbers as indices (``layer1.0.downsample.0`` is ``layer1[0].downsample[0]``).
"""

from __future__ import annotations

from .spec import WEIGHTED, Block, Conv, Norm, ResNetSpec


def _block_module(block: Block, scan: bool) -> tuple[str, ...]:
    if not block.name:
        return ()  # a standalone block: its layers are its own children
    stage, _, j = block.name.rpartition(".")
    return (f"{stage}_scan", "block") if scan and j != "0" else (f"{stage}_{j}",)


def linen_names(spec: ResNetSpec | Block, *, scan: bool = False) -> dict[str, tuple[str, ...]]:
    """Spec name -> Linen module path of every layer with variables (convs, norms, dense), in model order.

    ``scan``: the paths of the ``scan=True`` layout, where many names share one stacked module.
    """
    names: dict[str, tuple[str, ...]] = {}
    blocks = [spec] if isinstance(spec, Block) else list(spec.blocks())
    if isinstance(spec, ResNetSpec):
        stem = (*spec.stem.layers, *spec.stem.pool)
        names.update({layer.name: (layer.name.replace(".", "_"),) for layer in stem if isinstance(layer, WEIGHTED)})
    for block in blocks:
        module, index = _block_module(block, scan), -1
        for layer in block.all_layers:
            if isinstance(layer, Conv):
                index += 1
                names[layer.name] = (*module, f"Conv_{index}")
            elif isinstance(layer, Norm):
                names[layer.name] = (*module, f"BatchNorm_{index}")
            elif isinstance(layer, WEIGHTED):
                names[layer.name] = (*module, layer.name.rpartition(".")[2])
    if isinstance(spec, ResNetSpec) and spec.head is not None:
        names[spec.head.layer.name] = (spec.head.layer.name,)
    return names


def linen_path(spec: ResNetSpec | Block, name: str) -> tuple[str, ...]:
    """The Linen module path of the layer ``name`` (see :func:`linen_names`)."""
    return linen_names(spec)[name]


def nnx_path(name: str) -> tuple[str | int, ...]:
    """The NNX attribute path of the layer ``name``.

    ``'layer1.0.downsample.0'`` -> ``('layer1', 0, 'downsample', 0)``.
    """
    return tuple(int(part) if part.isdigit() else part for part in name.split("."))


def nnx_names(spec: ResNetSpec | Block) -> dict[str, tuple[str | int, ...]]:
    """Spec name -> NNX attribute path of every layer with variables, in model order."""
    return {name: nnx_path(name) for name in linen_names(spec)}


__all__ = ["linen_names", "linen_path", "nnx_names", "nnx_path"]
