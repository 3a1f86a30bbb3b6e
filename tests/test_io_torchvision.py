"""torchvision weights in and out: parity with torchvision's own modules (eval, train, gradients),
bit-exact round trips, strict layouts, and safe loading of .pth/.safetensors files."""

import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision
from helpers import assert_close_to_scale, assert_trees_close, assert_trees_equal, random_torchvision, torch_stages

from resnet_bottleneck import CONFIGS, create_model, errors
from resnet_bottleneck.io.torchvision import (
    WeightsMismatch,
    detect_architecture,
    from_torchvision,
    load_state_dict,
    to_torchvision,
)

torch.set_num_threads(2)


@pytest.fixture(scope="module", params=["resnet50", "resnet18"])
def converted(request):
    name = request.param
    tv = random_torchvision(name)
    model, variables = from_torchvision(tv.state_dict(), name)
    return name, tv, model, variables


@pytest.mark.parametrize("hw", [(64, 64), (67, 45)])
def test_eval_parity_every_stage_and_logits(converted, hw):
    name, tv, model, variables = converted
    x = np.random.default_rng(1).standard_normal((2, *hw, 3)).astype(np.float32)
    stages, logits = torch_stages(tv.eval(), x)
    apply = jax.jit(model.apply, static_argnames=("train", "features"))
    ours = apply(variables, x, train=False, features=True)
    for stage in ("stem", "C2", "C3", "C4", "C5"):
        assert_close_to_scale(ours[stage], stages[stage], what=stage)
    assert_close_to_scale(apply(variables, x, train=False), logits, what="logits")


def test_train_parity_outputs_and_running_statistics(converted):
    name, tv, model, variables = converted
    tv = random_torchvision(name).train()
    x = np.random.default_rng(2).standard_normal((4, 48, 48, 3)).astype(np.float32)
    logits_t = tv(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).detach().numpy()
    logits, state = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
    assert_close_to_scale(logits, logits_t, what="train logits")
    _, updated = from_torchvision(tv.state_dict(), name)
    assert_trees_close(state["batch_stats"], updated["batch_stats"])
    changed = [
        not np.allclose(a, b)
        for a, b in zip(
            jax.tree_util.tree_leaves(state["batch_stats"]), jax.tree_util.tree_leaves(variables["batch_stats"])
        )
    ]
    assert all(changed)


def test_gradient_parity_every_parameter(converted):
    """In float64 on both sides, so that the check is of the arithmetic, not of float32 rounding,
    which a deep random network in training mode amplifies (about 3% at resnet50's stem in float32)."""
    name, tv, model, variables = converted
    tv = random_torchvision(name).train().double()
    x = np.random.default_rng(3).standard_normal((4, 40, 40, 3))
    w = np.random.default_rng(4).standard_normal((4, 1000))
    (tv(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())) * torch.from_numpy(w)).sum().backward()
    theirs = {k: p.grad.numpy() for k, p in tv.named_parameters()}

    with jax.enable_x64(True):
        variables64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), variables)

        def loss(params):
            logits, _ = model.apply({**variables64, "params": params}, x, train=True, mutable=["batch_stats"])
            return jnp.sum(logits * w)

        grads = jax.jit(jax.grad(loss))(variables64["params"])
        assert jax.tree_util.tree_leaves(grads)[0].dtype == jnp.float64
        ours = to_torchvision(
            {"params": grads, "batch_stats": variables["batch_stats"]}, name, as_numpy=True, dtype=np.float64
        )
    assert set(theirs) <= set(ours)
    for key, g in theirs.items():
        assert_close_to_scale(ours[key], g, rel=1e-7, what=key)


def test_round_trip_flax_torch_flax_is_bit_exact(converted):
    name, _, model, _ = converted
    variables = jax.jit(model.init)(jax.random.PRNGKey(7), jnp.zeros((1, 32, 32, 3)))
    variables = jax.tree_util.tree_map(
        lambda a: np.asarray(a) + 0.01 * np.arange(a.size, dtype=a.dtype).reshape(a.shape), variables
    )
    tv = getattr(torchvision.models, name)(weights=None)
    tv.load_state_dict(to_torchvision(variables, name), strict=True)
    _, back = from_torchvision(tv.state_dict(), name)
    assert_trees_equal(back, dict(variables))


def test_resnext_and_wide_layouts_load_strictly():
    for name in ("resnext50_32x4d", "wide_resnet50_2"):
        sd = getattr(torchvision.models, name)(weights=None, num_classes=10).state_dict()
        model, variables = from_torchvision(sd, name)
        assert model.num_classes == 10
        tv = getattr(torchvision.models, name)(weights=None, num_classes=10)
        tv.load_state_dict(to_torchvision(variables, name), strict=True)


def _meta_state_dict(name, **kwargs):
    """torchvision's own keys and shapes for ``name``, without allocating or initialising a tensor."""
    with torch.device("meta"):
        return getattr(torchvision.models, name)(weights=None, **kwargs).state_dict()


from resnet_bottleneck.arch.timm_family import TIMM_FAMILY  # noqa: E402

FAMILY = [name for name in CONFIGS if hasattr(torchvision.models, name)]


def test_every_torchvision_layout_is_detected():
    """Our abstract layout of every family name is torchvision's, key for key and shape for shape."""
    assert len(FAMILY) == len(CONFIGS) - 1 - len(TIMM_FAMILY)  # all but resnet_tiny and timm's own names
    for name in FAMILY:
        assert detect_architecture(_meta_state_dict(name)) == name, name
    assert detect_architecture({"model": _meta_state_dict("resnext101_64x4d", num_classes=7)}) == "resnext101_64x4d"
    headless = {k: v for k, v in _meta_state_dict("resnet50").items() if not k.startswith("fc.")}
    assert detect_architecture(headless) == "resnet50"  # the headless model (num_classes=None)
    with pytest.raises(
        WeightsMismatch,
        match=r"^state_dict does not fit torchvision's resnet50; it fits resnet50, resnetaa50 or resnetblur50 "
        r"\(the same tensors\) without a classifier \(num_classes=None\)\. 2 missing: fc\.weight, fc\.bias$",
    ):
        from_torchvision(headless, "resnet50")


@pytest.fixture(scope="module")
def bottleneck_dicts():
    return {name: _meta_state_dict(name) for name in ("resnet50", "resnet101", "resnext50_32x4d")}


@pytest.mark.parametrize(
    "weights,model",
    [
        (a, b)
        for a in ("resnet50", "resnet101", "resnext50_32x4d")
        for b in ("resnet50", "resnet101", "resnext50_32x4d")
        if a != b
    ],
)
def test_weights_of_another_model_name_it(bottleneck_dicts, weights, model):
    with pytest.raises(WeightsMismatch) as info:
        from_torchvision(bottleneck_dicts[weights], model)
    err = info.value.with_source(f"/data/{weights}-weights.pth")
    message = str(err)
    assert isinstance(err, ValueError) and err.fits == weights and err.nearest == weights
    assert len(message) < 300 and "\n" not in message, message
    fits = "resnet50, resnetaa50 or resnetblur50 (the same tensors)" if weights == "resnet50" else weights  # timm's aa
    assert message.startswith(f"/data/{weights}-weights.pth does not fit torchvision's {model}; it fits {fits}. ")
    # the full lists, against torchvision's own keys and shapes of both models
    ours, theirs = bottleneck_dicts[weights], bottleneck_dicts[model]
    counter = "num_batches_tracked"
    assert set(err.missing) == {k for k in theirs if k not in ours and not k.endswith(counter)}
    assert set(err.unexpected) == {k for k in ours if k not in theirs}  # a BN that is not expected, counter and all
    assert {k: (got, want) for k, got, want in err.wrong_shape} == {
        k: (tuple(ours[k].shape), tuple(theirs[k].shape))
        for k in ours
        if k in theirs and ours[k].shape != theirs[k].shape
    }
    shown = sum(len(group) for group in (err.missing, err.unexpected, err.wrong_shape))
    assert len(err.details().splitlines()) == shown + sum(map(bool, (err.missing, err.unexpected, err.wrong_shape)))


def test_a_truncated_state_dict_fits_none_and_says_what_is_missing_first(bottleneck_dicts):
    keys = list(bottleneck_dicts["resnet50"])
    cut = keys.index("layer3.2.conv3.weight")
    truncated = {k: bottleneck_dicts["resnet50"][k] for k in keys[:cut]}
    with pytest.raises(WeightsMismatch) as info:
        from_torchvision(truncated, "resnet50")
    err = info.value
    assert (err.fits, err.nearest, err.unexpected, err.wrong_shape) == (None, "resnet50", [], [])
    assert err.missing[:3] == ["layer3.2.conv3.weight", "layer3.2.bn3.weight", "layer3.2.bn3.bias"]  # where it was cut
    missing = len([k for k in keys[cut:] if not k.endswith("num_batches_tracked")])
    assert str(err).startswith(
        "state_dict does not fit torchvision's resnet50; it fits none of the family (nearest: "
        f"resnet50). {missing} missing: layer3.2.conv3.weight, "
    ), str(err)
    # the nearest is the model it was cut from: none of its tensors unexplained, the fewest missing
    keys = list(bottleneck_dicts["resnet101"])
    truncated = {k: bottleneck_dicts["resnet101"][k] for k in keys[: keys.index("layer3.10.conv1.weight")]}
    for model, first in (("resnet50", "layer4.0.conv1.weight"), ("resnet101", "layer3.10.conv1.weight")):
        with pytest.raises(
            WeightsMismatch,
            match=rf"fits none of the family \(nearest: resnet101\)\. \d+ missing: "
            rf"{first}, ",
        ):
            from_torchvision(truncated, model)


def test_shapes_are_checked_before_any_tensor_is_read():
    """Meta tensors have no data: a mismatch must be found from names and shapes alone."""
    sd = _meta_state_dict("resnet18")
    sd["bn1.weight"] = torch.zeros(65, device="meta")
    sd["layer5.0.conv1.weight"] = torch.zeros(1, device="meta")
    del sd["fc.bias"]
    with pytest.raises(WeightsMismatch) as info:
        from_torchvision(sd, "resnet18")
    err = info.value
    assert (err.missing, err.unexpected, err.wrong_shape) == (
        ["fc.bias"],
        ["layer5.0.conv1.weight"],
        [("bn1.weight", (65,), (64,))],
    )
    assert str(err) == (
        "state_dict does not fit torchvision's resnet18; it fits none of the family (nearest: resnet18). "
        "1 missing: fc.bias; 1 wrongly shaped: bn1.weight (65,), expected (64,); "
        "1 unexpected: layer5.0.conv1.weight"
    )
    with pytest.raises(
        WeightsMismatch,
        match=r"state_dict does not fit torchvision's resnet18; it fits resnet18 or resnetblur18 "
        r"\(the same tensors\) with 10 "
        r"classes\. 2 wrongly shaped: fc\.weight \(10, 512\), expected \(1000, 512\)",
    ):
        from_torchvision(_meta_state_dict("resnet18", num_classes=10), "resnet18", num_classes=1000)


def test_to_torchvision_names_the_model_the_variables_fit():
    abstract = jax.eval_shape(
        create_model("resnet18", num_classes=10).init,
        jax.random.PRNGKey(0),
        jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32),
    )
    with pytest.raises(
        WeightsMismatch,
        match=r"^variables do not fit resnet34; it fits resnet18 or resnetblur18 \(the same tensors\)\. 80 missing: "
        r"params/layer1_2/Conv_0/kernel, ",
    ):
        to_torchvision(abstract, "resnet34")
    variables = jax.tree_util.tree_map(lambda a: np.zeros(a.shape, a.dtype), abstract)
    del variables["params"]["layer1_0"]["Conv_0"]
    variables["params"]["extra"] = {"kernel": np.zeros(3)}
    with pytest.raises(
        WeightsMismatch,
        match=r"it fits none of the family \(nearest: resnet18\)\. 1 missing: "
        r"params/layer1_0/Conv_0/kernel; 1 unexpected: params/extra/kernel$",
    ):
        to_torchvision(variables, "resnet18")


def test_load_safetensors_and_pth(tmp_path):
    from safetensors.numpy import save_file

    sd = {k: v.numpy() for k, v in torchvision.models.resnet18(weights=None).state_dict().items()}
    save_file(sd, str(tmp_path / "w.safetensors"))
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, tmp_path / "w.pth")
    for file in ("w.safetensors", "w.pth"):
        loaded = load_state_dict(tmp_path / file)
        assert set(loaded) == set(sd)
        for k in sd:
            np.testing.assert_array_equal(loaded[k], sd[k])


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_pickle_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"conv1.weight": torch.zeros(1), "evil": _RunsCode(marker)}, tmp_path / "evil.pth")
    with open(tmp_path / "evil_plain.pt", "wb") as f:
        pickle.dump({"evil": _RunsCode(marker)}, f)
    for file in ("evil.pth", "evil_plain.pt"):
        with pytest.raises(ValueError, match="refusing to load .*could run code"):
            load_state_dict(tmp_path / file)
    assert not marker.exists()


def test_truncated_or_wrong_files_are_clear_errors(tmp_path):
    from safetensors.numpy import save_file

    save_file({"a": np.ones((100, 100), np.float32)}, str(tmp_path / "w.safetensors"))
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    torch.save({"a": torch.ones(100, 100)}, tmp_path / "w.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "w.pth").read_bytes()[:200])
    (tmp_path / "w.ckpt").write_bytes(b"x")
    with pytest.raises(ValueError, match="cut.safetensors is not a readable .safetensors file"):
        load_state_dict(tmp_path / "cut.safetensors")
    with pytest.raises(ValueError, match="cut.pth is not a readable PyTorch weights file"):
        load_state_dict(tmp_path / "cut.pth")
    with pytest.raises(ValueError, match=r"must end in .safetensors, .pth or .pt; got w.ckpt"):
        load_state_dict(tmp_path / "w.ckpt")
    with pytest.raises(errors.FileError, match="no such weights file"):  # an OSError, as FileNotFoundError was
        load_state_dict(tmp_path / "missing.pth")
