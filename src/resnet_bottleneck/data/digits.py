"""scikit-learn's bundled 8x8 ``digits`` (1,797 images, 10 classes): the default data set, no download."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DataError


@dataclass(frozen=True, eq=False)
class ImageArrays:
    """Small images held in memory, uint8 (N, H, W, 3), with integer labels and class names."""

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, index: int) -> str:
        return f"<image {index} in memory>"

    def subset(self, indices: np.ndarray) -> ImageArrays:
        return ImageArrays(self.images[indices], self.labels[indices], self.classes)


def digits(test_fraction: float = 0.2, seed: int = 0) -> tuple[ImageArrays, ImageArrays]:
    """(training, held-out) digits, the held-out ``test_fraction`` chosen by ``seed``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError(
            "data", "the default data set needs scikit-learn: pip install 'resnet-bottleneck[train]'"
        ) from None
    data = load_digits()
    images = np.repeat(np.round(data.images * (255 / 16)).astype(np.uint8)[..., None], 3, axis=-1)
    everything = ImageArrays(images, data.target.astype(np.int32), tuple(str(i) for i in range(10)))
    order = np.random.default_rng(seed).permutation(len(everything))
    n_test = int(round(len(order) * test_fraction))
    return everything.subset(order[n_test:]), everything.subset(order[:n_test])
