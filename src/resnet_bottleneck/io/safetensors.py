"""This library's own weights file: variables as ``.safetensors``, with metadata.

Keys are ``collection/module/.../name`` (``params/conv1/kernel``, ``batch_stats/bn1/mean``);
the metadata is a flat ``str -> str`` map (``format``, ``model``, ``num_classes``, ...).
``.safetensors`` holds tensors and a JSON header only: reading one runs no code.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from .._files import atomic_write
from ..errors import FileError, InputError

#: The ``format`` metadata value that marks a file written by :func:`save_variables`.
CHECKPOINT_FORMAT = "resnet-bottleneck variables"


def read_tensors(path: str | os.PathLike, *, header_only: bool = False) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The tensors (none if ``header_only``) and metadata of a ``.safetensors`` file.

    Raises:
      FileError: no such file.
      InputError: the file is not a readable ``.safetensors`` file, naming it.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileError(f"no such weights file: {path}")
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = dict(f.metadata() or {})
            tensors = {} if header_only else {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors' own error types vary by version and by fault
        raise InputError(f"{path} is not a readable .safetensors file ({type(err).__name__}: {err})") from None
    return tensors, metadata


def save_variables(path: str | os.PathLike, variables, metadata: Mapping[str, str] | None = None) -> Path:
    """Write variables as a ``.safetensors`` file, keys ``collection/module/.../name``; atomic."""
    from safetensors.numpy import save

    flat = {
        "/".join(k): np.ascontiguousarray(np.asarray(v)) for k, v in traverse_util.flatten_dict(dict(variables)).items()
    }
    data = save(flat, metadata=dict(metadata or {}))
    return atomic_write(path, lambda f: f.write(data))


def load_variables(path: str | os.PathLike) -> tuple[dict, dict[str, str]]:
    """Variables and metadata written by :func:`save_variables`."""
    tensors, metadata = read_tensors(path)
    keys = {tuple(k.split("/")) for k in tensors}
    for key in keys:  # a tree: no tensor where another one's module is
        clash = next((key[:i] for i in range(1, len(key)) if key[:i] in keys), None)
        if clash is not None:
            raise InputError(
                f"{path} is not a file of variables: {'/'.join(clash)!r} is a tensor and a module of {'/'.join(key)!r}"
            )
    flat = {tuple(k.split("/")): jnp.asarray(v) for k, v in tensors.items()}
    return traverse_util.unflatten_dict(flat), metadata
