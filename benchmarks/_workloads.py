"""The workloads the benchmarks time, built the same way for every contestant.

Each builder returns a ``run()`` that does one unit of work and waits for it. Flax
contestants take ``jit`` (``jax.jit`` for the plain formulation, ``resnet_bottleneck.xla.jit``
for ours); PyTorch runs torchvision's (and timm's) modules in ``channels_last``, the fast layout.
Every Flax training workload runs the library's own train step (:func:`library_step`).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _report import cores

from resnet_bottleneck import BottleneckBlock, create_model, fold_batchnorm
from resnet_bottleneck.training import create_train_state, train_step

#: ResNet-50's four bottleneck stages: (spatial size, channels in/out, mid width).
STAGES = ((56, 256, 64), (28, 512, 128), (14, 1024, 256), (7, 2048, 512))


def block_flops(batch: int, size: int, channels: int, mid: int) -> float:
    """Forward FLOPs of one identity bottleneck block (2 per multiply-add; BN not counted)."""
    return 2.0 * batch * size * size * (channels * mid + 9 * mid * mid + mid * channels)


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


def synthetic_batch(batch: int, size: int, num_classes: int = 1000) -> dict:
    """What the library's train step takes: ``image`` uint8 NHWC pixels (random), integer ``label``."""
    rng = np.random.default_rng(1)
    return {
        "image": jnp.asarray(rng.integers(0, 256, (batch, size, size, 3)), jnp.uint8),
        "label": jnp.asarray(rng.integers(0, num_classes, batch), jnp.int32),
    }


def library_step(num_classes: int = 1000):
    """The library's public train step (``resnet_bottleneck.training.train_step``): uint8 pixels
    normalised on the device, cross-entropy (no label smoothing), BatchNorm in training mode."""
    return partial(train_step, num_classes=num_classes, label_smoothing=0.0)


def flax_train_step(name, batch, size, *, jit, dtype=None, conv=None, num_classes=1000):
    """One SGD step (momentum 0.9) of the library's train step on synthetic data, the state donated."""
    model = create_model(name, num_classes=num_classes, dtype=dtype, **({} if conv is None else {"conv": conv}))
    data = synthetic_batch(batch, size, num_classes)
    state = jax.jit(create_train_state, static_argnums=(0, 1, 2, 3))(model, optax.sgd(0.01, momentum=0.9), 0, size)
    step = jit(library_step(num_classes), donate_argnums=0)
    holder = {"state": state}

    def run():
        holder["state"], metrics = step(holder["state"], data)
        metrics["loss"].block_until_ready()

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


def _torchvision(name, batch, size, train: bool):
    """torchvision's ``name`` with random weights and a random batch, both ``channels_last``."""
    torch = _torch()
    import torchvision

    model = getattr(torchvision.models, name)(weights=None).to(memory_format=torch.channels_last).train(train)
    return torch, model, torch.randn(batch, 3, size, size).to(memory_format=torch.channels_last)


def torch_train_step(name, batch, size):
    torch, model, x = _torchvision(name, batch, size, train=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    y = torch.randint(0, 1000, (batch,))

    def run():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    return run


def torch_eval(name, batch, size):
    torch, model, x = _torchvision(name, batch, size, train=False)

    def run():
        with torch.inference_mode():
            model(x)

    return run


def timm_eval(name, batch, size):
    """timm's ``name`` (``timm.create_model(name).eval()``, random weights) under ``inference_mode``, in
    ``channels_last`` with a random batch, as :func:`torch_eval` runs torchvision's."""
    torch = _torch()
    import timm

    model = timm.create_model(name).eval().to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, size, size).to(memory_format=torch.channels_last)

    def run():
        with torch.inference_mode():
            model(x)

    return run
