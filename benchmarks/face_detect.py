"""Face detection: OpenCV's Haar cascades + tracking (asrn.detect, today's) against dlib's HOG face detector.

    python benchmarks/face_detect.py [--rounds 3] [--out benchmarks/results/face_detect.json]

GitHub issue 25, point 5. Clips as in tests/test_tracking.py (the astronaut, a real photograph, filmed as 176x144
low-bitrate H.264 with blur, head turns and drifting light; and the same clip clean), sampled at 4 steps/s through
asrn.video. Sides, each followed by the same tracking (asrn.tracking.track_boxes, the default settings):
  haar           HaarFaceDetector via faces_over_time (frontal, profiles, rolled search near a recent face)
  dlib_hog       dlib.get_frontal_face_detector() on the RGB step frame, upsampled once
  haar_then_hog  Haar, and dlib's HOG on the steps where Haar found nothing (both in sequence)
Per clip and side: the fraction of steps with a face detected / detected or tracked / on the true face, and
detection + tracking time per step (wall and process CPU, one thread), in interleaved rounds; min and median.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from detect import recall  # noqa: E402
from machine import load, machine, write_results  # noqa: E402
from test_tracking import SAMPLE_FPS, astronaut_footage  # noqa: E402

from asrn.detect import HaarFaceDetector, equalized_gray, faces_over_time, tracked_frame_boxes, working_scale  # noqa: E402
from asrn.tracking import TrackingSettings  # noqa: E402
from asrn.video import decode_clip  # noqa: E402

UPSAMPLE = 1  # dlib's HOG window is 80x80: one 2x upsampling finds faces down to about 40 px


def hog_faces(hog, frames: np.ndarray) -> list[np.ndarray]:
    """(T, H, W, 3) RGB -> per step (K, 4) x1 y1 x2 y2 boxes of dlib's HOG face detector."""
    out = []
    for frame in frames:
        rects = hog(np.ascontiguousarray(frame), UPSAMPLE)
        out.append(np.array([[r.left(), r.top(), r.right(), r.bottom()] for r in rects], np.float32).reshape(-1, 4))
    return out


def haar_faces(haar: HaarFaceDetector, frames: np.ndarray, tracking: TrackingSettings) -> list[np.ndarray]:
    factor = working_scale(frames.shape[1], frames.shape[2], haar.settings.short_side)
    return faces_over_time(haar, [equalized_gray(f, factor) for f in frames], factor, tracking.max_gap)


def detect(side: str, frames: np.ndarray, haar: HaarFaceDetector, hog, tracking: TrackingSettings):
    if side == "dlib_hog":
        faces = hog_faces(hog, frames)
    else:
        faces = haar_faces(haar, frames, tracking)
        if side == "haar_then_hog":
            missed = [t for t, boxes in enumerate(faces) if not len(boxes)]
            for t, boxes in zip(missed, hog_faces(hog, frames[missed]), strict=True):
                faces[t] = boxes
    no_persons = [np.zeros((0, 4), np.float32)] * len(frames)
    return tracked_frame_boxes(no_persons, faces, frames.shape[2], frames.shape[1], tracking, person_from_face=False)


def main() -> None:
    import dlib

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "face_detect.json")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    info = machine()
    with tempfile.TemporaryDirectory(prefix="asrn-bench-face-detect-") as tmp:
        clips = {"degraded": astronaut_footage(Path(tmp) / "degraded.mp4"),
                 "clean": astronaut_footage(Path(tmp) / "clean.mp4", degrade=False)}
        decoded = {name: (decode_clip(str(path), fps=SAMPLE_FPS, flow_pairs=1, flow_side=32), faces)
                   for name, (path, faces) in clips.items()}
    haar, hog, tracking = HaarFaceDetector(), dlib.get_frontal_face_detector(), TrackingSettings()
    sides = ("haar", "dlib_hog", "haar_then_hog")
    results: dict = {name: {} for name in decoded}
    for clip_name, (clip, faces) in decoded.items():
        times = {side: {"wall": [], "cpu": []} for side in sides}
        for _ in range(args.rounds):
            for side in sides:  # interleaved: A, B, C, A, B, C, ...
                wall, cpu = time.perf_counter(), time.process_time()
                found = detect(side, clip.frames, haar, hog, tracking)
                steps = len(clip.frames)
                times[side]["wall"].append((time.perf_counter() - wall) / steps * 1000)
                times[side]["cpu"].append((time.process_time() - cpu) / steps * 1000)
                results[clip_name][side] = recall(found, faces, clip.frame_indices)
        for side, t in times.items():
            results[clip_name][side]["ms_per_step"] = {
                kind: {"min": round(min(v), 2), "median": round(statistics.median(v), 2)} for kind, v in t.items()}
        results[clip_name]["steps"] = len(clip.frames)
        results[clip_name]["frame_size"] = list(clip.frames.shape[1:3])
        print(clip_name, json.dumps(results[clip_name]), flush=True)
    write_results(args.out, {
        "benchmark": "face detection + tracking per sampled step: Haar (asrn.detect) vs dlib HOG (upsample 1), "
                     "176x144 H.264 at 4 steps/s", "rounds": args.rounds, "tracking": tracking.to_dict(),
        "results": results, "machine": {**info, "load_average_at_end": load()}})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
