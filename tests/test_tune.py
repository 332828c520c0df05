"""`asrn tune`: a small real sweep (Ray Tune + Optuna + ASHA, each trial a TorchTrainer) on planted features.

One sweep is shared by the tests of the module (it is the slow part): 4 trials, 2 at a time, 1 Train worker
each, on the session's 4-CPU cluster. Its store, search space and storage are on the session's S3 server; MLflow
writes to a sqlite file in a tmp folder.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import time

import pytest

from asrn.search_space import SearchSpaceError
from asrn.tune import TuneConfig, TuneConfigError, fit_concurrency, tune

# Ray Train gives a worker group 60 s to start; on a busy 2-core machine starting a worker can take longer.
# Set before the session's cluster starts, so that its raylet (and every trial and Train controller) inherits it.
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "600")

NUM_TRIALS = 4
EPOCHS = 3
# Optuna's first trials are its seeded random draws: with seed 4, lr 6e-3, 2e-4, 3e-7 (hopeless), 2e-3. The third
# trial starts once one of the first two (2 at a time) has ended, so ASHA has rungs to stop it at.
SEED = 4


def _config(tmp, on_s3: dict[str, str], **overrides) -> TuneConfig:
    values = dict(features=on_s3["features"], task="sub", out=tmp / "out", num_samples=NUM_TRIALS, max_concurrent=2,
                  space=on_s3["space"], storage=on_s3["storage"], workers_per_trial=1, epochs=EPOCHS, hidden=16,
                  grace_period=1, reduction_factor=2, mlflow_uri=f"sqlite:///{tmp / 'mlflow.db'}",
                  experiment="test-tune", seed=SEED)
    values.update(overrides)
    return TuneConfig(**values)


@pytest.fixture(scope="module")
def on_s3(s3_server, tmp_path_factory) -> dict[str, str]:
    """The sweep's store, search space and Tune/Train storage, all on the session's S3 server (the local copies
    are removed: nothing can be read from this machine's disk by mistake)."""
    import shutil
    import uuid

    from asrn.locations import Location
    from asrn.search_space import DEFAULT_SPACE
    from asrn.synth_features import synthesize_feature_store

    prefix = f"{s3_server}/sweep-{uuid.uuid4().hex[:6]}"
    local = synthesize_feature_store(tmp_path_factory.mktemp("store") / "features", num_videos=100, seed=0)
    Location(f"{prefix}/features").upload(local)
    shutil.rmtree(local)
    Location(f"{prefix}/space.yaml").upload(DEFAULT_SPACE.parent / "asha-demo.yaml")
    return {"features": f"{prefix}/features", "space": f"{prefix}/space.yaml", "storage": f"{prefix}/storage"}


def _cli_flags(tmp, on_s3: dict[str, str], ray) -> list[str]:
    """`asrn tune` flags of the sweep `_config` describes."""
    return ["--features", on_s3["features"], "--task", "sub", "--out", str(tmp / "out"), "--num-samples",
            str(NUM_TRIALS), "--max-concurrent", "2", "--space", on_s3["space"], "--storage", on_s3["storage"],
            "--epochs", str(EPOCHS), "--hidden", "16", "--grace-period", "1", "--reduction-factor", "2",
            "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}", "--experiment-name", "test-tune", "--seed", str(SEED),
            "--address", ray.get_runtime_context().gcs_address]


@pytest.fixture(scope="module")
def another_ray(ray_cluster, tmp_path_factory):
    """A second Ray instance on this machine (`ray start --head`, as a researcher's long-running one), up while the
    module's sweep runs beside it on the session's cluster: Train V2's placement-group cleaner must still find its
    own cluster, or the trials ASHA stops keep their CPUs and the sweep waits forever (asrn.ray_session)."""
    import signal
    import socket
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = tempfile.mkdtemp(prefix="ray2-", dir="/tmp")  # short: Ray's socket paths live under it
    log = (tmp_path_factory.mktemp("another-ray") / "ray-start.log").open("w")
    ray = Path(sys.executable).parent / "ray"
    agent = ["--dashboard-agent-listen-port=53001", "--dashboard-agent-grpc-port=53002",
             "--runtime-env-agent-port=53003", "--metrics-export-port=53004"]
    process = subprocess.Popen([str(ray), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
                                f"--port={port}", "--num-cpus=0", "--include-dashboard=false", f"--temp-dir={temp}",
                                "--min-worker-port=26000", "--max-worker-port=26099", *agent],
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                               env={k: v for k, v in os.environ.items() if not k.startswith("RAY_API_SERVER")})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert process.poll() is None, f"ray start failed: {log.name}"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.5)
    gcs = subprocess.run(["pgrep", "-f", "gcs_server"], capture_output=True, text=True).stdout.split()
    assert len(gcs) >= 2, gcs  # two Ray instances: the condition under which the cleaner used to give up
    yield f"127.0.0.1:{port}"
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=60)
    log.close()


@pytest.fixture(scope="module")
def sweep(ray_cluster, another_ray, on_s3, tmp_path_factory):
    """The shared sweep, beside another Ray instance (`another_ray`), interrupted twice: `asrn tune --verbose` is
    SIGKILLed once its first trial has ended (its console kept in first-driver.log), then `--resume` finishes it;
    and one trial's Train worker exits hard once after its epoch 2 (ASRN_FAULT_EXIT, in whichever of the two
    drivers reaches it)."""
    import signal
    import subprocess
    import sys

    tmp = tmp_path_factory.mktemp("sweep")
    started = time.perf_counter()
    fault = {"ASRN_FAULT_EXIT": f"0:2:{tmp / 'fault-fired'}"}
    console = (tmp / "first-driver.log").open("w")
    driver = subprocess.Popen([sys.executable, "-m", "asrn.cli", "tune", *_cli_flags(tmp, on_s3, ray_cluster),
                               "--verbose", "--register-model", "asrn-sweep"],
                              stdout=console, stderr=subprocess.STDOUT, start_new_session=True,
                              env={**os.environ, **fault})
    deadline = time.monotonic() + 600
    while not (tmp / "out" / "trial_status.json").is_file() and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)  # the first trial's end is recorded there
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait(timeout=60)
    console.close()
    os.environ.update(fault)
    try:
        result = tune(_config(tmp, on_s3, resume=True, register_model="asrn-sweep"))
    finally:
        del os.environ["ASRN_FAULT_EXIT"]
    print(f"sweep of {NUM_TRIALS} trials took {time.perf_counter() - started:.0f} s")
    return tmp, result, driver.returncode


def _trials_csv(out):
    with (out / "trials.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.mark.ray
def test_sweep_completes_and_writes_outputs(sweep):
    tmp, result, _ = sweep
    out = tmp / "out"
    assert (tmp / "fault-fired").is_file()  # a trial's worker died, and the sweep still completed
    rows = _trials_csv(out)
    assert len(rows) == NUM_TRIALS
    assert {r["status"] for r in rows} <= {"completed", "stopped_early"}
    for r in rows:
        assert 1e-8 <= float(r["lr"]) <= 1e-2 and 0.3 <= float(r["dropout"]) <= 0.6 and int(r["batch_size"]) in (8, 16)
        assert 1 <= int(r["epochs"]) <= EPOCHS
    assert result.max_concurrent == 2
    assert (out / "sweep.png").stat().st_size > 0 and (out / "best.pt").is_file()


@pytest.mark.ray
def test_best_config_is_the_maximum_of_trials_csv(sweep):
    tmp, _, _ = sweep
    out = tmp / "out"
    best = json.loads((out / "best_config.json").read_text())
    scores = [float(r["best_val_map"]) for r in _trials_csv(out)]
    assert best["best_val_map"] == pytest.approx(max(scores))
    assert set(best["hyperparameters"]) >= {"dropout", "lr", "batch_size"}


@pytest.mark.ray
def test_best_checkpoint_is_a_train_checkpoint_of_the_best_trial(sweep):
    from asrn.checkpoint import load_checkpoint

    tmp, result, _ = sweep
    model, checkpoint = load_checkpoint(tmp / "out" / "best.pt")
    assert checkpoint["epoch"] == result.best.best_epoch
    assert checkpoint["train_config"]["lr"] == pytest.approx(result.best.hyperparameters["lr"])
    assert checkpoint["model_config"]["hidden"] == 16
    assert checkpoint["val_metrics"]["val_map"] == pytest.approx(result.best.best_val_map)


@pytest.mark.ray
def test_a_trial_asha_stopped_is_recorded_as_such(sweep):
    """Whether ASHA stops one of 4 short trials depends on their epoch-1 and -2 val mAPs on a tiny val split (it
    stopped one in most runs here, not all): `test_asha_stops_the_trial_behind_at_a_rung` shows the decision itself."""
    tmp, _, _ = sweep
    rows = _trials_csv(tmp / "out")
    assert all(int(r["epochs"]) < EPOCHS for r in rows if r["status"] == "stopped_early"), rows
    assert all(r["status"] in ("completed", "stopped_early") for r in rows), rows


def test_asha_stops_the_trial_behind_at_a_rung(tmp_path):
    """The sweep's scheduler, as built for it, on three trials' epoch-1 results: a trial below the median of those
    recorded before it is stopped there, on the current val_map (not the searcher's best_val_map, highest here for
    the trial behind)."""
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler

    from asrn.tune import build_scheduler

    scheduler = build_scheduler(dataclasses.replace(_config(tmp_path, {"features": str(tmp_path), "space": None,
                                                                       "storage": str(tmp_path)}),
                                                    features=tmp_path))
    scheduler.set_search_properties(None, None)  # as Tune calls it: the scheduler keeps its own metric
    decisions = {}
    for trial_id, val_map, best in (("first", 0.5, 0.5), ("better", 0.6, 0.6), ("behind", 0.2, 0.9)):
        trial = Trial("train_trial", trial_id=trial_id, stub=True)
        scheduler.on_trial_add(None, trial)
        decisions[trial_id] = scheduler.on_trial_result(None, trial, {"epoch": 1, "val_map": val_map,
                                                                      "best_val_map": best})
    assert decisions == {"first": TrialScheduler.CONTINUE, "better": TrialScheduler.CONTINUE,
                         "behind": TrialScheduler.STOP}


@pytest.mark.ray
def test_mlflow_holds_a_parent_and_one_child_run_per_trial(sweep):
    from mlflow import MlflowClient

    tmp, result, _ = sweep
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("test-tune")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == result.mlflow_run_id]
    assert [p.info.run_id for p in parents] == [result.mlflow_run_id]
    assert len(children) == NUM_TRIALS
    rows = {r["trial_id"]: r for r in _trials_csv(tmp / "out")}
    for child in children:
        row = rows[child.data.tags["asrn.trial_id"]]
        assert {"dropout", "lr", "batch_size", "variant", "task", "epochs", "recipe", "features", "store.uri",
                "store.preset", "store.weights.rgb", "store.detector"} <= set(child.data.params)
        assert child.data.tags["mlflow.user"] and child.data.tags["mlflow.source.name"]
        assert float(child.data.params["lr"]) == pytest.approx(float(row["lr"]))
        assert child.data.tags["status"] == row["status"]
        assert child.data.metrics["best_val_map"] == pytest.approx(float(row["best_val_map"]))
        history = client.get_metric_history(child.info.run_id, "val_map")
        assert sorted(m.step for m in history) == list(range(1, int(row["epochs"]) + 1))
    parent = parents[0]
    assert parent.data.tags["best_trial_id"] == result.best.trial_id
    assert parent.data.tags["best_run_id"] == result.best.mlflow_run_id
    assert parent.data.metrics["best_val_map"] == pytest.approx(result.best.best_val_map)
    assert parent.data.metrics["best_test_map"] == pytest.approx(result.metrics["test"]["map"])  # scored on test
    assert "sweep.png" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert parent.data.tags["asrn.model_uri"] == result.model_uri  # the best trial's model, on the parent
    assert client.get_model_version("asrn-sweep", "1").run_id == parent.info.run_id


@pytest.mark.ray
def test_verbose_brings_rays_lines_back(sweep):
    """`asrn tune --verbose` shows Ray Train's per-report and checkpoint lines (without it they stay in Ray's logs:
    tests/test_train.py's first driver)."""
    tmp, _, _ = sweep
    console = (tmp / "first-driver.log").read_text()
    assert "Reporting training result" in console and "Checkpoint successfully created" in console


@pytest.mark.ray
def test_tune_and_train_state_live_in_the_s3_storage(sweep, on_s3, s3_listing):
    """--storage s3://: Tune's experiment and every trial's Train checkpoints are there, none under --out."""
    tmp, result, _ = sweep
    kept = s3_listing(on_s3["storage"])
    assert "sweep/tuner.pkl" in kept, sorted(kept)
    for trial in result.trials:
        assert any(name.startswith(f"trials/{trial.trial_id}/checkpoint_") and name.endswith("/state.pt")
                   for name in kept), (trial.trial_id, sorted(kept))
    assert not (tmp / "out" / "sweep").exists() and not (tmp / "out" / "trials").exists()


@pytest.mark.ray
def test_resume_of_a_finished_sweep_reruns_nothing(sweep, on_s3, s3_listing):
    tmp, first, _ = sweep

    def snapshots() -> dict[str, float]:
        return {k: t for k, t in s3_listing(f"{on_s3['storage']}/trials").items()
                if k.endswith("checkpoint_manager_snapshot.json")}

    before = snapshots()
    assert len(before) >= NUM_TRIALS
    again = tune(_config(tmp, on_s3, resume=True))
    assert {t.trial_id: t.epochs for t in again.trials} == {t.trial_id: t.epochs for t in first.trials}
    assert snapshots() == before  # no Train run was started again
    assert again.mlflow_run_id == first.mlflow_run_id


@pytest.mark.ray
def test_the_killed_sweep_resumed_with_every_trial_once(sweep):
    import signal

    tmp, result, killed = sweep
    assert killed == -signal.SIGKILL, "the sweep ended before it could be killed"
    rows = _trials_csv(tmp / "out")
    assert sorted(r["trial_id"] for r in rows) == sorted({t.trial_id for t in result.trials})
    assert len(rows) == NUM_TRIALS


# ---------------------------------------------------------------- refused before Ray starts

@pytest.mark.parametrize("text, key", [
    ("momentum: {distribution: uniform, low: 0.1, high: 0.9}\n", "momentum"),
    ("lr: {distribution: loguniform, low: 0.1, high: 0.1}\n", "lr"),
    ("dropout: {distribution: gaussian, low: 0.1, high: 0.5}\n", "dropout"),
])
def test_bad_space_is_refused_before_any_trial(tmp_path, text, key, monkeypatch):
    import ray

    space = tmp_path / "space.yaml"
    space.write_text(text)
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray started for a bad space"))
    config = TuneConfig(features=tmp_path / "no-features", task="sub", out=tmp_path / "out", num_samples=2,
                        space=space)
    with pytest.raises(SearchSpaceError, match=key):
        tune(config)
    assert not (tmp_path / "out").exists()


def test_a_sweep_on_s3_storage_is_checked_before_ray_starts(s3_folder, tmp_path, monkeypatch):
    """--resume with nothing in the S3 storage, and a new sweep over one kept there, are refused by name."""
    import ray

    from asrn.locations import Location
    from asrn.synth_features import synthesize_feature_store

    features = synthesize_feature_store(tmp_path / "features", num_videos=12, seed=0)
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray started for a sweep that cannot run"))
    config = TuneConfig(features=features, task="sub", out=tmp_path / "out", num_samples=2, storage=s3_folder,
                        mlflow_uri="none", resume=True)
    with pytest.raises(TuneConfigError, match=f"--resume: no sweep in {s3_folder}/sweep"):
        tune(config)
    Location(f"{s3_folder}/sweep/tuner.pkl").upload(features / "features.json")  # any object: a sweep is there
    with pytest.raises(TuneConfigError, match=f"{s3_folder}/sweep already holds a sweep"):
        tune(dataclasses.replace(config, resume=False))


@pytest.mark.parametrize("field, value", [("num_samples", 0), ("max_concurrent", 0), ("workers_per_trial", 0),
                                          ("epochs", 0), ("scheduler", "hyperband")])
def test_bad_options_are_refused(tmp_path, field, value):
    with pytest.raises(TuneConfigError, match=field):
        TuneConfig(**{"features": tmp_path, "task": "sub", "out": tmp_path / "out", "num_samples": 2, field: value})


def test_max_concurrent_is_clamped_to_the_cluster():
    assert fit_concurrency(2, {"CPU": 1}, {"CPU": 4}) == (2, "")
    clamped, note = fit_concurrency(8, {"CPU": 2}, {"CPU": 4})
    assert clamped == 1 and "lowered to 1" in note
    assert fit_concurrency(4, {"GPU": 1}, {"CPU": 16, "GPU": 2})[0] == 2
    with pytest.raises(TuneConfigError, match="workers-per-trial"):
        fit_concurrency(1, {"CPU": 8}, {"CPU": 4})


def test_a_cluster_that_can_grow_queues_the_trials_instead_of_refusing():
    """An autoscaling cluster at 0 workers (head num-cpus 0): warned, --max-concurrent kept, nothing raised."""
    for cluster in ({}, {"CPU": 0.0, "memory": 1e9}, {"CPU": 2.0}):
        requested, note = fit_concurrency(4, {"CPU": 4, "GPU": 1}, cluster, can_grow=True)
        assert requested == 4 and "queue until nodes join" in note
        with pytest.raises(TuneConfigError, match="workers-per-trial"):
            fit_concurrency(4, {"CPU": 4, "GPU": 1}, cluster)
    assert fit_concurrency(8, {"CPU": 2}, {"CPU": 4}, can_grow=True)[0] == 1  # a trial fits now: clamped as before


def test_the_searcher_learns_a_trials_best_epoch_not_its_last():
    """A trial that peaks early and drifts until early stopping delivers its best epoch's checkpoint: Optuna is told
    that epoch's val mAP (`best_val_map`), not the last epoch's `val_map`, which ASHA compares."""
    from asrn.search_space import DEFAULT_SPACE, load_search_space, to_tune_space
    from asrn.tune import build_searcher

    searcher = build_searcher(seed=0)
    searcher.set_search_properties(None, None, to_tune_space(load_search_space(DEFAULT_SPACE)))
    assert searcher.suggest("peaked-early") is not None
    searcher.on_trial_complete("peaked-early", {"epoch": 9, "val_map": 0.41, "best_val_map": 0.63, "best_epoch": 3})
    [trial] = searcher._ot_study.trials  # Optuna's own record of what it learnt
    assert trial.value == pytest.approx(0.63)
