"""export --int8, and predict/evaluate --runtime openvino --precision, as a user runs them; every bad input one line."""

import json

import numpy as np
import pytest
from helpers import one_line_error, random_variables

from resnet_bottleneck import create_model
from resnet_bottleneck.cli import main
from resnet_bottleneck.io.safetensors import CHECKPOINT_FORMAT, save_variables


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Weights that record no training data (resnet_tiny, random) and a headless twin; a folder of 3 PNGs
    and an unreadable file; an empty folder."""
    from PIL import Image

    root = tmp_path_factory.mktemp("cli_int8")
    model = create_model("resnet_tiny", num_classes=10)
    variables = random_variables(model, (1, 32, 32, 3))
    meta = {"model": "resnet_tiny", "format": CHECKPOINT_FORMAT, "image_size": "32"}
    save_variables(root / "tiny.safetensors", variables, {**meta, "num_classes": "10"})
    headless = {c: {k: v for k, v in tree.items() if k != "fc"} for c, tree in variables.items()}
    save_variables(root / "headless.safetensors", headless, meta)
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(images / f"{i}.png")
    (images / "broken.jpg").write_bytes(b"not an image")
    (root / "empty").mkdir()
    return root


def test_export_int8_from_a_run_calibrates_on_its_training_images(digits_run, tmp_path, capsys):
    """export RUN OUT.onnx --int8: no --calibration needed (the run records its data); evaluate scores it on
    the run's held-out split with either runtime, near float32 (see test_io_quantize for the bounds' story)."""
    run, _ = digits_run
    assert main(["export", str(run), str(tmp_path / "f32.onnx")]) == 0
    argv = ["export", str(run), str(tmp_path / "int8.onnx"), "--int8", "--calibration-images", "64"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "int8, minmax calibration on 64 image(s) of the run's training split of the digits (80%, seed 0)" in out
    scores = {}
    for name, runtime in (("f32.onnx", "onnxruntime"), ("int8.onnx", "onnxruntime"), ("int8.onnx", "openvino")):
        argv = ["evaluate", "--weights", str(tmp_path / name), "--runtime", runtime, "--json"]
        assert main(argv) == 0
        scores[name, runtime] = json.loads(capsys.readouterr().out)
    f32 = scores["f32.onnx", "onnxruntime"]
    for key in (("int8.onnx", "onnxruntime"), ("int8.onnx", "openvino")):
        assert scores[key]["images"] == f32["images"] == 359
        assert abs(scores[key]["top1"] - f32["top1"]) <= 0.03, (key, scores[key]["top1"], f32["top1"])


def test_export_int8_with_a_folder_names_skipped_images_and_a_short_set(files, tmp_path, capsys):
    root = files
    argv = ["export", str(root / "tiny.safetensors"), str(tmp_path / "q.onnx"), "--int8"]
    argv += ["--calibration", str(root / "images"), "--calibration-method", "percentile"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"skipped 1 unreadable calibration image(s): {root / 'images' / 'broken.jpg'}"
    assert lines[1] == f"calibrated on all 3 readable image(s) of {root / 'images'} (256 asked for)"
    assert "int8, percentile calibration on 3 image(s)" in lines[2]
    image = str(root / "images" / "0.png")
    for runtime in (["onnxruntime"], ["openvino"], ["openvino", "--precision", "bf16"]):
        assert main(["predict", image, "--weights", str(tmp_path / "q.onnx"), "--json", "--runtime", *runtime]) == 0
        (result,) = json.loads(capsys.readouterr().out)
        probabilities = [r["probability"] for r in result["top5"]]
        assert len(probabilities) == 5 and probabilities == sorted(probabilities, reverse=True), runtime
        assert 0 < probabilities[-1] and probabilities[0] < 1


@pytest.mark.parametrize(
    "args, fragment, prog",
    [
        (
            ["export", "{root}/tiny.safetensors", "{tmp}/q.safetensors", "--int8"],
            "argument --int8: only for an .onnx OUT; got {tmp}/q.safetensors",
            "export",
        ),
        (
            ["export", "{root}/tiny.safetensors", "{tmp}/q.onnx", "--calibration", "{root}/images"],
            "argument --calibration: only with --int8; got {root}/images",
            "export",
        ),
        (
            ["export", "{root}/tiny.safetensors", "{tmp}/q.onnx", "--int8"],
            "argument --calibration: required with --int8: {root}/tiny.safetensors records no training images",
            "export",
        ),
        (
            ["export", "{root}/tiny.safetensors", "{tmp}/q.onnx", "--int8", "--calibration", "{root}/empty"],
            "argument --calibration: {root}/empty holds no images",
            "export",
        ),
        (
            ["export", "{root}/tiny.safetensors", "{tmp}/q.onnx", "--int8", "--calibration", "{root}/nowhere"],
            "argument --calibration: {root}/nowhere is not a directory",
            "export",
        ),
        (
            ["export", "{root}/headless.safetensors", "{tmp}/q.onnx", "--int8", "--calibration", "{root}/images"],
            # a headless model file is refused as it is read (the library's own check; quantize_onnx refuses a
            # headless .onnx too: test_io_quantize)
            "argument IN: {root}/headless.safetensors does not fit resnet_tiny; it fits resnet_tiny without a "
            "classifier (num_classes=None)",
            "export",
        ),
        (
            ["export", "{root}/model.onnx", "{tmp}/q.onnx", "--int8", "--calibration", "{root}/images"],
            "argument IN: {root}/model.onnx is an ONNX file; --int8 quantizes from a run directory",
            "export",
        ),
        (
            ["export", "{root}/tiny.safetensors", "{tmp}/q.onnx", "--int8", "--calibration-method", "kl"],
            "argument --calibration-method: invalid choice: 'kl'",
            "export",
        ),
        (
            ["predict", "{root}/images/0.png", "--weights", "{root}/tiny.safetensors", "--precision", "bf16"],
            "argument --precision: bf16 is for --runtime openvino",
            "predict",
        ),
        (
            ["evaluate", "--weights", "{root}/model.onnx", "--runtime", "onnxruntime", "--precision", "bf16"],
            "argument --precision: bf16 runs on OpenVINO: add --runtime openvino",
            "evaluate",
        ),
    ],
)
def test_bad_input_is_one_line(args, fragment, prog, files, tmp_path, capsys):
    root = files
    (root / "model.onnx").write_bytes(b"placeholder")  # only its name is read before the error
    args = [a.format(root=root, tmp=tmp_path) for a in args]
    assert main(args) == 2
    one_line_error(capsys.readouterr().err, fragment.format(root=root, tmp=tmp_path), prog=f"resnet-bottleneck {prog}")
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_only_unreadable_calibration_images_is_one_line(files, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"nope")
    argv = ["export", str(files / "tiny.safetensors"), str(tmp_path / "q.onnx"), "--int8", "--calibration", str(bad)]
    assert main(argv) == 2
    one_line_error(capsys.readouterr().err, f"argument --calibration: none of the 1 images of {bad}")
    assert not (tmp_path / "q.onnx").exists()


def test_openvino_missing_is_one_line(files, tmp_path, capsys, monkeypatch):
    """Without OpenVINO installed (``import openvino`` fails), --runtime openvino says what to install."""
    import sys

    from resnet_bottleneck.io.onnx import export_onnx

    model = create_model("resnet_tiny", num_classes=10)
    export_onnx(model, random_variables(model, (1, 32, 32, 3)), tmp_path / "m.onnx")
    monkeypatch.setitem(sys.modules, "openvino", None)
    argv = ["predict", str(files / "images" / "0.png"), "--weights", str(tmp_path / "m.onnx"), "--runtime", "openvino"]
    assert main(argv) == 2
    one_line_error(capsys.readouterr().err, "argument --runtime: openvino is needed", "[openvino]")


def test_auto_runtime_follows_the_file_and_a_bf16_request(files, tmp_path):
    """``--runtime auto`` (the default): a float32 .onnx file on ONNX Runtime, or on OpenVINO when bf16 is asked
    for (only OpenVINO computes in it); an int8 file on OpenVINO; our model files on JAX."""
    from argparse import Namespace

    from resnet_bottleneck.cli._common import resolve_runtime

    def resolved(weights, precision=None):
        return resolve_runtime(Namespace(runtime="auto", weights=str(weights), precision=precision)).runtime

    float32, int8 = tmp_path / "f.onnx", tmp_path / "q.onnx"
    assert main(["export", str(files / "tiny.safetensors"), str(float32)]) == 0
    assert resolved(float32) == "onnxruntime"
    assert resolved(float32, "bf16") == "openvino"
    assert resolved(float32, "f32") == "onnxruntime"
    assert resolved(files / "tiny.safetensors") == "jax"
    assert (
        main(["export", str(files / "tiny.safetensors"), str(int8), "--int8", "--calibration", str(files / "images")])
        == 0
    )
    assert resolved(int8) == "openvino"
    assert resolve_runtime(Namespace(runtime="onnxruntime", weights=str(int8), precision=None)).runtime == "onnxruntime"
