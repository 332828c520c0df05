"""The sequence former (paper §4.2) and batch collation into the padded tensors `model.ASRN` reads.

Not every frame has body and face features, so the paper slides a non-overlapping window of three steps over a
video and keeps, in each window, the step where all four features exist. `collate` then pads the kept steps of a
batch of videos to the longest (padding at the end) and builds the masks. A kept step starts a shot when a shot
began after the previous kept step (`kept_shot_starts`), so the model's shots are the store's shots.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from asrn.labels import check_task, encode
from asrn.store import MODALITIES, VideoFeatures

WINDOW = 3  # the paper's sequence-former window: training forms every sequence with it


def select_steps(present: dict[str, np.ndarray], window: int = WINDOW,
                 rng: np.random.Generator | None = None) -> np.ndarray:
    """Indices (T',) of the kept steps, one per non-overlapping window of `window` steps (the last may be short).

    In each window the kept step has the most modalities present (all four where any step has them); ties go to
    the middle step (the earlier middle for even windows), then to the earliest, or with `rng` to a random one:
    training's random sequence former (Recipe.random_steps), which shows the model another of each video's
    equally complete steps every epoch, so it cannot memorise a video by its per-step noise. `window=1` keeps
    every step.
    """
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window = {window!r} must be a positive integer")
    if not present:
        raise ValueError("present is empty: expected modality -> (T,) bool masks")
    masks = {m: np.asarray(p, dtype=bool) for m, p in present.items()}
    lengths = {m: p.shape for m, p in masks.items()}
    if len(set(lengths.values())) > 1 or any(len(shape) != 1 for shape in lengths.values()):
        raise ValueError(f"present masks must all be (T,) of one length, got {lengths}")
    counts = np.sum(list(masks.values()), axis=0, dtype=np.int64)  # (T,) modalities present per step
    t = counts.shape[0]
    if window == 1 or t == 0:
        return np.arange(t, dtype=np.int64)
    n = -(-t // window)  # windows, the last possibly short
    grid = np.full(n * window, -1, dtype=np.int64)
    grid[:t] = counts
    grid = grid.reshape(n, window)  # (W, window); -1 past the end
    size = np.full(n, window, dtype=np.int64)
    size[-1] = t - (n - 1) * window
    pos = np.arange(window)
    middle = (pos == ((size - 1) // 2)[:, None])  # (W, window)
    # lexicographic key: count first, then the middle, then the earliest (each term outweighs all the later ones)
    tie = middle * (2 * window) + (window - 1 - pos) if rng is None else rng.integers(0, 2 * window, grid.shape)
    key = grid * (4 * window) + tie
    key[grid < 0] = -1
    return np.arange(n, dtype=np.int64) * window + key.argmax(axis=1)


def kept_shot_starts(shot_start: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """(T',) bool: whether each kept step (`steps`, increasing indices into the raw (T,) `shot_start`) is the first
    kept step of a shot, i.e. some raw step after the previous kept step, up to this one, started a shot."""
    shot = np.cumsum(np.asarray(shot_start, bool))  # (T,) shot number of each raw step
    kept = shot[steps]  # (T',)
    return np.concatenate([[True], kept[1:] != kept[:-1]]) if kept.size else np.zeros(0, bool)


@dataclass
class Batch:
    """A padded batch: what `ASRN.forward` takes, plus targets and bookkeeping for metrics and plots."""

    features: dict[str, torch.Tensor]  # (B, T, D_m) float32, zero-padded
    present: dict[str, torch.Tensor]  # (B, T) bool, False on padding
    mask: torch.Tensor  # (B, T) bool valid steps, a prefix of each row
    targets: torch.Tensor  # (B, C) float32 multi-hot over labels.task_labels(task)
    video_ids: list[str]
    steps: list[np.ndarray]  # the kept step indices per video (into the original T)
    shot_start: torch.Tensor | None = None  # (B, T) bool: a kept step that opens a shot; False on padding
    shot_known: torch.Tensor | None = None  # (B,) bool: the store has the video's shots (else shot_start is False)

    def inputs(self) -> dict:
        """`ASRN.forward`'s keyword arguments, all of them: every caller feeds the model the same inputs
        (`model(**batch.inputs())`), so an input added here reaches training, evaluation, prediction and scoring."""
        return {"features": self.features, "present": self.present, "mask": self.mask,
                "shot_start": self.shot_start, "shot_known": self.shot_known}

    def _shots(self) -> dict[str, torch.Tensor | None]:
        return {"shot_start": self.shot_start, "shot_known": self.shot_known}

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        def move(x: torch.Tensor) -> torch.Tensor:
            return x.to(device, non_blocking=non_blocking)

        return replace(self, features={m: move(x) for m, x in self.features.items()},
                       present={m: move(p) for m, p in self.present.items()}, mask=move(self.mask),
                       targets=move(self.targets), **{k: v if v is None else move(v) for k, v in self._shots().items()})

    def pin_memory(self) -> Batch:
        """In page-locked host memory, so that a copy to a GPU can overlap the computation (`to(non_blocking)`)."""
        return replace(self, features={m: x.pin_memory() for m, x in self.features.items()},
                       present={m: p.pin_memory() for m, p in self.present.items()}, mask=self.mask.pin_memory(),
                       targets=self.targets.pin_memory(),
                       **{k: v if v is None else v.pin_memory() for k, v in self._shots().items()})


def _kept_steps(video: VideoFeatures, window: int, max_steps: int | None,
                rng: np.random.Generator | None = None) -> np.ndarray:
    steps = select_steps(video.present(), window, rng)
    if steps.size == 0:
        raise ValueError(f"video {video.video_id!r} has no time steps")
    if max_steps is not None and steps.size > max_steps:
        # evenly spaced over the whole video; spacing > 1, so the rounded picks are distinct and increasing
        steps = steps[np.rint(np.linspace(0, steps.size - 1, max_steps)).astype(np.int64)]
    return steps


def collate(videos: Sequence[VideoFeatures], task: str, window: int = WINDOW, max_steps: int | None = None,
            rng: np.random.Generator | None = None) -> Batch:
    """Form each video's sequence (`select_steps`, ties at random with `rng`; `window=1` keeps all), cap it at
    `max_steps` evenly spaced steps, pad to the longest and encode the labels for `task`."""
    check_task(task)
    if not videos:
        raise ValueError("collate needs at least one video")
    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1):
        raise ValueError(f"max_steps = {max_steps!r} must be a positive integer or None")
    steps = [_kept_steps(v, window, max_steps, rng) for v in videos]
    lengths = np.array([s.size for s in steps])
    mask = np.arange(lengths.max())[None, :] < lengths[:, None]  # (B, T); row-major order of mask == kept order
    features, present = {}, {}
    for m in MODALITIES:
        dims = {v.video_id: np.shape(v.features[m])[1:] for v in videos}
        if len(set(dims.values())) > 1:
            raise ValueError(f"modality {m!r}: videos disagree in feature shape: {dims}")
        (width,) = dims[videos[0].video_id]
        out = np.zeros((*mask.shape, width), dtype=np.float32)  # (B, T, D_m)
        kept = zip(videos, steps, strict=True)
        out[mask] = np.concatenate([np.asarray(v.features[m], np.float32)[s] for v, s in kept])
        features[m] = torch.from_numpy(out)
        has = np.zeros(mask.shape, dtype=bool)  # (B, T)
        has[mask] = np.concatenate([v.present()[m][s] for v, s in zip(videos, steps, strict=True)])
        present[m] = torch.from_numpy(has)
    targets = np.stack([encode(v.labels, task) for v in videos])  # (B, C)
    shot_known = np.array([v.shot_start is not None for v in videos])  # (B,)
    shot_start = np.zeros(mask.shape, dtype=bool)  # (B, T)
    for row, v, s in zip(shot_start, videos, steps, strict=True):
        if v.shot_start is not None:
            row[:s.size] = kept_shot_starts(v.shot_start, s)
    return Batch(features=features, present=present, mask=torch.from_numpy(mask),
                 targets=torch.from_numpy(targets), video_ids=[v.video_id for v in videos], steps=steps,
                 shot_start=torch.from_numpy(shot_start), shot_known=torch.from_numpy(shot_known))
