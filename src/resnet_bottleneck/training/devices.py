"""Devices and hosts: the data-parallel mesh, joining a multi-host run, placing host batches.

The step is jitted over a one-axis ``Mesh`` of every device of every process, the batch split
along ``data`` and the state replicated; BatchNorm's batch means then run over the *global*
batch (synchronised BatchNorm) with no code of ours.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def data_mesh() -> Mesh:
    """A one-axis mesh over every device of every process, the batch split along ``data``."""
    return Mesh(np.asarray(jax.devices()), ("data",))


def maybe_initialize_distributed() -> bool:
    """Join a multi-host run when the environment says so (JAX's own runtime).

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


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P("data"))


def put_batch(batch: dict, sharding: NamedSharding) -> dict:
    """This host's rows of the global batch as global arrays (its devices hold exactly those rows)."""
    return {k: jax.make_array_from_process_local_data(sharding, batch[k]) for k in ("image", "label", "mask")}
