"""One accelerator, synthetic data: ResNet-50 training and inference images/s, and the block.

Workloads, in bfloat16 compute with float32 parameters (the usual mixed precision):

* ResNet-50 SGD training step at batch --batch (256), 224x224: images/s;
* ResNet-50 inference (BatchNorm folded) at the same batch: images/s;
* the bottleneck block at ResNet-50's four stage shapes, training mode, forward +
  backward: achieved TFLOP/s.

Every figure stands next to the chip's peak: its data-sheet dense bf16 peak where we
know the chip, and a large bf16 matmul measured in the same run. Reference points
(per GPU): MLPerf Training v4.0's hand-tuned H200 ResNet-50 reaches ~7,950 images/s;
NVIDIA's PyTorch AMP reference on A100 ~2,470. Our target on one H200: 4,000.

``--tiny`` runs the same code on any backend (the CPU included) at a toy size: the
smoke test CI runs. It writes nothing to BENCHMARKS.md.

    python benchmarks/bench_gpu.py [--batch 256] [--write] [--json out.json]
    python benchmarks/bench_gpu.py --tiny --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _workloads as w  # noqa: E402
from _report import SYSTEM_MALLOC, interleaved, write_section  # noqa: E402

import resnet_bottleneck as rb  # noqa: E402
from resnet_bottleneck.io import atomic_write  # noqa: E402

#: Data-sheet dense (no sparsity) bf16 peaks, TFLOP/s, by ``device_kind`` substring.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0, "A10G": 70.0}


def spec_peak(device) -> float | None:
    kind = getattr(device, "device_kind", "")
    return next((v for k, v in BF16_PEAK_TFLOPS.items() if k in kind), None)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="steps per timed round")
    parser.add_argument("--tiny", action="store_true", help="toy sizes on any backend (the CI smoke test)")
    parser.add_argument("--write", action="store_true", help="rewrite the GPU section of BENCHMARKS.md")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    reused = not SYSTEM_MALLOC and rb.xla.reuse_freed_memory()

    model, batch, size, steps, repeats = "resnet50", args.batch, args.image_size, args.steps, args.repeats
    stages, matmul_n, block_batch = w.STAGES, 8192, args.batch // 8
    if args.tiny:
        model, batch, size, steps, repeats = "resnet_tiny", 4, 32, 1, 1
        stages, matmul_n, block_batch = ((8, 32, 8), (4, 64, 16)), 256, 2
    device = jax.devices()[0]
    bf16 = jnp.bfloat16

    def timed(run, stat=statistics.median):
        return interleaved({"run": run}, repeats, inner=steps, stat=stat)["run"]

    peak_seconds = timed(w.flax_matmul(matmul_n, rb.xla.jit, bf16), stat=min)  # a peak: the best round
    measured_peak = 2 * matmul_n**3 / peak_seconds / 1e12
    spec = spec_peak(device)
    top = spec or measured_peak
    results = {
        "device": f"{device.platform}: {getattr(device, 'device_kind', '?')}",
        "model": model,
        "batch": batch,
        "image_size": size,
        "matmul_tflops": measured_peak,
        "spec_peak_tflops": spec,
        "rows": [],
    }

    def row(label, seconds, flops, images=None):
        tflops = flops / seconds / 1e12
        results["rows"].append(
            {
                "workload": label,
                "seconds": seconds,
                "tflops": tflops,
                "images_per_second": images / seconds if images else None,
                "fraction_of_peak": tflops / top,
            }
        )
        print(
            f"{label:48s} {seconds * 1e3:9.2f} ms  {tflops:8.2f} TFLOP/s"
            + (f"  {images / seconds:10.1f} img/s" if images else ""),
            flush=True,
        )

    macs = rb.model_cost(model, size)["macs"]
    train = timed(w.flax_train_step(model, batch, size, jit=rb.xla.jit, dtype=bf16))
    row(f"{model} training step, batch {batch}", train, 3 * 2.0 * macs * batch, images=batch)
    infer = timed(w.flax_eval(model, batch, size, jit=rb.xla.jit, fold=True, dtype=bf16))
    row(f"{model} inference (BN folded), batch {batch}", infer, 2.0 * macs * batch, images=batch)
    for s, channels, mid in stages:
        seconds = timed(w.flax_block(block_batch, s, channels, mid, jit=rb.xla.jit, dtype=bf16, backward=True))
        row(
            f"block {s}x{s}x{channels}/{mid}, batch {block_batch}, fwd + bwd",
            seconds,
            3 * w.block_flops(block_batch, s, channels, mid),
        )

    if args.json:
        atomic_write(args.json, lambda f: f.write(json.dumps(results, indent=2).encode()))
    if args.write and not args.tiny:
        peak_text = f"{spec:.0f} TFLOP/s data-sheet dense bf16" if spec else "no data-sheet figure known"
        lines = [
            f"Device: {results['device']}. Peak: {peak_text}; measured {matmul_n}x{matmul_n} bf16 matmul "
            f"{measured_peak:.0f} TFLOP/s.",
            "",
            "| workload | time | TFLOP/s | % of peak | images/s |",
            "|---|---|---|---|---|",
        ]
        for r in results["rows"]:
            images = f"**{r['images_per_second']:,.0f}**" if r["images_per_second"] else ""
            lines.append(
                f"| {r['workload']} | {r['seconds'] * 1e3:.2f} ms | {r['tflops']:.1f} | "
                f"{100 * r['fraction_of_peak']:.0f}% | {images} |"
            )
        write_section(
            "gpu",
            "GPU: ResNet-50 and the block in bf16, synthetic data",
            "\n".join(lines),
            reused_memory=reused,
            note=f" (medians of {repeats} rounds of {steps} steps)",
            text="Targets: >= 4,000 training images/s on one H200 (MLPerf v4.0 H200: ~7,950; "
            "NVIDIA's PyTorch AMP on A100: ~2,470).",
        )
    return results


if __name__ == "__main__":
    main()
