"""The models' normalisations as Flax NNX modules: twins of :mod:`resnet_bottleneck.norm`.

:class:`BatchNorm`, the twin of :class:`resnet_bottleneck.norm.BatchNorm`, is a subclass of
``flax.nnx.BatchNorm`` (the same variables: ``Param`` ``scale``/``bias``, ``BatchStat``
``mean``/``var``; switched by ``model.train()`` / ``model.eval()`` through
``use_running_average``) whose arithmetic is the Linen module's, one function for both:
:func:`resnet_bottleneck.norm.normalize` (batch statistics with the closed-form gradient,
PyTorch's unbiased running variance, Flax's momentum convention). So a model converted from
Linen gives the same bits, and torchvision parity carries over. :class:`FrozenBatchNorm` is
the twin of :class:`resnet_bottleneck.norm.FrozenBatchNorm` the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax.numpy as jnp
from flax import nnx

from .. import norm as linen_norm
from . import _rngs

#: The options of both BatchNorms that change what they compute (the Linen module's attributes).
OPTIONS = ("use_running_average", "momentum", "epsilon", "unbiased_running_var", "use_fast_variance", "axis_name")


class BatchNorm(nnx.BatchNorm):
    """Batch normalisation over all axes but the last, with PyTorch's statistics.

    Args mean what they mean for :class:`resnet_bottleneck.norm.BatchNorm`; the running
    statistics are kept in ``param_dtype`` (``nnx.BatchNorm`` keeps them in float32). Starts
    in training mode (batch statistics), as ``nnx.BatchNorm`` and PyTorch do.
    """

    def __init__(
        self,
        num_features: int,
        *,
        use_running_average: bool = False,
        momentum: float = 0.9,
        epsilon: float = 1e-5,
        unbiased_running_var: bool = True,
        use_fast_variance: bool = False,
        axis_name: str | None = None,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        scale_init: Callable = nnx.initializers.ones_init(),
        bias_init: Callable = nnx.initializers.zeros_init(),
        rngs: nnx.Rngs,
    ):
        super().__init__(
            num_features,
            use_running_average=use_running_average,
            momentum=momentum,
            epsilon=epsilon,
            dtype=dtype,
            param_dtype=param_dtype,
            scale_init=scale_init,
            bias_init=bias_init,
            axis_name=axis_name,
            use_fast_variance=use_fast_variance,
            rngs=_rngs.checked(rngs),
        )
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), param_dtype))
        self.var = nnx.BatchStat(jnp.ones((num_features,), param_dtype))
        self.unbiased_running_var = unbiased_running_var

    def __call__(self, x, use_running_average: bool | None = None):
        """Normalised ``x``; in training mode the running averages are updated in place."""
        use_running_average = self.use_running_average if use_running_average is None else use_running_average
        y, updated = linen_norm.normalize(
            x,
            self.scale[...],
            self.bias[...],
            self.mean[...],
            self.var[...],
            use_running_average=use_running_average,
            momentum=self.momentum,
            epsilon=self.epsilon,
            unbiased_running_var=self.unbiased_running_var,
            use_fast_variance=self.use_fast_variance,
            axis_name=self.axis_name,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        if updated is not None:
            self.mean[...], self.var[...] = updated
        return y


#: Flax's BatchNorm statistics in training mode, with the closed-form gradient: the blocks' default,
#: the twin of :data:`resnet_bottleneck.norm.FLAX_BATCH_NORM`.
FLAX_BATCH_NORM = partial(
    BatchNorm, use_running_average=False, momentum=0.99, unbiased_running_var=False, use_fast_variance=True
)


class FrozenBatchNorm(nnx.Module):
    """BatchNorm with its statistics and its affine fixed (torchvision's ``FrozenBatchNorm2d``):
    the twin of :class:`resnet_bottleneck.norm.FrozenBatchNorm`, one function for both
    (:func:`resnet_bottleneck.norm.frozen_normalize`).

    All four vectors are ``nnx.BatchStat``s, as the Linen module keeps them in ``batch_stats``:
    ``nnx.Optimizer(..., wrt=nnx.Param)`` never sees them and nothing writes them;
    ``train()`` / ``eval()`` change nothing.
    """

    def __init__(
        self,
        num_features: int,
        *,
        epsilon: float = 1e-5,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        scale_init: Callable = nnx.initializers.ones_init(),
        bias_init: Callable = nnx.initializers.zeros_init(),
        rngs: nnx.Rngs,
    ):
        rngs = _rngs.checked(rngs)
        shape = (num_features,)
        self.scale = nnx.BatchStat(scale_init(rngs.params(), shape, param_dtype))
        self.bias = nnx.BatchStat(bias_init(rngs.params(), shape, param_dtype))
        self.mean = nnx.BatchStat(jnp.zeros(shape, param_dtype))
        self.var = nnx.BatchStat(jnp.ones(shape, param_dtype))
        self.num_features, self.epsilon, self.dtype, self.param_dtype = num_features, epsilon, dtype, param_dtype

    def __call__(self, x):
        return linen_norm.frozen_normalize(
            x,
            self.scale[...],
            self.bias[...],
            self.mean[...],
            self.var[...],
            epsilon=self.epsilon,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
