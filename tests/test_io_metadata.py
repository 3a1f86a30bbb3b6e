"""A model file's metadata as read for use: every value checked by the library's one check of its kind."""

from __future__ import annotations

import pytest

from resnet_bottleneck.io.metadata import IMAGENET_MEAN, IMAGENET_STD, preprocessing, recorded_batch_size


def test_recorded_batch_size_reads_a_positive_integer_else_the_default():
    assert recorded_batch_size({}) == 64 and recorded_batch_size({}, default=8) == 8
    assert recorded_batch_size({"batch_size": "48"}) == 48


@pytest.mark.parametrize("text", ["0", "-3", "2.5", "x", "true", ""])
def test_a_bad_recorded_batch_size_names_the_file_the_key_and_the_value(text):
    with pytest.raises(
        ValueError, match=rf"^m.safetensors's metadata 'batch_size' must be a positive integer; got '{text}'$"
    ):
        recorded_batch_size({"batch_size": text}, "m.safetensors")


def test_preprocessing_defaults_to_imagenets():
    assert preprocessing({}) == (224, IMAGENET_MEAN, IMAGENET_STD)
    with pytest.raises(ValueError, match="metadata 'image_size' must be a positive integer; got '0'"):
        preprocessing({"image_size": "0"})
