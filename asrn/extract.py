"""`asrn extract`: videos -> per-step features of the four modalities -> the feature store, as a Ray Data job.

Pipeline (DESIGN.md "Data flow"), one row per video throughout:
  from_items(manifest rows, one block per video)
    -> map(_prepare_row, num_cpus=1)              CPU tasks: decode with decord at --fps, person/face boxes
                                                    (manifest boxes, else build_detector's offline chain), crops
                                                    and resizes to the encoders' input sizes, DIS flow stacks
    -> map_batches(EncodeVideos, batch_size=--batch-size, compute=ActorPoolStrategy(size=--num-workers),
                   num_gpus=--gpus-per-worker if > 0, else num_cpus=cpus_per_worker)
                                                    actors: build the encoders once, stack tensors, run the nets
    -> driver: iter_batches -> store.write_videos / store.write_errors every `videos_per_part` videos
Separate operators let Ray Data's streaming executor overlap decoding with encoding and spread both over a
cluster's nodes. Prepared videos travel between the stages as one pickled `PreparedVideo` per row (T varies per
video, and a failed video has none), encoded ones as rows of the store's Arrow schema.

Errors are data: a per-video exception in the CPU stage (decode/detect/flow) or in the actor (encode) becomes a
row with `stage`, `error`, `message` that flows to the driver, which appends it to the errors table; one bad
video never fails the dataset.

Resume: videos already in the store's part files (store.done_video_ids) are skipped; everything else in the
manifest, including videos that failed before, is (re)tried. The errors table keeps the latest attempt of each
video: at the end of a run the records of earlier runs for videos retried in this run are dropped (after a crash
an old and a new record of one video may both remain until the next completed run). `--overwrite` removes the
part files, the errors table and features.json first. A store made with another preset, fps or dims, or with
other weights, is refused unless --overwrite.

`prepare_video`, `encode_prepared` and `extract_video` are plain per-video functions without Ray: `asrn predict`
extracts a single video in-process with them.
"""

from __future__ import annotations

import functools
import json
import os
import pickle
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from asrn.detect import Detector, TracksDetector, build_detector
from asrn.encoders import PRESETS, Encoder, EncoderError, build_encoders, crop_boxes, resize_image
from asrn.flow import FLOW_PAIRS, flow_stacks
from asrn.manifest import ManifestEntry, read_manifest
from asrn.store import (
    ERRORS_DIR,
    INFO_FILE,
    MODALITIES,
    FeatureStoreError,
    StoreInfo,
    VideoFeatures,
    done_video_ids,
    part_files,
    read_info,
    row_schema,
    table_to_videos,
    videos_to_table,
    write_errors,
    write_info,
    write_videos,
)
from asrn.tracks import load_tracks
from asrn.video import decode_clip

MAX_SIDE = 360  # px, long side of decoded step frames (detection and crops work on these)
MAX_IMAGES_PER_FORWARD = 64  # images per encoder forward pass: bounds an actor's memory, whatever T is
STORE_DTYPE = "float16"
ENCODER_MEMORY = {"lite": 1 << 30, "paper": 3 << 30}  # bytes of RAM reserved per encoder actor (nets + batches)
STAGES = ("decode", "detect", "flow", "encode")
ERROR_COLUMNS = ("path", "stage", "error", "message")  # with video_id: the errors table (store.ERRORS_SCHEMA)
META_COLUMNS = ("warnings", "detector", "encoders", "weights")  # actor output besides the store row


class ExtractError(ValueError):
    """An extraction that cannot start or go on (an inconsistent --out, an empty pipeline); names the folder."""


class VideoStageError(ValueError):
    """One video failed at one stage (decode, detect, flow, encode); keeps the original error's type name."""

    def __init__(self, stage: str, cause: BaseException):
        self.stage, self.error = stage, type(cause).__name__
        super().__init__(str(cause).strip() or self.error)


@dataclass(frozen=True)
class VideoSettings:
    """What extracting one video needs: preset (encoder input sizes), sampling rate, weights folder, frame size."""

    preset: str = "lite"
    fps: float = 2.0
    weights_dir: Path | None = None
    max_side: int | None = MAX_SIDE


@dataclass
class ExtractConfig:
    """`asrn extract` flags (same names); the last two fields have no flag."""

    manifest: Path
    out: Path
    preset: str = "lite"
    fps: float = 2.0
    num_workers: int = 1  # encoder actors
    gpus_per_worker: float = 0.0  # per encoder actor; 0: actors run on the CPU
    batch_size: int = 4  # videos per map_batches batch
    weights_dir: Path | None = None
    overwrite: bool = False
    address: str | None = None
    cpus_per_worker: float = 1.0  # CPUs reserved per encoder actor (its torch threads on a CPU)
    videos_per_part: int = 16  # videos per Parquet part file the driver writes

    def __post_init__(self) -> None:
        self.manifest, self.out = Path(self.manifest), Path(self.out)
        self.weights_dir = Path(self.weights_dir) if self.weights_dir is not None else None
        problems = []
        if self.preset not in PRESETS:
            problems.append(f"--preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        if not self.fps > 0:
            problems.append(f"--fps must be > 0, got {self.fps}")
        if self.num_workers < 1:
            problems.append(f"--num-workers must be >= 1, got {self.num_workers}")
        if self.gpus_per_worker < 0:
            problems.append(f"--gpus-per-worker must be >= 0, got {self.gpus_per_worker}")
        if self.batch_size < 1:
            problems.append(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.weights_dir is not None and not self.weights_dir.is_dir():
            problems.append(f"--weights-dir {self.weights_dir} is not a folder")
        if not self.cpus_per_worker > 0:
            problems.append(f"cpus_per_worker must be > 0, got {self.cpus_per_worker}")
        if self.videos_per_part < 1:
            problems.append(f"videos_per_part must be >= 1, got {self.videos_per_part}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def settings(self) -> VideoSettings:
        return VideoSettings(self.preset, self.fps, self.weights_dir)

    def to_dict(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


@dataclass
class PreparedVideo:
    """One video after the CPU stage: encoder-ready inputs for the T sampled steps (numpy only)."""

    path: str
    timestamps: np.ndarray  # (T,) float32 seconds
    frame_indices: np.ndarray  # (T,) int64 source frame of each step
    rgb: np.ndarray  # (T, h, w, 3) uint8, at the rgb encoder's input size
    flow: np.ndarray  # (T, 2P, h, w) float32 in [-1, 1], at the motion encoder's input size
    body: np.ndarray  # (T, h, w, 3) uint8 largest-person crops; zeros where has_body is False
    face: np.ndarray  # (T, h, w, 3) uint8 largest-face crops; zeros where has_face is False
    has_body: np.ndarray  # (T,) bool
    has_face: np.ndarray  # (T,) bool
    person_boxes: np.ndarray  # (T, 4) float32 x1 y1 x2 y2 in step-frame pixels; NaN where none
    face_boxes: np.ndarray  # (T, 4) float32
    frame_size: tuple[int, int]  # (H, W) of the step frames the boxes refer to
    detector: str  # which detector found the boxes
    warnings: list[str] = field(default_factory=list)

    @property
    def num_steps(self) -> int:
        return int(self.timestamps.shape[0])

    def inputs(self) -> dict[str, np.ndarray]:
        """modality -> (T, ...) encoder input."""
        return {"rgb": self.rgb, "motion": self.flow, "body": self.body, "face": self.face}

    def present(self) -> dict[str, np.ndarray]:
        """modality -> (T,) bool: where that modality exists (rgb and motion always)."""
        ones = np.ones(self.num_steps, bool)
        return {"rgb": ones, "motion": ones, "body": self.has_body, "face": self.has_face}


@dataclass
class ExtractSummary:
    """What one `asrn extract` run did."""

    out: Path
    total: int  # videos in the manifest
    succeeded: int  # written to the store by this run
    failed: int  # added to the errors table by this run
    skipped: int  # already in the store before this run
    seconds: float
    part_files: list[Path] = field(default_factory=list)  # written by this run
    errors_path: Path | None = None  # the errors table folder, when it holds records
    info_path: Path | None = None

    @property
    def processed(self) -> int:
        return self.succeeded + self.failed


# ---------------------------------------------------------------- per-video functions (no Ray)


@functools.lru_cache(maxsize=4)
def default_detector(weights_dir: Path | None) -> Detector:
    """build_detector's offline chain, built once per process (Ray reuses task workers between videos)."""
    return build_detector(weights_dir)


def resize_flow(stacks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(T, 2P, H, W) float32 -> (T, 2P, h, w), exactly as FlowEncoder.preprocess would resize it."""
    if stacks.shape[-2:] == tuple(size):
        return np.ascontiguousarray(stacks, np.float32)
    x = F.interpolate(torch.from_numpy(np.ascontiguousarray(stacks, np.float32)), size=tuple(size),
                      mode="bilinear", align_corners=False, antialias=True)
    return x.numpy()


def prepare_video(path: str, boxes: str | None = None, config: VideoSettings | ExtractConfig = VideoSettings(),
                  detector: Detector | None = None) -> PreparedVideo:
    """Decode, detect, crop and compute flow for one video: everything before the encoders, numpy only.

    Boxes come from `boxes` (a tracks JSON) when given, else from `detector`, else from build_detector's offline
    chain. Raises VideoStageError naming the stage (decode, detect, flow) with the original error's message.
    """
    if config.preset not in PRESETS:
        raise EncoderError(f"unknown preset {config.preset!r}; choose one of {', '.join(PRESETS)}")
    specs = PRESETS[config.preset]
    motion_size = specs["motion"].input_size
    max_side = getattr(config, "max_side", MAX_SIDE)
    try:
        clip = decode_clip(path, fps=config.fps, flow_pairs=FLOW_PAIRS, flow_side=min(motion_size),
                           max_side=max_side)
        rgb = np.stack([resize_image(frame, specs["rgb"].input_size) for frame in clip.frames])  # (T, h, w, 3)
    except Exception as e:
        raise VideoStageError("decode", e) from e
    try:
        if boxes:
            detector = TracksDetector(load_tracks(boxes))
        elif detector is None:
            detector = default_detector(config.weights_dir)
        scale = clip.frames.shape[2] / clip.width  # step px per source px
        found = detector.detect(clip.frames, clip.frame_indices, scale)
        body = crop_boxes(clip.frames, found.person, found.has_person, specs["body"].input_size)  # (T, h, w, 3)
        face = crop_boxes(clip.frames, found.face, found.has_face, specs["face"].input_size)
    except Exception as e:
        raise VideoStageError("detect", e) from e
    try:
        flow = resize_flow(flow_stacks(clip.flow_windows), motion_size)  # (T, 2P, h, w)
    except Exception as e:
        raise VideoStageError("flow", e) from e
    return PreparedVideo(
        path=path, timestamps=clip.timestamps, frame_indices=clip.frame_indices, rgb=rgb, flow=flow,
        body=body, face=face, has_body=found.has_person.copy(), has_face=found.has_face.copy(),
        person_boxes=found.person, face_boxes=found.face, frame_size=(clip.frames.shape[1], clip.frames.shape[2]),
        detector=detector.name, warnings=list(clip.warnings),
    )


def encode_batch(videos: Sequence[PreparedVideo], encoders: dict[str, Encoder]) -> list[dict[str, np.ndarray]]:
    """Encode several prepared videos together (their steps stacked, MAX_IMAGES_PER_FORWARD per pass).

    Returns per video {modality: (T, D) float32}; steps where body/face is missing are not encoded and stay zero.
    """
    missing = [m for m in MODALITIES if m not in encoders]
    if missing:
        raise EncoderError(f"encoders lack modality {', '.join(missing)}")
    counts = [v.num_steps for v in videos]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(int)
    out: dict[str, np.ndarray] = {}
    for m in MODALITIES:
        encoder = encoders[m]
        inputs = np.concatenate([v.inputs()[m] for v in videos])  # (N, ...) N = sum of T
        present = np.flatnonzero(np.concatenate([v.present()[m] for v in videos]))
        features = np.zeros((offsets[-1], encoder.dim), np.float32)  # (N, D)
        for start in range(0, len(present), MAX_IMAGES_PER_FORWARD):
            rows = present[start:start + MAX_IMAGES_PER_FORWARD]
            features[rows] = encoder.features(inputs[rows])
        out[m] = features
    return [{m: out[m][offsets[i]:offsets[i + 1]] for m in MODALITIES} for i in range(len(videos))]


def encode_prepared(prepared: PreparedVideo, encoders: dict[str, Encoder]) -> dict[str, np.ndarray]:
    """One prepared video -> {modality: (T, D) float32}, zeros where body/face is missing."""
    return encode_batch([prepared], encoders)[0]


def to_video_features(prepared: PreparedVideo, features: dict[str, np.ndarray], video_id: str, split: str,
                      labels: Sequence[str]) -> VideoFeatures:
    return VideoFeatures(video_id=video_id, split=split, labels=list(labels),
                         timestamp=prepared.timestamps.astype(np.float32), features=features,
                         has_body=prepared.has_body.astype(bool), has_face=prepared.has_face.astype(bool))


def extract_video(path: str, boxes: str | None = None, config: VideoSettings | ExtractConfig = VideoSettings(),
                  detector: Detector | None = None, encoders: dict[str, Encoder] | None = None,
                  video_id: str | None = None, split: str = "test",
                  labels: Sequence[str] = ()) -> tuple[VideoFeatures, PreparedVideo]:
    """prepare_video + encode_prepared in this process (what `asrn predict` runs for one video).

    Pass `encoders` (build_encoders(preset, ...)) to reuse them across videos; they are built here otherwise.
    """
    prepared = prepare_video(path, boxes, config, detector)
    if encoders is None:
        encoders = build_encoders(config.preset, config.weights_dir)
    try:
        features = encode_prepared(prepared, encoders)
    except Exception as e:
        raise VideoStageError("encode", e) from e
    video_id = video_id if video_id is not None else Path(path).stem
    return to_video_features(prepared, features, video_id, split, labels), prepared


# ---------------------------------------------------------------- the Ray Data stages


def _error_fields(e: BaseException, stage: str) -> dict[str, str]:
    if isinstance(e, VideoStageError):
        return {"stage": e.stage, "error": e.error, "message": str(e)}
    return {"stage": stage, "error": type(e).__name__, "message": str(e).strip() or type(e).__name__}


def _prepare_row(row: dict, settings: VideoSettings) -> dict:
    """CPU stage (one Ray task per video): manifest row -> row with the pickled PreparedVideo, or an error."""
    out = {k: row[k] for k in ("video_id", "path", "split", "labels")}
    try:
        prepared = prepare_video(row["path"], row["boxes"] or None, settings)
    except Exception as e:  # noqa: BLE001 - errors are data: one bad video must not fail the dataset
        return {**out, "prepared": b"", "warnings": "", **_error_fields(e, "decode")}
    return {**out, "prepared": pickle.dumps(prepared, protocol=5), "warnings": "\n".join(prepared.warnings),
            "stage": "", "error": "", "message": ""}


class EncodeVideos:
    """Encoder actor: builds the preset's four encoders once, then encodes batches of prepared videos.

    Output: one row per input video in the store's Arrow schema plus path/stage/error/message (empty when the
    video succeeded; T = 0 otherwise) and the detector, encoder names and weights provenance for features.json.
    """

    def __init__(self, preset: str, weights_dir: str | None, device: str, threads: int):
        if device == "cpu":
            torch.set_num_threads(threads)
        self.encoders = build_encoders(preset, Path(weights_dir) if weights_dir else None, device)
        self.names = json.dumps({m: e.name for m, e in self.encoders.items()}, sort_keys=True)
        self.weights = json.dumps({m: e.weights for m, e in self.encoders.items()}, sort_keys=True)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        num = len(batch["video_id"])
        errors = [{k: str(batch[k][i]) for k in ("stage", "error", "message")} for i in range(num)]
        prepared: dict[int, PreparedVideo] = {
            i: pickle.loads(batch["prepared"][i]) for i in range(num) if not errors[i]["error"]}
        features: dict[int, dict[str, np.ndarray]] = {}
        try:
            features = dict(zip(prepared, encode_batch(list(prepared.values()), self.encoders), strict=True))
        except Exception:  # noqa: BLE001 - find the video that fails, encode the others
            for i, video in prepared.items():
                try:
                    features[i] = encode_prepared(video, self.encoders)
                except Exception as e:  # noqa: BLE001
                    errors[i] = _error_fields(e, "encode")
        videos, detectors = [], []
        for i in range(num):
            video = prepared.get(i)
            labels = [x for x in str(batch["labels"][i]).split("|") if x]
            if video is not None and i in features:
                videos.append(to_video_features(video, features[i], str(batch["video_id"][i]),
                                                str(batch["split"][i]), labels))
                detectors.append(video.detector)
            else:  # zero steps, dims kept so that the batch is one table
                empty = {m: np.zeros((0, e.dim), np.float32) for m, e in self.encoders.items()}
                videos.append(VideoFeatures(str(batch["video_id"][i]), str(batch["split"][i]), labels,
                                            np.zeros(0, np.float32), empty, np.zeros(0, bool), np.zeros(0, bool)))
                detectors.append("")
        table = videos_to_table(videos, STORE_DTYPE)
        extra = {"path": [str(p) for p in batch["path"]],
                 "stage": [e["stage"] if e["error"] else "" for e in errors],
                 "error": [e["error"] for e in errors],
                 "message": [e["message"] if e["error"] else "" for e in errors],
                 "warnings": [str(w) for w in batch["warnings"]],
                 "detector": detectors, "encoders": [self.names] * num, "weights": [self.weights] * num}
        for name, values in extra.items():
            table = table.append_column(name, pa.array(values, pa.string()))
        return table


def build_dataset(entries: Sequence[ManifestEntry], config: ExtractConfig):
    """The lazy Ray Dataset of the pipeline: manifest rows -> CPU map -> encoder actor pool."""
    import ray

    items = [{"video_id": e.video_id, "path": e.path, "split": e.split, "labels": "|".join(e.labels),
              "boxes": e.boxes or ""} for e in entries]
    use_gpu = config.gpus_per_worker > 0
    # Forward an explicitly set TORCH_HOME: where the driver was told torchvision's cache is, the workers look too.
    env = {k: os.environ[k] for k in ("TORCH_HOME",) if k in os.environ}
    runtime_env = {"env_vars": env} if env else None
    ds = ray.data.from_items(items, override_num_blocks=len(items))  # one block per video: one task per video
    ds = ds.map(_prepare_row, fn_kwargs={"settings": config.settings}, num_cpus=1, runtime_env=runtime_env)
    resources = {"num_gpus": config.gpus_per_worker} if use_gpu else {}
    # The actors' memory reservation also keeps the stages two operators: Ray Data fuses a task map into a
    # following actor map whose remote args are equal, and decoding would then run inside the encoder actors.
    return ds.map_batches(
        EncodeVideos,
        fn_constructor_kwargs={"preset": config.preset, "weights_dir": str(config.weights_dir or ""),
                               "device": "cuda" if use_gpu else "cpu",
                               "threads": max(1, int(config.cpus_per_worker))},
        batch_size=config.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=config.num_workers),
        num_cpus=config.cpus_per_worker,
        memory=ENCODER_MEMORY.get(config.preset, 2 << 30),
        runtime_env=runtime_env,
        **resources,
    )


# ---------------------------------------------------------------- the job


def expected_dims(preset: str) -> dict[str, int]:
    return {m: PRESETS[preset][m].dim for m in MODALITIES}


def _check_existing_store(config: ExtractConfig) -> StoreInfo | None:
    """The store already in --out, refused when it was made with another preset, fps or dims."""
    out = config.out
    if not (out / INFO_FILE).is_file():
        if out.is_dir() and part_files(out):
            raise ExtractError(f"{out}: holds Parquet files but no {INFO_FILE}; not a feature store of "
                               f"`asrn extract` (use --overwrite to replace it, or another --out)")
        return None
    try:
        info = read_info(out)
    except FeatureStoreError as e:
        raise ExtractError(f"{e} (use --overwrite to replace the store)") from e
    wanted = {"preset": config.preset, "fps": config.fps, "dims": expected_dims(config.preset)}
    have = {"preset": info.preset, "fps": info.fps, "dims": info.dims}
    differ = [k for k in wanted if (abs(have[k] - wanted[k]) > 1e-9 if k == "fps" else have[k] != wanted[k])]
    if differ:
        raise ExtractError(f"{out / INFO_FILE}: the store there was made with "
                           + ", ".join(f"{k}={have[k]}" for k in differ) + "; this run asks for "
                           + ", ".join(f"{k}={wanted[k]}" for k in differ)
                           + " (use --overwrite to redo it, or another --out)")
    return info


def _clear_store(out: Path) -> None:
    """--overwrite: remove part files, errors and features.json (only what `asrn extract` writes)."""
    if not out.is_dir():
        return
    for path in [*out.glob("*.parquet"), *(out / ERRORS_DIR).glob("*.parquet"), out / INFO_FILE]:
        path.unlink(missing_ok=True)


def _remove_temporaries(out: Path) -> None:
    """Half-written files of a crashed run (store writes to `.tmp-*` and renames)."""
    for folder in (out, out / ERRORS_DIR):
        if folder.is_dir():
            for path in folder.glob(".tmp-*"):
                path.unlink(missing_ok=True)


def _merge_provenance(seen: dict[str, set[str]]) -> dict[str, str]:
    return {m: " | ".join(sorted(values)) for m, values in sorted(seen.items())}


class _StoreWriter:
    """Driver side: buffers encoded videos and errors, writes part files every `videos_per_part` videos."""

    def __init__(self, config: ExtractConfig, existing: StoreInfo | None, run_id: str, total: int):
        self.config, self.existing, self.run_id, self.total = config, existing, run_id, total
        self.videos: list[VideoFeatures] = []
        self.errors: list[dict] = []
        self.parts: list[Path] = []
        self.succeeded = self.failed = 0
        self.detectors: set[str] = set(filter(None, (existing.detector if existing else "").split(", ")))
        self.encoders: dict[str, set[str]] = {}
        self.weights: dict[str, set[str]] = {}
        self.info_written = False
        self.start = time.monotonic()
        self.last_report = 0

    def add(self, table: pa.Table) -> None:
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
            self.detectors.update(good.column("detector").to_pylist())
            if not self.info_written:
                self.write_info()  # before the first part file: a reader never finds data without it
            self.videos.extend(table_to_videos(good.select(row_schema(STORE_DTYPE).names)))
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
            preset=config.preset, dims=expected_dims(config.preset), fps=float(config.fps),
            encoders=_merge_provenance(self.encoders) or (self.existing.encoders if self.existing else {}),
            weights=weights or (self.existing.weights if self.existing else {}),
            detector=", ".join(sorted(self.detectors)), dtype=STORE_DTYPE,
            extra={"extract_config": config.to_dict()})

    def write_info(self) -> None:
        write_info(self.config.out, self.info())
        self.info_written = True

    def flush(self, full_only: bool = False) -> None:
        """Write the buffered videos as part files of `videos_per_part` (the remainder too unless full_only)."""
        k = self.config.videos_per_part
        while self.videos and (len(self.videos) >= k or not full_only):
            name = f"part-{self.run_id}-{len(self.parts):05d}"
            self.parts.append(write_videos(self.config.out, self.videos[:k], name=name, dtype=STORE_DTYPE))
            self.videos = self.videos[k:]

    def flush_errors(self) -> None:
        if self.errors:
            write_errors(self.config.out, self.errors, name=f"part-{self.run_id}-{uuid.uuid4().hex[:6]}")
            self.errors = []

    def report(self, final: bool = False) -> None:
        done = self.succeeded + self.failed
        every = max(1, min(10, self.total // 10))
        if final or done - self.last_report >= every:
            elapsed = time.monotonic() - self.start
            print(f"extract: {done}/{self.total} videos ({self.failed} failed), "
                  f"{done / max(elapsed, 1e-9):.2f} videos/s", file=sys.stderr, flush=True)
            self.last_report = done


def _retire_old_errors(out: Path, old_files: list[Path], retried: set[str], run_id: str) -> None:
    """Keep one record per failed video: drop earlier runs' records of videos this run retried."""
    if not old_files:
        return
    old = pa.concat_tables([pq.read_table(f) for f in old_files])
    keep = [r for r in old.to_pylist() if r["video_id"] not in retried]
    if keep:
        write_errors(out, keep, name=f"part-{run_id}-earlier")
    for f in old_files:
        f.unlink(missing_ok=True)


def extract_features(config: ExtractConfig) -> ExtractSummary:
    """Run the extraction job: manifest -> Ray Data pipeline -> feature store in config.out. See module docstring."""
    import ray

    start = time.monotonic()
    entries = read_manifest(config.manifest)  # a malformed manifest is refused before anything is written
    out = config.out
    if config.overwrite:
        _clear_store(out)
        existing = None
    else:
        existing = _check_existing_store(config)
    done = done_video_ids(out) & {e.video_id for e in entries} if out.is_dir() else set()
    todo = [e for e in entries if e.video_id not in done]
    if not todo:
        print(f"extract: all {len(entries)} videos of {config.manifest} are already in {out}; nothing to do "
              f"(--overwrite redoes them)", file=sys.stderr, flush=True)
        summary = ExtractSummary(out=out, total=len(entries), succeeded=0, failed=0, skipped=len(done),
                                 seconds=time.monotonic() - start, info_path=out / INFO_FILE,
                                 errors_path=_errors_path(out))
        _print_summary(summary)
        return summary
    out.mkdir(parents=True, exist_ok=True)
    _remove_temporaries(out)
    old_error_files = sorted(p for p in (out / ERRORS_DIR).glob("*.parquet") if not p.name.startswith((".", "_")))
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
    print(f"extract: {len(todo)} videos to do, {len(done)} already in {out} (preset {config.preset}, "
          f"fps {config.fps}, {config.num_workers} encoder actor(s), "
          f"{config.gpus_per_worker or 'no'} GPU each)", file=sys.stderr, flush=True)

    started_ray = False
    if not ray.is_initialized():
        ray.init(address=config.address)
        started_ray = True
    _warn_on_resources(config, ray.cluster_resources())
    writer = _StoreWriter(config, existing, run_id, len(todo))
    try:
        ds = build_dataset(todo, config)
        for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            writer.add(table)
        writer.flush()
        writer.flush_errors()
        if writer.info_written or existing is not None:
            writer.write_info()  # final: every detector seen
        _retire_old_errors(out, old_error_files, {e.video_id for e in todo}, run_id)
    finally:
        writer.flush()  # keep finished work when the job dies half-way
        writer.flush_errors()
        if started_ray:
            ray.shutdown()
    seen = writer.succeeded + writer.failed
    if seen != len(todo):
        raise ExtractError(f"{out}: the pipeline returned {seen} of {len(todo)} videos")
    summary = ExtractSummary(out=out, total=len(entries), succeeded=writer.succeeded, failed=writer.failed,
                             skipped=len(done), seconds=time.monotonic() - start, part_files=writer.parts,
                             info_path=out / INFO_FILE if (out / INFO_FILE).is_file() else None,
                             errors_path=_errors_path(out))
    _print_summary(summary)
    return summary


def _warn_on_resources(config: ExtractConfig, resources: dict) -> None:
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


def _errors_path(out: Path) -> Path | None:
    folder = out / ERRORS_DIR
    return folder if folder.is_dir() and any(folder.glob("*.parquet")) else None


def _print_summary(s: ExtractSummary) -> None:
    print(f"extract: {s.succeeded} succeeded, {s.failed} failed, {s.skipped} skipped (already done) of {s.total} "
          f"videos in {s.seconds:.1f} s", flush=True)
    print(f"extract: features in {s.out} ({len(s.part_files)} new part file(s)); info: {s.info_path}", flush=True)
    if s.errors_path is not None:
        print(f"extract: errors table: {s.errors_path}", flush=True)
