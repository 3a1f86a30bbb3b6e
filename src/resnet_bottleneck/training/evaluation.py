"""Evaluation: top-1 and top-5 accuracy and mean loss over a data set, with the evaluation transform.

One implementation for the loop's per-epoch evaluation and for ``evaluate`` on a saved model:
the same pipeline (``data.evaluation_batches``), the same jitted ``eval_step`` sharded over the
same mesh, so a model evaluated afterwards on its run's held-out images scores what the run reported.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

import jax
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from .. import data, xla
from ..data.pipeline import private_copy
from ..data.transforms import CROP_FRACTION, IMAGENET_MEAN, IMAGENET_STD, normalize
from .devices import batch_sharding, data_mesh, put_batch
from .state import TrainState, eval_step


@dataclass
class Scores:
    """What an evaluation pass found: accuracies in [0, 1], the mean cross-entropy, the images counted."""

    top1: float
    top5: float
    loss: float
    count: int
    skipped: list[str] = field(default_factory=list)  # unreadable images, left out of the count

    @classmethod
    def from_sums(cls, sums, skipped: list[str]) -> Scores:
        """The scores of summed ``correct``, ``top5``, ``loss`` and ``count`` (an empty pass scores 0)."""
        count = max(int(sums["count"]), 1)
        return cls(
            int(sums["correct"]) / count,
            int(sums["top5"]) / count,
            float(sums["loss"]) / count,
            int(sums["count"]),
            skipped,
        )


class Evaluation:
    """Scores over ``source``; one pipeline (and its workers) serves every pass, as the loop evaluates each epoch.

    ``step`` is the jitted :func:`~.state.eval_step` (see :func:`compile_eval_step`); ``sharding``
    places the batch's rows over the devices (``None``: the batch stays a host array, for a step
    that runs outside JAX, as :func:`evaluate_onnx`'s). ``crop_pct`` and ``interpolation``: the
    evaluation transform's (the model's data config; torchvision's by default).
    """

    def __init__(
        self,
        source,
        image_size: int,
        batch_size: int,
        workers: int,
        step,
        sharding,
        crop_pct: float = CROP_FRACTION,
        interpolation: str = "bilinear",
    ):
        self.source, self.image_size, self.batch_size, self.workers = source, image_size, batch_size, workers
        self.crop_pct, self.interpolation = crop_pct, interpolation
        self.step, self.sharding = step, sharding
        self.steps = data.evaluation_steps(source, batch_size)
        self.iterator = None
        self.bad: set[int] = set()
        self.seconds = 0.0

    def __call__(self, state) -> Scores:
        started = time.perf_counter()
        if self.iterator is None:
            self.iterator = iter(
                data.evaluation_batches(
                    self.source,
                    image_size=self.image_size,
                    batch_size=self.batch_size,
                    workers=self.workers,
                    crop_pct=self.crop_pct,
                    interpolation=self.interpolation,
                )
            )
        totals = []
        for _ in range(self.steps):
            batch = private_copy(next(self.iterator))
            self.bad.update(int(i) for i in batch["bad"] if i >= 0)
            totals.append(self.step(state, batch if self.sharding is None else put_batch(batch, self.sharding)))
        sums = {k: np.asarray(jax.device_get(sum(t[k] for t in totals))) for k in totals[0]}
        self.seconds += time.perf_counter() - started
        return Scores.from_sums(sums, sorted(self.source.path(i) for i in self.bad))

    def close(self) -> None:
        if self.iterator is not None:
            self.iterator.close()
            self.iterator = None


def compile_eval_step(mesh, state_sharding, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """:func:`~.state.eval_step` jitted over ``mesh``: the state replicated as ``state_sharding`` says,
    the batch split along ``data``, the sums replicated."""
    return xla.jit(
        functools.partial(eval_step, mean=tuple(mean), std=tuple(std)),
        in_shardings=(state_sharding, batch_sharding(mesh)),
        out_shardings=NamedSharding(mesh, P()),
    )


def evaluate(
    model,
    variables,
    source,
    *,
    image_size: int,
    batch_size: int,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    workers: int = 0,
    crop_pct: float = CROP_FRACTION,
    interpolation: str = "bilinear",
) -> Scores:
    """Top-1, top-5 and loss of ``model`` with ``variables`` (``params``, ``batch_stats``) on ``source``
    (``data.ImageFiles`` or ``data.ImageArrays``), in eval mode, batched and sharded over every device
    as training evaluates. ``mean`` and ``std``: the normalisation the model was trained with;
    ``crop_pct`` and ``interpolation``: its evaluation resize (torchvision's by default).

    Raises:
      data.DataError: ``batch_size`` does not divide over the devices or hosts.
    """
    mesh = data_mesh()
    if batch_size % mesh.devices.size:
        raise data.DataError("batch_size", f"{batch_size} does not divide over {mesh.devices.size} devices")
    state = TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        tx=optax.identity(),
        batch_stats=variables.get("batch_stats", {}),
    )
    replicated = jax.tree_util.tree_map(lambda _: NamedSharding(mesh, P()), state)
    state = jax.device_put(state, replicated)
    evaluation = Evaluation(
        source,
        image_size,
        batch_size,
        workers,
        compile_eval_step(mesh, replicated, mean, std),
        batch_sharding(mesh),
        crop_pct,
        interpolation,
    )
    try:
        return evaluation(state)
    finally:
        evaluation.close()


def host_sums(logits: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> dict:
    """:func:`~.state.eval_step`'s sums from logits computed elsewhere (ONNX Runtime), in numpy: no JAX compile."""
    logits = np.asarray(logits, np.float64)
    k = min(5, logits.shape[-1])
    top5 = np.any(np.argsort(-logits, axis=-1, kind="stable")[:, :k] == labels[:, None], axis=-1)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    loss = (
        np.log(np.exp(shifted).sum(axis=-1)) - np.take_along_axis(shifted, labels[:, None].astype(np.int64), -1)[:, 0]
    )
    return {
        "correct": np.sum((np.argmax(logits, -1) == labels) & mask),
        "top5": np.sum(top5 & mask),
        "loss": np.sum(np.where(mask, loss, 0.0)),
        "count": np.sum(mask),
    }


def evaluate_onnx(
    classifier,
    source,
    *,
    image_size: int,
    batch_size: int,
    workers: int = 0,
    crop_pct: float | None = None,
    interpolation: str | None = None,
) -> Scores:
    """:func:`evaluate` for an ``.onnx`` classifier (:func:`~resnet_bottleneck.io.onnx.load_onnx`), run by
    ONNX Runtime with its own normalisation (``classifier.mean``, ``.std``): the same pipeline, transform
    and sums, and nothing compiled by JAX. ``crop_pct``/``interpolation``: the classifier's own (its
    metadata's) unless given."""
    if crop_pct is None:
        crop_pct = getattr(classifier, "crop_pct", CROP_FRACTION)
    if interpolation is None:
        interpolation = getattr(classifier, "interpolation", "bilinear")

    def step(model, batch):
        logits = model(normalize(batch["image"], model.mean, model.std))
        return host_sums(logits, batch["label"], batch["mask"])

    evaluation = Evaluation(source, image_size, batch_size, workers, step, None, crop_pct, interpolation)
    try:
        return evaluation(classifier)
    finally:
        evaluation.close()


@dataclass(frozen=True)
class Scorer:
    """One side of :func:`compare`: ``logits`` of a uint8 NHWC batch (normalised by the model itself, as
    its file says), and the evaluation transform its images get."""

    logits: object
    image_size: int
    crop_pct: float = CROP_FRACTION
    interpolation: str = "bilinear"

    @property
    def transform(self) -> tuple:
        return self.image_size, self.crop_pct, self.interpolation


@dataclass
class Comparison:
    """Two models' :class:`Scores` on the same images, and on how many of them their top-1 class is the same."""

    first: Scores
    second: Scores
    agree: int

    @property
    def agreement(self) -> float:
        """The share of images (in [0, 1]) where both models' top-1 class is the same."""
        return self.agree / max(self.first.count, 1)


def jax_logits(model, variables, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """Logits of a uint8 NHWC batch by our ``model`` in eval mode, normalised by ``mean``/``std``; compiled
    once per batch shape (a :class:`Scorer`'s ``logits``)."""
    forward = xla.jit(lambda v, x: model.apply(v, normalize(x, tuple(mean), tuple(std)), train=False))
    return lambda images: np.asarray(forward(variables, images))


def onnx_logits(classifier):
    """Logits of a uint8 NHWC batch by an ``.onnx`` classifier (:func:`~resnet_bottleneck.io.onnx.load_onnx`),
    normalised by its own ``mean``/``std`` (a :class:`Scorer`'s ``logits``)."""
    return lambda images: classifier(normalize(images, classifier.mean, classifier.std))


def compare(first: Scorer, second: Scorer, source, *, batch_size: int, workers: int = 0) -> Comparison:
    """Both models' top-1, top-5 and loss on ``source`` and their top-1 agreement, in one pass over its images:
    each batch goes through both (decoded once where their transforms are the same, else once per transform,
    in step). Unreadable images are left out of both counts.

    Raises:
      data.DataError: ``batch_size`` does not fit the source.
    """
    transforms = list(dict.fromkeys((first.transform, second.transform)))
    iterators = [
        iter(
            data.evaluation_batches(
                source, image_size=size, batch_size=batch_size, workers=workers, crop_pct=crop, interpolation=interp
            )
        )
        for size, crop, interp in transforms
    ]
    totals: dict[str, list] = {"first": [], "second": []}
    agree, bad = 0, set()
    try:
        for _ in range(data.evaluation_steps(source, batch_size)):
            batches = {t: private_copy(next(it)) for t, it in zip(transforms, iterators, strict=True)}
            logits = {}
            for side, scorer in (("first", first), ("second", second)):
                batch = batches[scorer.transform]
                logits[side] = np.asarray(scorer.logits(batch["image"]))
                totals[side].append(host_sums(logits[side], batch["label"], batch["mask"]))
            mask = batch["mask"]
            bad.update(int(i) for i in batch["bad"] if i >= 0)
            agree += int(np.sum((np.argmax(logits["first"], -1) == np.argmax(logits["second"], -1)) & mask))
    finally:
        for it in iterators:
            it.close()
    skipped = sorted(source.path(i) for i in bad)

    def scores(side: str) -> Scores:
        sums = {k: sum(t[k] for t in totals[side]) for k in totals[side][0]}
        return Scores.from_sums(sums, skipped)

    return Comparison(scores("first"), scores("second"), agree)
