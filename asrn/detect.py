"""Person and face boxes per sampled step; the largest of each is kept (paper §4.2).

Detection must be real even offline (random-init boxes would make body and face noise), so `build_detector`
picks, in order:
  1. precomputed boxes (the manifest's `boxes` JSON)                  -> TracksDetector, name "tracks"
  2. torchvision Faster R-CNN for persons when its trained weights are on disk, Haar cascades for faces
                                                                       -> FasterRCNNDetector, "<model>+haar"
  3. OpenCV's shipped detectors: Haar frontal + profile face cascades, HOG people detector (optionally
     the upper-body cascade), a body box below a face when no person is found
                                                                       -> OpenCVDetector, "opencv-haar+hog"
A randomly initialised detector would find noise, so no path here ever builds one. Faces are never
invented from person boxes: a step with a person and no face has has_face False.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import torch

from asrn.errors import AsrnError
from asrn.store import step_mask
from asrn.tracking import TrackingSettings, track_boxes
from asrn.tracks import Tracks
from asrn.weights import locate_weights, resolve_weights

logger = logging.getLogger(__name__)

FASTER_RCNN_MODELS = ("fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2", "fasterrcnn_mobilenet_v3_large_fpn")
COCO_PERSON = 1  # torchvision detection label of "person"
PERSON_SCORE = 0.7
WORK_SHORT_SIDE = 240  # px; cascades cost ~ pixels, and 360p took 2-3x as long as 240p for the same faces
STRONG_FACE_FRACTION = 0.5  # of the best hit's neighbour count
HOG_MIN_WEIGHT = 0.5  # HOG hits with an SVM margin at or below this are dropped
# HOG's false persons on textured scenes come in short runs (hits up to weight 1.6, linked 3 at a time on the
# rendered no-person clips of tests/test_tracking.py), where a face cascade's false hits stay lone: a person
# track must be detected on 4 steps (1 s at 4 steps/s) before it is kept and carried across misses.
PERSON_TRACKING = TrackingSettings(min_hits=4)


class DetectorError(AsrnError):
    """A detector that cannot be built (e.g. a missing OpenCV cascade file); the message names the file."""


@dataclass
class FrameBoxes:
    """The largest person and face box per step, in pixels of the step frames; NaN rows where none."""

    person: np.ndarray  # (T, 4) float32 x1 y1 x2 y2
    face: np.ndarray  # (T, 4) float32
    has_person: np.ndarray  # (T,) bool: detected at this step
    has_face: np.ndarray  # (T,) bool
    person_tracked: np.ndarray | None = None  # (T,) bool: not detected, the box carried by tracking
    face_tracked: np.ndarray | None = None  # (T,) bool

    def __post_init__(self) -> None:
        self.person_tracked = step_mask(self.person_tracked, len(self.has_person))
        self.face_tracked = step_mask(self.face_tracked, len(self.has_face))

    @classmethod
    def from_lists(cls, persons: list[np.ndarray | None], faces: list[np.ndarray | None]) -> FrameBoxes:
        def stack(boxes: list[np.ndarray | None]) -> np.ndarray:
            out = np.full((len(boxes), 4), np.nan, np.float32)
            for t, box in enumerate(boxes):
                if box is not None:
                    out[t] = box
            return out

        person, face = stack(persons), stack(faces)
        return cls(person, face, np.isfinite(person).all(1), np.isfinite(face).all(1))


class Detector(Protocol):
    name: str  # recorded in features.json

    def describe(self) -> dict:
        """Name and settings, recorded in features.json."""
        ...

    def detect(self, frames: np.ndarray, frame_indices: np.ndarray, scale: float) -> FrameBoxes:
        """frames (T, H, W, 3) uint8 RGB step frames, frame_indices (T,) source indices, scale step px / source px."""
        ...


def largest_box(boxes: np.ndarray, width: int, height: int) -> np.ndarray | None:
    """(K, 4) x1 y1 x2 y2 -> the (4,) box of largest area after clipping to the frame; None if none is left."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if not len(boxes):
        return None
    boxes = np.clip(boxes, 0, [width, height, width, height]).astype(np.float32)
    sides = boxes[:, 2:] - boxes[:, :2]  # (K, 2)
    valid = (sides >= 1).all(1)
    if not valid.any():
        return None
    area = np.where(valid, sides[:, 0] * sides[:, 1], -1.0)
    return boxes[int(np.argmax(area))]


class TracksDetector:
    """Boxes from a precomputed tracks file (source-frame pixels), scaled to the step frames."""

    name = "tracks"

    def __init__(self, tracks: Tracks):
        self.tracks = tracks

    def describe(self) -> dict:
        return {"name": self.name}

    def detect(self, frames: np.ndarray, frame_indices: np.ndarray, scale: float) -> FrameBoxes:
        height, width = frames.shape[1], frames.shape[2]
        persons, faces = [], []
        for index in np.asarray(frame_indices):
            person, face = self.tracks.boxes_at(int(index))
            persons.append(largest_box(person * scale, width, height))
            faces.append(largest_box(face * scale, width, height))
        return FrameBoxes.from_lists(persons, faces)


def _xywh_to_xyxy(rects) -> np.ndarray:
    rects = np.asarray(rects, np.float32).reshape(-1, 4)
    return np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], 1)


def _cascade(file_name: str) -> cv2.CascadeClassifier:
    path = Path(cv2.data.haarcascades) / file_name
    cascade = cv2.CascadeClassifier(str(path))
    if cascade.empty():
        raise DetectorError(f"{path}: OpenCV cascade missing or unreadable (needs opencv-python-headless>=4.10,<5)")
    return cascade


@dataclass(frozen=True)
class CascadeSettings:
    """OpenCV detector settings, measured on 176x144 low-bitrate H.264 with blur, head turns and drifting light
    (tests/test_tracking.py; benchmarks/detect.py): small frames are enlarged to a 240-px short side, where a
    scale step of 1.1 and 3 neighbours find turned and blurred faces that 1.15 / 5 miss, while false positives
    stay rare (and a lone one is dropped by tracking); faces under 28 working px (17 px in a 144-px frame) are
    too small for the face encoder anyway and cost most of the cascade's time."""

    short_side: int = WORK_SHORT_SIDE
    scale_factor: float = 1.1
    min_neighbors: int = 3
    min_size: int = 28  # px at the working size
    roll_degrees: float = 20.0  # near a face seen on a recent step, also look for it rolled by +-this
    search_margin: float = 1.0  # that local search covers the recent face box grown by this many box sides

    def to_dict(self) -> dict:
        return asdict(self)


class HaarFaceDetector:
    """OpenCV's frontal face cascade; where it finds nothing, the profile cascade on the image and its mirror
    (both profiles) and, near a face seen on a recent step, the frontal cascade on that region rolled both ways.

    Works on a grey image at the working size (see `equalized_gray`), where faces reach the cascades' 24-px
    window; only the largest face matters, so large frames are shrunk for speed.
    """

    def __init__(self, settings: CascadeSettings = CascadeSettings()):
        self.settings = settings
        self.frontal = _cascade("haarcascade_frontalface_default.xml")
        self.profile = _cascade("haarcascade_profileface.xml")

    def _run(self, cascade: cv2.CascadeClassifier, gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s = self.settings
        rects, neighbors = cascade.detectMultiScale2(gray, s.scale_factor, s.min_neighbors,
                                                     minSize=(s.min_size, s.min_size))
        return _xywh_to_xyxy(rects), np.asarray(neighbors, np.float32).reshape(-1)

    def _profiles(self, gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The profile cascade knows one side only: run it on the mirror image too."""
        boxes, neighbors = self._run(self.profile, gray)
        mirrored, mirrored_neighbors = self._run(self.profile, np.ascontiguousarray(gray[:, ::-1]))
        mirrored = np.stack([gray.shape[1] - mirrored[:, 2], mirrored[:, 1],
                             gray.shape[1] - mirrored[:, 0], mirrored[:, 3]], 1)
        return np.concatenate([boxes, mirrored]), np.concatenate([neighbors, mirrored_neighbors])

    def _rolled(self, gray: np.ndarray, near: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Frontal faces rolled by +-roll_degrees inside the region around `near` (a recent face, working px)."""
        s = self.settings
        side = float(max(near[2] - near[0], near[3] - near[1]))
        cx, cy = (near[0] + near[2]) / 2, (near[1] + near[3]) / 2
        half = side * (0.5 + s.search_margin)
        x1, y1 = int(max(cx - half, 0)), int(max(cy - half, 0))
        x2, y2 = int(min(cx + half, gray.shape[1])), int(min(cy + half, gray.shape[0]))
        region = gray[y1:y2, x1:x2]
        found = [np.zeros((0, 4), np.float32)], [np.zeros(0, np.float32)]
        if min(region.shape) < s.min_size:
            return found[0][0], found[1][0]
        centre = ((x2 - x1) / 2, (y2 - y1) / 2)
        for angle in (s.roll_degrees, -s.roll_degrees):
            turn = cv2.getRotationMatrix2D(centre, angle, 1.0)
            boxes, neighbors = self._run(self.frontal, cv2.warpAffine(region, turn, region.shape[::-1],
                                                                      borderMode=cv2.BORDER_REPLICATE))
            if len(boxes):  # back to the image: the box's centre turned back, its size kept
                back = cv2.invertAffineTransform(turn)
                centres = np.c_[(boxes[:, :2] + boxes[:, 2:]) / 2, np.ones(len(boxes))] @ back.T  # (K, 2)
                halves = (boxes[:, 2:] - boxes[:, :2]) / 2
                found[0].append(np.c_[centres - halves, centres + halves] + [x1, y1, x1, y1])
                found[1].append(neighbors)
        return np.concatenate(found[0]).astype(np.float32), np.concatenate(found[1])

    def faces(self, gray: np.ndarray, near: np.ndarray | None = None) -> np.ndarray:
        """(H, W) uint8 working-size image -> (K, 4) x1 y1 x2 y2 face boxes, weak ones dropped.

        A cascade's spurious hits gather few neighbouring windows next to a real face's many (4-7 against
        20-40 on skimage's astronaut); keeping only hits with at least half the best count stops a
        spurious box that happens to be larger from becoming "the largest face".
        """
        boxes, neighbors = self._run(self.frontal, gray)
        if not len(boxes):
            boxes, neighbors = self._profiles(gray)
            if near is not None and self.settings.roll_degrees > 0:
                rolled, rolled_neighbors = self._rolled(gray, near)
                boxes, neighbors = np.concatenate([boxes, rolled]), np.concatenate([neighbors, rolled_neighbors])
        if not len(boxes):
            return boxes
        return boxes[neighbors >= neighbors.max() * STRONG_FACE_FRACTION]


def working_scale(height: int, width: int, short_side: int = WORK_SHORT_SIDE) -> float:
    """Factor that brings the short side of a frame to `short_side` px for the OpenCV detectors."""
    return short_side / min(height, width)


def equalized_gray(frame: np.ndarray, factor: float) -> np.ndarray:
    """RGB frame -> grey at the working size (`factor` x), histogram-equalised: the cascades' and HOG's input.

    Equalising undoes dim or drifting light, which otherwise leaves a face too flat for the Haar features.
    """
    gray = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
    if factor != 1.0:
        size = (round(gray.shape[1] * factor), round(gray.shape[0] * factor))
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_LINEAR if factor > 1 else cv2.INTER_AREA)
    return cv2.equalizeHist(gray)


def faces_over_time(face_detector: HaarFaceDetector, grays: list[np.ndarray], factor: float,
                    max_gap: int) -> list[np.ndarray]:
    """Face candidates per step (frame px), each step's search helped by the largest face of a recent step."""
    out: list[np.ndarray] = []
    recent, recent_step = None, -max_gap - 2
    for step, gray in enumerate(grays):
        near = recent * factor if recent is not None and step - recent_step <= max_gap + 1 else None
        boxes = face_detector.faces(gray, near) / factor
        if len(boxes):
            sides = boxes[:, 2:] - boxes[:, :2]
            recent, recent_step = boxes[int(np.argmax(sides[:, 0] * sides[:, 1]))], step
        out.append(boxes)
    return out


def tracked_frame_boxes(persons: list[np.ndarray], faces: list[np.ndarray], width: int, height: int,
                        tracking: TrackingSettings, person_from_face: bool,
                        person_tracking: TrackingSettings | None = None) -> FrameBoxes:
    """Per-step candidates -> FrameBoxes of the largest tracked person and face, bridged steps flagged.

    Persons are tracked with `person_tracking` (default: `tracking`, as for faces). Where no person is found or
    carried but a face is, the body is the region below the face (detected or carried like the face). Faces
    are never invented from person boxes.
    """
    face = track_boxes(faces, width, height, tracking)
    person = track_boxes(persons, width, height, person_tracking or tracking)
    if person_from_face:
        for t in np.flatnonzero(~(person.detected | person.bridged) & (face.detected | face.bridged)):
            box = largest_box(body_from_face(face.boxes[t])[None], width, height)
            if box is not None:
                person.boxes[t], person.detected[t], person.bridged[t] = box, face.detected[t], face.bridged[t]
    return FrameBoxes(person.boxes, face.boxes, person.detected, face.detected,
                      person_tracked=person.bridged, face_tracked=face.bridged)


class OpenCVDetector:
    """Faces: Haar cascades. Persons: HOG people detector (full bodies), optionally the upper-body cascade.
    Both are then tracked over the steps (asrn.tracking), which drops short runs of false positives and carries
    boxes across short misses; person tracks need more detections (`person_tracking`) than face tracks.

    The upper-body cascade is off by default: it costs about as much as the face cascade and rarely
    fires where the face-derived box below would not do as well.
    """

    name = "opencv-haar+hog"

    def __init__(self, person_from_face: bool = True, upper_body: bool = False,
                 settings: CascadeSettings = CascadeSettings(), tracking: TrackingSettings | None = None,
                 person_tracking: TrackingSettings = PERSON_TRACKING, hog_min_weight: float = HOG_MIN_WEIGHT):
        self.settings, self.tracking = settings, tracking or TrackingSettings()
        self.person_tracking, self.hog_min_weight = person_tracking, hog_min_weight
        self.face_detector = HaarFaceDetector(settings)
        self.upper_body = _cascade("haarcascade_upperbody.xml") if upper_body else None
        self.hog = cv2.HOGDescriptor()
        self.hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
        self.person_from_face = person_from_face

    @property
    def short_side(self) -> int:
        return self.settings.short_side

    def describe(self) -> dict:
        """What features.json records about this detector."""
        return {"name": self.name, "cascades": self.settings.to_dict(), "tracking": self.tracking.to_dict(),
                "person_tracking": self.person_tracking.to_dict(), "hog_min_weight": self.hog_min_weight,
                "upper_body": self.upper_body is not None, "person_from_face": self.person_from_face}

    def persons(self, gray: np.ndarray) -> np.ndarray:
        """(H, W) uint8 working-size image -> (K, 4) person boxes."""
        boxes = [np.zeros((0, 4), np.float32)]
        if gray.shape[0] >= 128 and gray.shape[1] >= 64:  # HOG's window is 64x128
            rects, weights = self.hog.detectMultiScale(gray, winStride=(8, 8), padding=(0, 0), scale=1.1)
            if len(rects):
                boxes.append(_xywh_to_xyxy(rects)[np.asarray(weights).reshape(-1) > self.hog_min_weight])
        if self.upper_body is not None:
            upper = self.upper_body.detectMultiScale(gray, 1.15, 5, minSize=(40, 40))
            if len(upper):
                boxes.append(_xywh_to_xyxy(upper))
        return np.concatenate(boxes)

    def detect(self, frames: np.ndarray, frame_indices: np.ndarray, scale: float) -> FrameBoxes:
        height, width = frames.shape[1], frames.shape[2]
        factor = working_scale(height, width, self.short_side)
        grays = [equalized_gray(frame, factor) for frame in frames]
        faces = faces_over_time(self.face_detector, grays, factor, self.tracking.max_gap)
        persons = [self.persons(gray) / factor for gray in grays]
        return tracked_frame_boxes(persons, faces, width, height, self.tracking, self.person_from_face,
                                   self.person_tracking)


def body_from_face(face: np.ndarray) -> np.ndarray:
    """(4,) face box -> (4,) upper-body box: 3 face widths wide, from the brow down 4 face heights."""
    x1, y1, x2, y2 = face
    w, h = x2 - x1, y2 - y1
    cx = (x1 + x2) / 2
    return np.array([cx - 1.5 * w, y1 - 0.25 * h, cx + 1.5 * w, y1 + 4.0 * h], np.float32)


# Faster R-CNN's memory grows with the frames of one forward pass (its 1,000 RoI features per frame alone take 50 MB,
# about 110 MB a frame in all at 202x360 on a CPU): frames go through in chunks of this many, so a video of any
# length needs one chunk's memory. A GPU takes bigger chunks for throughput.
DETECT_CHUNK_FRAMES = {"cpu": 4, "cuda": 16}
DETECT_BYTES_PER_FRAME = 256 << 20  # upper bound of one frame's working memory at the 360-px short side
DETECT_MODEL_BYTES = 256 << 20  # the model's weights and workspace


def detection_memory(chunk_frames: int) -> int:
    """Bytes Faster R-CNN detection needs at most, whatever the video's length (what a Ray task declares)."""
    return DETECT_MODEL_BYTES + chunk_frames * DETECT_BYTES_PER_FRAME


def frame_chunks(num_frames: int, chunk_frames: int) -> list[slice]:
    """Consecutive slices of at most `chunk_frames` covering range(num_frames)."""
    return [slice(start, min(start + chunk_frames, num_frames)) for start in range(0, num_frames, chunk_frames)]


class FasterRCNNDetector:
    """torchvision Faster R-CNN (COCO) for persons with trained weights; Haar cascades for faces; both tracked.

    Runs on `device` in chunks of `chunk_frames` frames, so its memory is bounded by `detection_memory(chunk_frames)`
    whatever T is; features.json records the device. The device is always chosen by the caller (a process that sees
    a GPU may not hold it: a Ray task without `num_gpus` still sees the node's GPUs).
    """

    def __init__(self, model: torch.nn.Module, model_name: str, provenance: str,
                 tracking: TrackingSettings | None = None, device: str | torch.device = "cpu",
                 chunk_frames: int | None = None):
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.chunk_frames = chunk_frames or DETECT_CHUNK_FRAMES.get(self.device.type, DETECT_CHUNK_FRAMES["cpu"])
        self.name = f"{model_name}+haar"
        self.weights = provenance
        self.tracking = tracking or TrackingSettings()
        self.face_detector = HaarFaceDetector()

    def describe(self) -> dict:
        """What features.json records about this detector."""
        return {"name": self.name, "weights": self.weights, "person_score": PERSON_SCORE,
                "device": self.device.type, "chunk_frames": self.chunk_frames,
                "cascades": self.face_detector.settings.to_dict(), "tracking": self.tracking.to_dict()}

    @torch.inference_mode()
    def persons(self, frames: np.ndarray) -> list[np.ndarray]:
        """(T, H, W, 3) uint8 RGB -> per frame (K, 4) person boxes, `chunk_frames` frames per forward pass."""
        found = []
        for chunk in frame_chunks(len(frames), self.chunk_frames):
            images = torch.from_numpy(np.ascontiguousarray(frames[chunk])).to(self.device)  # (k, H, W, 3) uint8
            images = images.permute(0, 3, 1, 2).float().div_(255.0)  # (k, 3, H, W)
            for out in self.model(list(images)):
                keep = (out["labels"] == COCO_PERSON) & (out["scores"] >= PERSON_SCORE)
                found.append(out["boxes"][keep].cpu().numpy())
            del images
        return found

    def detect(self, frames: np.ndarray, frame_indices: np.ndarray, scale: float) -> FrameBoxes:
        height, width = frames.shape[1], frames.shape[2]
        persons = self.persons(frames)
        factor = working_scale(height, width, self.face_detector.settings.short_side)
        grays = [equalized_gray(frame, factor) for frame in frames]
        faces = faces_over_time(self.face_detector, grays, factor, self.tracking.max_gap)
        return tracked_frame_boxes(persons, faces, width, height, self.tracking, person_from_face=False)


def faster_rcnn_weights(weights_dir: Path | None) -> str | None:
    """The first Faster R-CNN model whose trained weights are on disk, without loading them; None if none is."""
    for model_name in FASTER_RCNN_MODELS:
        if locate_weights(model_name, weights_dir) is not None:
            return model_name
    return None


def load_faster_rcnn(weights_dir: Path | None, device: str = "cpu") -> FasterRCNNDetector | None:
    """The first Faster R-CNN whose trained weights are on disk (weights_dir or torchvision's cache), else None.

    Images are resized to a 360-px short side inside the model (~1.7 frames/s for R50-FPN on 2 CPU cores). It runs
    on `device` ("cuda" in an extract task that holds a GPU share, asrn.extract).
    """
    import torchvision

    for model_name in FASTER_RCNN_MODELS:
        state, provenance = resolve_weights(model_name, weights_dir, warn=False)
        if state is None:
            continue
        model = torchvision.models.get_model(model_name, weights=None, weights_backbone=None,
                                             min_size=360, max_size=640)
        model.load_state_dict(state)
        detector = FasterRCNNDetector(model, model_name, provenance, device=device)
        logger.info("person detector: %s (%s) on %s", model_name, provenance, detector.device)
        return detector
    return None


def build_detector(weights_dir: Path | None = None, tracks: Tracks | None = None) -> Detector:
    """Precomputed tracks, else Faster R-CNN with trained weights, else OpenCV's shipped detectors."""
    if tracks is not None:
        return TracksDetector(tracks)
    detector = load_faster_rcnn(weights_dir)
    if detector is not None:
        return detector
    logger.info("no Faster R-CNN weights found; detecting with OpenCV Haar cascades + HOG")
    return OpenCVDetector()
