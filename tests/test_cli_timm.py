"""timm's weight files (``.pth``, ``.safetensors`` of ``timm.create_model(name).state_dict()``) through
convert, predict, evaluate, export and train, as a user runs them; mismatches in one line, exit 2."""

import json

import numpy as np
import pytest
import timm
import torch
from helpers import assert_trees_equal, one_line_error

from resnet_bottleneck import from_timm
from resnet_bottleneck.cli import main
from resnet_bottleneck.data.synthetic import write_image_folder
from resnet_bottleneck.io.safetensors import load_variables

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def timm_files(tmp_path_factory):
    """timm's resnet10t (random weights, random BatchNorm statistics, 3 classes) as .pth and .safetensors,
    an image folder of 3 classes, and an image."""
    from PIL import Image
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("timm")
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=3)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.weight.shape[0]
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
    state = model.state_dict()
    torch.save(state, root / "r10t.pth")
    save_file(state, str(root / "r10t.safetensors"))
    write_image_folder(root / "data", classes=3, per_class=3, size=(40, 36), seed=0)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 60, 3), dtype=np.uint8)).save(root / "a.png")
    return root, state


def test_convert_both_files_is_from_timm(timm_files, tmp_path, capsys):
    root, state = timm_files
    expected = from_timm(state, "resnet10t")[1]
    for name in ("r10t.pth", "r10t.safetensors"):
        assert main(["convert", str(root / name), str(tmp_path / "o.safetensors"), "--model", "resnet10t"]) == 0
        variables, metadata = load_variables(tmp_path / "o.safetensors")
        assert metadata["model"] == "resnet10t" and metadata["num_classes"] == "3"
        assert_trees_equal(variables, expected)
    assert "Converted" in capsys.readouterr().out


def test_predict_evaluate_export_take_timms_files(timm_files, tmp_path, capsys):
    """The same weights through timm's .pth, timm's .safetensors and our converted file: the same answers."""
    root, _ = timm_files
    assert main(["convert", str(root / "r10t.pth"), str(tmp_path / "ours.safetensors"), "--model", "resnet10t"]) == 0
    capsys.readouterr()
    files = (
        [str(root / "r10t.pth"), "--model", "resnet10t"],
        [str(root / "r10t.safetensors"), "--model", "resnet10t"],
        [str(tmp_path / "ours.safetensors")],
    )
    predictions, scores = [], []
    for weights in files:
        assert main(["predict", str(root / "a.png"), "--json", "--weights", *weights]) == 0
        predictions.append(json.loads(capsys.readouterr().out))
        assert (
            main(["evaluate", "--data", str(root / "data"), "--image-size", "32", "--json", "--weights", *weights]) == 0
        )
        scores.append(json.loads(capsys.readouterr().out))
    assert predictions[0] == predictions[1] == predictions[2], predictions
    assert len(predictions[0]) == 1 and len(predictions[0][0]["top5"]) == 3  # 3 classes
    for key in ("top1", "top5", "loss"):
        assert scores[0][key] == scores[1][key] == scores[2][key], scores
    assert np.isfinite(scores[0]["loss"])
    assert (
        main(["export", str(root / "r10t.safetensors"), str(tmp_path / "e.safetensors"), "--model", "resnet10t"]) == 0
    )
    variables, metadata = load_variables(tmp_path / "e.safetensors")
    assert metadata["model"] == "resnet10t"
    assert_trees_equal(variables, load_variables(tmp_path / "ours.safetensors")[0])


@pytest.mark.parametrize(
    "argv",
    [
        ["convert", "{root}/r10t.pth", "{tmp}/o.safetensors", "--model", "resnet14t"],
        ["predict", "{root}/a.png", "--weights", "{root}/r10t.safetensors", "--model", "resnet14t"],
        ["evaluate", "--data", "{root}/data", "--weights", "{root}/r10t.pth", "--model", "resnet14t"],
        ["export", "{root}/r10t.pth", "{tmp}/o.safetensors", "--model", "resnet14t"],
        ["train", "--weights", "{root}/r10t.pth", "--model", "resnet14t", "--out", "{tmp}/run"],
    ],
)
def test_timm_weights_of_another_model_are_one_line(timm_files, tmp_path, capsys, argv):
    root, _ = timm_files
    argv = [a.format(root=root, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    weights = next(a for a in argv if a.startswith(str(root / "r10t")))
    line = one_line_error(
        capsys.readouterr().err,
        f"{weights} does not fit timm's resnet14t; it fits resnet10t. ",
        prog=f"resnet-bottleneck {argv[0]}",
    )
    assert len(line) < 300, line
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_a_timm_file_without_model_names_what_fits(timm_files, capsys):
    root, _ = timm_files
    assert main(["predict", str(root / "a.png"), "--weights", str(root / "r10t.pth")]) == 2
    one_line_error(
        capsys.readouterr().err,
        "does not name its model, as torchvision's and timm's weights do not (its tensors fit resnet10t): give the "
        "model name (--model)",
    )
