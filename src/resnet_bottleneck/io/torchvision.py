"""torchvision weights in and out, exactly.

torchvision's ``ResNet`` names its tensors ``conv1``, ``bn1``, ``layer{i}.{j}.conv{k}``,
``layer{i}.{j}.bn{k}``, ``layer{i}.{j}.downsample.{0,1}`` and ``fc``; the models here
name the same layers ``conv1``, ``bn1``, ``layer{i}_{j}/Conv_{k-1}``,
``layer{i}_{j}/BatchNorm_{k-1}``, the projection after them, and ``fc`` (the map is derived from the
spec by :mod:`resnet_bottleneck.arch.names`). Conv kernels
are OIHW there and HWIO here; the classifier is (out, in) there and (in, out) here;
BatchNorm's ``weight``/``bias``/``running_mean``/``running_var`` are ``scale``/``bias``
in ``params`` and ``mean``/``var`` in ``batch_stats``. ``num_batches_tracked`` only
matters to PyTorch's ``momentum=None`` (a cumulative average), which torchvision does
not use: it is accepted on the way in and written as 0 on the way out.

A frozen BatchNorm (``norm='frozen'``, torchvision's ``FrozenBatchNorm2d``) holds all
four vectors in ``batch_stats`` and has no ``num_batches_tracked``. A feature pyramid
backbone (``BackboneWithFPN``) adds ``body.`` before the ResNet's names and has
``fpn.inner_blocks.{i}.0`` / ``fpn.layer_blocks.{i}.0`` for ``fpn/inner_blocks_{i}`` /
``fpn/layer_blocks_{i}``.

BatchNorm momentum: PyTorch's ``momentum=0.1`` weighs the *new* batch, Flax's weighs
the *old* running value, so torch 0.1 == flax 0.9 (the models' default).

Nothing here needs PyTorch except :func:`to_torchvision` returning tensors and loading
``.pth`` files; ``.safetensors`` files are read with ``safetensors.numpy``.

Tensors that do not fit the model asked for raise :class:`WeightsMismatch`, which names the
family model they do fit (:func:`detect_architecture`: keys and shapes against every name
of ``CONFIGS``; every one where several hold the same tensors) or the nearest one, in one short
line; its attributes hold the full lists.

timm's ResNets keep these names and add their own layers' (deep stems, SE, ECA, GroupNorm), which
the layouts here map too: :mod:`resnet_bottleneck.io.timm` is the same machinery under timm's name.
"""

from __future__ import annotations

import functools
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from .. import _checks, arch
from ..arch.timm_family import TIMM_FAMILY
from ..backbones import FPNBackbone, create_fpn_backbone
from ..errors import FileError, InputError, InputTypeError
from ..models import CONFIGS, ResNet, _model_name, create_model, feature_info
from .safetensors import read_tensors

#: The Flax APIs :func:`from_torchvision` builds for.
APIS = ("linen", "nnx")

_BN = (
    ("scale", "params", "weight"),
    ("bias", "params", "bias"),
    ("mean", "batch_stats", "running_mean"),
    ("var", "batch_stats", "running_var"),
)


def _layout(spec: arch.ResNetSpec) -> tuple:
    """[(torch key, (collection, *flax path), flax shape, kind)] for every tensor of the model ``spec``
    describes, in model order; the flax paths from :func:`resnet_bottleneck.arch.linen_names`.

    ``kind`` says how to convert: ``conv`` (OIHW/HWIO), ``dense`` (transposed), ``vector``, or
    ``running_var``: a ``BatchNorm2d``'s running variance, beside which torchvision keeps a
    ``num_batches_tracked`` (a frozen BatchNorm, all four vectors in ``batch_stats``, has none).
    """
    paths, entries = arch.linen_names(spec), []
    for layer in spec.weighted_layers():
        module = paths[layer.name]
        if isinstance(layer, (arch.Conv, arch.Linear)):
            conv = isinstance(layer, arch.Conv)
            shape = layer.kernel_shape if conv else (layer.in_features, layer.out_features)
            entries.append((f"{layer.name}.weight", ("params", *module, "kernel"), shape, "conv" if conv else "dense"))
            if layer.bias:
                entries.append((f"{layer.name}.bias", ("params", *module, "bias"), (layer.out_features,), "vector"))
        elif isinstance(layer, arch.SqueezeExcite):  # timm's 1x1 convs, our dense layers on the pooled vector
            for fc, (c_in, c_out) in (
                ("fc1", (layer.features, layer.reduced)),
                ("fc2", (layer.reduced, layer.features)),
            ):
                entries.append((f"{layer.name}.{fc}.weight", ("params", *module, fc, "kernel"), (c_in, c_out), "1x1"))
                entries.append((f"{layer.name}.{fc}.bias", ("params", *module, fc, "bias"), (c_out,), "vector"))
        elif isinstance(layer, arch.Eca):  # timm's Conv1d (1, 1, k); ours (k, 1, 1)
            entries.append((f"{layer.name}.conv.weight", ("params", *module, "kernel"), (layer.kernel, 1, 1), "eca"))
        elif layer.kind == "group":
            for ours, _, theirs in _BN[:2]:
                entries.append((f"{layer.name}.{theirs}", ("params", *module, ours), (layer.features,), "vector"))
        else:
            frozen = layer.kind == "frozen"
            for ours, collection, theirs in _BN:
                path = ("batch_stats" if frozen else collection, *module, ours)
                kind = "running_var" if theirs == "running_var" and not frozen else "vector"
                entries.append((f"{layer.name}.{theirs}", path, (layer.features,), kind))
    return tuple(entries)


def _to_torch_shape(shape, kind):
    if kind == "conv":
        return (shape[3], shape[2], shape[0], shape[1])
    if kind == "dense":
        return (shape[1], shape[0])
    if kind == "1x1":
        return (shape[1], shape[0], 1, 1)
    if kind == "eca":
        return (1, 1, shape[0])
    return tuple(shape)


def _from_torch(array: np.ndarray, kind: str) -> np.ndarray:
    if kind == "conv":
        return array.transpose(2, 3, 1, 0)
    if kind == "dense":
        return array.T
    if kind == "1x1":
        return array[:, :, 0, 0].T
    if kind == "eca":
        return array.reshape(-1, 1, 1)
    return array


def _to_torch(array: np.ndarray, kind: str) -> np.ndarray:
    """The inverse of :func:`_from_torch`: HWIO -> OIHW, (in, out) -> (out, in)."""
    if kind == "conv":
        return array.transpose(3, 2, 0, 1)
    if kind == "dense":
        return array.T
    if kind == "1x1":
        return array.T[:, :, None, None]
    if kind == "eca":
        return array.reshape(1, 1, -1)
    return array


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch.Tensor, without importing torch
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        return value.numpy()
    return np.asarray(value)


# --- which family model do these tensors fit? -------------------------------------------


@functools.cache
def _family_layout(name: str, num_classes: int | None, norm: str | None = None) -> tuple:
    """:func:`_layout` of ``create_model(name, num_classes, norm=norm)`` (``None``: the name's own norm,
    GroupNorm for ``resnet50_gn``): read off its spec, nothing traced."""
    return _layout(arch.describe(name, num_classes=num_classes, **({} if norm is None else {"norm": norm})))


def _shapes_of(layout, torch: bool) -> dict[str, tuple]:
    """Tensor name -> shape: torchvision's keys and shapes, or our ``collection/module/name`` ones."""
    if torch:
        return {key: _to_torch_shape(shape, kind) for key, _, shape, kind in layout}
    return {"/".join(path): tuple(shape) for _, path, shape, _ in layout}


@functools.cache
def _expected_shapes(name: str, num_classes: int | None, torch: bool, norm: str | None = None) -> dict[str, tuple]:
    """Tensor name -> shape of model ``name`` (see :func:`_shapes_of`)."""
    return _shapes_of(_family_layout(name, num_classes, norm), torch)


def _headless(shapes: Mapping[str, tuple], torch: bool) -> bool:
    """No classifier among ``shapes`` (a backbone's, or timm's ``num_classes=0``)."""
    return ("fc.weight" if torch else "params/fc/kernel") not in shapes


def _classes(shapes: Mapping[str, tuple], torch: bool) -> int:
    """The classifier's outputs, read from ``fc``; 1000 without one."""
    fc = shapes.get("fc.weight" if torch else "params/fc/kernel")
    return int(fc[0] if torch else fc[1]) if fc is not None and len(fc) == 2 else 1000


_LEAVES = ("weight", "kernel", "scale", "bias", "running_mean", "mean", "running_var", "var", "num_batches_tracked")


def _model_order(key: str):
    """Sort key for tensor names in model order: the stem, the stages block by block (each
    conv before its norm, the projection last), the classifier; for torchvision's keys and ours."""
    parts = key.split("/")[1:] if "/" in key else key.split(".")
    parts = parts[1:] if parts[0] == "body" else parts  # an FPN backbone's body, then its pyramid
    head = {"conv1": 0, "bn1": 1, "fc": 3, "fpn": 4}.get(parts[0], 2)
    module = ".".join(parts[:-1]).replace("downsample.0", "conv99").replace("downsample.1", "bn99")
    numbers = tuple(int(n) for n in re.findall(r"\d+", module))
    norm = re.search(r"(bn|BatchNorm_)\d+$", module) is not None
    leaf = _LEAVES.index(parts[-1]) if parts[-1] in _LEAVES else len(_LEAVES)
    return head, numbers, norm, leaf, key


def _differences(shapes: Mapping[str, tuple], expected: Mapping[str, tuple], torch: bool):
    """``(missing, unexpected, wrong_shape)`` in model order; a BatchNorm's ``num_batches_tracked`` is optional."""

    def bn_counter(key):
        return (
            torch
            and key.endswith(".num_batches_tracked")
            and key[: -len("num_batches_tracked")] + "running_mean" in expected
        )

    missing = sorted((k for k in expected if k not in shapes), key=_model_order)
    unexpected = sorted((k for k in shapes if k not in expected and not bn_counter(k)), key=_model_order)
    wrong = sorted(
        (
            (k, tuple(shapes[k]), tuple(want))
            for k, want in expected.items()
            if k in shapes and tuple(shapes[k]) != tuple(want)
        ),
        key=lambda w: _model_order(w[0]),
    )
    return missing, unexpected, wrong


def _score(shapes: Mapping[str, tuple], expected: Mapping[str, tuple], torch: bool) -> tuple[int, int]:
    """``(unexplained, missing)``: how far ``shapes`` are from ``expected``, counted as :func:`_differences`
    counts but without sorting (detection scores every name of the family)."""
    unexplained = missing = 0
    for key, want in expected.items():
        got = shapes.get(key)
        if got is None:
            missing += 1
        elif tuple(got) != tuple(want):
            unexplained += 1
    for key in shapes:
        if key not in expected and not (
            torch
            and key.endswith(".num_batches_tracked")
            and key[: -len("num_batches_tracked")] + "running_mean" in expected
        ):
            unexplained += 1
    return unexplained, missing


def _detect(shapes: Mapping[str, tuple], torch: bool, expected=None) -> tuple[tuple[str, ...], str]:
    """``(fits, nearest)``: every family model whose tensors are exactly these, in :data:`CONFIGS`'
    order (several where names differ only in layers without tensors: ``resnet50d``, ``resnetaa50d``,
    ``resnetblur50d``), and the nearest one: the first fit, else the fewest tensors it cannot explain
    (unexpected or wrongly shaped), then the fewest missing, so that a truncated file is nearest the
    model it was cut from.

    ``expected(name)`` gives each candidate's tensor shapes; by default the classifier's, with
    ``fc``'s classes, and where there is no ``fc`` and no classifier fits, the headless models'.
    """
    headless = None
    if expected is None:
        num_classes = _classes(shapes, torch)
        expected = functools.partial(_expected_shapes, num_classes=num_classes, torch=torch)
        if _headless(shapes, torch):
            headless = functools.partial(_expected_shapes, num_classes=None, torch=torch)
    best, fits = None, []
    for name in CONFIGS:
        score = _score(shapes, expected(name), torch)
        if score == (0, 0):
            fits.append(name)
        if best is None or score < best[0]:
            best = (score, name)
    if not fits and headless is not None:
        fits = [name for name in CONFIGS if _score(shapes, headless(name), torch) == (0, 0)]
    return tuple(fits), fits[0] if fits else best[1]


def _shapes(state_dict: Mapping[str, Any]) -> tuple[Mapping[str, Any], dict[str, tuple]]:
    """The (unwrapped) state_dict and its tensors' shapes, read without converting any tensor."""
    if not isinstance(state_dict, Mapping):
        raise InputTypeError(
            f"state_dict must be a mapping of tensor names to tensors; got {type(state_dict).__name__}"
        )
    state_dict = _unwrap(state_dict)
    return state_dict, {k: tuple(np.shape(v)) for k, v in state_dict.items()}


def detect_architecture(state_dict: Mapping[str, Any], *, every: bool = False) -> str | tuple[str, ...] | None:
    """The family model (a key of ``CONFIGS``) whose torchvision or timm keys and shapes these are, or None.

    Only names and shapes are read (meta tensors will do); ``num_classes`` is whatever ``fc`` has.
    Some names hold the same tensors, differing only in layers that have none (an anti-aliasing
    pool: ``resnet50``, ``resnetaa50`` and ``resnetblur50``; ``resnet50d``, ``resnetaa50d`` and
    ``resnetblur50d``): no file can tell them apart, and the first of them in ``CONFIGS``'
    order is returned (torchvision's names come first). With ``every=True``, the tuple of all
    names that fit (empty if none). A ``state_dict`` without ``fc`` fits the headless model
    (``num_classes=None``; timm's ``num_classes=0``).

    In our own variables, more names coincide: ``resnet50c`` and ``resnet50d`` differ only in
    the average pool before ``resnet50d``'s projection, which shifts timm's key
    (``downsample.0`` / ``downsample.1``) but not our path.
    """
    if not isinstance(every, bool):
        raise InputTypeError(f"every must be True or False; got {every!r}")
    fits = _detect(_shapes(state_dict)[1], torch=True)[0]
    return fits if every else (fits[0] if fits else None)


class WeightsMismatch(InputError):
    """Tensors that do not fit the model asked for: which family model they fit, and how they differ.

    ``str()`` is one short line: the file (``source``), the model asked for (torchvision's or
    timm's: ``library``), the model the tensors fit (``fits``, the first of ``fits_all``, the
    names with exactly these tensors, all named: "it fits resnet50d, resnetaa50d or resnetblur50d
    (the same tensors)"; or none of the family, and the ``nearest``), the counts and the first few
    differences, missing ones first. The full lists are attributes: ``missing`` and
    ``unexpected`` (tensor names) and ``wrong_shape`` (``(name, shape, expected shape)``);
    :meth:`details` writes them one a line.
    """

    #: ``str()`` names at most this many differences, in at most ``BUDGET`` characters; the rest are counted
    SHOWN, BUDGET = 3, 100

    def __init__(
        self,
        name: str,
        missing,
        unexpected,
        wrong_shape,
        fits: str | tuple[str, ...] | None,
        nearest: str,
        *,
        what: str = "state_dict",
        num_classes: int | None = None,
        source: str | None = None,
        library: str | None = None,
        headless: bool = False,
    ):
        self.headless = headless  # the tensors fit ``fits`` without a classifier
        self.name, self.what, self.source = name, what, source
        self.missing, self.unexpected, self.wrong_shape = list(missing), list(unexpected), list(wrong_shape)
        self.fits_all = (fits,) if isinstance(fits, str) else tuple(fits or ())
        self.fits = self.fits_all[0] if self.fits_all else None
        self.nearest, self.num_classes = nearest, num_classes
        #: whose model ``name`` is, for the message: timm's for a name only timm has, else torchvision's
        self.library = library or ("timm" if name in _TIMM_ONLY else "torchvision")
        super().__init__(str(self))

    def with_source(self, source: str | os.PathLike) -> WeightsMismatch:
        """The same error, naming the file the tensors came from."""
        return WeightsMismatch(
            self.name,
            self.missing,
            self.unexpected,
            self.wrong_shape,
            self.fits_all,
            self.nearest,
            what=self.what,
            num_classes=self.num_classes,
            source=str(source),
            library=self.library,
            headless=self.headless,
        )

    def _groups(self):
        shaped = [f"{k} {got}, expected {want}" for k, got, want in self.wrong_shape]
        return (("missing", self.missing), ("wrongly shaped", shaped), ("unexpected", self.unexpected))

    def __str__(self) -> str:
        subject = self.source or self.what
        verb = "do" if subject == "variables" else "does"
        target = f"{self.library}'s {self.name}" if self.what == "state_dict" else self.name
        if self.fits is None:
            fit = f"it fits none of the family (nearest: {self.nearest})"
        else:
            fit = f"it fits {_either(self.fits_all)}" + (
                f" with {self.num_classes} classes" if self.num_classes else ""
            )
            fit += " without a classifier (num_classes=None)" if self.headless else ""
        left, budget, parts = self.SHOWN, self.BUDGET, []
        for label, items in self._groups():
            if not items:
                continue
            named = []
            for item in items[:left]:
                if len(item) > budget and (named or left < self.SHOWN):  # the first is named however long
                    break
                named.append(item)
                budget -= len(item) + 2
            left = left - len(named) if len(named) == len(items) else 0  # no later group named before this one's rest
            more = f" and {len(items) - len(named)} more" if len(items) > len(named) else ""
            parts.append(f"{len(items)} {label}" + (f": {', '.join(named)}{more}" if named else ""))
        return f"{subject} {verb} not fit {target}; {fit}. " + "; ".join(parts)

    def details(self) -> str:
        """Every difference, one a line, grouped as missing, wrongly shaped and unexpected."""
        lines = []
        for label, items in self._groups():
            if items:
                lines += [f"{len(items)} {label}:"] + [f"  {item}" for item in items]
        return "\n".join(lines)


def _either(names) -> str:
    """``a``, ``a or b (the same tensors)``, ``a, b or c (the same tensors)``."""
    if len(names) == 1:
        return names[0]
    return f"{', '.join(names[:-1])} or {names[-1]} (the same tensors)"


#: The names only timm has (a mismatch names "timm's resnet50d" but "torchvision's resnet50").
_TIMM_ONLY = frozenset(TIMM_FAMILY)


def _mismatch(
    name: str,
    shapes: Mapping[str, tuple],
    num_classes: int | None,
    torch: bool,
    norm: str | None = None,
    library: str | None = None,
) -> WeightsMismatch | None:
    """The error for ``shapes`` against model ``name`` with ``num_classes`` outputs, or None if they fit."""
    missing, unexpected, wrong = _differences(shapes, _expected_shapes(name, num_classes, torch, norm), torch)
    if not (missing or unexpected or wrong):
        return None
    fits, nearest = _detect(shapes, torch)
    detected = None if _headless(shapes, torch) else _classes(shapes, torch)
    return WeightsMismatch(
        name,
        missing,
        unexpected,
        wrong,
        fits,
        nearest,
        what="state_dict" if torch else "variables",
        num_classes=detected if fits and detected is not None and detected != num_classes else None,
        library=library,
        headless=bool(fits) and detected is None,
    )


def _unwrap(state_dict: Mapping[str, Any]) -> Mapping[str, Any]:
    """A training checkpoint's ``{'state_dict': ...}`` or ``{'model': ...}``, or the tensors themselves."""
    if any(k.endswith(".weight") for k in state_dict):
        return state_dict
    for key in ("state_dict", "model"):
        if isinstance(state_dict.get(key), Mapping):
            return state_dict[key]
    return state_dict


_FROM_FC = object()  # num_classes: read from the state dict's fc


def from_torchvision(
    state_dict: Mapping[str, Any], name: str, *, num_classes: Any = _FROM_FC, api: str = "linen", **options
):
    """A model and its variables from a torchvision ``state_dict`` of model ``name``.

    Args:
      state_dict: tensor name -> tensor or array, as ``torchvision.models.<name>().state_dict()``
        (a checkpoint wrapping it under ``'state_dict'`` or ``'model'`` is unwrapped).
      name: the torchvision model name.
      num_classes: by default read from ``fc`` (1000 without one); ``None`` for a headless
        backbone, whose state dict has no ``fc`` (an ``IntermediateLayerGetter``'s, such as
        ``deeplabv3_resnet50().backbone``).
      api: ``'linen'``, or ``'nnx'`` for the Flax NNX twin holding the weights
        (:func:`resnet_bottleneck.nnx.to_nnx` of the Linen pair).
      **options: further :func:`~resnet_bottleneck.create_model` options (``dtype``,
        ``replace_stride_with_dilation``, ``norm='frozen'``, ...).

    Returns:
      Linen: ``(model, {'params': ..., 'batch_stats': ...})``. NNX: the
      :class:`resnet_bottleneck.nnx.ResNet`, in training mode as every NNX model starts
      (``model.eval()`` for inference).

    Raises:
      WeightsMismatch: a ``ValueError`` naming the family model the tensors fit, if any, the
        counts and first few of the missing, wrongly shaped and unexpected tensors; the full
        lists are its attributes. Shapes are checked before any tensor is converted.
    """
    return _from_state_dict(state_dict, name, num_classes, api, None, options)


def _from_state_dict(state_dict, name: str, num_classes, api: str, library: str | None, options: dict):
    """:func:`from_torchvision` and :func:`resnet_bottleneck.io.timm.from_timm`: the same keys and
    layouts; ``library`` names whose model a :class:`WeightsMismatch` says was asked for (None: timm's
    for a name only timm has, else torchvision's)."""
    _checks.one_of("api", api, APIS)
    name = _model_name(name)
    state_dict, shapes = _shapes(state_dict)
    if num_classes is _FROM_FC:
        num_classes = _classes(shapes, torch=True)
    model = create_model(name, num_classes=num_classes, **options)
    error = _mismatch(name, shapes, num_classes, torch=True, norm=model.norm, library=library)
    if error is not None:
        raise error
    variables = _read(state_dict, _family_layout(name, num_classes, model.norm))
    if api == "nnx":
        from ..nnx import to_nnx  # flax.nnx is imported only when asked for

        return to_nnx(model, variables)
    return model, variables


def _read(state_dict: Mapping[str, Any], layout) -> dict:
    """The variables ``layout`` places, converted from ``state_dict``'s tensors (already checked)."""
    flat = {
        path: jnp.asarray(_from_torch(_to_numpy(state_dict[key]), kind).astype(np.float32))
        for key, path, _, kind in layout
    }
    return traverse_util.unflatten_dict(flat)


def load_torchvision(path: str | os.PathLike, name: str, **options) -> tuple[ResNet, dict]:
    """:func:`from_torchvision` of the weights file ``path`` (see :func:`load_state_dict`);
    a :class:`WeightsMismatch` names the file."""
    try:
        return from_torchvision(load_state_dict(path), name, **options)
    except WeightsMismatch as err:
        raise err.with_source(path) from None


def _flat_shapes(variables) -> tuple[dict, dict[str, tuple]]:
    flat = traverse_util.flatten_dict(dict(variables))
    return flat, {"/".join(path): tuple(np.shape(value)) for path, value in flat.items()}


def _checked_layout(variables, name: str, **options):
    """The model, the flat variables and, per flax path, its (torch key, shape, kind).

    ``options`` are the model's (``num_classes``, by default ``fc``'s; ``norm``; ...).

    Raises:
      WeightsMismatch: the variables do not fit ``name``.
    """
    name = _model_name(name)
    flat, shapes = _flat_shapes(variables)
    num_classes = options.pop("num_classes", _FROM_FC)
    num_classes = _classes(shapes, torch=False) if num_classes is _FROM_FC else num_classes
    model = create_model(name, num_classes=num_classes, **options)
    error = _mismatch(name, shapes, num_classes, torch=False, norm=model.norm)
    if error is not None:
        raise error
    expected = {path: (key, shape, kind) for key, path, shape, kind in _family_layout(name, num_classes, model.norm)}
    return model, flat, expected


def _write(flat, expected, as_numpy: bool, dtype) -> dict:
    """torchvision's tensors from our ``flat`` variables (already checked against ``expected``)."""
    out = {}
    for path, (key, _, kind) in expected.items():
        # a writable copy: torch refuses read-only arrays
        out[key] = np.array(_to_torch(np.asarray(flat[path], dtype), kind), order="C")
        if kind == "running_var":
            out[key[: -len("running_var")] + "num_batches_tracked"] = np.zeros((), np.int64)
    if as_numpy:
        return out
    import torch

    return {k: torch.from_numpy(v) for k, v in out.items()}


def to_torchvision(variables, name: str, *, as_numpy: bool = False, dtype=np.float32, **options) -> dict:
    """A ``state_dict`` that ``torchvision.models.<name>().load_state_dict(..., strict=True)`` accepts.

    Args:
      variables: ``{'params': ..., 'batch_stats': ...}`` of ``create_model(name)`` (plain
        layout; pass a scanned model's variables through ``unscan_variables`` first).
      name: the torchvision model name.
      as_numpy: return numpy arrays instead of ``torch.Tensor`` (needs no PyTorch).
      dtype: the floating dtype of the tensors (torchvision's is float32).
      **options: the model's :func:`~resnet_bottleneck.create_model` options where they
        change its variables: ``num_classes`` (by default ``fc``'s; ``None`` for a headless
        model), ``norm='frozen'`` (written as ``FrozenBatchNorm2d``'s buffers, without
        ``num_batches_tracked``).

    Raises:
      WeightsMismatch: as :func:`from_torchvision`'s, for variables that do not fit ``name``.
    """
    _, flat, expected = _checked_layout(variables, name, **options)
    return _write(flat, expected, as_numpy, dtype)


# --- feature pyramid backbones ----------------------------------------------------------


@functools.cache
def _fpn_layout(name: str, out_channels: int, returned_layers: tuple, norm: str) -> tuple:
    """The layout of ``create_fpn_backbone(name, ...)``: the headless body cut after the last
    returned stage under ``body``, and the pyramid's convs, whose shapes need no trace.

    torchvision (>= 0.13) wraps each pyramid conv in a ``Conv2dNormActivation``, hence
    ``fpn.inner_blocks.{i}.0.weight``.
    """
    entries = [
        (f"body.{key}", (path[0], "body", *path[1:]), shape, kind)
        for key, path, shape, kind in _family_layout(name, None, norm)
        if not path[1].startswith("layer") or int(path[1][len("layer") :].split("_")[0]) <= returned_layers[-1]
    ]
    channels = {i["name"]: i["channels"] for i in feature_info(name)}
    for i, stage in enumerate(returned_layers):
        for blocks, kernel, inputs in (
            ("inner_blocks", 1, channels[f"C{stage + 1}"]),
            ("layer_blocks", 3, out_channels),
        ):
            module = ("params", "fpn", f"{blocks}_{i}")
            entries += [
                (f"fpn.{blocks}.{i}.0.weight", (*module, "kernel"), (kernel, kernel, inputs, out_channels), "conv"),
                (f"fpn.{blocks}.{i}.0.bias", (*module, "bias"), (out_channels,), "vector"),
            ]
    return tuple(entries)


def _fpn_checked(module: FPNBackbone, name: str, shapes: Mapping[str, tuple], torch: bool) -> tuple:
    """``module``'s layout; a :class:`WeightsMismatch` if ``shapes`` do not fit it, naming the
    family's FPN backbone (with the same options) they fit, or the nearest."""
    options = (module.out_channels, tuple(module.returned_layers), module.body.norm)
    layout = _fpn_layout(name, *options)
    missing, unexpected, wrong = _differences(shapes, _shapes_of(layout, torch), torch)
    if missing or unexpected or wrong:
        fits, nearest = _detect(shapes, torch, lambda other: _shapes_of(_fpn_layout(other, *options), torch))
        backbone = "{} FPN backbone".format
        raise WeightsMismatch(
            backbone(name),
            missing,
            unexpected,
            wrong,
            tuple(backbone(f) for f in fits),
            backbone(nearest),
            what="state_dict" if torch else "variables",
        )
    return layout


def from_torchvision_fpn(state_dict: Mapping[str, Any], name: str, **options) -> tuple[FPNBackbone, dict]:
    """An :class:`~resnet_bottleneck.backbones.FPNBackbone` and its variables from torchvision's ``BackboneWithFPN``.

    Args:
      state_dict: ``resnet_fpn_backbone(backbone_name=name, ...).state_dict()`` or
        ``fasterrcnn_resnet50_fpn(...).backbone.state_dict()``: ``body.*`` (the ResNet up to
        the last returned stage; ``FrozenBatchNorm2d`` or ``BatchNorm2d``), ``fpn.inner_blocks.*``,
        ``fpn.layer_blocks.*``.
      name: the body's torchvision model name.
      **options: :func:`~resnet_bottleneck.backbones.create_fpn_backbone` options;
        ``out_channels`` is read from the state dict unless given; ``returned_layers`` must be
        the state dict's (torchvision's defaults are the defaults).

    Returns:
      ``(module, {'params': ..., 'batch_stats': ...})``.

    Raises:
      WeightsMismatch: as :func:`from_torchvision`'s, naming the family's FPN backbone the tensors fit.
    """
    name = _model_name(name)
    state_dict, shapes = _shapes(state_dict)
    out = shapes.get("fpn.layer_blocks.0.0.weight")
    module = create_fpn_backbone(
        name, out_channels=options.pop("out_channels", out[0] if out and len(out) == 4 else 256), **options
    )
    return module, _read(state_dict, _fpn_checked(module, name, shapes, torch=True))


def to_torchvision_fpn(variables, name: str, *, as_numpy: bool = False, dtype=np.float32, **options) -> dict:
    """The inverse of :func:`from_torchvision_fpn`: a state dict torchvision's ``BackboneWithFPN`` loads strictly.

    ``options`` are the module's :func:`~resnet_bottleneck.backbones.create_fpn_backbone`
    options (``out_channels`` is read from the variables unless given).

    Raises:
      WeightsMismatch: for variables that do not fit the module.
    """
    name = _model_name(name)
    flat, shapes = _flat_shapes(variables)
    kernel = shapes.get("params/fpn/layer_blocks_0/kernel")
    module = create_fpn_backbone(
        name, out_channels=options.pop("out_channels", kernel[-1] if kernel and len(kernel) == 4 else 256), **options
    )
    layout = _fpn_checked(module, name, shapes, torch=False)
    return _write(flat, {path: (key, shape, kind) for key, path, shape, kind in layout}, as_numpy, dtype)


def _unpickling_reason(text: str) -> str:
    """torch's reason for refusing a file under ``weights_only`` (``Unsupported operand 149``, ``Trying to load
    unsupported GLOBAL posix.system ...``), without its paragraphs of advice."""
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()]
    advice = ("Weights only load failed", "Check the documentation")
    reasons = [p for p in paragraphs if not p.startswith(advice)] or paragraphs or ["not a weights-only file"]
    return reasons[0].split("WeightsUnpickler error:")[-1].strip()


def _real_tensors(path: Path, loaded: Mapping) -> dict[str, np.ndarray]:
    """A loaded ``.pth``'s state_dict as numpy arrays; a key that is not a tensor name, or a value that is not
    a tensor of real numbers (a string, a complex tensor), is refused naming the file and the key."""

    def names(mapping: Mapping) -> Mapping:
        key = next((k for k in mapping if not isinstance(k, str)), None)
        if key is not None:
            raise InputError(
                f"{path} holds a state_dict with the key {key!r} ({type(key).__name__}), not a tensor name"
            )
        return mapping

    tensors = {k: _to_numpy(v) for k, v in names(_unwrap(names(loaded))).items()}
    for key, array in tensors.items():
        if array.dtype.kind not in "biuf":
            raise InputError(f"{path}'s {key!r} is not a tensor of real numbers: it holds {array.dtype} values")
    return tensors


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Tensors from a ``.safetensors`` file, or a ``.pth``/``.pt`` file without running its code.

    ``.pth`` files are pickles; they are read only with ``torch.load(weights_only=True)``,
    which refuses any object other than tensors and plain containers, so a crafted file
    cannot run code. Anything that is not a readable file of tensors is a ``ValueError``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileError(f"no such weights file: {path}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return read_tensors(path)[0]
    if suffix in (".pth", ".pt", ".bin"):
        try:
            import torch
        except ImportError:
            raise InputError(
                f"reading {path.name} needs PyTorch (pip install torch), or convert it to .safetensors"
            ) from None
        try:
            with warnings.catch_warnings():  # a plain pickle's protocol is no concern: the unpickler is safe
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                loaded = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            first = _unpickling_reason(str(err))
            raise InputError(
                f"refusing to load {path}: it holds more than tensors (or is no pickle at all), and unpickling it "
                f"could run code ({first})"
            ) from None
        except (RuntimeError, EOFError, OSError, ValueError) as err:
            raise InputError(f"{path} is not a readable PyTorch weights file ({err})") from None
        if not isinstance(loaded, Mapping):
            raise InputError(f"{path} holds a {type(loaded).__name__}, not a state_dict")
        return _real_tensors(path, loaded)
    raise InputError(f"weights file must end in .safetensors, .pth or .pt; got {path.name}")
