"""Class names: ImageNet's shipped list is torchvision's, and a labels file > the weights' own > ImageNet's."""

import json
import tomllib
from pathlib import Path

import pytest

from resnet_bottleneck.io import class_names, imagenet_classes


def test_the_shipped_imagenet_list_is_torchvisions():
    from torchvision.models import ResNet50_Weights

    assert imagenet_classes() == list(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])
    assert imagenet_classes()[:2] == ["tench", "goldfish"] and len(set(imagenet_classes())) == 1000
    # shipped in a wheel too, not only found in the source tree
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert "imagenet_classes.txt" in pyproject["tool"]["setuptools"]["package-data"]["resnet_bottleneck.io"]


def test_precedence_labels_file_then_metadata_then_imagenet(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("a\n\nb\nc\n")  # blank lines skipped
    own = {"classes": json.dumps(["x", "y", "z"])}
    assert class_names(3, own, labels) == ["a", "b", "c"]
    assert class_names(3, own) == ["x", "y", "z"]
    assert class_names(3, {"model": "resnet50"}) is None  # indices
    assert class_names(1000, {}) == imagenet_classes()
    assert class_names(1000, {"classes": json.dumps([str(i) for i in range(1000)])})[:2] == ["0", "1"]


@pytest.mark.parametrize(
    "num_classes,metadata,labels,message",
    [
        (4, None, "a\nb\nc\n", r"labels.txt has 3 names for 4 classes"),
        (
            2,
            {"classes": json.dumps(["x", "y", "z"])},
            None,
            r"the weights' metadata 'classes' has 3 names for 2 classes",
        ),
        (2, {"classes": "x, y"}, None, r"metadata 'classes' must be a JSON list of names; got 'x, y'"),
        (2, {"classes": "[1, 2]"}, None, r"metadata 'classes' must be a JSON list of names; got '\[1, 2\]'"),
        (2, None, b"\xff\xfe\x00bad", r"cannot read .*labels.txt as text, one class name a line"),
    ],
)
def test_bad_names_are_clear_errors(num_classes, metadata, labels, message, tmp_path):
    path = None
    if labels is not None:
        path = tmp_path / "labels.txt"
        path.write_bytes(labels if isinstance(labels, bytes) else labels.encode())
    with pytest.raises(ValueError, match=message):
        class_names(num_classes, metadata, path)
    with pytest.raises(ValueError, match=r"no such file: .*missing.txt"):
        class_names(2, None, tmp_path / "missing.txt")
