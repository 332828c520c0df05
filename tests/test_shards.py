"""asrn.shards: each worker's direct read of its shard, resident batches equal to `collate`, equal steps per rank."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from asrn.sequence import collate
from asrn.shards import ResidentSplit, direct_read_choice, read_split, shard_positions
from asrn.store import FeatureStore, load_videos, part_files
from asrn.synth_features import synthesize_feature_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return synthesize_feature_store(tmp_path_factory.mktemp("shards") / "store", num_videos=60, seed=4)


@pytest.mark.parametrize(("n", "world"), [(10, 1), (10, 2), (11, 2), (7, 3), (2, 4)])
def test_shards_are_equal_and_cover_every_video(n, world):
    shards = [shard_positions(n, rank, world) for rank in range(world)]
    assert {len(s) for s in shards} == {math.ceil(n / world)}
    assert set(np.concatenate(shards).tolist()) == set(range(n))


def test_a_store_on_s3_gives_each_rank_the_same_shard_as_the_local_one(store, s3_folder):
    import pyarrow.fs as pafs

    filesystem, path = pafs.FileSystem.from_uri(f"{s3_folder}/store")
    pafs.copy_files(str(store), path, destination_filesystem=filesystem)
    remote = f"{s3_folder}/store"
    assert FeatureStore(remote).resident_bytes(2) == FeatureStore(store).resident_bytes(2)
    for rank in range(2):
        here, there = read_split(store, "train", rank, 2), read_split(remote, "train", rank, 2)
        assert [v.video_id for v in there] == [v.video_id for v in here]
        np.testing.assert_array_equal(there[-1].features["face"], here[-1].features["face"])


def test_read_split_gives_each_rank_its_shard_of_the_sorted_ids(store):
    train = sorted(v.video_id for v in load_videos(store, splits=["train"]))
    shards = [read_split(store, "train", rank, 2) for rank in range(2)]
    assert [v.video_id for v in shards[0]] == [train[p] for p in shard_positions(len(train), 0, 2)]
    assert {v.video_id for s in shards for v in s} == set(train) and len(shards[0]) == len(shards[1])
    assert all(v.split == "train" for s in shards for v in s)
    whole = {v.video_id: v for v in load_videos(store, splits=["train"])}
    v = shards[1][0]
    np.testing.assert_array_equal(v.features["rgb"], whole[v.video_id].features["rgb"])


def test_a_resident_batch_equals_collate_of_its_videos(store):
    videos = read_split(store, "val")
    resident = ResidentSplit.of(videos, "sub")
    rows = np.array([3, 0, len(videos) - 1])
    got, want = resident.take(rows), collate([videos[i] for i in rows], "sub")
    assert got.video_ids == want.video_ids and got.mask.shape == want.mask.shape
    for m in want.features:
        assert torch.equal(got.features[m], want.features[m]) and torch.equal(got.present[m], want.present[m])
    assert torch.equal(got.mask, want.mask) and torch.equal(got.targets, want.targets)
    assert got.shot_known.all() and torch.equal(got.shot_start, want.shot_start)


@pytest.mark.parametrize("seed", [None, 5])
def test_a_resident_split_of_every_step_gathers_what_the_random_former_collates(store, seed):
    """random_steps: the batch gathered on the device equals collate with the same rng (and without one, the fixed
    former's), shots included."""
    videos = read_split(store, "train")
    resident = ResidentSplit.of(videos, "sub", random_steps=True)
    rows = np.array([2, 0, len(videos) - 1, 7])
    rng = lambda: None if seed is None else np.random.default_rng(seed)  # noqa: E731
    got, want = resident.take(rows, rng=rng()), collate([videos[i] for i in rows], "sub", rng=rng())
    assert got.video_ids == want.video_ids
    assert all(np.array_equal(a, b) for a, b in zip(got.steps, want.steps, strict=True))
    for m in want.features:
        assert torch.equal(got.features[m], want.features[m]) and torch.equal(got.present[m], want.present[m])
    assert torch.equal(got.mask, want.mask) and torch.equal(got.targets, want.targets)
    assert torch.equal(got.shot_start, want.shot_start) and torch.equal(got.shot_known, want.shot_known)
    np.testing.assert_array_equal(resident.lengths, ResidentSplit.of(videos, "sub").lengths)
    by_video = {}
    for epoch in (1, 2, 3):
        for batch in resident.epoch_batches(8, seed=0, epoch=epoch):
            for video_id, steps in zip(batch.video_ids, batch.steps, strict=True):
                by_video.setdefault(video_id, set()).add(tuple(steps))
    assert max(len(v) for v in by_video.values()) > 1  # epochs see other steps of a video


def test_epochs_shuffle_deterministically_in_length_buckets(store):
    resident = ResidentSplit.of(read_split(store, "train"), "sub")
    n, size = len(resident), 4
    first = resident.epoch_order(size, seed=0, epoch=1)
    assert len(first) == math.ceil(n / size)
    assert sorted(np.concatenate(first).tolist()) == list(range(n))  # each video once
    assert all(np.array_equal(a, b) for a, b in zip(first, resident.epoch_order(size, 0, 1), strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, resident.epoch_order(size, 0, 2), strict=True))
    lengths = resident.lengths
    padded = sum(len(b) * lengths[b].max() for b in first)
    rng = np.random.default_rng(0)
    unsorted = rng.permutation(n)
    random_padded = sum(len(b) * lengths[b].max() for b in np.array_split(unsorted, math.ceil(n / size)))
    assert padded <= random_padded
    batches = list(resident.epoch_batches(size, 0, 1))
    assert [b.video_ids for b in batches] == [[resident.padded.video_ids[i] for i in r] for r in first]


def test_every_rank_runs_the_same_number_of_steps(store):
    n_batches = {len(ResidentSplit.of(read_split(store, "train", rank, 3), "sub").epoch_order(5, 0, 1))
                 for rank in range(3)}
    assert len(n_batches) == 1


def test_the_resident_size_is_the_padded_float32_copy_a_worker_holds(store):
    """Each worker holds ceil(N_train / W) train videos and all of val, float32, padded to each split's longest
    video, with per-step masks: several times the float16 Parquet on disk, read from the timestamps alone."""
    opened, world = FeatureStore(store), 3
    per_step = sum(opened.info.dims.values()) * 4 + 4 + 1  # features (float32), 4 present masks and the step mask
    want = 0
    for split, held in (("train", lambda n: math.ceil(n / world)), ("val", lambda n: n)):
        steps = [v.num_steps for v in load_videos(store, splits=[split])]
        want += held(len(steps)) * max(steps) * per_step
    assert opened.resident_bytes(world) == want
    shard = ResidentSplit.of(read_split(store, "train", 0, world), "sub")
    val = ResidentSplit.of(read_split(store, "val"), "sub")
    held = sum(x.numel() * x.element_size() for r in (shard, val) for x in r.padded.features.values())
    assert held <= opened.resident_bytes(world)  # an upper bound: the sequence former keeps fewer steps
    # one worker holds train and val as float32: more than the whole float16 store (test split included) on disk
    assert opened.resident_bytes(1) > sum(f.stat().st_size for f in part_files(store))


def test_direct_reads_are_chosen_by_the_resident_size_and_the_memory_share(store):
    opened = FeatureStore(store)
    mb = opened.resident_bytes(2) / 1e6
    direct, why = direct_read_choice(opened, 2, max_mb=math.ceil(mb), node_bytes=10**12)
    assert direct and f"{mb:.1f} MB resident per worker" in why and "each worker reads its train shard" in why
    direct, why = direct_read_choice(opened, 2, max_mb=math.floor(mb) - 1 if mb >= 2 else 0, node_bytes=10**12)
    assert not direct and "Ray Data reads the store" in why
    direct, why = direct_read_choice(opened, 2, max_mb=10**6, node_bytes=int(mb * 1e6))  # a share of half of it
    assert not direct and "would exceed one worker's share of this node's memory" in why and "over 2 worker(s)" in why
    assert direct_read_choice(opened, 2, max_mb=0) == (False, "--direct-read-max-mb 0: Ray Data reads the store")
