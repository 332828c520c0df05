"""Read and validate `manifest.csv` (video_id,path,split,labels[,boxes]) before any work starts.

The manifest may be a local file or a URI (`s3://bucket/videos/manifest.csv`); its relative paths name files
beside it, on the same filesystem, and come out as absolute paths or URIs that any Ray worker can open.
"""

from __future__ import annotations

import csv
import io
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path

from asrn.errors import AsrnError
from asrn.labels import UnknownLabelError, parse_labels
from asrn.locations import Location

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


def resolve_path(path: str, base_dir: Path | Location) -> str:
    """Paths are relative to the manifest's folder, absolute, or URIs pyarrow can open.

    A relative path may not climb out of the manifest's folder (`../../etc/passwd`): ManifestError's caller
    reports it; write it as an absolute path if that is really meant. Beside a manifest given by URI, a relative
    path becomes a URI under the manifest's folder.
    """
    if is_uri(path) or os.path.isabs(path):
        return path
    if isinstance(base_dir, Location) and not base_dir.is_local:  # beside a manifest on an object store
        inside = posixpath.normpath(path)
        if inside == ".." or inside.startswith("../"):
            raise ValueError(f"relative path {path!r} leaves the manifest's folder; give a full URI")
        return str(base_dir / inside)
    base_dir = Path(base_dir)
    resolved = (base_dir / path).resolve()
    if not resolved.is_relative_to(base_dir):
        raise ValueError(f"relative path {path!r} leaves the manifest's folder; give an absolute path or a URI")
    return str(resolved)


def video_id_problem(video_id: str) -> str | None:
    """Why `video_id` cannot name an output folder or file (None when it can): ids become file names."""
    if not video_id:
        return "empty video_id"
    if video_id in (".", "..") or any(c in video_id for c in "/\\") or not video_id.isprintable():
        return f"video_id {video_id!r} holds a path separator, '..' or a control character"
    return None


def _read_text(manifest_path: Location) -> str:
    """The file as text: UTF-8 with or without a BOM (Excel's "CSV UTF-8"); other encodings are named by line."""
    data = manifest_path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ManifestError(f"{manifest_path}:{line}: not UTF-8 (byte {data[e.start]:#04x} at offset {e.start}); "
                            "save the manifest as UTF-8") from None


def _check_header(manifest_path: Location, header: list[str], labels_required: bool = True) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in header and (labels_required or c != "labels")]
    if missing:
        raise ManifestError(f"{manifest_path}:1: missing column(s) {', '.join(missing)} "
                            f"(header must hold {','.join(REQUIRED_COLUMNS)}[,boxes])")
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise ManifestError(f"{manifest_path}:1: column(s) {', '.join(repeated)} appear more than once")


def _parse_row(row: dict, where: str, base_dir: Path | Location, problems: list[str],
               labels_required: bool = True) -> ManifestEntry:
    """One row as an entry; each problem found is appended to `problems`, naming `where`."""
    video_id, video_path, split, labels_text, boxes = (
        (row.get(k) or "").strip() for k in ("video_id", "path", "split", "labels", "boxes"))
    if (problem := video_id_problem(video_id)) is not None:
        problems.append(f"{where}: {problem}")
    if split not in SPLITS:
        problems.append(f"{where}: bad split {split!r} for video {video_id!r} (expected {', '.join(SPLITS)})")
    labels: tuple[str, ...] = ()
    try:
        labels = parse_labels(labels_text)
    except UnknownLabelError as e:
        problems.append(f"{where}: {e}")
    else:
        if not labels and labels_required:
            problems.append(f"{where}: no labels for video {video_id!r}")
    resolved = {}
    for column, value in (("path", video_path), ("boxes", boxes)):
        try:
            resolved[column] = resolve_path(value, base_dir) if value else None
        except ValueError as e:
            problems.append(f"{where}: {column} of video {video_id!r}: {e}")
    if not video_path:
        problems.append(f"{where}: empty path for video {video_id!r}")
    return ManifestEntry(video_id=video_id, path=resolved.get("path") or "", split=split, labels=labels,
                         boxes=resolved.get("boxes"), line=int(where.rsplit(":", 1)[1]))


def read_manifest(path: str | os.PathLike | Location, labels_required: bool = True) -> list[ManifestEntry]:
    """Parse the CSV (a local file or a URI) and raise one ManifestError listing every bad line, or return the
    entries. `labels_required=False` (scoring unlabelled videos): the labels column and its values may be absent;
    labels given are still checked."""
    manifest_path = Location(path)
    if not manifest_path.is_file():
        raise ManifestError(f"{manifest_path}: manifest not found")
    base_dir = manifest_path.path.resolve().parent if manifest_path.is_local else manifest_path.parent
    text = _read_text(manifest_path)
    if "\x00" in text:  # Python 3.10's csv module stops at a NUL; 3.11's reads it: refuse it the same way on both
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise ManifestError(f"{manifest_path}:{line}: a NUL byte (a control character is not allowed)")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    _check_header(manifest_path, header, labels_required)
    problems: list[str] = []
    entries: list[ManifestEntry] = []
    first_line: dict[str, int] = {}
    for row in reader:
        where = f"{manifest_path}:{reader.line_num}"
        if None in row:  # more fields than the header has
            problems.append(f"{where}: {len(header) + len(row[None])} fields, header has {len(header)}")
            continue
        entry = _parse_row(row, where, base_dir, problems, labels_required)
        if entry.video_id in first_line:
            problems.append(f"{where}: duplicate video_id {entry.video_id!r} (first on line "
                            f"{first_line[entry.video_id]})")
        first_line.setdefault(entry.video_id, entry.line)
        entries.append(entry)
    if problems:
        more = f"\n... and {len(problems) - 50} more" if len(problems) > 50 else ""
        raise ManifestError(f"{len(problems)} problem(s) in {manifest_path}:\n" + "\n".join(problems[:50]) + more)
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
