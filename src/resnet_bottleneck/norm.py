"""BatchNorm with PyTorch's conventions, for the models.

Flax's ``nn.BatchNorm`` (the specification's, and the blocks' default) computes the batch variance
as ``E[x^2] - E[x]^2`` and folds the *biased* variance into its running average. PyTorch
computes ``E[(x - E[x])^2]`` and folds the *unbiased* variance (``n / (n - 1)``) into
``running_var``. A model trained here and run in torchvision (or the reverse) only keeps
its running statistics if the update is the same, so the models use this module. The
variables are Flax's (``params: scale, bias``; ``batch_stats: mean, var``).

``momentum`` is Flax's convention, the weight of the old value: PyTorch's ``0.1`` is ``0.9``.
With ``momentum=0.99, unbiased_running_var=False, use_fast_variance=True`` it is Flax's
``nn.BatchNorm`` (:data:`FLAX_BATCH_NORM`, the blocks' default): same variables, same
statistics, same running averages.

In training mode the gradient is written by hand (:func:`batch_norm`), not derived by
autodiff: two passes over the activations instead of the several that autodiff's chain
through mean, variance and normalisation makes, which matters because BatchNorm is
memory-bound (figures in BENCHMARKS.md).

:class:`FrozenBatchNorm` is torchvision's ``FrozenBatchNorm2d`` (detectron2's default for
detection backbones): statistics and affine fixed, no gradient, no update.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def _channels(v, ndim: int):
    """A per-channel vector shaped to broadcast against an ``ndim``-d activation."""
    return v.reshape((1,) * (ndim - 1) + (-1,))


def _statistics(x, fast_variance: bool, axis_name: str | None = None):
    """Per-channel batch mean and biased variance, averaged over ``axis_name`` if given."""
    axes = tuple(range(x.ndim - 1))
    average = (lambda v: v) if axis_name is None else (lambda v: jax.lax.pmean(v, axis_name))
    mean = average(x.mean(axes))
    if fast_variance:  # Flax's default: E[x^2] - E[x]^2, one pass, clipped at 0
        return mean, jnp.maximum(0.0, average(jnp.square(x).mean(axes)) - jnp.square(mean))
    return mean, average(jnp.square(x - _channels(mean, x.ndim)).mean(axes))  # two passes, as PyTorch


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm(x, scale, bias, epsilon: float, fast_variance: bool):
    """Training-mode BatchNorm over all axes but the last: ``(y, mean, var)``, in float32 or wider.

    ``y = (x - mean) * rsqrt(var + epsilon) * scale + bias`` with the batch's ``mean``
    and biased ``var``; ``fast_variance`` computes ``var`` as ``E[x^2] - E[x]^2`` (Flax's
    default) instead of ``E[(x - E[x])^2]``. The gradient, of all three outputs, is the
    closed form: one pass of reductions and one elementwise pass over the activations.
    """
    return _batch_norm_fwd(x, scale, bias, epsilon, fast_variance)[0]


def _batch_norm_fwd(x, scale, bias, epsilon, fast_variance):
    xs = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    mean, var = _statistics(xs, fast_variance)
    inv = jax.lax.rsqrt(var + epsilon)
    y = (xs - _channels(mean, x.ndim)) * _channels(inv * scale, x.ndim) + _channels(bias, x.ndim)
    return (y, mean, var), (x, mean, inv, scale)


def _batch_norm_bwd(epsilon, fast_variance, residuals, cotangents):
    x, mean, inv, scale = residuals
    dy, dmean, dvar = cotangents
    axes, n = tuple(range(x.ndim - 1)), x.size // x.shape[-1]
    xs = x.astype(dy.dtype)
    dbias = dy.sum(axes)
    # sum(dy * x_hat), from sum(dy * x): written with (x - mean) XLA would keep the forward's
    # copy of (x - mean) alive until here, one more activation per BatchNorm (+50% memory
    # for ResNet-50). The cancellation costs ~|mean| / std ulps, harmless in float32.
    dscale = ((dy * xs).sum(axes) - mean * dbias) * inv
    a = inv * scale
    # dx = a (dy - mean(dy) - x_hat mean(dy x_hat)) + dmean / n + 2 dvar (x - mean) / n
    slope = (a * inv * dscale - 2.0 * dvar) / n
    offset = (dmean - a * dbias) / n
    centred = xs - _channels(mean, x.ndim)
    dx = _channels(a, x.ndim) * dy - _channels(slope, x.ndim) * centred + _channels(offset, x.ndim)
    return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(scale.dtype)


batch_norm.defvjp(_batch_norm_fwd, _batch_norm_bwd)


def normalize(
    x,
    scale,
    bias,
    ra_mean,
    ra_var,
    *,
    use_running_average: bool,
    momentum: float,
    epsilon: float,
    unbiased_running_var: bool,
    use_fast_variance: bool,
    axis_name: str | None,
    dtype: Any,
    param_dtype: Any,
):
    """One BatchNorm application as a pure function: ``(y, (new_mean, new_var) or None)``.

    The arithmetic of :class:`BatchNorm` (Linen) and of its Flax NNX twin
    (:class:`resnet_bottleneck.nnx.BatchNorm`), so that the two give the same bits: batch
    statistics through :func:`batch_norm` (or, averaged over ``axis_name``, through autodiff
    of the collectives), or the running averages; and the running averages' update, with
    the unbiased variance if ``unbiased_running_var``. Arguments are the attributes of
    :class:`BatchNorm` and its variables' values.
    """
    stat_dtype = jnp.promote_types(x.dtype, jnp.float32)
    dtype = dtype if dtype is not None else jnp.result_type(x.dtype, param_dtype)
    sync = axis_name is not None
    if use_running_average:
        mean, var = ra_mean.astype(stat_dtype), ra_var.astype(stat_dtype)
    elif sync:  # statistics averaged over devices: autodiff through the collectives
        mean, var = _statistics(x.astype(stat_dtype), use_fast_variance, axis_name)
    else:
        y, mean, var = batch_norm(x, scale.astype(stat_dtype), bias.astype(stat_dtype), epsilon, use_fast_variance)
    if use_running_average or sync:
        multiplier = jax.lax.rsqrt(var + epsilon) * scale.astype(stat_dtype)
        shift = bias.astype(stat_dtype) - mean * multiplier
        y = x.astype(stat_dtype) * _channels(multiplier, x.ndim) + _channels(shift, x.ndim)
    updated = None
    if not use_running_average:
        n = math.prod(x.shape[:-1]) * (jax.lax.psum(1, axis_name) if sync else 1)
        folded = var * (n / max(n - 1, 1)) if unbiased_running_var else var
        updated = (
            momentum * ra_mean + (1 - momentum) * mean.astype(param_dtype),
            momentum * ra_var + (1 - momentum) * folded.astype(param_dtype),
        )
    return y.astype(dtype), updated


class BatchNorm(nn.Module):
    """Batch normalisation over all axes but the last, with PyTorch's statistics.

    Attributes:
      use_running_average: normalise with the running averages (eval) instead of the
        batch's statistics (train); may also be passed to ``__call__``.
      momentum: weight of the old running value (Flax's convention; PyTorch's 0.1 is 0.9).
      epsilon: added to the variance.
      unbiased_running_var: fold ``var * n / (n - 1)`` into the running variance, as
        PyTorch does; ``False`` folds the biased variance, as ``flax.linen.BatchNorm``.
      use_fast_variance: batch variance as ``E[x^2] - E[x]^2`` (Flax's default; one pass,
        less exact when the mean is large against the spread) instead of PyTorch's
        ``E[(x - E[x])^2]``.
      axis_name: a mapped axis (``pmap``/``shard_map``) to average the statistics over.
      dtype: output dtype; statistics are always computed in float32 or wider.
      param_dtype: dtype of ``scale``, ``bias`` and the running statistics.
    """

    use_running_average: bool | None = None
    momentum: float = 0.9
    epsilon: float = 1e-5
    unbiased_running_var: bool = True
    use_fast_variance: bool = False
    axis_name: str | None = None
    dtype: Any = None
    param_dtype: Any = jnp.float32
    scale_init: Callable = nn.initializers.ones
    bias_init: Callable = nn.initializers.zeros

    @nn.compact
    def __call__(self, x, use_running_average: bool | None = None):
        use_running_average = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
        features = (x.shape[-1],)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros(features, self.param_dtype))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones(features, self.param_dtype))
        scale = self.param("scale", self.scale_init, features, self.param_dtype)
        bias = self.param("bias", self.bias_init, features, self.param_dtype)
        y, updated = normalize(
            x,
            scale,
            bias,
            ra_mean.value,
            ra_var.value,
            use_running_average=use_running_average,
            momentum=self.momentum,
            epsilon=self.epsilon,
            unbiased_running_var=self.unbiased_running_var,
            use_fast_variance=self.use_fast_variance,
            axis_name=None if self.is_initializing() else self.axis_name,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        if updated is not None and not self.is_initializing():
            ra_mean.value, ra_var.value = updated
        return y


#: Flax's ``nn.BatchNorm`` in training mode, with the hand-written gradient: the blocks' default.
FLAX_BATCH_NORM = partial(
    BatchNorm, use_running_average=False, momentum=0.99, unbiased_running_var=False, use_fast_variance=True
)


class FrozenBatchNorm(nn.Module):
    """BatchNorm with its statistics and its affine fixed: torchvision's ``FrozenBatchNorm2d``.

    ``y = x * m + (bias - mean * m)`` with ``m = scale * rsqrt(var + epsilon)``, in training
    and in evaluation alike. The four vectors keep :class:`BatchNorm`'s names (``scale``,
    ``bias``, ``mean``, ``var``) but all live in ``batch_stats``, as torchvision holds all
    four as buffers: an optimizer over ``params`` never sees them, autodiff gives them no
    gradient, ``count_params`` does not count them (torchvision's ``parameters()`` does
    not either), and nothing ever writes them. Gradients still flow through to ``x``.

    Attributes:
      epsilon: added to the variance (torchvision's ``eps``, 1e-5).
      dtype: output dtype; the arithmetic is in float32 or wider.
      param_dtype: dtype of the four vectors.
      scale_init, bias_init: their initial values (``zero_init_last`` zeroes the scale).
    """

    epsilon: float = 1e-5
    dtype: Any = None
    param_dtype: Any = jnp.float32
    scale_init: Callable = nn.initializers.ones
    bias_init: Callable = nn.initializers.zeros

    @nn.compact
    def __call__(self, x):
        features = (x.shape[-1],)
        vectors = {
            "scale": self.variable(
                "batch_stats", "scale", lambda: self.scale_init(self.make_rng("params"), features, self.param_dtype)
            ),
            "bias": self.variable(
                "batch_stats", "bias", lambda: self.bias_init(self.make_rng("params"), features, self.param_dtype)
            ),
            "mean": self.variable("batch_stats", "mean", lambda: jnp.zeros(features, self.param_dtype)),
            "var": self.variable("batch_stats", "var", lambda: jnp.ones(features, self.param_dtype)),
        }
        return frozen_normalize(
            x,
            *(vectors[k].value for k in ("scale", "bias", "mean", "var")),
            epsilon=self.epsilon,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )


def frozen_normalize(x, scale, bias, mean, var, *, epsilon: float, dtype: Any, param_dtype: Any):
    """:class:`FrozenBatchNorm`'s arithmetic (and its NNX twin's), a pure function of the four vectors."""
    stat_dtype = jnp.promote_types(x.dtype, jnp.float32)
    scale, bias, mean, var = (jax.lax.stop_gradient(v).astype(stat_dtype) for v in (scale, bias, mean, var))
    multiplier = scale * jax.lax.rsqrt(var + epsilon)
    shift = bias - mean * multiplier
    dtype = dtype if dtype is not None else jnp.result_type(x.dtype, param_dtype)
    y = x.astype(stat_dtype) * _channels(multiplier, x.ndim) + _channels(shift, x.ndim)
    return y.astype(dtype)
