"""resnet-bottleneck: the ResNet bottleneck block and its family in JAX/Flax Linen."""

from .blocks import BasicBlock, BottleneckBlock
from .forward import resnet_basic_forward, resnet_bottleneck_forward

__all__ = [
    "BasicBlock",
    "BottleneckBlock",
    "resnet_basic_forward",
    "resnet_bottleneck_forward",
]

__version__ = "0.1.0"
