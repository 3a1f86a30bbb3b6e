"""Training: a complete loop for the family, on one laptop or many devices and hosts.

The train step is jitted over a ``jax.sharding.Mesh`` whose ``data`` axis splits the
batch; parameters are replicated. BatchNorm's batch statistics are means over the
batch axis, so under this sharding XLA computes them over the *global* batch
(synchronised BatchNorm) with no code of ours. On several hosts the same command runs
after ``jax.distributed.initialize`` (see :func:`maybe_initialize_distributed`): the
mesh then spans every host's devices and each host feeds its share of each batch.

Everything that decides the result is a function of ``seed`` and the step number —
the data order (a permutation per epoch), the augmentation, the initial weights — so a
run resumed from a checkpoint continues exactly as if it had never stopped.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from . import _checks, xla
from .models import ResNet, create_model

DEFAULT_MODEL = "resnet_tiny"


class TrainingError(Exception):
    """A run that cannot go on: bad data, bad settings, a bad checkpoint."""


class DivergedError(TrainingError):
    """The loss became NaN or infinite."""


# --- data ----------------------------------------------------------------------------


@dataclass
class Dataset:
    """Images (N, H, W, C) float32 in [0, 1] or uint8, integer labels, and class names."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]


def digits(image_size: int = 32, test_fraction: float = 0.2, seed: int = 0) -> tuple[Dataset, Dataset]:
    """scikit-learn's bundled 8x8 ``digits`` (1,797 images, 10 classes), upsampled, split."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise TrainingError("the default data set needs scikit-learn: pip install 'resnet-bottleneck[train]'") from None
    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[..., None]
    reps = max(1, image_size // images.shape[1])
    images = images.repeat(reps, axis=1).repeat(reps, axis=2)  # nearest-neighbour upsampling
    images = np.repeat(images, 3, axis=-1)
    labels = data.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(labels))
    n_test = int(round(len(labels) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    classes = [str(i) for i in range(10)]
    return Dataset(images[train], labels[train], classes), Dataset(images[test], labels[test], classes)


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def image_folder(root: str | os.PathLike, image_size: int) -> Dataset:
    """An ImageFolder tree (``root/class_x/xxx.png``), every image decoded, resized, checked."""
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    if not root.is_dir():
        raise TrainingError(f"--data: {root} is not a directory")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise TrainingError(f"--data: {root} has no class folders (expected root/class_x/image.png)")
    images, labels = [], []
    for index, directory in enumerate(class_dirs):
        files = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise TrainingError(f"--data: class folder {directory} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        for file in files:
            try:
                with Image.open(file) as image:
                    image = image.convert("RGB").resize((image_size, image_size), Image.BILINEAR)
                    images.append(np.asarray(image, np.uint8))
            except (UnidentifiedImageError, OSError) as err:
                raise TrainingError(f"--data: cannot read image {file} ({err})") from None
            labels.append(index)
    return Dataset(np.stack(images), np.asarray(labels, np.int32), [d.name for d in class_dirs])


def split(data: Dataset, test_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    order = np.random.default_rng(seed).permutation(len(data.labels))
    n_test = max(1, int(round(len(order) * test_fraction)))
    if n_test >= len(order):
        raise TrainingError(f"--data: {len(order)} images are too few to hold out a test split")
    test, train = order[:n_test], order[n_test:]
    return (Dataset(data.images[train], data.labels[train], data.classes),
            Dataset(data.images[test], data.labels[test], data.classes))


def augment(images: np.ndarray, rng: np.random.Generator, flip: bool = True) -> np.ndarray:
    """Random resized crop (scale 0.35-1, aspect 3/4-4/3, nearest) and horizontal flip, on the host."""
    n, h, w, _ = images.shape
    out = np.empty_like(images)
    for i in range(n):
        area = h * w * rng.uniform(0.35, 1.0)
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        ch = min(h, max(1, int(round(math.sqrt(area / aspect)))))
        cw = min(w, max(1, int(round(math.sqrt(area * aspect)))))
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        rows = top + (np.arange(h) * ch // h)
        cols = left + (np.arange(w) * cw // w)
        crop = images[i][rows][:, cols]
        out[i] = crop[:, ::-1] if flip and rng.random() < 0.5 else crop
    return out


# --- configuration -----------------------------------------------------------------------


@dataclass
class Config:
    """Everything that decides a run (saved with its checkpoints; a resume must match it)."""

    model: str = DEFAULT_MODEL
    data: str | None = None  # None: scikit-learn's digits
    image_size: int = 32
    epochs: int = 15
    batch_size: int = 64
    learning_rate: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    augment: bool = False
    bf16: bool = False
    seed: int = 0
    test_fraction: float = 0.2

    def check(self) -> None:
        for name in ("image_size", "epochs", "batch_size"):
            _checks.positive_int(name, getattr(self, name))
        _checks.seed(self.seed)
        if not 0 <= self.label_smoothing < 1:
            raise TrainingError(f"--label-smoothing must be in [0, 1); got {self.label_smoothing}")
        if not 0 < self.test_fraction < 1:
            raise TrainingError(f"--test-fraction must be in (0, 1); got {self.test_fraction}")
        for name in ("learning_rate", "weight_decay", "warmup_epochs", "momentum"):
            if not (getattr(self, name) >= 0 and math.isfinite(getattr(self, name))):
                raise TrainingError(f"--{name.replace('_', '-')} must be a finite number >= 0; got {getattr(self, name)}")


# --- the step --------------------------------------------------------------------------


def _decay_mask(params):
    """Weight decay on conv and dense kernels only: not on BatchNorm scales or biases."""
    return jax.tree_util.tree_map_with_path(lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def make_optimizer(config: Config, steps_per_epoch: int) -> optax.GradientTransformation:
    total = config.epochs * steps_per_epoch
    warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), total - 1)
    schedule = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, max(warmup, 1), max(total, 2))
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay, mask=_decay_mask),
        optax.sgd(schedule, momentum=config.momentum, nesterov=config.nesterov),
    )


def make_train_step(model: ResNet, optimizer, num_classes: int, label_smoothing: float) -> Callable:
    def train_step(state, images, labels):
        def loss_fn(params):
            logits, updates = model.apply({"params": params, "batch_stats": state["batch_stats"]}, images,
                                          train=True, mutable=["batch_stats"])
            targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
            loss = optax.softmax_cross_entropy(logits, targets).mean()
            return loss, (logits, updates["batch_stats"])

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        new_state = {
            "params": optax.apply_updates(state["params"], updates),
            "batch_stats": batch_stats,
            "opt_state": opt_state,
            "step": state["step"] + 1,
        }
        metrics = {"loss": loss, "correct": jnp.sum(jnp.argmax(logits, -1) == labels)}
        return new_state, metrics

    return train_step


def make_eval_step(model: ResNet) -> Callable:
    def eval_step(state, images, labels, mask):
        logits = model.apply({"params": state["params"], "batch_stats": state["batch_stats"]}, images, train=False)
        return jnp.sum((jnp.argmax(logits, -1) == labels) & mask)

    return eval_step


def data_mesh() -> Mesh:
    """A one-axis mesh over every device of every process, the batch split along ``data``."""
    return Mesh(np.asarray(jax.devices()), ("data",))


def maybe_initialize_distributed() -> bool:
    """Join a multi-host run when the cluster says so (JAX's own runtime, nothing home-made).

    Set ``JAX_COORDINATOR_ADDRESS`` (host:port of process 0), ``JAX_NUM_PROCESSES`` and
    ``JAX_PROCESS_ID`` on every host (or run under SLURM / Cloud TPU, which JAX detects).
    """
    if os.environ.get("JAX_COORDINATOR_ADDRESS") and os.environ.get("JAX_NUM_PROCESSES"):
        jax.distributed.initialize(
            coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
        )
        return True
    return False


# --- checkpoints -----------------------------------------------------------------------


class Checkpoints:
    """Orbax checkpoints of the train state: atomic (written aside, then renamed), the last N kept."""

    def __init__(self, directory: Path, keep: int, config: Config):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = directory.resolve()
        self.config = config
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False),
        )

    def latest(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state) -> None:
        ocp = self._ocp
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            config=ocp.args.JsonSave(asdict(self.config)),
        ))
        self.manager.wait_until_finished()

    def restore(self, step: int, abstract_state):
        ocp = self._ocp
        try:
            saved = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
        except Exception as err:  # orbax raises many types for unreadable metadata
            raise TrainingError(f"checkpoint {self.directory / str(step)} is unreadable ({type(err).__name__}: {err})") from None
        differ = {k: (saved.get(k), v) for k, v in asdict(self.config).items()
                  if k not in ("epochs",) and saved.get(k) != v}
        if differ:
            listed = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in differ.items())
            raise TrainingError(f"checkpoint {self.directory / str(step)} was written by a different run ({listed}); "
                                "use another --checkpoint-dir or the same settings")
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
        except Exception as err:
            raise TrainingError(f"checkpoint {self.directory / str(step)} cannot be restored "
                                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
        return restored["state"]


# --- the loop --------------------------------------------------------------------------


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
    history: list = field(default_factory=list)
    state: Any = field(default=None, repr=False)  # the final train state: params, batch_stats, opt_state, step


def _batches(n: int, batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """The epoch's batches of indices: a fixed permutation per (seed, epoch); the tail is dropped."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    steps = n // batch_size
    return order[: steps * batch_size].reshape(steps, batch_size)


def _to_float(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images.astype(np.float32)


def _normalise(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return (_to_float(images) - mean) / std


class _Progress:
    """One line per epoch; a live bar on a terminal."""

    def __init__(self, stream=sys.stderr, enabled: bool = True):
        self.stream, self.enabled = stream, enabled
        self.live = enabled and hasattr(stream, "isatty") and stream.isatty()

    def update(self, epoch, epochs, step, steps, loss, acc, ips, eta, final=False):
        if not self.enabled or not (self.live or final):
            return
        width = 24
        done = int(width * step / max(steps, 1))
        line = (f"epoch {epoch}/{epochs} [{'#' * done}{'.' * (width - done)}] {step}/{steps} "
                f"loss {loss:.4f} acc {acc:.3f} {ips:,.0f} img/s ETA {eta:,.0f}s")
        self.stream.write(("\r" if self.live else "") + line + ("\n" if final else ""))
        self.stream.flush()


def train(
    config: Config,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 50,
    keep_checkpoints: int = 3,
    metrics_path: str | os.PathLike | None = None,
    plot_path: str | os.PathLike | None = None,
    progress: bool = True,
    datasets: tuple[Dataset, Dataset] | None = None,
) -> Result:
    """Train ``config.model`` and evaluate it on the held-out split; resume from ``checkpoint_dir``.

    Raises:
      TrainingError: bad data or settings, a corrupt or foreign checkpoint, a NaN/Inf loss.
    """
    config.check()
    started = time.perf_counter()
    if datasets is None:
        if config.data is None:
            datasets = digits(config.image_size, config.test_fraction, config.seed)
        else:
            datasets = split(image_folder(config.data, config.image_size), config.test_fraction, config.seed)
    train_set, test_set = datasets
    mesh = data_mesh()
    n_devices = mesh.devices.size
    if config.batch_size % n_devices:
        raise TrainingError(f"--batch-size {config.batch_size} does not divide over {n_devices} devices")
    if len(train_set.labels) < config.batch_size:
        raise TrainingError(f"--batch-size {config.batch_size} is larger than the {len(train_set.labels)} training images")

    num_classes = len(train_set.classes)
    model = create_model(config.model, num_classes=num_classes, dtype=jnp.bfloat16 if config.bf16 else None)
    steps_per_epoch = len(train_set.labels) // config.batch_size
    total_steps = config.epochs * steps_per_epoch
    optimizer = make_optimizer(config, steps_per_epoch)
    sample = _to_float(train_set.images[:1])
    pixels = _to_float(train_set.images)
    mean, std = pixels.mean(axis=(0, 1, 2)), pixels.std(axis=(0, 1, 2)) + 1e-6
    del pixels

    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P("data"))

    def init_state():
        variables = model.init(jax.random.PRNGKey(config.seed), jnp.asarray(sample))
        return {"params": variables["params"], "batch_stats": variables["batch_stats"],
                "opt_state": optimizer.init(variables["params"]), "step": jnp.zeros((), jnp.int32)}

    abstract = jax.eval_shape(init_state)
    state_sharding = jax.tree_util.tree_map(lambda _: replicated, abstract)
    checkpoints = None
    resumed_from = None
    if checkpoint_dir is not None:
        checkpoints = Checkpoints(Path(checkpoint_dir), keep_checkpoints, config)
        resumed_from = checkpoints.latest()
    if resumed_from is not None:
        target = jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sharding)
        state = checkpoints.restore(resumed_from, target)
    else:
        state = jax.jit(init_state, out_shardings=state_sharding)()

    train_step = xla.jit(make_train_step(model, optimizer, num_classes, config.label_smoothing),
                         in_shardings=(state_sharding, batch_sharding, batch_sharding),
                         out_shardings=(state_sharding, replicated), donate_argnums=0)
    eval_step = xla.jit(make_eval_step(model), in_shardings=(state_sharding, batch_sharding, batch_sharding, batch_sharding),
                        out_shardings=replicated)

    def put(array, sharding):
        """The global batch as a sharded array; on several hosts each one supplies its own slice."""
        if jax.process_count() == 1:
            return jax.device_put(array, sharding)
        per_host = len(array) // jax.process_count()
        local = array[jax.process_index() * per_host:(jax.process_index() + 1) * per_host]
        return jax.make_array_from_process_local_data(sharding, local, array.shape)

    def evaluate(state) -> float:
        correct = 0
        n = len(test_set.labels)
        for start in range(0, n, config.batch_size):
            idx = np.arange(start, start + config.batch_size)
            mask = idx < n
            idx = np.where(mask, idx, 0)
            images = _normalise(test_set.images[idx], mean, std)
            correct += int(eval_step(state, put(images, batch_sharding), put(test_set.labels[idx], batch_sharding),
                                     put(mask, batch_sharding)))
        return correct / n

    bar = _Progress(enabled=progress)
    step = int(state["step"])
    history = _resume_history(metrics_path, step) if metrics_path is not None else []
    images_timed, compute_seconds = 0, 0.0
    first_step = step
    metrics_file = open(metrics_path, "a") if metrics_path is not None else None
    try:
        while step < total_steps:
            epoch = step // steps_per_epoch
            batches = _batches(len(train_set.labels), config.batch_size, config.seed, epoch)
            epoch_loss, epoch_correct, epoch_seen = 0.0, 0, 0
            epoch_start = time.perf_counter()
            for index in range(step % steps_per_epoch, steps_per_epoch):
                idx = batches[index]
                images = train_set.images[idx]
                if config.augment:
                    images = augment(images, np.random.default_rng([config.seed, epoch, index]))
                images = _normalise(images, mean, std)
                t0 = time.perf_counter()
                state, metrics = train_step(state, put(images, batch_sharding), put(train_set.labels[idx], batch_sharding))
                loss = float(metrics["loss"])  # waits for the step: the NaN check and the bar need it
                if step > first_step:  # the first step of a process includes its compilation
                    compute_seconds += time.perf_counter() - t0
                    images_timed += len(idx)
                step += 1
                if not math.isfinite(loss):
                    last = checkpoints.latest() if checkpoints else None
                    kept = f"; the last good checkpoint is step {last} in {checkpoints.directory}" if last is not None else ""
                    raise DivergedError(f"the loss became {loss} at step {step} (epoch {epoch + 1}); "
                                        f"stopped without saving it{kept}")
                epoch_loss += loss * len(idx)
                epoch_correct += int(metrics["correct"])
                epoch_seen += len(idx)
                if checkpoints is not None and step % checkpoint_every == 0:
                    checkpoints.save(step, state)
                elapsed = time.perf_counter() - epoch_start
                ips = epoch_seen / max(elapsed, 1e-9)
                eta = (total_steps - step) * config.batch_size / max(ips, 1e-9)
                bar.update(epoch + 1, config.epochs, index + 1, steps_per_epoch, epoch_loss / epoch_seen,
                           epoch_correct / epoch_seen, ips, eta)
            accuracy = evaluate(state)
            record = {"epoch": epoch + 1, "step": step, "train_loss": epoch_loss / max(epoch_seen, 1),
                      "train_accuracy": epoch_correct / max(epoch_seen, 1), "test_accuracy": accuracy,
                      "images_per_second": epoch_seen / max(time.perf_counter() - epoch_start, 1e-9)}
            history.append(record)
            bar.update(epoch + 1, config.epochs, steps_per_epoch, steps_per_epoch, record["train_loss"],
                       record["train_accuracy"], record["images_per_second"], 0, final=True)
            if metrics_file is not None:
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()
        if checkpoints is not None and checkpoints.latest() != step:
            checkpoints.save(step, state)
    finally:
        if metrics_file is not None:
            metrics_file.close()
    test_accuracy = evaluate(state) if not history else history[-1]["test_accuracy"]
    if plot_path is not None and history:
        try:
            plot_curves(history, plot_path)
        except ImportError:
            print("curves not drawn: matplotlib is not installed (pip install 'resnet-bottleneck[train]')",
                  file=sys.stderr)
            plot_path = None
    return Result(
        test_accuracy=test_accuracy,
        epochs=config.epochs,
        steps=step,
        images_per_second=images_timed / compute_seconds if compute_seconds else 0.0,
        seconds=time.perf_counter() - started,
        checkpoint=str(checkpoints.directory / str(step)) if checkpoints is not None else None,
        metrics=str(metrics_path) if metrics_path is not None else None,
        plot=str(plot_path) if plot_path is not None else None,
        resumed_from=resumed_from,
        history=history,
        state=state,
    )


def _resume_history(path, step: int) -> list[dict]:
    """The epochs a resumed run already logged, up to its checkpoint; later lines are dropped."""
    from ._files import atomic_write

    path = Path(path)
    if not path.exists():
        return []
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if isinstance(record, dict) and record.get("step", step + 1) <= step:
            kept.append(record)
    atomic_write(path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in kept).encode()))
    return kept


def plot_curves(history: list[dict], path) -> None:
    """Loss and accuracy per epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ._files import atomic_write

    epochs = [h["epoch"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5), constrained_layout=True)
    left.plot(epochs, [h["train_loss"] for h in history], "o-")
    left.set(xlabel="epoch", ylabel="training loss", title="loss")
    right.plot(epochs, [h["train_accuracy"] for h in history], "o-", label="train")
    right.plot(epochs, [h["test_accuracy"] for h in history], "s-", label="test")
    right.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.01))
    right.legend()
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
