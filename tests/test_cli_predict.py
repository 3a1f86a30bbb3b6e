"""convert and predict, as a user runs them: torchvision weights in, top-5 classes out."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision
from helpers import assert_trees_equal, one_line_error, random_torchvision

from resnet_bottleneck import create_model
from resnet_bottleneck.cli import main
from resnet_bottleneck.inference import preprocess
from resnet_bottleneck.io.safetensors import CHECKPOINT_FORMAT, load_variables, save_variables
from resnet_bottleneck.io.torchvision import from_torchvision

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def small_weights(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("weights")
    tv = random_torchvision("resnet18", seed=3, num_classes=10)
    torch.save(tv.state_dict(), root / "r18.pth")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (300, 260, 3), dtype=np.uint8)).save(root / "a.png")
    Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)).convert("L").save(root / "b.jpg")
    (root / "labels.txt").write_text("\n".join(f"class-{i}" for i in range(10)) + "\n")
    (root / "broken.png").write_bytes(b"\x89PNG not really")
    save_variables(
        root / "r18.safetensors",
        from_torchvision(tv.state_dict(), "resnet18")[1],
        {"model": "resnet18", "format": CHECKPOINT_FORMAT},
    )
    return root, tv


def test_preprocess_is_torchvisions(small_weights):
    from PIL import Image
    from torchvision import transforms

    root, _ = small_weights
    reference = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    for name in ("a.png", "b.jpg"):
        expected = reference(Image.open(root / name).convert("RGB")).numpy().transpose(1, 2, 0)
        np.testing.assert_allclose(preprocess(str(root / name)), expected, atol=1e-5)


def test_convert_then_predict(small_weights, tmp_path, capsys):
    root, tv = small_weights
    out = tmp_path / "r18.safetensors"
    assert main(["convert", str(root / "r18.pth"), str(out), "--model", "resnet18"]) == 0
    variables, meta = load_variables(out)
    assert meta["model"] == "resnet18" and meta["num_classes"] == "10"
    _, expected = from_torchvision(torch.load(root / "r18.pth", weights_only=True), "resnet18")
    assert_trees_equal(variables, expected)
    capsys.readouterr()

    images = [str(root / "a.png"), str(root / "b.jpg")]
    assert (
        main(
            [
                "predict",
                *images,
                "--weights",
                str(out),
                "--model",
                "resnet18",
                "--json",
                "--labels",
                str(root / "labels.txt"),
            ]
        )
        == 0
    )
    results = json.loads(capsys.readouterr().out)
    for result, path in zip(results, images):
        x = torch.from_numpy(preprocess(path).transpose(2, 0, 1)[None].copy())
        probs = torch.softmax(tv.eval()(x), dim=1)[0].detach().numpy()
        top = np.argsort(-probs)[:5]
        assert [r["class"] for r in result["top5"]] == top.tolist()
        np.testing.assert_allclose([r["probability"] for r in result["top5"]], probs[top], atol=1e-4)
        assert result["top5"][0]["label"] == f"class-{top[0]}"
    # torchvision weights straight from the .pth give the same answer
    assert main(["predict", images[0], "--weights", str(root / "r18.pth"), "--model", "resnet18"]) == 0
    assert capsys.readouterr().out.startswith(images[0] + ": " + str(results[0]["top5"][0]["class"]) + " (")


@pytest.mark.parametrize(
    "args,fragment",
    [
        (
            ["convert", "{root}/missing.pth", "{tmp}/o.safetensors", "--model", "resnet18"],
            "argument IN: no such weights file",
        ),
        (["convert", "{root}/r18.pth", "{tmp}/o.npz", "--model", "resnet18"], "argument OUT: must end in .safetensors"),
        (
            ["convert", "{root}/r18.pth", "{tmp}/o.safetensors", "--model", "resnet50"],
            "argument IN: {root}/r18.pth does not fit torchvision's resnet50; it fits resnet18 or resnetblur18 "
            "(the same tensors). ",
        ),
        (
            ["convert", "{root}/r18.pth", "{tmp}/o.safetensors", "--model", "resnet5"],
            "argument --model: must be one of",
        ),
        (
            ["predict", "{root}/a.png", "--weights", "{root}/r18.pth", "--model", "resnet34"],
            "argument --weights: {root}/r18.pth does not fit torchvision's resnet34; it fits resnet18",
        ),
        (
            ["predict", "{root}/a.png", "--weights", "{root}/r18.safetensors", "--model", "resnet34"],
            "argument --weights: {root}/r18.safetensors holds 'resnet18' variables, not 'resnet34'",
        ),
        (
            ["predict", "{root}/a.png", "--weights", "{root}/none.safetensors", "--model", "resnet18"],
            "argument --weights: no such weights file",
        ),
        (
            ["predict", "{root}/nope.png", "--weights", "{root}/r18.pth", "--model", "resnet18"],
            "argument IMAGE: no such file: {root}/nope.png",
        ),
        (
            ["predict", "{root}/broken.png", "--weights", "{root}/r18.pth", "--model", "resnet18"],
            "argument IMAGE: cannot read {root}/broken.png as an image",
        ),
        (
            [
                "predict",
                "{root}/a.png",
                "--weights",
                "{root}/r18.pth",
                "--model",
                "resnet18",
                "--labels",
                "{root}/a.png",
            ],
            "argument --labels: cannot read {root}/a.png as text",
        ),
    ],
)
def test_convert_and_predict_bad_input(args, fragment, small_weights, tmp_path, capsys):
    root, _ = small_weights
    args = [a.format(root=root, tmp=tmp_path) for a in args]
    assert main(args) == 2
    one_line_error(capsys.readouterr().err, fragment.format(root=root), prog=f"resnet-bottleneck {args[0]}")
    assert list(tmp_path.iterdir()) == []  # nothing half-written


@pytest.fixture(scope="module")
def bottleneck_files(tmp_path_factory):
    """Files with torchvision's keys and shapes (int8 zeros: only names and shapes are read on a mismatch)."""
    from safetensors.numpy import save_file

    root = tmp_path_factory.mktemp("family")
    for name in ("resnet50", "resnet101", "resnext50_32x4d"):
        with torch.device("meta"):
            sd = getattr(torchvision.models, name)(weights=None).state_dict()
        save_file({k: np.zeros(tuple(v.shape), np.int8) for k, v in sd.items()}, str(root / f"{name}.safetensors"))
    return root


@pytest.mark.parametrize(
    "weights,model",
    [
        (a, b)
        for a in ("resnet50", "resnet101", "resnext50_32x4d")
        for b in ("resnet50", "resnet101", "resnext50_32x4d")
        if a != b
    ],
)
def test_weights_of_another_model_are_named_in_one_short_line(bottleneck_files, weights, model, capsys, monkeypatch):
    monkeypatch.chdir(bottleneck_files)
    assert main(["convert", f"{weights}.safetensors", "out.safetensors", "--model", model]) == 2
    line = one_line_error(
        capsys.readouterr().err,
        f"argument IN: {weights}.safetensors does not fit torchvision's {model}; it fits {weights}",
        prog="resnet-bottleneck convert",
    )
    assert len(line) < 300, line
    assert not (bottleneck_files / "out.safetensors").exists()


def test_verbose_lists_every_difference(small_weights, tmp_path, capsys):
    root, _ = small_weights
    # resnet34 has 8 basic blocks more than resnet18, each 2 conv weights and 2 BNs of 4 tensors
    for argv in (
        ["convert", str(root / "r18.pth"), str(tmp_path / "o.safetensors")],
        ["predict", str(root / "a.png"), "--weights", str(root / "r18.pth")],
    ):
        assert main([*argv, "--model", "resnet34", "--verbose"]) == 2
        lines = capsys.readouterr().err.splitlines()
        assert lines[0].startswith(f"resnet-bottleneck {argv[0]}: error: argument ") and "it fits resnet18" in lines[0]
        assert lines[1] == "80 missing:" and len(lines) == 2 + 80, lines[:3]
        assert {"  layer1.2.conv1.weight", "  layer3.5.bn2.running_var", "  layer4.2.conv2.weight"} <= set(lines)
    assert list(tmp_path.iterdir()) == []


def test_predict_names_the_classes(small_weights, tmp_path, capsys):
    """ImageNet's names for 1,000 classes (torchvision's own list the oracle); a file's own names before them."""
    from torchvision.models import ResNet50_Weights

    root, _ = small_weights
    image = str(root / "a.png")
    rng = np.random.default_rng(0)
    for num_classes, metadata in ((1000, {}), (3, {"classes": json.dumps(["cat", "dog", "eel"])})):
        abstract = jax.eval_shape(
            create_model("resnet_tiny", num_classes=num_classes).init,
            jax.random.PRNGKey(0),
            jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32),
        )  # jit(init) is slow to compile
        variables = jax.tree_util.tree_map(lambda a: rng.uniform(0.5, 1.0, a.shape).astype(a.dtype), abstract)
        save_variables(
            tmp_path / f"tiny{num_classes}.safetensors",
            variables,
            {"model": "resnet_tiny", "format": CHECKPOINT_FORMAT, **metadata},
        )
    assert (
        main(
            ["predict", image, "--weights", str(tmp_path / "tiny1000.safetensors"), "--model", "resnet_tiny", "--json"]
        )
        == 0
    )
    top5 = json.loads(capsys.readouterr().out)[0]["top5"]
    categories = ResNet50_Weights.IMAGENET1K_V2.meta["categories"]
    assert [r["label"] for r in top5] == [categories[r["class"]] for r in top5]
    assert main(["predict", image, "--weights", str(tmp_path / "tiny3.safetensors"), "--model", "resnet_tiny"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(image + ": ") and all(
        f"{i} {name} (" in line for i, name in enumerate(["cat", "dog", "eel"])
    )


def test_predict_a_directory_classifies_every_image_under_it(small_weights, tmp_path, capsys):
    """``predict DIR``: every image under DIR, recursively, sorted; the same results as naming the files."""
    import shutil

    root, _ = small_weights
    (tmp_path / "x" / "y").mkdir(parents=True)
    shutil.copy(root / "a.png", tmp_path / "x" / "y" / "a.png")
    shutil.copy(root / "b.jpg", tmp_path / "x" / "b.jpg")
    (tmp_path / "x" / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()
    args = ["--weights", str(root / "r18.pth"), "--model", "resnet18", "--json"]
    assert main(["predict", str(tmp_path / "x"), *args]) == 0
    by_directory = json.loads(capsys.readouterr().out)
    files = [str(tmp_path / "x" / "b.jpg"), str(tmp_path / "x" / "y" / "a.png")]
    assert [r["image"] for r in by_directory] == files
    assert main(["predict", *files, *args]) == 0
    assert json.loads(capsys.readouterr().out) == by_directory
    assert main(["predict", str(tmp_path / "empty"), *args]) == 2
    one_line_error(
        capsys.readouterr().err,
        f"argument IMAGE: {tmp_path / 'empty'} is a directory without images",
        prog="resnet-bottleneck predict",
    )
