"""asrn.detect: tracks are scaled and the largest box kept; OpenCV finds a real face offline; selection order."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torchvision
from skimage import data

from asrn.detect import (
    CascadeSettings,
    FasterRCNNDetector,
    OpenCVDetector,
    TracksDetector,
    body_from_face,
    build_detector,
    largest_box,
)
from asrn.tracks import Tracks

ASTRONAUT_FACE = np.array([170, 50, 270, 160], np.float32)  # x1 y1 x2 y2 in the 512x512 image (cascade: 177,66-272,161)


@pytest.fixture(scope="module")
def astronaut_clip() -> tuple[np.ndarray, np.ndarray]:
    """6 frames of skimage's astronaut, zoomed 0-20% and shifted a few px per frame, with the true face boxes."""
    image = data.astronaut()  # (512, 512, 3) RGB, a real photograph
    frames, faces = [], []
    for i in range(6):
        zoom, dx, dy = 1 + 0.04 * i, 4 * i - 10, 3 * i - 8
        frames.append(cv2.warpAffine(image, np.float32([[zoom, 0, dx], [0, zoom, dy]]), (512, 512),
                                     borderMode=cv2.BORDER_REFLECT))
        faces.append(ASTRONAUT_FACE * zoom + np.array([dx, dy, dx, dy], np.float32))
    return np.stack(frames), np.stack(faces)  # (6, 512, 512, 3), (6, 4)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None).prod()
    return float(inter / ((a[2:] - a[:2]).prod() + (b[2:] - b[:2]).prod() - inter))


def test_tracks_detector_scales_and_keeps_largest():
    tracks = Tracks("v", width=640, height=480, fps=25.0)
    tracks.persons[10] = np.array([[0, 0, 100, 100], [200, 100, 400, 460]], np.float32)  # second is larger
    tracks.faces[10] = np.array([[250, 120, 300, 180]], np.float32)
    tracks.persons[20] = np.array([[10, 10, 50, 90]], np.float32)  # a person and no face
    detector = TracksDetector(tracks)
    frames = np.zeros((3, 240, 320, 3), np.uint8)  # steps downscaled by 0.5
    boxes = detector.detect(frames, np.array([10, 20, 30]), scale=0.5)
    np.testing.assert_allclose(boxes.person[0], [100, 50, 200, 230])
    np.testing.assert_allclose(boxes.face[0], [125, 60, 150, 90])
    np.testing.assert_array_equal(boxes.has_person, [True, True, False])
    np.testing.assert_array_equal(boxes.has_face, [True, False, False])  # no face is invented from a person
    assert np.isnan(boxes.face[1]).all() and np.isnan(boxes.person[2]).all()
    assert detector.name == "tracks"


def test_largest_box_clips_to_frame():
    boxes = np.array([[-50, -50, 10, 10], [5, 5, 40, 30]], np.float32)  # the first is larger only off-frame
    np.testing.assert_allclose(largest_box(boxes, 100, 100), [5, 5, 40, 30])
    assert largest_box(np.zeros((0, 4)), 100, 100) is None
    assert largest_box(np.array([[200, 200, 300, 300]]), 100, 100) is None


def test_opencv_finds_the_astronaut_face(astronaut_clip):
    frames, true_faces = astronaut_clip
    boxes = OpenCVDetector().detect(frames, np.arange(len(frames)), 1.0)
    assert boxes.has_face.sum() >= 5
    for t in np.flatnonzero(boxes.has_face):
        assert iou(boxes.face[t], true_faces[t]) > 0.5, (t, boxes.face[t], true_faces[t])
    assert boxes.has_person.sum() >= 5  # HOG, or the body below the face


def test_weak_spurious_faces_do_not_win_by_size(astronaut_clip):
    """At a 360-px working size the cascade also fires (5-6 neighbours) on the suit below the face, with a box
    larger than the face (20-40 neighbours); keeping the largest must not pick it."""
    frames, true_faces = astronaut_clip
    boxes = OpenCVDetector(settings=CascadeSettings(short_side=360)).detect(frames, np.arange(len(frames)), 1.0)
    assert boxes.has_face.all()
    for t in range(len(frames)):
        assert iou(boxes.face[t], true_faces[t]) > 0.5, (t, boxes.face[t], true_faces[t])


def test_opencv_finds_the_face_in_small_frames(astronaut_clip):
    frames, true_faces = astronaut_clip
    small = np.stack([cv2.resize(f, (160, 160), interpolation=cv2.INTER_AREA) for f in frames[:3]])
    boxes = OpenCVDetector().detect(small, np.arange(3), 160 / 512)
    assert boxes.has_face.sum() >= 2
    for t in np.flatnonzero(boxes.has_face):
        assert iou(boxes.face[t], true_faces[t] * 160 / 512) > 0.4


def test_opencv_finds_no_face_in_noise_or_flat_frames():
    rng = np.random.default_rng(0)
    frames = np.concatenate([rng.integers(0, 256, (2, 120, 160, 3), dtype=np.uint8),
                             np.full((1, 120, 160, 3), 128, np.uint8)])
    boxes = OpenCVDetector().detect(frames, np.arange(3), 1.0)
    assert not boxes.has_face.any() and np.isnan(boxes.face).all()


def test_body_from_face_hangs_below_the_face():
    body = body_from_face(np.array([40, 20, 60, 44], np.float32))
    np.testing.assert_allclose(body, [20, 14, 80, 116])


def test_build_detector_order(offline):
    tracks = Tracks("v", 320, 240, 25.0)
    assert isinstance(build_detector(offline, tracks=tracks), TracksDetector)
    detector = build_detector(offline)  # nothing on disk: never a random-init Faster R-CNN
    assert isinstance(detector, OpenCVDetector) and detector.name == "opencv-haar+hog"


def test_build_detector_uses_faster_rcnn_weights_when_present(offline):
    # Only the selection logic can be tested offline. These weights are random, and a random-init detector
    # finds noise, which is exactly why build_detector never builds one without a weights file.
    name = "fasterrcnn_mobilenet_v3_large_fpn"  # the lightest of FASTER_RCNN_MODELS
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, weights_backbone=None)
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()},
               offline / f"{name}.pth")
    detector = build_detector(offline)
    assert isinstance(detector, FasterRCNNDetector)
    assert detector.name == f"{name}+haar" and detector.weights.startswith("sha256:")
    boxes = detector.detect(np.zeros((1, 120, 160, 3), np.uint8), np.array([0]), 1.0)
    assert boxes.person.shape == (1, 4) and boxes.has_face.shape == (1,)
