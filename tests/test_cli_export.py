"""export and predict --runtime onnxruntime, as a user runs them: weights in, .onnx out, classes out."""

import json

import numpy as np
import onnx
import pytest
import torch
from helpers import compiles, one_line_error, random_torchvision, random_variables
from onnx import TensorProto, helper

from resnet_bottleneck.cli import main
from resnet_bottleneck.inference import preprocess
from resnet_bottleneck.io.safetensors import CHECKPOINT_FORMAT, save_variables
from resnet_bottleneck.io.torchvision import from_torchvision

torch.set_num_threads(2)


def _save(proto, path):
    path.write_bytes(proto.SerializeToString())
    return path


def _classifier_graph(input_shape, output_shape, ops):
    """A small foreign graph: ``ops`` is a list of (op, attrs) applied in a chain from ``x`` to ``y``."""
    nodes, x = [], "x"
    for i, (op, attrs) in enumerate(ops):
        out = "y" if i == len(ops) - 1 else f"t{i}"
        nodes.append(helper.make_node(op, [x], [out], **attrs))
        x = out
    graph = helper.make_graph(
        nodes,
        "foreign",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, output_shape)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("export")
    tv = random_torchvision("resnet18", seed=4, num_classes=10)
    torch.save(tv.state_dict(), root / "r18.pth")
    save_variables(
        root / "r18.safetensors",
        from_torchvision(tv.state_dict(), "resnet18")[1],
        {"model": "resnet18", "num_classes": "10", "format": CHECKPOINT_FORMAT},
    )
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (300, 260, 3), dtype=np.uint8)).save(root / "a.png")
    Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(root / "b.png")
    (root / "labels.txt").write_text("\n".join(f"class-{i}" for i in range(10)) + "\n")
    (root / "three.txt").write_text("a\nb\nc\n")
    (root / "garbage.onnx").write_bytes(b"\x08\x07not a protobuf at all" * 10)
    _save(
        _classifier_graph([None, 1, 28, 28], [None, 1], [("GlobalAveragePool", {}), ("Flatten", {})]),
        root / "gray.onnx",
    )
    _save(_classifier_graph([None, 3], [None, 3], [("Relu", {})]), root / "flat.onnx")
    # a foreign NHWC classifier without metadata: its layout is read off its input shape
    _save(
        _classifier_graph(
            [None, 224, 224, 3],
            [None, 3],
            [("Transpose", {"perm": [0, 3, 1, 2]}), ("GlobalAveragePool", {}), ("Flatten", {})],
        ),
        root / "foreign_nhwc.onnx",
    )
    return root, tv


def torch_top5(tv, path):
    x = torch.from_numpy(preprocess(path).transpose(2, 0, 1)[None].copy())
    probs = torch.softmax(tv(x), dim=1)[0].detach().numpy()
    top = np.argsort(-probs)[:5]
    return top.tolist(), probs[top]


def test_export_then_predict_with_onnxruntime(files, tmp_path, capsys):
    root, tv = files
    images = [str(root / "a.png"), str(root / "b.png")]
    nhwc = tmp_path / "r18_nhwc.onnx"
    # our .safetensors names its model; torchvision's .pth needs --model
    assert (
        main(
            [
                "export",
                str(root / "r18.safetensors"),
                str(nhwc),
                "--layout",
                "NHWC",
                "--labels",
                str(root / "labels.txt"),
            ]
        )
        == 0
    )
    nchw = tmp_path / "r18.onnx"
    assert (
        main(["export", str(root / "r18.pth"), str(nchw), "--model", "resnet18", "--batch", "1", "--image-size", "224"])
        == 0
    )
    assert "Exported" in capsys.readouterr().out
    props = {p.key: p.value for p in onnx.load(str(nhwc)).metadata_props}
    assert props["layout"] == "NHWC" and props["model"] == "resnet18"
    assert json.loads(props["classes"]) == [f"class-{i}" for i in range(10)]
    assert [d.dim_value for d in onnx.load(str(nchw)).graph.input[0].type.tensor_type.shape.dim] == [1, 3, 224, 224]

    with compiles() as seen:
        for path, labelled in ((nhwc, True), (nchw, False)):
            assert main(["predict", *images, "--weights", str(path), "--runtime", "onnxruntime", "--json"]) == 0
            results = json.loads(capsys.readouterr().out)
            for result, image in zip(results, images):
                top, probs = torch_top5(tv, image)
                assert [r["class"] for r in result["top5"]] == top
                np.testing.assert_allclose([r["probability"] for r in result["top5"]], probs, atol=1e-4)
                assert ("label" in result["top5"][0]) == labelled  # class names from the file's metadata
                if labelled:
                    assert result["top5"][0]["label"] == f"class-{top[0]}"
    assert seen == []  # ONNX Runtime ran it: nothing compiled by JAX

    # a foreign classifier without our metadata: the layout comes from its input shape
    assert main(["predict", images[0], "--weights", str(root / "foreign_nhwc.onnx"), "--runtime", "onnxruntime"]) == 0
    assert capsys.readouterr().out.startswith(images[0] + ": ")


@pytest.mark.parametrize(
    "args,fragment",
    [
        (
            ["export", "{root}/r18.pth", "{tmp}/o.onnx"],
            "argument IN: {root}/r18.pth does not name its model, as torchvision's and timm's weights do not "
            "(its tensors fit resnet18 or resnetblur18 (the same tensors))",
        ),
        (
            ["export", "{root}/r18.pth", "{tmp}/o.pb", "--model", "resnet18"],
            "argument OUT: must end in .safetensors, .onnx; got",
        ),
        (
            ["export", "{root}/r18.pth", "{tmp}/o.safetensors", "--model", "resnet18", "--image-size", "224"],
            "argument --image-size: only for an .onnx OUT; got 224 for",
        ),
        (
            ["export", "{root}/r18.pth", "{tmp}/o.onnx", "--model", "resnet50"],
            "argument IN: {root}/r18.pth does not fit torchvision's resnet50; it fits resnet18",
        ),
        (
            ["export", "{root}/r18.pth", "{tmp}/o.onnx", "--model", "resnet18", "--layout", "NWHC"],
            "argument --layout: invalid choice",
        ),
        (
            ["export", "{root}/r18.pth", "{tmp}/o.onnx", "--model", "resnet18", "--batch", "0"],
            "argument --batch: must be a positive integer; got 0",
        ),
        (["export", "{root}/r18.pth", "{tmp}/no/o.onnx", "--model", "resnet18"], "argument OUT: cannot write"),
        (
            ["export", "{root}/r18.pth", "{tmp}/o.onnx", "--model", "resnet18", "--labels", "{root}/three.txt"],
            "argument --labels: {root}/three.txt has 3 names for 10 classes",
        ),
        (["export", "{root}/missing.pth", "{tmp}/o.onnx", "--model", "resnet18"], "argument IN: no such weights file"),
        (
            ["predict", "{root}/a.png", "--weights", "{root}/garbage.onnx", "--runtime", "onnxruntime"],
            "argument --weights: {root}/garbage.onnx is not an ONNX model ONNX Runtime can run",
        ),
        (
            ["predict", "{root}/a.png", "--weights", "{root}/gray.onnx", "--runtime", "onnxruntime"],
            "has shape [None, 1, 28, 28] and type tensor(float); expected 3 channels",
        ),
        (
            ["predict", "{root}/a.png", "--weights", "{root}/flat.onnx", "--runtime", "onnxruntime"],
            "expected a float [N, 3, H, W] or [N, H, W, 3] batch of images",
        ),
        (
            ["predict", "{root}/a.png", "--weights", "{root}/missing.onnx", "--runtime", "onnxruntime"],
            "argument --weights: no such ONNX file",
        ),
        (
            ["predict", "{root}/a.png", "--weights", "{root}/r18.safetensors", "--runtime", "onnxruntime"],
            "is not an ONNX model ONNX Runtime can run",
        ),
        (
            ["predict", "{root}/a.png", "--weights", "{root}/garbage.onnx", "--model", "resnet18", "--runtime", "jax"],
            "argument --runtime: jax runs our model files; {root}/garbage.onnx is an ONNX file: run it with "
            "--runtime auto (the default), onnxruntime or openvino",
        ),
        (
            ["predict", "{root}/a.png", "--weights", "{root}/garbage.onnx"],  # --runtime auto: ONNX Runtime's verdict
            "argument --weights: {root}/garbage.onnx is not an ONNX model ONNX Runtime can run",
        ),
        (
            ["predict", "{root}/a.png", "--weights", "{root}/r18.pth"],
            "argument --weights: {root}/r18.pth does not name its model",
        ),
        (
            ["predict", "{root}/a.png", "--weights", "{root}/r18.pth", "--runtime", "tf"],
            "argument --runtime: invalid choice",
        ),
    ],
)
def test_bad_input_is_one_line(args, fragment, files, tmp_path, capsys):
    root, _ = files
    args = [a.format(root=root, tmp=tmp_path) for a in args]
    assert main(args) == 2
    one_line_error(capsys.readouterr().err, fragment.format(root=root), prog=f"resnet-bottleneck {args[0]}")
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_predict_refuses_a_headless_or_another_models_export(files, tmp_path, capsys):
    from resnet_bottleneck import create_model
    from resnet_bottleneck.io.onnx import export_onnx

    root, _ = files
    model = create_model("resnet_tiny", num_classes=3)
    variables = random_variables(model, (1, 32, 32, 3))
    export_onnx(model, variables, tmp_path / "tiny.onnx", metadata={"model": "resnet_tiny"})
    headless = {c: {k: v for k, v in tree.items() if k != "fc"} for c, tree in variables.items()}
    export_onnx(model.clone(num_classes=None), headless, tmp_path / "headless.onnx")
    assert (
        main(["predict", str(root / "a.png"), "--weights", str(tmp_path / "headless.onnx"), "--runtime", "onnxruntime"])
        == 2
    )
    one_line_error(capsys.readouterr().err, "expected class scores [N, classes] (a headless model's feature map")
    assert (
        main(
            [
                "predict",
                str(root / "a.png"),
                "--weights",
                str(tmp_path / "tiny.onnx"),
                "--runtime",
                "onnxruntime",
                "--model",
                "resnet50",
            ]
        )
        == 2
    )
    one_line_error(capsys.readouterr().err, "argument --model: ", "holds 'resnet_tiny', not 'resnet50'")


def test_the_files_transform_and_names_carry_through(files, tmp_path, capsys):
    """Our .safetensors' metadata (names, image size, normalisation) goes into the .onnx file, and predict uses it."""
    from resnet_bottleneck.data.transforms import eval_transform

    root, tv = files
    meta = {
        "model": "resnet18",
        "num_classes": "10",
        "format": CHECKPOINT_FORMAT,
        "image_size": "160",
        "mean": "[0.5, 0.4, 0.3]",
        "std": "[0.2, 0.25, 0.3]",
        "classes": json.dumps([f"n{i}" for i in range(10)]),
    }
    save_variables(tmp_path / "r18.safetensors", from_torchvision(tv.state_dict(), "resnet18")[1], meta)
    assert main(["export", str(tmp_path / "r18.safetensors"), str(tmp_path / "r18.onnx")]) == 0
    capsys.readouterr()
    image = str(root / "a.png")
    assert main(["predict", image, "--weights", str(tmp_path / "r18.onnx"), "--runtime", "onnxruntime", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)[0]
    pixels = eval_transform(image, 160).astype(np.float64) / 255
    x = (pixels - np.array([0.5, 0.4, 0.3])) / np.array([0.2, 0.25, 0.3])
    probs = (
        torch.softmax(tv(torch.from_numpy(x.transpose(2, 0, 1)[None].astype(np.float32))), dim=1)[0].detach().numpy()
    )
    top = np.argsort(-probs)[:5]
    assert [r["class"] for r in result["top5"]] == top.tolist()
    np.testing.assert_allclose([r["probability"] for r in result["top5"]], probs[top], atol=1e-4)
    assert [r["label"] for r in result["top5"]] == [f"n{i}" for i in top]


def test_a_graph_fixed_at_another_size_than_the_trained_one_is_said_and_recorded(tmp_path, capsys):
    """A model trained at 64 exported with --image-size 32: one line says so, and the metadata records the
    size the graph takes (what predict prepares images at) and the size the model was trained at."""
    from resnet_bottleneck.models import create_model

    model = create_model("resnet_tiny", num_classes=3)
    variables = random_variables(model, (1, 64, 64, 3))
    meta = {"model": "resnet_tiny", "num_classes": "3", "format": CHECKPOINT_FORMAT, "image_size": "64"}
    save_variables(tmp_path / "m.safetensors", variables, meta)
    assert main(["export", str(tmp_path / "m.safetensors"), str(tmp_path / "m32.onnx"), "--image-size", "32"]) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        f"note: the model was trained at image size 64; the graph takes 32 (--image-size), which {tmp_path}/m32.onnx's "
        "metadata records: predict prepares images at 32"
    ]
    proto = onnx.load(str(tmp_path / "m32.onnx"))
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["image_size"] == "32" and props["trained_image_size"] == "64"
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim][2:] == [32, 32]

    assert main(["export", str(tmp_path / "m.safetensors"), str(tmp_path / "m64.onnx"), "--image-size", "64"]) == 0
    assert capsys.readouterr().err == ""  # the trained size: nothing to say
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m64.onnx")).metadata_props}
    assert props["image_size"] == "64" and "trained_image_size" not in props
