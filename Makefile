# Two entry points for a fresh machine: `make demo` (the main job on the embedded phantom) and
# `make test` (what CI runs). Both create .venv and install bonemet into it first.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO ?= runs/demo

.PHONY: setup demo test clean

$(BIN)/bonemet: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(BIN)/bonemet

setup: $(BIN)/bonemet

demo: setup
	$(BIN)/bonemet data synth $(DEMO)/phantom --patients 6 --seed 0 --overwrite
	$(BIN)/bonemet data check $(DEMO)/phantom
	$(BIN)/bonemet data split $(DEMO)/phantom/bmseg $(DEMO)/splits.json --folds 2 --test-patients 0.34
	@if [ -d ../shared/data/real_ct ]; then \
	  $(BIN)/bonemet data stats $(DEMO)/phantom --out $(DEMO)/stats.md \
	    --reference ../shared/data/real_ct/abdomen_3mm_ct.nii.gz \
	    --reference-bone-mask ../shared/data/real_ct/abdomen_3mm_bone_mask.nii.gz; \
	else $(BIN)/bonemet data stats $(DEMO)/phantom --out $(DEMO)/stats.md; fi
	@echo "demo data, checks, split and statistics are in $(DEMO)"

test: setup
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) runs .pytest_cache
