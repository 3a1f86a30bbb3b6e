"""Per-call cost of resnet_bottleneck_forward against the textbook eager solution.

The textbook solution (tests/textbook.py) initialises and applies the block op by op on
every call; ours compiles once per (shape, dtype, widths) and dispatches after. Both run
here, interleaved, on the same inputs; the figures are medians over repeats.

    python benchmarks/bench_forward.py [--write]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from textbook import textbook_bottleneck_forward  # noqa: E402

import resnet_bottleneck as rb  # noqa: E402
from resnet_bottleneck import forward as forward_module  # noqa: E402

from _report import median, write_section  # noqa: E402


def per_call(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn().block_until_ready()
    return (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds per contestant (median reported)")
    parser.add_argument("--write", action="store_true", help="rewrite the section of BENCHMARKS.md")
    args = parser.parse_args()

    cases = [((4, 4, 4), 2, 4, "worked example"), ((56, 56, 256), 64, 256, "ResNet-50 stage 1 block")]
    rows = []
    for shape, mid, out, label in cases:
        x = np.asarray(forward_module.worked_example_input()) if shape == (4, 4, 4) else (
            np.random.default_rng(0).standard_normal(shape).astype(np.float32))
        xj = jnp.asarray(x)
        ours = lambda: rb.resnet_bottleneck_forward(0, x, mid, out)  # noqa: E731
        textbook = lambda: textbook_bottleneck_forward(0, xj, mid, out)  # noqa: E731
        compiled = forward_module._bottleneck.lower(mid, out, np.uint32(0), x).compile()
        bare = lambda: compiled(np.uint32(0), x)  # noqa: E731
        np.testing.assert_allclose(ours(), textbook(), atol=1e-4)  # same function before timing
        big = shape != (4, 4, 4)
        t_ours, t_text, t_bare = [], [], []
        for _ in range(args.repeats):  # interleaved, so drift hits all three alike
            t_text.append(per_call(textbook, 3 if big else 20))
            t_ours.append(per_call(ours, 3 if big else 2000))
            t_bare.append(per_call(bare, 3 if big else 2000))
        rows.append((label, shape, mid, out, median(t_text), median(t_ours), median(t_bare)))

    header = "| input (H, W, C) | mid | textbook eager / call | ours / call | speed-up | bare executable / call |"
    lines = [header, "|---|---|---|---|---|---|"]
    for label, shape, mid, out, tt, to, tb in rows:
        lines.append(
            f"| {shape} {label} | {mid} | {tt * 1e3:.2f} ms | {to * 1e6:.1f} us | **{tt / to:,.0f}x** | {tb * 1e6:.1f} us |"
        )
    table = "\n".join(lines)
    print(table)
    if args.write:
        write_section(
            "forward", "`resnet_bottleneck_forward`: per-call cost against the textbook eager solution", table,
            note=f" (medians of {args.repeats} interleaved rounds)",
            text="Ours checks its arguments, then dispatches an executable compiled once per (shape, dtype, "
            "widths); the textbook solution traces `init` and `apply` op by op on every call. "
            "\"Bare executable\" is the compiled function called directly, without our argument checks.",
        )


if __name__ == "__main__":
    main()
