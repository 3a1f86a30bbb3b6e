"""``resnet-bottleneck export``: a run, or weights, to a model file, one writer per output format.

A run directory (``train``'s ``--out``) gives its last checkpoint's weights in eval form with what
``predict`` and ``evaluate`` need to use them as the run did (see ``io.metadata``); our
``.safetensors`` files keep their metadata; torchvision's weights get ``convert``'s. ``.onnx`` is
the graph for CPU serving (``io.onnx``), carrying the metadata ``predict`` reads; ``--int8`` writes it
quantized (``io.quantize``), calibrated on ``--calibration``'s images or, for a run, its training images.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ._common import UsageError, argument, model_name, positive_int

#: export --int8's defaults (io.quantize's; repeated so the parser is built without importing onnx).
CALIBRATION_IMAGES = 256
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
#: The options that only --int8 takes.
INT8_OPTIONS = ("calibration", "calibration_images", "calibration_method")

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
        "Runtime or OpenVINO (predict --runtime onnxruntime|openvino), with the class names, image size, "
        "normalisation, crop and interpolation in its metadata; with --int8, quantized (int8 weights, uint8 "
        "activations) and calibrated on --calibration's images, or a run's training images.",
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
    int8 = parser.add_argument_group("int8 (.onnx only)")
    int8.add_argument(
        "--int8",
        action="store_true",
        help="write the graph quantized (QDQ: int8 weights per output channel, uint8 activations), calibrated on "
        "images through the model's evaluation transform; predict and evaluate run it with --runtime openvino or "
        "onnxruntime",
    )
    int8.add_argument(
        "--calibration",
        metavar="DIR",
        help="the images to calibrate on (every image under DIR); default: the run's training images, for a run "
        "or a run's model file (required otherwise)",
    )
    int8.add_argument(
        "--calibration-images",
        type=positive_int,
        metavar="N",
        help=f"how many calibration images, drawn in a fixed random order (default {CALIBRATION_IMAGES}; all of "
        "them where there are fewer)",
    )
    int8.add_argument(
        "--calibration-method",
        choices=CALIBRATION_METHODS,
        help="how activation ranges are set: minmax (the default), entropy or percentile",
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
    options = dict(layout=args.layout or "NCHW", batch=args.batch, image_size=args.image_size, metadata=carried)
    if not args.int8:
        export_onnx(model, variables, args.output, **options)
        return
    import tempfile

    from ..errors import DataError
    from ..io.quantize import calibration_summary, quantize_onnx

    source, description = args.calibration_source
    with tempfile.TemporaryDirectory(prefix="resnet-bottleneck-export-") as tmp:
        float_path = export_onnx(model, variables, Path(tmp) / "float32.onnx", **options)
        try:
            result = quantize_onnx(
                float_path,
                args.output,
                source,
                images=args.calibration_images or CALIBRATION_IMAGES,
                method=args.calibration_method or "minmax",
                description=description,
            )
        except DataError as err:  # no readable calibration image
            raise UsageError(f"argument --calibration: {err.message}") from None
    for line in calibration_summary(result):
        print(line)
    args.int8_summary = f"int8, {result.method} calibration on {result.images} image(s) of {result.calibration}"


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
    _check_int8_options(args, suffix)
    if args.labels is not None:
        with argument("--labels"):
            read_labels(args.labels)  # a bad labels file is reported before any weights are read
    with argument("IN"):
        model, variables, metadata = load_model(args.input, args.model)
    if args.int8:
        args.calibration_source = _calibration(args, model, metadata)
    if metadata.get("format") != CHECKPOINT_FORMAT:  # foreign weights, with the preprocessing convert records
        metadata = {**metadata, "format": CHECKPOINT_FORMAT, "num_classes": str(model.num_classes)}
    metadata = {**metadata, "model": metadata.get("model") or args.model}  # what --model gives where IN does not say
    if args.labels is not None:
        with argument("--labels"):
            metadata = {**metadata, "classes": json.dumps(class_names(model.num_classes, None, args.labels))}
    with argument("OUT"):
        writer(args, model, variables, metadata)
    int8 = f"; {args.int8_summary}" if getattr(args, "int8_summary", None) else ""
    print(f"Exported {args.input} ({metadata['model']}, {model.num_classes} classes{int8}) to {args.output}")
    return 0


def _check_int8_options(args, suffix: str) -> None:
    """--int8 and its options: for an .onnx OUT, from weights (not from an .onnx IN); the calibration folder
    checked before any weights are read."""
    from ..errors import DataError
    from ..io.quantize import calibration_folder

    given = [o for o in INT8_OPTIONS if getattr(args, o) is not None]
    if args.int8 and suffix != ".onnx":
        raise UsageError(f"argument --int8: only for an .onnx OUT; got {args.output}")
    if given and not args.int8:
        flag = "--" + given[0].replace("_", "-")
        raise UsageError(f"argument {flag}: only with --int8; got {getattr(args, given[0])}")
    if args.int8 and Path(args.input).suffix.lower() == ".onnx":
        raise UsageError(
            f"argument IN: {args.input} is an ONNX file; --int8 quantizes from a run directory, a model file or "
            "weights (export those with --int8)"
        )
    if args.calibration is not None:
        try:
            args.calibration_files = calibration_folder(args.calibration)
        except DataError as err:
            raise UsageError(f"argument --calibration: {err.message}") from None


def _calibration(args, model, metadata: dict):
    """``(images, description)`` to calibrate on: --calibration's, else the run's training images."""
    from .. import arch
    from ..errors import DataError
    from ..inference import training_split

    if arch.describe(model).head is None:
        raise UsageError(
            f"argument --int8: {args.input} holds a headless model (no classifier): int8 export calibrates and "
            "keeps a classifier's accuracy; export it in float32"
        )
    if args.calibration is not None:
        return args.calibration_files, args.calibration
    try:
        found = training_split(metadata, args.input)
    except DataError as err:  # the recorded images are gone
        raise UsageError(f"argument IN: the run's training images: {err.message}") from None
    except ValueError as err:  # the recorded split itself
        raise UsageError(f"argument IN: {err}") from None
    if found is None:
        raise UsageError(
            f"argument --calibration: required with --int8: {args.input} records no training images "
            "(a run directory or a run's model file does); give a folder of images like the model's"
        )
    return found
