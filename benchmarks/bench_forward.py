"""Per-call cost of resnet_bottleneck_forward against the textbook eager solution.

The textbook solution (the plain ``@nn.compact`` block of the founding specification,
written out below) initialises and applies the block op by op on every call; ours
compiles once per (shape, dtype, widths) and dispatches after. Both run here,
interleaved, on the same inputs; the figures are medians over repeats.

    python benchmarks/bench_forward.py [--repeats 7] [--quick] [--write]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import SYSTEM_MALLOC, interleaved, write_section  # noqa: E402

import resnet_bottleneck as rb  # noqa: E402
from resnet_bottleneck.forward import worked_example_input  # noqa: E402

#: (input shape, mid_features, out_features, label, calls per round: textbook, ours)
CASES = [((4, 4, 4), 2, 4, "worked example", 20, 2000), ((56, 56, 256), 64, 256, "ResNet-50 stage 1 block", 3, 3)]


class TextbookBottleneck(nn.Module):
    """The specification's block as anyone would first write it: the peer."""

    mid_features: int
    out_features: int

    @nn.compact
    def __call__(self, x):
        y = nn.relu(nn.BatchNorm(use_running_average=False)(nn.Conv(self.mid_features, (1, 1))(x)))
        y = nn.relu(nn.BatchNorm(use_running_average=False)(nn.Conv(self.mid_features, (3, 3), padding="SAME")(y)))
        y = nn.BatchNorm(use_running_average=False)(nn.Conv(self.out_features, (1, 1))(y))
        return nn.relu(y + x)


def textbook_forward(seed: int, x, mid_features: int, out_features: int):
    """Eager: initialise from ``seed`` and apply to the one image ``x``, op by op, every call."""
    block, x_b = TextbookBottleneck(mid_features, out_features), x[None]
    variables = block.init(jax.random.PRNGKey(seed), x_b)
    y, _ = block.apply(variables, x_b, mutable=["batch_stats"])
    return y.reshape(-1)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds per contestant (median reported)")
    parser.add_argument("--quick", action="store_true", help="the worked example only, one round (a smoke test)")
    parser.add_argument("--write", action="store_true", help="rewrite the section of BENCHMARKS.md")
    args = parser.parse_args(argv)
    if args.write and args.quick:
        parser.error("--quick is a smoke test; it does not --write")
    reused = not SYSTEM_MALLOC and rb.xla.reuse_freed_memory()
    cases, repeats = (CASES[:1], 1) if args.quick else (CASES, args.repeats)

    rows = []
    for shape, mid, out, label, textbook_calls, our_calls in cases:
        x = (
            worked_example_input()
            if label == "worked example"
            else (np.random.default_rng(0).standard_normal(shape).astype(np.float32))
        )
        xj = jnp.asarray(x)
        runners = {
            "textbook": lambda: textbook_forward(0, xj, mid, out).block_until_ready(),
            "ours": lambda: rb.resnet_bottleneck_forward(0, x, mid, out).block_until_ready(),
        }
        np.testing.assert_allclose(
            rb.resnet_bottleneck_forward(0, x, mid, out), textbook_forward(0, xj, mid, out), atol=1e-4
        )  # the same function before timing
        seconds = interleaved(runners, repeats, inner={"textbook": textbook_calls, "ours": our_calls})
        rows.append((label, shape, mid, seconds["textbook"], seconds["ours"]))

    lines = ["| input (H, W, C) | mid | textbook eager / call | ours / call | speed-up |", "|---|---|---|---|---|"]
    for label, shape, mid, tt, to in rows:
        lines.append(f"| {shape} {label} | {mid} | {tt * 1e3:.2f} ms | {to * 1e6:.1f} us | **{tt / to:,.0f}x** |")
    table = "\n".join(lines)
    print(table)
    if args.write:
        write_section(
            "forward",
            "`resnet_bottleneck_forward`: per-call cost against the textbook eager solution",
            table,
            reused_memory=reused,
            note=f" (medians of {repeats} interleaved rounds)",
            text="Ours checks its arguments, then dispatches an executable compiled once per (shape, dtype, "
            "widths); the textbook solution traces `init` and `apply` op by op on every call.",
        )


if __name__ == "__main__":
    main()
