"""What the subcommands share: the program's name, the one error they raise, and argument
types that check a value as it is parsed (``argument --mid: must be a positive integer; got 0``)."""

from __future__ import annotations

import argparse
from contextlib import contextmanager

from .. import _checks, arch, errors
from .._files import refused_path
from ..errors import InputError

PROG = "resnet-bottleneck"


class UsageError(InputError):
    """Bad command-line input (an :class:`~resnet_bottleneck.errors.InputError`): reported as
    ``PROG COMMAND: error: message``, exit status 2.

    ``details``, if any, is printed below that line under ``--verbose``.
    """

    def __init__(self, message: str, prog: str | None = None, details: str | None = None):
        super().__init__(message)
        self.prog = prog
        self.details = details


@contextmanager
def argument(name: str):
    """Bad input found inside names the command-line argument it came from, as argparse's own
    errors do: ``argument NAME: message``.

    Bad input is the library's :class:`~resnet_bottleneck.errors.InputError`, or an ``OSError`` of the
    file system refusing the argument's path (no such folder, no permission); a library error of another
    kind (a failed write: exit status 1) passes unchanged, and anything else is a bug and passes too.
    """
    try:
        yield
    except UsageError:
        raise
    except errors.InputError as err:
        raise _usage(name, err) from None
    except errors.Error:
        raise
    except OSError as err:
        refused = refused_path(err, getattr(err, "filename", None) or name, "it")
        if isinstance(refused, errors.WriteError):  # a full disk is not the argument's fault: exit status 1
            raise refused from None
        raise _usage(name, err) from None


def _usage(name: str, err: Exception) -> UsageError:
    details = err.details() if callable(getattr(err, "details", None)) else None
    return UsageError(f"argument {name}: {err}", details=details)


def print_skipped(paths: list[str], shown: int = 10) -> None:
    """The unreadable images a run or an evaluation left out, on one line (none: nothing)."""
    if paths:
        more = " ..." if len(paths) > shown else ""
        print(f"skipped {len(paths)} unreadable image(s): {', '.join(paths[:shown])}{more}")


def parser_type(check: _checks.Kind, name: str):
    """The argparse type of a kind of value (:class:`_checks.Kind`): the library's own check of the parsed
    value, told as ``must be <expected>; got <text>`` (argparse adds ``argument --flag:``)."""

    def parse(text: str):
        try:
            return check.from_text(text)
        except InputError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse.__name__ = name
    return parse


def kind(name: str):
    """The argparse type of ``_checks.KINDS[name]``."""
    return parser_type(_checks.KINDS[name], name)


positive_int = kind("positive_int")
count = kind("count")
seed = kind("seed")
non_negative = kind("non_negative")


def model_name(text: str) -> str:
    """argparse type: a name of the model family (:data:`resnet_bottleneck.arch.FAMILY`), with the nearest
    name suggested for a typo."""
    problem = _checks.name_problem(text, tuple(arch.FAMILY))
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def open_model(weights: str, model: str | None, verb: str):
    """``(model, variables, metadata, (image size, mean, std))`` of our model for ``--runtime jax``,
    preprocessed as its file says; an ``.onnx`` file is pointed to the runtimes that run it (``verb`` it)."""
    from ..inference import load_model
    from ..io.metadata import preprocessing

    if weights.lower().endswith(".onnx"):
        raise UsageError(
            f"argument --runtime: jax runs our model files; {weights} is an ONNX file: {verb} it with --runtime "
            "auto (the default), onnxruntime or openvino"
        )
    with argument("--weights"):
        model, variables, metadata = load_model(weights, model)
        return model, variables, metadata, preprocessing(metadata, weights)


#: The ``--runtime`` choices that run an ``.onnx`` file.
ONNX_RUNTIMES = ("onnxruntime", "openvino")
#: Every ``--runtime`` choice; ``auto`` (the default) is :func:`runtime_for` the weights.
RUNTIME_CHOICES = ("auto", "jax", *ONNX_RUNTIMES)


def add_runtime_arguments(parser, verb: str) -> None:
    """``--runtime`` (auto, jax, onnxruntime, openvino) and ``--precision`` (OpenVINO's f32 or bf16), for
    ``verb``; ``main`` turns ``auto`` into :func:`runtime_for` ``--weights`` before the command runs."""
    parser.add_argument(
        "--runtime",
        choices=RUNTIME_CHOICES,
        default="auto",
        help=f"what to {verb} --weights with. auto (the default): jax for our model files; for an .onnx file from "
        "export, the runtime measured faster for it on x86 CPUs: openvino for an int8 file where it is installed "
        "(pip install 'resnet-bottleneck[openvino]'), else onnxruntime",
    )
    parser.add_argument(
        "--precision",
        choices=("f32", "bf16"),
        help="what --runtime openvino computes float parts in: f32 (the default) or bf16 (CPUs with bfloat16 "
        "arithmetic; faster, about 3 significant digits)",
    )


def add_model_arguments(parser, verb: str, weights_help: str) -> None:
    """``--weights`` (required, ``weights_help``), ``--model``, ``--runtime``/``--precision`` (for ``verb``) and
    ``--labels``: how ``predict`` and ``serve`` name the classifier they open with :func:`open_classifier`."""
    parser.add_argument("--weights", required=True, help=weights_help)
    parser.add_argument(
        "--model",
        type=model_name,
        help="the model name, e.g. resnet50: needed for torchvision's and timm's weights; our files name theirs",
    )
    add_runtime_arguments(parser, verb)
    parser.add_argument(
        "--labels", help="a text file with one class name per line (overrides the weights' own names and ImageNet's)"
    )


def runtime_for(weights: str | None, precision: str | None = None) -> str:
    """``--runtime auto``'s choice for ``weights``: an ``.onnx`` file's default runtime
    (:func:`~resnet_bottleneck.io.onnx.default_runtime`: OpenVINO for int8 where installed, else ONNX Runtime),
    OpenVINO for one asked for ``precision`` bf16 (the runtime that computes in it); ``jax`` for anything else
    (our model files, torchvision's and timm's weights)."""
    if weights is None or not str(weights).lower().endswith(".onnx"):
        return "jax"
    from ..io.onnx import default_runtime, file_metadata

    runtime = default_runtime(file_metadata(weights))
    return "openvino" if runtime == "onnxruntime" and precision == "bf16" else runtime


def resolve_runtime(args):
    """``args`` with ``runtime`` ``auto`` replaced by :func:`runtime_for` its ``weights`` and ``precision``
    (other values and commands without ``--runtime`` unchanged)."""
    if getattr(args, "runtime", None) == "auto":
        args.runtime = runtime_for(getattr(args, "weights", None), getattr(args, "precision", None))
    return args


def open_onnx(weights: str, model: str | None, runtime: str = "onnxruntime", precision: str | None = None):
    """``(classifier, number of classes, image size)`` of an ``.onnx`` file for ``--runtime onnxruntime`` or
    ``openvino`` (in ``precision``): checked against ``--model`` when the file names its model
    (:func:`~resnet_bottleneck.inference.onnx_num_classes` counts its classes)."""
    from ..errors import SettingError
    from ..inference import onnx_num_classes
    from ..io.metadata import DEFAULT_IMAGE_SIZE
    from ..io.onnx import load_onnx

    if precision not in (None, "f32") and runtime != "openvino":
        raise UsageError(f"argument --precision: {precision} runs on OpenVINO: add --runtime openvino")
    with argument("--weights"):
        try:
            classifier = load_onnx(weights, runtime=runtime, precision=precision)
        except SettingError as err:  # --precision bf16 on a CPU without it
            raise UsageError(f"argument --{err.field}: {err.message}") from None
        except ImportError as err:  # the runtime is not installed
            raise UsageError(f"argument --runtime: {err}") from None
    named = classifier.metadata.get("model")
    if model is not None and named is not None and named != model:
        raise UsageError(f"argument --model: {weights} holds {named!r}, not {model!r}")
    image_size = classifier.image_size or DEFAULT_IMAGE_SIZE
    with argument("--weights"):
        num_classes = onnx_num_classes(classifier)
    return classifier, num_classes, image_size


def open_classifier(weights: str, model: str | None, runtime: str = "jax", precision: str | None = None):
    """``(probabilities of a uint8 NHWC batch, number of classes, metadata, image size, (crop_pct,
    interpolation))``: our model on JAX, or an ``.onnx`` file on ONNX Runtime or OpenVINO (its metadata, or
    its fixed input size, sets the transform). What ``predict`` and ``serve`` run; bad input is told as
    ``argument --weights: ...`` (``--model``, ``--runtime``, ``--precision``)."""
    from ..inference import jax_classifier, onnx_classifier
    from ..io.metadata import eval_crop

    if runtime in ONNX_RUNTIMES:
        classifier, num_classes, image_size = open_onnx(weights, model, runtime, precision)
        probabilities = onnx_classifier(classifier)

        def forward(images):
            with argument("--weights"):  # ONNX Runtime could not run the file on these images
                return probabilities(images)

        crop = (classifier.crop_pct, classifier.interpolation)
        return forward, num_classes, classifier.metadata, image_size, crop
    if precision is not None:
        raise UsageError(f"argument --precision: {precision} is for --runtime openvino")
    model_, variables, metadata, (image_size, mean, std) = open_model(weights, model, "run")
    with argument("--weights"):
        crop = eval_crop(metadata, weights)
    return jax_classifier(model_, variables, mean, std), model_.num_classes, metadata, image_size, crop
