"""ONNX out: a family model as a canonical inference graph, and ONNX Runtime to run it.

The graph is written from the model's description (:func:`resnet_bottleneck.arch.describe`),
not traced from its JAX program: BatchNorm folded (:func:`~resnet_bottleneck.fold.fold_batchnorm`),
then one node per layer of the spec: a ``Conv`` per convolution (its strides, padding, groups and
dilation the spec's), ``Relu``, ``MaxPool``, ``Add``, ``GlobalAveragePool``, ``Flatten`` and ``Gemm``.
That is the graph ONNX Runtime's CPU fusions (Conv+Add+Relu, NCHWc blocking) are written
for; a traced export computes 1x1 convs as MatMul and reshapes, which ONNX Runtime runs
slower (BENCHMARKS.md, ``deploy``).

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
from ..fold import fold_batchnorm
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


def _require(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise ImportError(f"{module} is needed for ONNX: pip install 'resnet-bottleneck[onnx]'") from None


# One compiled program per model, not an op-by-op dispatch per layer.
_folded_variables = jax.jit(lambda model, variables: fold_batchnorm(model, variables)[1], static_argnums=0)


def _inference_form(model: ResNet, variables) -> tuple[ResNet, dict]:
    """The folded, plain-layout, float32 model and its flat ``params``; the variables checked."""
    if not isinstance(model, ResNet):
        raise TypeError(f"model must be a resnet_bottleneck ResNet; got {type(model).__name__}")
    if not hasattr(variables, "keys") or "params" not in variables:
        raise TypeError(
            f"variables must be a mapping with 'params' (and 'batch_stats' unless folded); "
            f"got {type(variables).__name__}"
        )
    if model.scan:  # the graph names layers as the plain layout does
        model, variables = model.clone(scan=False), unscan_variables(dict(variables))
    # float32 whatever the model computes in (bf16 compute, bf16 parameters): the export is float32.
    model = model.clone(dtype=None, param_dtype=jnp.float32, remat=False)
    variables = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), dict(variables))
    _check_variables(model, variables)
    if not model.folded:
        variables = _folded_variables(model, variables)
        model = model.clone(folded=True)
    return model, {k: np.asarray(v) for k, v in traverse_util.flatten_dict(dict(variables["params"])).items()}


def _in_channels(variables) -> int:
    """The input channels the model was built for: its first conv's (3 where it cannot be read)."""
    kernel = variables.get("params", {}).get("conv1", {}).get("kernel")
    return int(kernel.shape[2]) if getattr(kernel, "ndim", 0) == 4 else 3


def _check_variables(model: ResNet, variables) -> None:
    """Every variable ``model`` has, each of its shape, and no other; the first few differences named."""
    x = jax.ShapeDtypeStruct((1, 64, 64, _in_channels(variables)), jnp.float32)
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
        raise ValueError("variables do not fit the model: " + "; ".join(found))


def _metadata(metadata: Mapping[str, Any] | None, layout: str, num_classes: int | None) -> dict[str, str]:
    """The ``metadata_props``: strings as given, anything else as JSON; ``format`` and ``layout`` ours."""
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping of names to values; got {type(metadata).__name__}")
    props = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or key in _RESERVED:
            raise ValueError(f"metadata keys must be strings other than {', '.join(_RESERVED)}; got {key!r}")
        props[key] = value if isinstance(value, str) else json.dumps(value)
    if "classes" in props and num_classes is not None:
        class_names(num_classes, props)  # a JSON list of num_classes names, or a ValueError that says so
    return {"format": ONNX_FORMAT, "layout": layout, **props}


class _Graph:
    """Nodes and initializers of the graph being written, with unique names; each spec layer placed once."""

    def __init__(self, params: dict, paths: dict[str, tuple[str, ...]]):
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.params, self.paths, self.used = params, paths, []
        self.nodes, self.initializers = [], []

    def node(self, op: str, inputs: list[str], name: str, **attrs) -> str:
        self.nodes.append(self.helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def constant(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(self.numpy_helper.from_array(np.ascontiguousarray(array, np.float32), name))
        return name

    def conv(self, x: str, layer: arch.Conv) -> str:
        """``Conv`` of the spec's ``layer``: its geometry; its kernel (HWIO -> OIHW) and bias from the params."""
        path = self.paths[layer.name]
        self.used.append(path)
        name = "/".join(path)
        kernel = np.asarray(self.params[(*path, "kernel")])
        if kernel.shape != layer.kernel_shape:
            raise ValueError(f"conv {name} has a kernel of shape {kernel.shape}; its spec says {layer.kernel_shape}")
        p = layer.padding
        attrs = dict(
            kernel_shape=[layer.kernel, layer.kernel],
            strides=list(layer.stride),
            dilations=[layer.dilation, layer.dilation],
            group=layer.groups,
            pads=[p, p, p, p],
        )
        inputs = [x, self.constant(f"{name}/weight", kernel.transpose(3, 2, 0, 1))]
        if (*path, "bias") in self.params:
            inputs.append(self.constant(f"{name}/bias", np.asarray(self.params[(*path, "bias")])))
        return self.node("Conv", inputs, name, **attrs)

    def sequence(self, x: str, layers, relu_between: bool) -> str:
        """``layers`` in order, each norm folded into the conv before it; a ``Relu`` after each norm but
        the last where ``relu_between`` (named after its conv)."""
        conv = None
        for k, layer in enumerate(layers):
            if type(layer) not in _LAYERS:
                raise ValueError(f"layer {layer.name} is a {type(layer).__name__}, which this exporter does not write")
            x, conv = _LAYERS[type(layer)](self, x, layer, conv)
            if relu_between and isinstance(layer, arch.Norm) and k < len(layers) - 1:
                x = self.node("Relu", [x], f"{conv}/relu")
        return x


def _max_pool(graph: _Graph, x: str, pool: arch.Pool) -> str:
    p = pool.padding
    return graph.node(
        "MaxPool", [x], pool.name, kernel_shape=[pool.kernel] * 2, strides=[pool.stride] * 2, pads=[p, p, p, p]
    )


def _conv_stem(graph: _Graph, x: str, stem: arch.Stem) -> str:
    """Conv, norm (folded), ``Relu``, then the pool."""
    x = graph.sequence(x, stem.layers, True)
    x = graph.node("Relu", [x], "/".join(graph.paths[stem.layers[0].name]) + "/relu")
    return x if stem.pool is None else _POOLS[stem.pool.kind](graph, x, stem.pool)


def _residual(graph: _Graph, x: str, block: arch.Block) -> str:
    """A residual block: its main path, ``Add`` its shortcut, ``Relu``."""
    module = "/".join(graph.paths[block.all_layers[0].name][:-1])
    y = graph.sequence(x, block.layers, True)
    residual = _SHORTCUTS[block.shortcut.kind](graph, x, block.shortcut)
    return graph.node("Relu", [graph.node("Add", [y, residual], f"{module}/add")], f"{module}/relu")


#: How each spec layer, pool, block and shortcut kind is written (``_LAYERS``: ``(graph, x, layer, last conv)
#: -> (x, conv)``; a norm is folded into its conv, so it writes nothing).
_LAYERS = {
    arch.Conv: lambda graph, x, layer, _: (graph.conv(x, layer),) * 2,
    arch.Norm: lambda graph, x, layer, conv: (x, conv),
}
_POOLS = {"max": _max_pool}
_STEMS = {"conv7": _conv_stem}
_BLOCKS = {"bottleneck": _residual, "basic": _residual}
_SHORTCUTS = {
    "identity": lambda graph, x, shortcut: x,
    "projection": lambda graph, x, shortcut: graph.sequence(x, shortcut.layers, False),
}


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
        raise TypeError(f"metadata must be a mapping of names to values; got {type(metadata).__name__}")
    if image_size is not None:
        image_size = _checks.positive_int("image_size", image_size)
        metadata = {"image_size": image_size, **(metadata or {})}
        if str(metadata["image_size"]) != str(image_size):
            raise ValueError(f"metadata['image_size'] is {metadata['image_size']!r}, but image_size={image_size}")
    model, params = _inference_form(model, variables)
    check_layout(model)
    c = _in_channels({"params": traverse_util.unflatten_dict(params)})
    spec = arch.describe(model, in_features=c)  # the input's channels are the first conv's
    graph = _Graph(params, arch.linen_names(spec))
    n = batch if batch is not None else "batch"

    x = INPUT
    if layout == "NHWC":
        x = graph.node("Transpose", [x], "to_nchw", perm=[0, 3, 1, 2])
    if spec.stem.kind not in _STEMS:
        raise ValueError(f"the stem is a {spec.stem.kind!r} stem, which this exporter does not write")
    x = _STEMS[spec.stem.kind](graph, x, spec.stem)
    for block in spec.blocks():
        if block.kind not in _BLOCKS:
            raise ValueError(f"block {block.name} is a {block.kind!r} block, which this exporter does not write")
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
        raise ValueError(f"the model has layers this exporter does not place: {', '.join(unused)}")

    h, w = (image_size, image_size) if image_size is not None else ("height", "width")
    in_dims = [n, c, h, w] if layout == "NCHW" else [n, h, w, c]
    props = _metadata(metadata, layout, model.num_classes)
    proto = helper.make_model(
        helper.make_graph(
            graph.nodes,
            "resnet",
            [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, in_dims)],
            [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, out_dims)],
            graph.initializers,
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
        groups, widths, ``stride_on`` and dilation); scanned, folded, remat or bf16 models
        are accepted (the export is the plain layout, in float32 whatever the model's dtype).
      variables: its ``{'params', 'batch_stats'}`` (``{'params'}`` if already folded).
      path: the ``.onnx`` file to write.
      layout: ``'NCHW'`` (torchvision's input) or ``'NHWC'`` (ours); see :data:`LAYOUTS`.
      batch: a fixed batch size; ``None`` (the default) leaves the batch axis dynamic.
      image_size: a fixed square input size (also written as ``metadata['image_size']``): ONNX
        Runtime plans a fixed shape a little faster (BENCHMARKS.md, ``deploy``); ``None`` (the
        default) leaves height and width dynamic.
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


@dataclass(frozen=True)
class OnnxClassifier:
    """An image classifier in an ``.onnx`` file, opened with ONNX Runtime; see :func:`load_onnx`.

    ``batch``, ``image_size`` and ``num_classes`` are ``None`` where the file leaves them
    dynamic (and, for ``image_size``, its metadata does not say; ``fixed_size`` is the graph's own
    input size, ``None`` where height and width are dynamic); ``mean`` and ``std`` are its
    metadata's, ImageNet's where it does not say (class names: :func:`~resnet_bottleneck.io.class_names`);
    ``crop_pct`` and ``interpolation`` its evaluation resize's, torchvision's (0.875, bilinear) where it does not say.
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
            except Exception as err:  # noqa: BLE001 - onnxruntime's errors are pybind classes, one per fault
                raise ValueError(
                    f"ONNX Runtime could not run {self.path} on {padded.shape} ({_first_line(err)})"
                ) from None
            outputs.append(logits[: len(chunk)])
        return np.concatenate(outputs)


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _static(dim) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


def load_onnx(path: str | os.PathLike, *, threads: int | None = None) -> OnnxClassifier:
    """An ``.onnx`` image classifier (ours, or any with one ``[N, 3, H, W]`` or ``[N, H, W, 3]``
    float input and one ``[N, classes]`` output), ready to run with ONNX Runtime.

    The input layout is the file's ``layout`` metadata when it has one, else read off its input shape.

    Raises:
      FileNotFoundError: no such file.
      ValueError: ONNX Runtime cannot read it, or its inputs, outputs or metadata are not an
        image classifier's (the message says what differs).
    """
    ort = _require("onnxruntime")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such ONNX file: {path}")
    try:
        session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - onnxruntime's errors are pybind classes, one per fault
        raise ValueError(f"{path} is not an ONNX model ONNX Runtime can run ({_first_line(err)})") from None
    metadata = dict(session.get_modelmeta().custom_metadata_map)
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(
            f"{path} has {len(inputs)} inputs and {len(outputs)} outputs; an image classifier has one of each"
        )
    shape, out_shape = list(inputs[0].shape), list(outputs[0].shape)
    where = f"{path}'s input {inputs[0].name!r} has shape {shape} and type {inputs[0].type}"
    if inputs[0].type != "tensor(float)" or len(shape) != 4:
        raise ValueError(f"{where}; expected a float [N, 3, H, W] or [N, H, W, 3] batch of images")
    layout = metadata.get("layout")
    if layout not in LAYOUTS:
        layout = "NCHW" if shape[1] == 3 else "NHWC" if shape[3] == 3 else None
    channels = shape[1] if layout == "NCHW" else shape[3] if layout == "NHWC" else None
    if layout is None or channels != 3:
        raise ValueError(
            f"{where}{f' ({layout})' if layout else ''}; expected 3 channels, as [N, 3, H, W] or [N, H, W, 3]"
        )
    if len(out_shape) != 2:
        raise ValueError(
            f"{path}'s output {outputs[0].name!r} has shape {out_shape}; expected class scores [N, classes]"
            + (" (a headless model's feature map cannot classify)" if len(out_shape) == 4 else "")
        )
    height, width = (_static(d) for d in (shape[2:] if layout == "NCHW" else shape[1:3]))
    if height != width:
        raise ValueError(f"{where}; predict's transform makes square images, and this input is {height} x {width}")
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
    )
