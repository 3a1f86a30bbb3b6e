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

from resnet_bottleneck import create_model
from resnet_bottleneck.io.torchvision import from_torchvision, load_state_dict, to_torchvision

from helpers import assert_close_to_scale, random_torchvision, torch_stages

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
    for (path, ours), theirs in zip(jax.tree_util.tree_leaves_with_path(state["batch_stats"]),
                                    jax.tree_util.tree_leaves(updated["batch_stats"])):
        assert_close_to_scale(ours, theirs, what=jax.tree_util.keystr(path))
    changed = [not np.allclose(a, b) for a, b in zip(jax.tree_util.tree_leaves(state["batch_stats"]),
                                                    jax.tree_util.tree_leaves(variables["batch_stats"]))]
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
        ours = to_torchvision({"params": grads, "batch_stats": variables["batch_stats"]}, name, as_numpy=True,
                              dtype=np.float64)
    assert set(theirs) <= set(ours)
    for key, g in theirs.items():
        assert_close_to_scale(ours[key], g, rel=1e-7, what=key)


def test_round_trip_flax_torch_flax_is_bit_exact(converted):
    name, _, model, _ = converted
    variables = jax.jit(model.init)(jax.random.PRNGKey(7), jnp.zeros((1, 32, 32, 3)))
    variables = jax.tree_util.tree_map(lambda a: np.asarray(a) + 0.01 * np.arange(a.size, dtype=a.dtype).reshape(a.shape),
                                       variables)
    tv = getattr(torchvision.models, name)(weights=None)
    tv.load_state_dict(to_torchvision(variables, name), strict=True)
    _, back = from_torchvision(tv.state_dict(), name)
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(dict(variables))
    for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(dict(variables))):
        np.testing.assert_array_equal(a, b)


def test_resnext_and_wide_layouts_load_strictly():
    for name in ("resnext50_32x4d", "wide_resnet50_2"):
        sd = getattr(torchvision.models, name)(weights=None, num_classes=10).state_dict()
        model, variables = from_torchvision(sd, name)
        assert model.num_classes == 10
        tv = getattr(torchvision.models, name)(weights=None, num_classes=10)
        tv.load_state_dict(to_torchvision(variables, name), strict=True)


def test_mismatches_are_listed_in_full():
    sd = dict(torchvision.models.resnet18(weights=None).state_dict())
    del sd["layer1.0.conv1.weight"], sd["fc.bias"]
    sd["layer5.0.conv1.weight"] = torch.zeros(1)
    sd["bn1.weight"] = torch.zeros(65)
    with pytest.raises(ValueError) as err:
        from_torchvision(sd, "resnet18")
    message = str(err.value)
    for fragment in ("2 missing: fc.bias, layer1.0.conv1.weight", "1 unexpected: layer5.0.conv1.weight",
                     "1 wrongly shaped: bn1.weight (65,) (expected (64,))"):
        assert fragment in message, message
    with pytest.raises(ValueError, match=r"state_dict does not fit torchvision's resnet50: .*missing: .*layer1.0.conv3.weight"):
        from_torchvision(torchvision.models.resnet18(weights=None).state_dict(), "resnet50")


def test_to_torchvision_lists_bad_variables():
    model = create_model("resnet18")
    variables = jax.tree_util.tree_map(np.asarray, jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
    del variables["params"]["layer1_0"]["Conv_0"]
    variables["params"]["extra"] = {"kernel": np.zeros(3)}
    with pytest.raises(ValueError, match=r"1 missing: params/layer1_0/Conv_0/kernel; 1 unexpected: params/extra/kernel"):
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
    with pytest.raises(FileNotFoundError, match="no such weights file"):
        load_state_dict(tmp_path / "missing.pth")
