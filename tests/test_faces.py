"""asrn.faces and the face encoder: dlib's descriptor tells real people apart, is recorded as pretrained, gives way
to a user's deepid.pth, and where dlib does not import the DeepID-style net takes over, said once."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
import warnings

import cv2
import numpy as np
import pytest
import torch
from skimage import data

from asrn.detect import OpenCVDetector
from asrn.encoders import DEEPID_FACE, DLIB_FACE, DeepID, build_encoders, encoder_specs, face_inputs
from asrn.faces import load_dlib_face
from asrn.features import VideoSettings, prepare_video

SAME_PERSON_L2 = 0.6  # dlib's own cutoff: descriptors of one person lie closer than this


def quiet_build(preset: str, weights_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_encoders(preset, weights_dir)


@pytest.fixture(scope="module")
def lite_encoders():
    return quiet_build("lite", None)


def _cameraman_frames() -> np.ndarray:
    """4 frames of skimage's cameraman (a real photograph of another person), grey as RGB, shifted a few px."""
    image = np.repeat(data.camera()[..., None], 3, 2)  # (512, 512, 3)
    return np.stack([cv2.warpAffine(image, np.float32([[1, 0, 2 * i], [0, 1, i]]), (512, 512),
                                    borderMode=cv2.BORDER_REFLECT) for i in range(4)])


def test_same_person_descriptors_are_closer_than_another_persons(astronaut_clip, tmp_path, lite_encoders):
    """The astronaut's face through the whole CPU stage (H.264 clip, Haar + tracking, 5-point alignment, the
    descriptor) against the cameraman's: same-person distances under dlib's cutoff, every other-person distance
    above them."""
    prepared = prepare_video(str(astronaut_clip(tmp_path / "astronaut.mp4", 320, 320)), config=VideoSettings("lite"))
    present = prepared.present()["face"]
    assert present.mean() >= 0.75 and prepared.face.shape[1:] == (128,) and not prepared.face[~present].any()
    face = lite_encoders["face"]
    same = face.features(prepared.face[present])  # (n, 128): the CPU stage's descriptors pass the encoder as they are
    np.testing.assert_array_equal(same, prepared.face[present])

    frames = _cameraman_frames()
    found = OpenCVDetector().detect(frames, np.arange(len(frames)), 1.0)
    other_present = found.has_face | found.face_tracked
    assert other_present.any()
    other = face.features(face_inputs(frames, found.face, other_present, DLIB_FACE)[other_present])

    within = np.linalg.norm(same[:, None] - same[None], axis=-1)  # (n, n)
    across = np.linalg.norm(same[:, None] - other[None], axis=-1)  # (n, m)
    assert same.shape[1] == 128 and np.isfinite(same).all()
    assert within.max() < SAME_PERSON_L2 < across.min(), (within.max(), across.min())


def test_descriptor_is_recorded_as_pretrained_with_the_files_sha256(offline):
    face, why = load_dlib_face()
    assert face is not None, why
    digest = hashlib.sha256(face.files.descriptor.read_bytes()).hexdigest()
    assert face.files.landmarks.name == "shape_predictor_5_face_landmarks.dat"  # never the 68-point model
    with pytest.warns(UserWarning) as caught:
        encoders = build_encoders("lite", offline)
    assert encoders["face"].weights == f"pretrained:dlib_face_recognition_resnet_model_v1@sha256:{digest}"
    assert encoders["face"].name == "dlib-resnet-128" and encoders["face"].dim == 128
    random_init = [str(w.message) for w in caught if "random-init" in str(w.message)]
    assert random_init and not any("face" in message or "deepid" in message for message in random_init)
    assert encoder_specs("paper", offline)["face"] == encoder_specs("lite", offline)["face"] == DLIB_FACE


def test_alignment_gives_chips_and_zeros_where_absent():
    face, _ = load_dlib_face()
    image = data.astronaut()
    boxes = np.array([[170, 50, 270, 160], [np.nan] * 4, [170, 50, 270, 160]], np.float32)
    chips = face.align(np.stack([image] * 3), boxes, np.array([True, True, False]))
    assert chips.shape == (3, 150, 150, 3) and chips.dtype == np.uint8
    assert chips[0].std() > 20 and not chips[1].any() and not chips[2].any()
    assert face.describe(chips[:0]).shape == (0, 128)
    # the CPU stage's inputs are the descriptors of these chips (the encoder actor then passes them through)
    described = face_inputs(np.stack([image] * 3), boxes, np.array([True, True, False]), DLIB_FACE)  # (3, 128)
    np.testing.assert_allclose(described[0], face.describe(chips[:1])[0], rtol=1e-5, atol=1e-6)
    assert not described[1:].any()
    encoder = quiet_build("lite", None)["face"]
    np.testing.assert_allclose(encoder.features(chips[:1]), described[:1], rtol=1e-5, atol=1e-6)


def test_a_users_deepid_keeps_the_papers_face_path(offline):
    torch.manual_seed(5)
    net = DeepID()
    torch.save(net.state_dict(), offline / "deepid.pth")
    assert encoder_specs("paper", offline)["face"] == DEEPID_FACE
    face = quiet_build("paper", offline)["face"]
    assert face.dim == 260 and face.name == "deepid-260" and face.weights.startswith("sha256:")
    torch.testing.assert_close(face.net.deepid.weight, net.deepid.weight)
    crops = face_inputs(np.zeros((2, 100, 100, 3), np.uint8), np.array([[10, 10, 60, 70]] * 2, np.float32),
                        np.array([True, False]), DEEPID_FACE)
    assert crops.shape == (2, 55, 47, 3)


FALLBACK = textwrap.dedent("""
    import sys, warnings
    sys.modules["dlib"] = None  # `import dlib` raises ImportError, as where no wheel exists
    import numpy as np
    from asrn.encoders import build_encoders, encoder_specs, face_inputs, missing_weights
    warnings.simplefilter("always")
    first = build_encoders("lite", None)
    second = build_encoders("paper", None)
    spec = encoder_specs("lite", None)["face"]
    crops = face_inputs(np.zeros((1, 80, 80, 3), np.uint8), np.array([[5, 5, 60, 70]], np.float32),
                        np.array([True]), spec)
    print("dim", first["face"].dim, second["face"].dim, spec.dim, crops.shape[1:3])
    print("name", first["face"].name)
    print("weights", first["face"].weights)
    print("missing", [str(m) for m in missing_weights("lite", None) if m.modality == "face"])
""")


def test_without_dlib_extraction_falls_back_to_deepid_and_says_so_once(offline):
    done = subprocess.run([sys.executable, "-c", FALLBACK], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert out["dim"] == "260 260 260 (55, 47)"
    assert out["name"].startswith("deepid-260 (fallback: dlib unavailable, ModuleNotFoundError: import of dlib")
    assert out["weights"] == "random-init" and out["missing"] == "['face (deepid.pth)']"
    assert done.stderr.count("dlib's face descriptor is unavailable") == 1, done.stderr
