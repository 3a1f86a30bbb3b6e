"""Bugs look like bugs, bad input like bad input, and hostile files stay refused (issue 25, items 5 and 7).

- The library's public functions raise :mod:`resnet_bottleneck.errors` classes for bad input (still
  ``ValueError``/``TypeError``/``OSError`` for callers that catch those).
- The command line tells a library error in one line with its status; any other exception is a bug:
  its traceback, a line asking to report it, exit status 1. ``--debug`` and ``RESNET_BOTTLENECK_DEBUG``
  show an input error's traceback too.
- Every command that reads weights refuses every hostile file (random bytes, a safetensors header
  claiming 2**60 bytes, tensor offsets that lie, a pickle that would run code, a random ``.onnx``) in one
  line, exit status 2, within seconds and without a large allocation; an image over PIL's pixel limit
  (a decompression bomb) is one unreadable image, refused before it is decoded.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers import one_line_error

from resnet_bottleneck import errors
from resnet_bottleneck.cli import main

REPORT = "please report this with the traceback above"


def bug_report(stderr: str, *fragments: str) -> None:
    """The CLI's bug contract: a traceback holding ``fragments``, then one last line asking for a report."""
    assert "Traceback (most recent call last)" in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("resnet-bottleneck ") and "internal error" in last and REPORT in last, last
    for fragment in fragments:
        assert fragment in stderr, (fragment, stderr)


# --- bugs -------------------------------------------------------------------------------


def _raiser(err: BaseException):
    def run(*args, **kwargs):
        raise err

    return run


@pytest.mark.parametrize(
    "err",
    [
        ZeroDivisionError("division by zero"),
        KeyError("conv1"),
        ValueError("a plain ValueError deep inside"),
        ImportError("cannot import name 'helper' from partially initialized module"),  # not a missing extra
    ],
    ids=lambda err: type(err).__name__,
)
def test_a_bug_in_a_command_shows_its_traceback_and_asks_for_a_report(err, capsys, monkeypatch):
    from resnet_bottleneck.cli import forward

    monkeypatch.setattr(forward, "run", _raiser(err))
    assert main(["forward"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    bug_report(captured.err, type(err).__name__, str(err.args[0]), "raise err")


def test_a_plain_value_error_from_the_library_is_a_bug_not_bad_weights(tmp_path, capsys, monkeypatch):
    """Not ``argument --weights: ...``: the CLI's argument wrapper passes only the library's input errors."""
    import resnet_bottleneck.inference

    monkeypatch.chdir(tmp_path)
    (tmp_path / "w.safetensors").write_bytes(b"")
    monkeypatch.setattr(resnet_bottleneck.inference, "load_model", _raiser(ValueError("not from an input check")))
    assert main(["predict", "a.png", "--weights", "w.safetensors"]) == 1
    captured = capsys.readouterr()
    bug_report(captured.err, "ValueError: not from an input check")
    assert "argument --weights" not in captured.err


def test_a_keyboard_interrupt_is_not_told_as_a_bug(capsys, monkeypatch):
    from resnet_bottleneck.cli import forward

    monkeypatch.setattr(forward, "run", _raiser(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        main(["forward"])
    assert "internal error" not in capsys.readouterr().err


def test_a_bug_in_a_real_subprocess_exits_1_with_the_traceback(tmp_path):
    """The installed entry point's path end to end: ``python -m resnet_bottleneck`` with a bug injected."""
    program = (
        "import sys, resnet_bottleneck.forward as f\n"
        "f.resnet_bottleneck_forward = lambda *a: 1 / 0\n"
        "from resnet_bottleneck.cli import main\n"
        "sys.exit(main(['forward']))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    env.pop("RESNET_BOTTLENECK_DEBUG", None)
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 1, result.stderr
    bug_report(result.stderr, "ZeroDivisionError", "<lambda>")


# --- input errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "err,status",
    [
        (errors.InputError("x must be finite"), 2),
        (errors.FileError("no such file: a.npy"), 2),
        (errors.CheckpointError("no checkpoint of runs/x can be restored"), 2),
        (errors.WriteError("cannot write y.npy: no space left on device"), 1),
        (errors.DivergedError("the loss is nan at step 3"), 1),
        (errors.DependencyError("onnxruntime is needed for ONNX: pip install 'resnet-bottleneck[onnx]'"), 2),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_a_library_error_is_one_line_with_its_status(err, status, capsys, monkeypatch):
    from resnet_bottleneck.cli import forward

    monkeypatch.delenv("RESNET_BOTTLENECK_DEBUG", raising=False)
    monkeypatch.setattr(forward, "run", _raiser(err))
    assert main(["forward"]) == status
    one_line_error(capsys.readouterr().err, str(err), prog="resnet-bottleneck forward")


def _bad_input(tmp_path) -> list[str]:
    np.save(tmp_path / "flat.npy", np.ones(12, np.float32))  # the library's own check refuses it
    return ["forward", "--input", str(tmp_path / "flat.npy"), "--out", "3"]


def test_an_input_error_is_one_line_without_a_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RESNET_BOTTLENECK_DEBUG", raising=False)
    assert main(_bad_input(tmp_path)) == 2
    one_line_error(capsys.readouterr().err, "argument --input: x must be a 3-D array", prog="resnet-bottleneck forward")


@pytest.mark.parametrize("how", ["--debug", "RESNET_BOTTLENECK_DEBUG=1"])
def test_debug_shows_an_input_errors_traceback_and_keeps_its_status(how, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RESNET_BOTTLENECK_DEBUG", raising=False)
    if how == "--debug":
        argv = ["--debug", *_bad_input(tmp_path)]
    else:
        monkeypatch.setenv("RESNET_BOTTLENECK_DEBUG", "1")
        argv = _bad_input(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert "_checks.py" in err  # the library's own check, behind the command line's error
    last = err.strip().splitlines()[-1]
    assert last.startswith("resnet-bottleneck forward: error: argument --input: x must be a 3-D array"), last
    assert "internal error" not in err


def test_debug_variable_set_to_0_is_off(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RESNET_BOTTLENECK_DEBUG", "0")
    assert main(_bad_input(tmp_path)) == 2
    one_line_error(capsys.readouterr().err, "x must be a 3-D array")


# --- the library's own classes ------------------------------------------------------------


def _library_calls(tmp: Path):
    """(call, the errors class it must raise) over public entry points, each given one bad value."""
    import resnet_bottleneck as rb
    from resnet_bottleneck.inference import image_paths, predict_files, preprocess
    from resnet_bottleneck.io import class_names, load_model_file
    from resnet_bottleneck.io.onnx import load_onnx
    from resnet_bottleneck.io.torchvision import load_state_dict

    x = np.ones((4, 4, 4), np.float32)
    (tmp / "junk.safetensors").write_bytes(b"\x01" * 64)
    return [
        (lambda: rb.create_model("resnet5"), errors.InputError),
        (lambda: rb.create_model(50), errors.InputTypeError),
        (lambda: rb.create_model("resnet18", num_classes=0), errors.InputError),
        (lambda: rb.create_model("resnet18", num_classes="10"), errors.InputTypeError),
        (lambda: rb.create_model("resnet18", bogus=1), errors.InputTypeError),
        (lambda: rb.create_model("resnet50", groups=2), errors.InputTypeError),
        (lambda: rb.resnet_bottleneck_forward(0, x, 0, 4), errors.InputError),
        (lambda: rb.resnet_bottleneck_forward(0, x, "2", 4), errors.InputTypeError),
        (lambda: rb.resnet_bottleneck_forward(0, x[0], 2, 4), errors.InputError),
        (lambda: rb.resnet_bottleneck_forward(0, "x", 2, 4), errors.InputTypeError),
        (lambda: rb.resnet_bottleneck_forward(-1, x, 2, 4), errors.InputError),
        (lambda: rb.resnet_bottleneck_forward(0, x[..., :3], 2, 4), errors.InputError),
        (lambda: rb.fold_batchnorm("model", {}), errors.InputTypeError),
        (lambda: rb.list_models(3), errors.InputTypeError),
        (lambda: rb.load_model(tmp / "missing.safetensors"), errors.FileError),
        (lambda: rb.load_model(tmp), errors.InputError),  # a directory without a run
        (lambda: load_model_file(tmp / "junk.safetensors"), errors.InputError),
        (lambda: load_state_dict(tmp / "missing.pth"), errors.FileError),
        (lambda: load_state_dict(tmp / "w.ckpt"), errors.InputError),
        (lambda: load_onnx(tmp / "missing.onnx"), errors.FileError),
        (lambda: image_paths([tmp / "missing.png"]), errors.FileError),
        (lambda: preprocess(tmp / "missing.png"), errors.ImageError),
        (lambda: preprocess(tmp / "missing.png", image_size=0), errors.InputError),
        (lambda: predict_files(lambda b: b, [], top=0), errors.InputError),
        (lambda: predict_files(lambda b: b, [], crop_pct="0.9"), errors.InputTypeError),
        (lambda: class_names(3, {"classes": "not json"}), errors.InputError),
        (lambda: class_names(3, {"classes": '["a"]'}), errors.InputError),
    ]


def test_public_functions_raise_the_librarys_input_errors(tmp_path):
    for i, (call, expected) in enumerate(_library_calls(tmp_path)):
        with pytest.raises(errors.InputError) as caught:
            call()
        assert isinstance(caught.value, expected), (i, type(caught.value), caught.value)
        # and still the builtin a caller of before caught: ValueError, TypeError for a wrong type, OSError for files
        assert isinstance(caught.value, ValueError), i
        if expected is errors.InputTypeError:
            assert isinstance(caught.value, TypeError), i
        if expected in (errors.FileError, errors.ImageError):
            assert isinstance(caught.value, OSError), i


@pytest.mark.parametrize("kind", ["positive_int", "count", "seed", "non_negative", "fraction", "trainable_layers"])
def test_every_rejected_value_of_a_kind_is_an_input_error(kind):
    """A property over many values: what a kind of argument refuses is an ``InputTypeError`` exactly when
    the value is not of its type, else an ``InputError``; what it accepts comes back."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from resnet_bottleneck import _checks

    check = _checks.KINDS[kind]
    values = st.one_of(
        st.integers(-(2**40), 2**40),
        st.floats(allow_nan=True, allow_infinity=True),
        st.booleans(),
        st.none(),
        st.text(max_size=4),
        st.lists(st.integers(), max_size=2),
    )

    @settings(max_examples=150, deadline=None, database=None)
    @given(values)
    def holds(value):
        try:
            check.check("arg", value)
        except errors.InputError as err:
            assert isinstance(err, errors.InputTypeError) == (not check.typed(value)), (value, err)
            assert str(err).startswith("arg must be "), err
        else:
            assert check.valid(value), value

    holds()


# --- hostile files ------------------------------------------------------------------------


class _RunsCode:
    """Unpickling it would run a shell command that leaves ``marker`` behind."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _safetensors(path: Path, header: dict, data: bytes = b"", length: int | None = None) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)


#: Each hostile file: its name and how to write it (``marker``: the file the pickles would create).
HOSTILE = {
    "random.safetensors": lambda p, marker: p.write_bytes(np.random.default_rng(0).bytes(4096)),
    "random.pth": lambda p, marker: p.write_bytes(np.random.default_rng(1).bytes(4096)),
    "random.onnx": lambda p, marker: p.write_bytes(np.random.default_rng(2).bytes(4096)),
    # the header's length field claims 2**60 bytes
    "header_2e60.safetensors": lambda p, marker: _safetensors(p, {}, length=2**60),
    # a tensor claiming 2**60 bytes (2**29 x 2**29 float32), in a 200-byte file
    "tensor_2e60.safetensors": lambda p, marker: _safetensors(
        p, {"conv1.weight": {"dtype": "F32", "shape": [2**29, 2**29], "data_offsets": [0, 2**60]}}, b"\0" * 64
    ),
    # offsets past the end of the file
    "offsets_past_end.safetensors": lambda p, marker: _safetensors(
        p,
        {"conv1.weight": {"dtype": "F32", "shape": [64, 3, 7, 7], "data_offsets": [0, 64 * 3 * 7 * 7 * 4]}},
        b"\0" * 64,
    ),
    # two tensors on the same bytes, their offsets out of order
    "offsets_overlap.safetensors": lambda p, marker: _safetensors(
        p,
        {
            "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
            "b": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
        },
        b"\0" * 32,
    ),
    # offsets that disagree with the tensor's shape
    "offsets_wrong_size.safetensors": lambda p, marker: _safetensors(
        p, {"a": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 16]}}, b"\0" * 16
    ),
    # our own format's metadata, and a tensor where a module of another one is
    "tree_clash.safetensors": lambda p, marker: _safetensors(
        p,
        {
            "__metadata__": {"format": "resnet-bottleneck variables", "model": "resnet18"},
            "params/conv1": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
            "params/conv1/kernel": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
        },
        b"\0" * 8,
    ),
    "code.pth": lambda p, marker: p.write_bytes(pickle.dumps({"conv1.weight": _RunsCode(marker)})),
    "code_zip.pth": lambda p, marker: _torch_save({"conv1.weight": _RunsCode(marker)}, p),
    # pickles of plain containers (allowed by weights_only) that are no state_dict of tensors
    "int_keys.pth": lambda p, marker: _torch_save({"state_dict": {1: _zeros(1)}}, p),
    "complex.pth": lambda p, marker: _torch_save({"conv1.weight": _zeros(64, 3, 7, 7).to(_complex())}, p),
}


def _zeros(*shape):
    import torch

    return torch.zeros(*shape)


def _complex():
    import torch

    return torch.complex64


def _torch_save(obj, path):
    import torch

    torch.save(obj, path)


def _command(command: str, weights: str) -> list[str]:
    """``command`` reading ``weights`` as a user would (an ``.onnx`` file with ONNX Runtime), in the folder
    of :func:`hostile`."""
    onnx = ["--runtime", "onnxruntime"] if weights.endswith(".onnx") else []
    return {
        "predict": ["predict", "data/a/0.png", "--weights", weights, "--model", "resnet18", *onnx],
        "convert": ["convert", weights, "out.safetensors", "--model", "resnet18"],
        "evaluate": ["evaluate", "--weights", weights, "--model", "resnet18", "--data", "data", *onnx],
        "export": ["export", weights, "out.safetensors", "--model", "resnet18"],
        "train": ["train", "--weights", weights, "--model", "resnet18", "--data", "data", "--epochs", "1"]
        + ["--image-size", "16", "--batch-size", "2", "--out", "run"],
    }[command]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A folder with every hostile file, a tiny two-class image folder ``data``, and the pickles' marker path."""
    from PIL import Image

    root = tmp_path_factory.mktemp("hostile")
    marker = root / "code_ran"
    for name, write in HOSTILE.items():
        write(root / name, marker)
    rng = np.random.default_rng(0)
    for c in "ab":
        (root / "data" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / "data" / c / f"{i}.png")
    return root, marker


@pytest.mark.parametrize("name", list(HOSTILE))
@pytest.mark.parametrize("command", ["predict", "convert", "evaluate", "export", "train"])
def test_every_command_refuses_every_hostile_file(command, name, hostile, capsys, monkeypatch):
    root, marker = hostile
    monkeypatch.chdir(root)
    monkeypatch.delenv("RESNET_BOTTLENECK_DEBUG", raising=False)
    before = set(os.listdir(root))
    start = time.monotonic()
    status = main(_command(command, name))
    seconds = time.monotonic() - start
    captured = capsys.readouterr()
    assert status == 2, captured.err
    one_line_error(captured.err, name, prog=f"resnet-bottleneck {command}")
    assert seconds < 30, seconds  # refused from its header or its first bytes, not after any work
    assert not marker.exists(), "unpickling ran the file's code"
    assert set(os.listdir(root)) == before  # nothing written: no out.safetensors, no run directory


def test_hostile_safetensors_are_refused_without_a_large_allocation(hostile):
    """Under an address-space limit of 1 GiB above what the process holds, every command still refuses the
    safetensors files that claim 2**60 bytes or lie about their offsets (a large allocation would fail with
    MemoryError: a bug's exit status 1, not 2)."""
    root, _ = hostile
    names = [name for name in HOSTILE if name.endswith(".safetensors")]
    program = (
        "import resource, sys, jax.numpy as jnp, safetensors.numpy\n"
        "from resnet_bottleneck.cli import main\n"
        "from resnet_bottleneck.io import load_model_file\n"
        "from test_cli_errors import _command\n"
        "jnp.zeros(1).block_until_ready()  # the backend and its threads first\n"
        "size = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()\n"
        "resource.setrlimit(resource.RLIMIT_AS, (size + 2**30, resource.RLIM_INFINITY))\n"
        f"names, commands = {names!r}, sys.argv[1:]\n"
        "statuses = [main(_command(c, n)) for c in commands for n in names]\n"
        "print(statuses)\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), str(Path(__file__).parent)]),
    }
    result = subprocess.run(
        [sys.executable, "-c", program, "convert", "predict", "export"],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [2] * (3 * len(names)), result.stderr[-3000:]
    assert "MemoryError" not in result.stderr and "internal error" not in result.stderr


# --- decompression bombs ------------------------------------------------------------------


def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that claims ``width`` x ``height`` pixels, a few dozen bytes on disk (one tiny IDAT)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


@pytest.mark.parametrize("side", [30000, 10000])  # past twice PIL's limit (its error), past it once (its warning)
@pytest.mark.parametrize("warnings_are", ["error", "ignore"])
def test_an_image_over_the_pixel_limit_is_unreadable_before_decoding(side, warnings_are, tmp_path):
    from PIL import Image

    from resnet_bottleneck.data.transforms import eval_transform, train_transform

    limit = Image.MAX_IMAGE_PIXELS
    assert limit is not None and limit < side * side  # PIL's default, which the library reads and never sets
    bomb = _png_header(tmp_path / "bomb.png", side, side)
    assert bomb.stat().st_size < 200
    for transform in (lambda p: eval_transform(p, 16), lambda p: train_transform(p, 16, np.random.default_rng(0))):
        with warnings.catch_warnings():
            warnings.simplefilter(warnings_are)
            start = time.monotonic()
            with pytest.raises(errors.ImageError, match="cannot read .*bomb.png as an image") as caught:
                transform(bomb)
            assert time.monotonic() - start < 5
        assert "pixels" in str(caught.value)
    assert Image.MAX_IMAGE_PIXELS == limit


def test_the_pixel_limit_is_pils_own(tmp_path, monkeypatch):
    """At a limit of 16 x 16 pixels (set here, by the test) a 16 x 16 image is read and a 17 x 16 one is
    not, with PIL's warnings off (the library's own check) or as errors (PIL's warning refused)."""
    from PIL import Image

    from resnet_bottleneck.data.transforms import eval_transform

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 16 * 16)
    rng = np.random.default_rng(0)
    for size in ((16, 16), (16, 17)):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(tmp_path / f"{size[1]}.png")
    for mode in ("ignore", "error"):
        with warnings.catch_warnings():
            warnings.simplefilter(mode)
            assert eval_transform(tmp_path / "16.png", 8).shape == (8, 8, 3)
            with pytest.raises(errors.ImageError, match="17.png"):
                eval_transform(tmp_path / "17.png", 8)


@pytest.fixture
def images_and_bomb(tmp_path):
    """A class folder ``data/a`` of three images, the middle one a 30000 x 30000 bomb, and ``data/b``."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in "ab":
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(tmp_path / "data" / c / f"{i}.png")
    _png_header(tmp_path / "data" / "a" / "1.png", 30000, 30000)
    return tmp_path / "data"


def test_predict_names_the_bomb_unreadable_and_classifies_the_others(images_and_bomb, capsys, monkeypatch):
    """The command line's ``predict`` over the folder: the bomb named as unreadable, every other image
    classified (a stand-in classifier: what is tested is the per-image refusal, not a model)."""
    from resnet_bottleneck.cli import predict

    def classifier(args):
        return (lambda images: np.tile([[0.25, 0.75]], (len(images), 1))), 2, {}, 16, (0.875, "bilinear")

    monkeypatch.setattr(predict, "_classifier", classifier)
    assert main(["predict", str(images_and_bomb / "a"), str(images_and_bomb / "b"), "--weights", "x"]) == 2
    captured = capsys.readouterr()
    one_line_error(captured.err, "argument IMAGE: cannot read", "a/1.png", "the other images were classified")
    lines = captured.out.strip().splitlines()
    assert len(lines) == 5 and not any("a/1.png" in line for line in lines), lines
    assert all(line.endswith(": 1 (0.750), 0 (0.250)") for line in lines), lines


def test_training_and_evaluation_count_the_bomb_among_unreadable_images(images_and_bomb):
    from resnet_bottleneck.data import evaluation_batches, list_images, training_batches
    from resnet_bottleneck.data.pipeline import private_copy

    files = list_images(images_and_bomb)
    bomb = next(i for i in range(len(files)) if files.path(i).endswith("a/1.png"))
    batch = private_copy(next(iter(evaluation_batches(files, image_size=16, batch_size=6))))
    assert list(batch["mask"]) == [i != bomb for i in range(6)]
    assert [int(b) for b in batch["bad"] if b >= 0] == [bomb]
    seen = set()
    batch = private_copy(next(iter(training_batches(files, image_size=16, batch_size=6, seed=0, epochs=1))))
    seen.update(int(b) for b in batch["bad"] if b >= 0)
    assert seen == {bomb} and batch["mask"].all()  # substituted by a readable image, and counted


def test_forward_refuses_an_npy_header_claiming_terabytes(tmp_path, capsys):
    """A 100-byte ``.npy`` whose header claims 2**40 float32 values: refused from its header (np.load alone
    would try to allocate 4 TiB: a MemoryError, told as a bug)."""
    from numpy.lib import format as npy

    with open(tmp_path / "huge.npy", "wb") as f:
        npy.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (2**40,)})
        f.write(b"\0" * 16)
    assert main(["forward", "--input", str(tmp_path / "huge.npy")]) == 2
    one_line_error(capsys.readouterr().err, "argument --input: cannot read", "huge.npy", "claims (1099511627776,)")
