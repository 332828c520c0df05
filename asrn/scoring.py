"""`asrn predict --features STORE | --manifest CSV`: score a whole collection as a Ray Data job (batch inference).

`asrn predict VIDEO...` (asrn.predict) stays the in-process form for one or a few videos; this module scores a
store or a manifest's videos on a cluster, resumably:

  from a store:    from_items(part files, one block each) -> map_batches(_read_part)   CPU tasks: the part's rows
                   of --split, less the videos already scored
  from a manifest: asrn.extract.build_dataset (extract's stages: decode/detect/flow, then the encoder actors),
                   with the preset and fps the model's store was made with
  then both:       map_batches(ScoreVideos, compute=ActorPoolStrategy(size=--num-workers), num_gpus with --use-gpu)
                   actors: the model built once; each batch sorted by length (T), cut into --batch-size videos,
                   asrn.sequence.collate and the model call of asrn.train.predict_scores
  driver:          iter_batches -> DIR/scored/part-*.parquet every `videos_per_part` videos, errors -> DIR/errors/,
                   then DIR/predictions.parquet (all scored parts) and DIR/summary.json

predictions.parquet: video_id, split, labels (the task's classes; null where unknown), one float32 probability
column per class named as in training's predictions.parquet, then `predicted:<class>` (bool, at the model's
thresholds). summary.json: counts, the thresholds, and per split with labels the paper's metrics and mAP
(asrn.metrics.compute_metrics) at 0.5 and at the thresholds.

Errors are data, as in extract: a video that fails at any stage becomes a row of DIR/errors/ and the others
complete. Resume: videos in DIR/scored/ are skipped; failed ones are retried. A DIR scored with another model is
refused.

--figures (with --manifest): after scoring, an actor pool draws each newly scored video's attention figure with
asrn.predict's own code (predict_video + write_prediction: attention.png, attention.json, scores.json) into
DIR/figures/<video_id>/. It decodes and encodes the video once more, in the actor (the pipeline's prepared frames
are not kept), so it is off by default; a figure that fails is named on stderr and does not fail the run.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import torch

from asrn.checkpoint import load_checkpoint
from asrn.console import stderr_without
from asrn.errors import AsrnError
from asrn.files import atomic_output, write_json
from asrn.labels import encode
from asrn.locations import Location
from asrn.loop import check_finite_scores
from asrn.manifest import ManifestEntry, read_manifest
from asrn.metrics import compute_metrics
from asrn.model import ASRN, ModelConfig
from asrn.ray_session import cluster_address, ray_session
from asrn.sequence import collate
from asrn.store import (
    ERRORS_DIR,
    OPTIONAL_COLUMNS,
    FeatureStore,
    read_part,
    row_schema,
    table_to_videos,
    write_errors,
)

SPLIT_CHOICES = ("train", "val", "test", "all")
SCORED_DIR = "scored"  # DIR/scored/part-*.parquet: scores as they arrive; a re-run skips the videos there
FIGURES_DIR = "figures"  # --figures: DIR/figures/<video_id>/attention.png, attention.json, scores.json
RUN_FILE = "scoring.json"  # the model a DIR was scored with: a re-run with another is refused
PREDICTED_PREFIX = "predicted:"  # `predicted:sub:warm`: cannot clash with a class name (those have one colon)
ERROR_FIELDS = ("path", "stage", "error", "message")
SCORER_MEMORY = 1 << 30  # bytes of RAM reserved per scoring actor (model + a batch); differs from extract's stages
READ_CPUS = 1.0  # CPUs of one store read task; the scoring actors must leave them free, else no part is ever read
SCORER_CPUS = 1.0  # CPUs of one scoring actor on a store (from a manifest it takes none: see manifest_dataset)
BLOCK_VIDEOS = 64  # videos per actor call: sorted by length within it, then cut into --batch-size batches


class ScoreError(AsrnError):
    """A scoring run that cannot start (flags, a model, an --out scored with another model); names the item."""


@dataclass
class ScoreConfig:
    """`asrn predict --features/--manifest` flags (same names)."""

    out: Location  # a local folder or a URI
    features: Location | None = None  # a store (asrn extract's --out)
    manifest: Location | None = None  # or videos, extracted in the same pipeline
    checkpoint: Location | None = None  # best.pt, a file or a URI
    model: str | None = None  # or an MLflow model URI: models:/NAME/VERSION, runs:/ID/model, models:/m-...
    mlflow_uri: str | None = None  # tracking URI for --model (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)
    split: str = "all"  # store videos of this split only
    use_gpu: bool = False  # one GPU per scoring actor
    num_workers: int = 1  # scoring actors
    batch_size: int = 16  # videos per model call
    threshold: float | None = None  # one threshold for every class; default: the model's per-class ones
    weights_dir: Path | None = None  # encoder weights, with --manifest
    boxes: Location | None = None  # refused: a single video's tracks belong to `asrn predict VIDEO`
    figures: bool = False  # with --manifest: DIR/figures/<video_id>/ attention.png, attention.json, scores.json
    verbose: bool = False
    address: str | None = None
    videos_per_part: int = 64  # videos per DIR/scored part file

    def __post_init__(self) -> None:
        self.out = Location(self.out)
        self.features, self.manifest, self.checkpoint = (Location(v) if v is not None else None
                                                         for v in (self.features, self.manifest, self.checkpoint))
        self.weights_dir = Path(self.weights_dir) if self.weights_dir is not None else None
        problems = [text for bad, text in (
            ((self.features is None) == (self.manifest is None), "give --features STORE or --manifest CSV (one)"),
            ((self.checkpoint is None) == (self.model is None), "give --checkpoint CKPT or --model URI (one)"),
            (self.split not in SPLIT_CHOICES, f"--split must be one of {', '.join(SPLIT_CHOICES)}, got {self.split!r}"),
            (self.manifest is not None and self.split != "all", "--split selects store videos; with --manifest "
                                                                 "every listed video is scored"),
            (self.num_workers < 1, f"--num-workers must be >= 1, got {self.num_workers}"),
            (self.batch_size < 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.threshold is not None and not 0 <= self.threshold <= 1,
             f"--threshold must lie in [0, 1], got {self.threshold}"),
            (self.boxes is not None, "--boxes is the tracks JSON of a single video (asrn predict VIDEO); a manifest "
                                     "gives them in its boxes column"),
            (self.figures and self.manifest is None, "--figures needs --manifest: a store holds features, not the "
                                                     "frames the figure shows"),
            (self.model is not None and not self.model.startswith(("models:/", "runs:/")),
             f"--model {self.model}: expected an MLflow model URI (models:/NAME/VERSION or runs:/RUN_ID/model)"),
        ) if bad]
        if problems:
            raise ScoreError("; ".join(problems))

    @property
    def splits(self) -> list[str]:
        return ["train", "val", "test"] if self.split == "all" else [self.split]


SCORING_ONLY_FLAGS = ("features", "model", "split", "use_gpu", "num_workers", "batch_size", "figures", "address",
                      "verbose")


def check_route(videos: list, given: set[str], checkpoint) -> None:
    """`asrn predict VIDEO...` runs in this process: refuse the flags of collection scoring, naming them."""
    if not videos:
        return
    if wrong := [f"--{name.replace('_', '-')}" for name in SCORING_ONLY_FLAGS if name in given]:
        raise ScoreError(f"{', '.join(wrong)}: flag(s) of collection scoring (--features or --manifest, a Ray job); "
                         "`asrn predict VIDEO...` runs in this process without Ray")
    if checkpoint is None:
        raise ScoreError("asrn predict VIDEO...: give --checkpoint CKPT")


# ---------------------------------------------------------------- the model


@dataclass
class Scorer:
    """What a scoring actor needs to rebuild the model: its config and weights, classes, thresholds, provenance."""

    model_config: ModelConfig
    state: dict  # state_dict, on the CPU
    task: str
    labels: list[str]
    thresholds: list[float]
    store_info: dict  # the model's store: preset, fps, dims (asrn.predict.feature_settings reads it)
    source: str  # the checkpoint or model URI, for summary.json and RUN_FILE

    def build(self, device: str = "cpu") -> ASRN:
        model = ASRN(self.model_config)
        model.load_state_dict(self.state)
        return model.to(device).eval()


def load_scorer(config: ScoreConfig) -> Scorer:
    """The model of --checkpoint (asrn.checkpoint) or --model (MLflow), with its thresholds (--threshold wins)."""
    if config.checkpoint is not None:
        model, saved = load_checkpoint(config.checkpoint)
        scorer = Scorer(model.config, model.state_dict(), saved["task"], list(saved["labels"]),
                        list(saved["thresholds"]), dict(saved["store_info"]), str(config.checkpoint))
    else:
        scorer = load_mlflow_scorer(config.model, config.mlflow_uri)
    if config.threshold is not None:
        scorer.thresholds = [config.threshold] * len(scorer.labels)
    return scorer


def load_mlflow_scorer(model_uri: str, tracking_uri: str | None = None) -> Scorer:
    """A logged ScoringModel (asrn.mlflow_model) and the thresholds in its metadata."""
    import mlflow.models
    import mlflow.pytorch

    from asrn.mlflow_model import using_tracking_uri
    from asrn.mlflow_runs import tracking_uri_for

    uri = tracking_uri_for(tracking_uri)
    if uri is None:
        raise ScoreError(f"--model {model_uri}: MLflow is off (tracking URI 'none')")
    try:
        with using_tracking_uri(uri):
            logged = mlflow.pytorch.load_model(model_uri)
            metadata = mlflow.models.get_model_info(model_uri).metadata or {}
    except Exception as e:  # noqa: BLE001 - MLflow's errors for a missing model vary by store and version
        raise ScoreError(f"--model {model_uri}: cannot load it from {uri}: {type(e).__name__}: "
                         f"{' '.join(str(e).split())}") from e
    model = getattr(logged, "model", None)
    if not isinstance(model, torch.nn.Module) or "thresholds" not in metadata:
        raise ScoreError(f"--model {model_uri}: not an ASRN model logged by asrn train or asrn tune")
    info = {**(metadata.get("store") or {}), "dims": dict(model.config.dims)}
    return Scorer(ModelConfig(**asdict(model.config)), {k: v.cpu() for k, v in model.state_dict().items()},
                  metadata["task"], list(metadata["labels"]), [float(t) for t in metadata["thresholds"]], info,
                  model_uri)


# ---------------------------------------------------------------- the Ray Data stages


def _read_part(batch: dict, splits: list[str], skip: frozenset[str]) -> pa.Table:
    """CPU task: one part file's rows of `splits`, less the videos in `skip`, with empty error fields."""
    file = Location(str(batch["file"][0]))
    table = _conformed(read_part(file, filters=[("split", "in", splits)]))
    if skip:
        table = table.filter(pc.invert(pc.is_in(table.column("video_id"), pa.array(sorted(skip), pa.string()))))
    for name in ERROR_FIELDS:
        table = table.append_column(name, pa.array([str(file) if name == "path" else ""] * table.num_rows,
                                                   pa.string()))
    return table


def _conformed(table: pa.Table) -> pa.Table:
    """The store's row columns only, an optional column that an older part file lacks added as nulls (read as its
    default, OPTIONAL_COLUMNS), so that rows of different part files concatenate into one actor batch."""
    schema = row_schema()
    for name in OPTIONAL_COLUMNS:
        if name not in table.column_names:
            table = table.append_column(schema.field(name), pa.nulls(table.num_rows, schema.field(name).type))
    return table.select([name for name in schema.names if name in table.column_names])


class ScoreVideos:
    """Scoring actor: the model built once; each call scores the good rows of a batch, sorted by length.

    Input rows: the store's Arrow schema plus path/stage/error/message (extract's actors give these; a row with an
    error passes through). Output: video_id, split, labels, scores (list of C float32), path/stage/error/message.
    """

    def __init__(self, scorer: Scorer, device: str, batch_size: int):
        self.model, self.task, self.labels = scorer.build(device), scorer.task, scorer.labels
        self.device, self.batch_size = device, batch_size

    def __call__(self, table: pa.Table) -> pa.Table:
        good = pc.equal(table.column("error"), "")
        videos = table_to_videos(table.filter(good)) if table.num_rows else []
        scores, errors = self.score_sorted(videos)
        bad = table.filter(pc.invert(good))
        out = {"video_id": [v.video_id for v in videos] + bad.column("video_id").to_pylist(),
               "split": [v.split for v in videos] + bad.column("split").to_pylist(),
               "labels": [[x for x in v.labels if x in self.labels] for v in videos] + [[]] * bad.num_rows,
               "scores": [[] if i in errors else s for i, s in enumerate(scores)] + [[]] * bad.num_rows}
        paths = table.filter(good).column("path").to_pylist()
        out["path"] = paths + bad.column("path").to_pylist()
        out["stage"] = ["score" if i in errors else "" for i in range(len(videos))] + bad.column("stage").to_pylist()
        out["error"] = [errors[i][0] if i in errors else "" for i in range(len(videos))] + \
            bad.column("error").to_pylist()
        out["message"] = [errors[i][1] if i in errors else "" for i in range(len(videos))] + \
            bad.column("message").to_pylist()
        return pa.table(out, schema=_SCORED_ROWS)

    def score_sorted(self, videos: list) -> tuple[list[list[float]], dict[int, tuple[str, str]]]:
        """Scores of `videos` in batches of similar length; a batch that fails is retried a video at a time, so
        that only the failing video gets an (error, message)."""
        scores: list[list[float]] = [[] for _ in videos]
        errors: dict[int, tuple[str, str]] = {}
        order = sorted(range(len(videos)), key=lambda i: videos[i].num_steps)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            try:
                for i, row in zip(chunk, self.scores([videos[i] for i in chunk]), strict=True):
                    scores[i] = row.tolist()
            except Exception:  # noqa: BLE001 - errors are data: find the video that fails, score the others
                for i in chunk:
                    try:
                        scores[i] = self.scores([videos[i]])[0].tolist()
                    except Exception as e:  # noqa: BLE001
                        errors[i] = (type(e).__name__, " ".join(str(e).split()) or type(e).__name__)
        return scores, errors

    def scores(self, videos: list) -> np.ndarray:
        """(N, C) probabilities: asrn.train.predict_scores' collate and model call, on this actor's device."""
        with torch.no_grad():
            batch = collate(videos, self.task).to(self.device)
            out = self.model(**batch.inputs())
            scores = torch.sigmoid(out.logits.float()).cpu().numpy()  # (N, C)
        return check_finite_scores(scores, f"model on {', '.join(v.video_id for v in videos)}")


_SCORED_ROWS = pa.schema([("video_id", pa.string()), ("split", pa.string()), ("labels", pa.list_(pa.string())),
                          ("scores", pa.list_(pa.float32())), *[(name, pa.string()) for name in ERROR_FIELDS]])


_SCORES = pa.schema(list(_SCORED_ROWS)[:4])  # DIR/scored part files: video_id, split, labels, scores


def _score_stage(ds, config: ScoreConfig, scorer: Scorer, cpus: float, gpus: float = 1.0):
    """The scoring actors after `ds`, `cpus` each; `gpus` per actor with --use-gpu."""
    return ds.map_batches(
        ScoreVideos, fn_constructor_kwargs={"scorer": scorer, "device": "cuda" if config.use_gpu else "cpu",
                                            "batch_size": config.batch_size},
        batch_size=BLOCK_VIDEOS, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=config.num_workers),
        num_cpus=cpus, memory=SCORER_MEMORY, **({"num_gpus": gpus} if config.use_gpu else {}))


def fit_scorers(requested: int, cluster: dict, can_grow: bool) -> tuple[int, str]:
    """How many scoring actors (SCORER_CPUS each) fit beside a store read task (READ_CPUS), and a note when not
    all do.

    Actors holding every CPU leave the read tasks unscheduled and the job waits forever. On a cluster that
    `can_grow` (joined by address: an autoscaler or `ray start --address` may add nodes) the request stands with a
    warning; on a local Ray it is lowered to what fits, or refused when not even one actor fits.
    """
    cpus = cluster.get("CPU", 0.0)
    fit = int((cpus - READ_CPUS) / SCORER_CPUS + 1e-9)
    if requested <= fit:
        return requested, ""
    message = (f"{requested} scoring actor(s) x {SCORER_CPUS:g} CPU and a read task need "
               f"{requested * SCORER_CPUS + READ_CPUS:g} CPUs, the cluster has {cpus:g}")
    if can_grow:
        return requested, f"{message} now: the actors wait until nodes join"
    if fit < 1:
        raise ScoreError(f"{message}: start Ray with more CPUs (ray start --num-cpus) or join a cluster (--address)")
    return fit, f"--num-workers {requested} lowered to {fit}: {message}"


def store_dataset(store: FeatureStore, config: ScoreConfig, scorer: Scorer, skip: set[str]):
    """The lazy Ray Dataset: the store's part files -> their rows of --split -> the scoring actors."""
    files = [{"file": str(f.absolute())} for f in store.files]
    ds = ray.data.from_items(files, override_num_blocks=len(files))
    ds = ds.map_batches(_read_part, batch_size=1, batch_format="numpy", num_cpus=READ_CPUS,
                        fn_kwargs={"splits": config.splits, "skip": frozenset(skip)})
    return _score_stage(ds, config, scorer, cpus=SCORER_CPUS)


def manifest_dataset(entries: list[ManifestEntry], config: ScoreConfig, scorer: Scorer):
    """The lazy Ray Dataset: extract's stages (asrn.extract.build_dataset) at the model's preset and fps, then the
    scoring actors."""
    from asrn.extract import ExtractConfig, build_dataset, warn_on_resources
    from asrn.predict import PredictError, feature_settings

    fake_checkpoint = {"path": scorer.source, "store_info": scorer.store_info,
                       "model_config": asdict(scorer.model_config)}
    try:
        settings = feature_settings(fake_checkpoint, config.weights_dir)
    except PredictError as e:
        raise ScoreError(str(e)) from e
    extract = ExtractConfig(manifest=config.manifest, out=config.out, preset=settings.preset, fps=settings.fps,
                            num_workers=config.num_workers, weights_dir=config.weights_dir, verbose=config.verbose,
                            gpus_per_worker=0.5 if config.use_gpu else 0.0)  # encoder and scorer share a GPU
    warn_on_resources(extract, ray.cluster_resources())
    # no CPU reserved for the scorer: its forward pass is milliseconds per video beside extraction's seconds, and a
    # reserved CPU would leave none for decoding on a small node (encoder actor + decoding task + scorer > 2 CPUs)
    return _score_stage(build_dataset(entries, extract), config, scorer, cpus=0.0, gpus=0.5)


class DrawFigures:
    """Figure actor: the model, the encoders and the detector of asrn.predict built once; one video per call."""

    def __init__(self, scorer: Scorer, weights_dir: str, out: str):
        from asrn.detect import build_detector
        from asrn.encoders import build_encoders
        from asrn.predict import feature_settings

        self.model, self.out = scorer.build(), Location(out)
        self.checkpoint = {"path": scorer.source, "store_info": scorer.store_info, "task": scorer.task,
                           "model_config": asdict(scorer.model_config), "labels": scorer.labels,
                           "thresholds": scorer.thresholds}
        settings = feature_settings(self.checkpoint, Path(weights_dir) if weights_dir else None)
        self.encoders = build_encoders(settings.preset, settings.weights_dir, warn=False)
        self.detector = build_detector(settings.weights_dir)

    def __call__(self, batch: dict) -> dict:
        from asrn.predict import predict_video, write_prediction

        errors = []
        for video_id, path, boxes in zip(batch["video_id"], batch["path"], batch["boxes"], strict=True):
            try:
                prediction = predict_video(str(path), self.model, self.checkpoint, self.encoders, self.detector,
                                           str(boxes) or None)
                write_prediction(prediction, self.out / FIGURES_DIR / str(video_id))
                errors.append("")
            except Exception as e:  # noqa: BLE001 - a figure that fails is named, the scores stand
                errors.append(f"{type(e).__name__}: {' '.join(str(e).split())}")
        return {"video_id": batch["video_id"], "error": np.asarray(errors, dtype=object)}


def draw_figures(entries: list[ManifestEntry], config: ScoreConfig, scorer: Scorer) -> int:
    """attention figures of `entries` (module docstring); return how many were drawn."""
    items = [{"video_id": e.video_id, "path": e.path, "boxes": e.boxes or ""} for e in entries]
    if not items:
        return 0
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        DrawFigures, fn_constructor_kwargs={"scorer": scorer, "weights_dir": str(config.weights_dir or ""),
                                            "out": str(config.out)},
        batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=config.num_workers),
        num_cpus=1, memory=SCORER_MEMORY)
    drawn = 0
    for row in ds.iter_rows():
        if row["error"]:
            print(f"score: warning: no figure for {row['video_id']}: {row['error']}", file=sys.stderr, flush=True)
        drawn += not row["error"]
    print(f"score: {drawn} figure(s) in {config.out / FIGURES_DIR}", file=sys.stderr, flush=True)
    return drawn


# ---------------------------------------------------------------- the driver: outputs


def prediction_table(rows: pa.Table, labels: list[str], thresholds: list[float]) -> pa.Table:
    """predictions.parquet from scored rows (video_id, split, labels, scores): one float32 column per class, named
    as training's predictions.parquet, then `predicted:<class>` at `thresholds`; sorted by split, then video_id."""
    rows = rows.sort_by([("split", "ascending"), ("video_id", "ascending")])
    scores = np.asarray(rows.column("scores").to_pylist(), np.float32).reshape(rows.num_rows, len(labels))  # (N, C)
    known = [list(x) if x else None for x in rows.column("labels").to_pylist()]
    columns = {"video_id": rows.column("video_id"), "split": rows.column("split"),
               "labels": pa.array(known, pa.list_(pa.string()))}
    columns.update({name: pa.array(scores[:, j], pa.float32()) for j, name in enumerate(labels)})
    columns.update({PREDICTED_PREFIX + name: pa.array(scores[:, j] >= t, pa.bool_())
                    for j, (name, t) in enumerate(zip(labels, thresholds, strict=True))})
    return pa.table(columns)


def summary(predictions: pa.Table, task: str, labels: list[str], thresholds: list[float], failed: int,
            counts: dict) -> dict:
    """summary.json: counts, thresholds, and per split with labels the paper's metrics + mAP (at 0.5 and at the
    thresholds) over its videos whose labels are known."""
    splits = predictions.column("split").to_pylist()
    known = predictions.column("labels").to_pylist()
    scores = np.stack([predictions.column(name).to_numpy() for name in labels], axis=1) if labels else None
    metrics = {}
    for split in sorted(set(splits)):
        rows = [i for i, (s, y) in enumerate(zip(splits, known, strict=True)) if s == split and y]
        if rows:
            targets = np.stack([encode(known[i], task) for i in rows])  # (n, C)
            metrics[split] = {"at_0.5": compute_metrics(targets, scores[rows], labels),
                              "at_thresholds": compute_metrics(targets, scores[rows], labels,
                                                               thresholds=np.asarray(thresholds))}
    return {"videos": predictions.num_rows, "failed": failed, **counts,
            "per_split": {s: splits.count(s) for s in sorted(set(splits))},
            "with_labels": sum(1 for y in known if y), "task": task,
            "thresholds": dict(zip(labels, thresholds, strict=True)), "metrics": metrics}


def _write_parquet(table: pa.Table, target: Location) -> Location:
    with atomic_output(target) as temporary:
        pq.write_table(table, temporary)
    return target


def _scored_files(out: Location) -> list[Location]:
    return [f for f in (out / SCORED_DIR).files(".parquet") if f.name.startswith("part-")]


def _error_files(out: Location) -> list[Location]:
    return [f for f in (out / ERRORS_DIR).files(".parquet") if f.name.startswith("part-")]


def scored_ids(out: Location) -> set[str]:
    """Videos already scored in `out` (its scored/ part files): a re-run skips them."""
    return {i for f in _scored_files(out) for i in read_part(f, columns=["video_id"]).column("video_id").to_pylist()}


class _ScoreWriter:
    """Driver side: scored rows -> DIR/scored part files every `videos_per_part`, errors -> DIR/errors/; progress
    lines as extract prints them."""

    def __init__(self, config: ScoreConfig, total: int):
        self.config, self.total, self.run_id = config, total, time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        self.rows: list[pa.Table] = []
        self.errors: list[dict] = []
        self.seen: set[str] = set()  # returned by the pipeline
        self.scored: set[str] = set()  # of those, scored
        self.succeeded = self.failed = self.parts = self.last_report = 0
        self.start = time.monotonic()
        (config.out / SCORED_DIR).mkdir(parents=True, exist_ok=True)

    def add(self, table: pa.Table) -> None:
        self.seen.update(table.column("video_id").to_pylist())
        ok = pc.equal(table.column("error"), "")
        for row in table.filter(pc.invert(ok)).select(["video_id", *ERROR_FIELDS]).to_pylist():
            self.errors.append(row)
            print(f"score: {row['video_id']} failed at {row['stage']}: {row['error']}: {row['message']}",
                  file=sys.stderr, flush=True)
        good = table.filter(ok).select(["video_id", "split", "labels", "scores"])
        self.scored.update(good.column("video_id").to_pylist())
        self.rows.append(good)
        self.succeeded += good.num_rows
        self.failed += table.num_rows - good.num_rows
        self.flush(full_only=True)
        self.report()

    def add_lost(self, entries: list[dict]) -> None:
        """Videos the pipeline never returned (Ray Data dropped their blocks after their workers died)."""
        for e in entries:
            self.errors.append({"video_id": e["video_id"], "path": e["path"], "stage": "prepare|encode|score",
                                "error": "WorkerCrashedError", "message": "its Ray worker process died on each "
                                                                         "attempt; the video was given up"})
        self.failed += len(entries)

    def flush(self, full_only: bool = False) -> None:
        rows = pa.concat_tables(self.rows) if self.rows else None
        k = self.config.videos_per_part
        while rows is not None and rows.num_rows and (rows.num_rows >= k or not full_only):
            _write_parquet(rows.slice(0, k), self.config.out / SCORED_DIR / f"part-{self.run_id}-{self.parts:05d}"
                                                                             f".parquet")
            self.parts, rows = self.parts + 1, rows.slice(k)
        self.rows = [rows] if rows is not None and rows.num_rows else []
        if self.errors and not full_only:
            write_errors(self.config.out, self.errors, name=f"part-{self.run_id}")
            self.errors = []

    def report(self, final: bool = False) -> None:
        done = self.succeeded + self.failed
        if (final and done != self.last_report) or done - self.last_report >= max(1, min(10, self.total // 10)):
            rate = done / max(time.monotonic() - self.start, 1e-9)
            print(f"score: {done}/{self.total} videos ({self.failed} failed), {rate:.2f} videos/s",
                  file=sys.stderr, flush=True)
            self.last_report = done


def _keep_latest_errors(out: Location, scored: set[str]) -> int:
    """Rewrite DIR/errors/ as one record per video not scored (its latest); return how many there are."""
    files = _error_files(out)
    records = {r["video_id"]: r for f in sorted(files, key=lambda f: f.name) for r in read_part(f).to_pylist()}
    keep = [r for video_id, r in records.items() if video_id not in scored]
    if keep:
        write_errors(out, keep, name="part-latest-" + uuid.uuid4().hex[:6])
    for f in files:
        f.delete()
    return len(keep)


# ---------------------------------------------------------------- the job


def _check_run_record(config: ScoreConfig, scorer: Scorer) -> None:
    """An --out holds the scores of one model: a re-run with another model or thresholds is refused."""
    record = config.out / RUN_FILE
    mine = {"model": scorer.source, "task": scorer.task, "thresholds": scorer.thresholds}
    if record.is_file():
        theirs = json.loads(record.read_text())
        if {k: theirs.get(k) for k in mine} != mine:
            raise ScoreError(f"{record}: {config.out} holds scores of {theirs.get('model')} (thresholds "
                             f"{theirs.get('thresholds')}), not of {scorer.source}: choose another --out")
    else:
        write_json(record, mine)


def _items(config: ScoreConfig) -> tuple[list, list[dict], FeatureStore | None]:
    """(manifest entries or [], {video_id, path} of every video to score, the store or None)."""
    if config.manifest is not None:
        entries = read_manifest(config.manifest, labels_required=False)
        return entries, [{"video_id": e.video_id, "path": e.path} for e in entries], None
    store = FeatureStore(config.features)
    counts = store.check()
    ids = [i for s in config.splits for i in store.split_ids(s)] if sum(counts.values()) else []
    return [], [{"video_id": i, "path": str(store.location)} for i in ids], store


def score(config: ScoreConfig) -> dict:
    """Score the collection (module docstring); return summary.json's content."""
    start = time.monotonic()
    scorer = load_scorer(config)
    entries, wanted, store = _items(config)
    config.out.mkdir(parents=True, exist_ok=True)
    _check_run_record(config, scorer)
    done = scored_ids(config.out)
    todo = [w for w in wanted if w["video_id"] not in done]
    print(f"score: {len(todo)} videos to do, {len(wanted) - len(todo)} already scored in {config.out} (model "
          f"{scorer.source}, {config.num_workers} actor(s), {'a GPU' if config.use_gpu else 'no GPU'} each)",
          file=sys.stderr, flush=True)
    writer = _ScoreWriter(config, len(todo))
    if todo:
        with ray_session(config.address, config.verbose):
            if store is not None:
                workers, note = fit_scorers(config.num_workers, ray.cluster_resources(),
                                            can_grow=cluster_address(config.address) is not None)
                if note:
                    print(f"score: warning: {note}", file=sys.stderr, flush=True)
                config = replace(config, num_workers=workers)
            ds = (manifest_dataset([e for e in entries if e.video_id not in done], config, scorer)
                  if store is None else store_dataset(store, config, scorer, done))
            ds.context.max_errored_blocks = -1
            try:
                with contextlib.nullcontext() if config.verbose else stderr_without():  # Ray's C++ line per actor
                    for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                        writer.add(table)
                writer.add_lost([w for w in todo if w["video_id"] not in writer.seen])
            finally:
                writer.flush()
            if config.figures:
                draw_figures([e for e in entries if e.video_id in writer.scored], config, scorer)
        writer.report(final=True)
    return _finish(config, scorer, writer, len(wanted) - len(todo), time.monotonic() - start)


def _finish(config: ScoreConfig, scorer: Scorer, writer: _ScoreWriter, skipped: int, seconds: float) -> dict:
    """predictions.parquet from every scored part, the errors table's latest records, summary.json."""
    files = _scored_files(config.out)
    rows = pa.concat_tables([read_part(f) for f in files]) if files else _SCORES.empty_table()
    predictions = prediction_table(rows, scorer.labels, scorer.thresholds)
    _write_parquet(predictions, config.out / "predictions.parquet")
    failed = _keep_latest_errors(config.out, set(predictions.column("video_id").to_pylist()))
    result = summary(predictions, scorer.task, scorer.labels, scorer.thresholds, failed,
                     {"scored_now": writer.succeeded, "failed_now": writer.failed, "skipped": skipped})
    result.update(model=scorer.source, seconds=round(seconds, 3))
    write_json(config.out / "summary.json", result)
    print(f"score: {writer.succeeded} scored, {writer.failed} failed, {skipped} skipped (already scored) in "
          f"{seconds:.1f} s; outputs in {config.out}: predictions.parquet, summary.json"
          + (f", errors table {config.out / ERRORS_DIR}" if failed else ""), flush=True)
    for split, m in result["metrics"].items():
        print(f"score: {split}: mAP {m['at_0.5']['map']:.4f}  F1 macro {m['at_0.5']['f1_macro']:.4f}  at the "
              f"thresholds: F1 macro {m['at_thresholds']['f1_macro']:.4f}", flush=True)
    return result
