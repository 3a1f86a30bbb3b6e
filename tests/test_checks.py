"""One definition of each argument check: the command line, the settings of a run and the Python API
give the same verdict for the same value, and that verdict is the one written out here by hand.

Each oracle below is the rule itself (``n > 0``, ``0 <= n < 2**32``, ...), not the library's code;
the command line is asked through its real parser (``build_parser``), the settings through
``Config``/``RunOptions.check``, the Python API through the functions the models and backbones call.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st

from resnet_bottleneck import CONFIGS, _checks, create_fpn_backbone, freeze
from resnet_bottleneck.cli import build_parser
from resnet_bottleneck.cli._common import UsageError
from resnet_bottleneck.errors import ConfigError, InputError, SettingError
from resnet_bottleneck.training import Config, RunOptions


def cli(*argv: str) -> str | None:
    """None if the real parser takes ``argv``, else its error message (``argument --flag: ...``)."""
    try:
        build_parser().parse_args(list(argv))
    except UsageError as err:
        return str(err)
    return None


def settings(cls, **values) -> str | None:
    """None if ``cls(**values).check()`` passes, else the message after the field's name."""
    try:
        cls(**values).check()
    except ConfigError as err:
        return err.message
    return None


def library(check, *args) -> str | None:
    """None if the Python API's check passes, else its message."""
    try:
        check(*args)
    except (TypeError, ValueError) as err:
        return str(err)
    return None


#: (kind, a CLI flag of that kind as (command, flag), a setting of that kind as (class, field), the rule)
INTEGER_KINDS = [
    ("positive_int", ("forward", "--mid"), (Config, "epochs"), lambda n: n > 0),
    ("positive_int", ("cost", "--image-size"), (RunOptions, "keep"), lambda n: n > 0),
    ("count", ("train", "--workers"), (RunOptions, "workers"), lambda n: n >= 0),
    ("seed", ("forward", "--seed"), (Config, "seed"), lambda n: 0 <= n < 2**32),
    ("seed", ("train", "--seed"), (Config, "seed"), lambda n: 0 <= n < 2**32),
    ("trainable_layers", ("train", "--trainable-layers"), (Config, "trainable_layers"), lambda n: 0 <= n <= 5),
]

FLOAT_KINDS = [
    ("non_negative", ("train", "--lr"), (Config, "learning_rate"), lambda x: math.isfinite(x) and x >= 0),
    ("non_negative", ("train", "--weight-decay"), (Config, "weight_decay"), lambda x: math.isfinite(x) and x >= 0),
    ("fraction", ("train", "--test-fraction"), (Config, "test_fraction"), lambda x: 0 < x < 1),
    ("below_one", ("train", "--label-smoothing"), (Config, "label_smoothing"), lambda x: 0 <= x < 1),
]

EXPECTED = {
    "positive_int": "must be a positive integer",
    "count": "must be an integer >= 0",
    "seed": "must be an integer in [0, 2**32)",
    "trainable_layers": "must be an integer from 0 to 5 (how many of layer4, layer3, layer2, layer1, conv1 learn)",
    "non_negative": "must be a finite number >= 0",
    "fraction": "must be in (0, 1)",
    "below_one": "must be in [0, 1)",
}


def _agree(kind, where, setting, rule, value, text):
    command, flag = where
    cls, field = setting
    ours = cli(command, f"{flag}={text}")
    theirs = settings(cls, **{field: value})
    api = library(_checks.KINDS[kind].check, field, value)
    verdict = rule(value)
    assert (ours is None, theirs is None, api is None) == (verdict, verdict, verdict), (ours, theirs, api)
    if not verdict:  # the same words everywhere, each with its own way of naming the argument
        tail = f"{EXPECTED[kind]}; got {value!r}"
        assert ours == f"argument {flag}: {tail}"
        assert theirs == tail
        assert api == f"{field} {tail}"


@pytest.mark.parametrize("kind, where, setting, rule", INTEGER_KINDS)
@given(n=st.one_of(st.integers(-10, 10), st.integers(-(2**40), 2**40), st.sampled_from([2**32 - 1, 2**32])))
def test_integers_get_one_verdict(kind, where, setting, rule, n):
    _agree(kind, where, setting, rule, n, str(n))


@pytest.mark.parametrize("kind, where, setting, rule", FLOAT_KINDS)
@given(x=st.one_of(st.floats(-2, 2), st.sampled_from([0.0, 1.0, -0.0, 1e-300, math.inf, -math.inf, math.nan])))
def test_floats_get_one_verdict(kind, where, setting, rule, x):
    command, flag = where
    cls, field = setting
    ours, theirs = cli(command, f"{flag}={x!r}"), settings(cls, **{field: x})
    api = library(_checks.KINDS[kind].check, field, x)
    verdict = rule(x)
    assert (ours is None, theirs is None, api is None) == (verdict, verdict, verdict), (ours, theirs, api)


@pytest.mark.parametrize("kind, where, setting, rule", INTEGER_KINDS + FLOAT_KINDS)
@given(text=st.text(max_size=8).filter(lambda t: t != "--"))  # argparse itself drops a "--" value
def test_text_that_is_no_number_is_refused_as_the_library_says(kind, where, setting, rule, text):
    """Whatever the text, the CLI accepts it exactly when it parses to a number the library accepts."""
    command, flag = where
    convert = float if kind in ("non_negative", "fraction", "below_one") else int
    try:
        value = convert(text)
    except ValueError:
        value = None
    ours = cli(command, f"{flag}={text}")
    if value is None:
        assert ours == f"argument {flag}: {EXPECTED[kind]}; got {text!r}"
    else:
        assert (ours is None) == (library(_checks.KINDS[kind].check, "x", value) is None) == rule(value)


@pytest.mark.parametrize(
    "value, integer",
    [
        (np.int64(3), True),
        (np.int32(3), True),
        (np.uint8(3), True),
        (np.int64(0), True),
        (0, True),
        (True, False),
        (np.bool_(True), False),
        (False, False),
        (3.0, False),
        ("3", False),
        (None, False),
    ],
)
def test_numpy_integers_are_integers_and_bools_are_not_everywhere(value, integer):
    """One rule for every layer: a numpy integer is an integer, a bool never is."""
    positive = integer and value > 0
    assert (settings(Config, epochs=value) is None) == positive
    assert (library(_checks.positive_int, "epochs", value) is None) == positive
    assert (settings(Config, trainable_layers=value) is None) == integer  # 0 and 3 are in 0..5
    assert (library(_checks.trainable_layers, value) is None) == integer
    assert (settings(RunOptions, workers=value) is None) == (integer or value is None)  # None: the default
    assert (library(_checks.count, "workers", value) is None) == integer
    assert (library(_checks.seed, value) is None) == integer


def test_settings_keep_plain_numbers():
    """A numpy scalar that passes the check is stored as the Python number it holds, so the run's
    settings stay JSON (they are saved with every checkpoint)."""
    config = Config(epochs=np.int64(3), learning_rate=np.float32(0.5), seed=np.uint32(7))
    config.check()
    assert type(config.epochs) is int and type(config.learning_rate) is float and type(config.seed) is int
    assert json.loads(json.dumps(asdict(config)))["epochs"] == 3


@given(n=st.integers(-3, 8))
def test_trainable_layers_one_rule_for_models_backbones_optimizers_and_runs(n):
    """The trainable_layers range, spelled out once: the FPN backbone, freeze and a run agree with 0..5."""
    fpn = library(lambda: create_fpn_backbone("resnet18", trainable_layers=n))
    frozen = library(lambda: freeze(optax.sgd(0.1), n))
    run = settings(Config, trainable_layers=n)
    verdict = 0 <= n <= 5
    assert (fpn is None, frozen is None, run is None) == (verdict,) * 3
    if not verdict:
        assert fpn == frozen == f"trainable_layers {EXPECTED['trainable_layers']}; got {n}"


NAMES = tuple(CONFIGS)


@given(name=st.one_of(st.sampled_from(NAMES), st.text(max_size=12), st.sampled_from([n[:-1] for n in NAMES])))
def test_model_names_get_one_verdict_and_the_same_hint(name):
    ours = cli("cost", f"--model={name}")
    theirs = settings(Config, model=name)
    api = library(_checks.model_name, name, NAMES, "name")
    verdict = name in NAMES
    assert (ours is None, theirs is None, api is None) == (verdict,) * 3
    if not verdict:
        assert ours == f"argument --model: {theirs}" and api == f"name {theirs}"
        assert theirs.startswith(f"must be one of {', '.join(NAMES)}; got {name!r}")


def test_a_typo_gets_the_nearest_name():
    assert library(_checks.model_name, "resnet5", NAMES, "model").endswith("; got 'resnet5' (did you mean resnet50?)")
    with pytest.raises(TypeError, match=rf"^model must be one of {', '.join(NAMES)}; got 50 \(int\)$"):
        _checks.model_name(50, NAMES, "model")  # not a string at all: the wrong kind of thing
    assert settings(Config, model=50) == f"must be one of {', '.join(NAMES)}; got 50"  # one line, naming the field
    assert cli("cost", "--model", "50") == f"argument --model: must be one of {', '.join(NAMES)}; got '50'"
    assert _checks.model_name("b", ("a", "b"), argument="arch") == "b"  # any registry's names


def test_errors_are_value_errors_naming_their_setting():
    err = pytest.raises(ConfigError, Config(batch_size=0).check).value
    assert isinstance(err, SettingError) and isinstance(err, InputError) and isinstance(err, ValueError)
    assert (err.field, str(err)) == ("batch_size", "batch_size: must be a positive integer; got 0")
