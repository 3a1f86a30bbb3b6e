"""Inference with BatchNorm folded into the convs against the unfolded eval model.

ResNet-50 (or --model), eval mode, random weights with running statistics taken from a
batch of activations, float32, each --batch at 224x224; both compiled once (with
``resnet_bottleneck.jit``), then timed interleaved; medians.

    python benchmarks/bench_fold.py [--model resnet50] [--batch 1 8] [--repeats 7] [--write]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import median, write_section  # noqa: E402

from resnet_bottleneck import create_model, jit  # noqa: E402
from resnet_bottleneck.fold import fold_batchnorm  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--write", action="store_true", help="rewrite the section of BENCHMARKS.md")
    args = parser.parse_args()

    model = create_model(args.model)
    x8 = jnp.asarray(np.random.default_rng(0).standard_normal((8, 224, 224, 3)), jnp.float32)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), x8[:1])
    # Running statistics of real activations: one training-mode pass with momentum 0 stores the batch's.
    calibrate = jax.jit(lambda v, x: model.clone(bn_momentum=0.0).apply(v, x, train=True, mutable=["batch_stats"])[1])
    variables = {"params": variables["params"], **calibrate(variables, x8)}
    folded_model, folded = fold_batchnorm(model, variables)
    plain = jit(lambda v, x: model.apply(v, x, train=False))
    fast = jit(folded_model.apply)
    rows = [
        "| model | batch | unfolded eval | BN folded | speed-up | images/s unfolded -> folded | max rel. difference |",
        "|---|---|---|---|---|---|---|",
    ]
    for batch in args.batch:
        x = jnp.asarray(np.random.default_rng(batch).standard_normal((batch, 224, 224, 3)), jnp.float32)
        a, b = plain(variables, x), fast(folded, x)
        error = float(jnp.abs(a - b).max() / jnp.abs(a).max())
        times = {"unfolded": [], "folded": []}
        for _ in range(args.repeats):
            for label, fn, v in (("unfolded", plain, variables), ("folded", fast, folded)):
                start = time.perf_counter()
                fn(v, x).block_until_ready()
                times[label].append(time.perf_counter() - start)
        t_plain, t_fold = median(times["unfolded"]), median(times["folded"])
        rows.append(f"| {args.model} | {batch} | {t_plain * 1e3:.0f} ms | {t_fold * 1e3:.0f} ms | "
                    f"**{t_plain / t_fold:.2f}x** | {batch / t_plain:.1f} -> {batch / t_fold:.1f} | {error:.1e} |")
        print(rows[-1], flush=True)
    if args.write:
        write_section("fold", "Inference with BatchNorm folded into the convs (`fold_batchnorm`)", "\n".join(rows),
                      note=f" (medians of {args.repeats} interleaved rounds, float32, 224x224)")


if __name__ == "__main__":
    main()
