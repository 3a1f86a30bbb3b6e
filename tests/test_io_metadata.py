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


def test_eval_crop_defaults_to_torchvisions_for_files_without_the_keys():
    from resnet_bottleneck.io.metadata import eval_crop

    assert eval_crop({}) == (0.875, "bilinear")
    assert eval_crop({"image_size": "224", "mean": "[0.5, 0.5, 0.5]"}) == (0.875, "bilinear")
    assert eval_crop({"crop_pct": "0.95", "interpolation": "bicubic"}) == (0.95, "bicubic")
    assert eval_crop({"crop_pct": "1"}) == (1.0, "bilinear")


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"crop_pct": "0"}, r"metadata 'crop_pct' must be a JSON number in \(0, 1\]; got '0'$"),
        ({"crop_pct": "1.5"}, r"metadata 'crop_pct' must be a JSON number in \(0, 1\]; got '1.5'$"),
        ({"crop_pct": "x"}, r"metadata 'crop_pct' must be a JSON number in \(0, 1\]; got 'x'$"),
        ({"crop_pct": "true"}, r"metadata 'crop_pct' must be a JSON number in \(0, 1\]; got 'true'$"),
        ({"crop_pct": "NaN"}, r"metadata 'crop_pct' must be a JSON number in \(0, 1\]; got 'NaN'$"),
        ({"interpolation": "nearest"}, r"metadata 'interpolation' must be 'bilinear' or 'bicubic'; got 'nearest'$"),
    ],
)
def test_a_bad_recorded_crop_names_the_file_the_key_and_the_value(metadata, message):
    from resnet_bottleneck.io.metadata import eval_crop

    with pytest.raises(ValueError, match="^m.safetensors's " + message):
        eval_crop(metadata, "m.safetensors")


def test_a_data_config_round_trips_through_a_model_file(tmp_path):
    """What convert records (a data config as metadata) reads back as the same preprocessing; an older
    file without the new keys reads as torchvision's."""
    import numpy as np

    from resnet_bottleneck.arch.data_configs import data_config
    from resnet_bottleneck.io.metadata import describe_preprocessing, eval_crop
    from resnet_bottleneck.io.safetensors import CHECKPOINT_FORMAT, load_variables, save_variables

    variables = {"params": {"fc": {"kernel": np.ones((2, 3), np.float32)}}}
    for name, expected in (("resnetrs101", (192, 0.94, "bicubic")), ("resnet_tiny", (224, 0.875, "bilinear"))):
        config = data_config(name)
        save_variables(
            tmp_path / f"{name}.safetensors",
            variables,
            {"model": name, "format": CHECKPOINT_FORMAT, **describe_preprocessing(config)},
        )
        _, metadata = load_variables(tmp_path / f"{name}.safetensors")
        assert preprocessing(metadata) == (expected[0], config["mean"], config["std"])
        assert eval_crop(metadata) == expected[1:]
    save_variables(tmp_path / "old.safetensors", variables, {"model": "resnet_tiny", "format": CHECKPOINT_FORMAT})
    _, metadata = load_variables(tmp_path / "old.safetensors")
    assert "crop_pct" not in metadata and eval_crop(metadata) == (0.875, "bilinear")
    assert preprocessing(metadata) == (224, IMAGENET_MEAN, IMAGENET_STD)


def test_describe_preprocessing_refuses_what_the_transform_cannot_do():
    from resnet_bottleneck.arch.data_configs import data_config
    from resnet_bottleneck.io.metadata import describe_preprocessing

    config = data_config("resnet50")
    with pytest.raises(ValueError, match="crop_mode must be 'center'; got 'squash'"):
        describe_preprocessing({**config, "crop_mode": "squash"})
    with pytest.raises(ValueError, match=r"input_size must be square; got \(3, 224, 256\)"):
        describe_preprocessing({**config, "input_size": (3, 224, 256)})
    with pytest.raises(ValueError, match="interpolation must be one of 'bilinear', 'bicubic'; got 'nearest'"):
        describe_preprocessing({**config, "interpolation": "nearest"})


def test_a_runs_metadata_records_its_crop():
    from resnet_bottleneck.io.metadata import describe_run, eval_crop

    run = dict(
        model="resnet_tiny",
        classes=["a", "b"],
        image_size=32,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        dtype="float32",
        batch_size=8,
        split={"data": None, "test_fraction": 0.2, "seed": 0},
        config={},
        step=3,
        test_accuracy=None,
    )
    assert eval_crop(describe_run(**run)) == (0.875, "bilinear")
    recorded = describe_run(**run, crop_pct=0.95, interpolation="bicubic")
    assert eval_crop(recorded) == (0.95, "bicubic") and preprocessing(recorded) == (32, IMAGENET_MEAN, IMAGENET_STD)
    with pytest.raises(ValueError, match="crop_pct must be"):
        describe_run(**run, crop_pct=0)
