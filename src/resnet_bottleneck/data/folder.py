"""Image folders as lists of files and labels: listed, checked, never decoded here.

Two layouts: ImageNet's (``ROOT/train/<class>/...`` and ``ROOT/val/<class>/...``, one to train
on and one to evaluate on) and a flat ImageFolder (``ROOT/<class>/...``), from which a share
is held out by seed. The lists hold relative paths, so their memory is a few dozen bytes an
image; decoding happens in the pipeline's workers, each host opening only its own share.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError, SettingError  # noqa: F401 - importable from here as before

IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")


@dataclass(frozen=True, eq=False)
class ImageFiles:
    """Files under ``root`` (relative paths, bytes), their integer labels and the class names."""

    root: str
    files: np.ndarray  # dtype "S": relative paths, UTF-8
    labels: np.ndarray  # int32
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, index: int) -> str:
        return os.path.join(self.root, self.files[index].decode())

    def subset(self, indices: np.ndarray) -> ImageFiles:
        return ImageFiles(self.root, self.files[indices], self.labels[indices], self.classes)


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def images_under(directory: str | os.PathLike) -> list[str]:
    """Every image file (``.png``, ``.jpg``, ...) under ``directory``, recursively, sorted; hidden files
    and folders (names starting with ``.``) left out, symbolic links to folders followed. The one walk
    that both an image folder's classes (:func:`list_images`) and ``predict DIR`` use."""
    found = []
    for parent, dirs, names in os.walk(directory, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += (
            os.path.join(parent, name)
            for name in names
            if name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")
        )
    return sorted(found)


def list_images(root: str | os.PathLike, field: str = "data") -> ImageFiles:
    """Every image of an ImageFolder tree ``root/<class>/**/<image>``, classes sorted by name.

    Raises:
      DataError: ``root`` missing, unlistable or without class folders, or a class folder without images.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(field, f"{root} is not a directory")
    try:
        class_dirs = _class_dirs(root)
        found_by_class = [[os.path.relpath(path, root) for path in images_under(d)] for d in class_dirs]
    except OSError as err:  # a folder of the tree that cannot be listed (no permission, a lost mount)
        raise DataError(field, f"cannot list {err.filename or root} ({err.strerror or err})") from None
    if not class_dirs:
        raise DataError(field, f"{root} has no class folders (expected {root}/<class>/<image>)")
    files, labels = [], []
    for label, (directory, found) in enumerate(zip(class_dirs, found_by_class)):
        if not found:
            raise DataError(field, f"class folder {directory} has no images ({', '.join(IMAGE_SUFFIXES)})")
        files += found
        labels += [label] * len(found)
    encoded = np.asarray([f.encode() for f in files], dtype=bytes)
    return ImageFiles(str(root), encoded, np.asarray(labels, np.int32), tuple(d.name for d in class_dirs))


def require_two_classes(source, field: str = "data") -> None:
    """Refuse training images of fewer than two classes (named, or among the labels): a classifier
    of one class scores 100% without learning anything.

    Raises:
      DataError: naming ``field``, the folder (an :class:`ImageFiles`'s ``root``) and the one class.
    """
    where = f"{source.root} has" if isinstance(source, ImageFiles) else "the training images have"
    if len(source.classes) < 2:
        found = f"only one class, {source.classes[0]!r}" if source.classes else "no classes"
    else:
        present = np.unique(np.asarray(source.labels))
        if len(present) >= 2:
            return
        found = f"images of one class only, {source.classes[int(present[0])]!r}" if len(present) else "no images"
    raise DataError(field, f"{where} {found}: a classifier needs at least two classes")


def is_train_val(root: str | os.PathLike) -> bool:
    """Whether ``root`` has ImageNet's layout: ``train/`` and ``val/`` folders of classes."""
    return (Path(root) / "train").is_dir() and (Path(root) / "val").is_dir()


def image_folder_splits(root: str | os.PathLike, test_fraction: float, seed: int) -> tuple[ImageFiles, ImageFiles]:
    """(training, evaluation) files: ``root/train`` and ``root/val`` if present, else a held-out
    ``test_fraction`` of a flat ``root``, chosen by ``seed``.

    Raises:
      DataError: no images, empty classes, a ``val/`` whose classes are not ``train/``'s, a
        held-out share that leaves nothing on one side.
    """
    if is_train_val(root):
        train, val = list_images(Path(root) / "train"), list_images(Path(root) / "val")
        if train.classes != val.classes:
            differ = [
                f"{where} only: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
                for where, names in (
                    ("train/", sorted(set(train.classes) - set(val.classes))),
                    ("val/", sorted(set(val.classes) - set(train.classes))),
                )
                if names
            ]
            raise DataError("data", f"{root}/val has other classes than {root}/train ({'; '.join(differ)})")
        return train, val
    files = list_images(root)
    order = np.random.default_rng(seed).permutation(len(files))
    n_test = max(1, int(round(len(order) * test_fraction)))
    if n_test >= len(order):
        raise DataError(
            "data", f"{root} has {len(order)} images: too few to hold out a test_fraction of {test_fraction}"
        )
    return files.subset(np.sort(order[n_test:])), files.subset(np.sort(order[:n_test]))
