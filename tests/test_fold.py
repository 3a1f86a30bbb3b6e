"""fold_batchnorm: the folded inference model computes what the eval-mode model computes."""

import jax
import numpy as np
import pytest
from helpers import assert_close_to_scale, random_torchvision

from resnet_bottleneck.fold import fold_batchnorm
from resnet_bottleneck.io.torchvision import from_torchvision


@pytest.fixture(scope="module", params=["resnet50", "resnet18"])
def converted(request):
    name = request.param
    model, variables = from_torchvision(random_torchvision(name).state_dict(), name)
    return name, model, variables


def test_fold_batchnorm_agrees_with_the_eval_model(converted):
    name, model, variables = converted
    folded_model, folded = fold_batchnorm(model, variables)
    assert "batch_stats" not in folded
    assert not any(
        "BatchNorm" in "/".join(map(str, p)) or "bn1" in str(p)
        for p, _ in jax.tree_util.tree_leaves_with_path(folded["params"])
    )
    x = np.random.default_rng(5).standard_normal((2, 64, 64, 3)).astype(np.float32)
    expected = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    got = jax.jit(folded_model.apply)(folded, x)
    assert_close_to_scale(got, expected, what="folded logits")
    with pytest.raises(ValueError, match="folded model .* is for inference"):
        folded_model.apply(folded, x, train=True)


def test_fold_batchnorm_of_a_frozen_model():
    """A frozen BatchNorm keeps its affine in batch_stats; folding reads it there."""
    model, variables = from_torchvision(random_torchvision("resnet18").state_dict(), "resnet18", norm="frozen")
    assert "bn1" not in variables["params"]
    folded_model, folded = fold_batchnorm(model, variables)
    x = np.random.default_rng(6).standard_normal((1, 48, 48, 3)).astype(np.float32)
    assert_close_to_scale(jax.jit(folded_model.apply)(folded, x), jax.jit(model.apply)(variables, x), what="logits")


def test_fold_batchnorm_of_timms_layers():
    """Deep stem, average-pool shortcut, blur pool, ECA and SE (their own biases kept), drop path: folded."""
    from helpers import random_variables

    from resnet_bottleneck import BasicBlock, ResNet

    for attn in ("se", "eca"):
        model = ResNet(
            stage_sizes=(1, 1, 1, 1),
            block=BasicBlock,
            stem_width=16,
            stem_type="deep",
            avg_down=True,
            aa_layer="blur",
            attn_layer=attn,
            drop_path_rate=0.1,
            num_classes=5,
        )
        variables = random_variables(model, (1, 32, 32, 3))
        folded_model, folded = fold_batchnorm(model, variables)
        x = np.random.default_rng(7).standard_normal((2, 45, 37, 3)).astype(np.float32)
        expected = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
        assert_close_to_scale(jax.jit(folded_model.apply)(folded, x), expected, what=attn)
        assert folded["params"]["layer1_0"]["se"] == variables["params"]["layer1_0"]["se"]
