"""The ``resnet-bottleneck`` command line.

Every subcommand reports bad input as one line on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from ._files import atomic_write

PROG = "resnet-bottleneck"


class UsageError(Exception):
    """Bad command-line input: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + message; we want one line
        raise UsageError(f"{self.prog}: error: {message}")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer: {text!r}") from None


def _load_npy(path: str, option: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise UsageError(f"{option}: no such file: {path}") from None
    except (OSError, ValueError) as err:
        raise UsageError(f"{option}: cannot read {path} as a .npy array ({err})") from None


def _forward(args) -> int:
    from .forward import bottleneck_walkthrough, resnet_bottleneck_forward, worked_example_input

    x = worked_example_input() if args.input is None else _load_npy(args.input, "--input")
    y = np.asarray(resnet_bottleneck_forward(args.seed, x, args.mid, args.out))
    stages = bottleneck_walkthrough(tuple(np.shape(x)), args.mid, args.out)
    if args.output is not None:
        atomic_write(args.output, lambda f: np.save(f, y, allow_pickle=False))
    if args.json:
        print(json.dumps({
            "seed": args.seed,
            "mid_features": args.mid,
            "out_features": args.out,
            "input_shape": list(np.shape(x)),
            "stages": [dict(s, shape=list(s["shape"])) for s in stages],
            "output": y.tolist(),
        }))
        return 0
    source = "the worked example's fixed input" if args.input is None else args.input
    print(f"ResNet bottleneck block: seed {args.seed}, mid_features {args.mid}, out_features {args.out}")
    print(f"Input x {tuple(np.shape(x))} ({source})")
    for s in stages:
        print(f"{s['step']}. {s['op']:<26} -> {str(s['shape']):<16} {s['note']}".rstrip())
    with np.printoptions(precision=6, suppress=True, linewidth=88):
        print(f"Output ({y.size} values):")
        print(y)
    if args.output is not None:
        print(f"Wrote {args.output}")
    return 0


def _cost(args) -> int:
    from . import cost

    if args.model is not None:
        report = cost.model_cost(args.model, args.image_size)
        if args.json:
            print(json.dumps(report))
        else:
            print(f"{report['model']} at {args.image_size}x{args.image_size}: {report['params']:,} parameters, "
                  f"{report['macs']:,} MACs ({report['macs'] / 1e9:.3f} GMACs) per image")
    else:
        rows = cost.seed_table(args.out, args.mid, args.wide, args.size)
        if args.json:
            print(json.dumps({"size": args.size, "rows": [vars(r) for r in rows],
                              "params_ratio": rows[0].params / rows[1].params}))
        else:
            width = max(len(r.what) for r in rows)
            print(f"{'':<{width}}  {'params':>12}  {'MACs at ' + str(args.size) + 'x' + str(args.size):>18}")
            for r in rows:
                print(f"{r.what:<{width}}  {r.params:>12,}  {r.macs:>18,}")
            print(f"The bottleneck triple has {rows[0].params / rows[1].params:.2f}x fewer parameters (and MACs) "
                  f"than one 3x3 conv at {args.out}; two 3x3 convs at {args.wide} cost "
                  f"{rows[2].params / 1e6:.1f}M parameters.")
    if args.plot is not None:
        cost.plot_block_costs(args.plot, size=args.size)
        if not args.json:
            print(f"Wrote {args.plot}")
    return 0


def _convert(args) -> int:
    from .torch_io import CHECKPOINT_FORMAT, from_torchvision, load_state_dict, save_variables

    if not args.output.endswith(".safetensors"):
        raise UsageError(f"OUT must end in .safetensors; got {args.output}")
    model, variables = from_torchvision(load_state_dict(args.input), args.model)
    save_variables(args.output, variables, {"model": args.model, "num_classes": str(model.num_classes),
                                            "format": CHECKPOINT_FORMAT})
    print(f"Converted {args.input} ({args.model}, {model.num_classes} classes) to {args.output}")
    return 0


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def preprocess(path: str, resize: int = 256, crop: int = 224) -> np.ndarray:
    """torchvision's ImageNet evaluation transform: resize the short side, center crop, normalise. HWC."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            w, h = image.size  # torchvision: the long side is truncated, the crop offset rounded
            size = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
            image = image.resize(size, Image.BILINEAR)
            w, h = image.size
            left, top = int(round((w - crop) / 2.0)), int(round((h - crop) / 2.0))
            image = image.crop((left, top, left + crop, top + crop))
            array = np.asarray(image, np.float32) / 255.0
    except FileNotFoundError:
        raise UsageError(f"no such image: {path}") from None
    except (UnidentifiedImageError, OSError) as err:
        raise UsageError(f"cannot read image {path} ({err})") from None
    return (array - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)


def _predict(args) -> int:
    import jax

    labels = None
    if args.labels is not None:
        try:
            with open(args.labels) as f:
                labels = [line.strip() for line in f if line.strip()]
        except (OSError, UnicodeDecodeError) as err:
            raise UsageError(f"--labels: cannot read {args.labels} as text, one class name a line ({err})") from None
    from . import xla
    from .torch_io import load_model

    model, variables = load_model(args.weights, args.model)
    if labels is not None and len(labels) != model.num_classes:
        raise UsageError(f"--labels: {args.labels} has {len(labels)} names for {model.num_classes} classes")
    images = [preprocess(p) for p in args.images]  # every image is checked before any work
    forward = xla.jit(lambda v, x: jax.nn.softmax(model.apply(v, x, train=False)))
    results = []
    live = len(images) > 1 and sys.stderr.isatty()
    for done, (path, image) in enumerate(zip(args.images, images)):
        if live:
            print(f"\r[{done + 1}/{len(images)}] {path[-50:]:<50}", end="", file=sys.stderr, flush=True)
        probs = np.asarray(forward(variables, image[None]))[0]
        top = np.argsort(-probs)[: min(5, probs.size)]
        results.append({"image": path, "top5": [
            {"class": int(i), "probability": float(probs[i]), **({"label": labels[i]} if labels else {})} for i in top]})
        if not args.json:
            if live:
                print("\r" + " " * 60 + "\r", end="", file=sys.stderr, flush=True)
            print(path + ": " + ", ".join(
                f"{r['class']}{' ' + r['label'] if 'label' in r else ''} ({r['probability']:.3f})" for r in results[-1]["top5"]))
    if live:
        print(file=sys.stderr)
    if args.json:
        print(json.dumps(results))
    return 0


def _train(args) -> int:
    from dataclasses import asdict
    from pathlib import Path

    from . import train as training

    config = training.Config(
        model=args.model, data=args.data, image_size=args.image_size, epochs=args.epochs,
        batch_size=args.batch_size, learning_rate=args.lr, momentum=args.momentum, nesterov=not args.no_nesterov,
        weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing,
        augment=args.augment, bf16=args.bf16, seed=args.seed, test_fraction=args.test_fraction,
    )
    from .models import _model_name

    _model_name(config.model)
    try:
        config.check()
    except training.TrainingError as err:
        raise UsageError(f"{PROG} train: error: {err}") from None
    if config.data is not None and not Path(config.data).is_dir():
        raise UsageError(f"--data: {config.data} is not a directory")
    if args.reuse_freed_memory:  # before JAX's first computation, after every check of the input
        from . import xla

        xla.reuse_freed_memory()
    training.maybe_initialize_distributed()
    out = Path(args.out if args.out is not None else f"runs/{config.model}-seed{config.seed}")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        result = training.train(
            config,
            checkpoint_dir=out / "checkpoints",
            checkpoint_every=args.checkpoint_every,
            keep_checkpoints=args.keep,
            metrics_path=out / "metrics.jsonl",
            plot_path=out / "curves.png",
            progress=not args.json,
        )
    except training.DivergedError as err:
        print(f"{PROG} train: error: {err}", file=sys.stderr)
        return 1
    except training.TrainingError as err:
        if created:  # this run wrote nothing worth keeping: leave no half-made directory
            import shutil

            shutil.rmtree(out, ignore_errors=True)
        raise UsageError(f"{PROG} train: error: {err}") from None
    summary = {
        "test_accuracy": result.test_accuracy,
        "epochs": result.epochs,
        "steps": result.steps,
        "images_per_second": result.images_per_second,
        "seconds": result.seconds,
        "checkpoint": result.checkpoint,
        "metrics": result.metrics,
        "plot": result.plot,
        "resumed_from_step": result.resumed_from,
        "config": asdict(config),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"test accuracy {result.test_accuracy:.4f} after {result.epochs} epochs ({result.steps} steps) in "
              f"{result.seconds:.1f} s, {result.images_per_second:,.0f} training images/s")
        print(f"checkpoint {result.checkpoint}; metrics {result.metrics}; curves {result.plot}")
    return 0


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="The ResNet bottleneck block and its family in JAX/Flax.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    forward = commands.add_parser(
        "forward",
        help="run one freshly initialised bottleneck block (the seed's worked example by default)",
        description="Run resnet_bottleneck_forward and print the seed's walk-through: each stage's shape "
        "and the flattened output. Without --input it runs the worked example: seed 0, a fixed "
        "(4, 4, 4) input, mid 2, out 4.",
    )
    forward.add_argument("--input", metavar="X.npy", help="(H, W, C) input array; C must equal --out")
    forward.add_argument("--seed", type=_int, default=0, help="PRNG seed in [0, 2**32) (default 0)")
    forward.add_argument("--mid", type=_int, default=2, help="mid_features (default 2)")
    forward.add_argument("--out", type=_int, default=4, help="out_features (default 4)")
    forward.add_argument("--output", metavar="Y.npy", help="also write the flattened output here")
    forward.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    forward.set_defaults(run=_forward)

    cost = commands.add_parser(
        "cost",
        help="parameters and MACs: of a model (--model), or the seed's block arithmetic",
        description="With --model: one model's parameters and multiply-accumulates per image (convs and "
        "classifier, as torchvision counts them). Without: the seed's arithmetic, a basic 3x3 conv "
        "against the bottleneck triple, in parameters and MACs at one feature-map size.",
    )
    cost.add_argument("--model", help="a model name, e.g. resnet50")
    cost.add_argument("--image-size", type=_int, default=224, help="input height and width (default 224)")
    cost.add_argument("--out", type=_int, default=256, help="block width for the seed table (default 256)")
    cost.add_argument("--mid", type=_int, default=64, help="bottleneck mid width for the seed table (default 64)")
    cost.add_argument("--wide", type=_int, default=2048, help="full width for the seed table (default 2048)")
    cost.add_argument("--size", type=_int, default=56, help="feature-map size for MACs (default 56)")
    cost.add_argument("--plot", metavar="FILE.png", help="draw params and MACs against width (matplotlib)")
    cost.add_argument("--json", action="store_true", help="print one JSON object")
    cost.set_defaults(run=_cost)

    convert = commands.add_parser(
        "convert",
        help="convert torchvision weights to a Flax checkpoint (.safetensors)",
        description="Read torchvision weights (.safetensors, or .pth/.pt through torch.load(weights_only=True)) "
        "and write this library's variables as a .safetensors file (keys 'params/conv1/kernel', ...).",
    )
    convert.add_argument("input", metavar="IN", help="torchvision weights: .safetensors, .pth or .pt")
    convert.add_argument("output", metavar="OUT", help="the Flax checkpoint to write (.safetensors)")
    convert.add_argument("--model", required=True, help="the torchvision model name, e.g. resnet50")
    convert.set_defaults(run=_convert)

    predict = commands.add_parser(
        "predict",
        help="classify images: top-5 classes with probabilities",
        description="torchvision's ImageNet preprocessing (resize 256, center crop 224, mean/std), then the top-5 "
        "classes of each image.",
    )
    predict.add_argument("images", metavar="IMAGE", nargs="+")
    predict.add_argument("--weights", required=True, help="a converted .safetensors checkpoint or torchvision weights")
    predict.add_argument("--model", required=True, help="the model name, e.g. resnet50")
    predict.add_argument("--labels", help="a text file with one class name per line")
    predict.add_argument("--json", action="store_true", help="print one JSON list")
    predict.set_defaults(run=_predict)

    train = commands.add_parser(
        "train",
        help="train a model: scikit-learn's digits by default, or an ImageFolder directory",
        description="Train with SGD (Nesterov momentum, weight decay on kernels only), warmup + cosine schedule "
        "and label smoothing, data-parallel over every device. Checkpoints go to OUT/checkpoints; running the "
        "same command again resumes exactly where the last checkpoint left off.",
    )
    train.add_argument("--model", default="resnet_tiny", help="model name (default resnet_tiny)")
    train.add_argument("--data", help="ImageFolder root (root/class_x/image.png); default: scikit-learn's digits")
    train.add_argument("--image-size", type=_int, default=32, help="images are resized to this (default 32)")
    train.add_argument("--epochs", type=_int, default=15)
    train.add_argument("--batch-size", type=_int, default=64, help="global batch size (default 64)")
    train.add_argument("--lr", type=_float, default=0.1, help="peak learning rate (default 0.1)")
    train.add_argument("--momentum", type=_float, default=0.9)
    train.add_argument("--no-nesterov", action="store_true", help="plain momentum instead of Nesterov's")
    train.add_argument("--weight-decay", type=_float, default=5e-4)
    train.add_argument("--warmup-epochs", type=_float, default=1.0)
    train.add_argument("--label-smoothing", type=_float, default=0.1)
    train.add_argument("--augment", action="store_true", help="random resized crop and flip (not for digits)")
    train.add_argument("--bf16", action="store_true", help="compute in bfloat16 (float32 parameters)")
    train.add_argument("--seed", type=_int, default=0)
    train.add_argument("--test-fraction", type=_float, default=0.2, help="held-out share (default 0.2)")
    train.add_argument("--out", help="run directory (default runs/MODEL-seedSEED)")
    train.add_argument("--checkpoint-every", type=_int, default=50, help="steps between checkpoints (default 50)")
    train.add_argument("--keep", type=_int, default=3, help="checkpoints kept (default 3)")
    train.add_argument("--reuse-freed-memory", action="store_true",
                       help="have glibc keep freed memory for reuse: ~8-10%% faster for ResNet-50 on CPU, slower "
                       "for small models (see resnet_bottleneck.reuse_freed_memory)")
    train.add_argument("--json", action="store_true", help="no progress; print one JSON summary")
    train.set_defaults(run=_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return args.run(args)
    except UsageError as err:
        print(err, file=sys.stderr)
        return 2
    except (TypeError, ValueError, OSError, ImportError) as err:
        print(f"{PROG} {getattr(args, 'command', '')}: error: {err}".replace("  ", " "), file=sys.stderr)
        return 2
