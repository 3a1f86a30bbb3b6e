"""The block and the family as native Flax NNX modules, numerically identical to the Linen ones.

``create_model('resnet50', rngs=nnx.Rngs(0))`` builds any family member with torchvision's
attribute names (``model.layer1[0].conv1.kernel``), ``model.train()`` / ``model.eval()``,
for ``nnx.Optimizer`` and ``nnx.jit``. :func:`to_nnx` / :func:`to_linen` convert both ways
with nothing lost; ``from_torchvision(state_dict, name, api='nnx')`` imports torchvision
weights straight into an NNX model.
"""

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
    "to_linen",
    "to_nnx",
]
