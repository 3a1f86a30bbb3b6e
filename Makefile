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
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

bench: $(VENV)/.test
	$(BIN)/python benchmarks/bench_cpu.py --write
	$(BIN)/python benchmarks/bench_forward.py --write
	$(BIN)/python benchmarks/bench_models.py --write
	$(BIN)/python benchmarks/bench_fold.py --write

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
