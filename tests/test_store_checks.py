"""asrn.train.check_store: a store training can use holds each video once."""

import numpy as np
import pytest

from asrn import store
from asrn.store import FeatureStoreError, StoreInfo, VideoFeatures
from asrn.train import check_store

DIMS = {"rgb": 8, "motion": 4, "body": 3, "face": 2}


def _video(video_id: str, split: str) -> VideoFeatures:
    t = 3
    return VideoFeatures(video_id, split, ["sub:warm"], np.arange(t, dtype=np.float32),
                         {m: np.zeros((t, d), np.float32) for m, d in DIMS.items()}, np.ones(t, bool), np.ones(t, bool))


def test_duplicate_video_ids_refused_across_and_within_files(tmp_path):
    across, within = tmp_path / "across", tmp_path / "within"
    for folder in (across, within):
        store.write_info(folder, StoreInfo("lite", DIMS, 2.0))
    store.write_videos(across, [_video("a", "train"), _video("v7", "train"), _video("b", "val")], name="part-1")
    store.write_videos(across, [_video("v7", "test"), _video("c", "test")], name="part-2")  # moved, old row kept
    with pytest.raises(FeatureStoreError, match=r"part-2.parquet: video 'v7' \(split test\) is also in .*part-1"):
        check_store(across, "sub")
    store.write_videos(within, [_video("a", "train"), _video("v7", "val"), _video("v7", "val"), _video("c", "test")],
                       name="part-1")
    with pytest.raises(FeatureStoreError, match=r"part-1.parquet: video 'v7' \(split val\) is twice in this file"):
        check_store(within, "sub")
