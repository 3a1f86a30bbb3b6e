"""``resnet-bottleneck train``: train a family model, resuming from the run's last checkpoint."""

from __future__ import annotations

import json
import sys

from ._common import PROG, UsageError, model_name, non_negative, positive_int, seed


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "train",
        help="train a model: scikit-learn's digits by default, or an ImageFolder directory",
        description="Train with SGD (Nesterov momentum, weight decay on kernels only), warmup + cosine schedule "
        "and label smoothing, data-parallel over every device. Checkpoints go to OUT/checkpoints; running the "
        "same command again resumes exactly where the last checkpoint left off.",
    )
    parser.add_argument("--model", default="resnet_tiny", type=model_name, help="model name (default resnet_tiny)")
    parser.add_argument("--data", help="ImageFolder root (root/class_x/image.png); default: scikit-learn's digits")
    parser.add_argument("--image-size", type=positive_int, default=32, help="images are resized to this (default 32)")
    parser.add_argument("--epochs", type=positive_int, default=15)
    parser.add_argument("--batch-size", type=positive_int, default=64, help="global batch size (default 64)")
    parser.add_argument("--lr", type=non_negative, default=0.1, help="peak learning rate (default 0.1)")
    parser.add_argument("--momentum", type=non_negative, default=0.9)
    parser.add_argument("--no-nesterov", action="store_true", help="plain momentum instead of Nesterov's")
    parser.add_argument("--weight-decay", type=non_negative, default=5e-4)
    parser.add_argument("--warmup-epochs", type=non_negative, default=1.0)
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--augment", action="store_true", help="random resized crop and flip (not for digits)")
    parser.add_argument("--bf16", action="store_true", help="compute in bfloat16 (float32 parameters)")
    parser.add_argument("--seed", type=seed, default=0)
    parser.add_argument("--test-fraction", type=float, default=0.2, help="held-out share (default 0.2)")
    parser.add_argument("--out", help="run directory (default runs/MODEL-seedSEED)")
    parser.add_argument("--checkpoint-every", type=positive_int, default=50, help="steps between checkpoints (default 50)")
    parser.add_argument("--keep", type=positive_int, default=3, help="checkpoints kept (default 3)")
    parser.add_argument("--reuse-freed-memory", action="store_true",
                       help="have glibc keep freed memory for reuse: ~8-10%% faster for ResNet-50 on CPU, slower "
                       "for small models (see resnet_bottleneck.reuse_freed_memory)")
    parser.add_argument("--json", action="store_true", help="no progress; print one JSON summary")
    parser.set_defaults(run=run)


def run(args) -> int:
    from dataclasses import asdict
    from pathlib import Path

    from .. import train as training

    config = training.Config(
        model=args.model, data=args.data, image_size=args.image_size, epochs=args.epochs,
        batch_size=args.batch_size, learning_rate=args.lr, momentum=args.momentum, nesterov=not args.no_nesterov,
        weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing,
        augment=args.augment, bf16=args.bf16, seed=args.seed, test_fraction=args.test_fraction,
    )
    try:
        config.check()
    except training.TrainingError as err:
        raise UsageError(str(err)) from None
    if config.data is not None and not Path(config.data).is_dir():
        raise UsageError(f"argument --data: {config.data} is not a directory")
    if args.reuse_freed_memory:  # before JAX's first computation, after every check of the input
        from .. import xla

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
        raise UsageError(str(err)) from None
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
