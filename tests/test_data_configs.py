"""The preprocessing that travels with the weights: the shipped table against timm's own resolution, the
evaluation transform against timm's own transform, and evaluate/predict/convert using what a file records."""

from __future__ import annotations

import ast
import json
import math
import subprocess
import sys
from pathlib import Path

import grain
import numpy as np
import pytest
import timm
import torch
from helpers import random_torchvision
from PIL import Image
from timm.data import create_transform, resolve_data_config

from resnet_bottleneck.arch import data_configs
from resnet_bottleneck.arch.data_configs import DATA_CONFIGS, TORCHVISION_DATA_CONFIG, data_config
from resnet_bottleneck.data import eval_transform, evaluation_batches, normalize
from resnet_bottleneck.data.transforms import eval_box
from resnet_bottleneck.inference import predict_files, preprocess

ROOT = Path(__file__).resolve().parent.parent
EXCLUDED = {"ecaresnet50d_pruned", "ecaresnet101d_pruned", "test_resnet"}
TIMM_NAMES = sorted(set(timm.list_models(module="resnet")) - EXCLUDED)
KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")

torch.set_num_threads(2)


def timm_resolved(name: str) -> dict:
    """timm's data config of ``name``'s default pretrained tag, as ``timm.create_model(name)`` would carry it."""
    return resolve_data_config({}, pretrained_cfg=timm.models.get_pretrained_cfg(name).to_dict())


def test_the_table_was_made_by_the_timm_release_installed_here():
    assert data_configs.TIMM_VERSION == timm.__version__ == "1.0.31"


def test_every_timm_resnet_name_has_a_row_and_only_the_familys_others_beside():
    registered = set(timm.list_models(module="resnet"))
    assert EXCLUDED <= registered and len(TIMM_NAMES) == 78
    assert set(TIMM_NAMES) <= set(DATA_CONFIGS) and not EXCLUDED & set(DATA_CONFIGS)
    assert set(DATA_CONFIGS) - set(TIMM_NAMES) == {"resnet_tiny"}


@pytest.mark.parametrize("name", TIMM_NAMES)
def test_a_row_is_timms_resolved_data_config_of_the_default_tag(name):
    row = data_config(name)
    resolved = timm_resolved(name)
    assert {k: row[k] for k in KEYS} == {k: resolved[k] for k in KEYS}
    assert set(row) == {"tag", *KEYS}
    assert row["tag"] == f"{name}.{timm.models.get_pretrained_cfg(name).tag}"
    assert timm.models.get_pretrained_cfg(row["tag"]).to_dict() == timm.models.get_pretrained_cfg(name).to_dict()


@pytest.mark.parametrize("name", ["resnet10t", "resnet18", "resnetrs50", "resnext101_32x8d", "seresnextaa101d_32x8d"])
def test_the_cheap_resolution_is_what_a_built_timm_model_carries(name):
    """The table resolves from the registry's pretrained cfg; a built model's own (on the meta device) agrees."""
    with torch.device("meta"):
        model = timm.create_model(name)
    resolved = resolve_data_config(model=model)
    assert {k: resolved[k] for k in KEYS} == {k: data_config(name)[k] for k in KEYS}
    assert f"{name}.{model.pretrained_cfg['tag']}" == data_config(name)["tag"]


def test_known_rows():
    assert data_config("resnet50") == {
        "tag": "resnet50.a1_in1k",
        "input_size": (3, 224, 224),
        "interpolation": "bicubic",
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "crop_pct": 0.95,
        "crop_mode": "center",
    }
    assert data_config("resnetrs50")["input_size"] == (3, 160, 160) and data_config("resnetrs50")["crop_pct"] == 0.91
    assert data_config("wide_resnet101_2")["tag"] == "wide_resnet101_2.tv_in1k"
    assert data_config("resnet_tiny") == TORCHVISION_DATA_CONFIG
    assert TORCHVISION_DATA_CONFIG["interpolation"] == "bilinear" and TORCHVISION_DATA_CONFIG["crop_pct"] == 0.875


def test_data_config_returns_a_fresh_copy():
    first = data_config("resnet50")
    first["crop_pct"] = 0.5
    first["input_size"] = None
    assert data_config("resnet50")["crop_pct"] == 0.95 and DATA_CONFIGS["resnet50"]["input_size"] == (3, 224, 224)
    assert data_config("resnet50") is not data_config("resnet50")


def test_a_bad_name_is_refused_as_every_model_name_is():
    with pytest.raises(ValueError, match=r"^name must be one of .*; got 'resnet5O' \(did you mean resnet50\?\)$"):
        data_config("resnet5O")
    with pytest.raises(ValueError, match="did you mean seresnext50_32x4d"):
        data_config("seresnext50_32x4")
    with pytest.raises(TypeError, match=r"^name must be one of .*; got 50 \(int\)$"):
        data_config(50)


def test_the_table_module_imports_neither_jax_nor_timm():
    tree = ast.parse(Path(data_configs.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(("." * node.level) + (node.module or ""))
    assert imported == {"__future__", "copy", ".._checks"}


def test_the_generator_writes_the_module_as_it_is_committed():
    done = subprocess.run(
        [sys.executable, "tools/gen_data_configs.py", "--check"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr


# The evaluation transform against timm's own.


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory):
    """333x517 and 517x333 images: smooth gradients under noise (an edge every resampling filter sees), PNG and JPEG."""
    root = tmp_path_factory.mktemp("odd")
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate(((333, 517), (517, 333))):
        y, x = np.mgrid[0:h, 0:w]
        smooth = np.stack([x * 255 / w, y * 255 / h, (x + y) % 64 * 4], axis=-1)
        pixels = np.clip(smooth * 0.6 + rng.integers(0, 256, (h, w, 3)) * 0.4, 0, 255).astype(np.uint8)
        pixels[h // 3 : h // 2, w // 4 : w // 3] = 255  # a hard edge
        for suffix in ("png", "jpg"):
            path = root / f"{i}.{suffix}"
            Image.fromarray(pixels).save(path)
            paths.append(path)
    return paths


def rgb(path) -> Image.Image:
    """The image at ``path`` as RGB, its file closed."""
    with Image.open(path) as image:
        return image.convert("RGB")


def timm_pixels(path, image_size, crop_pct, interpolation):
    """timm's eval transform without its ToTensor and Normalize: uint8 HWC."""
    full = create_transform(
        input_size=(3, image_size, image_size),
        interpolation=interpolation,
        crop_pct=crop_pct,
        is_training=False,
    )
    kept = [t for t in full.transforms if type(t).__name__ not in ("MaybeToTensor", "ToTensor", "Normalize")]
    assert [type(t).__name__ for t in kept] == ["Resize", "CenterCrop"]
    image = rgb(path)
    for t in kept:
        image = t(image)
    return np.asarray(image)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("crop_pct", [0.875, 0.95, 1.0, 0.9, 0.91, 0.94])
@pytest.mark.parametrize("image_size", [224, 97, 160])
def test_eval_transform_matches_timms_within_one_level(odd_images, image_size, crop_pct, interpolation):
    for path in odd_images:
        ours = eval_transform(path, image_size, crop_pct, interpolation)
        theirs = timm_pixels(path, image_size, crop_pct, interpolation)
        assert ours.shape == theirs.shape == (image_size, image_size, 3)
        assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1, path
        scale = math.floor(image_size / crop_pct)
        size, _ = eval_box(*rgb(path).size, image_size, crop_pct)
        assert min(size) == scale


def test_bicubic_and_the_crop_change_the_pixels(odd_images):
    """The cases above could not pass by ignoring the arguments: each changes the result."""
    path = odd_images[0]
    base = eval_transform(path, 97)
    assert not np.array_equal(base, eval_transform(path, 97, interpolation="bicubic"))
    assert not np.array_equal(base, eval_transform(path, 97, crop_pct=0.95))
    assert not np.array_equal(base, eval_transform(path, 97, crop_pct=1.0))


def test_every_rows_transform_is_timms_for_that_name(odd_images):
    """Each distinct (size, crop, interpolation) of the table: our transform and normalisation from
    ``data_config(name)`` against timm's full eval transform from timm's resolution of the name."""
    seen = {}
    for name in TIMM_NAMES:
        row = data_config(name)
        seen.setdefault((row["input_size"], row["crop_pct"], row["interpolation"]), name)
    assert len(seen) >= 10
    path = odd_images[1]
    for name in seen.values():
        row = data_config(name)
        theirs = create_transform(**timm_resolved(name), is_training=False)(rgb(path))
        ours = preprocess(path, row["input_size"][1], row["mean"], row["std"], row["crop_pct"], row["interpolation"])
        # one uint8 level is 1 / (255 std) after normalisation
        tolerance = 1 / (255 * min(row["std"])) + 1e-5
        np.testing.assert_allclose(ours, theirs.numpy().transpose(1, 2, 0), atol=tolerance, err_msg=name)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"crop_pct": 0}, ValueError, r"^crop_pct must be a number in \(0, 1\] .*; got 0$"),
        ({"crop_pct": 1.5}, ValueError, r"^crop_pct must be a number in \(0, 1\] .*; got 1.5$"),
        ({"crop_pct": -0.9}, ValueError, r"got -0.9$"),
        ({"crop_pct": float("nan")}, ValueError, r"got nan$"),
        ({"crop_pct": "0.9"}, TypeError, r"^crop_pct must be a number in \(0, 1\] .*; got '0.9' \(str\)$"),
        ({"crop_pct": True}, TypeError, r"got True \(bool\)$"),
        (
            {"interpolation": "nearest"},
            ValueError,
            r"^interpolation must be one of 'bilinear', 'bicubic'; got 'nearest'$",
        ),
        ({"interpolation": None}, ValueError, r"^interpolation must be one of .*; got None$"),
    ],
)
def test_a_bad_crop_or_interpolation_names_the_argument(odd_images, kwargs, error, message):
    path = odd_images[0]
    with pytest.raises(error, match=message):
        eval_transform(path, 32, **kwargs)
    with pytest.raises(error, match=message):
        preprocess(path, 32, **kwargs)
    with pytest.raises(error, match=message):  # eagerly, before any batch is asked for
        predict_files(lambda x: x, [str(path)], image_size=32, **kwargs)
    if "crop_pct" in kwargs:
        with pytest.raises(error, match=message):
            eval_box(517, 333, 32, kwargs["crop_pct"])


def test_the_pipeline_and_predict_files_use_the_crop(odd_images):
    from resnet_bottleneck.data import ImageFiles

    paths = [str(p) for p in odd_images]
    source = ImageFiles("", np.asarray([p.encode() for p in paths]), np.zeros(len(paths), np.int32), ("",))
    expected = np.stack([eval_transform(p, 64, 0.95, "bicubic") for p in paths])
    batch = next(
        iter(
            evaluation_batches(
                source,
                image_size=64,
                batch_size=len(paths),
                crop_pct=0.95,
                interpolation="bicubic",
                shard=grain.sharding.ShardOptions(0, 1),
            )
        )
    )
    np.testing.assert_array_equal(np.asarray(batch["image"]), expected)
    seen = []
    list(predict_files(lambda x: seen.append(np.array(x)) or np.ones((len(x), 2)), paths, image_size=64))
    np.testing.assert_array_equal(seen[0], np.stack([eval_transform(p, 64) for p in paths]))
    seen.clear()
    list(
        predict_files(
            lambda x: seen.append(np.array(x)) or np.ones((len(x), 2)),
            paths,
            image_size=64,
            crop_pct=0.95,
            interpolation="bicubic",
        )
    )
    np.testing.assert_array_equal(seen[0], expected)


# The model files: convert records the data config; evaluate and predict use what a file records.


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    """A random torchvision resnet18 (10 classes) as .pth, and an ImageNet-layout folder of odd-sized images."""
    root = tmp_path_factory.mktemp("files")
    tv = random_torchvision("resnet18", seed=5, num_classes=10)
    torch.save(tv.state_dict(), root / "r18.pth")
    rng = np.random.default_rng(1)
    images, labels = [], []
    for c in range(10):
        (root / "data" / "train" / f"c{c}").mkdir(parents=True)
        (root / "data" / "val" / f"c{c}").mkdir(parents=True)
        path = root / "data" / "val" / f"c{c}" / "0.png"
        pixels = rng.integers(0, 256, (37 + c, 53 - c, 3)) * 0.5 + rng.integers(0, 256, 3) * 0.5
        Image.fromarray(pixels.astype(np.uint8)).save(path)
        images.append(path)
        labels.append(c)
    return root, tv, images, labels


def test_convert_records_the_data_config(tiny_files, tmp_path):
    from resnet_bottleneck.cli import main
    from resnet_bottleneck.cli.convert import recorded_preprocessing
    from resnet_bottleneck.io.metadata import eval_crop, preprocessing
    from resnet_bottleneck.io.safetensors import load_variables

    root = tiny_files[0]
    # resnet18: torchvision's file, torchvision's preprocessing unless told otherwise
    assert main(["convert", str(root / "r18.pth"), str(tmp_path / "tv.safetensors"), "--model", "resnet18"]) == 0
    _, meta = load_variables(tmp_path / "tv.safetensors")
    assert preprocessing(meta) == (224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert (
        eval_crop(meta) == (0.875, "bilinear") and meta["crop_pct"] == "0.875" and meta["interpolation"] == "bilinear"
    )
    argv = ["convert", str(root / "r18.pth"), str(tmp_path / "timm.safetensors"), "--model", "resnet18"]
    assert main([*argv, "--preprocessing", "timm"]) == 0
    _, meta = load_variables(tmp_path / "timm.safetensors")
    assert eval_crop(meta) == (0.95, "bicubic") and preprocessing(meta)[0] == 224
    # timm's names are looked up in the table
    assert eval_crop(recorded_preprocessing("resnetrs50")) == (0.91, "bicubic")
    assert preprocessing(recorded_preprocessing("resnetrs50"))[0] == 160
    assert preprocessing(recorded_preprocessing("ecaresnet269d"))[0] == 320
    assert recorded_preprocessing("resnet50") == recorded_preprocessing("resnet_tiny", "torchvision")
    assert eval_crop(recorded_preprocessing("resnet50", "timm")) == (0.95, "bicubic")


def _timm_logits(tv, images, image_size, crop_pct, interpolation):
    transform = create_transform(
        input_size=(3, image_size, image_size), crop_pct=crop_pct, interpolation=interpolation, is_training=False
    )
    x = torch.stack([transform(rgb(p)) for p in images])
    with torch.no_grad():
        return tv.eval()(x).numpy().astype(np.float64)


def _file_with(tiny_files, tmp_path, crop: dict) -> Path:
    from resnet_bottleneck.io.safetensors import CHECKPOINT_FORMAT, save_variables
    from resnet_bottleneck.io.torchvision import from_torchvision

    tv = tiny_files[1]
    path = tmp_path / "model.safetensors"
    save_variables(
        path,
        from_torchvision(tv.state_dict(), "resnet18")[1],
        {"model": "resnet18", "format": CHECKPOINT_FORMAT, "image_size": "48", **crop},
    )
    return path


@pytest.mark.parametrize(
    ("crop", "expected"),
    [({"crop_pct": "0.95", "interpolation": "bicubic"}, (0.95, "bicubic")), ({}, (0.875, "bilinear"))],
)
def test_evaluate_and_predict_use_the_files_crop(tiny_files, tmp_path, capsys, crop, expected):
    """evaluate's loss and predict's probabilities are the torch model's on timm's transform with the
    recorded crop_pct/interpolation (a file without them: torchvision's), and not with the other one."""
    from resnet_bottleneck.cli import main

    root, tv, images, labels = tiny_files
    weights = _file_with(tiny_files, tmp_path, crop)
    logits = _timm_logits(tv, images, 48, *expected)
    other = _timm_logits(tv, images, 48, *((0.875, "bilinear") if crop else (0.95, "bicubic")))

    def loss(z):
        z = z - z.max(1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(z)), labels]))

    assert abs(loss(logits) - loss(other)) > 1e-3
    argv = ["evaluate", "--weights", str(weights), "--data", str(root / "data"), "--batch-size", "5", "--json"]
    assert main([*argv, "--workers", "0"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["images"] == 10
    assert scores["loss"] == pytest.approx(loss(logits), rel=1e-4, abs=1e-4)

    assert main(["predict", *map(str, images[:3]), "--weights", str(weights), "--json", "--workers", "0"]) == 0
    results = json.loads(capsys.readouterr().out)
    for result, z in zip(results, logits[:3]):
        probs = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        top = np.argsort(-probs)[:5]
        assert [r["class"] for r in result["top5"]] == top.tolist()
        np.testing.assert_allclose([r["probability"] for r in result["top5"]], probs[top], atol=1e-4)


def test_a_bad_recorded_crop_is_named_by_evaluate_and_predict(tiny_files, tmp_path, capsys):
    from resnet_bottleneck.cli import main

    root, _, images, _ = tiny_files
    weights = _file_with(tiny_files, tmp_path, {"crop_pct": "1.5"})
    for argv in (
        ["evaluate", "--weights", str(weights), "--data", str(root / "data")],
        ["predict", str(images[0]), "--weights", str(weights)],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "argument --weights:" in err and "metadata 'crop_pct' must be a JSON number in (0, 1]; got '1.5'" in err


def test_normalize_with_a_rows_mean_and_std_is_timms(odd_images):
    """``preprocess`` with a data config equals ``normalize`` of the eval transform (one path, two uses)."""
    row = data_config("resnet50")
    pixels = eval_transform(odd_images[0], 224, row["crop_pct"], row["interpolation"])
    np.testing.assert_array_equal(
        preprocess(odd_images[0], 224, row["mean"], row["std"], row["crop_pct"], row["interpolation"]),
        normalize(pixels, row["mean"], row["std"]),
    )


def test_training_holds_out_with_its_weights_crop_and_records_it(tmp_path, monkeypatch):
    """A run from weights whose file records crop_pct 0.95 and bicubic: its held-out pass transforms
    every image so (spied on the pipeline) and its model file records both; without them, torchvision's."""
    import jax

    from resnet_bottleneck import create_model
    from resnet_bottleneck.data import pipeline
    from resnet_bottleneck.data.synthetic import write_image_folder
    from resnet_bottleneck.io.metadata import eval_crop
    from resnet_bottleneck.io.safetensors import CHECKPOINT_FORMAT, load_variables, save_variables
    from resnet_bottleneck.training import Config, RunOptions, train

    folder = write_image_folder(tmp_path / "data", classes=2, per_class=20, size=(45, 37))
    variables = create_model("resnet_tiny").init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32))
    seen = []
    decode = pipeline.eval_transform
    monkeypatch.setattr(
        pipeline, "eval_transform", lambda path, size, *crop: seen.append(crop) or decode(path, size, *crop)
    )
    for recorded, expected in (
        ({"crop_pct": "0.95", "interpolation": "bicubic"}, (0.95, "bicubic")),
        ({}, (0.875, "bilinear")),
    ):
        weights = tmp_path / f"start{len(recorded)}.safetensors"
        save_variables(weights, variables, {"model": "resnet_tiny", "format": CHECKPOINT_FORMAT, **recorded})
        config = Config(
            model="resnet_tiny", weights=str(weights), data=str(folder), image_size=32, batch_size=16, epochs=1
        )
        seen.clear()
        result = train(config, out=tmp_path / f"run{len(recorded)}", options=RunOptions(workers=0), progress=False)
        assert seen and set(seen) == {expected}
        assert eval_crop(load_variables(result.model_file)[1]) == expected


def test_export_carries_the_crop_and_onnx_predict_uses_it(tiny_files, tmp_path, monkeypatch, capsys):
    """Our file's crop travels into the .onnx; load_onnx reads it; predict --runtime onnxruntime transforms
    with it. torchvision's weights exported get what convert records."""
    from resnet_bottleneck.cli import main
    from resnet_bottleneck.data import pipeline
    from resnet_bottleneck.io.metadata import eval_crop
    from resnet_bottleneck.io.onnx import load_onnx
    from resnet_bottleneck.io.safetensors import load_variables

    root, _, images, _ = tiny_files
    weights = _file_with(tiny_files, tmp_path, {"crop_pct": "0.9", "interpolation": "bicubic"})
    assert main(["export", str(weights), str(tmp_path / "m.onnx")]) == 0
    classifier = load_onnx(tmp_path / "m.onnx")
    assert (classifier.crop_pct, classifier.interpolation) == (0.9, "bicubic") and classifier.image_size == 48
    seen = []
    decode = pipeline.eval_transform
    monkeypatch.setattr(
        pipeline, "eval_transform", lambda path, size, *crop: seen.append(crop) or decode(path, size, *crop)
    )
    argv = ["predict", str(images[0]), "--weights", str(tmp_path / "m.onnx"), "--runtime", "onnxruntime"]
    assert main([*argv, "--workers", "0"]) == 0
    assert seen and set(seen) == {(0.9, "bicubic")}
    capsys.readouterr()
    assert main(["export", str(root / "r18.pth"), str(tmp_path / "tv.safetensors"), "--model", "resnet18"]) == 0
    assert eval_crop(load_variables(tmp_path / "tv.safetensors")[1]) == (0.875, "bilinear")
