"""Face detection on small compressed footage: the old OpenCV settings against the new ones with tracking.

    python benchmarks/detect.py [--rounds 5] [--out benchmarks/results/detect.json]

Clips (built as in tests/test_tracking.py, 176x144 H.264, sampled at 4 steps/s through asrn.video): the
astronaut degraded like real video, the same clip clean, and a rendered scene with no person. Per clip and
setting: the fraction of steps with a face detected / detected or tracked, and the cost of detect() per
sampled step (detection + tracking: cascades, HOG, linking) as wall and process CPU time, in interleaved
rounds A, B, A, B, ... so that a change in the machine's load hits both alike; min and median reported.
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
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from machine import load, machine  # noqa: E402
from test_tracking import SAMPLE_FPS, astronaut_footage, empty_scene  # noqa: E402

from asrn.detect import CascadeSettings, OpenCVDetector  # noqa: E402
from asrn.tracking import TrackingSettings  # noqa: E402
from asrn.video import decode_clip  # noqa: E402

SETTINGS = {  # "old": the detector before issue 17 (no rolled search, no tracking); "new": the defaults
    "old": lambda: OpenCVDetector(settings=CascadeSettings(scale_factor=1.15, min_neighbors=5, min_size=24,
                                                           roll_degrees=0.0),
                                  tracking=TrackingSettings(max_gap=0, min_hits=1)),
    "new": OpenCVDetector,
}


def recall(found, faces: np.ndarray | None, indices: np.ndarray) -> dict:
    present = found.has_face | found.face_tracked
    out = {"face_detected": round(float(found.has_face.mean()), 3),
           "face_detected_or_tracked": round(float(present.mean()), 3),
           "body_detected_or_tracked": round(float((found.has_person | found.person_tracked).mean()), 3)}
    if faces is not None and present.any():
        truth, boxes = faces[indices][present], found.face[present]
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        out["face_on_the_true_face"] = round(float(((centres >= truth[:, :2] - 2)
                                                    & (centres <= truth[:, 2:] + 2)).all(1).mean()), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "detect.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    info = machine()
    with tempfile.TemporaryDirectory(prefix="asrn-bench-detect-") as tmp:
        clips = {"degraded": astronaut_footage(Path(tmp) / "degraded.mp4"),
                 "clean": astronaut_footage(Path(tmp) / "clean.mp4", degrade=False),
                 "no_person": (empty_scene(Path(tmp) / "empty.mp4"), None)}
        decoded = {name: (decode_clip(str(path), fps=SAMPLE_FPS, flow_pairs=1, flow_side=32), faces)
                   for name, (path, faces) in clips.items()}
    detectors = {name: make() for name, make in SETTINGS.items()}
    results: dict = {name: {} for name in decoded}
    for clip_name, (clip, faces) in decoded.items():
        times = {name: {"wall": [], "cpu": []} for name in detectors}
        for _ in range(args.rounds):
            for name, detector in detectors.items():  # interleaved: A, B, A, B, ...
                wall, cpu = time.perf_counter(), time.process_time()
                found = detector.detect(clip.frames, clip.frame_indices, 1.0)
                steps = len(clip.frames)
                times[name]["wall"].append((time.perf_counter() - wall) / steps * 1000)
                times[name]["cpu"].append((time.process_time() - cpu) / steps * 1000)
                results[clip_name][name] = recall(found, faces, clip.frame_indices)
        for name, t in times.items():
            results[clip_name][name]["ms_per_step"] = {
                kind: {"min": round(min(v), 2), "median": round(statistics.median(v), 2)} for kind, v in t.items()}
        ratio = {kind: round(statistics.median(times["new"][kind]) / statistics.median(times["old"][kind]), 2)
                 for kind in ("wall", "cpu")}
        results[clip_name]["new_over_old_median"] = ratio
        results[clip_name]["steps"] = len(clip.frames)
        print(clip_name, json.dumps(results[clip_name]), flush=True)
    report = {"benchmark": "OpenCV face/person detection + tracking per sampled step, 176x144 H.264 at 4 steps/s",
              "settings": {name: d.describe() for name, d in detectors.items()}, "rounds": args.rounds,
              "results": results, "machine": {**info, "load_average_at_end": load()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
