"""The feature store: Parquet files of one row per video, `features.json`, and an `errors/` table.

Layout of a store folder DIR:
  DIR/part-*.parquet   one row per video: video_id, split, labels, timestamp (T,),
                       rgb/motion/body/face (T, D), has_body/has_face (T,) detected,
                       body_tracked/face_tracked (T,) carried across a miss by tracking,
                       shot_start (T,) a shot begins at this step (step 0 True; absent: unknown)
  DIR/features.json    StoreInfo: preset, encoders, dims, fps, weights provenance, detector
                       (extra["detection"]: each detector's settings and tracking gap limit;
                       extra["input_stats"]: the train split's per-dimension mean/std and which videos
                       they were computed over, `split_fingerprint`)
  DIR/errors/*.parquet video_id, path, stage, error, message
  DIR/.lock            while a writer runs: {"pid", "host", "token", "since"} (`writer_lock`)
  DIR/_staging/        a whole new store being built by `asrn extract --overwrite`, swapped in when complete
Readers open a store as one `FeatureStore` (its part files, info, schema version and optional columns, splits and
counts, cached train statistics, resident size), so every command reads it the same way: only `part-*.parquet` are
its data (any other Parquet file there is named in a warning, never read), and columns added after a store was
written (OPTIONAL_COLUMNS) read with their documented default. The module functions are its parts and the writers'.
Readers and writers take a local folder or a URI (asrn.locations: `s3://bucket/features`, ...). On a local disk
every file is written to a temporary name and renamed, so a crash never leaves a half-written file that a reader
would take for data (readers ignore names starting with `.` or `_`). An object store has no rename: a file is
written locally, then uploaded under its final name, and the object appears whole or not at all. The store owns
only the files named `part-*.parquet` (data and errors), features.json, .lock and _staging/ (local stores only):
writers never touch others.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from asrn.errors import AsrnError
from asrn.files import atomic_output, write_json
from asrn.locations import Location, path_or_location
from asrn.manifest import SPLITS

MODALITIES: tuple[str, ...] = ("rgb", "motion", "body", "face")
INFO_FILE = "features.json"
ERRORS_DIR = "errors"
PART_PREFIX = "part-"  # the store owns the Parquet files named so (data and errors), no others
LOCK_FILE = ".lock"
STAGING_DIR = "_staging"
STAGED_FILES = "_complete.json"  # in _staging: the new store's files, written once the new store is whole
STORE_VERSION = 1
ENCODED_STEPS_KEY = "encoded_steps"  # StoreInfo.extra: "all", or "window-<w> kept" (see encoded_window)
ALL_STEPS = "all"


class FeatureStoreError(AsrnError):
    """A feature store that is missing, malformed or inconsistent; the message names file and key."""


class StoreLockedError(FeatureStoreError):
    """Another writer holds the store's lock; the message names the lock file and its holder."""


@dataclass
class StoreInfo:
    """What `features.json` holds: enough to check that a checkpoint and a store agree."""

    preset: str
    dims: dict[str, int]  # modality -> D
    fps: float  # sampling rate of the time steps
    encoders: dict[str, str] = field(default_factory=dict)  # modality -> encoder name
    weights: dict[str, str] = field(default_factory=dict)  # modality -> pretrained:<name> | sha256:<hex> | random-init
    detector: str = ""  # which detector produced the boxes
    decoder: str = ""  # which video decoder(s) produced the frames: decord, pyav ("": not recorded, or no videos)
    dtype: str = "float16"
    version: int = STORE_VERSION
    extra: dict = field(default_factory=dict)

    def check(self, where: str) -> None:
        missing = [m for m in MODALITIES if m not in self.dims]
        if missing:
            raise FeatureStoreError(f"{where}: dims lacks modality {', '.join(missing)}")
        for m, d in self.dims.items():
            if not isinstance(d, int) or d <= 0:
                raise FeatureStoreError(f"{where}: dims[{m!r}] = {d!r} is not a positive integer")


def step_mask(mask: np.ndarray | None, num_steps: int) -> np.ndarray:
    """A (T,) bool mask; None (a store or detector from before tracking) means no step."""
    return np.zeros(num_steps, bool) if mask is None else np.asarray(mask, bool)


@dataclass
class VideoFeatures:
    """One video's per-step features, as read from or written to one Parquet row."""

    video_id: str
    split: str
    labels: list[str]
    timestamp: np.ndarray  # (T,) float32 seconds
    features: dict[str, np.ndarray]  # modality -> (T, D) float32
    has_body: np.ndarray  # (T,) bool: detected at that step
    has_face: np.ndarray  # (T,) bool
    body_tracked: np.ndarray | None = None  # (T,) bool: not detected, box carried by tracking; None: all False
    face_tracked: np.ndarray | None = None  # (T,) bool
    shot_start: np.ndarray | None = None  # (T,) bool: a shot begins here (a cut before it; step 0); None: unknown

    def __post_init__(self) -> None:
        self.body_tracked = step_mask(self.body_tracked, len(self.has_body))
        self.face_tracked = step_mask(self.face_tracked, len(self.has_face))
        if self.shot_start is not None:
            self.shot_start = np.asarray(self.shot_start, bool)

    @property
    def num_steps(self) -> int:
        return int(self.timestamp.shape[0])

    def present(self) -> dict[str, np.ndarray]:
        """Per-modality (T,) masks: rgb and motion always; body/face where detected or carried by tracking
        (a carried step's features were encoded from the carried box, so the model may use them)."""
        ones = np.ones(self.num_steps, dtype=bool)
        return {"rgb": ones, "motion": ones, "body": self.has_body | self.body_tracked,
                "face": self.has_face | self.face_tracked}


def row_schema(dtype: str = "float16") -> pa.Schema:
    value = pa.float16() if dtype == "float16" else pa.float32()
    matrix = pa.list_(pa.list_(value))
    return pa.schema([
        ("video_id", pa.string()),
        ("split", pa.string()),
        ("labels", pa.list_(pa.string())),
        ("timestamp", pa.list_(pa.float32())),
        *[(m, matrix) for m in MODALITIES],
        ("has_body", pa.list_(pa.bool_())),
        ("has_face", pa.list_(pa.bool_())),
        ("body_tracked", pa.list_(pa.bool_())),
        ("face_tracked", pa.list_(pa.bool_())),
        ("shot_start", pa.list_(pa.bool_())),  # null row: shots unknown
    ])


TRACKED_COLUMNS = ("body_tracked", "face_tracked")  # added later: stores written before them read as all False
# Columns added after the first stores were written, with what their absence reads as. A store written before one
# of them still reads and trains.
OPTIONAL_COLUMNS: dict[str, str] = {"body_tracked": "all False", "face_tracked": "all False",
                                    "shot_start": "unknown (None)"}


def required_columns() -> list[str]:
    """The columns every part file must hold: today's schema less the optional ones."""
    return [c for c in row_schema().names if c not in OPTIONAL_COLUMNS]


ERRORS_SCHEMA = pa.schema([
    ("video_id", pa.string()),
    ("path", pa.string()),
    ("stage", pa.string()),
    ("error", pa.string()),
    ("message", pa.string()),
])


def _matrix_array(matrices: Sequence[np.ndarray], dtype: str) -> pa.Array:
    """List of (T_i, D) arrays -> list<list<value>> without going through Python lists."""
    np_dtype = np.float16 if dtype == "float16" else np.float32
    value_type = pa.float16() if dtype == "float16" else pa.float32()
    dims = {m.shape[1] for m in matrices if m.ndim == 2}
    if len(dims) > 1 or any(m.ndim != 2 for m in matrices):
        raise FeatureStoreError(f"feature matrices disagree in shape: {[m.shape for m in matrices]}")
    d = dims.pop() if dims else 0
    flat = np.concatenate([m.astype(np_dtype).reshape(-1) for m in matrices]) if matrices else np.zeros(0, np_dtype)
    inner_offsets = np.arange(0, flat.size + 1, max(d, 1), dtype=np.int32) if d else np.zeros(1, np.int32)
    inner = pa.ListArray.from_arrays(pa.array(inner_offsets), pa.array(flat, type=value_type))
    outer_offsets = np.concatenate([[0], np.cumsum([m.shape[0] for m in matrices])]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(outer_offsets), inner)


def videos_to_table(videos: Sequence[VideoFeatures], dtype: str = "float16") -> pa.Table:
    columns = {
        "video_id": pa.array([v.video_id for v in videos], pa.string()),
        "split": pa.array([v.split for v in videos], pa.string()),
        "labels": pa.array([list(v.labels) for v in videos], pa.list_(pa.string())),
        "timestamp": pa.array([np.asarray(v.timestamp, np.float32) for v in videos], pa.list_(pa.float32())),
    }
    for m in MODALITIES:
        columns[m] = _matrix_array([np.asarray(v.features[m]) for v in videos], dtype)
    columns["has_body"] = pa.array([np.asarray(v.has_body, bool) for v in videos], pa.list_(pa.bool_()))
    columns["has_face"] = pa.array([np.asarray(v.has_face, bool) for v in videos], pa.list_(pa.bool_()))
    for name in OPTIONAL_COLUMNS:  # a None (shots unknown) is a null row
        columns[name] = pa.array([None if getattr(v, name) is None else np.asarray(getattr(v, name), bool)
                                  for v in videos], pa.list_(pa.bool_()))
    return pa.table(columns, schema=row_schema(dtype))


def _column_matrices(column: pa.ChunkedArray | pa.Array, name: str) -> list[np.ndarray]:
    """list<list<value>> -> list of (T_i, D) float32 arrays, via offsets (no Python lists)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    outer_offsets = array.offsets.to_numpy()
    inner = array.flatten()
    inner_lengths = inner.value_lengths().to_numpy(zero_copy_only=False) if len(inner) else np.zeros(0, int)
    values = inner.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    dims = set(np.unique(inner_lengths).tolist())
    if len(dims) > 1:
        raise FeatureStoreError(f"column {name!r}: rows have differing feature dims {sorted(dims)}")
    d = dims.pop() if dims else 0
    matrix = values.reshape(-1, d) if d else values.reshape(0, 0)
    return [matrix[outer_offsets[i]:outer_offsets[i + 1]] for i in range(len(array))]


def table_to_videos(table: pa.Table) -> list[VideoFeatures]:
    missing = [c for c in required_columns() if c not in table.column_names]
    if missing:
        raise FeatureStoreError(f"feature table lacks column(s) {', '.join(missing)}")
    matrices = {m: _column_matrices(table.column(m), m) for m in MODALITIES}
    ids = table.column("video_id").to_pylist()
    splits = table.column("split").to_pylist()
    labels = table.column("labels").to_pylist()
    stamps = table.column("timestamp").to_pylist()
    has_body = table.column("has_body").to_pylist()
    has_face = table.column("has_face").to_pylist()
    optional = {name: table.column(name).to_pylist() if name in table.column_names else [None] * len(ids)
                for name in OPTIONAL_COLUMNS}
    videos = []
    for i, video_id in enumerate(ids):
        t = len(stamps[i])
        for m in MODALITIES:
            if matrices[m][i].shape[0] != t:
                raise FeatureStoreError(f"video {video_id!r}: {m} has {matrices[m][i].shape[0]} steps, "
                                        f"timestamp has {t}")
        masks = (("has_body", has_body[i]), ("has_face", has_face[i]), *((n, optional[n][i]) for n in OPTIONAL_COLUMNS))
        for name, mask in masks:
            if mask is not None and len(mask) != t:
                raise FeatureStoreError(f"video {video_id!r}: {name} has {len(mask)} steps, timestamp has {t}")
        videos.append(VideoFeatures(
            video_id=video_id, split=splits[i], labels=list(labels[i]),
            timestamp=np.asarray(stamps[i], np.float32),
            features={m: matrices[m][i] for m in MODALITIES},
            has_body=np.asarray(has_body[i], bool), has_face=np.asarray(has_face[i], bool),
            **{n: None if optional[n][i] is None else np.asarray(optional[n][i], bool) for n in OPTIONAL_COLUMNS},
        ))
    return videos


def _atomic_write_table(table: pa.Table, target: Location) -> None:
    """Local: a hidden `.tmp-*` file beside the target, renamed over it. Object store: a local file, uploaded under
    the final name (no rename there; the object appears only once complete)."""
    if not target.is_local:
        with atomic_output(target) as temporary:
            pq.write_table(table, temporary)
        return
    path = target.path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{uuid.uuid4().hex}-{path.name}"
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_videos(store_dir: str | os.PathLike | Location, videos: Sequence[VideoFeatures], name: str | None = None,
                 dtype: str = "float16") -> Path | Location:
    """Write one Parquet part file (atomically) and return its path (a Location for a URI or a Location)."""
    return write_table(store_dir, videos_to_table(videos, dtype), name, dtype)


def write_table(store_dir: str | os.PathLike | Location, table: pa.Table, name: str | None = None,
                dtype: str = "float16") -> Path | Location:
    """Write rows already in the store's Arrow form (e.g. `videos_to_table`'s, from an encoder actor) as one part
    file, atomically, without converting them back to numpy. Extra columns are dropped; a missing or differently
    typed column is refused, naming it."""
    schema = row_schema(dtype)
    wrong = [f"{f.name} ({'missing' if f.name not in table.column_names else table.schema.field(f.name).type})"
             for f in schema if f.name not in table.column_names or table.schema.field(f.name).type != f.type]
    if wrong:
        raise FeatureStoreError(f"rows for {name or 'a part file'}: column(s) {', '.join(wrong)} differ from the "
                                f"store's row schema")
    name = name or f"part-{uuid.uuid4().hex[:12]}"
    rows = pa.Table.from_arrays([table.column(f.name) for f in schema], schema=schema)  # no foreign metadata
    rows = rows.combine_chunks()  # one row group, as videos_to_table gives
    target = path_or_location(store_dir) / f"{name}.parquet"
    _atomic_write_table(rows, Location(target))
    return target


def write_errors(store_dir: str | os.PathLike | Location, rows: Sequence[dict],
                 name: str | None = None) -> Path | Location | None:
    """Append failed videos (video_id, path, stage, error, message) to the errors table."""
    if not rows:
        return None
    table = pa.Table.from_pylist([{k: str(r.get(k, "")) for k in ERRORS_SCHEMA.names} for r in rows],
                                 schema=ERRORS_SCHEMA)
    name = name or f"part-{uuid.uuid4().hex[:12]}"
    target = path_or_location(store_dir) / ERRORS_DIR / f"{name}.parquet"
    _atomic_write_table(table, Location(target))
    return target


def write_info(store_dir: str | os.PathLike | Location, info: StoreInfo) -> Path | Location:
    """features.json, strict JSON, atomically."""
    Location(store_dir).mkdir(parents=True, exist_ok=True)
    return write_json(path_or_location(store_dir) / INFO_FILE, asdict(info))


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def read_info(store_dir: str | os.PathLike | Location) -> StoreInfo:
    path = Location(store_dir) / INFO_FILE
    try:
        text = path.read_text()
    except FileNotFoundError as e:
        raise FeatureStoreError(f"{path}: not found; is {store_dir} a feature store written by `asrn extract`?") from e
    try:
        raw = json.loads(text, parse_constant=_refuse_constant)
        info = StoreInfo(**raw)
    except (ValueError, TypeError) as e:
        raise FeatureStoreError(f"{path}: malformed ({e})") from e
    info.check(str(path))
    return info


def parquet_files(store_dir: str | os.PathLike | Location) -> list[Location]:
    """Every Parquet file directly in a store's folder, sorted; temporary and hidden files (`.`, `_`) are left out."""
    store = Location(store_dir)
    if not store.is_dir():
        raise FeatureStoreError(f"{store}: feature store folder not found")
    return [f for f in store.files(".parquet") if not f.name.startswith((".", "_"))]


def data_files(store_dir: str | os.PathLike | Location) -> list[Location]:
    """The store's data: the part files its writers made (`part-*.parquet`), sorted. Any other Parquet file in the
    folder is not data (`foreign_data_files`; `FeatureStore.files` warns about them, naming them)."""
    return [f for f in parquet_files(store_dir) if f.name.startswith(PART_PREFIX)]


def part_files(store_dir: str | os.PathLike) -> list[Path]:
    """`data_files` of a store on a local disk, as paths (what the writers, local for now, work with)."""
    return [f.path for f in data_files(store_dir)]


def read_part(file: Location, **options) -> pa.Table:
    """One Parquet file of a store, wherever it is; `options` as for `pq.read_table` (columns, filters)."""
    filesystem, path = file.filesystem_path()
    return pq.read_table(path, filesystem=filesystem, **options)


def read_table(store_dir: str | os.PathLike | Location, splits: Iterable[str] | None = None) -> pa.Table:
    files = data_files(store_dir)
    if not files:
        raise FeatureStoreError(f"{store_dir}: holds no Parquet data files")
    tables = []
    for f in files:
        try:
            tables.append(read_part(f))
        except Exception as e:  # noqa: BLE001 - re-raised with the file named
            raise FeatureStoreError(f"{f}: unreadable Parquet ({e})") from e
    table = pa.concat_tables(tables, promote_options="permissive")
    if splits is not None:
        wanted = pa.array(list(splits), pa.string())
        table = table.filter(pa.compute.is_in(table.column("split"), value_set=wanted))
    return table


def check_dims(videos: Iterable[VideoFeatures], dims: dict[str, int], where: str) -> None:
    """Every video's feature widths equal features.json's dims."""
    for v in videos:
        for m in MODALITIES:
            d = v.features[m].shape[1] if v.num_steps else dims[m]
            if d != dims[m]:
                raise FeatureStoreError(f"{where}: video {v.video_id!r} has {m} dim {d}, features.json says {dims[m]}")


def load_videos(store_dir: str | os.PathLike | Location, splits: Iterable[str] | None = None) -> list[VideoFeatures]:
    """Read every video of the store (optionally of some splits), checking dims against features.json."""
    dims = read_info(store_dir).dims
    videos = table_to_videos(read_table(store_dir, splits))
    check_dims(videos, dims, str(store_dir))
    return videos


def read_errors(store_dir: str | os.PathLike | Location) -> pa.Table:
    folder = Location(store_dir) / ERRORS_DIR
    files = [f for f in folder.files(".parquet") if not f.name.startswith((".", "_"))]
    if not files:
        return ERRORS_SCHEMA.empty_table()
    return pa.concat_tables([read_part(f) for f in files])


def done_video_ids(store_dir: str | os.PathLike | Location) -> set[str]:
    """Ids already written to the store (for resuming an extraction)."""
    ids: set[str] = set()
    if not Location(store_dir).is_dir():
        return ids
    for f in data_files(store_dir):
        ids.update(read_part(f, columns=["video_id"]).column("video_id").to_pylist())
    return ids


def encoded_window(info: StoreInfo) -> int | None:
    """The sequence-former window whose kept steps alone were encoded (`asrn extract --encode-kept-steps`), else
    None (every step encoded; also stores from before the option)."""
    value = info.extra.get(ENCODED_STEPS_KEY, ALL_STEPS)
    if value == ALL_STEPS:
        return None
    found = re.fullmatch(r"window-(\d+) kept", str(value))
    if not found:
        raise FeatureStoreError(f"features.json: extra.{ENCODED_STEPS_KEY} = {value!r} is neither {ALL_STEPS!r} "
                                f"nor 'window-<w> kept'")
    return int(found.group(1))


def check_encoded_window(info: StoreInfo, window: int, where: str) -> None:
    """Refuse to form sequences with `window` from a store that encoded only another window's kept steps: the
    other steps' features are zeros, and such a window would pick some of them."""
    encoded = encoded_window(info)
    if encoded is not None and window != encoded:
        raise FeatureStoreError(f"{where}: the store encoded only the steps a window-{encoded} sequence former keeps "
                                f"(asrn extract --encode-kept-steps); forming sequences with window {window} would "
                                f"read zero features. Use window {encoded}, or re-extract without the option")


def input_statistics(videos: Iterable[VideoFeatures],
                     window: int | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-dimension (mean, std) of each modality over the steps where it is present, for `ASRN.set_input_stats`.

    Streams: `videos` may be a generator over a large store. A constant dimension gets std 1. `window`: only the
    steps that window's sequence former keeps count (a store that encoded only those; the others hold zeros).
    """
    from asrn.sequence import select_steps  # asrn.sequence imports this module

    sums: dict[str, np.ndarray] = {}
    squares: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for video in videos:
        present = video.present()
        if window is not None:
            kept = np.zeros(video.num_steps, bool)
            kept[select_steps(present, window)] = True
            present = {m: p & kept for m, p in present.items()}
        for m, features in video.features.items():
            x = np.asarray(features, np.float64)[present[m]]  # (n, D)
            sums[m] = sums.get(m, 0.0) + x.sum(0)
            squares[m] = squares.get(m, 0.0) + (x * x).sum(0)
            counts[m] = counts.get(m, 0) + x.shape[0]
    stats = {}
    for m, total in sums.items():
        n = max(counts[m], 1)
        mean = total / n
        std = np.sqrt(np.maximum(squares[m] / n - mean * mean, 0.0))
        stats[m] = (mean.astype(np.float32), np.where(std > 1e-6, std, 1.0).astype(np.float32))
    return stats


def feature_statistics(store_dir: str | os.PathLike | Location,
                       split: str = "train") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`input_statistics` of one split of a store, streaming the part files one at a time (over the encoded steps
    only, when features.json says that only some were encoded)."""
    window = encoded_window(read_info(store_dir)) if (Location(store_dir) / INFO_FILE).is_file() else None
    return input_statistics((video for f in data_files(store_dir)
                             for video in table_to_videos(read_part(f, filters=[("split", "=", split)]))), window)


INPUT_STATS_KEY = "input_stats"  # StoreInfo.extra[INPUT_STATS_KEY]: the train split's statistics, cached


def split_fingerprint(store_dir: str | os.PathLike | Location, split: str = "train") -> dict:
    """What cached statistics were computed over: the split's video count and a sha256 of its sorted video ids.

    A store whose split changed (rows moved between splits, videos added by a resumed extract) has another one.
    """
    ids: list[str] = []
    for f in data_files(store_dir):
        table = read_part(f, columns=["video_id"], filters=[("split", "=", split)])
        ids += table.column("video_id").to_pylist()
    digest = hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()
    return {"split": split, "num_videos": len(ids), "video_ids_sha256": digest}


def input_stats_record(store_dir: str | os.PathLike | Location, split: str = "train") -> dict:
    """The split's `feature_statistics` with its `split_fingerprint`, as JSON for features.json."""
    stats = feature_statistics(store_dir, split)
    return {**split_fingerprint(store_dir, split),
            "stats": {m: {"mean": mean.tolist(), "std": std.tolist()} for m, (mean, std) in sorted(stats.items())}}


def cached_input_statistics(store_dir: str | os.PathLike | Location, info: StoreInfo | None = None,
                            split: str = "train") -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    """The statistics cached in features.json when they were computed over the split as it is now, else None."""
    info = info or read_info(store_dir)
    record = info.extra.get(INPUT_STATS_KEY)
    if not isinstance(record, dict) or record.get("split") != split:
        return None
    fingerprint = split_fingerprint(store_dir, split)
    if any(record.get(k) != v for k, v in fingerprint.items()):
        return None
    try:
        stats = {m: (np.asarray(s["mean"], np.float32), np.asarray(s["std"], np.float32))
                 for m, s in record["stats"].items()}
    except (KeyError, TypeError, ValueError):
        return None
    shapes_ok = set(stats) == set(info.dims) and all(
        mean.shape == std.shape == (info.dims[m],) for m, (mean, std) in stats.items())
    return stats if shapes_ok else None


def train_input_statistics(store_dir: str | os.PathLike | Location,
                           info: StoreInfo | None = None) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], bool]:
    """The train split's input statistics and whether they came from features.json (else computed now)."""
    cached = cached_input_statistics(store_dir, info, "train")
    if cached is not None:
        return cached, True
    return feature_statistics(store_dir, "train"), False


RESIDENT_BYTES_PER_VALUE = 4  # a worker collates float16 features into float32 tensors (asrn.shards)


class StoreWarning(UserWarning):
    """A file in a store's folder that is not the store's: named once, then left alone."""


class FeatureStore:
    """One opened feature store, a local folder or a URI: its part files, info, schema version, optional columns,
    splits and counts, cached train statistics, and the memory its splits take resident on a training worker.

    Every command that reads a store opens one, so all read it the same way (the module functions above are its
    parts, shared with the writers). What it reads is cached on the object: open one per process; a Ray worker
    opens its own by URI.
    """

    def __init__(self, where: str | os.PathLike | Location, info: StoreInfo | None = None, warn: bool = True):
        self.location = Location(where)
        self.warn = warn  # name foreign Parquet files (the driver does; the workers open quietly)
        self._files: list[Location] | None = None
        self._info = info  # features.json, when the opener has read it already

    def __str__(self) -> str:
        return str(self.location)

    def __repr__(self) -> str:
        return f"FeatureStore({self.location.text!r})"

    @property
    def files(self) -> list[Location]:
        """The part files (`part-*.parquet`), sorted; any other Parquet file there is named in one warning."""
        if self._files is None:
            found = parquet_files(self.location)
            self._files = [f for f in found if f.name.startswith(PART_PREFIX)]
            foreign = [f.name for f in found if not f.name.startswith(PART_PREFIX)]
            if foreign and self.warn:
                warnings.warn(f"{self}: ignoring {', '.join(foreign)}: not part of the store (its data are the "
                              f"{PART_PREFIX}*.parquet files that asrn extract wrote)", StoreWarning, stacklevel=2)
        return self._files

    @property
    def info(self) -> StoreInfo:
        if self._info is None:
            self._info = read_info(self.location)
        return self._info

    @property
    def version(self) -> int:
        return self.info.version

    def absent_columns(self) -> dict[str, list[Location]]:
        """Optional column -> the part files written before it (they read it as OPTIONAL_COLUMNS says); schemas only."""
        absent: dict[str, list[Location]] = {}
        for f in self.files:
            filesystem, path = f.filesystem_path()
            names = pq.read_schema(path, filesystem=filesystem).names
            for column in OPTIONAL_COLUMNS:
                if column not in names:
                    absent.setdefault(column, []).append(f)
        return absent

    def read(self, file: Location, **options) -> pa.Table:
        """One part file; `options` as for `pq.read_table` (columns, filters)."""
        return read_part(file, **options)

    def videos(self, splits: Iterable[str] | None = None) -> list[VideoFeatures]:
        """Every video of the store (or of `splits`), dims checked against features.json."""
        if not self.files:
            raise FeatureStoreError(f"{self}: holds no {PART_PREFIX}*.parquet data files")
        filters = None if splits is None else [("split", "in", list(splits))]
        tables = [self.read(f, filters=filters) for f in self.files]
        videos = table_to_videos(pa.concat_tables(tables, promote_options="permissive"))
        check_dims(videos, self.info.dims, str(self))
        return videos

    def iter_videos(self, splits: Iterable[str]) -> Iterator[list[VideoFeatures]]:
        """The videos of `splits`, one part file at a time: what a reader holds is a part, not the store."""
        for f in self.files:
            videos = table_to_videos(self.read(f, filters=[("split", "in", list(splits))]))
            if videos:
                check_dims(videos, self.info.dims, str(f))
                yield videos

    def split_ids(self, split: str) -> list[str]:
        """The sorted video ids of `split`, reading only the video_id and split columns."""
        return sorted(i for f in self.files for i in self.read(f, columns=["video_id"], filters=[("split", "=", split)])
                      .column("video_id").to_pylist())

    def check(self, say: Callable[[str], None] | None = None, every: float = 5.0) -> dict[str, int]:
        """Refuse a store that training cannot use (naming file, video and key); return the videos per split.

        Reads only the schema, the video_id/split/labels columns and the first row of each part file. `say` (e.g.
        print) hears how far it has got, at most every `every` seconds.
        """
        info, last = self.info, time.monotonic()
        if not self.files:
            raise FeatureStoreError(f"{self}: holds no {PART_PREFIX}*.parquet data files")
        counts = dict.fromkeys(SPLITS, 0)
        seen: dict[str, Location] = {}
        for i, path in enumerate(self.files, 1):
            self._check_part(path, counts, info, seen)
            if say and i < len(self.files) and time.monotonic() - last >= every:
                say(f"store {self}: checked {i}/{len(self.files)} part files ({len(seen)} videos so far)")
                last = time.monotonic()
        return counts

    def _check_part(self, path: Location, counts: dict[str, int], info: StoreInfo, seen: dict[str, Location]) -> None:
        """Check one part file's columns, splits, labels and first row's dims; add its videos to `counts` and `seen`
        (video_id -> file), refusing a video id already seen, in this file or another, in any split."""
        from asrn.labels import check_label

        filesystem, where = path.filesystem_path()
        names = pq.read_schema(where, filesystem=filesystem).names
        missing = [c for c in required_columns() if c not in names]
        if missing:
            raise FeatureStoreError(f"{path}: lacks column(s) {', '.join(missing)}")
        table = self.read(path, columns=["video_id", "split", "labels"])
        for video_id, split, labels in zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True):
            if split not in counts:
                raise FeatureStoreError(f"{path}: video {video_id!r} has split {split!r}, expected one of "
                                        f"{', '.join(SPLITS)}")
            if video_id in seen:
                again = "twice in this file" if seen[video_id] == path else f"also in {seen[video_id]}"
                raise FeatureStoreError(f"{path}: video {video_id!r} (split {split}) is {again}; a video must be in "
                                        "the store once, in one split (remove one of its rows)")
            seen[video_id] = path
            counts[split] += 1
            for name in labels or []:
                try:
                    check_label(name)
                except ValueError as e:
                    raise type(e)(f"{path}: video {video_id!r}: {e}") from e
        first = next(pq.ParquetFile(where, filesystem=filesystem).iter_batches(batch_size=1), None)
        if first is not None and first.num_rows:
            check_dims(table_to_videos(pa.Table.from_batches([first])), info.dims, str(path))

    def train_statistics(self) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], bool]:
        """The train split's input statistics and whether they came from features.json (else computed now)."""
        return train_input_statistics(self.location, self.info)

    def step_counts(self, split: str) -> np.ndarray:
        """(N,) time steps of each video of `split`, from the timestamp column alone (no features read)."""
        lengths = [pc.list_value_length(self.read(f, columns=["timestamp"], filters=[("split", "=", split)])
                                                .column("timestamp")).to_numpy(zero_copy_only=False)
                   for f in self.files]
        return np.concatenate(lengths).astype(np.int64) if lengths else np.zeros(0, np.int64)

    def resident_bytes(self, world: int) -> int:
        """What one of `world` training workers holds when it reads the store directly (asrn.shards): its
        ceil(N_train / world) train videos and all of val, float32, each split padded to its longest video (an upper
        bound: the sequence former keeps fewer steps), with the per-step masks."""
        per_step = sum(self.info.dims.values()) * RESIDENT_BYTES_PER_VALUE + len(MODALITIES) + 1  # features, masks
        total = 0
        for split, videos in (("train", lambda n: -(-n // world)), ("val", lambda n: n)):
            steps = self.step_counts(split)
            if steps.size:
                total += videos(steps.size) * int(steps.max()) * per_step  # (N, T_max, sum D) per split
        return total


# ---------------------------------------------------------------- writers: ownership, lock, staging, relabeling


def owned_files(store_dir: str | os.PathLike) -> list[Path]:
    """The files of a folder that the store format owns: part files, the errors table's files, features.json."""
    store = Path(store_dir)
    files = sorted(store.glob(f"{PART_PREFIX}*.parquet")) + sorted((store / ERRORS_DIR).glob(f"{PART_PREFIX}*.parquet"))
    return files + ([store / INFO_FILE] if (store / INFO_FILE).is_file() else [])


def foreign_data_files(store_dir: str | os.PathLike | Location) -> list[Location]:
    """Parquet files in a store's folder that no store writer made (not `part-*`): never read as data."""
    if not Location(store_dir).is_dir():
        return []
    return [f for f in parquet_files(store_dir) if not f.name.startswith(PART_PREFIX)]


def _read_lock(lock: Location) -> dict:
    try:
        holder = json.loads(lock.read_text())
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _is_stale(holder: dict) -> bool:
    """A lock of a process that is gone: same host, dead pid (another host's lock is never judged from here)."""
    pid = holder.get("pid")
    return holder.get("host") == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid)


def _try_lock(lock: Location, holder: dict) -> bool:
    """Create the lock file with `holder` in it, only if it does not exist.

    Local: atomic (link(2) is exclusive). Object store: no exclusive create through pyarrow, so the object is
    written only when absent and read back; two writers starting within the same moment may both pass.
    """
    if not lock.is_local:
        if lock.exists():
            return False
        write_json(lock, holder)
        return _read_lock(lock).get("token") == holder["token"]
    path = lock.path
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-lock")
    write_json(tmp, holder)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def _take_over(lock: Location, stale: dict) -> None:
    """Remove a stale lock; if another writer replaced it meanwhile, put theirs back (local disks)."""
    if not lock.is_local:
        if _read_lock(lock).get("token") == stale.get("token"):
            lock.delete()
        return
    path = lock.path
    moved = path.with_name(f".tmp-{uuid.uuid4().hex}-stale-lock")
    try:
        os.rename(path, moved)
    except FileNotFoundError:  # another writer took it over first
        return
    if _read_lock(Location(moved)).get("token") != stale.get("token"):
        try:
            os.link(moved, path)
        except FileExistsError:
            pass
    moved.unlink(missing_ok=True)


@contextmanager
def writer_lock(store_dir: str | os.PathLike | Location) -> Iterator[Location]:
    """Hold DIR/.lock while writing a store: a second writer is refused, naming the holder (pid, host, since);
    a stale lock (its pid dead on this host) is taken over. On an object store the lock is advisory (`_try_lock`)."""
    lock = Location(store_dir) / LOCK_FILE
    lock.parent.mkdir(parents=True, exist_ok=True)
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "token": uuid.uuid4().hex,
              "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if not _try_lock(lock, holder):
        other = _read_lock(lock)
        if _is_stale(other):
            _take_over(lock, other)
        if not _try_lock(lock, holder):
            other = _read_lock(lock) or other
            who = (f"pid {other.get('pid')} on {other.get('host')} since {other.get('since')}" if other
                   else "an unreadable lock file")
            raise StoreLockedError(f"{lock}: another writer holds this feature store ({who}); wait for it to "
                                   f"finish, or delete {lock} if no such process is running")
    try:
        yield lock
    finally:
        if _read_lock(lock).get("token") == holder["token"]:
            lock.delete()


def staging_dir(store_dir: str | os.PathLike) -> Path:
    """Where `asrn extract --overwrite` builds the new store, beside the old one."""
    return Path(store_dir) / STAGING_DIR


def commit_staging(store_dir: str | os.PathLike) -> list[Path]:
    """Swap the whole store built in DIR/_staging in for DIR's own files; return the new store's files.

    The list of staged files is written first, so a crash half-way through is finished by `recover_staging`.
    """
    staging = staging_dir(store_dir)
    names = [str(p.relative_to(staging)) for p in owned_files(staging)]
    write_json(staging / STAGED_FILES, names)
    return _finish_swap(Path(store_dir))


def recover_staging(store_dir: str | os.PathLike | Location) -> str | None:
    """After a crash: finish a swap whose new store was complete, or drop an unfinished one (the old store stays).
    Only local stores are staged (`asrn extract --overwrite`)."""
    if not Location(store_dir).is_local:
        return None
    store_dir = Location(store_dir).path
    staging = staging_dir(store_dir)
    if not staging.is_dir():
        return None
    if (staging / STAGED_FILES).is_file():
        _finish_swap(Path(store_dir))
        return "finished replacing the store with a complete one left by an interrupted --overwrite"
    shutil.rmtree(staging)
    return "dropped the unfinished new store of an interrupted --overwrite; the store there is unchanged"


def _finish_swap(store: Path) -> list[Path]:
    """Idempotent: remove the owned files that the new store lacks, move the new ones in (features.json last)."""
    staging = staging_dir(store)
    names = json.loads((staging / STAGED_FILES).read_text())
    for path in owned_files(store):
        if str(path.relative_to(store)) not in names:
            path.unlink()
    for name in sorted(names, key=lambda n: n == INFO_FILE):
        if (staging / name).exists():
            (store / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / name, store / name)
    shutil.rmtree(staging)
    return [store / name for name in names]


def stored_splits_labels(store_dir: str | os.PathLike | Location) -> dict[str, tuple[str, list[str]]]:
    """video_id -> (split, labels) as stored, reading only those columns."""
    found: dict[str, tuple[str, list[str]]] = {}
    for f in data_files(store_dir):
        table = read_part(f, columns=["video_id", "split", "labels"])
        for video_id, split, labels in zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True):
            found[video_id] = (split, list(labels or []))
    return found


def update_splits_labels(store_dir: str | os.PathLike | Location,
                         changes: dict[str, tuple[str, list[str]]]) -> list[Location]:
    """Set the split and labels of stored videos (features untouched), rewriting each affected part file atomically."""
    rewritten = []
    for part in data_files(store_dir):
        table = read_part(part)
        ids = table.column("video_id").to_pylist()
        if not any(i in changes for i in ids):
            continue
        rows = zip(ids, table.column("split").to_pylist(), table.column("labels").to_pylist(), strict=True)
        new = [changes.get(i, (split, labels)) for i, split, labels in rows]
        for name, values in (("split", [s for s, _ in new]), ("labels", [list(x) for _, x in new])):
            field_ = table.schema.field(name)
            table = table.set_column(table.schema.get_field_index(name), field_, pa.array(values, field_.type))
        _atomic_write_table(table, part)
        rewritten.append(part)
    return rewritten
