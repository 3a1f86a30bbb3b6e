"""The names of a model's classes: a labels file, the weights file's own, or ImageNet's.

ImageNet-1k's 1,000 names ship with the package (``imagenet_classes.txt``, in class-index
order): torchvision's public category list, ``ResNet50_Weights.IMAGENET1K_V2.meta['categories']``.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from importlib import resources

from ..errors import InputError


@functools.lru_cache(maxsize=1)
def _imagenet() -> tuple[str, ...]:
    return tuple(resources.files(__package__).joinpath("imagenet_classes.txt").read_text(encoding="utf-8").splitlines())


def imagenet_classes() -> list[str]:
    """ImageNet-1k's 1,000 class names, index ``i`` naming class ``i`` (``'tench'``, ``'goldfish'``, ...)."""
    return list(_imagenet())


def read_labels(path: str | os.PathLike) -> list[str]:
    """One class name a line (blank lines skipped), as written for ``predict --labels``."""
    try:
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        raise InputError(f"no such file: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read {path} as text, one class name a line ({err})") from None


def class_names(
    num_classes: int, metadata: Mapping[str, str] | None = None, labels_path: str | os.PathLike | None = None
) -> list[str] | None:
    """The names of a model's ``num_classes`` classes, or None where only indices are known.

    In order of precedence: the file ``labels_path``; the weights file's own names, a JSON
    list under ``metadata['classes']``; ImageNet's for a 1,000-class model.

    Raises:
      InputError: the names cannot be read, or there are not ``num_classes`` of them.
    """
    if labels_path is not None:
        names, source = read_labels(labels_path), f"{labels_path}"
    elif metadata is not None and metadata.get("classes") is not None:
        source = "the weights' metadata 'classes'"
        try:
            names = json.loads(metadata["classes"])
        except (TypeError, json.JSONDecodeError):
            names = None
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise InputError(f"{source} must be a JSON list of names; got {str(metadata['classes'])[:60]!r}")
    elif num_classes == 1000:
        return imagenet_classes()
    else:
        return None
    if len(names) != num_classes:
        raise InputError(f"{source} has {len(names)} names for {num_classes} classes")
    return names
