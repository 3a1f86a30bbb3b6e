"""A run as a usable model, as a user goes: train on digits (conftest's ``digits_run``), export, predict
(streaming, class names), evaluate (the run's own held-out accuracy, exactly; a folder against torchvision as
the oracle); and bad input to train --weights, export, predict and evaluate as one line."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import assert_trees_equal, compiles, one_line_error, random_torchvision

from resnet_bottleneck.cli import main
from resnet_bottleneck.io.safetensors import load_variables

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def digits_pngs(tmp_path_factory):
    """Three of the digits as 32x32 grey PNGs, named by their class."""
    from PIL import Image
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("pngs")
    digits = load_digits()
    paths = []
    for i in (0, 1, 2):  # 8x8, 0..16 -> 32x32, 0..255
        pixels = np.round(digits.images[i] * (255 / 16)).astype(np.uint8).repeat(4, 0).repeat(4, 1)
        paths.append(str(root / f"digit{digits.target[i]}.png"))
        Image.fromarray(pixels).save(paths[-1])
    return paths


def test_train_writes_a_model_that_export_writes_again(digits_run, tmp_path, capsys):
    run, summary = digits_run
    assert summary["model_file"] == str(run / "model.safetensors") and summary["initialised"] is None
    variables, metadata = load_variables(run / "model.safetensors")
    assert json.loads(metadata["classes"]) == [str(i) for i in range(10)]
    assert (metadata["model"], metadata["image_size"], metadata["num_classes"]) == ("resnet_tiny", "16", "10")
    assert json.loads(metadata["mean"]) == [0.485, 0.456, 0.406] and json.loads(metadata["std"]) == [
        0.229,
        0.224,
        0.225,
    ]
    assert json.loads(metadata["split"]) == {"data": None, "test_fraction": 0.2, "seed": 0}
    assert float(metadata["test_accuracy"]) == summary["test_accuracy"]

    assert main(["export", str(run), str(tmp_path / "m.safetensors")]) == 0  # from the last checkpoint
    assert capsys.readouterr().out.startswith(f"Exported {run} (resnet_tiny, 10 classes) to ")
    exported, exported_metadata = load_variables(tmp_path / "m.safetensors")
    assert_trees_equal(exported, variables)
    assert exported_metadata == metadata


def test_predict_prints_the_digits_names_and_streams(digits_run, digits_pngs, tmp_path, capsys, monkeypatch):
    """No --model: the file names it; the names are the run's ("0".."9"). Twenty images, a broken one
    among them, in batches of 2: the first results are out before the last images are decoded, the
    broken one is named on one line at the end, the others classified, exit status 2."""
    (run, _), pngs = digits_run, digits_pngs
    weights = str(run / "model.safetensors")
    assert main(["predict", pngs[0], "--weights", weights, "--json"]) == 0
    top5 = json.loads(capsys.readouterr().out)[0]["top5"]
    assert [r["label"] for r in top5] == [str(r["class"]) for r in top5] and len(top5) == 5
    assert main(["predict", *pngs, "--weights", weights]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(": ")[0] for line in lines] == pngs
    for line in lines:  # "digit0.png: 0 0 (0.912), 6 6 (0.031), ...": each class index and its name
        entries = [entry.split() for entry in line.split(": ")[1].split(", ")]
        assert len(entries) == 5 and all(index == name and name in "0123456789" for index, name, _ in entries)

    from resnet_bottleneck.cli import predict
    from resnet_bottleneck.data import pipeline

    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    images = [pngs[i % 3] for i in range(20)]
    images[7] = str(tmp_path / "broken.png")
    events = []
    decode = pipeline.eval_transform
    monkeypatch.setattr(pipeline, "eval_transform", lambda *args: events.append("decode") or decode(*args))
    line = predict._line
    monkeypatch.setattr(predict, "_line", lambda result: events.append("line") or line(result))
    assert main(["predict", *images, "--weights", weights, "--batch-size", "2"]) == 2
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 19 and str(tmp_path / "broken.png") not in captured.out
    one_line_error(
        captured.err,
        f"argument IMAGE: cannot read {tmp_path / 'broken.png'} as an image",
        "the other images were classified",
        prog="resnet-bottleneck predict",
    )
    first = events.index("line")
    assert events[:first].count("decode") < 12 <= events.count("decode"), events  # a few batches ahead, not all


def test_evaluate_equals_the_runs_test_accuracy(digits_run, capsys):
    """The run's model file on the run's held-out digits: the accuracy the run reported, exactly; a run
    directory (its last checkpoint) the same."""
    run, summary = digits_run
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    for weights in (run / "model.safetensors", run):
        assert main(["evaluate", "--weights", str(weights), "--json"]) == 0
        scores = json.loads(capsys.readouterr().out)
        assert scores["top1"] == summary["test_accuracy"] == last["test_accuracy"]
        assert (scores["top5"], scores["loss"]) == (last["test_top5"], last["test_loss"])
        assert scores["images"] == 359 and scores["top1"] <= scores["top5"] <= 1
        assert scores["data"] == "the run's held-out split of the digits (20%, seed 0)"


def test_a_runs_onnx_export_scores_as_the_run_with_no_jax_compile(digits_run, digits_pngs, tmp_path, capsys):
    """export RUN OUT.onnx carries the class names, normalisation and held-out split: evaluate --runtime
    onnxruntime scores the run's held-out digits as the run did (float32 in another runtime: the same
    predictions here, the loss within 1e-4), and predict names the same classes, JAX compiling nothing."""
    run, summary = digits_run
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert main(["export", str(run), str(tmp_path / "digits.onnx")]) == 0
    capsys.readouterr()
    assert main(["predict", *digits_pngs, "--weights", str(run), "--json"]) == 0
    expected = json.loads(capsys.readouterr().out)
    with compiles() as compiled:
        assert main(["evaluate", "--weights", str(tmp_path / "digits.onnx"), "--runtime", "onnxruntime", "--json"]) == 0
        scores = json.loads(capsys.readouterr().out)
        assert (
            main(
                [
                    "predict",
                    *digits_pngs,
                    "--weights",
                    str(tmp_path / "digits.onnx"),
                    "--runtime",
                    "onnxruntime",
                    "--json",
                ]
            )
            == 0
        )
        got = json.loads(capsys.readouterr().out)
    assert compiled == []
    # a graph of dynamic size takes another --image-size; one of fixed size refuses it, in one line
    assert (
        main(
            [
                "evaluate",
                "--weights",
                str(tmp_path / "digits.onnx"),
                "--runtime",
                "onnxruntime",
                "--image-size",
                "24",
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["images"] == 359
    assert main(["export", str(run), str(tmp_path / "fixed.onnx"), "--image-size", "16"]) == 0
    capsys.readouterr()
    assert (
        main(["evaluate", "--weights", str(tmp_path / "fixed.onnx"), "--runtime", "onnxruntime", "--image-size", "24"])
        == 2
    )
    one_line_error(
        capsys.readouterr().err,
        f"argument --image-size: {tmp_path / 'fixed.onnx'} takes 16x16 images; got 24",
        prog="resnet-bottleneck evaluate",
    )
    assert scores["images"] == 359 and scores["data"] == "the run's held-out split of the digits (20%, seed 0)"
    assert (scores["top1"], scores["top5"]) == (last["test_accuracy"], last["test_top5"])
    np.testing.assert_allclose(scores["loss"], last["test_loss"], rtol=1e-4)
    for mine, theirs in zip(got, expected):
        assert [(r["class"], r["label"]) for r in mine["top5"]] == [(r["class"], r["label"]) for r in theirs["top5"]]
        np.testing.assert_allclose(
            [r["probability"] for r in mine["top5"]], [r["probability"] for r in theirs["top5"]], atol=1e-5
        )


def test_evaluate_a_folder_as_torchvision_computes_it(tmp_path):
    """torchvision's weights (random, 10 classes) on an ImageNet-layout folder (val/ is evaluated):
    top-1, top-5 and the mean cross-entropy as torchvision's own model and transforms compute them."""
    from PIL import Image
    from torchvision import transforms

    tv = random_torchvision("resnet18", seed=4, num_classes=10)
    torch.save(tv.state_dict(), tmp_path / "r18.pth")
    rng = np.random.default_rng(0)
    files, labels = [], []
    for c in range(10):
        for split in ("train", "val"):
            (tmp_path / "data" / split / f"c{c}").mkdir(parents=True)
        for i in range(2):  # a tint and noise, of odd sizes
            path = tmp_path / "data" / "val" / f"c{c}" / f"{i}.png"
            tint = rng.integers(0, 256, 3)
            pixels = rng.integers(0, 256, (30 + 7 * i + c, 41, 3)) * 0.3 + tint * 0.7
            Image.fromarray(pixels.astype(np.uint8)).save(path)
            files.append(path)
            labels.append(c)
    # as a user runs it, with 2 worker processes: nothing on stderr (no shared memory left to the resource tracker)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "resnet_bottleneck",
            "evaluate",
            "--weights",
            str(tmp_path / "r18.pth"),
            "--model",
            "resnet18",
            "--data",
            str(tmp_path / "data"),
            "--image-size",
            "32",
            "--batch-size",
            "8",
            "--workers",
            "2",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    scores = json.loads(done.stdout)

    transform = transforms.Compose(
        [
            transforms.Resize(36),
            transforms.CenterCrop(32),
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    x = torch.stack([transform(Image.open(f).convert("RGB")) for f in files])
    with torch.no_grad():
        logits = tv.eval()(x)
    target = torch.tensor(labels)
    assert scores["images"] == 20
    assert round(scores["top1"] * 20) == int((logits.argmax(1) == target).sum())
    assert round(scores["top5"] * 20) == int((logits.topk(5).indices == target[:, None]).any(1).sum())
    np.testing.assert_allclose(scores["loss"], float(torch.nn.functional.cross_entropy(logits, target)), rtol=1e-4)


@pytest.mark.parametrize(
    "args,fragment",
    [
        (
            ["train", "--model", "resnet34", "--weights", "{tmp}/r18.pth", "--out", "{tmp}/run"],
            "argument --weights: {tmp}/r18.pth does not fit torchvision's resnet34; it fits resnet18",
        ),
        (["train", "--weights", "{tmp}/missing.pth", "--out", "{tmp}/run"], "argument --weights: no such weights file"),
        (
            ["export", "{tmp}", "{tmp}/m.safetensors"],
            "argument IN: {tmp} has no checkpoint (expected {tmp}/checkpoints/",
        ),
        (
            ["export", "{tmp}/r18.pth", "{tmp}/m.safetensors"],
            "argument IN: {tmp}/r18.pth does not name its model, as torchvision's and timm's weights do not "
            "(its tensors fit resnet18 or resnetblur18 (the same tensors))",
        ),
        (
            ["export", "{tmp}/r18.pth", "{tmp}/m.pb", "--model", "resnet18"],
            "argument OUT: must end in .safetensors, .onnx",
        ),
        (
            ["evaluate", "--weights", "{tmp}/m.onnx", "--runtime", "jax"],
            "argument --runtime: jax runs our model files; {tmp}/m.onnx is an ONNX file: evaluate it with "
            "--runtime auto (the default), onnxruntime or openvino",
        ),
        (
            ["evaluate", "--weights", "{tmp}/m.onnx"],  # --runtime auto: an .onnx file goes to an ONNX runtime
            "argument --weights: no such ONNX file: {tmp}/m.onnx",
        ),
        (
            ["evaluate", "--weights", "{tmp}/r18.pth", "--runtime", "onnxruntime"],
            "argument --weights: {tmp}/r18.pth is not an ONNX model ONNX Runtime can run",
        ),
        (
            ["predict", "{png}", "--weights", "{run}/model.safetensors", "--model", "resnet50"],
            "argument --weights: {run}/model.safetensors holds 'resnet_tiny' variables, not 'resnet50'",
        ),
        (
            ["evaluate", "--weights", "{run}", "--model", "resnet18"],
            "argument --weights: {run} holds a run of 'resnet_tiny'",
        ),
        (
            ["evaluate", "--weights", "{tmp}/r18.pth", "--model", "resnet18"],
            "argument --data: required: {tmp}/r18.pth records no held-out split",
        ),
        (
            ["evaluate", "--weights", "{run}/model.safetensors", "--data", "{tmp}"],
            "argument --data: {tmp} has no class folders",
        ),
        (
            ["evaluate", "--weights", "{run}/model.safetensors", "--batch-size", "0"],
            "argument --batch-size: must be a positive integer; got 0",
        ),
    ],
)
def test_bad_input_is_one_line_naming_the_file(args, fragment, digits_run, digits_pngs, tmp_path, capsys):
    (run, _), pngs = digits_run, digits_pngs
    torch.save(random_torchvision("resnet18", seed=1).state_dict(), tmp_path / "r18.pth")
    names = dict(tmp=tmp_path, run=run, png=pngs[0])
    args = [a.format(**names) for a in args]
    before = sorted(tmp_path.iterdir())
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    one_line_error(captured.err, fragment.format(**names), prog=f"resnet-bottleneck {args[0]}")
    assert sorted(tmp_path.iterdir()) == before  # nothing written, no run directory left


def test_a_run_directory_without_a_checkpoint_is_named(tmp_path, capsys):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "metrics.jsonl").write_text("")
    assert main(["evaluate", "--weights", str(tmp_path / "run")]) == 2
    one_line_error(
        capsys.readouterr().err,
        f"argument --weights: {tmp_path / 'run'} has no checkpoint",
        prog="resnet-bottleneck evaluate",
    )
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoints", "metrics.jsonl"]
