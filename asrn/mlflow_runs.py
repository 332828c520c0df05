"""MLflow as `asrn train` and `asrn tune` share it: where runs go, how they are made and reopened, what they hold.
The best model logged with a run is asrn.mlflow_model's. Torch-free: the Train controller logs epochs through this.

Only one process writes a run at a time (the Train controller or the Tune driver; the driver's system-metrics thread
writes every 10 s), so sqlite stores see little contention. The standard MLflow variables are honoured:
MLFLOW_TRACKING_URI when no --tracking-uri is given, MLFLOW_EXPERIMENT_NAME when no --experiment-name is given, and
MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false turns system metrics off.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from asrn.files import write_json
from asrn.locations import Location, local_copy

NO_MLFLOW = "none"
DEFAULT_EXPERIMENT = "asrn"


def tracking_uri_for(flag: str | None) -> str | None:
    """The tracking URI of a run: the flag, else MLFLOW_TRACKING_URI, else `mlflow.db` here; None for "none"."""
    uri = flag or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(Path.cwd() / 'mlflow.db').resolve()}"
    return None if uri.lower() == NO_MLFLOW else uri


def experiment_for(flag: str | None) -> str:
    return flag or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


def open_run(tracking_uri: str, experiment: str, run_name: str, tags: dict[str, str], record: Path,
             resume: bool) -> tuple[str, str]:
    """Create a run, or with `resume` reopen the one `record` (mlflow_run.json) names; return (run_id, uri).

    A resumed run continues in the tracking store it started in, even if the URI given now differs.
    """
    from mlflow import MlflowClient

    if resume and record.is_file():
        previous = json.loads(record.read_text())
        if previous.get("tracking_uri") != tracking_uri:
            print(f"note: the run logged to {previous.get('tracking_uri')}; continuing there", flush=True)
        tracking_uri, run_id = previous["tracking_uri"], previous["run_id"]
        MlflowClient(tracking_uri).update_run(run_id, status="RUNNING")
    else:
        from mlflow.tracking.context.registry import resolve_tags

        client = MlflowClient(tracking_uri)
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(experiment)
        # resolve_tags adds what mlflow.start_run would: user, source, and the git commit when run from a checkout
        run_id = client.create_run(experiment_id, run_name=run_name, tags=resolve_tags(tags)).info.run_id
    write_json(record, {"run_id": run_id, "tracking_uri": tracking_uri,
                        "ui": f"mlflow ui --backend-store-uri {tracking_uri}"})
    return run_id, tracking_uri


def store_params(info, features: str | os.PathLike, counts: dict[str, int] | None = None) -> dict[str, str]:
    """A feature store's URI and provenance (preset, detector, encoders and their weights per modality, the videos
    per split) as run params, so that runs on different stores differ in the compare view."""
    uri = str(features) if "://" in str(features) else Path(features).resolve().as_uri()
    return {"store.uri": uri, "store.preset": info.preset, "store.detector": info.detector, "store.fps": info.fps,
            **{f"store.weights.{m}": w for m, w in info.weights.items()},
            **{f"store.encoder.{m}": e for m, e in info.encoders.items()},
            **{f"store.num_{split}_videos": n for split, n in (counts or {}).items()}}


def per_class_metrics(prefix: str, metrics: dict) -> dict[str, float]:
    """`<prefix>_f1.<group>.<class>` and `<prefix>_ap.<group>.<class>` of a compute_metrics dict (MLflow names
    allow no ':')."""
    out = {}
    for name, scores in metrics["per_class"].items():
        key = name.replace(":", ".")
        out[f"{prefix}_f1.{key}"] = scores["f1"]
        if scores.get("ap") is not None:
            out[f"{prefix}_ap.{key}"] = scores["ap"]
    return out


def log_params(tracking_uri: str, run_id: str, params: dict) -> None:
    """Log the params the run lacks; a changed value (a resumed run with new flags) becomes a `resume.*` tag,
    since MLflow params are immutable."""
    from mlflow import MlflowClient
    from mlflow.entities import Param, RunTag

    client = MlflowClient(tracking_uri)
    logged = client.get_run(run_id).data.params
    new = [Param(k, str(v)) for k, v in params.items() if k not in logged]
    changed = [RunTag(f"resume.{k}", str(v)) for k, v in params.items() if k in logged and logged[k] != str(v)]
    client.log_batch(run_id, params=new, tags=changed)


def log_metrics(tracking_uri: str, run_id: str, metrics: dict, step: int, tags: dict[str, str] | None = None,
                timestamp_ms: int | None = None) -> None:
    """Log the finite numbers of `metrics` at `step` (and `tags`) in one batch, stamped `timestamp_ms` (now)."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, RunTag

    now = timestamp_ms if timestamp_ms is not None else int(time.time() * 1000)
    values = [Metric(k, float(v), now, step) for k, v in metrics.items() if is_number(v)]
    MlflowClient(tracking_uri).log_batch(run_id, metrics=values,
                                         tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()])


def logged_steps(tracking_uri: str, run_id: str, key: str) -> set[int]:
    from mlflow import MlflowClient

    return {m.step for m in MlflowClient(tracking_uri).get_metric_history(run_id, key)}


def finish_run(tracking_uri: str, run_id: str, status: str, artifacts: Sequence[Path | Location] = ()) -> None:
    """Log `artifacts` (local paths or URIs: MLflow uploads local files) and end the run with `status`."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    for path in artifacts:
        with local_copy(path) as local:
            client.log_artifact(run_id, str(local))
    client.set_terminated(run_id, status=status)


def is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@contextmanager
def system_metrics(tracking_uri: str | None, run_id: str | None, resume: bool = False) -> Iterator[bool]:
    """Log MLflow's system metrics of this machine (CPU, memory, disk, network; GPU where pynvml finds one) to the
    run while the block runs, as `mlflow.start_run(log_system_metrics=True)` would; yields whether it does.

    Off without a run, where psutil (which MLflow's monitor needs) is not installed, and when
    MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING is false.
    """
    off = os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "").strip().lower() in ("false", "0")
    if not run_id or off or importlib.util.find_spec("psutil") is None:
        yield False
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, tracking_uri=tracking_uri, resume_logging=resume)
    monitor.start()
    try:
        yield True
    finally:
        monitor.finish()
