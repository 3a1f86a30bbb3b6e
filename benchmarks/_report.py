"""Shared by the benchmarks: the machine's description and BENCHMARKS.md sections."""

from __future__ import annotations

import os
import platform
import re
import shlex
import sys
from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"

# The benchmarks opt in to glibc keeping freed memory (before any JAX computation; PyTorch
# shares the process, so it runs under the same allocator): otherwise XLA:CPU page-faults
# through every call's scratch buffers. BENCH_SYSTEM_MALLOC=1 measures without it.
if os.environ.get("BENCH_SYSTEM_MALLOC") == "1":
    REUSES_MEMORY = False
else:
    from resnet_bottleneck import reuse_freed_memory

    REUSES_MEMORY = reuse_freed_memory()


def machine() -> str:
    import jax

    cpu = platform.processor() or "unknown CPU"
    try:
        text = Path("/proc/cpuinfo").read_text()
        found = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
        cpu = found.group(1).strip() if found else cpu
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    mem = ""
    try:
        kb = int(re.search(r"MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem = f", {kb / 2**20:.0f} GiB"
    except (OSError, AttributeError):
        pass
    allocator = "freed memory reused (`reuse_freed_memory()`)" if REUSES_MEMORY else "the system allocator's defaults"
    return (
        f"{cpu}, {cores} cores{mem}; Python {platform.python_version()}, jax {jax.__version__} "
        f"({jax.default_backend()}), {platform.system()} {platform.machine()}; {allocator}"
    )


def command() -> str:
    script = Path(sys.argv[0]).resolve().relative_to(BENCHMARKS_MD.parent)
    return " ".join(["python", str(script), *map(shlex.quote, sys.argv[1:])])


def update_section(name: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace the text between ``<!-- name:start -->`` and ``<!-- name:end -->``, or append it."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_section(name: str, title: str, table: str, note: str = "", text: str = "") -> None:
    """A BENCHMARKS.md section: title, machine, the exact command (+ ``note``), ``text``, ``table``."""
    lines = [f"## {title}", "", f"Machine: {machine()}.", f"Command: `{command()}`{note}.", ""]
    if text:
        lines += [text, ""]
    update_section(name, "\n".join([*lines, table]))


def median(values) -> float:
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else 0.5 * (values[n // 2 - 1] + values[n // 2])
