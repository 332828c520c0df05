"""Per-video feature extraction without Ray: decode, detect, crop, flow, encode one video at a time.

`prepare_video` does the CPU work before the encoders (numpy only, so its output pickles cheaply between Ray
stages); `encode_batch` / `encode_prepared` run the encoders; `to_video_features` makes a store row. The Ray
Data job (`asrn.extract`) and `asrn predict` (one video, in-process) are both built from these.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from asrn.detect import Detector, TracksDetector, build_detector
from asrn.encoders import Encoder, EncoderError, crop_boxes, encoder_specs, face_inputs, resize_image
from asrn.errors import AsrnError
from asrn.flow import FLOW_PAIRS, flow_stacks, quantize_flow
from asrn.sequence import select_steps
from asrn.shots import ShotSettings, detect_shot_starts
from asrn.store import MODALITIES, VideoFeatures
from asrn.tracks import load_tracks
from asrn.video import decode_clip

MAX_SIDE = 360  # px, long side of decoded step frames (detection and crops work on these)
MAX_IMAGES_PER_FORWARD = 64  # images per encoder forward pass: bounds an actor's memory, whatever T is


class VideoStageError(AsrnError):
    """One video failed at one stage (decode, detect, flow, encode); keeps the original error's type name."""

    def __init__(self, stage: str, cause: BaseException):
        self.stage, self.error = stage, type(cause).__name__
        super().__init__(str(cause).strip() or self.error)


@dataclass(frozen=True)
class VideoSettings:
    """What extracting one video needs: preset (encoder input sizes), sampling rate, weights folder, frame size."""

    preset: str = "lite"
    fps: float = 2.0
    weights_dir: Path | None = None
    max_side: int | None = MAX_SIDE
    shots: ShotSettings = ShotSettings()  # the cut detector run on the sampled frames (asrn.shots)


@dataclass
class PreparedVideo:
    """One video after the CPU stage: encoder-ready inputs for the T sampled steps (numpy only)."""

    path: str
    timestamps: np.ndarray  # (T,) float32 seconds
    frame_indices: np.ndarray  # (T,) int64 source frame of each step
    rgb: np.ndarray  # (T, h, w, 3) uint8, at the rgb encoder's input size
    flow: np.ndarray  # (T, 2P, h, w) uint8 levels of [-1, 1] (asrn.flow.quantize_flow), at the motion encoder's size
    body: np.ndarray  # (T, h, w, 3) uint8 largest-person crops; zeros where not present()
    face: np.ndarray  # (T, 128) float32 dlib descriptors of the largest face (encoders.face_inputs), or (T, h, w, 3)
    #                   uint8 crops for the DeepID-style net; zeros where not present()
    has_body: np.ndarray  # (T,) bool: detected
    has_face: np.ndarray  # (T,) bool
    body_tracked: np.ndarray  # (T,) bool: not detected, box carried by tracking (crop taken from that box)
    face_tracked: np.ndarray  # (T,) bool
    shot_start: np.ndarray  # (T,) bool: a cut before this step (asrn.shots; step 0 True)
    person_boxes: np.ndarray  # (T, 4) float32 x1 y1 x2 y2 in step-frame pixels; NaN where none
    face_boxes: np.ndarray  # (T, 4) float32
    frame_size: tuple[int, int]  # (H, W) of the step frames the boxes refer to
    detector: str  # which detector found the boxes
    detection: dict = field(default_factory=dict)  # the detector's settings (Detector.describe), for features.json
    decoder: str = ""  # which decoder produced the frames (asrn.video: decord or pyav), for features.json
    warnings: list[str] = field(default_factory=list)

    @property
    def num_steps(self) -> int:
        return int(self.timestamps.shape[0])

    def inputs(self) -> dict[str, np.ndarray]:
        """modality -> (T, ...) encoder input."""
        return {"rgb": self.rgb, "motion": self.flow, "body": self.body, "face": self.face}

    def present(self) -> dict[str, np.ndarray]:
        """modality -> (T,) bool: where that modality exists (rgb and motion always; body/face detected or tracked)."""
        ones = np.ones(self.num_steps, bool)
        return {"rgb": ones, "motion": ones, "body": self.has_body | self.body_tracked,
                "face": self.has_face | self.face_tracked}



@functools.lru_cache(maxsize=4)
def default_detector(weights_dir: Path | None) -> Detector:
    """build_detector's offline chain, built once per process (Ray reuses task workers between videos)."""
    return build_detector(weights_dir)


def resize_flow(stacks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(T, 2P, H, W) float32 -> (T, 2P, h, w), exactly as FlowEncoder.preprocess would resize it."""
    if stacks.shape[-2:] == tuple(size):
        return np.ascontiguousarray(stacks, np.float32)
    x = F.interpolate(torch.from_numpy(np.ascontiguousarray(stacks, np.float32)), size=tuple(size),
                      mode="bilinear", align_corners=False, antialias=True)
    return x.numpy()


def prepare_video(path: str, boxes: str | None = None, config: VideoSettings = VideoSettings(),
                  detector: Detector | None = None) -> PreparedVideo:
    """Decode, detect, crop and compute flow for one video: everything before the encoders, numpy only.

    The decoder is asrn.video's choice ($ASRN_DECODER, else decord where it imports, else PyAV: the same frames).
    Boxes come from `boxes` (a tracks JSON) when given, else from `detector`, else from build_detector's offline
    chain; shot cuts from asrn.shots on the sampled frames. Raises VideoStageError naming the stage (decode, shots,
    detect, flow) with the original error's message.
    """
    specs = encoder_specs(config.preset, config.weights_dir)  # the face entry: dlib's chips or DeepID's crops
    motion_size = specs["motion"].input_size
    try:
        clip = decode_clip(path, fps=config.fps, flow_pairs=FLOW_PAIRS, flow_side=min(motion_size),
                           max_side=config.max_side)
        rgb = np.stack([resize_image(frame, specs["rgb"].input_size) for frame in clip.frames])  # (T, h, w, 3)
    except Exception as e:
        raise VideoStageError("decode", e) from e
    try:
        shot_start = detect_shot_starts(clip.frames, config.shots)  # (T,) bool
    except Exception as e:
        raise VideoStageError("shots", e) from e
    try:
        if boxes:
            detector = TracksDetector(load_tracks(boxes))
        elif detector is None:
            detector = default_detector(config.weights_dir)
        scale = clip.frames.shape[2] / clip.width  # step px per source px
        found = detector.detect(clip.frames, clip.frame_indices, scale)
        body_present, face_present = found.has_person | found.person_tracked, found.has_face | found.face_tracked
        body = crop_boxes(clip.frames, found.person, body_present, specs["body"].input_size)  # (T, h, w, 3)
        face = face_inputs(clip.frames, found.face, face_present, specs["face"])  # (T, 128) or (T, h, w, 3)
    except Exception as e:
        raise VideoStageError("detect", e) from e
    try:
        flow = quantize_flow(resize_flow(flow_stacks(clip.flow_windows), motion_size))  # (T, 2P, h, w) uint8
    except Exception as e:
        raise VideoStageError("flow", e) from e
    return PreparedVideo(
        path=path, timestamps=clip.timestamps, frame_indices=clip.frame_indices, rgb=rgb, flow=flow,
        body=body, face=face, has_body=found.has_person.copy(), has_face=found.has_face.copy(),
        body_tracked=found.person_tracked.copy(), face_tracked=found.face_tracked.copy(), shot_start=shot_start,
        person_boxes=found.person, face_boxes=found.face, frame_size=(clip.frames.shape[1], clip.frames.shape[2]),
        detector=detector.name, detection=detector.describe(), decoder=clip.decoder, warnings=list(clip.warnings),
    )


def encoded_steps(video: PreparedVideo, window: int | None) -> np.ndarray:
    """(T,) bool: the steps to encode. All of them (window None), or only those the sequence former keeps
    (asrn.sequence.select_steps with `window`): its choice depends only on the presence masks, known here."""
    wanted = np.zeros(video.num_steps, bool)
    wanted[select_steps(video.present(), window) if window is not None else slice(None)] = True
    return wanted


def encode_batch(videos: Sequence[PreparedVideo], encoders: dict[str, Encoder],
                 window: int | None = None) -> list[dict[str, np.ndarray]]:
    """Encode several prepared videos together (their steps stacked, MAX_IMAGES_PER_FORWARD per pass).

    Returns per video {modality: (T, D) float32}; steps where body/face is missing are not encoded and stay zero,
    and so do the steps `encoded_steps(video, window)` leaves out (window None: none left out).
    """
    missing = [m for m in MODALITIES if m not in encoders]
    if missing:
        raise EncoderError(f"encoders lack modality {', '.join(missing)}")
    counts = [v.num_steps for v in videos]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(int)
    wanted = [encoded_steps(v, window) for v in videos]  # (T_i,) bool each
    out: dict[str, np.ndarray] = {}
    for m in MODALITIES:
        encoder = encoders[m]
        inputs = np.concatenate([v.inputs()[m] for v in videos])  # (N, ...) N = sum of T
        present = np.flatnonzero(np.concatenate([v.present()[m] & wanted[i] for i, v in enumerate(videos)]))
        features = np.zeros((offsets[-1], encoder.dim), np.float32)  # (N, D)
        for start in range(0, len(present), MAX_IMAGES_PER_FORWARD):
            rows = present[start:start + MAX_IMAGES_PER_FORWARD]
            features[rows] = encoder.features(inputs[rows])
        out[m] = features
    return [{m: out[m][offsets[i]:offsets[i + 1]] for m in MODALITIES} for i in range(len(videos))]


def encode_prepared(prepared: PreparedVideo, encoders: dict[str, Encoder],
                    window: int | None = None) -> dict[str, np.ndarray]:
    """One prepared video -> {modality: (T, D) float32}, zeros where body/face is missing (see encode_batch)."""
    return encode_batch([prepared], encoders, window)[0]


def to_video_features(prepared: PreparedVideo, features: dict[str, np.ndarray], video_id: str, split: str,
                      labels: Sequence[str]) -> VideoFeatures:
    """A prepared and encoded video -> the store's row for it."""
    return VideoFeatures(video_id=video_id, split=split, labels=list(labels),
                         timestamp=prepared.timestamps.astype(np.float32), features=features,
                         has_body=prepared.has_body.astype(bool), has_face=prepared.has_face.astype(bool),
                         body_tracked=prepared.body_tracked.astype(bool),
                         face_tracked=prepared.face_tracked.astype(bool), shot_start=prepared.shot_start.astype(bool))

