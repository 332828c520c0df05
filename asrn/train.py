"""Train ASRN with Ray Train (TorchTrainer, DDP) on a feature store; record the run in MLflow. The driver's side.

Three kinds of process run a training, each with its own module: this driver (`train`, `build_trainer`, the best
model's report), the Train workers (asrn.train_worker: `train_loop_per_worker`) and the Train controller
(asrn.epoch_logger: `EpochLogger`, the epoch lines and MLflow metrics).

Flow, as in Ray's own Train examples: `train(config)` opens the store once (asrn.store.FeatureStore) and checks it
before Ray starts; that object goes down to `build_trainer` and the best model's report. When one worker's resident
copy (its train shard and all of val, float32, padded) is at most `direct_read_max_mb` (default 1024) and fits its
share of the node's memory, each worker reads its shard itself with pyarrow, collated once and kept on its device
(asrn.shards): a Ray Data pipeline costs tens of seconds per run, pyarrow reads such a store in well under one. Else
Ray Data reads the store's part files, the driver materializes the train and val splits and
`get_dataset_shard("train")` shards them over the workers. Either way val is read whole by every worker, so all take
the same early-stopping decision. The train split's input statistics come from features.json's cache when it
matches the train split (FeatureStore.train_statistics), else are computed. Afterwards the driver turns the best
checkpoint into `best.pt` with per-class thresholds chosen on val, and scores val and test with it.

The recipe (`--recipe default|paper`, asrn.loop.RECIPES) sets optimizer, lr, weight decay, batch size, dropout,
width, epochs and patience; single flags override it. `batch_size` is the global batch: each of the N workers
takes batch_size // N videos per step. Early stopping and checkpoint selection use val mAP: F1 at 0.5 scores a
well-ranking, weakly calibrated model as 0.

Outputs in `out/`: config.json, best.pt, metrics.json (val and test of best.pt, test at 0.5 and at the val
thresholds), predictions.parquet (video_id, split, labels, one probability column per class, e.g. `sub:warm`),
loss_curves.png, per_class.png, mlflow_run.json, ray_run.json (Ray run name and storage, for `--resume`), and by
default the Ray checkpoints under `out/ray_results/`. Rank 0 checkpoints when val mAP improves, every
`checkpoint_every` epochs, and at the last epoch.

MLflow: the driver creates the run and logs parameters (the config, the store's URI and provenance); per-epoch
metrics are logged by a Ray Train `UserCallback` in the Train controller (asrn.epoch_logger), once per epoch even
when a restarted worker group repeats epochs since its last checkpoint; the driver logs the machine's system
metrics while it runs (where psutil is installed), and after `fit()` the test metrics, the artifacts and best.pt as
an MLflow PyTorch model (asrn.mlflow_model.log_best_model), registered under `--register-model NAME` when given.

Locations: --features, --out and --storage may each be a local folder or a URI (`s3://`, `gs://`, `file://`; see
asrn.locations). The workers open the store by its URI themselves (or its absolute path: a local store must then be
on every node's disk); the outputs are written through asrn.files, atomically where the filesystem allows it, and
`--resume` reads ray_run.json from --out wherever that is.

Console: the driver prints how far loading the store has got, the Train controller one line per epoch with elapsed
time and ETA; Ray's routine lines stay in its log files unless `verbose` (asrn.console).

Fault injection, for tests only: ASRN_FAULT_EXIT (asrn.train_worker) is handed from the driver to the workers.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import ray.data
import ray.train
import torch
from ray.data.expressions import col
from ray.train.torch import TorchConfig, TorchTrainer

from asrn import mlflow_model, mlflow_runs
from asrn.checkpoint import load_training_state, write_checkpoint
from asrn.epoch_logger import DIVERGED, EpochLogger, epoch_metrics, log_unlogged_epochs  # noqa: F401 - API
from asrn.errors import AsrnError
from asrn.files import atomic_output, write_json
from asrn.labels import TASKS, UnknownTaskError, encode, task_labels
from asrn.locations import Location
from asrn.loop import PRECISIONS, RECIPES, NonFiniteLossError, Recipe, check_finite_scores
from asrn.metrics import choose_thresholds, compute_metrics
from asrn.model import ASRN, BOUNDARY_FORMS, VARIANTS, ModelConfig
from asrn.ray_session import lean_trainer_class, ray_session
from asrn.search_space import RANGES  # the valid dropout and weight decay: one rule for runs and sweeps
from asrn.sequence import WINDOW, collate
from asrn.shards import direct_read_choice
from asrn.store import (
    INFO_FILE,
    FeatureStore,
    FeatureStoreError,
    StoreInfo,
    VideoFeatures,
    check_encoded_window,
    encoded_window,
)
from asrn.train_worker import FAULT_ENV, REPORTED_METRICS, LoopConfig, train_loop_per_worker  # noqa: F401 - API

SELECT_METRIC = "val_map"  # early stopping and checkpoint selection
RESUME_FIELDS = ("features", "task", "variant", "boundaries", "recipe", "num_workers", "lr", "weight_decay",
                 "batch_size", "dropout", "hidden", "epochs", "patience", "seed",
                 "precision")  # what `--resume` must not change
RECIPE_FIELDS = ("lr", "weight_decay", "batch_size", "dropout", "hidden", "epochs", "patience")


class TrainConfigError(AsrnError):
    """A hyperparameter or option of `asrn train` out of range; the message names it."""


class EmptySplitError(FeatureStoreError):
    """The store has no rows for a split that training needs (train, val or test)."""


@dataclass
class TrainConfig:
    """Flags of `asrn train` (field name = flag name with dashes as underscores).

    The fields of RECIPE_FIELDS left at None take the recipe's value, so `config.json` holds what really ran.
    """

    features: Location  # a local folder or a URI
    task: str
    out: Location  # a local folder or a URI
    variant: str = "asrn"
    boundaries: str = "cuts"  # the BDLSTM's s_t: the store's shots where known, else the paper's (BOUNDARY_FORMS)
    recipe: str = "default"
    num_workers: int = 1
    use_gpu: bool = False
    lr: float | None = None
    weight_decay: float | None = None
    batch_size: int | None = None  # global: split over the workers
    dropout: float | None = None
    hidden: int | None = None
    epochs: int | None = None
    patience: int | None = None  # epochs without a val mAP gain before stopping
    seed: int = 0
    storage: str | None = None  # Ray checkpoint storage (folder, s3://, gs://); default out/ray_results
    resume: bool = False
    mlflow_uri: str | None = None  # default MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db; "none": off
    experiment: str | None = None  # default MLFLOW_EXPERIMENT_NAME, else "asrn"
    register_model: str | None = None  # register best.pt's MLflow model under this name
    address: str | None = None
    verbose: bool = False  # Ray's routine console lines too (asrn.console)
    max_failures: int = 3  # worker-group restarts from the last checkpoint before giving up
    num_to_keep: int = 2  # Ray checkpoints kept: the best by val mAP (the latest is always kept too)
    checkpoint_every: int = 5  # besides improvements and the last epoch
    direct_read_max_mb: int = 1024  # stores up to this size: each worker reads its shard itself (asrn.shards);
    # larger ones stream through Ray Data; 0: always Ray Data
    precision: str | None = None  # fp32 | bf16 (asrn.loop); default bf16 with --use-gpu, else fp32

    def __post_init__(self) -> None:
        self.features, self.out = Location(self.features), Location(self.out)
        if self.task not in TASKS:
            raise UnknownTaskError(f"unknown task {self.task!r}: expected one of {', '.join(TASKS)}")
        if self.variant not in VARIANTS:
            raise TrainConfigError(f"unknown variant {self.variant!r}: expected one of {', '.join(VARIANTS)}")
        if self.boundaries not in BOUNDARY_FORMS:
            raise TrainConfigError(f"unknown boundaries {self.boundaries!r}: expected one of "
                                   f"{', '.join(BOUNDARY_FORMS)}")
        if self.recipe not in RECIPES:
            raise TrainConfigError(f"unknown recipe {self.recipe!r}: expected one of {', '.join(RECIPES)}")
        for name in RECIPE_FIELDS:
            if getattr(self, name) is None:
                setattr(self, name, getattr(RECIPES[self.recipe], name))
        self.precision = self.precision or ("bf16" if self.use_gpu else "fp32")
        if self.precision not in PRECISIONS:
            raise TrainConfigError(f"--precision {self.precision!r}: expected one of {', '.join(PRECISIONS)}")
        checks = {
            "lr": self.lr > 0 and np.isfinite(self.lr),
            "weight_decay": RANGES["weight_decay"].admits(self.weight_decay),
            "batch_size": self.batch_size >= 1, "dropout": RANGES["dropout"].admits(self.dropout),
            "epochs": self.epochs >= 1,
            "num_workers": self.num_workers >= 1, "hidden": self.hidden >= 1, "patience": self.patience >= 1,
            "max_failures": self.max_failures >= -1, "num_to_keep": self.num_to_keep >= 1,
            "checkpoint_every": self.checkpoint_every >= 1, "direct_read_max_mb": self.direct_read_max_mb >= 0,
        }
        rules = {"lr": "> 0", "dropout": f"in {RANGES['dropout']}",
                 "weight_decay": f"in {RANGES['weight_decay']} (AdamW shrinks the weights by lr x weight decay a step)",
                 "max_failures": ">= -1 (-1: no limit)", "direct_read_max_mb": ">= 0 (0: always Ray Data)"}
        for name, ok in checks.items():
            if not ok:
                raise TrainConfigError(f"{name} = {getattr(self, name)!r}: must be {rules.get(name, '>= 1')}")
        if self.register_model is not None and not self.register_model.strip():
            raise TrainConfigError("--register-model: the registered model's name is empty")

    def resume_conflicts(self, saved: dict) -> list[str]:
        """Each field that would change the optimisation of the run saved as `saved` (its config.json), named as
        its flag: "--lr 0.001 differs from the run's 0.003"."""
        mine = self.to_dict()
        return [f"--{name.replace('_', '-')} {mine[name]} differs from the run's {saved[name]}"
                for name in RESUME_FIELDS if name in saved and mine[name] != saved[name]]

    def to_dict(self) -> dict:
        return {f.name: str(v) if isinstance(v := getattr(self, f.name), Path | Location) else v for f in fields(self)}

    def effective_recipe(self) -> Recipe:
        """The named recipe with this run's overrides (and a cosine schedule over this run's epochs)."""
        return replace(RECIPES[self.recipe], **{name: getattr(self, name) for name in RECIPE_FIELDS})

    def model_config(self, dims: dict[str, int]) -> ModelConfig:
        return ModelConfig(dims=dict(dims), num_classes=len(task_labels(self.task)), variant=self.variant,
                           hidden=self.hidden, dropout=self.dropout, boundaries=self.boundaries)


@dataclass
class TrainResult:
    """What `train` produced: where the outputs are and the metrics of the best checkpoint."""

    out: Location
    checkpoint: Path | Location  # best.pt
    best_epoch: int
    metrics: dict  # {"val": ..., "test": ..., "test_at_val_thresholds": ...} (compute_metrics dicts)
    history: list[dict]  # per-epoch reported metrics, all epochs of the run (resumed ones included)
    mlflow_run_id: str | None = None
    tracking_uri: str | None = None
    files: dict[str, Path | Location] = field(default_factory=dict)
    model_uri: str | None = None  # best.pt as an MLflow model (models:/<model id>)


# ---------------------------------------------------------------- checking the store before Ray starts

def check_store(features: str | os.PathLike | Location | FeatureStore, task: str,
                say: Callable[[str], None] | None = None, every: float = 5.0) -> tuple[StoreInfo, dict[str, int]]:
    """Refuse a store training cannot use (FeatureStore.check, then train/val/test each non-empty and the encoded
    window training's); return its info and the number of videos per split. `say` hears progress and the totals."""
    started = time.monotonic()
    store = features if isinstance(features, FeatureStore) else FeatureStore(features)
    check_encoded_window(store.info, WINDOW, str(store.location / INFO_FILE))  # training forms WINDOW sequences
    counts = store.check(say, every)
    empty = [s for s, n in counts.items() if n == 0]
    if empty:
        raise EmptySplitError(f"{store}: no videos in split {', '.join(empty)} "
                              f"(counts: {', '.join(f'{s} {n}' for s, n in counts.items())}); "
                              "training needs train, val and test videos")
    task_labels(task)
    if say:
        say(f"store {store}: {sum(counts.values())} videos ({' / '.join(f'{n} {s}' for s, n in counts.items())}) "
            f"in {len(store.files)} part file(s), preset {store.info.preset}, checked in "
            f"{time.monotonic() - started:.1f} s")
    return store.info, counts


# ---------------------------------------------------------------- driver side: trainer, MLflow, outputs

def loop_config_for(config: TrainConfig, store: FeatureStore, input_stats: dict | None = None) -> LoopConfig:
    """The worker config of a TrainConfig; `input_stats`, when not given, come from features.json's cache (or are
    computed from the store when it has none for this train split)."""
    recipe = config.effective_recipe()
    if recipe.random_steps and encoded_window(store.info) is not None:
        recipe = replace(recipe, random_steps=False)  # only the fixed former's steps were encoded: the rest are zeros
    return LoopConfig(task=config.task, model=config.model_config(store.info.dims), recipe=recipe,
                      batch_size=max(1, config.batch_size // config.num_workers), seed=config.seed,
                      use_gpu=config.use_gpu, precision=config.precision, checkpoint_every=config.checkpoint_every,
                      input_stats=input_stats or store.train_statistics()[0],
                      fault=os.environ.get(FAULT_ENV), verbose=config.verbose)


def storage_path(config: TrainConfig) -> str:
    return config.storage or str((config.out / "ray_results").absolute())


def _load_store(config: TrainConfig, store: FeatureStore, input_stats: dict | None, counts: dict[str, int] | None,
                say: Callable[[str], None]) -> tuple[dict, dict, bool]:
    """(Ray Data datasets, input statistics, direct reads?): the store's data as the workers will get it.

    Direct reads (asrn.shards.direct_read_choice) need no dataset; else the train and val splits are read by Ray
    Data's tasks (on any node, by absolute path or URI), filtered by split and materialized once, so that epochs
    re-split blocks in the object store rather than re-read the files.
    """
    started = time.monotonic()
    direct, reason = direct_read_choice(store, config.num_workers, config.direct_read_max_mb)
    splits = () if direct else ("train", "val")
    steps = 1 + len(splits) + (input_stats is None)
    say(f"store [1/{steps}]: {reason}")
    datasets, took, step = {}, "", 1
    files = [str(f.absolute()) for f in store.files]  # the part files only: nothing else in the folder is data
    if splits:
        ray.data.DataContext.get_current().enable_progress_bars = config.verbose
    for split in splits:
        step += 1
        videos = f" ({counts[split]} videos)" if counts else ""
        say(f"store [{step}/{steps}]: reading the {split} split{videos} into Ray's object store{took}")
        begun = time.monotonic()
        datasets[split] = ray.data.read_parquet(files).filter(expr=col("split") == split).materialize()
        took = f" ({split}: {time.monotonic() - begun:.1f} s)"
    if input_stats is None:
        input_stats, cached = store.train_statistics()
        say(f"store [{steps}/{steps}]: input statistics of the train split "
            f"{'cached in features.json' if cached else 'computed (features.json has none for this train split)'}"
            f"{took}")
        took = ""
    say(f"store: loaded in {time.monotonic() - started:.1f} s{took}; starting {config.num_workers} Ray Train "
        "worker(s)")
    return datasets, input_stats, direct


def build_trainer(config: TrainConfig, run_name: str, callbacks: Sequence[ray.train.UserCallback] = (),
                  store: FeatureStore | None = None, input_stats: dict | None = None,
                  counts: dict[str, int] | None = None, say: Callable[[str], None] | None = None) -> TorchTrainer:
    """A TorchTrainer for `config` on `store` (default: opened from config.features), checkpoints under
    `storage_path(config)`.

    The workers read the store themselves when it fits (`_load_store`), else get Ray Data's shards. Input
    statistics come from features.json when cached for the store's train split as it is.
    A second trainer with the same `run_name` and storage continues from that run's last checkpoint
    (Ray Train V2 restores its checkpoint manager from storage): that is how `--resume` works.
    `say` (e.g. print) hears each step of loading the store (`counts`: videos per split, for those lines).
    """
    store = store or FeatureStore(config.features, warn=False)
    datasets, input_stats, direct = _load_store(config, store, input_stats, counts, say or (lambda message: None))
    loop_config = loop_config_for(config, store, input_stats)
    loop_config.store = str(store.location.absolute()) if direct else None  # each worker opens it itself
    return lean_trainer_class()(
        train_loop_per_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if config.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=config.num_workers, use_gpu=config.use_gpu),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=storage_path(config),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config.num_to_keep,
                                                         checkpoint_score_attribute=SELECT_METRIC,
                                                         checkpoint_score_order="max"),
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
            callbacks=list(callbacks),
            # Ray Train's INFO lines (worker group started, checkpoint created, ...) off the console unless verbose;
            # its system log files keep every level
            logging_config=ray.train.LoggingConfig(log_level="INFO" if config.verbose else "WARNING"),
        ),
        datasets=datasets or None,
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]) if datasets else None,
    )


def predict_scores(model: ASRN, videos, task: str, batch_size: int) -> np.ndarray:
    """(N, C) probabilities of `videos`, in order; non-finite scores are refused."""
    scores = []
    with torch.no_grad():
        for i in range(0, len(videos), batch_size):
            batch = collate(videos[i:i + batch_size], task)
            logits = model(**batch.inputs()).logits  # (B, C)
            scores.append(torch.sigmoid(logits.float()).numpy())
    return check_finite_scores(np.concatenate(scores), f"model on {len(videos)} video(s)")


def _run_name(config: TrainConfig) -> str:
    """The Ray run name: a new one per training, the previous one with --resume."""
    record = config.out / "ray_run.json"
    if config.resume:
        if not record.is_file():
            raise TrainConfigError(f"--resume: {record} not found; is {config.out} the --out of an earlier run?")
        previous = json.loads(record.read_text())
        if previous["storage_path"] != storage_path(config):
            raise TrainConfigError(f"--resume: the run in {config.out} kept its checkpoints in "
                                   f"{previous['storage_path']}, not {storage_path(config)}; pass --storage")
        return previous["name"]
    if record.is_file():
        raise TrainConfigError(f"{config.out} already holds a run ({record.name}): continue it with --resume "
                               "or choose a new --out")
    name = f"asrn-train-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    write_json(record, {"name": name, "storage_path": storage_path(config)})
    return name


@dataclass
class BestModelReport:
    """best.pt and its scores: val and test at 0.5, test at the per-class thresholds chosen on val."""

    checkpoint: Path | Location
    metrics: dict
    predictions: Location
    per_class_plot: Path | Location
    example: VideoFeatures  # a val video, for the input example of the MLflow model


def _write_predictions(columns: dict[str, list], labels: list[str], path: Location) -> Location:
    schema = pa.schema([("video_id", pa.string()), ("split", pa.string()), ("labels", pa.list_(pa.string())),
                        *[(name, pa.float32()) for name in labels]])
    with atomic_output(path) as temporary:
        pq.write_table(pa.table(columns, schema=schema), temporary)
    return path


def report_best_model(state: dict, config: TrainConfig, store: FeatureStore, out: str | os.PathLike | Location
                      ) -> BestModelReport:
    """Write best.pt from a training state (thresholds chosen on val), score val and test, write the outputs.

    Shared by `asrn train` and `asrn tune` (for its best trial), so both report the same figures.
    """
    out, info = Location(out), store.info
    labels = list(task_labels(config.task))
    model = ASRN(config.model_config(info.dims))
    model.load_state_dict(state["model"])
    model.eval()
    columns: dict[str, list] = {"video_id": [], "split": [], "labels": [], **{name: [] for name in labels}}
    scored = {}
    example = None
    for split in ("val", "test"):  # streamed a part file at a time: the scores are kept, not the features
        targets, scores = [], []
        for videos in store.iter_videos([split]):
            example = example or videos[0]
            targets.append(np.stack([encode(v.labels, config.task) for v in videos]))
            scores.append(predict_scores(model, videos, config.task, config.batch_size))
            columns["video_id"] += [v.video_id for v in videos]
            columns["split"] += [split] * len(videos)
            columns["labels"] += [[name for name in v.labels if name in labels] for v in videos]
        scored[split] = (np.concatenate(targets), np.concatenate(scores))
        for j, name in enumerate(labels):
            columns[name] += scored[split][1][:, j].tolist()
    thresholds = choose_thresholds(*scored["val"])
    metrics = {"best_epoch": state["epoch"], "task": config.task,  # val thresholds: test_at_val_thresholds.per_class
               "val": compute_metrics(*scored["val"], labels), "test": compute_metrics(*scored["test"], labels),
               "test_at_val_thresholds": compute_metrics(*scored["test"], labels, thresholds=thresholds)}
    checkpoint = write_checkpoint(out / "best.pt", state["model"], config.model_config(info.dims), config.to_dict(),
                                  config.task, info, state["epoch"], state["history"][-1], thresholds.tolist())
    write_json(out / "metrics.json", metrics)
    from asrn.plots import plot_per_class  # here, not at the top: Train workers and controllers import this module

    per_class = plot_per_class(metrics["test"]["per_class"], out / "per_class.png",
                               title=f"test F1 and accuracy per class (epoch {state['epoch']})")
    return BestModelReport(checkpoint, metrics, _write_predictions(columns, labels, out / "predictions.parquet"),
                           per_class, example)


def summary_line(metrics: dict) -> str:
    test, tuned = metrics["test"], metrics["test_at_val_thresholds"]
    return (f"test mAP {test['map']:.4f}  F1 micro {test['f1_micro']:.4f}  F1 macro {test['f1_macro']:.4f}  "
            f"Acc {test['acc']:.4f}  Subacc {test['subacc']:.4f}  |  at val thresholds: F1 macro "
            f"{tuned['f1_macro']:.4f}  F1 micro {tuned['f1_micro']:.4f}")


def _fit(config: TrainConfig, run_name: str, store: FeatureStore, counts: dict[str, int], tracking_uri: str | None,
         run_id: str | None):
    """Run the TorchTrainer; mark the MLflow run FAILED if it raises."""
    logged = mlflow_runs.logged_steps(tracking_uri, run_id, "train_loss") if run_id and config.resume else set()
    try:
        with ray_session(config.address, config.verbose):
            logger = EpochLogger(config.epochs, tracking_uri, run_id, logged, patience=config.patience)
            trainer = build_trainer(config, run_name, [logger], store, counts=counts,
                                    say=lambda message: print(message, flush=True))
            result = trainer.fit()
            if diverged := (result.metrics or {}).get(DIVERGED):  # every rank stopped on it: not a worker failure
                raise NonFiniteLossError(diverged)
            return result
    except BaseException as e:
        if run_id:
            mlflow_runs.finish_run(tracking_uri, run_id, "FAILED")
        if (diverged := _non_finite_loss(e)) is not None:
            raise NonFiniteLossError(f"{diverged}; the last good checkpoint stays in {storage_path(config)}/"
                                     f"{run_name}") from e
        raise


def _non_finite_loss(error: BaseException) -> str | None:
    """The message of a NonFiniteLossError raised on a worker, wherever Ray wrapped it; None for other errors."""
    pending = [error, *getattr(error, "worker_failures", {}).values()]
    while pending:
        e = pending.pop()
        if isinstance(e, NonFiniteLossError):
            return str(e)
        pending += [c for c in (getattr(e, "cause", None), e.__cause__) if isinstance(c, BaseException)]
    return None


def _check_resume(config: TrainConfig) -> None:
    """`--resume` continues the run as it was: a flag that would change its optimisation is refused, by name."""
    record = config.out / "config.json"
    if not config.resume or not record.is_file():
        return
    if conflicts := config.resume_conflicts(json.loads(record.read_text())):
        raise TrainConfigError(f"--resume {config.out}: {'; '.join(conflicts)}. Resume with the run's values (leave "
                               "those flags out) or start a new run in another --out")


def with_run_values(flags: dict, given: set[str]) -> dict:
    """`asrn train --resume`: the flags of the run being resumed (its config.json) where this command line gives
    none, so that leaving out `--epochs` continues the run's 100 epochs, not the recipe's 40; `given`: the flags
    this command line names. Without --resume, or without a config.json, `flags` as they are."""
    record = Location(flags["out"]) / "config.json"
    if not flags.get("resume") or not record.is_file():
        return flags
    saved = {"boundaries": "unsupervised", **json.loads(record.read_text())}  # a run from before the flag had none
    return {**flags, **{k: saved[k] for k in RESUME_FIELDS if k in saved and k not in given and k in flags}}


def train(config: TrainConfig) -> TrainResult:
    """Train, write the outputs listed in the module docstring, and print where they and the MLflow run are."""
    tracking_uri, run_id = mlflow_runs.tracking_uri_for(config.mlflow_uri), None
    if config.register_model and not tracking_uri:
        raise TrainConfigError(f"--register-model {config.register_model}: MLflow is off (tracking URI "
                               f"{mlflow_runs.NO_MLFLOW!r}); registering needs a tracking store")
    # bad input stops here, before Ray starts
    store = FeatureStore(config.features)  # opened once: every step below reads it through this object
    info, counts = check_store(store, config.task, say=lambda message: print(message, flush=True))
    config.out.mkdir(parents=True, exist_ok=True)
    run_name = _run_name(config)
    _check_resume(config)
    write_json(config.out / "config.json", config.to_dict())
    if tracking_uri:
        run_id, tracking_uri = mlflow_runs.open_run(
            tracking_uri, mlflow_runs.experiment_for(config.experiment), config.out.name,
            {"asrn.command": "train", "asrn.task": config.task}, config.out / "mlflow_run.json", config.resume)
        mlflow_runs.log_params(tracking_uri, run_id, {**config.to_dict(),
                                                      **mlflow_runs.store_params(info, config.features, counts)})
    print(f"training {config.variant} ({config.recipe} recipe), task {config.task}, {config.num_workers} worker(s), "
          f"{config.epochs} epochs at most", flush=True)
    with mlflow_runs.system_metrics(tracking_uri, run_id, resume=config.resume):
        return _train_and_report(config, run_name, store, counts, tracking_uri, run_id)


def _train_and_report(config: TrainConfig, run_name: str, store: FeatureStore, counts: dict[str, int],
                      tracking_uri: str | None, run_id: str | None) -> TrainResult:
    """`train` once the run is open: fit, then best.pt, its scores and plots, the MLflow model and metrics."""
    result = _fit(config, run_name, store, counts, tracking_uri, run_id)

    with result.checkpoint.as_directory() as folder:
        history = load_training_state(folder)["history"]
    if run_id and (backfilled := log_unlogged_epochs(tracking_uri, run_id, history)):
        print(f"logged epoch(s) {backfilled} to MLflow from the checkpoint (their driver was killed before it "
              "logged them)", flush=True)
    best_ckpt, _ = max(result.best_checkpoints, key=lambda cm: (cm[1][SELECT_METRIC], -cm[1]["epoch"]))
    with best_ckpt.as_directory() as folder:
        best_state = load_training_state(folder)
    best = report_best_model(best_state, config, store, config.out)
    from asrn.plots import plot_loss_curves  # matplotlib only in the driver (see report_best_model)

    loss_curves = plot_loss_curves(history, config.out / "loss_curves.png",
                                   title=f"ASRN ({config.variant}, {config.task}) loss")
    files = {"config": config.out / "config.json", "checkpoint": best.checkpoint,
             "metrics": config.out / "metrics.json", "predictions": best.predictions, "loss_curves": loss_curves,
             "per_class": best.per_class_plot}
    model_info = None
    if run_id:
        test = {f"test_{k}": best.metrics["test"][k] for k in ("map", "f1_macro", "f1_micro", "acc", "subacc")}
        test["test_f1_macro_at_val_thresholds"] = best.metrics["test_at_val_thresholds"]["f1_macro"]
        test.update(mlflow_runs.per_class_metrics("test", best.metrics["test"]))
        model_info = mlflow_model.log_best_model(tracking_uri, run_id, best.checkpoint, best.example,
                                                config.register_model)
        mlflow_runs.log_metrics(tracking_uri, run_id, test, step=best_state["epoch"],
                                tags={"best_epoch": best_state["epoch"], "asrn.model_uri": model_info.model_uri})
        mlflow_runs.finish_run(tracking_uri, run_id, "FINISHED",
                               [files[k] for k in ("config", "metrics", "loss_curves", "per_class")])
    print(f"best epoch {best_state['epoch']}; {summary_line(best.metrics)}")
    print(f"outputs in {config.out}: best.pt, metrics.json, predictions.parquet, loss_curves.png, per_class.png")
    if run_id:
        print(f"MLflow run {run_id} in {tracking_uri}; open it with: mlflow ui --backend-store-uri {tracking_uri}")
        print(mlflow_model.model_line(model_info, config.register_model))
    return TrainResult(out=config.out, checkpoint=best.checkpoint, best_epoch=best_state["epoch"],
                       metrics=best.metrics, history=history, mlflow_run_id=run_id, tracking_uri=tracking_uri,
                       files=files, model_uri=model_info.model_uri if model_info else None)
