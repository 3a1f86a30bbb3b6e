"""resnet-bottleneck: the ResNet bottleneck block and its family in JAX/Flax Linen.

The top level holds what a model user needs: the models and blocks, the functional forward
passes, weights in and out, costs, feature-map and variable-layout helpers, the FPN backbone
and its optimizer utilities. Process-wide switches (``reuse_freed_memory``) and the compile
options live in :mod:`resnet_bottleneck.xla`; importing the package changes no setting.
"""

from .arch.data_configs import data_config
from .backbones import FPNBackbone, create_fpn_backbone
from .blocks import BasicBlock, BottleneckBlock, FastConv
from .cost import layer_costs, model_cost
from .fold import fold_batchnorm
from .forward import resnet_basic_forward, resnet_bottleneck_forward
from .inference import load_model
from .io.onnx import export_onnx
from .io.timm import from_timm, to_timm
from .io.torchvision import from_torchvision, from_torchvision_fpn, to_torchvision, to_torchvision_fpn
from .models import (
    CONFIGS,
    ResNet,
    count_params,
    create_model,
    feature_info,
    list_models,
    reset_classifier,
    scan_variables,
    unscan_variables,
)
from .training.optim import freeze, trainable_mask

__all__ = [
    "CONFIGS",
    "BasicBlock",
    "BottleneckBlock",
    "FPNBackbone",
    "FastConv",
    "ResNet",
    "count_params",
    "create_fpn_backbone",
    "create_model",
    "data_config",
    "export_onnx",
    "feature_info",
    "fold_batchnorm",
    "freeze",
    "from_timm",
    "from_torchvision",
    "from_torchvision_fpn",
    "layer_costs",
    "list_models",
    "load_model",
    "model_cost",
    "resnet_basic_forward",
    "reset_classifier",
    "resnet_bottleneck_forward",
    "scan_variables",
    "to_timm",
    "to_torchvision",
    "to_torchvision_fpn",
    "trainable_mask",
    "unscan_variables",
]

#: Names that used to be here, and where they are now (a clear error rather than a bare AttributeError).
_MOVED = {
    "jit": "resnet_bottleneck.xla.jit",
    "compiler_options": "resnet_bottleneck.xla.compiler_options",
    "reuse_freed_memory": "resnet_bottleneck.xla.reuse_freed_memory",
}


def __getattr__(name: str):
    """Name the new home of a moved name; ``hasattr`` stays False for it."""
    if name in _MOVED:
        raise AttributeError(f"resnet_bottleneck.{name} moved to {_MOVED[name]}")
    raise AttributeError(f"module 'resnet_bottleneck' has no attribute {name!r}")


def _version() -> str:
    """The installed package's version, from its metadata (pyproject.toml is the one place it is written)."""
    from importlib import metadata

    try:
        return metadata.version("resnet-bottleneck")
    except metadata.PackageNotFoundError:  # a source tree on sys.path, never installed
        return "0+unknown"


__version__ = _version()
