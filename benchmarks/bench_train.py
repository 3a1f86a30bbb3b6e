"""Training throughput on this CPU: our jitted train step against PyTorch's, same model and batch.

One SGD step (momentum 0.9, cross-entropy; BatchNorm in training mode) of --model at
--image-size with batch --batch, float32, synthetic data. PyTorch runs torchvision's
model in channels_last; ours runs the jitted step with its variables donated. Each
contestant is warmed up, then timed for --steps steps per round, rounds interleaved;
medians. Also the default ``resnet-bottleneck train`` run (resnet_tiny on digits), unless
--no-cli.

    python benchmarks/bench_train.py [--model resnet50] [--batch 8] [--image-size 224] [--no-cli] [--write]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _workloads as w  # noqa: E402
from _report import SYSTEM_MALLOC, interleaved, write_section  # noqa: E402

import resnet_bottleneck as rb  # noqa: E402


def _default_cli_run() -> dict:
    """``resnet-bottleneck train --json`` as a user runs it: its own process, the system allocator."""
    with tempfile.TemporaryDirectory() as out:
        done = subprocess.run(
            [sys.executable, "-m", "resnet_bottleneck", "train", "--json", "--out", out],
            capture_output=True,
            text=True,
            check=True,
        )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-cli", action="store_true", help="skip the default `resnet-bottleneck train` run")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args(argv)
    if args.write and args.no_cli:
        parser.error("--write records the default run too; drop --no-cli")
    reused = not SYSTEM_MALLOC and rb.xla.reuse_freed_memory()

    runners = {
        "PyTorch (torchvision, channels_last)": w.torch_train_step(args.model, args.batch, args.image_size),
        "ours (jitted step)": w.flax_train_step(args.model, args.batch, args.image_size, jit=rb.xla.jit),
    }
    seconds = interleaved(runners, args.repeats, inner=args.steps)
    rates = {k: args.batch / v for k, v in seconds.items()}
    torch_rate = rates["PyTorch (torchvision, channels_last)"]
    lines = ["| contestant | step | images/s | vs PyTorch |", "|---|---|---|---|"]
    for label, rate in rates.items():
        lines.append(f"| {label} | {args.batch / rate * 1e3:.0f} ms | {rate:.2f} | {rate / torch_rate:.2f}x |")

    if not args.no_cli:
        default = _default_cli_run()
        lines += [
            "",
            f"Default `resnet-bottleneck train` (resnet_tiny, digits at 32x32, batch 64, 15 epochs; run as "
            f"the command, in its own process): test accuracy {default['test_accuracy']:.4f}, "
            f"{default['seconds']:.1f} s in all, {default['images_per_second']:,.0f} training images/s "
            "(first step's compile excluded).",
        ]
    table = "\n".join(lines)
    print(table)
    if args.write:
        write_section(
            "train",
            f"Training throughput: {args.model}, batch {args.batch}, {args.image_size}x{args.image_size}, float32",
            table,
            reused_memory=reused,
            note=f" (medians of {args.repeats} interleaved rounds of {args.steps} steps)",
        )


if __name__ == "__main__":
    main()
