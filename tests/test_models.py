"""The family: torchvision's parameter counts, backbone outputs, train/eval, remat and scan."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    abstract_init,
    assert_close_to_scale,
    assert_results_close,
    assert_trees_close,
    assert_trees_equal,
    bfloat16_rounded,
    forward_and_grads,
    random_variables,
)

from resnet_bottleneck import CONFIGS, BasicBlock, BottleneckBlock, ResNet, create_model, feature_info
from resnet_bottleneck.models import count_params, scan_variables, unscan_variables

# torchvision.models.<name>(): sum(p.numel() for p in model.parameters())
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "resnext50_32x4d": 25_028_904,
    "resnext101_32x8d": 88_791_336,
    "resnext101_64x4d": 83_455_272,
    "wide_resnet50_2": 68_883_240,
    "wide_resnet101_2": 126_886_696,
}


@pytest.mark.parametrize("name", list(TORCHVISION_PARAMS))
def test_parameter_counts_equal_torchvision(name):
    assert count_params(abstract_init(create_model(name))) == TORCHVISION_PARAMS[name]


def test_every_torchvision_resnet_is_in_the_table():
    """torchvision's own list of its ResNet, ResNeXt and Wide ResNet classifiers, none left out."""
    import torchvision

    families = ("resnet", "resnext", "wide_resnet")
    theirs = {n for n in torchvision.models.list_models(module=torchvision.models) if n.startswith(families)}
    assert theirs == set(TORCHVISION_PARAMS)
    assert theirs <= set(CONFIGS)


def test_num_classes_changes_only_the_classifier():
    assert count_params(abstract_init(create_model("resnet50", num_classes=10))) == 25_557_032 - 2049 * 990
    headless = abstract_init(create_model("resnet50", num_classes=None))
    assert "fc" not in headless["params"]
    assert count_params(headless) == 25_557_032 - 2049 * 1000


@pytest.mark.parametrize("hw", [(64, 64), (65, 47)])
def test_stage_outputs_match_feature_info(hw):
    model = create_model("resnet50")
    variables = abstract_init(model)
    x = jax.ShapeDtypeStruct((2, *hw, 3), jnp.float32)
    outputs = jax.eval_shape(lambda v, x: model.apply(v, x, features=True), variables, x)
    info = feature_info("resnet50")
    assert [i["name"] for i in info] == ["stem", "C2", "C3", "C4", "C5"]
    assert set(outputs) == {i["name"] for i in info}
    assert [(i["channels"], i["stride"]) for i in info] == [(64, 2), (256, 4), (512, 8), (1024, 16), (2048, 32)]
    for i in info:
        assert outputs[i["name"]].shape == (2, -(-hw[0] // i["stride"]), -(-hw[1] // i["stride"]), i["channels"])
    headless = create_model("resnet50", num_classes=None)
    c5 = jax.eval_shape(lambda v, x: headless.apply(v, x), abstract_init(headless), x)
    assert c5.shape == outputs["C5"].shape
    assert feature_info("resnet18")[-1] == {"name": "C5", "channels": 512, "stride": 32}


def tiny(**options):
    return ResNet(stage_sizes=(2, 3), block=BottleneckBlock, stem_width=8, num_classes=5, **options)


@pytest.fixture(scope="module")
def batch():
    return np.random.default_rng(0).standard_normal((4, 32, 32, 3)).astype(np.float32)


def test_every_parameter_gets_a_gradient(batch):
    model = tiny()
    variables = model.init(jax.random.PRNGKey(0), batch)
    _, _, (grads, _) = forward_and_grads(model, variables, batch, train=True)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert np.abs(np.asarray(g)).max() > 0, jax.tree_util.keystr(path)


def test_train_updates_running_stats_and_eval_uses_them(batch):
    model = tiny()
    variables = model.init(jax.random.PRNGKey(0), batch)
    _, state = model.apply(variables, batch, train=True, mutable=["batch_stats"])
    before, after = variables["batch_stats"]["bn1"]["mean"], state["batch_stats"]["bn1"]["mean"]
    assert not np.allclose(before, after)
    # torch's momentum 0.1 is flax's 0.9: new = 0.9 * old + 0.1 * batch mean
    stem = jax.lax.conv_general_dilated(
        batch,
        variables["params"]["conv1"]["kernel"],
        (2, 2),
        ((3, 3), (3, 3)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    np.testing.assert_allclose(after, 0.9 * before + 0.1 * stem.mean(axis=(0, 1, 2)), atol=1e-5)
    eval_a = model.apply(variables, batch, train=False)
    eval_b = model.apply({**variables, "batch_stats": state["batch_stats"]}, batch, train=False)
    assert not np.allclose(eval_a, eval_b, atol=1e-4)  # eval reads the running statistics
    np.testing.assert_allclose(model.apply(variables, batch[:1], train=False), eval_a[:1], atol=1e-5)  # per example


def test_remat_and_scan_are_the_same_function(batch):
    """Logits, statistics and gradients (of every parameter and of the input) of the plain model."""
    plain = tiny()
    variables = plain.init(jax.random.PRNGKey(0), batch)
    expected = forward_and_grads(plain, variables, batch, train=True)
    assert_results_close(forward_and_grads(tiny(remat=True), variables, batch, train=True), expected)

    for options in ({"scan": True}, {"scan": True, "remat": True}):
        scanned = tiny(**options)
        scan_vars = scan_variables(variables)
        assert jax.tree_util.tree_structure(scan_vars) == jax.tree_util.tree_structure(
            scanned.init(jax.random.PRNGKey(0), batch)
        )
        assert scan_vars["params"]["layer2_scan"]["block"]["Conv_0"]["kernel"].shape[0] == 2
        logits, stats, (grads, dx) = forward_and_grads(scanned, scan_vars, batch, train=True)
        unscanned = (
            logits,
            unscan_variables({"batch_stats": stats})["batch_stats"],
            (unscan_variables({"params": grads})["params"], dx),
        )
        assert_results_close(unscanned, expected)


def test_scan_round_trip_is_exact(batch):
    variables = tiny(scan=True).init(jax.random.PRNGKey(3), batch)
    assert_trees_equal(scan_variables(unscan_variables(variables)), variables)


def test_zero_init_last_and_stride_placement(batch):
    v = tiny(zero_init_last=True).init(jax.random.PRNGKey(0), batch)
    for name in ("layer1_0", "layer1_1", "layer2_0", "layer2_2"):
        np.testing.assert_array_equal(v["params"][name]["BatchNorm_2"]["scale"], 0.0)
        assert np.all(np.asarray(v["params"][name]["BatchNorm_0"]["scale"]) == 1.0)
    v = tiny().init(jax.random.PRNGKey(0), batch)
    v15 = tiny().apply(v, batch)
    v1 = tiny(stride_on="1x1").apply(v, batch)  # same weights, the paper's placement
    assert v15.shape == v1.shape and not np.allclose(v15, v1, atol=1e-4)


def test_bfloat16_model(batch):
    """bfloat16 compute is the float32 model on bfloat16-rounded images and weights, up to the rounding
    of each of its 17 layers' outputs: logits within 2% of their scale, statistics within 1%."""
    model32, model16 = tiny(), tiny(dtype=jnp.bfloat16)
    variables = model32.init(jax.random.PRNGKey(0), batch)
    logits16, state16 = model16.apply(variables, batch, train=True, mutable=["batch_stats"])
    rounded = {**variables, "params": bfloat16_rounded(variables["params"])}
    logits32, state32 = model32.apply(rounded, bfloat16_rounded(batch), train=True, mutable=["batch_stats"])
    assert logits16.dtype == jnp.float32
    assert {a.dtype for a in jax.tree_util.tree_leaves(state16)} == {jnp.dtype("float32")}
    assert {a.dtype for a in jax.tree_util.tree_leaves(model16.init(jax.random.PRNGKey(0), batch))} == {
        jnp.dtype("float32")
    }
    assert_close_to_scale(logits16, logits32, rel=2e-2)
    assert_trees_close(state16, state32, rel=1e-2)


def test_torch_padding_in_the_stem():
    # An even input: flax 'SAME' would pad the 7x7/2 stem (2, 3); torchvision pads (3, 3).
    model = ResNet(stage_sizes=(1,), stem_width=4, num_classes=None)
    x = np.zeros((1, 8, 8, 3), np.float32)
    x[0, 0, 0, 0] = 1.0  # a single impulse in the corner
    variables = model.init(jax.random.PRNGKey(0), x)
    stem = model.apply(variables, x, features=True, capture_intermediates=True, mutable=["intermediates"])[1][
        "intermediates"
    ]["conv1"]["__call__"][0]
    kernel = np.asarray(variables["params"]["conv1"]["kernel"])
    # With pad 3, output (0, 0) reads input (0, 0) at tap (3, 3).
    np.testing.assert_allclose(stem[0, 0, 0], kernel[3, 3, 0], rtol=1e-6)


@pytest.mark.parametrize(
    "call,error,message",
    [
        (lambda: create_model("resnet51"), ValueError, r"name must be one of resnet18, .*; got 'resnet51'"),
        (lambda: create_model(50), TypeError, r"name must be one of .*; got 50"),
        (lambda: create_model("resnet50", groups=2), TypeError, r"create_model\('resnet50'\) fixes groups"),
        (
            lambda: abstract_init(create_model("resnet50", num_classes=0)),
            ValueError,
            r"num_classes must be a positive integer; got 0",
        ),
        (
            lambda: abstract_init(create_model("resnet50"), shape=(64, 64, 3)),
            ValueError,
            r"x must be a 4-D batch of images \(N, H, W, C\); got shape \(64, 64, 3\)",
        ),
        (lambda: abstract_init(ResNet(stage_sizes=())), ValueError, r"stage_sizes must list 1 to 4 stages; got \(\)"),
        (
            lambda: abstract_init(ResNet(stage_sizes=(2, 0))),
            ValueError,
            r"stage_sizes must be a positive integer; got 0",
        ),
        (
            lambda: abstract_init(ResNet(stage_sizes=(2,), block="bottleneck")),
            TypeError,
            r"block must be a block class such as BottleneckBlock or BasicBlock; got 'bottleneck'",
        ),
        (
            lambda: abstract_init(ResNet(stage_sizes=(2,), block=BasicBlock, groups=32)),
            ValueError,
            r"basic blocks support only groups=1",
        ),
        (
            lambda: abstract_init(create_model("resnet18", replace_stride_with_dilation=(False, True, True))),
            ValueError,
            r"replace_stride_with_dilation=\(False, True, True\) dilates C4 by 2, "
            r"but basic blocks support only dilation=1",
        ),
        (
            lambda: abstract_init(create_model("resnet50", replace_stride_with_dilation=(True, False))),
            ValueError,
            r"replace_stride_with_dilation must be three booleans \(for the stages C3, C4, C5\); got \(True, False\)",
        ),
        (
            lambda: abstract_init(create_model("resnet50", norm="layer")),
            ValueError,
            r"norm must be one of 'batch', 'frozen', 'group'; got 'layer'",
        ),
        (
            lambda: abstract_init(create_model("resnet50", trainable_layers=6)),
            ValueError,
            r"trainable_layers must be an integer from 0 to 5 .*; got 6",
        ),
        (
            lambda: feature_info(create_model("resnet34", replace_stride_with_dilation=(True, False, False))),
            ValueError,
            r"replace_stride_with_dilation=\(True, False, False\) dilates C3 by 2",
        ),
    ],
)
def test_bad_model_arguments_are_named(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize(
    "dilate,strides",
    [
        ((False, True, True), [2, 4, 8, 8, 8]),
        ((False, False, True), [2, 4, 8, 16, 16]),
        ((True, True, True), [2, 4, 4, 4, 4]),
    ],
)
def test_dilated_stages_keep_the_resolution_and_feature_info_says_so(dilate, strides):
    model = create_model("resnet50", replace_stride_with_dilation=dilate)
    info = feature_info(model)
    assert [i["stride"] for i in info] == strides
    variables = abstract_init(model)
    assert count_params(variables) == TORCHVISION_PARAMS["resnet50"]  # dilation adds no parameter
    outputs = jax.eval_shape(
        lambda v, x: model.apply(v, x, features=True), variables, jax.ShapeDtypeStruct((1, 65, 47, 3), jnp.float32)
    )
    for i in info:
        assert outputs[i["name"]].shape == (1, -(-65 // i["stride"]), -(-47 // i["stride"]), i["channels"])


def test_frozen_norm_is_fixed_in_training_too(batch):
    model = tiny(norm="frozen")
    variables = random_variables(model, batch.shape)
    assert not [
        p
        for p, _ in jax.tree_util.tree_leaves_with_path(variables["params"])
        if "BatchNorm" in jax.tree_util.keystr(p) or "bn1" in jax.tree_util.keystr(p)
    ]
    assert set(variables["batch_stats"]["layer1_0"]["BatchNorm_0"]) == {"scale", "bias", "mean", "var"}
    logits, stats, (grads, _) = forward_and_grads(model, variables, batch, train=True)
    assert_trees_equal(stats, variables["batch_stats"])
    eval_logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, batch)
    np.testing.assert_allclose(logits, eval_logits, rtol=1e-5, atol=1e-6)
    assert all(np.any(g) for g in jax.tree_util.tree_leaves(grads))


def test_trainable_layers_cut_the_frozen_stem_from_autodiff(batch):
    model = tiny(trainable_layers=4)  # layer4..layer1 learn; conv1 and bn1 do not
    variables = random_variables(model, batch.shape)
    # a training loss: the running statistics are not part of it
    _, _, (grads, _) = forward_and_grads(model, variables, batch, statistics_weight=0.0, train=True)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        frozen = jax.tree_util.keystr(path).startswith(("['conv1']", "['bn1']"))
        assert (not np.any(g)) if frozen else np.any(g), jax.tree_util.keystr(path)


def test_model_composes_as_a_linen_submodule(batch):
    """A user's module holding the model as a submodule: its variables nest under the attribute's
    name, and it computes what the model computes with that subtree."""

    class Classifier(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(2)(tiny(name="backbone")(x))

    variables = Classifier().init(jax.random.PRNGKey(0), batch)
    assert set(variables["params"]) == {"backbone", "Dense_0"}
    sub = {collection: tree["backbone"] for collection, tree in variables.items()}
    assert jax.tree_util.tree_structure(sub) == jax.tree_util.tree_structure(tiny().init(jax.random.PRNGKey(0), batch))
    dense = variables["params"]["Dense_0"]
    expected = tiny().apply(sub, batch) @ dense["kernel"] + dense["bias"][None]
    np.testing.assert_allclose(Classifier().apply(variables, batch), expected, rtol=1e-5, atol=1e-5)


# --- the fast path of the models ------------------------------------------------------


def numpy_max_pool(x, g, window=3, stride=2, pad=1):
    """Eager oracle: max-pool with -inf padding, and its gradient routed to each window's
    first maximum in row-major order (PyTorch's CPU kernel's rule)."""
    n, h, w, c = x.shape
    xp = np.full((n, h + 2 * pad, w + 2 * pad, c), -np.inf)
    xp[:, pad : pad + h, pad : pad + w] = x
    oh, ow = (h + 2 * pad - window) // stride + 1, (w + 2 * pad - window) // stride + 1
    y, dxp = np.zeros((n, oh, ow, c)), np.zeros_like(xp)
    for b in range(n):
        for i in range(oh):
            for j in range(ow):
                for ch in range(c):
                    patch = xp[b, i * stride : i * stride + window, j * stride : j * stride + window, ch]
                    k = int(np.argmax(patch))  # argmax returns the first maximum in row-major order
                    y[b, i, j, ch] = patch.flat[k]
                    dxp[b, i * stride + k // window, j * stride + k % window, ch] += g[b, i, j, ch]
    return y, dxp[:, pad : pad + h, pad : pad + w]


@pytest.mark.parametrize("shape", [(2, 9, 8, 3), (1, 7, 7, 2), (1, 2, 3, 1)])
def test_max_pool_values_and_first_max_gradient(shape, rng):
    from resnet_bottleneck.models import _max_of, _windows, max_pool

    x = np.maximum(np.round(rng.standard_normal(shape) * 2) / 2, 0).astype(np.float32)  # many ties, at 0 and above
    y = max_pool(jnp.asarray(x), 3, 2, 1)
    g = rng.standard_normal(y.shape).astype(np.float32)
    dx = jax.vjp(lambda x: max_pool(x, 3, 2, 1), jnp.asarray(x))[1](jnp.asarray(g))[0]
    y_ref, dx_ref = numpy_max_pool(x.astype(np.float64), g.astype(np.float64))
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(y, nn.max_pool(jnp.asarray(x), (3, 3), (2, 2), ((1, 1), (1, 1))))
    # the wrong variant: plain autodiff of the same maximum splits ties, and the oracle sees it
    split = jax.vjp(lambda x: _max_of(_windows(x, 3, 2, 1)), jnp.asarray(x))[1](jnp.asarray(g))[0]
    assert np.abs(np.asarray(split) - dx_ref).max() > 1e-3


def test_fast_model_agrees_with_plain_nn_conv(batch):
    """The default model (1x1 convs as dots, compiled with our options) is the nn.Conv model's function."""
    import resnet_bottleneck as rb

    fast, plain = tiny(), tiny(conv=nn.Conv)
    variables = plain.init(jax.random.PRNGKey(0), batch)
    assert_trees_equal(fast.init(jax.random.PRNGKey(0), batch), variables)
    assert_results_close(
        forward_and_grads(fast, variables, batch, jit=rb.xla.jit, train=True),
        forward_and_grads(plain, variables, batch, train=True),
    )


def test_global_average_pool_is_the_mean_and_keeps_convs_off_ynnpack(rng):
    """The classifier's pooling: the spatial mean, in float32 even for bfloat16 input. Under our
    XLA:CPU options a plain ``jnp.mean`` would pull the conv before it into a YNNPACK fusion
    (the slow kernels for convs there); the product with ones leaves it to XLA."""
    import resnet_bottleneck as rb
    from resnet_bottleneck.models import global_average_pool

    x = jnp.asarray(rng.standard_normal((2, 7, 5, 6)), jnp.float32)
    np.testing.assert_allclose(global_average_pool(x), jnp.mean(x, axis=(1, 2)), rtol=1e-6, atol=1e-6)
    half = global_average_pool(x.astype(jnp.bfloat16))
    assert half.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(half, np.float32), jnp.mean(x, axis=(1, 2)), rtol=1e-2, atol=1e-2)

    x = jnp.ones((8, 7, 7, 512), jnp.float32)  # the last stage's shape: compiled, not run
    k = jnp.ones((3, 3, 512, 512), jnp.float32)

    def head(pool):
        def f(x):
            y = jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
            return pool(jax.nn.relu(y))

        return rb.xla.jit(f).lower(x).compile().as_text()

    if jax.default_backend() == "cpu":
        assert "__ynn_fusion" in head(lambda y: jnp.mean(y, axis=(1, 2)))
        assert "__ynn_fusion" not in head(global_average_pool)


# --- timm's model API: forward_features / forward_head, reset_classifier, list_models -----


def test_forward_features_and_head_split_the_model(batch):
    model = create_model("resnet_tiny", num_classes=5)
    variables = model.init(jax.random.PRNGKey(0), batch)
    maps = model.apply(variables, batch, method="forward_features")
    np.testing.assert_array_equal(maps, model.apply(variables, batch, features=True)["C5"])
    np.testing.assert_array_equal(model.apply(variables, maps, method="forward_head"), model.apply(variables, batch))
    pooled = model.apply(variables, maps, method="forward_head", pre_logits=True)
    np.testing.assert_allclose(pooled, np.asarray(maps).mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    fc = variables["params"]["fc"]
    np.testing.assert_allclose(
        np.asarray(pooled) @ np.asarray(fc["kernel"]) + np.asarray(fc["bias"])[None],
        model.apply(variables, batch),
        rtol=1e-5,
        atol=1e-5,
    )
    with pytest.raises(ValueError, match="part must be one of 'all', 'features', 'head', 'pre_logits'; got 'neck'"):
        model.apply(variables, batch, part="neck")
    headless = create_model("resnet_tiny", num_classes=None)
    with pytest.raises(ValueError, match=r"a headless model \(num_classes=None\) has no head"):
        headless.apply({"params": {}}, maps, method="forward_head")


def test_reset_classifier_replaces_only_the_head(batch):
    from resnet_bottleneck import reset_classifier

    model = create_model("resnet_tiny", num_classes=5)
    variables = model.init(jax.random.PRNGKey(0), batch)
    before = jax.tree_util.tree_map(np.array, variables)
    new, renewed = reset_classifier(model, variables, 3, seed=1)
    assert new.num_classes == 3 and renewed["params"]["fc"]["kernel"].shape == (512, 3)
    assert model.num_classes == 5
    assert_trees_equal(variables, before)  # the input is untouched
    assert_trees_equal(
        {k: v for k, v in renewed["params"].items() if k != "fc"},
        {k: v for k, v in variables["params"].items() if k != "fc"},
    )
    assert_trees_equal(renewed["batch_stats"], variables["batch_stats"])
    features = model.apply(variables, batch, method="forward_features")
    np.testing.assert_array_equal(features, new.apply(renewed, batch, method="forward_features"))
    assert new.apply(renewed, batch).shape == (batch.shape[0], 3)
    again = reset_classifier(model, variables, 3, seed=1)[1]["params"]["fc"]
    other = reset_classifier(model, variables, 3, seed=2)[1]["params"]["fc"]
    assert_trees_equal(again, renewed["params"]["fc"])  # the seed decides it
    assert not np.array_equal(other["kernel"], again["kernel"])
    headless, stripped = reset_classifier(model, variables, None)
    assert "fc" not in stripped["params"] and headless.apply(stripped, batch).ndim == 4
    with pytest.raises(ValueError, match="num_classes must be a positive integer; got 0"):
        reset_classifier(model, variables, 0)


def test_list_models_lists_every_name_and_filters_like_timm():
    from resnet_bottleneck import list_models

    assert list_models() == sorted(CONFIGS)
    assert set(list_models("seresnext*")) == {n for n in CONFIGS if n.startswith("seresnext")}
    assert list_models("resnet50?") == ["resnet50c", "resnet50d", "resnet50s", "resnet50t"]
    assert list_models("no_such*") == []
    with pytest.raises(TypeError, match="pattern must be a string"):
        list_models(3)


@pytest.mark.parametrize("name", ["resnet50", "resnet50d"])
def test_create_model_fixes_the_rows_options_but_not_the_backbones_norm(name):
    with pytest.raises(TypeError, match=rf"create_model\('{name}'\) fixes avg_down"):
        create_model(name, avg_down=True)
    assert create_model(name, norm="frozen").norm == "frozen"
    with pytest.raises(TypeError, match=r"create_model\('resnet50_gn'\) fixes norm"):
        create_model("resnet50_gn", norm="frozen")


@pytest.mark.parametrize(
    "options",
    [
        dict(stem_type="deep", avg_down=True, attn_layer="se", aa_layer="blur", drop_path_rate=0.1, drop_rate=0.2),
        dict(stem_type="deep_tiered", replace_stem_pool=True, attn_layer="eca", down_kernel_size=3),
        dict(block=BasicBlock, aa_layer="avg", attn_layer="se", block_reduce_first=2, norm="group", channels=(64, 128)),
    ],
    ids=["se-blur-droppath", "eca-rs-stem", "basic-avg-aa-gn"],
)
def test_every_timm_layer_parameter_gets_a_gradient(batch, options):
    options = {"block": BottleneckBlock, "stem_width": 32, "channels": (32, 64), **options}
    model = ResNet(stage_sizes=(1, 2), num_classes=5, **options)
    x = np.concatenate([batch, batch])[:, :, :, :]  # 8 images: some dropped paths, some kept
    variables = model.init(jax.random.PRNGKey(0), x)

    def loss(params):
        y, _ = model.apply(
            {**variables, "params": params},
            x,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": jax.random.PRNGKey(3)},
        )
        return jnp.sum(y**2)

    grads = jax.grad(loss)(variables["params"])
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert np.abs(np.asarray(g)).max() > 0, jax.tree_util.keystr(path)
