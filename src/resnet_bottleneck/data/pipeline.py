"""grain pipelines from files (or in-memory images) to host-local batches.

Every example is a pure function of ``(seed, global position)``: the epoch's order is a
seeded permutation (grain's ``shuffle``), the augmentation draws from a generator seeded by
``[seed, position]``, and position ``g`` of step ``s`` is ``s * batch_size + k``. So the
batches do not depend on the number of worker processes, and host ``p`` of ``P`` builds
rows ``[p * b, (p + 1) * b)`` of each global batch (``b = batch_size / P``), the rows its
devices hold: it opens only those files, and together the hosts feed exactly the batches
one host would. Worker processes (grain's ``mp_prefetch``) decode and augment; a thread
keeps the next batches ready, so the host prepares step k+1 while the device runs step k.

An unreadable image is replaced by the next readable one in the epoch's order (so shapes
and determinism hold) and reported in the batch's ``bad`` field, for the summary.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

from ..errors import DataError, ImageError
from .digits import ImageArrays
from .folder import ImageFiles
from .transforms import (
    CROP_FRACTION,
    check_crop_pct,
    check_interpolation,
    eval_transform,
    resize_nearest,
    train_transform,
)

Source = ImageFiles | ImageArrays

#: How many records after an unreadable one are tried before the pipeline gives up.
MAX_SUBSTITUTES = 16


def available_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_workers(source: Source, backend: str | None = None) -> int:
    """Worker processes to decode ``source`` where none are asked for: none for in-memory images
    (nothing to decode), nor where the model computes on the CPU (``backend``; JAX's default if
    None), whose cores worker processes would take from the step; a thread then decodes a batch or
    two ahead, which keeps up with CPU training (BENCHMARKS.md, ``data-train``). Else the cores."""
    if isinstance(source, ImageArrays):
        return 0
    if backend is None:
        import jax

        backend = jax.default_backend()
    return 0 if backend == "cpu" else available_cores()


def read(
    source: Source,
    index: int,
    image_size: int,
    rng: np.random.Generator | None,
    crop_pct: float = CROP_FRACTION,
    interpolation: str = "bilinear",
) -> np.ndarray:
    """One image as uint8 (image_size, image_size, 3): the training crop with ``rng``, else the
    evaluation transform (``crop_pct``, ``interpolation``). In-memory images (digits) are only resized, nearest."""
    if isinstance(source, ImageArrays):
        return resize_nearest(source.images[index], image_size)
    path = source.path(index)
    if rng is not None:
        return train_transform(path, image_size, rng)
    return eval_transform(path, image_size, crop_pct, interpolation)


def shard_of(shard=None) -> tuple[int, int]:
    """(this process's index, process count): ``grain.sharding.ShardByJaxProcess`` unless given."""
    if shard is None:
        import grain

        shard = grain.sharding.ShardByJaxProcess(drop_remainder=True)
    return shard.shard_index, shard.shard_count


class _Example:
    """Element ``j`` of this host's stream (picklable, for grain's workers) -> one example."""

    def __init__(
        self,
        source: Source,
        image_size: int,
        batch_size: int,
        process: tuple[int, int],
        seed: int,
        steps_per_epoch: int | None,
        augment: bool,
        crop_pct: float = CROP_FRACTION,
        interpolation: str = "bilinear",
    ):
        import grain

        self.source, self.image_size, self.seed, self.augment = source, image_size, seed, augment
        self.crop = (crop_pct, interpolation)  # the evaluation transform's
        self.global_batch = batch_size
        index, count = process
        self.local_batch = batch_size // count
        self.offset = index * self.local_batch
        self.steps_per_epoch = steps_per_epoch  # None: evaluation, in order, padded
        self.order = grain.MapDataset.range(len(source)).shuffle(seed) if steps_per_epoch else None

    def __call__(self, j: int) -> dict[str, Any]:
        step, k = divmod(int(j), self.local_batch)
        n = len(self.source)
        if self.steps_per_epoch is None:  # evaluation: records in order, the last batch padded
            position = step * self.global_batch + self.offset + k
            if position >= n:
                return self._example(np.zeros((self.image_size,) * 2 + (3,), np.uint8), 0, False, -1)
            try:
                return self._example(
                    read(self.source, position, self.image_size, None, *self.crop),
                    self.source.labels[position],
                    True,
                    -1,
                )
            except ImageError:
                return self._example(np.zeros((self.image_size,) * 2 + (3,), np.uint8), 0, False, position)
        epoch, within = divmod(step, self.steps_per_epoch)
        position = within * self.global_batch + self.offset + k
        rng = np.random.default_rng([self.seed, step * self.global_batch + self.offset + k])
        bad = -1
        for attempt in range(MAX_SUBSTITUTES + 1):
            record = int(self.order[epoch * n + (position + attempt) % n])
            try:
                image = read(self.source, record, self.image_size, rng if self.augment else None)
                return self._example(image, self.source.labels[record], True, bad)
            except ImageError as err:
                bad = record if bad < 0 else bad
                last = err
        raise DataError("data", f"{MAX_SUBSTITUTES + 1} images in a row are unreadable, the last: {last}")

    @staticmethod
    def _example(image, label, valid, bad):
        return {"image": image, "label": np.int32(label), "mask": np.bool_(valid), "bad": np.int32(bad)}


def _check_batch(source: Source, batch_size: int, process_count: int, what: str) -> None:
    if batch_size % process_count:
        raise DataError("batch_size", f"{batch_size} does not divide over {process_count} processes")
    if what == "training" and len(source) < batch_size:
        raise DataError(
            "batch_size",
            f"{batch_size} is larger than the {len(source)} {what} images "
            f"(each of {process_count} process(es) needs {batch_size // process_count} a step)",
        )


def _allow_grain_workers_without_absl() -> None:
    """grain 0.2.18 reads one absl flag (worker profiling) whenever it starts worker processes,
    which raises ``UnparsedFlagAccessError`` in any program that does not parse absl flags (as
    this one does not). Mark that one flag as given, at its default (off); nothing else changes."""
    from absl import flags

    name = "grain_enable_multiprocess_worker_profiling"
    if not flags.FLAGS.is_parsed() and name in flags.FLAGS and not flags.FLAGS[name].present:
        flags.FLAGS[name].present = 1


def _exit_with_parent(worker_index: int, worker_count: int) -> None:
    """In each worker: exit when the training process dies (killed, say). grain's workers would wait
    for it forever, orphans holding their memory and the terminal's pipes. And ignore SIGINT and
    SIGTERM, which Ctrl-C (the terminal's process group) or a scheduler may send them too: the
    training process stops at a step on those, and needs its workers until it has."""
    import signal
    import threading
    import time

    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, signal.SIG_IGN)
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def _release_shared_memory(batch: dict) -> dict:
    """A batch from the workers with its shared memory blocks unlinked now: their names are gone (and
    unregistered from the resource tracker), the memory stays mapped until the arrays die."""
    for array in batch.values():
        if getattr(array, "_unlink_on_del", False) and getattr(array, "shm", None) is not None:
            array._unlink_on_del = False  # its deletion then only unmaps it
            array.shm.unlink()
    return batch


def _wait_for_grain_deletions(timeout: float = 60.0) -> None:
    """Wait (``timeout`` seconds at most) until grain's background thread has unlinked every shared
    memory block it was given: it deletes them first in, first out, on one thread."""
    import sys
    import threading

    from grain.multiprocessing import SharedMemoryArray

    pool = getattr(SharedMemoryArray, "_del_thread_pool", None)  # grain 0.2.18; absent: nothing to wait for
    if pool is None or sys.is_finalizing() or threading.current_thread() in getattr(pool, "_pool", ()):
        return  # nothing to wait for, or the interpreter is ending, or this is that thread (closed by the gc there)
    try:
        pool.apply_async(int).wait(timeout)
    except ValueError:  # the pool is already closed
        pass


@functools.cache
def _releasing_dataset():
    """The ``IterDataset`` of :func:`_finish`, defined once grain is imported."""
    import grain

    class Iterator(grain.DatasetIterator):
        def __next__(self):
            return _release_shared_memory(next(self._parent))

        def get_state(self):
            return self._parent.get_state()

        def set_state(self, state):
            self._parent.set_state(state)

        def close(self) -> None:
            super().close()  # closes grain's iterators, which drop the batches they had prefetched
            _wait_for_grain_deletions()

    class Releasing(grain.IterDataset):
        def __iter__(self):
            return Iterator(self._parent.__iter__())

    return Releasing


def _finish(dataset, workers: int):
    """``dataset`` prefetched by a thread, or by ``workers`` processes through shared memory, released
    as each batch arrives and, for the batches grain prefetched, when the iterator is closed.

    grain unlinks a block when its array is deleted, on a background thread: a block not yet unlinked
    when the program ends is left to the resource tracker, which warns of "leaked shared_memory
    objects" (the Python ``train()`` with workers did, as it returned just before the program ended).
    """
    import grain

    stream = dataset.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2))
    if workers > 0:
        _allow_grain_workers_without_absl()
        stream = stream.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=2),
            worker_init_fn=_exit_with_parent,
        )
        stream = _releasing_dataset()(stream)
    return stream


def training_batches(
    source: Source,
    *,
    image_size: int,
    batch_size: int,
    seed: int,
    epochs: int,
    augment: bool = True,
    workers: int = 0,
    shard=None,
    start_step: int = 0,
):
    """This host's share of every training step's batch, ``epochs`` epochs of ``len(source) //
    batch_size`` steps (each epoch's tail dropped; take that many, the stream goes on): a grain
    ``IterDataset`` of dicts with
    ``image`` uint8 (b, S, S, 3), ``label`` int32, ``mask`` and ``bad`` (record or -1).

    Its iterator's ``get_state``/``set_state`` (or grain's Orbax handler) resume it exactly with the
    same worker count; ``start_step`` starts the same stream at that step with any.
    """
    import grain

    process = shard_of(shard)
    _check_batch(source, batch_size, process[1], "training")
    steps_per_epoch = len(source) // batch_size
    example = _Example(source, image_size, batch_size, process, seed, steps_per_epoch, augment)
    local = batch_size // process[1]
    dataset = grain.MapDataset.range(epochs * steps_per_epoch * local).map(example).batch(local, drop_remainder=True)
    dataset = dataset[start_step:]
    # Repeated past the last step, which the loop never takes: grain 0.2.18's workers leak their
    # shared memory when they reach the end of a stream.
    return _finish(dataset.repeat(), workers)


def evaluation_batches(
    source: Source,
    *,
    image_size: int,
    batch_size: int,
    workers: int = 0,
    shard=None,
    crop_pct: float = CROP_FRACTION,
    interpolation: str = "bilinear",
):
    """This host's share of the evaluation batches, in order, the last padded (``mask`` False),
    repeated forever so that one set of workers serves every evaluation: take
    :func:`evaluation_steps` batches per pass. Images get the evaluation transform with ``crop_pct``
    and ``interpolation`` (torchvision's by default; a model's data config says otherwise).

    Raises:
      TypeError, ValueError: a bad ``crop_pct`` or ``interpolation`` (naming it), before any image is read.
    """
    import grain

    crop = (check_crop_pct(crop_pct), check_interpolation(interpolation))
    process = shard_of(shard)
    _check_batch(source, batch_size, process[1], "evaluation")
    local = batch_size // process[1]
    example = _Example(source, image_size, batch_size, process, 0, None, False, *crop)
    steps = evaluation_steps(source, batch_size)
    dataset = grain.MapDataset.range(steps * local).map(example).batch(local, drop_remainder=True).repeat()
    return _finish(dataset, workers)


def private_copy(batch: dict) -> dict:
    """A batch's arrays copied out of the workers' shared memory, which grain then unmaps at once
    (its blocks were unlinked as the batch arrived: see :func:`_finish`)."""
    return {k: np.array(v) for k, v in batch.items()}


def evaluation_steps(source: Source, batch_size: int) -> int:
    return -(-len(source) // batch_size)
