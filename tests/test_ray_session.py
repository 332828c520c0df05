"""The lean local Ray's settings, without starting Ray (the Ray tests run on a session that ray_session started)."""

from __future__ import annotations

import os

import pytest

from asrn import ray_session
from asrn.ray_session import API_SERVER_ENV, LEAN_ENV, lean_environment, lean_trainer_class, start_options


@pytest.fixture
def clean_env(monkeypatch):
    for name in [*LEAN_ENV, API_SERVER_ENV, ray_session.DASHBOARD_ENV]:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_lean_defaults_never_override_what_the_user_set(clean_env):
    clean_env.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "5")
    added = lean_environment()
    assert os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "5" and "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S" not in added
    assert os.environ["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "0" and os.environ["RAY_USAGE_STATS_ENABLED"] == "0"
    assert float(os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"]) > float(ray_session.POLL_INTERVAL_S)


def test_no_dashboard_unless_needed_asked_for_or_verbose(clean_env):
    assert start_options(dashboard=False, verbose=False) == {"include_dashboard": False}
    assert API_SERVER_ENV not in os.environ
    for needed, verbose in ((True, False), (False, True)):
        options = start_options(needed, verbose)
        assert options["include_dashboard"] and options["dashboard_host"] == "127.0.0.1"
        # every worker of this Ray (they inherit this environment) asks its own dashboard, not "auto"
        assert os.environ[API_SERVER_ENV] == f"http://127.0.0.1:{options['dashboard_port']}"
    clean_env.setenv(ray_session.DASHBOARD_ENV, "1")
    assert start_options(False, False)["include_dashboard"]


def test_the_trainer_drops_the_placement_group_cleaner_only_without_a_dashboard(monkeypatch):
    from ray.train.torch import TorchTrainer

    monkeypatch.setattr(ray_session, "_started_without_dashboard", False)
    assert lean_trainer_class() is TorchTrainer
    monkeypatch.setattr(ray_session, "_started_without_dashboard", True)
    lean = lean_trainer_class()
    assert issubclass(lean, TorchTrainer) and lean is not TorchTrainer
    # a Ray whose trainer no longer has the private hook: the plain TorchTrainer (the slow path), not an error
    for klass in TorchTrainer.__mro__:
        if "_create_default_callbacks" in vars(klass):
            monkeypatch.delattr(klass, "_create_default_callbacks")
    assert lean_trainer_class() is TorchTrainer


def test_a_ray_without_the_private_coordinator_module_skips_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator", None)
    assert ray_session.create_autoscaling_coordinator() is False


def test_the_address_to_join_comes_from_the_flag_then_the_environment(monkeypatch):
    from asrn.ray_session import ADDRESS_ENV, cluster_address

    monkeypatch.delenv(ADDRESS_ENV, raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cluster_address(None) is None  # start a local Ray
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")  # inside a Ray job, Ray sets it
    assert cluster_address(None) == "10.0.0.5:6379"
    assert cluster_address("127.0.0.1:7000") == "127.0.0.1:7000"
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8266")  # a job server, for `ray job submit`
    monkeypatch.setenv(ADDRESS_ENV, "127.0.0.1:6380")  # what cluster/local.sh exports beside it
    assert cluster_address(None) == "127.0.0.1:6380"
    monkeypatch.delenv(ADDRESS_ENV)
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8266")
    assert cluster_address(None) is None and "RAY_ADDRESS" not in os.environ  # not joined, and hidden from ray.init
