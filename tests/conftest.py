"""Shared fixtures: one real local Ray cluster per test session (CPU only), tmp folders."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster shared by every `@pytest.mark.ray` test of the session."""
    import ray

    # the dashboard serves the State API that Train V2's PlacementGroupCleaner needs when Tune stops a trial;
    # without it a stopped trial's placement group leaks and the next trial waits forever
    ray.init(num_cpus=4, include_dashboard=True, log_to_driver=False,
             runtime_env={"env_vars": {"TQDM_DISABLE": "1"}})
    yield ray
    ray.shutdown()


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """An empty weights dir and an empty torch cache: nothing pretrained can be found."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    return weights_dir


@pytest.fixture
def rewrite_checkpoint():
    """`rewrite(src, dst, change)`: a copy of a best.pt whose dict went through `change(checkpoint)` (in place)."""
    import torch

    def rewrite(src, dst, change):
        checkpoint = torch.load(src, weights_only=True)
        change(checkpoint)
        torch.save(checkpoint, dst)
        return dst

    return rewrite
