"""Parity with timm 1.0.31's own ResNet modules (issue 24, items 1, 2 and 4).

Every name: timm's keys, shapes and parameter count (timm built on torch's meta device), and the Linen
model's own variables and feature-map shape against timm's forward on the meta device. One name of every
option combination: eval logits at an odd and an even size, and training-mode logits, updated BatchNorm
statistics and every gradient in float64, all against timm's modules with random weights and random
norm statistics and affine terms. Stochastic depth and head dropout: timm's per-block rates, inactive in
evaluation, deterministic given the key, dropping at the rate. ``zero_init_last``: timm's zeroed scales.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch
from flax import traverse_util
from helpers import assert_close_to_scale, randomize_timm
from timm.layers import get_attn
from timm.models.resnet import Bottleneck

from resnet_bottleneck import CONFIGS, ResNet, arch, count_params, create_model, from_timm
from resnet_bottleneck.blocks import BasicBlock
from resnet_bottleneck.io.torchvision import _from_torch, _layout, _to_torch, _to_torch_shape

torch.set_num_threads(2)


#: ``jax.jit`` without LLVM's optimisation passes: half the compile time of these one-shot programs, on
#: which the file's budget is mostly spent; the arithmetic checked is the same.
quick_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

#: One name of every option combination (the smallest there is): block kind x stem x shortcut x attention
#: x anti-aliasing x norm. The training checks take each name's options on fewer blocks (:data:`REDUCED`).
COMBINATIONS = (
    "resnet10t",  # basic, tiered deep stem, avg_down
    "resnet14t",  # bottleneck, tiered deep stem, avg_down
    "resnet18d",  # basic, deep stem, avg_down
    "resnet26d",  # bottleneck, deep stem, avg_down
    "resnet50c",  # deep stem, strided 1x1 shortcut convs
    "resnet50s",  # deep stem 64 wide, channels
    "seresnet18",  # basic, SE
    "seresnext26d_32x4d",  # grouped, SE, deep stem, avg_down
    "ecaresnet26t",  # ECA, tiered stem
    "ecaresnetlight",  # ECA, 7x7 stem, avg_down
    "resnetblur18",  # basic, BlurPool (stem: max-pool stride 1 then blur)
    "resnetblur50d",  # bottleneck, BlurPool, deep stem, avg_down
    "resnetaa34d",  # basic, average-pool AA (stem pool too)
    "seresnetaa50d",  # bottleneck, SE, average-pool AA
    "resnetrs50",  # replace_stem_pool, SE at 1/4
    "resnet50_gn",  # GroupNorm
    "senet154",  # 3x3 shortcut convs, block_reduce_first=2, 64 groups, SE
)

#: timm's average-pool anti-aliasing (``resnetaa*``, ``seresnetaa*``, ``seresnextaa*``) floors where the
#: shortcut rounds up: timm fails on inputs whose sizes halve to an odd number before the last stage.
AA_AVG = tuple(name for name in arch.TIMM_NAMES if arch.FAMILY[name].get("aa_layer") == "avg")

ODD, EVEN = (97, 131), (96, 128)

#: The depth of the models the training checks use: a name's options on five blocks (an identity block in
#: the second stage), for a float64 backward pass of a full 50-layer model takes a minute to compile and
#: run on two cores (senet154's several) and the tests' budget is minutes. ``resnet10t`` and
#: ``resnet14t`` (four blocks) are checked whole.
REDUCED = (1, 2, 1, 1)


def random_timm(name, seed=0, layers=None):
    """timm's ``name`` (with ``layers`` blocks a stage if given: timm's model functions let the keyword
    override theirs) with random weights and norms; ``zero_init_last=False`` (the random norms undo it anyway)."""
    torch.manual_seed(seed)
    kwargs = {} if layers is None else {"layers": layers}
    return randomize_timm(timm.create_model(name, zero_init_last=False, **kwargs), seed + 1)


def load(timm_model, name, layers=None):
    """Our model and variables from timm's module: :func:`from_timm` for a name; for ``layers`` blocks a
    stage, ``ResNet`` with the name's options but those (see :func:`place`)."""
    if layers is None:
        return from_timm(timm_model.state_dict(), name)
    model = ResNet(**{**CONFIGS[name], "stage_sizes": layers})
    return model, place(timm_model, model)


def place(timm_model, model):
    """``model``'s variables from timm's module, each where the spec's layout puts it."""
    state = timm_model.state_dict()
    flat = {path: jnp.asarray(_from_torch(state[key].numpy(), kind)) for key, path, _, kind in _layout(spec_of(model))}
    assert len(flat) == len([k for k in state if not k.endswith("num_batches_tracked")])
    return traverse_util.unflatten_dict(flat)


def spec_of(model):
    return arch.describe(model)


def as_torch(tree, spec, collection):
    """Our ``collection`` tree (parameters, gradients or statistics) under timm's keys, in timm's layout."""
    flat = traverse_util.flatten_dict({collection: tree})
    return {key: _to_torch(np.asarray(flat[path]), kind) for key, path, _, kind in _layout(spec) if path in flat}


def nchw(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


@functools.lru_cache(maxsize=1)
def converted(name):
    """timm's random ``name`` (eval mode) and ours from its weights: the eval cases of one name share it."""
    tm = random_timm(name)
    return (tm, *load(tm, name))


# --- every name: timm's layout, count and shapes ------------------------------------------------


def meta_timm(name, **kwargs):
    """timm's ``name`` on the meta device: keys, shapes and a shape-only forward, nothing allocated."""
    with torch.device("meta"):
        return timm.create_model(name, **kwargs)


def test_every_timm_name_is_ours():
    """The family holds every name timm registers in resnet.py, but the three the issue leaves out."""
    registered = set(timm.list_models(module="resnet"))
    left_out = {"ecaresnet50d_pruned", "ecaresnet101d_pruned", "test_resnet"}
    assert set(arch.TIMM_NAMES) == registered - left_out
    assert left_out <= registered
    assert set(arch.TIMM_NAMES) <= set(arch.FAMILY)


@pytest.mark.parametrize("name", arch.TIMM_NAMES)
def test_every_name_has_timms_tensors_count_and_shapes(name):
    """timm's state_dict keys and shapes are our layout's; timm's parameter count is the spec's and the
    Linen model's own (its backbone's traced ``init``, plus the classifier); timm's feature map at a
    small size is ours."""
    tm = meta_timm(name)
    theirs = {k: tuple(v.shape) for k, v in tm.state_dict().items() if not k.endswith("num_batches_tracked")}
    spec = arch.describe(name)
    layout = _layout(spec)
    ours = {key: _to_torch_shape(shape, kind) for key, _, shape, kind in layout}
    assert ours == theirs
    counters = {k[: -len("num_batches_tracked")] for k in tm.state_dict() if k.endswith("num_batches_tracked")}
    assert counters == {key[: -len("running_var")] for key, _, _, kind in layout if kind == "running_var"}

    count = sum(p.numel() for p in tm.parameters())
    assert spec.param_count() == count

    # a size that halves to odd numbers (floor and ceil differ) but where timm's average-pool AA can run
    hw = (64, 96) if name in AA_AVG else (65, 99)
    with torch.no_grad():
        features = tm.forward_features(torch.empty(1, 3, *hw, device="meta")).shape
    model = create_model(name)
    x = jax.ShapeDtypeStruct((1, *hw, 3), jnp.float32)
    out, variables = jax.eval_shape(lambda x: model.init_with_output(jax.random.PRNGKey(0), x, part="features"), x)
    assert count_params(variables) + sum(p.numel() for p in tm.fc.parameters()) == count
    assert out.shape == (features[0], features[2], features[3], features[1])


# --- one name of every option combination: eval, train and gradients ------------------------------


EVAL_CASES = [(name, hw) for name in COMBINATIONS for hw in (ODD, EVEN) if not (name in AA_AVG and hw == ODD)]


@pytest.mark.parametrize("name,hw", EVAL_CASES, ids=[f"{n}-{h}x{w}" for n, (h, w) in EVAL_CASES])
def test_eval_parity(name, hw):
    """Eval-mode logits within 1e-4 of timm's, relative to their scale."""
    tm, model, variables = converted(name)
    x = np.random.default_rng(hw[0]).standard_normal((2, *hw, 3)).astype(np.float32)
    with torch.no_grad():
        theirs = tm(nchw(x)).numpy()
    ours = quick_jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    assert_close_to_scale(ours, theirs, rel=1e-4, what=f"{name} {hw}")


#: Option combinations no name of timm's has, on four blocks: ours and timm's ``ResNet`` arguments, and
#: the input size (the average-pool AA at an even one, as above).
UNNAMED = {
    # timm's replace_stem_pool with BlurPool (conv, blur, norm, act); down_kernel_size ignored by avg_down
    "deep-stem-pool-blur": (
        dict(
            stem_type="deep", stem_width=32, replace_stem_pool=True, aa_layer="blur", avg_down=True,
            down_kernel_size=3,
        ),
        dict(
            block=Bottleneck, stem_type="deep", stem_width=32, replace_stem_pool=True,
            aa_layer=timm.layers.BlurPool2d, avg_down=True, down_kernel_size=3,
        ),
        ODD,
    ),
    # replace_stem_pool with average-pool AA; basic blocks, ECA, 3x3 strided shortcut convs
    "stem-pool-avg-eca": (
        dict(block=BasicBlock, replace_stem_pool=True, aa_layer="avg", attn_layer="eca", down_kernel_size=3),
        dict(
            block=timm.models.resnet.BasicBlock, replace_stem_pool=True, aa_layer=torch.nn.AvgPool2d,
            down_kernel_size=3, block_args=dict(attn_layer=get_attn("eca")),
        ),
        EVEN,
    ),
}  # fmt: skip


@pytest.mark.parametrize("combination", UNNAMED)
def test_eval_parity_of_combinations_no_name_has(combination):
    ours, theirs, hw = UNNAMED[combination]
    torch.manual_seed(0)
    tm = randomize_timm(timm.models.resnet.ResNet(layers=(1, 1, 1, 1), zero_init_last=False, **theirs))
    model = ResNet(stage_sizes=(1, 1, 1, 1), **ours)
    assert spec_of(model).param_count() == sum(p.numel() for p in tm.parameters())
    x = np.random.default_rng(8).standard_normal((2, *hw, 3)).astype(np.float32)
    with torch.no_grad():
        expected = tm(nchw(x)).numpy()
    logits = quick_jit(lambda v, x: model.apply(v, x, train=False))(place(tm, model), x)
    assert_close_to_scale(logits, expected, rel=1e-4, what=combination)


@pytest.mark.parametrize("name", [n for n in COMBINATIONS if n in AA_AVG])
def test_timm_fails_on_odd_sizes_with_average_pool_aa(name):
    """Why the average-pool AA variants are checked at even sizes only: timm's own module cannot run there."""
    tm = meta_timm(name)
    with torch.no_grad(), pytest.raises(RuntimeError, match="size of tensor|broadcast"):
        tm(torch.empty(1, 3, *ODD, device="meta"))
    # ours says so in words, naming the block and the two sizes
    model = create_model(name)
    with pytest.raises(ValueError, match=r"block layer\d_0, on a \(\d+, \d+\) map, gives .* aa_layer='avg'"):
        jax.eval_shape(model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, *ODD, 3), jnp.float32))


@pytest.mark.parametrize("name", COMBINATIONS)
def test_train_parity_float64(name):
    """Training mode in float64 on both sides: the logits, every updated BatchNorm statistic (PyTorch's
    momentum 0.1, the unbiased variance folded in) and the gradient of every parameter.

    The name's options on five blocks (:data:`REDUCED`) but for the four-block names, which are whole.
    """
    layers = None if sum(CONFIGS[name]["stage_sizes"]) <= 4 else REDUCED
    tm = random_timm(name, layers=layers)
    model, variables = load(tm, name, layers)
    spec = spec_of(model)
    assert sum(1 for _ in spec.blocks()) == sum(len(s) for s in (tm.layer1, tm.layer2, tm.layer3, tm.layer4))
    hw = (32, 32) if name in AA_AVG else (25, 31)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, *hw, 3))
    w = rng.standard_normal((2, 1000))

    tm = tm.double().train()
    logits_t = tm(nchw(x))
    (logits_t * torch.from_numpy(w)).sum().backward()
    grads_t = {k: p.grad.numpy() for k, p in tm.named_parameters()}
    stats_t = {k: v.numpy() for k, v in tm.state_dict().items() if "running_" in k}

    with jax.enable_x64(True):
        model = model.clone(param_dtype=jnp.float64)  # statistics are kept in param_dtype
        variables64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), variables)

        def loss(params):
            logits, state = model.apply({**variables64, "params": params}, x, train=True, mutable=["batch_stats"])
            return jnp.sum(logits * w), (logits, state)

        grads, (logits, state) = quick_jit(jax.grad(loss, has_aux=True))(variables64["params"])
        assert logits.dtype == jnp.float64
        assert_close_to_scale(logits, logits_t.detach().numpy(), rel=1e-9, what="train logits")
        stats = as_torch(state.get("batch_stats", {}), spec, "batch_stats")
        grads = as_torch(grads, spec, "params")

    assert set(stats) == set(stats_t)
    for key, value in stats_t.items():
        assert_close_to_scale(stats[key], value, rel=1e-9, what=key)
    assert set(grads) == set(grads_t)
    for key, g in grads_t.items():
        assert_close_to_scale(grads[key], g, rel=1e-7, what=key)


# --- stochastic depth and head dropout ---------------------------------------------------------------


def block_rates(spec):
    """Each block's drop-path rate in ``spec`` (0 where it has no DropPath layer, as timm's ``None``)."""
    rates = {}
    for block in spec.blocks():
        found = [layer.rate for layer in block.layers if isinstance(layer, arch.DropPath)]
        assert len(found) <= 1, block.name
        rates[block.name] = found[0] if found else 0.0
    return rates


@pytest.mark.parametrize("name", ["resnet50d", "resnet10t", "seresnext26d_32x4d"])
def test_drop_path_rates_and_drop_rate_are_timms(name):
    """timm's linear rule, block by block (``drop_path_rate * index / (blocks - 1)``) read off timm's
    modules' ``DropPath.drop_prob``; and timm's ``drop_rate`` before the classifier."""
    tm = meta_timm(name, drop_path_rate=0.1, drop_rate=0.25)
    theirs = {
        f"{stage}.{j}": (block.drop_path.drop_prob if block.drop_path is not None else 0.0)
        for stage in ("layer1", "layer2", "layer3", "layer4")
        for j, block in enumerate(getattr(tm, stage))
    }
    spec = arch.describe(name, drop_path_rate=0.1, drop_rate=0.25)
    ours = block_rates(spec)
    assert ours == pytest.approx(theirs, rel=1e-12, abs=0)
    assert max(ours.values()) == pytest.approx(0.1) and ours["layer1.0"] == 0.0
    assert spec.head.drop_rate == tm.drop_rate == 0.25
    assert set(block_rates(arch.describe(name)).values()) == {0.0}  # none by default


@pytest.fixture(scope="module")
def dropping():
    """resnet14t with and without stochastic depth (0.3: blocks at 0, 0.1, 0.2, 0.3) and head dropout,
    the same random variables, and a batch."""
    plain = create_model("resnet14t", num_classes=10)
    model = create_model("resnet14t", num_classes=10, drop_path_rate=0.3, drop_rate=0.25)
    x = np.random.default_rng(5).standard_normal((8, 33, 35, 3)).astype(np.float32)
    return plain, model, quick_jit(plain.init)(jax.random.PRNGKey(0), x), x


def test_dropping_is_inactive_in_evaluation(dropping):
    plain, model, variables, x = dropping
    ours = quick_jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    np.testing.assert_array_equal(ours, quick_jit(lambda v, x: plain.apply(v, x, train=False))(variables, x))


def test_dropping_in_training_is_deterministic_given_the_key(dropping):
    plain, model, variables, x = dropping

    @quick_jit
    def train(v, x, key):
        return model.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": key})[0]

    key = jax.random.PRNGKey(3)
    first = train(variables, x, key)
    np.testing.assert_array_equal(first, train(variables, x, key))
    assert not np.allclose(first, train(variables, x, jax.random.PRNGKey(4)))
    undropped = plain.apply(variables, x, train=True, mutable=["batch_stats"])[0]
    assert not np.allclose(first, undropped)
    assert not np.allclose(first, plain.apply(variables, x, train=False))


def test_drop_path_drops_whole_examples_at_the_rate():
    """A block with stochastic depth at 0.25, on 20,000 examples: each example's residual branch is
    either dropped (output = shortcut) or kept and scaled by 1 / 0.75; the dropped fraction is within
    0.015 of 0.25 (five standard deviations, sqrt(0.25 * 0.75 / 20000) = 0.0031)."""
    rate, n = 0.25, 20_000
    block = BasicBlock(features=8, drop_path_rate=rate, padding="torch")
    kept_all = BasicBlock(features=8, padding="torch")
    # far from zero, so that the final ReLU is the identity and the residual branch can be read back
    x = 100 + np.random.default_rng(6).standard_normal((n, 2, 2, 8)).astype(np.float32)
    variables = quick_jit(kept_all.init)(jax.random.PRNGKey(0), x[:2])
    dropped = block.apply(variables, x, rngs={"dropout": jax.random.PRNGKey(9)}, mutable=["batch_stats"])[0]
    kept = kept_all.apply(variables, x, mutable=["batch_stats"])[0]  # the same batch statistics
    residual = np.asarray(kept) - x
    scaled = (np.asarray(dropped) - x).reshape(n, -1)
    residual = residual.reshape(n, -1)
    ratio = (scaled * residual).sum(1) / (residual * residual).sum(1)  # per example: 0 or 1 / (1 - rate)
    is_dropped = np.abs(ratio) < 1e-3
    assert np.all(is_dropped | (np.abs(ratio - 1 / (1 - rate)) < 1e-3))
    assert abs(is_dropped.mean() - rate) < 0.015, is_dropped.mean()


def test_head_dropout_drops_features_at_the_rate(dropping):
    """timm's ``drop_rate``: element-wise dropout of the pooled features in training, kept ones scaled
    by 1 / (1 - 0.25); over 64 x 2048 features the zeroed fraction is within 0.012 of 0.25 (five
    standard deviations)."""
    _, model, variables, _ = dropping
    features = np.random.default_rng(7).random((64, 2, 3, 2048)).astype(np.float32) + 0.5
    pooled = model.apply(variables, features, part="pre_logits")
    dropped = model.apply(variables, features, train=True, part="pre_logits", rngs={"dropout": jax.random.PRNGKey(2)})
    ratio = np.asarray(dropped) / np.asarray(pooled)
    zeroed = ratio == 0
    np.testing.assert_allclose(ratio[~zeroed], 1 / 0.75, rtol=1e-6)
    assert abs(zeroed.mean() - 0.25) < 0.012, zeroed.mean()


# --- zero_init_last ----------------------------------------------------------------------------------


def zeroed_scales(state):
    return {k for k, v in state.items() if k.endswith(".weight") and v.ndim == 1 and not np.any(v)}


@pytest.mark.parametrize("name", ["resnet10t", "resnet14t", "gn_like"])
def test_zero_init_last_zeroes_timms_scales(name):
    """``zero_init_last=True``: exactly the norm scales timm's initialisation zeroes (each block's last
    BatchNorm or GroupNorm), and none without it. ``gn_like``: resnet14t's layout with GroupNorm."""
    torch.manual_seed(0)
    if name == "gn_like":
        tm = timm.models.resnet.ResNet(block=Bottleneck, layers=(1, 1, 1, 1), norm_layer=timm.layers.GroupNorm)
        model = ResNet(stage_sizes=(1, 1, 1, 1), norm="group", zero_init_last=True)
    else:
        tm = timm.create_model(name)  # timm's default is zero_init_last=True
        model = create_model(name, zero_init_last=True)
    theirs = zeroed_scales({k: v.numpy() for k, v in tm.state_dict().items()})
    assert len(theirs) == sum(len(stage) for stage in (tm.layer1, tm.layer2, tm.layer3, tm.layer4))
    x = jnp.zeros((1, 32, 32, 3))
    cases = ((True, theirs), (False, set())) if name == "resnet10t" else ((True, theirs),)  # False: once
    for zero, expected in cases:
        model = model.clone(zero_init_last=zero)
        params = quick_jit(model.init)(jax.random.PRNGKey(0), x)["params"]
        assert zeroed_scales(as_torch(params, spec_of(model), "params")) == expected
