"""Helpers shared by the tests: oracles' plumbing, tolerances, the one-line-error check.

The independent oracles themselves (textbook modules, float64 numpy arithmetic) are in
``textbook.py``; torchvision's own modules are the other oracle (:func:`random_torchvision`).
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np


def assert_close_to_scale(ours, theirs, rel=1e-4, what="", atol=0.0):
    """``max|ours - theirs| <= atol + rel * max|theirs|``: a tolerance on the tensor's scale (``rel``),
    an absolute one (``atol``), or both; the shapes must be equal."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
    error, scale = np.abs(ours - theirs).max(initial=0.0), max(np.abs(theirs).max(initial=0.0), 1e-12)
    assert error <= atol + rel * scale, (what, error, error / scale)


def assert_trees_close(ours, theirs, rel=1e-4, floor=0.0):
    """:func:`assert_close_to_scale` leaf by leaf over two pytrees of the same structure.

    Each leaf's scale is at least ``floor`` times the tree's largest value: where a leaf's true
    value is zero (a conv bias before a BatchNorm has a zero gradient) there is only rounding
    noise to compare, and that noise is on the scale of its neighbours.
    """
    assert jax.tree_util.tree_structure(ours) == jax.tree_util.tree_structure(theirs)
    leaves = jax.tree_util.tree_leaves(theirs)
    assert leaves, "nothing to compare"
    largest = max(np.abs(np.asarray(b, np.float64)).max(initial=0.0) for b in leaves)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(ours), leaves):
        assert_close_to_scale(a, b, rel=rel, what=jax.tree_util.keystr(path), atol=rel * floor * largest)


def assert_results_close(ours, theirs, rel=1e-4):
    """Two :func:`forward_and_grads` results: the output, the statistics and the gradients, each
    part leaf by leaf within ``rel`` of the leaf's scale, floored at 1% of the part's largest value."""
    assert len(ours) == len(theirs) == 3
    for part_ours, part_theirs in zip(ours, theirs):
        assert_trees_close(part_ours, part_theirs, rel=rel, floor=0.01)


def assert_trees_equal(ours, theirs):
    """Bit for bit, leaf by leaf, with the same structure."""
    assert jax.tree_util.tree_structure(ours) == jax.tree_util.tree_structure(theirs)
    for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(theirs)):
        np.testing.assert_array_equal(a, b)


def one_line_error(stderr: str, *fragments: str, prog: str | None = None) -> str:
    """The CLI's error contract: one line, no traceback, ``prog: error: ...`` with every fragment."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    if prog is not None:
        assert lines[0].startswith(f"{prog}: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


# --- running modules -------------------------------------------------------------------


def abstract_init(model, shape=(1, 64, 64, 3), dtype=jnp.float32):
    """``model``'s variables as shapes and dtypes only (``jax.eval_shape``): nothing is computed."""
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct(shape, dtype))


def random_variables(model, shape, seed=1):
    """Random variables of ``model`` for inputs of ``shape``, without compiling ``init``: parameters
    normal over the square root of their fan-in (0.1 for vectors), BatchNorm statistics in [0.5, 1.5)."""
    g = np.random.default_rng(seed)
    shapes = abstract_init(model, shape)

    def param(s):
        fan_in = np.prod(s.shape[:-1]) if len(s.shape) > 1 else 100
        return (g.standard_normal(s.shape) / np.sqrt(fan_in)).astype(np.float32)

    variables = {"params": jax.tree_util.tree_map(param, shapes["params"])}
    if "batch_stats" in shapes:  # a GroupNorm model has none
        variables["batch_stats"] = jax.tree_util.tree_map(
            lambda s: (0.5 + g.random(s.shape)).astype(np.float32), shapes["batch_stats"]
        )
    return variables


def bfloat16_rounded(tree):
    """``tree``'s arrays rounded to bfloat16 and held in float32: what bfloat16 compute starts from."""
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.bfloat16).astype(jnp.float32), tree)


def forward_and_grads(module, variables, x, *, jit=jax.jit, weights=None, statistics_weight=1.0, **apply_kwargs):
    """``(output, updated batch_stats, (d params, d x))`` of one training-mode call of ``module``.

    The loss sees all three: ``sum(output * weights)`` (``weights`` fixed random numbers unless
    given) plus ``statistics_weight`` times the sum of every updated statistic, so a wrong gradient
    through the running averages shows too. ``jit`` compiles the step: ``jax.jit``, or
    ``resnet_bottleneck.jit``.
    """

    def apply(params, x):
        return module.apply({**variables, "params": params}, x, mutable=["batch_stats"], **apply_kwargs)

    if weights is None:
        shape = jax.eval_shape(lambda p, x: apply(p, x)[0], variables["params"], x).shape
        weights = jnp.asarray(np.random.default_rng(7).standard_normal(shape), jnp.float32)

    def loss(params, x):
        y, state = apply(params, x)
        statistics = sum(jnp.sum(s) for s in jax.tree_util.tree_leaves(state))
        return jnp.sum(y * weights) + statistics_weight * statistics, (y, state["batch_stats"])

    (_, (y, stats)), grads = jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(variables["params"], x)
    return y, stats, grads


# --- torchvision as the oracle ---------------------------------------------------------


def randomize_norms(model, seed=1):
    """Random affine and running statistics for every ``BatchNorm2d`` and ``FrozenBatchNorm2d``;
    ``model`` in eval mode."""
    import torch
    from torchvision.ops.misc import FrozenBatchNorm2d

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, FrozenBatchNorm2d)):
                c = m.weight.shape[0]
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.1 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
    return model.eval()


def random_torchvision(name, seed=0, num_classes=1000):
    """A torchvision model with random weights and randomised BatchNorm affine and running statistics."""
    import torch
    import torchvision

    torch.manual_seed(seed)
    return randomize_norms(getattr(torchvision.models, name)(weights=None, num_classes=num_classes), seed + 1)


def torch_stages(model, x):
    """torchvision's stage outputs (stem after ReLU, layer1..4) and logits, NHWC numpy."""
    import torch

    seen = {}
    hooks = [model.relu.register_forward_hook(lambda m, i, o: seen.setdefault("stem", o))]
    for i, stage in enumerate(["C2", "C3", "C4", "C5"]):
        hooks.append(
            getattr(model, f"layer{i + 1}").register_forward_hook(lambda m, i, o, s=stage: seen.__setitem__(s, o))
        )
    logits = model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    for h in hooks:
        h.remove()
    return {k: v.detach().numpy().transpose(0, 2, 3, 1) for k, v in seen.items()}, logits.detach().numpy()


# --- the input pipeline and training --------------------------------------------------

#: A small, fast ``train`` run: 8x8 digits upsampled to 16; 1,438 training images make 22 steps an
#: epoch, 44 in all; checkpoints every 5 steps, the last 2 kept (conftest's ``digits_run`` is one).
SMALL_TRAIN = ["--image-size", "16", "--batch-size", "64", "--epochs", "2", "--checkpoint-every", "5", "--keep", "2"]


class WatchedImages:
    """An in-memory image array whose every read first calls ``on_read(index)``: to note which
    images a host read, or to make reads fail. Use as ``data.ImageArrays(WatchedImages(...), ...)``."""

    def __init__(self, images, on_read):
        self.images, self.on_read = images, on_read

    def __getitem__(self, index):
        self.on_read(int(index))
        return self.images[index]


@contextlib.contextmanager
def compiles():
    """A list that grows by one each time JAX compiles a computation inside the block (jax's own monitoring events)."""
    seen = []

    def listener(event, _, **__):
        if event == "/jax/core/compile/backend_compile_duration":
            seen.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield seen
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def randomize_timm(model, seed=1):
    """Random affine terms and running statistics of every BatchNorm, random GroupNorm affine terms, and
    random biases of SE's convs (timm starts them at PyTorch's defaults); ``model`` in eval mode."""
    import torch  # a test extra: only the timm tests call this

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm)):
                c = m.weight.shape[0]
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.1 * torch.randn(c, generator=g))
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
            if isinstance(m, torch.nn.Conv2d) and m.bias is not None:
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model.eval()


def chromium_flags(profile, *extra: str) -> list[str]:
    """Headless Debian Chromium's flags for the page's tests and docs screenshot: a fresh profile ``profile`` and
    no background traffic (this machine's closed network refuses it, many connections at a time)."""
    return [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        *extra,
    ]
