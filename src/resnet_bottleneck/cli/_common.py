"""What the subcommands share: the program's name, the one error they raise, and argument
types that check a value as it is parsed (``argument --mid: must be a positive integer; got 0``)."""

from __future__ import annotations

import argparse
import math
from contextlib import contextmanager

from .._checks import SEED_LIMIT

PROG = "resnet-bottleneck"


class UsageError(Exception):
    """Bad command-line input: reported as ``PROG COMMAND: error: message``, exit status 2.

    ``details``, if any, is printed below that line under ``--verbose``.
    """

    def __init__(self, message: str, prog: str | None = None, details: str | None = None):
        super().__init__(message)
        self.prog = prog
        self.details = details


@contextmanager
def argument(name: str):
    """Bad input found inside names the command-line argument it came from, as argparse's own
    errors do: ``argument NAME: message``."""
    try:
        yield
    except (ValueError, OSError) as err:
        details = err.details() if callable(getattr(err, "details", None)) else None
        raise UsageError(f"argument {name}: {err}", details=details) from None


def print_skipped(paths: list[str], shown: int = 10) -> None:
    """The unreadable images a run or an evaluation left out, on one line (none: nothing)."""
    if paths:
        more = " ..." if len(paths) > shown else ""
        print(f"skipped {len(paths)} unreadable image(s): {', '.join(paths[:shown])}{more}")


def _checked(convert, accept, expected: str):
    """An argparse type: ``convert(text)``, refused as ``must be {expected}; got ...`` unless ``accept(value)``."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {expected}; got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"must be {expected}; got {value}")
        return value

    return parse


positive_int = _checked(int, lambda n: n > 0, "a positive integer")
count = _checked(int, lambda n: n >= 0, "an integer >= 0")
seed = _checked(int, lambda n: 0 <= n < SEED_LIMIT, "an integer in [0, 2**32)")
non_negative = _checked(float, lambda x: math.isfinite(x) and x >= 0, "a finite number >= 0")


def model_name(text: str) -> str:
    """argparse type: a key of ``CONFIGS``, with the nearest name suggested for a typo."""
    import difflib

    from ..models import CONFIGS

    if text not in CONFIGS:
        close = difflib.get_close_matches(text, CONFIGS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(CONFIGS)}; got {text!r}{hint}")
    return text


def open_model(weights: str, model: str | None, verb: str):
    """``(model, variables, metadata, (image size, mean, std))`` of our model for ``--runtime jax``,
    preprocessed as its file says; an ``.onnx`` file is pointed to ``--runtime onnxruntime`` (``verb`` it)."""
    from ..io import load_model
    from ..io.metadata import preprocessing

    if weights.lower().endswith(".onnx"):
        raise UsageError(f"argument --weights: {weights} is an ONNX file; {verb} it with --runtime onnxruntime")
    with argument("--weights"):
        model, variables, metadata = load_model(weights, model)
        return model, variables, metadata, preprocessing(metadata, weights)


def open_onnx(weights: str, model: str | None):
    """``(classifier, number of classes, image size)`` of an ``.onnx`` file for ``--runtime onnxruntime``:
    checked against ``--model`` when the file names its model; a dynamic class axis is found by one run."""
    import numpy as np

    from ..io.metadata import DEFAULT_IMAGE_SIZE
    from ..io.onnx import load_onnx

    with argument("--weights"):
        classifier = load_onnx(weights)
    named = classifier.metadata.get("model")
    if model is not None and named is not None and named != model:
        raise UsageError(f"argument --model: {weights} holds {named!r}, not {model!r}")
    image_size = classifier.image_size or DEFAULT_IMAGE_SIZE
    num_classes = classifier.num_classes
    if num_classes is None:
        with argument("--weights"):
            num_classes = classifier(np.zeros((1, image_size, image_size, 3), np.float32)).shape[1]
    return classifier, num_classes, image_size
