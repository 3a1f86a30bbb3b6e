"""The training library: accuracy, resume across worker counts, lazy metric reads, 1 device == 4 devices,
2 processes == 1 with each host opening only its own files."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from resnet_bottleneck.data import DataError, ImageArrays, ImageError, digits
from resnet_bottleneck.data.synthetic import write_image_folder
from resnet_bottleneck.training import Config, RunOptions, train
from resnet_bottleneck.training import loop

from helpers import WatchedImages, assert_trees_equal

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
    whole = train(config, out=tmp_path / "a", options=RunOptions(workers=0, checkpoint_every=15, log_every=4, keep=10),
                  progress=False)
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
    return subprocess.Popen([sys.executable, str(PROGRAM), str(out), str(data), str(workers)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


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
    processes = [run_program(tmp_path / "two.npz", two_steps_folder,
                             dict(env, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                                  JAX_PROCESS_ID=str(i), OPEN_LOG=str(tmp_path / "two"))) for i in range(2)]
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
        train(Config(image_size=8, batch_size=64, epochs=1), out=tmp_path, progress=False,
              options=RunOptions(workers=0, checkpoint_every=100),
              datasets=(ImageArrays(WatchedImages(train_set.images, failing_after(64 * 5)), train_set.labels,
                                    train_set.classes), held))
    step = int(str(err.value).split("(at step ")[1].split(";")[0]) - 1
    assert err.value.field == "data" and "images in a row are unreadable" in str(err.value)
    assert 2 <= step <= 5 and f"checkpoint at step {step} kept" in str(err.value)
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [step]
    resumed = train(Config(image_size=8, batch_size=64, epochs=1), out=tmp_path, progress=False,
                    options=RunOptions(workers=0), datasets=(train_set, held))
    assert resumed.resumed_from == step and resumed.steps == 22
