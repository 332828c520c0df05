# Each target builds the environment from nothing: uv, then `uv sync --frozen` from uv.lock.
# uv: a standalone `uv` on PATH, else `python3 -m uv`, else installed with pip, else (a PEP 668 system Python that
# refuses pip) into a private venv, .uv-tool/.
# Python: any installed 3.10-3.12 (uv's choice; PYTHON_VERSION=3.12 picks one), or, with none, one that uv
# downloads. CI pins 3.11 and forbids downloads (.ci/run sets PYTHON_VERSION and UV_PYTHON_DOWNLOADS).
# TORCH=cpu: everything from uv.lock except torch, torchvision and the CUDA libraries, then the locked torch and
# torchvision versions from PyTorch's CPU-only index (about 0.2 GB instead of about 3 GB on Linux x86_64).
SHELL := /bin/bash
PYTHON ?= python3
PYTHON_VERSION ?=
UV = $(shell if uv --version >/dev/null 2>&1; then echo uv; \
                elif [ -x .uv-tool/bin/uv ]; then echo .uv-tool/bin/uv; else echo "$(PYTHON) -m uv"; fi)
# the venv's own executables, not `uv run`: under `uv run`, Ray 2.60 rebuilds a uv environment for every worker
BIN := .venv/bin
TORCH ?=
CPU_TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
locked = $(shell sed -n '/^name = "$(1)"$$/{n;s/^version = "\(.*\)"$$/\1/p;q}' uv.lock)
CUDA_PACKAGES = $(shell sed -n 's/^name = "\(nvidia-[^"]*\|cuda-[^"]*\|triton\)"$$/\1/p' uv.lock | sort -u)
SYNC = $(UV) sync --frozen $(if $(PYTHON_VERSION),--python $(PYTHON_VERSION))

.PHONY: env uv test test-unit test-ray demo lint bench clean

uv:
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv 2>/dev/null || \
		{ $(PYTHON) -m venv .uv-tool && .uv-tool/bin/pip install --quiet uv; }

env: uv
ifeq ($(TORCH),cpu)
	$(SYNC) $(foreach p,torch torchvision $(CUDA_PACKAGES),--no-install-package $(p))
	$(UV) pip install --python $(BIN)/python --no-deps --index-url $(CPU_TORCH_INDEX) \
		torch==$(call locked,torch)+cpu torchvision==$(call locked,torchvision)+cpu
else
	$(SYNC)
endif

test: env
	$(BIN)/python -m pytest -q --durations=15 -n 2 --dist loadgroup

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
