"""Cost analysis: torchvision's MAC counts, XLA's own count, the seed's arithmetic, and the CLI."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from helpers import abstract_init, one_line_error

from resnet_bottleneck import create_model, layer_costs, model_cost
from resnet_bottleneck.cli import main
from resnet_bottleneck.cost import bottleneck_params, spec_table

# torchvision's model table (GFLOPS column, which counts multiply-accumulates) at 224x224.
TORCHVISION_GMACS = {
    "resnet50": 4.089,
    "resnet101": 7.801,
    "resnet152": 11.514,
    "resnext50_32x4d": 4.23,
    "wide_resnet50_2": 11.398,
}


@pytest.mark.parametrize("name,gmacs", TORCHVISION_GMACS.items())
def test_macs_match_torchvision(name, gmacs):
    report = model_cost(name)
    assert abs(report["macs"] / (gmacs * 1e9) - 1) < 0.005
    assert report["image_size"] == 224 and report["model"] == name


def test_hand_count_of_one_layer():
    layers = {layer["path"]: layer for layer in layer_costs(create_model("resnet50"), *abstract("resnet50", 224))}
    stem = layers["conv1"]
    assert stem["output_shape"] == (1, 112, 112, 64)
    assert stem["macs"] == 112 * 112 * 7 * 7 * 3 * 64 and stem["params"] == 7 * 7 * 3 * 64
    grouped = {
        layer["path"]: layer
        for layer in layer_costs(create_model("resnext50_32x4d"), *abstract("resnext50_32x4d", 224))
    }
    conv = grouped["layer1_0/Conv_1"]  # 3x3, 128 -> 128 in 32 groups of 4
    assert conv["macs"] == 56 * 56 * 3 * 3 * 4 * 128 and conv["params"] == 3 * 3 * 4 * 128
    assert layers["fc"]["macs"] == 2048 * 1000 and layers["fc"]["params"] == 2048 * 1000 + 1000


def abstract(name, size):
    return abstract_init(create_model(name), (1, size, size, 3)), jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnext50_32x4d"])
@pytest.mark.parametrize("size", [64, 97])
def test_agrees_with_xla_cost_analysis(name, size):
    """XLA counts 2 flops per multiply-accumulate that reads the input, plus the elementwise work."""
    model = create_model(name)
    variables, x = abstract(name, size)
    xla_flops = jax.jit(lambda v, x: model.apply(v, x)).lower(variables, x).cost_analysis()["flops"]
    layers = layer_costs(model, variables, x)
    ours = 2 * sum(layer["macs_unpadded"] for layer in layers)
    assert ours <= xla_flops <= 1.03 * ours  # the rest: BatchNorm, ReLU, adds, pooling
    # torchvision's convention also counts the taps on zero padding: more than XLA's.
    assert sum(layer["macs"] for layer in layers) > sum(layer["macs_unpadded"] for layer in layers)


def test_seed_arithmetic():
    rows = spec_table()
    assert rows[0].params == 589_824  # one 3x3 conv, 256 -> 256: 9 * 256^2
    assert rows[1].params == 69_632  # 256*64 + 9*64*64 + 64*256
    assert round(rows[0].params / rows[1].params, 2) == 8.47
    assert rows[2].params == 75_497_472  # two 3x3 convs at 2048: ~75M
    assert rows[3].params == bottleneck_params(512, 2048) == 4_456_448
    assert [r.macs for r in rows] == [r.params * 56 * 56 for r in rows]
    assert [r.macs for r in spec_table(size=7)] == [r.params * 49 for r in rows]


def test_cost_cli_json():
    result = subprocess.run(
        [sys.executable, "-m", "resnet_bottleneck", "cost", "--model", "resnet50", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["model"] == "resnet50" and report["image_size"] == 224
    assert report["params"] == 25_557_032 and abs(report["macs"] / 4.089e9 - 1) < 0.005


def test_cost_cli_spec_table_and_plot(tmp_path, capsys):
    assert main(["cost", "--plot", str(tmp_path / "cost.png")]) == 0
    out = capsys.readouterr().out
    assert "589,824" in out and "69,632" in out and "75,497,472" in out and "8.47x fewer" in out
    png = (tmp_path / "cost.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert main(["cost", "--json", "--size", "7"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows"][0]["macs"] == 589_824 * 49 and round(report["params_ratio"], 2) == 8.47


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["cost", "--model", "resnet51"], "argument --model: must be one of"),
        (
            ["cost", "--model", "resnet50", "--image-size", "0"],
            "argument --image-size: must be a positive integer; got 0",
        ),
        (["cost", "--size", "0"], "argument --size: must be a positive integer; got 0"),
        (
            ["cost", "--plot", "/no/such/dir/x.png"],
            "argument --plot: cannot write /no/such/dir/x.png: directory /no/such/dir does not exist",
        ),
    ],
)
def test_cost_cli_bad_input(args, fragment, capsys):
    assert main(args) == 2
    captured = capsys.readouterr()
    one_line_error(captured.err, fragment, prog="resnet-bottleneck cost")
    assert captured.out == ""  # nothing printed before the error, not even the table


# --- timm's layers: attention and pools ---------------------------------------------------


def costs_of(name, size):
    return layer_costs(create_model(name), *abstract(name, size))


def test_hand_count_of_timms_layers():
    """SE's two 1x1 convs, ECA's 1-D conv, the blur pool as a depthwise conv, the average-pool shortcut
    (ceil_mode, padding not counted), each counted by hand; pools in call order."""
    se = {c["path"]: c for c in costs_of("seresnet18", 64)}
    assert se["layer1_0/se/fc1"]["macs"] == 64 * 8 and se["layer1_0/se/fc2"]["macs"] == 8 * 64  # 64 / 16 = 4 -> 8
    eca = {c["path"]: c for c in costs_of("ecaresnet26t", 64)}["layer1_0/se"]
    assert eca["kind"] == "Eca" and eca["params"] == 5  # 256 channels: timm's kernel 5
    assert eca["macs"] == 256 * 5 and eca["macs_unpadded"] == 256 * 5 - (2 + 1) * 2  # 2 taps, then 1, at each end
    blur = costs_of("resnetblur18", 64)
    paths = [c["path"] for c in blur]
    assert paths[:4] == ["conv1", "maxpool_0", "maxpool_1", "layer1_0/Conv_0"]
    pool = blur[2]  # 3x3 binomial filter, stride 2, reflect padding 1, on the 32x32x64 stem
    assert pool["kind"] == "BlurPool" and pool["output_shape"] == (1, 16, 16, 64)
    assert pool["macs"] == pool["macs_unpadded"] == 16 * 16 * 9 * 64 and blur[1]["macs"] == 0
    down = {c["path"]: c for c in costs_of("resnet18d", 97)}["layer2_0/downsample_0"]  # 25x25 -> 13x13 (ceil)
    assert down["kind"] == "AvgPool" and down["output_shape"] == (1, 13, 13, 64)
    assert down["macs"] == 13 * 13 * 4 * 64 and down["macs_unpadded"] == 25 * 25 * 64  # each input read once
    assert [c["path"] for c in costs_of("resnet18d", 64)].index("layer2_0/downsample_0") == [
        c["path"] for c in costs_of("resnet18d", 64)
    ].index("layer2_0/Conv_2") - 1  # the main path, then the shortcut's pool and conv


@pytest.mark.parametrize("name", ["resnet18d", "seresnet18", "ecaresnet26t", "resnetblur18", "resnetaa34d"])
def test_timms_layers_agree_with_xla_cost_analysis(name):
    model = create_model(name)
    variables, x = abstract(name, 97)
    xla_flops = jax.jit(lambda v, x: model.apply(v, x)).lower(variables, x).cost_analysis()["flops"]
    ours = 2 * sum(layer["macs_unpadded"] for layer in layer_costs(model, variables, x))
    assert ours <= xla_flops <= 1.03 * ours
    assert model_cost(name, 97)["macs"] == sum(layer["macs"] for layer in layer_costs(model, variables, x))
