"""Deep models: compile time and a train step's memory, with and without remat and scan.

For ResNet-152 (or --model), batch --batch at --image-size, float32: the time to trace
and lower the SGD train step, the time XLA takes to compile it, and the memory XLA plans
for it (``compiled.memory_analysis()``: temporaries, i.e. activations kept for the
backward pass, plus arguments and outputs). Nothing is executed, so the figures are
XLA's plan, identical from run to run except the times.

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
from _report import write_section  # noqa: E402

from resnet_bottleneck import create_model  # noqa: E402

VARIANTS = {"plain": {}, "remat": {"remat": True}, "scan": {"scan": True}, "scan + remat": {"scan": True, "remat": True}}


def train_step_for(model):
    def train_step(variables, x, labels):
        def loss(params):
            logits, state = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), state

        (value, state), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
        params = jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, variables["params"], grads)
        return {"params": params, **state}, value

    return train_step


def measure(name: str, batch: int, size: int, options: dict) -> dict:
    model = create_model(name, **options)
    x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
    start = time.perf_counter()
    lowered = jax.jit(train_step_for(model), donate_argnums=0).lower(variables, x, labels)
    traced = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    return {
        "trace_s": traced,
        "compile_s": compile_s,
        "temp_gib": memory.temp_size_in_bytes / 2**30,
        "total_gib": (memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes
                      - memory.alias_size_in_bytes) / 2**30,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet152")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--write", action="store_true", help="rewrite the section of BENCHMARKS.md")
    args = parser.parse_args()

    lines = ["| variant | trace + lower | XLA compile | temporaries (activations) | planned peak (args + temps + outputs) |",
             "|---|---|---|---|---|"]
    for label, options in VARIANTS.items():
        r = measure(args.model, args.batch, args.image_size, options)
        lines.append(f"| {label} | {r['trace_s']:.1f} s | {r['compile_s']:.1f} s | {r['temp_gib']:.2f} GiB | {r['total_gib']:.2f} GiB |")
        print(lines[-1], flush=True)
    if args.write:
        write_section(
            "deep-models", f"{args.model}: compile time and train-step memory, with and without remat and scan",
            "\n".join(lines),
            text=f"One SGD train step (forward, backward, update; BatchNorm in training mode), batch {args.batch}, "
            f"{args.image_size}x{args.image_size}, float32, jitted with the variables donated. Times are one "
            "run each; memory is what XLA plans for the compiled step (`memory_analysis()`), nothing is executed.",
        )


if __name__ == "__main__":
    main()
