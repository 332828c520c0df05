"""Sweep dropout, lr and batch size with Ray Tune + Optuna (TPE) and ASHA; every trial is a distributed TorchTrainer.

Ray 2.60 runs Train V2, where `tune.Tuner` no longer takes a trainer: each Tune trial is a function trainable
(`train_trial`) that builds the same TorchTrainer as `asrn train` (`asrn.train.build_trainer`) and calls `fit()`.
- Metrics reach Tune through `ray.tune.integration.ray_train.TuneReportCallback`, a Train `UserCallback`: the
  Train controller puts rank 0's metrics of every epoch (with the checkpoint's path) on a queue that the trial's
  Tune session reads, so OptunaSearch and ASHA see `val_f1_macro` per epoch.
- When ASHA stops a trial, Tune terminates the trial actor; the Train controller it created is owned by that
  actor and dies with it, and Train's detached PlacementGroupCleaner then frees the workers' placement group.
- Resources: the trial itself asks for `TRIAL_CPUS` (Tune refuses an all-zero request); its Train workers ask
  for their own (`ScalingConfig`); `max_concurrent` is clamped so that the workers of all concurrent trials fit
  in the cluster with `DATA_CPUS` left for Ray Data's read tasks, else trials would wait on each other forever.

MLflow (written only by the Tune driver, through `SweepRecorder`): one parent run for the sweep and one nested
child run per trial (tag `mlflow.parentRunId`) with params dropout, lr, batch_size, per-epoch metrics
(step = epoch), tag `status` (completed | stopped_early | failed) and metric `best_val_f1_macro`; the parent
carries tags best_trial_id / best_run_id, metric best_val_f1_macro and the sweep plot.

Outputs in `out/`: tune_config.json, best_config.json, best.pt (the best trial's best epoch, in `asrn train`'s
format), trials.csv, sweep.png, trial_status.json, mlflow_run.json, `sweep/` (Tune's experiment, for --resume)
and `trials/<trial_id>/` (each trial's Ray Train run and checkpoints).
"""

from __future__ import annotations

import csv
import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import ray
import ray.data
import ray.train
import ray.tune

from asrn.errors import AsrnError
from asrn.labels import TASKS, UnknownTaskError
from asrn.plots import plot_sweep
from asrn.search_space import DEFAULT_SPACE, Dimension, load_search_space, to_tune_space

METRIC = "val_f1_macro"
MODE = "max"
SWEEP_NAME = "sweep"  # Tune's experiment folder under the storage path
TRIAL_CPUS = 0.01  # the trial process only waits on its TorchTrainer; Tune refuses a request of 0
DATA_CPUS = 1.0  # left free for Ray Data's read tasks, which the trials' Train workers do not hold
TUNED = ("dropout", "lr", "batch_size")  # always recorded, searched or not
STATUSES = ("completed", "stopped_early", "failed")
NO_MLFLOW = "none"
EPOCH_METRICS = ("train_loss", "val_loss", "val_f1_macro", "val_f1_micro", "val_acc", "val_subacc", "lr")


class TuneConfigError(AsrnError):
    """An option of `asrn tune` out of range, or a sweep that cannot start or resume; the message names it."""


@dataclass
class TuneConfig:
    """Flags of `asrn tune` (field name = flag name with dashes as underscores).

    `hidden`, `patience`, `grace_period` and `reduction_factor` have no flag: library callers and tests set them.
    """

    features: Path
    task: str
    out: Path
    num_samples: int
    max_concurrent: int = 2
    space: Path | None = None  # default tuning/spaces/default.yaml
    scheduler: str = "asha"  # asha | none
    workers_per_trial: int = 1
    use_gpu: bool = False
    variant: str = "asrn"
    epochs: int = 30  # per trial at most (ASHA's max_t)
    seed: int = 0
    storage: str | None = None  # Tune and Train storage (folder, s3://, gs://); default: out
    resume: bool = False
    mlflow_uri: str | None = None  # default sqlite:///<cwd>/mlflow.db; "none" turns MLflow off
    experiment: str = "asrn-tune"
    address: str | None = None
    hidden: int = 256
    patience: int = 20  # a trial's own early stopping (epochs without val F1 macro gain)
    grace_period: int = 3  # ASHA: epochs every trial runs before it can be stopped
    reduction_factor: int = 3  # ASHA: keep the top 1/reduction_factor at each rung

    def __post_init__(self) -> None:
        self.features, self.out = Path(self.features), Path(self.out)
        self.space = Path(self.space) if self.space is not None else None
        if self.task not in TASKS:
            raise UnknownTaskError(f"unknown task {self.task!r}: expected one of {', '.join(TASKS)}")
        if self.scheduler not in ("asha", "none"):
            raise TuneConfigError(f"scheduler = {self.scheduler!r}: expected asha or none")
        for name in ("num_samples", "max_concurrent", "workers_per_trial", "epochs", "hidden", "patience",
                     "grace_period"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TuneConfigError(f"{name} = {value!r}: must be an integer >= 1")
        if self.reduction_factor < 2:
            raise TuneConfigError(f"reduction_factor = {self.reduction_factor!r}: must be >= 2")

    def to_dict(self) -> dict:
        return {f.name: str(v) if isinstance(v := getattr(self, f.name), Path) else v for f in fields(self)}


@dataclass
class TrialRecord:
    """One trial of the sweep, as in trials.csv."""

    trial_id: str
    status: str  # completed | stopped_early | failed | unfinished (an interrupted sweep)
    hyperparameters: dict
    best_val_f1_macro: float  # nan when the trial reported nothing
    best_epoch: int
    epochs: int  # epochs run
    metrics: dict  # what the best epoch reported (val_* and train_loss)
    mlflow_run_id: str | None = None
    checkpoint_paths: list[str] = field(default_factory=list)  # Ray checkpoints of epochs scoring the best
    error: str | None = None

    def row(self) -> dict:
        return {"trial_id": self.trial_id, "status": self.status, **self.hyperparameters,
                "best_val_f1_macro": self.best_val_f1_macro, "best_epoch": self.best_epoch, "epochs": self.epochs,
                **{k: self.metrics.get(k, math.nan) for k in ("val_f1_micro", "val_acc", "val_subacc", "val_loss")},
                "mlflow_run_id": self.mlflow_run_id or "", "error": self.error or ""}


@dataclass
class TuneResult:
    """What `tune` produced: the trials (best first), the best one, and where its outputs are."""

    out: Path
    best: TrialRecord
    trials: list[TrialRecord]
    checkpoint: Path  # out/best.pt
    max_concurrent: int  # after clamping to the cluster
    mlflow_run_id: str | None = None
    tracking_uri: str | None = None
    files: dict[str, Path] = field(default_factory=dict)


# ---------------------------------------------------------------- the trial: a TorchTrainer inside Tune

def train_trial(hyperparameters: dict, base: dict, info) -> None:
    """One Tune trial: `asrn train`'s TorchTrainer with this trial's hyperparameters, reporting to Tune.

    The Train run is named after the trial, so a trial restarted by `--resume` continues from its last
    Ray Train checkpoint instead of starting over.
    """
    from ray.tune.integration.ray_train import TuneReportCallback

    from asrn.train import TrainConfig, build_trainer

    ray.data.DataContext.get_current().enable_progress_bars = False  # one trial's bars would flood the sweep's log
    config = TrainConfig(**{**base, **hyperparameters})
    trial_id = ray.tune.get_context().get_trial_id()
    build_trainer(config, run_name=trial_id, callbacks=[TuneReportCallback()], info=info).fit()


def trial_status(last_result: dict | None, epochs: int, patience: int, failed: bool = False) -> str:
    """completed: the trial ran all `epochs` or its own early stopping (`patience` epochs without gain) ended it;
    stopped_early: the scheduler stopped it before; failed: it raised.

    Read from the metrics, not Tune's `done` flag: Tune sets done=True on a scheduler STOP as well.
    """
    if failed:
        return "failed"
    last_result = last_result or {}
    epoch, best_epoch = int(last_result.get("epoch", 0) or 0), int(last_result.get("best_epoch", 0) or 0)
    return "completed" if epoch >= epochs or epoch - best_epoch >= patience else "stopped_early"


class SweepRecorder(ray.tune.Callback):
    """Tune callback on the driver: the sweep's only MLflow writer, and the record of each trial's final status.

    Kept picklable (Tune saves it with the experiment and
    gives it back on `--resume`), so the MLflow client is made in `setup` and the trial -> child run map is
    read back from MLflow there.
    """

    def __init__(self, status_file: Path, epochs: int, patience: int, fixed: dict, tracking_uri: str | None,
                 parent_run_id: str | None):
        self.status_file, self.epochs, self.patience, self.fixed = Path(status_file), epochs, patience, dict(fixed)
        self.tracking_uri, self.parent_run_id = tracking_uri, parent_run_id
        self._client, self._experiment_id, self._runs = None, None, {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_client": None, "_runs": {}}

    # -------------------------------------------------------------- Tune hooks
    def setup(self, **info) -> None:
        if self.parent_run_id:
            from mlflow import MlflowClient

            self._client = MlflowClient(self.tracking_uri)
            self._experiment_id = self._client.get_run(self.parent_run_id).info.experiment_id
            self._runs = child_runs(self._client, self._experiment_id, self.parent_run_id)

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        if not self._client:
            return
        trial_id = trial.trial_id
        if trial_id in self._runs:  # restarted by --resume: same child run
            self._client.update_run(self._runs[trial_id], status="RUNNING")
            self._client.set_tag(self._runs[trial_id], "status", "running")
            return
        from mlflow.entities import Param

        run = self._client.create_run(self._experiment_id, run_name=f"trial-{trial_id}",
                                      tags={"mlflow.parentRunId": self.parent_run_id, "asrn.trial_id": trial_id,
                                            "asrn.command": "tune-trial", "status": "running"})
        self._runs[trial_id] = run.info.run_id
        params = trial_hyperparameters(trial.config, self.fixed)
        self._client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        if not self._client or trial.trial_id not in self._runs or "epoch" not in result:
            return
        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), int(result["epoch"])
        values = [Metric(k, float(result[k]), now, step) for k in EPOCH_METRICS if _is_number(result.get(k))]
        self._client.log_batch(self._runs[trial.trial_id], metrics=values)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._finish(trial, trial_status(trial.last_result, self.epochs, self.patience))

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._finish(trial, "failed")

    # -------------------------------------------------------------- helpers
    def _finish(self, trial, status: str) -> None:
        statuses = read_statuses(self.status_file)
        statuses[trial.trial_id] = status
        self.status_file.write_text(json.dumps(statuses, indent=2, sort_keys=True) + "\n")
        run_id = self._runs.get(trial.trial_id)
        if not self._client or not run_id:
            return
        from mlflow.entities import Metric, RunTag

        last = trial.last_result or {}
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(last[k]), now, 0) for k in ("best_val_f1_macro", "best_epoch")
                   if _is_number(last.get(k))]
        metrics.append(Metric("epochs_run", float(last.get("epoch", 0) or 0), now, 0))
        tags = [RunTag("status", status)]
        if status == "failed" and trial.error_file:
            tags.append(RunTag("error_file", str(trial.error_file)))
        self._client.log_batch(run_id, metrics=metrics, tags=tags)
        self._client.set_terminated(run_id, status="FAILED" if status == "failed" else "FINISHED")


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def trial_hyperparameters(trial_config: dict, fixed: dict) -> dict:
    """dropout, lr, batch_size (and any other searched name) of a trial: its sampled values over the fixed ones."""
    from asrn.search_space import HYPERPARAMETERS

    values = {**fixed, **{k: v for k, v in trial_config.items() if k in HYPERPARAMETERS}}
    return {k: HYPERPARAMETERS[k](v) for k, v in values.items()}


def read_statuses(path: Path) -> dict[str, str]:
    return json.loads(path.read_text()) if path.is_file() else {}


def child_runs(client, experiment_id: str, parent_run_id: str) -> dict[str, str]:
    """trial_id -> MLflow run id of the parent's nested runs."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                              max_results=10000)
    return {r.data.tags["asrn.trial_id"]: r.info.run_id for r in runs if "asrn.trial_id" in r.data.tags}


# ---------------------------------------------------------------- driver side

def _tune_storage(config: TuneConfig) -> str:
    return config.storage.rstrip("/") if config.storage else str(config.out.resolve())


def _uri(storage: str, path: str) -> str:
    """A Ray checkpoint path as reported (no scheme for cloud storage) -> a URI that Checkpoint() opens."""
    if "://" in storage and "://" not in path:
        return f"{storage.split('://', 1)[0]}://{path}"
    return path


def _describe(dim: Dimension) -> str:
    if dim.distribution == "choice":
        return f"choice{list(dim.values)}"
    return f"{dim.distribution}({dim.low:g}, {dim.high:g})"


def fit_concurrency(requested: int, per_trial: dict[str, float], cluster: dict[str, float]) -> tuple[int, str]:
    """How many trials can run at once: all their Train workers fit, with DATA_CPUS left for Ray Data.

    Returns (max_concurrent, a note when clamped). TuneConfigError when one trial can never fit.
    """
    cpus, gpus = cluster.get("CPU", 0.0), cluster.get("GPU", 0.0)
    need_cpu, need_gpu = per_trial.get("CPU", 0.0) + TRIAL_CPUS, per_trial.get("GPU", 0.0)
    if need_cpu > cpus:
        raise TuneConfigError(f"a trial needs {need_cpu:g} CPUs ({per_trial.get('CPU', 0):g} for its Train "
                              f"workers), the cluster has {cpus:g}: lower --workers-per-trial")
    fits = [math.floor((cpus - DATA_CPUS) / need_cpu + 1e-9)]
    notes = []
    if need_gpu:
        if gpus < need_gpu:
            notes.append(f"a trial needs {need_gpu:g} GPUs, the cluster has {gpus:g} now (waiting on an autoscaler?)")
        else:
            fits.append(math.floor(gpus / need_gpu + 1e-9))
    fit = max(1, min(fits))
    if requested > fit:
        notes.append(f"--max-concurrent {requested} lowered to {fit}: each trial holds "
                     f"{', '.join(f'{v:g} {k}' for k, v in per_trial.items())} (+{TRIAL_CPUS:g} CPU for the trial), "
                     f"the cluster has {cpus:g} CPU, {gpus:g} GPU, and {DATA_CPUS:g} CPU stays free for Ray Data")
        requested = fit
    return requested, "; ".join(notes)


def _start_parent_run(config: TuneConfig, tracking_uri: str, space: dict[str, Dimension]) -> str:
    """Create the sweep's parent run (or reopen it on --resume) and log the sweep's settings; return its id."""
    from mlflow import MlflowClient
    from mlflow.entities import Param

    client = MlflowClient(tracking_uri)
    record = config.out / "mlflow_run.json"
    run_id = None
    if config.resume and record.is_file():
        previous = json.loads(record.read_text())
        if previous.get("tracking_uri") != tracking_uri:
            print(f"note: the sweep logged to {previous.get('tracking_uri')}; continuing there")
            tracking_uri = previous["tracking_uri"]
            client = MlflowClient(tracking_uri)
        run_id = previous["run_id"]
        client.update_run(run_id, status="RUNNING")
    if run_id is None:
        experiment = client.get_experiment_by_name(config.experiment)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(config.experiment)
        run_id = client.create_run(experiment_id, run_name=f"sweep-{config.out.name}",
                                   tags={"asrn.command": "tune", "asrn.task": config.task}).info.run_id
        params = {**config.to_dict(), **{f"space.{k}": _describe(d) for k, d in space.items()}}
        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items() if k != "resume"])
    record.write_text(json.dumps({"run_id": run_id, "tracking_uri": tracking_uri,
                                  "ui": f"mlflow ui --backend-store-uri {tracking_uri}"}, indent=2) + "\n")
    return run_id


def _trial_id(result) -> str:
    """A Result's trial id: reported with every result, else in its folder name `<trainable>_<id>_<index>_...`."""
    found = re.search(r"_([0-9a-f]{5}_\d{5})(_|$)", Path(result.path).name)
    return (result.metrics or {}).get("trial_id") or (found.group(1) if found else Path(result.path).name)


def _record(result, status: str, fixed: dict, storage: str, run_ids: dict[str, str]) -> TrialRecord:
    """A TrialRecord from a Tune Result (its per-epoch metrics dataframe)."""
    trial_id = _trial_id(result)
    df = result.metrics_dataframe
    hyper = trial_hyperparameters(result.config or {}, fixed)
    error = f"{type(result.error).__name__}: {str(result.error).strip().splitlines()[-1][:300]}" if result.error \
        else None
    if df is None or "epoch" not in df or METRIC not in df or df[METRIC].dropna().empty:
        return TrialRecord(trial_id, status, hyper, math.nan, 0, 0, {}, run_ids.get(trial_id), error=error)
    df = df.dropna(subset=[METRIC])
    best_value = float(df[METRIC].max())
    best_rows = df[df[METRIC] == best_value]
    best = best_rows.iloc[0]
    metrics = {k: float(best[k]) for k in ("train_loss", "val_loss", *EPOCH_METRICS[2:6]) if k in best}
    paths = [_uri(storage, p) for p in best_rows.get("checkpoint_path", []) if isinstance(p, str) and p]
    return TrialRecord(trial_id, status, hyper, best_value, int(best["epoch"]), int(df["epoch"].max()), metrics,
                       run_ids.get(trial_id), checkpoint_paths=paths, error=error)


def _save_best_checkpoint(best: TrialRecord, base: dict, info, path: Path) -> Path:
    """The best epoch of the best trial as `asrn train`'s best.pt (loadable by `load_checkpoint`, `asrn predict`)."""
    import torch

    from asrn.train import STATE_FILE, TrainConfig, save_checkpoint

    for uri in best.checkpoint_paths:  # several when epochs tie; Ray keeps the top `num_to_keep` of them
        try:
            with ray.train.Checkpoint(uri).as_directory() as folder:
                state = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
        except (FileNotFoundError, OSError):
            continue
        return save_checkpoint(path, state, TrainConfig(**{**base, **best.hyperparameters}), info)
    raise TuneConfigError(f"trial {best.trial_id}: no checkpoint of its best epoch {best.best_epoch} is left "
                          f"(looked at {best.checkpoint_paths})")


def _write_csv(trials: Sequence[TrialRecord], path: Path) -> Path:
    rows = [t.row() for t in trials]
    names = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _summary(trials: Sequence[TrialRecord], names: Sequence[str]) -> str:
    header = f"{'trial':<10} {'status':<14} " + " ".join(f"{n:>10}" for n in names) + \
        f" {'F1 macro':>9} {'epoch':>6} {'epochs':>6}"
    lines = [header, "-" * len(header)]
    for t in trials:
        values = " ".join(f"{t.hyperparameters[n]:>10.4g}" for n in names)
        lines.append(f"{t.trial_id:<10} {t.status:<14} {values} {t.best_val_f1_macro:>9.4f} {t.best_epoch:>6} "
                     f"{t.epochs:>6}")
    return "\n".join(lines)


def _build_tuner(config: TuneConfig, space: dict[str, Dimension], trainable, max_concurrent: int, recorder,
                 storage: str):
    from optuna.samplers import TPESampler
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    searcher = ConcurrencyLimiter(OptunaSearch(sampler=TPESampler(seed=config.seed)), max_concurrent=max_concurrent)
    scheduler = (ASHAScheduler(time_attr="epoch", max_t=config.epochs, grace_period=min(config.grace_period,
                                                                                           config.epochs),
                               reduction_factor=config.reduction_factor)
                 if config.scheduler == "asha" else FIFOScheduler())
    return ray.tune.Tuner(
        trainable,
        param_space=to_tune_space(space),
        tune_config=ray.tune.TuneConfig(metric=METRIC, mode=MODE, search_alg=searcher, scheduler=scheduler,
                                        num_samples=config.num_samples),
        run_config=ray.tune.RunConfig(name=SWEEP_NAME, storage_path=storage, callbacks=[recorder],
                                      failure_config=ray.tune.FailureConfig(max_failures=0), verbose=1),
    )


def tune(config: TuneConfig) -> TuneResult:
    """Run (or with `resume`, continue) the sweep; write the outputs of the module docstring and print a summary."""
    from asrn.train import TrainConfig, check_store

    # bad input stops here, before Ray starts or any folder is made
    space = load_search_space(config.space or DEFAULT_SPACE)
    info, counts = check_store(config.features, config.task)
    storage = _tune_storage(config)
    sweep_dir = f"{storage}/{SWEEP_NAME}"
    if "://" not in storage:
        exists = (Path(sweep_dir) / "tuner.pkl").is_file()
        if config.resume and not exists:
            raise TuneConfigError(f"--resume: no sweep in {sweep_dir}; is {config.out} the --out of an earlier sweep?")
        if not config.resume and Path(sweep_dir).exists():
            raise TuneConfigError(f"{sweep_dir} already holds a sweep: continue it with --resume or pick a new --out")
    base = TrainConfig(features=config.features, task=config.task, out=config.out / "trials", variant=config.variant,
                       num_workers=config.workers_per_trial, use_gpu=config.use_gpu, epochs=config.epochs,
                       hidden=config.hidden, patience=config.patience, seed=config.seed, storage=f"{storage}/trials",
                       mlflow_uri=NO_MLFLOW).to_dict()
    fixed = {k: base[k] for k in TUNED}
    tracking_uri = None if (config.mlflow_uri or "").lower() == NO_MLFLOW else (
        config.mlflow_uri or f"sqlite:///{(Path.cwd() / 'mlflow.db').resolve()}")

    config.out.mkdir(parents=True, exist_ok=True)
    (config.out / "tune_config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address=config.address)
    parent_run_id = None
    try:
        per_trial = ray.train.ScalingConfig(num_workers=config.workers_per_trial, use_gpu=config.use_gpu)
        max_concurrent, note = fit_concurrency(config.max_concurrent, per_trial.total_resources,
                                               ray.cluster_resources())
        if note:
            print(f"note: {note}", flush=True)
        if tracking_uri:
            parent_run_id = _start_parent_run(config, tracking_uri, space)
            tracking_uri = json.loads((config.out / "mlflow_run.json").read_text())["tracking_uri"]
        print(f"sweeping {', '.join(f'{k} ~ {_describe(d)}' for k, d in space.items())} over {config.num_samples} "
              f"trial(s), {max_concurrent} at a time, {config.workers_per_trial} Train worker(s) each; "
              f"{counts['train']} train / {counts['val']} val videos, task {config.task}", flush=True)
        trainable = ray.tune.with_resources(ray.tune.with_parameters(train_trial, base=base, info=info),
                                            {"cpu": TRIAL_CPUS})
        status_file = config.out / "trial_status.json"
        if config.resume:
            tuner = ray.tune.Tuner.restore(sweep_dir, trainable=trainable, resume_unfinished=True,
                                           resume_errored=True)
        else:
            recorder = SweepRecorder(status_file, config.epochs, config.patience, fixed, tracking_uri, parent_run_id)
            tuner = _build_tuner(config, space, trainable, max_concurrent, recorder, storage)
        grid = tuner.fit()
    except BaseException:
        if parent_run_id:
            from mlflow import MlflowClient
            MlflowClient(tracking_uri).set_terminated(parent_run_id, status="FAILED")
        raise
    finally:
        if started_ray:
            ray.shutdown()
    return _finish_sweep(config, grid, space, base, fixed, info, storage, tracking_uri, parent_run_id,
                         max_concurrent)


def _finish_sweep(config: TuneConfig, grid, space, base: dict, fixed: dict, info, storage: str,
                  tracking_uri: str | None, parent_run_id: str | None, max_concurrent: int) -> TuneResult:
    """Collect the trials from Tune's results and write best_config.json, best.pt, trials.csv, sweep.png."""
    client = None
    run_ids: dict[str, str] = {}
    if parent_run_id:
        from mlflow import MlflowClient
        client = MlflowClient(tracking_uri)
        run_ids = child_runs(client, client.get_run(parent_run_id).info.experiment_id, parent_run_id)
    statuses = read_statuses(config.out / "trial_status.json")
    trials = []
    for result in grid:
        status = "failed" if result.error else statuses.get(_trial_id(result), "unfinished")
        trials.append(_record(result, status, fixed, storage, run_ids))
    trials.sort(key=lambda t: -t.best_val_f1_macro if math.isfinite(t.best_val_f1_macro) else math.inf)
    scored = [t for t in trials if math.isfinite(t.best_val_f1_macro) and t.checkpoint_paths]
    if not scored:
        raise TuneConfigError(f"no trial of the sweep in {storage}/{SWEEP_NAME} reported {METRIC}: "
                              f"{'; '.join(t.error or t.status for t in trials) or 'no trials ran'}")
    best = scored[0]
    names = list(dict.fromkeys([*TUNED, *space]))
    files = {"trials": _write_csv(trials, config.out / "trials.csv"),
             "checkpoint": _save_best_checkpoint(best, base, info, config.out / "best.pt"),
             "sweep_plot": plot_sweep([t.row() for t in trials], config.out / "sweep.png", names,
                                      title=f"ASRN sweep ({config.task}): {len(trials)} trials")}
    files["best_config"] = config.out / "best_config.json"
    files["best_config"].write_text(json.dumps({
        "trial_id": best.trial_id, "hyperparameters": best.hyperparameters, METRIC: best.best_val_f1_macro,
        "best_val_f1_macro": best.best_val_f1_macro, "best_epoch": best.best_epoch, "epochs": best.epochs,
        "status": best.status, "metrics": best.metrics, "mlflow_run_id": best.mlflow_run_id,
        "checkpoint": str(files["checkpoint"]),
        "train_config": {**base, **best.hyperparameters, "out": str(config.out / "best"), "mlflow_uri": None},
    }, indent=2) + "\n")
    unfinished = [t.trial_id for t in trials if t.status == "unfinished"]

    if client:
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        tags = [RunTag("best_trial_id", best.trial_id), RunTag("best_run_id", best.mlflow_run_id or ""),
                *[RunTag(f"best.{k}", str(v)) for k, v in best.hyperparameters.items()]]
        client.log_batch(parent_run_id, metrics=[Metric("best_val_f1_macro", best.best_val_f1_macro, now, 0),
                                                 Metric("num_trials", len(trials), now, 0)], tags=tags)
        for name in ("trials", "best_config", "sweep_plot"):
            client.log_artifact(parent_run_id, str(files[name]))
        client.set_terminated(parent_run_id, status="KILLED" if unfinished else "FINISHED")

    print(_summary(trials, names))
    print(f"best trial {best.trial_id}: {METRIC} {best.best_val_f1_macro:.4f} at epoch {best.best_epoch} with "
          f"{', '.join(f'{k}={v:.4g}' for k, v in best.hyperparameters.items())}")
    if unfinished:
        print(f"{len(unfinished)} trial(s) unfinished ({', '.join(unfinished)}): continue with --resume")
    print(f"outputs in {config.out}: best_config.json, best.pt, trials.csv, sweep.png; Tune experiment in "
          f"{storage}/{SWEEP_NAME}")
    if parent_run_id:
        print(f"MLflow parent run {parent_run_id} in {tracking_uri}; open it with: "
              f"mlflow ui --backend-store-uri {tracking_uri}")
    return TuneResult(out=config.out, best=best, trials=trials, checkpoint=files["checkpoint"],
                      max_concurrent=max_concurrent, mlflow_run_id=parent_run_id, tracking_uri=tracking_uri,
                      files=files)
