"""``resnet-bottleneck train`` as a user runs it: outputs, exact resume after SIGKILL mid-epoch with
worker processes, checkpoints refused when wrong, NaN stop, image folders (both layouts, bad images),
flags generated from the settings, and every bad input as one line."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import pytest
from helpers import SMALL_TRAIN as SMALL
from helpers import assert_trees_equal, one_line_error

from resnet_bottleneck.cli import build_parser, main
from resnet_bottleneck.data.synthetic import write_image_folder
from resnet_bottleneck.training import Config, RunOptions

PROG = "resnet-bottleneck train"


def cli(*args, env=None):
    return subprocess.Popen(
        [sys.executable, "-m", "resnet_bottleneck", "train", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def restore_params(run_dir: Path, step: int):
    import warnings

    import orbax.checkpoint as ocp

    with warnings.catch_warnings():  # orbax: "sharding info not provided", which is what we want here
        warnings.simplefilter("ignore", UserWarning)
        tree = ocp.PyTreeCheckpointer().restore((run_dir / "checkpoints" / str(step) / "state").resolve())
    return tree["params"]


def test_loss_falls_and_outputs_are_written(digits_run):
    run, _ = digits_run  # train with SMALL's settings, --out run --json (conftest)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[1]["train_loss"] < records[0]["train_loss"]
    timings = [json.loads(line) for line in (run / "timing.jsonl").read_text().splitlines()]
    assert [(t["epoch"], t["step"]) for t in timings] == [(1, 22), (2, 44)]  # timings apart: metrics stay exact
    assert all(t["images_per_second"] > 0 and t["seconds"] > 0 for t in timings)
    assert not any("images_per_second" in r or "seconds" in r for r in records)
    assert records[1]["test_accuracy"] > 0.5  # ten classes: chance is 0.1
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == ["40", "44"]
    assert sorted(p.name for p in (run / "checkpoints" / "44").iterdir() if not p.name.startswith("_")) == [
        "commit_success.txt",
        "config",
        "data",
        "run",
        "state",
    ]
    position = json.loads((run / "checkpoints" / "44" / "data" / "process_0-of-1.json").read_text())
    assert position["step"] == 44 and position["workers"] == 0 and "grain" in position


def test_rerunning_a_finished_run_says_it_had_finished(digits_run, capsys):
    """The same command on a run that reached its last step: no "0 training images/s", but what the
    run ended with (its step, test accuracy and model file), and exit status 0."""
    run, summary = digits_run
    assert summary["already_finished"] is False
    assert main(["train", *SMALL, "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        f"the run in {run} had already finished: step 44 of 44, test accuracy {summary['test_accuracy']:.4f}; "
        f"model {run / 'model.safetensors'} (more epochs need a new --out)"
    ]
    assert main(["train", *SMALL, "--out", str(run), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["already_finished"] is True and again["steps"] == 44 and again["resumed_from_step"] == 44


def test_sigkill_mid_epoch_with_workers_then_resume_is_bit_exact(tmp_path):
    """JPEGs decoded by 2 worker processes; killed after a checkpoint in the middle of an epoch;
    the same command resumes (train state, grain's iterator state and the epoch's running sums) to
    the same final weights and the same ``metrics.jsonl``, byte for byte."""
    data = write_image_folder(tmp_path / "data", classes=3, per_class=30, size=(64, 48))
    args = [
        "--data",
        str(data),
        "--image-size",
        "16",
        "--batch-size",
        "8",
        "--epochs",
        "2",
        "--workers",
        "2",
        "--checkpoint-every",
        "4",
        "--json",
    ]  # 72 training images: 9 steps an epoch, 18 in all
    straight = cli(*args, "--out", str(tmp_path / "straight"))
    killed = tmp_path / "killed"
    victim = cli(*args, "--out", str(killed))
    deadline = time.time() + 600
    while time.time() < deadline and not (killed / "checkpoints" / "12" / "data").exists():
        time.sleep(0.05)  # step 12: epoch 2, step 3 of 9
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    _, err = straight.communicate(timeout=600)
    assert straight.returncode == 0, err

    resumed = cli(*args, "--out", str(killed))
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    summary = json.loads(out)
    assert summary["resumed_from_step"] in (12, 16) and summary["steps"] == 18, summary
    assert_trees_equal(restore_params(killed, 18), restore_params(tmp_path / "straight", 18))
    lines = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]  # no epoch logged twice
    # Epoch 2's sums before the kill came back with the checkpoint: its loss and accuracy are the uninterrupted run's.
    assert (killed / "metrics.jsonl").read_bytes() == (tmp_path / "straight" / "metrics.jsonl").read_bytes()


def test_corrupt_or_foreign_checkpoint_and_other_epochs_are_refused(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(run), "--json"]) == 0
    capsys.readouterr()
    assert main(["train", *SMALL, "--epochs", "1", "--seed", "1", "--out", str(run), "--json"]) == 2
    one_line_error(capsys.readouterr().err, "was written by a different run (seed: saved 0, now 1)", prog=PROG)
    assert main(["train", *SMALL, "--epochs", "3", "--out", str(run), "--json"]) == 2
    one_line_error(capsys.readouterr().err, "argument --epochs: must be 1, as when checkpoint", "got 3", prog=PROG)
    for file in (run / "checkpoints").glob("*/state/**/*"):  # every checkpoint: none to go back to
        if file.is_file() and file.stat().st_size > 0:
            file.write_bytes(b"\0garbage")
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(run), "--json"]) == 2
    one_line_error(capsys.readouterr().err, f"no checkpoint in {run / 'checkpoints'} can be restored", prog=PROG)


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(
        [
            "train",
            *SMALL,
            "--lr",
            "1e30",
            "--warmup-epochs",
            "0",
            "--checkpoint-every",
            "1",
            "--out",
            str(run),
            "--json",
        ]
    )
    line = one_line_error(capsys.readouterr().err, prog=PROG)
    assert code == 1
    assert "the loss became nan at step" in line or "the loss became inf at step" in line
    step = int(line.split(" at step ")[1].split()[0])
    kept = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    assert kept and max(kept) == step - 1 and f"last good checkpoint is step {step - 1}" in line


def test_imagenet_layout_with_unreadable_images_trains_and_names_them(tmp_path, capsys):
    """ROOT/train and ROOT/val: trained on one, evaluated on the other. A truncated training image is
    replaced and a broken evaluation image left out, both named in the summary."""
    root = write_image_folder(
        tmp_path / "imagenet", classes=2, per_class=8, size=(48, 36), layout="imagenet", val_per_class=3
    )
    cut = root / "train" / "class_001" / "00003.jpg"
    cut.write_bytes(cut.read_bytes()[:300])
    (root / "val" / "class_000" / "00001.jpg").write_bytes(b"broken")
    assert (
        main(
            [
                "train",
                "--data",
                str(root),
                "--image-size",
                "16",
                "--batch-size",
                "4",
                "--epochs",
                "2",
                "--workers",
                "0",
                "--out",
                str(tmp_path / "run"),
                "--json",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 8  # 16 training images in batches of 4, twice
    assert summary["skipped_images"] == sorted([str(cut), str(root / "val" / "class_000" / "00001.jpg")])
    assert summary["test_accuracy"] * 5 == pytest.approx(round(summary["test_accuracy"] * 5))  # of 5 readable


def test_flags_are_the_settings_fields():
    """Every field of Config and RunOptions is a flag; nothing given means the dataclasses' defaults."""
    train = next(a for a in build_parser()._subparsers._group_actions[0].choices.items() if a[0] == "train")[1]
    dests = {a.dest for a in train._actions}
    assert {f.name for cls in (Config, RunOptions) for f in fields(cls)} <= dests
    args = build_parser().parse_args(["train"])
    assert {k for k in vars(args) if k in {f.name for f in fields(Config)}} == set()  # defaults stay the dataclass's
    args = build_parser().parse_args(["train", "--lr", "0.5", "--no-nesterov", "--workers", "3"])
    assert (args.learning_rate, args.nesterov, args.workers) == (0.5, False, 3)


@pytest.mark.parametrize(
    "setup,args,fragment",
    [
        (
            lambda root: (root / "empty").mkdir(),
            ["--data", "{root}/empty"],
            "argument --data: {root}/empty has no class folders",
        ),
        (
            lambda root: (root / "d" / "cls").mkdir(parents=True),
            ["--data", "{root}/d"],
            "argument --data: class folder {root}/d/cls has no images",
        ),
        (
            lambda root: (
                write_image_folder(root / "v", 2, 2, (20, 16), layout="imagenet", val_per_class=1),
                (root / "v" / "val" / "class_001").rename(root / "v" / "val" / "other"),
            ),
            ["--data", "{root}/v"],
            "argument --data: {root}/v/val has other classes than {root}/v/train",
        ),
        (
            lambda root: write_image_folder(root / "few", 2, 5, (20, 16)),
            ["--data", "{root}/few", "--batch-size", "16"],
            "argument --batch-size: 16 is larger than the 8 training images",
        ),
        (
            lambda root: write_image_folder(root / "one", 1, 10, (20, 16)),
            ["--data", "{root}/one"],
            "argument --data: {root}/one has only one class, 'class_000': a classifier needs at least two classes",
        ),
        (
            lambda root: write_image_folder(root / "one", 1, 4, (20, 16), layout="imagenet", val_per_class=1),
            ["--data", "{root}/one"],
            "argument --data: {root}/one/train has only one class, 'class_000'",
        ),
        (lambda root: None, ["--data", "{root}/missing"], "argument --data: {root}/missing is not a directory"),
        (lambda root: None, ["--model", "resnet51"], "argument --model: must be one of"),
        (lambda root: None, ["--batch-size", "0"], "argument --batch-size: must be a positive integer; got 0"),
        (lambda root: None, ["--label-smoothing", "1.5"], "argument --label-smoothing: must be in [0, 1); got 1.5"),
        (lambda root: None, ["--drop-path", "1"], "argument --drop-path: must be in [0, 1); got 1.0"),
        (lambda root: None, ["--drop-rate", "-0.1"], "argument --drop-rate: must be in [0, 1); got -0.1"),
        (lambda root: None, ["--lr", "abc"], "argument --lr: must be a finite number >= 0; got 'abc'"),
        (lambda root: None, ["--lr", "-1"], "argument --lr: must be a finite number >= 0; got -1.0"),
        (lambda root: None, ["--workers", "-1"], "argument --workers: must be an integer >= 0; got -1"),
        (
            lambda root: None,
            ["--batch-size", "5000"],
            "argument --batch-size: 5000 is larger than the 1438 training images",
        ),
    ],
)
def test_bad_input_is_one_line(setup, args, fragment, tmp_path, capsys):
    setup(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    args = [a.format(root=tmp_path) for a in args]
    assert main(["train", *args, "--out", str(tmp_path / "run")]) == 2
    one_line_error(capsys.readouterr().err, fragment.format(root=tmp_path), prog=PROG)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing half-written


def test_batch_that_does_not_divide_over_the_devices(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    done = subprocess.run(
        [sys.executable, "-m", "resnet_bottleneck", "train", "--batch-size", "30", "--out", str(tmp_path / "run")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    one_line_error(done.stderr, "argument --batch-size: 30 does not divide over 4 devices", prog=PROG)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag", [True, False])
def test_reuse_freed_memory_only_when_asked_and_before_training(flag, tmp_path, monkeypatch):
    import resnet_bottleneck.training as training
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
