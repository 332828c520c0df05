"""Train ASRN with Ray Train (TorchTrainer, DDP) on a feature store; record the run in MLflow.

Flow: `train(config)` checks the store on the driver (dims, columns, labels, splits) before Ray starts;
Ray Data reads the Parquet parts and `get_dataset_shard("train")` shards them over the workers
(val is read whole by every worker, so all take the same early-stopping decision); each worker runs
`train_loop_per_worker` and reports the metrics of `REPORTED_METRICS` and a checkpoint every epoch;
afterwards the driver turns the best checkpoint into `best.pt` and scores val and test with it.

Training settings (paper §4.2): SGD with momentum 0.9, lr 0.01, batch size 32, dropout 0.7, 200 epochs.
"decreased to its 0.01 every one epoch" is read as an exponential decay stepped once per epoch that
reaches 0.01 × lr after 200 epochs (`lr_decay` = 0.01 ** (1/200) ≈ 0.977); multiplying lr by 0.01 every
epoch would stop learning after two epochs. `batch_size` is the global batch: each of the N workers
takes batch_size // N videos per step. Early stopping ends training after `patience` epochs without a
gain in validation F1 macro.

Outputs in `out/`: config.json, best.pt, metrics.json (val and test of best.pt), predictions.parquet
(video_id, split, labels, one probability column per class, e.g. `sub:warm`), loss_curves.png,
per_class.png, mlflow_run.json, ray_run.json (Ray run name and storage, for `--resume`), and by default
the Ray checkpoints under `out/ray_results/`.

`best.pt` is written and read by asrn.checkpoint (keys in its docstring); `load_checkpoint` is re-exported.
MLflow: the driver creates the run and logs parameters; per-epoch metrics are logged by a Ray Train
`UserCallback`, which runs in the Train controller (one process, on the driver's node); the driver
logs test metrics and artifacts after `fit()`. No worker ever writes to MLflow.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
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

from asrn.checkpoint import CheckpointError, load_checkpoint, write_checkpoint  # noqa: F401 - re-exported
from asrn.errors import AsrnError
from asrn.labels import TASKS, UnknownTaskError, check_label, encode, task_labels
from asrn.metrics import compute_metrics
from asrn.model import ASRN, VARIANTS, ModelConfig, asrn_loss
from asrn.plots import plot_loss_curves, plot_per_class
from asrn.sequence import collate
from asrn.store import (
    MODALITIES,
    FeatureStoreError,
    StoreInfo,
    feature_statistics,
    load_videos,
    part_files,
    read_info,
    row_schema,
    table_to_videos,
)

SPLITS = ("train", "val", "test")
REPORTED_METRICS = ("epoch", "train_loss", "val_loss", "val_f1_macro", "val_f1_micro", "val_acc", "val_subacc")
MOMENTUM = 0.9
STATE_FILE = "state.pt"  # inside each Ray checkpoint folder: model, optimizer, scheduler, epoch, history
NO_MLFLOW = "none"


class TrainConfigError(AsrnError):
    """A hyperparameter or option of `asrn train` out of range; the message names it."""


class EmptySplitError(FeatureStoreError):
    """The store has no rows for a split that training needs (train, val or test)."""


@dataclass
class TrainConfig:
    """Flags of `asrn train` (field name = flag name with dashes as underscores); defaults are the paper's."""

    features: Path
    task: str
    out: Path
    variant: str = "asrn"
    num_workers: int = 1
    use_gpu: bool = False
    epochs: int = 200
    lr: float = 0.01
    batch_size: int = 32  # global: split over the workers
    dropout: float = 0.7
    hidden: int = 256
    patience: int = 20  # epochs without val F1 macro gain before stopping
    seed: int = 0
    storage: str | None = None  # Ray checkpoint storage (folder, s3://, gs://); default out/ray_results
    resume: bool = False
    mlflow_uri: str | None = None  # default sqlite:///<cwd>/mlflow.db; "none" turns MLflow off
    experiment: str = "asrn"
    address: str | None = None
    lr_decay: float = 0.01 ** (1 / 200)  # ExponentialLR gamma per epoch: lr × 0.01 after 200 epochs
    max_failures: int = 3  # worker-group restarts from the last checkpoint before giving up
    num_to_keep: int = 2  # Ray checkpoints kept: the best by val F1 macro (the latest is always kept too)

    def __post_init__(self) -> None:
        self.features, self.out = Path(self.features), Path(self.out)
        if self.task not in TASKS:
            raise UnknownTaskError(f"unknown task {self.task!r}: expected one of {', '.join(TASKS)}")
        if self.variant not in VARIANTS:
            raise TrainConfigError(f"unknown variant {self.variant!r}: expected one of {', '.join(VARIANTS)}")
        checks = {
            "lr": self.lr > 0 and math.isfinite(self.lr),
            "batch_size": self.batch_size >= 1,
            "dropout": 0 <= self.dropout < 1,
            "epochs": self.epochs >= 1,
            "num_workers": self.num_workers >= 1,
            "hidden": self.hidden >= 1,
            "patience": self.patience >= 1,
            "lr_decay": 0 < self.lr_decay <= 1,
            "max_failures": self.max_failures >= -1,
            "num_to_keep": self.num_to_keep >= 1,
        }
        rules = {"lr": "> 0", "dropout": "in [0, 1)", "lr_decay": "in (0, 1]", "max_failures": ">= -1 (-1: no limit)"}
        for name, ok in checks.items():
            if not ok:
                raise TrainConfigError(f"{name} = {getattr(self, name)!r}: must be {rules.get(name, '>= 1')}")

    def to_dict(self) -> dict:
        return {f.name: str(v) if isinstance(v := getattr(self, f.name), Path) else v for f in fields(self)}


@dataclass
class TrainResult:
    """What `train` produced: where the outputs are and the metrics of the best checkpoint."""

    out: Path
    checkpoint: Path  # best.pt
    best_epoch: int
    metrics: dict  # {"val": compute_metrics(...), "test": ...}
    history: list[dict]  # per-epoch reported metrics, all epochs of the run (resumed ones included)
    mlflow_run_id: str | None = None
    tracking_uri: str | None = None
    files: dict[str, Path] = field(default_factory=dict)


# ---------------------------------------------------------------- checking the store before Ray starts

def check_videos(videos, dims: dict[str, int], where: str) -> None:
    """Every video's feature widths equal features.json's dims."""
    for v in videos:
        for m in MODALITIES:
            d = v.features[m].shape[1] if v.num_steps else dims[m]
            if d != dims[m]:
                raise FeatureStoreError(f"{where}: video {v.video_id!r} has {m} dim {d}, features.json says {dims[m]}")


def check_store(features: Path, task: str) -> tuple[StoreInfo, dict[str, int]]:
    """Refuse a store training cannot use; return its info and the number of videos per split.

    Reads only the schema, the video_id/split/labels columns and the first row of each part file.
    """
    info = read_info(features)
    files = part_files(features)
    if not files:
        raise FeatureStoreError(f"{features}: holds no Parquet data files")
    expected = row_schema().names
    counts = dict.fromkeys(SPLITS, 0)
    for f in files:
        names = pq.read_schema(f).names
        missing = [c for c in expected if c not in names]
        if missing:
            raise FeatureStoreError(f"{f}: lacks column(s) {', '.join(missing)}")
        table = pq.read_table(f, columns=["video_id", "split", "labels"])
        for video_id, split, labels in zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True):
            if split not in counts:
                raise FeatureStoreError(f"{f}: video {video_id!r} has split {split!r}, expected one of "
                                        f"{', '.join(SPLITS)}")
            counts[split] += 1
            for name in labels or []:
                try:
                    check_label(name)
                except ValueError as e:
                    raise type(e)(f"{f}: video {video_id!r}: {e}") from e
        first = next(pq.ParquetFile(f).iter_batches(batch_size=1), None)
        if first is not None and first.num_rows:
            check_videos(table_to_videos(pa.Table.from_batches([first])), info.dims, str(f))
    empty = [s for s, n in counts.items() if n == 0]
    if empty:
        raise EmptySplitError(f"{features}: no videos in split {', '.join(empty)} "
                              f"(counts: {', '.join(f'{s} {n}' for s, n in counts.items())}); "
                              "training needs train, val and test videos")
    _ = task_labels(task)
    return info, counts


# ---------------------------------------------------------------- the per-worker loop

def _model_config(loop_config: dict) -> ModelConfig:
    return ModelConfig(dims=dict(loop_config["dims"]), num_classes=len(loop_config["labels"]),
                       variant=loop_config["variant"], hidden=loop_config["hidden"], dropout=loop_config["dropout"])


def _batches(iterator, batch_size: int, task: str, dims: dict[str, int], **kwargs):
    """Ray Data pyarrow batches -> collated `Batch`es, dims checked."""
    for table in iterator.iter_batches(batch_size=batch_size, batch_format="pyarrow", **kwargs):
        videos = table_to_videos(table)
        check_videos(videos, dims, "feature store")
        yield collate(videos, task)


def _evaluate(model: torch.nn.Module, batches, device: torch.device, autocast: bool) -> tuple[float, np.ndarray,
                                                                                             np.ndarray]:
    """Mean loss, (N, C) probabilities and (N, C) targets of `model` over `batches`."""
    model.eval()
    scores, targets, loss_sum = [], [], 0.0
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        for batch in batches:
            batch = batch.to(device)
            logits = model(batch.features, batch.present, batch.mask).logits.float()  # (B, C)
            loss_sum += float(asrn_loss(logits, batch.targets)) * len(batch.video_ids)
            scores.append(torch.sigmoid(logits).cpu().numpy())
            targets.append(batch.targets.cpu().numpy())
    scores_np, targets_np = np.concatenate(scores), np.concatenate(targets)
    return loss_sum / len(scores_np), scores_np, targets_np


def _all_reduce_sum(values: list[float]) -> list[float]:
    """Sum over workers (a no-op for one worker)."""
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64)
    if torch.distributed.get_backend() == "nccl":
        t = t.to(ray.train.torch.get_device())
    torch.distributed.all_reduce(t)
    return t.cpu().tolist()


def train_loop_per_worker(loop_config: dict) -> None:
    """One Ray Train worker: restore the last checkpoint if any, then train, validate and report each epoch.

    `loop_config` (see `loop_config_for`): task, labels, dims, variant, hidden, dropout, lr, lr_decay,
    momentum, batch_size (per worker), epochs, patience, seed, use_gpu. Reports `REPORTED_METRICS`
    plus lr, best_epoch, best_val_f1_macro, epoch_seconds and train_samples_per_s; rank 0 attaches a
    checkpoint folder holding STATE_FILE.
    """
    c = loop_config
    torch.manual_seed(c["seed"])
    context = ray.train.get_context()
    rank = context.get_world_rank()
    device = ray.train.torch.get_device()
    autocast = bool(c["use_gpu"]) and device.type == "cuda"  # bf16 autocast on GPU only

    model = ASRN(_model_config(c))
    model.set_input_stats(c["input_stats"])  # the train split's per-dimension mean / std (store.feature_statistics)
    model = ray.train.torch.prepare_model(model)  # DDP over gloo (CPU) or NCCL (GPU)
    net = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    optimizer = torch.optim.SGD(model.parameters(), lr=c["lr"], momentum=c["momentum"])
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=c["lr_decay"])
    start, best_f1, best_epoch, stale, history = 1, -1.0, 0, 0, []

    checkpoint = ray.train.get_checkpoint()
    if checkpoint:  # a restarted worker group or `--resume`: continue after the last reported epoch
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, best_f1, best_epoch = state["epoch"] + 1, state["best_f1"], state["best_epoch"]
        stale, history = state["stale"], state["history"]

    train_shard = ray.train.get_dataset_shard("train")
    # the val set is small and read whole by every worker: read it once, score it every epoch
    val_batches = list(_batches(ray.train.get_dataset_shard("val"), c["batch_size"], c["task"], c["dims"]))
    for epoch in range(start, c["epochs"] + 1):
        if stale >= c["patience"]:
            break  # a resumed run that had already stopped early
        started = time.perf_counter()
        model.train()
        loss_sum, seen = 0.0, 0
        batches = _batches(train_shard, c["batch_size"], c["task"], c["dims"],
                           local_shuffle_buffer_size=4 * c["batch_size"], local_shuffle_seed=c["seed"] + epoch)
        for batch in batches:
            batch = batch.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                logits = model(batch.features, batch.present, batch.mask).logits  # (B, C)
            loss = asrn_loss(logits.float(), batch.targets)  # eq. 10
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(batch.video_ids)
            seen += len(batch.video_ids)
        scheduler.step()
        loss_sum, seen = _all_reduce_sum([loss_sum, float(seen)])
        seconds = time.perf_counter() - started

        val_loss, scores, targets = _evaluate(net, val_batches, device, autocast)
        val = compute_metrics(targets, scores, c["labels"])
        if val["f1_macro"] > best_f1:
            best_f1, best_epoch, stale = val["f1_macro"], epoch, 0
        else:
            stale += 1
        metrics = {
            "epoch": epoch, "train_loss": loss_sum / max(seen, 1), "val_loss": val_loss,
            **{f"val_{k}": val[k] for k in ("f1_macro", "f1_micro", "acc", "subacc")},
            "lr": optimizer.param_groups[0]["lr"], "best_epoch": best_epoch, "best_val_f1_macro": best_f1,
            "epoch_seconds": seconds, "train_samples_per_s": seen / seconds,
        }
        history.append(metrics)
        with tempfile.TemporaryDirectory() as folder:
            ckpt = None
            if rank == 0:
                torch.save({"model": net.state_dict(), "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(), "epoch": epoch, "best_f1": best_f1,
                            "best_epoch": best_epoch, "stale": stale, "history": history},
                           Path(folder) / STATE_FILE)
                ckpt = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(metrics, checkpoint=ckpt)


# ---------------------------------------------------------------- driver side: trainer, MLflow, outputs

class EpochLogger(ray.train.UserCallback):
    """Runs in the Train controller (one process): prints each epoch and logs it to MLflow (step = epoch)."""

    def __init__(self, tracking_uri: str | None = None, run_id: str | None = None):
        self.tracking_uri, self.run_id = tracking_uri, run_id

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        m = metrics[0]  # rank 0's; every worker reports the same validation figures
        print(f"epoch {m['epoch']:>3}: train loss {m['train_loss']:.4f}  val loss {m['val_loss']:.4f}  "
              f"val F1 macro {m['val_f1_macro']:.4f}  F1 micro {m['val_f1_micro']:.4f}  "
              f"({m['epoch_seconds']:.1f} s)", flush=True)
        if self.run_id:
            from mlflow import MlflowClient
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            values = [Metric(k, float(v), now, int(m["epoch"])) for k, v in m.items() if k != "epoch"]
            MlflowClient(self.tracking_uri).log_batch(self.run_id, metrics=values)


def loop_config_for(config: TrainConfig, info: StoreInfo) -> dict:
    """The `train_loop_per_worker` config of a TrainConfig (tune overrides lr, dropout, batch_size here)."""
    return {
        "task": config.task, "labels": list(task_labels(config.task)), "dims": dict(info.dims),
        "variant": config.variant, "hidden": config.hidden, "dropout": config.dropout, "lr": config.lr,
        "lr_decay": config.lr_decay, "momentum": MOMENTUM, "epochs": config.epochs, "patience": config.patience,
        "batch_size": max(1, config.batch_size // config.num_workers), "seed": config.seed,
        "use_gpu": config.use_gpu, "input_stats": feature_statistics(config.features, "train"),
    }


def storage_path(config: TrainConfig) -> str:
    return config.storage or str((config.out / "ray_results").resolve())


def build_trainer(config: TrainConfig, run_name: str, callbacks: Sequence[ray.train.UserCallback] = (),
                  info: StoreInfo | None = None) -> TorchTrainer:
    """A TorchTrainer for `config`: Ray Data over the store's parts, checkpoints under `storage_path(config)`.

    A second trainer with the same `run_name` and storage continues from that run's last checkpoint
    (Ray Train V2 restores its checkpoint manager from storage): that is how `--resume` works.
    """
    info = info or read_info(config.features)
    files = [str(f.resolve()) for f in part_files(config.features)]
    # materialized once, so that epochs re-split blocks in the object store rather than re-read the files
    datasets = {s: ray.data.read_parquet(files).filter(expr=col("split") == s).materialize()
                for s in ("train", "val")}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config_for(config, info),
        torch_config=TorchConfig(backend="nccl" if config.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=config.num_workers, use_gpu=config.use_gpu),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=storage_path(config),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config.num_to_keep,
                                                         checkpoint_score_attribute="val_f1_macro",
                                                         checkpoint_score_order="max"),
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
            callbacks=list(callbacks),
        ),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )


def save_checkpoint(path: Path, state: dict, config: TrainConfig, info: StoreInfo) -> Path:
    """Write `best.pt` (keys in asrn.checkpoint) from a Ray checkpoint's STATE_FILE dict."""
    model_config = ModelConfig(dims=dict(info.dims), num_classes=len(task_labels(config.task)),
                               variant=config.variant, hidden=config.hidden, dropout=config.dropout)
    return write_checkpoint(path, state["model"], model_config, config.to_dict(), config.task, info,
                            state["epoch"], state["history"][-1])


def _predict(model: ASRN, videos, task: str, batch_size: int) -> np.ndarray:
    """(N, C) probabilities of `videos`, in order."""
    scores = []
    with torch.no_grad():
        for i in range(0, len(videos), batch_size):
            batch = collate(videos[i:i + batch_size], task)
            scores.append(torch.sigmoid(model(batch.features, batch.present, batch.mask).logits.float()).numpy())
    return np.concatenate(scores)


def _default_tracking_uri() -> str:
    return f"sqlite:///{(Path.cwd() / 'mlflow.db').resolve()}"


def _start_mlflow_run(config: TrainConfig, tracking_uri: str, counts: dict[str, int]) -> str:
    """Create the run (or reopen it on --resume) and log the parameters; return the run id."""
    from mlflow import MlflowClient
    from mlflow.entities import Param

    client = MlflowClient(tracking_uri)
    record = config.out / "mlflow_run.json"
    run_id = None
    if config.resume and record.is_file():
        previous = json.loads(record.read_text())
        if previous.get("tracking_uri") == tracking_uri:
            run_id = previous["run_id"]
            client.update_run(run_id, status="RUNNING")
    if run_id is None:
        experiment = client.get_experiment_by_name(config.experiment)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(config.experiment)
        run_id = client.create_run(experiment_id, run_name=config.out.name,
                                   tags={"asrn.command": "train", "asrn.task": config.task}).info.run_id
    params = {**config.to_dict(), **{f"num_{s}_videos": n for s, n in counts.items()}}
    logged = client.get_run(run_id).data.params
    new = [Param(k, str(v)) for k, v in params.items() if k not in logged]  # params are immutable in MLflow
    client.log_batch(run_id, params=new)
    for k, v in params.items():
        if k in logged and logged[k] != str(v):
            client.set_tag(run_id, f"resume.{k}", str(v))
    record.write_text(json.dumps({"run_id": run_id, "tracking_uri": tracking_uri,
                                  "ui": f"mlflow ui --backend-store-uri {tracking_uri}"}, indent=2) + "\n")
    return run_id


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
    name = f"asrn-train-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    record.write_text(json.dumps({"name": name, "storage_path": storage_path(config)}, indent=2) + "\n")
    return name


def _load_state(checkpoint: ray.train.Checkpoint) -> dict:
    with checkpoint.as_directory() as folder:
        return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)


def train(config: TrainConfig) -> TrainResult:
    """Train, write the outputs listed in the module docstring, and print where they and the MLflow run are."""
    info, counts = check_store(config.features, config.task)  # bad input stops here, before Ray starts
    config.out.mkdir(parents=True, exist_ok=True)
    run_name = _run_name(config)
    (config.out / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    tracking_uri = None if (config.mlflow_uri or "").lower() == NO_MLFLOW else (config.mlflow_uri
                                                                                  or _default_tracking_uri())
    run_id = _start_mlflow_run(config, tracking_uri, counts) if tracking_uri else None
    print(f"training {config.variant} on {config.features} ({counts['train']} train / {counts['val']} val / "
          f"{counts['test']} test videos), task {config.task}, {config.num_workers} worker(s)", flush=True)

    ray.data.DataContext.get_current().enable_progress_bars = False  # one line per epoch instead
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address=config.address)
    try:
        trainer = build_trainer(config, run_name, [EpochLogger(tracking_uri, run_id)], info)
        result = trainer.fit()
    except BaseException:
        if run_id:
            from mlflow import MlflowClient
            MlflowClient(tracking_uri).set_terminated(run_id, status="FAILED")
        raise
    finally:
        if started_ray:
            ray.shutdown()

    latest = _load_state(result.checkpoint)
    best_ckpt, _ = max(result.best_checkpoints, key=lambda cm: (cm[1]["val_f1_macro"], -cm[1]["epoch"]))
    best_state = _load_state(best_ckpt)
    files = {"config": config.out / "config.json",
             "checkpoint": save_checkpoint(config.out / "best.pt", best_state, config, info)}
    model, _ = load_checkpoint(files["checkpoint"])

    labels = list(task_labels(config.task))
    metrics = {"best_epoch": best_state["epoch"], "task": config.task}
    columns: dict[str, list] = {"video_id": [], "split": [], "labels": [], **{name: [] for name in labels}}
    for split in ("val", "test"):
        videos = load_videos(config.features, splits=[split])
        scores = _predict(model, videos, config.task, config.batch_size)
        targets = np.stack([encode(v.labels, config.task) for v in videos])
        metrics[split] = compute_metrics(targets, scores, labels)
        columns["video_id"] += [v.video_id for v in videos]
        columns["split"] += [split] * len(videos)
        columns["labels"] += [[name for name in v.labels if name in labels] for v in videos]
        for j, name in enumerate(labels):
            columns[name] += scores[:, j].tolist()
    files["metrics"] = config.out / "metrics.json"
    files["metrics"].write_text(json.dumps(metrics, indent=2) + "\n")
    files["predictions"] = config.out / "predictions.parquet"
    schema = pa.schema([("video_id", pa.string()), ("split", pa.string()), ("labels", pa.list_(pa.string())),
                        *[(name, pa.float32()) for name in labels]])
    pq.write_table(pa.table(columns, schema=schema), files["predictions"])
    files["loss_curves"] = plot_loss_curves(latest["history"], config.out / "loss_curves.png",
                                            title=f"ASRN ({config.variant}, {config.task}) loss")
    files["per_class"] = plot_per_class(metrics["test"]["per_class"], config.out / "per_class.png",
                                        title=f"test F1 and accuracy per class (epoch {best_state['epoch']})")

    if run_id:
        from mlflow import MlflowClient
        from mlflow.entities import Metric, RunTag

        client = MlflowClient(tracking_uri)
        now = int(time.time() * 1000)
        test_metrics = [Metric(f"test_{k}", metrics["test"][k], now, best_state["epoch"])
                        for k in ("f1_macro", "f1_micro", "acc", "subacc")]  # val_* are logged per epoch
        client.log_batch(run_id, metrics=test_metrics, tags=[RunTag("best_epoch", str(best_state["epoch"]))])
        for name in ("config", "metrics", "loss_curves", "per_class"):
            client.log_artifact(run_id, str(files[name]))
        client.set_terminated(run_id, status="FINISHED")

    test = metrics["test"]
    print(f"best epoch {best_state['epoch']}; test F1 micro {test['f1_micro']:.4f}  F1 macro {test['f1_macro']:.4f}"
          f"  Acc {test['acc']:.4f}  Subacc {test['subacc']:.4f}")
    print(f"outputs in {config.out}: best.pt, metrics.json, predictions.parquet, loss_curves.png, per_class.png")
    if run_id:
        print(f"MLflow run {run_id} in {tracking_uri}; open it with: mlflow ui --backend-store-uri {tracking_uri}")
    return TrainResult(out=config.out, checkpoint=files["checkpoint"], best_epoch=best_state["epoch"],
                       metrics=metrics, history=latest["history"], mlflow_run_id=run_id,
                       tracking_uri=tracking_uri, files=files)
