"""CPU speed, side by side: PyTorch, the plain Flax formulation, and ours, in one run.

Workloads (float32, all cores, batch --batch):

* the bottleneck block at ResNet-50's four stage shapes, BatchNorm in training mode:
  forward, and forward + backward (gradients of every parameter and of the input);
* ResNet-50 inference at 224x224 (ours: BatchNorm folded, :func:`fold_batchnorm`);
* a ResNet-50 SGD training step at 224x224.

Contestants: PyTorch runs torchvision's modules in ``channels_last``; "plain Flax" is
``nn.Conv``/``nn.BatchNorm`` under ``jax.jit`` with XLA's defaults (the models' plain form
for ResNet-50); "ours" is the library's defaults under :func:`resnet_bottleneck.jit`.
Rounds are interleaved; times are medians. GFLOP/s counts 2 FLOPs per multiply-add of
the convolutions (backward = 2x forward), next to this run's measured matmul peak.

    python benchmarks/bench_cpu.py [--batch 8] [--repeats 7] [--write]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _workloads as w  # noqa: E402
from _report import BENCHMARKS_MD, write_section  # noqa: E402

import resnet_bottleneck as rb  # noqa: E402

PLOT = Path(__file__).resolve().parent / "cpu.png"
TORCH, PLAIN, OURS = "PyTorch", "plain Flax", "ours"


def _conv3x3_runners(batch: int):
    """The 3x3 conv of stage 1 with its gradients: XLA's default kernels against ours."""
    import torch

    x = jnp.ones((batch, 56, 56, 64), jnp.float32)
    k = jnp.ones((3, 3, 64, 64), jnp.float32) * 0.01

    def conv_grad(x, k):
        y, vjp = jax.vjp(lambda x, k: lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")), x, k)
        return vjp(y)

    default, ours = jax.jit(conv_grad), rb.jit(conv_grad)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
    tx = torch.randn(batch, 64, 56, 56).to(memory_format=torch.channels_last).requires_grad_(True)

    def torch_run():
        conv.zero_grad(set_to_none=True)
        tx.grad = None
        y = conv(tx)
        y.backward(y.detach())

    return {TORCH: torch_run, PLAIN: lambda: jax.block_until_ready(default(x, k)),
            OURS: lambda: jax.block_until_ready(ours(x, k))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--write", action="store_true", help="rewrite the CPU section of BENCHMARKS.md and the plot")
    args = parser.parse_args()
    b, size = args.batch, args.image_size
    rows = []  # (workload, {contestant: seconds}, flops)

    def measure(label, runners, flops, repeats=args.repeats, inner=1):
        seconds = w.interleaved(runners, repeats, inner)
        rows.append((label, seconds, flops))
        print(f"{label:44s} " + "  ".join(f"{k} {v * 1e3:8.1f} ms" for k, v in seconds.items()), flush=True)

    n = 2048
    peak = w.interleaved({TORCH: w.torch_matmul(n), OURS: w.flax_matmul(n, rb.jit)}, args.repeats, inner=3, stat=min)
    peak_gflops = {k: 2 * n**3 / v / 1e9 for k, v in peak.items()}
    print(f"matmul {n}x{n} f32: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peak_gflops.items()), flush=True)

    measure("3x3 conv 56x56x64, forward + backward", _conv3x3_runners(b), 3 * 2.0 * b * 56 * 56 * 9 * 64 * 64)
    for size_, channels, mid in w.STAGES:
        flops = w.block_flops(b, size_, channels, mid)
        for backward in (False, True):
            label = f"block {size_}x{size_}x{channels}/{mid}, {'forward + backward' if backward else 'forward'}"
            measure(label, {
                TORCH: w.torch_block(b, size_, channels, mid, backward=backward),
                PLAIN: w.flax_block(b, size_, channels, mid, jit=jax.jit, conv=nn.Conv, backward=backward),
                OURS: w.flax_block(b, size_, channels, mid, jit=rb.jit, backward=backward),
            }, flops * (3 if backward else 1))

    macs = rb.model_cost("resnet50", size)["macs"]
    measure(f"ResNet-50 inference {size}x{size}", {
        TORCH: w.torch_eval("resnet50", b, size),
        PLAIN: w.flax_eval("resnet50", b, size, jit=jax.jit, conv=nn.Conv),
        OURS: w.flax_eval("resnet50", b, size, jit=rb.jit, fold=True),
    }, 2.0 * macs * b, repeats=max(3, args.repeats - 2))
    measure(f"ResNet-50 training step {size}x{size}", {
        TORCH: w.torch_train_step("resnet50", b, size),
        PLAIN: w.flax_train_step("resnet50", b, size, jit=jax.jit, conv=nn.Conv),
        OURS: w.flax_train_step("resnet50", b, size, jit=rb.jit),
    }, 3 * 2.0 * macs * b, repeats=max(3, args.repeats - 2))

    top = max(peak_gflops.values())
    lines = [f"Matmul peak measured in this run ({n}x{n}, float32, best of {args.repeats} rounds): "
             + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peak_gflops.items()) + ".", "",
             f"| workload (batch {b}) | {TORCH} | {PLAIN} | {OURS} | ours vs PyTorch (time) | ours GFLOP/s (% of peak) |",
             "|---|---|---|---|---|---|"]
    for label, seconds, flops in rows:
        images = "inference" in label or "training" in label
        cell = (lambda s: f"{s * 1e3:.1f} ms ({b / s:.1f} img/s)") if images else (lambda s: f"{s * 1e3:.1f} ms")
        ratio = seconds[OURS] / seconds[TORCH]
        gflops = flops / seconds[OURS] / 1e9
        lines.append(f"| {label} | {cell(seconds[TORCH])} | {cell(seconds[PLAIN])} | {cell(seconds[OURS])} | "
                     f"**{ratio:.2f}x** | {gflops:.0f} ({100 * gflops / top:.0f}%) |")
    lines += ["", *verdicts(rows, peak_gflops)]
    table = "\n".join(lines)
    print(table)
    if args.write:
        plot(rows, b)
        write_section("cpu", f"CPU: ours against PyTorch and the plain Flax formulation (batch {b}, float32)", table,
                      note=f" (medians of interleaved rounds; {w.cores()} threads for everyone)",
                      text=("Time ratios below 1 mean ours is faster. The 3x3 conv row shows why "
                            "`resnet_bottleneck.jit` compiles with its own options on CPU (see `xla.py`). "
                            f"Plot: [{PLOT.name}](benchmarks/{PLOT.name})."))


def verdicts(rows, peak_gflops: dict[str, float]) -> list[str]:
    """The issue's targets, read off this run's rows (time ratios ours / PyTorch).

    For inference it also states the floor: the time ours would take if every FLOP ran at
    the matmul peak XLA reached in this run and nothing else cost anything.
    """
    ratio = {label: s[OURS] / s[TORCH] for label, s, _ in rows}
    infer_flops, infer_torch = next((flops, s[TORCH]) for label, s, flops in rows if "inference" in label)
    torch_infer = infer_flops / infer_torch / 1e9
    floor = infer_flops / (peak_gflops[OURS] * 1e9)
    forward = [v for k, v in ratio.items() if k.startswith("block") and k.endswith(", forward")]
    backward = [v for k, v in ratio.items() if k.startswith("block") and k.endswith("forward + backward")]
    infer = next(v for k, v in ratio.items() if "inference" in k)
    train = next(v for k, v in ratio.items() if "training" in k)

    def verdict(ok):
        return "**met**" if ok else "**not met**"

    return [
        f"- Block forward <= 1.0x PyTorch's time at all four stages: {verdict(max(forward) <= 1.0)} "
        f"(worst {max(forward):.2f}x).",
        f"- Block forward + backward <= 1.0x at all four stages: {verdict(max(backward) <= 1.0)} "
        f"(worst {max(backward):.2f}x, best {min(backward):.2f}x).",
        f"- ResNet-50 inference >= 1.2x PyTorch's images/s: {verdict(1 / infer >= 1.2)} ({1 / infer:.2f}x). "
        f"PyTorch's inference runs at {torch_infer:.0f} GFLOP/s; 1.2x that is {1.2 * torch_infer:.0f} GFLOP/s, "
        f"{120 * torch_infer / max(peak_gflops.values()):.0f}% of the best matmul measured in this run and "
        f"{120 * torch_infer / peak_gflops[OURS]:.0f}% of XLA's: at XLA's matmul peak, with nothing else costing "
        f"time, ours would take {floor * 1e3:.0f} ms; 1.2x needs <= {infer_torch / 1.2 * 1e3:.0f} ms.",
        f"- ResNet-50 training >= 1.0x PyTorch's images/s: {verdict(1 / train >= 1.0)} ({1 / train:.2f}x).",
    ]


def plot(rows, batch: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [label for label, _, _ in rows]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.5))
    ys = range(len(rows))
    for offset, name, color in ((-0.2, PLAIN, "#bbbbbb"), (0.2, OURS, "#1f77b4")):
        speed = [s[TORCH] / s[name] for _, s, _ in rows]
        ax.barh([y + offset for y in ys], speed, height=0.4, label=name, color=color)
    ax.axvline(1.0, color="black", lw=1, label="PyTorch")
    ax.set_yticks(list(ys), labels)
    ax.invert_yaxis()
    ax.set_xlabel("speed relative to PyTorch (higher is faster)")
    ax.set_title(f"CPU, batch {batch}, float32")
    ax.legend(loc="lower right")
    fig.tight_layout()
    tmp = PLOT.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(PLOT)
    plt.close(fig)


if __name__ == "__main__":
    assert BENCHMARKS_MD.exists()
    main()
