"""``resnet-bottleneck convert``: torchvision's or timm's weights to this library's ``.safetensors``."""

from __future__ import annotations

from ._common import UsageError, argument, model_name


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "convert",
        help="convert torchvision's or timm's weights to a Flax checkpoint (.safetensors)",
        description="Read torchvision's or timm's weights (a state_dict: .safetensors, or .pth/.pt through "
        "torch.load(weights_only=True)) "
        "and write this library's variables as a .safetensors file (keys 'params/conv1/kernel', ...). Weights "
        "of another model are refused, naming the family model they fit.",
    )
    parser.add_argument("input", metavar="IN", help="torchvision's or timm's weights: .safetensors, .pth or .pt")
    parser.add_argument("output", metavar="OUT", help="the Flax checkpoint to write (.safetensors)")
    parser.add_argument(
        "--model", required=True, type=model_name, help="the torchvision or timm model name, e.g. resnet50 or resnet50d"
    )
    parser.add_argument(
        "--preprocessing",
        default="auto",
        metavar="{auto,timm,torchvision}",
        help="the evaluation preprocessing OUT records (image size, mean, std, crop_pct, interpolation): 'timm' "
        "the data config of timm's default weights of --model, 'torchvision' torchvision's (224, resize 256, "
        "bilinear); 'auto' (default): torchvision's for torchvision's names (resnet50, ...), timm's for the others",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="on weights that do not fit --model, list every differing tensor below the one-line error (several lines)",
    )
    parser.set_defaults(run=run)


def recorded_preprocessing(name: str, preprocessing: str = "auto") -> dict[str, str]:
    """What ``convert`` records for ``--model name`` and ``--preprocessing``
    (:func:`resnet_bottleneck.io.metadata.weights_preprocessing`)."""
    from ..io.metadata import weights_preprocessing

    with argument("--preprocessing"):
        return weights_preprocessing(name, preprocessing)


def run(args) -> int:
    from ..io.safetensors import CHECKPOINT_FORMAT, save_variables
    from ..io.torchvision import load_torchvision

    if not args.output.endswith(".safetensors"):
        raise UsageError(f"argument OUT: must end in .safetensors; got {args.output}")
    preprocessing = recorded_preprocessing(args.model, args.preprocessing)
    with argument("IN"):
        model, variables = load_torchvision(args.input, args.model)
    with argument("OUT"):
        save_variables(
            args.output,
            variables,
            {
                "model": args.model,
                "num_classes": str(model.num_classes),
                "format": CHECKPOINT_FORMAT,
                **preprocessing,
            },
        )
    print(f"Converted {args.input} ({args.model}, {model.num_classes} classes) to {args.output}")
    return 0
