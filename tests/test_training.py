"""The training library: accuracy, resume across worker counts, lazy metric reads, 1 device == 4 devices,
2 processes == 1 with each host opening only its own files; fine-tuning torchvision's weights."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers import WatchedImages, assert_trees_equal, random_torchvision

from resnet_bottleneck.data import DataError, ImageArrays, ImageError, digits
from resnet_bottleneck.data.synthetic import write_image_folder
from resnet_bottleneck.io.safetensors import load_variables as load_model_file
from resnet_bottleneck.io.torchvision import load_torchvision
from resnet_bottleneck.training import Config, RunOptions, TrainingError, loop, train

PROGRAM = Path(__file__).parent / "programs" / "train_steps.py"


@pytest.fixture(scope="module")
def two_steps_folder(tmp_path_factory):
    """80 JPEGs in 2 classes: 64 to train on (two steps of 32), 16 held out."""
    return write_image_folder(tmp_path_factory.mktemp("steps") / "data", classes=2, per_class=40, size=(60, 45))


def test_default_config_reaches_97_percent_fast():
    """The README's default: resnet_tiny on digits; the claim is >= 97% held-out accuracy."""
    result = train(Config(epochs=6), progress=False)
    assert result.test_accuracy >= 0.97, result.history


def test_resume_with_another_worker_count_is_exact_and_losses_are_read_in_groups(tmp_path, monkeypatch):
    """Stopped at step 10 (mid-epoch) and resumed with 1 worker instead of 0: the same final state.
    grain's own iterator state fits only its worker count; the stream then restarts at the step.
    And the host queues step k+1 without waiting for step k: losses are read every few steps."""
    reads = []
    original = loop._Meter.read
    monkeypatch.setattr(loop._Meter, "read", lambda self, keep=0: reads.append(original(self, keep)) or reads[-1])
    config = Config(image_size=16, batch_size=64, epochs=1)
    whole = train(
        config,
        out=tmp_path / "a",
        options=RunOptions(workers=0, checkpoint_every=15, log_every=4, keep=10),
        progress=False,
    )
    assert whole.steps == 22 and sum(reads) == 22
    assert len([n for n in reads if n]) <= 8 and max(reads) >= 3, reads  # at 3, 7, 11 (lagging one), 15, ...
    import shutil

    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "22")  # as if it had been killed after step 15
    resumed = train(config, out=tmp_path / "b", options=RunOptions(workers=1), progress=False)
    assert resumed.resumed_from == 15 and resumed.steps == 22
    assert_trees_equal(resumed.state.params, whole.state.params)
    assert_trees_equal(resumed.state.batch_stats, whole.state.batch_stats)


def run_program(out, data, env, workers=0):
    return subprocess.Popen(
        [sys.executable, str(PROGRAM), str(out), str(data), str(workers)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process):
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]


def load_variables(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def assert_close_variables(ours, theirs):
    keys = sorted(k for k in theirs if k not in ("devices", "processes"))
    assert keys == sorted(k for k in ours if k not in ("devices", "processes"))
    for key in keys:
        np.testing.assert_allclose(ours[key], theirs[key], atol=1e-5, rtol=1e-5, err_msg=key)


def test_one_device_equals_four_devices(tmp_path, two_steps_folder):
    """Synchronised BatchNorm: a train step sees the global batch's statistics on any number of devices.

    Two steps of 32 (the first at learning rate 0, the warmup's start): the parameters after one
    real update and the running statistics of both. Over many steps float32 rounding differences
    between the two reductions grow, as training amplifies them, so more steps prove less."""
    outputs = {}
    for devices in (1, 4):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
        finish(run_program(tmp_path / f"d{devices}.npz", two_steps_folder, env))
        outputs[devices] = load_variables(tmp_path / f"d{devices}.npz")
        assert outputs[devices]["devices"] == devices
    assert_close_variables(outputs[4], outputs[1])


def test_two_processes_equal_one_and_each_opens_only_its_own_files(tmp_path, two_steps_folder):
    """Two local processes joined by jax.distributed (CPU collectives) train like one on the whole
    batch, and each opens only its own rows' images: disjoint shares that together are every image."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    finish(run_program(tmp_path / "one.npz", two_steps_folder, dict(env, OPEN_LOG=str(tmp_path / "one"))))
    processes = [
        run_program(
            tmp_path / "two.npz",
            two_steps_folder,
            dict(
                env,
                JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                JAX_NUM_PROCESSES="2",
                JAX_PROCESS_ID=str(i),
                OPEN_LOG=str(tmp_path / "two"),
            ),
        )
        for i in range(2)
    ]
    for p in processes:
        finish(p)
    two = load_variables(tmp_path / "two.npz")
    assert two["processes"] == 2
    assert_close_variables(two, load_variables(tmp_path / "one.npz"))

    opened = [set((tmp_path / f"two.{i}").read_text().split()) for i in range(2)]
    everything = set((tmp_path / "one.0").read_text().split())
    assert len(everything) == 80  # 64 trained on, 16 evaluated
    assert not opened[0] & opened[1] and opened[0] | opened[1] == everything
    assert len(opened[1]) >= 32  # its 32 training images (the one evaluation batch's rows are process 0's)


def failing_after(good: int):
    """``on_read`` for :class:`WatchedImages`: every read after the first ``good`` fails (a disk gone)."""
    reads = [0]

    def on_read(index):
        reads[0] += 1
        if reads[0] > good:
            raise ImageError(f"cannot read image {index} (gone)")

    return on_read


def test_data_that_fails_mid_epoch_stops_with_a_checkpoint_and_the_step(tmp_path):
    """Unreadable from some point on: the run stops naming the step, with a checkpoint of the last
    step it completed, so the same command resumes once the data is back."""
    train_set, held = digits(0.2, seed=0)
    with pytest.raises(DataError) as err:
        train(
            Config(image_size=8, batch_size=64, epochs=1),
            out=tmp_path,
            progress=False,
            options=RunOptions(workers=0, checkpoint_every=100),
            datasets=(
                ImageArrays(
                    WatchedImages(train_set.images, failing_after(64 * 5)), train_set.labels, train_set.classes
                ),
                held,
            ),
        )
    step = int(str(err.value).split("(at step ")[1].split(";")[0]) - 1
    assert err.value.field == "data" and "images in a row are unreadable" in str(err.value)
    assert 2 <= step <= 5 and f"checkpoint at step {step} kept" in str(err.value)
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [step]
    resumed = train(
        Config(image_size=8, batch_size=64, epochs=1),
        out=tmp_path,
        progress=False,
        options=RunOptions(workers=0),
        datasets=(train_set, held),
    )
    assert resumed.resumed_from == step and resumed.steps == 22


def test_training_data_of_one_class_is_refused(tmp_path):
    """One class named, or two named but images of one: a classifier would score 100% learning nothing."""
    train_set, held = digits(0.2, seed=0)
    ones = train_set.subset(np.flatnonzero(train_set.labels == 1))
    for source, found in (
        (ImageArrays(ones.images, np.zeros(len(ones), np.int32), ("one",)), "only one class, 'one'"),
        (ones, "images of one class only, '1'"),
    ):
        with pytest.raises(DataError) as err:
            train(Config(image_size=8, batch_size=8, epochs=1), out=tmp_path, progress=False, datasets=(source, held))
        assert err.value.field == "datasets" and "a classifier needs at least two classes" in str(err.value)
        assert f"the training images have {found}" in str(err.value), str(err.value)
    # refused before anything was written: only the run's lock file, empty again (no holder)
    assert list(tmp_path.iterdir()) == [tmp_path / "run.lock"] and (tmp_path / "run.lock").read_text() == ""


# --- fine-tuning torchvision's weights --------------------------------------------------


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """torchvision's resnet18 with random weights and random running statistics, saved as a ``.pth``
    (1,000 classes), and 72 JPEGs of 3 classes told apart by their colours (58 to train on, 14 held out)."""
    import torch

    root = tmp_path_factory.mktemp("pretrained")
    torch.save(random_torchvision("resnet18", seed=0).state_dict(), root / "r18.pth")
    return root / "r18.pth", write_image_folder(root / "data", classes=3, per_class=24, size=(40, 32))


def fine_tune(pretrained, out, **settings):
    weights, folder = pretrained
    config = Config(
        model="resnet18",
        weights=str(weights),
        data=str(folder),
        image_size=32,
        batch_size=16,
        epochs=4,
        freeze_bn=True,
        **settings,
    )
    return train(config, out=out, options=RunOptions(workers=0), progress=False)


def without_head(variables):
    return {collection: {k: v for k, v in tree.items() if k != "fc"} for collection, tree in variables.items()}


def test_fine_tuning_starts_from_every_tensor_of_the_file(pretrained, tmp_path):
    """Nothing of the backbone learns (trainable_layers=0, BatchNorm frozen): only the new 3-class
    classifier, with AdamW. So every backbone tensor and statistic after training is the one the run
    started from, and it is the file's, bit for bit: the initial state took every one of them."""
    result = fine_tune(pretrained, tmp_path, trainable_layers=0, optimizer="adamw", learning_rate=0.01)
    assert result.initialised == (
        f"initialised from {pretrained[0]}: every backbone tensor and BatchNorm statistic; "
        "classifier re-initialised: the weights have 1000 classes, the data 3"
    )
    variables, metadata = load_model_file(result.model_file)
    _, expected = load_torchvision(pretrained[0], "resnet18")  # the file, read as torchvision's
    assert_trees_equal(without_head(variables), without_head(expected))
    assert variables["params"]["fc"]["kernel"].shape == (512, 3)
    assert metadata["classes"] == '["class_000", "class_001", "class_002"]'
    assert result.test_accuracy >= 0.6, result.history  # a linear probe; chance is 1/3


def test_fine_tuning_with_frozen_stages_and_batchnorm(pretrained, tmp_path):
    """trainable_layers=2 (layer3 and layer4 learn) with frozen BatchNorm, SGD: the stem, layer1 and
    layer2 and every running statistic stay the file's bit for bit; every tensor of layer3 and layer4
    moves; the held-out accuracy is well above chance. And a resume with other weights is refused."""
    result = fine_tune(pretrained, tmp_path, trainable_layers=2, learning_rate=0.05)
    variables, _ = load_model_file(result.model_file)
    _, expected = load_torchvision(pretrained[0], "resnet18")
    params, before = variables["params"], expected["params"]
    frozen = [k for k in before if k.startswith(("conv1", "bn1", "layer1_", "layer2_"))]
    learning = [k for k in before if k.startswith(("layer3_", "layer4_"))]
    assert len(frozen) == 6 and len(learning) == 4
    assert_trees_equal({k: params[k] for k in frozen}, {k: before[k] for k in frozen})
    assert_trees_equal(variables["batch_stats"], expected["batch_stats"])
    for after, start in zip(
        jax.tree_util.tree_leaves({k: params[k] for k in learning}),
        jax.tree_util.tree_leaves({k: before[k] for k in learning}),
    ):
        assert not np.array_equal(after, start)
    assert result.test_accuracy >= 0.6, result.history  # chance is 1/3

    other = tmp_path / "other.pth"
    other.write_bytes(pretrained[0].read_bytes() + b"\0")  # other content: a different SHA-256
    with pytest.raises(TrainingError, match="weights_sha256: saved '[0-9a-f]{64}', now '[0-9a-f]{64}'"):
        fine_tune((other, pretrained[1]), tmp_path, trainable_layers=2, learning_rate=0.05)


@pytest.mark.parametrize("classes", [3, 10])
def test_host_sums_are_eval_steps_in_numpy(classes, rng):
    """evaluate_onnx's numpy sums equal eval_step's on the same logits (JAX's top_k, optax's cross-entropy);
    a padded row (mask False) counts nowhere."""

    from resnet_bottleneck.training.evaluation import host_sums
    from resnet_bottleneck.training.state import eval_step

    logits = rng.normal(size=(9, classes)).astype(np.float32) * 4
    labels = rng.integers(0, classes, 9).astype(np.int32)
    labels[:3] = np.argsort(-logits[:3], axis=1)[:, [0, 1, min(5, classes - 1)]].diagonal()  # a hit, near hits
    mask = np.arange(9) < 8
    state = type("State", (), {"params": {}, "batch_stats": {}, "apply_fn": staticmethod(lambda v, x, train: logits)})
    batch = {"image": np.zeros((9, 2, 2, 3), np.uint8), "label": labels, "mask": mask}
    expected = jax.device_get(eval_step(state, batch))
    got = host_sums(logits, labels, mask)
    assert {k: int(got[k]) for k in ("correct", "top5", "count")} == {
        k: int(expected[k]) for k in ("correct", "top5", "count")
    }
    assert int(got["count"]) == 8 and 0 < int(got["correct"]) <= int(got["top5"]) <= 8
    np.testing.assert_allclose(float(got["loss"]), float(expected["loss"]), rtol=1e-6)
    assert int(host_sums(logits, (labels + 1) % classes, mask)["correct"]) != int(got["correct"])  # labels matter


def test_drop_path_and_dropout_resume_bit_exact_and_drop(tmp_path):
    """With stochastic depth and head dropout, the 'dropout' RNG is a function of the seed and the step:
    a run stopped at step 15 and resumed ends with the same variables as an unbroken one; and the drops
    happen (the same run without them ends elsewhere)."""
    config = Config(image_size=16, batch_size=64, epochs=1, drop_path=0.2, drop_rate=0.3)
    options = RunOptions(workers=0, checkpoint_every=15, keep=10)
    whole = train(config, out=tmp_path / "a", options=options, progress=False)
    import shutil

    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "22")
    resumed = train(config, out=tmp_path / "b", options=options, progress=False)
    assert resumed.resumed_from == 15 and resumed.steps == 22
    assert_trees_equal(resumed.state.params, whole.state.params)
    assert_trees_equal(resumed.state.batch_stats, whole.state.batch_stats)
    plain = train(Config(image_size=16, batch_size=64, epochs=1), progress=False)
    assert not np.array_equal(plain.state.params["fc"]["kernel"], whole.state.params["fc"]["kernel"])
    # a resume with other rates is another run, refused
    with pytest.raises(TrainingError, match="drop_path: saved 0.2, now 0.1"):
        train(Config(image_size=16, batch_size=64, epochs=1, drop_path=0.1), out=tmp_path / "b", progress=False)
