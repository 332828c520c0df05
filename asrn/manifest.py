"""Read and validate `manifest.csv` (video_id,path,split,labels[,boxes]) before any work starts."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from asrn.errors import AsrnError
from asrn.labels import UnknownLabelError, parse_labels

REQUIRED_COLUMNS: tuple[str, ...] = ("video_id", "path", "split", "labels")
SPLITS: tuple[str, ...] = ("train", "val", "test")


class ManifestError(AsrnError):
    """A malformed manifest; the message lists every problem with its line number."""


@dataclass(frozen=True)
class ManifestEntry:
    video_id: str
    path: str  # absolute local path or URI
    split: str
    labels: tuple[str, ...]
    boxes: str | None  # absolute local path or URI of the tracks JSON, if given
    line: int  # line number in the CSV (header is line 1)


def is_uri(path: str) -> bool:
    return "://" in path


def resolve_path(path: str, base_dir: Path) -> str:
    """Paths are relative to the manifest's folder, absolute, or URIs pyarrow can open."""
    if is_uri(path) or os.path.isabs(path):
        return path
    return str((base_dir / path).resolve())


def read_manifest(path: str | os.PathLike) -> list[ManifestEntry]:
    """Parse the CSV and raise one ManifestError listing every bad line, or return the entries."""
    manifest_path = Path(path)
    if not manifest_path.is_file():
        raise ManifestError(f"{manifest_path}: manifest not found")
    base_dir = manifest_path.resolve().parent
    problems: list[str] = []
    entries: list[ManifestEntry] = []
    with manifest_path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise ManifestError(f"{manifest_path}:1: missing column(s) {', '.join(missing)} "
                                f"(header must hold {','.join(REQUIRED_COLUMNS)}[,boxes])")
        first_line: dict[str, int] = {}
        for row in reader:
            line = reader.line_num
            where = f"{manifest_path}:{line}"
            video_id = (row.get("video_id") or "").strip()
            video_path = (row.get("path") or "").strip()
            split = (row.get("split") or "").strip()
            labels_text = (row.get("labels") or "").strip()
            boxes = (row.get("boxes") or "").strip() or None
            if None in row:  # more fields than the header has
                problems.append(f"{where}: {len(header) + len(row[None])} fields, header has {len(header)}")
                continue
            if not video_id:
                problems.append(f"{where}: empty video_id")
            elif video_id in first_line:
                problems.append(f"{where}: duplicate video_id {video_id!r} (first on line {first_line[video_id]})")
            else:
                first_line[video_id] = line
            if not video_path:
                problems.append(f"{where}: empty path for video {video_id!r}")
            if split not in SPLITS:
                problems.append(f"{where}: bad split {split!r} for video {video_id!r} "
                                f"(expected {', '.join(SPLITS)})")
            labels: tuple[str, ...] = ()
            try:
                labels = parse_labels(labels_text)
            except UnknownLabelError as e:
                problems.append(f"{where}: {e}")
            else:
                if not labels:
                    problems.append(f"{where}: no labels for video {video_id!r}")
            entries.append(ManifestEntry(
                video_id=video_id,
                path=resolve_path(video_path, base_dir) if video_path else "",
                split=split,
                labels=labels,
                boxes=resolve_path(boxes, base_dir) if boxes else None,
                line=line,
            ))
    if problems:
        shown = problems[:50]
        more = f"\n... and {len(problems) - 50} more" if len(problems) > 50 else ""
        raise ManifestError(f"{len(problems)} problem(s) in {manifest_path}:\n" + "\n".join(shown) + more)
    if not entries:
        raise ManifestError(f"{manifest_path}: no videos listed")
    return entries


def write_manifest(path: str | os.PathLike, rows: list[dict[str, str]]) -> None:
    """Write rows (video_id, path, split, labels as `a|b`, optional boxes) as a manifest CSV."""
    columns = list(REQUIRED_COLUMNS) + (["boxes"] if any(r.get("boxes") for r in rows) else [])
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
