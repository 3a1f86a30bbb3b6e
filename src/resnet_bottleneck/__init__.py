"""resnet-bottleneck: the ResNet bottleneck block and its family in JAX/Flax Linen."""

from .blocks import BasicBlock, BottleneckBlock
from .cost import layer_costs, model_cost
from .forward import resnet_basic_forward, resnet_bottleneck_forward
from .models import CONFIGS, ResNet, create_model, feature_info

__all__ = [
    "CONFIGS",
    "BasicBlock",
    "BottleneckBlock",
    "ResNet",
    "create_model",
    "feature_info",
    "layer_costs",
    "model_cost",
    "resnet_basic_forward",
    "resnet_bottleneck_forward",
]

__version__ = "0.1.0"
