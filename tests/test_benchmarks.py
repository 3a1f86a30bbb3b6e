"""The benchmarks' smoke tests: each script's code at a toy size on the CPU, as CI runs it, and the
shared timing and reporting code against hand-worked answers. Nothing here times anything."""

import ast
import importlib
import json
import math
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import resnet_bottleneck as rb

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"


@pytest.fixture
def bench(monkeypatch):
    """Imports a benchmark module from ``benchmarks/``, opted out of ``reuse_freed_memory`` (process-wide)."""
    monkeypatch.syspath_prepend(str(BENCH))

    def load(name):
        module = importlib.import_module(name)
        if hasattr(module, "SYSTEM_MALLOC"):
            monkeypatch.setattr(module, "SYSTEM_MALLOC", True)
        return module

    return load


def test_gpu_benchmark_runs_tiny(tmp_path):
    out = tmp_path / "gpu.json"
    before = (ROOT / "BENCHMARKS.md").read_text()
    proc = subprocess.run(
        [sys.executable, str(BENCH / "bench_gpu.py"), "--tiny", "--json", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["model"] == "resnet_tiny" and result["batch"] == 4
    assert [r["workload"].split(",")[0] for r in result["rows"]] == [
        "resnet_tiny training step",
        "resnet_tiny inference (BN folded)",
        "block 8x8x32/8",
        "block 4x4x64/16",
    ]
    for r in result["rows"]:
        assert r["seconds"] > 0 and math.isfinite(r["tflops"]) and r["tflops"] > 0
    assert result["rows"][0]["images_per_second"] == 4 / result["rows"][0]["seconds"]
    assert result["matmul_tflops"] > 0
    assert (ROOT / "BENCHMARKS.md").read_text() == before  # --tiny never writes the report


def test_forward_fold_and_models_benchmarks_run_tiny(bench, capsys, monkeypatch):
    """bench_forward --quick, bench_fold and bench_models on resnet_tiny at 32x32; the allocator is
    each main's own explicit call (recorded here, not made), and nothing is written."""
    before = (ROOT / "BENCHMARKS.md").read_text()
    calls = []
    monkeypatch.setattr(rb.xla, "reuse_freed_memory", lambda: calls.append("reuse") or False)
    forward = bench("bench_forward")
    monkeypatch.setattr(forward, "SYSTEM_MALLOC", False)
    forward.main(["--quick"])
    assert calls == ["reuse"]
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| input (H, W, C) | mid | textbook eager / call | ours / call | speed-up |")
    assert table[2].startswith("| (4, 4, 4) worked example | 2 |") and len(table) == 3

    bench("bench_fold").main(["--model", "resnet_tiny", "--batch", "1", "--image-size", "32", "--repeats", "1"])
    row = capsys.readouterr().out.splitlines()[-1].split(" | ")
    assert row[:2] == ["| resnet_tiny", "1"] and float(row[-1].rstrip(" |")) < 1e-4  # folded == unfolded

    memory = bench("bench_models").measure("resnet_tiny", 2, 32, {"scan": True, "remat": True})
    assert memory["compile_s"] > 0 and 0 < memory["temp_gib"] < memory["total_gib"]
    assert calls == ["reuse"] and (ROOT / "BENCHMARKS.md").read_text() == before


def test_nnx_benchmark_runs_tiny(bench, capsys, monkeypatch):
    """bench_nnx on resnet_tiny at 16x16, one round: every NNX contestant runs (the Linen ones are
    _workloads', run by the other smoke tests, so stand-ins here), the table is complete, nothing is written."""
    before = (ROOT / "BENCHMARKS.md").read_text()
    module = bench("bench_nnx")
    monkeypatch.setattr(module.w, "flax_train_step", lambda *args, **kwargs: lambda: None)
    monkeypatch.setattr(module.w, "flax_eval", lambda *args, **kwargs: lambda: None)
    module.main(
        [
            "--model",
            "resnet_tiny",
            "--batch",
            "2",
            "--image-size",
            "16",
            "--repeats",
            "1",
            "--steps",
            "1",
            "--overhead-rounds",
            "0",
        ]
    )
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| resnet_tiny")]
    contestants = [module.LINEN, module.NNX_JIT, module.CACHED, module.SPLIT]
    assert [r[:2] for r in rows] == [
        [f"| resnet_tiny {w}, batch 2, 16x16", c] for w in ("train step", "inference") for c in contestants
    ]
    assert all(float(r[2].split()[0]) > 0 for r in rows if r[1] != module.LINEN)
    assert (ROOT / "BENCHMARKS.md").read_text() == before


def test_importing_the_shared_modules_changes_nothing(bench, monkeypatch):
    """Neither ``_report`` nor ``_workloads`` touches the allocator (or anything) when imported."""

    def refuse():
        raise AssertionError("reuse_freed_memory() called on import")

    monkeypatch.setattr(rb.xla, "reuse_freed_memory", refuse)
    for name in ("_report", "_workloads"):
        monkeypatch.delitem(sys.modules, name, raising=False)
        bench(name)


def test_benchmarks_import_only_the_public_surface():
    """No private module or name of the library, and nothing from ``tests/``."""
    for script in sorted(BENCH.glob("*.py")):
        tree = ast.parse(script.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("resnet_bottleneck"):
                assert not any(part.startswith("_") for part in node.module.split(".")), (script.name, node.module)
                assert not any(alias.name.startswith("_") for alias in node.names), (script.name, node.module)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "rb":
                assert not node.attr.startswith("_"), (script.name, node.attr)
        assert '"tests"' not in script.read_text(), script.name


def test_interleaved_rounds_warm_up_then_alternate(bench, monkeypatch):
    """Two warm-up calls each, then rounds alternating between runners; ``inner`` calls per round
    divide the round's time; the median (or ``min``) of the rounds. Time here is a fake clock."""
    report = bench("_report")
    clock, order = [0.0], []
    monkeypatch.setattr(report, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    durations = {"a": iter([9, 9, 3.0, 3.0, 1.0, 1.0, 2.0, 2.0]), "b": iter([9, 9, 5.0, 4.0, 6.0])}

    def runner(label):
        def run():
            order.append(label)
            clock[0] += next(durations[label])

        return run

    seconds = report.interleaved({"a": runner("a"), "b": runner("b")}, repeats=3, inner={"a": 2, "b": 1})
    assert order == ["a", "a", "b", "b"] + ["a", "a", "b"] * 3
    assert seconds == {"a": 2.0, "b": 5.0}  # a's rounds: 3, 1, 2 per call; b's: 5, 4, 6

    clock[0], order[:] = 0.0, []
    durations = {"a": iter([9, 9, 3.0, 1.0, 2.0]), "b": iter([9, 9, 5.0, 4.0, 6.0])}
    assert report.interleaved({"a": runner("a"), "b": runner("b")}, repeats=3, stat=min) == {"a": 1.0, "b": 4.0}


def test_a_pause_before_each_turn_is_not_timed(bench, monkeypatch):
    report = bench("_report")
    clock, events = [0.0], []

    def sleep(seconds):
        events.append(("sleep", seconds))
        clock[0] += seconds

    monkeypatch.setattr(report, "time", types.SimpleNamespace(perf_counter=lambda: clock[0], sleep=sleep))

    def run():
        events.append("run")
        clock[0] += 1.0

    assert report.interleaved({"a": run}, repeats=2, pause=0.5, warmup=0) == {"a": 1.0}
    assert events == [("sleep", 0.5), "run", ("sleep", 0.5), "run"]


def test_sections_are_replaced_whole_and_appended(bench, tmp_path):
    report = bench("_report")
    path = tmp_path / "B.md"
    path.write_text("# B\n\n<!-- x:start -->\nold x\n<!-- x:end -->\n\nkept\n")
    report.update_section("x", "new x\n", path)
    report.update_section("y", "y", path)
    assert (
        path.read_text()
        == "# B\n\n<!-- x:start -->\nnew x\n<!-- x:end -->\n\nkept\n\n<!-- y:start -->\ny\n<!-- y:end -->\n"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["B.md"]  # no temporary left behind


def test_cpu_verdicts_read_typed_rows_against_the_targets(bench, tmp_path, monkeypatch):
    """Met and not met, worked by hand: block forward 0.9x PyTorch's time (met); forward + backward
    0.9x and 1.1x (not met); inference 1.25x PyTorch's images/s (met); training 0.8x (not met)."""
    cpu = bench("bench_cpu")
    T, P, O = cpu.TORCH, cpu.PLAIN, cpu.OURS  # noqa: E741 (the table's three columns)
    rows = [
        cpu.Row("conv", "3x3 conv", {T: 1.0, P: 3.0, O: 2.0}, 1e9),
        cpu.Row("block forward", "block a, forward", {T: 1.0, P: 2.0, O: 0.9}, 1e9),
        cpu.Row("block forward + backward", "block a, forward + backward", {T: 1.0, P: 2.0, O: 0.9}, 1e9),
        cpu.Row("block forward", "block b, forward", {T: 2.0, P: 2.0, O: 1.0}, 1e9),
        cpu.Row("block forward + backward", "block b, forward + backward", {T: 1.0, P: 2.0, O: 1.1}, 1e9),
        cpu.Row("inference", "ResNet-50 inference", {T: 0.5, P: 1.0, O: 0.4}, 100e9),
        cpu.Row("training", "ResNet-50 training step", {T: 1.0, P: 2.0, O: 1.25}, 300e9),
    ]
    lines = cpu.verdicts(rows, {T: 500.0, O: 400.0})
    assert lines[0] == "- Block forward <= 1.0x PyTorch's time at all 2 stages: **met** (worst 0.90x)."
    assert lines[1] == "- Block forward + backward <= 1.0x at all 2 stages: **not met** (worst 1.10x, best 0.90x)."
    assert lines[2].startswith(
        "- ResNet-50 inference >= 1.2x PyTorch's images/s: **met** (1.25x). PyTorch's "
        "inference runs at 200 GFLOP/s; 1.2x that is 240 GFLOP/s, 48% of the best matmul"
    )
    assert lines[2].endswith("ours would take 250 ms; 1.2x needs <= 417 ms.")
    assert lines[3] == "- ResNet-50 training >= 1.0x PyTorch's images/s: **not met** (0.80x)."
    monkeypatch.setattr(cpu, "PLOT", tmp_path / "cpu.png")
    cpu.plot(rows, 8)
    assert (tmp_path / "cpu.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_data_benchmark_runs_small(tmp_path):
    """bench_data.py's loader part at a toy size, in-process: it runs, reports, writes nothing."""
    before = (ROOT / "BENCHMARKS.md").read_text()
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH / "bench_data.py"),
            "--images",
            "48",
            "--batch",
            "8",
            "--batches",
            "2",
            "--rounds",
            "1",
            "--workers",
            "0",
            "--image-size",
            "32",
            "--skip",
            "train",
            "memory",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| 0 | " in proc.stdout and "vs PyTorch" in proc.stdout, proc.stdout
    assert (ROOT / "BENCHMARKS.md").read_text() == before


def test_deploy_benchmark_runs_quick_and_reads_its_targets(bench, capsys, monkeypatch):
    """bench_deploy --quick (resnet18, 32x32): every contestant runs, ONNX Runtime agrees with XLA, nothing
    is written; the verdicts, worked by hand: one layout must reach the bound at every batch."""
    before = (ROOT / "BENCHMARKS.md").read_text()
    monkeypatch.setattr(rb.xla, "reuse_freed_memory", lambda: False)
    deploy = bench("bench_deploy")
    deploy.main(["--quick", "--pause", "0"])
    out = capsys.readouterr().out
    assert "| 1 | " in out and "| 2 | " in out and (ROOT / "BENCHMARKS.md").read_text() == before
    agreement = float(out.split("max |difference| <= ")[1].split(" ")[0])
    assert agreement < 1e-4
    int8_rows = [line for line in out.splitlines() if line.startswith("| ") and deploy.TORCH_INT8 not in line]
    assert any(line.count(" ms, ") >= 7 for line in int8_rows), out  # every int8/precision contestant timed
    assert float(out.split("from our float32: ours int8, ONNX Runtime ")[1].split(",")[0]) < 0.5
    assert float(out.split("ours f32, OpenVINO ")[1].split(",")[0]) < 1e-4  # OpenVINO float32 is float32

    T, X, N, H = deploy.TORCH, deploy.XLA, deploy.ORT["NCHW"], deploy.ORT["NHWC"]
    rows = [(1, {T: 1.0, X: 1.0, N: 0.8, H: 0.7}), (8, {T: 1.0, X: 1.0, N: 0.75, H: 0.9})]
    lines = deploy.verdicts(rows, [1e-6, 2e-6])
    assert lines[0] == (
        "- ONNX Runtime on our export >= 1.25x PyTorch's images/s at every batch: **met** (NCHW); "
        "moonshot 1.5x: **not met**. Measured: NCHW batch 1: 1.25x, batch 8: 1.33x; "
        "NHWC batch 1: 1.43x, batch 8: 1.11x."
    )
    assert lines[1].endswith("<= 2.0e-06 of the largest logit (bound 1e-4).")


def test_deploy_int8_verdicts_worked_by_hand(bench):
    """The int8 target is read against PyTorch's own int8: one runtime must reach it at every batch."""
    deploy = bench("bench_deploy")
    P, R, V = deploy.TORCH_INT8, deploy.INT8["onnxruntime"], deploy.INT8["openvino"]
    rows = [(1, {P: 1.0, R: 0.9, V: 0.8}), (8, {P: 8.0, R: 7.0, V: 5.0})]
    lines = deploy.int8_verdicts(rows, [(1, {R: 0.01, V: 0.02}), (8, {R: 0.03, V: 0.01})])
    assert lines[0] == (
        "- ours int8 >= 1.2x PyTorch's own int8 images/s at every batch: **met** (openvino); moonshot 1.5x: "
        "**not met**. Measured: onnxruntime batch 1: 1.11x, batch 8: 1.14x; openvino batch 1: 1.25x, batch 8: 1.60x."
    )
    assert "ours int8, ONNX Runtime 3.0e-02, ours int8, OpenVINO 2.0e-02." in lines[1]
    table = deploy.int8_table(rows)
    assert table[-1] == (
        "| 8 | 8000.0 ms, 1.0 img/s (1.00x) | 7000.0 ms, 1.1 img/s (**1.14x**) | 5000.0 ms, 1.6 img/s (**1.60x**) |"
    )


def test_timm_benchmark_runs_quick_and_reads_its_targets(bench, capsys, monkeypatch):
    """bench_timm --quick (resnet18, 32x32): timm's PyTorch, XLA and both ONNX Runtime layouts all run, ONNX
    Runtime agrees with XLA, nothing is written; the table and verdicts, worked by hand, per name: one layout
    must reach the bound at every batch, and a name without ONNX Runtime is "not measured", never met."""
    before = (ROOT / "BENCHMARKS.md").read_text()
    monkeypatch.setattr(rb.xla, "reuse_freed_memory", lambda: False)
    timm_bench = bench("bench_timm")
    timm_bench.main(["--quick", "--pause", "0"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| resnet18 | ")]
    assert [r.split(" | ")[1] for r in rows] == ["1", "2"] and (ROOT / "BENCHMARKS.md").read_text() == before
    assert all(r.count(" ms, ") == 4 for r in rows), rows  # every contestant timed, none missing
    assert float(out.split("max |difference| <= ")[1].split(" ")[0]) < 1e-4

    T, X, N, H = timm_bench.TORCH, timm_bench.XLA, timm_bench.ORT["NCHW"], timm_bench.ORT["NHWC"]
    rows = [
        ("a", 1, {T: 1.0, X: 0.5, N: 0.9, H: 0.7}),
        ("a", 8, {T: 2.0, X: 1.0, N: 1.5, H: 1.0}),
        ("b", 1, {T: 1.0, X: 0.5}),
    ]
    table = timm_bench.table(rows)
    assert table[2] == (
        "| a | 1 | 1000.0 ms, 1.0 img/s (1.00x) | 500.0 ms, 2.0 img/s (**2.00x**) | "
        "900.0 ms, 1.1 img/s (**1.11x**) | 700.0 ms, 1.4 img/s (**1.43x**) |"
    )
    assert table[4] == "| b | 1 | 1000.0 ms, 1.0 img/s (1.00x) | 500.0 ms, 2.0 img/s (**2.00x**) | - | - |"
    lines = timm_bench.verdicts(rows, [1e-6, 3e-6], ["b not exported: why"])
    assert lines == [
        "- a: ONNX Runtime >= 1.25x timm's images/s at every batch: **met** (NHWC). Measured: "
        "NCHW batch 1: 1.11x, batch 8: 1.33x; NHWC batch 1: 1.43x, batch 8: 2.00x.",
        "- b: ONNX Runtime >= 1.25x timm's images/s at every batch: **not measured**.",
        "- ONNX Runtime agrees with XLA on the same weights: max |difference| <= 3.0e-06 of the largest logit "
        "(bound 1e-4).",
        "- b not exported: why",
    ]


def test_serve_verdicts_worked_by_hand(bench):
    """Served 17 images/s against 20 offline (0.85x: met), 70 ms against 50 ms (1.40x: not met)."""
    serve = bench("bench_serve")
    figures = {"offline_images_s": 20.0, "served_images_s": 17.0, "offline_single_s": 0.05, "served_latency_s": 0.07}
    assert serve.verdicts(figures, 16) == [
        "- Served images/s with 16 clients >= 0.8x offline: **met** (0.85x).",
        "- Served median latency at one client <= 1.25x the offline single-image time: **not met** (1.40x).",
    ]
    assert serve.table(figures, 8, 16)[2:] == [
        "| images/s (offline: batches of 8; served: 16 clients) | 20.0 | 17.0 | **0.85x** | >= 0.8x |",
        "| one image (offline: decode, transform, model; served: median latency, 1 client) | 50.0 ms | 70.0 ms | "
        "**1.40x** | <= 1.25x |",
    ]
    rounds = [figures, {**figures, "served_images_s": 15.0, "served_latency_s": 0.06}]
    assert serve.verdicts(figures, 16, rounds)[0].endswith("(0.85x; round by round 0.85x, 0.75x).")
    assert serve.verdicts(figures, 16, rounds)[1].endswith("(1.40x; round by round 1.40x, 1.20x).")
    answer = {"predictions": [{"index": 2, "probability": 0.5}, {"index": 0, "probability": 0.3}]}
    assert serve.agreement(answer, np.array([0.25, 0.2, 0.55])) == pytest.approx(0.05)


def test_serve_benchmark_runs_quick(tmp_path):
    """bench_serve --quick (resnet18 int8 at 32x32 on OpenVINO, one round): the server starts, answers every
    client and agrees with the offline classifier; it is stopped; nothing is written."""
    before = (ROOT / "BENCHMARKS.md").read_text()
    proc = subprocess.run(
        [sys.executable, str(BENCH / "bench_serve.py"), "--quick", "--clients", "4"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "| images/s (offline: batches of 8; served: 4 clients) | " in out, out
    assert "| one image (offline: decode, transform, model; served: median latency, 1 client) | " in out, out
    assert float(out.split("differ from the offline ones by at most ")[1].split(" ")[0]) < 1e-4
    assert "killed" not in out  # SIGTERM stopped it
    assert (ROOT / "BENCHMARKS.md").read_text() == before
