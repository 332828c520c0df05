"""Link per-step detections into tracks and carry boxes across short misses (GitHub issue 17).

On real, small, compressed footage a cascade misses a face on a step now and then (a head turn, motion blur,
the face half out of the picture) while it is plainly still there. Detections are linked over time by IoU
with each track's constant-velocity prediction; a track with fewer than `min_hits` detections is dropped as a
false positive; inside a kept track, gaps of up to `max_gap` steps are bridged by linear interpolation, and
its ends are carried on for up to `max_gap` steps at its last velocity while the box stays in the picture.
Bridged steps are reported separately from detected ones, so `has_face`/`has_body` stay true detections.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass(frozen=True)
class TrackingSettings:
    """How detections become tracks; recorded in features.json with the detector's settings."""

    min_iou: float = 0.2  # a detection joins a track when it overlaps the track's prediction at least this much
    max_gap: int = 3  # steps a box is carried without a detection (interior gaps and track ends)
    min_hits: int = 2  # detections a track needs to be kept (fewer: a false positive)
    min_visible: float = 0.5  # a carried-on end stops once less than this fraction of its box is in the frame

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Track:
    """One object over time: the steps where it was detected and its box (x1 y1 x2 y2) at each."""

    steps: list[int] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)

    def velocity(self, end: bool = True) -> np.ndarray:
        """(4,) box change per step between the last (or first) two detections; zero with one detection."""
        if len(self.steps) < 2:
            return np.zeros(4, np.float32)
        i, j = (-2, -1) if end else (0, 1)
        return (self.boxes[j] - self.boxes[i]) / (self.steps[j] - self.steps[i])

    def predict(self, step: int) -> np.ndarray:
        """The box expected at `step` (after the last detection) at constant velocity."""
        return self.boxes[-1] + self.velocity() * (step - self.steps[-1])


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4), (M, 4) x1 y1 x2 y2 -> (N, M) intersection over union."""
    a, b = np.asarray(a, np.float32).reshape(-1, 1, 4), np.asarray(b, np.float32).reshape(1, -1, 4)
    sides = np.clip(np.minimum(a[..., 2:], b[..., 2:]) - np.maximum(a[..., :2], b[..., :2]), 0, None)
    inter = sides[..., 0] * sides[..., 1]
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-6)


def link(candidates: list[np.ndarray], settings: TrackingSettings = TrackingSettings()) -> list[Track]:
    """Greedy IoU association, step by step: each detection joins the best-overlapping live track, or starts one.

    A track is live while its last detection is at most max_gap + 1 steps back.
    """
    tracks: list[Track] = []
    for step, boxes in enumerate(candidates):
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        live = [t for t in tracks if step - t.steps[-1] <= settings.max_gap + 1]
        taken: set[int] = set()
        if live and len(boxes):
            overlap = iou_matrix(np.stack([t.predict(step) for t in live]), boxes)  # (L, K)
            for flat in np.argsort(-overlap, axis=None):
                i, k = np.unravel_index(flat, overlap.shape)
                if overlap[i, k] < settings.min_iou:
                    break
                if k in taken or live[i].steps[-1] == step:
                    continue
                live[i].steps.append(step)
                live[i].boxes.append(boxes[k])
                taken.add(int(k))
        tracks += [Track([step], [boxes[k]]) for k in range(len(boxes)) if k not in taken]
    return tracks


def _visible(box: np.ndarray, width: int, height: int) -> float:
    """Fraction of the box's area inside the frame."""
    inside = np.clip(box, 0, [width, height, width, height])
    area = max(float((box[2] - box[0]) * (box[3] - box[1])), 1e-6)
    return float(max(inside[2] - inside[0], 0) * max(inside[3] - inside[1], 0)) / area


def bridge(track: Track, num_steps: int, width: int, height: int,
           settings: TrackingSettings = TrackingSettings()) -> dict[int, np.ndarray]:
    """step -> carried box where `track` was not detected: short interior gaps and its two ends."""
    out: dict[int, np.ndarray] = {}
    for i in range(len(track.steps) - 1):
        (s0, b0), (s1, b1) = (track.steps[i], track.boxes[i]), (track.steps[i + 1], track.boxes[i + 1])
        if 1 < s1 - s0 <= settings.max_gap + 1:
            for s in range(s0 + 1, s1):
                out[s] = b0 + (b1 - b0) * (s - s0) / (s1 - s0)  # linear: constant velocity across the gap
    for end, direction in ((True, 1), (False, -1)):
        i = -1 if end else 0
        velocity = track.velocity(end)
        for k in range(1, settings.max_gap + 1):
            s = track.steps[i] + direction * k
            box = track.boxes[i] + velocity * direction * k
            if not 0 <= s < num_steps or _visible(box, width, height) < settings.min_visible:
                break
            out[s] = box
    return out


@dataclass
class TrackedBoxes:
    """The largest tracked box per step: `detected` where a kept track was detected, `bridged` where carried."""

    boxes: np.ndarray  # (T, 4) float32 x1 y1 x2 y2, NaN where neither
    detected: np.ndarray  # (T,) bool
    bridged: np.ndarray  # (T,) bool, never where detected


def track_boxes(candidates: list[np.ndarray], width: int, height: int,
                settings: TrackingSettings = TrackingSettings()) -> TrackedBoxes:
    """Per-step candidate boxes (K_t, 4) -> the largest detected box of a kept track, else the largest bridged one.

    A clip shorter than min_hits steps keeps every track (there is no time to confirm one in).
    """
    num_steps = len(candidates)
    tracks = [t for t in link(candidates, settings) if len(t.steps) >= min(settings.min_hits, num_steps)]
    detected = [[] for _ in range(num_steps)]
    bridged = [[] for _ in range(num_steps)]
    for track in tracks:
        for s, box in zip(track.steps, track.boxes, strict=True):
            detected[s].append(box)
        for s, box in bridge(track, num_steps, width, height, settings).items():
            bridged[s].append(box)
    out = TrackedBoxes(np.full((num_steps, 4), np.nan, np.float32), np.zeros(num_steps, bool),
                       np.zeros(num_steps, bool))
    for s in range(num_steps):
        for found, flags in ((detected[s], out.detected), (bridged[s], out.bridged)):
            box = _largest_in_frame(found, width, height)
            if box is not None:
                out.boxes[s], flags[s] = box, True
                break
    return out


def _largest_in_frame(boxes: list[np.ndarray], width: int, height: int) -> np.ndarray | None:
    """The largest of the boxes after clipping to the frame (paper §4.2 keeps the largest); None if none."""
    if not boxes:
        return None
    clipped = np.clip(np.stack(boxes), 0, [width, height, width, height]).astype(np.float32)
    sides = clipped[:, 2:] - clipped[:, :2]
    area = np.where((sides >= 1).all(1), sides[:, 0] * sides[:, 1], -1.0)
    return clipped[int(np.argmax(area))] if area.max() > 0 else None
