"""Parity with torchvision's own modules: eval, train, gradients, round trips; safe loading; folding."""

import json
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

from resnet_bottleneck import create_model
from resnet_bottleneck.fold import fold_batchnorm
from resnet_bottleneck.torch_io import (
    from_torchvision,
    load_state_dict,
    load_variables,
    save_variables,
    to_torchvision,
)

torch.set_num_threads(2)


def random_torchvision(name, seed=0, num_classes=1000):
    """A torchvision model with random weights and randomised BatchNorm affine and running statistics."""
    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.1 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
    return model.eval()


def torch_stages(model, x):
    """torchvision's stage outputs (stem after ReLU, layer1..4) and logits, NHWC numpy."""
    seen = {}
    hooks = [model.relu.register_forward_hook(lambda m, i, o: seen.setdefault("stem", o))]
    for i, stage in enumerate(["C2", "C3", "C4", "C5"]):
        hooks.append(getattr(model, f"layer{i + 1}").register_forward_hook(lambda m, i, o, s=stage: seen.__setitem__(s, o)))
    logits = model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    for h in hooks:
        h.remove()
    return {k: v.detach().numpy().transpose(0, 2, 3, 1) for k, v in seen.items()}, logits.detach().numpy()


def assert_close_to_scale(ours, theirs, rel=1e-4, what=""):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
    scale = max(np.abs(theirs).max(), 1e-12)
    assert np.abs(ours - theirs).max() <= rel * scale, (what, np.abs(ours - theirs).max() / scale)


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


def test_save_and_load_variables_round_trip(tmp_path, converted):
    name, _, model, variables = converted
    save_variables(tmp_path / "v.safetensors", variables, {"model": name})
    back, meta = load_variables(tmp_path / "v.safetensors")
    assert meta == {"model": name}
    for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(variables)):
        np.testing.assert_array_equal(a, b)


def test_fold_batchnorm_agrees_with_the_eval_model(converted):
    name, tv, model, variables = converted
    folded_model, folded = fold_batchnorm(model, variables)
    assert "batch_stats" not in folded
    assert not any("BatchNorm" in "/".join(map(str, p)) or "bn1" in str(p)
                   for p, _ in jax.tree_util.tree_leaves_with_path(folded["params"]))
    x = np.random.default_rng(5).standard_normal((2, 64, 64, 3)).astype(np.float32)
    expected = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    got = jax.jit(folded_model.apply)(folded, x)
    assert_close_to_scale(got, expected, what="folded logits")
    with pytest.raises(ValueError, match="folded model .* is for inference"):
        folded_model.apply(folded, x, train=True)


# --- convert and predict --------------------------------------------------------------


@pytest.fixture(scope="module")
def small_weights(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("weights")
    tv = random_torchvision("resnet18", seed=3, num_classes=10)
    torch.save(tv.state_dict(), root / "r18.pth")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (300, 260, 3), dtype=np.uint8)).save(root / "a.png")
    Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)).convert("L").save(root / "b.jpg")
    (root / "labels.txt").write_text("\n".join(f"class-{i}" for i in range(10)) + "\n")
    (root / "broken.png").write_bytes(b"\x89PNG not really")
    from resnet_bottleneck.torch_io import CHECKPOINT_FORMAT

    save_variables(root / "r18.safetensors", from_torchvision(tv.state_dict(), "resnet18")[1],
                   {"model": "resnet18", "format": CHECKPOINT_FORMAT})
    return root, tv


def test_preprocess_is_torchvisions(small_weights):
    from torchvision import transforms

    from resnet_bottleneck.cli import preprocess
    from PIL import Image

    root, _ = small_weights
    reference = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                                    transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    for name in ("a.png", "b.jpg"):
        expected = reference(Image.open(root / name).convert("RGB")).numpy().transpose(1, 2, 0)
        np.testing.assert_allclose(preprocess(str(root / name)), expected, atol=1e-5)


def test_convert_then_predict(small_weights, tmp_path, capsys):
    from resnet_bottleneck.cli import main, preprocess

    root, tv = small_weights
    out = tmp_path / "r18.safetensors"
    assert main(["convert", str(root / "r18.pth"), str(out), "--model", "resnet18"]) == 0
    variables, meta = load_variables(out)
    assert meta["model"] == "resnet18" and meta["num_classes"] == "10"
    _, expected = from_torchvision(torch.load(root / "r18.pth", weights_only=True), "resnet18")
    for a, b in zip(jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(expected)):
        np.testing.assert_array_equal(a, b)
    capsys.readouterr()

    images = [str(root / "a.png"), str(root / "b.jpg")]
    assert main(["predict", *images, "--weights", str(out), "--model", "resnet18", "--json",
                 "--labels", str(root / "labels.txt")]) == 0
    results = json.loads(capsys.readouterr().out)
    for result, path in zip(results, images):
        x = torch.from_numpy(preprocess(path).transpose(2, 0, 1)[None].copy())
        probs = torch.softmax(tv.eval()(x), dim=1)[0].detach().numpy()
        top = np.argsort(-probs)[:5]
        assert [r["class"] for r in result["top5"]] == top.tolist()
        np.testing.assert_allclose([r["probability"] for r in result["top5"]], probs[top], atol=1e-4)
        assert result["top5"][0]["label"] == f"class-{top[0]}"
    # torchvision weights straight from the .pth give the same answer
    assert main(["predict", images[0], "--weights", str(root / "r18.pth"), "--model", "resnet18"]) == 0
    assert capsys.readouterr().out.startswith(images[0] + ": " + str(results[0]["top5"][0]["class"]) + " (")


@pytest.mark.parametrize("args,fragment", [
    (["convert", "{root}/missing.pth", "{tmp}/o.safetensors", "--model", "resnet18"], "no such weights file"),
    (["convert", "{root}/r18.pth", "{tmp}/o.npz", "--model", "resnet18"], "OUT must end in .safetensors"),
    (["convert", "{root}/r18.pth", "{tmp}/o.safetensors", "--model", "resnet50"], "state_dict does not fit torchvision's resnet50"),
    (["convert", "{root}/r18.pth", "{tmp}/o.safetensors", "--model", "resnet5"], "name must be one of"),
    (["predict", "{root}/a.png", "--weights", "{root}/r18.pth", "--model", "resnet34"], "state_dict does not fit torchvision's resnet34"),
    (["predict", "{root}/a.png", "--weights", "{root}/r18.safetensors", "--model", "resnet34"], "holds 'resnet18' variables, not 'resnet34'"),
    (["predict", "{root}/a.png", "--weights", "{root}/none.safetensors", "--model", "resnet18"], "no such weights file"),
    (["predict", "{root}/nope.png", "--weights", "{root}/r18.pth", "--model", "resnet18"], "no such image: "),
    (["predict", "{root}/broken.png", "--weights", "{root}/r18.pth", "--model", "resnet18"], "cannot read image"),
    (["predict", "{root}/a.png", "--weights", "{root}/r18.pth", "--model", "resnet18", "--labels", "{root}/a.png"], "--labels"),
])
def test_convert_and_predict_bad_input(args, fragment, small_weights, tmp_path, capsys):
    from resnet_bottleneck.cli import main

    root, _ = small_weights
    args = [a.format(root=root, tmp=tmp_path) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err
    assert list(tmp_path.iterdir()) == []  # nothing half-written
