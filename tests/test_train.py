"""Training: loss falls, exact resume after SIGKILL, checkpoints refused when wrong, NaN stop,
1 device == 4 devices, ImageFolder data, and every bad input as one line."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from resnet_bottleneck.cli import main
from resnet_bottleneck.train import Config, train

# A small, fast run: 8x8 digits upsampled to 16; 1,438 training images make 22 steps an epoch.
SMALL = ["--image-size", "16", "--batch-size", "64", "--epochs", "2", "--checkpoint-every", "5", "--keep", "2"]


def cli(*args, env=None, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "resnet_bottleneck", "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kwargs)


def restore_params(run_dir: Path, step: int):
    import warnings

    import orbax.checkpoint as ocp

    with warnings.catch_warnings():  # orbax: "sharding info not provided", which is what we want here
        warnings.simplefilter("ignore", UserWarning)
        tree = ocp.PyTreeCheckpointer().restore((run_dir / "checkpoints" / str(step) / "state").resolve())
    return tree["params"]


def test_loss_falls_and_outputs_are_written(tmp_path):
    assert main(["train", *SMALL, "--out", str(tmp_path / "run"), "--json"]) == 0
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[1]["train_loss"] < records[0]["train_loss"]
    assert records[1]["test_accuracy"] > 0.5  # ten classes: chance is 0.1
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == ["40", "44"]


def test_default_config_reaches_97_percent_fast():
    """The README's default: resnet_tiny on digits; the claim is >= 97% held-out accuracy."""
    result = train(Config(epochs=6), progress=False)
    assert result.test_accuracy >= 0.97, result.history


def test_sigkill_then_resume_is_bit_exact(tmp_path):
    args = [*SMALL, "--epochs", "3", "--json"]
    straight = cli(*args, "--out", str(tmp_path / "straight"))
    _, err = straight.communicate(timeout=600)
    assert straight.returncode == 0, err

    killed = tmp_path / "killed"
    victim = cli(*args, "--out", str(killed))
    deadline = time.time() + 600
    while time.time() < deadline:  # kill it mid-run, after its second checkpoint
        steps = [int(p.name) for p in (killed / "checkpoints").glob("*") if p.name.isdigit()] if (killed / "checkpoints").exists() else []
        if steps and max(steps) >= 10:
            break
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=60)
    assert victim.returncode == -signal.SIGKILL

    resumed = cli(*args, "--out", str(killed))
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    summary = json.loads(out)
    assert summary["resumed_from_step"] >= 10 and summary["steps"] == 66
    a, b = restore_params(tmp_path / "straight", 66), restore_params(killed, 66)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(x, y)
    lines = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3]  # no epoch logged twice


def test_corrupt_or_foreign_checkpoint_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(run), "--json"]) == 0
    capsys.readouterr()
    assert main(["train", *SMALL, "--epochs", "1", "--seed", "1", "--out", str(run), "--json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was written by a different run (seed: saved 0, now 1)" in err[0], err
    for file in (run / "checkpoints" / "22" / "state").rglob("*"):
        if file.is_file() and file.stat().st_size > 0:
            file.write_bytes(b"\0garbage")
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(run), "--json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoint" in err[0] and str(run / "checkpoints" / "22") in err[0], err


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", *SMALL, "--lr", "1e30", "--warmup-epochs", "0", "--checkpoint-every", "1",
                 "--out", str(run), "--json"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert "the loss became nan at step" in err[0] or "the loss became inf at step" in err[0]
    step = int(err[0].split(" at step ")[1].split()[0])
    kept = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    assert kept and max(kept) == step - 1 and f"last good checkpoint is step {step - 1}" in err[0]


def test_one_device_equals_four_devices(tmp_path):
    """Synchronised BatchNorm: a train step sees the global batch's statistics on any number of devices.

    Two steps of 32 (the first at learning rate 0, the warmup's start): the parameters after one
    real update and the running statistics of both. Over many steps float32 rounding differences
    between the two reductions grow, as training amplifies them, so more steps prove less."""
    script = (
        "import sys, numpy as np, jax, jax.numpy as jnp\n"
        "from resnet_bottleneck import create_model\n"
        "from resnet_bottleneck.train import Config, train, digits\n"
        "tr, te = digits(16)\n"
        "r = train(Config(image_size=16, batch_size=32, epochs=1), progress=False, "
        "datasets=(type(tr)(tr.images[:64], tr.labels[:64], tr.classes), te))\n"
        "assert len(jax.devices()) == int(sys.argv[2]) and r.steps == 2, (jax.devices(), r.steps)\n"
        "init = create_model('resnet_tiny', num_classes=10).init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))\n"
        "moved = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree_util.tree_leaves(init['params']), "
        "jax.tree_util.tree_leaves(r.state['params'])))\n"
        "assert moved > 1e-3, moved\n"
        "flat = {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path("
        "{'params': r.state['params'], 'batch_stats': r.state['batch_stats']})}\n"
        "np.savez(sys.argv[1], **flat)\n"
    )
    outputs = {}
    for devices in (1, 4):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
        path = tmp_path / f"p{devices}.npz"
        done = subprocess.run([sys.executable, "-c", script, str(path), str(devices)], env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        outputs[devices] = np.load(path)
    assert outputs[1].files == outputs[4].files
    for key in outputs[1].files:
        np.testing.assert_allclose(outputs[4][key], outputs[1][key], atol=1e-5, rtol=1e-5, err_msg=key)


def test_two_processes_equal_one(tmp_path):
    """Two local processes joined by jax.distributed (CPU collectives) train like one on the whole batch."""
    import socket

    script = (
        "import sys, numpy as np, jax\n"
        "from resnet_bottleneck.train import Config, digits, maybe_initialize_distributed, train\n"
        "maybe_initialize_distributed()\n"
        "tr, te = digits(16)\n"
        "r = train(Config(image_size=16, batch_size=32, epochs=1), progress=False, "
        "datasets=(type(tr)(tr.images[:64], tr.labels[:64], tr.classes), te))\n"
        "assert jax.process_count() == int(sys.argv[2]) and r.steps == 2\n"
        "if jax.process_index() == 0:\n"
        "    np.savez(sys.argv[1], **{jax.tree_util.keystr(k): np.asarray(jax.device_get(v)) "
        "for k, v in jax.tree_util.tree_leaves_with_path(r.state['params'])})\n"
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    single = subprocess.run([sys.executable, "-c", script, str(tmp_path / "one.npz"), "1"], env=env,
                            capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "two.npz"), "2"],
                              env=dict(env, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                                       JAX_PROCESS_ID=str(i)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    one, two = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    assert one.files == two.files
    for key in one.files:
        np.testing.assert_allclose(two[key], one[key], atol=1e-5, rtol=1e-5, err_msg=key)


def write_folder(root: Path, classes=("cat", "dog"), per_class=6, size=20):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.full((size, size, 3), 60 + 120 * c, np.uint8) + rng.integers(0, 30, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")


def test_image_folder_training(tmp_path):
    write_folder(tmp_path / "data")
    (tmp_path / "data" / "cat" / "notes.txt").write_text("not an image, ignored")
    assert main(["train", "--data", str(tmp_path / "data"), "--image-size", "32", "--batch-size", "4",
                 "--epochs", "3", "--augment", "--test-fraction", "0.25", "--out", str(tmp_path / "run"), "--json"]) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(np.isfinite(r["train_loss"]) for r in records)


def test_augment_is_deterministic_and_keeps_shape():
    from resnet_bottleneck.train import augment

    images = np.random.default_rng(0).random((5, 12, 10, 3)).astype(np.float32)
    a = augment(images, np.random.default_rng([1, 2, 3]))
    b = augment(images, np.random.default_rng([1, 2, 3]))
    np.testing.assert_array_equal(a, b)
    assert a.shape == images.shape and not np.allclose(a, images)


@pytest.mark.parametrize("setup,args,fragment", [
    (lambda root: (root / "empty").mkdir(), ["--data", "{root}/empty"], "has no class folders"),
    (lambda root: (root / "d" / "cls").mkdir(parents=True), ["--data", "{root}/d"], "class folder {root}/d/cls has no images"),
    (lambda root: (write_folder(root / "c"), (root / "c" / "dog" / "bad.png").write_bytes(b"\x89PNG broken")),
     ["--data", "{root}/c"], "cannot read image {root}/c/dog/bad.png"),
    (lambda root: None, ["--data", "{root}/missing"], "argument --data: {root}/missing is not a directory"),
    (lambda root: None, ["--model", "resnet51"], "argument --model: must be one of"),
    (lambda root: None, ["--batch-size", "0"], "argument --batch-size: must be a positive integer; got 0"),
    (lambda root: None, ["--label-smoothing", "1.5"], "--label-smoothing must be in [0, 1); got 1.5"),
    (lambda root: None, ["--lr", "abc"], "argument --lr: must be a finite number >= 0; got 'abc'"),
    (lambda root: None, ["--batch-size", "5000"], "--batch-size 5000 is larger than the 1438 training images"),
])
def test_bad_input_is_one_line(setup, args, fragment, tmp_path, capsys):
    setup(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    args = [a.format(root=tmp_path) for a in args]
    assert main(["train", *args, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment.format(root=tmp_path) in err[0], err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing half-written


def test_batch_that_does_not_divide_over_the_devices(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    done = subprocess.run([sys.executable, "-m", "resnet_bottleneck", "train", "--batch-size", "30",
                           "--out", str(tmp_path / "run")], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--batch-size 30 does not divide over 4 devices" in lines[0], done.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag", [True, False])
def test_reuse_freed_memory_only_when_asked_and_before_training(flag, tmp_path, monkeypatch):
    import resnet_bottleneck.train as training
    from resnet_bottleneck import xla

    events = []
    monkeypatch.setattr(xla, "reuse_freed_memory", lambda: events.append("reuse") or True)

    def stop(*args, **kwargs):
        events.append("train")
        raise training.TrainingError("stopped by the test")

    monkeypatch.setattr(training, "train", stop)
    args = ["train", *SMALL, "--out", str(tmp_path / "run")] + (["--reuse-freed-memory"] if flag else [])
    assert main(args) == 2
    assert events == (["reuse", "train"] if flag else ["train"])
    # A bad input is refused before the process-wide setting is touched.
    events.clear()
    assert main(["train", "--batch-size", "0", "--reuse-freed-memory", "--out", str(tmp_path / "r2")]) == 2
    assert events == []
