"""BatchNorm with PyTorch's conventions, for the models.

Flax's ``nn.BatchNorm`` (the seed's, and the blocks' default) computes the batch variance
as ``E[x^2] - E[x]^2`` and folds the *biased* variance into its running average. PyTorch
computes ``E[(x - E[x])^2]`` and folds the *unbiased* variance (``n / (n - 1)``) into
``running_var``. A model trained here and run in torchvision (or the reverse) only keeps
its running statistics if the update is the same, so the models use this module. The
variables are Flax's (``params: scale, bias``; ``batch_stats: mean, var``).

``momentum`` is Flax's convention, the weight of the old value: PyTorch's ``0.1`` is ``0.9``.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


class BatchNorm(nn.Module):
    """Batch normalisation over all axes but the last, with PyTorch's statistics.

    Attributes:
      use_running_average: normalise with the running averages (eval) instead of the
        batch's statistics (train); may also be passed to ``__call__``.
      momentum: weight of the old running value (Flax's convention; PyTorch's 0.1 is 0.9).
      epsilon: added to the variance.
      unbiased_running_var: fold ``var * n / (n - 1)`` into the running variance, as
        PyTorch does; ``False`` folds the biased variance, as ``flax.linen.BatchNorm``.
      axis_name: a mapped axis (``pmap``/``shard_map``) to average the statistics over.
      dtype: output dtype; statistics are always computed in float32 or wider.
      param_dtype: dtype of ``scale``, ``bias`` and the running statistics.
    """

    use_running_average: bool | None = None
    momentum: float = 0.9
    epsilon: float = 1e-5
    unbiased_running_var: bool = True
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
        stat_dtype = jnp.promote_types(x.dtype, jnp.float32)
        broadcast = (1,) * (x.ndim - 1) + features

        if use_running_average:
            mean, var = ra_mean.value.astype(stat_dtype), ra_var.value.astype(stat_dtype)
        else:
            axes = tuple(range(x.ndim - 1))
            xs = x.astype(stat_dtype)
            sync = self.axis_name is not None and not self.is_initializing()
            mean = xs.mean(axes)
            if sync:
                mean = jax.lax.pmean(mean, self.axis_name)
            var = jnp.square(xs - mean.reshape(broadcast)).mean(axes)  # two passes, as PyTorch
            if sync:
                var = jax.lax.pmean(var, self.axis_name)
            if not self.is_initializing():
                n = math.prod(x.shape[:-1]) * (jax.lax.psum(1, self.axis_name) if sync else 1)
                folded = var * (n / max(n - 1, 1)) if self.unbiased_running_var else var
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean.astype(self.param_dtype)
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * folded.astype(self.param_dtype)

        multiplier = jax.lax.rsqrt(var + self.epsilon) * scale.astype(stat_dtype)
        shift = bias.astype(stat_dtype) - mean * multiplier
        y = x.astype(stat_dtype) * multiplier.reshape(broadcast) + shift.reshape(broadcast)
        dtype = self.dtype if self.dtype is not None else jnp.result_type(x.dtype, self.param_dtype)
        return y.astype(dtype)
