"""resnet-bottleneck: the ResNet bottleneck block and its family in JAX/Flax Linen."""

from .backbones import FPNBackbone, create_fpn_backbone, freeze, trainable_mask
from .blocks import BasicBlock, BottleneckBlock, FastConv
from .cost import layer_costs, model_cost
from .fold import fold_batchnorm
from .forward import resnet_basic_forward, resnet_bottleneck_forward
from .io import load_model
from .io.onnx import export_onnx
from .io.torchvision import from_torchvision, from_torchvision_fpn, to_torchvision, to_torchvision_fpn
from .models import CONFIGS, ResNet, create_model, feature_info
from .xla import compiler_options, jit, reuse_freed_memory

__all__ = [
    "CONFIGS",
    "BasicBlock",
    "BottleneckBlock",
    "FPNBackbone",
    "FastConv",
    "ResNet",
    "create_fpn_backbone",
    "create_model",
    "export_onnx",
    "compiler_options",
    "feature_info",
    "fold_batchnorm",
    "freeze",
    "from_torchvision",
    "from_torchvision_fpn",
    "jit",
    "layer_costs",
    "load_model",
    "model_cost",
    "resnet_basic_forward",
    "resnet_bottleneck_forward",
    "reuse_freed_memory",
    "to_torchvision",
    "to_torchvision_fpn",
    "trainable_mask",
]

__version__ = "0.1.0"
