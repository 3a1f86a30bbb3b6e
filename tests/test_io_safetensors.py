"""This library's .safetensors format: variables and metadata round trip, atomic writes, load_model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_trees_equal
from safetensors import SafetensorError

from resnet_bottleneck import create_model, errors, load_model
from resnet_bottleneck.io.safetensors import CHECKPOINT_FORMAT, load_variables, read_tensors, save_variables


@pytest.fixture(scope="module")
def resnet18():
    model = create_model("resnet18", num_classes=7)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    return model, jax.tree_util.tree_map(np.asarray, variables)


def test_save_and_load_variables_round_trip(tmp_path, resnet18):
    _, variables = resnet18
    save_variables(tmp_path / "v.safetensors", variables, {"model": "resnet18"})
    back, meta = load_variables(tmp_path / "v.safetensors")
    assert meta == {"model": "resnet18"}
    assert_trees_equal(back, dict(variables))


def test_load_model_reads_our_format_and_refuses_another_model(tmp_path, resnet18):
    model, variables = resnet18
    path = tmp_path / "r18.safetensors"
    save_variables(path, variables, {"model": "resnet18", "format": CHECKPOINT_FORMAT})
    loaded, back, metadata = load_model(path, "resnet18")
    assert loaded == model and metadata == {"model": "resnet18", "format": CHECKPOINT_FORMAT}
    assert_trees_equal(back, dict(variables))
    named, back, _ = load_model(path)  # the file names its model
    assert named == model
    assert_trees_equal(back, dict(variables))
    with pytest.raises(ValueError, match="holds 'resnet18' variables, not 'resnet34'"):
        load_model(path, "resnet34")


def test_unreadable_file_is_a_clear_error_and_a_failed_write_leaves_nothing(tmp_path, resnet18):
    _, variables = resnet18
    save_variables(tmp_path / "v.safetensors", variables)
    data = (tmp_path / "v.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.safetensors is not a readable .safetensors file"):
        read_tensors(tmp_path / "cut.safetensors")
    with pytest.raises(errors.FileError, match="no such weights file"):  # an OSError, as FileNotFoundError was
        load_variables(tmp_path / "missing.safetensors")
    before = sorted(tmp_path.iterdir())
    with pytest.raises(SafetensorError):
        save_variables(tmp_path / "bad.safetensors", {"params": {"x": object()}})
    assert sorted(tmp_path.iterdir()) == before
