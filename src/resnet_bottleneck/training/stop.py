"""Stopping a run on SIGTERM or SIGINT at a step every process agrees on, so the run can resume there.

Spot VMs, Cloud TPU maintenance, SLURM's ``--signal``, Kubernetes and Ctrl-C send SIGTERM or SIGINT
and wait a while before SIGKILL. While :func:`~.loop.train` runs, a handler only notes the first
signal (so a second one, even mid-save, changes nothing); the loop asks :meth:`StopRequests.after`
after each step (and :meth:`StopRequests.before` before the first, for a signal that came while the
run was set up) whether to stop, saves a checkpoint of that step and raises :class:`Stopped`.

With several processes every process must stop at the same step (each saves its part of the same
checkpoint). Each process's flag rides in its rows of the step's batch (a ``stop`` column, see
:meth:`StopRequests.mark`); the step reduces it with a ``max`` over the global batch (:func:`agreeing`)
inside its own program, so the agreement adds no collective call of its own; the result is read
:attr:`StopRequests.LAG` steps later, when the device has it: every process reads the same value
after the same step, and the host never waits for it (the loop's own reads already keep it within
two steps of the device). One process pays nothing.
"""

from __future__ import annotations

import collections
import signal
import threading

import jax
import jax.numpy as jnp
import numpy as np

#: The signals that stop a run at a step: SIGTERM (exit status 0) and SIGINT (130, as a shell reports Ctrl-C).
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(Exception):
    """A run stopped by a signal after a step, its checkpoint written: not an error (see ``status``).

    ``signal``: the signal's number; ``step``, ``epoch`` (1-based): where it stopped; ``checkpoint``:
    the checkpoint's directory (``None`` without an output directory: nothing was kept).
    """

    def __init__(self, signal_number: int, step: int, epoch: int, checkpoint: str | None):
        self.signal, self.step, self.epoch, self.checkpoint = signal_number, step, epoch, checkpoint
        name = signal.Signals(signal_number).name
        kept = (
            f"; checkpoint {checkpoint}; run the same command to resume"
            if checkpoint is not None
            else "; nothing kept (no output directory)"
        )
        super().__init__(f"stopped by {name} at step {step} (epoch {epoch}){kept}")

    @property
    def status(self) -> int:
        """The command line's exit status: 0 for SIGTERM (a requested stop), else 128 + the signal (130: SIGINT)."""
        return 0 if self.signal == signal.SIGTERM else 128 + self.signal


class StopRequests:
    """A context that notes SIGTERM/SIGINT while it is open (then restores the previous handlers), and
    says before the first step (:meth:`before`) and after each (:meth:`after`) whether to stop there,
    the same on every process.

    Handlers are installed only when ``enabled`` and on the main thread (Python allows no other);
    ``enabled`` must be the same on every process (it decides whether they agree at all).
    """

    #: With several processes, a step's flags are read this many steps later (when the device has them).
    LAG = 2

    def __init__(self, enabled: bool):
        self.enabled = bool(enabled)
        self.handles = self.enabled and threading.current_thread() is threading.main_thread()
        self.received: int | None = None
        self.previous: dict = {}
        self.pending: collections.deque = collections.deque()
        self.several = self.enabled and jax.process_count() > 1  # ``enabled``: the same on every process

    def mark(self, rows: int, placed: dict, sharding) -> dict:
        """``placed`` (a step's global batch, this process's ``rows`` of it) with this process's flag
        as its ``stop`` column, with several processes; else as it is."""
        if not self.several:
            return placed
        flags = np.full((rows,), self.received or 0, np.int32)
        return {**placed, "stop": jax.make_array_from_process_local_data(sharding, flags)}

    def __enter__(self) -> StopRequests:
        if self.handles:
            for number in SIGNALS:
                self.previous[number] = signal.signal(number, self._note)
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler if handler is not None else signal.SIG_DFL)
        self.previous.clear()

    def _note(self, number, frame) -> None:
        """Only notes the first signal: nothing else may happen at an arbitrary point (a save included)."""
        if self.received is None:
            self.received = number

    def before(self) -> int | None:
        """The signal to stop on before the first step (one that came while the run was set up), or
        ``None``; with several processes, a blocking all-gather, once."""
        if not self.several:
            return self.received
        from jax.experimental import multihost_utils

        agreed = int(np.max(multihost_utils.process_allgather(np.int32(self.received or 0))))
        return (self.received or agreed) if agreed else None

    def after(self, step: int, metrics: dict) -> int | None:
        """The signal to stop on after step ``step`` (the one this process received, else another
        process's), or ``None`` to go on; every process gets a signal or ``None`` at the same step.
        ``metrics``: the step's (:func:`agreeing`'s ``stop``: every process's flags reduced)."""
        if not self.several:
            return self.received
        self.pending.append(metrics["stop"])
        if len(self.pending) <= self.LAG:
            return None
        agreed = int(jax.device_get(self.pending.popleft()))
        return (self.received or agreed) if agreed else None


def agreeing(step):
    """``step(state, batch)`` that also reduces the batch's ``stop`` column (:meth:`StopRequests.mark`),
    if it has one, over the global batch into its metrics' ``stop``: in the step's own program."""

    def agreeing_step(state, batch):
        state, metrics = step(state, {k: v for k, v in batch.items() if k != "stop"})
        if "stop" in batch:
            metrics = {**metrics, "stop": jnp.max(batch["stop"])}
        return state, metrics

    return agreeing_step
