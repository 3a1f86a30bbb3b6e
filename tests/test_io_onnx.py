"""export_onnx: ONNX Runtime computes what our eval-mode model computes, from a canonical graph."""

import functools
import json
import platform
import subprocess
import sys
from collections import Counter
from functools import partial
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from flax import traverse_util
from helpers import abstract_init, assert_close_to_scale, random_torchvision, random_variables

from resnet_bottleneck import CONFIGS, BottleneckBlock, ResNet, arch, create_model, errors, fold_batchnorm
from resnet_bottleneck.io.onnx import LAYOUTS, OPSET, export_onnx, load_onnx, onnx_model, session_options
from resnet_bottleneck.io.torchvision import from_torchvision

PARITY_MODELS = ("resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2")
CANONICAL_OPS = {"Conv", "Relu", "MaxPool", "Add", "GlobalAveragePool", "Flatten", "Gemm"}


def session(path_or_proto):
    source = path_or_proto.SerializeToString() if isinstance(path_or_proto, onnx.ModelProto) else str(path_or_proto)
    return ort.InferenceSession(source, session_options(), providers=["CPUExecutionProvider"])


def run(sess, x_nhwc, layout):
    x = x_nhwc if layout == "NHWC" else x_nhwc.transpose(0, 3, 1, 2)
    return sess.run(None, {"images": np.ascontiguousarray(x, np.float32)})[0]


def eval_output(model, variables, x):
    return np.asarray(jax.jit(partial(model.apply, train=False))(variables, x))


def images(batch, size, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, size, size, 3)).astype(np.float32)


# --- the family: parity with JAX and the graph's shape, four models --------------------


@pytest.fixture(scope="module", params=PARITY_MODELS)
def exported(request, tmp_path_factory):
    name = request.param
    tv = random_torchvision(name, seed=7)
    model, variables = from_torchvision(tv.state_dict(), name)
    root = tmp_path_factory.mktemp(name)
    files = {
        layout: export_onnx(model, variables, root / f"{name}_{layout}.onnx", layout=layout, metadata={"model": name})
        for layout in LAYOUTS
    }
    return name, tv, model, variables, files


@pytest.mark.slow
def test_onnx_runtime_agrees_with_the_eval_model(exported):
    """One dynamic-batch file per layout; even and odd sizes; batches 1 and 5; 1e-4 of the logits' scale."""
    name, _, model, variables, files = exported
    sessions = {layout: session(path) for layout, path in files.items()}
    for size in (64, 57):
        x = images(5, size, seed=size)
        expected = eval_output(model, variables, x)
        for layout, sess in sessions.items():
            for batch in (1, 5):
                assert_close_to_scale(run(sess, x[:batch], layout), expected[:batch], what=(name, layout, size, batch))
    # the layout is honoured: the same image with height and width swapped is another image
    swapped = run(sessions["NHWC"], x[:1].transpose(0, 2, 1, 3), "NHWC")
    assert np.abs(swapped - expected[:1]).max() > 1e-2 * np.abs(expected[:1]).max()


def _torch_convs(tv):
    """torchvision's convs in definition order: (out, in per group, kh, kw, stride, padding, groups, dilation)."""
    return [
        (*m.weight.shape, m.stride[0], m.padding[0], m.groups, m.dilation[0])
        for m in tv.modules()
        if isinstance(m, torch.nn.Conv2d)
    ]


def _onnx_convs(proto):
    """The graph's convs as :func:`_torch_convs` lists them; a conv whose groups the exporter merged (its weight
    the parameter placed block diagonally: Reshape, Mul by a 0/1 mask, Reshape) with its parameter's shape and
    the groups that parameter's channels make of its input."""
    weights = {t.name: tuple(t.dims) for t in proto.graph.initializer}
    producer = {out: node for node in proto.graph.node for out in node.output}
    convs = []
    for node in proto.graph.node:
        if node.op_type == "Conv":
            a = {attr.name: onnx.helper.get_attribute_value(attr) for attr in node.attribute}
            assert a["pads"][:2] == a["pads"][2:] and len(set(a["strides"])) == 1  # symmetric, square
            weight, groups = node.input[1], a["group"]
            if weight not in weights:
                merged, placed = producer[weight], producer[producer[weight].input[0]]
                split = producer[placed.input[0]]
                assert (merged.op_type, placed.op_type, split.op_type) == ("Reshape", "Mul", "Reshape"), node.name
                weight = split.input[0]
                in_channels = groups * onnx.numpy_helper.to_array(producer[merged.input[1]].attribute[0].t)[1]
                groups = in_channels // weights[weight][1]
            convs.append((*weights[weight], a["strides"][0], a["pads"][0], groups, a["dilations"][0]))
    return convs


def test_the_graph_is_canonical(exported):
    """One Conv per torchvision conv, with its geometry, in order; no BatchNormalization; dynamic batch."""
    name, tv, _, variables, files = exported
    for layout, path in files.items():
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto, full_check=True)
        ops = Counter(node.op_type for node in proto.graph.node)
        assert "BatchNormalization" not in ops
        # resnext50_32x4d's 4 and 8 channels a group: merged to 16 (ONNX Runtime's channel block), the kernel
        # placed by Reshape, Mul and Reshape; its 16 and 32 are written as they are
        narrow = sum(
            1 < m.groups and m.in_channels // m.groups < 16 for m in tv.modules() if isinstance(m, torch.nn.Conv2d)
        )
        merging = {"Constant", "Reshape", "Mul"} if narrow else set()
        assert set(ops) - CANONICAL_OPS == merging | ({"Transpose"} if layout == "NHWC" else set())
        assert ops["Mul"] == narrow
        assert ops["Transpose"] == (1 if layout == "NHWC" else 0)
        assert _onnx_convs(proto) == _torch_convs(tv)
        kernels = [
            leaf
            for path, leaf in traverse_util.flatten_dict(variables["params"]).items()
            if path[-1] == "kernel" and leaf.ndim == 4
        ]
        assert ops["Conv"] == len(kernels)
        assert ops["MaxPool"] == ops["GlobalAveragePool"] == ops["Gemm"] == 1
        assert all(i.data_type == onnx.TensorProto.FLOAT for i in proto.graph.initializer)
        assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [OPSET] and OPSET >= 17
        dims = proto.graph.input[0].type.tensor_type.shape.dim
        assert dims[0].dim_param and not dims[0].HasField("dim_value")  # dynamic batch
        channel = dims[1] if layout == "NCHW" else dims[3]
        assert channel.dim_value == 3
        assert {p.key: p.value for p in proto.metadata_props} == {
            "format": "resnet-bottleneck onnx",
            "layout": layout,
            "model": name,
        }


# --- every option of the family, on small models ----------------------------------------


SMALL = dict(block=BottleneckBlock, stage_sizes=(2, 1, 2, 1), stem_width=8, num_classes=10)


def small_model(**options):
    return _small_model(tuple(sorted(options.items())))


@functools.cache  # built once per options: the tests share it
def _small_model(options):
    model = ResNet(**{**SMALL, **dict(options)})
    return model, random_variables(model, (1, 32, 32, 3))


@pytest.mark.parametrize(
    "options",
    [
        dict(stride_on="1x1"),
        dict(replace_stride_with_dilation=(False, True, True)),
        dict(groups=4, width_per_group=8),
        dict(norm="frozen"),
        dict(num_classes=None),
    ],
    ids=["stride_on_1x1", "output_stride_8", "groups_4", "frozen_norm", "headless"],
)
def test_options_export_exactly(options, tmp_path):
    model, variables = small_model(**options)
    x = images(3, 41)
    expected = eval_output(model, variables, x)  # a headless model's C5 map is NHWC
    headless = options.get("num_classes", 10) is None
    for layout in LAYOUTS if headless else ("NCHW",):  # the layouts' own test is the family's
        proto = onnx.load(str(export_onnx(model, variables, tmp_path / f"{layout}.onnx", layout=layout)))
        got = run(session(proto), x, layout)
        if headless and layout == "NCHW":
            got = got.transpose(0, 2, 3, 1)
        assert_close_to_scale(got, expected, what=(options, layout))
    dilations = {tuple(a.ints) for n in proto.graph.node for a in n.attribute if a.name == "dilations"}
    dilated = "replace_stride_with_dilation" in options
    assert dilations == ({(1, 1), (2, 2)} if dilated else {(1, 1)})  # C5 has one block: it keeps C4's 2


def assert_same_graph(ours, theirs):
    """The same nodes, inputs, outputs and metadata; the same weights up to float32 rounding."""
    assert list(ours.graph.node) == list(theirs.graph.node)
    assert (ours.graph.input, ours.graph.output, ours.metadata_props) == (
        theirs.graph.input,
        theirs.graph.output,
        theirs.metadata_props,
    )
    assert [i.name for i in ours.graph.initializer] == [i.name for i in theirs.graph.initializer]
    for a, b in zip(ours.graph.initializer, theirs.graph.initializer):
        assert_close_to_scale(onnx.numpy_helper.to_array(a), onnx.numpy_helper.to_array(b), rel=1e-6, what=a.name)


def test_scanned_folded_and_bf16_models_export_the_same_graph(tmp_path):
    model, variables = small_model()
    graph = onnx_model(model, variables)
    x = images(2, 32)
    expected = eval_output(model, variables, x)
    assert_close_to_scale(run(session(graph), x, "NCHW"), expected)
    from resnet_bottleneck.models import scan_variables

    assert onnx_model(model.clone(scan=True), scan_variables(variables)) == graph
    assert_same_graph(onnx_model(*fold_batchnorm(model, variables)), graph)  # folded eagerly, not jitted: rounding
    # bf16 compute: the export is the float32 model
    assert onnx_model(model.clone(dtype=jnp.bfloat16), variables) == graph
    bf16_params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.bfloat16), variables)
    bf16 = onnx_model(model.clone(param_dtype=jnp.bfloat16), bf16_params)
    assert all(i.data_type == onnx.TensorProto.FLOAT for i in bf16.graph.initializer)
    assert_close_to_scale(run(session(bf16), x, "NCHW"), expected, rel=2e-2)  # only the weights' rounding


@pytest.mark.parametrize("layout,stem_type", [("NCHW", ""), ("NHWC", ""), ("NHWC", "deep")])
def test_a_model_for_grey_images_takes_one_channel(layout, stem_type):
    """The input's channels are the model's (its first conv's, a deep stem's conv1_0), not always 3."""
    model = ResNet(**SMALL, stem_type=stem_type)
    variables = random_variables(model, (1, 32, 32, 1))
    proto = onnx_model(model, variables, layout=layout)
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == (["batch", 1, "height", "width"] if layout == "NCHW" else ["batch", "height", "width", 1])
    x = images(2, 40)[..., :1]
    assert_close_to_scale(run(session(proto), x, layout), eval_output(model, variables, x))


def test_fixed_batch_and_metadata(tmp_path):
    model, variables = small_model()
    path = export_onnx(
        model,
        variables,
        tmp_path / "b2.onnx",
        batch=2,
        metadata={
            "model": "small",
            "classes": [f"c{i}" for i in range(10)],
            "image_size": 32,
            "mean": [0.5, 0.5, 0.5],
            "std": [0.25, 0.25, 0.25],
        },
    )
    assert [p.name for p in tmp_path.iterdir()] == ["b2.onnx"]
    proto = onnx.load(str(path))
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["model"] == "small" and props["image_size"] == "32" and props["std"] == "[0.25, 0.25, 0.25]"
    classifier = load_onnx(path)
    assert (classifier.layout, classifier.batch, classifier.image_size, classifier.num_classes) == ("NCHW", 2, 32, 10)
    assert json.loads(classifier.metadata["classes"]) == [f"c{i}" for i in range(10)] and classifier.mean == (0.5,) * 3
    x = images(5, 32)  # run in chunks of the fixed batch, the last one padded
    assert_close_to_scale(classifier(x), eval_output(model, variables, x))

    fixed = onnx_model(model, variables, layout="NHWC", image_size=36)
    assert [d.dim_param or d.dim_value for d in fixed.graph.input[0].type.tensor_type.shape.dim] == ["batch", 36, 36, 3]
    assert {p.key: p.value for p in fixed.metadata_props}["image_size"] == "36"
    x = images(3, 36)
    assert_close_to_scale(run(session(fixed), x, "NHWC"), eval_output(model, variables, x))


def _blocked_layout_cpu() -> bool:
    """Whether ONNX Runtime's CPU kernels have the NCHWc layout here (x86-64 with AVX2 or AVX-512)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return platform.machine() in ("x86_64", "AMD64") and (" avx2" in flags or " avx512f" in flags)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_fixed_size_keeps_squeeze_excitation_and_narrow_groups_in_onnx_runtimes_layout(layout, tmp_path):
    """At a fixed size each SE gate is broadcast by a nearest Resize (a copy: the logits of the dynamic-size
    graph's broadcasting Mul), with the input's batch name on its shape; 4 channels a group are merged to
    16. ONNX Runtime then runs the whole graph in its NCHWc layout: no unblocked conv and one reorder (the
    head's), where the old graph reordered each SE block's map out and back (issue 24's speed item)."""
    # 4 and 8 channels a group in layers 1 and 2, and every width a multiple of 16 (SE's reduced ones too)
    model, variables = small_model(attn_layer="se", attn_rd_ratio=0.25, groups=8, width_per_group=16, stem_width=16)
    fixed = onnx_model(model, variables, layout=layout, image_size=40)
    dynamic = onnx_model(model, variables, layout=layout)
    ops = Counter(node.op_type for node in fixed.graph.node)
    se_blocks = sum(isinstance(layer, arch.SqueezeExcite) for layer in arch.describe(model).layers())
    assert ops["Resize"] == se_blocks == Counter(node.op_type for node in dynamic.graph.node)["Sigmoid"] > 0
    maps = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in fixed.graph.value_info}
    for node in fixed.graph.node:
        if node.op_type == "Resize":
            a = _attrs(node)
            assert (a["mode"], a["coordinate_transformation_mode"], a["nearest_mode"]) == (
                b"nearest",
                b"asymmetric",
                b"floor",
            )
            assert maps[node.output[0]][0] == "batch" and maps[node.output[0]][2] in (10, 5, 3, 2)
    x = images(3, 40)
    expected = eval_output(model, variables, x)
    got = run(session(fixed), x, layout)
    assert_close_to_scale(got, expected)
    assert_close_to_scale(got, run(session(dynamic), x, layout), rel=1e-6)
    assert_close_to_scale(run(session(fixed), x[:1], layout), expected[:1])
    if not _blocked_layout_cpu():
        pytest.skip("ONNX Runtime's NCHWc layout needs an x86-64 CPU with AVX2 or AVX-512")

    def optimized(proto):
        options = session_options()
        options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
        ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return Counter(node.op_type for node in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)

    blocked = optimized(fixed)
    assert "FusedConv" not in blocked and blocked["ReorderInput"] == 0 and blocked["ReorderOutput"] == 1
    assert blocked["Upsample"] == se_blocks  # the Resizes, blocked
    assert optimized(dynamic)["ReorderOutput"] > se_blocks  # the broadcasting Mul's reorders (the oracle's contrast)


@pytest.mark.parametrize(
    "kwargs,error,fragment",
    [
        (dict(layout="NWHC"), ValueError, "layout must be one of 'NCHW', 'NHWC'; got 'NWHC'"),
        (dict(batch=0), ValueError, "batch must be a positive integer; got 0"),
        (dict(batch=2.0), TypeError, "batch must be a positive integer"),
        (dict(metadata={"layout": "NHWC"}), ValueError, "metadata keys must be strings other than format, layout"),
        (dict(metadata={"classes": ["a", "b"]}), ValueError, "metadata 'classes' has 2 names for 10 classes"),
        (dict(metadata=[("model", "x")]), TypeError, "metadata must be a mapping"),
        (dict(image_size=-3), ValueError, "image_size must be a positive integer; got -3"),
        (
            dict(image_size=64, metadata={"image_size": 224}),
            ValueError,
            "metadata['image_size'] is 224, but image_size=64",
        ),
    ],
)
def test_bad_arguments_are_named(kwargs, error, fragment, tmp_path):
    model, variables = small_model()
    with pytest.raises(error) as info:
        export_onnx(model, variables, tmp_path / "x.onnx", **kwargs)
    assert fragment in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_wrong_model_or_variables_are_refused(tmp_path):
    model, variables = small_model()
    with pytest.raises(TypeError, match="model must be a resnet_bottleneck ResNet; got Dense"):
        export_onnx(nn.Dense(3), variables, tmp_path / "x.onnx")
    with pytest.raises(ValueError, match=r"variables do not fit the model: .*wrongly shaped: .*params/fc/kernel"):
        export_onnx(model.clone(num_classes=7), variables, tmp_path / "x.onnx")
    with pytest.raises(errors.FileError, match="does not exist"):
        export_onnx(model, variables, tmp_path / "no" / "x.onnx")
    assert list(tmp_path.iterdir()) == []


def test_the_library_does_not_import_onnx():
    code = (
        "import sys, resnet_bottleneck, resnet_bottleneck.io, resnet_bottleneck.cli;"
        "print(sorted(m for m in ('onnx', 'onnxruntime') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- timm's family: every layer kind, one name of every option combination -----------------

#: One name of every combination of timm's options; ``(name or options, sizes)``: an odd and an even size
#: (height x width), even only for the average-pool AA names (timm itself fails on odd ones).
ODD_AND_EVEN = ((65, 47), (64, 64))
TIMM_CASES = {
    "resnet10t": ODD_AND_EVEN,  # tiered deep stem, avg_down
    "resnet14t": ODD_AND_EVEN,
    "resnet18d": ODD_AND_EVEN,  # deep stem, avg_down on basic blocks
    "seresnet18": ODD_AND_EVEN,  # SE
    "seresnext26d_32x4d": ODD_AND_EVEN,  # SE, groups, deep stem, avg_down
    "ecaresnet26t": ODD_AND_EVEN,  # ECA
    "ecaresnetlight": ODD_AND_EVEN,
    "resnetblur18": ODD_AND_EVEN,  # BlurPool in the stem and the strided blocks
    "resnetaa34d": ((64, 64), (64, 96)),  # average-pool AA: even maps at every stride (sizes divisible by 32)
    "resnetrs50": ODD_AND_EVEN,  # the stem's pool a conv, SE at 1/4
    "resnet50_gn": ODD_AND_EVEN,  # GroupNorm: written unfolded
    # senet154's options on one block a stage, with drop path and dropout (identities at inference)
    "senet154_reduced": ODD_AND_EVEN,
}


def timm_case(name):
    if name == "senet154_reduced":
        config = {**CONFIGS["senet154"], "stage_sizes": (1, 1, 1, 1), "groups": 8}
        assert config["stem_type"] == "deep" and config["down_kernel_size"] == 3 and config["block_reduce_first"] == 2
        return ResNet(**config, num_classes=10, drop_path_rate=0.1, drop_rate=0.25)
    return create_model(name, num_classes=10)


def inference_variables(model, seed=3):
    """Random parameters (GroupNorm's too) and BatchNorm statistics (where the model has them)."""
    g = np.random.default_rng(seed)
    shapes = abstract_init(model, (1, 64, 64, 3))

    def param(s):
        fan_in = np.prod(s.shape[:-1]) if len(s.shape) > 1 else 100
        return (g.standard_normal(s.shape) / np.sqrt(fan_in)).astype(np.float32)

    variables = {"params": jax.tree_util.tree_map(param, shapes["params"])}
    if "batch_stats" in shapes:
        variables["batch_stats"] = jax.tree_util.tree_map(
            lambda s: (0.5 + g.random(s.shape)).astype(np.float32), shapes["batch_stats"]
        )
    return variables


def _attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


@pytest.mark.slow
@pytest.mark.parametrize("name", TIMM_CASES)
def test_timm_names_export_within_1e4_of_xla(name):
    """ONNX Runtime's logits within 1e-4 of the logits' scale of XLA's eval-mode ones, random weights and
    statistics, at an odd and an even size; the graph's initializers hold the spec's folded count; each
    layer kind written as the ONNX ops it is (timm's pooling arithmetic as attributes)."""
    model = timm_case(name)
    variables = inference_variables(model)
    proto = onnx_model(model, variables)
    sess = session(proto)
    apply = jax.jit(partial(model.apply, train=False))
    for i, (h, w) in enumerate(TIMM_CASES[name]):
        x = np.random.default_rng(i).standard_normal((2, h, w, 3)).astype(np.float32)
        expected = np.asarray(apply(variables, x))
        assert_close_to_scale(run(sess, x, "NCHW"), expected, what=(name, h, w))

    spec = arch.describe(model)
    assert sum(np.prod(t.dims) for t in proto.graph.initializer) == spec.param_count(folded=True)
    layers = list(spec.layers())
    ops = Counter(node.op_type for node in proto.graph.node)
    pools = Counter(layer.kind for layer in layers if isinstance(layer, arch.Pool))
    attention = Counter(type(layer) for layer in layers)
    assert ops["Sigmoid"] == attention[arch.SqueezeExcite] + attention[arch.Eca]
    assert ops["MaxPool"] == pools["max"] and ops["AveragePool"] == pools["avg"]
    assert ops["Pad"] == pools["blur"] and ops["GlobalAveragePool"] == 1 + ops["Sigmoid"]
    assert ops["Relu"] == sum(isinstance(layer, arch.Act) for layer in layers) + attention[arch.SqueezeExcite] + len(
        list(spec.blocks())
    )
    assert ("BatchNormalization" not in ops) and ops["InstanceNormalization"] == (
        sum(isinstance(layer, arch.Norm) for layer in layers) if model.norm == "group" else 0
    )
    shortcut_pools = {layer.name for b in spec.blocks() for layer in b.shortcut.layers if isinstance(layer, arch.Pool)}
    for node in proto.graph.node:
        if node.op_type == "AveragePool" and "downsample" in node.name:
            assert _attrs(node)["ceil_mode"] == 1 and _attrs(node)["count_include_pad"] == 0, node.name
    assert sum(n.op_type == "AveragePool" and "downsample" in n.name for n in proto.graph.node) == len(shortcut_pools)
    for node in proto.graph.node:
        if node.op_type == "Pad":
            assert _attrs(node)["mode"] == b"reflect"


def test_a_groupnorm_model_is_exported_unfolded_and_refused_by_fold_batchnorm():
    model = ResNet(**{**SMALL, "stem_width": 32, "stage_sizes": (1, 1, 1, 1)}, norm="group")
    variables = inference_variables(model)
    assert "batch_stats" not in variables
    with pytest.raises(ValueError, match="norm='group' cannot be folded: a GroupNorm normalises each image"):
        fold_batchnorm(model, variables)
    proto = onnx_model(model, variables)
    x = images(2, 37)
    assert_close_to_scale(run(session(proto), x, "NCHW"), eval_output(model, variables, x))
    # the GroupNorm's scale and bias are the model's own, per channel
    scale = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}["bn1/scale"]
    np.testing.assert_array_equal(scale.ravel(), variables["params"]["bn1"]["scale"])
