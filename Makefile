# pixtok — every target does its own set-up on a fresh machine.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test lint format bench clean

$(STAMP): setup.cfg pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The main job on its embedded default: tiny model, synthetic Localized Narratives, 2-core CPU.
demo: $(STAMP)
	$(BIN)/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		recipes/localized_narratives.py --output-dir outputs/demo

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff format --check src tests recipes benchmarks
	$(BIN)/ruff check src tests recipes benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests recipes benchmarks
	$(BIN)/ruff check --fix src tests recipes benchmarks

# CPU benchmarks (the GPU ones are in benchmarks/RESULTS.md with their commands).
bench: $(STAMP)
	$(BIN)/python benchmarks/codec_throughput.py
	PYTHONPATH=src $(BIN)/python benchmarks/decode.py --cpu

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
