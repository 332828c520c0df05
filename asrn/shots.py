"""Shot cuts at extraction: a colour-histogram difference between consecutive sampled frames (the BDLSTM's shots).

A hard cut changes a frame's colour distribution at once; motion inside a shot (a pan, people moving) changes it
little. So each sampled step's HSV histogram is compared with the previous step's (Bhattacharyya distance, 0 for
equal histograms, 1 for disjoint ones) and a distance above `ShotSettings.threshold` marks the later step as a shot
start. Step 0 always starts a shot. The steps are those extraction already decodes (at --fps), so a cut anywhere
between two sampled steps marks the later one, which is the resolution the model sees. OpenCV only (a dependency
already); PySceneDetect's content detector does the same on every frame, at the cost of a second decode.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

DETECTOR_NAME = "hsv-histogram"
CUT_THRESHOLD = 0.4  # Bhattacharyya distance; measured at 2 fps: 0.77-0.97 at cuts between photographs, <= 0.25 in a
# fast pan (30% of the width in 1.3 s), about 0.11 in a slow one
HISTOGRAM_BINS = (16, 8, 8)  # H, S, V
HISTOGRAM_SIDE = 128  # px, long side the frames are shrunk to before the histogram (speed; colours are kept)


@dataclass(frozen=True)
class ShotSettings:
    """The cut detector's settings, recorded in features.json (extra["shots"])."""

    threshold: float = CUT_THRESHOLD
    bins: tuple[int, int, int] = HISTOGRAM_BINS
    side: int = HISTOGRAM_SIDE

    def describe(self) -> dict:
        return {"detector": DETECTOR_NAME, "metric": "bhattacharyya", "space": "hsv", "on": "sampled steps",
                **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}}


def hsv_histogram(frame: np.ndarray, settings: ShotSettings = ShotSettings()) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (bins_h * bins_s * bins_v,) float32 histogram summing to 1."""
    h, w = frame.shape[:2]
    scale = settings.side / max(h, w)
    if scale < 1.0:
        frame = cv2.resize(frame, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    hsv = cv2.cvtColor(np.ascontiguousarray(frame, np.uint8), cv2.COLOR_RGB2HSV)
    hist = cv2.calcHist([hsv], [0, 1, 2], None, list(settings.bins), [0, 180, 0, 256, 0, 256]).reshape(-1)
    return (hist / max(float(hist.sum()), 1.0)).astype(np.float32)


def histogram_distances(frames: np.ndarray, settings: ShotSettings = ShotSettings()) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB -> (T,) distance of each frame's histogram to the previous one's (0 at step 0)."""
    hists = [hsv_histogram(frame, settings) for frame in frames]
    out = np.zeros(len(hists), np.float32)
    for t in range(1, len(hists)):
        out[t] = cv2.compareHist(hists[t - 1], hists[t], cv2.HISTCMP_BHATTACHARYYA)
    return out


def detect_shot_starts(frames: np.ndarray, settings: ShotSettings = ShotSettings()) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB sampled frames -> (T,) bool: the step opens a shot (step 0 always)."""
    starts = histogram_distances(frames, settings) > settings.threshold
    if starts.size:
        starts[0] = True
    return starts


def steps_after_cuts(frame_indices: np.ndarray, cut_frames: list[int]) -> np.ndarray:
    """(T,) bool truth at the sampled steps: step t opens a shot when a cut frame lies in (frame_t-1, frame_t]
    (step 0 always), what detect_shot_starts should find for a video whose cuts are known."""
    frames = np.asarray(frame_indices, np.int64)
    cuts = np.asarray(cut_frames, np.int64)
    shot = np.searchsorted(np.sort(cuts), frames, side="right")  # (T,) cuts at or before each step's frame
    return np.concatenate([[True], shot[1:] != shot[:-1]]) if frames.size else np.zeros(0, bool)
