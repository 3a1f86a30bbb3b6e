"""The layers beside conv and norm, as JAX functions (shared by Linen and NNX) and small Linen modules.

Pools (max with torch's first-maximum gradient, average with ``ceil_mode``/``count_include_pad``,
timm's ``BlurPool2d``), the global average pool, timm's squeeze-excitation (``SEModule``), ECA
(``EcaModule``) and stochastic depth (``DropPath``). All NHWC; each gives timm's numbers.
"""

from __future__ import annotations

from functools import partial
from math import comb
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from .errors import InputError

# torchvision's (and timm's) initialisation: He normal, fan-out, for every conv.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _views(xp, window: int, stride: int, oh: int, ow: int) -> list:
    """The ``window**2`` strided views of padded ``xp`` with ``oh`` x ``ow`` outputs, one per window offset."""
    n, _, _, c = xp.shape
    return [
        jax.lax.slice(
            xp, (0, i, j, 0), (n, i + stride * (oh - 1) + 1, j + stride * (ow - 1) + 1, c), (1, stride, stride, 1)
        )
        for i in range(window)
        for j in range(window)
    ]


def _windows(x, window: int, stride: int, padding: int) -> list:
    """The ``window**2`` strided views of ``x`` padded with -inf, one per window offset."""
    n, h, w, c = x.shape
    oh, ow = (h + 2 * padding - window) // stride + 1, (w + 2 * padding - window) // stride + 1
    xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)), constant_values=-jnp.inf)
    return _views(xp, window, stride, oh, ow)


def _max_of(views):
    y = views[0]
    for view in views[1:]:
        y = jnp.maximum(y, view)
    return y


def global_average_pool(x):
    """Mean over the spatial axes of NHWC ``x``, as ``(N, C)``; accumulated in float32 or wider.

    Written as a product with a vector of ones, not a reduction: under our XLA:CPU options
    a reduction goes to YNNPACK, whose fusion then swallows every conv of the last stage
    above it and runs them slower than XLA's own kernels.
    """
    n, h, w, c = x.shape
    ones = jnp.ones((h * w,), x.dtype)
    total = jnp.einsum(
        "nsc,s->nc", x.reshape(n, h * w, c), ones, preferred_element_type=jnp.promote_types(x.dtype, jnp.float32)
    )
    return (total / (h * w)).astype(x.dtype)


@partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(x, window: int, stride: int, padding: int):
    """Max-pool over square windows, padding with -inf (as torch); NHWC.

    The same values as ``nn.max_pool``. Its gradient goes to the first maximum of each
    window in row-major order, as PyTorch's does; computed from strided views rather
    than XLA's ``select_and_scatter``, which is several times slower on XLA:CPU.
    """
    return _max_pool_fwd(x, window, stride, padding)[0]


def _max_pool_fwd(x, window, stride, padding):
    y = _max_of(_windows(x, window, stride, padding))
    return y, (x, y)


def _max_pool_bwd(window, stride, padding, residuals, g):
    x, y = residuals
    views, to_input = jax.vjp(lambda x: _windows(x, window, stride, padding), x)
    taken = jnp.zeros(y.shape, bool)
    routed = []
    for view in views:
        first = (view == y) & ~taken
        taken = taken | first
        routed.append(jnp.where(first, g, jnp.zeros_like(g)))
    return to_input(routed)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def _pool_geometry(size: int, window: int, stride: int, padding: int, ceil_mode: bool, count_include_pad: bool):
    """torch's output size along one axis, the padding it needs past the end, and each window's divisor."""
    span = size + 2 * padding - window
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1  # torch: the last window must start inside the input or its left padding
    extra = max((out - 1) * stride + window - (size + 2 * padding), 0)
    starts = np.arange(out) * stride
    if count_include_pad:
        counts = np.minimum(starts + window, size + 2 * padding) - starts
    else:
        counts = np.minimum(starts + window, padding + size) - np.maximum(starts, padding)
    return out, extra, counts


def avg_pool(x, window: int, stride: int, padding: int, ceil_mode: bool = False, count_include_pad: bool = True):
    """``torch.nn.AvgPool2d(window, stride, padding, ceil_mode, count_include_pad)`` on NHWC ``x``."""
    _, h, w, _ = x.shape
    oh, eh, ch = _pool_geometry(h, window, stride, padding, ceil_mode, count_include_pad)
    ow, ew, cw = _pool_geometry(w, window, stride, padding, ceil_mode, count_include_pad)
    xp = jnp.pad(x, ((0, 0), (padding, padding + eh), (padding, padding + ew), (0, 0)))
    views = _views(xp, window, stride, oh, ow)
    total = views[0]
    for view in views[1:]:
        total = total + view
    divisor = (ch[:, None] * cw[None, :]).astype(np.float32)[None, :, :, None]
    return (total / jnp.asarray(divisor, total.dtype)).astype(x.dtype)


def blur_filter(window: int) -> np.ndarray:
    """timm's ``BlurPool2d`` filter: the outer product of the binomial coefficients, summing to one."""
    coeffs = np.array([comb(window - 1, k) for k in range(window)], np.float32) / 2 ** (window - 1)
    return coeffs[:, None] * coeffs[None, :]


def blur_pool(x, window: int, stride: int, padding: int):
    """timm's ``BlurPool2d``: reflect-pad ``padding``, the binomial filter on each channel, then ``stride``."""
    c = x.shape[-1]
    xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)), mode="reflect")
    kernel = jnp.asarray(np.tile(blur_filter(window)[:, :, None, None], (1, 1, 1, c)), x.dtype)
    return jax.lax.conv_general_dilated(
        xp, kernel, (stride, stride), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c
    )


def kind_of(table: dict, part: str, kind: str):
    """``table[kind]``, or a ``ValueError`` naming the spec's unknown ``part`` kind and the known ones."""
    if kind not in table:
        raise InputError(f"{part} kind {kind!r} has no implementation here; known: {', '.join(map(repr, table))}")
    return table[kind]


#: Each spec pool kind's implementation: ``(x, pool) -> y`` for a :class:`resnet_bottleneck.arch.Pool`.
POOLS = {
    "max": lambda x, p: max_pool(x, p.kernel, p.stride, p.padding),
    "avg": lambda x, p: avg_pool(x, p.kernel, p.stride, p.padding, p.ceil_mode, p.count_include_pad),
    "blur": lambda x, p: blur_pool(x, p.kernel, p.stride, p.padding),
}


def excite(x, gate):
    """``x`` times the sigmoid of the per-channel ``gate`` ``(N, C)`` (SE's and ECA's last step)."""
    return x * jax.nn.sigmoid(gate)[:, None, None, :].astype(x.dtype)


def eca_gate(pooled, kernel):
    """ECA's 1-D conv across the channels of ``pooled`` ``(N, C)`` with taps ``kernel`` ``(k,)``, zero-padded."""
    k = kernel.shape[0]
    y = jax.lax.conv_general_dilated(
        pooled[:, :, None], kernel.reshape(k, 1, 1).astype(pooled.dtype), (1,), [((k - 1) // 2, (k - 1) // 2)],
        dimension_numbers=("NWC", "WIO", "NWC"),
    )  # fmt: skip
    return y[:, :, 0]


def drop_path(x, rate: float, key):
    """timm's ``drop_path``: each example kept with probability ``1 - rate``, then scaled by ``1 / (1 - rate)``."""
    keep = 1.0 - rate
    mask = jax.random.bernoulli(key, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return x * (mask.astype(x.dtype) / jnp.asarray(keep, x.dtype))


def eca_init(key, shape, dtype=jnp.float32):
    """torch's ``Conv1d`` default for ECA's one input channel: uniform in +-1/sqrt(taps)."""
    bound = 1.0 / np.sqrt(shape[0])
    return jax.random.uniform(key, shape, dtype, -bound, bound)


class SqueezeExcite(nn.Module):
    """timm's ``SEModule`` (Linen): mean, ``fc1`` to ``reduced`` (bias), ReLU, ``fc2`` back (bias), sigmoid gate."""

    reduced: int
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Any = conv_kernel_init

    @nn.compact
    def __call__(self, x):
        dense = partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=self.kernel_init)
        s = nn.relu(dense(self.reduced, name="fc1")(global_average_pool(x)))
        return excite(x, dense(x.shape[-1], name="fc2")(s))


class Eca(nn.Module):
    """timm's ``EcaModule`` (Linen): mean, a ``kernel_size``-tap conv across channels (no bias), sigmoid gate."""

    kernel_size: int
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        k = self.kernel_size
        kernel = self.param("kernel", eca_init, (k, 1, 1), self.param_dtype)
        return excite(x, eca_gate(global_average_pool(x), kernel[:, 0, 0]))


class DropPath(nn.Module):
    """Stochastic depth (Linen): :func:`drop_path` with the ``'dropout'`` RNG unless ``deterministic``."""

    rate: float
    deterministic: bool = False

    @nn.compact
    def __call__(self, x):
        if self.deterministic or self.rate == 0:
            return x
        return drop_path(x, self.rate, self.make_rng("dropout"))
