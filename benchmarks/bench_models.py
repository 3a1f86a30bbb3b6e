"""Deep models: compile time and a train step's memory, with and without remat and scan.

For ResNet-152 (or --model), batch --batch at --image-size, float32: the time to trace
and lower the benchmarks' train step (plain SGD, so that the optimizer keeps no state),
the time XLA takes to compile it, and the memory XLA plans for it
(``compiled.memory_analysis()``: temporaries, i.e. activations kept for the backward
pass, plus arguments and outputs). Nothing is executed, so the figures are XLA's plan,
identical from run to run except the times.

    python benchmarks/bench_models.py [--model resnet152] [--batch 32] [--image-size 224] [--write]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _workloads as w  # noqa: E402
from _report import SYSTEM_MALLOC, write_section  # noqa: E402

import resnet_bottleneck as rb  # noqa: E402
from resnet_bottleneck.training import create_train_state  # noqa: E402

VARIANTS = {
    "plain": {},
    "remat": {"remat": True},
    "scan": {"scan": True},
    "scan + remat": {"scan": True, "remat": True},
}


def measure(name: str, batch: int, size: int, options: dict) -> dict:
    model = rb.create_model(name, **options)
    data = {
        "image": jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8),
        "label": jax.ShapeDtypeStruct((batch,), jnp.int32),
    }  # what w.synthetic_batch gives
    state = jax.eval_shape(lambda: create_train_state(model, optax.sgd(0.1), 0, size))
    start = time.perf_counter()
    lowered = jax.jit(w.library_step(), donate_argnums=0).lower(state, data)
    traced = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    return {
        "trace_s": traced,
        "compile_s": compile_s,
        "temp_gib": memory.temp_size_in_bytes / 2**30,
        "total_gib": (
            memory.temp_size_in_bytes
            + memory.argument_size_in_bytes
            + memory.output_size_in_bytes
            - memory.alias_size_in_bytes
        )
        / 2**30,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet152")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--write", action="store_true", help="rewrite the section of BENCHMARKS.md")
    args = parser.parse_args(argv)
    reused = not SYSTEM_MALLOC and rb.xla.reuse_freed_memory()

    lines = [
        "| variant | trace + lower | XLA compile | temporaries (activations) | planned peak (args + temps + outputs) |",
        "|---|---|---|---|---|",
    ]
    for label, options in VARIANTS.items():
        r = measure(args.model, args.batch, args.image_size, options)
        times = f"{r['trace_s']:.1f} s | {r['compile_s']:.1f} s"
        lines.append(f"| {label} | {times} | {r['temp_gib']:.2f} GiB | {r['total_gib']:.2f} GiB |")
        print(lines[-1], flush=True)
    if args.write:
        write_section(
            "deep-models",
            f"{args.model}: compile time and train-step memory, with and without remat and scan",
            "\n".join(lines),
            reused_memory=reused,
            text=f"One SGD train step (forward, backward, update; BatchNorm in training mode), batch {args.batch}, "
            f"{args.image_size}x{args.image_size}, float32, jitted with the variables donated. Times are one "
            "run each; memory is what XLA plans for the compiled step (`memory_analysis()`), nothing is executed.",
        )


if __name__ == "__main__":
    main()
