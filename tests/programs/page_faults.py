"""Page faults of a jitted function's calls once the heap is warm, printed as one number.

``python page_faults.py reuse`` calls ``reuse_freed_memory()`` first; any other argument
only imports the library. Each call allocates two 64 MB intermediates.
"""

import resource
import sys

import jax
import jax.numpy as jnp

import resnet_bottleneck as rb


def main(mode: str) -> int:
    if mode == "reuse":
        assert rb.xla.reuse_freed_memory()
    ones = jnp.ones((4096, 8), jnp.float32)
    f = jax.jit(lambda a: jnp.sin(a) @ ones + jnp.cos(a) @ ones)  # two 64 MB intermediates per call
    a = jnp.full((4096, 4096), 1e-3, jnp.float32)
    for _ in range(6):  # the heap grows to its high-water mark over the first few calls
        f(a).block_until_ready()
    windows = []  # under load the reused heap may still grow once: the quietest of 6 windows counts
    for _ in range(6):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(3):
            f(a).block_until_ready()
        windows.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return min(windows)


if __name__ == "__main__":
    print(main(sys.argv[1]))
