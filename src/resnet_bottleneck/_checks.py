"""Argument checks shared by the functional API, the models and the CLI.

Every check raises ``TypeError`` (wrong kind of thing) or ``ValueError`` (right kind,
wrong value) with a message that names the argument, shows what it got and says what
was expected.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SEED_LIMIT = 2**32


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def positive_int(name: str, value: Any) -> int:
    """``value`` as a Python int, or a clear error if it is not a positive integer."""
    if not _is_int(value):
        raise TypeError(f"{name} must be a positive integer; got {_describe(value)}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer; got {int(value)}")
    return int(value)


def int_in_range(name: str, value: Any, low: int, high: int, meaning: str = "") -> int:
    """``value`` as a Python int in ``[low, high]``; ``meaning`` explains the range in messages."""
    expected = f"{name} must be an integer from {low} to {high}{meaning}"
    if not _is_int(value):
        raise TypeError(f"{expected}; got {_describe(value)}")
    if not low <= value <= high:
        raise ValueError(f"{expected}; got {int(value)}")
    return int(value)


def seed(value: Any, name: str = "seed") -> int:
    """A PRNG seed in ``[0, 2**32)``.

    ``jax.random.PRNGKey`` keeps only the low 32 bits of larger seeds (``2**32`` gives
    the key of ``0``), so two different seeds would silently be the same model.
    """
    if not _is_int(value):
        raise TypeError(f"{name} must be an integer in [0, 2**32); got {_describe(value)}")
    if not 0 <= int(value) < SEED_LIMIT:
        raise ValueError(f"{name} must be an integer in [0, 2**32); got {int(value)}")
    return int(value)


def one_of(name: str, value: Any, allowed: tuple) -> Any:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value


def real_array(name: str, value: Any, ndim: int, layout: str) -> np.ndarray:
    """``value`` as a finite, real-valued numpy array with ``ndim`` non-empty axes.

    Args:
      name: the argument's name, for messages.
      value: any array-like (numpy or JAX array, nested lists, ...).
      ndim: the required number of axes.
      layout: the axes' meaning for messages, e.g. ``"(H, W, C)"``.
    """
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be a real-valued {ndim}-D array {layout}; got {_describe(value)}")
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as err:
        raise TypeError(
            f"{name} must be a real-valued {ndim}-D array {layout}; got {_describe(value)}, "
            f"which is not a regular array ({err})"
        ) from None
    # Integer and floating kinds (bfloat16 included); bool, complex, str, object are refused.
    is_real = array.dtype.kind in "iuf" or array.dtype.name in ("bfloat16", "float8_e4m3fn", "float8_e5m2")
    if not is_real:
        raise TypeError(f"{name} must hold real numbers (an integer or floating dtype); got dtype {array.dtype}")
    if array.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array {layout}; got shape {array.shape} ({array.ndim}-D)")
    if 0 in array.shape:
        raise ValueError(f"{name} must have no empty axis {layout}; got shape {array.shape}")
    if array.dtype.kind not in "iu":
        finite = np.isfinite(array)
        if not finite.all():
            bad = np.argwhere(~finite)
            first = tuple(int(i) for i in bad[0])
            raise ValueError(
                f"{name} must be finite; got {len(bad)} NaN/Inf value(s), the first at index {first} ({array[first]!r})"
            )
    return array
