"""The training loop: it only calls the pieces (data pipeline, steps, checkpoints, report).

Everything that decides the result is a function of ``seed`` and the step: the data order
and augmentation (see ``data.pipeline``), the initial weights. So a run resumed from a
checkpoint (train state and iterator state together) continues exactly as if it had never
stopped. The host never waits on a step to queue the next: the loss is read every
``log_every`` steps (one step behind), and always in full before a checkpoint is written,
so a NaN stops the run before a bad state is saved.

The epoch's running sums (loss, correct, seen) travel in each checkpoint, summed per step in step
order in float64, so an epoch interrupted and resumed reports what an uninterrupted one does, and
``metrics.jsonl`` holds only what the seed decides (timings go to ``timing.jsonl``). A checkpoint
at an epoch's last step is written after that epoch's evaluation, unless a signal stopped the run
there first (its sums then hold the whole epoch, and the resume evaluates it).
"""

from __future__ import annotations

import functools
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from .. import data, xla
from ..errors import ConfigError, DivergedError, TrainingError
from ..models import create_model
from . import rundir
from .checkpoints import Checkpoints
from .config import Config, RunOptions
from .devices import batch_sharding, data_mesh, put_batch
from .evaluation import Evaluation, compile_eval_step
from .optim import make_optimizer
from .report import Progress, plot_curves, resume_history
from .state import create_train_state, train_step
from .stop import Stopped, StopRequests, agreeing
from .weights import MODEL_FILE, describe_model, describe_weights, starting_weights, write_model


@dataclass
class Result:
    test_accuracy: float
    epochs: int
    steps: int
    images_per_second: float
    seconds: float
    checkpoint: str | None
    metrics: str | None
    plot: str | None
    resumed_from: int | None = None
    skipped: list[str] = field(default_factory=list)  # unreadable images, replaced (training) or left out (evaluation)
    initialised: str | None = None  # from which weights, and what became of the classifier (None: random, or resumed)
    model_file: str | None = None  # OUT/model.safetensors: the final weights, for predict and evaluate
    history: list = field(default_factory=list)
    already_finished: bool = False  # resumed from its last step with every epoch reported: nothing was done
    state: Any = field(default=None, repr=False)  # the final TrainState


def load_datasets(config: Config):
    """(training, evaluation) sources: digits by default, else the folder's layout (see ``data.folder``)."""
    if config.data is None:
        return data.digits(config.test_fraction, config.seed)
    return data.image_folder_splits(config.data, config.test_fraction, config.seed)


class _Meter:
    """Each step's loss and correct count stay on the device until read, in order, lazily; the
    epoch's sums are added one step at a time in step order (float64), so they do not depend on
    when they are read, and they travel in checkpoints (:meth:`sums`, :meth:`restore`).

    The host may run ``AHEAD`` steps ahead of the device and no more: each queued step holds its
    input batch in host memory.
    """

    AHEAD = 2

    def __init__(self, batch_size: int, checkpoints: Checkpoints | None, steps_per_epoch: int):
        self.batch_size, self.checkpoints, self.steps_per_epoch = batch_size, checkpoints, steps_per_epoch
        self.pending: list[tuple[int, dict]] = []
        self.loss, self.correct, self.seen = 0.0, 0, 0

    def add(self, step: int, metrics: dict) -> None:
        self.pending.append((step, metrics))
        if len(self.pending) > self.AHEAD:
            jax.block_until_ready(self.pending[-self.AHEAD - 1][1])

    def read(self, keep: int = 0) -> int:
        """Reads all but the newest ``keep`` steps; raises :class:`DivergedError` at a non-finite loss."""
        ready, self.pending = self.pending[: len(self.pending) - keep], self.pending[len(self.pending) - keep :]
        if not ready:
            return 0
        losses, correct = jax.device_get(([m["loss"] for _, m in ready], [m["correct"] for _, m in ready]))
        for (step, _), loss in zip(ready, losses):
            if not math.isfinite(float(loss)):
                last = self.checkpoints.latest() if self.checkpoints else None
                kept = (
                    f"; the last good checkpoint is step {last} in {self.checkpoints.directory}"
                    if last is not None
                    else ""
                )
                raise DivergedError(
                    f"the loss became {float(loss)} at step {step} "
                    f"(epoch {(step - 1) // self.steps_per_epoch + 1}); stopped without saving it{kept}"
                )
        for loss, right in zip(losses, correct):
            self.loss += float(loss) * self.batch_size
            self.correct += int(right)
            self.seen += self.batch_size
        return len(ready)

    def sums(self) -> dict:
        """The epoch's sums so far (every step read), as a checkpoint keeps them (JSON: float64 exactly)."""
        return {"loss": self.loss, "correct": self.correct, "seen": self.seen}

    def restore(self, sums: dict) -> None:
        self.loss, self.correct, self.seen = float(sums["loss"]), int(sums["correct"]), int(sums["seen"])

    def epoch_totals(self) -> tuple[float, float]:
        totals = (self.loss / max(self.seen, 1), self.correct / max(self.seen, 1))
        self.loss, self.correct, self.seen = 0.0, 0, 0
        return totals


class _Input:
    """The training stream: its batches, where it stands (for checkpoints), the unreadable files met.

    grain's iterator state fits only the worker count that wrote it; with another, the stream,
    a function of the step, starts afresh at the checkpoint's step.
    """

    def __init__(self, make, workers: int, step: int, position: dict | None = None):
        self.make, self.workers = make, workers
        same = position is not None and position["workers"] == workers
        self.start = position["start"] if same else step
        self.iterator = iter(make(start_step=self.start))
        if same:
            self.iterator.set_state(position["grain"])
        self.position = self._where(step)
        self.bad: set[int] = set()

    def _where(self, step: int) -> dict:
        return {"step": step, "workers": self.workers, "start": self.start, "grain": self.iterator.get_state()}

    def next(self, step: int) -> dict:
        """The batch of step ``step + 1``."""
        batch = next(self.iterator)
        self.position = self._where(step + 1)
        self.bad.update(int(i) for i in batch["bad"] if i >= 0)
        return batch

    def close(self) -> None:
        self.iterator.close()


def _saved(batches: _Input, meter: _Meter) -> dict:
    """What a checkpoint keeps beside the state: the input's position and the epoch's sums (every step read)."""
    meter.read()
    return {**batches.position, "sums": meter.sums()}


def _failed(err: Exception, step: int, state, meter: _Meter, checkpoints: Checkpoints | None, batches: _Input):
    """The input failed before step ``step + 1``: keep a checkpoint of ``step`` and say where."""
    position = _saved(batches, meter)
    if checkpoints is not None and checkpoints.latest() != step:
        checkpoints.save(step, state, position)
    kept = f"; checkpoint at step {step} kept" if checkpoints is not None else ""
    if isinstance(err, data.DataError):
        return data.DataError(err.field, f"{err.message} (at step {step + 1}{kept})")
    return TrainingError(f"the input pipeline failed at step {step + 1} ({type(err).__name__}: {err}){kept}")


@rundir.holding
def train(
    config: Config,
    out: str | Path | None = None,
    options: RunOptions | None = None,
    progress: bool = True,
    datasets=None,
) -> Result:
    """Train ``config.model`` and evaluate it each epoch; with ``out``, checkpoint there (and resume
    from there), and write ``metrics.jsonl``, ``timing.jsonl`` and ``curves.png``.

    ``datasets`` replaces the configured data with ``(training, evaluation)`` sources
    (``data.ImageFiles`` or ``data.ImageArrays``).

    With ``out``, the run holds ``out`` (``out/run.lock``, see :mod:`.rundir`; process 0 only) while it
    lives, and resumes from the newest checkpoint that restores, skipping damaged ones (one line each).

    Raises:
      ConfigError: a bad setting (``field`` names it); ``data.DataError``: bad data.
      TrainingError: a foreign checkpoint; CheckpointError: none restores; BusyError: a live run holds ``out``.
      DivergedError: a NaN/Inf loss; WriteError: a checkpoint or the model file could not be written (full disk).
      Stopped: SIGTERM or SIGINT (unless ``options.stop_on_signal`` is off) stopped the run after a
        step, its checkpoint written (with ``out``); the same call resumes there. Not an error.
    """
    with StopRequests(getattr(options, "stop_on_signal", True)) as stops:  # noted from here, acted on at steps
        return _train(config, out, options, progress, datasets, stops)


def _train(config: Config, out, options: RunOptions | None, progress: bool, datasets, stops: StopRequests) -> Result:
    options = options or RunOptions()
    config.check()
    options.check()
    started = time.perf_counter()
    train_set, eval_set = datasets if datasets is not None else load_datasets(config)
    data.folder.require_two_classes(train_set, "data" if datasets is None else "datasets")
    workers = options.workers
    if workers is None:
        workers = data.default_workers(train_set)
    mesh = data_mesh()
    if config.batch_size % mesh.devices.size:
        raise ConfigError("batch_size", f"{config.batch_size} does not divide over {mesh.devices.size} devices")
    stream = functools.partial(
        data.training_batches,
        train_set,
        image_size=config.image_size,
        batch_size=config.batch_size,
        seed=config.seed,
        epochs=config.epochs,
        augment=config.augment and isinstance(train_set, data.ImageFiles),
        workers=workers,
    )
    stream()  # checks the batch against the data and the hosts before any compilation
    steps_per_epoch = len(train_set) // config.batch_size

    run = {"classes": list(train_set.classes), **describe_weights(config)}
    model = create_model(
        config.model,
        num_classes=len(train_set.classes),
        trainable_layers=config.trainable_layers,
        dtype=jnp.bfloat16 if config.bf16 else None,
        drop_path_rate=config.drop_path,
        drop_rate=config.drop_rate,
    )
    init = functools.partial(
        create_train_state, model, make_optimizer(config, steps_per_epoch), config.seed, config.image_size
    )
    replicated, rows = NamedSharding(mesh, P()), batch_sharding(mesh)
    abstract = jax.eval_shape(init)
    state_sharding = jax.tree_util.tree_map(lambda _: replicated, abstract)
    checkpoints = Checkpoints(Path(out) / "checkpoints", options.keep, config, run) if out is not None else None
    target = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sharding
    )
    found = checkpoints.restore_newest(target) if checkpoints is not None else None  # a damaged one skipped, said
    resumed_from, initialised = (found[0] if found else None), None
    if found is not None:
        _, state, position = found
    else:
        start = None
        if config.weights is not None:
            start, head = starting_weights(config, train_set.classes)
            initialised = f"initialised from {config.weights}: every backbone tensor and BatchNorm statistic; {head}"
            if progress:
                print(initialised, file=sys.stderr, flush=True)
        state, position = jax.jit(init, out_shardings=state_sharding)(start), None
    normalisation = {"mean": tuple(run["mean"]), "std": tuple(run["std"])}
    step_fn = xla.jit(
        agreeing(  # with several processes, each one's signal flag rides in the batch (see .stop)
            functools.partial(
                train_step,
                num_classes=len(train_set.classes),
                label_smoothing=config.label_smoothing,
                freeze_bn=config.freeze_bn,
                seed=config.seed if config.drop_path or config.drop_rate else None,
                **normalisation,
            )
        ),
        in_shardings=(state_sharding, rows),
        out_shardings=(state_sharding, replicated),
        donate_argnums=0,
    )
    evaluate = Evaluation(
        eval_set,
        config.image_size,
        config.batch_size,
        workers,
        compile_eval_step(mesh, state_sharding, **normalisation),
        rows,
        run["crop_pct"],  # the starting weights' evaluation resize, as the model file records it
        run["interpolation"],
    )

    step = first_step = int(jax.device_get(state.step))
    writer = jax.process_index() == 0 and out is not None
    metrics_path = Path(out) / "metrics.jsonl" if out is not None else None
    timing_path = Path(out) / "timing.jsonl" if out is not None else None
    meter = _Meter(config.batch_size, checkpoints, steps_per_epoch)
    sums = (position or {}).get("sums")  # none in checkpoints older than the sums
    if sums is not None:
        meter.restore(sums)
    # Stopped at an epoch's last step before its evaluation: that epoch ends first, from its saved sums.
    unreported = int(bool(sums and sums["seen"]) and step % steps_per_epoch == 0)
    history = resume_history(metrics_path, step - unreported) if writer else []
    if writer:
        resume_history(timing_path, step)
    bar = Progress(enabled=progress)
    timed_from = None
    batches = _Input(stream, workers, step, position)
    try:
        stop = stops.before()  # a signal while the run was being set up: stop before its first step
        if stop is not None:
            raise _stopped(stop, step, state, meter, checkpoints, batches)
        epoch = step // steps_per_epoch - unreported
        while epoch < config.epochs:
            bar.start_epoch(epoch + 1, config.epochs, steps_per_epoch, step - epoch * steps_per_epoch)
            epoch_start, shown = time.perf_counter(), step
            for _ in range(step - epoch * steps_per_epoch, steps_per_epoch):
                try:
                    batch = batches.next(step)
                except Exception as err:  # unreadable data or a dead worker: keep what was done, say where
                    raise _failed(err, step, state, meter, checkpoints, batches) from None
                state, metrics = step_fn(state, stops.mark(len(batch["label"]), put_batch(batch, rows), rows))
                step += 1
                meter.add(step, metrics)
                if step == first_step + 1:  # the first step of a process includes its compilation
                    jax.block_until_ready(metrics)
                    timed_from = time.perf_counter()
                stop = stops.after(step, metrics)
                if stop is not None:
                    raise _stopped(stop, step, state, meter, checkpoints, batches)
                if checkpoints is not None and step % options.checkpoint_every == 0 and step % steps_per_epoch:
                    # every loss up to here is finite before the state is saved
                    checkpoints.save(step, state, _saved(batches, meter))
                elif step % options.log_every == 0:
                    meter.read(keep=1)  # one step behind: the device keeps working meanwhile
                if meter.seen and step - shown >= options.log_every:
                    bar.update(
                        step - shown,
                        meter.loss / meter.seen,
                        meter.correct / meter.seen,
                        (step - shown) * config.batch_size / max(time.perf_counter() - epoch_start, 1e-9),
                    )
                    shown = step
            meter.read()
            seconds = time.perf_counter() - epoch_start
            loss, accuracy = meter.epoch_totals()
            scores = evaluate(state)
            record = {
                "epoch": epoch + 1,
                "step": step,
                "train_loss": loss,
                "train_accuracy": accuracy,
                "test_accuracy": scores.top1,
                "test_top5": scores.top5,
                "test_loss": scores.loss,
            }
            timing = {
                "epoch": epoch + 1,
                "step": step,
                "images_per_second": (step - max(epoch * steps_per_epoch, first_step))
                * config.batch_size
                / max(seconds, 1e-9),
                "seconds": seconds,
            }
            history.append(record)
            bar.update(step - shown, loss, accuracy, timing["images_per_second"])
            bar.end_epoch(record, config.epochs, timing["images_per_second"])
            if writer:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                with open(timing_path, "a") as f:
                    f.write(json.dumps(timing) + "\n")
            epoch += 1
            if checkpoints is not None and step % options.checkpoint_every == 0 and epoch < config.epochs:
                checkpoints.save(step, state, _saved(batches, meter))  # after the epoch's evaluation
        meter.read()
        if checkpoints is not None and checkpoints.latest() != step:
            checkpoints.save(step, state, _saved(batches, meter))
        test_accuracy = history[-1]["test_accuracy"] if history else evaluate(state).top1
        model_file = None
        if writer:  # the final weights, with what predict and evaluate need to use them as this run did
            model_file = str(
                write_model(Path(out) / MODEL_FILE, state, describe_model(config, run, step, test_accuracy))
            )
    finally:
        bar.close()
        evaluate.close()
        batches.close()
    timed = time.perf_counter() - timed_from - evaluate.seconds if timed_from is not None else 0.0
    return Result(
        test_accuracy=test_accuracy,
        epochs=config.epochs,
        steps=step,
        images_per_second=(step - first_step - 1) * config.batch_size / timed if timed > 0 else 0.0,
        seconds=time.perf_counter() - started,
        checkpoint=str(checkpoints.directory / str(step)) if checkpoints is not None else None,
        metrics=str(metrics_path) if writer else None,
        plot=_plot(history, Path(out) / "curves.png") if writer and history else None,
        resumed_from=resumed_from,
        already_finished=resumed_from == config.epochs * steps_per_epoch and not unreported,
        skipped=sorted({train_set.path(i) for i in batches.bad} | {eval_set.path(i) for i in evaluate.bad}),
        initialised=initialised,
        model_file=model_file,
        history=history,
        state=state,
    )


def _stopped(signal_number: int, step: int, state, meter: _Meter, checkpoints: Checkpoints | None, batches: _Input):
    """A signal stopped the run after step ``step``: keep a checkpoint of it (the epoch's sums too)."""
    position = _saved(batches, meter)  # a NaN found here stops the run as it would have anyway
    if checkpoints is not None and checkpoints.latest() != step:
        checkpoints.save(step, state, position)
    where = str(checkpoints.directory / str(step)) if checkpoints is not None else None
    return Stopped(signal_number, step, max(step - 1, 0) // meter.steps_per_epoch + 1, where)


def _plot(history: list[dict], path: Path) -> str | None:
    try:
        plot_curves(history, path)
    except ImportError:
        print("curves not drawn: matplotlib is not installed (pip install 'resnet-bottleneck[train]')", file=sys.stderr)
        return None
    return str(path)
