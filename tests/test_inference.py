"""The library's inference functions: batched prediction over files, the files under directories,
class matching, a run's held-out split, and load_model's dispatch (file formats in io, runs in training)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from resnet_bottleneck import create_model, errors, inference, load_model
from resnet_bottleneck.data import ImageFiles, digits, eval_transform, normalize
from resnet_bottleneck.errors import DataError
from resnet_bottleneck.io import load_model_file
from resnet_bottleneck.io.safetensors import CHECKPOINT_FORMAT, save_variables


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """Five small images of different sizes and colours, and one broken file, in a folder tree."""
    root = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate([(40, 30), (20, 50), (33, 33), (64, 16), (25, 25)]):
        folder = root / ("b" if i % 2 else "a") / ("deep" if i == 4 else "")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"img{i}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    (root / "a" / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "a" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / ".hidden" / "skip.png")
    (root / "a" / ".skip.png").write_bytes(b"")
    (root / "empty").mkdir()
    return root, paths


def _mean_classifier(batches):
    """A stand-in model: class k's probability is proportional to 1 + (the image's mean of channel k)."""

    def classify(images):
        batches.append(images.shape)
        scores = 1.0 + images.astype(np.float64).mean(axis=(1, 2))  # [N, 3]
        return scores / scores.sum(axis=1, keepdims=True)

    return classify


def test_predict_files_streams_batches_in_order_with_errors_in_place(pictures):
    root, paths = pictures
    broken = str(root / "a" / "broken.png")
    files = [paths[0], paths[1], broken, paths[2], paths[3]]
    shapes = []
    batches = list(inference.predict_files(_mean_classifier(shapes), files, image_size=12, batch_size=2, top=2))
    assert [len(b) for b in batches] == [2, 2, 1] and shapes == [(2, 12, 12, 3)] * 3  # the last padded
    results = [p for b in batches for p in b]
    assert [p.path for p in results] == files
    assert results[2].top is None and results[2].error.startswith(f"cannot read {broken} as an image")
    for p in results[:2] + results[3:]:
        pixels = eval_transform(p.path, 12).astype(np.float64)  # the oracle: this image alone, by numpy
        scores = 1.0 + pixels.mean(axis=(0, 1))
        probs = scores / scores.sum()
        order = np.argsort(-probs)[:2]
        assert p.error is None and [k for k, _ in p.top] == order.tolist()
        np.testing.assert_allclose([q for _, q in p.top], probs[order], rtol=1e-12)


def test_predict_files_checks_its_arguments_and_takes_no_files():
    classify = _mean_classifier([])
    assert list(inference.predict_files(classify, [], image_size=8)) == []
    # checked at the call, before anything iterates the stream
    with pytest.raises(ValueError, match="batch_size must be a positive integer; got 0"):
        inference.predict_files(classify, ["x.png"], batch_size=0)
    with pytest.raises(ValueError, match="workers must be an integer >= 0; got -1"):
        inference.predict_files(classify, ["x.png"], workers=-1)
    with pytest.raises(ValueError, match="top must be a positive integer; got 0"):
        inference.predict_files(classify, ["x.png"], top=0)
    with pytest.raises(TypeError, match="image_size must be"):
        inference.predict_files(classify, ["x.png"], image_size="8")


def test_jax_classifier_is_the_models_softmax(pictures):
    _, paths = pictures
    model = create_model("resnet_tiny", num_classes=7)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    results = [
        p
        for b in inference.predict_files(
            inference.jax_classifier(model, variables, mean, std), paths[:3], image_size=16, batch_size=3, top=7
        )
        for p in b
    ]
    x = np.stack([normalize(eval_transform(p, 16), mean, std) for p in paths[:3]])
    probs = np.asarray(jax.nn.softmax(model.apply(variables, x, train=False)))
    for p, row in zip(results, probs):
        assert sorted(k for k, _ in p.top) == list(range(7))
        np.testing.assert_allclose([q for _, q in p.top], row[[k for k, _ in p.top]], rtol=1e-5, atol=1e-7)


def test_onnx_classifier_normalises_by_its_own_statistics_and_softmaxes_in_float64():
    class Stub:
        mean, std = (0.1, 0.2, 0.3), (0.5, 0.5, 0.5)

        def __call__(self, x):
            self.seen = x
            return np.asarray([[0.0, 1.0, 2.0], [1000.0, 1000.0, 0.0]], np.float32)

    stub = Stub()
    images = np.full((2, 4, 4, 3), 255, np.uint8)
    probs = inference.onnx_classifier(stub)(images)
    np.testing.assert_allclose(stub.seen[0, 0, 0], (1 - np.asarray(Stub.mean)) / 0.5, rtol=1e-6)
    e = np.exp([0.0, 1.0, 2.0])
    np.testing.assert_allclose(probs[0], e / e.sum(), rtol=1e-12)
    np.testing.assert_allclose(probs[1], [0.5, 0.5, 0.0], atol=1e-300)  # large logits: no overflow


def test_image_paths_lists_directories_recursively_sorted(pictures):
    root, paths = pictures
    listed = inference.image_paths([root / "b", paths[0], root / "a"])
    a = sorted([paths[0], paths[2], paths[4], str(root / "a" / "broken.png")])
    assert listed == sorted([paths[1], paths[3]]) + [paths[0]] + a  # files as given, dirs expanded in place
    assert str(root / "a" / "notes.txt") not in listed and not any(".skip" in p or ".hidden" in p for p in listed)
    with pytest.raises(errors.FileError, match=f"no such file: {root}/nope.png"):  # an OSError
        inference.image_paths([paths[0], root / "nope.png"])
    with pytest.raises(ValueError, match=f"{root}/empty is a directory without images"):
        inference.image_paths([root / "empty"])


def _files(classes, labels):
    return ImageFiles("r", np.asarray([b"f"] * len(labels)), np.asarray(labels, np.int32), tuple(classes))


def test_match_classes_by_name_else_by_position():
    files = _files(["goldfish", "tench"], [0, 1, 1])
    names = ["tench", "goldfish", "shark"]
    by_name = inference.match_classes(files, names, 3)
    assert by_name.labels.tolist() == [1, 0, 0] and by_name.classes == tuple(names)
    by_position = inference.match_classes(_files(["x", "y", "z"], [2, 0]), names, 3)
    assert by_position.labels.tolist() == [2, 0]
    assert inference.match_classes(files, None, 2).labels.tolist() == [0, 1, 1]
    with pytest.raises(DataError, match=r"data: here has 2 class folders \(1 not among its class names, e.g. 'x'\)"):
        inference.match_classes(_files(["tench", "x"], [0, 1]), names, 3, where="here")
    err = pytest.raises(ValueError, inference.match_classes, files, None, 5).value
    assert err.field == "data" and err.message.endswith("has 2 class folders; the model has 5 classes")


def test_held_out_split_is_the_runs():
    assert inference.held_out_split({"model": "resnet18"}) is None
    split = {"data": None, "test_fraction": 0.25, "seed": 3}
    held, described = inference.held_out_split({"split": json.dumps(split)})
    assert described == "the run's held-out split of the digits (25%, seed 3)"
    _, expected = digits(test_fraction=0.25, seed=3)  # the digits' own split, as the run made it
    assert len(held) == round(1797 * 0.25) == len(expected)
    np.testing.assert_array_equal(held.images, expected.images)
    np.testing.assert_array_equal(held.labels, expected.labels)
    other, _ = inference.held_out_split({"split": json.dumps({**split, "seed": 4})})
    assert not np.array_equal(other.images, held.images)
    with pytest.raises(ValueError, match="model.safetensors's metadata 'split' must be a JSON object"):
        inference.held_out_split({"split": "[1]"}, "model.safetensors")


def test_load_model_reads_files_through_io_and_directories_as_runs(tmp_path):
    model = create_model("resnet_tiny", num_classes=3)
    variables = jax.device_get(model.init(jax.random.PRNGKey(1), jnp.zeros((1, 16, 16, 3))))
    path = save_variables(tmp_path / "m.safetensors", variables, {"format": CHECKPOINT_FORMAT, "model": "resnet_tiny"})
    for loaded in (load_model(path), load_model_file(path)):
        assert loaded[0].num_classes == 3 and loaded[2]["model"] == "resnet_tiny"
        for a, b in zip(jax.tree_util.tree_leaves(loaded[1]), jax.tree_util.tree_leaves(variables)):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=f"{tmp_path} has no checkpoint"):
        load_model(tmp_path)
    with pytest.raises(ValueError, match=f"{tmp_path} is a directory, not a weights file"):
        load_model_file(tmp_path)


def test_image_paths_and_an_image_folder_walk_alike(tmp_path):
    """``predict DIR`` and an image folder's classes list the same images: hidden folders and files left out."""
    from resnet_bottleneck.data import list_images

    for rel in ("c/x.png", "c/deep/y.jpg", "c/.cache/z.png", "c/.w.png", "c/notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / rel, format="PNG")
    listed = inference.image_paths([tmp_path / "c"])
    assert listed == [str(tmp_path / "c" / "deep" / "y.jpg"), str(tmp_path / "c" / "x.png")]
    folder = list_images(tmp_path)
    assert [folder.path(i) for i in range(len(folder))] == listed


def test_preprocess_is_the_evaluation_transform_normalised(pictures):
    from resnet_bottleneck.errors import ImageError

    root, paths = pictures
    mean, std = (0.2, 0.3, 0.4), (0.5, 0.6, 0.7)
    expected = (eval_transform(paths[1], 16).astype(np.float32) / 255 - np.asarray(mean)) / np.asarray(std)
    np.testing.assert_allclose(inference.preprocess(paths[1], 16, mean, std), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ImageError, match="broken.png"):
        inference.preprocess(root / "a" / "broken.png")
    with pytest.raises(ValueError, match="image_size must be a positive integer; got 0"):
        inference.preprocess(paths[1], 0)


def test_evaluation_folder_is_val_in_imagenet_layout_else_the_whole_folder(tmp_path):
    from resnet_bottleneck.data.synthetic import write_image_folder

    imagenet = write_image_folder(tmp_path / "in", 2, 3, (20, 16), layout="imagenet", val_per_class=1)
    files = inference.evaluation_folder(imagenet)
    assert (files.root, len(files), files.classes) == (str(imagenet / "val"), 2, ("class_000", "class_001"))
    flat = write_image_folder(tmp_path / "flat", 2, 3, (20, 16))
    files = inference.evaluation_folder(flat)
    assert (files.root, len(files)) == (str(flat), 6)
    with pytest.raises(DataError, match="is not a directory") as err:
        inference.evaluation_folder(tmp_path / "nope")
    assert err.value.field == "data"


def test_onnx_num_classes_reads_the_output_else_runs_one_image():
    class Stub:
        metadata = {}

        def __init__(self, num_classes, image_size):
            self.num_classes, self.image_size, self.seen = num_classes, image_size, []

        def __call__(self, x):
            self.seen.append(x.shape)
            return np.zeros((len(x), 7), np.float32)

    fixed = Stub(5, None)
    assert inference.onnx_num_classes(fixed) == 5 and fixed.seen == []
    dynamic = Stub(None, None)
    assert inference.onnx_num_classes(dynamic) == 7 and dynamic.seen == [(1, 224, 224, 3)]
    sized = Stub(None, 32)
    assert inference.onnx_num_classes(sized) == 7 and sized.seen == [(1, 32, 32, 3)]
