"""Linen <-> NNX, both ways, with nothing lost.

:func:`to_nnx` turns a Linen model or block and its variables into the NNX twin holding
the same arrays; :func:`to_linen` turns an NNX one back into ``(linen_module, variables)``.
Every tool that takes a Linen ``(model, variables)`` pair (torchvision export,
``fold_batchnorm``, cost analysis, the ``.safetensors`` and ONNX exports) serves an NNX model
through :func:`to_linen`.

The two trees hold the same leaves (``kernel``, ``bias``, ``scale``, ``mean``, ``var``)
under different module paths: Linen's ``layer1_0/Conv_0`` is NNX's ``layer1[0].conv1``,
``layer1_0/Conv_3`` (a projection) is ``layer1[0].downsample[0]``: both derived from the spec's
(torchvision's) names by :mod:`resnet_bottleneck.arch.names` (a layer's own submodules, SE's
``fc1``/``fc2``, keep their names below it); ``params`` are ``nnx.Param`` and ``batch_stats`` are
``nnx.BatchStat``. A model's dropout stream (``nnx.RngState``) is NNX's own: :func:`to_linen` leaves it
out, :func:`to_nnx` forks a new one. The constructor options carry
over under the same names, the Linen classes mapped to their twins through
:data:`MODULES`, ``conv`` and ``norm`` through the constructors they are built on.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util

from .. import arch
from .. import blocks as linen_blocks
from .. import models as linen_models
from .. import norm as linen_norm
from ..errors import InputError, InputTypeError
from . import _rngs, layers
from .blocks import TWINS, FastConv
from .models import ResNet
from .norm import FLAX_BATCH_NORM, OPTIONS, BatchNorm, FrozenBatchNorm

#: Each Linen module class's NNX twin.
MODULES = {linen_models.ResNet: ResNet, **TWINS}
_LINEN = {twin: cls for cls, twin in MODULES.items()}

# The constructors a ``conv`` / ``norm`` option may be: (Linen, NNX) pairs, the named partials
# first; a keyword-only partial of a paired class maps to the same partial of its twin.
_CONSTRUCTORS = {
    "conv": ((linen_blocks.FastConv, FastConv), (nn.Conv, nnx.Conv)),
    "norm": (
        (linen_norm.FLAX_BATCH_NORM, FLAX_BATCH_NORM),
        (linen_norm.BatchNorm, BatchNorm),
        (linen_norm.FrozenBatchNorm, FrozenBatchNorm),
        (nn.GroupNorm, nnx.GroupNorm),
    ),
}
# An NNX norm layer's options that its Linen twin takes as attributes (dtypes come from the block).
_NORM_OPTIONS = {BatchNorm: OPTIONS, FrozenBatchNorm: ("epsilon",), nnx.GroupNorm: ("num_groups", "epsilon")}
_LINEN_NORMS = {
    BatchNorm: linen_norm.BatchNorm,
    FrozenBatchNorm: linen_norm.FrozenBatchNorm,
    nnx.GroupNorm: nn.GroupNorm,
}
# A block's layers that are not its norm (the conv, the containers, the layers of resnet_bottleneck.nnx.layers).
_NOT_NORMS = (
    nnx.Conv,
    nnx.List,
    nnx.Linear,
    layers.Act,
    layers.Pool,
    layers.SqueezeExcite,
    layers.Eca,
    layers.DropPath,
)


def _constructor_twin(name: str, value, to_linen: bool = False) -> Any:
    pairs = [(b, a) if to_linen else (a, b) for a, b in _CONSTRUCTORS[name]]
    for ours, theirs in pairs:
        if value is ours:
            return theirs
    if isinstance(value, partial) and not value.args:
        for ours, theirs in pairs:
            if value.func is ours:
                return partial(theirs, **value.keywords)
    classes = [f"{ours.__module__}.{ours.__qualname__}" for ours, _ in pairs if isinstance(ours, type)]
    raise InputError(f"{name}={value!r} has no twin: it must be {' or '.join(classes)} or a keyword partial of it")


def _mismatch(what: str, missing, unexpected, wrong) -> str:
    """One message listing every missing, unexpected and wrongly shaped variable (``wrong``: path, got, expected)."""
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing: {', '.join(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected: {', '.join(unexpected)}")
    if wrong:
        shapes = ", ".join(f"{k} {got} (expected {want})" for k, got, want in wrong)
        parts.append(f"{len(wrong)} wrongly shaped: {shapes}")
    return f"{what}: " + "; ".join(parts)


def _fields(linen_cls) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(linen_cls) if f.name not in ("parent", "name")]


def _nnx_kwargs(module) -> dict:
    """The NNX twin's constructor arguments for a Linen module; an error for an option it lacks."""
    twin = MODULES[type(module)]
    accepted = inspect.signature(twin.__init__).parameters
    kwargs = {}
    for field in _fields(type(module)):
        value = getattr(module, field.name)
        if field.name not in accepted:
            if value is not field.default and value != field.default:
                raise InputError(
                    f"{type(module).__name__}({field.name}={value!r}) has no NNX twin: convert a model "
                    f"with {field.name}={field.default!r}"
                )
        elif field.name == "block":
            if value not in TWINS:
                raise InputError(
                    f"block={value!r} has no NNX twin: it must be one of {', '.join(c.__name__ for c in TWINS)}"
                )
            kwargs["block"] = TWINS[value]
        elif field.name == "conv" or (field.name == "norm" and not isinstance(module, linen_models.ResNet)):
            kwargs[field.name] = _constructor_twin(field.name, value)  # a ResNet's norm is a name: 'batch', 'frozen'
        else:
            kwargs[field.name] = value
    return kwargs


def _block_norm(block) -> partial:
    """The Linen ``norm`` of an NNX block, read from its norm layers (``train()``/``eval()`` set a BatchNorm's mode)."""
    norms = [m for _, m in nnx.iter_modules(block) if m is not block and not isinstance(m, _NOT_NORMS)]
    kinds = {type(m) for m in norms}
    if len(kinds) != 1 or not kinds <= set(_NORM_OPTIONS):
        raise InputError(
            f"the block's norm has no Linen twin: its norm layers must all be one of "
            f"{', '.join(c.__name__ for c in _NORM_OPTIONS)} of resnet_bottleneck.nnx; "
            f"got {sorted(c.__name__ for c in kinds)}"
        )
    kind = kinds.pop()
    options = {tuple((k, getattr(m, k)) for k in _NORM_OPTIONS[kind]) for m in norms}
    if len(options) != 1:
        raise InputError(
            f"the block's norm layers differ in {_NORM_OPTIONS[kind]} ({sorted(options)}); a Linen block has one norm"
        )
    return partial(_LINEN_NORMS[kind], **dict(options.pop()))


def _linen_module(model):
    """The Linen twin of an NNX model or block, built from its options."""
    cls = _LINEN[type(model)]
    kwargs = {}
    for field in _fields(cls):
        if not hasattr(model, field.name):
            continue  # an option the twin lacks (remat, scan, folded): its default
        value = getattr(model, field.name)
        if field.name == "block":
            if value not in _LINEN:
                raise InputError(
                    f"block={value!r} has no Linen twin: it must be one of "
                    f"{', '.join(c.__name__ for c in TWINS.values())} of resnet_bottleneck.nnx"
                )
            value = _LINEN[value]
        elif field.name == "conv":
            value = _constructor_twin("conv", value, to_linen=True)
        elif field.name == "norm" and not isinstance(model, ResNet):
            value = _block_norm(model)
        kwargs[field.name] = value
    return cls(**kwargs)


def _module_paths(model) -> dict[tuple, tuple]:
    """NNX module path -> Linen module path of every layer of an NNX model or block, from its spec's names
    (:mod:`resnet_bottleneck.arch.names`): ``('layer1', 0, 'conv1') -> ('layer1_0', 'Conv_0')``."""
    spec = arch.describe(model) if isinstance(model, ResNet) else model.spec
    return {arch.nnx_path(name): linen for name, linen in arch.linen_names(spec).items()}


def _linen_path(paths: dict[tuple, tuple], path: tuple) -> tuple:
    """The Linen ``(*module path, leaf)`` of the NNX variable at ``path``."""
    *module, leaf = path
    for end in range(len(module), 0, -1):  # a layer's own submodules (SE's fc1, fc2) keep their names
        if tuple(module[:end]) in paths:
            return paths[tuple(module[:end])] + tuple(map(str, module[end:])) + (leaf,)
    raise KeyError(f"no spec layer holds the NNX variable {'.'.join(map(str, path))}")


def _variables(model) -> list:
    """``(path, variable)`` of the model's Linen variables (its dropout stream, an ``nnx.RngState``, is NNX's own)."""
    return [(p, v) for p, v in nnx.to_flat_state(nnx.state(model)) if not isinstance(v, nnx.RngState)]


def _collection(variable) -> str:
    if isinstance(variable, nnx.Param):
        return "params"
    if isinstance(variable, nnx.BatchStat):
        return "batch_stats"
    raise InputError(f"no Linen collection for an nnx.{type(variable).__name__}")


def _in_features(model, given: dict) -> int:
    """The input channels, from the first conv's kernel (or a guess the mismatch check then reports)."""
    if isinstance(model, linen_models.ResNet):
        spec = linen_models.check_layout(model)
        first = ("params", *arch.linen_path(spec, spec.stem.layers[0].name), "kernel")
    else:
        first = ("params", "Conv_0", "kernel")
    shape = np.shape(given[first]) if first in given else ()
    if len(shape) == 4:
        return int(shape[2])
    if isinstance(model, linen_models.ResNet):
        return 3
    return getattr(model, "out_features", getattr(model, "features", 1))  # an identity shortcut's


def to_nnx(model, variables: Mapping[str, Any], *, rngs: nnx.Rngs | None = None):
    """The NNX twin of a Linen model or block, holding ``variables``' arrays.

    Args:
      model: a :class:`resnet_bottleneck.models.ResNet` (plain layout: no ``scan``,
        ``remat`` or ``folded``), :class:`~resnet_bottleneck.blocks.BottleneckBlock` or
        :class:`~resnet_bottleneck.blocks.BasicBlock`.
      variables: its ``{'params': ..., 'batch_stats': ...}``, e.g. from ``model.init``
        or :func:`~resnet_bottleneck.from_torchvision`.
      rngs: for a model that drops (``drop_rate`` or ``drop_path_rate`` above 0): the ``nnx.Rngs`` whose
        ``'dropout'`` stream it forks and keeps, as the NNX constructor does; ``None``: ``nnx.Rngs(0)``.

    Returns:
      The :class:`~resnet_bottleneck.nnx.ResNet` or block, in training mode (``model.eval()`` for inference).

    Raises:
      TypeError: ``model`` is not one of those, or ``variables`` is not a mapping.
      ValueError: an option without an NNX twin, or variables that do not fit (every
        missing, unexpected and wrongly shaped one listed, with its path).
    """
    if type(model) not in MODULES:
        raise InputTypeError(
            f"model must be a Linen {', '.join(c.__name__ for c in MODULES)} of resnet_bottleneck; "
            f"got {type(model).__module__}.{type(model).__name__}"
        )
    if not isinstance(variables, Mapping):
        raise InputTypeError(
            f"variables must be a mapping {{'params': ..., 'batch_stats': ...}}; got {type(variables).__name__}"
        )
    kwargs = _nnx_kwargs(model)
    rngs = nnx.Rngs(0) if rngs is None else _rngs.checked(rngs)
    given = traverse_util.flatten_dict(dict(variables))
    cls = MODULES[type(model)]
    abstract = nnx.eval_shape(lambda: cls(**kwargs, in_features=_in_features(model, given), rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    paths = _module_paths(abstract)
    flat = nnx.to_flat_state(state)
    expected = {(_collection(v), *_linen_path(paths, p)): (p, v) for p, v in _variables(abstract)}
    show = "/".join
    missing = sorted(show(k) for k in expected if k not in given)
    unexpected = sorted(show(map(str, k)) for k in given if k not in expected)
    wrong = [
        (show(k), tuple(np.shape(given[k])), tuple(v.shape))
        for k, (_, v) in expected.items()
        if k in given and tuple(np.shape(given[k])) != tuple(v.shape)
    ]
    if missing or unexpected or wrong:
        raise InputError(_mismatch(f"variables do not fit the {type(model).__name__}", missing, unexpected, wrong))

    def array(value):
        return value if isinstance(value, jax.ShapeDtypeStruct) else jnp.asarray(value)

    filled = [(p, v.replace(array(given[k]))) for k, (p, v) in expected.items()]
    filled += [(p, v) for p, v in flat if isinstance(v, nnx.RngState)]  # the dropout stream: replaced below
    twin = nnx.merge(graphdef, nnx.from_flat_state(filled))
    if getattr(twin, "dropout_rngs", None) is not None:
        twin.dropout_rngs = nnx.data(rngs["dropout"].fork())
    return twin


def to_linen(model) -> tuple[nn.Module, dict]:
    """``(linen_module, variables)`` holding an NNX model's or block's arrays: the inverse of :func:`to_nnx`.

    A block's ``norm`` carries its BatchNorms' current mode (``train()`` / ``eval()``);
    a model's mode is the ``train`` argument of the Linen ``apply``.
    """
    if type(model) not in _LINEN:
        raise InputTypeError(
            f"model must be an NNX {', '.join(c.__name__ for c in _LINEN)} of resnet_bottleneck.nnx; "
            f"got {type(model).__module__}.{type(model).__name__}"
        )
    paths = _module_paths(model)
    flat = {(_collection(v), *_linen_path(paths, p)): v.get_value() for p, v in _variables(model)}
    return _linen_module(model), traverse_util.unflatten_dict(flat)
