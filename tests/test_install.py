"""The install paths of the Makefile, checked against uv.lock without installing anything (make -n)."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _locked() -> dict[str, str]:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    return {p["name"]: p["version"] for p in lock["package"] if "version" in p}


def _dry_run(*args: str) -> str:
    if shutil.which("make") is None:
        pytest.fail("make is not installed; the Makefile is how the project installs")
    return subprocess.run(["make", "-n", "env", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def test_cpu_only_install_leaves_out_every_cuda_package_and_pins_the_locked_torch():
    locked = _locked()
    cuda = {name for name in locked if re.match(r"(nvidia-|cuda-|triton$)", name)}
    assert cuda, "uv.lock has no CUDA packages: the CPU-only path has nothing to leave out"
    commands = _dry_run("TORCH=cpu")
    left_out = set(re.findall(r"--no-install-package (\S+)", commands))
    assert cuda | {"torch", "torchvision"} <= left_out
    assert f"torch=={locked['torch']}+cpu" in commands
    assert f"torchvision=={locked['torchvision']}+cpu" in commands
    assert "--no-deps" in commands  # torch's other dependencies come from uv.lock, not from the CPU index


def test_default_install_is_the_frozen_lock_with_cuda():
    commands = _dry_run()
    assert "sync --frozen" in commands
    assert "--no-install-package" not in commands and "download.pytorch.org" not in commands
