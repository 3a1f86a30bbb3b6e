"""CPU inference of timm's ResNets: timm's PyTorch eager, ours in XLA and ours in ONNX Runtime, side by side.

For each name (default ``resnet50d`` and ``seresnext50_32x4d``), float32, 224x224, all cores, rounds
interleaved, medians:

* timm, PyTorch eager: ``timm.create_model(name).eval()`` (random weights) in ``channels_last``, under
  ``inference_mode``, with as many torch threads as the other benchmarks give torch;
* ours in XLA: the Linen model, BatchNorm folded (:func:`fold_batchnorm`), under :func:`resnet_bottleneck.xla.jit`;
* ours in ONNX Runtime: :func:`export_onnx` of the same random variables (BatchNorm folded, dynamic batch,
  ``image_size`` fixed) with :func:`resnet_bottleneck.io.onnx.session_options`, fed NCHW and NHWC.

ONNX Runtime's output is checked against XLA's on the same weights (1e-4 of the logits' scale) before
anything is timed. A name the exporter refuses is still timed in PyTorch and XLA, and the report says why
ONNX Runtime is missing.

    python benchmarks/bench_timm.py [--models resnet50d seresnext50_32x4d] [--batches 1 8] [--repeats 7]
                                    [--quick] [--write]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _workloads as w  # noqa: E402
from _report import BENCHMARKS_MD, SYSTEM_MALLOC, cores, interleaved, write_section  # noqa: E402
from bench_deploy import random_variables  # noqa: E402

import resnet_bottleneck as rb  # noqa: E402

TORCH, XLA = "timm, PyTorch eager", "ours, XLA"
ORT = {"NCHW": "ours, ONNX Runtime (NCHW)", "NHWC": "ours, ONNX Runtime (NHWC)"}
TARGET = 1.25
MODELS = ("resnet50d", "seresnext50_32x4d")


def ort_runners(model, variables, x: np.ndarray, size: int, folder: Path) -> dict:
    """ONNX Runtime on :func:`export_onnx`'s files of ``model`` (one per layout), each a runner on ``x`` (NHWC)."""
    import onnxruntime as ort

    from resnet_bottleneck.io.onnx import session_options

    inputs = {"NCHW": np.ascontiguousarray(x.transpose(0, 3, 1, 2)), "NHWC": x}
    runners = {}
    for layout, label in ORT.items():
        path = rb.export_onnx(model, variables, folder / f"{layout}.onnx", layout=layout, image_size=size)
        session = ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
        runners[label] = partial(session.run, None, {"images": inputs[layout]})
    return runners


def contestants(name: str, batch: int, size: int, folder: Path):
    """The runners of ``name`` at one batch; ONNX Runtime's agreement with XLA on the same weights (``None``
    without ONNX Runtime); and why ONNX Runtime is missing (``None`` if it is not)."""
    model = rb.create_model(name)
    x = np.random.default_rng(0).standard_normal((batch, size, size, 3)).astype(np.float32)
    variables = random_variables(model, size)
    folded_model, folded = rb.fold_batchnorm(model, variables)
    forward = rb.xla.jit(partial(folded_model.apply, train=False))
    expected = np.asarray(forward(folded, x))
    runners = {TORCH: w.timm_eval(name, batch, size), XLA: lambda: forward(folded, x).block_until_ready()}
    try:
        sessions = ort_runners(model, variables, x, size, folder)
    except ValueError as err:  # the exporter names the layer it does not write
        return runners, None, f"{name} not exported: {err}"
    agreement = max(np.abs(run()[0] - expected).max() for run in sessions.values()) / np.abs(expected).max()
    return {**runners, **sessions}, float(agreement), None


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", default=list(MODELS), help="names of list_models() (default: %(default)s)"
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--pause",
        type=float,
        default=0.1,
        help="untimed seconds before each contestant's turn, for the other thread pools to go idle",
    )
    parser.add_argument("--quick", action="store_true", help="toy sizes (resnet18 at 32x32), one round; writes nothing")
    parser.add_argument("--write", action="store_true", help="rewrite the timm section of BENCHMARKS.md")
    args = parser.parse_args(argv)
    if args.write and args.quick:
        parser.error("--quick is a smoke test; it does not --write")
    unknown = [name for name in args.models if name not in rb.list_models()]
    if unknown:
        parser.error(f"--models: {', '.join(unknown)} not in resnet_bottleneck.list_models()")
    reused = not SYSTEM_MALLOC and rb.xla.reuse_freed_memory()
    start_load = ", ".join(f"{a:.2f}" for a in os.getloadavg())
    import onnxruntime
    import timm
    import torch

    names, size, batches, repeats = args.models, args.image_size, args.batches, args.repeats
    if args.quick:
        names, size, batches, repeats = ["resnet18"], 32, [1, 2], 1
    rows, agreements, missing = [], [], []
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            for batch in batches:
                runners, agreement, why = contestants(name, batch, size, Path(folder))
                if why is not None:
                    missing += [why] if why not in missing else []
                    print(why, flush=True)
                else:
                    agreements.append(agreement)
                    print(
                        f"{name}, batch {batch}: ONNX Runtime vs XLA, max |difference| / max |logit| = {agreement:.1e}",
                        flush=True,
                    )
                inner = max(1, 8 // batch)  # about as long a timed call at every batch
                seconds = interleaved(runners, repeats, inner, pause=args.pause)
                rows.append((name, batch, seconds))
                print(
                    f"{name}, batch {batch}: " + "  ".join(f"{k} {v * 1e3:.1f} ms" for k, v in seconds.items()),
                    flush=True,
                )
                del runners

    text = "\n".join([*table(rows), "", *verdicts(rows, agreements, missing)])
    print(text)
    if args.write:
        load = ", ".join(f"{a:.2f}" for a in os.getloadavg())
        write_section(
            "timm",
            "timm's ResNets: inference on CPU, timm's PyTorch eager vs ours in XLA and ONNX Runtime (float32)",
            text,
            reused_memory=reused,
            note=f" (medians of {repeats} interleaved rounds at {size}x{size}; {cores()} threads for everyone; "
            f"torch {torch.__version__}, timm {timm.__version__}, onnxruntime {onnxruntime.__version__}; load "
            f"average at the start {start_load}, at the end {load}, this run's own threads included)",
            text="Ratios are images/s relative to timm's PyTorch eager on the same architecture (above 1 is "
            "faster); random weights. `resnet-bottleneck export` writes the graphs timed here.",
        )


def table(rows) -> list[str]:
    """One row a (name, batch): each contestant's time, images/s and speed relative to timm's PyTorch."""
    contenders = [XLA, *ORT.values()]
    lines = [f"| model | batch | {TORCH} | " + " | ".join(contenders) + " |", "|---" * (3 + len(contenders)) + "|"]
    for name, batch, s in rows:
        cells = [
            f"{s[k] * 1e3:.1f} ms, {batch / s[k]:.1f} img/s (**{s[TORCH] / s[k]:.2f}x**)" if k in s else "-"
            for k in contenders
        ]
        torch_cell = f"{s[TORCH] * 1e3:.1f} ms, {batch / s[TORCH]:.1f} img/s (1.00x)"
        lines.append(f"| {name} | {batch} | {torch_cell} | " + " | ".join(cells) + " |")
    return lines


def verdicts(rows, agreements, missing=()) -> list[str]:
    """The target, read off the rows, per name: one ONNX Runtime layout must reach it at every batch."""
    lines = []
    for name in dict.fromkeys(name for name, _, _ in rows):
        mine = [(batch, s) for n, batch, s in rows if n == name]
        if not all(label in s for _, s in mine for label in ORT.values()):
            lines.append(f"- {name}: ONNX Runtime >= {TARGET}x timm's images/s at every batch: **not measured**.")
            continue
        speed = {layout: {batch: s[TORCH] / s[label] for batch, s in mine} for layout, label in ORT.items()}
        met = [layout for layout, ratios in speed.items() if min(ratios.values()) >= TARGET]
        shown = "; ".join(
            f"{layout} " + ", ".join(f"batch {b}: {r:.2f}x" for b, r in ratios.items())
            for layout, ratios in speed.items()
        )
        verdict = f"**met** ({', '.join(met)})" if met else "**not met**"
        lines.append(
            f"- {name}: ONNX Runtime >= {TARGET}x timm's images/s at every batch: {verdict}. Measured: {shown}."
        )
    if agreements:
        lines.append(
            f"- ONNX Runtime agrees with XLA on the same weights: max |difference| <= {max(agreements):.1e} of "
            "the largest logit (bound 1e-4)."
        )
    lines += [f"- {why}" for why in missing]
    return lines


if __name__ == "__main__":
    assert BENCHMARKS_MD.exists()
    main()
