# Two entry points for a fresh machine: `make demo` (the whole pipeline on the embedded phantom) and
# `make test` (what CI runs). Both create .venv and install bonemet into it first.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO ?= runs/demo
# a real CT series for the demo to run its model and the bundled default model on, when ../shared is beside
REAL_CT ?= $(wildcard ../shared/data/real_ct/torso_3mm_ct.nii.gz)

.PHONY: setup demo demo-quick test clean

$(BIN)/bonemet: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(BIN)/bonemet

setup: $(BIN)/bonemet

demo: setup
	$(BIN)/bonemet demo --out $(DEMO) --overwrite $(if $(REAL_CT),--real-ct $(REAL_CT))

demo-quick: setup
	$(BIN)/bonemet demo --quick --out $(DEMO)-quick --overwrite

test: setup
	$(BIN)/python -m pytest -q -n auto --durations=10 tests

clean:
	rm -rf $(VENV) runs .pytest_cache
