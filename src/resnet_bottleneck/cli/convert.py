"""``resnet-bottleneck convert``: torchvision weights to this library's ``.safetensors``."""

from __future__ import annotations

from ._common import UsageError


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "convert",
        help="convert torchvision weights to a Flax checkpoint (.safetensors)",
        description="Read torchvision weights (.safetensors, or .pth/.pt through torch.load(weights_only=True)) "
        "and write this library's variables as a .safetensors file (keys 'params/conv1/kernel', ...).",
    )
    parser.add_argument("input", metavar="IN", help="torchvision weights: .safetensors, .pth or .pt")
    parser.add_argument("output", metavar="OUT", help="the Flax checkpoint to write (.safetensors)")
    parser.add_argument("--model", required=True, help="the torchvision model name, e.g. resnet50")
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..io.safetensors import CHECKPOINT_FORMAT, save_variables
    from ..io.torchvision import from_torchvision, load_state_dict

    if not args.output.endswith(".safetensors"):
        raise UsageError(f"OUT must end in .safetensors; got {args.output}")
    model, variables = from_torchvision(load_state_dict(args.input), args.model)
    save_variables(args.output, variables, {"model": args.model, "num_classes": str(model.num_classes),
                                            "format": CHECKPOINT_FORMAT})
    print(f"Converted {args.input} ({args.model}, {model.num_classes} classes) to {args.output}")
    return 0
