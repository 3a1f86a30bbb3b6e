"""The ``rngs`` check every NNX constructor here makes first: a wrong one is named, not an
AttributeError deep in flax."""

from __future__ import annotations

from flax import nnx

from .._checks import _describe
from ..errors import InputTypeError


def checked(rngs) -> nnx.Rngs:
    if not isinstance(rngs, nnx.Rngs):
        raise InputTypeError(f"rngs must be a flax.nnx.Rngs, e.g. nnx.Rngs(0); got {_describe(rngs)}")
    return rngs
