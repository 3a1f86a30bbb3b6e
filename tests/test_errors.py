"""The library's exception classes live in one module; input errors are ValueErrors; the old homes re-export."""

from __future__ import annotations

import pytest

from resnet_bottleneck import errors


def test_input_errors_are_value_errors_and_run_errors_are_not():
    for cls in (errors.InputError, errors.SettingError, errors.DataError, errors.ConfigError):
        assert issubclass(cls, ValueError), cls
    assert issubclass(errors.ConfigError, errors.TrainingError) and issubclass(
        errors.DivergedError, errors.TrainingError
    )
    assert not issubclass(errors.DivergedError, ValueError)  # a NaN loss is no bad input
    assert issubclass(errors.ImageError, OSError)


def test_weights_that_do_not_fit_are_an_input_error():
    import numpy as np

    from resnet_bottleneck.io.torchvision import WeightsMismatch, from_torchvision

    with pytest.raises(WeightsMismatch) as caught:
        from_torchvision({"conv1.weight": np.zeros((64, 3, 7, 7), np.float32)}, "resnet18")
    assert isinstance(caught.value, errors.InputError)


def test_a_setting_error_names_its_field():
    err = errors.DataError("batch_size", "7 does not divide over 2 processes")
    assert (err.field, err.message, str(err)) == (
        "batch_size",
        "7 does not divide over 2 processes",
        f"batch_size: {err.message}",
    )
    with pytest.raises(ValueError, match="^batch_size: 7 does not divide"):
        raise err


@pytest.mark.parametrize(
    "module, names",
    [
        ("resnet_bottleneck.data", ["DataError", "ImageError"]),
        ("resnet_bottleneck.data.folder", ["DataError", "SettingError"]),
        ("resnet_bottleneck.data.transforms", ["ImageError"]),
        ("resnet_bottleneck.training", ["ConfigError", "DivergedError", "TrainingError"]),
        ("resnet_bottleneck.training.config", ["ConfigError", "DivergedError", "TrainingError"]),
    ],
)
def test_old_homes_re_export_the_same_classes(module, names):
    import importlib

    mod = importlib.import_module(module)
    for name in names:
        assert getattr(mod, name) is getattr(errors, name), (module, name)
