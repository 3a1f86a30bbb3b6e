"""Per-compilation XLA options: the fastest settings for our shapes, chosen per backend.

XLA:CPU hands convolutions, dots and elementwise fusions to YNNPACK by default. For a
ResNet those are the slow choices (a 3x3 conv's gradient, a max-pool's strided slices),
while YNNPACK's reductions are the fast ones for BatchNorm's statistics:
:data:`CPU_OPTIONS` keeps exactly those (the CPU table in BENCHMARKS.md measures it).

These are options of one compilation (``jax.jit(..., compiler_options=...)``), never
``XLA_FLAGS`` or jax config: importing this library changes nothing for other code.
Our own jitted entry points (:func:`resnet_bottleneck_forward`, the training step, the
CLI) use :func:`jit`; wrap your own step with it, or pass
``compiler_options=compiler_options()`` to ``jax.jit``, to get the same speed.
"""

from __future__ import annotations

import ctypes
import functools
import platform
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

#: The YNNPACK fusions kept on XLA:CPU: reductions only (not convs, dots, elementwise).
CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}


@functools.cache
def _cpu_accepts_options() -> bool:
    """Whether this jaxlib knows the options (older or newer ones may not): try once."""
    try:
        cpu = jax.devices("cpu")[0]
        x = jax.device_put(jnp.zeros((2, 2), jnp.float32), cpu)
        jax.jit(lambda a: a @ a).lower(x).compile(compiler_options=CPU_OPTIONS)
    except Exception:  # noqa: BLE001 - any refusal means: compile without them
        return False
    return True


def compiler_options(backend: str | None = None) -> dict[str, Any]:
    """The compile options we use on ``backend`` (default: jax's default backend).

    ``{}`` where we know nothing better than XLA's defaults (GPU, TPU) or where this
    jaxlib does not accept the CPU options.
    """
    backend = backend or jax.default_backend()
    if backend == "cpu" and _cpu_accepts_options():
        return dict(CPU_OPTIONS)
    return {}


class _Jit:
    """``jax.jit`` with :func:`compiler_options`, decided at the first call, not at import."""

    def __init__(self, fun: Callable, kwargs: dict):
        self._fun, self._kwargs, self._jitted = fun, kwargs, None
        functools.update_wrapper(self, fun)

    @property
    def jitted(self):
        if self._jitted is None:
            self._jitted = jax.jit(self._fun, compiler_options=compiler_options() or None, **self._kwargs)
        return self._jitted

    def __call__(self, *args, **kwargs):
        return self.jitted(*args, **kwargs)

    def lower(self, *args, **kwargs):
        return self.jitted.lower(*args, **kwargs)


def jit(fun: Callable | None = None, **kwargs) -> Callable:
    """``jax.jit(fun, **kwargs)`` compiled with this backend's :func:`compiler_options`.

    Usable as ``jit(f, static_argnums=...)`` or as a decorator ``@jit`` / ``@jit(...)``.
    """
    if fun is None:
        return lambda f: _Jit(f, kwargs)
    return _Jit(fun, kwargs)


_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc's mallopt parameters
_NEVER_TRIM = 2**31 - 1


def reuse_freed_memory() -> bool:
    """Have glibc keep and reuse freed memory, so XLA:CPU's buffers stop page-faulting.

    XLA:CPU allocates each execution's scratch buffers afresh from worker threads, and
    glibc serves those with new ``mmap``s that every call page-faults through. This sets
    glibc's ``mallopt`` so that all threads share the main heap, nothing is ``mmap``-ed and
    freed memory is kept for reuse. It pays where activations are large (a ResNet-50 step)
    and costs where they are small (the shared heap's lock); BENCHMARKS.md has both.

    **Process-wide, so never done on import**, and by the command line only when asked
    (``train --reuse-freed-memory``); the benchmarks opt in. Call it before JAX runs its
    first computation; the process keeps its peak memory afterwards. Returns whether the
    options were set (``False`` off glibc, e.g. on macOS, where nothing is changed).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _NEVER_TRIM))
    return all([mallopt(option, value) == 1 for option, value in settings])  # a list: set all three
