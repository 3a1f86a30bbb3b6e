"""Faults around a run's directory: one run per ``--out`` (a live holder refuses a second run, a dead
one's directory is taken over), damaged checkpoints (truncated, bit-flipped, half-copied: the run
resumes from the newest good one, to the uninterrupted run's result; none good: exit 2), and failed
writes (a full disk: exit 1 naming the path, the previous checkpoint kept, nothing half-written)."""

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import SMALL_TRAIN as SMALL
from helpers import one_line_error

from resnet_bottleneck.cli import main
from resnet_bottleneck.io.safetensors import load_variables
from resnet_bottleneck.training import checkpoints as checkpoints_module

#: One epoch of SMALL: 22 steps, checkpoints at 20 and 22 kept.
ONE_EPOCH = [*SMALL, "--epochs", "1"]

HOLDER = """
import sys
from resnet_bottleneck.training import rundir
with rundir.hold(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


def hold_elsewhere(out: Path) -> subprocess.Popen:
    """Another process holding ``out`` as a live run does, until its stdin closes (or it is killed)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline() == "held\n"
    return holder


def release(holder: subprocess.Popen, kill: bool = False) -> None:
    """Ends the holder: SIGKILL (the lock let go by the kernel alone), or its stdin closed (a clean end)."""
    if kill:
        holder.send_signal(signal.SIGKILL)
    holder.communicate(timeout=30)


def tensors(path) -> dict:
    variables, _ = load_variables(path)
    return {k: np.asarray(v) for k, v in _flat(variables).items()}


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}/") if isinstance(v, dict) else {prefix + k: v})
    return out


def assert_same_tensors(a, b):
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        np.testing.assert_array_equal(ta[k], tb[k], err_msg=k)


def logged(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# --- one run per directory -------------------------------------------------------------


def test_a_live_run_refuses_a_second_and_a_dead_ones_directory_is_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    holder = hold_elsewhere(out)
    try:
        assert main(["train", *ONE_EPOCH, "--out", str(out), "--json"]) == 2
        line = one_line_error(
            capsys.readouterr().err, str(out), f"process {holder.pid} on {socket.gethostname()}", "in use by"
        )
        assert "resnet-bottleneck train: error:" in line
        assert out.is_dir() and (out / "run.lock").exists()  # the other run's directory is left alone
        assert not (out / "checkpoints").exists()  # and nothing of this run was written there
    finally:
        release(holder, kill=True)
    # Its holder killed: the directory is taken over, said in one line, and the run goes on.
    assert main(["train", *ONE_EPOCH, "--out", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    said = [line for line in captured.err.splitlines() if "taking over" in line]
    assert len(said) == 1 and str(out) in said[0] and f"process {holder.pid} on {socket.gethostname()}" in said[0]
    assert json.loads(captured.out)["steps"] == 22
    assert (out / "run.lock").read_text() == ""  # ended, not dead: the next run starts without a word
    assert main(["train", *ONE_EPOCH, "--out", str(out), "--json"]) == 0
    assert "taking over" not in capsys.readouterr().err


def test_a_refused_train_never_removes_the_holders_directory(tmp_path, capsys, monkeypatch):
    """train removes an OUT it made when its run fails before a checkpoint; not one another run holds
    (two commands started at once both see OUT missing)."""
    out = tmp_path / "run"
    real_exists = Path.exists
    monkeypatch.setattr(Path, "exists", lambda self: False if self == out else real_exists(self))  # "created"
    holder = hold_elsewhere(out)
    try:
        assert main(["train", *ONE_EPOCH, "--out", str(out)]) == 2
        one_line_error(capsys.readouterr().err, "in use by", str(out))
        assert real_exists(out / "run.lock")
    finally:
        release(holder)


def test_readers_of_a_held_run_read_its_newest_checkpoint_without_waiting(digits_run, tmp_path, capsys):
    """export and evaluate never take the lock: a live run's directory is read while it holds it."""
    run, summary = digits_run
    holder = hold_elsewhere(run)
    try:
        started = time.perf_counter()
        assert main(["export", str(run), str(tmp_path / "m.safetensors")]) == 0
        assert main(["evaluate", "--weights", str(run), "--json"]) == 0
        assert time.perf_counter() - started < 60
        out = capsys.readouterr().out
        assert json.loads(out.splitlines()[-1])["top1"] == summary["test_accuracy"]  # the newest: step 44
    finally:
        release(holder)
    assert_same_tensors(tmp_path / "m.safetensors", run / "model.safetensors")


# --- damaged checkpoints ---------------------------------------------------------------


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    """An uninterrupted one-epoch run (checkpoints 20 and 22): the result a resumed run must equal."""
    run = tmp_path_factory.mktemp("one_epoch") / "run"
    assert main(["train", *ONE_EPOCH, "--out", str(run), "--json"]) == 0
    return run


def biggest_file(step_dir: Path) -> Path:
    return max((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def truncate(step_dir: Path) -> str:
    path = biggest_file(step_dir)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return "truncated?"


def flip_a_bit(step_dir: Path) -> str:
    path = biggest_file(step_dir)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x04
    path.write_bytes(bytes(data))
    return "does not match its SHA-256"


def half_copied(step_dir: Path) -> str:
    biggest_file(step_dir).unlink()
    return "is missing"


@pytest.mark.parametrize("damage", [truncate, flip_a_bit, half_copied])
def test_a_damaged_newest_checkpoint_is_skipped_and_the_run_ends_as_uninterrupted(one_epoch, tmp_path, damage, capsys):
    run = tmp_path / "run"
    shutil.copytree(one_epoch, run)
    (run / "model.safetensors").unlink()
    why = damage(run / "checkpoints" / "22")
    assert main(["train", *ONE_EPOCH, "--out", str(run), "--json"]) == 0
    captured = capsys.readouterr()
    skipped = [line for line in captured.err.splitlines() if "skipped checkpoint" in line]
    assert len(skipped) == 1, captured.err
    assert "step 22" in skipped[0] and why in skipped[0] and "using step 20" in skipped[0]
    assert json.loads(captured.out)["resumed_from_step"] == 20
    assert_same_tensors(run / "model.safetensors", one_epoch / "model.safetensors")
    held_out = ("epoch", "step", "test_accuracy", "test_top5", "test_loss")  # functions of the final weights
    ours, theirs = ([{k: r[k] for k in held_out} for r in logged(d)] for d in (run, one_epoch))
    assert ours == theirs
    # Set aside, out of the way of the step written again, which verifies.
    assert (run / "checkpoints" / "22.damaged").is_dir()
    checkpoints_module.Checkpoints(run / "checkpoints", None, None).verify(22)


def test_readers_skip_a_damaged_newest_checkpoint_and_say_so(one_epoch, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(one_epoch, run)
    flip_a_bit(run / "checkpoints" / "22")
    assert main(["export", str(run), str(tmp_path / "m20.safetensors")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "skipped checkpoint step 22" in err[0] and "using step 20" in err[0]
    _, metadata = load_variables(tmp_path / "m20.safetensors")
    assert metadata["step"] == "20"
    assert (run / "checkpoints" / "22").is_dir()  # a reader changes nothing in the run's directory
    assert main(["evaluate", "--weights", str(run), "--json"]) == 0
    assert "skipped checkpoint step 22" in capsys.readouterr().err


def test_no_checkpoint_restores_exit_2_naming_the_directory(one_epoch, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(one_epoch, run)
    (run / "model.safetensors").unlink()
    flip_a_bit(run / "checkpoints" / "22")
    truncate(run / "checkpoints" / "20")
    assert main(["train", *ONE_EPOCH, "--out", str(run), "--json"]) == 2
    line = one_line_error(
        capsys.readouterr().err, f"no checkpoint in {run / 'checkpoints'} can be restored", "step 22", "step 20"
    )
    assert "resnet-bottleneck train: error:" in line
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["20", "22"]  # nothing set aside
    assert main(["export", str(run), str(tmp_path / "m.safetensors")]) == 2
    one_line_error(capsys.readouterr().err, "argument IN:", f"no checkpoint in {run / 'checkpoints'}")
    assert not (tmp_path / "m.safetensors").exists()


def test_a_foreign_checkpoint_is_not_damage(one_epoch, tmp_path, capsys):
    """A checkpoint of other settings stays the clear error it was, not a reason to go back further."""
    run = tmp_path / "run"
    shutil.copytree(one_epoch, run)
    assert main(["train", *ONE_EPOCH, "--seed", "1", "--out", str(run), "--json"]) == 2
    one_line_error(capsys.readouterr().err, "was written by a different run (seed: saved 0, now 1)")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["20", "22"]


# --- failed writes ---------------------------------------------------------------------


def test_a_full_disk_at_a_checkpoint_stops_with_exit_1_and_keeps_the_previous_one(digits_run, tmp_path, monkeypatch):
    """ENOSPC injected into orbax's write of checkpoint 10 (its JSON items: the lowest write in Python)."""
    from etils import epath

    run, _ = digits_run
    out = tmp_path / "run"
    gpath = type(epath.Path("/"))
    real = gpath.write_text

    def write_text(self, *args, **kwargs):
        if "10.orbax-checkpoint-tmp" in str(self):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(gpath, "write_text", write_text)
    code = main(["train", *SMALL, "--out", str(out), "--json"])
    monkeypatch.undo()
    assert code == 1
    # The failure named, the step before kept; nothing of step 10 where a reader looks.
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["5"]
    checkpoints_module.Checkpoints(out / "checkpoints", None, None).verify(5)
    assert not (out / "model.safetensors").exists()
    # The same command resumes from step 5 and ends as the uninterrupted run.
    assert main(["train", *SMALL, "--out", str(out), "--json"]) == 0
    assert_same_tensors(out / "model.safetensors", run / "model.safetensors")


def test_a_full_disk_message_is_one_line_naming_the_checkpoint(tmp_path, monkeypatch, capsys):
    from etils import epath

    gpath = type(epath.Path("/"))
    real = gpath.write_text

    def write_text(self, *args, **kwargs):
        if "5.orbax-checkpoint-tmp" in str(self):
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(gpath, "write_text", write_text)
    out = tmp_path / "run"
    assert main(["train", *ONE_EPOCH, "--out", str(out), "--json"]) == 1
    one_line_error(
        capsys.readouterr().err,
        f"cannot write checkpoint {out / 'checkpoints' / '5'}: Input/output error (EIO)",
        "no earlier checkpoint",
        prog="resnet-bottleneck train",
    )
    assert list((out / "checkpoints").iterdir()) == []


def failing_fsync(monkeypatch, name: str):
    """``os.fsync`` fails with ENOSPC for the temporary file that ``name`` is written to (then renamed)."""
    real = os.fsync

    def fsync(fd):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(f".{name}."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_a_full_disk_at_the_model_file_stops_with_exit_1_leaving_no_part_of_it(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    failing_fsync(monkeypatch, "model.safetensors")
    assert main(["train", *ONE_EPOCH, "--out", str(out), "--json"]) == 1
    one_line_error(
        capsys.readouterr().err, f"cannot write {out / 'model.safetensors'}: No space left on device", prog=None
    )
    monkeypatch.undo()
    assert not [p.name for p in out.iterdir() if "model" in p.name]  # neither the file nor a temporary one
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["20", "22"]
    assert main(["train", *ONE_EPOCH, "--out", str(out), "--json"]) == 0  # resumes at the end: writes it
    assert (out / "model.safetensors").is_file()


def test_a_full_disk_at_an_onnx_export_exit_1_leaving_no_part_of_it(digits_run, tmp_path, monkeypatch, capsys):
    run, _ = digits_run
    failing_fsync(monkeypatch, "m.onnx")
    assert main(["export", str(run), str(tmp_path / "m.onnx")]) == 1
    one_line_error(capsys.readouterr().err, f"cannot write {tmp_path / 'm.onnx'}: No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_a_step_without_checksums_is_restored_as_orbax_reads_it(one_epoch, tmp_path, capsys):
    """A run from before the sums, or killed between orbax's rename of the step and their write: accepted."""
    run = tmp_path / "run"
    shutil.copytree(one_epoch, run)
    (run / "checkpoints" / "22" / "_sha256.json").unlink()
    assert main(["export", str(run), str(tmp_path / "m.safetensors")]) == 0
    assert "skipped" not in capsys.readouterr().err
    assert_same_tensors(tmp_path / "m.safetensors", one_epoch / "model.safetensors")


@pytest.mark.parametrize("where", ["a file", "under a file", "lock is a folder"])
def test_an_output_directory_that_cannot_hold_the_run_is_bad_input(where, tmp_path, capsys, monkeypatch):
    """An ``--out`` that is a file, lies under one, or whose ``run.lock`` is a folder: exit 2, one line naming
    it, no traceback (the file system's refusal is the user's input, not a bug of ours)."""
    monkeypatch.delenv("RESNET_BOTTLENECK_DEBUG", raising=False)
    (tmp_path / "file").write_text("not a folder")
    out = {"a file": tmp_path / "file", "under a file": tmp_path / "file" / "run", "lock is a folder": tmp_path / "o"}
    if where == "lock is a folder":
        (out[where] / "run.lock").mkdir(parents=True)
    assert main(["train", *SMALL, "--out", str(out[where])]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err
    one_line_error(err, "cannot serve as the run's output directory", prog="resnet-bottleneck train")
    assert (tmp_path / "file").read_text() == "not a folder"


def test_a_full_disk_met_inside_an_argument_is_a_failed_write(capsys, monkeypatch):
    """An ENOSPC escaping from the handling of one argument is not that argument's fault: exit 1, one line."""
    from resnet_bottleneck.cli import _common

    def fill(*args, **kwargs):
        with _common.argument("OUT"):
            raise OSError(errno.ENOSPC, "No space left on device", "/tmp/q.onnx")

    monkeypatch.setattr("resnet_bottleneck.cli.forward.run", fill)
    assert main(["forward"]) == 1
    one_line_error(capsys.readouterr().err, "cannot write /tmp/q.onnx: No space left on device")
