"""asrn.store: the train split's input statistics cached in features.json, and never served for another split."""

from __future__ import annotations

import numpy as np

from asrn import store
from asrn.store import INPUT_STATS_KEY, cached_input_statistics, feature_statistics, read_info, train_input_statistics
from asrn.synth_features import synthesize_feature_store


def _equal(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(np.array_equal(a[m][0], b[m][0]) and np.array_equal(a[m][1], b[m][1]) for m in a)


def test_synthetic_store_caches_the_fresh_statistics(tmp_path):
    out = synthesize_feature_store(tmp_path / "s", num_videos=12, seed=2)
    record = read_info(out).extra[INPUT_STATS_KEY]
    assert record["split"] == "train" and record["num_videos"] == len(store.load_videos(out, splits=["train"]))
    stats, cached = train_input_statistics(out)
    assert cached and _equal(stats, feature_statistics(out, "train"))


def test_a_changed_train_split_is_not_served_stale_statistics(tmp_path):
    out = synthesize_feature_store(tmp_path / "s", num_videos=12, seed=2)
    moved = next(v for v, (split, _) in store.stored_splits_labels(out).items() if split == "train")
    labels = store.stored_splits_labels(out)[moved][1]
    store.update_splits_labels(out, {moved: ("val", labels)})  # features.json untouched: its cache is stale now
    assert cached_input_statistics(out) is None
    stats, cached = train_input_statistics(out)
    assert not cached and _equal(stats, feature_statistics(out, "train"))
    assert not _equal(stats, store.input_statistics(
        v for v in store.load_videos(out, splits=["train", "val"]) if v.split == "train" or v.video_id == moved))


def test_an_added_video_or_a_malformed_record_is_not_served(tmp_path):
    out = synthesize_feature_store(tmp_path / "s", num_videos=12, seed=2)
    extra = store.load_videos(out, splits=["train"])[0]
    extra.video_id = "added-later"
    store.write_videos(out, [extra], name="part-added")  # a resumed extract adds videos
    assert cached_input_statistics(out) is None
    info = read_info(out)
    info.extra[INPUT_STATS_KEY] = store.input_stats_record(out)
    assert cached_input_statistics(out, info) is not None
    info.extra[INPUT_STATS_KEY]["stats"]["rgb"]["mean"] = [0.0]  # wrong width
    assert cached_input_statistics(out, info) is None
    info.extra[INPUT_STATS_KEY] = "junk"
    assert cached_input_statistics(out, info) is None
