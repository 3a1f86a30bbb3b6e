"""``resnet-bottleneck predict``: top-5 classes of images, with the evaluation transform the model was trained with.

Images stream through the data pipeline (``data.evaluation_batches``): decoded a batch or two
ahead of the model, and each batch's results printed as soon as it is done, so memory does
not grow with the number of images. Paths that are not files are refused before any work. An
image that cannot be decoded is skipped and the others go on; at the end one line names it
(and counts any others) and the exit status is 2, so a script sees that not every image was
classified. ``--json`` then lists it with its ``error`` in place of ``top5``.

``--runtime jax`` (the default) runs our model on JAX; ``--runtime onnxruntime`` runs an ``.onnx``
file from ``export`` (or any image classifier of that shape) with ONNX Runtime, compiling nothing
with JAX.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from ._common import UsageError, argument, count, model_name, open_model, open_onnx, positive_int


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "predict",
        help="classify images: top-5 classes with probabilities",
        description="The evaluation transform (resize the shorter side to image size / 0.875, center crop) at the "
        "model file's image size and normalisation (torchvision's ImageNet preprocessing, 256 then 224, for "
        "files that do not say), then the top-5 classes of each image, named by --labels, else by the weights "
        "file's own class names, else by ImageNet's for a 1,000-class model; otherwise by index. With --runtime "
        "onnxruntime, an .onnx file from export (its metadata gives the same) or any image classifier with one "
        "[N, 3, H, W] or [N, H, W, 3] float input and one [N, classes] output.",
    )
    parser.add_argument("images", metavar="IMAGE", nargs="+")
    parser.add_argument(
        "--weights",
        required=True,
        help="a model file (train's OUT/model.safetensors, export's, convert's), a run directory, or "
        "torchvision weights (.pth, .pt, .safetensors); an .onnx file with --runtime onnxruntime",
    )
    parser.add_argument(
        "--model",
        type=model_name,
        help="the model name, e.g. resnet50: needed for torchvision's weights; our files name theirs",
    )
    parser.add_argument(
        "--runtime",
        choices=("jax", "onnxruntime"),
        default="jax",
        help="jax (the default), or onnxruntime to run an .onnx file from export",
    )
    parser.add_argument(
        "--labels", help="a text file with one class name per line (overrides the weights' own names and ImageNet's)"
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


def preprocess(path: str, image_size: int = 224, mean=None, std=None) -> np.ndarray:
    """One image as the model sees it: the evaluation transform, normalised (ImageNet's by default). HWC float32."""
    from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD, ImageError, eval_transform, normalize

    try:
        return normalize(eval_transform(path, image_size), mean or IMAGENET_MEAN, std or IMAGENET_STD)
    except ImageError as err:
        raise UsageError(f"argument IMAGE: {err}") from None


def _batches(paths: list[str], image_size: int, batch_size: int, workers: int):
    """``(rows, uint8 batch)`` per batch: ``rows`` the ``(path, problem or None)`` of its real images, in order."""
    from .. import data
    from ..data.pipeline import private_copy
    from ..data.transforms import ImageError, eval_transform

    source = data.ImageFiles(
        "", np.asarray([p.encode() for p in paths], dtype=bytes), np.zeros(len(paths), np.int32), ("",)
    )
    stream = iter(data.evaluation_batches(source, image_size=image_size, batch_size=batch_size, workers=workers))
    try:
        for step in range(data.evaluation_steps(source, batch_size)):
            batch = private_copy(next(stream))
            rows = []
            for k in range(batch_size):
                position = step * batch_size + k
                if position >= len(paths):
                    break
                problem = None
                if not batch["mask"][k]:  # unreadable: decode it again for the reason
                    try:
                        eval_transform(paths[position], image_size)
                        problem = f"cannot read {paths[position]} as an image"
                    except ImageError as err:
                        problem = str(err)
                rows.append((paths[position], problem))
            yield rows, batch["image"]
    finally:
        stream.close()


def _line(result: dict) -> str:
    return (
        result["image"]
        + ": "
        + ", ".join(
            f"{r['class']}{' ' + r['label'] if 'label' in r else ''} ({r['probability']:.3f})" for r in result["top5"]
        )
    )


def _jax_classifier(args):
    """``(probabilities of a uint8 NHWC batch, number of classes, metadata, image size)`` of our model on JAX."""
    import jax

    from .. import xla
    from ..data.transforms import normalize

    model, variables, metadata, (image_size, mean, std) = open_model(args.weights, args.model, "run")
    forward = xla.jit(lambda v, x: jax.nn.softmax(model.apply(v, normalize(x, mean, std), train=False)))
    return (lambda x: np.asarray(forward(variables, x))), model.num_classes, metadata, image_size


def _onnx_classifier(args):
    """The same for an ``.onnx`` file run by ONNX Runtime (its metadata, or its fixed input size, sets the
    transform)."""
    from ..data.transforms import normalize

    classifier, num_classes, image_size = open_onnx(args.weights, args.model)

    def probabilities(x):
        with argument("--weights"):
            logits = classifier(normalize(x, classifier.mean, classifier.std)).astype(np.float64)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    return probabilities, num_classes, classifier.metadata, image_size


def run(args) -> int:
    from ..io import class_names
    from ..io.classes import read_labels

    if args.labels is not None:
        with argument("--labels"):
            read_labels(args.labels)  # a bad labels file is reported before any weights are read
    classifier = _onnx_classifier if args.runtime == "onnxruntime" else _jax_classifier
    forward, num_classes, metadata, image_size = classifier(args)
    with argument("--labels" if args.labels is not None else "--weights"):
        labels = class_names(num_classes, metadata, args.labels)
    for path in args.images:  # every path is checked before any work; decoding happens as the batches go
        if not os.path.isfile(path):
            raise UsageError(f"argument IMAGE: no such file: {path}")
    batch_size = min(args.batch_size, len(args.images))
    results, problems = [], []
    bar = None
    if len(args.images) > batch_size and sys.stderr.isatty():
        from tqdm.auto import tqdm

        bar = tqdm(total=len(args.images), unit="image", file=sys.stderr, leave=False)
    for rows, images in _batches(args.images, image_size, batch_size, args.workers):
        probabilities = forward(images)
        for (path, problem), probs in zip(rows, probabilities):
            if problem is not None:
                problems.append(problem)
                result = {"image": path, "error": problem}
            else:
                top = np.argsort(-probs)[: min(5, probs.size)]
                result = {
                    "image": path,
                    "top5": [
                        {"class": int(i), "probability": float(probs[i]), **({"label": labels[i]} if labels else {})}
                        for i in top
                    ],
                }
                if bar is not None and not args.json:
                    bar.write(_line(result), file=sys.stdout)
                elif not args.json:
                    print(_line(result))
            if args.json:
                results.append(result)
        if bar is not None:
            bar.update(len(rows))
    if bar is not None:
        bar.close()
    if args.json:
        print(json.dumps(results))
    if problems:
        more = f" (and {len(problems) - 1} more unreadable image(s))" if len(problems) > 1 else ""
        rest = "; the other images were classified" if len(problems) < len(args.images) else ""
        raise UsageError(f"argument IMAGE: {problems[0]}{more}{rest}")
    return 0
