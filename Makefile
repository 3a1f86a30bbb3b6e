# Two commands from a fresh clone: `make demo` (the worked example) and `make test`.
# Each creates .venv with the pinned versions in constraints.txt on first use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) -e .
	touch $@

$(VENV)/.test: $(VENV)/.runtime
	$(PIP) -e '.[test]'
	touch $@

demo: $(VENV)/.runtime
	$(BIN)/resnet-bottleneck forward

test: $(VENV)/.test
	bash tools/install_chromium.sh  # the page's browser test: Debian's chromium, installed where absent (root/sudo)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

# Every CPU benchmark, one after another, each rewriting its own BENCHMARKS.md section(s) on this machine
# (about 30 minutes on 2 cores; longer beside other work). bench_gpu.py needs a GPU: run it there
# (`python benchmarks/bench_gpu.py --write`).
bench: $(VENV)/.test
	$(BIN)/python benchmarks/bench_cpu.py --write
	$(BIN)/python benchmarks/bench_forward.py --write
	$(BIN)/python benchmarks/bench_models.py --write
	$(BIN)/python benchmarks/bench_fold.py --write
	$(BIN)/python benchmarks/bench_train.py --write
	$(BIN)/python benchmarks/bench_data.py --train-rounds 3 --write
	$(BIN)/python benchmarks/bench_nnx.py --write
	$(BIN)/python benchmarks/bench_deploy.py --options --write
	$(BIN)/python benchmarks/bench_timm.py --write

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
