"""The resnet-bottleneck command: through a subprocess, as a user runs it, and in-process for bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import one_line_error
from textbook import textbook_bottleneck_forward

import resnet_bottleneck as rb
from resnet_bottleneck.cli import COMMANDS, main
from resnet_bottleneck.forward import worked_example_input

SCRIPT = Path(sys.executable).parent / "resnet-bottleneck"


def run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "resnet_bottleneck", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_default_runs_the_worked_example():
    result = subprocess.run([str(SCRIPT), "forward", "--json"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["seed"], report["mid_features"], report["out_features"], report["input_shape"]) == (
        0,
        2,
        4,
        [4, 4, 4],
    )
    assert [s["shape"] for s in report["stages"]] == [
        [1, 4, 4, 4],
        [1, 4, 4, 2],
        [1, 4, 4, 2],
        [1, 4, 4, 2],
        [1, 4, 4, 2],
        [1, 4, 4, 4],
        [1, 4, 4, 4],
        [64],
    ]
    expected = textbook_bottleneck_forward(0, jnp.asarray(worked_example_input()), 2, 4)
    np.testing.assert_allclose(report["output"], expected, atol=1e-5)


def test_text_walkthrough_names_every_stage():
    result = run("forward")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "ResNet bottleneck block: seed 0, mid_features 2, out_features 4"
    steps = [line for line in lines if line[:2] in {f"{i}." for i in range(1, 9)}]
    assert [s.split()[0] for s in steps] == [f"{i}." for i in range(1, 9)]
    assert "Conv1x1(2)" in steps[1] and "(1, 4, 4, 2)" in steps[1]
    assert "Conv3x3(2, 'SAME')" in steps[3]
    assert "Conv1x1(4)" in steps[5] and "(1, 4, 4, 4)" in steps[5]
    assert "(+ x_b)" in steps[6] and "(64,)" in steps[7]
    assert "Output (64 values):" in result.stdout


def test_input_and_output_files(tmp_path):
    x = np.random.default_rng(1).standard_normal((5, 3, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    result = run(
        "forward",
        "--input",
        "x.npy",
        "--seed",
        "4294967295",
        "--mid",
        "9",
        "--out",
        "6",
        "--output",
        "y.npy",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    y = np.load(tmp_path / "y.npy")
    np.testing.assert_array_equal(y, rb.resnet_bottleneck_forward(2**32 - 1, x, 9, 6))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy", "y.npy"]  # no temporary left behind


def test_bad_input_through_the_process(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((3, 3, 3), np.float32))
    result = run("forward", "--input", "x.npy", "--output", "y.npy", cwd=tmp_path)
    assert result.returncode == 2
    one_line_error(result.stderr, "x must have out_features=4 channels", "(3, 3, 3)")
    assert not (tmp_path / "y.npy").exists()  # nothing written on failure
    result = run("forward", "--seed", "-1")
    assert result.returncode == 2
    one_line_error(result.stderr, "argument --seed: must be an integer in [0, 2**32); got -1")


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["--bogus"], ["the following arguments are required: COMMAND"]),
        (["backward"], ["invalid choice: 'backward'"]),
        (["forward", "--mid", "x"], ["argument --mid: must be a positive integer; got 'x'"]),
        (["forward", "--mid", "0"], ["argument --mid: must be a positive integer; got 0"]),
        (["forward", "--out", "-4"], ["argument --out: must be a positive integer; got -4"]),
        (["forward", "--seed", "4294967296"], ["argument --seed: must be an integer in [0, 2**32); got 4294967296"]),
        (["forward", "--input", "missing.npy"], ["argument --input: no such file: missing.npy"]),
        (["forward", "--input", "notes.txt"], ["argument --input: cannot read notes.txt as a .npy array"]),
        (["forward", "--input", "objects.npy"], ["argument --input: cannot read objects.npy", "pickle"]),
        (["forward", "--input", "nan.npy"], ["argument --input: x must be finite; got 1 NaN/Inf value(s)"]),
        (
            ["forward", "--input", "flat.npy", "--out", "3"],
            ["argument --input: x must be a 3-D array (H, W, C); got shape (12,) (1-D)"],
        ),
        (
            ["forward", "--output", "no/such/dir/y.npy"],
            ["argument --output: cannot write no/such/dir/y.npy: directory no/such/dir does not exist"],
        ),
        (["forward", "--bogus"], ["unrecognized arguments: --bogus"]),
    ],
)
def test_bad_input_is_one_line_and_status_2(args, fragments, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("not an array")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    nan = np.ones((2, 2, 4), np.float32)
    nan[1, 0, 2] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    np.save(tmp_path / "flat.npy", np.ones(12, np.float32))
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    one_line_error(captured.err, *fragments)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flat.npy", "nan.npy", "notes.txt", "objects.npy"]


#: One bad input per subcommand (run in an empty directory holding only ``w.ckpt``) and what its
#: one-line error must hold: the argument, the value given and what was expected. A subcommand
#: in ``cli.COMMANDS`` without a row here fails the test below.
BAD_INPUT = {
    "forward": (["--mid", "0"], ["argument --mid: ", "got 0", "must be a positive integer"]),
    "cost": (["--model", "resnet5"], ["argument --model: ", "got 'resnet5'", "must be one of resnet18, ", "resnet50?"]),
    "convert": (
        ["w.ckpt", "w.npz", "--model", "resnet18"],
        ["argument OUT: ", "got w.npz", "must end in .safetensors"],
    ),
    "export": (["w.ckpt", "w.npz"], ["argument OUT: ", "got w.npz", "must end in .safetensors"]),
    "evaluate": (
        ["--weights", "w.ckpt", "--model", "resnet18"],
        ["argument --weights: ", "got w.ckpt", "must end in .safetensors, .pth or .pt"],
    ),
    "predict": (
        ["a.png", "--weights", "w.ckpt", "--model", "resnet18"],
        ["argument --weights: ", "got w.ckpt", "must end in .safetensors, .pth or .pt"],
    ),
    "train": (["--epochs", "-1"], ["argument --epochs: ", "got -1", "must be a positive integer"]),
    "serve": (
        ["--weights", "w.ckpt", "--max-batch", "0"],
        ["argument --max-batch: ", "got 0", "must be a positive integer"],
    ),
}


@pytest.mark.parametrize("command", [module.__name__.rpartition(".")[2] for module in COMMANDS])
def test_every_subcommand_reports_bad_input_in_one_style(command, tmp_path, capsys, monkeypatch):
    assert command in BAD_INPUT, f"add one bad input of the {command!r} subcommand to BAD_INPUT"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w.ckpt").write_bytes(b"not weights")
    args, fragments = BAD_INPUT[command]
    assert main([command, *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    one_line_error(captured.err, *fragments, prog=f"resnet-bottleneck {command}")
    assert [p.name for p in tmp_path.iterdir()] == ["w.ckpt"]  # nothing written


def test_library_import_changes_no_global_settings():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    program = Path(__file__).resolve().parent / "programs" / "import_side_effects.py"
    result = subprocess.run([sys.executable, str(program)], capture_output=True, text=True, env=env, timeout=120)
    assert result.stdout.strip() == "True", result.stderr


def test_no_arguments_prints_the_help(capsys):
    """``resnet-bottleneck`` alone: the help, on stdout, exit status 0 (not a usage error)."""
    result = run()
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.startswith("usage: resnet-bottleneck ")
    commands = [c.__name__.rsplit(".", 1)[-1] for c in COMMANDS]
    assert all(f"    {name}" in result.stdout for name in commands), result.stdout
    assert main([]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("usage: resnet-bottleneck ") and captured.err == ""


def test_version_is_the_packages():
    import tomllib

    written = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["version"]
    result = run("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"resnet-bottleneck {written}\n"  # pyproject.toml is the one place it is written
    assert rb.__version__ == written


def test_written_files_get_the_permissions_the_umask_gives(tmp_path, capsys):
    """Every file train, export, convert and forward write is ``0o666 & ~umask``, as any program's new
    file: 0o644 under umask 022 (others on shared storage can read the model), 0o600 under 077."""
    import stat

    import safetensors.numpy

    from resnet_bottleneck.io.safetensors import load_variables
    from resnet_bottleneck.io.torchvision import to_torchvision

    def write(out, run):
        out.mkdir()
        assert main(["export", str(run), str(out / "m.onnx"), "--image-size", "16"]) == 0
        assert main(["export", str(run), str(out / "m.safetensors")]) == 0
        convert = ["convert", str(tmp_path / "tv.safetensors"), str(out / "c.safetensors"), "--model", "resnet_tiny"]
        assert main(convert) == 0
        assert main(["forward", "--output", str(out / "y.npy")]) == 0

    def modes(folder):
        return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*") if p.is_file()}

    run = tmp_path / "a" / "run"
    train = ["--image-size", "16", "--batch-size", "256", "--epochs", "1", "--checkpoint-every", "5", "--keep", "1"]
    previous = os.umask(0o022)
    try:
        assert main(["train", *train, "--out", str(run), "--json"]) == 0
        tree = load_variables(run / "model.safetensors")
        tree = tree[0] if isinstance(tree, tuple) else tree
        safetensors.numpy.save_file(to_torchvision(tree, "resnet_tiny", as_numpy=True), tmp_path / "tv.safetensors")
        write(tmp_path / "a" / "out", run)
        os.umask(0o077)
        write(tmp_path / "b", run)
    finally:
        os.umask(previous)
    capsys.readouterr()
    shared, private = modes(tmp_path / "a"), modes(tmp_path / "b")
    expected = {"model.safetensors", "metrics.jsonl", "curves.png", "m.onnx", "m.safetensors", "c.safetensors", "y.npy"}
    assert expected <= {Path(p).name for p in shared} and any(p.startswith("run/checkpoints/") for p in shared)
    assert {p: m for p, m in shared.items() if m != 0o644} == {}
    assert sorted(private) == ["c.safetensors", "m.onnx", "m.safetensors", "y.npy"]
    assert {p: m for p, m in private.items() if m != 0o600} == {}
    assert not [p for p in [*shared, *private] if Path(p).name.startswith(".")]  # no temporary file left
