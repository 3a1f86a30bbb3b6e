"""The GPU benchmark's smoke test: the same code at a toy size on the CPU, as CI runs it."""

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_benchmark_runs_tiny(tmp_path):
    out = tmp_path / "gpu.json"
    before = (ROOT / "BENCHMARKS.md").read_text()
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--tiny", "--json", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["model"] == "resnet_tiny" and result["batch"] == 4
    assert [r["workload"].split(",")[0] for r in result["rows"]] == [
        "resnet_tiny training step", "resnet_tiny inference (BN folded)", "block 8x8x32/8", "block 4x4x64/16"]
    for r in result["rows"]:
        assert r["seconds"] > 0 and math.isfinite(r["tflops"]) and r["tflops"] > 0
    assert result["rows"][0]["images_per_second"] == 4 / result["rows"][0]["seconds"]
    assert result["matmul_tflops"] > 0
    assert (ROOT / "BENCHMARKS.md").read_text() == before  # --tiny never writes the report
