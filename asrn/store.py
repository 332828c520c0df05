"""The feature store: Parquet files of one row per video, `features.json`, and an `errors/` table.

Layout of a store folder DIR (DESIGN.md "Feature store"):
  DIR/part-*.parquet   one row per video: video_id, split, labels, timestamp (T,),
                       rgb/motion/body/face (T, D), has_body/has_face (T,) detected,
                       body_tracked/face_tracked (T,) carried across a miss by tracking
  DIR/features.json    StoreInfo: preset, encoders, dims, fps, weights provenance, detector
                       (extra["detection"]: each detector's settings and tracking gap limit)
  DIR/errors/*.parquet video_id, path, stage, error, message
Every file is written to a temporary name and renamed, so a crash never leaves a half-written file
that a reader would take for data (readers ignore names starting with `.` or `_`).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from asrn.errors import AsrnError

MODALITIES: tuple[str, ...] = ("rgb", "motion", "body", "face")
INFO_FILE = "features.json"
ERRORS_DIR = "errors"
STORE_VERSION = 1


class FeatureStoreError(AsrnError):
    """A feature store that is missing, malformed or inconsistent; the message names file and key."""


@dataclass
class StoreInfo:
    """What `features.json` holds: enough to check that a checkpoint and a store agree."""

    preset: str
    dims: dict[str, int]  # modality -> D
    fps: float  # sampling rate of the time steps
    encoders: dict[str, str] = field(default_factory=dict)  # modality -> encoder name
    weights: dict[str, str] = field(default_factory=dict)  # modality -> pretrained:<name> | sha256:<hex> | random-init
    detector: str = ""  # which detector produced the boxes
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

    def __post_init__(self) -> None:
        none = np.zeros(len(self.has_body), bool)
        self.body_tracked = none.copy() if self.body_tracked is None else np.asarray(self.body_tracked, bool)
        self.face_tracked = none.copy() if self.face_tracked is None else np.asarray(self.face_tracked, bool)

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
    ])


TRACKED_COLUMNS = ("body_tracked", "face_tracked")  # added later: stores written before them read as all False


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
    for name in TRACKED_COLUMNS:
        columns[name] = pa.array([np.asarray(getattr(v, name), bool) for v in videos], pa.list_(pa.bool_()))
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
    missing = [c for c in row_schema().names if c not in table.column_names and c not in TRACKED_COLUMNS]
    if missing:
        raise FeatureStoreError(f"feature table lacks column(s) {', '.join(missing)}")
    matrices = {m: _column_matrices(table.column(m), m) for m in MODALITIES}
    ids = table.column("video_id").to_pylist()
    splits = table.column("split").to_pylist()
    labels = table.column("labels").to_pylist()
    stamps = table.column("timestamp").to_pylist()
    has_body = table.column("has_body").to_pylist()
    has_face = table.column("has_face").to_pylist()
    tracked = {name: table.column(name).to_pylist() if name in table.column_names else [None] * len(ids)
               for name in TRACKED_COLUMNS}
    videos = []
    for i, video_id in enumerate(ids):
        t = len(stamps[i])
        for m in MODALITIES:
            if matrices[m][i].shape[0] != t:
                raise FeatureStoreError(f"video {video_id!r}: {m} has {matrices[m][i].shape[0]} steps, "
                                        f"timestamp has {t}")
        masks = (("has_body", has_body[i]), ("has_face", has_face[i]), *((n, tracked[n][i]) for n in TRACKED_COLUMNS))
        for name, mask in masks:
            if mask is not None and len(mask) != t:
                raise FeatureStoreError(f"video {video_id!r}: {name} has {len(mask)} steps, timestamp has {t}")
        videos.append(VideoFeatures(
            video_id=video_id, split=splits[i], labels=list(labels[i]),
            timestamp=np.asarray(stamps[i], np.float32),
            features={m: matrices[m][i] for m in MODALITIES},
            has_body=np.asarray(has_body[i], bool), has_face=np.asarray(has_face[i], bool),
            **{n: None if tracked[n][i] is None else np.asarray(tracked[n][i], bool) for n in TRACKED_COLUMNS},
        ))
    return videos


def _atomic_write_table(table: pa.Table, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{uuid.uuid4().hex}-{path.name}"
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_videos(store_dir: str | os.PathLike, videos: Sequence[VideoFeatures], name: str | None = None,
                 dtype: str = "float16") -> Path:
    """Write one Parquet part file (atomically) and return its path."""
    name = name or f"part-{uuid.uuid4().hex[:12]}"
    return _atomic_write_table(videos_to_table(videos, dtype), Path(store_dir) / f"{name}.parquet")


def write_errors(store_dir: str | os.PathLike, rows: Sequence[dict], name: str | None = None) -> Path | None:
    """Append failed videos (video_id, path, stage, error, message) to the errors table."""
    if not rows:
        return None
    table = pa.Table.from_pylist([{k: str(r.get(k, "")) for k in ERRORS_SCHEMA.names} for r in rows],
                                 schema=ERRORS_SCHEMA)
    name = name or f"part-{uuid.uuid4().hex[:12]}"
    return _atomic_write_table(table, Path(store_dir) / ERRORS_DIR / f"{name}.parquet")


def write_info(store_dir: str | os.PathLike, info: StoreInfo) -> Path:
    path = Path(store_dir) / INFO_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{INFO_FILE}")
    tmp.write_text(json.dumps(asdict(info), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def read_info(store_dir: str | os.PathLike) -> StoreInfo:
    path = Path(store_dir) / INFO_FILE
    if not path.is_file():
        raise FeatureStoreError(f"{path}: not found; is {store_dir} a feature store written by `asrn extract`?")
    try:
        raw = json.loads(path.read_text())
        info = StoreInfo(**raw)
    except (json.JSONDecodeError, TypeError) as e:
        raise FeatureStoreError(f"{path}: malformed ({e})") from e
    info.check(str(path))
    return info


def part_files(store_dir: str | os.PathLike) -> list[Path]:
    """The data files of a store, sorted; temporary and hidden files are not data."""
    store = Path(store_dir)
    if not store.is_dir():
        raise FeatureStoreError(f"{store}: feature store folder not found")
    return sorted(p for p in store.glob("*.parquet") if not p.name.startswith((".", "_")))


def read_table(store_dir: str | os.PathLike, splits: Iterable[str] | None = None) -> pa.Table:
    files = part_files(store_dir)
    if not files:
        raise FeatureStoreError(f"{store_dir}: holds no Parquet data files")
    tables = []
    for f in files:
        try:
            tables.append(pq.read_table(f))
        except Exception as e:  # noqa: BLE001 - re-raised with the file named
            raise FeatureStoreError(f"{f}: unreadable Parquet ({e})") from e
    table = pa.concat_tables(tables, promote_options="permissive")
    if splits is not None:
        wanted = pa.array(list(splits), pa.string())
        table = table.filter(pa.compute.is_in(table.column("split"), value_set=wanted))
    return table


def load_videos(store_dir: str | os.PathLike, splits: Iterable[str] | None = None) -> list[VideoFeatures]:
    """Read every video of the store (optionally of some splits), checking dims against features.json."""
    info = read_info(store_dir)
    videos = table_to_videos(read_table(store_dir, splits))
    for v in videos:
        for m in MODALITIES:
            d = v.features[m].shape[1] if v.num_steps else info.dims[m]
            if d != info.dims[m]:
                raise FeatureStoreError(f"{store_dir}: video {v.video_id!r} has {m} dim {d}, "
                                        f"features.json says {info.dims[m]}")
    return videos


def read_errors(store_dir: str | os.PathLike) -> pa.Table:
    folder = Path(store_dir) / ERRORS_DIR
    files = sorted(p for p in folder.glob("*.parquet") if not p.name.startswith((".", "_"))) if folder.is_dir() else []
    if not files:
        return ERRORS_SCHEMA.empty_table()
    return pa.concat_tables([pq.read_table(f) for f in files])


def done_video_ids(store_dir: str | os.PathLike) -> set[str]:
    """Ids already written to the store (for resuming an extraction)."""
    ids: set[str] = set()
    if not Path(store_dir).is_dir():
        return ids
    for f in part_files(store_dir):
        ids.update(pq.read_table(f, columns=["video_id"]).column("video_id").to_pylist())
    return ids


def input_statistics(videos: Iterable[VideoFeatures]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-dimension (mean, std) of each modality over the steps where it is present, for `ASRN.set_input_stats`.

    Streams: `videos` may be a generator over a large store. A constant dimension gets std 1.
    """
    sums: dict[str, np.ndarray] = {}
    squares: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for video in videos:
        present = video.present()
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


def feature_statistics(store_dir: str | os.PathLike, split: str = "train") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`input_statistics` of one split of a store, streaming the part files one at a time."""
    return input_statistics(video for f in part_files(store_dir)
                            for video in table_to_videos(pq.read_table(f, filters=[("split", "=", split)])))
