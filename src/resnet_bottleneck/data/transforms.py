"""The training crop and the evaluation transform: one implementation for train, evaluate and predict.

Both return ``uint8`` HWC arrays; :func:`normalize` (ImageNet mean and std) runs where the
pixels are used, on the device inside the jitted step, so a quarter of the bytes cross
from the loader's workers to the device. Training crops of JPEGs are decoded at a reduced
size (PIL's ``draft``, libjpeg's DCT scaling) whenever the crop is still at least the output
size at that scale, so a downscale never becomes an upscale; the evaluation transform is
torchvision's, bit for bit, by default, and timm's (its ``crop_pct`` and interpolation) as a model's
data config asks.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from ..errors import ImageError, InputError, InputTypeError  # noqa: F401 - importable from here as before

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: torchvision's (and the field's) evaluation crop: the shorter side is resized to
#: ``image_size / CROP_FRACTION`` (256 for 224), then the center is cropped.
CROP_FRACTION = 0.875
#: The evaluation transform's resampling filters (PIL's), by timm's names; torchvision's is bilinear.
INTERPOLATIONS = ("bilinear", "bicubic")
SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)


def normalize(images: Any, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Any:
    """uint8 (..., 3) pixels to float32, scaled to [0, 1] and standardised by ``mean`` and ``std``
    (per channel, on that scale; ImageNet's by default).

    Works on numpy and JAX arrays alike (the trailing channel axis broadcasts at full rank); one
    multiply and one subtract, ``x * (1 / (255 std)) - mean / std``.
    """
    shape = (1,) * (images.ndim - 1) + (3,)
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    scale = (1 / (255 * std)).astype(np.float32).reshape(shape)
    offset = (mean / std).astype(np.float32).reshape(shape)
    return images.astype(np.float32) * scale - offset


def random_resized_crop_box(
    width: int, height: int, rng: np.random.Generator, scale=SCALE, ratio=RATIO
) -> tuple[int, int, int, int]:
    """torchvision's ``RandomResizedCrop.get_params`` on numpy's generator: ``(top, left, h, w)``.

    Ten tries at an area fraction uniform in ``scale`` and an aspect ratio log-uniform in
    ``ratio``; failing those, the central crop at the nearest allowed ratio.
    """
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def check_crop_pct(crop_pct: Any, name: str = "crop_pct") -> float:
    """``crop_pct`` if it is a number in (0, 1], else a ``TypeError``/``ValueError`` naming ``name``."""
    from .. import _checks

    expected = "a number in (0, 1] (the share of the resized shorter side the centre crop keeps)"
    if not _checks.is_number(crop_pct):
        raise InputTypeError(f"{name} must be {expected}; got {crop_pct!r} ({type(crop_pct).__name__})")
    if not 0 < crop_pct <= 1:  # NaN fails too
        raise InputError(f"{name} must be {expected}; got {crop_pct!r}")
    return float(crop_pct)


def check_interpolation(interpolation: Any, name: str = "interpolation") -> str:
    """``interpolation`` if it is one of :data:`INTERPOLATIONS`, else a ``ValueError`` naming ``name``."""
    if not isinstance(interpolation, str) or interpolation not in INTERPOLATIONS:
        raise InputError(f"{name} must be one of {', '.join(map(repr, INTERPOLATIONS))}; got {interpolation!r}")
    return interpolation


def eval_box(
    width: int, height: int, image_size: int, crop_pct: float = CROP_FRACTION
) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """torchvision's ``Resize(floor(image_size / crop_pct))`` + ``CenterCrop(image_size)`` as numbers
    (timm's evaluation transform: ``scale_size = math.floor(img_size / crop_pct)``; 256 for 224 at 0.875).

    Returns the resized ``(width, height)`` (the shorter side at the resize target, the
    longer truncated, as torchvision does) and the crop ``(left, top, right, bottom)`` in it.
    """
    resize = math.floor(image_size / check_crop_pct(crop_pct))
    if width <= height:
        size = (resize, int(resize * height / width))
    else:
        size = (int(resize * width / height), resize)
    left = int(round((size[0] - image_size) / 2.0))
    top = int(round((size[1] - image_size) / 2.0))
    return size, (left, top, left + image_size, top + image_size)


def _open(path: str | os.PathLike):
    """The image at ``path``, opened lazily (its header read, nothing decoded), or an :class:`ImageError`.

    An image of more pixels than PIL's ``Image.MAX_IMAGE_PIXELS`` (read, never changed: it is the
    process's) is refused before anything is decoded, whether PIL itself refused it (over twice the limit)
    or only warned: a small file claiming 30000 x 30000 pixels (a decompression bomb) is unreadable, not
    gigabytes of memory.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)
    except FileNotFoundError:
        raise ImageError(f"no such file: {path}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:  # the warning: raised as an error
        raise ImageError(f"cannot read {path} as an image ({err})") from None
    except (UnidentifiedImageError, OSError) as err:
        raise ImageError(f"cannot read {path} as an image ({err})") from None
    limit, (width, height) = Image.MAX_IMAGE_PIXELS, image.size
    if limit is not None and width * height > limit:
        image.close()
        raise ImageError(
            f"cannot read {path} as an image: its {width} x {height} pixels are more than PIL's limit of {limit} "
            "(Image.MAX_IMAGE_PIXELS; a decompression bomb?)"
        )
    return image


def _draft(image, region_w: float, region_h: float, out_w: int, out_h: int) -> float:
    """Ask libjpeg to decode at 1/2, 1/4 or 1/8 while the region stays >= twice the output (the
    antialiased resize still does the last halving: close to the full decode's result); the scale kept."""
    if image.format != "JPEG":
        return 1.0
    for s in (8, 4, 2):
        if region_w / s >= 2 * out_w and region_h / s >= 2 * out_h:
            width = image.size[0]
            _, box = image.draft("RGB", (width // s, image.size[1] // s))
            return width / box[2]  # the image's pixels now sit at 1/s (a partial last block is padded)
    return 1.0


def _load_rgb(image, path):
    try:
        image.load()
        return image if image.mode == "RGB" else image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as err:  # truncated or corrupt data
        raise ImageError(f"cannot decode {path} as an image ({err})") from None


def train_transform(
    path: str | os.PathLike, image_size: int, rng: np.random.Generator, flip: bool = True, draft: bool = True
) -> np.ndarray:
    """RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3) of the full image, bilinear with antialiasing
    to ``image_size`` square, and a horizontal flip half the time: uint8 (image_size, image_size, 3).

    With ``draft`` a JPEG whose crop is at least twice ``image_size`` is decoded at 1/2 (or 1/4,
    1/8): libjpeg's DCT scaling then does part of the downscale (close to, not bit for bit, the
    full decode's result).
    """
    from PIL import Image

    with _open(path) as image:
        top, left, h, w = random_resized_crop_box(*image.size, rng)
        mirrored = flip and rng.random() < 0.5
        s = _draft(image, w, h, image_size, image_size) if draft else 1.0
        rgb = _load_rgb(image, path)
        if s == 1.0:  # crop, then resize: the filter sees only the crop's pixels, as torchvision's does
            out = rgb.crop((left, top, left + w, top + h)).resize((image_size, image_size), Image.BILINEAR)
        else:  # the region at 1/s falls between pixels: resample it exactly (a float box)
            box = (left / s, top / s, (left + w) / s, (top + h) / s)
            out = rgb.resize((image_size, image_size), Image.BILINEAR, box=box)
    if mirrored:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(out)


def eval_transform(
    path: str | os.PathLike, image_size: int, crop_pct: float = CROP_FRACTION, interpolation: str = "bilinear"
) -> np.ndarray:
    """Resize the shorter side to ``floor(image_size / crop_pct)``, center crop ``image_size``: uint8 HWC.

    Bit for bit torchvision's ``Resize`` + ``CenterCrop`` on the PIL image (no reduced-size decoding
    here) with ``interpolation`` (``'bilinear'``, torchvision's, or ``'bicubic'``): timm's evaluation
    transform of a model whose data config has that ``crop_pct`` and interpolation.

    Raises:
      ImageError: the file cannot be read as an image.
      TypeError, ValueError: a bad ``crop_pct`` or ``interpolation`` (naming it).
    """
    from PIL import Image

    crop_pct = check_crop_pct(crop_pct)
    resample = Image.BICUBIC if check_interpolation(interpolation) == "bicubic" else Image.BILINEAR
    with _open(path) as image:
        size, crop = eval_box(*image.size, image_size, crop_pct)
        rgb = _load_rgb(image, path)
        return np.asarray(rgb.resize(size, resample).crop(crop))


def resize_nearest(image: np.ndarray, image_size: int) -> np.ndarray:
    """Nearest-neighbour resize of a small in-memory image (the 8x8 digits) to ``image_size`` square."""
    rows = np.arange(image_size) * image.shape[0] // image_size
    cols = np.arange(image_size) * image.shape[1] // image_size
    return image[rows][:, cols]
