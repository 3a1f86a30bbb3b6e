"""What a block or a model costs: parameters and multiply-accumulates (MACs).

Two views. :func:`model_cost` reads a family model's real layers (their kernels and
the shapes of their outputs, evaluated abstractly) and counts the MACs of its convs and
its classifier, as torchvision's model table does (resnet50: 4.09 GMACs at 224).
:func:`spec_table` redoes the founding specification's arithmetic from the closed-form
costs of one conv, so a reader can check its "8x cheaper" and "~75M".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp

from . import _checks, arch
from .errors import DependencyError
from .layers import _pool_geometry
from .models import ResNet, count_params, create_model


def conv_params(in_features: int, out_features: int, kernel: int, groups: int = 1) -> int:
    """Weights of a bias-free ``kernel x kernel`` conv."""
    return kernel * kernel * (in_features // groups) * out_features


def basic_pair_params(features: int) -> int:
    """Two full-width 3x3 convs: the basic block's convs."""
    return 2 * conv_params(features, features, 3)


def bottleneck_params(mid_features: int, out_features: int) -> int:
    """The bottleneck's 1x1 -> 3x3 -> 1x1 triple (identity shortcut)."""
    return (
        conv_params(out_features, mid_features, 1)
        + conv_params(mid_features, mid_features, 3)
        + conv_params(mid_features, out_features, 1)
    )


@dataclass(frozen=True)
class Row:
    what: str
    params: int
    macs: int


def spec_table(out_features: int = 256, mid_features: int = 64, wide_features: int = 2048, size: int = 56) -> list[Row]:
    """The specification's comparison: one basic 3x3 conv vs the bottleneck triple, and full width.

    MACs are for one ``size x size`` feature map at stride 1 (every weight is used once
    per output position).
    """
    out_features = _checks.positive_int("out_features", out_features)
    mid_features = _checks.positive_int("mid_features", mid_features)
    wide_features = _checks.positive_int("wide_features", wide_features)
    size = _checks.positive_int("size", size)
    positions = size * size
    one_conv = conv_params(out_features, out_features, 3)
    triple = bottleneck_params(mid_features, out_features)
    wide_pair = basic_pair_params(wide_features)
    wide_triple = bottleneck_params(wide_features // 4, wide_features) if wide_features >= 4 else 0
    rows = [
        (f"one 3x3 conv, {out_features} -> {out_features}", one_conv),
        (f"bottleneck 1x1/3x3/1x1, out {out_features}, mid {mid_features}", triple),
        (f"two 3x3 convs at {wide_features} (basic block)", wide_pair),
        (f"bottleneck at {wide_features}, mid {wide_features // 4}", wide_triple),
    ]
    return [Row(what, params, params * positions) for what, params in rows]


def _pad_low(padding, size: int, kernel: int, stride: int, dilation: int) -> int:
    if padding == "VALID":
        return 0
    if padding == "SAME":
        span = (kernel - 1) * dilation + 1
        out = -(-size // stride)
        return max((out - 1) * stride + span - size, 0) // 2
    return padding[0]


def _valid_taps(size: int, out: int, kernel: int, stride: int, dilation: int, low: int) -> int:
    """How many (output position, tap) pairs of one axis read the input rather than padding."""
    return sum(0 <= o * stride - low + j * dilation < size for o in range(out) for j in range(kernel))


def traced_layers(module: nn.Module, variables, x) -> list[tuple[nn.Module, tuple, tuple]]:
    """``(layer, input shape, output shape)`` of every conv and dense layer ``module.apply(variables, x)``
    calls, in call order; the layers are the bound modules, with their attributes and ``scope.path``.

    Evaluated abstractly (``jax.eval_shape``): ``variables`` and ``x`` may be ``jax.ShapeDtypeStruct``s.
    """
    records = []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        layer = context.module
        if context.method_name == "__call__" and isinstance(layer, (nn.Conv, nn.Dense)):
            records.append((layer, tuple(args[0].shape), tuple(out.shape)))
        return out

    with nn.intercept_methods(record):
        jax.eval_shape(module.apply, variables, x)
    return records


def layer_costs(module: nn.Module, variables, x) -> list[dict]:
    """Every conv and dense layer that ``module.apply(variables, x)`` runs, with its cost; for a
    :class:`~resnet_bottleneck.models.ResNet`, also its ECA convs and its pools, read off its spec.

    Each record has the layer's ``path``, ``kind``, input and output ``shape``s, its
    ``params`` (weights and bias), ``macs`` per image counted over the whole kernel at
    every output position (torchvision's convention), and ``macs_unpadded``, which skips
    the taps that fall on zero padding (what XLA's cost analysis counts). SE's two convs are
    its dense layers (``.../se/fc1``, ``fc2``); ECA's 1-D conv (``kind`` ``'Eca'``) costs
    ``kernel`` MACs per channel; a blur pool (``'BlurPool'``) is a depthwise conv with its fixed
    filter, an average pool (``'AvgPool'``) one MAC per window element (``macs_unpadded``: those
    inside the input), a max pool (``'MaxPool'``) none (comparisons). The global average pools
    (the head's, SE's and ECA's) are not counted, as torchvision does not.
    ``variables`` and ``x`` may be ``jax.ShapeDtypeStruct``s: nothing is computed.
    """
    costs = _traced_costs(module, variables, x)
    if isinstance(module, ResNet):
        costs = _merge(costs, _spec_costs(module, tuple(x.shape)))
    return costs


def _traced_costs(module: nn.Module, variables, x) -> list[dict]:
    costs = []
    for layer, in_shape, out_shape in traced_layers(module, variables, x):
        if isinstance(layer, nn.Dense):
            weights = in_shape[-1] * layer.features
            macs = unpadded = weights
        else:
            kernel = tuple(layer.kernel_size)
            ndim = len(kernel)
            strides = _tuple(layer.strides, ndim)
            dilation = _tuple(layer.kernel_dilation, ndim)
            padding = layer.padding if isinstance(layer.padding, str) else [tuple(p) for p in layer.padding]
            weights = math.prod(kernel) * in_shape[-1] // layer.feature_group_count * layer.features
            positions = math.prod(out_shape[1:-1])
            macs = positions * weights
            taps = 1
            for axis in range(ndim):
                pad = padding if isinstance(padding, str) else padding[axis]
                low = _pad_low(pad, in_shape[1 + axis], kernel[axis], strides[axis], dilation[axis])
                taps *= _valid_taps(
                    in_shape[1 + axis], out_shape[1 + axis], kernel[axis], strides[axis], dilation[axis], low
                )
            unpadded = taps * weights // math.prod(kernel)
        bias = layer.features if layer.use_bias else 0
        costs.append(
            {
                "path": "/".join(layer.scope.path),
                "kind": type(layer).__name__,
                "input_shape": tuple(in_shape),
                "output_shape": tuple(out_shape),
                "params": weights + bias,
                "macs": macs,
                "macs_unpadded": unpadded,
            }
        )
    return costs


def _conv_out(size: int, conv: arch.Conv) -> int:
    return (size + 2 * conv.padding - conv.dilation * (conv.kernel - 1) - 1) // conv.stride[0] + 1


def _pool_cost(pool: arch.Pool, h: int, w: int, c: int) -> tuple[tuple[int, int], int, int]:
    """A pool's output size and its MACs and unpadded MACs per image on ``h x w x c``."""
    k, s, p = pool.kernel, pool.stride, pool.padding
    if pool.kind == "avg":
        (oh, _, inside_h), (ow, _, inside_w) = (_pool_geometry(n, k, s, p, pool.ceil_mode, False) for n in (h, w))
        return (oh, ow), oh * ow * k * k * c, int(inside_h.sum() * inside_w.sum()) * c
    oh, ow = ((n + 2 * p - k) // s + 1 for n in (h, w))
    macs = oh * ow * k * k * c if pool.kind == "blur" else 0  # blur: reflect padding, every tap an input value
    return (oh, ow), macs, macs


_POOL_KINDS = {"max": "MaxPool", "avg": "AvgPool", "blur": "BlurPool"}
#: The spec layers whose costs the trace records (convs, dense layers, SE's dense layers).
_TRACED = (arch.Conv, arch.Linear, arch.SqueezeExcite)


def _spec_costs(model: ResNet, shape: tuple[int, ...]) -> list[tuple[dict, tuple[str, ...] | None]]:
    """The ECA convs' and pools' records of ``model`` on inputs of ``shape``, each with the Linen path of
    the traced layer it runs before (``None``: after all of them); shapes from the spec's arithmetic."""
    spec = arch.describe(model)
    paths = arch.linen_names(spec, scan=model.scan)
    n, h, w, c = shape
    records, waiting = [], []

    def walk(layers, h, w, c, module, local):
        for layer in layers:
            name = (module + "/" if module else "") + (layer.name[len(local) + 1 :] if local else layer.name)
            if isinstance(layer, _TRACED):
                path = paths[layer.name] + (("fc1",) if isinstance(layer, arch.SqueezeExcite) else ())
                for record in waiting:
                    records.append((record, path))
                waiting.clear()
            if isinstance(layer, arch.Conv):
                h, w, c = _conv_out(h, layer), _conv_out(w, layer), layer.out_features
            elif isinstance(layer, arch.Pool):
                (oh, ow), macs, unpadded = _pool_cost(layer, h, w, c)
                kind = _POOL_KINDS[layer.kind]
                waiting.append(_record(name.replace(".", "_"), kind, (n, h, w, c), (n, oh, ow, c), 0, macs, unpadded))
                h, w = oh, ow
            elif isinstance(layer, arch.Eca):
                k = layer.kernel
                unpadded = c * k - 2 * sum(range((k - 1) // 2 + 1))  # the taps past either end read zeros
                path = "/".join(paths[layer.name])
                waiting.append(_record(path, "Eca", (n, h, w, c), (n, h, w, c), k, c * k, unpadded))
        return h, w, c

    h, w, c = walk((*spec.stem.layers, *spec.stem.pool), h, w, c, "", "")
    for block in spec.blocks():
        module = "/".join(paths[block.all_layers[0].name][:-1])
        out = walk(block.layers, h, w, c, module, block.name)
        walk(block.shortcut.layers, h, w, c, module, block.name)
        h, w, c = out
    if spec.head is not None:
        for record in waiting:
            records.append((record, paths[spec.head.layer.name]))
        waiting.clear()
    return records + [(record, None) for record in waiting]


def _record(path, kind, in_shape, out_shape, params, macs, unpadded) -> dict:
    return {
        "path": path,
        "kind": kind,
        "input_shape": in_shape,
        "output_shape": out_shape,
        "params": params,
        "macs": macs,
        "macs_unpadded": unpadded,
    }


def _merge(traced: list[dict], extra: list[tuple[dict, tuple[str, ...] | None]]) -> list[dict]:
    """``extra``'s records placed before the traced layer each names (call order); one per path (a
    scanned stage's blocks share theirs, and the trace has each once)."""
    before: dict[str, list[dict]] = {}
    tail, seen = [], set()
    for record, path in extra:
        if record["path"] in seen:
            continue
        seen.add(record["path"])
        (tail if path is None else before.setdefault("/".join(path), [])).append(record)
    merged = []
    for record in traced:
        merged += before.pop(record["path"], [])
        merged.append(record)
    return merged + [r for records in before.values() for r in records] + tail


def _tuple(value, ndim: int) -> tuple[int, ...]:
    if value is None:
        return (1,) * ndim
    return (value,) * ndim if isinstance(value, int) else tuple(value)


def model_cost(name: str, image_size: int = 224, num_classes: int = 1000) -> dict:
    """Parameters and MACs per image of a family model at ``image_size`` x ``image_size``.

    Returns:
      ``{'model', 'image_size', 'num_classes', 'params', 'macs', 'gmacs'}``; ``params``
      excludes BatchNorm statistics; ``macs`` counts convs, the classifier, attention (SE's and ECA's
      convs) and the blur and average pools (see :func:`layer_costs`).
    """
    image_size = _checks.positive_int("image_size", image_size)
    model = create_model(name, num_classes=_checks.positive_int("num_classes", num_classes))
    x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    macs = sum(layer["macs"] for layer in layer_costs(model, variables, x))
    return {
        "model": name,
        "image_size": image_size,
        "num_classes": num_classes,
        "params": count_params(variables),
        "macs": macs,
        "gmacs": round(macs / 1e9, 3),
    }


def plot_block_costs(path, widths=(64, 128, 256, 512, 1024, 2048), size: int = 56) -> None:
    """Draw parameters and MACs against width for the basic and the bottleneck block (PNG)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise DependencyError("--plot needs matplotlib: pip install 'resnet-bottleneck[plot]'") from None
    from ._files import atomic_write

    basic = [basic_pair_params(w) for w in widths]
    bottleneck = [bottleneck_params(w // 4, w) for w in widths]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, scale, label in ((axes[0], 1, "parameters"), (axes[1], size * size, f"MACs at {size}x{size}")):
        ax.plot(widths, [b * scale for b in basic], "o-", label="basic: two 3x3 convs at full width")
        ax.plot(widths, [b * scale for b in bottleneck], "s-", label="bottleneck: 1x1 -> 3x3 (w/4) -> 1x1")
        for w, b, t in zip(widths, basic, bottleneck):
            ax.annotate(f"{b / t:.0f}x", (w, (b * t) ** 0.5 * scale), ha="center", fontsize=8)
        ax.set(xscale="log", yscale="log", xlabel="block width (output channels)", ylabel=label, title=label)
        ax.set_xticks(widths, [str(w) for w in widths])
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("The bottleneck's saving, per block")
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)
