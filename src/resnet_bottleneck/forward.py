"""The founding specification's functions: one block, freshly initialised, on one image.

``resnet_bottleneck_forward(seed, x, mid_features, out_features)`` batches ``x``,
initialises a :class:`~resnet_bottleneck.blocks.BottleneckBlock` with
``jax.random.PRNGKey(seed)``, applies it with ``mutable=['batch_stats']`` and returns
the output flattened: the textbook solution, within float32 rounding (see README,
"Numerics"). It is compiled once per (shape, dtype, widths), with this backend's
:func:`~resnet_bottleneck.xla.compiler_options`, and reused, so calling it in a loop
costs a dispatch, not a trace of init and apply.
"""

from __future__ import annotations

from functools import partial

import jax
import numpy as np

from . import _checks, xla
from .blocks import BasicBlock, BottleneckBlock
from .errors import InputError


def _init_apply(block, seed, x):
    x_b = x[None, ...]
    variables = block.init(jax.random.PRNGKey(seed), x_b)
    y, _ = block.apply(variables, x_b, mutable=["batch_stats"])
    return y.reshape(-1)


@partial(xla.jit, static_argnums=(0, 1))
def _bottleneck(mid_features: int, out_features: int, seed, x):
    return _init_apply(BottleneckBlock(mid_features, out_features), seed, x)


@partial(xla.jit, static_argnums=(0,))
def _basic(features: int, seed, x):
    return _init_apply(BasicBlock(features), seed, x)


def _image(x, channels: int, channels_arg: str) -> np.ndarray:
    x = _checks.real_array("x", x, 3, "(H, W, C)")
    if x.shape[-1] != channels:
        raise InputError(
            f"x must have {channels_arg}={channels} channels for the identity shortcut; "
            f"got shape {x.shape} ({x.shape[-1]} channels)"
        )
    return x


def resnet_bottleneck_forward(seed: int, x, mid_features: int, out_features: int) -> jax.Array:
    """Run a freshly initialised bottleneck block on one image; return the output flattened.

    Args:
      seed: integer in ``[0, 2**32)``; the block is initialised with ``PRNGKey(seed)``.
      x: real-valued array-like of shape ``(H, W, C)`` with ``C == out_features``.
      mid_features: width of the squeezed 1x1/3x3 convs (usually ``out_features // 4``).
      out_features: output channels; equal to the input's for the identity shortcut.

    Returns:
      A 1-D array of ``H * W * out_features`` values.

    Raises:
      TypeError, ValueError: for an argument that is not what is described above.
    """
    seed = _checks.seed(seed)
    mid_features = _checks.positive_int("mid_features", mid_features)
    out_features = _checks.positive_int("out_features", out_features)
    x = _image(x, out_features, "out_features")
    return _bottleneck(mid_features, out_features, np.uint32(seed), x)


def resnet_basic_forward(seed: int, x, features: int) -> jax.Array:
    """Run a freshly initialised basic block on one image; return the output flattened.

    Args:
      seed: integer in ``[0, 2**32)``; the block is initialised with ``PRNGKey(seed)``.
      x: real-valued array-like of shape ``(H, W, C)`` with ``C == features``.
      features: the block's width and output channels.

    Returns:
      A 1-D array of ``H * W * features`` values.

    Raises:
      TypeError, ValueError: for an argument that is not what is described above.
    """
    seed = _checks.seed(seed)
    features = _checks.positive_int("features", features)
    x = _image(x, features, "features")
    return _basic(features, np.uint32(seed), x)


def worked_example_input() -> np.ndarray:
    """The fixed (4, 4, 4) input of the CLI's worked example: 64 evenly spaced values in [-1, 1]."""
    return np.linspace(-1.0, 1.0, 64, dtype=np.float32).reshape(4, 4, 4)


def bottleneck_walkthrough(x_shape: tuple[int, ...], mid_features: int, out_features: int) -> list[dict]:
    """The specification's walk-through for an input of ``x_shape``: each stage's shape, from the model.

    The shapes are read off the block's own intermediates (``capture_intermediates``),
    evaluated abstractly, so they are the shapes the real forward produces.
    """
    block = BottleneckBlock(mid_features, out_features)
    x_b = jax.ShapeDtypeStruct((1, *x_shape), np.float32)

    def run(x):
        variables = block.init(jax.random.PRNGKey(0), x)
        return block.apply(variables, x, mutable=["batch_stats", "intermediates"], capture_intermediates=True)

    y, state = jax.eval_shape(run, x_b)
    seen = state["intermediates"]

    def shape(name):
        return tuple(seen[name]["__call__"][0].shape)

    return [
        {"step": 1, "op": "x_b = x[None, ...]", "shape": x_b.shape, "note": "batched"},
        {"step": 2, "op": f"Conv1x1({mid_features})", "shape": shape("Conv_0"), "note": "squeeze: channels down"},
        {"step": 3, "op": "BN -> ReLU", "shape": shape("BatchNorm_0"), "note": ""},
        {
            "step": 4,
            "op": f"Conv3x3({mid_features}, 'SAME')",
            "shape": shape("Conv_1"),
            "note": "spatial mixing at low width",
        },
        {"step": 5, "op": "BN -> ReLU", "shape": shape("BatchNorm_1"), "note": ""},
        {"step": 6, "op": f"Conv1x1({out_features})", "shape": shape("Conv_2"), "note": "expand: channels back up"},
        {
            "step": 7,
            "op": "BN -> (+ x_b) -> ReLU",
            "shape": tuple(y.shape),
            "note": "residual add, then the one final ReLU",
        },
        {"step": 8, "op": "reshape to 1-D", "shape": (int(np.prod(y.shape)),), "note": "flattened output"},
    ]
