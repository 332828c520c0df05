"""asrn.train: input checks before Ray starts (unit), and real Ray Train runs on planted features (marked `ray`)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from asrn.checkpoint import CheckpointError, load_checkpoint
from asrn.cli import main
from asrn.labels import UnknownLabelError, task_labels
from asrn.loop import RECIPES
from asrn.metrics import compute_metrics
from asrn.store import FeatureStoreError, part_files
from asrn.synth_features import synthesize_feature_store
from asrn.train import (
    REPORTED_METRICS,
    EmptySplitError,
    TrainConfig,
    TrainConfigError,
    check_store,
    train,
)


@pytest.fixture(scope="module")
def small_store(tmp_path_factory) -> Path:
    return synthesize_feature_store(tmp_path_factory.mktemp("small") / "store", num_videos=12, seed=1)


def _rewrite(store: Path, out: Path, change) -> Path:
    """A copy of `store` whose single part table went through `change(table) -> table`."""
    out.mkdir()
    (out / "features.json").write_text((store / "features.json").read_text())
    for f in part_files(store):
        pq.write_table(change(pq.read_table(f)), out / f.name)
    return out


def _replace(table: pa.Table, name: str, values: list) -> pa.Table:
    i = table.column_names.index(name)
    return table.set_column(i, name, pa.array(values, table.schema.field(name).type))


# ---------------------------------------------------------------- bad input stops before training

def test_wrong_dimension_is_named(small_store, tmp_path):
    store = _rewrite(small_store, tmp_path / "s", lambda t: t)
    info = json.loads((store / "features.json").read_text())
    info["dims"]["rgb"] += 1
    (store / "features.json").write_text(json.dumps(info))
    with pytest.raises(FeatureStoreError, match=r"rgb dim 128, features.json says 129"):
        check_store(store, "sub")


def test_missing_column_is_named(small_store, tmp_path):
    store = _rewrite(small_store, tmp_path / "s", lambda t: t.drop_columns(["face"]))
    with pytest.raises(FeatureStoreError, match=r"lacks column\(s\) face"):
        check_store(store, "sub")


def test_unknown_label_is_named(small_store, tmp_path):
    def angry(t):
        return _replace(t, "labels", [["sub:angry"]] + t.column("labels").to_pylist()[1:])
    store = _rewrite(small_store, tmp_path / "s", angry)
    with pytest.raises(UnknownLabelError, match=r"video 'synth-00000'.*'sub:angry'"):
        check_store(store, "sub")


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_empty_split_is_named(small_store, tmp_path, split):
    other = "train" if split != "train" else "val"
    def move(t):
        return _replace(t, "split", [other if s == split else s for s in t.column("split").to_pylist()])
    store = _rewrite(small_store, tmp_path / "s", move)
    with pytest.raises(EmptySplitError, match=rf"no videos in split {split}"):
        check_store(store, "sub")


def test_cli_prints_the_reason_and_exits_1(small_store, tmp_path, capsys):
    store = _rewrite(small_store, tmp_path / "s", lambda t: t.drop_columns(["has_face"]))
    code = main(["train", "--features", str(store), "--task", "sub", "--out", str(tmp_path / "run")])
    assert code == 1
    assert "lacks column(s) has_face" in capsys.readouterr().err
    assert not (tmp_path / "run" / "best.pt").exists()


@pytest.mark.parametrize(("field", "value", "message"), [
    ("lr", 0.0, "lr = 0.0"), ("lr", -1.0, "lr = -1.0"), ("batch_size", 0, "batch_size = 0"),
    ("dropout", 1.0, "dropout = 1.0"), ("dropout", -0.1, "dropout"), ("epochs", 0, "epochs = 0"),
    ("variant", "gru", "unknown variant 'gru'"), ("task", "both", "unknown task 'both'"),
    ("direct_read_max_mb", -1, "direct_read_max_mb = -1"), ("weight_decay", 11.0, r"weight_decay = 11.0.*\[0, 10\]"),
])
def test_bad_hyperparameter_is_named(tmp_path, field, value, message):
    kwargs = {"features": tmp_path, "task": "sub", "out": tmp_path / "run", field: value}
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_config_takes_the_recipe_and_its_overrides(tmp_path):
    c = TrainConfig(features=tmp_path, task="sub", out=tmp_path)
    default = RECIPES["default"]
    assert (c.lr, c.weight_decay, c.batch_size, c.dropout, c.hidden, c.epochs, c.patience) == (
        default.lr, default.weight_decay, default.batch_size, default.dropout, default.hidden, default.epochs,
        default.patience)
    assert c.variant == "asrn" and c.effective_recipe().optimizer == "adamw"
    assert json.loads(json.dumps(c.to_dict()))["features"] == str(tmp_path)
    paper = TrainConfig(features=tmp_path, task="sub", out=tmp_path, recipe="paper", lr=0.02)
    recipe = paper.effective_recipe()
    assert (recipe.optimizer, recipe.lr, recipe.batch_size, recipe.dropout, recipe.epochs) == (
        "sgd", 0.02, 32, 0.7, 200)
    assert RECIPES["paper"].lr * recipe.lr_decay ** 200 == pytest.approx(0.01 * 0.01)  # §4.2: down to its 0.01


def test_train_into_a_folder_holding_a_run_is_refused_before_touching_it(small_store, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "ray_run.json").write_text('{"name": "earlier", "storage_path": "/elsewhere"}')
    before = (out / "ray_run.json").read_bytes()
    with pytest.raises(TrainConfigError, match="already holds a run"):
        train(TrainConfig(features=small_store, task="sub", out=out, mlflow_uri="none"))
    assert (out / "ray_run.json").read_bytes() == before and sorted(p.name for p in out.iterdir()) == ["ray_run.json"]


def test_resume_without_a_previous_run_is_refused(small_store, tmp_path):
    with pytest.raises(TrainConfigError, match="--resume"):
        train(TrainConfig(features=small_store, task="sub", out=tmp_path / "run", resume=True, mlflow_uri="none"))


def test_a_run_folder_on_s3_is_checked_like_a_local_one_before_ray_starts(small_store, s3_folder, monkeypatch):
    """--out s3://...: ray_run.json is read from there; a missing record, a run already there, and a resume with
    another --storage are refused by name before Ray starts (a resumed run on S3: tests/test_cluster.py)."""
    import ray

    from asrn.files import write_text
    from asrn.locations import Location

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray started for a run that cannot start"))
    out, storage = f"{s3_folder}/run", f"{s3_folder}/ray"
    config = TrainConfig(features=small_store, task="sub", out=out, storage=storage, mlflow_uri="none", resume=True)
    with pytest.raises(TrainConfigError, match=f"--resume: {out}/ray_run.json not found"):
        train(config)
    write_text(Location(out) / "ray_run.json", json.dumps({"name": "earlier", "storage_path": storage}))
    with pytest.raises(TrainConfigError, match="already holds a run"):
        train(dataclasses.replace(config, resume=False))
    with pytest.raises(TrainConfigError, match=f"kept its checkpoints in {storage}, not {s3_folder}/other"):
        train(dataclasses.replace(config, storage=f"{s3_folder}/other"))


def test_a_small_store_is_read_by_the_workers_with_cached_statistics(small_store, tmp_path):
    """Below direct_read_max_mb no Ray Data dataset is built (so no Ray is needed to build the trainer); the
    workers get the store's folder, the per-worker batch and features.json's statistics."""
    from asrn.store import feature_statistics
    from asrn.train import build_trainer

    lines = []
    config = TrainConfig(features=small_store, task="sub", out=tmp_path / "run", num_workers=2, batch_size=8)
    trainer = build_trainer(config, "direct", say=lines.append)
    loop = trainer.train_loop_config
    assert trainer.datasets == {} and loop.store == str(small_store.resolve()) and loop.batch_size == 4
    fresh = feature_statistics(small_store, "train")
    assert all(np.array_equal(loop.input_stats[m][0], fresh[m][0]) and
               np.array_equal(loop.input_stats[m][1], fresh[m][1]) for m in fresh)
    assert "each worker reads its train shard" in lines[0] and "cached in features.json" in lines[1]


def test_the_random_sequence_former_is_on_by_default_and_off_for_a_store_of_kept_steps_only(small_store, tmp_path):
    """A store that encoded only the fixed former's steps holds zeros elsewhere: training there keeps the fixed
    former (the steps a random one would draw were never encoded)."""
    from asrn.store import FeatureStore, read_info, write_info
    from asrn.train import loop_config_for

    config = TrainConfig(features=small_store, task="sub", out=tmp_path / "run")
    assert loop_config_for(config, FeatureStore(small_store)).recipe.random_steps
    assert not TrainConfig(features=small_store, task="sub", out=tmp_path / "p", recipe="paper").effective_recipe(
    ).random_steps
    kept = tmp_path / "kept"
    _rewrite(small_store, kept, lambda table: table)
    info = read_info(kept)
    write_info(kept, dataclasses.replace(info, extra={**info.extra, "encoded_steps": "window-3 kept"}))
    assert not loop_config_for(config, FeatureStore(kept)).recipe.random_steps


def test_load_checkpoint_refuses_other_files(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "random.pt")
    with pytest.raises(CheckpointError, match="random.pt: not an ASRN checkpoint"):
        load_checkpoint(tmp_path / "random.pt")
    (tmp_path / "junk.pt").write_bytes(np.random.default_rng(0).bytes(64))
    with pytest.raises(CheckpointError, match="junk.pt: not an ASRN checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")


# ---------------------------------------------------------------- real training on a local Ray cluster

SHORT_RUN_EPOCHS = 8


def test_epochs_only_in_the_checkpoint_are_logged_to_mlflow_once_and_in_their_place(tmp_path):
    """A driver killed between an epoch's checkpoint and its MLflow batch: the resumed run logs that epoch, after
    later ones, yet MLflow's history (sorted by timestamp) lists it in epoch order: it is stamped when it ended."""
    import time

    from mlflow import MlflowClient

    from asrn import mlflow_runs
    from asrn.epoch_logger import MEASURED_AT, log_epoch
    from asrn.train import log_unlogged_epochs

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id, _ = mlflow_runs.open_run(uri, "exp", "run", {}, tmp_path / "mlflow_run.json", resume=False)
    start = time.time() - 60
    history = [{"epoch": e, "train_loss": 1.0 / e, "val_map": 0.1 * e, MEASURED_AT: start + e} for e in (1, 2, 3)]
    for h in (history[0], history[2]):
        log_epoch(uri, run_id, {"epoch": h["epoch"], "train_loss": h["train_loss"], MEASURED_AT: h[MEASURED_AT]})
    assert log_unlogged_epochs(uri, run_id, history) == [2]
    assert log_unlogged_epochs(uri, run_id, history) == []
    client = MlflowClient(uri)
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [1, 2, 3]
    assert MEASURED_AT not in client.get_run(run_id).data.metrics
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "val_map")] == [(2, pytest.approx(0.2))]


@pytest.fixture(scope="module")
def planted_store(tmp_path_factory) -> Path:
    return synthesize_feature_store(tmp_path_factory.mktemp("planted") / "store", num_videos=240, seed=11)


@pytest.fixture(scope="module")
def trained(ray_cluster, planted_store, s3_server, tmp_path_factory):
    """The issue's short run (ASRN with every default, two CPU workers, DDP over gloo, 8 epochs), interrupted twice:
    `asrn train` is SIGKILLed once epoch 1 is reported, then `--resume` finishes it while rank 1 exits hard once
    after training the last epoch (ASRN_FAULT_EXIT). Epochs take a fraction of a second and the controller polls
    every 0.25 s, so the workers may be epochs ahead of the printed line when the driver dies: the fault is at the
    last epoch, which the killed run cannot have reached by then (MLflow is imported before the first report, so the
    line lags little). The first driver's console is kept in first-driver.log. The store and Ray's checkpoints are
    on the session's S3 server (`--features s3://... --storage s3://...`): the workers read the store by URI, and
    the resumed run finds its checkpoints there."""
    import signal
    import subprocess
    import sys
    import uuid

    from asrn.locations import Location

    root = tmp_path_factory.mktemp("run")
    uri, out = f"sqlite:///{root / 'mlflow.db'}", root / "out"
    prefix = f"{s3_server}/short-run-{uuid.uuid4().hex[:6]}"
    features, storage = f"{prefix}/features", f"{prefix}/ray"
    Location(features).upload(planted_store)
    flags = ["--features", features, "--storage", storage, "--task", "sub", "--out", str(out), "--num-workers", "2",
             "--epochs", str(SHORT_RUN_EPOCHS), "--tracking-uri", uri, "--experiment-name", "test-train",
             "--register-model", "asrn-short-run", "--address", ray_cluster.get_runtime_context().gcs_address]
    driver = subprocess.Popen([sys.executable, "-m", "asrn.cli", "train", *flags], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    console = []
    for line in driver.stdout:  # the Train controller's line, forwarded to the driver
        console.append(line)
        if f"epoch 1/{SHORT_RUN_EPOCHS}:" in line:
            os.killpg(driver.pid, signal.SIGKILL)
            break
    driver.wait(timeout=120)
    (root / "first-driver.log").write_text("".join(console))
    config = TrainConfig(features=features, storage=storage, task="sub", out=out, num_workers=2,
                         epochs=SHORT_RUN_EPOCHS, mlflow_uri=uri, experiment="test-train",
                         register_model="asrn-short-run", resume=True)
    os.environ["ASRN_FAULT_EXIT"] = f"1:{SHORT_RUN_EPOCHS}:{root / 'fault-fired'}"
    try:
        return config, train(config), driver.returncode
    finally:
        del os.environ["ASRN_FAULT_EXIT"]


@pytest.mark.ray
def test_the_short_run_trains_and_reports_its_scores(trained):
    """Two DDP workers lower the training loss. The issue's bars are printed, not asserted: on its 36 test videos
    the short run's mAP does not beat the same scores given to shuffled videos, and its F1 macro does not beat
    predicting every class (docs/results.md, "The short run does not meet its bar")."""
    config, result, _ = trained
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < 0.9 * losses[0], losses
    table = pq.read_table(config.out / "predictions.parquet").to_pandas()
    test = table[table.split == "test"]
    labels = list(task_labels("sub"))
    y = np.array([[name in row for name in labels] for row in test["labels"]], dtype=int)
    scores = test[labels].to_numpy()
    rng = np.random.default_rng(0)
    shuffled = [compute_metrics(y, scores[rng.permutation(len(scores))], labels)["map"] for _ in range(200)]
    every_class = compute_metrics(y, np.ones(y.shape), labels)["f1_macro"]
    test_metrics, tuned = result.metrics["test"], result.metrics["test_at_val_thresholds"]
    print(f"short run: test mAP {test_metrics['map']:.3f} (prevalence {y[:, y.any(0)].mean(0).mean():.3f}; shuffled "
          f"scores: median {np.median(shuffled):.3f}, 95th percentile {np.percentile(shuffled, 95):.3f}); F1 macro "
          f"at val thresholds {tuned['f1_macro']:.3f}, at 0.5 {test_metrics['f1_macro']:.3f}, predicting every "
          f"class {every_class:.3f}")


@pytest.mark.ray
def test_a_killed_driver_and_a_dead_worker_lose_and_repeat_no_epoch(trained):
    import signal

    from mlflow import MlflowClient

    config, result, killed = trained
    assert killed == -signal.SIGKILL  # the first driver was killed half-way
    assert (config.out.parent / "fault-fired").is_file()  # rank 1 did exit in the resumed run
    assert [h["epoch"] for h in result.history] == list(range(1, SHORT_RUN_EPOCHS + 1))
    steps = [m.step for m in MlflowClient(result.tracking_uri).get_metric_history(result.mlflow_run_id, "train_loss")]
    assert sorted(steps) == list(range(1, SHORT_RUN_EPOCHS + 1))


@pytest.mark.ray
def test_the_checkpoints_of_the_resumed_run_are_in_the_s3_storage(trained, s3_listing):
    """Both drivers kept Ray's checkpoints under --storage on S3 (one per epoch reported; the killed driver's are
    the ones the resumed run started from), none on the local disk."""
    config, result, _ = trained
    run = json.loads((config.out / "ray_run.json").read_text())
    assert run["storage_path"] == config.storage
    kept = s3_listing(f"{config.storage}/{run['name']}")
    epochs = {name.split("/")[0] for name in kept if name.startswith("checkpoint_") and name.endswith("/state.pt")}
    assert len(epochs) >= 2, sorted(kept)
    assert not (config.out / "ray_results").exists()


@pytest.mark.ray
def test_outputs_and_checkpoint(trained):
    config, result, _ = trained
    for name in ("config.json", "best.pt", "metrics.json", "predictions.parquet", "loss_curves.png",
                 "per_class.png", "mlflow_run.json"):
        assert (config.out / name).is_file(), name
    assert json.loads((config.out / "config.json").read_text()) == config.to_dict()
    model, ckpt = load_checkpoint(result.checkpoint)
    assert ckpt["labels"] == list(task_labels("sub")) and ckpt["epoch"] == result.best_epoch
    assert ckpt["store_info"]["dims"] == ckpt["model_config"]["dims"] == {"rgb": 128, "motion": 64, "body": 64,
                                                                           "face": 32}
    assert ckpt["store_info"]["preset"] == "synthetic" and ckpt["store_info"]["fps"] == 2.0
    assert set(REPORTED_METRICS) <= set(ckpt["val_metrics"])
    assert not model.training


@pytest.mark.ray
def test_metrics_json_agrees_with_predictions(trained):
    config, _, _ = trained
    metrics = json.loads((config.out / "metrics.json").read_text())
    table = pq.read_table(config.out / "predictions.parquet").to_pandas()
    labels = list(task_labels("sub"))
    for split in ("val", "test"):
        part = table[table.split == split]
        y = np.array([[name in row for name in labels] for row in part["labels"]], dtype=int)
        recomputed = compute_metrics(y, part[labels].to_numpy(), labels)
        for key in ("map", "f1_micro", "f1_macro", "acc", "subacc"):
            assert metrics[split][key] == pytest.approx(recomputed[key], abs=1e-6), (split, key)
        for name in labels:
            assert metrics[split]["per_class"][name] == pytest.approx(recomputed["per_class"][name]), (split, name)


@pytest.mark.ray
def test_mlflow_holds_params_and_epoch_metrics(trained):
    from mlflow import MlflowClient

    config, result, _ = trained
    client = MlflowClient(result.tracking_uri)
    run = client.get_run(json.loads((config.out / "mlflow_run.json").read_text())["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["lr"] == str(config.lr) and run.data.params["variant"] == "asrn"
    assert run.data.params["num_workers"] == "2" and run.data.params["recipe"] == "default"
    for key in REPORTED_METRICS[1:]:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert steps == list(range(1, SHORT_RUN_EPOCHS + 1)), key
    assert run.data.metrics["test_map"] == pytest.approx(result.metrics["test"]["map"])
    assert run.data.metrics["test_ap.sub.warm"] == pytest.approx(result.metrics["test"]["per_class"]["sub:warm"]["ap"])
    assert run.data.params["store.preset"] == "synthetic" and run.data.tags["mlflow.user"]  # who ran it
    assert run.data.tags["mlflow.source.name"]
    assert run.data.metrics["test_f1_macro"] == pytest.approx(result.metrics["test"]["f1_macro"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "loss_curves.png", "per_class.png"} <= artifacts


@pytest.mark.ray
def test_the_console_shows_the_projects_lines_not_rays(trained):
    """`asrn train` without --verbose: loading steps and epoch lines, not Ray's per-report, checkpoint and dataset
    lines (with --verbose they come back: tests/test_tune.py's first driver)."""
    config, _, _ = trained
    console = (config.out.parent / "first-driver.log").read_text()
    assert "store [1/2]: " in console and "each worker reads its train shard and the val split" in console
    assert "resident per worker" in console  # chosen by the resident size, not the Parquet size
    assert "store [2/2]: input statistics of the train split cached in features.json" in console
    assert "store: loaded in" in console
    assert f"epoch 1/{SHORT_RUN_EPOCHS}:" in console and "ETA" in console
    for ray_line in ("Reporting training result", "Checkpoint successfully created", "execution finished"):
        assert ray_line not in console, ray_line
    # every line is one of the project's: nothing of Ray's, MLflow's or a library's warnings in between
    project = ("store ", "store: ", "training ", "ray: ", "epoch ")
    assert [line for line in console.splitlines() if not line.startswith(project)] == [], console


@pytest.mark.ray
def test_the_best_model_is_logged_registered_and_scores_as_best_pt(trained, planted_store):
    import mlflow.pytorch
    from mlflow import MlflowClient

    from asrn.mlflow_model import pack_videos, using_tracking_uri
    from asrn.store import load_videos, read_info

    config, result, _ = trained
    run = MlflowClient(result.tracking_uri).get_run(result.mlflow_run_id)
    assert result.model_uri and run.data.tags["asrn.model_uri"] == result.model_uri
    assert run.data.params["store.uri"] == str(config.features)  # the S3 copy of planted_store
    assert {"store.weights.rgb", "store.detector", "store.num_test_videos", "epochs", "task"} <= set(run.data.params)
    with using_tracking_uri(result.tracking_uri):
        version = MlflowClient().get_model_version("asrn-short-run", "1")
        model = mlflow.pytorch.load_model("models:/asrn-short-run/1")
    assert version.run_id == result.mlflow_run_id
    test = load_videos(planted_store, splits=["test"])
    table = pq.read_table(config.out / "predictions.parquet").to_pandas().set_index("video_id")
    expected = table.loc[[v.video_id for v in test], list(task_labels("sub"))].to_numpy()
    with torch.no_grad():
        scores = model(torch.from_numpy(pack_videos(test, read_info(planted_store).dims))).numpy()
    np.testing.assert_allclose(scores, expected, atol=1e-5)


def test_the_epoch_logger_writes_mlflow_off_the_callers_thread_and_prints_an_epoch_only_once_logged(
        tmp_path, monkeypatch):
    """The controller's callback hands MLflow writes to one thread, which logs an epoch and then prints its line
    (a driver killed after the line has logged it); the last epoch (here: early stopping) waits for all writes."""
    import pickle
    import threading

    from mlflow import MlflowClient

    import asrn.epoch_logger
    from asrn import mlflow_runs
    from asrn.epoch_logger import EpochLogger

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id, _ = mlflow_runs.open_run(uri, "exp", "run", {}, tmp_path / "mlflow_run.json", resume=False)
    printed = []

    def record(line, **kwargs):  # what MLflow holds when each line is printed, and on which thread
        steps = sorted(m.step for m in MlflowClient(uri).get_metric_history(run_id, "train_loss"))
        printed.append((line.split(":")[0], steps, threading.current_thread().name))

    monkeypatch.setattr(asrn.epoch_logger, "print", record, raising=False)
    logger = EpochLogger(epochs=10, tracking_uri=uri, run_id=run_id, patience=2)
    report = {"train_loss": 0.5, "val_loss": 0.6, "val_map": 0.4, "val_f1_macro": 0.2, "epoch_seconds": 1.0}
    for epoch, best in ((1, 1), (2, 1), (2, 1), (3, 1)):  # epoch 2 repeated after a restart; 3: patience reached
        logger.after_report(None, [{**report, "epoch": epoch, "best_epoch": best}], None)
    assert [(line, steps) for line, steps, _ in printed] == [
        ("epoch 1/10", [1]), ("epoch 2/10", [1, 2]), ("epoch 2/10", [1, 2]), ("epoch 3/10", [1, 2, 3])]
    assert {thread for _, _, thread in printed} != {threading.current_thread().name}
    assert all(thread.startswith("asrn-mlflow") for _, _, thread in printed)
    assert pickle.loads(pickle.dumps(logger)).logged == {1, 2, 3}  # Ray pickles it: the thread stays behind


def test_a_store_with_a_foreign_file_and_without_the_tracked_columns_builds_a_trainer(small_store, tmp_path):
    """The two stores `asrn train` refused before: a user's file beside the parts, and parts written before
    body_tracked/face_tracked. Both pass the check and give the workers what they read (Ray runs: lead's check)."""
    from asrn.shards import read_split
    from asrn.store import TRACKED_COLUMNS, StoreWarning
    from asrn.train import build_trainer

    store = _rewrite(small_store, tmp_path / "s", lambda t: t.drop_columns(list(TRACKED_COLUMNS)))
    (store / "my_notes.parquet").write_bytes(b"notes")
    with pytest.warns(StoreWarning, match="ignoring my_notes.parquet"):
        info, counts = check_store(store, "sub")
    assert sum(counts.values()) == 12
    trainer = build_trainer(TrainConfig(features=store, task="sub", out=tmp_path / "run"), "older")
    assert trainer.train_loop_config.store == str(store.resolve())
    videos = read_split(trainer.train_loop_config.store, "train")
    assert len(videos) == counts["train"] and not any(v.body_tracked.any() or v.face_tracked.any() for v in videos)


def test_resume_refuses_a_flag_that_would_change_the_run_and_keeps_the_ones_left_out(small_store, tmp_path):
    from asrn.cli import given_flags
    from asrn.train import _check_resume, with_run_values

    out = tmp_path / "run"
    out.mkdir()
    first = TrainConfig(features=small_store, task="sub", out=out, epochs=100, lr=3e-3)
    (out / "config.json").write_text(json.dumps(first.to_dict()))
    # `--resume` without --epochs: the run's 100 epochs, not the recipe's
    flags = {f.name: None for f in dataclasses.fields(TrainConfig)} | {"features": small_store, "task": "sub",
                                                                        "out": out, "resume": True}
    resumed = with_run_values(flags, given_flags(["--resume"]))
    assert resumed["epochs"] == 100 and resumed["lr"] == pytest.approx(3e-3)
    _check_resume(TrainConfig(**{k: v for k, v in resumed.items() if v is not None}))  # the same run: accepted
    # a new --lr and --epochs named on the command line: refused, each by name, never half applied
    changed = with_run_values({**flags, "lr": 1e-3, "epochs": 60}, given_flags(["--lr", "0.001", "--epochs=60"]))
    with pytest.raises(TrainConfigError) as refused:
        _check_resume(TrainConfig(**{k: v for k, v in changed.items() if v is not None}))
    assert "--lr 0.001 differs from the run's 0.003" in str(refused.value)
    assert "--epochs 60 differs from the run's 100" in str(refused.value)
    assert with_run_values({**flags, "resume": False}, set()) == {**flags, "resume": False}  # a new run: as given


def test_precision_is_a_flag_recorded_with_the_run(small_store, tmp_path):
    assert TrainConfig(features=small_store, task="sub", out=tmp_path).precision == "fp32"
    assert TrainConfig(features=small_store, task="sub", out=tmp_path, use_gpu=True).precision == "bf16"
    config = TrainConfig(features=small_store, task="sub", out=tmp_path, precision="bf16")
    assert config.to_dict()["precision"] == "bf16"
    with pytest.raises(TrainConfigError, match="--precision 'fp16'"):
        TrainConfig(features=small_store, task="sub", out=tmp_path, precision="fp16")


def test_a_restored_rank_draws_the_random_numbers_it_would_have_drawn():
    from asrn.train_worker import gathered_rng_states, set_rng_state

    torch.manual_seed(5)
    [saved] = gathered_rng_states()  # no process group: this process's state only
    expected = torch.rand(4)  # e.g. the next epoch's dropout masks
    torch.manual_seed(99)  # a restarted worker, seeded afresh
    set_rng_state(saved)
    assert torch.equal(torch.rand(4), expected)


def test_a_diverged_report_is_one_line_and_not_logged(capsys):
    from asrn.epoch_logger import DIVERGED, EpochLogger

    EpochLogger(epochs=5).after_report(None, [{"epoch": 3, "val_map": float("nan"), DIVERGED: "epoch 3, batch 2 of "
                                               "3 on rank 1: training loss is nan"}], None)
    assert capsys.readouterr().out == "epoch 3/5: stopped: epoch 3, batch 2 of 3 on rank 1: training loss is nan\n"


def test_ray_data_batches_are_collated_ahead_in_order(small_store):
    """The Ray Data input path collates the next batch on a thread while the current one trains, in order."""
    from asrn.store import FeatureStore, videos_to_table
    from asrn.train_worker import _batches

    videos = FeatureStore(small_store).videos(["train"])[:7]

    class Shard:  # what Ray Train's get_dataset_shard gives: iter_batches over pyarrow tables
        def iter_batches(self, batch_size, batch_format, prefetch_batches, **kwargs):
            assert batch_format == "pyarrow" and prefetch_batches >= 1
            for i in range(0, len(videos), batch_size):
                yield videos_to_table(videos[i:i + batch_size])

    batches = list(_batches(Shard(), 3, "sub", torch.device("cpu")))
    assert [len(b.video_ids) for b in batches] == [3, 3, 1]
    assert [i for b in batches for i in b.video_ids] == [v.video_id for v in videos]
