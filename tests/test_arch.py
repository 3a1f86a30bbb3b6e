"""One description of the architecture (:mod:`resnet_bottleneck.arch`): every backend derived from it.

Every test iterates every registered name (``arch.FAMILY``) with no per-name code, so a new row is
tested by being added. The oracles are independent of the spec: the Linen, NNX and ONNX models'
own variables, torchvision's own ``state_dict`` keys, and a frozen copy of the hand-written
Linen ResNet of before (``legacy_resnet.py``), which the model built from the spec must equal bit
for bit.
"""

import dataclasses
import math
from collections import Counter
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import legacy_resnet as legacy
import numpy as np
import pytest
import torch
import torchvision
from flax import nnx, traverse_util

import resnet_bottleneck as rb
from resnet_bottleneck import arch, fold_batchnorm
from resnet_bottleneck import models as ours
from resnet_bottleneck import nnx as rnnx
from resnet_bottleneck.cost import traced_layers
from resnet_bottleneck.io import torchvision as tv
from resnet_bottleneck.io.onnx import onnx_model

NAMES = list(arch.FAMILY)
#: The names torchvision has (all but ours, resnet_tiny, and timm's own).
TORCHVISION = [name for name in NAMES if hasattr(torchvision.models, name)]
#: The names of the hand-written ResNet of before (legacy_resnet.py): torchvision's and ours.
LEGACY = [*TORCHVISION, "resnet_tiny"]
#: Options that change the variables (the norm's collections, the classifier), tried on every name.
VARIANTS = [
    {},
    {"norm": "frozen", "num_classes": 7},
]
IMAGE = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)


def test_every_name_but_ours_is_torchvisions_or_timms_and_each_kind_its_block_classes():
    assert set(NAMES) == set(TORCHVISION) | set(arch.TIMM_NAMES) | {"resnet_tiny"}
    classes = {"bottleneck": (rb.BottleneckBlock, rnnx.BottleneckBlock), "basic": (rb.BasicBlock, rnnx.BasicBlock)}
    for name, row in arch.FAMILY.items():
        assert rb.CONFIGS[name]["block"] is classes[row["block"]][0]
        assert rnnx.TWINS[rb.CONFIGS[name]["block"]] is classes[row["block"]][1]


def _size(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))


def _abstract(model):
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), IMAGE)


def _zeros(abstract):
    return jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), abstract)


def _nnx(name, **options):
    return nnx.eval_shape(lambda: rnnx.create_model(name, rngs=nnx.Rngs(0), **options))


def _small(name) -> dict:
    """The name's options, each stage cut to at most two blocks: every layer kind and rule of the name
    (first block, repeated block) at a fraction of the depth (the deepest names have 100+ blocks)."""
    return {**rb.CONFIGS[name], "stage_sizes": tuple(min(n, 2) for n in rb.CONFIGS[name]["stage_sizes"])}


def _small_linen(name, **options):
    return rb.ResNet(**{**_small(name), **options})


def _small_nnx(name, **options):
    config = {**_small(name), **options}
    config["block"] = rnnx.TWINS[config["block"]]
    return nnx.eval_shape(lambda: rnnx.ResNet(**config, rngs=nnx.Rngs(0)))


def _small_spec(name, **options):
    return arch.describe(name, stage_sizes=_small(name)["stage_sizes"], **options)


# --- parameter counts: spec == Linen == NNX == ONNX ---------------------------------------


@pytest.mark.parametrize("options", VARIANTS, ids=["plain", "frozen-7-classes"])
@pytest.mark.parametrize("name", NAMES)
def test_parameter_counts_agree_in_linen_nnx_and_the_spec(name, options):
    spec = _small_spec(name, **options)
    linen = _abstract(_small_linen(name, **options))
    assert _size(linen["params"]) == spec.param_count()
    assert _size(linen.get("batch_stats", {})) == spec.stats_count()
    model = _small_nnx(name, **options)
    assert _size(nnx.state(model, nnx.Param)) == spec.param_count()
    assert _size(nnx.state(model, nnx.BatchStat)) == spec.stats_count()
    # the folded form's count: test_onnx_initializers_hold_the_specs_folded_count, from a folded model's init


@pytest.mark.parametrize("name", NAMES)
def test_onnx_initializers_hold_the_specs_folded_count(name):
    """Every spec layer written once: conv kernels, one bias per conv a BatchNorm was folded into, the
    GroupNorms' scale and bias, SE's two convs, ECA's taps, the classifier; fixed tensors (the blur filter,
    shapes) are Constant nodes, not initializers.

    The model is already folded (a GroupNorm model cannot be: it is exported unfolded), its parameters
    zeros (the count, not the values, is tested here; test_io_onnx runs the graphs). The largest names take
    ~10 s each (proto and checker).
    """
    spec = _small_spec(name)
    norms = [layer for layer in spec.layers() if isinstance(layer, arch.Norm)]
    foldable = all(norm.foldable for norm in norms)
    model = _small_linen(name, folded=foldable)
    abstract = _abstract(model)
    if foldable:
        assert _size(abstract) == spec.param_count(folded=True)  # a folded model has params only
    proto = onnx_model(model, _zeros(abstract))
    assert sum(math.prod(t.dims) for t in proto.graph.initializer) == spec.param_count(folded=True)
    kinds = Counter(type(layer) for layer in spec.layers())
    blurs = sum(isinstance(layer, arch.Pool) and layer.kind == "blur" for layer in spec.layers())
    ops = Counter(n.op_type for n in proto.graph.node)
    assert ops["Conv"] == kinds[arch.Conv] + 2 * kinds[arch.SqueezeExcite] + kinds[arch.Eca] + blurs
    assert ops["InstanceNormalization"] == sum(not norm.foldable for norm in norms)
    biases = len(list(spec.conv_norm_pairs()))  # each folded BatchNorm gives its conv a bias
    assert len(proto.graph.initializer) == (
        kinds[arch.Conv] + biases + 2 * (len(norms) - biases) + 4 * kinds[arch.SqueezeExcite] + kinds[arch.Eca] + 2
    )


@pytest.mark.parametrize("name", ["resnet_tiny"])
def test_onnx_of_an_unfolded_model_holds_the_folded_count(name):
    model = rb.create_model(name)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    proto = onnx_model(model, variables)
    assert sum(math.prod(t.dims) for t in proto.graph.initializer) == arch.describe(name).param_count(folded=True)


# --- the name maps: bijections onto the variable trees ------------------------------------


def _with_own_modules(spec, names: dict) -> set:
    """The module paths holding variables: each named layer's, an SE's at its own ``fc1`` and ``fc2``."""
    paths = set()
    for layer in spec.weighted_layers():
        own = ("fc1", "fc2") if isinstance(layer, arch.SqueezeExcite) else ((),)
        paths |= {(*names[layer.name], *((o,) if o else ())) for o in own}
    return paths


@pytest.mark.parametrize("options", [{}, {"norm": "frozen", "num_classes": None}], ids=["plain", "frozen-headless"])
@pytest.mark.parametrize("name", NAMES)
def test_the_name_maps_are_bijections_onto_the_linen_and_nnx_trees(name, options):
    spec = _small_spec(name, **options)
    linen_map, nnx_map = arch.linen_names(spec), arch.nnx_names(spec)
    assert list(linen_map) == list(nnx_map)
    flat = traverse_util.flatten_dict(_abstract(_small_linen(name, **options)))
    linen_modules = {key[1:-1] for key in flat}
    assert len(set(linen_map.values())) == len(linen_map)  # one module a name
    assert _with_own_modules(spec, linen_map) == linen_modules  # and every module named
    nnx_modules = {tuple(path[:-1]) for path, _ in nnx.to_flat_state(nnx.state(_small_nnx(name, **options)))}
    assert len(set(nnx_map.values())) == len(nnx_map)
    assert _with_own_modules(spec, nnx_map) == nnx_modules
    # leaf by leaf: every Linen leaf has exactly one torchvision key, every key one leaf, shapes equal
    layout = tv._layout(spec)
    keys = [key for key, _, _, _ in layout]
    assert len(set(keys)) == len(keys)
    assert Counter(path for _, path, _, _ in layout) == Counter(flat.keys())
    for _, path, shape, _ in layout:
        assert tuple(flat[path].shape) == tuple(shape), path


@pytest.mark.parametrize("name", TORCHVISION)
def test_to_torchvision_writes_torchvisions_own_keys(name):
    with torch.device("meta"):  # keys and shapes, no weights
        theirs = getattr(torchvision.models, name)().state_dict()
    abstract = _abstract(rb.create_model(name))
    written = rb.to_torchvision(_zeros(abstract), name, as_numpy=True)
    assert list(written) == list(theirs)  # the same keys, in torchvision's order
    assert {k: tuple(v.shape) for k, v in written.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    assert len(written) == len(tv._layout(arch.describe(name))) + sum(k.endswith("num_batches_tracked") for k in theirs)


# --- the spec's geometry is each backend's ------------------------------------------------


def _pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)


def _conv_geometry(kernel_size, strides, padding, dilation, groups, features):
    pad = padding if isinstance(padding, str) else tuple(tuple(p) for p in padding)
    return tuple(kernel_size), _pair(strides), pad, _pair(dilation), groups, features


def _spec_geometry(conv: arch.Conv):
    p = conv.padding
    padding = "VALID" if conv.kernel == 1 else ((p, p), (p, p))
    return _conv_geometry(
        (conv.kernel,) * 2, conv.stride, padding, (conv.dilation,) * 2, conv.groups, conv.out_features
    )


def _dilatable(name) -> bool:
    """Whether the name's options allow replace_stride_with_dilation (torchvision's downsampling, bottlenecks)."""
    o = arch.options_of(name)
    return o["block"] != "basic" and not (o["avg_down"] or o["aa_layer"] or o["down_kernel_size"] > 1)


def _traced_paths(spec):
    """The Linen path of every conv and dense module in the spec's order (an SE's ``fc1``, ``fc2`` are dense)."""
    names, paths = arch.linen_names(spec), []
    for layer in spec.layers():
        if isinstance(layer, (arch.Conv, arch.Linear)):
            paths.append(names[layer.name])
        elif isinstance(layer, arch.SqueezeExcite):
            paths += [(*names[layer.name], "fc1"), (*names[layer.name], "fc2")]
    return paths


@pytest.mark.parametrize("name", NAMES)
def test_every_linen_and_nnx_conv_is_the_specs(name):
    options = {"replace_stride_with_dilation": (False, True, True)} if _dilatable(name) else {}
    spec = _small_spec(name, **options)
    by_linen = {path: layer for name_, path in arch.linen_names(spec).items() for layer in [_layer(spec, name_)]}
    model = _small_linen(name, **options)
    traced = traced_layers(model, _abstract(model), IMAGE)
    assert [tuple(layer.scope.path) for layer, _, _ in traced] == _traced_paths(spec)  # in the spec's order
    for layer, in_shape, _ in traced:
        if tuple(layer.scope.path) not in by_linen:  # an SE's dense layers: checked by the counts and the maps
            continue
        want = by_linen[tuple(layer.scope.path)]
        if isinstance(want, arch.Linear):
            assert (in_shape[-1], layer.features) == (want.in_features, want.out_features)
            continue
        got = _conv_geometry(
            layer.kernel_size,
            layer.strides,
            layer.padding,
            layer.kernel_dilation,
            layer.feature_group_count,
            layer.features,
        )
        assert got == _spec_geometry(want), want.name
        assert in_shape[-1] == want.in_features, want.name
    model = _small_nnx(name, **options)
    for name_, path in arch.nnx_names(spec).items():
        layer, module = _layer(spec, name_), model
        for part in path:
            module = module[part] if isinstance(part, int) else getattr(module, part)
        if isinstance(layer, arch.Conv):
            got = _conv_geometry(
                module.kernel_size,
                module.strides,
                module.padding,
                module.kernel_dilation,
                module.feature_group_count,
                module.out_features,
            )
            assert (got, module.in_features) == (_spec_geometry(layer), layer.in_features), name_


def _layer(spec, name):
    return next(layer for layer in spec.layers() if layer.name == name)


# --- built from the description alone: today's model, bit for bit -------------------------


def _record(model, variables, x):
    """``(path, type, numeric attributes, input shape)`` of every conv, dense and norm layer the model calls."""
    records = []

    def record(next_fun, args, kwargs, context):
        layer = context.module
        if context.method_name == "__call__" and type(layer).__name__ in (
            "Conv",
            "Dense",
            "BatchNorm",
            "FrozenBatchNorm",
        ):
            fields = {
                f: getattr(layer, f)
                for f in layer.__dataclass_fields__
                if f not in ("parent", "name") and not callable(getattr(layer, f))
            }
            if isinstance(fields.get("kernel_dilation"), int):  # flax reads 1 and (1, 1) alike
                fields["kernel_dilation"] = (fields["kernel_dilation"],) * 2
            records.append((tuple(layer.scope.path), type(layer).__name__, repr(fields), tuple(args[0].shape)))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(partial(model.apply, train=True, mutable=["batch_stats"]), variables, x)
    return records


@pytest.mark.parametrize("name", LEGACY)
def test_every_name_calls_todays_layers(name):
    """Abstractly, for every name: the same layers, at the same paths, with the same attributes and inputs,
    in the same order, as the hand-written ResNet of before (the numeric test below runs a sample)."""
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    old, new = legacy.create_model(name), rb.create_model(name)
    abstract = _abstract(new)
    assert jax.tree_util.tree_structure(_abstract(old)) == jax.tree_util.tree_structure(abstract)
    assert _record(old, abstract, x) == _record(new, abstract, x)


#: Every option on the small model, and every distinct block layout of the family (basic; bottleneck;
#: grouped) with one to three blocks a stage, scanned and not. All the names run at 32x32 would take
#: minutes; the abstract test above checks every name's layers against today's. ``grads``: the cases
#: whose backward pass an option changes (or that run the plain one) compare gradients too.
CASES = [
    ("resnet_tiny", {"grads": True}),
    ("resnet_tiny", {"stride_on": "1x1", "zero_init_last": True}),
    ("resnet_tiny", {"replace_stride_with_dilation": (False, True, True)}),
    ("resnet_tiny", {"norm": "frozen", "num_classes": None}),
    ("resnet_tiny", {"trainable_layers": 2, "grads": True}),
    ("resnet_tiny", {"remat": True, "grads": True}),
    ("resnet_tiny", {"dtype": jnp.bfloat16}),
    ("resnet_tiny", {"folded": True}),
    (None, {"block": "BottleneckBlock", "stage_sizes": (3, 2, 1, 1), "stem_width": 8, "scan": True, "grads": True}),
    (None, {"block": "BasicBlock", "stage_sizes": (2, 2, 1, 1), "stem_width": 8, "scan": True}),
    (
        None,
        {"block": "BottleneckBlock", "stage_sizes": (1, 1, 1, 1), "stem_width": 16, "groups": 32, "width_per_group": 4},
    ),
    ("resnet18", {}),
]


def _build(module, name, options):
    if name is not None:
        return module.create_model(name, **options)
    return module.ResNet(**{**options, "block": getattr(module, options["block"])})


def _case_id(case):
    name, options = case
    shown = "".join(f"-{k}={getattr(v, '__name__', v)}" for k, v in options.items() if k not in ("block", "grads"))
    return (name or options["block"]) + shown.replace(" ", "")


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_the_model_built_from_the_spec_is_todays_bit_for_bit(case):
    name, options = case
    options = dict(options)
    grads = options.pop("grads", False)
    old, new = _build(legacy, name, options), _build(ours, name, options)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
    if new.folded:  # the folded form of today's variables, applied by both
        plain = ours.create_model(name)
        _, variables = fold_batchnorm(plain, plain.init(jax.random.PRNGKey(0), x))
        np.testing.assert_array_equal(old.apply(variables, x), new.apply(variables, x))
        return
    variables = new.init(jax.random.PRNGKey(0), x)
    jax.tree_util.tree_map(np.testing.assert_array_equal, old.init(jax.random.PRNGKey(0), x), variables)
    np.testing.assert_array_equal(old.apply(variables, x), new.apply(variables, x))
    features = [m.apply(variables, x, features=True) for m in (old, new)]
    jax.tree_util.tree_map(np.testing.assert_array_equal, *features)

    def loss(model, params):
        y, updated = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
        return jnp.sum(jnp.asarray(y, jnp.float32) ** 2), (y, updated)

    if grads:
        (_, (y_old, s_old)), g_old = jax.value_and_grad(partial(loss, old), has_aux=True)(variables["params"])
        (_, (y_new, s_new)), g_new = jax.value_and_grad(partial(loss, new), has_aux=True)(variables["params"])
        jax.tree_util.tree_map(np.testing.assert_array_equal, g_old, g_new)
    else:
        _, (y_old, s_old) = loss(old, variables["params"])
        _, (y_new, s_new) = loss(new, variables["params"])
    np.testing.assert_array_equal(y_old, y_new)
    jax.tree_util.tree_map(np.testing.assert_array_equal, s_old, s_new)  # updated batch statistics


# --- the description's own checks ---------------------------------------------------------


def test_a_spec_is_data_and_its_names_torchvisions():
    spec = arch.describe("resnet50")
    block = next(spec.blocks())
    assert [layer.name for layer in block.all_layers] == [
        "layer1.0.conv1",
        "layer1.0.bn1",
        "layer1.0.act1",
        "layer1.0.conv2",
        "layer1.0.bn2",
        "layer1.0.act2",
        "layer1.0.conv3",
        "layer1.0.bn3",
        "layer1.0.downsample.0",
        "layer1.0.downsample.1",
    ]
    assert arch.linen_path(spec, "layer1.0.downsample.0") == ("layer1_0", "Conv_3")
    assert arch.linen_path(spec, "layer1.0.conv2") == ("layer1_0", "Conv_1")
    assert arch.nnx_path("layer1.0.downsample.0") == ("layer1", 0, "downsample", 0)
    assert arch.linen_names(spec, scan=True)["layer3.4.bn2"] == ("layer3_scan", "block", "BatchNorm_1")
    assert spec.param_count() == 25_557_032  # torchvision's resnet50
    assert spec == arch.describe(rb.create_model("resnet50"))  # from a model's attributes, the same spec
    assert spec.feature_info() == rb.feature_info("resnet50")


@pytest.mark.parametrize(
    "call,error,fragment",
    [
        (lambda: arch.describe("resnet5"), ValueError, "name must be one of resnet18"),
        (lambda: arch.describe("resnet50", block="squeeze"), ValueError, "block must be one of 'bottleneck'"),
        (lambda: arch.describe("resnet50", widht=3), TypeError, "unknown architecture options widht"),
        (lambda: arch.describe("resnet18", groups=2), ValueError, "basic blocks support only groups=1"),
        (
            lambda: arch.describe("resnet18", replace_stride_with_dilation=(False, False, True)),
            ValueError,
            "dilates C5 by 2, but basic blocks support only dilation=1",
        ),
        (lambda: arch.describe("resnet50", norm="layer"), ValueError, "norm must be one of 'batch', 'frozen', 'group'"),
        (lambda: arch.describe("resnet50", stem_type="deeper"), ValueError, "stem_type must be one of '', 'deep'"),
        (lambda: arch.describe("resnet50", attn_layer="cbam"), ValueError, "attn_layer must be one of None, 'se'"),
        (lambda: arch.describe("resnet50", aa_layer="blurpc"), ValueError, "aa_layer must be one of None, 'avg'"),
        (lambda: arch.describe("resnet50", attn_rd_ratio=0), ValueError, r"attn_rd_ratio must be a number in \(0, 1\]"),
        (
            lambda: arch.describe("resnet50", drop_path_rate=1.0),
            ValueError,
            r"drop_path_rate must be a number in \[0, 1\)",
        ),
        (lambda: arch.describe("resnet50", drop_rate=-0.1), ValueError, r"drop_rate must be a number in \[0, 1\)"),
        (lambda: arch.describe("resnet50", down_kernel_size=2), ValueError, "down_kernel_size must be odd; got 2"),
        (lambda: arch.describe("resnet50", avg_down="yes"), ValueError, "avg_down must be True or False; got 'yes'"),
        (
            lambda: arch.describe("resnet50", channels=(64, 128)),
            ValueError,
            "channels must be None or one width per stage",
        ),
        (lambda: arch.describe("resnet50", block_reduce_first=0), ValueError, "block_reduce_first must be a positive"),
        (
            lambda: arch.describe("resnet50d", replace_stride_with_dilation=(False, True, True)),
            ValueError,
            "is not supported with avg_down=True",
        ),
        (
            lambda: arch.describe("resnet50_gn", stem_width=48),
            ValueError,
            "norm='group' takes 32 groups, which must divide every norm's channels; bn1 has 48",
        ),
        (lambda: arch.describe("resnet50", stride_on="3X3"), ValueError, "stride_on must be one of '3x3', '1x1'"),
        (lambda: arch.describe("resnet50", num_classes=0), ValueError, "num_classes must be a positive integer; got 0"),
        (lambda: arch.describe("resnet50", stem_width=-8), ValueError, "stem_width must be a positive integer; got -8"),
        (lambda: arch.describe("resnet50", in_features=0), ValueError, "in_features must be a positive integer; got 0"),
        (lambda: arch.describe("resnet50", trainable_layers=9), ValueError, "trainable_layers must be .*; got 9"),
        (lambda: arch.describe("resnet50", groups=0), ValueError, "groups must be a positive integer; got 0"),
        (
            lambda: arch.describe("resnet50", width_per_group=1.5),
            TypeError,
            "width_per_group must be a positive integer",
        ),
        (lambda: arch.describe("resnet50", stage_sizes=(1,) * 5), ValueError, "stage_sizes must list 1 to 4 stages"),
        (lambda: arch.describe("resnet50", stage_sizes=(1, 0)), ValueError, "stage_sizes must be a positive integer"),
        (
            lambda: arch.describe("resnet50", replace_stride_with_dilation=(True,)),
            ValueError,
            r"replace_stride_with_dilation must be three booleans .*; got \(True,\)",
        ),
        (
            lambda: arch.describe("resnet50", replace_stride_with_dilation=(1, 0, 0)),
            ValueError,
            "replace_stride_with_dilation must be three booleans",
        ),
    ],
)
def test_bad_options_are_named(call, error, fragment):
    with pytest.raises(error, match=fragment):
        call()


def test_numpy_bools_are_booleans_for_dilation():
    spec = arch.describe("resnet50", replace_stride_with_dilation=tuple(np.array([False, True, True])))
    assert [s.stride for s in spec.stages] == [4, 8, 8, 8]


def _patched_spec(monkeypatch, **changes):
    """``arch.describe`` (which the Linen and NNX models call) with the stem's or head's fields ``changes``d."""
    real = arch.describe

    def describe(model=None, **options):
        spec = real(model, **options)
        stem = dataclasses.replace(spec.stem, **changes.get("stem", {}))
        head = spec.head if spec.head is None else dataclasses.replace(spec.head, **changes.get("head", {}))
        return dataclasses.replace(spec, stem=stem, head=head)

    monkeypatch.setattr(arch, "describe", describe)


@pytest.mark.parametrize(
    "changes,part,kind",
    [
        ({"head": {"kind": "squeeze"}}, "head", "squeeze"),
        ({"stem": {"pool": (arch.Pool("maxpool", "median", 3, 2, 1),)}}, "pool", "median"),
    ],
)
def test_an_unknown_head_or_pool_kind_is_named_in_linen_and_nnx(monkeypatch, changes, part, kind):
    _patched_spec(monkeypatch, **changes)
    with pytest.raises(ValueError, match=rf"{part} kind '{kind}' has no implementation here; known: '"):
        _abstract(rb.create_model("resnet_tiny"))
    with pytest.raises(ValueError, match=rf"{part} kind '{kind}' has no implementation here; known: '"):
        rnnx.create_model("resnet_tiny", rngs=nnx.Rngs(0))


def test_a_stem_without_pool_is_honoured_in_linen_and_nnx(monkeypatch):
    _patched_spec(monkeypatch, stem={"pool": ()})
    x = jnp.ones((1, 32, 32, 3))
    model = rb.create_model("resnet_tiny")
    variables = model.init(jax.random.PRNGKey(0), x)
    linen_out = model.apply(variables, x, features=True)
    assert linen_out["stem"].shape[1:3] == linen_out["C2"].shape[1:3] == (16, 16)  # no pool: C2 at stride 2
    nnx_out = rnnx.create_model("resnet_tiny", rngs=nnx.Rngs(0))(x, features=True)
    assert nnx_out["stem"].shape[1:3] == nnx_out["C2"].shape[1:3] == (16, 16)


def test_arch_imports_only_the_checks_and_errors_of_ours_and_no_jax():
    import ast
    import pathlib

    root = pathlib.Path(arch.__file__).parent
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert (
                    node.level == 1
                    or (node.level == 2 and (node.module or "").split(".")[0] in ("", "_checks", "errors"))
                    and all(a.name == "_checks" for a in node.names if not node.module)
                    or node.module == "__future__"
                    or node.module.split(".")[0]
                    in (
                        "collections",
                        "dataclasses",
                        "typing",
                    )
                ), (path.name, node.module)
            elif isinstance(node, ast.Import):
                assert all(
                    a.name.split(".")[0] not in ("jax", "flax", "numpy", "resnet_bottleneck") for a in node.names
                )


def test_linen_nnx_and_arch_defaults_agree():
    """Every architecture option defaults alike in the Linen ResNet, the NNX ResNet and ``arch.DEFAULTS``
    (so are the other options both models take, but ``conv``, each backend's own FastConv)."""
    import inspect

    linen = {f.name: f.default for f in dataclasses.fields(rb.ResNet) if f.default is not dataclasses.MISSING}
    params = inspect.signature(rnnx.ResNet.__init__).parameters.values()
    twin = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    for defaults, missing in ((linen, {"stage_sizes", "in_features"}), (twin, {"stage_sizes"})):
        assert set(arch.DEFAULTS) - set(defaults) == missing
        for key in set(arch.DEFAULTS) - missing:
            assert getattr(defaults[key], "kind", defaults[key]) == arch.DEFAULTS[key], key
    shared = (set(linen) & set(twin)) - set(arch.DEFAULTS) - {"conv", "parent", "name"}
    assert shared >= {"bn_momentum", "bn_epsilon", "axis_name", "dtype", "param_dtype"}
    assert {k: linen[k] for k in shared} == {k: twin[k] for k in shared}
