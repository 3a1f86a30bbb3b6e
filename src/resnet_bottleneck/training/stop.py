"""Stopping a run on SIGTERM or SIGINT at a step every process agrees on, so the run can resume there.

Spot VMs, Cloud TPU maintenance, SLURM's ``--signal``, Kubernetes and Ctrl-C send SIGTERM or SIGINT
and wait a while before SIGKILL. While :func:`~.loop.train` runs, a handler only notes the first
signal (so a second one, even mid-save, changes nothing); the loop asks :meth:`StopRequests.after`
after each step (and :meth:`StopRequests.before` before the first, for a signal that came while the
run was set up) whether to stop, saves a checkpoint of that step and raises :class:`Stopped`.

With several processes every process must stop at the same step (each saves its part of the same
checkpoint). Each step's local flags are reduced over the devices by a tiny jitted ``max``, queued
after the step like the step itself, and read :attr:`StopRequests.LAG` steps later, when the device
has done it: every process reads the same value after the same step, and the host never waits for
it (the loop's own reads already keep it within two steps of the device). One process pays nothing.
"""

from __future__ import annotations

import collections
import signal
import threading

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

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
    the same on every process once :meth:`agree` has named the devices.

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
        self.several = False

    def agree(self, mesh) -> None:
        """From now on, agree with the other processes of ``mesh`` (if any) on where to stop."""
        self.several = self.enabled and jax.process_count() > 1  # ``enabled``: the same on every process
        if self.several:
            self.sharding = NamedSharding(mesh, P("data"))
            self.local = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
            self.reduce = jax.jit(jnp.max, out_shardings=NamedSharding(mesh, P()))

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

    def after(self, step: int) -> int | None:
        """The signal to stop on after step ``step`` (the one this process received, else another
        process's), or ``None`` to go on; every process gets a signal or ``None`` at the same step."""
        if not self.several:
            return self.received
        flags = np.full((self.local,), self.received or 0, np.int32)
        self.pending.append(self.reduce(jax.make_array_from_process_local_data(self.sharding, flags)))
        if len(self.pending) <= self.LAG:
            return None
        agreed = int(jax.device_get(self.pending.popleft()))
        return (self.received or agreed) if agreed else None
