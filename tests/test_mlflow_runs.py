"""asrn.mlflow_runs against a real sqlite tracking store: where runs go, and how they are created and reopened."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from asrn import mlflow_model, mlflow_runs


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


# ---------------------------------------------------------------- the best model, logged and loaded back

@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from asrn.synth_features import synthesize_feature_store

    return synthesize_feature_store(tmp_path_factory.mktemp("store") / "features", num_videos=10, seed=3)


def _best_pt(store, path):
    """A best.pt of a randomly initialised small ASRN with the store's input statistics, as `asrn train` writes."""
    from asrn.checkpoint import write_checkpoint
    from asrn.model import ASRN, ModelConfig
    from asrn.store import feature_statistics, read_info

    torch.manual_seed(0)
    info = read_info(store)
    config = ModelConfig(dims=info.dims, num_classes=8, hidden=8, dropout=0.5)
    model = ASRN(config)
    model.set_input_stats(feature_statistics(store, "train"))
    return write_checkpoint(path, model.state_dict(), config, {"task": "sub"}, "sub", info, 3, {"val_map": 0.5},
                            thresholds=[0.4] * 8)


def _predict_path_scores(checkpoint, videos) -> np.ndarray:
    """(N, C) scores as `asrn predict` computes them: load_checkpoint, then collate one video at a time."""
    from asrn.checkpoint import load_checkpoint
    from asrn.sequence import collate

    model, _ = load_checkpoint(checkpoint)
    with torch.no_grad():
        return np.concatenate([torch.sigmoid(model(**b.inputs()).logits).numpy()
                               for b in (collate([v], "sub") for v in videos)])


def test_the_logged_model_loads_back_and_scores_as_best_pt(store, tmp_path, monkeypatch):
    import mlflow
    import mlflow.pytorch

    from asrn.store import load_videos, read_info

    monkeypatch.chdir(tmp_path)  # MLflow keeps a sqlite store's artifacts in ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    checkpoint = _best_pt(store, tmp_path / "best.pt")
    run_id, _ = mlflow_runs.open_run(uri, "exp", "run", {}, tmp_path / "mlflow_run.json", resume=False)
    videos = load_videos(store, splits=["val", "test"])
    info = mlflow_model.log_best_model(uri, run_id, checkpoint, videos[0], registered_name="asrn-test")
    assert "MLFLOW_TRACKING_URI" not in os.environ  # MLflow's global URI was only borrowed

    expected = _predict_path_scores(checkpoint, videos)
    packed = mlflow_model.pack_videos(videos, read_info(store).dims)
    assert packed.shape[0] == len(videos) and len({v.num_steps for v in videos}) > 1  # padded to the longest
    experiment_id = MlflowClient(uri).get_run(run_id).info.experiment_id
    with mlflow_model.using_tracking_uri(uri):
        for model_uri in (info.model_uri, "models:/asrn-test/1"):
            loaded = mlflow.pytorch.load_model(model_uri)
            assert isinstance(loaded, torch.nn.Module)
            with torch.no_grad():
                np.testing.assert_allclose(loaded(torch.from_numpy(packed)).numpy(), expected, atol=1e-5)
        pyfunc = mlflow.pyfunc.load_model(info.model_uri)
        np.testing.assert_allclose(pyfunc.predict(packed), expected, atol=1e-5)
        logged = mlflow.search_logged_models(experiment_ids=[experiment_id], output_format="list")
    assert str(info.registered_model_version) == "1"
    assert [m.model_id for m in logged] == [info.model_id] and logged[0].source_run_id == run_id
    width = mlflow_model.packed_width({"rgb": 128, "motion": 64, "body": 64, "face": 32})
    assert tuple(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, -1, width)
    assert info.saved_input_example_info is not None and info.metadata["labels"][0] == "sub:dominant"


def test_a_model_is_logged_from_a_working_directory_that_is_gone(store, tmp_path, monkeypatch):
    """A Ray job's driver can outlive its working_dir (Ray reclaims it during the run: seen in
    tests/test_cluster.py's job); the model is still logged."""
    from asrn.store import load_videos

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    checkpoint = _best_pt(store, tmp_path / "best.pt")
    run_id, _ = mlflow_runs.open_run(uri, "exp", "run", {}, tmp_path / "mlflow_run.json", resume=False)
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    info = mlflow_model.log_best_model(uri, run_id, checkpoint, load_videos(store, splits=["test"])[0])
    assert info.model_uri.startswith("models:/")


def test_the_scoring_model_names_a_wrong_input(store, tmp_path):
    from asrn.checkpoint import load_checkpoint
    from asrn.store import load_videos

    model, saved = load_checkpoint(_best_pt(store, tmp_path / "best.pt"))
    scorer = mlflow_model.ScoringModel(model, saved["task"], saved["labels"])
    packed = torch.from_numpy(mlflow_model.pack_videos(load_videos(store, splits=["val"])[:2], scorer.dims))
    with pytest.raises(ValueError, match=r"expected \(videos, steps, 292\): rgb \(128\) \| motion"):
        scorer(packed[..., :-1])
    gap = packed.clone()
    gap[0, 0, -1] = 0.0  # a padding step before a valid one
    with pytest.raises(ValueError, match="video 0 of the input"):
        scorer(gap)


def test_store_params_name_the_store_and_its_provenance(store):
    from asrn.store import read_info

    params = mlflow_runs.store_params(read_info(store), store, {"train": 6, "val": 2, "test": 2})
    assert params["store.uri"] == store.resolve().as_uri() and params["store.num_val_videos"] == 2
    assert {"store.preset", "store.detector", "store.weights.rgb", "store.weights.face"} <= set(params)
    assert mlflow_runs.store_params(read_info(store), "s3://bucket/store")["store.uri"] == "s3://bucket/store"


def test_system_metrics_follow_psutil_and_the_mlflow_variable(monkeypatch):
    """MLflow's monitor (which imports psutil, absent here) stands in as a fake: the wiring is what is tested."""
    import importlib.util
    import sys
    import types

    events = []

    class Monitor:
        def __init__(self, run_id, tracking_uri=None, resume_logging=False):
            events.append(("init", run_id, tracking_uri, resume_logging))

        def start(self):
            events.append("start")

        def finish(self):
            events.append("finish")

    fake = types.ModuleType("mlflow.system_metrics.system_metrics_monitor")
    fake.SystemMetricsMonitor = Monitor
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "psutil"
                        else real_find_spec(name, *a))
    with mlflow_runs.system_metrics("sqlite:///x.db", "run-1", resume=True) as on:
        assert on and events == [("init", "run-1", "sqlite:///x.db", True), "start"]
    assert events[-1] == "finish"
    with mlflow_runs.system_metrics("sqlite:///x.db", None) as on:
        assert not on  # no run, nothing to log to
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
    with mlflow_runs.system_metrics("sqlite:///x.db", "run-1") as on:
        assert not on
    monkeypatch.delenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "psutil"
                        else real_find_spec(name, *a))
    with mlflow_runs.system_metrics("sqlite:///x.db", "run-1") as on:
        assert not on  # MLflow's monitor needs psutil
    assert events.count("start") == 1
