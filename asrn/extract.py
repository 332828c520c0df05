"""`asrn extract`: videos -> per-step features of the four modalities -> the feature store, as a Ray Data job.

Pipeline, one row per video throughout:
  from_items(manifest rows, one block per video)
    -> map(_prepare_row, **prepare_resources)     CPU tasks (1 CPU, memory declared; a GPU share for Faster R-CNN
                                                    on a GPU run with one spare): decode at --fps (decord,
                                                    or PyAV where decord does not import: the same frames;
                                                    asrn.video), person/face boxes
                                                    (manifest boxes, else build_detector's offline chain), crops
                                                    and resizes to the encoders' input sizes, DIS flow stacks
    -> map_batches(EncodeVideos, batch_size=--batch-size, compute=ActorPoolStrategy(size=--num-workers),
                   num_gpus=--gpus-per-worker if > 0, else num_cpus=cpus_per_worker)
                                                    actors: build the encoders once, stack tensors, run the nets
    -> driver: iter_batches -> store.write_table (the actors' Arrow rows as they came) / store.write_errors
                                                    every `videos_per_part` videos
Separate operators let Ray Data's streaming executor overlap decoding with encoding and spread both over a
cluster's nodes. Prepared videos travel between the stages as one pickled `PreparedVideo` per row (T varies per
video, and a failed video has none), encoded ones as rows of the store's Arrow schema.

--encode-kept-steps: the actors encode only the steps training's window-3 sequence former keeps
(asrn.sequence.select_steps, which depends only on the presence masks known after detection), a third of the
encoder work; the other steps keep their rows, masks and timestamps with zero features. features.json records it
(extra.encoded_steps = "window-3 kept"); training refuses such a store for another window
(store.check_encoded_window) and its input statistics count the encoded steps only.

Errors are data: a per-video exception in the CPU stage (decode/detect/flow) or in the actor (encode) becomes a
row with `stage`, `error`, `message` that flows to the driver, which appends it to the errors table; one bad
video never fails the dataset. A video whose task kills its worker process (segfault, OOM kill) is retried
`max_retries` times (Ray's default for Ray Data tasks is forever); then Ray Data drops its block
(`max_errored_blocks=-1`) and the driver records the video as missing from the output: stage `prepare` (the CPU
stage; a dead process cannot say whether decode, detect or flow) or `encode`, error the Ray exception (e.g.
WorkerCrashedError).

Fault injection, for tests only: ASRN_FAULT_CRASH_VIDEO=<video_id> in the driver's environment (forwarded to the
workers) makes the CPU-stage task of that video call os._exit(1) on every attempt.

One writer per store: `store.writer_lock` holds DIR/.lock (pid, host) for the whole run; a second extract on the
same --out is refused naming the holder; a lock left by a dead process on this host is taken over. On an object
store the lock is advisory (checked, then written: two drivers started at the same moment could both pass).

Locations: --manifest and --out may be local paths or URIs (s3://, gs://, file://; asrn.locations). The manifest's
relative paths are resolved beside it (a URI beside a URI); each Ray task opens its own video and boxes file by
URI (a video is downloaded to a local temporary file for the decoder, deleted afterwards), so no disk is shared
with the driver. On an object store every file is uploaded once under its final name (a part file appears whole
or not at all), so a killed run leaves no half files and a rerun resumes as on a local disk. `--overwrite` needs
a local --out (it swaps a staged store in by renames, which an object store lacks).

Resume: videos already in the store's part files (store.done_video_ids) are skipped; everything else in the
manifest, including videos that failed before, is (re)tried. The errors table keeps the latest attempt of each
video: at the start of a run records of videos now in the part files are dropped, at the end the records of
earlier runs for videos retried in this run. A stored video whose split or labels changed in the manifest is
updated in place (its part file rewritten, features kept) and named on stderr.

`--overwrite` builds the new store in DIR/_staging and swaps it in only when the run completes (a failed or
killed run leaves the old store as it was); it replaces only the files the store owns (part-*.parquet, errors/,
features.json) and refuses a folder holding other Parquet files. A store made with another preset, fps or dims,
or with other weights, is refused unless --overwrite.

The per-video work (decode, detect, crop, flow, encode) lives in `asrn.features`, without Ray; this module only
wires it into Ray Data and writes the store.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import pickle
import re
import shutil
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import torch

from asrn.console import stderr_without
from asrn.detect import (
    DETECT_CHUNK_FRAMES,
    FasterRCNNDetector,
    detection_memory,
    faster_rcnn_weights,
    load_faster_rcnn,
)
from asrn.encoders import PRESETS, build_encoders, encoder_specs, missing_weights
from asrn.errors import AsrnError
from asrn.features import (
    PreparedVideo,
    VideoSettings,
    VideoStageError,
    encode_batch,
    encode_prepared,
    prepare_video,
    to_video_features,
)
from asrn.locations import Location
from asrn.manifest import ManifestEntry, read_manifest
from asrn.ray_session import ray_session
from asrn.sequence import WINDOW
from asrn.store import (
    ALL_STEPS,
    ENCODED_STEPS_KEY,
    ERRORS_DIR,
    INFO_FILE,
    INPUT_STATS_KEY,
    MODALITIES,
    PART_PREFIX,
    FeatureStoreError,
    StoreInfo,
    VideoFeatures,
    commit_staging,
    data_files,
    done_video_ids,
    foreign_data_files,
    input_stats_record,
    read_info,
    read_part,
    recover_staging,
    row_schema,
    staging_dir,
    stored_splits_labels,
    update_splits_labels,
    videos_to_table,
    write_errors,
    write_info,
    write_table,
    writer_lock,
)
from asrn.video import DECODER_ENV, choose_decoder
from asrn.weights import cache_dir

STORE_DTYPE = "float16"
ENCODER_MEMORY = {"lite": 1 << 30, "paper": 3 << 30}  # bytes of RAM reserved per encoder actor (nets + batches)
# bytes of RAM reserved per prepare task before detection (frames, crops, flow stacks); never equal to an
# ENCODER_MEMORY, or Ray Data would fuse the two stages (see build_dataset)
PREPARE_MEMORY = 3 << 29
DETECT_GPUS = 0.25  # GPU share of a prepare task that runs Faster R-CNN on a GPU run (4 tasks per spare GPU)
ERROR_COLUMNS = ("path", "stage", "error", "message")  # with video_id: the errors table (store.ERRORS_SCHEMA)
FAULT_CRASH_VIDEO = "ASRN_FAULT_CRASH_VIDEO"  # tests only: the video whose CPU-stage task kills its worker
FORWARDED_ENV = ("TORCH_HOME", DECODER_ENV, FAULT_CRASH_VIDEO)  # driver variables the workers see too
STAGE_OF_OPERATOR = {"Map(_prepare_row)": "prepare", "MapBatches(EncodeVideos)": "encode"}


class ExtractError(AsrnError):
    """An extraction that cannot start or go on (an inconsistent --out, an empty pipeline); names the folder."""



@dataclass
class ExtractConfig:
    """`asrn extract` flags (same names); the last three fields have no flag."""

    manifest: Location  # a local file or a URI
    out: Location  # a local folder or a URI
    preset: str = "lite"
    fps: float = 2.0
    num_workers: int = 1  # encoder actors
    gpus_per_worker: float = 0.0  # per encoder actor; 0: actors run on the CPU
    batch_size: int = 4  # videos per map_batches batch
    weights_dir: Path | None = None
    overwrite: bool = False
    allow_random_init: bool = False  # --preset paper refuses encoders without pretrained weights unless this is set
    encode_kept_steps: bool = False  # encode only the steps training's window-3 sequence former keeps (a third)
    verbose: bool = False  # Ray's own console lines (asrn.console)
    address: str | None = None
    cpus_per_worker: float = 1.0  # CPUs reserved per encoder actor (its torch threads on a CPU)
    videos_per_part: int = 16  # videos per Parquet part file the driver writes
    max_retries: int = 2  # retries of a video whose worker process dies; then it goes to the errors table

    def __post_init__(self) -> None:
        self.manifest, self.out = Location(self.manifest), Location(self.out)
        self.weights_dir = Path(self.weights_dir) if self.weights_dir is not None else None
        checks = [  # (flag, value, holds, what it must be)
            ("--preset", repr(self.preset), self.preset in PRESETS, f"one of {', '.join(PRESETS)}"),
            ("--fps", self.fps, self.fps > 0, "> 0"),
            ("--num-workers", self.num_workers, self.num_workers >= 1, ">= 1"),
            ("--gpus-per-worker", self.gpus_per_worker, self.gpus_per_worker >= 0, ">= 0"),
            ("--batch-size", self.batch_size, self.batch_size >= 1, ">= 1"),
            ("cpus_per_worker", self.cpus_per_worker, self.cpus_per_worker > 0, "> 0"),
            ("videos_per_part", self.videos_per_part, self.videos_per_part >= 1, ">= 1"),
            ("max_retries", self.max_retries, self.max_retries >= 0, ">= 0"),
        ]
        problems = [f"{flag} must be {rule}, got {value}" for flag, value, holds, rule in checks if not holds]
        if self.weights_dir is not None and not self.weights_dir.is_dir():
            problems.append(f"--weights-dir {self.weights_dir} is not a folder")
        if problems:
            raise ExtractError("; ".join(problems))

    @property
    def settings(self) -> VideoSettings:
        return VideoSettings(self.preset, self.fps, self.weights_dir)

    @property
    def encoded_window(self) -> int | None:
        """The sequence-former window whose kept steps alone are encoded; None: every step."""
        return WINDOW if self.encode_kept_steps else None

    @property
    def encoded_steps(self) -> str:
        """What features.json records under extra.encoded_steps (store.encoded_window reads it back)."""
        return f"window-{WINDOW} kept" if self.encode_kept_steps else ALL_STEPS

    def to_dict(self) -> dict:
        return {k: str(v) if isinstance(v, Path | Location) else v for k, v in asdict(self).items()}


@dataclass
class ExtractSummary:
    """What one `asrn extract` run did."""

    out: Location
    total: int  # videos in the manifest
    succeeded: int  # written to the store by this run
    failed: int  # added to the errors table by this run
    skipped: int  # already in the store before this run
    seconds: float
    part_files: list[Location] = field(default_factory=list)  # written by this run
    errors_path: Location | None = None  # the errors table folder, when it holds records
    info_path: Location | None = None

    @property
    def processed(self) -> int:
        return self.succeeded + self.failed


# ---------------------------------------------------------------- the Ray Data stages


def _error_fields(e: BaseException, stage: str) -> dict[str, str]:
    if isinstance(e, VideoStageError):
        return {"stage": e.stage, "error": e.error, "message": str(e)}
    return {"stage": stage, "error": type(e).__name__, "message": str(e).strip() or type(e).__name__}


@functools.lru_cache(maxsize=2)
def _gpu_detector(weights_dir: Path | None) -> FasterRCNNDetector | None:
    """Faster R-CNN on this task's GPU share, built once per worker process (None: no weights on this node)."""
    return load_faster_rcnn(weights_dir, device="cuda")


def _prepare_row(row: dict, settings: VideoSettings, detect_on_gpu: bool = False) -> dict:
    """CPU stage (one Ray task per video): manifest row -> row with the pickled PreparedVideo, or an error.
    With `detect_on_gpu` the task holds a GPU share (prepare_resources) and Faster R-CNN runs there."""
    out = {k: row[k] for k in ("video_id", "path", "split", "labels")}
    if os.environ.get(FAULT_CRASH_VIDEO) == row["video_id"]:
        os._exit(1)  # fault injection (tests): a worker that dies as on a segfault
    try:
        detector = _gpu_detector(settings.weights_dir) if detect_on_gpu and not row["boxes"] else None
        prepared = prepare_video(row["path"], row["boxes"] or None, settings, detector)
    except Exception as e:  # noqa: BLE001 - errors are data: one bad video must not fail the dataset
        return {**out, "prepared": b"", "warnings": "", **_error_fields(e, "decode")}
    return {**out, "prepared": pickle.dumps(prepared, protocol=5), "warnings": "\n".join(prepared.warnings),
            "stage": "", "error": "", "message": ""}


class EncodeVideos:
    """Encoder actor: builds the preset's four encoders once, then encodes batches of prepared videos.

    Output: one row per input video in the store's Arrow schema plus path/stage/error/message (empty when the
    video succeeded; T = 0 otherwise) and the decoder, detector, encoder names and weights provenance for
    features.json.
    """

    def __init__(self, preset: str, weights_dir: str | None, device: str, threads: int, window: int | None = None):
        self.window = window  # encode only the steps this sequence-former window keeps (None: all)
        if device == "cpu":
            torch.set_num_threads(threads)
        # the driver has named the random-init encoders once; each actor saying it again is noise
        self.encoders = build_encoders(preset, Path(weights_dir) if weights_dir else None, device, warn=False)
        self.names = json.dumps({m: e.name for m, e in self.encoders.items()}, sort_keys=True)
        self.weights = json.dumps({m: e.weights for m, e in self.encoders.items()}, sort_keys=True)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        num = len(batch["video_id"])
        errors = [{k: str(batch[k][i]) for k in ("stage", "error", "message")} for i in range(num)]
        prepared: dict[int, PreparedVideo] = {
            i: pickle.loads(batch["prepared"][i]) for i in range(num) if not errors[i]["error"]}
        features: dict[int, dict[str, np.ndarray]] = {}
        try:
            encoded = encode_batch(list(prepared.values()), self.encoders, self.window)
            features = dict(zip(prepared, encoded, strict=True))
        except Exception:  # noqa: BLE001 - find the video that fails, encode the others
            for i, video in prepared.items():
                try:
                    features[i] = encode_prepared(video, self.encoders, self.window)
                except Exception as e:  # noqa: BLE001
                    errors[i] = _error_fields(e, "encode")
        videos, decoders, detectors, detection = [], [], [], []
        for i in range(num):
            video = prepared.get(i)
            labels = [x for x in str(batch["labels"][i]).split("|") if x]
            if video is not None and i in features:
                videos.append(to_video_features(video, features[i], str(batch["video_id"][i]),
                                                str(batch["split"][i]), labels))
                decoders.append(video.decoder)
                detectors.append(video.detector)
                detection.append(json.dumps(video.detection, sort_keys=True))
            else:  # zero steps, dims kept so that the batch is one table
                empty = {m: np.zeros((0, e.dim), np.float32) for m, e in self.encoders.items()}
                videos.append(VideoFeatures(str(batch["video_id"][i]), str(batch["split"][i]), labels,
                                            np.zeros(0, np.float32), empty, np.zeros(0, bool), np.zeros(0, bool)))
                decoders.append("")
                detectors.append("")
                detection.append("")
        table = videos_to_table(videos, STORE_DTYPE)
        extra = {"path": [str(p) for p in batch["path"]],
                 "stage": [e["stage"] if e["error"] else "" for e in errors],
                 "error": [e["error"] for e in errors],
                 "message": [e["message"] if e["error"] else "" for e in errors],
                 "warnings": [str(w) for w in batch["warnings"]],
                 "decoder": decoders, "detector": detectors, "detection": detection,
                 "encoders": [self.names] * num, "weights": [self.weights] * num}
        for name, values in extra.items():
            table = table.append_column(name, pa.array(values, pa.string()))
        return table


def build_dataset(entries: Sequence[ManifestEntry], config: ExtractConfig):
    """The lazy Ray Dataset of the pipeline: manifest rows -> CPU map -> encoder actor pool."""
    items = [{"video_id": e.video_id, "path": e.path, "split": e.split, "labels": "|".join(e.labels),
              "boxes": e.boxes or ""} for e in entries]
    use_gpu = config.gpus_per_worker > 0
    # Forward an explicitly set TORCH_HOME: where the driver was told torchvision's cache is, the workers look too.
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    runtime_env = {"env_vars": env} if env else None
    ds = ray.data.from_items(items, override_num_blocks=len(items))  # one block per video: one task per video
    prepare = prepare_resources(config, ray.cluster_resources().get("GPU", 0.0))
    ds = ds.map(_prepare_row, fn_kwargs={"settings": config.settings, "detect_on_gpu": "num_gpus" in prepare},
                runtime_env=runtime_env, max_retries=config.max_retries,  # retries after the worker died; exceptions
                **prepare)  # are caught in the task
    resources = {"num_gpus": config.gpus_per_worker} if use_gpu else {}
    # The actors' memory reservation also keeps the stages two operators: Ray Data fuses a task map into a
    # following actor map whose remote args are equal, and decoding would then run inside the encoder actors.
    ds = ds.map_batches(
        EncodeVideos,
        fn_constructor_kwargs={"preset": config.preset, "weights_dir": str(config.weights_dir or ""),
                               "device": "cuda" if use_gpu else "cpu",
                               "threads": max(1, int(config.cpus_per_worker)), "window": config.encoded_window},
        batch_size=config.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=config.num_workers),
        num_cpus=config.cpus_per_worker,
        memory=ENCODER_MEMORY.get(config.preset, 2 << 30),
        runtime_env=runtime_env,
        max_task_retries=config.max_retries,  # a batch whose actor dies (restarted each time) is retried so often
        **resources,
    )
    if not config.verbose and hasattr(ds.context, "issue_detectors_config"):  # Ray 2.60's hints, after the fact
        ds.context.issue_detectors_config.detectors = []  # (e.g. "used up to 828 MiB of its 1 GiB"), off the console
    ds.context.max_errored_blocks = -1  # a block whose retries ran out is dropped; the driver records its videos
    return ds


def prepare_resources(config: ExtractConfig, cluster_gpus: float) -> dict:
    """Ray resources of one prepare task, declared so that a node is never oversubscribed: a CPU, the memory that
    decoding (PREPARE_MEMORY) and chunked Faster R-CNN detection (detect.detection_memory) need whatever the video's
    length, and, on a GPU run whose encoder actors leave DETECT_GPUS of a GPU free, that share for the detector
    (its memory then lives on the GPU). Detection stays in the prepare task because the crops the encoders take
    depend on its boxes; moving it into the encoder actors would move cropping (and its CPU work) there too."""
    detector = faster_rcnn_weights(config.weights_dir)
    spare_gpus = cluster_gpus - config.num_workers * config.gpus_per_worker
    if detector is not None and config.gpus_per_worker > 0 and spare_gpus >= DETECT_GPUS:
        return {"num_cpus": 1, "num_gpus": DETECT_GPUS, "memory": PREPARE_MEMORY}
    detection = detection_memory(DETECT_CHUNK_FRAMES["cpu"]) if detector is not None else 0
    return {"num_cpus": 1, "memory": PREPARE_MEMORY + detection}


# ---------------------------------------------------------------- the job


def expected_dims(preset: str, weights_dir: Path | None = None) -> dict[str, int]:
    specs = encoder_specs(preset, weights_dir)  # face: dlib's 128, or DeepID's 260 (deepid.pth, or no dlib)
    return {m: specs[m].dim for m in MODALITIES}


def _check_existing_store(config: ExtractConfig) -> StoreInfo | None:
    """The store already in --out, refused when it was made with another preset, fps or dims."""
    out = config.out
    if not (out / INFO_FILE).is_file():
        if out.is_dir() and (data_files(out) or foreign_data_files(out)):
            foreign = foreign_data_files(out)
            hint = (f"move {', '.join(p.name for p in foreign[:3])}{' ...' if len(foreign) > 3 else ''} away, or "
                    "choose another --out" if foreign else "use --overwrite to replace it, or another --out")
            raise ExtractError(f"{out}: holds Parquet files but no {INFO_FILE}; not a feature store of "
                               f"`asrn extract` ({hint})")
        return None
    try:
        info = read_info(out)
    except FeatureStoreError as e:
        raise ExtractError(f"{e} (use --overwrite to replace the store)") from e
    wanted = {"preset": config.preset, "fps": config.fps, "dims": expected_dims(config.preset, config.weights_dir),
              ENCODED_STEPS_KEY: config.encoded_steps}
    have = {"preset": info.preset, "fps": info.fps, "dims": info.dims,
            ENCODED_STEPS_KEY: info.extra.get(ENCODED_STEPS_KEY, ALL_STEPS)}
    differ = [k for k in wanted if (abs(have[k] - wanted[k]) > 1e-9 if k == "fps" else have[k] != wanted[k])]
    if differ:
        raise ExtractError(f"{out / INFO_FILE}: the store there was made with "
                           + ", ".join(f"{k}={have[k]}" for k in differ) + "; this run asks for "
                           + ", ".join(f"{k}={wanted[k]}" for k in differ)
                           + " (use --overwrite to redo it, or another --out)")
    return info


def _check_overwritable(out: Location) -> None:
    """--overwrite replaces only the store's own files; Parquet files it did not write would stay and be read as
    data, so a folder holding some is refused, naming them."""
    foreign = foreign_data_files(out)
    if foreign:
        names = ", ".join(p.name for p in foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise ExtractError(f"{out}: holds Parquet files that `asrn extract` did not write ({names}); --overwrite "
                           f"replaces only {PART_PREFIX}*.parquet, {ERRORS_DIR}/ and {INFO_FILE}: move them away, "
                           f"or choose another --out")


def _remove_temporaries(out: Location) -> None:
    """Half-written files of a crashed run (store writes `.tmp-*` and `.features.json.*.tmp`, then renames).
    Called under the store's lock, so no other writer's temporaries are removed. An object store has none: its
    files are uploaded under their final names."""
    if not out.is_local:
        return
    for folder in (out.path, out.path / ERRORS_DIR):
        if folder.is_dir():
            for path in [*folder.glob(".tmp-*"), *folder.glob(f".{INFO_FILE}.*.tmp")]:
                if not path.name.endswith("-lock"):  # another writer's lock attempt, not ours to remove
                    path.unlink(missing_ok=True)


def _merge_provenance(seen: dict[str, set[str]]) -> dict[str, str]:
    return {m: " | ".join(sorted(values)) for m, values in sorted(seen.items())}


class _StoreWriter:
    """Driver side: buffers encoded videos and errors, writes part files every `videos_per_part` videos.

    The actors' Arrow rows go into the part files as they came (store.write_table): the driver never turns
    them back into numpy arrays, so their float16 features are neither widened nor narrowed again here."""

    def __init__(self, config: ExtractConfig, target: Location, existing: StoreInfo | None, run_id: str, total: int):
        self.config, self.target, self.existing, self.run_id, self.total = config, target, existing, run_id, total
        self.seen: set[str] = set()  # video ids the pipeline returned
        self.rows: list[pa.Table] = []  # good rows of the actors' tables, in the store's row schema
        self.errors: list[dict] = []
        self.parts: list[Location] = []
        self.succeeded = self.failed = 0
        self.decoders: set[str] = set(filter(None, (existing.decoder if existing else "").split(", ")))
        self.detectors: set[str] = set(filter(None, (existing.detector if existing else "").split(", ")))
        self.detection: dict[str, dict] = dict(existing.extra.get("detection", {})) if existing else {}
        self.encoders: dict[str, set[str]] = {}
        self.weights: dict[str, set[str]] = {}
        self.info_written = False
        self.start = time.monotonic()
        self.last_report = 0

    def add(self, table: pa.Table) -> None:
        self.seen.update(table.column("video_id").to_pylist())
        ok = pc.equal(table.column("error"), "")
        good = table.filter(ok)
        bad = table.filter(pc.invert(ok))
        for row in bad.select(["video_id", *ERROR_COLUMNS]).to_pylist():
            self.errors.append(row)
            print(f"extract: {row['video_id']} failed at {row['stage']}: {row['error']}: {row['message']}",
                  file=sys.stderr, flush=True)
        for video_id, text in zip(table.column("video_id").to_pylist(), table.column("warnings").to_pylist(),
                                  strict=True):
            for line in filter(None, text.split("\n")):
                print(f"extract: warning: {video_id}: {line}", file=sys.stderr, flush=True)
        if good.num_rows:
            for column, seen in (("encoders", self.encoders), ("weights", self.weights)):
                for text in set(good.column(column).to_pylist()):
                    for m, value in json.loads(text).items():
                        seen.setdefault(m, set()).add(value)
            self.decoders.update(good.column("decoder").to_pylist())
            self.detectors.update(good.column("detector").to_pylist())
            for text in set(good.column("detection").to_pylist()):
                described = json.loads(text)
                self.detection[described.get("name", "")] = described
            if not self.info_written:
                self.write_info()  # before the first part file: a reader never finds data without it
            self.rows.append(good.select(row_schema(STORE_DTYPE).names))
        self.succeeded += good.num_rows
        self.failed += bad.num_rows
        self.flush(full_only=True)
        if len(self.errors) >= self.config.videos_per_part:
            self.flush_errors()
        self.report()

    def info(self) -> StoreInfo:
        config = self.config
        weights = _merge_provenance(self.weights)
        if self.existing is not None and self.existing.weights and weights and self.existing.weights != weights:
            raise ExtractError(f"{config.out / INFO_FILE}: the store's features were computed with weights "
                               f"{self.existing.weights}; this run's encoders have {weights} (use --overwrite to "
                               f"redo the store with these weights, or give the same --weights-dir)")
        mixed = [m for m, values in self.weights.items() if len(values) > 1]
        if mixed:
            print(f"extract: warning: encoder actors disagree on weights for {', '.join(mixed)} (nodes with "
                  f"different weight caches?): {weights}", file=sys.stderr, flush=True)
        return StoreInfo(
            preset=config.preset, dims=expected_dims(config.preset, config.weights_dir), fps=float(config.fps),
            encoders=_merge_provenance(self.encoders) or (self.existing.encoders if self.existing else {}),
            weights=weights or (self.existing.weights if self.existing else {}),
            detector=", ".join(sorted(self.detectors)), decoder=", ".join(sorted(self.decoders)), dtype=STORE_DTYPE,
            extra={"extract_config": config.to_dict(), "detection": dict(sorted(self.detection.items())),
                   "shots": config.settings.shots.describe(), ENCODED_STEPS_KEY: config.encoded_steps})

    def write_info(self, final: bool = False) -> None:
        """features.json; the final one also caches the train split's input statistics (store.input_stats_record),
        read by training instead of recomputing them every run."""
        info = self.info()
        if final:
            info.extra[INPUT_STATS_KEY] = input_stats_record(self.target)
        write_info(self.target, info)
        self.info_written = True

    def flush(self, full_only: bool = False) -> None:
        """Write the buffered videos as part files of `videos_per_part` (the remainder too unless full_only)."""
        k = self.config.videos_per_part
        buffered = sum(t.num_rows for t in self.rows)
        if not buffered or (full_only and buffered < k):
            return
        rows = pa.concat_tables(self.rows)
        while rows.num_rows and (rows.num_rows >= k or not full_only):
            name = f"part-{self.run_id}-{len(self.parts):05d}"
            self.parts.append(write_table(self.target, rows.slice(0, k), name=name, dtype=STORE_DTYPE))
            rows = rows.slice(k)
        self.rows = [rows] if rows.num_rows else []

    def flush_errors(self) -> None:
        if self.errors:
            write_errors(self.target, self.errors, name=f"part-{self.run_id}-{uuid.uuid4().hex[:6]}")
            self.errors = []

    def add_lost(self, entries: Sequence[ManifestEntry], dropped: list[tuple[str, str]]) -> None:
        """Videos the pipeline never returned: Ray Data dropped their blocks after their workers died
        max_retries + 1 times. `dropped`: (operator, exception type) of each dropped block, as Ray Data logged it."""
        stages = sorted({STAGE_OF_OPERATOR.get(op, op) for op, _ in dropped}) or ["prepare"]
        causes = sorted({cause for _, cause in dropped}) or ["WorkerCrashedError"]
        for e in entries:
            self.errors.append({
                "video_id": e.video_id, "path": e.path, "stage": "|".join(stages), "error": "|".join(causes),
                "message": f"the Ray worker process died on each of {self.config.max_retries + 1} attempt(s) at "
                           f"this video (a segfault, an OOM kill or an exit in native code; see the Ray worker "
                           f"logs); the video was given up"})
            print(f"extract: {e.video_id} failed: its worker process died {self.config.max_retries + 1} time(s) "
                  f"({', '.join(causes)})", file=sys.stderr, flush=True)
        self.failed += len(entries)
        self.flush_errors()

    def report(self, final: bool = False) -> None:
        done = self.succeeded + self.failed
        every = max(1, min(10, self.total // 10))
        if final or done - self.last_report >= every:
            elapsed = time.monotonic() - self.start
            print(f"extract: {done}/{self.total} videos ({self.failed} failed), "
                  f"{done / max(elapsed, 1e-9):.2f} videos/s", file=sys.stderr, flush=True)
            self.last_report = done


def _error_files(store: Location) -> list[Location]:
    return [f for f in (store / ERRORS_DIR).files(".parquet") if not f.name.startswith((".", "_"))]


def _drop_error_records(store: Location, files: list[Location], video_ids: set[str], run_id: str) -> None:
    """Rewrite the errors table's `files` without the records of `video_ids`, one record per video (the latest);
    the new file is written before the old ones go, so a crash leaves a duplicate, never a loss."""
    if not files:
        return
    records = [r for f in files for r in read_part(f).to_pylist()]
    keep = list({r["video_id"]: r for r in records if r["video_id"] not in video_ids}.values())
    if len(keep) == len(records):
        return
    if keep:
        write_errors(store, keep, name=f"part-{run_id}-earlier")
    for f in files:
        f.delete()


class _DroppedBlocks(logging.Handler):
    """Collects (operator, exception type) of each block Ray Data drops under max_errored_blocks, from its log."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.dropped: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        found = re.search(r'task of operator "([^"]+)"\. Ignoring', record.getMessage())
        if found:
            cause = type(record.exc_info[1]).__name__ if record.exc_info and record.exc_info[1] else "unknown"
            self.dropped.append((found.group(1), cause))


def _run_pipeline(todo: list[ManifestEntry], config: ExtractConfig, writer: _StoreWriter,
                  old_error_files: list[Location], run_id: str) -> None:
    """Stream the Ray Data pipeline into the store; whatever finished is written even if the job dies half-way."""
    handler = _DroppedBlocks()
    ray_log = logging.getLogger("ray.data._internal.execution.streaming_executor_state")
    ray_log.addHandler(handler)
    try:
        with contextlib.nullcontext() if config.verbose else stderr_without():  # Ray's C++ line per encoder actor
            for table in build_dataset(todo, config).iter_batches(batch_size=None, batch_format="pyarrow"):
                writer.add(table)
        writer.add_lost([e for e in todo if e.video_id not in writer.seen], handler.dropped)
        writer.flush()
        writer.flush_errors()
        if writer.info_written or writer.existing is not None:
            writer.write_info(final=True)  # final: every detector seen, the train split's statistics
        _drop_error_records(writer.target, old_error_files, {e.video_id for e in todo}, run_id)
    finally:
        ray_log.removeHandler(handler)
        writer.flush()
        writer.flush_errors()


def _run(todo: list[ManifestEntry], config: ExtractConfig, target: Location,
         existing: StoreInfo | None) -> _StoreWriter:
    """The Ray part of a run: the pipeline's output into the store in `target`."""
    old_error_files = _error_files(target)
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
    with ray_session(config.address, config.verbose):
        warn_on_resources(config, ray.cluster_resources())
        writer = _StoreWriter(config, target, existing, run_id, len(todo))
        _run_pipeline(todo, config, writer, old_error_files, run_id)
    if writer.succeeded + writer.failed != len(todo):
        raise ExtractError(f"{config.out}: the pipeline returned {writer.succeeded + writer.failed} of {len(todo)} "
                           f"videos")
    return writer


def _update_changed_videos(out: Location, entries: Sequence[ManifestEntry]) -> None:
    """Stored videos whose split or labels the manifest now gives otherwise: update those rows, name them."""
    stored = stored_splits_labels(out)
    changes = {e.video_id: (e.split, list(e.labels)) for e in entries
               if e.video_id in stored and stored[e.video_id] != (e.split, list(e.labels))}
    if not changes:
        return
    update_splits_labels(out, changes)
    info = read_info(out)  # the train split may have changed: its cached input statistics too
    info.extra[INPUT_STATS_KEY] = input_stats_record(out)
    write_info(out, info)
    for video_id, (split, labels) in sorted(changes.items()):
        old_split, old_labels = stored[video_id]
        print(f"extract: {video_id}: split/labels changed in the manifest, updated in the store: "
              f"{old_split} {'|'.join(old_labels)} -> {split} {'|'.join(labels)}", file=sys.stderr, flush=True)


def _start_message(config: ExtractConfig, todo: int, done: int) -> None:
    print(f"extract: {todo} videos to do, {done} already in {config.out} (preset {config.preset}, "
          f"fps {config.fps}, decoder {choose_decoder()}, {config.num_workers} encoder actor(s), "
          f"{config.gpus_per_worker or 'no'} GPU each)", file=sys.stderr, flush=True)


def _overwrite(config: ExtractConfig, entries: list[ManifestEntry], start: float) -> ExtractSummary:
    """Build the whole store anew in DIR/_staging; swap it in only once the run completed."""
    out, staging = config.out, staging_dir(config.out.path)
    _check_overwritable(out)
    staging.mkdir()
    _start_message(config, len(entries), 0)
    try:
        writer = _run(entries, config, Location(staging), None)
        commit_staging(out.path)
    finally:
        if staging.is_dir():
            shutil.rmtree(staging)
    return _finish(config, len(entries), writer, 0, start, [out / p.name for p in writer.parts])


def _resume(config: ExtractConfig, entries: list[ManifestEntry], start: float) -> ExtractSummary:
    """Add the manifest's videos that the store lacks (retrying failed ones); update changed split/labels."""
    out = config.out
    existing = _check_existing_store(config)
    _update_changed_videos(out, entries)
    stored = done_video_ids(out)
    _drop_error_records(out, _error_files(out), stored, uuid.uuid4().hex[:6])  # left by a crashed run
    done = stored & {e.video_id for e in entries}
    todo = [e for e in entries if e.video_id not in done]
    if not todo:
        print(f"extract: all {len(entries)} videos of {config.manifest} are already in {out}; nothing to do "
              f"(--overwrite redoes them)", file=sys.stderr, flush=True)
        return _finish(config, len(entries), None, len(done), start, [])
    _start_message(config, len(todo), len(done))
    writer = _run(todo, config, out, existing)
    return _finish(config, len(entries), writer, len(done), start, writer.parts)


def _finish(config: ExtractConfig, total: int, writer: _StoreWriter | None, skipped: int, start: float,
            parts: list[Location]) -> ExtractSummary:
    out = config.out
    summary = ExtractSummary(out=out, total=total, succeeded=writer.succeeded if writer else 0,
                             failed=writer.failed if writer else 0, skipped=skipped,
                             seconds=time.monotonic() - start, part_files=parts,
                             info_path=out / INFO_FILE if (out / INFO_FILE).is_file() else None,
                             errors_path=_errors_path(out))
    _print_summary(summary)
    return summary


def extract_features(config: ExtractConfig) -> ExtractSummary:
    """Run the extraction job: manifest -> Ray Data pipeline -> feature store in config.out. See module docstring."""
    start = time.monotonic()
    entries = read_manifest(config.manifest)  # a malformed manifest is refused before anything is written
    choose_decoder()  # a bad $ASRN_DECODER is refused here, not once per video in the errors table
    check_weights(config)
    if config.overwrite and not config.out.is_local:
        raise ExtractError(f"--out {config.out}: --overwrite needs a local folder (it swaps the new store in by "
                           f"renames, which an object store lacks); delete the store's objects, or choose another "
                           f"--out, then run without --overwrite")
    config.out.mkdir(parents=True, exist_ok=True)
    with writer_lock(config.out):
        recovered = recover_staging(config.out)
        if recovered:
            print(f"extract: {config.out}: {recovered}", file=sys.stderr, flush=True)
        _remove_temporaries(config.out)
        if config.overwrite:
            return _overwrite(config, entries, start)
        return _resume(config, entries, start)


def check_weights(config: ExtractConfig) -> None:
    """Before any Ray work: name every encoder that would be randomly initialised (a warning), and refuse them for
    --preset paper unless --allow-random-init, when torchvision publishes their weights (a forgotten `asrn weights
    fetch`). The DeepID face net has no public weights: without the user's deepid.pth it is only warned about.

    Looks on the driver, in --weights-dir and the driver's torchvision cache ($TORCH_HOME goes to the workers)."""
    missing = missing_weights(config.preset, config.weights_dir)
    if not missing:
        return
    where = f"--weights-dir {config.weights_dir} or {cache_dir()}" if config.weights_dir else str(cache_dir())
    downloadable = [m for m in missing if m.downloadable]
    fetch = f"`asrn weights fetch --preset {config.preset}`"
    if config.preset == "paper" and downloadable and not config.allow_random_init:
        raise ExtractError(f"--preset paper: no pretrained weights for {', '.join(map(str, downloadable))} in "
                           f"{where}; random-init encoders would not compute the paper's features. Run {fetch} (or "
                           f"place the files there by hand), or pass --allow-random-init to extract anyway")
    hint = f"; {fetch} downloads the torchvision ones" if downloadable else ""
    print(f"extract: warning: random-init encoders (no weights in {where}): {', '.join(map(str, missing))}; "
          f"features.json will say random-init{hint}", file=sys.stderr, flush=True)


def warn_on_resources(config: ExtractConfig, resources: dict) -> None:
    """Say so when the encoder pool cannot start, or leaves no CPU for decoding (the job would stall, unless an
    autoscaler adds nodes)."""
    cpus, gpus = resources.get("CPU", 0), resources.get("GPU", 0)
    needed_cpus = config.num_workers * config.cpus_per_worker + 1  # the actors, and one decoding task
    if needed_cpus > cpus:
        print(f"extract: warning: {config.num_workers} encoder actor(s) x {config.cpus_per_worker} CPU and a "
              f"decoding task need {needed_cpus:g} CPUs, the cluster has {cpus:g}: lower --num-workers",
              file=sys.stderr, flush=True)
    if config.gpus_per_worker > 0 and config.num_workers * config.gpus_per_worker > gpus:
        print(f"extract: warning: {config.num_workers} encoder actor(s) x {config.gpus_per_worker} GPU need "
              f"{config.num_workers * config.gpus_per_worker:g} GPUs, the cluster has {gpus:g}",
              file=sys.stderr, flush=True)


def _errors_path(out: Location) -> Location | None:
    return out / ERRORS_DIR if _error_files(out) else None


def _print_summary(s: ExtractSummary) -> None:
    print(f"extract: {s.succeeded} succeeded, {s.failed} failed, {s.skipped} skipped (already done) of {s.total} "
          f"videos in {s.seconds:.1f} s", flush=True)
    print(f"extract: features in {s.out} ({len(s.part_files)} new part file(s)); info: {s.info_path}", flush=True)
    if s.errors_path is not None:
        print(f"extract: errors table: {s.errors_path}", flush=True)
