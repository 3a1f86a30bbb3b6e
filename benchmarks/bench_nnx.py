"""Flax NNX against Linen: the same model's train step and inference, in one run, interleaved.

--model (ResNet-50) at --image-size with batch --batch, float32, synthetic data, the same
initial weights (the NNX model is ``to_nnx`` of the Linen one). The train step is one SGD step
(momentum 0.9) of what the library's ``training.train_step`` computes (uint8 pixels normalised on
the device, cross-entropy, BatchNorm in training mode), state donated. Contestants:

- Linen under ``jax.jit``: the library's ``train_step``, the variables passed in and returned;
- NNX under ``nnx.jit``: the model and ``nnx.Optimizer`` passed as objects, updated in place;
- NNX under ``nnx.jit`` through ``nnx.cached_partial`` (the graph traversal cached);
- NNX split/merge: ``nnx.split`` once, then ``jax.jit`` of a function that ``nnx.merge``-s the
  state, runs the model and returns ``nnx.state`` (the functional pattern).

All are compiled with XLA's defaults (``nnx.jit`` takes no compiler options), so the XLA
programs are the same and what differs is each call's Python work. Each is warmed up, then timed
for --steps calls per round, rounds interleaved; medians. The same at batch 1, 32x32 (where
the computation is small; --overhead-rounds rounds of 10 calls) shows that Python work per
call directly, in milliseconds.

    python benchmarks/bench_nnx.py [--model resnet50] [--batch 8] [--image-size 224] [--write]
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _workloads as w  # noqa: E402
from _report import SYSTEM_MALLOC, interleaved, write_section  # noqa: E402

import resnet_bottleneck as rb  # noqa: E402
from resnet_bottleneck.data.transforms import normalize  # noqa: E402
from resnet_bottleneck.nnx import to_nnx  # noqa: E402

LINEN = "Linen, `jax.jit`"
NNX_JIT = "NNX, `nnx.jit`"
CACHED = "NNX, `nnx.jit` + `nnx.cached_partial`"
SPLIT = "NNX, `nnx.split` + `jax.jit` + `nnx.merge`"


@functools.cache
def _inputs(name: str, batch: int, size: int):
    """The Linen model, its variables (PRNGKey(0); on the host, so that each contestant gets buffers of
    its own to donate), images and labels: what every NNX contestant starts from."""
    model = rb.create_model(name)
    data = w.synthetic_batch(batch, size)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3), jnp.float32))
    return model, jax.device_get(variables), data["image"], data["label"]


def _loss(model, x, y):
    """The library's train step's loss: uint8 pixels normalised on the device, cross-entropy."""
    return optax.softmax_cross_entropy(model(normalize(x)), jax.nn.one_hot(y, 1000)).mean()


def _step(model, optimizer, x, y):
    value, grads = nnx.value_and_grad(_loss)(model, x, y)
    optimizer.update(model, grads)
    return value


def nnx_train_step(name: str, batch: int, size: int, how: str):
    model, variables, x, y = _inputs(name, batch, size)
    model = to_nnx(model, variables)
    model.train()
    optimizer = nnx.Optimizer(model, optax.sgd(0.01, momentum=0.9), wrt=nnx.Param)
    if how == NNX_JIT:
        step = nnx.jit(_step, donate_argnames=("model", "optimizer"))
        return lambda: step(model, optimizer, x, y).block_until_ready()
    if how == CACHED:
        step = nnx.cached_partial(nnx.jit(_step, donate_argnames=("model", "optimizer")), model, optimizer)
        return lambda: step(x, y).block_until_ready()
    graphdef, state = nnx.split((model, optimizer))

    @functools.partial(jax.jit, donate_argnums=0)
    def functional(state, x, y):
        model, optimizer = nnx.merge(graphdef, state)
        value = _step(model, optimizer, x, y)
        return nnx.state((model, optimizer)), value

    holder = {"state": state}

    def run():
        holder["state"], value = functional(holder["state"], x, y)
        value.block_until_ready()

    return run


def nnx_eval(name: str, batch: int, size: int, how: str):
    model, variables, pixels, _ = _inputs(name, batch, size)
    x = normalize(pixels)
    model = to_nnx(model, variables)
    model.eval()
    forward = nnx.jit(lambda model, x: model(x))
    if how == NNX_JIT:
        return lambda: forward(model, x).block_until_ready()
    if how == CACHED:
        cached = nnx.cached_partial(forward, model)
        return lambda: cached(x).block_until_ready()
    graphdef, state = nnx.split(model)
    functional = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
    return lambda: functional(state, x).block_until_ready()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--overhead-rounds", type=int, default=21, help="rounds at batch 1, 32x32; 0 skips them")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args(argv)
    reused = not SYSTEM_MALLOC and rb.xla.reuse_freed_memory()
    load_before = os.getloadavg()[0]

    lines = ["| workload | contestant | per call | images/s | time vs Linen |", "|---|---|---|---|---|"]
    settings = [(args.batch, args.image_size, args.repeats, args.steps)]
    settings += [(1, 32, args.overhead_rounds, 10)] if args.overhead_rounds else []
    for batch, size, repeats, inner in settings:
        shape = (args.model, batch, size)
        workloads = {
            "train step": {
                LINEN: w.flax_train_step(*shape, jit=jax.jit),
                **{how: nnx_train_step(*shape, how) for how in (NNX_JIT, CACHED, SPLIT)},
            },
            "inference": {
                LINEN: w.flax_eval(*shape, jit=jax.jit),
                **{how: nnx_eval(*shape, how) for how in (NNX_JIT, CACHED, SPLIT)},
            },
        }
        for workload, runners in workloads.items():
            seconds = interleaved(runners, repeats, inner=inner)
            for label, s in seconds.items():
                per_call = f"{s * 1e3:.{0 if s > 0.1 else 1}f} ms"
                versus = f"{s / seconds[LINEN]:.3f}x ({(s - seconds[LINEN]) * 1e3:+.1f} ms)"
                lines.append(
                    f"| {args.model} {workload}, batch {batch}, {size}x{size} | {label} | {per_call} | "
                    f"{batch / s:.2f} | {versus} |"
                )
    table = "\n".join(lines)
    load = f"load average (1 min) {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    print(table)
    print(load)
    if args.write:
        write_section(
            "nnx",
            f"Flax NNX against Linen: {args.model} train step and inference, float32",
            table,
            reused_memory=reused,
            note=f" (medians of {args.repeats} interleaved rounds of {args.steps} calls, at batch 1 of "
            f"{args.overhead_rounds} rounds of 10; {load})",
        )


if __name__ == "__main__":
    main()
