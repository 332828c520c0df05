# Each target builds the environment from nothing: uv (a standalone `uv` on PATH if there is one, else
# `python3 -m uv`, installed with pip if absent) then `uv sync` from the frozen uv.lock.
SHELL := /bin/bash
export UV_PYTHON_DOWNLOADS := never
PYTHON ?= python3
UV ?= $(shell uv --version >/dev/null 2>&1 && echo uv || echo "$(PYTHON) -m uv")
# the venv's own executables, not `uv run`: under `uv run`, Ray 2.60 rebuilds a uv environment for every worker
BIN := .venv/bin

.PHONY: env test test-unit test-ray demo lint bench clean

env:
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	$(UV) sync --frozen --python 3.11

test: env
	$(BIN)/python -m pytest -q --durations=15

test-unit: env
	$(BIN)/python -m pytest -q -m "not ray"

test-ray: env
	$(BIN)/python -m pytest -q -m ray

lint: env
	$(BIN)/ruff check asrn jobs tuning tests benchmarks

demo: env
	$(BIN)/asrn demo --out demo-output

bench: env
	$(BIN)/python benchmarks/train.py
	$(BIN)/python benchmarks/extract.py
	$(BIN)/python benchmarks/ablation.py

clean:
	rm -rf demo-output .pytest_cache
