"""Orbax checkpoints of a run: the train state, the config that made it, what the run derived
from its data and weights (``run``: the class names, the normalisation, the starting weights'
SHA-256), and the input pipeline's iterator state (grain's Orbax handler: one file per process),
so a resume continues mid-epoch exactly and a checkpoint alone is a usable model (``export``).

Written aside and renamed (atomic), the last ``keep`` kept. A checkpoint from other settings
(starting weights of other content included), or one that cannot be read, is an error that names it.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from ..errors import ConfigError, TrainingError
from .config import Config


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
        """``position``: ``{"step", "workers", "grain"}``, where the input pipeline stood after ``step``."""
        import grain

        ocp = self._ocp
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

    def _where(self, step: int) -> Path:
        return self.directory / str(step)

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
        """``items`` (name -> orbax restore args) of checkpoint ``step``; any failure a :class:`TrainingError`
        saying ``checkpoint <where> <failure> (<error>)``."""
        try:
            return self.manager.restore(step, args=self._ocp.args.Composite(**items))
        except Exception as err:  # orbax raises many types for unreadable or missing items
            first = str(err).splitlines()[0] if str(err) else ""
            raise TrainingError(f"checkpoint {self._where(step)} {failure} ({type(err).__name__}: {first})") from None

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
        return restored["state"], restored["data"].position
