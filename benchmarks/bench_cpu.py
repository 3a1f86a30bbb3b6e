"""CPU speed, side by side: PyTorch, the plain Flax formulation, and ours, in one run.

Workloads (float32, all cores, batch --batch):

* the bottleneck block at ResNet-50's four stage shapes, BatchNorm in training mode:
  forward, and forward + backward (gradients of every parameter and of the input);
* ResNet-50 inference at 224x224 (ours: BatchNorm folded, :func:`fold_batchnorm`);
* a ResNet-50 SGD training step at 224x224.

Contestants: PyTorch runs torchvision's modules in ``channels_last``; "plain Flax" is
``nn.Conv``/``nn.BatchNorm`` under ``jax.jit`` with XLA's defaults (the models' plain form
for ResNet-50); "ours" is the library's defaults under :func:`resnet_bottleneck.xla.jit`.
Rounds are interleaved; times are medians. GFLOP/s counts 2 FLOPs per multiply-add of
the convolutions (backward = 2x forward), next to this run's measured matmul peak.

    python benchmarks/bench_cpu.py [--batch 8] [--repeats 7] [--write]
    python benchmarks/bench_cpu.py --quick    # toy sizes, one round: a smoke test that writes nothing
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _workloads as w  # noqa: E402
from _report import BENCHMARKS_MD, SYSTEM_MALLOC, cores, interleaved, write_section  # noqa: E402

import resnet_bottleneck as rb  # noqa: E402
from resnet_bottleneck.io import atomic_write  # noqa: E402

PLOT = Path(__file__).resolve().parent / "cpu.png"
TORCH, PLAIN, OURS = "PyTorch", "plain Flax", "ours"

#: Issue 5's targets: ours' speed as a multiple of PyTorch's (PyTorch's time over ours), at
#: least, by row kind. The verdicts under BENCHMARKS.md's CPU table state each one.
TARGETS = {"block forward": 1.0, "block forward + backward": 1.0, "inference": 1.2, "training": 1.0}


@dataclass
class Row:
    """One workload's seconds per call for each contestant, and the FLOPs of one call."""

    kind: str  # "conv", "block forward", "block forward + backward", "inference" or "training"
    label: str
    seconds: dict[str, float]
    flops: float

    @property
    def per_image(self) -> bool:
        return self.kind in ("inference", "training")

    def speed(self, contestant: str = OURS) -> float:
        """PyTorch's time over ``contestant``'s: above 1 is faster than PyTorch."""
        return self.seconds[TORCH] / self.seconds[contestant]


def _conv3x3_runners(batch: int, size: int, channels: int):
    """A 3x3 conv with its gradients: XLA's default kernels against ours."""
    import torch

    x = jnp.ones((batch, size, size, channels), jnp.float32)
    k = jnp.ones((3, 3, channels, channels), jnp.float32) * 0.01

    def conv_grad(x, k):
        y, vjp = jax.vjp(
            lambda x, k: lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")),
            x,
            k,
        )
        return vjp(y)

    default, ours = jax.jit(conv_grad), rb.xla.jit(conv_grad)
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
    tx = torch.randn(batch, channels, size, size).to(memory_format=torch.channels_last).requires_grad_(True)

    def torch_run():
        conv.zero_grad(set_to_none=True)
        tx.grad = None
        y = conv(tx)
        y.backward(y.detach())

    return {
        TORCH: torch_run,
        PLAIN: lambda: jax.block_until_ready(default(x, k)),
        OURS: lambda: jax.block_until_ready(ours(x, k)),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="toy sizes (resnet18 at 32x32), one round; writes nothing")
    parser.add_argument("--write", action="store_true", help="rewrite the CPU section of BENCHMARKS.md and the plot")
    args = parser.parse_args(argv)
    if args.write and args.quick:
        parser.error("--quick is a smoke test; it does not --write")
    reused = not SYSTEM_MALLOC and rb.xla.reuse_freed_memory()
    b, size, repeats, model, name = args.batch, args.image_size, args.repeats, "resnet50", "ResNet-50"
    stages, conv, n = w.STAGES, (56, 64), 2048
    if args.quick:
        b, size, repeats, model, name = 2, 32, 1, "resnet18", "ResNet-18"
        stages, conv, n = ((8, 64, 16),), (8, 16), 128
    rows: list[Row] = []

    def measure(kind, label, runners, flops, repeats=repeats, inner=1):
        rows.append(Row(kind, label, interleaved(runners, repeats, inner), flops))
        print(f"{label:44s} " + "  ".join(f"{k} {v * 1e3:8.1f} ms" for k, v in rows[-1].seconds.items()), flush=True)

    peak = interleaved({TORCH: w.torch_matmul(n), OURS: w.flax_matmul(n, rb.xla.jit)}, repeats, inner=3, stat=min)
    peak_gflops = {k: 2 * n**3 / v / 1e9 for k, v in peak.items()}
    print(f"matmul {n}x{n} f32: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peak_gflops.items()), flush=True)

    s, c = conv
    measure(
        "conv", f"3x3 conv {s}x{s}x{c}, forward + backward", _conv3x3_runners(b, s, c), 3 * 2.0 * b * s * s * 9 * c * c
    )
    for size_, channels, mid in stages:
        flops = w.block_flops(b, size_, channels, mid)
        for backward in (False, True):
            kind = "block forward + backward" if backward else "block forward"
            measure(
                kind,
                f"block {size_}x{size_}x{channels}/{mid}, {kind.removeprefix('block ')}",
                {
                    TORCH: w.torch_block(b, size_, channels, mid, backward=backward),
                    PLAIN: w.flax_block(b, size_, channels, mid, jit=jax.jit, conv=nn.Conv, backward=backward),
                    OURS: w.flax_block(b, size_, channels, mid, jit=rb.xla.jit, backward=backward),
                },
                flops * (3 if backward else 1),
            )

    macs = rb.model_cost(model, size)["macs"]
    model_repeats = repeats if args.quick else max(3, repeats - 2)  # the models' rounds are long
    measure(
        "inference",
        f"{name} inference {size}x{size}",
        {
            TORCH: w.torch_eval(model, b, size),
            PLAIN: w.flax_eval(model, b, size, jit=jax.jit, conv=nn.Conv),
            OURS: w.flax_eval(model, b, size, jit=rb.xla.jit, fold=True),
        },
        2.0 * macs * b,
        repeats=model_repeats,
    )
    measure(
        "training",
        f"{name} training step {size}x{size}",
        {
            TORCH: w.torch_train_step(model, b, size),
            PLAIN: w.flax_train_step(model, b, size, jit=jax.jit, conv=nn.Conv),
            OURS: w.flax_train_step(model, b, size, jit=rb.xla.jit),
        },
        3 * 2.0 * macs * b,
        repeats=model_repeats,
    )

    top = max(peak_gflops.values())
    lines = [
        f"Matmul peak measured in this run ({n}x{n}, float32, best of {repeats} rounds): "
        + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peak_gflops.items())
        + ".",
        "",
        f"| workload (batch {b}) | {TORCH} | {PLAIN} | {OURS} | ours vs PyTorch (time) | ours GFLOP/s (% of peak) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        cell = (lambda t: f"{t * 1e3:.1f} ms ({b / t:.1f} img/s)") if row.per_image else (lambda t: f"{t * 1e3:.1f} ms")
        gflops = row.flops / row.seconds[OURS] / 1e9
        lines.append(
            f"| {row.label} | {cell(row.seconds[TORCH])} | {cell(row.seconds[PLAIN])} | "
            f"{cell(row.seconds[OURS])} | **{1 / row.speed():.2f}x** | {gflops:.0f} ({100 * gflops / top:.0f}%) |"
        )
    lines += ["", *verdicts(rows, peak_gflops, name)]
    table = "\n".join(lines)
    print(table)
    if args.write:
        plot(rows, b)
        write_section(
            "cpu",
            f"CPU: ours against PyTorch and the plain Flax formulation (batch {b}, float32)",
            table,
            reused_memory=reused,
            note=f" (medians of interleaved rounds; {cores()} threads for everyone)",
            text=(
                "Time ratios below 1 mean ours is faster. The 3x3 conv row shows why "
                "`resnet_bottleneck.xla.jit` compiles with its own options on CPU (see `xla.py`). "
                f"Plot: [{PLOT.name}](benchmarks/{PLOT.name})."
            ),
        )


def verdicts(rows: list[Row], peak_gflops: dict[str, float], name: str = "ResNet-50") -> list[str]:
    """:data:`TARGETS`, read off this run's rows.

    For inference it also states the floor: the time ours would take if every FLOP ran at
    the matmul peak XLA reached in this run and nothing else cost anything.
    """
    speeds = {kind: [row.speed() for row in rows if row.kind == kind] for kind in TARGETS}
    forward = [1 / v for v in speeds["block forward"]]  # time ratios, ours / PyTorch
    backward = [1 / v for v in speeds["block forward + backward"]]
    (infer,), (train,) = speeds["inference"], speeds["training"]
    inference = next(row for row in rows if row.kind == "inference")
    torch_infer = inference.flops / inference.seconds[TORCH] / 1e9
    floor = inference.flops / (peak_gflops[OURS] * 1e9)
    stages = "all four stages" if len(forward) == 4 else f"all {len(forward)} stages"
    block_forward, block_backward = 1 / TARGETS["block forward"], 1 / TARGETS["block forward + backward"]
    need = TARGETS["inference"]

    def verdict(ok):
        return "**met**" if ok else "**not met**"

    return [
        f"- Block forward <= {block_forward:.1f}x PyTorch's time at {stages}: "
        f"{verdict(max(forward) <= block_forward)} (worst {max(forward):.2f}x).",
        f"- Block forward + backward <= {block_backward:.1f}x at {stages}: {verdict(max(backward) <= block_backward)} "
        f"(worst {max(backward):.2f}x, best {min(backward):.2f}x).",
        f"- {name} inference >= {need:.1f}x PyTorch's images/s: {verdict(infer >= need)} ({infer:.2f}x). "
        f"PyTorch's inference runs at {torch_infer:.0f} GFLOP/s; {need:.1f}x that is {need * torch_infer:.0f} GFLOP/s, "
        f"{100 * need * torch_infer / max(peak_gflops.values()):.0f}% of the best matmul measured in this run and "
        f"{100 * need * torch_infer / peak_gflops[OURS]:.0f}% of XLA's: at XLA's matmul peak, with nothing else "
        f"costing time, ours would take {floor * 1e3:.0f} ms; "
        f"{need:.1f}x needs <= {inference.seconds[TORCH] / need * 1e3:.0f} ms.",
        f"- {name} training >= {TARGETS['training']:.1f}x PyTorch's images/s: {verdict(train >= TARGETS['training'])} "
        f"({train:.2f}x).",
    ]


def plot(rows: list[Row], batch: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.5))
    ys = range(len(rows))
    for offset, contestant, color in ((-0.2, PLAIN, "#bbbbbb"), (0.2, OURS, "#1f77b4")):
        ax.barh(
            [y + offset for y in ys], [row.speed(contestant) for row in rows], height=0.4, label=contestant, color=color
        )
    ax.axvline(1.0, color="black", lw=1, label="PyTorch")
    ax.set_yticks(list(ys), [row.label for row in rows])
    ax.invert_yaxis()
    ax.set_xlabel("speed relative to PyTorch (higher is faster)")
    ax.set_title(f"CPU, batch {batch}, float32")
    ax.legend(loc="lower right")
    fig.tight_layout()
    atomic_write(PLOT, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


if __name__ == "__main__":
    assert BENCHMARKS_MD.exists()
    main()
