"""CPU deployment: ResNet inference in PyTorch, in XLA and in ONNX Runtime and OpenVINO on our export, side by side.

For each of ``--models`` (default ``resnet50``; e.g. ``resnet18`` and timm's ``resnet50d`` too), one report
section. Contestants, float32, 224x224, all cores, rounds interleaved, medians:

* PyTorch eager: torchvision's model (timm's for a name torchvision lacks) in ``channels_last`` under
  ``inference_mode``;
* ours in XLA: BatchNorm folded (:func:`fold_batchnorm`), under :func:`resnet_bottleneck.xla.jit`;
* ours in ONNX Runtime: :func:`export_onnx`'s graph (BatchNorm folded, one Conv per conv,
  dynamic batch, ``image_size`` fixed) with :func:`resnet_bottleneck.io.onnx.session_options`,
  fed NCHW and NHWC.

The ONNX Runtime output is checked against XLA's on the same weights (1e-4 of the logits'
scale) before anything is timed. ``--options`` also times session-option variants and the
graph with dynamic height and width against the defaults (one interleaved A/B run per batch).

In the same interleaved rounds, int8 and the other precisions (issue 26), the same weights throughout:

* ours int8: :func:`~resnet_bottleneck.io.quantize.quantize_onnx` on the NCHW graph (QDQ, per-channel
  int8 weights, uint8 activations, min-max calibration), run by ONNX Runtime and by OpenVINO;
* ours in OpenVINO, float32 (``INFERENCE_PRECISION_HINT=f32``) and bf16 (where the CPU has it);
* PyTorch's own int8: ``torchvision.models.quantization`` (``quantize=False``, the same float weights
  loaded), fused, eager post-training quantization with the ``x86`` backend, calibrated on the same
  images as ours (``--calibration-images`` random images, normalised as ImageNet's); for a timm variant,
  timm's model with the same weights through FX graph-mode quantization (``prepare_fx``/``convert_fx``,
  ``get_default_qconfig_mapping('x86')``).

    python benchmarks/bench_deploy.py [--models resnet50 resnet18 resnet50d] [--batches 1 8] [--repeats 7]
                                      [--options] [--quick] [--write]
"""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _workloads as w  # noqa: E402
from _report import BENCHMARKS_MD, SYSTEM_MALLOC, cores, interleaved, write_section  # noqa: E402

import resnet_bottleneck as rb  # noqa: E402

TORCH, XLA = "PyTorch eager", "ours, XLA"
ORT = {"NCHW": "ours, ONNX Runtime (NCHW)", "NHWC": "ours, ONNX Runtime (NHWC)"}
TARGET, MOONSHOT = 1.25, 1.5
TORCH_INT8 = "PyTorch int8 (PTQ, x86)"
INT8 = {"onnxruntime": "ours int8, ONNX Runtime", "openvino": "ours int8, OpenVINO"}
OV_F32, OV_BF16 = "ours f32, OpenVINO", "ours bf16, OpenVINO"
INT8_TARGET, INT8_MOONSHOT = 1.2, 1.5
#: The models timed by default, and those torchvision builds (its quantizable twins too); any other family
#: name is timm's model (its PyTorch int8 by FX graph-mode quantization).
MODELS = ("resnet50",)
TORCHVISION = ("resnet18", "resnet50")


def _session(proto, **changes):
    """An ONNX Runtime session with our options, ``changes`` applied (``spinning``, ``level``, ``threads``)."""
    import onnxruntime as ort

    from resnet_bottleneck.io.onnx import session_options

    options = session_options(changes.get("threads"))
    if "level" in changes:
        options.graph_optimization_level = changes["level"]
    if "spinning" in changes:
        options.add_session_config_entry("session.intra_op.allow_spinning", changes["spinning"])
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def random_variables(model, size: int, seed: int = 0) -> dict:
    """Random variables of ``model`` without compiling its ``init``: kernels normal over the square root of
    their fan-in, BatchNorm scales and variances in [0.5, 1.5), other vectors 0.1 normal."""
    from flax import traverse_util

    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, size, size, 3), np.float32))
    flat = {}
    for key, leaf in traverse_util.flatten_dict(dict(shapes)).items():
        if key[-1] == "kernel":
            value = rng.standard_normal(leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
        elif key[-1] in ("scale", "var"):
            value = 0.5 + rng.random(leaf.shape)
        else:
            value = 0.1 * rng.standard_normal(leaf.shape)
        flat[key] = value.astype(np.float32)
    return traverse_util.unflatten_dict(flat)


def contestants(name: str, batch: int, size: int):
    """The runners at one batch, and ONNX Runtime's agreement with XLA on the same weights."""
    from resnet_bottleneck.io.onnx import onnx_model

    model = rb.create_model(name)
    x = np.random.default_rng(0).standard_normal((batch, size, size, 3)).astype(np.float32)
    variables = random_variables(model, size)
    folded_model, folded = rb.fold_batchnorm(model, variables)
    forward = rb.xla.jit(partial(folded_model.apply, train=False))
    protos = {layout: onnx_model(model, variables, layout=layout, image_size=size) for layout in ORT}
    inputs = {"NCHW": np.ascontiguousarray(x.transpose(0, 3, 1, 2)), "NHWC": x}
    sessions = {layout: _session(proto) for layout, proto in protos.items()}
    expected = np.asarray(forward(folded, x))
    agreement = max(np.abs(s.run(None, {"images": inputs[k]})[0] - expected).max() for k, s in sessions.items())
    agreement /= np.abs(expected).max()
    torch_eval = w.torch_eval if name in TORCHVISION else w.timm_eval
    runners = {TORCH: torch_eval(name, batch, size), XLA: lambda: forward(folded, x).block_until_ready()}
    for layout, s in sessions.items():
        runners[ORT[layout]] = partial(s.run, None, {"images": inputs[layout]})
    return runners, agreement, protos["NCHW"], onnx_model(model, variables), inputs["NCHW"]


def openvino_version() -> str:
    from resnet_bottleneck.io.onnx import openvino_version

    return openvino_version()


def calibration_images(count: int, size: int, seed: int = 1) -> np.ndarray:
    """``count`` random uint8 NHWC images: the calibration set both int8 contestants share."""
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def torch_int8_model(name: str, variables, calibration: np.ndarray):
    """PyTorch's own int8 ``name`` with our float ``variables``, calibrated on ``calibration`` (normalised as
    ImageNet's), x86 backend: torchvision's quantizable model (``torchvision.models.quantization``, fused, eager
    post-training quantization) for resnet18 and resnet50; for any other name timm's model
    (:func:`~resnet_bottleneck.io.timm.to_timm` weights) through FX graph-mode post-training quantization
    (``prepare_fx``/``convert_fx`` with ``get_default_qconfig_mapping('x86')``), PyTorch's way for a model
    without hand-written quant stubs."""
    import warnings

    from resnet_bottleneck.data.transforms import normalize

    torch = w._torch()
    torch.backends.quantized.engine = "x86"
    images = torch.from_numpy(np.ascontiguousarray(normalize(calibration).transpose(0, 3, 1, 2)))
    with warnings.catch_warnings():  # torch.ao.quantization's APIs and its observers warn of deprecations
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        if name in TORCHVISION:
            import torchvision.models.quantization as tq

            from resnet_bottleneck.io.torchvision import to_torchvision

            model = getattr(tq, name)(weights=None, quantize=False)
            state = to_torchvision(variables, name, as_numpy=True)
        else:
            import timm

            from resnet_bottleneck.io.timm import to_timm

            model = timm.create_model(name, pretrained=False)
            state = to_timm(variables, name, as_numpy=True)
        model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()})
        model.eval()
        if name in TORCHVISION:
            model.fuse_model()
            model.qconfig = torch.ao.quantization.get_default_qconfig("x86")
            torch.ao.quantization.prepare(model, inplace=True)
        else:
            from torch.ao.quantization import get_default_qconfig_mapping
            from torch.ao.quantization.quantize_fx import prepare_fx

            model = prepare_fx(model, get_default_qconfig_mapping("x86"), (images[:1],))
        with torch.inference_mode():
            for start in range(0, len(images), 8):
                model(images[start : start + 8])
        if name in TORCHVISION:
            torch.ao.quantization.convert(model, inplace=True)
        else:
            from torch.ao.quantization.quantize_fx import convert_fx

            model = convert_fx(model)
    return model


def torch_int8(name: str, variables, calibration: np.ndarray, x: np.ndarray):
    """A runner of :func:`torch_int8_model` on the NCHW batch ``x``."""
    return _torch_runner(torch_int8_model(name, variables, calibration), x)


def _torch_runner(model, x: np.ndarray):
    torch = w._torch()
    batch = torch.from_numpy(x)

    def run():
        with torch.inference_mode():
            return model(batch)

    return run


def precision_models(name: str, variables, float_proto, calibration: np.ndarray, tmp: Path) -> dict:
    """Each precision contestant of one model, built once for every batch: label -> a function of an NCHW
    batch (ours int8 from ``float_proto`` on both runtimes, ours in OpenVINO float32 and bf16, PyTorch's own
    int8), and ``'float32'``, our float32 on ONNX Runtime (the reference)."""
    from resnet_bottleneck.data import ImageArrays
    from resnet_bottleneck.io.onnx import load_onnx, openvino_bf16
    from resnet_bottleneck.io.quantize import quantize_onnx

    float_path = tmp / f"{name}-float32.onnx"
    float_path.write_bytes(float_proto.SerializeToString())
    source = ImageArrays(calibration, np.zeros(len(calibration), np.int32), ("",))
    int8_path = quantize_onnx(float_path, tmp / f"{name}-int8.onnx", source, images=len(calibration)).path
    sessions = {INT8[r]: load_onnx(int8_path, runtime=r, threads=cores()).session for r in INT8}
    sessions[OV_F32] = load_onnx(float_path, runtime="openvino", threads=cores()).session
    if openvino_bf16():
        sessions[OV_BF16] = load_onnx(float_path, runtime="openvino", threads=cores(), precision="bf16").session
    sessions["float32"] = load_onnx(float_path, runtime="onnxruntime", threads=cores()).session
    models = {label: partial(_session_runner, s) for label, s in sessions.items()}
    models[TORCH_INT8] = torch_int8_model(name, variables, calibration)
    return models


def _session_runner(session, x: np.ndarray):
    return partial(session.run, None, {"images": x})


def precision_contestants(models: dict, x: np.ndarray):
    """The runners of :func:`precision_models` on the NCHW batch ``x``, and each one's output's max |difference|
    from our float32 (ONNX Runtime) over its largest logit."""
    runners = {
        label: _torch_runner(make, x) if label == TORCH_INT8 else make(x)
        for label, make in models.items()
        if label != "float32"
    }
    expected = models["float32"](x)()[0]
    scale = np.abs(expected).max()
    outputs = {label: np.asarray(run()[0] if label != TORCH_INT8 else run()) for label, run in runners.items()}
    return runners, {label: float(np.abs(out - expected).max() / scale) for label, out in outputs.items()}


def option_variants(proto, dynamic, x):
    """Session-option variants of the NCHW graph, each against the defaults; and the graph with dynamic
    height and width."""
    import onnxruntime as ort

    variants = {
        "defaults (ORT_ENABLE_ALL, spinning)": {},
        "dynamic height and width": {"proto": dynamic},
        "no spinning (allow_spinning 0)": {"spinning": "0"},
        "ORT_ENABLE_EXTENDED (no NCHWc layout)": {"level": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED},
        "ORT_ENABLE_BASIC": {"level": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC},
        "1 intra-op thread": {"threads": 1},
    }
    return {
        label: partial(_session(changes.pop("proto", proto), **changes).run, None, {"images": x})
        for label, changes in variants.items()
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        nargs="+",
        help=f"family names, each timed with every contestant (default: {' '.join(MODELS)}; also e.g. resnet18 "
        "and timm's resnet50d)",
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
    parser.add_argument("--options", action="store_true", help="also time session-option variants (A/B)")
    parser.add_argument(
        "--calibration-images", type=int, default=64, help="random images both int8 contestants calibrate on"
    )
    parser.add_argument("--quick", action="store_true", help="toy sizes (resnet18 at 32x32), one round; writes nothing")
    parser.add_argument("--write", action="store_true", help="rewrite the deploy section of BENCHMARKS.md")
    args = parser.parse_args(argv)
    if args.write and args.quick:
        parser.error("--quick is a smoke test; it does not --write")
    unknown = [name for name in args.models or () if name not in rb.list_models()]
    if unknown:
        parser.error(f"--models: {', '.join(unknown)} not in resnet_bottleneck.list_models()")
    reused = not SYSTEM_MALLOC and rb.xla.reuse_freed_memory()
    start_load = ", ".join(f"{a:.2f}" for a in os.getloadavg())

    import onnxruntime
    import torch

    names, size, batches, repeats = args.models or list(MODELS), args.image_size, args.batches, args.repeats
    calibration = args.calibration_images
    if args.quick:
        names, size, batches, repeats, calibration = args.models or ["resnet18"], 32, [1, 2], 1, 4
    calibration = calibration_images(calibration, size)
    sections = []
    for name in names:
        print(f"{name}:", flush=True)
        sections.append(time_model(name, size, batches, repeats, calibration, args))
    text = "\n\n".join(sections)
    print(text)
    if args.write:
        load = ", ".join(f"{a:.2f}" for a in os.getloadavg())
        write_section(
            "deploy",
            f"Deploy: {', '.join(names)} inference on CPU, PyTorch vs XLA vs ONNX Runtime and OpenVINO on our export "
            "(float32; bf16 and int8 against PyTorch's own int8)",
            text,
            reused_memory=reused,
            note=f" (medians of {repeats} interleaved rounds; {cores()} threads for everyone; "
            f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, openvino {openvino_version()}; "
            f"{len(calibration)} random calibration images for both int8 contestants; load average at the start "
            f"{start_load}, at the end {load}, this run's own threads included)",
            text="Ratios are images/s relative to PyTorch (above 1 is faster). `resnet-bottleneck export IN OUT.onnx "
            "--image-size 224` writes the graph timed here (`--int8` its int8 form); `predict` runs it with these "
            "session options. PyTorch's own int8 is torchvision's quantizable model (eager post-training "
            "quantization) for resnet18 and resnet50, and timm's model through FX graph-mode quantization for "
            "timm's variants; x86 backend, the same weights and calibration images as ours.",
        )


def time_model(name: str, size: int, batches, repeats: int, calibration: np.ndarray, args) -> str:
    """Every contestant of one model at each batch, interleaved: its section of the report (a heading, the
    float32 table and verdicts, the options table, the int8 table and verdicts)."""
    import tempfile

    rows, option_rows, agreements, precision_errors = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        models = None
        for batch in batches:
            runners, agreement, proto, dynamic, x = contestants(name, batch, size)
            agreements.append(agreement)
            print(f"batch {batch}: ONNX Runtime vs XLA, max |difference| / max |logit| = {agreement:.1e}", flush=True)
            if models is None:  # quantized once per model; every batch runs the same files
                variables = random_variables(rb.create_model(name), size)  # contestants' weights (the same seed)
                models = precision_models(name, variables, proto, calibration, Path(tmp))
            more, errors = precision_contestants(models, x)
            runners.update(more)
            precision_errors.append((batch, errors))
            print(
                f"batch {batch}: max |difference| / max |logit| from our float32: "
                + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()),
                flush=True,
            )
            inner = max(1, 8 // batch)  # about as long a timed call at every batch
            seconds = interleaved(runners, repeats, inner, pause=args.pause)
            rows.append((batch, seconds))
            print(f"batch {batch}: " + "  ".join(f"{k} {v * 1e3:.1f} ms" for k, v in seconds.items()), flush=True)
            if args.options:
                variants = interleaved(option_variants(proto, dynamic, x), repeats, inner, pause=args.pause)
                option_rows.append((batch, variants))
                print(
                    f"batch {batch} options: " + "  ".join(f"{k} {v * 1e3:.1f} ms" for k, v in variants.items()),
                    flush=True,
                )
            del runners
    source = "torchvision" if name in TORCHVISION else "timm"
    how = (
        "torchvision's quantizable model, eager post-training quantization"
        if name in TORCHVISION
        else "timm's model, FX graph-mode post-training quantization"
    )
    lines = [
        f"### {name}",
        "",
        f"PyTorch eager: {source}'s {name}; PyTorch's own int8: {how}, our weights.",
        "",
        *table(rows),
        "",
        *verdicts(rows, agreements),
        *options_table(option_rows),
    ]
    lines += ["", *int8_table(rows), "", *int8_verdicts(rows, precision_errors)]
    return "\n".join(lines)


def table(rows) -> list[str]:
    """One row a batch: each contestant's time, images/s and speed relative to PyTorch."""
    contenders = [XLA, *ORT.values()]
    lines = [f"| batch | {TORCH} | " + " | ".join(contenders) + " |", "|---" * (2 + len(contenders)) + "|"]
    for batch, s in rows:
        cells = [f"{s[k] * 1e3:.1f} ms, {batch / s[k]:.1f} img/s (**{s[TORCH] / s[k]:.2f}x**)" for k in contenders]
        lines.append(
            f"| {batch} | {s[TORCH] * 1e3:.1f} ms, {batch / s[TORCH]:.1f} img/s (1.00x) | " + " | ".join(cells) + " |"
        )
    return lines


def verdicts(rows, agreements) -> list[str]:
    """The targets, read off the rows: one file (one layout) must reach them at every batch."""
    speed = {layout: {batch: s[TORCH] / s[ORT[layout]] for batch, s in rows} for layout in ORT}
    shown = "; ".join(
        f"{layout} " + ", ".join(f"batch {b}: {r:.2f}x" for b, r in ratios.items()) for layout, ratios in speed.items()
    )

    def verdict(bound):
        met = [layout for layout, ratios in speed.items() if min(ratios.values()) >= bound]
        return f"**met** ({', '.join(met)})" if met else "**not met**"

    return [
        f"- ONNX Runtime on our export >= {TARGET}x PyTorch's images/s at every batch: {verdict(TARGET)}; "
        f"moonshot {MOONSHOT}x: {verdict(MOONSHOT)}. Measured: {shown}.",
        f"- ONNX Runtime agrees with XLA on the same weights: max |difference| <= "
        f"{max(agreements):.1e} of the largest logit (bound 1e-4).",
    ]


def int8_table(rows) -> list[str]:
    """Int8 and the other precisions, one row a batch, relative to PyTorch's own int8 (above 1 is faster)."""
    order = [*INT8.values(), TORCH, ORT["NCHW"], OV_F32, OV_BF16]
    contenders = [k for k in order if any(k in s for _, s in rows)]
    lines = [
        "Int8 and other precisions, the same weights (images/s relative to PyTorch's own int8; above 1 is faster):",
        "",
        f"| batch | {TORCH_INT8} | " + " | ".join(contenders) + " |",
        "|---" * (2 + len(contenders)) + "|",
    ]
    for batch, s in rows:
        base = s[TORCH_INT8]
        cells = [
            f"{s[k] * 1e3:.1f} ms, {batch / s[k]:.1f} img/s (**{base / s[k]:.2f}x**)" if k in s else "-"
            for k in contenders
        ]
        lines.append(f"| {batch} | {base * 1e3:.1f} ms, {batch / base:.1f} img/s (1.00x) | " + " | ".join(cells) + " |")
    return lines


def int8_verdicts(rows, precision_errors) -> list[str]:
    """The int8 targets (one runtime must reach them at every batch) and how far each output is from float32."""
    speed = {r: {batch: s[TORCH_INT8] / s[label] for batch, s in rows} for r, label in INT8.items()}
    shown = "; ".join(f"{r} " + ", ".join(f"batch {b}: {x:.2f}x" for b, x in v.items()) for r, v in speed.items())

    def verdict(bound):
        met = [r for r, ratios in speed.items() if min(ratios.values()) >= bound]
        return f"**met** ({', '.join(met)})" if met else "**not met**"

    worst = {}
    for _, errors in precision_errors:
        for label, error in errors.items():
            worst[label] = max(worst.get(label, 0.0), error)
    return [
        f"- ours int8 >= {INT8_TARGET}x PyTorch's own int8 images/s at every batch: {verdict(INT8_TARGET)}; "
        f"moonshot {INT8_MOONSHOT}x: {verdict(INT8_MOONSHOT)}. Measured: {shown}.",
        "- Max |difference| from our float32 over its largest logit (random weights and images, so only a "
        "sanity check; accuracy is measured on trained models, docs/deploying.md): "
        + ", ".join(f"{label} {error:.1e}" for label, error in worst.items())
        + ".",
    ]


def options_table(option_rows) -> list[str]:
    if not option_rows:
        return []
    labels = list(option_rows[0][1])
    lines = [
        "",
        "Session options and shapes, NCHW graph, one interleaved A/B run per batch (time relative to the defaults; "
        "above 1 is slower):",
        "",
        "| batch | " + " | ".join(labels) + " |",
        "|---" * (1 + len(labels)) + "|",
    ]
    for batch, s in option_rows:
        base = s[labels[0]]
        lines.append(f"| {batch} | " + " | ".join(f"{s[k] * 1e3:.1f} ms ({s[k] / base:.2f})" for k in labels) + " |")
    return lines


if __name__ == "__main__":
    assert BENCHMARKS_MD.exists()
    main()
