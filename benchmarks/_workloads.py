"""The workloads the benchmarks time, built the same way for every contestant.

Each builder returns a ``run()`` that does one unit of work and waits for it. Flax
contestants take ``jit`` (``jax.jit`` for the plain formulation, ``resnet_bottleneck.jit``
for ours); PyTorch runs torchvision's modules in ``channels_last``, the fast layout.
"""

from __future__ import annotations

import os
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from _report import median

from resnet_bottleneck import BottleneckBlock, create_model, fold_batchnorm

#: ResNet-50's four bottleneck stages: (spatial size, channels in/out, mid width).
STAGES = ((56, 256, 64), (28, 512, 128), (14, 1024, 256), (7, 2048, 512))


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def block_flops(batch: int, size: int, channels: int, mid: int) -> float:
    """Forward FLOPs of one identity bottleneck block (2 per multiply-add; BN not counted)."""
    return 2.0 * batch * size * size * (channels * mid + 9 * mid * mid + mid * channels)


def interleaved(runners: dict, repeats: int, inner: int = 1, stat=median) -> dict[str, float]:
    """Seconds per call of each runner, rounds interleaved (after two warm-up calls).

    ``stat`` summarises the rounds: the median by default; ``min`` for a peak.
    """
    for run in runners.values():
        run()
        run()
    times = {k: [] for k in runners}
    for _ in range(repeats):
        for label, run in runners.items():
            start = time.perf_counter()
            for _ in range(inner):
                run()
            times[label].append((time.perf_counter() - start) / inner)
    return {k: stat(v) for k, v in times.items()}


def _rng_array(shape, seed, dtype=jnp.float32):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


# --- Flax -------------------------------------------------------------------------------

def flax_matmul(n: int, jit, dtype=jnp.float32):
    a = _rng_array((n, n), 0, dtype)
    f = jit(lambda a: a @ a)
    return lambda: f(a).block_until_ready()


def flax_block(batch, size, channels, mid, *, jit, conv=None, dtype=None, backward=False):
    """One bottleneck block in training mode (batch statistics, running averages updated)."""
    kwargs = {} if conv is None else {"conv": conv}
    block = BottleneckBlock(mid, channels, use_bias=False, dtype=dtype, **kwargs)
    x = _rng_array((batch, size, size, channels), 1, dtype or jnp.float32)
    variables = jax.jit(block.init)(jax.random.PRNGKey(0), x)
    params, stats = variables["params"], variables["batch_stats"]

    def forward(params, x):
        return block.apply({"params": params, "batch_stats": stats}, x, mutable=["batch_stats"])

    if not backward:
        f = jit(forward)
        return lambda: jax.block_until_ready(f(params, x))
    dy = _rng_array(x.shape, 2, x.dtype)

    def forward_backward(params, x):
        (y, new), vjp = jax.vjp(forward, params, x)
        return vjp((dy, jax.tree.map(jnp.zeros_like, new))), new

    f = jit(forward_backward)
    return lambda: jax.block_until_ready(f(params, x))


def flax_train_step(name, batch, size, *, jit, dtype=None, conv=None, num_classes=1000):
    """One SGD step (momentum 0.9, cross-entropy) on synthetic data, variables donated."""
    model = create_model(name, num_classes=num_classes, dtype=dtype, **({} if conv is None else {"conv": conv}))
    tx = optax.sgd(0.01, momentum=0.9)
    x = _rng_array((batch, size, size, 3), 0, dtype or jnp.float32)
    y = jnp.asarray(np.random.default_rng(1).integers(0, num_classes, batch), jnp.int32)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), x[:1])
    state = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))

    def step(state, x, y):
        params, stats, opt = state

        def loss(p):
            logits, new = model.apply({"params": p, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new["batch_stats"]

        (value, stats), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, opt = tx.update(grads, opt, params)
        return (optax.apply_updates(params, updates), stats, opt), value

    step = jit(step, donate_argnums=0)
    holder = {"state": state}

    def run():
        holder["state"], value = step(holder["state"], x, y)
        value.block_until_ready()

    return run


def flax_eval(name, batch, size, *, jit, fold=False, dtype=None, conv=None):
    """Inference logits; ``fold`` folds every BatchNorm into its conv first."""
    model = create_model(name, dtype=dtype, **({} if conv is None else {"conv": conv}))
    x = _rng_array((batch, size, size, 3), 0, dtype or jnp.float32)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), x[:1])
    if fold:
        model, variables = fold_batchnorm(model, variables)
    f = jit(partial(model.apply, train=False))
    return lambda: f(variables, x).block_until_ready()


# --- PyTorch ----------------------------------------------------------------------------

def _torch():
    import torch

    torch.set_num_threads(cores())
    return torch


def torch_matmul(n: int):
    torch = _torch()
    a = torch.randn(n, n)
    return lambda: torch.mm(a, a)


def torch_block(batch, size, channels, mid, *, backward=False):
    torch = _torch()
    from torchvision.models.resnet import Bottleneck

    block = Bottleneck(channels, mid).to(memory_format=torch.channels_last).train()
    x = torch.randn(batch, channels, size, size).to(memory_format=torch.channels_last)
    if not backward:
        def run():
            with torch.no_grad():
                block(x)
        return run
    x.requires_grad_(True)
    dy = torch.randn(batch, channels, size, size).to(memory_format=torch.channels_last)

    def run():
        block.zero_grad(set_to_none=True)
        x.grad = None
        block(x).backward(dy)
    return run


def torch_train_step(name, batch, size):
    torch = _torch()
    import torchvision

    model = getattr(torchvision.models, name)(weights=None).to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, size, size).to(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,))

    def run():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return run


def torch_eval(name, batch, size):
    torch = _torch()
    import torchvision

    model = getattr(torchvision.models, name)(weights=None).to(memory_format=torch.channels_last).eval()
    x = torch.randn(batch, 3, size, size).to(memory_format=torch.channels_last)

    def run():
        with torch.inference_mode():
            model(x)
    return run
