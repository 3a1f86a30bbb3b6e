"""int8 export (io.quantize) and the OpenVINO runtime (io.onnx.load_onnx): the quantized graph, its metadata,
both runtimes against each other and against float32 on a trained model (a 10-epoch digits run), bad input."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from resnet_bottleneck import create_model
from resnet_bottleneck.data.pipeline import read
from resnet_bottleneck.data.transforms import normalize
from resnet_bottleneck.errors import DataError, InputError, SettingError
from resnet_bottleneck.inference import held_out_split, training_split
from resnet_bottleneck.io.onnx import export_onnx, load_onnx, openvino_bf16
from resnet_bottleneck.io.quantize import CALIBRATION_IMAGES, calibration_summary, quantize_onnx

#: A trained digits run that is cheap enough for the suite: resnet_tiny at 16x16 for 10 epochs (about 98% top-1
#: on the 359 held-out images; the suite's shared 2-epoch run, about 77%, is too undertrained for the issue's
#: bounds: its margins are so thin that int8's rounding flips 1-2% of its answers, docs/deploying.md).
TRAINED = ["--image-size", "16", "--batch-size", "64", "--epochs", "10", "--checkpoint-every", "100", "--keep", "1"]


@pytest.fixture(scope="module")
def digits_files(tmp_path_factory):
    """A trained digits run (:data:`TRAINED`) exported in float32 (``export``) and quantized on its training
    images (256, min-max); its held-out images, normalised as the files say, and their labels."""
    from resnet_bottleneck.cli import main

    root = tmp_path_factory.mktemp("int8")
    run = root / "run"
    assert main(["train", *TRAINED, "--out", str(run), "--json"]) == 0
    assert main(["export", str(run), str(root / "f32.onnx")]) == 0
    f32 = load_onnx(root / "f32.onnx", runtime="onnxruntime")
    train, description = training_split(f32.metadata)
    result = quantize_onnx(root / "f32.onnx", root / "int8.onnx", train, description=description)
    held, _ = held_out_split(f32.metadata)
    images = np.stack([read(held, i, f32.image_size, None) for i in range(len(held))])
    return root, result, normalize(images, f32.mean, f32.std), held.labels


def _softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_int8_graph_is_qdq_with_per_channel_int8_weights(digits_files):
    """Every Conv and the Gemm take their weight from a DequantizeLinear of an int8 tensor with one scale per
    output channel; dequantized, each weight is within half a step of the float32 file's (the oracle); the
    activations are uint8."""
    root, _, _, _ = digits_files
    f32, int8 = onnx.load(root / "f32.onnx"), onnx.load(root / "int8.onnx")
    floats = {t.name: numpy_helper.to_array(t) for t in f32.graph.initializer}
    inits = {t.name: numpy_helper.to_array(t) for t in int8.graph.initializer}
    producer = {out: node for node in int8.graph.node for out in node.output}
    ops = [n.op_type for n in int8.graph.node]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > ops.count("QuantizeLinear")
    weighted = [n for n in int8.graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(weighted) == sum(n.op_type in ("Conv", "Gemm") for n in f32.graph.node) > 5
    for node in weighted:
        dq = producer[node.input[1]]
        assert dq.op_type == "DequantizeLinear", node.name
        q, scale, zero = (inits[name] for name in dq.input)
        original = floats[dq.input[0].removesuffix("_quantized")]
        axis = 0 if node.op_type == "Conv" else 1  # Gemm's weight is (in, out): its channels are axis 1
        channels = original.shape[axis]
        assert q.dtype == np.int8 and scale.shape == (channels,) and not zero.any(), node.name
        shape = [1] * original.ndim
        shape[axis] = channels
        step = scale.reshape(shape)
        assert np.all(np.abs(q * step - original) <= step / 2 + 1e-7), node.name
    activations = [inits[n.input[2]] for n in int8.graph.node if n.op_type == "QuantizeLinear"]
    assert activations and all(z.dtype == np.uint8 for z in activations)


def test_int8_metadata_records_the_calibration(digits_files):
    """The int8 file keeps the float32 file's metadata and adds precision, method, count and set."""
    root, result, _, _ = digits_files
    f32 = load_onnx(root / "f32.onnx", runtime="onnxruntime").metadata
    int8 = load_onnx(root / "int8.onnx", runtime="onnxruntime").metadata
    assert {k: int8[k] for k in f32} == f32
    assert int8["precision"] == "int8" and int8["calibration_method"] == "minmax"
    assert int8["calibration_images"] == str(CALIBRATION_IMAGES) == str(result.images)
    assert int8["calibration"] == "the run's training split of the digits (80%, seed 0)"
    assert "uint8 activations" in int8["quantization"] and result.skipped == ()


def test_runtimes_agree_on_the_int8_file_and_with_float32(digits_files):
    """On a trained digits run's held-out split (359 images; :data:`TRAINED`): ONNX Runtime and OpenVINO on the
    int8 file agree with each other, and each with float32, within the issue's bounds: top-1 within 0.5 points
    of float32's (at most one image of 359 net) and top-1 agreement at least 99% (at most 3 images differ).

    Measured on this run: both runtimes' int8 top-1 equal to float32's, 100% agreement (docs/deploying.md).
    A broken quantizer (uncalibrated, mis-scaled) agrees with float32 on few images and fails at once."""
    root, _, x, labels = digits_files
    logits = {
        "f32": load_onnx(root / "f32.onnx", runtime="onnxruntime")(x),
        "ort": load_onnx(root / "int8.onnx", runtime="onnxruntime")(x),
        "ov": load_onnx(root / "int8.onnx", runtime="openvino")(x),
    }
    top1 = {k: v.argmax(1) for k, v in logits.items()}
    accuracy = {k: float((v == labels).mean()) for k, v in top1.items()}
    assert accuracy["f32"] >= 0.95, accuracy  # the trained model this test is about
    assert (top1["ort"] == top1["ov"]).mean() >= 0.99
    assert np.abs(_softmax(logits["ort"]) - _softmax(logits["ov"])).max() <= 0.1
    for runtime in ("ort", "ov"):
        assert (top1[runtime] == top1["f32"]).mean() >= 0.99, runtime
        assert abs(accuracy[runtime] - accuracy["f32"]) <= 0.005, (runtime, accuracy)


def test_openvino_f32_equals_onnxruntime_f32_and_bf16_is_asked_for(digits_files):
    """OpenVINO's default here is float32 (asked for explicitly; its own CPU default is bf16 where the CPU has
    it): within 1e-4 of ONNX Runtime's logits' scale. bf16 is used only when asked: further off, but close."""
    root, _, x, labels = digits_files
    ort = load_onnx(root / "f32.onnx", runtime="onnxruntime")(x)
    ov = load_onnx(root / "f32.onnx", runtime="openvino", threads=2)
    assert ov.precision == "f32" and ov.runtime == "openvino"
    scale = np.abs(ort).max()
    assert np.abs(ov(x) - ort).max() <= 1e-4 * scale
    flags = Path("/proc/cpuinfo").read_text().split()
    assert openvino_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)  # the CPU's own word, not OpenVINO's
    if not openvino_bf16():
        with pytest.raises(SettingError, match="precision: bf16 needs a CPU with bfloat16"):
            load_onnx(root / "f32.onnx", runtime="openvino", precision="bf16")
        return
    bf16 = load_onnx(root / "f32.onnx", runtime="openvino", precision="bf16")
    assert bf16.precision == "bf16"
    error = np.abs(bf16(x) - ort).max()
    assert 1e-4 * scale < error <= 5e-2 * scale  # bf16's 8-bit mantissa shows, and stays small
    top1 = bf16(x).argmax(1)
    assert (top1 == ort.argmax(1)).mean() >= 0.99  # the bounds for bf16 too: 99% agreement, 0.5 points
    assert abs((top1 == labels).mean() - (ort.argmax(1) == labels).mean()) <= 0.005


def test_default_runtime_is_openvino_for_int8_only(digits_files):
    root, _, _, _ = digits_files
    assert load_onnx(root / "int8.onnx").runtime == "openvino"
    assert load_onnx(root / "f32.onnx").runtime == "onnxruntime"
    with pytest.raises(SettingError, match="precision: bf16 is OpenVINO's"):
        load_onnx(root / "f32.onnx", runtime="onnxruntime", precision="bf16")
    with pytest.raises(SettingError, match="runtime: must be one of onnxruntime, openvino; got 'tvm'"):
        load_onnx(root / "f32.onnx", runtime="tvm")


def test_every_calibration_method_writes_a_file(digits_files, tmp_path):
    root, _, x, _ = digits_files
    f32 = load_onnx(root / "f32.onnx", runtime="onnxruntime")(x[:32]).argmax(1)
    for method in ("entropy", "percentile"):
        result = quantize_onnx(
            root / "f32.onnx", tmp_path / f"{method}.onnx", training_split(_meta(root))[0], images=32, method=method
        )
        quantized = load_onnx(result.path, runtime="onnxruntime")
        assert quantized.metadata["calibration_method"] == method and quantized.metadata["calibration_images"] == "32"
        assert (quantized(x[:32]).argmax(1) == f32).mean() >= 0.9


def _meta(root):
    return load_onnx(root / "f32.onnx", runtime="onnxruntime").metadata


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A random resnet_tiny (10 classes) at 32x32 and its headless twin, exported; a folder of 3 PNGs, one
    unreadable file among them; an empty folder."""
    from helpers import random_variables
    from PIL import Image

    root = tmp_path_factory.mktemp("small")
    model = create_model("resnet_tiny", num_classes=10)
    variables = random_variables(model, (1, 32, 32, 3))
    export_onnx(model, variables, root / "tiny.onnx", metadata={"image_size": 32})
    headless = {c: {k: v for k, v in tree.items() if k != "fc"} for c, tree in variables.items()}
    export_onnx(model.clone(num_classes=None), headless, root / "headless.onnx")
    images = root / "images" / "cats"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(images / f"{i}.png")
    (images / "broken.png").write_bytes(b"not an image")
    (root / "empty").mkdir()
    return root


def test_unreadable_images_are_skipped_and_fewer_than_asked_are_all_used(small, tmp_path):
    result = quantize_onnx(small / "tiny.onnx", tmp_path / "q.onnx", small / "images", images=10)
    assert result.images == 3 and result.requested == 10 and result.available == 4
    assert result.skipped == (str(small / "images" / "cats" / "broken.png"),)
    assert calibration_summary(result) == [
        f"skipped 1 unreadable calibration image(s): {small / 'images' / 'cats' / 'broken.png'}",
        f"calibrated on all 3 readable image(s) of {small / 'images'} (10 asked for)",
    ]
    assert load_onnx(result.path, runtime="onnxruntime").metadata["calibration_images"] == "3"
    two = quantize_onnx(small / "tiny.onnx", tmp_path / "two.onnx", small / "images", images=2)
    assert two.images == 2 and calibration_summary(two) in ([], [calibration_summary(result)[0]])


@pytest.mark.parametrize(
    "source, kwargs, error, match",
    [
        ("tiny.onnx", {"calibration": "empty"}, DataError, r"calibration: .*empty holds no images"),
        ("tiny.onnx", {"calibration": "missing"}, DataError, r"calibration: .*missing is not a directory"),
        ("headless.onnx", {"calibration": "images"}, InputError, "a headless model's feature map"),
        ("tiny.onnx", {"calibration": "images", "method": "kl"}, SettingError, "method: must be one of minmax"),
        ("tiny.onnx", {"calibration": "images", "images": 0}, ValueError, "images"),
    ],
)
def test_bad_input_is_refused(small, tmp_path, source, kwargs, error, match):
    kwargs = {**kwargs, "calibration": small / kwargs["calibration"]}
    with pytest.raises(error, match=match):
        quantize_onnx(small / source, tmp_path / "q.onnx", **kwargs)
    assert not (tmp_path / "q.onnx").exists()


def test_only_unreadable_images_is_an_error_naming_one(small, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.jpg").write_bytes(b"nope")
    with pytest.raises(DataError, match=r"none of the 1 images of .*bad can be read, e.g. .*x.jpg"):
        quantize_onnx(small / "tiny.onnx", tmp_path / "q.onnx", bad)


def test_a_fixed_batch_nhwc_export_stays_so_and_runs_on_both_runtimes(small, tmp_path):
    """The float file's layout and fixed batch are kept (calibration feeds whole batches of its size): 3 images
    in batches of 2 (the last one filled up); both runtimes run the int8 file on 3 images near each other."""
    from helpers import random_variables

    model = create_model("resnet_tiny", num_classes=10)
    variables = random_variables(model, (1, 32, 32, 3))
    export_onnx(model, variables, tmp_path / "f.onnx", layout="NHWC", batch=2, image_size=32)
    quantize_onnx(tmp_path / "f.onnx", tmp_path / "q.onnx", small / "images")
    proto = onnx.load(tmp_path / "q.onnx")
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [2, 32, 32, 3]
    x = normalize(np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8))
    ort, ov = (load_onnx(tmp_path / "q.onnx", runtime=r) for r in ("onnxruntime", "openvino"))
    assert ort.layout == ov.layout == "NHWC" and ort.batch == ov.batch == 2
    a, b = ort(x), ov(x)
    assert a.shape == b.shape == (3, 10) and np.abs(a - b).max() <= 0.1 * np.abs(a).max()


def test_an_int8_file_is_not_quantized_again(small, tmp_path):
    quantize_onnx(small / "tiny.onnx", tmp_path / "q.onnx", small / "images")
    with pytest.raises(InputError, match="is already int8"):
        quantize_onnx(tmp_path / "q.onnx", tmp_path / "qq.onnx", small / "images")


def test_openvino_is_imported_without_its_telemetry_fork():
    """``import openvino`` sends a usage event from a forked process unless blocked; in a process running
    JAX's threads that fork can deadlock. Our import forks nothing (a fresh interpreter, JAX started first)."""
    code = (
        "import os, time, jax.numpy as jnp\n"
        "jnp.ones(2).block_until_ready()\n"
        "forks = []\n"
        "real = os.fork\n"
        "os.fork = lambda: forks.append(1) or real()\n"
        "from resnet_bottleneck.io.onnx import _openvino\n"
        "ov = _openvino()\n"
        "ov.Core()\n"
        "time.sleep(1)\n"
        "import sys\n"
        "assert 'openvino_telemetry' not in sys.modules or sys.modules['openvino_telemetry'] is not None\n"
        "print(len(forks))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "0"
