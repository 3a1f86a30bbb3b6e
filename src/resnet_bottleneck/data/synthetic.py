"""A generated image folder, ImageNet-like (500x375 JPEGs at quality 90, ~65 KB), for trying and
measuring the pipeline without a download: each class a colour scheme, each image its own texture."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def write_image_folder(
    root: str | os.PathLike,
    classes: int = 4,
    per_class: int = 100,
    size=(500, 375),
    quality: int = 90,
    seed: int = 0,
    layout: str = "flat",
    val_per_class: int = 0,
) -> Path:
    """Write ``root/<class>/<i>.jpg`` (``layout="flat"``) or ``root/{train,val}/<class>/<i>.jpg``
    (``"imagenet"``, with ``val_per_class`` validation images) and return ``root``."""
    from PIL import Image

    width, height = size
    rng = np.random.default_rng(seed)
    grain_field = rng.integers(-14, 15, (2 * height, 2 * width, 3), dtype=np.int16)  # shared film grain
    splits = {"": per_class} if layout == "flat" else {"train": per_class, "val": val_per_class}
    root = Path(root)
    for c in range(classes):
        tint = rng.integers(0, 256, 3)
        for split, count in splits.items():
            folder = root / split / f"class_{c:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                coarse = (rng.integers(0, 128, (6, 8, 3)) + tint // 2).astype(np.uint8)
                base = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
                detail = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).resize((width, height))
                y, x = rng.integers(0, height), rng.integers(0, width)
                pixels = (
                    np.asarray(Image.blend(base, detail, 0.3), np.int16) + grain_field[y : y + height, x : x + width]
                )
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=quality)
    return root
