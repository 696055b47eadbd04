# Two commands: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: demo test bench calibrate venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/uqc demo

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py --out BENCHMARKS.md

clean:
	rm -rf $(VENV) build dist *.egg-info demo-output

# CALIBRATION.md: `uqc calibrate` of every sampler kind on two exact GMM problems (benchmarks/calibration.py)
calibrate: $(STAMP)
	$(BIN)/python benchmarks/calibration.py --out CALIBRATION.md --figures docs/calibration
