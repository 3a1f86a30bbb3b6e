"""Per-compilation options: chosen per backend, in effect where we compile, nowhere else."""

import os
import platform
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from helpers import assert_trees_close
from jax import lax

from resnet_bottleneck import xla

PROGRAMS = Path(__file__).resolve().parent / "programs"


def _conv_grad(x, k):
    y, vjp = jax.vjp(
        lambda x, k: lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")), x, k
    )
    return vjp(y)


def test_options_are_chosen_per_backend():
    assert xla.compiler_options("gpu") == {} and xla.compiler_options("tpu") == {}
    assert xla.compiler_options("cpu") == xla.CPU_OPTIONS  # the pinned jaxlib accepts them
    assert xla.compiler_options() == xla.compiler_options(jax.default_backend())


def test_jit_keeps_convolutions_on_xlas_own_kernels():
    """The reason for the options: by default XLA:CPU hands this conv's gradient to YNNPACK."""
    x, k = jnp.ones((8, 56, 56, 64)), jnp.full((3, 3, 64, 64), 0.01)
    default = jax.jit(_conv_grad).lower(x, k).compile().as_text()
    ours = xla.jit(_conv_grad).lower(x, k).compile().as_text()
    assert "__ynn_fusion" in default
    assert "__ynn_fusion" not in ours


def test_jit_is_jax_jit_otherwise(rng):
    x = jnp.asarray(rng.standard_normal((2, 6, 6, 4)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 3, 4, 4)), jnp.float32)
    assert_trees_close(xla.jit(_conv_grad)(x, k), jax.jit(_conv_grad)(x, k), rel=1e-5)

    @xla.jit(static_argnums=1)
    def power(x, n):
        return x**n

    assert power(jnp.float32(3.0), 2) == 9.0 and power.__name__ == "power"
    before = os.environ.get("XLA_FLAGS")
    xla.jit(lambda x: x + 1)(jnp.ones(3))
    assert os.environ.get("XLA_FLAGS") == before  # compiling with options sets nothing process-wide


def _page_faults_of_calls(mode: str) -> int:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, str(PROGRAMS / "page_faults.py"), mode], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_reuse_freed_memory_stops_the_page_faults_and_import_does_not_do_it():
    """Each call of a jitted function maps its 64 MB intermediates afresh (16,384 pages each)
    unless glibc is told to keep freed memory; importing the library alone changes nothing."""
    after_import, reused = _page_faults_of_calls("import-only"), _page_faults_of_calls("reuse")
    assert after_import > 3 * 16_384
    assert reused < after_import / 10
