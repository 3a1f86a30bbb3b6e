"""torchvision weights in and out, exactly.

torchvision's ``ResNet`` names its tensors ``conv1``, ``bn1``, ``layer{i}.{j}.conv{k}``,
``layer{i}.{j}.bn{k}``, ``layer{i}.{j}.downsample.{0,1}`` and ``fc``; the models here
name the same layers ``conv1``, ``bn1``, ``layer{i}_{j}/Conv_{k-1}``,
``layer{i}_{j}/BatchNorm_{k-1}``, the projection after them, and ``fc``. Conv kernels
are OIHW there and HWIO here; the classifier is (out, in) there and (in, out) here;
BatchNorm's ``weight``/``bias``/``running_mean``/``running_var`` are ``scale``/``bias``
in ``params`` and ``mean``/``var`` in ``batch_stats``. ``num_batches_tracked`` only
matters to PyTorch's ``momentum=None`` (a cumulative average), which torchvision does
not use: it is accepted on the way in and written as 0 on the way out.

BatchNorm momentum: PyTorch's ``momentum=0.1`` weighs the *new* batch, Flax's weighs
the *old* running value, so torch 0.1 == flax 0.9 (the models' default).

Nothing here needs PyTorch except :func:`to_torchvision` returning tensors and loading
``.pth`` files; ``.safetensors`` files are read with ``safetensors.numpy``.
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from ..models import ResNet, _model_name, create_model
from .safetensors import read_tensors

_BN = (("scale", "params", "weight"), ("bias", "params", "bias"), ("mean", "batch_stats", "running_mean"),
       ("var", "batch_stats", "running_var"))


def _torch_module(flax_module: tuple[str, ...], block: type) -> str:
    """The torchvision name of one of our modules, e.g. ('layer1_0', 'Conv_3') -> 'layer1.0.downsample.0'."""
    if len(flax_module) == 1:
        return flax_module[0]  # conv1, bn1, fc
    stage, layer = flax_module
    i, j = stage[len("layer"):].split("_")
    kind, index = layer.split("_")
    k = int(index)
    if k < block.shortcut_index:
        name = f"conv{k + 1}" if kind == "Conv" else f"bn{k + 1}"
    else:
        name = "downsample.0" if kind == "Conv" else "downsample.1"
    return f"layer{i}.{j}.{name}"


def _abstract_variables(model: ResNet):
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), x)


def _layout(model: ResNet):
    """[(torch key, (collection, *flax path), flax shape, kind)] for every tensor of ``model``."""
    variables = _abstract_variables(model)
    params = traverse_util.flatten_dict(variables["params"])
    entries = []
    modules = sorted({path[:-1] for path in params})
    for module in modules:
        torch_name = _torch_module(module, model.block)
        if (*module, "kernel") in params:
            shape = params[(*module, "kernel")].shape
            kind = "dense" if len(shape) == 2 else "conv"
            entries.append((f"{torch_name}.weight", ("params", *module, "kernel"), shape, kind))
            if (*module, "bias") in params:
                entries.append((f"{torch_name}.bias", ("params", *module, "bias"), params[(*module, "bias")].shape, "vector"))
        else:
            features = params[(*module, "scale")].shape
            for ours, collection, theirs in _BN:
                entries.append((f"{torch_name}.{theirs}", (collection, *module, ours), features, "vector"))
    return entries


def _to_torch_shape(shape, kind):
    if kind == "conv":
        return (shape[3], shape[2], shape[0], shape[1])
    if kind == "dense":
        return (shape[1], shape[0])
    return tuple(shape)


def _from_torch(array: np.ndarray, kind: str) -> np.ndarray:
    if kind == "conv":
        return array.transpose(2, 3, 1, 0)
    if kind == "dense":
        return array.T
    return array


def _to_torch(array: np.ndarray, kind: str) -> np.ndarray:
    """The inverse of :func:`_from_torch`: HWIO -> OIHW, (in, out) -> (out, in)."""
    if kind == "conv":
        return array.transpose(3, 2, 0, 1)
    if kind == "dense":
        return array.T
    return array


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch.Tensor, without importing torch
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def _format_problems(what: str, missing, unexpected, wrong) -> str:
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing: {', '.join(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected: {', '.join(unexpected)}")
    if wrong:
        parts.append(f"{len(wrong)} wrongly shaped: " + ", ".join(f"{k} {got} (expected {want})" for k, got, want in wrong))
    return f"{what}: " + "; ".join(parts)


def _unwrap(state_dict: Mapping[str, Any]) -> Mapping[str, Any]:
    """A training checkpoint's ``{'state_dict': ...}`` or ``{'model': ...}``, or the tensors themselves."""
    if any(k.endswith(".weight") for k in state_dict):
        return state_dict
    for key in ("state_dict", "model"):
        if isinstance(state_dict.get(key), Mapping):
            return state_dict[key]
    return state_dict


def from_torchvision(state_dict: Mapping[str, Any], name: str, **options) -> tuple[ResNet, dict]:
    """A model and its variables from a torchvision ``state_dict`` of model ``name``.

    Args:
      state_dict: tensor name -> tensor or array, as ``torchvision.models.<name>().state_dict()``
        (a checkpoint wrapping it under ``'state_dict'`` or ``'model'`` is unwrapped).
      name: the torchvision model name.
      **options: further :func:`~resnet_bottleneck.create_model` options (``dtype``, ...).

    Returns:
      ``(model, {'params': ..., 'batch_stats': ...})``; ``num_classes`` is read from ``fc``.

    Raises:
      ValueError: listing every missing, unexpected and wrongly shaped tensor.
    """
    name = _model_name(name)
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of tensor names to tensors; got {type(state_dict).__name__}")
    state_dict = _unwrap(state_dict)
    num_classes = options.pop("num_classes", None)
    if num_classes is None:
        fc = state_dict.get("fc.weight")
        num_classes = int(np.shape(fc)[0]) if fc is not None and len(np.shape(fc)) == 2 else 1000
    model = create_model(name, num_classes=num_classes, **options)
    layout = _layout(model)
    expected = {key for key, *_ in layout}
    missing = sorted(expected - set(state_dict))
    def expected_or_bn_counter(key):  # num_batches_tracked belongs to every BN that is expected
        counter = key.endswith(".num_batches_tracked")
        return key[: -len("num_batches_tracked")] + "running_mean" in expected if counter else key in expected

    unexpected = sorted(k for k in state_dict if not expected_or_bn_counter(k))
    wrong, flat = [], {}
    for key, path, shape, kind in layout:
        if key not in state_dict:
            continue
        array = _to_numpy(state_dict[key])
        if array.shape != _to_torch_shape(shape, kind):
            wrong.append((key, tuple(array.shape), _to_torch_shape(shape, kind)))
            continue
        flat[path] = jnp.asarray(_from_torch(array, kind).astype(np.float32))
    if missing or unexpected or wrong:
        raise ValueError(_format_problems(f"state_dict does not fit torchvision's {name}", missing, unexpected, wrong))
    return model, traverse_util.unflatten_dict(flat)


def _checked_layout(variables, name: str):
    """The flat variables and, per flax path, its (torch key, shape, kind); every mismatch listed."""
    name = _model_name(name)
    flat = traverse_util.flatten_dict(dict(variables))
    fc = flat.get(("params", "fc", "kernel"))
    model = create_model(name, num_classes=int(fc.shape[1]) if fc is not None and fc.ndim == 2 else 1000)
    expected = {path: (key, shape, kind) for key, path, shape, kind in _layout(model)}
    show = "/".join
    missing = sorted(show(p) for p in expected if p not in flat)
    unexpected = sorted(show(p) for p in flat if p not in expected)
    wrong = [(show(p), tuple(flat[p].shape), tuple(shape)) for p, (_, shape, _) in expected.items()
             if p in flat and tuple(flat[p].shape) != tuple(shape)]
    if missing or unexpected or wrong:
        raise ValueError(_format_problems(f"variables do not fit {name}", missing, unexpected, wrong))
    return model, flat, expected


def to_torchvision(variables, name: str, *, as_numpy: bool = False, dtype=np.float32) -> dict:
    """A ``state_dict`` that ``torchvision.models.<name>().load_state_dict(..., strict=True)`` accepts.

    Args:
      variables: ``{'params': ..., 'batch_stats': ...}`` of ``create_model(name)`` (plain
        layout; pass a scanned model's variables through ``unscan_variables`` first).
      name: the torchvision model name.
      as_numpy: return numpy arrays instead of ``torch.Tensor`` (needs no PyTorch).
      dtype: the floating dtype of the tensors (torchvision's is float32).

    Raises:
      ValueError: listing every missing, unexpected and wrongly shaped variable.
    """
    _, flat, expected = _checked_layout(variables, name)
    out = {}
    for path, (key, _, kind) in expected.items():
        # a writable copy: torch refuses read-only arrays
        out[key] = np.array(_to_torch(np.asarray(flat[path], dtype), kind), order="C")
        if key.endswith(".running_var"):
            out[key[: -len("running_var")] + "num_batches_tracked"] = np.zeros((), np.int64)
    if as_numpy:
        return out
    import torch

    return {k: torch.from_numpy(v) for k, v in out.items()}


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Tensors from a ``.safetensors`` file, or a ``.pth``/``.pt`` file without running its code.

    ``.pth`` files are pickles; they are read only with ``torch.load(weights_only=True)``,
    which refuses any object other than tensors and plain containers, so a crafted file
    cannot run code. Anything that is not a readable file of tensors is a ``ValueError``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such weights file: {path}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return read_tensors(path)[0]
    if suffix in (".pth", ".pt", ".bin"):
        try:
            import torch
        except ImportError:
            raise ValueError(f"reading {path.name} needs PyTorch (pip install torch), or convert it to .safetensors") from None
        try:
            with warnings.catch_warnings():  # a plain pickle's protocol is no concern: the unpickler is safe
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                loaded = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else "not a weights-only file"
            raise ValueError(f"refusing to load {path}: it holds more than tensors, and unpickling it could run "
                             f"code ({first})") from None
        except (RuntimeError, EOFError, OSError, ValueError) as err:
            raise ValueError(f"{path} is not a readable PyTorch weights file ({err})") from None
        if not isinstance(loaded, Mapping):
            raise ValueError(f"{path} holds a {type(loaded).__name__}, not a state_dict")
        return {k: _to_numpy(v) for k, v in _unwrap(loaded).items()}
    raise ValueError(f"weights file must end in .safetensors, .pth or .pt; got {path.name}")
