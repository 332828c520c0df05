"""Direct reads of a small feature store by each Ray Train worker: no Ray Data pipeline, no object store.

A store of a few hundred MB is read by pyarrow in well under a second, while building, filtering and materializing
Ray Data datasets costs tens of seconds per run. So when what a worker would hold resident fits under
`TrainConfig.direct_read_max_mb` and its share of the node's memory (`direct_read_choice`), every worker reads its
own shard of the train split (and the whole val split) itself, collates it once into padded tensors kept on its
device, and forms each epoch's batches by indexing them. What decides is that resident size (float32, padded to the
longest video: FeatureStore.resident_bytes), not the float16 Parquet on disk, which can be several times smaller.

Sharding: train videos sorted by video_id; rank r of W takes positions r, r + W, ... of that list extended by
wrap-around to ceil(N / W) * W, so every rank holds ceil(N / W) videos and runs the same number of optimizer steps
(DDP's all-reduce would hang otherwise); at most W - 1 videos are seen twice per epoch.

Batches: each epoch shuffles the shard with (seed, epoch), sorts it by length within chunks of BUCKET batches,
cuts batches and shuffles their order: the same videos per epoch, far less padding than random batches.

Random sequence former (Recipe.random_steps): the train split is kept with every step (what resident_bytes already
counts), and each batch's kept steps are chosen on the host (asrn.sequence.select_steps with the epoch's rng, as
`collate` would) and gathered on the device: a (B, T') index per batch crosses, not the features.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from asrn.locations import Location
from asrn.sequence import WINDOW, Batch, collate, kept_shot_starts, select_steps
from asrn.store import FeatureStore, FeatureStoreError, VideoFeatures, table_to_videos

BUCKET = 8  # batches per length-sorted chunk


def step_rng(seed: int, epoch: int) -> np.random.Generator:
    """The random sequence former's generator for one epoch (both training paths draw from it)."""
    return np.random.default_rng([seed, epoch, 3])


def node_memory_bytes() -> int:
    """This machine's physical memory (psutil when installed, else the OS's page count)."""
    try:
        import psutil
    except ImportError:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(psutil.virtual_memory().total)


def direct_read_choice(store: FeatureStore, num_workers: int, max_mb: int,
                       node_bytes: int | None = None) -> tuple[bool, str]:
    """(read directly?, why, as a line for the console): directly when one worker's resident copy is at most
    `max_mb` MB (10^6 bytes) and at most its share of the node's memory (all `num_workers` on one node: the
    worst case); else Ray Data streams the store. `max_mb` 0: always Ray Data."""
    if max_mb <= 0:
        return False, "--direct-read-max-mb 0: Ray Data reads the store"
    resident = store.resident_bytes(num_workers) / 1e6
    share = (node_memory_bytes() if node_bytes is None else node_bytes) / max(num_workers, 1) / 1e6
    size = f"{resident:.1f} MB resident per worker (its train shard and all of val, float32, padded)"
    if resident > max_mb:
        return False, f"{size}, over --direct-read-max-mb {max_mb}: Ray Data reads the store"
    if resident > share:
        return False, (f"{size} would exceed one worker's share of this node's memory ({share:.0f} MB: "
                       f"{share * num_workers:.0f} MB over {num_workers} worker(s)): Ray Data reads the store instead")
    return True, f"{size}, at most --direct-read-max-mb {max_mb}: each worker reads its train shard and the val split"


def shard_positions(n: int, rank: int, world: int) -> np.ndarray:
    """(ceil(n / world),) positions into n sorted videos for `rank`, wrapping around: equal sizes on every rank."""
    if n < 1:
        raise ValueError("no videos to shard")
    per = -(-n // world)
    return np.arange(rank, per * world, world, dtype=np.int64) % n


def read_split(store_dir: str | os.PathLike | Location, split: str, rank: int = 0,
               world: int = 1) -> list[VideoFeatures]:
    """The videos of `split` for `rank` of `world` (`shard_positions` over the ids sorted), read with pyarrow.

    Reads the video_id column first, then only the rows of this shard, one part file at a time (files written
    before a column was added still read). The store is a local folder or a URI, opened by the calling process.
    """
    store = FeatureStore(store_dir, warn=False)  # the driver named any foreign file already
    ids = store.split_ids(split)
    if not ids:
        raise FeatureStoreError(f"{store_dir}: no videos in split {split}")
    mine = [ids[p] for p in shard_positions(len(ids), rank, world)]
    wanted = sorted(set(mine))
    tables = [store.read(f, filters=[("split", "=", split), ("video_id", "in", wanted)]) for f in store.files]
    by_id = {v.video_id: v for v in table_to_videos(pa.concat_tables(tables, promote_options="permissive"))}
    return [by_id[i] for i in mine]


@dataclass
class RawSteps:
    """What choosing kept steps per batch needs on the host: each video's presence masks and shot starts."""

    present: list[dict[str, np.ndarray]]  # per video: modality -> (T_raw,) bool
    shot_start: list[np.ndarray | None]  # per video: (T_raw,) bool, None where the store has no shots


@dataclass
class ResidentSplit:
    """Videos collated once (padded to the longest) and kept on one device; a batch is an index view padded to its
    own longest video, which equals `collate` of those videos. With `raw` (random_steps), every step is kept and a
    batch gathers the steps its rng's sequence former keeps, equal to `collate(..., rng=rng)`."""

    padded: Batch  # (N, T_max, D_m) features, (N, T_max) present and mask, (N, C) targets, on the device
    lengths: np.ndarray  # (N,) kept steps per video, on the host: batch widths need no device sync
    raw: RawSteps | None = None  # set when `padded` holds every step (window 1) for a random sequence former

    @classmethod
    def of(cls, videos: Sequence[VideoFeatures], task: str, device: torch.device | str = "cpu",
           random_steps: bool = False) -> ResidentSplit:
        if not random_steps:
            batch = collate(videos, task)
            return cls(batch.to(device), np.array([s.size for s in batch.steps], dtype=np.int64))
        batch = collate(videos, task, window=1)  # every step
        kept = np.array([-(-s.size // WINDOW) for s in batch.steps], dtype=np.int64)  # one per window, as select_steps
        return cls(batch.to(device), kept, RawSteps([v.present() for v in videos], [v.shot_start for v in videos]))

    def __len__(self) -> int:
        return len(self.lengths)

    def take(self, rows: np.ndarray, index: torch.Tensor | None = None,
             rng: np.random.Generator | None = None) -> Batch:
        """The batch of `rows` (host int array); `index`: the same rows already on the device; `rng`: the random
        sequence former's (with `raw`; None: its ties to the middle step, as `collate`)."""
        p = self.padded
        index = torch.as_tensor(rows, device=p.mask.device) if index is None else index
        if self.raw is not None:
            return self._gather(rows, index, rng)
        width = int(self.lengths[rows].max())
        return Batch(features={m: x[index, :width] for m, x in p.features.items()},  # (B, T, D_m)
                     present={m: x[index, :width] for m, x in p.present.items()},  # (B, T)
                     mask=p.mask[index, :width], targets=p.targets[index],  # (B, T), (B, C)
                     video_ids=[p.video_ids[i] for i in rows], steps=[p.steps[i] for i in rows],
                     shot_start=p.shot_start[index, :width], shot_known=p.shot_known[index])  # (B, T), (B,)

    def _gather(self, rows: np.ndarray, index: torch.Tensor, rng: np.random.Generator | None) -> Batch:
        """The kept steps of `rows`, chosen on the host, gathered from the resident raw steps."""
        p, device = self.padded, self.padded.mask.device
        steps = [select_steps(self.raw.present[i], WINDOW, rng) for i in rows]
        lengths = np.array([s.size for s in steps])
        mask = np.arange(lengths.max())[None, :] < lengths[:, None]  # (B, T')
        positions = np.zeros(mask.shape, dtype=np.int64)  # (B, T') raw step of each kept step, 0 on padding
        shot_start = np.zeros(mask.shape, dtype=bool)  # (B, T')
        for b, (i, s) in enumerate(zip(rows, steps, strict=True)):
            positions[b, :s.size] = s
            if self.raw.shot_start[i] is not None:
                shot_start[b, :s.size] = kept_shot_starts(self.raw.shot_start[i], s)
        mask_d = torch.from_numpy(mask).to(device)
        at = (index[:, None], torch.from_numpy(positions).to(device))  # (B, 1), (B, T')
        return Batch(features={m: x[at] * mask_d.unsqueeze(-1).to(x.dtype) for m, x in p.features.items()},
                     present={m: x[at] & mask_d for m, x in p.present.items()}, mask=mask_d,
                     targets=p.targets[index], video_ids=[p.video_ids[i] for i in rows], steps=steps,
                     shot_start=torch.from_numpy(shot_start).to(device), shot_known=p.shot_known[index])

    def epoch_order(self, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
        """The epoch's batches as row arrays: shuffled by (seed, epoch), length-sorted within chunks of BUCKET
        batches, batch order shuffled. ceil(N / batch_size) batches, every epoch."""
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(len(self))
        chunk = batch_size * BUCKET
        batches = []
        for start in range(0, len(order), chunk):
            part = order[start:start + chunk]
            part = part[np.argsort(self.lengths[part], kind="stable")]
            batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def epoch_batches(self, batch_size: int, seed: int, epoch: int) -> Iterator[Batch]:
        """`epoch_order`'s batches; the epoch's row order goes to the device once, not per batch."""
        rows = self.epoch_order(batch_size, seed, epoch)
        on_device = torch.from_numpy(np.concatenate(rows)).to(self.padded.mask.device)
        rng = step_rng(seed, epoch) if self.raw is not None else None
        start = 0
        for r in rows:
            yield self.take(r, on_device[start:start + len(r)], rng)
            start += len(r)

    def fixed_batches(self, batch_size: int) -> list[Batch]:
        """Batches in length order, for evaluation (which does not depend on order)."""
        order = np.argsort(self.lengths, kind="stable")
        return [self.take(order[i:i + batch_size]) for i in range(0, len(order), batch_size)]
