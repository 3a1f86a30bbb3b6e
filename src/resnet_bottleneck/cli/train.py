"""``resnet-bottleneck train``: train a family model, resuming from the run's last checkpoint.

Its flags are generated from the fields of ``training.Config`` and ``training.RunOptions``
(their defaults, help, kind of value and, where it differs, the flag's name), and an error that
names a field is reported as ``argument <that field's flag>: ...``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import MISSING, asdict, fields

from ._common import PROG, UsageError, model_name, parser_type, print_skipped


def _settings():
    from ..training import Config, RunOptions

    return Config, RunOptions


def _flag(f) -> str:
    return "--" + f.metadata.get("flag", f.name).replace("_", "-")


def _parser_type(f):
    """argparse type of a field: parsed as its kind says, and checked as the library checks it."""
    from ..training.config import KINDS

    kind = f.metadata["kind"]
    if kind == "model":
        return model_name
    if kind is None:
        return str
    return parser_type(KINDS[kind], kind)


def flags() -> dict[str, str]:
    """Each setting's field name -> its flag."""
    return {f.name: _flag(f) for cls in _settings() for f in fields(cls)}


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "train",
        help="train a model: scikit-learn's digits by default, or an image folder (ImageNet's layout or flat)",
        description="Train with SGD (Nesterov momentum, weight decay on kernels only) or AdamW, warmup + cosine "
        "schedule and label smoothing, data-parallel over every device and host, from random weights or from "
        "--weights (torchvision's or timm's, or a model a run exported: fine-tuning, with --freeze-bn and "
        "--trainable-layers); "
        "images are decoded and augmented by worker processes, each host reading only its share. Checkpoints go to "
        "OUT/checkpoints; running the same command again resumes exactly where the last checkpoint left off. SIGTERM "
        "or SIGINT (Ctrl-C) finishes the step, checkpoints it and stops (exit status 0 or 130). At the "
        "end OUT/model.safetensors holds the final weights with the class names, image size and normalisation, for "
        "predict and evaluate.",
    )
    for cls in _settings():
        for f in fields(cls):
            default = f.default if f.default is not MISSING else None
            if f.type == "bool":
                parser.add_argument(
                    _flag(f),
                    dest=f.name,
                    action=argparse.BooleanOptionalAction,
                    default=argparse.SUPPRESS,
                    help=f"{f.metadata['help']} (default: {default})",
                )
            else:
                shown = "" if default is None else f" (default {default})"
                parser.add_argument(
                    _flag(f),
                    dest=f.name,
                    type=_parser_type(f),
                    default=argparse.SUPPRESS,
                    metavar=f.name.upper(),
                    help=f.metadata["help"] + shown,
                )
    parser.add_argument("--out", help="run directory (default runs/MODEL-seedSEED)")
    parser.add_argument(
        "--reuse-freed-memory",
        action="store_true",
        help="have glibc keep freed memory for reuse: faster for large models on CPU, slower for "
        "small ones (see resnet_bottleneck.xla.reuse_freed_memory)",
    )
    parser.add_argument("--json", action="store_true", help="no progress; print one JSON summary")
    parser.set_defaults(run=run)


def _as_usage(err) -> UsageError:
    """A library error that names a field, told as argparse tells its own: ``argument --flag: ...``."""
    field = getattr(err, "field", None)
    return UsageError(f"argument {flags().get(field, field)}: {err.message}" if field is not None else str(err))


def _remove_unstarted(out) -> None:
    """Removes ``out``, made by this command, where no run has saved a checkpoint there: no half-made run
    is left. Only while no other run holds it (one may have started there since)."""
    import shutil

    from ..errors import BusyError
    from ..training import rundir

    try:
        with rundir.hold(out):
            if not any((out / "checkpoints").glob("[0-9]*")):
                shutil.rmtree(out, ignore_errors=True)
    except (BusyError, OSError):
        pass


def run(args) -> int:
    from pathlib import Path

    from .. import training
    from .._files import WRITE_ERRNOS, refused_path
    from ..data import DataError
    from ..errors import BusyError, InputError, WriteError

    Config, RunOptions = _settings()
    given = vars(args)
    config = Config(**{f.name: given[f.name] for f in fields(Config) if f.name in given})
    options = RunOptions(**{f.name: given[f.name] for f in fields(RunOptions) if f.name in given})
    try:
        config.check()
        options.check()
        if config.data is not None and not Path(config.data).is_dir():
            raise DataError("data", f"{config.data} is not a directory")
        if config.weights is not None and not Path(config.weights).is_file():
            raise training.ConfigError("weights", f"no such weights file: {config.weights}")
    except (training.ConfigError, DataError) as err:
        raise _as_usage(err) from None
    if args.reuse_freed_memory:  # before JAX's first computation, after every check of the input
        from .. import xla

        xla.reuse_freed_memory()
    training.maybe_initialize_distributed()
    out = Path(args.out if args.out is not None else f"runs/{config.model}-seed{config.seed}")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        failed = refused_path(err, out, "the run's output directory")
        if isinstance(failed, WriteError):
            raise failed from None
        raise UsageError(f"argument --out: {failed}") from None
    try:
        result = training.train(config, out=out, options=options, progress=not args.json)
    except training.Stopped as stopped:  # SIGTERM/SIGINT: the step's checkpoint is written; not an error
        print(stopped, file=sys.stderr, flush=True)
        return stopped.status
    except (training.DivergedError, WriteError) as err:  # a run that failed on its way: exit 1
        print(f"{PROG} train: error: {err}", file=sys.stderr)
        return 1
    except InputError as err:  # bad input met on the way (FileError, ImageError: OSErrors too)
        if created:
            _remove_unstarted(out)
        raise _as_usage(err) from None
    except OSError as err:
        if err.errno not in WRITE_ERRNOS:
            raise
        where = err.filename or f"into {out}"  # an append to an open file (metrics.jsonl) names none
        print(f"{PROG} train: error: cannot write {where}: {err.strerror}", file=sys.stderr)
        return 1
    except BusyError as err:  # another run's directory: left as it is
        raise _as_usage(err) from None
    except (training.TrainingError, DataError) as err:
        if created:
            _remove_unstarted(out)
        raise _as_usage(err) from None
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
        "initialised": result.initialised,
        "model_file": result.model_file,
        "skipped_images": result.skipped,
        "config": asdict(config),
    }
    finished_before = result.already_finished  # nothing left to do
    summary["already_finished"] = finished_before
    if args.json:
        print(json.dumps(summary))
    elif finished_before:
        model = f"; model {result.model_file}" if result.model_file is not None else ""
        print(
            f"the run in {out} had already finished: step {result.steps} of {result.steps}, test accuracy "
            f"{result.test_accuracy:.4f}{model} (more epochs need a new --out)"
        )
    else:
        print(
            f"test accuracy {result.test_accuracy:.4f} after {result.epochs} epochs ({result.steps} steps) in "
            f"{result.seconds:.1f} s, {result.images_per_second:,.0f} training images/s"
        )
        print_skipped(result.skipped)
        print(f"checkpoint {result.checkpoint}; metrics {result.metrics}; curves {result.plot}")
        if result.model_file is not None:
            print(f"model {result.model_file} (predict --weights, evaluate --weights, export)")
    return 0
