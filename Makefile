# Each target builds the environment from nothing: uv (installed with pip if absent) then `uv sync`.
SHELL := /bin/bash
export UV_PYTHON_DOWNLOADS := never
PYTHON ?= python3
UV := $(PYTHON) -m uv

.PHONY: env test test-unit test-ray demo lint bench clean

env:
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	$(UV) sync --frozen --python 3.11

test: env
	$(UV) run --frozen pytest -q

test-unit: env
	$(UV) run --frozen pytest -q -m "not ray"

test-ray: env
	$(UV) run --frozen pytest -q -m ray

lint: env
	$(UV) run --frozen ruff check asrn jobs tuning tests benchmarks

demo: env
	$(UV) run --frozen asrn demo --out demo-output

bench: env
	$(UV) run --frozen python benchmarks/train.py
	$(UV) run --frozen python benchmarks/extract.py
	$(UV) run --frozen python benchmarks/ablation.py

clean:
	rm -rf demo-output .pytest_cache
