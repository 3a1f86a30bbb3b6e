"""``resnet-bottleneck evaluate``: top-1, top-5 and loss of a model on a folder, or on its run's held-out images.

The same evaluation as training's (``training.evaluate``): the evaluation transform at the model's
image size, its normalisation, batches sharded over every device. A run's model file evaluated on
the run's held-out split scores exactly the run's last reported test accuracy. ``--runtime
onnxruntime`` evaluates an ``.onnx`` file from ``export`` instead, with ONNX Runtime: the same
pipeline, transform and sums, nothing compiled by JAX.
"""

from __future__ import annotations

import json

from ._common import (
    ONNX_RUNTIMES,
    UsageError,
    add_runtime_arguments,
    argument,
    count,
    model_name,
    open_model,
    open_onnx,
    positive_int,
    print_skipped,
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
        "or timm's weights (with --model); an .onnx file from export with --runtime onnxruntime",
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


def _run(args) -> int:
    from .. import data
    from ..errors import InputError
    from ..inference import evaluation_folder, match_classes
    from ..io import class_names
    from ..io.metadata import eval_crop, recorded_batch_size
    from ..training import evaluate, evaluate_onnx

    if args.runtime in ONNX_RUNTIMES:
        classifier, num_classes, image_size = open_onnx(args.weights, args.model, args.runtime, args.precision)
        metadata = classifier.metadata
        if args.image_size is not None and classifier.fixed_size not in (None, args.image_size):
            raise UsageError(
                f"argument --image-size: {args.weights} takes {classifier.fixed_size}x"
                f"{classifier.fixed_size} images; got {args.image_size}"
            )
    else:
        if args.precision is not None:
            raise UsageError(f"argument --precision: {args.precision} is for --runtime openvino")
        model, variables, metadata, (image_size, mean, std) = open_model(args.weights, args.model, "evaluate")
        num_classes = model.num_classes
        with argument("--weights"):
            crop_pct, interpolation = eval_crop(metadata, args.weights)  # its recorded resize, as its run's
    with argument("--weights"):
        names = class_names(num_classes, metadata)
    if args.data is not None:
        source, described = evaluation_folder(args.data), args.data
    else:
        source, described = _split(metadata, args.weights)
    if isinstance(source, data.ImageFiles):
        source = match_classes(source, names, num_classes, described)
    workers = args.workers
    if workers is None:
        workers = data.default_workers(source, "cpu" if args.runtime in ONNX_RUNTIMES else None)
    if args.batch_size is None:
        with argument("--weights"):
            batch_size = recorded_batch_size(metadata, args.weights)
    else:
        batch_size = args.batch_size
    if args.runtime in ONNX_RUNTIMES:
        try:
            scores = evaluate_onnx(
                classifier, source, image_size=args.image_size or image_size, batch_size=batch_size, workers=workers
            )
        except data.DataError:
            raise
        except InputError as err:  # ONNX Runtime could not run the file on these images
            raise UsageError(f"argument --weights: {err}") from None
    else:
        scores = evaluate(
            model,
            variables,
            source,
            image_size=args.image_size or image_size,
            batch_size=batch_size,
            mean=mean,
            std=std,
            workers=workers,
            crop_pct=crop_pct,
            interpolation=interpolation,
        )
    if args.json:
        print(
            json.dumps(
                {
                    "weights": args.weights,
                    "model": metadata.get("model", args.model),
                    "data": described,
                    "images": scores.count,
                    "top1": scores.top1,
                    "top5": scores.top5,
                    "loss": scores.loss,
                    "skipped_images": scores.skipped,
                }
            )
        )
    else:
        print(
            f"top-1 {scores.top1:.4f}, top-5 {scores.top5:.4f}, loss {scores.loss:.4f} on {scores.count} images "
            f"of {described}"
        )
        print_skipped(scores.skipped)
    return 0
