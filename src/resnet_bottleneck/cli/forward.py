"""``resnet-bottleneck forward``: the founding specification's function and its walk-through."""

from __future__ import annotations

import json
import os

import numpy as np

from .._files import atomic_write
from ._common import UsageError, argument, positive_int, seed


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "forward",
        help="run one freshly initialised bottleneck block (the specification's worked example by default)",
        description="Run resnet_bottleneck_forward and print the specification's walk-through: each stage's "
        "shape and the flattened output. Without --input it runs the worked example: seed 0, a fixed "
        "(4, 4, 4) input, mid 2, out 4.",
    )
    parser.add_argument("--input", metavar="X.npy", help="(H, W, C) input array; C must equal --out")
    parser.add_argument("--seed", type=seed, default=0, help="PRNG seed in [0, 2**32) (default 0)")
    parser.add_argument("--mid", type=positive_int, default=2, help="mid_features (default 2)")
    parser.add_argument("--out", type=positive_int, default=4, help="out_features (default 4)")
    parser.add_argument("--output", metavar="Y.npy", help="also write the flattened output here")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.set_defaults(run=run)


def _load_npy(path: str, option: str) -> np.ndarray:
    try:
        _check_npy_size(path)
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise UsageError(f"argument {option}: no such file: {path}") from None
    except (OSError, ValueError) as err:
        raise UsageError(f"argument {option}: cannot read {path} as a .npy array ({err})") from None


def _check_npy_size(path: str) -> None:
    """A ``ValueError`` for a ``.npy`` file whose header claims more bytes than the file holds (read before any
    allocation: a 40-byte file may claim terabytes)."""
    from numpy.lib import format as npy

    with open(path, "rb") as f:
        version = npy.read_magic(f)
        read_header = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}.get(version)
        if read_header is None:  # a newer format: np.load checks it
            return
        shape, _, dtype = read_header(f)
        claimed, held = int(np.prod(shape, dtype=object)) * dtype.itemsize, os.fstat(f.fileno()).st_size - f.tell()
    if not dtype.hasobject and claimed > held:
        raise ValueError(f"its header claims {shape} {dtype} values ({claimed:,} bytes); the file holds {held:,}")


def run(args) -> int:
    from ..forward import bottleneck_walkthrough, resnet_bottleneck_forward, worked_example_input

    x = worked_example_input() if args.input is None else _load_npy(args.input, "--input")
    with argument("--input"):  # the flags are checked as parsed: what is left is the array
        y = np.asarray(resnet_bottleneck_forward(args.seed, x, args.mid, args.out))
    stages = bottleneck_walkthrough(tuple(np.shape(x)), args.mid, args.out)
    if args.output is not None:
        with argument("--output"):
            atomic_write(args.output, lambda f: np.save(f, y, allow_pickle=False))
    if args.json:
        print(
            json.dumps(
                {
                    "seed": args.seed,
                    "mid_features": args.mid,
                    "out_features": args.out,
                    "input_shape": list(np.shape(x)),
                    "stages": [dict(s, shape=list(s["shape"])) for s in stages],
                    "output": y.tolist(),
                }
            )
        )
        return 0
    source = "the worked example's fixed input" if args.input is None else args.input
    print(f"ResNet bottleneck block: seed {args.seed}, mid_features {args.mid}, out_features {args.out}")
    print(f"Input x {tuple(np.shape(x))} ({source})")
    for s in stages:
        print(f"{s['step']}. {s['op']:<26} -> {str(s['shape']):<16} {s['note']}".rstrip())
    with np.printoptions(precision=6, suppress=True, linewidth=88):
        print(f"Output ({y.size} values):")
        print(y)
    if args.output is not None:
        print(f"Wrote {args.output}")
    return 0
