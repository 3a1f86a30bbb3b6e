"""convert and predict, as a user runs them: torchvision weights in, top-5 classes out."""

import json

import jax
import numpy as np
import pytest
import torch

from resnet_bottleneck.cli import main
from resnet_bottleneck.cli.predict import preprocess
from resnet_bottleneck.io.safetensors import CHECKPOINT_FORMAT, load_variables, save_variables
from resnet_bottleneck.io.torchvision import from_torchvision

from helpers import one_line_error, random_torchvision

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
    save_variables(root / "r18.safetensors", from_torchvision(tv.state_dict(), "resnet18")[1],
                   {"model": "resnet18", "format": CHECKPOINT_FORMAT})
    return root, tv


def test_preprocess_is_torchvisions(small_weights):
    from PIL import Image
    from torchvision import transforms

    root, _ = small_weights
    reference = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                                    transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
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
    for a, b in zip(jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(expected)):
        np.testing.assert_array_equal(a, b)
    capsys.readouterr()

    images = [str(root / "a.png"), str(root / "b.jpg")]
    assert main(["predict", *images, "--weights", str(out), "--model", "resnet18", "--json",
                 "--labels", str(root / "labels.txt")]) == 0
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


@pytest.mark.parametrize("args,fragment", [
    (["convert", "{root}/missing.pth", "{tmp}/o.safetensors", "--model", "resnet18"], "no such weights file"),
    (["convert", "{root}/r18.pth", "{tmp}/o.npz", "--model", "resnet18"], "OUT must end in .safetensors"),
    (["convert", "{root}/r18.pth", "{tmp}/o.safetensors", "--model", "resnet50"], "state_dict does not fit torchvision's resnet50"),
    (["convert", "{root}/r18.pth", "{tmp}/o.safetensors", "--model", "resnet5"], "name must be one of"),
    (["predict", "{root}/a.png", "--weights", "{root}/r18.pth", "--model", "resnet34"], "state_dict does not fit torchvision's resnet34"),
    (["predict", "{root}/a.png", "--weights", "{root}/r18.safetensors", "--model", "resnet34"], "holds 'resnet18' variables, not 'resnet34'"),
    (["predict", "{root}/a.png", "--weights", "{root}/none.safetensors", "--model", "resnet18"], "no such weights file"),
    (["predict", "{root}/nope.png", "--weights", "{root}/r18.pth", "--model", "resnet18"], "no such image: "),
    (["predict", "{root}/broken.png", "--weights", "{root}/r18.pth", "--model", "resnet18"], "cannot read image"),
    (["predict", "{root}/a.png", "--weights", "{root}/r18.pth", "--model", "resnet18", "--labels", "{root}/a.png"], "--labels"),
])
def test_convert_and_predict_bad_input(args, fragment, small_weights, tmp_path, capsys):
    root, _ = small_weights
    args = [a.format(root=root, tmp=tmp_path) for a in args]
    assert main(args) == 2
    one_line_error(capsys.readouterr().err, fragment, prog=f"resnet-bottleneck {args[0]}")
    assert list(tmp_path.iterdir()) == []  # nothing half-written
