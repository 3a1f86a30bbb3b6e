"""resnet_bottleneck_forward / resnet_basic_forward against independent textbook oracles."""

import re
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close_to_scale, assert_trees_equal
from hypothesis import given, settings
from hypothesis import strategies as st
from textbook import (
    TextbookBasic,
    TextbookBottleneck,
    numpy_basic,
    numpy_bottleneck,
    textbook_basic_forward,
    textbook_bottleneck_forward,
    textbook_forward,
)

import resnet_bottleneck as rb
from resnet_bottleneck.forward import bottleneck_walkthrough, worked_example_input

TOL = 1e-5
close = partial(assert_close_to_scale, rel=0.0, atol=TOL)  # an absolute tolerance: the specification's 1e-5


def image(rng, h, w, c, scale=1.0):
    return (scale * rng.standard_normal((h, w, c))).astype(np.float32)


# --- the worked example -----------------------------------------------------------


def test_worked_example_matches_textbook():
    x = worked_example_input()
    assert x.shape == (4, 4, 4)
    y = rb.resnet_bottleneck_forward(0, x, 2, 4)
    assert y.shape == (64,)
    assert np.all(np.asarray(y) >= 0)  # the final ReLU
    close(y, textbook_bottleneck_forward(0, jnp.asarray(x), 2, 4))


def test_worked_example_walkthrough_shapes():
    stages = bottleneck_walkthrough((4, 4, 4), 2, 4)
    assert [s["shape"] for s in stages] == [
        (1, 4, 4, 4),
        (1, 4, 4, 2),
        (1, 4, 4, 2),
        (1, 4, 4, 2),
        (1, 4, 4, 2),
        (1, 4, 4, 4),
        (1, 4, 4, 4),
        (64,),
    ]


# --- agreement with the textbook over seeds and shapes ----------------------------

EDGE_SEEDS = [0, 1, 2**31 - 1, 2**31, 2**32 - 1]


@pytest.mark.parametrize("seed", EDGE_SEEDS)
def test_edge_seeds_match_textbook(seed, rng):
    x = image(rng, 3, 5, 8)
    close(rb.resnet_bottleneck_forward(seed, x, 2, 8), textbook_bottleneck_forward(seed, jnp.asarray(x), 2, 8))
    close(rb.resnet_basic_forward(seed, x, 8), textbook_basic_forward(seed, jnp.asarray(x), 8))


def eager_textbook(module, seed, x):
    """The textbook forward, eager, and kappa: how much its float32 BatchNorm variance can amplify rounding.

    Flax computes the batch variance as E[y^2] - E[y]^2; where a channel's variance is small
    next to its squared mean that subtraction cancels, and two float32 evaluations of the
    same formula (eager, or jitted) differ by about 2**-24 * kappa * |output|, with
    kappa = max over channels of E[y^2] / (Var[y] + eps).
    """
    x_b = jnp.asarray(x)[None]
    variables = module.init(jax.random.PRNGKey(seed), x_b)
    y, state = module.apply(variables, x_b, mutable=["batch_stats", "intermediates"], capture_intermediates=True)
    kappa = 1.0
    for name, value in state["intermediates"].items():
        if name.startswith("Conv"):
            pre_bn = np.asarray(value["__call__"][0], np.float64)
            mean, var = pre_bn.mean(axis=(0, 1, 2)), pre_bn.var(axis=(0, 1, 2))
            kappa = max(kappa, float(((mean**2 + var) / (var + 1e-5)).max()))
    return np.asarray(y).reshape(-1), kappa


def tolerance(y, kappa):
    return max(1.0, float(np.abs(y).max())) * (TOL + 4 * 2.0**-24 * kappa)


@settings(max_examples=12)
@given(
    seed=st.integers(0, 2**32 - 1),
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    out=st.integers(1, 8),
    mid=st.integers(1, 12),  # mid > out included
    scale=st.sampled_from([1e-3, 1.0, 100.0]),
    data=st.integers(0, 2**16),
)
def test_bottleneck_matches_textbook(seed, h, w, out, mid, scale, data):
    x = image(np.random.default_rng(data), h, w, out, scale)
    expected, kappa = eager_textbook(TextbookBottleneck(mid, out), seed, x)
    close(rb.resnet_bottleneck_forward(seed, x, mid, out), expected, atol=tolerance(expected, kappa))


@settings(max_examples=8)
@given(
    seed=st.integers(0, 2**32 - 1),
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    c=st.integers(1, 8),
    data=st.integers(0, 2**16),
)
def test_basic_matches_textbook(seed, h, w, c, data):
    x = image(np.random.default_rng(data), h, w, c)
    expected, kappa = eager_textbook(TextbookBasic(c), seed, x)
    close(rb.resnet_basic_forward(seed, x, c), expected, atol=tolerance(expected, kappa))


def test_ill_conditioned_batch_norm_is_the_textbooks_own():
    """Where ours and the eager textbook differ by more than 1e-5, so does the textbook with itself."""
    x = image(np.random.default_rng(163), 2, 1, 8)  # BN over two positions: tiny variances
    eager, kappa = eager_textbook(TextbookBasic(8), 0, x)
    jitted = np.asarray(jax.jit(textbook_basic_forward, static_argnums=2)(0, jnp.asarray(x), 8))
    assert kappa > 1000 and np.abs(jitted - eager).max() > TOL  # the formula's own float32 spread
    ours = rb.resnet_basic_forward(0, x, 8)
    close(ours, jitted, atol=tolerance(jitted, kappa))
    close(ours, eager, atol=tolerance(eager, kappa))


@pytest.mark.parametrize("shape,mid", [((4, 4, 4), 2), ((3, 7, 5), 9), ((1, 1, 3), 1), ((6, 6, 32), 8)])
def test_within_1e5_of_textbook_under_jit(shape, mid, rng):
    """The fast path (1x1 convs as dots, our compile options) against the jitted textbook."""
    x = image(rng, *shape)
    jitted = jax.jit(textbook_bottleneck_forward, static_argnums=(2, 3))(np.uint32(5), jnp.asarray(x), mid, shape[-1])
    ours = np.asarray(rb.resnet_bottleneck_forward(5, x, mid, shape[-1]))
    close(ours, jitted)
    assert ours.any()  # not vacuous: the block produced something to compare


def test_one_by_one_spatial_input():
    # BN over a single position: every normalised value is 0, so the block returns relu(bias + x).
    x = np.array([[[0.5, -2.0, 3.0, 0.25]]], np.float32)
    y = rb.resnet_bottleneck_forward(7, x, 3, 4)
    close(y, textbook_bottleneck_forward(7, jnp.asarray(x), 3, 4))
    close(y, np.maximum(x.reshape(-1), 0))  # BN bias starts at 0


@pytest.mark.parametrize("mid,out,shape", [(2, 4, (4, 4, 4)), (16, 3, (5, 3, 3)), (5, 6, (2, 7, 6))])
def test_float64_numpy_oracle(mid, out, shape, rng):
    """The arithmetic itself, redone in float64 numpy from the textbook's initial variables."""
    x = image(rng, *shape)
    variables = TextbookBottleneck(mid, out).init(jax.random.PRNGKey(3), x[None])
    expected = numpy_bottleneck(jax.tree_util.tree_map(np.asarray, variables["params"]), x[None].astype(np.float64))
    close(rb.resnet_bottleneck_forward(3, x, mid, out), expected.reshape(-1), atol=1e-4)


def test_basic_float64_numpy_oracle(rng):
    x = image(rng, 5, 4, 3)
    variables = TextbookBasic(3).init(jax.random.PRNGKey(11), x[None])
    expected = numpy_basic(jax.tree_util.tree_map(np.asarray, variables["params"]), x[None].astype(np.float64))
    close(rb.resnet_basic_forward(11, x, 3), expected.reshape(-1), atol=1e-4)


# --- the agreement check is not vacuous --------------------------------------------


class ReluBeforeAdd(nn.Module):
    """The textbook block with a ReLU before the residual add: the commonest wrong bottleneck."""

    mid_features: int
    out_features: int

    @nn.compact
    def __call__(self, x):
        y = nn.relu(nn.BatchNorm(use_running_average=False)(nn.Conv(self.mid_features, (1, 1))(x)))
        y = nn.relu(nn.BatchNorm(use_running_average=False)(nn.Conv(self.mid_features, (3, 3))(y)))
        y = nn.relu(nn.BatchNorm(use_running_average=False)(nn.Conv(self.out_features, (1, 1))(y)))
        return nn.relu(y + x)


def test_a_relu_before_the_add_would_fail_the_check(rng):
    """The same variables, one ReLU moved: the 1e-5 check against the textbook fails by far."""
    x = jnp.asarray(image(rng, 4, 4, 4))
    with pytest.raises(AssertionError):
        close(textbook_forward(ReluBeforeAdd(2, 4), 0, x), rb.resnet_bottleneck_forward(0, x, 2, 4))


# --- the variable tree, batch stats, determinism -----------------------------------


def test_default_variable_tree_is_the_textbook_one():
    x = jnp.ones((1, 5, 5, 8))
    ours = rb.BottleneckBlock(2, 8).init(jax.random.PRNGKey(42), x)
    theirs = TextbookBottleneck(2, 8).init(jax.random.PRNGKey(42), x)
    assert jax.tree_util.tree_structure(ours) == jax.tree_util.tree_structure(theirs)
    shapes = jax.tree_util.tree_map(lambda a: a.shape, ours["params"])
    assert shapes == {
        "Conv_0": {"kernel": (1, 1, 8, 2), "bias": (2,)},
        "BatchNorm_0": {"scale": (2,), "bias": (2,)},
        "Conv_1": {"kernel": (3, 3, 2, 2), "bias": (2,)},
        "BatchNorm_1": {"scale": (2,), "bias": (2,)},
        "Conv_2": {"kernel": (1, 1, 2, 8), "bias": (8,)},
        "BatchNorm_2": {"scale": (8,), "bias": (8,)},
    }
    assert_trees_equal(ours, theirs)  # the same initial values, bit for bit


def test_basic_variable_tree_is_the_textbook_one():
    x = jnp.ones((1, 3, 3, 4))
    ours = rb.BasicBlock(4).init(jax.random.PRNGKey(5), x)
    assert_trees_equal(ours, TextbookBasic(4).init(jax.random.PRNGKey(5), x))


def test_apply_updates_batch_stats(rng):
    x = jnp.asarray(image(rng, 4, 4, 4))[None]
    block = rb.BottleneckBlock(2, 4)
    variables = block.init(jax.random.PRNGKey(0), x)
    _, state = block.apply(variables, x, mutable=["batch_stats"])
    new, old = state["batch_stats"]["BatchNorm_0"], variables["batch_stats"]["BatchNorm_0"]
    assert not np.allclose(new["mean"], old["mean"])
    # Flax's running mean: momentum * old + (1 - momentum) * batch mean (momentum 0.99).
    p0 = jax.tree_util.tree_map(np.asarray, variables["params"]["Conv_0"])
    conv0 = np.asarray(x) @ p0["kernel"][0, 0] + p0["bias"]
    close(new["mean"], 0.99 * old["mean"] + 0.01 * conv0.mean(axis=(0, 1, 2)), atol=1e-6)


def test_deterministic_and_seed_sensitive(rng):
    x = image(rng, 4, 4, 4)
    a = np.asarray(rb.resnet_bottleneck_forward(9, x, 2, 4))
    b = np.asarray(rb.resnet_bottleneck_forward(9, x, 2, 4))
    c = np.asarray(rb.resnet_bottleneck_forward(10, x, 2, 4))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


# --- compile once, reuse -------------------------------------------------------------


def count_traces():
    """A list that grows by one each time JAX traces a function to a jaxpr (jax's own monitoring events)."""
    traces = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, _, **__: traces.append(event) if event == "/jax/core/compile/jaxpr_trace_duration" else None
    )
    return traces


def test_second_call_does_not_retrace(rng):
    traces = count_traces()
    x = image(rng, 6, 6, 12)
    rb.resnet_bottleneck_forward(1, x, 3, 12)
    rb.resnet_basic_forward(1, x, 12)
    before = len(traces)
    for seed in (2, 3, 2**32 - 1):  # other seeds and other values reuse the compiled code
        rb.resnet_bottleneck_forward(seed, x + seed % 7, 3, 12)
        rb.resnet_basic_forward(seed, x, 12)
    assert len(traces) == before
    rb.resnet_bottleneck_forward(1, x, 4, 12)  # a new width is a new function
    assert len(traces) == before + 1


# --- valid array-likes -------------------------------------------------------------


def test_array_likes_are_accepted(rng):
    x = image(rng, 3, 3, 4)
    expected = np.asarray(rb.resnet_bottleneck_forward(4, x, 2, 4))
    close(rb.resnet_bottleneck_forward(np.int64(4), x.tolist(), 2, 4), expected)
    close(rb.resnet_bottleneck_forward(np.uint32(4), x.astype(np.float64), np.int32(2), 4), expected)
    close(rb.resnet_bottleneck_forward(4, jnp.asarray(x), 2, 4), expected)
    ints = rng.integers(-5, 6, size=(3, 3, 4))
    close(rb.resnet_bottleneck_forward(4, ints, 2, 4), textbook_bottleneck_forward(4, jnp.asarray(ints), 2, 4))
    close(
        rb.resnet_bottleneck_forward(4, ints.astype(np.uint8) % 5, 2, 4),
        rb.resnet_bottleneck_forward(4, (ints.astype(np.uint8) % 5).astype(np.float32), 2, 4),
    )


# --- bad input ---------------------------------------------------------------------

GOOD = np.ones((3, 3, 4), np.float32)

BAD_BOTTLENECK = [
    (dict(x=np.ones((3, 4))), ValueError, r"x must be a 3-D array \(H, W, C\); got shape \(3, 4\) \(2-D\)"),
    (dict(x=np.ones((1, 3, 3, 4))), ValueError, r"x must be a 3-D array .* \(4-D\)"),
    (dict(x=np.ones((0, 3, 4))), ValueError, r"x must have no empty axis .*got shape \(0, 3, 4\)"),
    (
        dict(x=np.ones((3, 3, 5))),
        ValueError,
        r"x must have out_features=4 channels .*got shape \(3, 3, 5\) \(5 channels\)",
    ),
    (
        dict(x=np.where(np.eye(3)[..., None] > 0, np.nan, 1.0) * np.ones((3, 3, 4))),
        ValueError,
        r"x must be finite; got 12 NaN/Inf value\(s\), the first at index \(0, 0, 0\)",
    ),
    (dict(x=np.full((3, 3, 4), np.inf)), ValueError, r"x must be finite; got 36 NaN/Inf"),
    (dict(x=np.ones((3, 3, 4), np.complex64)), TypeError, r"x must hold real numbers .*got dtype complex64"),
    (dict(x=np.ones((3, 3, 4), bool)), TypeError, r"x must hold real numbers .*got dtype bool"),
    (dict(x=np.full((3, 3, 4), "a")), TypeError, r"x must hold real numbers .*got dtype <U1"),
    (dict(x=np.full((3, 3, 4), None)), TypeError, r"x must hold real numbers .*got dtype object"),
    (dict(x="abc"), TypeError, r"x must be a real-valued 3-D array .*got 'abc' \(str\)"),
    (dict(x=[[[1.0], [2.0, 3.0]]]), TypeError, r"x must be a real-valued 3-D array .*not a regular array"),
    (dict(mid_features=0), ValueError, r"mid_features must be a positive integer; got 0"),
    (dict(mid_features=-3), ValueError, r"mid_features must be a positive integer; got -3"),
    (dict(mid_features=2.0), TypeError, r"mid_features must be a positive integer; got 2.0 \(float\)"),
    (dict(mid_features="2"), TypeError, r"mid_features must be a positive integer; got '2' \(str\)"),
    (dict(mid_features=True), TypeError, r"mid_features must be a positive integer; got True \(bool\)"),
    (dict(out_features=0), ValueError, r"out_features must be a positive integer; got 0"),
    (dict(out_features=4.5), TypeError, r"out_features must be a positive integer; got 4.5 \(float\)"),
    (dict(out_features=None), TypeError, r"out_features must be a positive integer; got None"),
    (dict(seed=-1), ValueError, r"seed must be an integer in \[0, 2\*\*32\); got -1"),
    (dict(seed=2**32), ValueError, r"seed must be an integer in \[0, 2\*\*32\); got 4294967296"),
    (dict(seed=1.0), TypeError, r"seed must be an integer in \[0, 2\*\*32\); got 1.0 \(float\)"),
    (dict(seed="0"), TypeError, r"seed must be an integer .*got '0' \(str\)"),
    (dict(seed=True), TypeError, r"seed must be an integer .*got True \(bool\)"),
    (dict(seed=np.array([1, 2])), TypeError, r"seed must be an integer .*ndarray"),
]


@pytest.mark.parametrize("change,error,message", BAD_BOTTLENECK)
def test_bottleneck_bad_input(change, error, message):
    args = dict(seed=0, x=GOOD, mid_features=2, out_features=4) | change
    with pytest.raises(error, match=message):
        rb.resnet_bottleneck_forward(**args)


@pytest.mark.parametrize(
    "change,error,message",
    [
        (dict(features=0), ValueError, r"features must be a positive integer; got 0"),
        (dict(features=False), TypeError, r"features must be a positive integer; got False \(bool\)"),
        (dict(features=4.0), TypeError, r"features must be a positive integer; got 4.0"),
        (dict(x=np.ones((3, 3, 3))), ValueError, r"x must have features=4 channels"),
        (dict(x=np.ones((3, 3, 4), np.complex128)), TypeError, r"x must hold real numbers"),
        (dict(x=np.full((3, 3, 4), np.nan)), ValueError, r"x must be finite"),
        (dict(seed=2**32), ValueError, r"seed must be an integer in \[0, 2\*\*32\)"),
    ],
)
def test_basic_bad_input(change, error, message):
    args = dict(seed=0, x=GOOD, features=4) | change
    with pytest.raises(error, match=message):
        rb.resnet_basic_forward(**args)


def test_seed_wraparound_is_refused_not_inherited():
    # jax.random.PRNGKey keeps only 32 bits: 2**32 would silently be seed 0's block.
    np.testing.assert_array_equal(jax.random.PRNGKey(2**32), jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=re.escape("got 4294967296")):
        rb.resnet_bottleneck_forward(2**32, GOOD, 2, 4)
