"""Orbax checkpoints of a run: the train state, the config that made it, what the run derived
from its data and weights (``run``: the class names, the normalisation, the starting weights'
SHA-256), and the input pipeline's iterator state (grain's Orbax handler: one file per process),
so a resume continues mid-epoch exactly and a checkpoint alone is a usable model (``export``).

Written aside and renamed (atomic), the last ``keep`` kept. Orbax does not checksum array data, so
once it has finalized a step the SHA-256 of each of the step's files goes into ``<step>/_sha256.json``
(written aside and renamed too); a restore checks them first, so a bit flip or a truncated file is
found, not trained on. A step without that file (from before it was written, or a run killed between
orbax's rename and its own) is restored as orbax reads it: its files were complete when orbax renamed
the step. :meth:`Checkpoints.restore_newest` goes back from a damaged checkpoint to the newest one that
restores, saying which it skipped and why; a checkpoint from other settings (starting weights of other
content included) is not damage but an error that names it. A save that fails (a full disk) leaves no
trace of its step: the previous checkpoint stays the newest.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TypeVar

from .._files import WRITE_ERRNOS, atomic_write
from ..errors import CheckpointError, ConfigError, TrainingError, WriteError
from .config import Config
from .weights import sha256

#: In each step directory: ``{"files": {relative path: [size, sha256]}}`` of every other file there.
CHECKSUMS = "_sha256.json"
#: A damaged step is set aside as ``<step>.damaged`` (kept to look at; orbax lists only ``<step>``).
DAMAGED = ".damaged"

T = TypeVar("T")


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _files(where: Path) -> dict[str, list]:
    """``{relative path: [size, sha256]}`` of every file under ``where`` but :data:`CHECKSUMS`."""
    return {
        path.relative_to(where).as_posix(): [path.stat().st_size, sha256(path)]
        for path in sorted(where.rglob("*"))
        if path.is_file() and path.name != CHECKSUMS
    }


@contextlib.contextmanager
def _quiet_orbax_threads():
    """Orbax logs an exception in its writing threads as a traceback before raising it to the caller;
    here the caller reports it (one line for a full disk), so that log is left out, for this block only."""
    import logging

    class Drop(logging.Filter):
        def filter(self, record):
            return "raised an exception" not in str(record.msg)

    drop, logger = Drop(), logging.getLogger("absl")
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def _write_failure(err: BaseException) -> str | None:
    """What a failed write met, if ``err`` (or what caused it) is a full disk or an I/O error; else None."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in WRITE_ERRNOS:
            return f"{os.strerror(err.errno)} ({errno.errorcode[err.errno]})"
        for number in WRITE_ERRNOS:  # tensorstore's errors carry the OS's words, not an OSError
            if os.strerror(number) in str(err):
                return f"{os.strerror(number)} ({errno.errorcode[number]})"
        err = err.__cause__ or err.__context__
    return None


class _IteratorState:
    """The input pipeline's position in the shape grain's Orbax handler saves (``get_state`` bytes)
    and restores (``set_state``, ``start_prefetch``): grain's iterator state as of the step's batch,
    with the step and the worker count it belongs to (grain's state fits only the same count)."""

    def __init__(self, position: dict | None = None):
        self.position = position

    def get_state(self) -> bytes:
        return json.dumps(self.position).encode()

    def set_state(self, state: bytes) -> None:
        self.position = json.loads(state)

    def start_prefetch(self) -> None:
        pass


#: What a run derives and a resume must find the same, beside the config's fields.
DERIVED = ("weights_sha256",)


def identity(config: Config, run: dict) -> dict:
    """What a checkpoint's run must match to be resumed: the config's fields and :data:`DERIVED`."""
    return {**asdict(config), **{k: run.get(k) for k in DERIVED}}


class Checkpoints:
    """``directory/<step>/{state,config,run,data}``, through one ``orbax.checkpoint.CheckpointManager``.

    ``run``: what the run derived (JSON): ``classes``, ``mean``, ``std``, ``weights_sha256``, ...
    """

    def __init__(self, directory: str | Path, keep: int | None, config: Config, run: dict | None = None):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = Path(directory).resolve()
        self.config, self.run = config, dict(run or {})
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False),
        )

    def latest(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, position: dict) -> None:
        """``position``: ``{"step", "workers", "grain"}``, where the input pipeline stood after ``step``.

        Raises:
          WriteError: the disk is full or failed (naming the step's directory); the step's files are removed.
        """
        import grain
        import jax

        ocp = self._ocp
        try:
            with _quiet_orbax_threads():
                self.manager.save(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardSave(state),
                        config=ocp.args.JsonSave(identity(self.config, self.run)),
                        run=ocp.args.JsonSave(self.run),
                        data=grain.checkpoint.CheckpointSave(_IteratorState(position)),
                    ),
                )
                self.manager.wait_until_finished()
            if jax.process_index() == 0:
                where = self._where(step)
                sums = json.dumps({"files": _files(where)}).encode()
                atomic_write(where / CHECKSUMS, lambda f: f.write(sums))
        except Exception as err:  # orbax and tensorstore raise many types; only a failed write is ours to name
            failure = _write_failure(err)
            if failure is None:
                raise
            self._discard(step)
            last = self.latest()
            kept = f"checkpoint {self._where(last)} is kept" if last is not None else "no earlier checkpoint"
            raise WriteError(f"cannot write checkpoint {self._where(step)}: {failure}; {kept}") from None

    def _discard(self, step: int) -> None:
        """Removes what a failed save of ``step`` left: orbax's temporary directory, the step's own."""
        for path in [self._where(step), *self.directory.glob(f"{step}.orbax-checkpoint-tmp*")]:
            shutil.rmtree(path, ignore_errors=True)
        self.manager.reload()

    def _where(self, step: int) -> Path:
        return self.directory / str(step)

    def _damaged(self, step: int, why: str) -> CheckpointError:
        err = CheckpointError(f"checkpoint {self._where(step)} {why}")
        err.step, err.why = step, why
        return err

    def verify(self, step: int) -> None:
        """Checks the step's files against the SHA-256 sums written with it (none written: nothing to check).

        Raises:
          CheckpointError: a file is missing, of another size or of other content; ``why`` says which.
        """
        where = self._where(step)
        try:
            files = json.loads((where / CHECKSUMS).read_bytes())["files"]
            recorded = {str(name): (int(size), str(digest)) for name, (size, digest) in files.items()}
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise self._damaged(step, f"has an unreadable {CHECKSUMS} ({type(err).__name__}: {err})") from None
        for name, (size, digest) in sorted(recorded.items()):
            path = where / name
            try:
                actual = path.stat().st_size
            except FileNotFoundError:
                raise self._damaged(step, f"is incomplete: {name} is missing") from None
            if actual != size:
                raise self._damaged(step, f"is damaged: {name} has {actual} bytes, {size} when written (truncated?)")
            if sha256(path) != digest:
                raise self._damaged(step, f"is damaged: {name} does not match its SHA-256 (changed since written)")

    def newest(self, read: Callable[[int], T], set_aside: bool = False, say=_say) -> tuple[int, T] | None:
        """``(step, read(step))`` of the newest checkpoint that verifies (:meth:`verify`) and reads; None
        without checkpoints. Each damaged one newer than it is then named in one line (``say``) with why,
        and with ``set_aside`` (a run resuming, holding the directory) renamed ``<step>.damaged``, out of
        the way of the steps the run writes again. A step gone meanwhile (a live run's rotation) is passed.

        Raises:
          CheckpointError: no checkpoint restores (naming the directory and each step's problem; nothing
            is set aside then, so the next attempt does not start afresh unnoticed).
          TrainingError: from ``read``, a checkpoint of another run (not damage: the message says so).
        """
        damaged = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                self.verify(step)
                found = step, read(step)
            except CheckpointError as err:
                if self._where(step).exists():
                    damaged.append((step, getattr(err, "why", str(err))))
                continue
            for bad, why in damaged:
                aside = self._set_aside(bad) if set_aside else ""
                say(f"skipped checkpoint step {bad} of {self.directory}: it {why}{aside}; using step {step}")
            return found
        if damaged:
            problems = "; ".join(f"step {step} {why}" for step, why in damaged)
            raise CheckpointError(
                f"no checkpoint in {self.directory} can be restored ({problems}); move the directory aside to "
                "start afresh, or use another output directory"
            )
        return None

    def _set_aside(self, step: int) -> str:
        import jax

        if jax.process_index() != 0:
            return ""
        where = self._where(step)
        aside, n = where.with_name(where.name + DAMAGED), 1
        while aside.exists():
            n += 1
            aside = where.with_name(f"{where.name}{DAMAGED}-{n}")
        try:
            where.rename(aside)
        except OSError as err:
            return f"; could not set it aside ({err})"
        self.manager.reload()
        return f"; set aside as {aside.name}"

    def restore_newest(self, abstract_state, say=_say) -> tuple[int, object, dict] | None:
        """``(step, state, position)`` of the newest checkpoint that restores (see :meth:`newest`; the damaged
        ones set aside), or None where there is none. For a run resuming: it holds the directory."""
        found = self.newest(lambda step: self.restore(step, abstract_state), set_aside=True, say=say)
        if found is None:
            return None
        step, (state, position) = found
        return step, state, position

    def check_config(self, step: int) -> None:
        """Raises if the checkpoint cannot be read or was written with other settings."""
        saved = self._restore(step, "is unreadable", config=self._ocp.args.JsonRestore())["config"]
        now = identity(self.config, self.run)
        if saved.get("epochs") != now["epochs"]:
            raise ConfigError(
                "epochs",
                f"must be {saved.get('epochs')}, as when checkpoint {self._where(step)} was "
                "written: the learning-rate schedule spans every epoch (another value needs another "
                f"output directory); got {now['epochs']}",
            )
        # A setting newer than the checkpoint was then at its default; the weights are compared by content.
        before = identity(Config(), {})
        differ = {
            k: (saved.get(k, before[k]), v) for k, v in now.items() if saved.get(k, before[k]) != v and k != "weights"
        }
        if differ:
            listed = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in differ.items())
            raise TrainingError(
                f"checkpoint {self._where(step)} was written by a different run ({listed}); "
                "use another output directory or the same settings"
            )

    def _restore(self, step: int, failure: str, **items) -> dict:
        """``items`` (name -> orbax restore args) of checkpoint ``step``; any failure a :class:`CheckpointError`
        saying ``checkpoint <where> <failure> (<error>)``."""
        try:
            return self.manager.restore(step, args=self._ocp.args.Composite(**items))
        except Exception as err:  # orbax raises many types for unreadable or missing items
            first = str(err).splitlines()[0] if str(err) else ""
            raise self._damaged(step, f"{failure} ({type(err).__name__}: {first})") from None

    def saved_run(self, step: int) -> tuple[dict, dict]:
        """The settings (:func:`identity`) and the ``run`` a checkpoint was written with."""
        json = self._ocp.args.JsonRestore
        saved = self._restore(
            step, "is unreadable or older than runs that record their classes", config=json(), run=json()
        )
        return saved["config"], saved["run"]

    def restore_state(self, step: int, abstract_state):
        """Only the train state at ``step`` (a model to export: no input pipeline)."""
        return self._restore(step, "cannot be restored", state=self._ocp.args.StandardRestore(abstract_state))["state"]

    def restore(self, step: int, abstract_state) -> tuple:
        """The train state at ``step`` and the input pipeline's position then (see :meth:`save`)."""
        import grain

        self.check_config(step)
        restored = self._restore(
            step,
            "cannot be restored",
            state=self._ocp.args.StandardRestore(abstract_state),
            data=grain.checkpoint.CheckpointRestore(_IteratorState()),
        )
        position = restored["data"].position
        if not isinstance(position, dict) or position.get("step") != step:
            held = position.get("step") if isinstance(position, dict) else position
            raise self._damaged(step, f"holds the input pipeline of step {held}, not of its own step")
        return restored["state"], position
