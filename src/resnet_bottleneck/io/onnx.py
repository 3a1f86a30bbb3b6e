"""ONNX out: a family model as a canonical inference graph, and ONNX Runtime to run it.

The graph is written from the model's description (:func:`resnet_bottleneck.arch.describe`),
not traced from its JAX program: BatchNorm folded (:func:`~resnet_bottleneck.fold.fold_batchnorm`),
then each layer of the spec by its kind's emitter (:data:`_LAYERS`): a ``Conv`` per convolution (its
strides, padding, groups and dilation the spec's; groups of 4 or 8 channels written merged into groups of
16, their kernels block diagonal: :data:`NCHWC_BLOCK`), ``Relu``, ``MaxPool``, ``AveragePool`` (torch's
``ceil_mode`` and ``count_include_pad``), timm's blur pool as ``Pad`` (reflect) and a depthwise
``Conv``, squeeze-excitation as ``GlobalAveragePool``, two 1x1 ``Conv``, ``Sigmoid`` and ``Mul`` (at a
fixed input size, the gate first broadcast to the map's shape by a nearest ``Resize``), ECA
with a 1-D ``Conv`` across the channels, GroupNorm (not foldable) as ``InstanceNormalization`` over
the groups with its per-channel affine after; drop path and dropout are the identity. Each block
ends in ``Add`` and ``Relu``, the head is ``GlobalAveragePool``, ``Flatten`` and ``Gemm``.
That is the graph ONNX Runtime's CPU fusions (Conv+Add+Relu, NCHWc blocking) are written
for; a traced export computes 1x1 convs as MatMul and reshapes, which ONNX Runtime runs
slower (BENCHMARKS.md, ``deploy``). The merged groups and the broadcast gates keep a ResNeXt's
narrow groups and an SE block's multiply in the NCHWc layout too (issue 24: seresnext50_32x4d at 224x224
ran in about 0.9 of the plain graph's time at batches 1 and 8, one and two threads); both compute the same sums.

``onnx`` is needed to export and ``onnxruntime`` to run; both are imported only here,
only when called (``pip install 'resnet-bottleneck[onnx]'``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from .. import _checks, arch
from .._files import atomic_write
from ..data.pipeline import available_cores
from ..errors import DependencyError, FileError, InputError, InputTypeError
from ..fold import fold_batchnorm, foldable
from ..layers import blur_filter
from ..models import ResNet, check_layout, unscan_variables
from .classes import class_names
from .metadata import DEFAULT_CROP_PCT, DEFAULT_INTERPOLATION, eval_crop, preprocessing

#: Input layouts: ``'NCHW'`` (torchvision's, what ONNX Runtime computes in) or ``'NHWC'``
#: (ours: the graph starts with one ``Transpose``, and a headless model's map goes out NHWC).
LAYOUTS = ("NCHW", "NHWC")
#: The ONNX operator set the graphs are written for.
OPSET = 17
#: ``metadata_props['format']`` of a file :func:`export_onnx` wrote.
ONNX_FORMAT = "resnet-bottleneck onnx"
INPUT, LOGITS, FEATURES = "images", "logits", "features"
_RESERVED = ("format", "layout")


#: ONNX Runtime's CPU channel block (MLAS's NCHWc layout: 16 floats with AVX-512, 8 with AVX2): a grouped
#: ``Conv`` runs in the blocked layout only with a multiple of it in and out of each group; others run
#: unblocked, between reorders of the map.
NCHWC_BLOCK = 16
#: At most this many groups are merged into one (that many times the conv's multiply-adds): 4 merged groups
#: of 4 channels (seresnext50_32x4d's first stage) ran in the blocked layout in 0.6 of the time of the
#: unblocked grouped conv, its reorders aside (ONNX Runtime's profile, issue 24).
MAX_MERGED_GROUPS = 4


def _merged_groups(in_per_group: int, out_per_group: int, groups: int) -> int:
    """How many adjacent groups of a grouped conv to write as one (block diagonal) so that each has
    :data:`NCHWC_BLOCK` channels in and a multiple of it out; 1: written as it is (ungrouped, depthwise, wide
    enough groups, or no merge of at most :data:`MAX_MERGED_GROUPS` that fits)."""
    if groups == 1 or in_per_group == 1 or in_per_group % NCHWC_BLOCK == 0 or NCHWC_BLOCK % in_per_group:
        return 1
    merged = NCHWC_BLOCK // in_per_group
    fits = merged <= MAX_MERGED_GROUPS and groups % merged == 0 and (out_per_group * merged) % NCHWC_BLOCK == 0
    return merged if fits else 1


def _require(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise DependencyError(f"{module} is needed for ONNX: pip install 'resnet-bottleneck[onnx]'") from None


# One compiled program per model, not an op-by-op dispatch per layer.
_folded_variables = jax.jit(lambda model, variables: fold_batchnorm(model, variables)[1], static_argnums=0)


def _inference_form(model: ResNet, variables) -> tuple[ResNet, dict]:
    """The folded (where it can be: not GroupNorm), plain-layout, float32 model and its flat ``params``; the
    variables checked."""
    if not isinstance(model, ResNet):
        raise InputTypeError(f"model must be a resnet_bottleneck ResNet; got {type(model).__name__}")
    if not hasattr(variables, "keys") or "params" not in variables:
        raise InputTypeError(
            f"variables must be a mapping with 'params' (and 'batch_stats' unless folded); "
            f"got {type(variables).__name__}"
        )
    if model.scan:  # the graph names layers as the plain layout does
        model, variables = model.clone(scan=False), unscan_variables(dict(variables))
    # float32 whatever the model computes in (bf16 compute, bf16 parameters): the export is float32.
    model = model.clone(dtype=None, param_dtype=jnp.float32, remat=False)
    variables = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), dict(variables))
    _check_variables(model, variables)
    if not model.folded and foldable(model):  # a GroupNorm model stays as it is: its norms are written unfolded
        variables = _folded_variables(model, variables)
        model = model.clone(folded=True)
    return model, {k: np.asarray(v) for k, v in traverse_util.flatten_dict(dict(variables["params"])).items()}


def _in_channels(model: ResNet, variables) -> int:
    """The input channels the model was built for: its first conv's (``conv1``, or a deep stem's ``conv1_0``;
    3 where it cannot be read)."""
    spec = arch.describe(model)
    tree = variables.get("params", {})
    for part in arch.linen_names(spec)[spec.stem.layers[0].name]:
        tree = tree.get(part, {}) if hasattr(tree, "get") else {}
    kernel = tree.get("kernel") if hasattr(tree, "get") else None
    return int(kernel.shape[2]) if getattr(kernel, "ndim", 0) == 4 else 3


def _check_variables(model: ResNet, variables) -> None:
    """Every variable ``model`` has, each of its shape, and no other; the first few differences named."""
    x = jax.ShapeDtypeStruct((1, 64, 64, _in_channels(model, variables)), jnp.float32)
    expected = traverse_util.flatten_dict(jax.eval_shape(model.init, jax.random.PRNGKey(0), x))
    given = traverse_util.flatten_dict(variables)
    show = "/".join
    differences = (
        ("missing", [show(k) for k in expected if k not in given]),
        (
            "wrongly shaped",
            [
                f"{show(k)} {tuple(given[k].shape)} (expected {tuple(v.shape)})"
                for k, v in expected.items()
                if k in given and tuple(given[k].shape) != tuple(v.shape)
            ],
        ),
        ("unexpected", [show(k) for k in given if k not in expected]),
    )
    found = [
        f"{len(items)} {what}: {', '.join(items[:4])}{', ...' if len(items) > 4 else ''}"
        for what, items in differences
        if items
    ]
    if found:
        raise InputError("variables do not fit the model: " + "; ".join(found))


def _metadata(metadata: Mapping[str, Any] | None, layout: str, num_classes: int | None) -> dict[str, str]:
    """The ``metadata_props``: strings as given, anything else as JSON; ``format`` and ``layout`` ours."""
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, Mapping):
        raise InputTypeError(f"metadata must be a mapping of names to values; got {type(metadata).__name__}")
    props = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or key in _RESERVED:
            raise InputError(f"metadata keys must be strings other than {', '.join(_RESERVED)}; got {key!r}")
        props[key] = value if isinstance(value, str) else json.dumps(value)
    if "classes" in props and num_classes is not None:
        class_names(num_classes, props)  # a JSON list of num_classes names, or a ValueError that says so
    return {"format": ONNX_FORMAT, "layout": layout, **props}


class _Graph:
    """Nodes and initializers of the graph being written, with unique names; each spec layer placed once.

    Initializers hold the model's parameters only; fixed tensors (shapes, the blur filter, a
    GroupNorm's unit scale) are ``Constant`` nodes, so the initializers count what the spec counts.
    """

    def __init__(self, params: dict, paths: dict[str, tuple[str, ...]], epsilon: float):
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.params, self.paths, self.epsilon, self.used = params, paths, epsilon, []
        self.nodes, self.initializers = [], []
        self.channels = 0  # the channels of the tensor being written (a blur pool's filter needs them)
        self.gates = []  # each squeeze-excitation's Mul (map, gate): broadcast by Resize where the size is fixed

    def node(self, op: str, inputs: list[str], name: str, **attrs) -> str:
        self.nodes.append(self.helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def constant(self, name: str, array: np.ndarray) -> str:
        """A float32 initializer: a parameter."""
        self.initializers.append(self.numpy_helper.from_array(np.ascontiguousarray(array, np.float32), name))
        return name

    def fixed(self, name: str, array: np.ndarray) -> str:
        """A ``Constant`` node: a fixed tensor that is not a parameter."""
        return self.node("Constant", [], name, value=self.numpy_helper.from_array(np.ascontiguousarray(array), name))

    def param(self, layer_name: str, *keys: str) -> tuple[str, np.ndarray]:
        """The layer's parameter ``keys`` (its graph name and value), marked as placed."""
        path = (*self.paths[layer_name], *keys[:-1])
        self.used.append(path)
        return "/".join((*path, keys[-1])), np.asarray(self.params[(*path, keys[-1])])

    def conv(self, x: str, layer: arch.Conv) -> str:
        """``Conv`` of the spec's ``layer``: its geometry; its kernel (HWIO -> OIHW) and bias from the params."""
        path = self.paths[layer.name]
        name = "/".join(path)
        _, kernel = self.param(layer.name, "kernel")
        if kernel.shape != layer.kernel_shape:
            raise InputError(f"conv {name} has a kernel of shape {kernel.shape}; its spec says {layer.kernel_shape}")
        p = layer.padding
        groups, weight = layer.groups, self.constant(f"{name}/weight", kernel.transpose(3, 2, 0, 1))
        merged = _merged_groups(kernel.shape[2], layer.out_features // groups, groups)
        if merged > 1:
            weight = self.merge_groups(weight, layer, merged)
            groups //= merged
        attrs = dict(
            kernel_shape=[layer.kernel, layer.kernel],
            strides=list(layer.stride),
            dilations=[layer.dilation, layer.dilation],
            group=groups,
            pads=[p, p, p, p],
        )
        inputs = [x, weight]
        if (*path, "bias") in self.params:
            inputs.append(self.constant(f"{name}/bias", self.param(layer.name, "bias")[1]))
        self.channels = layer.out_features
        return self.node("Conv", inputs, name, **attrs)

    def merge_groups(self, weight: str, layer: arch.Conv, merged: int) -> str:
        """The OIHW ``weight`` of ``layer`` with each ``merged`` adjacent groups as one: each output channel's
        taps at its own group's place among the merged group's inputs, zeros elsewhere (block diagonal; the
        same sums). Written as ``Reshape``, ``Mul`` by a fixed 0/1 mask and ``Reshape`` of the parameter, which
        ONNX Runtime folds into one constant when it loads the file: the initializers stay the model's own."""
        name = weight.removesuffix("/weight")
        out, per_group, kh, kw = layer.out_features, layer.in_features // layer.groups, layer.kernel, layer.kernel
        slot = np.arange(out) // (out // layer.groups) % merged  # each output channel's group within its merged one
        mask = (slot[:, None] == np.arange(merged)[None, :]).astype(np.float32).reshape(out, merged, 1, 1, 1)
        split = self.fixed(f"{name}/group_taps", np.array([out, 1, per_group, kh, kw], np.int64))
        x = self.node("Reshape", [weight, split], f"{name}/weight_taps")
        x = self.node("Mul", [x, self.fixed(f"{name}/group_mask", mask)], f"{name}/weight_placed")
        merged_shape = self.fixed(f"{name}/merged_shape", np.array([out, merged * per_group, kh, kw], np.int64))
        return self.node("Reshape", [x, merged_shape], f"{name}/weight_merged")

    def sequence(self, x: str, channels: int, layers, prefix: str = "", local: str = "") -> str:
        """``layers`` in order on ``x`` of ``channels``, each written by its kind's emitter (:data:`_LAYERS`);
        a layer without variables is named ``prefix`` + its spec name after ``local`` (the block's name)."""
        self.channels = channels
        for layer in layers:
            if type(layer) not in _LAYERS:
                raise InputError(f"layer {layer.name} is a {type(layer).__name__}, which this exporter does not write")
            name = layer.name[len(local) + 1 :] if local else layer.name
            x = _LAYERS[type(layer)](self, x, layer, prefix + name.replace(".", "_"))
        return x


def _norm(graph: _Graph, x: str, norm: arch.Norm, name: str) -> str:
    """A BatchNorm was folded into the conv before it: nothing. A GroupNorm: the channels in ``groups``
    (``Reshape``), each group normalised (``InstanceNormalization``, unit scale), back to the input's
    shape, then its per-channel scale and bias."""
    if norm.foldable:
        return x
    if norm.kind != "group":
        raise InputError(f"norm {norm.name} is a {norm.kind!r} norm, which this exporter does not write")
    node = "/".join(graph.paths[norm.name])
    g = norm.groups
    grouped = graph.node(
        "Reshape", [x, graph.fixed(f"{node}/groups", np.array([0, g, -1], np.int64))], f"{node}/grouped"
    )
    ones, zeros = (
        graph.fixed(f"{node}/ones", np.ones(g, np.float32)),
        graph.fixed(f"{node}/zeros", np.zeros(g, np.float32)),
    )
    y = graph.node("InstanceNormalization", [grouped, ones, zeros], f"{node}/normalized", epsilon=graph.epsilon)
    y = graph.node("Reshape", [y, graph.node("Shape", [x], f"{node}/shape")], f"{node}/ungrouped")
    scale_name, scale = graph.param(norm.name, "scale")
    bias_name, bias = graph.param(norm.name, "bias")
    y = graph.node("Mul", [y, graph.constant(scale_name, scale.reshape(-1, 1, 1))], f"{node}/scaled")
    return graph.node("Add", [y, graph.constant(bias_name, bias.reshape(-1, 1, 1))], node)


def _act(graph: _Graph, x: str, act: arch.Act, name: str) -> str:
    if act.kind != "relu":
        raise InputError(f"activation {act.name} is a {act.kind!r}, which this exporter does not write")
    return graph.node("Relu", [x], name)


def _pool(graph: _Graph, x: str, pool: arch.Pool, name: str) -> str:
    """``MaxPool``; ``AveragePool`` (torch's ``ceil_mode`` and ``count_include_pad``); timm's ``BlurPool2d`` as
    ``Pad`` (reflect) and a depthwise ``Conv`` with the fixed binomial filter (a ``Constant``: not a parameter)."""
    p, k, s = pool.padding, pool.kernel, pool.stride
    window = dict(kernel_shape=[k, k], strides=[s, s], pads=[p, p, p, p])
    if pool.kind == "max":
        return graph.node("MaxPool", [x], name, ceil_mode=int(pool.ceil_mode), **window)
    if pool.kind == "avg":
        return graph.node(
            "AveragePool",
            [x],
            name,
            ceil_mode=int(pool.ceil_mode),
            count_include_pad=int(pool.count_include_pad),
            **window,
        )
    if pool.kind == "blur":
        pads = graph.fixed(f"{name}/pads", np.array([0, 0, p, p, 0, 0, p, p], np.int64))
        padded = graph.node("Pad", [x, pads], f"{name}/pad", mode="reflect")
        c = graph.channels
        filt = np.tile(blur_filter(k)[None, None], (c, 1, 1, 1))
        return graph.node(
            "Conv", [padded, graph.fixed(f"{name}/filter", filt)], name, kernel_shape=[k, k], strides=[s, s], group=c
        )
    raise InputError(f"pool {pool.name} is a {pool.kind!r} pool, which this exporter does not write")


def _squeeze_excite(graph: _Graph, x: str, se: arch.SqueezeExcite, name: str) -> str:
    """timm's ``SEModule``: ``GlobalAveragePool``, 1x1 ``Conv`` (``fc1``, bias), ``Relu``, 1x1 ``Conv`` (``fc2``,
    bias), ``Sigmoid``, ``Mul`` (its operands noted for :func:`_broadcast_gates`)."""
    node = "/".join(graph.paths[se.name])
    s = graph.node("GlobalAveragePool", [x], f"{node}/pool")
    for fc, shape in (("fc1", (se.features, se.reduced)), ("fc2", (se.reduced, se.features))):
        kernel_name, kernel = graph.param(se.name, fc, "kernel")  # Dense (in, out) -> 1x1 conv (out, in, 1, 1)
        bias_name, bias = graph.param(se.name, fc, "bias")
        if kernel.shape != shape:
            raise InputError(f"{kernel_name} has shape {kernel.shape}; its spec says {shape}")
        weight = graph.constant(kernel_name.replace("/kernel", "/weight"), kernel.T[:, :, None, None])
        s = graph.node("Conv", [s, weight, graph.constant(bias_name, bias)], f"{node}/{fc}", kernel_shape=[1, 1])
        if fc == "fc1":
            s = graph.node("Relu", [s], f"{node}/relu")
    gate = graph.node("Sigmoid", [s], f"{node}/gate")
    graph.gates.append((x, gate))
    return graph.node("Mul", [x, gate], node)


def _eca(graph: _Graph, x: str, eca: arch.Eca, name: str) -> str:
    """timm's ``EcaModule``: ``GlobalAveragePool``, the channels as a 1-D signal (``Reshape``), a ``kernel``-tap
    ``Conv`` across them (zero padded, no bias), back (``Reshape``), ``Sigmoid``, ``Mul``."""
    node = "/".join(graph.paths[eca.name])
    kernel_name, kernel = graph.param(eca.name, "kernel")  # (k, 1, 1): taps, in, out
    k = eca.kernel
    s = graph.node("GlobalAveragePool", [x], f"{node}/pool")
    s = graph.node("Reshape", [s, graph.fixed(f"{node}/as_signal", np.array([0, 1, -1], np.int64))], f"{node}/signal")
    weight = graph.constant(kernel_name.replace("/kernel", "/weight"), kernel.reshape(1, 1, k))
    pad = (k - 1) // 2
    s = graph.node("Conv", [s, weight], f"{node}/conv", kernel_shape=[k], pads=[pad, pad])
    s = graph.node("Reshape", [s, graph.fixed(f"{node}/as_map", np.array([0, -1, 1, 1], np.int64))], f"{node}/map")
    return graph.node("Mul", [x, graph.node("Sigmoid", [s], f"{node}/gate")], node)


def _broadcast_gates(graph: _Graph, in_dims: list) -> list:
    """Each squeeze-excitation's gate ``(N, C, 1, 1)`` broadcast to its map's ``(N, C, H, W)`` by a nearest
    ``Resize`` before the ``Mul`` (the same values, copied), for a graph whose input (``in_dims``, the batch a
    number or a name) has a fixed size: ONNX Runtime keeps a ``Mul`` of equal shapes in its NCHWc layout, and
    runs a broadcasting one only after reordering the map out of it (and the block's output back in). Returns
    the value infos of the broadcast gates: their batch axis named as the input's, which ONNX's shape
    inference does not carry through ``Resize``, for ONNX Runtime's layout pass to see that the shapes match."""
    if not graph.gates:
        return []
    from onnx import TensorProto, shape_inference

    make = graph.helper
    # the maps' shapes: ONNX's shape inference on the graph, with its parameters as inputs
    inputs = [make.make_tensor_value_info(INPUT, TensorProto.FLOAT, in_dims)] + [
        make.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in graph.initializers
    ]
    out = make.make_tensor_value_info(graph.nodes[-1].output[0], TensorProto.FLOAT, None)
    skeleton = make.make_model(
        make.make_graph(graph.nodes, "shapes", inputs, [out]), opset_imports=[make.make_opsetid("", OPSET)]
    )
    inferred = shape_inference.infer_shapes(skeleton, strict_mode=True).graph.value_info
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in inferred}
    gates, infos = dict(graph.gates), []
    nodes = []
    for node in graph.nodes:
        gated = node.op_type == "Mul" and gates.get(node.input[0]) == node.input[1]
        _, channels, height, width = shapes[node.input[0]] if gated else (0, 0, 0, 0)
        if min(height, width) > 0:  # a fixed size (always, where the input's is)
            scales = np.array([1, 1, height, width], np.float32)
            nodes.append(
                make.make_node(
                    "Constant",
                    [],
                    [f"{node.name}/gate_scales"],
                    name=f"{node.name}/gate_scales",
                    value=graph.numpy_helper.from_array(scales, f"{node.name}/gate_scales"),
                )
            )
            nodes.append(
                make.make_node(
                    "Resize",
                    [node.input[1], "", f"{node.name}/gate_scales"],
                    [f"{node.name}/gate_map"],
                    name=f"{node.name}/gate_map",
                    mode="nearest",
                    coordinate_transformation_mode="asymmetric",
                    nearest_mode="floor",
                )
            )
            node.input[1] = f"{node.name}/gate_map"
            infos.append(
                make.make_tensor_value_info(node.input[1], TensorProto.FLOAT, [in_dims[0], channels, height, width])
            )
        nodes.append(node)
    graph.nodes[:] = nodes
    return infos


def _residual(graph: _Graph, x: str, block: arch.Block) -> str:
    """A residual block: its main path, ``Add`` its shortcut, ``Relu``."""
    module = "/".join(graph.paths[block.all_layers[0].name][:-1])
    y = graph.sequence(x, block.in_features, block.layers, f"{module}/", block.name)
    residual = graph.sequence(x, block.in_features, block.shortcut.layers, f"{module}/", block.name)
    return graph.node("Relu", [graph.node("Add", [y, residual], f"{module}/add")], f"{module}/relu")


#: How each spec layer kind is written: ``(graph, x, layer, node name) -> x``. Dropout and drop path
#: are the identity at inference.
_LAYERS = {
    arch.Conv: lambda graph, x, layer, _: graph.conv(x, layer),
    arch.Norm: _norm,
    arch.Act: _act,
    arch.Pool: _pool,
    arch.SqueezeExcite: _squeeze_excite,
    arch.Eca: _eca,
    arch.DropPath: lambda graph, x, layer, _: x,
}
_BLOCKS = {"bottleneck": _residual, "basic": _residual}


def onnx_model(
    model: ResNet,
    variables,
    *,
    layout: str = "NCHW",
    batch: int | None = None,
    image_size: int | None = None,
    metadata: Mapping[str, Any] | None = None,
):
    """The ONNX ``ModelProto`` that :func:`export_onnx` writes (checked with ``onnx.checker``)."""
    onnx = _require("onnx")
    from onnx import TensorProto, helper

    _checks.one_of("layout", layout, LAYOUTS)
    if batch is not None:
        batch = _checks.positive_int("batch", batch)
    if metadata is not None and not isinstance(metadata, Mapping):
        raise InputTypeError(f"metadata must be a mapping of names to values; got {type(metadata).__name__}")
    if image_size is not None:
        image_size = _checks.positive_int("image_size", image_size)
        metadata = {"image_size": image_size, **(metadata or {})}
        if str(metadata["image_size"]) != str(image_size):
            raise InputError(f"metadata['image_size'] is {metadata['image_size']!r}, but image_size={image_size}")
    model, params = _inference_form(model, variables)
    check_layout(model)
    c = _in_channels(model, {"params": traverse_util.unflatten_dict(params)})
    spec = arch.describe(model, in_features=c)  # the input's channels are the first conv's
    graph = _Graph(params, arch.linen_names(spec), model.bn_epsilon)
    n = batch if batch is not None else "batch"

    x = INPUT
    if layout == "NHWC":
        x = graph.node("Transpose", [x], "to_nchw", perm=[0, 3, 1, 2])
    x = graph.sequence(x, c, (*spec.stem.layers, *spec.stem.pool))
    for block in spec.blocks():
        if block.kind not in _BLOCKS:
            raise InputError(f"block {block.name} is a {block.kind!r} block, which this exporter does not write")
        x = _BLOCKS[block.kind](graph, x, block)
    channels = spec.out_features
    if spec.head is None:
        out_name, out_dims = FEATURES, [n, channels, None, None]
        if layout == "NHWC":
            x = graph.node("Transpose", [x], "to_nhwc", perm=[0, 2, 3, 1])
            out_dims = [n, None, None, channels]
    else:
        x = graph.node("Flatten", [graph.node("GlobalAveragePool", [x], "avgpool")], "flatten", axis=1)
        fc = spec.head.layer
        path = graph.paths[fc.name]
        graph.used.append(path)
        name = "/".join(path)
        x = graph.node(
            "Gemm",
            [
                x,
                graph.constant(f"{name}/weight", params[(*path, "kernel")]),
                graph.constant(f"{name}/bias", params[(*path, "bias")]),
            ],
            name,
        )
        out_name, out_dims = LOGITS, [n, fc.out_features]
    graph.nodes[-1].output[0] = out_name
    unused = sorted({"/".join(k[:-1]) for k in params if k[:-1] not in graph.used})
    if unused:
        raise InputError(f"the model has layers this exporter does not place: {', '.join(unused)}")

    h, w = (image_size, image_size) if image_size is not None else ("height", "width")
    in_dims = [n, c, h, w] if layout == "NCHW" else [n, h, w, c]
    gate_maps = _broadcast_gates(graph, in_dims) if image_size is not None else []
    props = _metadata(metadata, layout, model.num_classes)
    proto = helper.make_model(
        helper.make_graph(
            graph.nodes,
            "resnet",
            [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, in_dims)],
            [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, out_dims)],
            graph.initializers,
            value_info=gate_maps,
        ),
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="resnet-bottleneck",
        doc_string="BatchNorm folded; one Conv per convolution.",
    )
    proto.ir_version = helper.find_min_ir_version_for(list(proto.opset_import))
    helper.set_model_props(proto, props)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export_onnx(
    model: ResNet,
    variables,
    path: str | os.PathLike,
    *,
    layout: str = "NCHW",
    batch: int | None = None,
    image_size: int | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` as an ONNX inference graph, BatchNorm folded, float32; atomic.

    Args:
      model: a :class:`~resnet_bottleneck.models.ResNet` of basic or bottleneck blocks (any
        groups, widths, ``stride_on`` and dilation, and every timm option: every name of
        :func:`~resnet_bottleneck.list_models`); scanned, folded, remat or bf16 models are
        accepted (the export is the plain layout, in float32 whatever the model's dtype).
      variables: its ``{'params', 'batch_stats'}`` (``{'params'}`` if already folded, or if
        ``norm='group'``: a GroupNorm is written unfolded).
      path: the ``.onnx`` file to write.
      layout: ``'NCHW'`` (torchvision's input) or ``'NHWC'`` (ours); see :data:`LAYOUTS`.
      batch: a fixed batch size; ``None`` (the default) leaves the batch axis dynamic.
      image_size: a fixed square input size (also written as ``metadata['image_size']``): ONNX
        Runtime plans a fixed shape a little faster (BENCHMARKS.md, ``deploy``), and squeeze-excitation
        stays in its NCHWc layout (the gates broadcast by ``Resize``); ``None`` (the default) leaves
        height and width dynamic.
      metadata: written to ``metadata_props``, e.g. ``{'model': 'resnet50', 'classes': [...],
        'image_size': 224, 'mean': [...], 'std': [...]}``; non-string values as JSON.

    Returns:
      ``path``. The graph's input is ``images``; its output ``logits`` ``(N, classes)``, or
      ``features`` (the last stage's map) for a headless model.
    """
    data = onnx_model(
        model, variables, layout=layout, batch=batch, image_size=image_size, metadata=metadata
    ).SerializeToString()
    return atomic_write(path, lambda f: f.write(data))


# --- running an exported file ------------------------------------------------------------


def session_options(threads: int | None = None):
    """ONNX Runtime's CPU session options we run with: every graph optimisation, ``threads``
    intra-op threads (default: the cores this process may use)."""
    ort = _require("onnxruntime")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or available_cores()
    return options


#: The runtimes :func:`load_onnx` opens a file with.
RUNTIMES = ("onnxruntime", "openvino")
#: The arithmetic OpenVINO computes a file's float parts in: float32 (the default, always asked for
#: explicitly: OpenVINO's CPU default is bf16 where the CPU has it) or bfloat16 (``'bf16'``).
PRECISIONS = ("f32", "bf16")
_OPENVINO_HINTS = {"f32": "f32", "bf16": "bf16"}


def is_int8(metadata: Mapping[str, str]) -> bool:
    """Whether a file's metadata says :func:`~resnet_bottleneck.io.quantize.quantize_onnx` wrote it (int8)."""
    return metadata.get("precision") == "int8"


def openvino_installed() -> bool:
    """Whether OpenVINO can be imported (``pip install 'resnet-bottleneck[openvino]'``); nothing is imported."""
    import importlib.util
    import sys

    if "openvino" in sys.modules:  # imported, or blocked (``None``: ``import openvino`` raises ImportError)
        return sys.modules["openvino"] is not None
    return importlib.util.find_spec("openvino") is not None


def default_runtime(metadata: Mapping[str, str]) -> str:
    """The runtime :func:`load_onnx` opens a file with where none is asked for: OpenVINO for an int8 file
    where it is installed (it ran the int8 ResNet-50 file faster than ONNX Runtime at batch 1 and 8 on this
    project's 2-core AVX-512 VNNI CPU in issue 26's measurements; docs/deploying.md), else ONNX Runtime."""
    return "openvino" if is_int8(metadata) and openvino_installed() else "onnxruntime"


def _openvino():
    """``openvino``, imported without its telemetry: ``import openvino`` otherwise sends a usage event from
    a forked process (openvino-telemetry, on by default), and a fork in a process that runs JAX's
    threads can deadlock. While it imports, ``openvino_telemetry`` is unimportable, so OpenVINO takes its
    own no-op stub; nothing else changes, and the module table is restored after."""
    import sys

    if sys.modules.get("openvino") is not None:
        return sys.modules["openvino"]
    blocked = "openvino_telemetry" not in sys.modules
    if blocked:
        sys.modules["openvino_telemetry"] = None  # makes ``import openvino_telemetry`` raise ImportError
    try:
        import openvino
    except ImportError:
        raise DependencyError(
            "openvino is needed for --runtime openvino: pip install 'resnet-bottleneck[openvino]'"
        ) from None
    finally:
        if blocked and sys.modules.get("openvino_telemetry", 0) is None:
            del sys.modules["openvino_telemetry"]
    return openvino


def _has_bf16(core) -> bool:
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def openvino_version() -> str:
    """The installed OpenVINO's release (``'2026.4.0'``); ``DependencyError`` where it is not installed."""
    return _openvino().__version__.split("-")[0]


def openvino_bf16() -> bool:
    """Whether OpenVINO can compute in bf16 on this CPU (``precision='bf16'`` of :func:`load_onnx`)."""
    return _has_bf16(_openvino().Core())


class _OpenVinoSession:
    """An OpenVINO compiled model behind ONNX Runtime's ``session.run(None, {input: x})``.

    One image runs as one request on all ``threads`` threads (OpenVINO's latency mode). A batch of several,
    where the file's batch is dynamic, is split into ``threads`` parts run at once on as many one-thread
    streams (its throughput mode, compiled on first use): no thread waits for another between layers, and
    each part's activations stay in its core's cache. ResNet-50, batch 8, 2 threads: faster than one two-thread
    request in every interleaved A/B on this project's 2-core machine, int8 and float32 (docs/deploying.md).
    """

    def __init__(self, core, model, config: dict, threads: int, dynamic_batch: bool):
        self.core, self.model, self.config, self.threads = core, model, config, threads
        self.compiled = core.compile_model(model, "CPU", {**config, "PERFORMANCE_HINT": "LATENCY"})
        self.request = self.compiled.create_infer_request()
        self.split = dynamic_batch and threads > 1
        self.queue = None

    def run(self, _outputs, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        (x,) = feeds.values()
        if self.split and len(x) > 1:
            return [self._streams(x)]
        self.request.infer({0: x})
        return [np.array(self.request.get_output_tensor(0).data, copy=True)]

    def _streams(self, x: np.ndarray) -> np.ndarray:
        ov = _openvino()
        if self.queue is None:
            streams = {"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": self.threads}
            compiled = self.core.compile_model(self.model, "CPU", {**self.config, **streams})
            self.queue = ov.AsyncInferQueue(compiled, self.threads)
        parts = np.array_split(x, min(self.threads, len(x)))
        outputs: list = [None] * len(parts)

        def done(request, index):
            outputs[index] = np.array(request.get_output_tensor(0).data, copy=True)

        self.queue.set_callback(done)
        for index, part in enumerate(parts):
            self.queue.start_async({0: np.ascontiguousarray(part)}, index)
        self.queue.wait_all()
        return np.concatenate(outputs)


@dataclass(frozen=True)
class _Port:
    """A graph input or output as both runtimes describe it: name, ONNX Runtime's type string, shape
    (an int per static axis, else a name or None)."""

    name: str
    type: str
    shape: list


@dataclass(frozen=True)
class OnnxClassifier:
    """An image classifier in an ``.onnx`` file, opened with ONNX Runtime or OpenVINO; see :func:`load_onnx`.

    ``batch``, ``image_size`` and ``num_classes`` are ``None`` where the file leaves them
    dynamic (and, for ``image_size``, its metadata does not say; ``fixed_size`` is the graph's own
    input size, ``None`` where height and width are dynamic); ``mean`` and ``std`` are its
    metadata's, ImageNet's where it does not say (class names: :func:`~resnet_bottleneck.io.class_names`);
    ``crop_pct`` and ``interpolation`` its evaluation resize's, torchvision's (0.875, bilinear) where it does not say.
    ``runtime`` (:data:`RUNTIMES`) runs it, computing its float parts in ``precision`` (:data:`PRECISIONS`).
    """

    path: Path
    session: Any
    input_name: str
    layout: str
    batch: int | None
    image_size: int | None
    num_classes: int | None
    fixed_size: int | None
    metadata: dict[str, str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float = DEFAULT_CROP_PCT
    interpolation: str = DEFAULT_INTERPOLATION
    runtime: str = "onnxruntime"
    precision: str = "f32"

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Logits of NHWC float32 ``images``, whatever the file's layout (and in chunks of its fixed batch)."""
        x = np.asarray(images, np.float32)
        if self.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        step = self.batch or len(x)
        outputs = []
        for start in range(0, len(x), step):
            chunk = x[start : start + step]
            padded = np.concatenate([chunk, np.zeros((step - len(chunk), *chunk.shape[1:]), chunk.dtype)])
            try:
                logits = self.session.run(None, {self.input_name: np.ascontiguousarray(padded)})[0]
            except Exception as err:  # noqa: BLE001 - the runtimes' errors are pybind classes, one per fault
                raise InputError(
                    f"{_NAMES[self.runtime]} could not run {self.path} on {padded.shape} ({_first_line(err)})"
                ) from None
            outputs.append(logits[: len(chunk)])
        return np.concatenate(outputs)


_NAMES = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _static(dim) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


def _open_onnxruntime(path: Path, threads: int | None):
    """``(session, metadata, inputs, outputs)`` of ``path`` in ONNX Runtime."""
    ort = _require("onnxruntime")
    try:
        session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - onnxruntime's errors are pybind classes, one per fault
        raise InputError(f"{path} is not an ONNX model ONNX Runtime can run ({_first_line(err)})") from None
    metadata = dict(session.get_modelmeta().custom_metadata_map)
    ports = [[_Port(p.name, p.type, list(p.shape)) for p in ps] for ps in (session.get_inputs(), session.get_outputs())]
    return session, metadata, *ports


def _open_openvino(path: Path, threads: int | None, precision: str):
    """``(session, metadata, inputs, outputs)`` of ``path`` compiled by OpenVINO for the CPU, in ``precision``
    (set always: OpenVINO's own default is bf16 on a CPU that has it) with ``threads`` threads."""
    from ..errors import SettingError

    ov = _openvino()
    onnx = _require("onnx")
    core = ov.Core()
    if precision == "bf16" and not _has_bf16(core):
        caps = ", ".join(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        raise SettingError(
            "precision",
            f"bf16 needs a CPU with bfloat16 arithmetic (AVX-512 BF16 or AMX); this one offers {caps}: use 'f32'",
        )
    threads = threads or available_cores()
    config = {"INFERENCE_PRECISION_HINT": _OPENVINO_HINTS[precision], "INFERENCE_NUM_THREADS": threads}
    try:
        model = core.read_model(str(path))
        shape = model.inputs[0].get_partial_shape() if len(model.inputs) == 1 else None
        dynamic_batch = shape is not None and shape.rank.is_static and len(shape) > 0 and shape[0].is_dynamic
        session = _OpenVinoSession(core, model, config, threads, dynamic_batch)
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - OpenVINO's errors are pybind classes, one per fault
        raise InputError(f"{path} is not an ONNX model OpenVINO can run ({_first_line(err)})") from None
    metadata = {p.key: p.value for p in proto.metadata_props}

    def port(p) -> _Port:
        shape = [d.get_length() if d.is_static else None for d in p.get_partial_shape()]
        kind = "tensor(float)" if p.get_element_type() == ov.Type.f32 else f"tensor({p.get_element_type()})"
        return _Port(p.get_any_name(), kind, shape)

    return session, metadata, [port(p) for p in model.inputs], [port(p) for p in model.outputs]


def load_onnx(
    path: str | os.PathLike,
    *,
    runtime: str | None = None,
    threads: int | None = None,
    precision: str | None = None,
) -> OnnxClassifier:
    """An ``.onnx`` image classifier (ours, or any with one ``[N, 3, H, W]`` or ``[N, H, W, 3]``
    float input and one ``[N, classes]`` output), ready to run with ONNX Runtime or OpenVINO.

    The input layout is the file's ``layout`` metadata when it has one, else read off its input shape.

    Args:
      path: the ``.onnx`` file (float32 from :func:`export_onnx`, int8 from
        :func:`~resnet_bottleneck.io.quantize.quantize_onnx`, or any classifier of that shape).
      runtime: ``'onnxruntime'`` or ``'openvino'`` (:data:`RUNTIMES`); ``None``: :func:`default_runtime`
        (OpenVINO for an int8 file where it is installed, else ONNX Runtime).
      threads: intra-op threads (ONNX Runtime's ``intra_op_num_threads``, OpenVINO's
        ``INFERENCE_NUM_THREADS``); ``None``: the cores this process may use.
      precision: what OpenVINO computes the float parts in: ``'f32'`` (``None``, the default) or
        ``'bf16'`` where the CPU has bfloat16 arithmetic; ONNX Runtime takes ``'f32'`` only.

    Raises:
      FileError: no such file.
      ImportError: the runtime is not installed (the message says what to install).
      InputError: the runtime cannot read it, or its inputs, outputs or metadata are not an
        image classifier's (the message says what differs); a bad ``runtime``, ``threads`` or
        ``precision`` (a :class:`~resnet_bottleneck.errors.SettingError` naming it).
    """
    from ..errors import SettingError

    path = Path(path)
    if runtime is not None and runtime not in RUNTIMES:
        raise SettingError("runtime", f"must be one of {', '.join(RUNTIMES)}; got {runtime!r}")
    if precision is not None and precision not in PRECISIONS:
        raise SettingError("precision", f"must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if threads is not None:
        threads = _checks.positive_int("threads", threads)
    if not path.is_file():
        raise FileError(f"no such ONNX file: {path}")
    if runtime is None:
        runtime = default_runtime(file_metadata(path))
    precision = precision or "f32"
    if runtime == "onnxruntime" and precision != "f32":
        raise SettingError(
            "precision", f"{precision} is OpenVINO's (runtime='openvino'); ONNX Runtime runs this file in f32"
        )
    if runtime == "openvino":
        session, metadata, inputs, outputs = _open_openvino(path, threads, precision)
    else:
        session, metadata, inputs, outputs = _open_onnxruntime(path, threads)
    if len(inputs) != 1 or len(outputs) != 1:
        raise InputError(
            f"{path} has {len(inputs)} inputs and {len(outputs)} outputs; an image classifier has one of each"
        )
    shape, out_shape = list(inputs[0].shape), list(outputs[0].shape)
    where = f"{path}'s input {inputs[0].name!r} has shape {shape} and type {inputs[0].type}"
    if inputs[0].type != "tensor(float)" or len(shape) != 4:
        raise InputError(f"{where}; expected a float [N, 3, H, W] or [N, H, W, 3] batch of images")
    layout = metadata.get("layout")
    if layout not in LAYOUTS:
        layout = "NCHW" if shape[1] == 3 else "NHWC" if shape[3] == 3 else None
    channels = shape[1] if layout == "NCHW" else shape[3] if layout == "NHWC" else None
    if layout is None or channels != 3:
        raise InputError(
            f"{where}{f' ({layout})' if layout else ''}; expected 3 channels, as [N, 3, H, W] or [N, H, W, 3]"
        )
    if len(out_shape) != 2:
        raise InputError(
            f"{path}'s output {outputs[0].name!r} has shape {out_shape}; expected class scores [N, classes]"
            + (" (a headless model's feature map cannot classify)" if len(out_shape) == 4 else "")
        )
    height, width = (_static(d) for d in (shape[2:] if layout == "NCHW" else shape[1:3]))
    if height != width:
        raise InputError(f"{where}; predict's transform makes square images, and this input is {height} x {width}")
    size, mean, std = preprocessing(metadata, str(path))  # checked; 224 and ImageNet's where it does not say
    crop_pct, interpolation = eval_crop(metadata, str(path))
    if height is not None:
        size = height
    elif "image_size" not in metadata:
        size = None
    return OnnxClassifier(
        path,
        session,
        inputs[0].name,
        layout,
        _static(shape[0]),
        size,
        _static(out_shape[1]),
        height,
        metadata,
        mean,
        std,
        crop_pct,
        interpolation,
        runtime,
        precision,
    )


def file_metadata(path: str | os.PathLike) -> dict[str, str]:
    """An ``.onnx`` file's ``metadata_props`` (its weights not read); ``{}`` where ``onnx`` cannot parse it
    (the runtime that opens it then says why)."""
    try:
        onnx = _require("onnx")
        return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    except Exception:  # noqa: BLE001 - protobuf's decode errors; the runtime reports the file
        return {}
