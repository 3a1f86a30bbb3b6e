"""timm's weights in and out (``from_timm`` / ``to_timm``), timm's own modules the oracle: bit-exact
round trips both ways and a strict load into timm's module for names of every layer kind (SE, ECA,
GroupNorm, BlurPool, ResNet-RS, deep stems, average-pool shortcuts, headless), timm's logits, the
mismatch messages and ``detect_architecture`` over every timm name (keys and shapes from timm itself)."""

import numpy as np
import pytest
import timm
import torch
from helpers import assert_trees_equal, random_variables, randomize_timm

import resnet_bottleneck as rb
from resnet_bottleneck.arch import TIMM_NAMES
from resnet_bottleneck.io import WeightsMismatch, load_timm
from resnet_bottleneck.io.torchvision import detect_architecture
from resnet_bottleneck.models import CONFIGS

torch.set_num_threads(2)


def random_timm(name, seed=0, **kwargs):
    """timm's ``name`` with every float tensor random (running variances positive), in eval mode:
    nothing of timm's initialisation (zero_init_last's zeros, BatchNorm's ones) can hide a swap."""
    torch.manual_seed(seed)
    model = timm.create_model(name, **kwargs)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for key, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(
                    torch.rand(t.shape, generator=g) + 0.5
                    if key.endswith("running_var")
                    else torch.randn(t.shape, generator=g) * 0.1
                )
    return model.eval()


def numpy_state(model):
    return {k: v.numpy() for k, v in model.state_dict().items()}


def meta_state_dict(name, **kwargs):
    with torch.device("meta"):
        return timm.create_model(name, **kwargs).state_dict()


# SE, ECA, GroupNorm, BlurPool, average-pool AA, ResNet-RS, grouped + SE + deep stem, tiered stem, plain
ROUND_TRIP = [
    "resnet10t",
    "seresnet18",
    "ecaresnet26t",
    "resnet50_gn",
    "resnetblur18",
    "resnetaa34d",
    "resnetrs50",
    "seresnext26d_32x4d",
]


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_round_trip_is_bit_exact_and_timm_loads_it_strictly(name):
    theirs = random_timm(name, num_classes=7)
    state = numpy_state(theirs)
    model, variables = rb.from_timm(state, name)
    assert model.num_classes == 7
    back = rb.to_timm(variables, name, as_numpy=True)
    assert list(back) == list(state)  # every key, timm's order, num_batches_tracked included (none for GroupNorm)
    for key, value in state.items():
        assert back[key].dtype == value.dtype and back[key].shape == value.shape, key
        np.testing.assert_array_equal(back[key], value, err_msg=key)
    fresh = timm.create_model(name, num_classes=7)
    fresh.load_state_dict(rb.to_timm(variables, name), strict=True)  # torch tensors
    for key, value in fresh.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), state[key], err_msg=key)
    if name == "resnet50_gn":
        assert "batch_stats" not in variables and not any(k.endswith("num_batches_tracked") for k in back)
    # and from ours: random variables through timm's module and back, bit for bit
    _, again = rb.from_timm(numpy_state(fresh), name)
    assert_trees_equal(again, variables)


def test_our_variables_through_timm_and_back():
    """Variables that never came from timm (random, every leaf) survive the trip through timm's module."""
    import jax

    model = rb.create_model("seresnet18", num_classes=5)
    variables = random_variables(model, (1, 32, 32, 3))
    theirs = timm.create_model("seresnet18", num_classes=5)
    theirs.load_state_dict(rb.to_timm(variables, "seresnet18"), strict=True)
    assert_trees_equal(
        rb.from_timm(theirs.state_dict(), "seresnet18")[1], jax.tree_util.tree_map(np.asarray, variables)
    )


def norms_randomized(name, seed=0, **kwargs):
    """timm's ``name`` as timm initialises it (``zero_init_last`` undone), then every norm's affine terms,
    BatchNorm's statistics and SE's biases random (:func:`helpers.randomize_timm`); in eval mode."""
    torch.manual_seed(seed)
    return randomize_timm(timm.create_model(name, zero_init_last=False, **kwargs), seed + 1)


@pytest.mark.parametrize("name", ["resnet10t", "seresnext26d_32x4d", "resnet50_gn"])
def test_from_timm_gives_timms_logits(name):
    theirs = norms_randomized(name, num_classes=10)
    x = np.random.default_rng(0).standard_normal((2, 3, 45, 67)).astype(np.float32)
    with torch.no_grad():
        expected = theirs(torch.from_numpy(x)).numpy()
    model, variables = rb.from_timm(theirs.state_dict(), name)
    ours = np.asarray(model.apply(variables, x.transpose(0, 2, 3, 1), train=False))
    scale = np.abs(expected).max()
    np.testing.assert_allclose(ours, expected, atol=1e-4 * scale, rtol=0)


def test_headless_is_timms_num_classes_0(tmp_path):
    theirs = random_timm("resnet10t", num_classes=0)
    model, variables = rb.from_timm(theirs.state_dict(), "resnet10t")
    assert model.num_classes is None and "fc" not in variables["params"]
    headless = timm.create_model("resnet10t", num_classes=0)
    headless.load_state_dict(rb.to_timm(variables, "resnet10t"), strict=True)
    headless.load_state_dict(rb.to_timm(variables, "resnet10t", num_classes=0), strict=True)
    with pytest.raises(
        WeightsMismatch,
        match=r"^state_dict does not fit timm's resnet10t; it fits resnet10t without a classifier "
        r"\(num_classes=None\)\. 2 missing: fc\.weight, fc\.bias$",
    ):
        rb.from_timm(theirs.state_dict(), "resnet10t", num_classes=5)
    assert detect_architecture(theirs.state_dict(), every=True) == ("resnet10t",)
    # a file of it, as timm saves one, with a nonzero counter (accepted; written back as 0)
    state = theirs.state_dict()
    state["bn1.num_batches_tracked"].fill_(12)
    torch.save(state, tmp_path / "r10t.pth")
    model, again = load_timm(tmp_path / "r10t.pth", "resnet10t")
    assert_trees_equal(again, variables)
    assert int(rb.to_timm(again, "resnet10t", as_numpy=True)["bn1.num_batches_tracked"]) == 0


def test_api_is_checked_first():
    """``api='nnx'`` is wired as ``from_torchvision``'s (``to_nnx`` of the Linen pair); a wrong one names itself."""
    with pytest.raises(ValueError, match="api must be one of 'linen', 'nnx'; got 'jax'"):
        rb.from_timm({}, "resnet18", api="jax")


# --- which names fit, and the mismatch messages ------------------------------------------


@pytest.fixture(scope="module")
def timm_shapes():
    """Every timm name's keys and shapes, from timm's own modules on the meta device."""
    return {name: meta_state_dict(name) for name in TIMM_NAMES}


def _same(a, b):
    return {k: tuple(v.shape) for k, v in a.items()} == {k: tuple(v.shape) for k, v in b.items()}


def test_detect_names_every_timm_model_and_all_with_the_same_tensors(timm_shapes):
    """For every timm name, ``detect_architecture`` names exactly the names whose timm state dicts have
    the same keys and shapes (timm the oracle), the first of them in CONFIGS' order by default."""
    twins = 0
    for name, state in timm_shapes.items():
        expected = tuple(n for n in CONFIGS if n in timm_shapes and _same(timm_shapes[n], state))
        assert detect_architecture(state, every=True) == expected, name
        assert detect_architecture(state) == expected[0], name
        twins += len(expected) > 1
    assert twins >= 10  # resnet50d, resnetaa50d, resnetblur50d, ... (anti-aliasing has no tensors)
    assert detect_architecture(timm_shapes["resnet50d"], every=True) == ("resnet50d", "resnetaa50d", "resnetblur50d")
    assert detect_architecture(timm_shapes["resnet50c"], every=True) == ("resnet50c",)  # its shortcut keys differ
    assert detect_architecture({"x.weight": np.zeros(3)}, every=True) == ()
    # the family's layouts are cached: scoring a state dict against all of them is quick (~0.03 s here)
    import time

    start = time.perf_counter()
    for state in list(timm_shapes.values())[:10]:
        detect_architecture(state, every=True)
    assert time.perf_counter() - start < 5
    with pytest.raises(TypeError, match="every must be True or False; got 1"):
        detect_architecture(timm_shapes["resnet50d"], every=1)


@pytest.mark.parametrize(
    "weights,asked,fits",
    [
        ("resnet50d", "seresnet50", "resnet50d, resnetaa50d or resnetblur50d (the same tensors)"),
        ("seresnet50", "resnet50", "seresnet50"),
        ("resnet50c", "resnet50d", "resnet50c"),
        ("resnet50_gn", "resnet50", "resnet50_gn"),
        ("ecaresnet50d", "resnet50d", "ecaresnet50d"),
        ("resnetblur18", "resnet34", "resnet18 or resnetblur18 (the same tensors)"),
        ("resnetrs50", "resnetrs101", "resnetrs50"),
    ],
)
def test_mismatch_names_what_fits_in_one_short_line(timm_shapes, weights, asked, fits):
    state, want = timm_shapes[weights], timm_shapes[asked]
    with pytest.raises(WeightsMismatch) as info:
        rb.from_timm(state, asked)
    err, message = info.value, str(info.value)
    assert message.startswith(f"state_dict does not fit timm's {asked}; it fits {fits}. "), message
    assert len(message) < 300 and "\n" not in message, message
    assert err.fits == err.fits_all[0] == weights.replace("resnetblur18", "resnet18")
    # the full lists, against timm's own keys and shapes of both models
    counter = "num_batches_tracked"
    assert set(err.missing) == {k for k in want if k not in state and not k.endswith(counter)}  # optional
    assert set(err.unexpected) == {k for k in state if k not in want and not k.endswith(counter)} | {
        k for k in state if k not in want and k.endswith(counter) and k.replace(counter, "running_mean") not in want
    }
    assert {(k, a) for k, a, _ in err.wrong_shape} == {
        (k, tuple(v.shape)) for k, v in state.items() if k in want and v.shape != want[k].shape
    }
    assert err.library == "timm"


def test_mismatch_of_files_and_variables(timm_shapes, tmp_path):
    from safetensors.numpy import save_file

    state = timm_shapes["resnet26d"]
    save_file({k: np.zeros(tuple(v.shape), np.int8) for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    with pytest.raises(
        WeightsMismatch, match=rf"^{tmp_path}/w.safetensors does not fit timm's resnet26t; it fits resnet26d\. "
    ):
        load_timm(tmp_path / "w.safetensors", "resnet26t")
    # our variables offered as another name: the variables' own message
    variables = rb.from_timm(random_timm("resnet10t", num_classes=3).state_dict(), "resnet10t")[1]
    with pytest.raises(WeightsMismatch, match=r"^variables do not fit resnet14t; it fits resnet10t\. "):
        rb.to_timm(variables, "resnet14t")


def test_foreign_files_are_read_with_the_preprocessing_convert_records(tmp_path):
    """A timm-only name's file: its data config (resnet10t: 176, bicubic); a name torchvision has too:
    torchvision's (224, bilinear, 0.875), as ``convert --preprocessing auto`` records them."""
    from resnet_bottleneck.io import load_model_file
    from resnet_bottleneck.io.metadata import eval_crop, preprocessing

    ten = rb.data_config("resnet10t")
    assert (ten["input_size"][1], ten["interpolation"]) == (176, "bicubic")  # not torchvision's
    for name, size, crop in (
        ("resnet10t", 176, (ten["crop_pct"], "bicubic")),
        ("resnet18", 224, (0.875, "bilinear")),
    ):
        with torch.device("meta"):
            keys = timm.create_model(name, num_classes=3).state_dict()
        state = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in keys.items()}
        torch.save(state, tmp_path / f"{name}.pth")
        _, _, metadata = load_model_file(tmp_path / f"{name}.pth", name)
        assert eval_crop(metadata) == crop
        assert preprocessing(metadata)[0] == size
