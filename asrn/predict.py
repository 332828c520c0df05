"""`asrn predict`: relation scores and attention figures for videos, with a trained checkpoint, in one process.

Per video: prepare_video + encode_prepared with the preset, fps and encoders the checkpoint's feature store was
made with (checkpoint["store_info"]), rounded to the store's precision (`at_store_precision`: float16 as extract
writes it), the sequence former and ASRN in eval mode, then three files:
  scores.json     per class of the checkpoint's task {"score": p, "threshold": t, "predicted": p >= t} (t: chosen
                  on val at training time, stored in best.pt; --threshold sets one for all), top relations,
                  video, checkpoint, preset, fps, detector, step counts, warnings
  attention.json  the kept steps: timestamps, temporal attention a_t (sums to 1), modality attention c_t per step
                  (image, motion, body, face; sums to 1 over the modalities present), BDLSTM boundaries s_t (with
                  the default boundaries="cuts": the clip's cuts, asrn.shots), shot weights ω, shot index per step,
                  keyframes (one per shot), boundaries_from (cuts, unsupervised or none); plus has_body /
                  has_face and the detected shot_start of every sampled step
  attention.png   paper Fig. 7: a keyframe per shot with the temporal attention as a colour bar under them (light =
                  high), the modality attention over time, and the top relations
Layout: one video -> the files go in --out itself; several videos -> --out/<name>/ per video, where <name> is the
manifest's video_id or the file's stem (a repeated stem gets -2, -3, ...), plus --out/summary.json.

Errors: bad input raises ValueError subclasses (an unreadable video: VideoDecodeError naming the path; a file that
is not an ASRN checkpoint: CheckpointError; features the checkpoint was not trained on: PredictError naming the
modality and both dims). With several videos one failing video does not stop the others: it is printed when it
fails, listed in --out/errors.json, and at the end `PredictFailures` (a PredictError carrying the predictions
that succeeded) is raised, so `asrn predict` exits 1. A video without any person is not an error: it is predicted
from image and motion, and the warning is printed and written to scores.json.

No Ray here: a video is small work for one process, so `asrn predict` takes no `--address` (the other commands
join a Ray cluster with it); the checkpoint is read by asrn.checkpoint, which is Ray-free too.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from asrn.checkpoint import CheckpointError, load_checkpoint  # noqa: F401 - CheckpointError re-exported
from asrn.detect import Detector, build_detector
from asrn.encoders import PRESETS, Encoder, build_encoders, encoder_specs
from asrn.errors import AsrnError
from asrn.features import VideoSettings, VideoStageError, encode_prepared, prepare_video, to_video_features
from asrn.files import write_json
from asrn.locations import Location
from asrn.loop import check_finite_scores
from asrn.manifest import read_manifest
from asrn.model import ASRN
from asrn.plots import plot_attention
from asrn.sequence import collate
from asrn.store import MODALITIES, VideoFeatures, table_to_videos, videos_to_table
from asrn.video import VideoDecodeError, decode_clip

MODALITY_NAMES = {"rgb": "image", "motion": "motion", "body": "body", "face": "face"}  # the paper's words
DISPLAY_SIDE = 320  # px, long side of the keyframes re-decoded for attention.png
EVEN_KEYFRAMES = 5  # keyframes when the model finds no shots (or one): evenly spaced, as the ~5 of paper Fig. 7
MAX_KEYFRAMES = 8  # at most this many shots get a keyframe (those with the most temporal attention)
TOP_K = 3  # relations printed per video
OUTPUT_FILES = ("scores.json", "attention.json", "attention.png")
NO_PERSON = "no person found: predicted from image and motion only"
NO_FACE = "no face found: predicted from image, motion and body only"


class PredictError(AsrnError):
    """Input `asrn predict` cannot use (flags, a checkpoint whose features differ from the preset's); names it."""


class PredictFailures(PredictError):
    """Some of several videos failed; `predictions` holds the others, `errors` one dict per failed video."""

    def __init__(self, message: str, predictions: list[VideoPrediction], errors: list[dict]):
        super().__init__(message)
        self.predictions, self.errors = predictions, errors


@dataclass
class PredictConfig:
    """`asrn predict` flags (same names); no Ray cluster: predict runs in this process."""

    checkpoint: Location  # a local file or a URI
    out: Location  # a local folder or a URI
    videos: list[Location] = field(default_factory=list)  # local files or URIs
    manifest: Location | None = None
    boxes: Location | None = None  # tracks JSON of the single video
    weights_dir: Path | None = None
    threshold: float | None = None  # one threshold for every class; default: the per-class ones in the checkpoint

    def __post_init__(self) -> None:
        self.checkpoint, self.out = Location(self.checkpoint), Location(self.out)
        self.videos = [Location(v) for v in self.videos]
        self.manifest = Location(self.manifest) if self.manifest is not None else None
        self.boxes = Location(self.boxes) if self.boxes is not None else None
        self.weights_dir = Path(self.weights_dir) if self.weights_dir is not None else None
        if not self.videos and self.manifest is None:
            raise PredictError("no videos given: pass VIDEO paths or --manifest CSV")
        if self.videos and self.manifest is not None:
            raise PredictError("give VIDEO paths or --manifest, not both")
        if self.boxes is not None and (len(self.videos) != 1 or self.manifest is not None):
            raise PredictError("--boxes is the tracks JSON of a single video; with several videos use a manifest "
                               "with a boxes column")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise PredictError(f"--threshold must lie in [0, 1], got {self.threshold}")
        if not self.checkpoint.is_file():
            raise PredictError(f"--checkpoint {self.checkpoint}: no such file")
        if self.weights_dir is not None and not self.weights_dir.is_dir():
            raise PredictError(f"--weights-dir {self.weights_dir} is not a folder")


@dataclass
class VideoPrediction:
    """One video's scores and attentions. Per-step arrays are over the K kept steps (the sequence former's)."""

    path: str
    checkpoint: str
    task: str
    variant: str
    labels: tuple[str, ...]  # class names, model output order
    scores: np.ndarray  # (C,) σ(logits)
    thresholds: np.ndarray  # (C,) per-class decision thresholds (chosen on val at training time)
    preset: str
    fps: float
    detector: str
    num_steps: int  # sampled steps T, before the sequence former
    steps: np.ndarray  # (K,) kept step indices into the T sampled steps
    timestamps: np.ndarray  # (K,) seconds
    frame_indices: np.ndarray  # (K,) source frame of each kept step
    temporal_attention: np.ndarray  # (K,) a_t, sums to 1
    modality_attention: np.ndarray  # (K, M) c_t over MODALITIES, 0 for absent modalities
    boundaries: np.ndarray  # (K,) s_t in {0, 1}: step t opens a new shot
    shot_weights: np.ndarray  # (K,) ω_s at the step closing each shot
    shot_index: np.ndarray  # (K,) shot of each kept step, from 0
    has_body: np.ndarray  # (T,) every sampled step
    has_face: np.ndarray  # (T,)
    all_timestamps: np.ndarray  # (T,)
    keyframes: list[int] = field(default_factory=list)  # positions into the K kept steps
    keyframe_images: list[np.ndarray] = field(default_factory=list)  # (h, w, 3) uint8 at display size
    true_labels: list[str] | None = None  # from a manifest, when given
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    boundaries_from: str = "none"  # "cuts": the clip's cuts (asrn.shots); "unsupervised": the paper's detector
    shot_start: np.ndarray | None = None  # (T,) the cut detector's shot starts at every sampled step

    @property
    def predicted(self) -> list[str]:
        return [name for name, p, t in zip(self.labels, self.scores, self.thresholds, strict=True) if p >= t]

    def top(self, k: int = TOP_K) -> list[tuple[str, float]]:
        order = np.argsort(-self.scores, kind="stable")[:k]
        return [(self.labels[i], float(self.scores[i])) for i in order]

    def scores_json(self) -> dict:
        return {
            "video": self.path, "checkpoint": self.checkpoint, "task": self.task, "variant": self.variant,
            "preset": self.preset, "fps": self.fps, "detector": self.detector,
            "scores": {name: {"score": float(p), "threshold": float(t), "predicted": bool(p >= t)}
                       for name, p, t in zip(self.labels, self.scores, self.thresholds, strict=True)},
            "predicted": self.predicted,
            "top": [{"label": name, "score": p} for name, p in self.top(len(self.labels))],
            "num_steps": self.num_steps, "num_kept_steps": int(self.steps.size),
            "steps_with_body": int(self.has_body.sum()), "steps_with_face": int(self.has_face.sum()),
            **({"true_labels": self.true_labels} if self.true_labels is not None else {}),
            "warnings": self.warnings, "seconds": round(self.seconds, 3),
        }

    def attention_json(self) -> dict:
        shots = []
        for s in np.unique(self.shot_index):
            members = np.flatnonzero(self.shot_index == s)
            shots.append({"shot": int(s), "start": float(self.timestamps[members[0]]),
                          "end": float(self.timestamps[members[-1]]), "steps": int(members.size),
                          "attention": float(self.temporal_attention[members].sum()),
                          "weight": float(self.shot_weights[members].sum())})
        return {
            "video": self.path, "variant": self.variant, "modalities": [MODALITY_NAMES[m] for m in MODALITIES],
            "timestamps": self.timestamps.tolist(), "steps": self.steps.tolist(),
            "frame_indices": self.frame_indices.tolist(),
            "temporal_attention": self.temporal_attention.tolist(),
            "modality_attention": self.modality_attention.tolist(),
            "boundaries": self.boundaries.tolist(), "boundaries_from": self.boundaries_from,
            "shot_weights": self.shot_weights.tolist(), "shot_index": self.shot_index.tolist(), "shots": shots,
            "keyframes": [{"step": int(self.steps[k]), "time": float(self.timestamps[k]),
                           "shot": int(self.shot_index[k])} for k in self.keyframes],
            "has_body": self.has_body[self.steps].tolist(), "has_face": self.has_face[self.steps].tolist(),
            "sampled_steps": {"timestamps": self.all_timestamps.tolist(), "has_body": self.has_body.tolist(),
                              "has_face": self.has_face.tolist(),
                              **({"shot_start": self.shot_start.tolist()} if self.shot_start is not None else {})},
        }


# ---------------------------------------------------------------- the checkpoint and its features


def feature_settings(checkpoint: dict, weights_dir: Path | None = None) -> VideoSettings:
    """The extraction settings the checkpoint was trained with; PredictError when no preset makes its features.

    The store's preset must be one `asrn extract` has (paper, lite), and the dims of the store and of the model
    must equal what that preset's encoders produce.
    """
    where = checkpoint.get("path", "checkpoint")
    info = checkpoint["store_info"]
    preset, dims, fps = info.get("preset"), dict(info.get("dims") or {}), float(info.get("fps") or 0)
    if preset not in PRESETS:
        options = "; ".join(f"{p}: " + ", ".join(f"{m} {s.dim}" for m, s in specs.items())
                            for p, specs in PRESETS.items())
        raise PredictError(f"{where}: trained on a feature store of preset {preset!r} (dims "
                           + ", ".join(f"{m} {d}" for m, d in dims.items())
                           + f"), which no video encoder produces ({options}); predict needs a checkpoint "
                             "trained on features from `asrn extract`")
    if not fps > 0:
        raise PredictError(f"{where}: store_info has no sampling rate (fps = {info.get('fps')!r})")
    model_dims = checkpoint["model_config"]["dims"]
    for m in MODALITIES:
        made = encoder_specs(preset, weights_dir)[m].dim  # the face encoder depends on weights_dir
        for name, have in (("its feature store", dims.get(m)), ("its model", model_dims.get(m, made))):
            if have != made:
                raise PredictError(f"{where}: {name} has {m} dim {have}, but the {preset} preset's {m} encoder "
                                   f"produces dim {made}: the checkpoint was not trained on {preset} features")
    return VideoSettings(preset=preset, fps=fps, weights_dir=weights_dir)


def _check_encoders(checkpoint: dict, encoders: dict[str, Encoder]) -> None:
    dims = checkpoint["model_config"]["dims"]
    for m, d in dims.items():
        if m not in encoders:
            raise PredictError(f"encoders lack modality {m}, which the checkpoint's model reads")
        if encoders[m].dim != d:
            raise PredictError(f"{checkpoint.get('path', 'checkpoint')}: its model reads {m} dim {d}, the given "
                               f"{m} encoder produces dim {encoders[m].dim}")


def _weights_warning(checkpoint: dict, encoders: dict[str, Encoder]) -> str | None:
    trained = checkpoint["store_info"].get("weights") or {}
    differ = [f"{m} {trained[m]} (now {e.weights})" for m, e in encoders.items()
              if m in trained and trained[m] != e.weights]
    if differ:
        return ("encoder weights differ from those the checkpoint was trained on: " + ", ".join(differ)
                + "; the scores may be meaningless (give the same --weights-dir)")
    return None


# ---------------------------------------------------------------- one video


def shot_indices(boundaries: np.ndarray) -> np.ndarray:
    """(K,) s_t in {0, 1} -> (K,) shot of each step from 0 (a boundary at step t opens a shot; s_0 opens shot 0)."""
    opens = np.asarray(boundaries) > 0.5
    if opens.size:
        opens[0] = False
    return np.cumsum(opens).astype(np.int64)


def keyframe_positions(shot_index: np.ndarray, attention: np.ndarray, even: int = EVEN_KEYFRAMES,
                       most: int = MAX_KEYFRAMES, real_shots: bool = False) -> list[int]:
    """Kept-step positions to show: per shot the step of highest temporal attention (at most `most` shots, those
    with the most attention). `real_shots`: the shots are the video's own (the model's boundaries are the detected
    cuts), so a single-shot video shows one keyframe; otherwise fewer than two shots show `even` evenly spaced steps
    (the paper's detector finding no shot says nothing about the video)."""
    shots = np.unique(shot_index)
    if shots.size < 2 and not (real_shots and shots.size):
        return sorted(set(np.rint(np.linspace(0, attention.size - 1, min(even, attention.size))).astype(int)))
    per_shot = [(float(attention[shot_index == s].sum()), int(np.flatnonzero(shot_index == s)[
        np.argmax(attention[shot_index == s])])) for s in shots]
    best = sorted(per_shot, key=lambda x: -x[0])[:most]
    return sorted(pos for _, pos in best)


def _display_frames(path: str, fps: float, frame_indices: np.ndarray, fallback: np.ndarray,
                    warnings: list[str]) -> list[np.ndarray]:
    """The frames at `frame_indices` re-decoded at DISPLAY_SIDE; `fallback` (encoder-size rgb) if that fails."""
    try:
        clip = decode_clip(path, fps=fps, flow_pairs=0, flow_side=8, max_side=DISPLAY_SIDE)
    except Exception as e:  # noqa: BLE001 - the prediction stands; only the figure gets smaller frames
        warnings.append(f"keyframes shown at encoder size: re-decoding failed ({e})")
        return list(fallback)
    by_index = {int(i): frame for i, frame in zip(clip.frame_indices, clip.frames, strict=True)}
    nearest = clip.frame_indices[np.abs(clip.frame_indices[None, :] - frame_indices[:, None]).argmin(1)]
    return [by_index.get(int(i), by_index[int(j)]) for i, j in zip(frame_indices, nearest, strict=True)]


STORE_DTYPE = "float16"  # what `asrn extract` writes; a checkpoint's store_info.dtype says otherwise when recorded


def at_store_precision(video: VideoFeatures, store_info: dict) -> VideoFeatures:
    """The video as the checkpoint's store holds it: through the store's own row writer and reader at the store's
    dtype (features.json's `dtype`, else float16), so the model sees the values it was trained on, not float32
    features it never saw."""
    return table_to_videos(videos_to_table([video], store_info.get("dtype") or STORE_DTYPE))[0]


def _extract(path: str, boxes: str | Path | None, settings: VideoSettings, detector: Detector | None,
             encoders: dict[str, Encoder]):
    """prepare_video + encode_prepared of one video; an unreadable video stays a VideoDecodeError."""
    try:
        prepared = prepare_video(path, str(boxes) if boxes else None, settings, detector)
        return prepared, encode_prepared(prepared, encoders)
    except VideoStageError as e:
        if isinstance(e.__cause__, VideoDecodeError):
            raise e.__cause__ from None
        raise PredictError(f"{path}: {e.stage} failed: {e.error}: {e}") from e
    except Exception as e:
        raise PredictError(f"{path}: encode failed: {type(e).__name__}: {e}") from e


def predict_video(path: str | Path, model: ASRN, checkpoint: dict, encoders: dict[str, Encoder],
                  detector: Detector | None = None, boxes: str | Path | None = None,
                  threshold: float | None = None) -> VideoPrediction:
    """Extract one video's features in this process as the checkpoint's store was made, and run the model.

    `model`, `checkpoint` from load_checkpoint; `encoders` from build_encoders(preset of the checkpoint) so that
    several videos share them; boxes (tracks JSON) over detector over extract's default detector chain.
    `threshold` replaces the checkpoint's per-class thresholds when given.
    Raises VideoDecodeError (naming the path) for an unreadable video, PredictError for another failed stage.
    """
    start = time.monotonic()
    path = str(path)
    settings = feature_settings(checkpoint)
    _check_encoders(checkpoint, encoders)
    prepared, features = _extract(path, boxes, settings, detector, encoders)
    warnings = list(prepared.warnings)
    if not prepared.has_body.any() and not prepared.has_face.any():
        warnings.append(NO_PERSON)
    elif not prepared.has_face.any():
        warnings.append(NO_FACE)
    if (note := _weights_warning(checkpoint, encoders)) is not None:
        warnings.append(note)

    task = checkpoint["task"]
    video = at_store_precision(to_video_features(prepared, features, Path(path).stem, "test", ()),
                               checkpoint["store_info"])
    batch = collate([video], task)
    with torch.no_grad():
        out = model.eval()(**batch.inputs())
    steps = batch.steps[0]  # (K,)
    k = steps.size
    temporal = out.temporal_attention[0, :k].float().numpy()  # (K,)
    boundaries = out.boundaries[0, :k].float().numpy()  # (K,)
    shots = shot_indices(boundaries)
    boundaries_from = model.config.boundaries if model.config.variant in ("asrn", "no-mfa") else "none"  # BDLSTM's
    keyframes = keyframe_positions(shots, temporal, real_shots=boundaries_from == "cuts")  # s_t = the cuts
    frame_indices = prepared.frame_indices[steps]
    images = _display_frames(path, settings.fps, frame_indices[keyframes], prepared.rgb[steps][keyframes], warnings)
    thresholds = np.full(len(checkpoint["labels"]), threshold) if threshold is not None \
        else np.asarray(checkpoint["thresholds"], np.float64)
    scores = check_finite_scores(torch.sigmoid(out.logits[0].float()).numpy(), f"{path}: {checkpoint.get('path')}")
    return VideoPrediction(
        path=path, checkpoint=str(checkpoint.get("path", "")), task=task, variant=model.config.variant,
        labels=tuple(checkpoint["labels"]), scores=scores, thresholds=thresholds, preset=settings.preset,
        fps=settings.fps, detector=prepared.detector,
        num_steps=prepared.num_steps, steps=steps, timestamps=prepared.timestamps[steps].astype(np.float64),
        frame_indices=frame_indices, temporal_attention=temporal,
        modality_attention=out.modality_attention[0, :k].float().numpy(),  # (K, M)
        boundaries=boundaries, shot_weights=out.shot_weights[0, :k].float().numpy(), shot_index=shots,
        has_body=prepared.has_body.astype(bool), has_face=prepared.has_face.astype(bool),
        all_timestamps=prepared.timestamps.astype(np.float64), keyframes=keyframes, keyframe_images=images,
        warnings=warnings, seconds=time.monotonic() - start,
        boundaries_from=boundaries_from,
        shot_start=prepared.shot_start.astype(bool))


def write_prediction(prediction: VideoPrediction, out: Path | Location) -> dict[str, Location]:
    """scores.json, attention.json and attention.png of one video in `out`."""
    out = Location(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {name: out / name for name in OUTPUT_FILES}
    write_json(files["scores.json"], prediction.scores_json())
    write_json(files["attention.json"], prediction.attention_json())
    p = prediction
    plot_attention(
        files["attention.png"], p.keyframe_images, p.timestamps[p.keyframes], p.timestamps, p.temporal_attention,
        p.modality_attention, [MODALITY_NAMES[m] for m in MODALITIES], p.timestamps[1:][np.diff(p.shot_index) > 0],
        dict(zip(p.labels, p.scores.tolist(), strict=True)),
        dict(zip(p.labels, p.thresholds.tolist(), strict=True)),
        title=f"{Path(p.path).name}: {p.task} relations, {p.variant} ({p.preset} features, detector {p.detector})",
        notes=p.warnings, step=1.0 / p.fps, keyframe_shots=p.shot_index[p.keyframes].tolist())
    return files


# ---------------------------------------------------------------- the command


def _video_list(config: PredictConfig) -> list[tuple[str, str | None, list[str] | None, str]]:
    """(path, boxes, true labels, output name) per video."""
    if config.manifest is not None:
        return [(e.path, e.boxes, list(e.labels), e.video_id) for e in read_manifest(config.manifest)]
    seen: dict[str, int] = {}
    videos = []
    for v in config.videos:
        stem = Path(v.name).stem
        seen[stem] = seen.get(stem, 0) + 1
        name = stem if seen[stem] == 1 else f"{stem}-{seen[stem]}"
        videos.append((str(v), str(config.boxes) if config.boxes else None, None, name))
    return videos


def _report(prediction: VideoPrediction, out: Path) -> None:
    top = ", ".join(f"{name} {p:.2f}" for name, p in prediction.top())
    predicted = ", ".join(prediction.predicted) or "none above its threshold"
    print(f"predict: {prediction.path}: top relations: {top} (predicted: {predicted}; "
          f"{prediction.steps.size} steps, {prediction.seconds:.1f} s)", flush=True)
    for line in prediction.warnings:
        print(f"predict: note: {prediction.path}: {line}", flush=True)
    print(f"predict: outputs in {out}: {', '.join(OUTPUT_FILES)}", flush=True)


def predict(config: PredictConfig) -> list[VideoPrediction]:
    """`asrn predict`: model and encoders loaded once, then each video predicted and written (module docstring)."""
    videos = _video_list(config)
    if not videos:
        raise PredictError(f"{config.manifest}: lists no videos")
    model, checkpoint = load_checkpoint(config.checkpoint)
    settings = feature_settings(checkpoint, config.weights_dir)  # before the encoders: a mismatch fails fast
    encoders = build_encoders(settings.preset, settings.weights_dir)
    detector = None if all(boxes for _, boxes, _, _ in videos) else build_detector(settings.weights_dir)
    single = len(videos) == 1
    predictions, errors, summary = [], [], []
    for path, boxes, labels, name in videos:
        out = config.out if single else config.out / name
        try:
            prediction = predict_video(path, model, checkpoint, encoders, detector, boxes, config.threshold)
        except (ValueError, OSError) as e:
            if single:
                raise
            errors.append({"video": path, "error": type(e).__name__, "message": str(e)})
            summary.append({"video": path, "out": None, "error": str(e)})
            print(f"predict: error: {path}: {e}", file=sys.stderr, flush=True)
            continue
        prediction.true_labels = labels
        write_prediction(prediction, out)
        _report(prediction, out)
        predictions.append(prediction)
        summary.append({"video": path, "out": str(out), "top": prediction.top(), "predicted": prediction.predicted,
                        "warnings": prediction.warnings})
    if not single:
        write_json(config.out / "summary.json", {"checkpoint": str(config.checkpoint), "videos": summary})
        print(f"predict: {len(predictions)} of {len(videos)} videos predicted; summary in "
              f"{config.out / 'summary.json'}", flush=True)
    if errors:
        write_json(config.out / "errors.json", errors)
        raise PredictFailures(f"{len(errors)} of {len(videos)} videos failed (listed in "
                              f"{config.out / 'errors.json'}; first: {errors[0]['message']})", predictions, errors)
    return predictions
