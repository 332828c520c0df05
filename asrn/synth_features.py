"""A synthetic feature store with planted relation cues, so training can be tested without videos or weights.

It stands in for SRIV, which is not public: it rewards what the paper's model does (§3) and nothing else.
- labels (`draw_labels`): each class independently at its SRIV Table 1 rate (count / 3,124), at least one `sub:*`
  and one `obj:*` per video; the Bernoulli rates are scaled down per group so that, after an empty group is given
  one class (drawn in proportion to its rate), every class's marginal rate is exactly Table 1's (~2.9 sub and
  ~1.25 obj labels a video);
- shots (BDLSTM): a video of T steps is cut into 3-6 shots; each shot has its own full-rank background (an
  isotropic random mean in every modality, no low-rank subspace a fixed projection could remove) and its own noise
  level, so shot boundaries are abrupt changes of statistics; the true shot starts go in the store's `shot_start`
  column, where `asrn extract` writes the cuts it detects;
- events (GLA): the relation is shown in 1-2 short interaction events (EVENT_STEPS = 6-10 raw steps, 2-4 steps after
  the sequence former; ~18% of a video's kept steps in all), each inside one shot; every label is shown in exactly
  one of them, and nowhere else;
- cues (MFA): in an event, each of its labels adds `amplitude * (cos θ_t u1 + sin θ_t u2)` in each of the class's
  `CUE_MODALITIES`, where θ_t turns from 0 to π/2 over the event (the cue changes along the event, it is not a
  constant offset) and (u1, u2) are fixed orthonormal directions per (class, modality) (`class_prototypes`); every
  class also carries a weaker cue (RGB_CUE_SCALE) in rgb, so an rgb-only model learns something;
- missing people (§4.2): has_body / has_face are false on 10-25% of the steps outside events, and a whole shot
  without an event sometimes has no face; there the modality is zeros and carries no cue. During an event both
  people are visible, so the sequence former (one step per 3-step window, one with all four modalities) keeps one
  event step per window that lies inside the event.
A linear probe on features mean-pooled over a video scores well below the same probe pooled over the event steps
(tests/test_synth_features.py; 800 videos: test mAP 0.34 against 0.73): the cue is diluted unless one attends.
benchmarks/results/ablation.md shows what that does to the paper's variants.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asrn.errors import AsrnError
from asrn.labels import ALL_LABELS, SRIV_COUNTS
from asrn.store import (
    INFO_FILE,
    INPUT_STATS_KEY,
    MODALITIES,
    FeatureStoreError,
    StoreInfo,
    VideoFeatures,
    input_stats_record,
    read_info,
    write_info,
    write_videos,
)

DEFAULT_DIMS: dict[str, int] = {"rgb": 128, "motion": 64, "body": 64, "face": 32}
PRESET = "synthetic"
MIN_VIDEOS = 6  # one each for val and test and some for train
VIDEOS_PER_PART = 200
SRIV_VIDEOS = 3124  # paper §4.1: SRIV's number of videos; a class's rate is its Table 1 count over this

STEPS_RANGE = (48, 96)  # T per video, inclusive: 16-32 steps after the sequence former's 3-step windows
SHOTS_RANGE = (3, 6)  # shots per video, inclusive
MIN_SHOT_STEPS = 9
EVENTS_RANGE = (1, 2)  # interaction events per video, each in its own shot
EVENT_STEPS = (6, 10)  # raw steps per event, inclusive (2-3 windows); at least 2 * window - 1 so one survives
NOISE_STD = 1.0  # per-step noise, per coordinate, of a shot with noise scale 1
SHOT_NOISE_RANGE = (0.75, 1.25)  # per-shot noise scale: shots differ in spread as well as in mean
SCENE_STD = 1.0  # per-coordinate std of a shot's (full-rank, isotropic) background mean
CUE_AMPLITUDE = 3.0  # norm of a class's cue in one of its CUE_MODALITIES, in units of NOISE_STD
EVENT_GAIN_RANGE = (0.75, 1.25)  # per-event scale of every cue in it: some interactions are clearer
RGB_CUE_SCALE = 0.5  # the rgb cue of a class whose CUE_MODALITIES lack rgb, relative to CUE_AMPLITUDE
MISSING_STEP_RANGE = (0.10, 0.25)  # per-video rate of steps without body / face, outside events
FACELESS_SHOT_RATE = 0.2  # chance that a shot without an event has no face at all
SPLIT_FRACTIONS = {"train": 0.70, "val": 0.15, "test": 0.15}

# Which modalities carry each class's cue at full amplitude (rgb also weakly for every class). Fixed by class (not
# by seed), and in each group every modality is the only carrier of one class and shares three pairs, so no single
# modality suffices.
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


class SyntheticDataError(AsrnError):
    """Arguments the generator cannot honour (too few videos, a bad width or fps); the message names the argument."""


@dataclass(frozen=True)
class CueEvent:
    """One interaction: raw steps [start, stop) inside one shot, showing `labels`."""

    start: int
    stop: int
    labels: tuple[str, ...]


@dataclass
class SyntheticVideo:
    """A generated video with the ground truth of where its cues were planted (for tests, plots and diagnostics)."""

    video: VideoFeatures
    shot: np.ndarray  # (T,) int: shot index of each step
    relevant: np.ndarray  # (T,) bool: the steps of the cue events
    events: tuple[CueEvent, ...] = ()


def _check_dims(dims: dict[str, int] | None) -> dict[str, int]:
    dims = dict(DEFAULT_DIMS if dims is None else dims)
    for m in MODALITIES:
        d = dims.get(m)
        if not isinstance(d, int) or isinstance(d, bool) or d < 2:
            raise SyntheticDataError(f"dims[{m!r}] = {d!r}: need an integer >= 2 for every modality")
    unknown = sorted(set(dims) - set(MODALITIES))
    if unknown:
        raise SyntheticDataError(f"dims has unknown modality {', '.join(unknown)}; expected {', '.join(MODALITIES)}")
    return {m: dims[m] for m in MODALITIES}


# ---------------------------------------------------------------------------------------------------------------
# Labels at SRIV's rates


def label_rates() -> dict[str, float]:
    """SRIV's rate of each class (paper Table 1 count / 3,124 videos): the target marginal of `draw_labels`."""
    return {name: SRIV_COUNTS[name] / SRIV_VIDEOS for name in ALL_LABELS}


def _group_probabilities(rates: np.ndarray) -> np.ndarray:
    """Bernoulli rates k * rates such that drawing each class with them, then giving an empty group one class
    (p ∝ rates), has marginals `rates`: k Σr + Π(1 - k r) = Σr, solved by bisection (the left side grows with k)."""
    total = rates.sum()
    lo, hi = 0.0, 1.0
    for _ in range(60):
        k = (lo + hi) / 2
        if k * total + np.prod(1.0 - k * rates) < total:
            lo = k
        else:
            hi = k
    return rates * (lo + hi) / 2


GROUPS: dict[str, tuple[str, ...]] = {g: tuple(n for n in ALL_LABELS if n.startswith(f"{g}:")) for g in ("sub", "obj")}
_RATES = label_rates()
_DRAW_P = {g: _group_probabilities(np.array([_RATES[n] for n in names])) for g, names in GROUPS.items()}


def draw_labels(rng: np.random.Generator) -> tuple[str, ...]:
    """One video's labels, in ALL_LABELS order: each class independently, at least one per group, with marginal
    rates equal to SRIV's (`label_rates`). Shared by `asrn synth features` and `asrn synth videos`."""
    labels: list[str] = []
    for group, names in GROUPS.items():
        p = _DRAW_P[group]
        hits = rng.random(len(names)) < p
        if not hits.any():
            hits[int(rng.choice(len(names), p=p / p.sum()))] = True
        labels += [n for n, hit in zip(names, hits, strict=True) if hit]
    return tuple(labels)


# ---------------------------------------------------------------------------------------------------------------
# Cues, shots, events


def _cue_scale(label: str, modality: str) -> float:
    if modality in CUE_MODALITIES[label]:
        return 1.0
    return RGB_CUE_SCALE if modality == "rgb" else 0.0


def class_prototypes(seed: int, dims: dict[str, int] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """The cue of each class in each modality that carries it: label -> modality -> (2, D) float32, two orthonormal
    directions (u1, u2) the cue turns between over an event, scaled by the modality's weight (1, or RGB_CUE_SCALE
    for the weak rgb cue)."""
    dims = _check_dims(dims)
    rng = np.random.default_rng([seed, 1])
    prototypes: dict[str, dict[str, np.ndarray]] = {}
    for label in ALL_LABELS:
        prototypes[label] = {}
        for m in MODALITIES:
            scale = _cue_scale(label, m)
            if scale > 0:
                q = np.linalg.qr(rng.standard_normal((dims[m], 2)))[0].T  # (2, D) orthonormal rows
                prototypes[label][m] = (scale * q).astype(np.float32)
    return prototypes


def _shot_lengths(rng: np.random.Generator, num_steps: int) -> np.ndarray:
    max_shots = min(SHOTS_RANGE[1], num_steps // MIN_SHOT_STEPS)
    num_shots = int(rng.integers(SHOTS_RANGE[0], max_shots + 1))
    spare = num_steps - num_shots * MIN_SHOT_STEPS
    return MIN_SHOT_STEPS + rng.multinomial(spare, rng.dirichlet(np.full(num_shots, 2.0)))


def _plan_events(rng: np.random.Generator, labels: tuple[str, ...], lengths: np.ndarray) -> tuple[CueEvent, ...]:
    """1-2 events in distinct shots; every label in exactly one event and every event showing at least one."""
    num_events = min(int(rng.integers(EVENTS_RANGE[0], EVENTS_RANGE[1] + 1)), len(labels), len(lengths))
    shots = np.sort(rng.choice(len(lengths), size=num_events, replace=False))
    owner = np.concatenate([rng.permutation(num_events), rng.integers(num_events, size=len(labels) - num_events)])
    owner = owner[rng.permutation(len(labels))]  # (L,) event of each label, every event hit at least once
    starts = np.concatenate([[0], np.cumsum(lengths)])
    events = []
    for k, s in enumerate(shots):
        length = min(int(rng.integers(EVENT_STEPS[0], EVENT_STEPS[1] + 1)), int(lengths[s]))
        start = int(starts[s] + rng.integers(0, lengths[s] - length + 1))
        events.append(CueEvent(start, start + length, tuple(n for n, o in zip(labels, owner, strict=True) if o == k)))
    return tuple(events)


def _make_video(video_id: str, split: str, labels: tuple[str, ...], rng: np.random.Generator, dims: dict[str, int],
                fps: float, prototypes: dict[str, dict[str, np.ndarray]]) -> SyntheticVideo:
    num_steps = int(rng.integers(STEPS_RANGE[0], STEPS_RANGE[1] + 1))
    lengths = _shot_lengths(rng, num_steps)
    num_shots = len(lengths)
    shot = np.repeat(np.arange(num_shots), lengths)  # (T,)
    events = _plan_events(rng, labels, lengths)
    relevant = np.zeros(num_steps, bool)  # (T,)
    for e in events:
        relevant[e.start:e.stop] = True
    event_shots = np.unique(shot[relevant])

    present = {}
    for m in ("body", "face"):
        present[m] = (rng.random(num_steps) >= rng.uniform(*MISSING_STEP_RANGE)) | relevant
    faceless = [s for s in range(num_shots) if s not in event_shots and rng.random() < FACELESS_SHOT_RATE]
    present["face"] &= ~np.isin(shot, faceless)

    noise_scale = rng.uniform(*SHOT_NOISE_RANGE, size=num_shots).astype(np.float32)[shot, None]  # (T, 1)
    gains = [rng.uniform(*EVENT_GAIN_RANGE) for _ in events]
    features = {}
    for m in MODALITIES:
        d = dims[m]
        background = SCENE_STD * rng.standard_normal((num_shots, d)).astype(np.float32)  # (S, D) full rank
        x = background[shot] + NOISE_STD * noise_scale * rng.standard_normal((num_steps, d)).astype(np.float32)
        for e, gain in zip(events, gains, strict=True):
            theta = np.linspace(0.0, np.pi / 2, e.stop - e.start, dtype=np.float32)  # the cue turns u1 -> u2
            turn = np.stack([np.cos(theta), np.sin(theta)], axis=1)  # (L_e, 2)
            for label in e.labels:
                if m in prototypes[label]:
                    x[e.start:e.stop] += (gain * CUE_AMPLITUDE) * (turn @ prototypes[label][m])  # (L_e, D)
        if m in present:
            x[~present[m]] = 0.0
        features[m] = x

    video = VideoFeatures(
        video_id=video_id, split=split, labels=list(labels),
        timestamp=(np.arange(num_steps) / fps).astype(np.float32), features=features,
        has_body=present["body"], has_face=present["face"],
        shot_start=np.concatenate([[True], shot[1:] != shot[:-1]]),  # the true shot changes, as extract stores cuts
    )
    return SyntheticVideo(video=video, shot=shot, relevant=relevant, events=events)


def _assign_splits(rng: np.random.Generator, labels: list[tuple[str, ...]]) -> list[str]:
    """Exact 70/15/15 counts (each split >= 1), spread evenly over videos sorted by label set, so each split gets
    about its share of every class."""
    n = len(labels)
    n_val = max(1, round(n * SPLIT_FRACTIONS["val"]))
    n_test = max(1, round(n * SPLIT_FRACTIONS["test"]))
    tie = rng.random(n)
    order = sorted(range(n), key=lambda i: (labels[i], tie[i]))
    phase = (np.arange(n) * (np.sqrt(5) - 1) / 2 + rng.random()) % 1.0  # low-discrepancy positions
    ranked = np.argsort(phase, kind="stable")
    splits = ["train"] * n
    for rank, position in enumerate(ranked):
        if rank < n_val:
            splits[order[position]] = "val"
        elif rank < n_val + n_test:
            splits[order[position]] = "test"
    return splits


def generate_videos(num_videos: int, seed: int = 0, dims: dict[str, int] | None = None,
                    fps: float = 2.0) -> list[SyntheticVideo]:
    """The videos `synthesize_feature_store` writes, in memory, with where their cues were planted.

    Video i has the same labels and features for any num_videos > i (only its split may change).
    """
    if num_videos < MIN_VIDEOS:
        raise SyntheticDataError(f"num_videos = {num_videos}: need at least {MIN_VIDEOS} (train, val and test splits)")
    if not fps > 0:
        raise SyntheticDataError(f"fps = {fps}: must be positive")
    dims = _check_dims(dims)
    prototypes = class_prototypes(seed, dims)
    labels = [draw_labels(np.random.default_rng([seed, 3, i])) for i in range(num_videos)]
    splits = _assign_splits(np.random.default_rng([seed, 5]), labels)
    return [
        _make_video(f"synth-{i:05d}", splits[i], labels[i], np.random.default_rng([seed, 4, i]), dims, fps,
                    prototypes)
        for i in range(num_videos)
    ]


def generator_parameters() -> dict:
    """Every parameter of the generator, as recorded in features.json (`extra.planting`)."""
    return {
        "steps": list(STEPS_RANGE), "shots": list(SHOTS_RANGE), "min_shot_steps": MIN_SHOT_STEPS,
        "events": list(EVENTS_RANGE), "event_steps": list(EVENT_STEPS), "noise_std": NOISE_STD,
        "shot_noise_scale": list(SHOT_NOISE_RANGE), "scene_std": SCENE_STD, "scene_rank": "full",
        "cue_amplitude": CUE_AMPLITUDE, "event_gain": list(EVENT_GAIN_RANGE), "rgb_cue_scale": RGB_CUE_SCALE,
        "missing_step_rate": list(MISSING_STEP_RANGE), "faceless_shot_rate": FACELESS_SHOT_RATE,
        "split_fractions": SPLIT_FRACTIONS,
        "label_rates": {name: round(rate, 6) for name, rate in label_rates().items()},
        "label_draw": "each class independently at count / 3124 (scaled per group so that, with one class forced "
                      "into an empty group, the marginals equal Table 1's); >= 1 sub and >= 1 obj label",
        "cue_modalities": {label: list(mods) for label, mods in CUE_MODALITIES.items()},
        "description": "per-shot full-rank random backgrounds and noise levels; each label shown in one of 1-2 short "
                       "events (one shot each), as cue_amplitude * event gain * (cos θ u1 + sin θ u2) with θ turning "
                       "0 -> π/2 over the event, in the class's cue modalities (rgb at rgb_cue_scale otherwise); "
                       "body/face present during events, zeroed where absent",
    }


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
    write_info(out, StoreInfo(
        preset=PRESET, dims=dims, fps=float(fps),
        encoders={m: "planted" for m in MODALITIES}, weights={m: "synthetic" for m in MODALITIES},
        detector="synthetic", extra={"seed": seed, "num_videos": num_videos, "planting": generator_parameters(),
                                     INPUT_STATS_KEY: input_stats_record(out)},
    ))
    return out
