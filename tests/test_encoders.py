"""asrn.encoders and asrn.weights: preset dims, weights provenance, deterministic random init, crops."""

from __future__ import annotations

import hashlib
import time
import warnings

import numpy as np
import pytest
import torch
import torchvision

from asrn.encoders import (
    DEEPID_FACE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PRESETS,
    DeepID,
    EncoderError,
    build_backbone,
    build_encoders,
    crop_boxes,
    resize_image,
)
from asrn.flow import FLOW_ZERO, dequantize_flow
from asrn.store import MODALITIES
from asrn.weights import RANDOM_INIT, WeightsError, resolve_weights


def lite_inputs(num: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (num, 120, 160, 3), dtype=np.uint8)
    return {"rgb": frames, "motion": rng.uniform(-1, 1, (num, 10, 120, 160)).astype(np.float32),
            "body": frames[:, :100, :50], "face": frames[:, :60, :48]}


def quiet_build(preset: str, weights_dir, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_encoders(preset, weights_dir, **kwargs)


def test_lite_random_init_warns_and_is_fast(offline):
    start = time.perf_counter()
    with pytest.warns(UserWarning, match="random-init"):
        encoders = build_encoders("lite", offline)
    assert time.perf_counter() - start < 20  # ~0.3 s when idle; generous for a loaded 2-core machine
    assert list(encoders) == list(MODALITIES)
    assert {e.weights for m, e in encoders.items() if m != "face"} == {RANDOM_INIT}  # face: dlib's, pretrained


def test_lite_dims(offline):
    encoders = quiet_build("lite", offline)
    inputs = lite_inputs()
    for modality, encoder in encoders.items():
        spec = PRESETS["lite"][modality]
        batch = encoder.preprocess(inputs[modality])
        channels_first = (spec.in_channels, *spec.input_size)  # dlib's face chips stay (h, w, 3) uint8
        assert batch.shape[1:] == (channels_first if modality != "face" else (*spec.input_size, 3))
        out = encoder.encode(batch)
        assert out.shape == (1, spec.dim) == (1, encoder.dim) and out.dtype == torch.float32
    assert {m: e.dim for m, e in encoders.items()} == {"rgb": 512, "motion": 512, "body": 512, "face": 128}


def test_random_init_is_deterministic_across_builds(offline):
    inputs = lite_inputs()
    torch.manual_seed(123)
    first = {m: e.features(inputs[m]) for m, e in quiet_build("lite", offline).items()}
    after_first = torch.rand(3)
    torch.manual_seed(123)
    second = {m: e.features(inputs[m]) for m, e in quiet_build("lite", offline).items()}
    for modality in MODALITIES:
        np.testing.assert_array_equal(first[modality], second[modality])
    torch.testing.assert_close(torch.rand(3), after_first)  # the build does not consume the global RNG
    assert not np.allclose(first["rgb"], first["body"][:, :512])  # modalities get different seeds


def test_weights_file_is_used_with_sha256(offline):
    torch.manual_seed(7)
    state = torchvision.models.resnet18(weights=None).state_dict()
    path = offline / "resnet18.pth"
    torch.save(state, path)
    encoders = quiet_build("lite", offline)
    provenance = f"sha256:{hashlib.sha256(path.read_bytes()).hexdigest()}"
    assert encoders["rgb"].weights == encoders["body"].weights == encoders["motion"].weights == provenance
    assert encoders["face"].weights.startswith("pretrained:dlib_face_recognition_resnet_model_v1@sha256:")
    torch.testing.assert_close(encoders["rgb"].net.conv1.weight, state["conv1.weight"])
    # TSN cross-modality init: RGB filters averaged over channels, replicated over the 10 flow channels
    expected = state["conv1.weight"].mean(1, keepdim=True).expand(-1, 10, -1, -1)
    torch.testing.assert_close(encoders["motion"].net.conv1.weight, expected)


def test_a_users_flow_net_comes_before_the_imagenet_backbone(offline):
    torch.manual_seed(3)
    flow = torchvision.models.resnet18(weights=None)
    flow.conv1 = torch.nn.Conv2d(10, 64, 7, 2, 3, bias=False)  # trained on 10-channel flow stacks
    torch.save(flow.state_dict(), offline / "resnet18_flow.pth")
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), offline / "resnet18.pth")
    encoders = quiet_build("lite", offline)
    torch.testing.assert_close(encoders["motion"].net.conv1.weight, flow.conv1.weight)  # not a cross-modality init
    assert encoders["motion"].weights != encoders["rgb"].weights
    assert encoders["motion"].weights.startswith("sha256:")


def test_weights_from_torchvision_cache(offline, tmp_path):
    checkpoints = tmp_path / "torch-home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(DeepID().state_dict(), offline / "deepid.pth")
    torch.save({"conv1.weight": torch.zeros(1)}, checkpoints / "resnet18-f37072fd.pth")
    state, provenance = resolve_weights("resnet18", None)
    assert provenance == "pretrained:ResNet18_Weights.IMAGENET1K_V1" and "conv1.weight" in state
    assert resolve_weights("deepid", offline)[1].startswith("sha256:")


def test_unreadable_weights_file_names_the_file(offline):
    (offline / "resnet18.pth").write_text("not a checkpoint")
    with pytest.raises(WeightsError, match="resnet18.pth"):
        resolve_weights("resnet18", offline)


def test_paper_dims(offline):
    """Shapes of the paper backbones, traced on the meta device (no weights, no compute); the DeepID net for real
    (the face encoder with a deepid.pth; dlib's descriptor otherwise, tests/test_faces.py)."""
    assert {m: s.dim for m, s in PRESETS["paper"].items()} == {"rgb": 2048, "motion": 2048, "body": 4096, "face": 128}
    for modality, spec in list(PRESETS["paper"].items())[:3]:
        with torch.device("meta"):
            net, provenance = build_backbone(modality, spec, offline)
            out = net.eval()(torch.empty(2, spec.in_channels, *spec.input_size))
        assert out.shape == (2, spec.dim) and provenance == RANDOM_INIT, modality
    face = DeepID(DEEPID_FACE.input_size, 260).eval()
    assert face(torch.rand(2, 3, 55, 47)).shape == (2, 260)


def test_unknown_preset_and_bad_images(offline):
    with pytest.raises(EncoderError, match="huge"):
        build_encoders("huge", offline)
    face = quiet_build("lite", offline)["face"]
    with pytest.raises(EncoderError, match="face"):
        face.preprocess(np.zeros((1, 10, 10, 3), np.float32))


def test_crop_boxes_shapes_content_and_missing():
    frames = np.zeros((3, 100, 200, 3), np.uint8)
    frames[:, 20:60, 50:90] = 200  # a bright square
    boxes = np.array([[50, 20, 90, 60], [-30, -10, 500, 400], [np.nan] * 4], np.float32)
    has = np.array([True, True, True])
    crops = crop_boxes(frames, boxes, has, (32, 16))
    assert crops.shape == (3, 32, 16, 3) and crops.dtype == np.uint8
    assert (crops[0] == 200).all()  # the box's content
    assert 0 < crops[1].mean() < 200  # clamped to the whole frame
    assert not crops[2].any()  # NaN box -> zeros
    crops = crop_boxes(frames, boxes, np.array([False, True, True]), (32, 16))
    assert not crops[0].any()  # has False -> zeros


def test_random_init_features_are_distinct_and_fit_float16(offline):
    """Random-init ResNets use zero-init residuals: without, ResNet101's features reach ~1e5 (inf as float16,
    as the store may keep them) and point the same way for every image; ResNet18 shows the same trend."""
    from skimage import data

    encoders = quiet_build("lite", offline)
    images = np.stack([cv2_resize(data.astronaut()), cv2_resize(data.coffee())])
    for modality in ("rgb", "body"):
        features = encoders[modality].features(images)
        assert np.isfinite(features.astype(np.float16)).all()
        assert np.abs(features).max() < 2.0, modality  # ~0.5 here; ~5-7 with plain random init
        unit = features / np.linalg.norm(features, axis=1, keepdims=True)
        assert float(unit[0] @ unit[1]) < 0.98, modality  # ~0.96-0.976 here; 0.985-0.991 with plain init


def cv2_resize(image: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.resize(image, (160, 160), interpolation=cv2.INTER_AREA)


def old_preprocess(encoder, images: np.ndarray) -> torch.Tensor:
    """The preprocessing the encoders had before issue 14: float32 ImageNet normalisation on the CPU (RGB), or float
    flow stacks taken as they are; both resized to the input size."""
    if encoder.modality == "motion":
        x = torch.from_numpy(np.asarray(images, np.float32))
        if x.shape[-2:] != encoder.input_size:
            x = torch.nn.functional.interpolate(x, size=encoder.input_size, mode="bilinear", align_corners=False,
                                                antialias=True)
        return x
    if images.shape[1:3] != encoder.input_size:
        images = np.stack([resize_image(im, encoder.input_size) for im in images])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def test_uint8_preprocessing_gives_the_old_float_numbers(offline):
    encoders = quiet_build("lite", offline)
    rng = np.random.default_rng(7)
    inputs = lite_inputs(3, seed=7)  # sizes that need resizing
    at_size = {m: rng.integers(0, 256, (3, *e.input_size, 3), dtype=np.uint8) for m, e in encoders.items()
               if m in ("rgb", "body")}  # already at the input size: no resize; face: dlib's chips, test_faces.py
    levels = rng.integers(0, 2 * FLOW_ZERO + 1, (3, 10, 120, 160), dtype=np.uint8)  # as the CPU stage ships flow
    cases = [(m, inputs[m]) for m in ("rgb", "body")] + list(at_size.items())
    for modality, images in cases:
        encoder = encoders[modality]
        new = encoder.preprocess(images)
        assert new.dtype == torch.float32 and new.device == encoder.device
        assert torch.equal(new, old_preprocess(encoder, images)), modality
        np.testing.assert_array_equal(encoder.features(images), encoder.encode(old_preprocess(encoder, images)))
    motion = encoders["motion"]
    old = old_preprocess(motion, dequantize_flow(levels))  # the old path on the same flow, dequantised in numpy
    assert torch.equal(motion.preprocess(levels), old)
    np.testing.assert_array_equal(motion.features(levels), motion.encode(old).numpy())
    floats = inputs["motion"]  # float stacks are still taken as they are
    assert torch.equal(motion.preprocess(floats), old_preprocess(motion, floats))
