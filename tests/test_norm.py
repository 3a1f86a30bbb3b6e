"""The BatchNorm with a hand-written gradient: against autodiff of the plain formula, and
against Flax's ``nn.BatchNorm`` as the blocks' default; the frozen BatchNorm against torchvision's."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close_to_scale, assert_results_close, assert_trees_close, forward_and_grads
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


@given(
    shape=st.sampled_from([(64, 3), (4, 5, 6), (2, 7, 5, 8), (3, 4, 4, 16)]),
    offset=st.sampled_from([0.0, 3.0, 20.0]),
    spread=st.sampled_from([0.1, 1.0, 5.0]),
    fast_variance=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_gradient_is_autodiffs_of_the_formula(shape, offset, spread, fast_variance, seed):
    """Values and the gradient with respect to x, scale and bias, with cotangents on all three
    outputs (y, and mean/var as the running averages use them), within 1e-4 of autodiff where the
    mean is not far larger than the spread."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal(shape) * spread + offset, jnp.float32)
    scale = jnp.asarray(rng.standard_normal(shape[-1]), jnp.float32)
    bias = jnp.asarray(rng.standard_normal(shape[-1]), jnp.float32)
    cts = (
        jnp.asarray(rng.standard_normal(shape), jnp.float32),
        jnp.asarray(rng.standard_normal(shape[-1]), jnp.float32),
        jnp.asarray(rng.standard_normal(shape[-1]), jnp.float32),
    )
    ours = _vjp_of(lambda *a: batch_norm(*a, 1e-5, fast_variance), x, scale, bias, cts)
    ref = _vjp_of(lambda *a: plain_batch_norm(*a, 1e-5, fast_variance), x, scale, bias, cts)
    # The closed form's sum(dy * x) - mean * sum(dy) cancels ~|mean| / std ulps (see norm.py), and
    # E[x^2] - E[x]^2 (fast_variance) far more: the tolerance grows with that ratio, never below 1e-4.
    base = 1e-4 if offset <= 3.0 or not fast_variance else 2e-3
    assert_trees_close(ours, ref, rel=max(base, 2e-6 * offset / spread))


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
        assert_trees_close(ours, y_only, rel=1e-4)


def test_bfloat16_input_gets_a_bfloat16_gradient(rng):
    x = jnp.asarray(rng.standard_normal((2, 4, 4, 8)), jnp.bfloat16)
    scale, bias = jnp.full(8, 1.5), jnp.full(8, 0.5)
    dy = jnp.asarray(rng.standard_normal((2, 4, 4, 8)), jnp.float32)
    (y, _, _), (dx, dscale, dbias) = _vjp_of(
        lambda *a: batch_norm(*a, 1e-5, False), x, scale, bias, (dy, jnp.zeros(8), jnp.zeros(8))
    )
    assert (y.dtype, dx.dtype, dscale.dtype, dbias.dtype) == (jnp.float32, jnp.bfloat16, jnp.float32, jnp.float32)
    ref = _vjp_of(lambda *a: plain_batch_norm(*a, 1e-5, False), x, scale, bias, (dy, jnp.zeros(8), jnp.zeros(8)))[1]
    assert_trees_close((dx, dscale, dbias), ref, rel=1e-2)  # bf16 holds ~3 significant digits


@pytest.mark.parametrize("train", [True, False])
def test_flax_batch_norm_is_flaxs(train, rng):
    """The blocks' default: nn.BatchNorm's variables, outputs, running averages and gradients."""
    x = jnp.asarray(rng.standard_normal((4, 6, 6, 8)) * 2 + 0.5, jnp.float32)
    ours = FLAX_BATCH_NORM(use_running_average=not train)
    flax = nn.BatchNorm(use_running_average=not train)
    variables = flax.init(jax.random.PRNGKey(0), x)
    assert jax.tree.structure(ours.init(jax.random.PRNGKey(0), x)) == jax.tree.structure(variables)
    variables = {
        "params": {"scale": jnp.linspace(0.5, 2.0, 8), "bias": jnp.linspace(-1.0, 1.0, 8)},
        "batch_stats": {"mean": jnp.full(8, 0.3), "var": jnp.full(8, 1.7)},
    }
    assert_results_close(forward_and_grads(ours, variables, x), forward_and_grads(flax, variables, x), rel=1e-5)


def test_models_batch_norm_keeps_pytorchs_statistics(rng):
    """The models' BatchNorm in training mode: two-pass variance, unbiased running variance."""
    x = rng.standard_normal((3, 5, 5, 4)) * 3 + 10
    module = BatchNorm(use_running_average=False, momentum=0.9)
    variables = module.init(jax.random.PRNGKey(0), jnp.asarray(x, jnp.float32))
    _, state = module.apply(variables, jnp.asarray(x, jnp.float32), mutable=["batch_stats"])
    n = x.size // x.shape[-1]
    np.testing.assert_allclose(state["batch_stats"]["mean"], 0.1 * x.mean((0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(state["batch_stats"]["var"], 0.9 + 0.1 * x.var((0, 1, 2)) * n / (n - 1), rtol=1e-5)


# --- synchronised statistics: 4 shards of a vmapped axis against the concatenated batch ---

SHARDS = 4
VARIANTS = {"pytorch": BatchNorm(use_running_average=False), "flax": FLAX_BATCH_NORM()}


def _shards(seed):
    """4 shards of 2x3x3x8 with different means and spreads: local statistics are far from global ones."""
    rng = np.random.default_rng(seed)
    k = np.arange(SHARDS).reshape(-1, 1, 1, 1, 1)
    x = jnp.asarray(rng.standard_normal((SHARDS, 2, 3, 3, 8)) * (1 + k) + 2 * k, jnp.float32)
    return x, jnp.asarray(rng.standard_normal(x.shape), jnp.float32)


def _variables():
    return {
        "params": {"scale": jnp.linspace(0.5, 2.0, 8), "bias": jnp.linspace(-1.0, 1.0, 8)},
        "batch_stats": {"mean": jnp.full(8, 0.3), "var": jnp.full(8, 1.7)},
    }


def _per_shard(module, x, weights, axis_name):
    """Each shard's (output, statistics, gradients), laid out as one module's on the whole batch:
    outputs and input gradients concatenated; the parameters' gradients summed over shards (what a
    data-parallel step does with them); the statistics, which every shard must hold alike, from each.
    Every shard holds the same statistics, so each puts a quarter of them in its loss."""
    y, stats, (d_params, d_x) = jax.vmap(
        lambda x, w: forward_and_grads(module, _variables(), x, weights=w, statistics_weight=1 / SHARDS),
        axis_name=axis_name,
    )(x, weights)
    whole = (-1, *x.shape[2:])
    return [
        (
            y.reshape(whole),
            jax.tree.map(lambda s: s[i], stats),
            (jax.tree.map(lambda g: g.sum(0), d_params), d_x.reshape(whole)),
        )
        for i in range(SHARDS)
    ]


@pytest.mark.parametrize("variant", VARIANTS)
def test_synced_statistics_over_4_shards_are_the_whole_batchs(variant):
    """``axis_name`` over 4 shards is the unsynchronised module on the concatenated batch: outputs,
    running mean and variance (the unbiased one with the global count, 72, not a shard's 18) and
    the gradients of the parameters and of every shard's input, within 1e-5."""
    x, weights = _shards(0)
    synced, local = VARIANTS[variant].clone(axis_name="batch"), VARIANTS[variant]
    whole = (-1, *x.shape[2:])
    expected = forward_and_grads(local, _variables(), x.reshape(whole), weights=weights.reshape(whole))
    for shard in _per_shard(synced, x, weights, "batch"):
        assert_results_close(shard, expected, rel=1e-5)


def test_local_statistics_per_shard_would_fail_that_check():
    """Not vacuous: each shard normalised by its own statistics (no ``axis_name``) disagrees with the
    whole batch in the output, the running statistics and the gradients alike."""
    x, weights = _shards(0)
    whole = (-1, *x.shape[2:])
    module = VARIANTS["pytorch"]
    expected = forward_and_grads(module, _variables(), x.reshape(whole), weights=weights.reshape(whole))
    shard = _per_shard(module, x, weights, None)[SHARDS - 1]
    for ours, theirs in zip(shard, expected):
        with pytest.raises(AssertionError):
            assert_trees_close(ours, theirs, rel=1e-3, floor=0.01)


def test_frozen_batch_norm_is_torchvisions(rng):
    import torch
    from torchvision.ops.misc import FrozenBatchNorm2d

    c = 6
    x = (3.0 * rng.standard_normal((2, 5, 7, c)) + 1.0).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    vectors = {
        "scale": 0.5 + rng.random(c),
        "bias": rng.standard_normal(c),
        "mean": rng.standard_normal(c),
        "var": 0.5 + rng.random(c),
    }
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
    assert_close_to_scale(y, y_t.detach().numpy().transpose(0, 2, 3, 1), rel=1e-6)
    assert_close_to_scale(vjp(g)[0], x_t.grad.numpy().transpose(0, 2, 3, 1), rel=1e-6)
