# Two entry points for a fresh machine: `make demo` (the whole pipeline on the embedded phantom) and
# `make test` (what CI runs). Both create .venv and install bonemet into it first.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO ?= runs/demo

.PHONY: setup demo demo-quick test clean

$(BIN)/bonemet: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(BIN)/bonemet

setup: $(BIN)/bonemet

demo: setup
	$(BIN)/bonemet demo --out $(DEMO) --overwrite

demo-quick: setup
	$(BIN)/bonemet demo --quick --out $(DEMO)-quick --overwrite

test: setup
	$(BIN)/python -m pytest -q -n auto --durations=10 tests

clean:
	rm -rf $(VENV) runs .pytest_cache
