"""`asrn train` and `asrn predict` against an object store: the session's S3-compatible server (conftest.s3_server).

The store, the run folder and Ray's checkpoints are all `s3://` URIs; the Ray Train workers open the store by URI
with the AWS variables they inherit, nothing is handed to them as a path on the driver's disk.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from asrn.checkpoint import load_checkpoint
from asrn.cli import main
from asrn.encoders import PRESETS
from asrn.labels import task_labels
from asrn.locations import Location
from asrn.manifest import read_manifest
from asrn.store import MODALITIES
from asrn.synth_features import synthesize_feature_store
from asrn.synth_videos import synthesize_videos
from asrn.train import TrainConfig, train

LITE_DIMS = {m: PRESETS["lite"][m].dim for m in MODALITIES}


def _lite_store_on_s3(local: Path, uri: str) -> str:
    """A small synthetic store with the lite preset's dims, labelled lite (so that `asrn predict` can encode a
    video for a model trained on it), uploaded to `uri`."""
    synthesize_feature_store(local, num_videos=12, seed=2, dims=LITE_DIMS)
    info = json.loads((local / "features.json").read_text())
    (local / "features.json").write_text(json.dumps({**info, "preset": "lite"}))
    filesystem, path = pafs.FileSystem.from_uri(uri)
    pafs.copy_files(str(local), path, destination_filesystem=filesystem)
    return uri


def _objects(uri: str) -> list[str]:
    filesystem, path = pafs.FileSystem.from_uri(uri)
    found = filesystem.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return sorted(f.path[len(path):].lstrip("/") for f in found if f.type == pafs.FileType.File)


@pytest.mark.ray
def test_train_resume_and_predict_with_everything_on_s3(ray_cluster, s3_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # anything written to the working directory by mistake would show up here
    features = _lite_store_on_s3(tmp_path / "store", f"{s3_folder}/features")
    out, storage = f"{s3_folder}/run", f"{s3_folder}/ray"
    flags = ["--features", features, "--task", "sub", "--out", out, "--storage", storage, "--epochs", "2",
             "--hidden", "16", "--batch-size", "4", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
             "--address", ray_cluster.get_runtime_context().gcs_address]
    assert main(["train", *flags]) == 0, capsys.readouterr().err

    written = _objects(out)
    assert {"best.pt", "metrics.json", "predictions.parquet", "loss_curves.png", "per_class.png", "config.json",
            "ray_run.json", "mlflow_run.json"} <= set(written), written
    run = json.loads((Location(out) / "ray_run.json").read_text())
    assert run["storage_path"] == storage
    assert any(name.startswith(f"{run['name']}/checkpoint_") and name.endswith("/state.pt")
               for name in _objects(storage)), _objects(storage)
    # no output landed on the local disk (MLflow keeps its own artifacts in ./mlruns beside its sqlite database)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db", "mlruns", "store"]
    metrics = json.loads((Location(out) / "metrics.json").read_text())
    assert metrics["best_epoch"] in (1, 2) and 0 <= metrics["test"]["map"] <= 1
    checkpoints = {name.split("/")[1] for name in _objects(storage) if name.split("/")[1].startswith("checkpoint_")}

    # --resume finds the run in --out (on S3) and Ray's state in --storage (on S3): the finished run is not redone
    resumed = train(TrainConfig(features=features, task="sub", out=out, storage=storage, epochs=2, hidden=16,
                                batch_size=4, mlflow_uri="none", resume=True))
    assert [h["epoch"] for h in resumed.history] == [1, 2] and resumed.best_epoch == metrics["best_epoch"]
    assert {name.split("/")[1] for name in _objects(storage)
            if name.split("/")[1].startswith("checkpoint_")} == checkpoints  # no epoch trained again

    entry = read_manifest(synthesize_videos(tmp_path / "videos", num_videos=6, seed=3, seconds=2.0))[0]
    checkpoint = f"{out}/best.pt"
    assert main(["predict", str(entry.path), "--boxes", str(entry.boxes), "--checkpoint", checkpoint,
                 "--out", f"{s3_folder}/predict"]) == 0, capsys.readouterr().err
    assert _objects(f"{s3_folder}/predict") == ["attention.json", "attention.png", "scores.json"]
    scores = json.loads((Location(s3_folder) / "predict" / "scores.json").read_text())
    _, saved = load_checkpoint(checkpoint)
    assert scores["checkpoint"] == checkpoint and saved["path"] == checkpoint
    assert list(scores["scores"]) == list(task_labels("sub")) == saved["labels"]


@pytest.mark.ray
def test_tune_reads_store_and_space_from_s3_and_keeps_its_storage_there(ray_cluster, s3_folder, tmp_path):
    from asrn.files import write_text
    from asrn.search_space import DEFAULT_SPACE
    from asrn.tune import TuneConfig, tune

    local = synthesize_feature_store(tmp_path / "store", num_videos=24, seed=0)
    features, storage = f"{s3_folder}/features", f"{s3_folder}/tune"
    filesystem, path = pafs.FileSystem.from_uri(features)
    pafs.copy_files(str(local), path, destination_filesystem=filesystem)
    space = write_text(Location(f"{s3_folder}/space.yaml"), (DEFAULT_SPACE.parent / "asha-demo.yaml").read_text())
    result = tune(TuneConfig(features=features, task="sub", out=tmp_path / "out", num_samples=2, max_concurrent=2,
                             space=space, scheduler="none", epochs=2, hidden=16, storage=storage, mlflow_uri="none"))
    assert len(result.trials) == 2 and {t.status for t in result.trials} == {"completed"}
    assert all(1e-8 <= t.hyperparameters["lr"] <= 1e-2 for t in result.trials)  # the space read from S3
    kept = _objects(storage)
    assert any(name.endswith("/tuner.pkl") for name in kept), kept
    assert any("/checkpoint_" in name and name.endswith("/state.pt") for name in kept), kept
    assert load_checkpoint(result.checkpoint)[1]["task"] == "sub"
