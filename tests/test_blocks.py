"""Block options: strides and their placement, projection, groups, dilation, padding, zero-init,
train/eval, mixed precision. The numbers are checked against float64 numpy arithmetic."""

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    assert_close_to_scale,
    assert_results_close,
    assert_trees_close,
    assert_trees_equal,
    bfloat16_rounded,
    forward_and_grads,
)
from textbook import np_batchnorm_train, np_conv, relu, same_pad

from resnet_bottleneck import BasicBlock, BottleneckBlock


def init_apply(block, x, seed=0, **kwargs):
    variables = block.init(jax.random.PRNGKey(seed), x)
    y, state = block.apply(variables, x, mutable=["batch_stats", "intermediates"], capture_intermediates=True, **kwargs)
    return variables, y, state


def np_params(variables):
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), variables["params"])


def numpy_bottleneck_general(p, x, strides, stride_on, groups, dilation, pad_mode, project):
    """The bottleneck with every option, in float64 numpy; no bias (use_bias=False)."""
    x = np.asarray(x, np.float64)
    s1, s3 = (1, strides) if stride_on == "3x3" else (strides, 1)
    y = relu(np_batchnorm_train(np_conv(x, p["Conv_0"]["kernel"], stride=s1), **p["BatchNorm_0"]))
    h, w = y.shape[1:3]
    if pad_mode == "torch":
        pad = ((dilation, dilation), (dilation, dilation))
    else:
        pad = (same_pad(h, 2 * dilation + 1, s3), same_pad(w, 2 * dilation + 1, s3))
    y = np_conv(y, p["Conv_1"]["kernel"], stride=s3, pad=pad, groups=groups, dilation=dilation)
    y = relu(np_batchnorm_train(y, **p["BatchNorm_1"]))
    y = np_batchnorm_train(np_conv(y, p["Conv_2"]["kernel"]), **p["BatchNorm_2"])
    shortcut = (
        np_batchnorm_train(np_conv(x, p["Conv_3"]["kernel"], stride=strides), **p["BatchNorm_3"]) if project else x
    )
    return relu(y + shortcut)


@pytest.mark.parametrize("stride_on", ["3x3", "1x1"])
@pytest.mark.parametrize("pad_mode", ["torch", "SAME"])
@pytest.mark.parametrize("hw", [(8, 6), (7, 5)])
def test_strided_grouped_projected_bottleneck_matches_numpy(stride_on, pad_mode, hw, rng):
    x = rng.standard_normal((2, *hw, 6)).astype(np.float32)
    block = BottleneckBlock(8, 12, strides=2, stride_on=stride_on, groups=4, use_bias=False, padding=pad_mode)
    variables, y, _ = init_apply(block, x)
    expected = numpy_bottleneck_general(np_params(variables), x, 2, stride_on, 4, 1, pad_mode, True)
    assert y.shape == (2, -(-hw[0] // 2), -(-hw[1] // 2), 12)
    np.testing.assert_allclose(y, expected, atol=1e-4, rtol=1e-4)


def test_dilated_bottleneck_matches_numpy(rng):
    x = rng.standard_normal((1, 9, 9, 16)).astype(np.float32)
    block = BottleneckBlock(4, 16, dilation=2, use_bias=False, padding="torch")
    variables, y, _ = init_apply(block, x)
    expected = numpy_bottleneck_general(np_params(variables), x, 1, "3x3", 1, 2, "torch", False)
    np.testing.assert_allclose(y, expected, atol=1e-4, rtol=1e-4)


def test_stride_placement_is_where_the_docstring_says(rng):
    x = rng.standard_normal((1, 8, 8, 4)).astype(np.float32)
    for stride_on, conv0, conv1 in (("3x3", (1, 8, 8, 2), (1, 4, 4, 2)), ("1x1", (1, 4, 4, 2), (1, 4, 4, 2))):
        _, y, state = init_apply(BottleneckBlock(2, 4, strides=2, stride_on=stride_on), x)
        seen = state["intermediates"]
        assert seen["Conv_0"]["__call__"][0].shape == conv0
        assert seen["Conv_1"]["__call__"][0].shape == conv1
        assert y.shape == (1, 4, 4, 4)
    # Same weights, different placement: a different function.
    v = BottleneckBlock(2, 4, strides=2).init(jax.random.PRNGKey(0), x)
    a, _ = BottleneckBlock(2, 4, strides=2, stride_on="3x3").apply(v, x, mutable=["batch_stats"])
    b, _ = BottleneckBlock(2, 4, strides=2, stride_on="1x1").apply(v, x, mutable=["batch_stats"])
    assert not np.allclose(a, b, atol=1e-3)


def test_torch_padding_differs_from_same_only_on_even_strided_input(rng):
    for hw, differ in (((8, 8), True), ((7, 7), False)):
        x = rng.standard_normal((1, *hw, 4)).astype(np.float32)
        v = BottleneckBlock(2, 4, strides=2).init(jax.random.PRNGKey(1), x)
        a, _ = BottleneckBlock(2, 4, strides=2, padding="torch").apply(v, x, mutable=["batch_stats"])
        b, _ = BottleneckBlock(2, 4, strides=2, padding="SAME").apply(v, x, mutable=["batch_stats"])
        assert (not np.allclose(a, b, atol=1e-4)) == differ


@pytest.mark.parametrize(
    "in_ch,strides,projection,expected",
    [
        (8, 1, None, False),
        (4, 1, None, True),
        (8, 2, None, True),
        (8, (1, 2), None, True),
        (8, 1, True, True),
    ],
)
def test_projection_exactly_when_needed(in_ch, strides, projection, expected, rng):
    x = rng.standard_normal((1, 6, 6, in_ch)).astype(np.float32)
    for block, proj in (
        (BottleneckBlock(2, 8, strides=strides, projection=projection), "Conv_3"),
        (BasicBlock(8, strides=strides, projection=projection), "Conv_2"),
    ):
        variables = block.init(jax.random.PRNGKey(0), x)
        assert (proj in variables["params"]) == expected
        if expected:
            assert variables["params"][proj]["kernel"].shape == (1, 1, in_ch, 8)
            assert proj.replace("Conv", "BatchNorm") in variables["batch_stats"]


def test_projection_false_refuses_what_cannot_be_added():
    with pytest.raises(ValueError, match=r"projection=False needs an identity shortcut.*4 channels"):
        BottleneckBlock(2, 8, projection=False).init(jax.random.PRNGKey(0), jnp.ones((1, 4, 4, 4)))


def test_strided_basic_block_names_and_shapes(rng):
    x = rng.standard_normal((2, 9, 8, 3)).astype(np.float32)
    variables, y, _ = init_apply(BasicBlock(5, strides=2, use_bias=False), x)
    assert y.shape == (2, 5, 4, 5)
    assert jax.tree_util.tree_map(lambda a: a.shape, variables["params"]) == {
        "Conv_0": {"kernel": (3, 3, 3, 5)},
        "BatchNorm_0": {"scale": (5,), "bias": (5,)},
        "Conv_1": {"kernel": (3, 3, 5, 5)},
        "BatchNorm_1": {"scale": (5,), "bias": (5,)},
        "Conv_2": {"kernel": (1, 1, 3, 5)},
        "BatchNorm_2": {"scale": (5,), "bias": (5,)},
    }


def test_bottleneck_grouped_kernel_shapes():
    v = BottleneckBlock(32, 64, groups=8, strides=2, use_bias=False).init(
        jax.random.PRNGKey(0), jnp.ones((1, 8, 8, 32))
    )
    shapes = jax.tree_util.tree_map(lambda a: a.shape, v["params"])
    assert shapes["Conv_1"] == {"kernel": (3, 3, 4, 32)}
    assert shapes["Conv_3"] == {"kernel": (1, 1, 32, 64)}


def test_zero_init_last_starts_as_identity(rng):
    x = rng.standard_normal((2, 5, 5, 8)).astype(np.float32)
    variables, y, _ = init_apply(BottleneckBlock(2, 8, zero_init_last=True), x)
    np.testing.assert_array_equal(variables["params"]["BatchNorm_2"]["scale"], 0.0)
    np.testing.assert_allclose(y, np.maximum(x, 0), atol=1e-6)
    _, y_default, _ = init_apply(BottleneckBlock(2, 8), x)
    assert not np.allclose(y_default, np.maximum(x, 0), atol=1e-3)
    variables, _, _ = init_apply(BasicBlock(8, zero_init_last=True), x)
    np.testing.assert_array_equal(variables["params"]["BatchNorm_1"]["scale"], 0.0)


def test_eval_uses_running_statistics(rng):
    x = rng.standard_normal((2, 4, 4, 8)).astype(np.float32)
    variables = BottleneckBlock(3, 8).init(jax.random.PRNGKey(0), x)
    stats = jax.tree_util.tree_map(
        lambda a: np.asarray(rng.uniform(0.5, 2.0, a.shape), np.float32), variables["batch_stats"]
    )
    variables = {"params": variables["params"], "batch_stats": stats}
    eval_block = BottleneckBlock(3, 8, norm=partial(nn.BatchNorm, use_running_average=True))
    y = eval_block.apply(variables, x)  # nothing mutable needed in eval

    p, s = np_params(variables), jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), stats)

    def bn(z, i):
        k = f"BatchNorm_{i}"
        return (z - s[k]["mean"]) / np.sqrt(s[k]["var"] + 1e-5) * p[k]["scale"] + p[k]["bias"]

    z = relu(bn(np_conv(x, p["Conv_0"]["kernel"], p["Conv_0"]["bias"]), 0))
    z = relu(bn(np_conv(z, p["Conv_1"]["kernel"], p["Conv_1"]["bias"], pad=((1, 1), (1, 1))), 1))
    z = relu(bn(np_conv(z, p["Conv_2"]["kernel"], p["Conv_2"]["bias"]), 2) + x)
    np.testing.assert_allclose(y, z, atol=1e-4, rtol=1e-4)
    train_y, _ = BottleneckBlock(3, 8).apply(variables, x, mutable=["batch_stats"])
    assert not np.allclose(train_y, y, atol=1e-3)  # train mode ignores the running statistics


def test_momentum_is_flax_convention(rng):
    x = rng.standard_normal((2, 4, 4, 8)).astype(np.float32)
    block = BottleneckBlock(3, 8, norm=partial(nn.BatchNorm, use_running_average=False, momentum=0.9, epsilon=1e-3))
    variables = block.init(jax.random.PRNGKey(0), x)
    _, state = block.apply(variables, x, mutable=["batch_stats"])
    p = np_params(variables)
    conv0 = np_conv(x, p["Conv_0"]["kernel"], p["Conv_0"]["bias"])
    np.testing.assert_allclose(state["batch_stats"]["BatchNorm_0"]["mean"], 0.1 * conv0.mean(axis=(0, 1, 2)), atol=1e-6)
    var = conv0.var(axis=(0, 1, 2))  # flax stores the biased batch variance
    np.testing.assert_allclose(state["batch_stats"]["BatchNorm_0"]["var"], 0.9 + 0.1 * var, atol=1e-5)


def test_bfloat16_compute_with_float32_parameters_and_statistics(rng):
    """``dtype=bfloat16`` computes the float32 block's function on bfloat16-rounded inputs and
    weights, up to the rounding of each layer's output: within 1% of the output's scale and 0.5%
    of the statistics' (they are accumulated in float32)."""
    x = rng.standard_normal((2, 6, 6, 16)).astype(np.float32)
    block32 = BottleneckBlock(4, 16, use_bias=False)
    block16 = BottleneckBlock(4, 16, use_bias=False, dtype=jnp.bfloat16)
    variables = block32.init(jax.random.PRNGKey(0), x)
    y16, s16 = block16.apply(variables, x, mutable=["batch_stats"])
    rounded = {**variables, "params": bfloat16_rounded(variables["params"])}
    y32, s32 = block32.apply(rounded, bfloat16_rounded(x), mutable=["batch_stats"])
    assert y16.dtype == jnp.bfloat16
    assert {a.dtype for a in jax.tree_util.tree_leaves(block16.init(jax.random.PRNGKey(0), x))} == {
        jnp.dtype("float32")
    }
    assert {a.dtype for a in jax.tree_util.tree_leaves(s16)} == {jnp.dtype("float32")}
    assert_close_to_scale(y16, y32, rel=1e-2)
    assert_trees_close(s16, s32, rel=5e-3)


@pytest.mark.parametrize(
    "block,error,message",
    [
        (BottleneckBlock(6, 8, groups=4), ValueError, r"groups must divide mid_features; got groups=4, mid_features=6"),
        (BottleneckBlock(2, 8, stride_on="3x1"), ValueError, r"stride_on must be one of '3x3', '1x1'; got '3x1'"),
        (BottleneckBlock(2, 8, padding="same"), ValueError, r"padding must be one of 'SAME', 'torch'; got 'same'"),
        (BottleneckBlock(2, 8, strides=0), ValueError, r"strides must be a positive integer; got 0"),
        (BottleneckBlock(2, 8, strides=(2, 2, 2)), ValueError, r"strides must be an int or a pair of ints"),
        (BottleneckBlock(0, 8), ValueError, r"mid_features must be a positive integer; got 0"),
        (BottleneckBlock(2, 8, groups=1.5), TypeError, r"groups must be a positive integer; got 1.5"),
        (BottleneckBlock(2, 8, projection="auto"), TypeError, r"projection must be None \(automatic\), True or False"),
        (BasicBlock(-1), ValueError, r"features must be a positive integer; got -1"),
        (BasicBlock(8, dilation=0), ValueError, r"dilation must be a positive integer; got 0"),
    ],
)
def test_bad_options_are_named(block, error, message):
    with pytest.raises(error, match=message):
        block.init(jax.random.PRNGKey(0), jnp.ones((1, 4, 4, 8)))


PLAIN_NORM = partial(nn.BatchNorm, use_running_average=False)

FAST_CASES = [
    (BottleneckBlock, dict(mid_features=4, out_features=16), (2, 8, 8, 8)),
    (BottleneckBlock, dict(mid_features=4, out_features=16, strides=2, use_bias=False, padding="torch"), (2, 8, 8, 8)),
    (BottleneckBlock, dict(mid_features=4, out_features=16, strides=2, stride_on="1x1"), (2, 7, 5, 16)),
    (BottleneckBlock, dict(mid_features=8, out_features=16, groups=4, dilation=2), (2, 9, 9, 16)),
    (BottleneckBlock, dict(mid_features=16, out_features=64, use_bias=False), (4, 14, 14, 64)),  # a real stage's shape
    (BasicBlock, dict(features=8, strides=2), (2, 8, 8, 4)),
]


@pytest.mark.parametrize("cls,options,shape", FAST_CASES)
def test_fast_default_agrees_with_plain_flax(cls, options, shape, rng):
    """The default (1x1 convs as dots, BatchNorm's gradient by hand, compiled with our options)
    is the function of the plain block: ``nn.Conv`` and ``nn.BatchNorm`` under ``jax.jit``.

    Same variables and initial values; outputs, BatchNorm statistics and the gradients of every
    parameter and of the input within 1e-4 of each leaf's scale (float32, ``assert_results_close``).
    """
    import resnet_bottleneck as rb

    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    fast, plain = cls(**options), cls(**options, conv=nn.Conv, norm=PLAIN_NORM)
    v_fast, v_plain = fast.init(jax.random.PRNGKey(0), x), plain.init(jax.random.PRNGKey(0), x)
    assert_trees_equal(v_fast, v_plain)
    assert_results_close(forward_and_grads(fast, v_plain, x, jit=rb.xla.jit), forward_and_grads(plain, v_plain, x))


def test_fast_path_is_taken():
    """Only the 3x3 conv stays a convolution in the default block; nn.Conv keeps all of them."""
    x = jnp.ones((2, 8, 8, 8))
    fast, plain = BottleneckBlock(4, 16, strides=2), BottleneckBlock(4, 16, strides=2, conv=nn.Conv)
    variables = fast.init(jax.random.PRNGKey(0), x)

    def convolutions(block):
        return (
            jax.jit(lambda v: block.apply(v, x, mutable=["batch_stats"]))
            .lower(variables)
            .as_text()
            .count("stablehlo.convolution")
        )

    assert (convolutions(fast), convolutions(plain)) == (1, 4)


def test_a_wrong_fast_path_would_be_caught(rng):
    """The agreement check is not vacuous: 1x1 convs off by 0.1% fail it."""
    from resnet_bottleneck import blocks

    def off_by_a_little(lhs, rhs, *args, **kwargs):
        return blocks.conv_1x1_as_dot(lhs, rhs * (1.001 if rhs.shape[:2] == (1, 1) else 1.0), *args, **kwargs)

    x = jnp.asarray(rng.standard_normal((2, 8, 8, 8)), jnp.float32)
    wrong = BottleneckBlock(4, 16, strides=2, conv=partial(nn.Conv, conv_general_dilated=off_by_a_little))
    plain = BottleneckBlock(4, 16, strides=2, conv=nn.Conv, norm=PLAIN_NORM)
    variables = plain.init(jax.random.PRNGKey(0), x)
    with pytest.raises(AssertionError):
        assert_results_close(forward_and_grads(wrong, variables, x), forward_and_grads(plain, variables, x))


@pytest.mark.parametrize("kernel,dilation,expected", [(3, 1, 1), (3, 2, 2), (5, 1, 2), (7, 2, 6)])
def test_torch_padding_is_the_spec_conv_s_own(kernel, dilation, expected):
    """Torch-mode convs pad as the spec says, ``dilation * (kernel - 1) // 2``, not ``dilation`` (only 3x3's)."""
    from resnet_bottleneck import arch
    from resnet_bottleneck.blocks import conv_options

    layer = arch.Conv("conv", 8, 8, kernel, dilation=dilation, padding=dilation * (kernel - 1) // 2)
    block = BottleneckBlock(mid_features=8, out_features=32, padding="torch")
    assert conv_options(block, layer)["padding"] == ((expected, expected), (expected, expected))
    assert conv_options(BottleneckBlock(mid_features=8, out_features=32), layer)["padding"] == "SAME"
