"""Training throughput on this CPU: our jitted train step against PyTorch's, same model and batch.

One SGD step (momentum 0.9, cross-entropy; BatchNorm in training mode) of --model at
--image-size with batch --batch, float32, synthetic data. PyTorch runs torchvision's
model in channels_last; ours runs the jitted step with its variables donated. Each
contestant is warmed up, then timed for --steps steps per round, rounds interleaved;
medians. Also the default ``resnet-bottleneck train`` run (resnet_tiny on digits).

    python benchmarks/bench_train.py [--model resnet50] [--batch 8] [--image-size 224] [--write]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import median, write_section  # noqa: E402

from resnet_bottleneck import create_model  # noqa: E402
from resnet_bottleneck.train import Config, train  # noqa: E402


def ours(name, batch, size):
    model = create_model(name)
    tx = optax.sgd(0.01, momentum=0.9)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((batch, size, size, 3)), jnp.float32)
    y = jnp.asarray(np.random.default_rng(1).integers(0, 1000, batch), jnp.int32)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), x[:1])
    state = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))

    @jax.jit
    def step(state, x, y):
        params, stats, opt = state

        def loss(p):
            logits, new = model.apply({"params": p, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new["batch_stats"]

        (value, stats), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, opt = tx.update(grads, opt, params)
        return (optax.apply_updates(params, updates), stats, opt), value

    holder = {"state": state}

    def run():
        holder["state"], value = step(holder["state"], x, y)
        value.block_until_ready()

    return run


def theirs(name, batch, size):
    import torch
    import torchvision

    torch.set_num_threads(len(__import__("os").sched_getaffinity(0)))
    model = getattr(torchvision.models, name)(weights=None).to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, size, size).to(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,))

    def run():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()

    runners = {"PyTorch (torchvision, channels_last)": theirs(args.model, args.batch, args.image_size),
               "ours (jitted step)": ours(args.model, args.batch, args.image_size)}
    for run in runners.values():
        run()
        run()  # compile / warm up
    times = {k: [] for k in runners}
    for _ in range(args.repeats):
        for label, run in runners.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                run()
            times[label].append((time.perf_counter() - start) / args.steps)
    rates = {k: args.batch / median(v) for k, v in times.items()}
    torch_rate = rates["PyTorch (torchvision, channels_last)"]
    lines = ["| contestant | step | images/s | vs PyTorch |", "|---|---|---|---|"]
    for label, rate in rates.items():
        lines.append(f"| {label} | {args.batch / rate * 1e3:.0f} ms | {rate:.2f} | {rate / torch_rate:.2f}x |")

    default = train(Config(), progress=False)
    lines += ["", f"Default `resnet-bottleneck train` (resnet_tiny, digits at 32x32, batch 64, 15 epochs): "
              f"test accuracy {default.test_accuracy:.4f}, {default.seconds:.1f} s in all, "
              f"{default.images_per_second:,.0f} training images/s (first step's compile excluded)."]
    table = "\n".join(lines)
    print(table)
    if args.write:
        write_section("train", f"Training throughput: {args.model}, batch {args.batch}, "
                      f"{args.image_size}x{args.image_size}, float32", table,
                      note=f" (medians of {args.repeats} interleaved rounds of {args.steps} steps)")


if __name__ == "__main__":
    main()
