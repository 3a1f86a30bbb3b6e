"""The block and the family as native Flax NNX modules, numerically identical to the Linen ones.

``create_model('resnet50', rngs=nnx.Rngs(0))`` builds any family member (every name of
:func:`resnet_bottleneck.list_models`, timm's included) with timm's and torchvision's attribute names
(``model.layer1[0].conv1.kernel``, ``model.conv1[0]`` of a deep stem, ``model.layer1[0].se.fc1``),
``model.train()`` / ``model.eval()`` (BatchNorm, drop path and dropout), ``forward_features`` /
``forward_head`` and ``reset_classifier``, for ``nnx.Optimizer`` and ``nnx.jit``. :func:`to_nnx` /
:func:`to_linen` convert both ways with nothing lost; ``from_torchvision(state_dict, name, api='nnx')``
imports torchvision weights straight into an NNX model.
"""

from . import layers
from .blocks import TWINS, BasicBlock, BottleneckBlock, FastConv
from .convert import MODULES, to_linen, to_nnx
from .models import ResNet, create_model
from .norm import FLAX_BATCH_NORM, BatchNorm, FrozenBatchNorm

__all__ = [
    "FLAX_BATCH_NORM",
    "MODULES",
    "TWINS",
    "BasicBlock",
    "BatchNorm",
    "BottleneckBlock",
    "FastConv",
    "FrozenBatchNorm",
    "ResNet",
    "create_model",
    "layers",
    "to_linen",
    "to_nnx",
]
