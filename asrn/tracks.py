"""Precomputed person/face boxes: the JSON file a manifest's `boxes` column points at.

Format (boxes in pixels of the source frame, x1 y1 x2 y2; `frame` is the source frame index):
  {"video_id": "v0001", "width": 320, "height": 240, "fps": 25.0,
   "frames": [{"frame": 0, "persons": [[x1, y1, x2, y2], ...], "faces": [[x1, y1, x2, y2], ...]}, ...]}
Frames not listed have no boxes. Detection picks the largest person and face per frame (paper §4.2).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from asrn.errors import AsrnError
from asrn.locations import Location


class TracksError(AsrnError):
    """A boxes JSON file that is missing or malformed; the message names the file and the frame."""


@dataclass
class Tracks:
    video_id: str
    width: int
    height: int
    fps: float
    persons: dict[int, np.ndarray] = field(default_factory=dict)  # frame -> (K, 4) float32
    faces: dict[int, np.ndarray] = field(default_factory=dict)  # frame -> (K, 4) float32

    def boxes_at(self, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """(persons (K, 4), faces (K, 4)) at a source frame; empty arrays where none."""
        empty = np.zeros((0, 4), np.float32)
        return self.persons.get(frame, empty), self.faces.get(frame, empty)

    def to_json(self) -> dict:
        frames = sorted(set(self.persons) | set(self.faces))
        return {
            "video_id": self.video_id, "width": self.width, "height": self.height, "fps": self.fps,
            "frames": [{"frame": int(i),
                        "persons": np.round(self.persons.get(i, np.zeros((0, 4))), 1).tolist(),
                        "faces": np.round(self.faces.get(i, np.zeros((0, 4))), 1).tolist()} for i in frames],
        }


def _boxes(value, where: str) -> np.ndarray:
    array = np.asarray(value, dtype=np.float32).reshape(-1, 4) if value else np.zeros((0, 4), np.float32)
    if array.size and (not np.isfinite(array).all() or (array[:, 2:] < array[:, :2]).any()):
        raise TracksError(f"{where}: boxes must be finite x1 y1 x2 y2 with x2>=x1, y2>=y1")
    return array


def load_tracks(path: str | os.PathLike | Location) -> Tracks:
    """Read a boxes file from a local path or a URI (the Ray task that needs it opens it by itself)."""
    path = Location(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise TracksError(f"{path}: boxes file not found") from e
    except json.JSONDecodeError as e:
        raise TracksError(f"{path}: not valid JSON ({e})") from e
    try:
        tracks = Tracks(str(raw.get("video_id", "")), int(raw["width"]), int(raw["height"]), float(raw["fps"]))
        for entry in raw["frames"]:
            frame = int(entry["frame"])
            where = f"{path}: frame {frame}"
            tracks.persons[frame] = _boxes(entry.get("persons"), where)
            tracks.faces[frame] = _boxes(entry.get("faces"), where)
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, TracksError):
            raise
        raise TracksError(f"{path}: malformed boxes file ({type(e).__name__}: {e})") from e
    return tracks


def save_tracks(tracks: Tracks, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(tracks.to_json()))
    return path
