"""``resnet-bottleneck export``: a run, or weights, to a model file, one writer per output format.

A run directory (``train``'s ``--out``) gives its last checkpoint's weights in eval form with what
``predict`` and ``evaluate`` need to use them as the run did (see ``io.metadata``); our
``.safetensors`` files keep their metadata; torchvision's weights get ``convert``'s. ``.onnx`` is
the graph for CPU serving (``io.onnx``), carrying the metadata ``predict`` reads.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ._common import UsageError, argument, model_name, positive_int

#: The metadata an ``.onnx`` export carries over (besides the model's name): what ``predict`` and
#: ``evaluate`` read (``split``: a run's held-out images, which ``evaluate`` scores without ``--data``).
CARRIED = ("classes", "image_size", "mean", "std", "crop_pct", "interpolation", "split", "batch_size")
#: The options that only the ``.onnx`` writer takes.
ONNX_OPTIONS = ("layout", "batch", "image_size")


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "export",
        help="write a run's model (its last checkpoint), or any weights, as a model file (.safetensors, .onnx)",
        description="Read a run directory (train's --out: its last checkpoint), our .safetensors, or torchvision's "
        "or timm's weights (.pth, .pt, .safetensors), and write OUT by its suffix: .safetensors is this library's "
        "variables (params and BatchNorm statistics) with metadata: model, class names, image size, normalisation, "
        "crop and interpolation and, for a run, its held-out split; predict and evaluate read them. .onnx is an ONNX "
        "inference graph with BatchNorm folded, one Conv per convolution and a dynamic batch axis, for ONNX "
        "Runtime (predict --runtime onnxruntime), with the class names, image size, normalisation, crop and "
        "interpolation in its metadata.",
    )
    parser.add_argument(
        "input", metavar="IN", help="a run directory, our .safetensors, or torchvision's or timm's weights"
    )
    parser.add_argument("output", metavar="OUT", help="the file to write: .safetensors or .onnx")
    parser.add_argument(
        "--model",
        type=model_name,
        help="the model name, e.g. resnet50: needed for torchvision's and timm's weights; others name theirs",
    )
    parser.add_argument("--labels", help="a text file with one class name per line, stored in OUT's metadata")
    onnx = parser.add_argument_group(".onnx only")
    onnx.add_argument(
        "--layout",
        choices=("NCHW", "NHWC"),
        help="the graph's input layout: NCHW (torchvision's, the default) or NHWC (ours)",
    )
    onnx.add_argument("--batch", type=positive_int, help="a fixed batch size (default: a dynamic batch axis)")
    onnx.add_argument(
        "--image-size",
        type=positive_int,
        help="a fixed square input size, e.g. 224 (ONNX Runtime "
        "runs a fixed shape a little faster; default: dynamic height and width)",
    )
    parser.set_defaults(run=run)


def write_safetensors(args, model, variables, metadata: dict[str, str]) -> None:
    from ..io.safetensors import save_variables

    save_variables(args.output, variables, metadata)


def write_onnx(args, model, variables, metadata: dict[str, str]) -> None:
    from ..io.onnx import export_onnx

    carried = {"model": metadata["model"], **{k: metadata[k] for k in CARRIED if k in metadata}}
    if args.image_size is not None:  # the size the graph takes is the size to prepare images at
        trained = metadata.get("image_size")
        if trained is not None and trained != str(args.image_size):
            carried["trained_image_size"] = trained
            print(
                f"note: the model was trained at image size {trained}; the graph takes {args.image_size} "
                f"(--image-size), which {args.output}'s metadata records: predict prepares images at {args.image_size}",
                file=sys.stderr,
            )
        carried["image_size"] = str(args.image_size)
    export_onnx(
        model,
        variables,
        args.output,
        layout=args.layout or "NCHW",
        batch=args.batch,
        image_size=args.image_size,
        metadata=carried,
    )


#: OUT's suffix -> the function that writes that format.
WRITERS = {".safetensors": write_safetensors, ".onnx": write_onnx}


def run(args) -> int:
    from ..inference import load_model
    from ..io import class_names
    from ..io.classes import read_labels
    from ..io.safetensors import CHECKPOINT_FORMAT

    suffix = Path(args.output).suffix.lower()
    writer = WRITERS.get(suffix)
    if writer is None:
        raise UsageError(f"argument OUT: must end in {', '.join(WRITERS)}; got {args.output}")
    if suffix != ".onnx":
        for option in ONNX_OPTIONS:
            if getattr(args, option) is not None:
                flag = "--" + option.replace("_", "-")
                raise UsageError(
                    f"argument {flag}: only for an .onnx OUT; got {getattr(args, option)} for {args.output}"
                )
    if args.labels is not None:
        with argument("--labels"):
            read_labels(args.labels)  # a bad labels file is reported before any weights are read
    with argument("IN"):
        model, variables, metadata = load_model(args.input, args.model)
    if metadata.get("format") != CHECKPOINT_FORMAT:  # foreign weights, with the preprocessing convert records
        metadata = {**metadata, "format": CHECKPOINT_FORMAT, "num_classes": str(model.num_classes)}
    metadata = {**metadata, "model": metadata.get("model") or args.model}  # what --model gives where IN does not say
    if args.labels is not None:
        with argument("--labels"):
            metadata = {**metadata, "classes": json.dumps(class_names(model.num_classes, None, args.labels))}
    with argument("OUT"):
        writer(args, model, variables, metadata)
    print(f"Exported {args.input} ({metadata['model']}, {model.num_classes} classes) to {args.output}")
    return 0
