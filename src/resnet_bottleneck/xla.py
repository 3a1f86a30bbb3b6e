"""Per-compilation XLA options: the fastest settings for our shapes, chosen per backend.

XLA:CPU (jax 0.10) hands convolutions, dots and elementwise fusions to YNNPACK by
default. For a ResNet those are the slow choices: on this project's CPU the 3x3,
64-channel conv at 56x56, batch 8, forward + backward takes ~3x as long as with XLA's
own Eigen kernels (first row of the CPU table in ``BENCHMARKS.md``), and YNNPACK's
elementwise fusions make the strided slices of a max-pool's gradient ~6x slower.
YNNPACK's reductions, on the other hand, are the fast ones for BatchNorm's statistics.
:data:`CPU_OPTIONS` keeps exactly those.

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
from typing import Any, Callable

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

    XLA:CPU allocates each execution's scratch buffer afresh, from a worker thread; glibc
    serves any allocation that large from a worker thread with a new ``mmap`` and returns
    it on free. So every call touches all of it as new pages: 751 MB, about 185,000 page
    faults, for each ResNet-50 training step at batch 8 (PyTorch, whose tensors are
    smaller, reuses its memory and faults almost never). This sets glibc's ``mallopt``
    options so that all threads share the main heap, nothing is ``mmap``-ed, and freed
    memory is kept: the second call reuses the first one's pages.

    It pays where activations are large and hurts where they are small: a ResNet-50 SGD
    step at batch 8, 224x224, ran ~8-10% faster on this project's 2-core CPU, but the
    default ``resnet-bottleneck train`` (a tiny model, batch 64 at 32x32) 20% slower
    (33.6 vs 27.5 s), because all threads then share one heap and its lock.

    **Process-wide, so never done on import**, and by the command line only when asked
    (``train --reuse-freed-memory``); the benchmarks opt in. Call it yourself at the start
    of a script when it pays. It must run before JAX runs its first computation (the
    worker threads pick their heap then), and the process keeps its peak memory afterwards.
    Returns whether the options were set (``False`` off glibc, e.g. on macOS, where nothing
    is changed).
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
