"""Sweep dropout, lr and batch size with Ray Tune + Optuna (TPE) and ASHA; every trial is a distributed TorchTrainer.

Ray 2.60 runs Train V2, where `tune.Tuner` no longer takes a trainer: each Tune trial is a function trainable
(`train_trial`) that builds the same TorchTrainer as `asrn train` (`asrn.train.build_trainer`) and calls `fit()`.
- Metrics reach Tune through `ray.tune.integration.ray_train.TuneReportCallback`, a Train `UserCallback`: the
  Train controller puts rank 0's metrics of every epoch (with the checkpoint's path) on a queue that the trial's
  Tune session reads, so OptunaSearch and ASHA see `val_map` per epoch.
- When ASHA stops a trial, Tune terminates the trial actor; the Train controller it created is owned by that
  actor and dies with it, and Train's detached PlacementGroupCleaner then frees the workers' placement group.
- Resources: the trial itself asks for `TRIAL_CPUS` (Tune refuses an all-zero request); its Train workers ask
  for their own (`ScalingConfig`); `max_concurrent` is clamped so that the workers of all concurrent trials fit
  in the cluster with `DATA_CPUS` left for Ray Data's read tasks, else trials would wait on each other forever.
  A joined cluster that cannot hold one trial yet (an autoscaling one at 0 workers) gets a warning, and the
  trials queue until nodes join.
- The train split's input statistics are computed once on the driver and handed to every trial.

MLflow (written only by the Tune driver, through `SweepRecorder`): one parent run for the sweep and one nested
child run per trial (tag `mlflow.parentRunId`; user, source and git tags as on the parent) with the trial's
hyperparameters and the sweep's fixed settings (variant, task, epochs, recipe, features, the store's URI and
provenance), per-epoch metrics (step = epoch), tag `status` (completed | stopped_early | failed) and metric
`best_val_map`; the parent carries tags best_trial_id / best_run_id, metric best_val_map, the best trial's test
metrics, the sweep plot, the machine's system metrics (where psutil is installed), and the best trial's best.pt as
an MLflow PyTorch model (registered under `--register-model NAME` when given).

Outputs in `out/`: tune_config.json, best_config.json, best.pt (the best trial's best epoch, in `asrn train`'s
format, with val-chosen thresholds), metrics.json and predictions.parquet of that model, trials.csv, sweep.png,
trial_status.json, mlflow_run.json, `sweep/` (Tune's experiment, for --resume) and `trials/<trial_id>/` (each
trial's Ray Train run and checkpoints).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import optuna
import ray
import ray.data
import ray.train
import ray.tune
from optuna.samplers import TPESampler
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from asrn import mlflow_model, mlflow_runs
from asrn.checkpoint import load_training_state
from asrn.epoch_logger import DIVERGED, MEASURED_AT
from asrn.errors import AsrnError
from asrn.files import atomic_output, write_json
from asrn.labels import TASKS, UnknownTaskError
from asrn.locations import Location
from asrn.loop import RECIPES, NonFiniteLossError
from asrn.ray_session import lean_environment, ray_session
from asrn.search_space import DEFAULT_SPACE, HYPERPARAMETERS, Dimension, load_search_space, to_tune_space
from asrn.store import FeatureStore, StoreInfo
from asrn.train import (
    FAULT_ENV,
    SELECT_METRIC,
    TrainConfig,
    build_trainer,
    check_store,
    report_best_model,
    summary_line,
)

METRIC = SELECT_METRIC  # what ASHA compares, epoch by epoch
BEST_METRIC = "best_val_map"  # what the searcher learns from: the trial's best epoch, whose checkpoint it delivers
MODE = "max"
SWEEP_NAME = "sweep"  # Tune's experiment folder under the storage path
TRIAL_CPUS = 0.01  # the trial process only waits on its TorchTrainer; Tune refuses a request of 0
DATA_CPUS = 1.0  # left free for Ray Data's read tasks, which the trials' Train workers do not hold
TUNED = ("dropout", "lr", "batch_size")  # always recorded, searched or not
CONTEXT = ("variant", "task", "epochs", "recipe", "hidden", "weight_decay", "features")  # logged on every trial
EPOCH_METRICS = ("train_loss", "val_loss", "val_map", "val_f1_macro", "val_f1_micro", "val_acc", "val_subacc", "lr")


class TuneConfigError(AsrnError):
    """An option of `asrn tune` out of range, or a sweep that cannot start or resume; the message names it."""


@dataclass
class TuneConfig:
    """Flags of `asrn tune` (field name = flag name with dashes as underscores).

    `patience` has no flag: library callers and tests set it; `hidden` and `patience` default to the recipe's.
    """

    features: Location  # a local folder or a URI
    task: str
    out: Location  # a local folder or a URI
    num_samples: int
    max_concurrent: int = 2
    space: Location | None = None  # a local file or a URI; default tuning/spaces/default.yaml
    scheduler: str = "asha"  # asha | none
    workers_per_trial: int = 1
    use_gpu: bool = False
    variant: str = "asrn"
    recipe: str = "default"
    epochs: int = 30  # per trial at most (ASHA's max_t)
    seed: int = 0
    storage: str | None = None  # Tune and Train storage (folder, s3://, gs://); default: out
    resume: bool = False
    mlflow_uri: str | None = None  # default MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db; "none": off
    experiment: str | None = None  # default MLFLOW_EXPERIMENT_NAME, else "asrn" (where `asrn train` logs too)
    register_model: str | None = None  # register the best trial's MLflow model under this name
    address: str | None = None
    verbose: bool = False  # Ray's routine console lines too (asrn.console)
    hidden: int | None = None
    patience: int | None = None  # a trial's own early stopping (epochs without val mAP gain)
    grace_period: int = 3  # ASHA: epochs every trial runs before it can be stopped
    reduction_factor: int = 3  # ASHA: keep the top 1/reduction_factor at each rung

    def __post_init__(self) -> None:
        self.features, self.out = Location(self.features), Location(self.out)
        self.space = Location(self.space) if self.space is not None else None
        if self.task not in TASKS:
            raise UnknownTaskError(f"unknown task {self.task!r}: expected one of {', '.join(TASKS)}")
        if self.scheduler not in ("asha", "none"):
            raise TuneConfigError(f"scheduler = {self.scheduler!r}: expected asha or none")
        if self.recipe not in RECIPES:
            raise TuneConfigError(f"unknown recipe {self.recipe!r}: expected one of {', '.join(RECIPES)}")
        self.hidden = RECIPES[self.recipe].hidden if self.hidden is None else self.hidden
        self.patience = RECIPES[self.recipe].patience if self.patience is None else self.patience
        for name in ("num_samples", "max_concurrent", "workers_per_trial", "epochs", "hidden", "patience",
                     "grace_period"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TuneConfigError(f"{name} = {value!r}: must be an integer >= 1")
        if self.reduction_factor < 2:
            raise TuneConfigError(f"reduction_factor = {self.reduction_factor!r}: must be >= 2")
        if self.register_model is not None and not self.register_model.strip():
            raise TuneConfigError("--register-model: the registered model's name is empty")

    def to_dict(self) -> dict:
        return {f.name: str(v) if isinstance(v := getattr(self, f.name), Path | Location) else v for f in fields(self)}

    def train_config(self, storage: str) -> TrainConfig:
        """The `asrn train` config every trial starts from (its hyperparameters then override TUNED)."""
        return TrainConfig(features=self.features, task=self.task, out=self.out / "trials", variant=self.variant,
                           recipe=self.recipe, num_workers=self.workers_per_trial, use_gpu=self.use_gpu,
                           epochs=self.epochs, hidden=self.hidden, patience=self.patience, seed=self.seed,
                           storage=f"{storage}/trials", mlflow_uri=mlflow_runs.NO_MLFLOW, verbose=self.verbose)


@dataclass
class TrialRecord:
    """One trial of the sweep, as in trials.csv."""

    trial_id: str
    status: str  # completed | stopped_early | failed | unfinished (an interrupted sweep)
    hyperparameters: dict
    best_val_map: float  # nan when the trial reported nothing
    best_epoch: int
    epochs: int  # epochs run
    metrics: dict  # what the best epoch reported (val_* and train_loss)
    mlflow_run_id: str | None = None
    checkpoint_paths: list[str] = field(default_factory=list)  # Ray checkpoints of epochs scoring the best
    error: str | None = None

    @property
    def scored(self) -> bool:
        return math.isfinite(self.best_val_map) and bool(self.checkpoint_paths)

    def row(self) -> dict:
        return {"trial_id": self.trial_id, "status": self.status, **self.hyperparameters,
                "best_val_map": self.best_val_map, "best_epoch": self.best_epoch, "epochs": self.epochs,
                **{k: self.metrics.get(k, math.nan) for k in ("val_f1_macro", "val_f1_micro", "val_acc", "val_subacc",
                                                              "val_loss")},
                "mlflow_run_id": self.mlflow_run_id or "", "error": self.error or ""}


@dataclass
class TuneResult:
    """What `tune` produced: the trials (best first), the best one, and where its outputs are."""

    out: Location
    best: TrialRecord
    trials: list[TrialRecord]
    checkpoint: Path | Location  # out/best.pt
    max_concurrent: int  # after clamping to the cluster
    metrics: dict  # the best trial's best epoch scored on val and test (metrics.json)
    mlflow_run_id: str | None = None
    tracking_uri: str | None = None
    files: dict[str, Path | Location] = field(default_factory=dict)
    model_uri: str | None = None  # the best trial's best.pt as an MLflow model, logged on the parent run


# ---------------------------------------------------------------- the trial: a TorchTrainer inside Tune

def train_trial(hyperparameters: dict, trial_defaults: dict, info: StoreInfo, input_stats: dict,
                fault: str | None = None) -> None:
    """One Tune trial: `asrn train`'s TorchTrainer with this trial's hyperparameters, reporting to Tune.

    The Train run is named after the trial, so a trial restarted by `--resume` continues from its last
    Ray Train checkpoint instead of starting over. `fault`: the driver's FAULT_ENV (tests only), handed on to
    the trial's Train workers.
    """
    if fault:
        os.environ[FAULT_ENV] = fault
    lean_environment()  # Ray Train hands these on to the trial's controller (a joined cluster's trials lack them)
    config = TrainConfig(**{**trial_defaults, **trial_hyperparameters(hyperparameters, {})})
    trial_id = ray.tune.get_context().get_trial_id()
    result = build_trainer(config, run_name=trial_id, callbacks=[TuneReportCallback()],
                           store=FeatureStore(config.features, info=info, warn=False), input_stats=input_stats).fit()
    if diverged := (result.metrics or {}).get(DIVERGED):  # the trial fails on it, once, not as a worker failure
        raise NonFiniteLossError(diverged)


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

    Kept picklable (Tune saves it with the experiment and gives it back on `--resume`), so the trial -> child run
    map is read back from MLflow in `setup`.
    """

    def __init__(self, status_file: Location, epochs: int, patience: int, untuned: dict, context: dict,
                 tracking_uri: str | None, parent_run_id: str | None):
        self.status_file, self.epochs, self.patience = Location(status_file), epochs, patience
        self.untuned, self.context = dict(untuned), dict(context)
        self.tracking_uri, self.parent_run_id = tracking_uri, parent_run_id
        self._experiment_id, self._runs, self._logged = None, {}, {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_runs": {}, "_logged": {}}

    def setup(self, **info) -> None:
        if self.parent_run_id:
            from mlflow import MlflowClient

            client = MlflowClient(self.tracking_uri)
            self._experiment_id = client.get_run(self.parent_run_id).info.experiment_id
            self._runs = child_runs(client, self._experiment_id, self.parent_run_id)

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        if not self.parent_run_id:
            return
        from mlflow import MlflowClient
        from mlflow.tracking.context.registry import resolve_tags

        client, trial_id = MlflowClient(self.tracking_uri), trial.trial_id
        if trial_id in self._runs:  # restarted by --resume: same child run
            client.update_run(self._runs[trial_id], status="RUNNING")
            client.set_tag(self._runs[trial_id], "status", "running")
            return
        # resolve_tags adds what mlflow.start_run would: user, source, and the git commit when run from a checkout
        run = client.create_run(self._experiment_id, run_name=f"trial-{trial_id}",
                                tags=resolve_tags({"mlflow.parentRunId": self.parent_run_id, "asrn.trial_id": trial_id,
                                                   "asrn.command": "tune-trial", "status": "running"}))
        self._runs[trial_id] = run.info.run_id
        mlflow_runs.log_params(self.tracking_uri, run.info.run_id,
                               {**self.context, **trial_hyperparameters(trial.config, self.untuned)})

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        """Log the epoch once: a restarted trial repeats the epochs after its last checkpoint."""
        if not self.parent_run_id or trial.trial_id not in self._runs or "epoch" not in result:
            return
        run_id, epoch = self._runs[trial.trial_id], int(result["epoch"])
        if run_id not in self._logged:
            self._logged[run_id] = mlflow_runs.logged_steps(self.tracking_uri, run_id, "val_map")
        if epoch not in self._logged[run_id]:
            self._logged[run_id].add(epoch)
            measured = result.get(MEASURED_AT)  # the epoch's end, as for `asrn train` (asrn.epoch_logger.log_epoch)
            mlflow_runs.log_metrics(self.tracking_uri, run_id, {k: result.get(k) for k in EPOCH_METRICS}, step=epoch,
                                    timestamp_ms=int(measured * 1000) if measured is not None else None)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._finish(trial, trial_status(trial.last_result, self.epochs, self.patience))

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._finish(trial, "failed")

    def _finish(self, trial, status: str) -> None:
        write_json(self.status_file, {**read_statuses(self.status_file), trial.trial_id: status})
        run_id = self._runs.get(trial.trial_id)
        if not self.parent_run_id or not run_id:
            return
        last = trial.last_result or {}
        tags = {"status": status, **({"error_file": trial.error_file} if status == "failed" and trial.error_file
                                     else {})}
        mlflow_runs.log_metrics(self.tracking_uri, run_id, {"best_val_map": last.get("best_val_map"),
                                                            "best_epoch": last.get("best_epoch"),
                                                            "epochs_run": float(last.get("epoch", 0) or 0)},
                                step=0, tags=tags)
        mlflow_runs.finish_run(self.tracking_uri, run_id, "FAILED" if status == "failed" else "FINISHED")


def trial_hyperparameters(trial_config: dict, untuned: dict) -> dict:
    """dropout, lr, batch_size (and any other searched name) of a trial: its sampled values over the untuned ones."""
    values = {**untuned, **{k: v for k, v in trial_config.items() if k in HYPERPARAMETERS}}
    return {k: HYPERPARAMETERS[k](v) for k, v in values.items()}


def read_statuses(path: Location) -> dict[str, str]:
    return json.loads(path.read_text()) if path.is_file() else {}


def child_runs(client, experiment_id: str, parent_run_id: str) -> dict[str, str]:
    """trial_id -> MLflow run id of the parent's nested runs."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                              max_results=10000)
    return {r.data.tags["asrn.trial_id"]: r.info.run_id for r in runs if "asrn.trial_id" in r.data.tags}


# ---------------------------------------------------------------- driver side

def _tune_storage(config: TuneConfig) -> str:
    return config.storage.rstrip("/") if config.storage else str(config.out.absolute())


def _uri(storage: str, path: str) -> str:
    """A Ray checkpoint path as reported (no scheme for cloud storage) -> a URI that Checkpoint() opens."""
    if "://" in storage and "://" not in path:
        return f"{storage.split('://', 1)[0]}://{path}"
    return path


def _describe(dim: Dimension) -> str:
    if dim.distribution == "choice":
        return f"choice{list(dim.values)}"
    return f"{dim.distribution}({dim.low:g}, {dim.high:g})"


def fit_concurrency(requested: int, per_trial: dict[str, float], cluster: dict[str, float],
                    can_grow: bool = False) -> tuple[int, str]:
    """How many trials can run at once: all their Train workers fit, with DATA_CPUS left for Ray Data.

    Returns (max_concurrent, a note when clamped or queued). When one trial does not fit the cluster as it is
    now: on a cluster that `can_grow` (one joined by address, where an autoscaler or `ray start --address` may
    add nodes) the note warns and `requested` stands, so the trials queue until nodes join; on a local Ray that
    this process started, TuneConfigError.
    """
    cpus, gpus = cluster.get("CPU", 0.0), cluster.get("GPU", 0.0)
    need_cpu, need_gpu = per_trial.get("CPU", 0.0) + TRIAL_CPUS, per_trial.get("GPU", 0.0)
    if need_cpu > cpus:
        message = (f"a trial needs {need_cpu:g} CPUs ({per_trial.get('CPU', 0):g} for its Train workers), "
                   f"the cluster has {cpus:g}")
        if not can_grow:
            raise TuneConfigError(f"{message}: lower --workers-per-trial")
        return requested, (f"{message} now: the trials queue until nodes join (an autoscaler, or "
                           f"`ray start --address`); --max-concurrent {requested} stands")
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


def _trial_id(result) -> str:
    """A Result's trial id: reported with every result, else in its folder name `<trainable>_<id>_<index>_...`."""
    found = re.search(r"_([0-9a-f]{5}_\d{5})(_|$)", Path(result.path).name)
    return (result.metrics or {}).get("trial_id") or (found.group(1) if found else Path(result.path).name)


def _record(result, status: str, untuned: dict, storage: str, run_ids: dict[str, str]) -> TrialRecord:
    """A TrialRecord from a Tune Result (its per-epoch metrics dataframe)."""
    trial_id = _trial_id(result)
    df = result.metrics_dataframe
    hyper = trial_hyperparameters(result.config or {}, untuned)
    error = f"{type(result.error).__name__}: {str(result.error).strip().splitlines()[-1][:300]}" if result.error \
        else None
    if df is None or "epoch" not in df or METRIC not in df or df[METRIC].dropna().empty:
        return TrialRecord(trial_id, status, hyper, math.nan, 0, 0, {}, run_ids.get(trial_id), error=error)
    df = df.dropna(subset=[METRIC])
    best_value = float(df[METRIC].max())
    best_rows = df[df[METRIC] == best_value]
    best = best_rows.iloc[0]
    metrics = {k: float(best[k]) for k in EPOCH_METRICS if k in best}
    paths = [_uri(storage, p) for p in best_rows.get("checkpoint_path", []) if isinstance(p, str) and p]
    return TrialRecord(trial_id, status, hyper, best_value, int(best["epoch"]), int(df["epoch"].max()), metrics,
                       run_ids.get(trial_id), checkpoint_paths=paths, error=error)


def _best_state(best: TrialRecord) -> dict:
    """The training state of the best trial's best epoch (several paths when epochs tie; Ray keeps the top few)."""
    for uri in best.checkpoint_paths:
        try:
            with ray.train.Checkpoint(uri).as_directory() as folder:
                return load_training_state(folder)
        except (FileNotFoundError, OSError):
            continue
    raise TuneConfigError(f"trial {best.trial_id}: no checkpoint of its best epoch {best.best_epoch} is left "
                          f"(looked at {best.checkpoint_paths})")


def _write_csv(trials: Sequence[TrialRecord], path: Location) -> Location:
    rows = [t.row() for t in trials]
    with atomic_output(path) as temporary, temporary.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _summary(trials: Sequence[TrialRecord], names: Sequence[str]) -> str:
    header = f"{'trial':<10} {'status':<14} " + " ".join(f"{n:>10}" for n in names) + \
        f" {'val mAP':>9} {'epoch':>6} {'epochs':>6}"
    lines = [header, "-" * len(header)]
    for t in trials:
        values = " ".join(f"{t.hyperparameters[n]:>10.4g}" for n in names)
        lines.append(f"{t.trial_id:<10} {t.status:<14} {values} {t.best_val_map:>9.4f} {t.best_epoch:>6} "
                     f"{t.epochs:>6}")
    return "\n".join(lines)


def build_searcher(seed: int) -> OptunaSearch:
    """Optuna's TPE, told each trial's best val mAP (`best_val_map`): the checkpoint a trial delivers is its best
    epoch's, and a trial that early-stops ends up to `patience` epochs past it."""
    return OptunaSearch(metric=BEST_METRIC, mode=MODE, sampler=TPESampler(seed=seed))


def build_scheduler(config: TuneConfig):
    """ASHA (or FIFO): it compares trials at the same epoch, on the current val mAP."""
    if config.scheduler != "asha":
        return FIFOScheduler()
    return ASHAScheduler(metric=METRIC, mode=MODE, time_attr="epoch", max_t=config.epochs,
                         grace_period=min(config.grace_period, config.epochs), reduction_factor=config.reduction_factor)


def _build_tuner(config: TuneConfig, space: dict[str, Dimension], trainable, max_concurrent: int, recorder,
                 storage: str) -> ray.tune.Tuner:
    if not config.verbose:  # Optuna's INFO lines ("A new study created ...") off the console
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    searcher = ConcurrencyLimiter(build_searcher(config.seed), max_concurrent=max_concurrent)
    scheduler = build_scheduler(config)
    return ray.tune.Tuner(
        trainable,
        param_space=to_tune_space(space),
        tune_config=ray.tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=config.num_samples),
        run_config=ray.tune.RunConfig(name=SWEEP_NAME, storage_path=storage, callbacks=[recorder],
                                      failure_config=ray.tune.FailureConfig(max_failures=0), verbose=1),
    )


@dataclass
class Sweep:
    """What the driver settles before Ray starts: the checked inputs and the settings every trial shares."""

    config: TuneConfig
    space: dict[str, Dimension]
    info: StoreInfo
    counts: dict[str, int]
    storage: str
    trial_defaults: dict  # TrainConfig.to_dict() of a trial before its sampled hyperparameters
    tracking_uri: str | None = None
    parent_run_id: str | None = None

    @property
    def sweep_dir(self) -> str:
        return f"{self.storage}/{SWEEP_NAME}"

    @property
    def untuned(self) -> dict:
        return {k: self.trial_defaults[k] for k in TUNED}

    @property
    def context(self) -> dict:
        """What every run of the sweep logs besides its own hyperparameters: the fixed settings and the store."""
        return {**{k: self.trial_defaults[k] for k in CONTEXT},
                **mlflow_runs.store_params(self.info, self.config.features, self.counts)}


def _check_sweep(config: TuneConfig) -> Sweep:
    """Bad input stops here, before Ray starts or any folder is made."""
    space = load_search_space(config.space or DEFAULT_SPACE)
    if config.register_model and not mlflow_runs.tracking_uri_for(config.mlflow_uri):
        raise TuneConfigError(f"--register-model {config.register_model}: MLflow is off (tracking URI "
                              f"{mlflow_runs.NO_MLFLOW!r}); registering needs a tracking store")
    info, counts = check_store(config.features, config.task, say=lambda message: print(message, flush=True))
    storage = _tune_storage(config)
    sweep = Sweep(config, space, info, counts, storage, config.train_config(storage).to_dict())
    sweep_dir = Location(sweep.sweep_dir)
    if config.resume and not (sweep_dir / "tuner.pkl").is_file():
        raise TuneConfigError(f"--resume: no sweep in {sweep_dir}; is {config.out} the --out of an earlier sweep "
                              "(and --storage its storage)?")
    if not config.resume and sweep_dir.exists():
        raise TuneConfigError(f"{sweep_dir} already holds a sweep: continue it with --resume or pick a new --out "
                              "(or --storage)")
    return sweep


def _open_parent_run(sweep: Sweep) -> None:
    config = sweep.config
    sweep.tracking_uri = mlflow_runs.tracking_uri_for(config.mlflow_uri)
    if not sweep.tracking_uri:
        return
    sweep.parent_run_id, sweep.tracking_uri = mlflow_runs.open_run(
        sweep.tracking_uri, mlflow_runs.experiment_for(config.experiment), f"sweep-{config.out.name}",
        {"asrn.command": "tune", "asrn.task": config.task}, config.out / "mlflow_run.json", config.resume)
    params = {**{k: v for k, v in config.to_dict().items() if k != "resume"}, **sweep.context,
              **{f"space.{k}": _describe(d) for k, d in sweep.space.items()}}
    mlflow_runs.log_params(sweep.tracking_uri, sweep.parent_run_id, params)


def _run_tuner(sweep: Sweep, max_concurrent: int):
    """Start or restore the Tune experiment and run it to the end; the ResultGrid."""
    config = sweep.config
    input_stats, cached = FeatureStore(config.features, info=sweep.info).train_statistics()  # once, for every trial
    print(f"store: input statistics of the train split {'cached in features.json' if cached else 'computed'} "
          "(once, for every trial)", flush=True)
    trainable = ray.tune.with_resources(
        ray.tune.with_parameters(train_trial, trial_defaults=sweep.trial_defaults, info=sweep.info,
                                 input_stats=input_stats, fault=os.environ.get(FAULT_ENV)),
        {"cpu": TRIAL_CPUS})
    if config.resume:
        return ray.tune.Tuner.restore(sweep.sweep_dir, trainable=trainable, resume_unfinished=True,
                                      resume_errored=True).fit()
    recorder = SweepRecorder(config.out / "trial_status.json", config.epochs, config.patience, sweep.untuned,
                             sweep.context, sweep.tracking_uri, sweep.parent_run_id)
    return _build_tuner(config, sweep.space, trainable, max_concurrent, recorder, sweep.storage).fit()


def tune(config: TuneConfig) -> TuneResult:
    """Run (or with `resume`, continue) the sweep; write the outputs of the module docstring and print a summary."""
    sweep = _check_sweep(config)
    config.out.mkdir(parents=True, exist_ok=True)
    write_json(config.out / "tune_config.json", config.to_dict())
    with ray_session(config.address, config.verbose, dashboard=True):  # Tune needs the State API
        per_trial = ray.train.ScalingConfig(num_workers=config.workers_per_trial, use_gpu=config.use_gpu)
        max_concurrent, note = fit_concurrency(config.max_concurrent, per_trial.total_resources,
                                               ray.cluster_resources(), can_grow=config.address is not None)
        if note:
            print(f"warning: {note}", flush=True)
        _open_parent_run(sweep)
        print(f"sweeping {', '.join(f'{k} ~ {_describe(d)}' for k, d in sweep.space.items())} over "
              f"{config.num_samples} trial(s), {max_concurrent} at a time, {config.workers_per_trial} Train "
              f"worker(s) each; {sweep.counts['train']} train / {sweep.counts['val']} val videos, task {config.task}",
              flush=True)
        try:
            with mlflow_runs.system_metrics(sweep.tracking_uri, sweep.parent_run_id, resume=config.resume):
                results = _run_tuner(sweep, max_concurrent)
        except BaseException:
            if sweep.parent_run_id:
                mlflow_runs.finish_run(sweep.tracking_uri, sweep.parent_run_id, "FAILED")
            raise
    return _finish_sweep(sweep, results, max_concurrent)


def _collect_trials(sweep: Sweep, results) -> list[TrialRecord]:
    """The sweep's trials from Tune's results, best val mAP first."""
    run_ids: dict[str, str] = {}
    if sweep.parent_run_id:
        from mlflow import MlflowClient

        client = MlflowClient(sweep.tracking_uri)
        run_ids = child_runs(client, client.get_run(sweep.parent_run_id).info.experiment_id, sweep.parent_run_id)
    statuses = read_statuses(sweep.config.out / "trial_status.json")
    trials = [_record(result, "failed" if result.error else statuses.get(_trial_id(result), "unfinished"),
                      sweep.untuned, sweep.storage, run_ids) for result in results]
    trials.sort(key=lambda t: -t.best_val_map if math.isfinite(t.best_val_map) else math.inf)
    if not any(t.scored for t in trials):
        raise TuneConfigError(f"no trial of the sweep in {sweep.sweep_dir} reported {METRIC}: "
                              f"{'; '.join(t.error or t.status for t in trials) or 'no trials ran'}")
    return trials


def _log_sweep(sweep: Sweep, best: TrialRecord, trials: list[TrialRecord], report, files: dict,
               unfinished: bool):
    """The parent run's summary: the best trial, its test scores, its model, the sweep's files; the ModelInfo."""
    metrics = report.metrics
    model_info = mlflow_model.log_best_model(sweep.tracking_uri, sweep.parent_run_id, report.checkpoint, report.example,
                                            sweep.config.register_model)
    tags = {"best_trial_id": best.trial_id, "best_run_id": best.mlflow_run_id or "",
            "asrn.model_uri": model_info.model_uri, **{f"best.{k}": v for k, v in best.hyperparameters.items()}}
    test = {f"best_test_{k}": metrics["test"][k] for k in ("map", "f1_macro", "f1_micro", "acc", "subacc")}
    test["best_test_f1_macro_at_val_thresholds"] = metrics["test_at_val_thresholds"]["f1_macro"]
    test.update(mlflow_runs.per_class_metrics("best_test", metrics["test"]))
    mlflow_runs.log_metrics(sweep.tracking_uri, sweep.parent_run_id,
                            {"best_val_map": best.best_val_map, "num_trials": len(trials), **test}, 0, tags)
    mlflow_runs.finish_run(sweep.tracking_uri, sweep.parent_run_id, "KILLED" if unfinished else "FINISHED",
                           [files[k] for k in ("trials", "best_config", "sweep_plot", "metrics")])
    return model_info


def _finish_sweep(sweep: Sweep, results, max_concurrent: int) -> TuneResult:
    """Write best.pt (scored on val and test), best_config.json, trials.csv, sweep.png; log the parent run."""
    from asrn.plots import plot_sweep  # matplotlib only in the driver: trial actors import this module

    config = sweep.config
    trials = _collect_trials(sweep, results)
    best = next(t for t in trials if t.scored)
    names = list(dict.fromkeys([*TUNED, *sweep.space]))
    best_train = TrainConfig(**{**sweep.trial_defaults, **best.hyperparameters})
    report = report_best_model(_best_state(best), best_train, FeatureStore(best_train.features, info=sweep.info),
                               config.out)
    files = {"trials": _write_csv(trials, config.out / "trials.csv"), "checkpoint": report.checkpoint,
             "metrics": config.out / "metrics.json",
             "sweep_plot": plot_sweep([t.row() for t in trials], config.out / "sweep.png", names,
                                      title=f"ASRN sweep ({config.task}): {len(trials)} trials"),
             "best_config": write_json(config.out / "best_config.json", {
                 "trial_id": best.trial_id, "hyperparameters": best.hyperparameters, "best_val_map": best.best_val_map,
                 "best_epoch": best.best_epoch, "epochs": best.epochs, "status": best.status,
                 "metrics": best.metrics, "mlflow_run_id": best.mlflow_run_id, "checkpoint": str(report.checkpoint),
                 "train_config": {**best_train.to_dict(), "out": str(config.out / "best"), "mlflow_uri": None}})}
    unfinished = [t.trial_id for t in trials if t.status == "unfinished"]
    model_info = _log_sweep(sweep, best, trials, report, files, bool(unfinished)) if sweep.parent_run_id else None
    print(_summary(trials, names))
    print(f"best trial {best.trial_id}: {METRIC} {best.best_val_map:.4f} at epoch {best.best_epoch} with "
          f"{', '.join(f'{k}={v:.4g}' for k, v in best.hyperparameters.items())}; {summary_line(report.metrics)}")
    if unfinished:
        print(f"{len(unfinished)} trial(s) unfinished ({', '.join(unfinished)}): continue with --resume")
    print(f"outputs in {config.out}: best_config.json, best.pt, metrics.json, trials.csv, sweep.png; Tune "
          f"experiment in {sweep.sweep_dir}")
    if sweep.parent_run_id:
        print(f"MLflow parent run {sweep.parent_run_id} in {sweep.tracking_uri}; open it with: "
              f"mlflow ui --backend-store-uri {sweep.tracking_uri}")
        print(mlflow_model.model_line(model_info, config.register_model))
    return TuneResult(out=config.out, best=best, trials=trials, checkpoint=report.checkpoint,
                      max_concurrent=max_concurrent, metrics=report.metrics, mlflow_run_id=sweep.parent_run_id,
                      tracking_uri=sweep.tracking_uri, files=files,
                      model_uri=model_info.model_uri if model_info else None)
