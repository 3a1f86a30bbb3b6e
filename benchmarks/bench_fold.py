"""Inference with BatchNorm folded into the convs against the unfolded eval model.

ResNet-50 (or --model), eval mode, random weights with running statistics taken from a
batch of activations, float32, each --batch at --image-size (224); both compiled once (with
``resnet_bottleneck.xla.jit``), then timed interleaved; medians.

    python benchmarks/bench_fold.py [--model resnet50] [--batch 1 8] [--image-size 224] [--repeats 7] [--write]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import SYSTEM_MALLOC, interleaved, write_section  # noqa: E402

import resnet_bottleneck as rb  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--write", action="store_true", help="rewrite the section of BENCHMARKS.md")
    args = parser.parse_args(argv)
    reused = not SYSTEM_MALLOC and rb.xla.reuse_freed_memory()
    size = args.image_size

    model = rb.create_model(args.model)
    x8 = jnp.asarray(np.random.default_rng(0).standard_normal((8, size, size, 3)), jnp.float32)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), x8[:1])
    # Running statistics of real activations: one training-mode pass with momentum 0 stores the batch's.
    calibrate = jax.jit(lambda v, x: model.clone(bn_momentum=0.0).apply(v, x, train=True, mutable=["batch_stats"])[1])
    variables = {"params": variables["params"], **calibrate(variables, x8)}
    folded_model, folded = rb.fold_batchnorm(model, variables)
    plain = rb.xla.jit(lambda v, x: model.apply(v, x, train=False))
    fast = rb.xla.jit(folded_model.apply)
    rows = [
        "| model | batch | unfolded eval | BN folded | speed-up | images/s unfolded -> folded | max rel. difference |",
        "|---|---|---|---|---|---|---|",
    ]
    for batch in args.batch:
        x = jnp.asarray(np.random.default_rng(batch).standard_normal((batch, size, size, 3)), jnp.float32)
        a, b = plain(variables, x), fast(folded, x)
        error = float(jnp.abs(a - b).max() / jnp.abs(a).max())
        seconds = interleaved(
            {
                "unfolded": lambda: plain(variables, x).block_until_ready(),
                "folded": lambda: fast(folded, x).block_until_ready(),
            },
            args.repeats,
        )
        t_plain, t_fold = seconds["unfolded"], seconds["folded"]
        rows.append(
            f"| {args.model} | {batch} | {t_plain * 1e3:.0f} ms | {t_fold * 1e3:.0f} ms | "
            f"**{t_plain / t_fold:.2f}x** | {batch / t_plain:.1f} -> {batch / t_fold:.1f} | {error:.1e} |"
        )
        print(rows[-1], flush=True)
    if args.write:
        write_section(
            "fold",
            "Inference with BatchNorm folded into the convs (`fold_batchnorm`)",
            "\n".join(rows),
            reused_memory=reused,
            note=f" (medians of {args.repeats} interleaved rounds, float32, {size}x{size})",
        )


if __name__ == "__main__":
    main()
