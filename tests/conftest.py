"""Strict test runs: rank promotion raises, and warnings are errors (pyproject's filterwarnings)."""

import os

import jax
import pytest
from hypothesis import settings

jax.config.update("jax_numpy_rank_promotion", "raise")

settings.register_profile("ci", deadline=None, print_blob=True, derandomize=True)
settings.register_profile("dev", deadline=None, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """One small ``train`` run on the digits (``helpers.SMALL_TRAIN``), shared by the tests that read a
    run: the run directory and the JSON summary ``train --json`` printed."""
    import contextlib
    import io
    import json

    from helpers import SMALL_TRAIN

    from resnet_bottleneck.cli import main

    run = tmp_path_factory.mktemp("digits") / "run"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["train", *SMALL_TRAIN, "--out", str(run), "--json"]) == 0
    return run, json.loads(out.getvalue())
