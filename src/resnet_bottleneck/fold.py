"""Inference: fold each eval-mode BatchNorm into the conv before it.

In eval mode ``BN(conv(x)) = conv(x) * m + (beta - mean * m)`` with
``m = gamma / sqrt(var + eps)``, which is one conv with kernel ``W * m`` and bias
``beta - mean * m``. The folded model runs one op where there were two and reads no
statistics.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import traverse_util

from . import arch
from .errors import InputError, InputTypeError
from .models import ResNet


def _norm_to_conv(model: ResNet) -> dict[tuple[str, ...], tuple[str, ...]]:
    """Linen module path of each norm -> that of the conv before it, from the model's spec (scanned or plain)."""
    spec = arch.describe(model)
    paths = arch.linen_names(spec, scan=model.scan)
    return {paths[norm.name]: paths[conv.name] for conv, norm in spec.conv_norm_pairs()}


def foldable(model: ResNet) -> bool:
    """Whether ``model``'s norms can be folded: BatchNorm (``'batch'``, ``'frozen'``), not GroupNorm, which
    normalises each image by its own statistics."""
    return all(layer.foldable for layer in arch.describe(model).layers() if isinstance(layer, arch.Norm))


def fold_batchnorm(model: ResNet, variables) -> tuple[ResNet, dict]:
    """An inference model and its variables with every BatchNorm folded into its conv.

    Args:
      model: a :class:`~resnet_bottleneck.models.ResNet` (plain or scanned layout, ``norm``
        ``'batch'`` or ``'frozen'``; ``'group'`` is refused: see :func:`foldable`).
      variables: its ``{'params': ..., 'batch_stats': ...}``.

    Returns:
      ``(folded_model, {'params': ...})``; call ``folded_model.apply(v, x)`` (eval only).
    """
    if not isinstance(model, ResNet):
        raise InputTypeError(f"model must be a resnet_bottleneck ResNet; got {type(model).__name__}")
    if model.folded:
        raise InputError("model is already folded")
    if not foldable(model):
        raise InputError(
            f"norm={model.norm!r} cannot be folded: a GroupNorm normalises each image by its own statistics "
            "(export_onnx writes it unfolded)"
        )
    if "batch_stats" not in variables:
        raise InputError("variables must hold 'batch_stats' (the running statistics to fold)")
    params = traverse_util.flatten_dict(dict(variables["params"]))
    stats = traverse_util.flatten_dict(dict(variables["batch_stats"]))
    norm_to_conv = _norm_to_conv(model)
    folded = {k: v for k, v in params.items() if k[:-1] not in norm_to_conv}
    for (*module, name), mean in stats.items():
        if name != "mean":
            continue
        module = tuple(module)
        var = stats[(*module, "var")]
        affine = params if (*module, "scale") in params else stats  # a frozen BatchNorm keeps it in batch_stats
        gamma, beta = affine[(*module, "scale")], affine[(*module, "bias")]
        multiplier = gamma * jnp.reciprocal(jnp.sqrt(var + model.bn_epsilon))
        conv = norm_to_conv[module]
        kernel = params[(*conv, "kernel")]
        per_output = multiplier.shape[:-1] + (1,) * (kernel.ndim - multiplier.ndim) + multiplier.shape[-1:]
        folded[(*conv, "kernel")] = kernel * multiplier.reshape(per_output)  # scanned kernels lead with the block axis
        folded[(*conv, "bias")] = beta - mean * multiplier
    return model.clone(folded=True), {"params": traverse_util.unflatten_dict(folded)}
