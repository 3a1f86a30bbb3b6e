"""Using a trained model: load it, classify image files in batches, evaluate it on the right images.

- :func:`load_model`: ``(model, variables, metadata)`` from any model file, torchvision's weights or a
  run directory (the one place that knows all three; :mod:`resnet_bottleneck.io` reads file formats,
  :mod:`resnet_bottleneck.training` runs).
- :func:`predict_files`: the top classes of many image files, streamed through the data pipeline
  (decoded a batch or two ahead of the model, so memory does not grow with the number of images),
  for our model on JAX (:func:`jax_classifier`) or an ``.onnx`` file on ONNX Runtime
  (:func:`onnx_classifier`); an image that cannot be decoded is reported, not fatal.
- :func:`image_paths`: files and directories (every image under them, sorted) as the list to classify.
- :func:`preprocess`: one image as the model sees it (the evaluation transform, normalised).
- :func:`evaluation_folder`: the images to evaluate on under a folder (``val/`` in ImageNet's layout).
- :func:`onnx_num_classes`: an ``.onnx`` classifier's number of classes.
- :func:`match_classes`: an image folder's labels in a model's class indices.
- :func:`held_out_split`: the images a run held out, as its model file records them.

What the command line's ``predict`` and ``evaluate`` do, as library calls.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import _checks
from .data.folder import IMAGE_SUFFIXES, ImageFiles, images_under, is_train_val, list_images
from .errors import DataError, FileError, ImageError, InputError, TrainingError


def load_model(path: str | os.PathLike, name: str | None = None):
    """``(model, variables, metadata)`` from a file written by ``train``/``export`` or ``convert``, from
    torchvision weights (``.pth``/``.pt``/``.safetensors``; metadata ``{}`` or the file's own), or
    from a run directory (``train``'s ``--out``: its last checkpoint, as ``export`` writes it).

    Our files name their model, so ``name`` may be left out (given, it must agree); a trained model
    comes back in its run's compute dtype. Files that do not name it (torchvision's) need ``name``.
    :func:`~resnet_bottleneck.io.metadata.preprocessing` reads the image size and normalisation
    from ``metadata``, :func:`~resnet_bottleneck.io.class_names` the class names.

    Raises:
      FileError: no such file.
      InputError: the file is unreadable, a directory holds no checkpoint, names another model than
        ``name``, names none and ``name`` is not given, or does not fit (a
        :class:`~resnet_bottleneck.io.WeightsMismatch` naming the file and the model it fits).
    """
    from .io import load_model_file

    path = Path(path)
    if not path.is_dir():
        return load_model_file(path, name)
    from .training import load_run

    try:
        model, variables, metadata = load_run(path)
    except TrainingError as err:
        raise InputError(str(err)) from None
    if name is not None and metadata["model"] != name:
        raise InputError(f"{path} holds a run of {metadata['model']!r}, not {name!r}")
    return model, variables, metadata


@dataclass(frozen=True)
class Prediction:
    """One image's result: its ``path`` and either ``top`` (``(class index, probability)`` pairs, most
    probable first) or ``error`` (why it could not be read)."""

    path: str
    top: tuple[tuple[int, float], ...] | None = None
    error: str | None = None


def jax_classifier(model, variables, mean=None, std=None) -> Callable[[np.ndarray], np.ndarray]:
    """Class probabilities of a uint8 NHWC batch by our ``model`` on JAX, normalised by ``mean``/``std``
    (per channel on the [0, 1] scale; ImageNet's by default); compiled once per batch shape."""
    import jax

    from . import xla
    from .data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize

    mean, std = mean or IMAGENET_MEAN, std or IMAGENET_STD
    forward = xla.jit(lambda v, x: jax.nn.softmax(model.apply(v, normalize(x, mean, std), train=False)))
    return lambda images: np.asarray(forward(variables, images))


def onnx_classifier(classifier) -> Callable[[np.ndarray], np.ndarray]:
    """Class probabilities of a uint8 NHWC batch by an ``.onnx`` classifier
    (:func:`~resnet_bottleneck.io.onnx.load_onnx`) on ONNX Runtime, normalised by its own ``mean``/``std``;
    a softmax in float64 over its logits. Nothing is compiled by JAX."""
    from .data.transforms import normalize

    def probabilities(images):
        logits = classifier(normalize(images, classifier.mean, classifier.std)).astype(np.float64)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    return probabilities


def image_paths(paths: Sequence[str | os.PathLike]) -> list[str]:
    """The files to classify: each file as given, and each directory's images (``.png``, ``.jpg``, ...;
    hidden files and folders left out), recursively, sorted, in the order the arguments come.

    Raises:
      FileError: a path that is neither a file nor a directory (``no such file: ...``).
      InputError: a directory without images.
    """
    found = []
    for path in map(os.fspath, paths):
        if os.path.isfile(path):
            found.append(path)
        elif os.path.isdir(path):
            images = images_under(path)
            if not images:
                raise InputError(f"{path} is a directory without images ({', '.join(IMAGE_SUFFIXES)})")
            found += images
        else:
            raise FileError(f"no such file: {path}")
    return found


def predict_files(
    classify: Callable[[np.ndarray], np.ndarray],
    paths: Sequence[str],
    *,
    image_size: int = 224,
    batch_size: int = 32,
    workers: int = 0,
    top: int = 5,
    crop_pct: float = 0.875,
    interpolation: str = "bilinear",
) -> Iterator[list[Prediction]]:
    """The ``top`` classes of each image file, one list of :class:`Prediction` per batch, in the order of ``paths``.

    Each image gets the evaluation transform (shorter side to ``floor(image_size / crop_pct)`` with
    ``interpolation``, center crop: torchvision's by default, a model's data config otherwise);
    ``classify`` (:func:`jax_classifier`, :func:`onnx_classifier`, or any function of a uint8
    ``[N, image_size, image_size, 3]`` batch to ``[N, classes]`` probabilities) sees batches of
    ``batch_size`` (the last one padded), decoded ahead by the data pipeline (``workers`` processes;
    0: one thread). An image that cannot be decoded has an ``error`` instead of ``top``.

    The arguments are checked here, before the first batch is asked for.

    Raises:
      TypeError, ValueError: a bad ``image_size``, ``batch_size``, ``workers``, ``top``, ``crop_pct`` or
        ``interpolation`` (naming it).
    """
    from .data.transforms import check_crop_pct, check_interpolation

    paths = [os.fspath(p) for p in paths]
    image_size = _checks.positive_int("image_size", image_size)
    batch_size = min(_checks.positive_int("batch_size", batch_size), max(len(paths), 1))
    workers = _checks.count("workers", workers)
    top = _checks.positive_int("top", top)
    crop = (check_crop_pct(crop_pct), check_interpolation(interpolation))
    return _predict_batches(classify, paths, image_size, batch_size, workers, top, crop)


def _predict_batches(
    classify, paths: list[str], image_size: int, batch_size: int, workers: int, top: int, crop: tuple[float, str]
):
    """:func:`predict_files`'s stream, its arguments checked (``crop``: ``(crop_pct, interpolation)``)."""
    from . import data
    from .data.pipeline import private_copy
    from .data.transforms import eval_transform

    if not paths:
        return
    source = ImageFiles("", np.asarray([p.encode() for p in paths], dtype=bytes), np.zeros(len(paths), np.int32), ("",))
    stream = iter(
        data.evaluation_batches(
            source,
            image_size=image_size,
            batch_size=batch_size,
            workers=workers,
            crop_pct=crop[0],
            interpolation=crop[1],
        )
    )
    try:
        for step in range(data.evaluation_steps(source, batch_size)):
            batch = private_copy(next(stream))
            real = min(batch_size, len(paths) - step * batch_size)
            probabilities = np.asarray(classify(batch["image"]))
            results = []
            for k in range(real):
                path = paths[step * batch_size + k]
                if not batch["mask"][k]:  # unreadable: decode it again for the reason
                    try:
                        eval_transform(path, image_size, *crop)
                        problem = f"cannot read {path} as an image"
                    except ImageError as err:
                        problem = str(err)
                    results.append(Prediction(path, error=problem))
                else:
                    probs = probabilities[k]
                    best = np.argsort(-probs)[: min(top, probs.size)]
                    results.append(Prediction(path, top=tuple((int(i), float(probs[i])) for i in best)))
            yield results
    finally:
        stream.close()


def preprocess(
    path: str | os.PathLike,
    image_size: int = 224,
    mean=None,
    std=None,
    crop_pct: float = 0.875,
    interpolation: str = "bilinear",
) -> np.ndarray:
    """One image as the model sees it, HWC float32: the evaluation transform (shorter side to
    ``floor(image_size / crop_pct)`` with ``interpolation``, center crop; torchvision's by default),
    normalised by ``mean``/``std`` (ImageNet's by default). A model's data config
    (:func:`~resnet_bottleneck.arch.data_configs.data_config`) gives all five.

    Raises:
      ImageError: the file cannot be read as an image (naming it).
      TypeError, ValueError: a bad ``image_size``, ``crop_pct`` or ``interpolation`` (naming it).
    """
    from .data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, normalize

    image_size = _checks.positive_int("image_size", image_size)
    image = eval_transform(os.fspath(path), image_size, crop_pct, interpolation)
    return normalize(image, mean or IMAGENET_MEAN, std or IMAGENET_STD)


def evaluation_folder(root: str | os.PathLike) -> ImageFiles:
    """The images to evaluate a model on under ``root``: ``root/val`` in ImageNet's layout (``train/`` and
    ``val/`` folders of classes), else every class folder of ``root`` (``root/<class>/<image>``).

    Raises:
      DataError: (``field`` ``data``) no such folder, no class folders, or a class folder without images.
    """
    return list_images(Path(root) / "val" if is_train_val(root) else root, field="data")


def onnx_num_classes(classifier) -> int:
    """The number of classes of an ONNX classifier (:func:`resnet_bottleneck.io.onnx.load_onnx`): its output's
    class axis, or, where that axis is dynamic, the width of its output on one black image at its input size
    (224 where the file does not fix one).

    Raises:
      InputError: ONNX Runtime cannot run the file on that image.
    """
    from .io.metadata import DEFAULT_IMAGE_SIZE

    if classifier.num_classes is not None:
        return classifier.num_classes
    size = classifier.image_size or DEFAULT_IMAGE_SIZE
    return int(np.asarray(classifier(np.zeros((1, size, size, 3), np.float32))).shape[1])


def match_classes(files: ImageFiles, names: Sequence[str] | None, num_classes: int, where: str = "data") -> ImageFiles:
    """``files`` labelled with a model's class indices.

    Where the model names its classes (``names``) and every folder's name is one of them, by name
    (the folder ``goldfish`` gets ImageNet's index 1, whatever folders are beside it); else by
    position (sorted folders, as ImageFolder), which needs as many folders as the model has classes.

    Raises:
      DataError: (``field`` ``data``) neither fits; the message names ``where`` and the counts.
    """
    if names is not None and set(files.classes) <= set(names):
        index = {name: i for i, name in enumerate(names)}
        mapped = np.asarray([index[files.classes[label]] for label in files.labels], np.int32)
        return ImageFiles(files.root, files.files, mapped, tuple(names))
    if len(files.classes) == num_classes:
        return files
    unknown = sorted(set(files.classes) - set(names or ()))
    named = f" ({len(unknown)} not among its class names, e.g. {unknown[0]!r})" if names else ""
    raise DataError(
        "data", f"{where} has {len(files.classes)} class folders{named}; the model has {num_classes} classes"
    )


def _recorded_split(metadata: Mapping[str, str], source: str):
    """``(split, training, held_out)`` as the run that wrote ``metadata`` listed them, or None where it
    records no split (``split``: the recorded ``data``, ``test_fraction`` and ``seed``)."""
    from .io.metadata import held_out
    from .training import Config, load_datasets

    split = held_out(metadata, source)
    if split is None:
        return None
    train, held = load_datasets(Config(data=split["data"], test_fraction=split["test_fraction"], seed=split["seed"]))
    return split, train, held


def held_out_split(metadata: Mapping[str, str], source: str = "the file"):
    """``(images, description)``: the images a run held out for testing, listed as the run listed them
    (its model file's metadata records the data, the share and the seed), or None where the file
    records no split (torchvision's weights, ``convert``'s files).

    ``images`` is an :class:`~resnet_bottleneck.data.ImageFiles` (an image folder) or the digits'
    arrays; ``description`` says which, e.g. ``"the run's held-out split of the digits (20%, seed 0)"``.

    Raises:
      InputError: the recorded split is malformed (naming ``source``); DataError: its images are gone.
    """
    found = _recorded_split(metadata, source)
    if found is None:
        return None
    split, _, held = found
    where = "the digits" if split["data"] is None else split["data"]
    return held, f"the run's held-out split of {where} ({split['test_fraction']:.0%}, seed {split['seed']})"


def training_split(metadata: Mapping[str, str], source: str = "the file"):
    """``(images, description)``: the images a run trained on, listed as the run listed them (the other side
    of :func:`held_out_split`), or None where the file records no split. What ``export --int8`` calibrates on
    by default.

    Raises:
      InputError: the recorded split is malformed (naming ``source``); DataError: its images are gone.
    """
    found = _recorded_split(metadata, source)
    if found is None:
        return None
    split, train, _ = found
    if split["data"] is not None and is_train_val(split["data"]):
        return train, f"the run's training images, {os.path.join(split['data'], 'train')}"
    where = "the digits" if split["data"] is None else split["data"]
    return train, f"the run's training split of {where} ({1 - split['test_fraction']:.0%}, seed {split['seed']})"


__all__ = [
    "Prediction",
    "evaluation_folder",
    "held_out_split",
    "image_paths",
    "jax_classifier",
    "load_model",
    "match_classes",
    "onnx_classifier",
    "onnx_num_classes",
    "predict_files",
    "preprocess",
    "training_split",
]
