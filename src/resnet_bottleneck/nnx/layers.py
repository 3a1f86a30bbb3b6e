"""The layers beside conv and norm as Flax NNX modules: twins of :mod:`resnet_bottleneck.layers`.

Each computes with the JAX functions of :mod:`resnet_bottleneck.layers` (the Linen modules' own), so a
converted model gives the Linen model's bits. Layers without variables are modules too (:class:`Act`,
:class:`Pool`, :class:`DropPath`), as torch's ``nn.ReLU`` and ``nn.MaxPool2d``: every spec layer has its
attribute (``model.conv1[2]``, ``model.layer1[0].aa``), so timm's ``nn.Sequential`` indices hold without gaps.

Dropout keys (:class:`DropoutKeys`): one root key per call, each layer's key derived from it as Linen's
``make_rng`` derives it from the ``'dropout'`` key given to ``apply`` (folding in the layer's Linen module
path). So an NNX model called with ``rngs=K`` drops exactly as the Linen model applied with
``rngs={'dropout': K}``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.core.scope import LazyRng

from .. import arch
from .. import layers as linen_layers
from .._checks import _describe
from ..errors import InputError, InputTypeError
from . import _rngs


class Act(nnx.Module):
    """An activation (the spec's :class:`~resnet_bottleneck.arch.Act`; ``kind`` ``'relu'``): no variables."""

    def __init__(self, kind: str = "relu"):
        if kind != "relu":
            raise InputError(f"activation kind must be 'relu'; got {kind!r}")
        self.kind = kind

    def __call__(self, x):
        return nnx.relu(x)


class Pool(nnx.Module):
    """A pooling layer, ``spec`` a :class:`~resnet_bottleneck.arch.Pool` (``'max'``, ``'avg'``, ``'blur'``:
    :data:`~resnet_bottleneck.layers.POOLS`); no variables."""

    def __init__(self, spec: arch.Pool):
        linen_layers.kind_of(linen_layers.POOLS, "pool", spec.kind)  # named at construction, as Linen's at the call
        self.spec = spec

    def __call__(self, x):
        return linen_layers.POOLS[self.spec.kind](x, self.spec)


class SqueezeExcite(nnx.Module):
    """timm's ``SEModule``: mean, ``fc1`` to ``reduced`` (bias), ReLU, ``fc2`` back (bias), sigmoid gate.
    The twin of :class:`resnet_bottleneck.layers.SqueezeExcite` (the same ``fc1``/``fc2`` kernels)."""

    def __init__(
        self,
        features: int,
        reduced: int,
        *,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        kernel_init: Any = linen_layers.conv_kernel_init,
        rngs: nnx.Rngs,
    ):
        rngs = _rngs.checked(rngs)
        kind = dict(dtype=dtype, param_dtype=param_dtype, kernel_init=kernel_init, rngs=rngs)
        self.fc1 = nnx.Linear(features, reduced, **kind)
        self.fc2 = nnx.Linear(reduced, features, **kind)

    def __call__(self, x):
        s = nnx.relu(self.fc1(linen_layers.global_average_pool(x)))
        return linen_layers.excite(x, self.fc2(s))


class Eca(nnx.Module):
    """timm's ``EcaModule``: mean, a ``kernel_size``-tap conv across channels (no bias), sigmoid gate.
    Its ``kernel`` has the Linen module's shape, ``(kernel_size, 1, 1)``."""

    def __init__(self, kernel_size: int, *, param_dtype: Any = jnp.float32, dtype: Any = None, rngs: nnx.Rngs):
        rngs = _rngs.checked(rngs)
        self.kernel_size, self.dtype = kernel_size, dtype
        self.kernel = nnx.Param(linen_layers.eca_init(rngs.params(), (kernel_size, 1, 1), param_dtype))

    def __call__(self, x):
        pooled = linen_layers.global_average_pool(x)
        return linen_layers.excite(x, linen_layers.eca_gate(pooled, self.kernel[...][:, 0, 0]))


def _root_key(source):
    """The root dropout key of one call: drawn from an ``nnx.Rngs`` (its ``'dropout'`` stream) or an
    ``nnx.RngStream``, or a JAX key itself."""
    if isinstance(source, nnx.Rngs):
        return source["dropout"]()
    if isinstance(source, nnx.RngStream):
        return source()
    return source  # a JAX key (DropoutKeys checked the type)


class DropoutKeys:
    """The dropout keys of one call: the root drawn from ``source`` on first use (never where nothing
    drops), each layer's key Linen's for the module path ``prefix + names`` (see the module docstring)."""

    def __init__(self, source, prefix: tuple[str, ...] = (), _root: list | None = None):
        if source is not None and not isinstance(source, (nnx.Rngs, nnx.RngStream, jax.Array)):
            raise InputTypeError(
                f"rngs must be a flax.nnx.Rngs, an nnx.RngStream or a JAX key; got {_describe(source)}"
            )
        self.source, self.prefix = source, prefix
        self._root = [] if _root is None else _root  # shared by children: one root per call

    @classmethod
    def of(cls, rngs) -> DropoutKeys:
        """``rngs`` as keys: itself if already :class:`DropoutKeys`."""
        return rngs if isinstance(rngs, DropoutKeys) else cls(rngs)

    def child(self, name: str) -> DropoutKeys:
        """The keys of the submodule ``name`` (its Linen module name)."""
        return DropoutKeys(self.source, (*self.prefix, name), self._root)

    def key(self, name: str):
        """The key Linen's ``make_rng('dropout')`` gives the module ``name`` here, on its first call."""
        if not self._root:
            if self.source is None:
                raise InputError(
                    "this model drops (drop_rate or drop_path_rate > 0) in training mode and has no dropout "
                    "rngs: pass rngs=nnx.Rngs(dropout=...) (or a JAX key) to the call, or call model.eval()"
                )
            self._root.append(_root_key(self.source))
        return LazyRng.create(self._root[0], *self.prefix, name, 1).as_jax_rng()


class DropPath(nnx.Module):
    """Stochastic depth: :func:`resnet_bottleneck.layers.drop_path` in training mode (``deterministic``
    false, set by ``model.train()`` / ``model.eval()``), the identity otherwise."""

    def __init__(self, rate: float, *, deterministic: bool = False):
        self.rate, self.deterministic = rate, deterministic

    def __call__(self, x, *, rngs=None, name: str = "drop_path"):
        """``rngs``: an ``nnx.Rngs`` (its ``'dropout'`` stream), a JAX key or :class:`DropoutKeys`;
        ``name``: this layer's Linen module name (the key depends on it)."""
        if self.deterministic or self.rate == 0:
            return x
        return linen_layers.drop_path(x, self.rate, DropoutKeys.of(rngs).key(name))

    def set_view(self, deterministic: bool | None = None):
        """For ``nnx.view``: ``deterministic=True`` turns dropping off."""
        if deterministic is not None:
            self.deterministic = deterministic
