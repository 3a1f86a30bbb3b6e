"""``resnet-bottleneck evaluate``: top-1, top-5 and loss of a model on a folder, or on its run's held-out images.

The same evaluation as training's (``training.evaluate``): the evaluation transform at the model's
image size, its normalisation, batches sharded over every device. A run's model file evaluated on
the run's held-out split scores exactly the run's last reported test accuracy. An ``.onnx`` file from
``export`` is evaluated with ONNX Runtime or OpenVINO (``--runtime auto``, the default, picks the one
measured faster for it): the same pipeline, transform and sums, nothing compiled by JAX. ``--compare B``
scores a second file on the same images in the same pass, with the difference in points and the share of
images where both pick the same class (``training.evaluation.compare``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ._common import (
    ONNX_RUNTIMES,
    RUNTIME_CHOICES,
    UsageError,
    add_runtime_arguments,
    argument,
    count,
    model_name,
    open_model,
    open_onnx,
    positive_int,
    print_skipped,
    runtime_for,
)


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "evaluate",
        help="top-1/top-5 accuracy and loss of a model on an image folder, or on its run's held-out images",
        description="Evaluate a model file (from train or export; or torchvision's or timm's weights with --model) "
        "on --data: "
        "an ImageFolder ROOT/<class>/<image>, or ImageNet's layout, whose val/ is used. Without --data, a run's "
        "model file is evaluated on the run's own held-out images (its metadata records the split). Images get the "
        "evaluation transform at the model's image size and its normalisation, batched over every device.",
    )
    parser.add_argument(
        "--weights",
        required=True,
        help="a model file (train's OUT/model.safetensors, export's), a run directory, or torchvision's "
        "or timm's weights (with --model); an .onnx file from export (float32 or int8)",
    )
    add_runtime_arguments(parser, "evaluate")
    parser.add_argument(
        "--data",
        help="image folder: ROOT/<class>/<image>, or ROOT/val/<class>/<image> (ImageNet's "
        "layout); default: the run's held-out split",
    )
    parser.add_argument("--model", type=model_name, help="the model name: needed for torchvision's and timm's weights")
    parser.add_argument("--batch-size", type=positive_int, help="global batch size (default: the run's, else 64)")
    parser.add_argument("--image-size", type=positive_int, help="evaluation crop (default: the model file's, else 224)")
    parser.add_argument(
        "--workers",
        type=count,
        help="processes decoding images (default: none where the model runs on the CPU, where "
        "they would take its cores: a thread decodes ahead; else the machine's cores)",
    )
    parser.add_argument(
        "--compare",
        metavar="WEIGHTS",
        help="a second model file (any kind --weights takes: an int8 or float32 .onnx, a model file) scored on the "
        "same images in the same pass: prints its top-1/top-5, the difference from --weights in points, and top-1 "
        "agreement (the share of images where both pick the same class)",
    )
    parser.add_argument(
        "--compare-runtime",
        choices=RUNTIME_CHOICES,
        default="auto",
        help="what runs --compare: auto (the default) picks as --runtime does",
    )
    parser.add_argument(
        "--compare-precision", choices=("f32", "bf16"), help="--precision of --compare (--compare-runtime openvino)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(run=run)


def _split(metadata: dict, weights: str):
    """The run's held-out images, as the run listed them, and their description."""
    from ..errors import DataError, InputError
    from ..inference import held_out_split

    try:
        split = held_out_split(metadata, weights)
    except DataError:  # the recorded images: reported as --data's
        raise
    except InputError as err:  # the recorded split itself
        raise UsageError(f"argument --weights: {err}") from None
    if split is None:
        raise UsageError(f"argument --data: required: {weights} records no held-out split (a run's model file does)")
    return split


def run(args) -> int:
    from ..data import DataError

    try:
        return _run(args)
    except DataError as err:  # names its setting: data, batch_size
        raise UsageError(f"argument --{err.field.replace('_', '-')}: {err.message}") from None


@dataclass
class _Side:
    """One model to score: how its logits are computed, its classes, metadata and evaluation transform."""

    weights: str
    runtime: str
    precision: str | None
    num_classes: int
    metadata: dict
    image_size: int
    crop: tuple
    classifier: Any = None  # the OnnxClassifier of an .onnx file
    model: Any = None  # our model and variables on jax
    variables: Any = None
    mean: Any = None
    std: Any = None


def _open(weights: str, model_name: str | None, runtime: str, precision: str | None, flags: tuple, image_size):
    """The :class:`_Side` of ``weights`` run by ``runtime``; ``flags`` are the argument names that set them
    (``--weights``, ``--runtime``, ``--precision``), for the errors; ``image_size`` is ``--image-size``."""
    from ..io.metadata import eval_crop

    weights_flag, runtime_flag, precision_flag = flags
    if runtime in ONNX_RUNTIMES:
        try:
            classifier, num_classes, size = open_onnx(weights, model_name, runtime, precision)
        except UsageError as err:
            raise UsageError(_renamed(str(err), flags)) from None
        if image_size is not None and classifier.fixed_size not in (None, image_size):
            raise UsageError(
                f"argument --image-size: {weights} takes {classifier.fixed_size}x{classifier.fixed_size} images; "
                f"got {image_size}"
            )
        crop = (classifier.crop_pct, classifier.interpolation)
        return _Side(weights, runtime, precision or "f32", num_classes, classifier.metadata, size, crop, classifier)
    if precision is not None:
        raise UsageError(f"argument {precision_flag}: {precision} is for {runtime_flag} openvino")
    try:
        model, variables, metadata, (size, mean, std) = open_model(weights, model_name, "evaluate")
    except UsageError as err:
        raise UsageError(_renamed(str(err), flags)) from None
    with argument(weights_flag):
        crop = eval_crop(metadata, weights)  # its recorded resize, as its run's
    side = _Side(weights, "jax", None, model.num_classes, metadata, size, crop)
    side.model, side.variables, side.mean, side.std = model, variables, mean, std
    return side


def _renamed(message: str, flags: tuple) -> str:
    """An error about ``--weights``/``--runtime``/``--precision`` told about ``flags`` (the --compare ones)."""
    for default, flag in zip(("--weights", "--runtime", "--precision"), flags, strict=True):
        message = message.replace(f"argument {default}:", f"argument {flag}:").replace(f"{default} ", f"{flag} ")
    return message


def _scorer(side: _Side, image_size: int | None):
    from ..training.evaluation import Scorer, jax_logits, onnx_logits

    logits = (
        onnx_logits(side.classifier)
        if side.classifier is not None
        else jax_logits(side.model, side.variables, side.mean, side.std)
    )
    return Scorer(logits, image_size or side.image_size, *side.crop)


def _run(args) -> int:
    from .. import data
    from ..errors import InputError
    from ..inference import evaluation_folder, match_classes
    from ..io import class_names
    from ..io.metadata import recorded_batch_size
    from ..training import evaluate, evaluate_onnx

    if args.compare is None and (args.compare_precision is not None or args.compare_runtime != "auto"):
        flag = "--compare-precision" if args.compare_precision is not None else "--compare-runtime"
        raise UsageError(f"argument {flag}: needs --compare (the second model file)")
    side = _open(
        args.weights,
        args.model,
        args.runtime,
        args.precision,
        ("--weights", "--runtime", "--precision"),
        args.image_size,
    )
    other = None
    if args.compare is not None:
        runtime = args.compare_runtime
        if runtime == "auto":
            runtime = runtime_for(args.compare, args.compare_precision)
        flags = ("--compare", "--compare-runtime", "--compare-precision")
        other = _open(args.compare, args.model, runtime, args.compare_precision, flags, args.image_size)
        if other.num_classes != side.num_classes:
            raise UsageError(
                f"argument --compare: {args.compare} has {other.num_classes} classes and {args.weights} "
                f"{side.num_classes}: only models of the same classes compare"
            )
    metadata = side.metadata
    with argument("--weights"):
        names = class_names(side.num_classes, metadata)
    if args.data is not None:
        source, described = evaluation_folder(args.data), args.data
    else:
        source, described = _split(metadata, args.weights)
    if isinstance(source, data.ImageFiles):
        source = match_classes(source, names, side.num_classes, described)
    workers = args.workers
    if workers is None:
        on_cpu = side.runtime in ONNX_RUNTIMES and (other is None or other.runtime in ONNX_RUNTIMES)
        workers = data.default_workers(source, "cpu" if on_cpu else None)
    if args.batch_size is None:
        with argument("--weights"):
            batch_size = recorded_batch_size(metadata, args.weights)
    else:
        batch_size = args.batch_size
    if other is not None:
        return _compare(args, side, other, source, described, batch_size, workers)
    if side.runtime in ONNX_RUNTIMES:
        try:
            scores = evaluate_onnx(
                side.classifier,
                source,
                image_size=args.image_size or side.image_size,
                batch_size=batch_size,
                workers=workers,
            )
        except data.DataError:
            raise
        except InputError as err:  # the runtime could not run the file on these images
            raise UsageError(f"argument --weights: {err}") from None
    else:
        scores = evaluate(
            side.model,
            side.variables,
            source,
            image_size=args.image_size or side.image_size,
            batch_size=batch_size,
            mean=side.mean,
            std=side.std,
            workers=workers,
            crop_pct=side.crop[0],
            interpolation=side.crop[1],
        )
    if args.json:
        print(json.dumps({**_record(args.weights, side, args.model, scores), "data": described}))
    else:
        print(
            f"top-1 {scores.top1:.4f}, top-5 {scores.top5:.4f}, loss {scores.loss:.4f} on {scores.count} images "
            f"of {described}"
        )
        print_skipped(scores.skipped)
    return 0


def _record(weights: str, side: _Side, model: str | None, scores) -> dict:
    return {
        "weights": weights,
        "model": side.metadata.get("model", model),
        "runtime": side.runtime,
        "precision": side.precision,
        "images": scores.count,
        "top1": scores.top1,
        "top5": scores.top5,
        "loss": scores.loss,
        "skipped_images": scores.skipped,
    }


def _compare(args, side: _Side, other: _Side, source, described: str, batch_size: int, workers: int) -> int:
    """Both models on the same images in one pass: their scores, the difference in points, the agreement."""
    from ..errors import InputError
    from ..training.evaluation import compare

    try:
        result = compare(
            _scorer(side, args.image_size),
            _scorer(other, args.image_size),
            source,
            batch_size=batch_size,
            workers=workers,
        )
    except InputError as err:  # a runtime could not run its file on these images
        raise UsageError(f"argument --weights/--compare: {err}") from None
    first, second = result.first, result.second
    points = {"top1": 100 * (second.top1 - first.top1), "top5": 100 * (second.top5 - first.top5)}
    if args.json:
        print(
            json.dumps(
                {
                    **_record(args.weights, side, args.model, first),
                    "data": described,
                    "compare": _record(args.compare, other, args.model, second),
                    "top1_points": points["top1"],
                    "top5_points": points["top5"],
                    "agreement": result.agreement,
                    "agreeing_images": result.agree,
                }
            )
        )
        return 0

    def label(s: _Side) -> str:
        return f"{s.weights} ({s.runtime}{', ' + s.precision if s.runtime == 'openvino' else ''})"

    for s, scores in ((side, first), (other, second)):
        print(f"top-1 {scores.top1:.4f}, top-5 {scores.top5:.4f}, loss {scores.loss:.4f}: {label(s)}")
    print(
        f"--compare minus --weights: top-1 {points['top1']:+.2f} points, top-5 {points['top5']:+.2f} points; "
        f"top-1 agreement {100 * result.agreement:.2f}% ({result.agree} of {first.count} images of {described})"
    )
    print_skipped(first.skipped)
    return 0
