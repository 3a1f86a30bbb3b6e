"""resnet-bottleneck: the ResNet bottleneck block and its family in JAX/Flax Linen."""

from .blocks import BasicBlock, BottleneckBlock, FastConv
from .cost import layer_costs, model_cost
from .fold import fold_batchnorm
from .forward import resnet_basic_forward, resnet_bottleneck_forward
from .models import CONFIGS, ResNet, create_model, feature_info
from .io.torchvision import from_torchvision, to_torchvision
from .xla import compiler_options, jit, reuse_freed_memory

__all__ = [
    "CONFIGS",
    "BasicBlock",
    "BottleneckBlock",
    "FastConv",
    "ResNet",
    "create_model",
    "compiler_options",
    "feature_info",
    "fold_batchnorm",
    "from_torchvision",
    "jit",
    "layer_costs",
    "model_cost",
    "resnet_basic_forward",
    "resnet_bottleneck_forward",
    "reuse_freed_memory",
    "to_torchvision",
]

__version__ = "0.1.0"
