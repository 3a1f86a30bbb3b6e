"""``resnet-bottleneck predict``: top-5 classes of images, with torchvision's evaluation transform."""

from __future__ import annotations

import json
import sys

import numpy as np

from ._common import UsageError, argument, model_name

def add_parser(commands) -> None:
    parser = commands.add_parser(
        "predict",
        help="classify images: top-5 classes with probabilities",
        description="torchvision's ImageNet preprocessing (resize 256, center crop 224, mean/std), then the top-5 "
        "classes of each image, named by --labels, else by the weights file's own class names, else by "
        "ImageNet's for a 1,000-class model; otherwise by index.",
    )
    parser.add_argument("images", metavar="IMAGE", nargs="+")
    parser.add_argument("--weights", required=True, help="a converted .safetensors checkpoint or torchvision weights")
    parser.add_argument("--model", required=True, type=model_name, help="the model name, e.g. resnet50")
    parser.add_argument("--labels", help="a text file with one class name per line (overrides the weights' own "
                        "names and ImageNet's)")
    parser.add_argument("--json", action="store_true", help="print one JSON list")
    parser.add_argument("--verbose", action="store_true",
                        help="on weights that do not fit --model, list every differing tensor below the one-line "
                        "error (several lines)")
    parser.set_defaults(run=run)


def preprocess(path: str, image_size: int = 224) -> np.ndarray:
    """The evaluation transform training uses (torchvision's: resize 256, center crop 224), normalised. HWC."""
    from ..data.transforms import ImageError, eval_transform, normalize

    try:
        return normalize(eval_transform(path, image_size))
    except ImageError as err:
        raise UsageError(f"argument IMAGE: {err}") from None


def run(args) -> int:
    import jax

    from .. import xla
    from ..io import class_names, load_model
    from ..io.classes import read_labels
    from ..io.safetensors import read_tensors

    if args.labels is not None:
        with argument("--labels"):
            read_labels(args.labels)  # a bad labels file is reported before any weights are read
    with argument("--weights"):
        model, variables = load_model(args.weights, args.model)
        metadata = read_tensors(args.weights, header_only=True)[1] if args.weights.lower().endswith(".safetensors") else {}
    with argument("--labels" if args.labels is not None else "--weights"):
        labels = class_names(model.num_classes, metadata, args.labels)
    images = [preprocess(p) for p in args.images]  # every image is checked before any work
    forward = xla.jit(lambda v, x: jax.nn.softmax(model.apply(v, x, train=False)))
    results = []
    bar = None
    if len(images) > 1 and sys.stderr.isatty():
        from tqdm.auto import tqdm

        bar = tqdm(total=len(images), unit="image", file=sys.stderr, leave=False)
    for path, image in zip(args.images, images):
        probs = np.asarray(forward(variables, image[None]))[0]
        top = np.argsort(-probs)[: min(5, probs.size)]
        results.append({"image": path, "top5": [
            {"class": int(i), "probability": float(probs[i]), **({"label": labels[i]} if labels else {})} for i in top]})
        if not args.json:
            line = path + ": " + ", ".join(f"{r['class']}{' ' + r['label'] if 'label' in r else ''} "
                                           f"({r['probability']:.3f})" for r in results[-1]["top5"])
            if bar is not None:
                bar.write(line, file=sys.stdout)
            else:
                print(line)
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    if args.json:
        print(json.dumps(results))
    return 0
