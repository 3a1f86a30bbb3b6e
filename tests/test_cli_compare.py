"""evaluate --compare (two files scored on the same images in one pass: points and top-1 agreement) and
--runtime auto (an .onnx file on the runtime measured faster for it, our model files on jax)."""

import json

import numpy as np
import pytest
from helpers import one_line_error, random_variables

from resnet_bottleneck import create_model
from resnet_bottleneck.cli import main
from resnet_bottleneck.data.pipeline import read
from resnet_bottleneck.data.transforms import normalize
from resnet_bottleneck.inference import held_out_split
from resnet_bottleneck.io.metadata import eval_crop
from resnet_bottleneck.io.onnx import load_onnx


@pytest.fixture(scope="module")
def exported(digits_run, tmp_path_factory):
    """The digits run exported in float32 and in int8 (64 of its training images); its held-out images through
    the files' own evaluation transform, normalised, and their labels."""
    run, _ = digits_run
    root = tmp_path_factory.mktemp("compare")
    assert main(["export", str(run), str(root / "f32.onnx")]) == 0
    assert main(["export", str(run), str(root / "int8.onnx"), "--int8", "--calibration-images", "64"]) == 0
    f32 = load_onnx(root / "f32.onnx", runtime="onnxruntime")
    held, _ = held_out_split(f32.metadata)
    crop = eval_crop(f32.metadata, "f32.onnx")
    images = np.stack([read(held, i, f32.image_size, None, *crop) for i in range(len(held))])
    return run, root, normalize(images, f32.mean, f32.std), held.labels


def _evaluate(capsys, *argv) -> dict:
    assert main(["evaluate", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_a_file_compared_with_itself_agrees_everywhere(exported, capsys):
    _, root, _, _ = exported
    out = _evaluate(capsys, "--weights", str(root / "f32.onnx"), "--compare", str(root / "f32.onnx"))
    assert out["agreement"] == 1.0 and out["agreeing_images"] == out["images"] == 359
    assert out["top1_points"] == out["top5_points"] == 0.0
    assert out["compare"]["top1"] == out["top1"] and out["compare"]["runtime"] == out["runtime"] == "onnxruntime"


def test_float32_against_int8_matches_the_files_own_predictions(exported, capsys):
    """The oracle: each file run by ONNX Runtime directly on the held-out images; the points and agreement
    evaluate prints are those predictions' own."""
    _, root, x, labels = exported
    f32 = load_onnx(root / "f32.onnx", runtime="onnxruntime")(x).argmax(1)
    int8 = load_onnx(root / "int8.onnx", runtime="onnxruntime")(x).argmax(1)
    argv = ["--weights", str(root / "f32.onnx"), "--compare", str(root / "int8.onnx")]
    out = _evaluate(capsys, *argv, "--compare-runtime", "onnxruntime")
    assert out["agreeing_images"] == int((f32 == int8).sum())
    assert out["agreement"] == pytest.approx((f32 == int8).mean())
    assert out["top1"] == pytest.approx((f32 == labels).mean()) and out["compare"]["top1"] == pytest.approx(
        (int8 == labels).mean()
    )
    assert out["top1_points"] == pytest.approx(100 * ((int8 == labels).mean() - (f32 == labels).mean()))
    assert out["compare"]["precision"] == "f32"  # what the runtime computes float parts in


def test_model_file_on_jax_against_its_onnx_export_and_the_text_report(exported, capsys):
    """Our model file (jax) against its float32 export (ONNX Runtime): the same model, so (nearly) every image
    agrees; the text report names both files, the points and the agreement."""
    run, root, _, _ = exported
    out = _evaluate(capsys, "--weights", str(run / "model.safetensors"), "--compare", str(root / "f32.onnx"))
    assert out["runtime"] == "jax" and out["compare"]["runtime"] == "onnxruntime"
    assert out["agreement"] >= 0.99 and abs(out["top1_points"]) <= 0.6
    assert main(["evaluate", "--weights", str(root / "f32.onnx"), "--compare", str(root / "f32.onnx")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all(str(root / "f32.onnx") in line for line in lines[:2])
    assert lines[2].startswith("--compare minus --weights: top-1 +0.00 points, top-5 +0.00 points; ")
    assert "top-1 agreement 100.00% (359 of 359 images of the run's held-out split" in lines[2]


def test_runtime_auto_picks_per_file(exported, capsys, monkeypatch):
    """auto: jax for our model file, ONNX Runtime for a float32 .onnx, OpenVINO for int8 where it is installed
    (else ONNX Runtime)."""
    import sys

    run, root, _, _ = exported
    runtimes = {
        name: _evaluate(capsys, "--weights", str(path))["runtime"]
        for name, path in (
            ("model", run / "model.safetensors"),
            ("f32", root / "f32.onnx"),
            ("int8", root / "int8.onnx"),
        )
    }
    assert runtimes == {"model": "jax", "f32": "onnxruntime", "int8": "openvino"}
    # bf16 asked for a float32 file: OpenVINO computes it, for --weights as for --compare
    f32 = str(root / "f32.onnx")
    out = _evaluate(capsys, "--weights", f32, "--precision", "bf16", "--compare", f32, "--compare-precision", "bf16")
    assert out["runtime"] == out["compare"]["runtime"] == "openvino"
    assert out["precision"] == out["compare"]["precision"] == "bf16"
    monkeypatch.setitem(sys.modules, "openvino", None)  # not installed
    assert _evaluate(capsys, "--weights", str(root / "int8.onnx"))["runtime"] == "onnxruntime"


@pytest.fixture(scope="module")
def other(tmp_path_factory):
    """A random resnet_tiny of 3 classes, exported (its classes differ from the digits')."""
    from resnet_bottleneck.io.onnx import export_onnx

    root = tmp_path_factory.mktemp("other")
    model = create_model("resnet_tiny", num_classes=3)
    export_onnx(model, random_variables(model, (1, 16, 16, 3)), root / "three.onnx", metadata={"image_size": 16})
    return root


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--compare-runtime", "openvino"], "argument --compare-runtime: needs --compare (the second model file)"),
        (["--compare-precision", "bf16"], "argument --compare-precision: needs --compare (the second model file)"),
        (["--compare", "{other}/missing.onnx"], "argument --compare: no such ONNX file: {other}/missing.onnx"),
        (
            ["--compare", "{other}/three.onnx"],
            "argument --compare: {other}/three.onnx has 3 classes and {root}/f32.onnx 10: only models of the same "
            "classes compare",
        ),
        (
            ["--compare", "{root}/f32.onnx", "--compare-runtime", "jax"],
            "argument --compare-runtime: jax runs our model files; {root}/f32.onnx is an ONNX file",
        ),
        (
            ["--compare", "{root}/f32.onnx", "--compare-runtime", "onnxruntime", "--compare-precision", "bf16"],
            "argument --compare-precision: bf16 runs on OpenVINO: add --compare-runtime openvino",
        ),
        (["--compare-runtime", "tvm"], "argument --compare-runtime: invalid choice: 'tvm'"),
    ],
)
def test_bad_compare_input_is_one_line(exported, other, capsys, extra, fragment):
    _, root, _, _ = exported
    argv = ["evaluate", "--weights", str(root / "f32.onnx"), *(a.format(root=root, other=other) for a in extra)]
    assert main(argv) == 2
    one_line_error(capsys.readouterr().err, fragment.format(root=root, other=other), prog="resnet-bottleneck evaluate")
