"""Opening MLflow runs the way `asrn train` and `asrn tune` share: where, which experiment, create or reopen.

Only one process writes a run (the Train controller or the Tune driver), so sqlite stores never see two writers.
The standard MLflow variables are honoured: MLFLOW_TRACKING_URI when no --mlflow-uri is given, and
MLFLOW_EXPERIMENT_NAME when no --experiment is given.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from asrn.files import write_json

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


def store_params(info) -> dict[str, str]:
    """A feature store's provenance as run params, so runs on different stores differ in the compare view."""
    return {"store.preset": info.preset, "store.detector": info.detector, "store.fps": info.fps,
            **{f"store.weights.{m}": w for m, w in info.weights.items()},
            **{f"store.encoder.{m}": e for m, e in info.encoders.items()}}


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


def log_metrics(tracking_uri: str, run_id: str, metrics: dict, step: int, tags: dict[str, str] | None = None) -> None:
    """Log the finite numbers of `metrics` at `step` (and `tags`) in one batch."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    values = [Metric(k, float(v), now, step) for k, v in metrics.items() if is_number(v)]
    MlflowClient(tracking_uri).log_batch(run_id, metrics=values,
                                         tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()])


def logged_steps(tracking_uri: str, run_id: str, key: str) -> set[int]:
    from mlflow import MlflowClient

    return {m.step for m in MlflowClient(tracking_uri).get_metric_history(run_id, key)}


def finish_run(tracking_uri: str, run_id: str, status: str, artifacts: list[Path] = ()) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    for path in artifacts:
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, status=status)


def is_number(value) -> bool:
    import math

    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
