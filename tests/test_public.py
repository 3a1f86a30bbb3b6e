"""The public surface: what ``__all__`` promises exists, the process-wide switches live only in
``resnet_bottleneck.xla``, and ``import resnet_bottleneck`` changes nothing and loads no heavy extra."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

import resnet_bottleneck as rb

#: Packages a model user need not have: importing the library must not load them.
HEAVY = (
    "torch",
    "torchvision",
    "grain",
    "orbax",
    "onnx",
    "onnxruntime",
    "openvino",
    "tensorflow",
    "sklearn",
    "matplotlib",
)


@pytest.mark.parametrize(
    "module",
    ["resnet_bottleneck", "resnet_bottleneck.io", "resnet_bottleneck.data", "resnet_bottleneck.training"]
    + ["resnet_bottleneck.inference", "resnet_bottleneck.errors"],
)
def test_every_name_in_all_exists(module):
    mod = importlib.import_module(module)
    assert mod.__all__ and len(set(mod.__all__)) == len(mod.__all__)
    missing = [name for name in mod.__all__ if not hasattr(mod, name)]
    assert not missing, missing


def test_the_top_level_holds_what_a_model_user_needs():
    for name in ("create_model", "load_model", "export_onnx", "fold_batchnorm", "count_params", "scan_variables"):
        assert name in rb.__all__ and callable(getattr(rb, name)), name
    assert rb.load_model is importlib.import_module("resnet_bottleneck.inference").load_model
    assert rb.freeze is importlib.import_module("resnet_bottleneck.training.optim").freeze


def test_process_wide_switches_live_in_xla_only():
    from resnet_bottleneck import xla

    for name in ("reuse_freed_memory", "jit", "compiler_options"):
        assert name not in rb.__all__ and not hasattr(rb, name), name
        assert callable(getattr(xla, name))


PROGRAM = """
import json, os, sys
import jax
def settings():
    return [os.environ.get("XLA_FLAGS"), os.environ.get("TF_CPP_MIN_LOG_LEVEL"),
            {k: str(v) for k, v in jax.config.values.items()}]
before = settings()
import resnet_bottleneck
print(json.dumps({"same": before == settings(), "modules": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def test_import_changes_no_setting_and_loads_no_heavy_extra():
    done = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["same"]
    assert not set(HEAVY) & set(result["modules"]), set(HEAVY) & set(result["modules"])
    assert "jax" in result["modules"] and "resnet_bottleneck" in result["modules"]  # the check sees modules


@pytest.mark.parametrize(
    ("module", "name", "new_home"),
    [
        ("resnet_bottleneck", "jit", "resnet_bottleneck.xla.jit"),
        ("resnet_bottleneck", "compiler_options", "resnet_bottleneck.xla.compiler_options"),
        ("resnet_bottleneck", "reuse_freed_memory", "resnet_bottleneck.xla.reuse_freed_memory"),
        ("resnet_bottleneck.io", "load_model", "resnet_bottleneck.load_model"),
        ("resnet_bottleneck.backbones", "freeze", "resnet_bottleneck.training.optim.freeze"),
        ("resnet_bottleneck.backbones", "trainable_mask", "resnet_bottleneck.training.optim.trainable_mask"),
    ],
)
def test_a_moved_name_says_where_it_went(module, name, new_home):
    mod = importlib.import_module(module)
    assert not hasattr(mod, name)
    with pytest.raises(AttributeError, match=rf"{module}\.{name} moved to {new_home}"):
        getattr(mod, name)
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        mod.no_such_name  # noqa: B018 - any other name is a plain AttributeError
