"""A synthetic feature store with planted relation cues, so training can be tested without videos or weights.

The signal is planted where the paper's mechanisms should find it (§3):
- shots (BDLSTM): a video of T steps is cut into 3-6 shots; each shot has its own background (a random
  mean in a low-rank "scene" subspace of every modality, plus per-step noise), so boundaries are abrupt;
- relevant segments (GLA): the relation cue appears only in 1-2 shots of a video, the rest is background;
- modalities (MFA): each class's cue lives in one or two modalities (`CUE_MODALITIES`), along a fixed
  random unit direction per (class, modality) (`class_prototypes`); inside relevant steps,
  `CUE_AMPLITUDE * prototype` is added (two noise standard deviations along its direction). With 400
  videos, per-class logistic regression on features mean-pooled over the relevant steps reaches test F1 macro
  ~0.88, on features mean-pooled over the whole video ~0.40: the cue is diluted unless one attends;
- missing people (§4.2): has_body / has_face are false on 10-25% of steps, and a whole irrelevant shot
  sometimes has no face; there the modality is zeros and carries no cue.
Labels: one `sub:*` and one `obj:*` per video, plus a second label of one group on ~15% of videos, drawn
with probabilities proportional to SRIV counts (Table 1) raised to `LABEL_EXPONENT` = 0.5, which flattens
the imbalance so the rarest class (obj:sibling, 141 in SRIV) still has ~25 videos at N=400.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asrn.labels import ALL_LABELS, SRIV_COUNTS
from asrn.store import (
    INFO_FILE,
    MODALITIES,
    FeatureStoreError,
    StoreInfo,
    VideoFeatures,
    read_info,
    write_info,
    write_videos,
)

DEFAULT_DIMS: dict[str, int] = {"rgb": 128, "motion": 64, "body": 64, "face": 32}
PRESET = "synthetic"
MIN_VIDEOS = 6  # one each for val and test and some for train
VIDEOS_PER_PART = 200

STEPS_RANGE = (24, 64)  # T per video, inclusive
SHOTS_RANGE = (3, 6)  # shots per video, inclusive
MIN_SHOT_STEPS = 3
RELEVANT_SHOTS_RANGE = (1, 2)
NOISE_STD = 1.0  # per-step noise, per coordinate
SCENE_RANK = 8  # shot backgrounds vary in this many directions per modality
SCENE_STD = 1.0  # shot background norm is about SCENE_STD * sqrt(D), like the noise's
CUE_AMPLITUDE = 2.0  # along a unit prototype, in units of NOISE_STD
MISSING_STEP_RANGE = (0.10, 0.25)  # per-video rate of steps without body / face
FACELESS_SHOT_RATE = 0.2  # chance that an irrelevant shot has no face at all
SECOND_LABEL_RATE = 0.15
LABEL_EXPONENT = 0.5
SPLIT_FRACTIONS = {"train": 0.70, "val": 0.15, "test": 0.15}

# Which modalities carry each class's cue. Fixed by class (not by seed), and in each group every modality
# is the only carrier of one class and shares three pairs, so no single modality suffices.
CUE_MODALITIES: dict[str, tuple[str, ...]] = {
    "sub:dominant": ("body",),
    "sub:competitive": ("motion",),
    "sub:trusting": ("face",),
    "sub:warm": ("face", "body"),
    "sub:friendly": ("rgb", "face"),
    "sub:attached": ("motion", "body"),
    "sub:inhibited": ("rgb", "motion"),
    "sub:assured": ("rgb",),
    "obj:supervisor": ("rgb",),
    "obj:peer": ("body",),
    "obj:service": ("rgb", "body"),
    "obj:parent": ("face",),
    "obj:mating": ("motion", "face"),
    "obj:sibling": ("face", "body"),
    "obj:friendly": ("motion",),
    "obj:hostile": ("rgb", "motion"),
}


@dataclass
class SyntheticVideo:
    """A generated video with the ground truth of where its cue was planted (for tests and plots)."""

    video: VideoFeatures
    shot: np.ndarray  # (T,) int: shot index of each step
    relevant: np.ndarray  # (T,) bool: steps of the shots that carry the relation cue


def _check_dims(dims: dict[str, int] | None) -> dict[str, int]:
    dims = dict(DEFAULT_DIMS if dims is None else dims)
    for m in MODALITIES:
        d = dims.get(m)
        if not isinstance(d, int) or d < SCENE_RANK:
            raise ValueError(f"dims[{m!r}] = {d!r}: need an integer >= {SCENE_RANK} for every modality")
    unknown = sorted(set(dims) - set(MODALITIES))
    if unknown:
        raise ValueError(f"dims has unknown modality {', '.join(unknown)}; expected {', '.join(MODALITIES)}")
    return {m: dims[m] for m in MODALITIES}


def label_probabilities(exponent: float = LABEL_EXPONENT) -> dict[str, float]:
    """Within-group draw probability of each class: SRIV count ** exponent, normalised per group."""
    probs = {}
    for group in ("sub", "obj"):
        names = [n for n in ALL_LABELS if n.startswith(f"{group}:")]
        weights = np.array([SRIV_COUNTS[n] for n in names], np.float64) ** exponent
        probs.update(zip(names, (weights / weights.sum()).tolist(), strict=True))
    return probs


def class_prototypes(seed: int, dims: dict[str, int] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Unit cue direction of each class in each of its `CUE_MODALITIES`: label -> modality -> (D,) float32."""
    dims = _check_dims(dims)
    rng = np.random.default_rng([seed, 1])
    prototypes: dict[str, dict[str, np.ndarray]] = {}
    for label in ALL_LABELS:
        prototypes[label] = {}
        for m in CUE_MODALITIES[label]:
            v = rng.standard_normal(dims[m])
            prototypes[label][m] = (v / np.linalg.norm(v)).astype(np.float32)
    return prototypes


def _scene_bases(seed: int, dims: dict[str, int]) -> dict[str, np.ndarray]:
    """Per modality an orthonormal (SCENE_RANK, D) basis in which shot backgrounds vary."""
    rng = np.random.default_rng([seed, 2])
    return {m: np.linalg.qr(rng.standard_normal((d, SCENE_RANK)))[0].T.astype(np.float32) for m, d in dims.items()}


def _draw_labels(rng: np.random.Generator, num_videos: int) -> list[list[str]]:
    probs = label_probabilities()
    groups = {g: [n for n in ALL_LABELS if n.startswith(f"{g}:")] for g in ("sub", "obj")}
    p = {g: np.array([probs[n] for n in names]) for g, names in groups.items()}
    labels = []
    for _ in range(num_videos):
        picks = {g: int(rng.choice(len(names), p=p[g])) for g, names in groups.items()}
        video_labels = [groups["sub"][picks["sub"]], groups["obj"][picks["obj"]]]
        if rng.random() < SECOND_LABEL_RATE:
            g = "sub" if rng.random() < 0.5 else "obj"
            rest = p[g].copy()
            rest[picks[g]] = 0.0
            video_labels.append(groups[g][int(rng.choice(len(rest), p=rest / rest.sum()))])
        labels.append(sorted(video_labels, key=ALL_LABELS.index))
    return labels


def _assign_splits(rng: np.random.Generator, labels: list[list[str]]) -> list[str]:
    """Exact 70/15/15 counts (each split >= 1), spread evenly over videos sorted by label, so each split
    gets its share of every first sub label and roughly of every obj label."""
    n = len(labels)
    n_val = max(1, round(n * SPLIT_FRACTIONS["val"]))
    n_test = max(1, round(n * SPLIT_FRACTIONS["test"]))
    tie = rng.random(n)
    order = sorted(range(n), key=lambda i: (labels[i][0], labels[i][1], tie[i]))
    phase = (np.arange(n) * (np.sqrt(5) - 1) / 2 + rng.random()) % 1.0  # low-discrepancy positions
    ranked = np.argsort(phase, kind="stable")
    splits = ["train"] * n
    for rank, position in enumerate(ranked):
        if rank < n_val:
            splits[order[position]] = "val"
        elif rank < n_val + n_test:
            splits[order[position]] = "test"
    return splits


def _shot_lengths(rng: np.random.Generator, num_steps: int) -> np.ndarray:
    max_shots = min(SHOTS_RANGE[1], num_steps // MIN_SHOT_STEPS)
    num_shots = int(rng.integers(SHOTS_RANGE[0], max_shots + 1))
    spare = num_steps - num_shots * MIN_SHOT_STEPS
    return MIN_SHOT_STEPS + rng.multinomial(spare, rng.dirichlet(np.full(num_shots, 2.0)))


def _make_video(video_id: str, split: str, labels: list[str], rng: np.random.Generator, dims: dict[str, int],
                fps: float, prototypes: dict[str, dict[str, np.ndarray]],
                bases: dict[str, np.ndarray]) -> SyntheticVideo:
    num_steps = int(rng.integers(STEPS_RANGE[0], STEPS_RANGE[1] + 1))
    lengths = _shot_lengths(rng, num_steps)
    num_shots = len(lengths)
    shot = np.repeat(np.arange(num_shots), lengths)  # (T,)
    num_relevant = int(rng.integers(RELEVANT_SHOTS_RANGE[0], RELEVANT_SHOTS_RANGE[1] + 1))
    relevant_shots = rng.choice(num_shots, size=num_relevant, replace=False)
    relevant = np.isin(shot, relevant_shots)  # (T,)

    present = {}
    for m in ("body", "face"):
        present[m] = rng.random(num_steps) >= rng.uniform(*MISSING_STEP_RANGE)
    faceless = [s for s in range(num_shots) if s not in relevant_shots and rng.random() < FACELESS_SHOT_RATE]
    present["face"] &= ~np.isin(shot, faceless)

    features = {}
    for m in MODALITIES:
        d = dims[m]
        scene = rng.standard_normal((num_shots, SCENE_RANK)).astype(np.float32) * (SCENE_STD * np.sqrt(d / SCENE_RANK))
        x = (scene @ bases[m])[shot]  # (T, D) per-shot background
        x += NOISE_STD * rng.standard_normal((num_steps, d)).astype(np.float32)
        cue = sum((prototypes[label][m] for label in labels if m in prototypes[label]), np.zeros(d, np.float32))
        x[relevant] += CUE_AMPLITUDE * cue  # (T_rel, D) += (D,)
        if m in present:
            x[~present[m]] = 0.0
        features[m] = x

    video = VideoFeatures(
        video_id=video_id, split=split, labels=labels,
        timestamp=(np.arange(num_steps) / fps).astype(np.float32), features=features,
        has_body=present["body"], has_face=present["face"],
    )
    return SyntheticVideo(video=video, shot=shot, relevant=relevant)


def generate_videos(num_videos: int, seed: int = 0, dims: dict[str, int] | None = None,
                    fps: float = 2.0) -> list[SyntheticVideo]:
    """The videos `synthesize_feature_store` writes, in memory, with where their cues were planted.

    Video i has the same labels and features for any num_videos > i (only its split may change).
    """
    if num_videos < MIN_VIDEOS:
        raise ValueError(f"num_videos = {num_videos}: need at least {MIN_VIDEOS} (train, val and test splits)")
    if not fps > 0:
        raise ValueError(f"fps = {fps}: must be positive")
    dims = _check_dims(dims)
    prototypes = class_prototypes(seed, dims)
    bases = _scene_bases(seed, dims)
    label_rng = np.random.default_rng([seed, 3])
    labels = _draw_labels(label_rng, num_videos)
    splits = _assign_splits(label_rng, labels)
    return [
        _make_video(f"synth-{i:05d}", splits[i], labels[i], np.random.default_rng([seed, 4, i]), dims, fps,
                    prototypes, bases)
        for i in range(num_videos)
    ]


def _prepare_out(out: Path) -> None:
    """Refuse to write into a folder holding anything but a synthetic store; clear an old one's parts."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a folder")
    if not out.exists() or not any(out.iterdir()):
        return
    if not (out / INFO_FILE).is_file():
        raise FileExistsError(f"{out}: folder is not empty and holds no feature store; choose an empty --out")
    preset = read_info(out).preset
    if preset != PRESET:
        raise FeatureStoreError(f"{out}: holds a {preset!r} feature store, not a synthetic one; "
                                "refusing to overwrite it")
    for old in out.glob("part-*.parquet"):
        old.unlink()


def synthesize_feature_store(out: str | os.PathLike, num_videos: int = 400, seed: int = 0,
                             dims: dict[str, int] | None = None, fps: float = 2.0) -> Path:
    """Write `num_videos` synthetic videos as a feature store in `out` and return the folder.

    Same arguments give byte-identical files. An existing synthetic store in `out` is replaced.
    """
    out = Path(out)
    videos = [s.video for s in generate_videos(num_videos, seed, dims, fps)]
    dims = _check_dims(dims)
    _prepare_out(out)
    out.mkdir(parents=True, exist_ok=True)
    for part, start in enumerate(range(0, num_videos, VIDEOS_PER_PART)):
        write_videos(out, videos[start:start + VIDEOS_PER_PART], name=f"part-{part:05d}")
    planting = {
        "steps": list(STEPS_RANGE), "shots": list(SHOTS_RANGE), "relevant_shots": list(RELEVANT_SHOTS_RANGE),
        "noise_std": NOISE_STD, "scene_rank": SCENE_RANK, "scene_std": SCENE_STD, "cue_amplitude": CUE_AMPLITUDE,
        "missing_step_rate": list(MISSING_STEP_RANGE), "faceless_shot_rate": FACELESS_SHOT_RATE,
        "second_label_rate": SECOND_LABEL_RATE, "label_weights": f"SRIV count ** {LABEL_EXPONENT}",
        "cue_modalities": {label: list(mods) for label, mods in CUE_MODALITIES.items()},
        "description": "per-shot random backgrounds; class cues (unit prototype * cue_amplitude) added only in "
                       "1-2 relevant shots, in the class's cue modalities; body/face zeroed where absent",
    }
    write_info(out, StoreInfo(
        preset=PRESET, dims=dims, fps=float(fps),
        encoders={m: "planted" for m in MODALITIES}, weights={m: "synthetic" for m in MODALITIES},
        detector="synthetic", extra={"seed": seed, "num_videos": num_videos, "planting": planting},
    ))
    return out
