"""The one owner of `ray.init` / `ray.shutdown` for the commands: join a running Ray, or start a lean local one.

Ray's defaults are made for a long-lived cluster; an `asrn` command that starts its own Ray pays for all of it on
every run. Measured on 2 cores (benchmarks/train.py, docs/performance.md), a lean local Ray keeps what a run uses:
- no dashboard unless the command needs it: Ray Tune does, because Train V2's placement-group cleaner asks the
  State API (served by the dashboard) whether a stopped trial's controller is gone; a plain `asrn train` does not
  (its placement groups end with the job) and its trainer leaves the cleaner out (`lean_trainer_class`);
- metrics collection and usage stats off; no `runtime_env` on the job, so that the workers Ray prestarts can serve
  it (a job runtime_env makes every prestarted worker unusable);
- Ray Train's controller polls its workers every `POLL_INTERVAL_S` instead of 2 s (each reported epoch waited up to
  one poll), and its preemption watcher (one more process per fit) is off;
- the autoscaling coordinator that Ray Train asks for resources is created right after `ray.init`, without
  waiting: created lazily, its first two requests time out (2 x 5 s).
Every setting is an environment default: a variable the user set wins. `--verbose` or ASRN_RAY_DASHBOARD=1 keeps
the dashboard. `--address`, ASRN_RAY_ADDRESS or RAY_ADDRESS joins a running cluster (about a second) instead of
starting one (`eval "$(cluster/local.sh up)"` starts one and exports its address).

Beside another Ray instance on the same machine, the placement-group cleaner cannot tell which instance is its own
("Found multiple active Ray instances") and a sweep whose trials ASHA stops waits forever for their CPUs. A local
Ray started here sets RAY_API_SERVER_ADDRESS (its own dashboard) in its workers' environment; a joined cluster is
checked once before a sweep (`check_state_api`), and refused with one line saying what to do when its workers
cannot reach their own State API.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import ray

from asrn.console import quiet_ray_console
from asrn.errors import AsrnError

POLL_INTERVAL_S = "0.25"
LEAN_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_enable_metrics_collection": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": POLL_INTERVAL_S,  # Ray Train propagates it to its controller
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}
DASHBOARD_ENV = "ASRN_RAY_DASHBOARD"  # "1": start the local Ray with its dashboard, whatever the command
ADDRESS_ENV = "ASRN_RAY_ADDRESS"  # the GCS address of a running cluster that every command joins
API_SERVER_ENV = "RAY_API_SERVER_ADDRESS"  # read by Ray's State API client before any auto-detection


class RayClusterError(AsrnError):
    """The Ray cluster cannot run this command as it is; the message says what to do."""


def lean_environment() -> dict[str, str]:
    """Set LEAN_ENV's variables that the user has not set; return those set here."""
    added = {name: value for name, value in LEAN_ENV.items() if name not in os.environ}
    os.environ.update(added)
    return added


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_options(dashboard: bool, verbose: bool) -> dict:
    """`ray.init` options of a lean local Ray; with a dashboard, its port is chosen here and announced to every
    worker through RAY_API_SERVER_ADDRESS (set in this process, which the local raylet and its workers inherit)."""
    dashboard = dashboard or verbose or os.environ.get(DASHBOARD_ENV) == "1"
    if not dashboard:
        return {"include_dashboard": False}
    port = _free_port()
    os.environ[API_SERVER_ENV] = f"http://127.0.0.1:{port}"
    return {"include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": port}


def create_autoscaling_coordinator() -> bool:
    """Create Ray Train's autoscaling coordinator now (private Ray API, guarded: False where it moved)."""
    try:
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
            get_or_create_autoscaling_coordinator,
        )
    except ImportError:
        return False
    get_or_create_autoscaling_coordinator()
    return True


_started_without_dashboard = False  # this process started its Ray without a dashboard (so no State API)


def lean_trainer_class() -> type:
    """TorchTrainer, less Train V2's placement-group cleaner when this process started its Ray without a
    dashboard: the cleaner would ask the absent State API every second, warning each time, and a plain run's
    placement groups end with its job anyway. Private Ray API, guarded: the plain TorchTrainer where it moved."""
    from ray.train.torch import TorchTrainer

    if not _started_without_dashboard or not hasattr(TorchTrainer, "_create_default_callbacks"):
        return TorchTrainer

    class LeanTorchTrainer(TorchTrainer):
        def _create_default_callbacks(self):
            callbacks = super()._create_default_callbacks()
            return [c for c in callbacks if type(c).__name__ != "PlacementGroupCleanerCallback"]

    return LeanTorchTrainer


def cluster_address(address: str | None) -> str | None:
    """The cluster a command joins: `--address`, else ASRN_RAY_ADDRESS (cluster/local.sh exports it), else
    RAY_ADDRESS unless that is a job server's http(s) URL (for `ray job submit`); None: start a local Ray."""
    ray_address = os.environ.get("RAY_ADDRESS", "")
    if not address and ray_address.startswith(("http://", "https://")):
        os.environ.pop("RAY_ADDRESS")  # else ray.init would try to join a URL it cannot
        ray_address = ""
    return address or os.environ.get(ADDRESS_ENV) or ray_address or None


@contextmanager
def ray_session(address: str | None = None, verbose: bool = False, dashboard: bool = False,
                num_cpus: int | None = None) -> Iterator[None]:
    """Join `address` (or RAY_ADDRESS), else start a lean local Ray (see the module docstring), unless Ray is
    already up in this process; shut down only what was started here.

    `dashboard`: the command needs the State API (a sweep): a local Ray gets its dashboard, a joined cluster is
    checked (`check_state_api`). Unless `verbose`, Ray's routine lines stay off this
    process's console (asrn.console); a session already up keeps the console it was started with.
    """
    global _started_without_dashboard
    if ray.is_initialized():
        yield
        return
    address = cluster_address(address)
    lean_environment()  # also when joining: the Train controller and the trials take Ray Train's variables from here
    began = time.monotonic()
    quiet_ray_console(not verbose)  # before ray.init, which warns and informs on the console
    # the job's workers log Ray's lines at WARNING and forward their prints without a "(name pid=...)" prefix
    logging_config = None if verbose else ray.LoggingConfig(log_level="WARNING")
    if address:
        print(f"ray: joining the Ray cluster at {address}", flush=True)
        ray.init(address=address, logging_config=logging_config)
        if dashboard:
            check_state_api()
    else:
        print("ray: starting a local Ray (lean: see docs/performance.md)", flush=True)
        options = start_options(dashboard, verbose)
        ray.init(num_cpus=num_cpus, logging_config=logging_config, **options)
        _started_without_dashboard = not options["include_dashboard"]
    create_autoscaling_coordinator()
    quiet_ray_console(not verbose)  # again: the job's logging config replaced Ray's console handler
    if verbose:
        print(f"ray: up in {time.monotonic() - began:.1f} s", flush=True)
    try:
        yield
    finally:
        ray.shutdown()
        _started_without_dashboard = False


@ray.remote(num_cpus=0)
def _state_api_addresses() -> tuple[str, str]:
    """(where a worker's State API client goes unasked, as Train V2's placement-group cleaner asks; where this
    cluster's own dashboard is)."""
    from ray.dashboard.utils import get_address_for_submission_client, ray_address_to_api_server_url

    own = ray_address_to_api_server_url(ray.get_runtime_context().gcs_address)
    return get_address_for_submission_client(None), own


def _port(url: str) -> str:
    return url.rstrip("/").rsplit(":", 1)[-1]


def check_state_api(timeout_s: float = 60.0) -> None:
    """Refuse, with one line, a cluster whose workers do not reach its own State API: Tune's stopped trials would
    keep their placement groups and the sweep would wait forever. Private Ray API, guarded: skipped where it moved."""
    try:
        from ray.dashboard.utils import get_address_for_submission_client, ray_address_to_api_server_url  # noqa: F401
    except ImportError:
        return
    gcs = ray.get_runtime_context().gcs_address
    try:
        found, own = ray.get(_state_api_addresses.remote(), timeout=timeout_s)
        problem = None if _port(found) == _port(own) else f"they reach {found}, another cluster's, not {own}"
    except Exception as e:  # noqa: BLE001 - any failure there is the cause of the hang
        problem = str(getattr(e, "cause", None) or e).strip().splitlines()[-1]
    if problem:
        raise RayClusterError(
            f"ray: this cluster's workers do not reach its State API ({problem}); a sweep would wait forever for "
            f"the CPUs of stopped trials. Start the cluster (GCS {gcs}) with its dashboard and with "
            f"{API_SERVER_ENV}=http://<its dashboard host:port> in its environment (cluster/local.sh does both), or "
            "stop the other Ray instances on this machine")
