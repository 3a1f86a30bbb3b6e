"""A run's starting weights (``Config.weights``) and its model file (``OUT/model.safetensors``).

Starting weights are torchvision's (``.pth`` through ``torch.load(weights_only=True)``, or
``.safetensors``) or a model a run exported; :func:`~resnet_bottleneck.io.load_model_file` reads them
strictly, so every backbone tensor and BatchNorm statistic is the file's or the run stops. The
classifier is kept when it fits the data (as many classes and, where the file names them, the
same names), else re-initialised from the seed. The run normalises as the weights were trained:
the file's ``mean``/``std`` where it records them, else ImageNet's (torchvision's weights).
A resume is matched to the weights by content (SHA-256), not by path.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

import jax
import numpy as np

from ..errors import CheckpointError, ConfigError, InputError, TrainingError
from .config import Config

#: The file written at the end of a run with an output directory, and by ``export RUN_DIR``.
MODEL_FILE = "model.safetensors"


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def describe_weights(config: Config) -> dict:
    """What a run records of its starting weights, read without their tensors: ``weights_sha256``
    (None without weights), the ``mean`` and ``std`` the run then normalises with, and the
    ``crop_pct`` and ``interpolation`` of its held-out pass (torchvision's where the file does not say).

    Raises:
      ConfigError: the file is missing, unreadable or its metadata malformed (``field`` is ``weights``).
    """
    from ..io.metadata import eval_crop, preprocessing
    from ..io.safetensors import read_tensors

    metadata = {}
    try:
        if config.weights is not None:
            digest = sha256(config.weights)
            if config.weights.lower().endswith(".safetensors"):
                metadata = read_tensors(config.weights, header_only=True)[1]
        _, mean, std = preprocessing(metadata, config.weights)
        crop_pct, interpolation = eval_crop(metadata, config.weights)
    except FileNotFoundError:
        raise ConfigError("weights", f"no such weights file: {config.weights}") from None
    except (OSError, InputError) as err:  # the file system's refusal, or the library's: a bug is no bad weights
        raise ConfigError("weights", str(err)) from None
    return {
        "weights_sha256": digest if config.weights is not None else None,
        "mean": list(mean),
        "std": list(std),
        "crop_pct": crop_pct,
        "interpolation": interpolation,
    }


def starting_weights(config: Config, classes) -> tuple[dict, str]:
    """``(variables, head)``: the file's variables for :func:`~.state.create_train_state`, without the
    classifier where it does not fit ``classes``; ``head`` says which (kept, or re-initialised and why).

    Raises:
      ConfigError: the file is missing, unreadable or of another model (``field`` is ``weights``).
    """
    from ..io import load_model_file

    try:
        model, variables, metadata = load_model_file(config.weights, config.model)
        named = json.loads(metadata["classes"]) if "classes" in metadata else None
    except (OSError, InputError, json.JSONDecodeError) as err:
        raise ConfigError("weights", str(err)) from None
    theirs = model.num_classes
    if theirs == len(classes) and (named is None or list(named) == list(classes)):
        head = f"classifier kept ({theirs} classes)"
    else:
        why = (
            f"the weights have {theirs} classes, the data {len(classes)}"
            if theirs != len(classes)
            else "the weights' classes have other names than the data's"
        )
        head = f"classifier re-initialised: {why}"
        variables = {**variables, "params": {k: v for k, v in variables["params"].items() if k != "fc"}}
    return jax.tree_util.tree_map(np.asarray, variables), head


def describe_model(config: Config, run: dict, step: int, test_accuracy: float | None) -> dict[str, str]:
    """The metadata of the run's model file (see :mod:`resnet_bottleneck.io.metadata`)."""
    from ..io.metadata import DEFAULT_CROP_PCT, DEFAULT_INTERPOLATION, describe_run

    split = {
        "data": os.path.abspath(config.data) if config.data is not None else None,
        "test_fraction": config.test_fraction,
        "seed": config.seed,
    }
    return describe_run(
        model=config.model,
        classes=run["classes"],
        image_size=config.image_size,
        mean=run["mean"],
        std=run["std"],
        dtype="bfloat16" if config.bf16 else "float32",
        batch_size=config.batch_size,
        split=split,
        config={**asdict(config), "weights_sha256": run.get("weights_sha256")},
        step=step,
        test_accuracy=test_accuracy,
        crop_pct=run.get("crop_pct", DEFAULT_CROP_PCT),  # a run from before these keys: torchvision's
        interpolation=run.get("interpolation", DEFAULT_INTERPOLATION),
    )


def write_model(path: str | os.PathLike, state, metadata: dict[str, str]) -> Path:
    """The train state's eval form (``params``, ``batch_stats``) as our ``.safetensors``, atomically."""
    from ..io.safetensors import save_variables

    return save_variables(path, jax.device_get({"params": state.params, "batch_stats": state.batch_stats}), metadata)


def load_run(run_dir: str | os.PathLike):
    """``(model, variables, metadata)`` of the last checkpoint of the run in ``run_dir``: what the run
    writes as ``run_dir/model.safetensors`` at its end, from any checkpoint (a run still going, or stopped).

    A damaged newest checkpoint (see :meth:`.Checkpoints.verify`) is skipped, named in one line on stderr.

    Raises:
      TrainingError: ``run_dir`` has no checkpoint; CheckpointError: none of them can be read.
    """
    from dataclasses import fields
    from functools import partial

    import jax.numpy as jnp

    from ..models import create_model
    from .checkpoints import Checkpoints
    from .optim import make_optimizer
    from .state import create_train_state

    run_dir = Path(run_dir)
    directory = run_dir / "checkpoints"
    if not directory.is_dir() or not any(p.name.isdigit() for p in directory.iterdir()):
        raise TrainingError(
            f"{run_dir} has no checkpoint (expected {directory}/<step>): not a run directory, or "
            "a run that has not saved one yet"
        )
    checkpoints = Checkpoints(directory, None, Config())

    def read(step: int):
        saved, run = checkpoints.saved_run(step)
        config = Config(**{f.name: saved[f.name] for f in fields(Config) if f.name in saved})
        run = {**run, "weights_sha256": saved.get("weights_sha256")}
        dtype = jnp.bfloat16 if config.bf16 else None
        model = create_model(config.model, num_classes=len(run["classes"]), dtype=dtype)
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        init = partial(create_train_state, model, make_optimizer(config, 1), config.seed, config.image_size)
        abstract = jax.tree_util.tree_map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), jax.eval_shape(init)
        )
        state = checkpoints.restore_state(step, abstract)
        return model, config, run, jax.device_get({"params": state.params, "batch_stats": state.batch_stats})

    # The newest checkpoint that verifies and restores; a damaged one is named and left where it is (a
    # reader never changes a run's directory, nor waits for a live run: orbax lists only finalized steps).
    found = checkpoints.newest(read)
    if found is None:
        raise CheckpointError(f"{run_dir} has no checkpoint (expected {directory}/<step>)")
    step, (model, config, run, variables) = found
    return model, variables, describe_model(config, run, step, _test_accuracy(run_dir / "metrics.jsonl", step))


def _test_accuracy(metrics: Path, step: int) -> float | None:
    """The held-out accuracy the run logged at ``step`` (an epoch's end), if it did."""
    try:
        lines = metrics.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("step") == step:
            return record.get("test_accuracy")
    return None
