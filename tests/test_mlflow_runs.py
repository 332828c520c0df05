"""asrn.mlflow_runs against a real sqlite tracking store: where runs go, and how they are created and reopened."""

from __future__ import annotations

import json

from mlflow import MlflowClient

from asrn import mlflow_runs


def test_standard_mlflow_variables_are_honoured(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'env.db'}")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from-env")
    assert mlflow_runs.tracking_uri_for(None) == f"sqlite:///{tmp_path / 'env.db'}"
    assert mlflow_runs.tracking_uri_for("sqlite:///flag.db") == "sqlite:///flag.db"
    assert mlflow_runs.tracking_uri_for("none") is None
    assert mlflow_runs.experiment_for(None) == "from-env" and mlflow_runs.experiment_for("flag") == "flag"
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME")
    assert mlflow_runs.experiment_for(None) == mlflow_runs.DEFAULT_EXPERIMENT


def test_a_run_is_created_with_who_and_where_then_reopened(tmp_path):
    uri, record = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "mlflow_run.json"
    run_id, used = mlflow_runs.open_run(uri, "exp", "run-a", {"asrn.command": "train"}, record, resume=False)
    client = MlflowClient(uri)
    tags = client.get_run(run_id).data.tags
    assert used == uri and tags["asrn.command"] == "train" and tags["mlflow.user"] and tags["mlflow.source.name"]
    mlflow_runs.log_params(uri, run_id, {"lr": 0.1})
    mlflow_runs.finish_run(uri, run_id, "FAILED")
    again, used = mlflow_runs.open_run(f"sqlite:///{tmp_path / 'other.db'}", "exp", "run-a", {}, record, resume=True)
    assert (again, used) == (run_id, uri)  # a resumed run continues where it started
    assert client.get_run(run_id).info.status == "RUNNING"
    mlflow_runs.log_params(uri, run_id, {"lr": 0.2, "epochs": 3})
    run = client.get_run(run_id)
    assert run.data.params == {"lr": "0.1", "epochs": "3"} and run.data.tags["resume.lr"] == "0.2"
    assert json.loads(record.read_text())["run_id"] == run_id
