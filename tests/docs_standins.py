"""Small stand-ins for the user's files that the README's and the docs' code blocks name.

A block that names ``cat.jpg`` or ``resnet18-f37072fd.pth`` is run in a folder where such a file exists:
a generated JPEG, torchvision's resnet18 with random weights saved as torchvision saves its own
(``torch.save(model.state_dict())``), timm's resnet10t the same way (``resnet10t.pth``), a generated image
folder. Each is made only for the pages that name it, once per test session, and linked into each page's
folder. They are shrunk: images of at most 96x80 pixels, image folders of 3 classes of 8 small JPEGs, so
that the docs run in a few minutes on two cores.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np


def _image(path: Path, seed: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    Image.fromarray(coarse).resize((96, 80), Image.BICUBIC).save(path)


def _torchvision_weights(name: str) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        import torch
        import torchvision

        torch.manual_seed(0)
        torch.save(getattr(torchvision.models, name)().state_dict(), path)

    return write


def _timm_weights(name: str) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        import timm
        import torch

        torch.manual_seed(0)
        torch.save(timm.create_model(name).state_dict(), path)

    return write


def _folder(seed: int, classes: int = 3) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        from resnet_bottleneck.data.synthetic import write_image_folder

        write_image_folder(path, classes=classes, per_class=8, size=(64, 48), seed=seed)

    return write


def _array(path: Path) -> None:
    np.save(path, np.random.default_rng(0).standard_normal((8, 8, 256)).astype(np.float32))


def _labels(path: Path) -> None:
    path.write_text("".join(f"{name}\n" for name in ("daisy", "rose", "tulip")))


#: name as a block writes it -> how to make it. A block that names a file not listed here must create it.
STANDINS: dict[str, Callable[[Path], None]] = {
    "cat.jpg": lambda path: _image(path, 1),
    "dog.png": lambda path: _image(path, 2),
    "rose.jpg": lambda path: _image(path, 3),
    "tulip.jpg": lambda path: _image(path, 4),
    "seven.png": lambda path: _image(path, 5),
    "x.npy": _array,
    "labels.txt": _labels,
    "resnet18-f37072fd.pth": _torchvision_weights("resnet18"),  # ResNet18_Weights.IMAGENET1K_V1's file name
    "resnet10t.pth": _timm_weights("resnet10t"),  # timm's resnet10t, random weights, as timm's state_dict
    "flowers": _folder(seed=2),  # a flat ROOT/<class>/<image> folder
    "flowers-test": _folder(seed=3),
}


def named_in(text: str) -> list[str]:
    """The stand-ins that ``text`` names."""
    return [name for name in STANDINS if name in text]


def prepare(folder: Path, names: list[str], cache: Path) -> None:
    """Make ``names`` in ``cache`` (once) and link them into ``folder``."""
    for name in names:
        made = cache / name
        if not made.exists():
            STANDINS[name](made)
        (folder / name).symlink_to(made, target_is_directory=made.is_dir())
