"""``resnet-bottleneck export``: a run, or weights, to a model file, one writer per output format.

A run directory (``train``'s ``--out``) gives its last checkpoint's weights in eval form with what
``predict`` and ``evaluate`` need to use them as the run did (see ``io.metadata``); our
``.safetensors`` files keep their metadata; torchvision's weights get ``convert``'s.
"""

from __future__ import annotations

from pathlib import Path

from ._common import UsageError, argument, model_name


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "export",
        help="write a run's model (its last checkpoint), or any weights, as a model file (.safetensors)",
        description="Read a run directory (train's --out: its last checkpoint), our .safetensors, or torchvision "
        "weights (.pth, .pt, .safetensors), and write OUT by its suffix: .safetensors is this library's variables "
        "(params and BatchNorm statistics) with metadata: model, class names, image size, normalisation and, for a "
        "run, its held-out split; predict and evaluate read them.",
    )
    parser.add_argument("input", metavar="IN", help="a run directory, our .safetensors, or torchvision weights")
    parser.add_argument("output", metavar="OUT", help="the file to write: .safetensors")
    parser.add_argument("--model", type=model_name,
                        help="the model name, e.g. resnet50: needed for torchvision's weights; others name theirs")
    parser.set_defaults(run=run)


def write_safetensors(args, model, variables, metadata: dict[str, str]) -> None:
    from ..io.safetensors import save_variables

    save_variables(args.output, variables, metadata)


#: OUT's suffix -> the function that writes that format.
WRITERS = {".safetensors": write_safetensors}


def run(args) -> int:
    from ..io import load_model
    from ..io.safetensors import CHECKPOINT_FORMAT

    writer = WRITERS.get(Path(args.output).suffix.lower())
    if writer is None:
        raise UsageError(f"argument OUT: must end in {', '.join(WRITERS)}; got {args.output}")
    with argument("IN"):
        model, variables, metadata = load_model(args.input, args.model)
    if metadata.get("format") != CHECKPOINT_FORMAT:  # torchvision's: what convert records
        metadata = {"format": CHECKPOINT_FORMAT, "model": args.model, "num_classes": str(model.num_classes)}
    with argument("OUT"):
        writer(args, model, variables, metadata)
    print(f"Exported {args.input} ({metadata['model']}, {model.num_classes} classes) to {args.output}")
    return 0
