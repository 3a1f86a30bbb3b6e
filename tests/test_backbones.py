"""Detection and segmentation backbones against torchvision's own modules: the FPN backbone
(``resnet_fpn_backbone``) level by level, DeepLab's dilated ResNet-50, strict state dicts both
ways, the parameter count, torchvision's ``trainable_layers`` and frozen parts that never move."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as F
from helpers import abstract_init, assert_close_to_scale, assert_trees_equal, random_variables, randomize_norms
from torchvision.models.detection import fasterrcnn_resnet50_fpn
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.segmentation import deeplabv3_resnet50

from resnet_bottleneck import (
    create_fpn_backbone,
    feature_info,
    freeze,
    from_torchvision,
    from_torchvision_fpn,
    to_torchvision,
    to_torchvision_fpn,
    trainable_mask,
)
from resnet_bottleneck.backbones import _nearest_indices, upsample_nearest
from resnet_bottleneck.io.torchvision import WeightsMismatch
from resnet_bottleneck.models import count_params

torch.set_num_threads(2)


def nchw(x):
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


@pytest.fixture(scope="module")
def fpn50():
    """torchvision's resnet50 FPN backbone, random weights, random frozen statistics and FPN biases."""
    torch.manual_seed(0)
    tv = randomize_norms(resnet_fpn_backbone(backbone_name="resnet50", weights=None))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in tv.fpn.named_parameters():
            if name.endswith("bias"):  # torchvision starts them at 0, which would hide a lost bias
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    module, variables = from_torchvision_fpn(tv.state_dict(), "resnet50")
    return tv, module, variables


@pytest.mark.parametrize("hw", [(128, 96), (97, 131)])
def test_fpn_parity_every_level(fpn50, hw):
    tv, module, variables = fpn50
    x = np.random.default_rng(1).standard_normal((1, *hw, 3)).astype(np.float32)
    with torch.no_grad():
        theirs = tv(nchw(x))
    ours = jax.jit(module.apply)(variables, x)
    assert list(ours) == list(theirs) == ["0", "1", "2", "3", "pool"]
    for level, value in theirs.items():
        assert_close_to_scale(ours[level], nhwc(value), what=level)


def test_fpn_parameter_count_is_torchvisions(fpn50):
    tv, _, variables = fpn50
    theirs = sum(p.numel() for p in tv.parameters())  # frozen BatchNorm: buffers, not parameters
    assert count_params(variables) == theirs == 26_799_296
    assert not [
        p for p in jax.tree_util.tree_leaves_with_path(variables["params"]) if "bn" in jax.tree_util.keystr(p[0])
    ]
    assert set(variables["batch_stats"]["body"]["bn1"]) == {"scale", "bias", "mean", "var"}


def test_fpn_state_dict_round_trip_is_exact(fpn50):
    tv, _, variables = fpn50
    back = to_torchvision_fpn(variables, "resnet50", as_numpy=True)
    theirs = tv.state_dict()
    assert set(back) == set(theirs)  # FrozenBatchNorm2d has no num_batches_tracked
    for key, value in theirs.items():
        np.testing.assert_array_equal(back[key], value.numpy(), err_msg=key)


def test_deeplab_backbone_c5_at_output_stride_8():
    torch.manual_seed(0)
    tv = randomize_norms(deeplabv3_resnet50(weights=None, weights_backbone=None).backbone)
    dilated = (False, True, True)
    model, variables = from_torchvision(
        tv.state_dict(), "resnet50", num_classes=None, replace_stride_with_dilation=dilated
    )
    assert [i["stride"] for i in feature_info(model)] == [2, 4, 8, 8, 8]
    x = np.random.default_rng(3).standard_normal((1, 67, 45, 3)).astype(np.float32)
    with torch.no_grad():
        theirs = nhwc(tv(nchw(x))["out"])
    ours = jax.jit(model.apply)(variables, x)
    assert ours.shape == theirs.shape == (1, 9, 6, 2048)  # ceil(67 / 8), ceil(45 / 8)
    assert_close_to_scale(ours, theirs, what="C5")
    tv.load_state_dict(to_torchvision(variables, "resnet50", num_classes=None), strict=True)


def test_resnet101_fpn_loads_strictly_both_ways():
    torch.manual_seed(0)
    tv = resnet_fpn_backbone(backbone_name="resnet101", weights=None)
    theirs = {k: v.clone() for k, v in tv.state_dict().items()}
    module, variables = from_torchvision_fpn(theirs, "resnet101")
    assert len(module.body.stage_sizes) == 4 and module.body.stage_sizes[2] == 23
    back = to_torchvision_fpn(variables, "resnet101")
    tv.load_state_dict(back, strict=True)
    assert set(back) == set(theirs)
    for key, value in theirs.items():
        assert torch.equal(back[key], value), key


def test_faster_rcnn_backbone_with_batch_norm_loads_both_ways():
    """Without weights, ``fasterrcnn_resnet50_fpn`` builds its backbone with BatchNorm2d (num_batches_tracked)."""
    torch.manual_seed(0)
    tv = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None).backbone
    theirs = tv.state_dict()
    assert any(k.endswith("num_batches_tracked") for k in theirs)
    _, frozen = from_torchvision_fpn(theirs, "resnet50")  # frozen by default: the counters are accepted
    _, batch = from_torchvision_fpn(theirs, "resnet50", norm="batch")
    assert "scale" in frozen["batch_stats"]["body"]["bn1"] and "scale" in batch["params"]["body"]["bn1"]
    back = to_torchvision_fpn(batch, "resnet50", norm="batch")
    assert set(back) == set(theirs)
    tv.load_state_dict(back, strict=True)


def test_fpn_mismatches_name_the_backbone_the_tensors_fit():
    torch.manual_seed(0)
    sd = dict(resnet_fpn_backbone(backbone_name="resnet18", weights=None).state_dict())
    del sd["fpn.inner_blocks.0.0.weight"]
    sd["fpn.extra.0.weight"] = torch.zeros(1)
    sd["body.bn1.weight"] = torch.zeros(65)
    with pytest.raises(WeightsMismatch) as info:
        from_torchvision_fpn(sd, "resnet18")
    err = info.value
    assert (err.missing, err.unexpected, err.wrong_shape) == (
        ["fpn.inner_blocks.0.0.weight"],
        ["fpn.extra.0.weight"],
        [("body.bn1.weight", (65,), (64,))],
    )
    assert str(err).startswith(
        "state_dict does not fit torchvision's resnet18 FPN backbone; it fits none of the family "
        "(nearest: resnet18 FPN backbone). 1 missing: fpn.inner_blocks.0.0.weight"
    ), str(err)
    with torch.device("meta"):  # names and shapes are enough to tell
        sd101 = resnet_fpn_backbone(backbone_name="resnet101", weights=None).state_dict()
    with pytest.raises(
        WeightsMismatch,
        match=r"^state_dict does not fit torchvision's resnet50 FPN backbone; "
        r"it fits resnet101 FPN backbone\. 255 unexpected: body\.layer3\.6\.conv1\.weight, ",
    ):
        from_torchvision_fpn(sd101, "resnet50")
    # A body cut after layer3 (returned_layers=[2, 3]) read with the default (1, 2, 3, 4), and then right.
    short = resnet_fpn_backbone(backbone_name="resnet18", weights=None, returned_layers=[2, 3]).state_dict()
    with pytest.raises(WeightsMismatch, match=r"missing: body\.layer4\.0\.conv1\.weight"):
        from_torchvision_fpn(short, "resnet18")
    module, variables = from_torchvision_fpn(short, "resnet18", returned_layers=(2, 3))
    assert len(module.body.stage_sizes) == 3
    del variables["params"]["fpn"]["layer_blocks_1"]
    with pytest.raises(WeightsMismatch) as info:
        to_torchvision_fpn(variables, "resnet18", returned_layers=(2, 3))
    assert str(info.value).startswith("variables do not fit resnet18 FPN backbone")
    assert set(info.value.missing) == {"params/fpn/layer_blocks_1/kernel", "params/fpn/layer_blocks_1/bias"}


def test_nearest_upsampling_is_pytorchs():
    """PyTorch's 'nearest' (floor(i * in / out) in float32), not the half-pixel rule of jax.image.resize."""
    for n_in in range(1, 25):
        source = torch.arange(n_in, dtype=torch.float32).reshape(1, 1, n_in, 1)
        for n_out in range(1, 61):
            theirs = F.interpolate(source, size=(n_out, 1), mode="nearest").flatten().numpy().astype(np.int64)
            ours = _nearest_indices(n_in, n_out)
            np.testing.assert_array_equal(np.arange(n_out) if ours is None else ours, theirs, err_msg=(n_in, n_out))
    x = np.random.default_rng(4).standard_normal((2, 4, 5, 3)).astype(np.float32)
    for size in [(7, 9), (8, 10), (4, 5), (13, 17)]:
        theirs = nhwc(F.interpolate(nchw(x), size=size, mode="nearest"))
        np.testing.assert_array_equal(upsample_nearest(jnp.asarray(x), size), theirs)
    half_pixel = jax.image.resize(x, (2, 7, 9, 3), "nearest")
    assert not np.array_equal(half_pixel, upsample_nearest(jnp.asarray(x), (7, 9)))  # the rule matters at 97x131


@pytest.mark.parametrize("trainable_layers", range(6))
def test_trainable_mask_is_torchvisions(trainable_layers):
    """Which tensors learn, by torchvision's own ``requires_grad`` after ``resnet_fpn_backbone(trainable_layers=K)``."""
    tv = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=trainable_layers)
    module = create_fpn_backbone("resnet18", trainable_layers=trainable_layers)
    shapes = abstract_init(module)
    mask = trainable_mask(shapes["params"], trainable_layers)
    as_arrays = {
        "params": jax.tree_util.tree_map(lambda m, s: np.full(s.shape, float(m), np.float32), mask, shapes["params"]),
        "batch_stats": jax.tree_util.tree_map(lambda s: np.zeros(s.shape, np.float32), shapes["batch_stats"]),
    }
    ours = to_torchvision_fpn(as_arrays, "resnet18", as_numpy=True)
    learning = {key: bool(ours[key].all()) for key, _ in tv.named_parameters()}
    assert learning == {key: p.requires_grad for key, p in tv.named_parameters()}
    assert sum(learning.values()) < len(learning) or trainable_layers == 5


@pytest.fixture(scope="module")
def small_fpn():
    module = create_fpn_backbone("resnet_tiny", out_channels=32, trainable_layers=3)
    x = np.random.default_rng(5).standard_normal((2, 64, 64, 3)).astype(np.float32)
    variables = random_variables(module, x.shape, seed=6)
    g = np.random.default_rng(7)
    weights = {
        k: g.standard_normal(s.shape).astype(np.float32) for k, s in jax.eval_shape(module.apply, variables, x).items()
    }

    def loss(params, batch_stats):
        levels, state = module.apply(
            {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
        )
        return sum(jnp.sum(levels[k] * weights[k]) for k in levels), state["batch_stats"]

    return module, variables, jax.jit(jax.grad(loss, has_aux=True))


def frozen_part(tree):
    """The stem and layer1 (frozen with trainable_layers=3), and the rest."""
    body = tree["body"]
    frozen = {k: v for k, v in body.items() if k in ("conv1", "bn1") or k.startswith("layer1_")}
    return frozen, {**{k: v for k, v in body.items() if k not in frozen}, "fpn": tree["fpn"]}


def run_steps(optimizer, variables, grad, steps=3):
    params, stats = variables["params"], variables["batch_stats"]
    state = optimizer.init(params)
    for _ in range(steps):
        grads, stats = grad(params, stats)
        updates, state = optimizer.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params, stats, grads


def test_frozen_layers_get_no_gradient_and_no_update(small_fpn):
    module, variables, grad = small_fpn
    sgd = optax.chain(optax.add_decayed_weights(1e-2), optax.sgd(0.1, momentum=0.9))
    params, stats, grads = run_steps(freeze(sgd, 3), variables, grad)

    frozen_grads, learning_grads = frozen_part(grads)
    assert frozen_grads and all(not np.any(g) for g in jax.tree_util.tree_leaves(frozen_grads))  # exactly zero
    assert all(np.any(g) for g in jax.tree_util.tree_leaves(learning_grads))
    frozen_after, learning_after = frozen_part(params)
    frozen_before, learning_before = frozen_part(variables["params"])
    assert_trees_equal(frozen_after, frozen_before)
    assert all(
        not np.array_equal(a, b)
        for a, b in zip(jax.tree_util.tree_leaves(learning_after), jax.tree_util.tree_leaves(learning_before))
    )
    assert_trees_equal(stats, variables["batch_stats"])  # frozen BatchNorm: train mode writes nothing

    # The same steps with the plain optimizer: weight decay moves the frozen part, zero gradient or not.
    plain, _, _ = run_steps(sgd, variables, grad)
    assert all(
        not np.array_equal(a, b)
        for a, b in zip(jax.tree_util.tree_leaves(frozen_part(plain)[0]), jax.tree_util.tree_leaves(frozen_before))
    )


@pytest.mark.parametrize(
    "call,error,message",
    [
        (
            lambda: create_fpn_backbone("resnet50", trainable_layers=6),
            ValueError,
            r"trainable_layers must be an integer from 0 to 5 .*; got 6",
        ),
        (lambda: create_fpn_backbone("resnet50", trainable_layers=-1), ValueError, r"trainable_layers .*; got -1"),
        (lambda: create_fpn_backbone("resnet50", trainable_layers=2.5), TypeError, r"trainable_layers .*; got 2.5"),
        (
            lambda: create_fpn_backbone("resnet50", returned_layers=(0, 1, 2)),
            ValueError,
            r"returned_layers must list increasing stage numbers from 1 to 4 .*; got \(0, 1, 2\)",
        ),
        (lambda: create_fpn_backbone("resnet50", returned_layers=[5]), ValueError, r"returned_layers .*; got \[5\]"),
        (
            lambda: create_fpn_backbone("resnet50", returned_layers=(3, 1)),
            ValueError,
            r"returned_layers .*; got \(3, 1\)",
        ),
        (lambda: create_fpn_backbone("resnet50", returned_layers=()), ValueError, r"returned_layers .*; got \(\)"),
        (
            lambda: create_fpn_backbone("resnet50", out_channels=0),
            ValueError,
            r"out_channels must be a positive integer; got 0",
        ),
        (lambda: create_fpn_backbone("resnet51"), ValueError, r"name must be one of .*; got 'resnet51'"),
        (lambda: trainable_mask({}, 7), ValueError, r"trainable_layers must be an integer from 0 to 5 .*; got 7"),
        (lambda: freeze(optax.sgd(0.1), 9), ValueError, r"trainable_layers .*; got 9"),
    ],
)
def test_bad_backbone_arguments_are_named(call, error, message):
    with pytest.raises(error, match=message):
        call()
