"""``resnet-bottleneck predict``: top-5 classes of images, with the evaluation transform the model was trained with.

Images stream through the data pipeline (``data.evaluation_batches``): decoded a batch or two
ahead of the model, and each batch's results printed as soon as it is done, so memory does
not grow with the number of images (``inference.predict_files``). A directory stands for every
image under it, recursively, sorted. Paths that do not exist are refused before any work. An
image that cannot be decoded is skipped and the others go on; at the end one line names it
(and counts any others) and the exit status is 2, so a script sees that not every image was
classified. ``--json`` then lists it with its ``error`` in place of ``top5``.

``--runtime auto`` (the default) runs our model files on JAX and an ``.onnx`` file from ``export`` (or any
image classifier of that shape) on the runtime measured faster for it (OpenVINO for int8 where installed,
else ONNX Runtime), compiling nothing with JAX; ``--runtime jax|onnxruntime|openvino`` chooses.
"""

from __future__ import annotations

import json
import sys

from ._common import (
    UsageError,
    add_model_arguments,
    argument,
    count,
    open_classifier,
    positive_int,
)


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "predict",
        help="classify images: top-5 classes with probabilities",
        description="The evaluation transform (resize the shorter side to image size / crop_pct, center crop) at "
        "the model file's image size, crop_pct, interpolation and normalisation (torchvision's ImageNet "
        "preprocessing, bilinear 256 then 224, for files that do not say), then the top-5 classes of each "
        "image, named by --labels, else by the weights file's own class names, else by ImageNet's for a "
        "1,000-class model; otherwise by index. It also runs "
        "an .onnx file from export (its metadata gives the same) or any image classifier with one "
        "[N, 3, H, W] or [N, H, W, 3] float input and one [N, classes] output.",
    )
    parser.add_argument(
        "images", metavar="IMAGE", nargs="+", help="image files, or directories: every image under them, sorted"
    )
    add_model_arguments(
        parser,
        "run",
        "a model file (train's OUT/model.safetensors, export's, convert's), a run directory, or "
        "torchvision's or timm's weights (.pth, .pt, .safetensors); an .onnx file from export (float32 or int8)",
    )
    parser.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass (default 32)")
    parser.add_argument(
        "--workers",
        type=count,
        default=0,
        help="processes decoding images (default 0: one thread, a batch or two ahead)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON list")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="on weights that do not fit --model, list every differing tensor below the one-line error (several lines)",
    )
    parser.set_defaults(run=run)


def _line(result: dict) -> str:
    return (
        result["image"]
        + ": "
        + ", ".join(
            f"{r['class']}{' ' + r['label'] if 'label' in r else ''} ({r['probability']:.3f})" for r in result["top5"]
        )
    )


def _classifier(args):
    """``(probabilities of a uint8 NHWC batch, number of classes, metadata, image size, (crop_pct,
    interpolation))`` of ``--weights`` (:func:`._common.open_classifier`, which ``serve`` shares)."""
    return open_classifier(args.weights, args.model, args.runtime, args.precision)


def run(args) -> int:
    from ..inference import image_paths, predict_files
    from ..io import class_names
    from ..io.classes import read_labels

    if args.labels is not None:
        with argument("--labels"):
            read_labels(args.labels)  # a bad labels file is reported before any weights are read
    forward, num_classes, metadata, image_size, (crop_pct, interpolation) = _classifier(args)
    with argument("--labels" if args.labels is not None else "--weights"):
        labels = class_names(num_classes, metadata, args.labels)
    with argument("IMAGE"):  # every path is checked before any work; decoding happens as the batches go
        paths = image_paths(args.images)
    batch_size = min(args.batch_size, len(paths))
    results, problems = [], []
    bar = None
    if len(paths) > batch_size and sys.stderr.isatty():
        from tqdm.auto import tqdm

        bar = tqdm(total=len(paths), unit="image", file=sys.stderr, leave=False)
    predictions = predict_files(
        forward,
        paths,
        image_size=image_size,
        batch_size=batch_size,
        workers=args.workers,
        crop_pct=crop_pct,
        interpolation=interpolation,
    )
    for batch in predictions:
        for prediction in batch:
            if prediction.error is not None:
                problems.append(prediction.error)
                result = {"image": prediction.path, "error": prediction.error}
            else:
                result = {
                    "image": prediction.path,
                    "top5": [
                        {"class": i, "probability": p, **({"label": labels[i]} if labels else {})}
                        for i, p in prediction.top
                    ],
                }
                if bar is not None and not args.json:
                    bar.write(_line(result), file=sys.stdout)
                elif not args.json:
                    print(_line(result))
            if args.json:
                results.append(result)
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    if args.json:
        print(json.dumps(results))
    if problems:
        more = f" (and {len(problems) - 1} more unreadable image(s))" if len(problems) > 1 else ""
        rest = "; the other images were classified" if len(problems) < len(paths) else ""
        raise UsageError(f"argument IMAGE: {problems[0]}{more}{rest}")
    return 0
