"""The BatchNorm with a hand-written gradient: against autodiff of the plain formula, and
against Flax's ``nn.BatchNorm`` as the blocks' default; the frozen BatchNorm against torchvision's."""

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from resnet_bottleneck.norm import FLAX_BATCH_NORM, BatchNorm, FrozenBatchNorm, batch_norm


def plain_batch_norm(x, scale, bias, epsilon, fast_variance):
    """The textbook formula, differentiated by autodiff: the oracle for the closed-form gradient."""
    axes, shape = tuple(range(x.ndim - 1)), (1,) * (x.ndim - 1) + (-1,)
    xs = x.astype(jnp.float32)
    mean = jnp.mean(xs, axes)
    if fast_variance:
        var = jnp.maximum(0.0, jnp.mean(xs * xs, axes) - mean * mean)
    else:
        var = jnp.mean((xs - mean.reshape(shape)) ** 2, axes)
    y = (xs - mean.reshape(shape)) / jnp.sqrt(var + epsilon).reshape(shape) * scale.reshape(shape) + bias.reshape(shape)
    return y, mean, var


def _vjp_of(fn, x, scale, bias, cotangents):
    outputs, vjp = jax.vjp(fn, x, scale, bias)
    return outputs, vjp(cotangents)


def _assert_close(ours, ref, rtol):
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= rtol * max(np.abs(b).max(), 1e-6), np.abs(a - b).max() / np.abs(b).max()


@given(
    shape=st.sampled_from([(64, 3), (4, 5, 6), (2, 7, 5, 8), (3, 4, 4, 16)]),
    offset=st.sampled_from([0.0, 3.0, 20.0]),
    spread=st.sampled_from([0.1, 1.0, 5.0]),
    fast_variance=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_gradient_is_autodiffs_of_the_formula(shape, offset, spread, fast_variance, seed):
    """Values and the gradient with respect to x, scale and bias, with cotangents on all three
    outputs (y, and mean/var as the running averages use them), within 1e-4 of autodiff."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal(shape) * spread + offset, jnp.float32)
    scale = jnp.asarray(rng.standard_normal(shape[-1]), jnp.float32)
    bias = jnp.asarray(rng.standard_normal(shape[-1]), jnp.float32)
    cts = (jnp.asarray(rng.standard_normal(shape), jnp.float32),
           jnp.asarray(rng.standard_normal(shape[-1]), jnp.float32),
           jnp.asarray(rng.standard_normal(shape[-1]), jnp.float32))
    ours = _vjp_of(lambda *a: batch_norm(*a, 1e-5, fast_variance), x, scale, bias, cts)
    ref = _vjp_of(lambda *a: plain_batch_norm(*a, 1e-5, fast_variance), x, scale, bias, cts)
    # The closed form's sum(dy * x) - mean * sum(dy) cancels ~|mean| / std ulps (see norm.py), and
    # E[x^2] - E[x]^2 (fast_variance) far more: the tolerance grows with that ratio, never below 1e-4.
    base = 1e-4 if offset <= 3.0 or not fast_variance else 2e-3
    _assert_close(ours, ref, rtol=max(base, 2e-6 * offset / spread))


def test_the_oracle_sees_the_statistics_cotangents(rng):
    """Not vacuous: dropping the mean/var cotangents (what an implementation that only
    differentiates y would do) fails the same check."""
    x = jnp.asarray(rng.standard_normal((4, 5, 6)) + 1.0, jnp.float32)
    scale, bias = jnp.ones(6), jnp.zeros(6)
    dy = jnp.asarray(rng.standard_normal((4, 5, 6)), jnp.float32)
    d_stats = jnp.asarray(rng.standard_normal(6), jnp.float32)
    ours = _vjp_of(lambda *a: batch_norm(*a, 1e-5, False), x, scale, bias, (dy, d_stats, d_stats))
    y_only = _vjp_of(lambda *a: plain_batch_norm(*a, 1e-5, False), x, scale, bias, (dy, 0 * d_stats, 0 * d_stats))
    with pytest.raises(AssertionError):
        _assert_close(ours, y_only, rtol=1e-4)


def test_bfloat16_input_gets_a_bfloat16_gradient(rng):
    x = jnp.asarray(rng.standard_normal((2, 4, 4, 8)), jnp.bfloat16)
    scale, bias = jnp.full(8, 1.5), jnp.full(8, 0.5)
    dy = jnp.asarray(rng.standard_normal((2, 4, 4, 8)), jnp.float32)
    (y, _, _), (dx, dscale, dbias) = _vjp_of(lambda *a: batch_norm(*a, 1e-5, False), x, scale, bias,
                                             (dy, jnp.zeros(8), jnp.zeros(8)))
    assert (y.dtype, dx.dtype, dscale.dtype, dbias.dtype) == (jnp.float32, jnp.bfloat16, jnp.float32, jnp.float32)
    ref = _vjp_of(lambda *a: plain_batch_norm(*a, 1e-5, False), x, scale, bias, (dy, jnp.zeros(8), jnp.zeros(8)))[1]
    _assert_close((dx, dscale, dbias), ref, rtol=1e-2)  # bf16 holds ~3 significant digits


@pytest.mark.parametrize("train", [True, False])
def test_flax_batch_norm_is_flaxs(train, rng):
    """The blocks' default: nn.BatchNorm's variables, outputs, running averages and gradients."""
    x = jnp.asarray(rng.standard_normal((4, 6, 6, 8)) * 2 + 0.5, jnp.float32)
    ours = FLAX_BATCH_NORM(use_running_average=not train)
    flax = nn.BatchNorm(use_running_average=not train)
    variables = flax.init(jax.random.PRNGKey(0), x)
    assert jax.tree.structure(ours.init(jax.random.PRNGKey(0), x)) == jax.tree.structure(variables)
    variables = {"params": {"scale": jnp.linspace(0.5, 2.0, 8), "bias": jnp.linspace(-1.0, 1.0, 8)},
                 "batch_stats": {"mean": jnp.full(8, 0.3), "var": jnp.full(8, 1.7)}}
    weights = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)

    def run(module):
        def loss(params, x):
            y, state = module.apply({**variables, "params": params}, x, mutable=["batch_stats"])
            return jnp.sum(y * weights) + jnp.sum(state["batch_stats"]["var"]), (y, state)

        return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(variables["params"], x)

    _assert_close(run(ours), run(flax), rtol=1e-5)


def test_models_batch_norm_keeps_pytorchs_statistics(rng):
    """The models' BatchNorm in training mode: two-pass variance, unbiased running variance."""
    x = rng.standard_normal((3, 5, 5, 4)) * 3 + 10
    module = BatchNorm(use_running_average=False, momentum=0.9)
    variables = module.init(jax.random.PRNGKey(0), jnp.asarray(x, jnp.float32))
    _, state = module.apply(variables, jnp.asarray(x, jnp.float32), mutable=["batch_stats"])
    n = x.size // x.shape[-1]
    np.testing.assert_allclose(state["batch_stats"]["mean"], 0.1 * x.mean((0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(state["batch_stats"]["var"], 0.9 + 0.1 * x.var((0, 1, 2)) * n / (n - 1), rtol=1e-5)


def test_sync_statistics_match_the_unsynchronised_module_on_one_device(rng):
    """With ``axis_name`` the statistics go through pmean (autodiff path); on a mapped axis
    of size 1 that is the same function as the hand-written gradient's."""
    x = jnp.asarray(rng.standard_normal((1, 2, 4, 4, 8)), jnp.float32)
    synced, local = BatchNorm(use_running_average=False, axis_name="d"), BatchNorm(use_running_average=False)
    variables = local.init(jax.random.PRNGKey(0), x[0])

    def grads(module, x):
        def loss(params, x):
            y, _ = module.apply({**variables, "params": params}, x, mutable=["batch_stats"])
            return jnp.sum(jnp.sin(y))
        return jax.grad(loss, argnums=(0, 1))(variables["params"], x)

    mapped = jax.vmap(partial(grads, synced), axis_name="d")(x)
    _assert_close(jax.tree.map(lambda a: a[0], mapped), grads(local, x[0]), rtol=1e-5)


def test_frozen_batch_norm_is_torchvisions(rng):
    import torch
    from torchvision.ops.misc import FrozenBatchNorm2d

    c = 6
    x = (3.0 * rng.standard_normal((2, 5, 7, c)) + 1.0).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    vectors = {"scale": 0.5 + rng.random(c), "bias": rng.standard_normal(c), "mean": rng.standard_normal(c),
               "var": 0.5 + rng.random(c)}
    vectors = {k: v.astype(np.float32) for k, v in vectors.items()}
    tv = FrozenBatchNorm2d(c)
    for ours, theirs in (("scale", "weight"), ("bias", "bias"), ("mean", "running_mean"), ("var", "running_var")):
        getattr(tv, theirs).copy_(torch.from_numpy(vectors[ours]))
    x_t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_()
    y_t = tv(x_t)
    (y_t * torch.from_numpy(g.transpose(0, 3, 1, 2).copy())).sum().backward()

    module = FrozenBatchNorm()
    assert set(module.init(jax.random.PRNGKey(0), x)) == {"batch_stats"}  # nothing for an optimizer to see
    y, vjp = jax.vjp(lambda x: module.apply({"batch_stats": vectors}, x), x)
    _assert_close(y, y_t.detach().numpy().transpose(0, 2, 3, 1), 1e-6)
    _assert_close(vjp(g)[0], x_t.grad.numpy().transpose(0, 2, 3, 1), 1e-6)
