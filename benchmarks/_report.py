"""Shared by the benchmarks: how they time (interleaved rounds) and report (BENCHMARKS.md sections).

Importing this module changes nothing in the process. Each benchmark's ``main`` opts in to
glibc keeping freed memory itself, before any JAX computation (PyTorch shares the process, so
it runs under the same allocator)::

    reused = not SYSTEM_MALLOC and rb.xla.reuse_freed_memory()

and passes ``reused`` to :func:`write_section`, which records it on its own line, so that the
machine line is the same in every section written on one machine.
``BENCH_SYSTEM_MALLOC=1`` measures with the system allocator's defaults instead.
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from resnet_bottleneck.io import atomic_write

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"

#: ``BENCH_SYSTEM_MALLOC=1``: measure without ``reuse_freed_memory()``.
SYSTEM_MALLOC = os.environ.get("BENCH_SYSTEM_MALLOC") == "1"


def cores() -> int:
    """The CPU cores this process may run on (the library's count, which its loaders and sessions use)."""
    from resnet_bottleneck.data import available_cores

    return available_cores()


def interleaved(
    runners: Mapping[str, Callable[[], object]],
    repeats: int,
    inner: int | Mapping[str, int] = 1,
    stat: Callable = statistics.median,
    warmup: int = 2,
    pause: float = 0.0,
) -> dict[str, float]:
    """Seconds per call of each runner: ``warmup`` calls each, then ``repeats`` rounds, interleaved.

    A runner does one unit of work and waits for it. Each round times ``inner`` calls of every
    runner in turn (``inner`` may differ per runner: a fast one needs more calls to be timed),
    so that drift in the machine's load hits all runners alike. ``stat`` summarises the rounds:
    the median by default; ``min`` for a peak. ``pause`` seconds pass untimed before each
    runner's turn, so that the thread pools of the runner before it (OpenMP's, ONNX Runtime's
    spin-waiting workers) are asleep when it starts.
    """
    calls = inner if isinstance(inner, Mapping) else dict.fromkeys(runners, inner)
    for run in runners.values():
        for _ in range(warmup):
            run()
    times = {label: [] for label in runners}
    for _ in range(repeats):
        for label, run in runners.items():
            if pause:
                time.sleep(pause)
            start = time.perf_counter()
            for _ in range(calls[label]):
                run()
            times[label].append((time.perf_counter() - start) / calls[label])
    return {label: stat(rounds) for label, rounds in times.items()}


def machine() -> str:
    """The CPU, cores, memory, Python and jax versions, and backend: one line per machine."""
    import jax

    cpu = platform.processor() or "unknown CPU"
    try:
        text = Path("/proc/cpuinfo").read_text()
        found = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
        cpu = found.group(1).strip() if found else cpu
    except OSError:
        pass
    mem = ""
    try:
        kb = int(re.search(r"MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem = f", {kb / 2**20:.0f} GiB"
    except (OSError, AttributeError):
        pass
    return (
        f"{cpu}, {cores()} cores{mem}; Python {platform.python_version()}, jax {jax.__version__} "
        f"({jax.default_backend()}), {platform.system()} {platform.machine()}"
    )


def allocator(reused_memory: bool) -> str:
    """The allocator's setting the section measured with."""
    return "freed memory reused (`reuse_freed_memory()`)" if reused_memory else "the system allocator's defaults"


def command() -> str:
    script = Path(sys.argv[0]).resolve().relative_to(BENCHMARKS_MD.parent)
    return " ".join(["python", str(script), *map(shlex.quote, sys.argv[1:])])


def update_section(name: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace the text between ``<!-- name:start -->`` and ``<!-- name:end -->``, or append it."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def write_section(name: str, title: str, table: str, *, reused_memory: bool, note: str = "", text: str = "") -> None:
    """A BENCHMARKS.md section: title, machine, allocator, the exact command (+ ``note``), ``text``, ``table``."""
    lines = [
        f"## {title}",
        "",
        f"Machine: {machine()}.",
        f"Allocator: {allocator(reused_memory)}.",
        f"Command: `{command()}`{note}.",
        "",
    ]
    if text:
        lines += [text, ""]
    update_section(name, "\n".join([*lines, table]))
