"""Argument checks, defined once for the functional API, the models, the settings of a run and the CLI.

Every kind of value checked in more than one place (a positive integer, a count, a seed, a
fraction, a finite number >= 0, torchvision's ``trainable_layers``, a model name) is one
:class:`Kind` in :data:`KINDS` (or :func:`model_name` for names): the Python API raises the library's
``InputTypeError`` (a ``TypeError``: wrong kind of thing) or ``InputError`` (a ``ValueError``: right
kind, wrong value) as
``name must be ...; got ...``; ``training.Config`` reports ``field: must be ...; got ...``;
the command line's argparse types ``argument --flag: must be ...; got ...``. One verdict
everywhere: a numpy integer is an integer, a bool never is.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InputError, InputTypeError

SEED_LIMIT = 2**32

#: torchvision's ``trainable_layers`` order: with ``trainable_layers=K`` the first K of these learn.
TRAINABLE_LAYERS = ("layer4", "layer3", "layer2", "layer1", "conv1")


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def is_int(value: Any) -> bool:
    """A Python or numpy integer; never a bool (``True`` is not a count)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_number(value: Any) -> bool:
    """A Python or numpy integer or float; never a bool."""
    return is_int(value) or isinstance(value, (float, np.floating))


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python number it holds (so settings stay JSON-serialisable)."""
    return value.item() if isinstance(value, np.generic) else value


@dataclass(frozen=True)
class Kind:
    """One kind of argument, checked the same way wherever it comes from.

    ``expected`` completes "must be ..."; ``parse`` turns command-line text into a value;
    ``typed`` says whether a value is of the right type, ``accepts`` whether it is in range.
    Three ways to apply it, one message style each:

    - :meth:`check` (the Python API): ``TypeError``/``ValueError`` ``"{name} must be ...; got ..."``;
    - :meth:`problem` (settings, which add the name themselves): ``"must be ...; got ..."`` or None;
    - :meth:`from_text` (argparse types): ``ValueError("must be ...; got '...'")``.
    """

    expected: str
    parse: Callable[[str], Any]
    typed: Callable[[Any], bool]
    accepts: Callable[[Any], bool] = lambda value: True

    def valid(self, value: Any) -> bool:
        return self.typed(value) and self.accepts(value)

    def problem(self, value: Any) -> str | None:
        """None if ``value`` is valid, else ``"must be <expected>; got <value!r>"``."""
        return None if self.valid(value) else f"must be {self.expected}; got {_plain(value)!r}"

    def check(self, name: str, value: Any) -> Any:
        """``value`` (a numpy scalar as a Python number) or a ``TypeError``/``ValueError`` naming ``name``."""
        if not self.typed(value):
            raise InputTypeError(f"{name} must be {self.expected}; got {_describe(value)}")
        if not self.accepts(value):
            raise InputError(f"{name} must be {self.expected}; got {_plain(value)!r}")
        return _plain(value)

    def from_text(self, text: str) -> Any:
        """Command-line ``text`` parsed and checked; ``ValueError("must be ...; got ...")`` if it is not valid."""
        try:
            value = self.parse(text)
        except ValueError:
            raise InputError(f"must be {self.expected}; got {text!r}") from None
        if not self.valid(value):
            raise InputError(f"must be {self.expected}; got {value!r}")
        return value


def _in_range(low: float, high: float, low_open: bool = False, high_open: bool = False):
    return lambda v: (low < v if low_open else low <= v) and (v < high if high_open else v <= high)


#: Every kind of argument checked in more than one place: the models, the settings of a run, the CLI.
KINDS = {
    "positive_int": Kind("a positive integer", int, is_int, lambda v: v > 0),
    "count": Kind("an integer >= 0", int, is_int, lambda v: v >= 0),
    "seed": Kind("an integer in [0, 2**32)", int, is_int, lambda v: 0 <= v < SEED_LIMIT),
    "non_negative": Kind("a finite number >= 0", float, is_number, lambda v: math.isfinite(v) and v >= 0),
    "below_one": Kind("in [0, 1)", float, is_number, _in_range(0, 1, high_open=True)),
    "fraction": Kind("in (0, 1)", float, is_number, _in_range(0, 1, low_open=True, high_open=True)),
    "trainable_layers": Kind(
        f"an integer from 0 to {len(TRAINABLE_LAYERS)} (how many of {', '.join(TRAINABLE_LAYERS)} learn)",
        int,
        is_int,
        _in_range(0, len(TRAINABLE_LAYERS)),
    ),
}


def positive_int(name: str, value: Any) -> int:
    """``value`` as a Python int, or a clear error if it is not a positive integer."""
    return KINDS["positive_int"].check(name, value)


def count(name: str, value: Any) -> int:
    """``value`` as a Python int, or a clear error if it is not an integer >= 0."""
    return KINDS["count"].check(name, value)


def non_negative(name: str, value: Any) -> float:
    """``value``, or a clear error if it is not a finite number >= 0."""
    return KINDS["non_negative"].check(name, value)


def fraction(name: str, value: Any) -> float:
    """``value``, or a clear error if it is not a number in (0, 1)."""
    return KINDS["fraction"].check(name, value)


def trainable_layers(value: Any, name: str = "trainable_layers") -> int:
    """How many of layer4, layer3, layer2, layer1, conv1 learn (torchvision's meaning): 0 to 5."""
    return KINDS["trainable_layers"].check(name, value)


def seed(value: Any, name: str = "seed") -> int:
    """A PRNG seed in ``[0, 2**32)``.

    ``jax.random.PRNGKey`` keeps only the low 32 bits of larger seeds (``2**32`` gives
    the key of ``0``), so two different seeds would silently be the same model.
    """
    return KINDS["seed"].check(name, value)


def one_of(name: str, value: Any, allowed: tuple) -> Any:
    if value not in allowed:
        raise InputError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value


def name_problem(value: Any, names: Sequence[str]) -> str | None:
    """None if ``value`` is one of ``names``, else ``"must be one of ...; got '...'"`` with the nearest
    name suggested for a typo (``" (did you mean resnet50?)"``)."""
    if isinstance(value, str) and value in names:
        return None
    close = difflib.get_close_matches(value, list(names), n=1) if isinstance(value, str) else []
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"must be one of {', '.join(names)}; got {value!r}{hint}"


def model_name(value: Any, names: Sequence[str], argument: str = "name") -> str:
    """``value`` if it is one of ``names`` (a registry's model names), else a ``ValueError``
    ``"{argument} must be one of ...; got '...'"`` suggesting the nearest name (a ``TypeError``
    for a value that is not a string at all, as every check here)."""
    if not isinstance(value, str):
        raise InputTypeError(f"{argument} must be one of {', '.join(names)}; got {_describe(value)}")
    problem = name_problem(value, names)
    if problem is not None:
        raise InputError(f"{argument} {problem}")
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
        raise InputTypeError(f"{name} must be a real-valued {ndim}-D array {layout}; got {_describe(value)}")
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as err:
        raise InputTypeError(
            f"{name} must be a real-valued {ndim}-D array {layout}; got {_describe(value)}, "
            f"which is not a regular array ({err})"
        ) from None
    # Integer and floating kinds (bfloat16 included); bool, complex, str, object are refused.
    is_real = array.dtype.kind in "iuf" or array.dtype.name in ("bfloat16", "float8_e4m3fn", "float8_e5m2")
    if not is_real:
        raise InputTypeError(f"{name} must hold real numbers (an integer or floating dtype); got dtype {array.dtype}")
    if array.ndim != ndim:
        raise InputError(f"{name} must be a {ndim}-D array {layout}; got shape {array.shape} ({array.ndim}-D)")
    if 0 in array.shape:
        raise InputError(f"{name} must have no empty axis {layout}; got shape {array.shape}")
    if array.dtype.kind not in "iu":
        finite = np.isfinite(array)
        if not finite.all():
            bad = np.argwhere(~finite)
            first = tuple(int(i) for i in bad[0])
            raise InputError(
                f"{name} must be finite; got {len(bad)} NaN/Inf value(s), the first at index {first} ({array[first]!r})"
            )
    return array
