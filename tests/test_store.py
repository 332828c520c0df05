import numpy as np
import pyarrow.parquet as pq
import pytest

from asrn import store
from asrn.store import MODALITIES, FeatureStoreError, StoreInfo, VideoFeatures

DIMS = {"rgb": 8, "motion": 4, "body": 3, "face": 2}


def _video(video_id: str, t: int, split: str = "train", seed: int = 0) -> VideoFeatures:
    rng = np.random.default_rng(seed)
    return VideoFeatures(video_id, split, ["sub:warm"], np.arange(t, dtype=np.float32) / 2,
                         {m: rng.standard_normal((t, d)).astype(np.float32) for m, d in DIMS.items()},
                         rng.random(t) > 0.5, rng.random(t) > 0.5)


def test_round_trip_with_variable_lengths(tmp_path):
    videos = [_video("a", 5, seed=1), _video("b", 2, "val", seed=2)]
    store.write_videos(tmp_path, videos)
    store.write_info(tmp_path, StoreInfo("lite", DIMS, 2.0))
    back = {v.video_id: v for v in store.load_videos(tmp_path)}
    for v in videos:
        got = back[v.video_id]
        for m in MODALITIES:
            assert got.features[m].shape == v.features[m].shape
            np.testing.assert_allclose(got.features[m], v.features[m], atol=2e-3)  # float16 storage
        np.testing.assert_array_equal(got.has_face, v.has_face)
    assert [v.video_id for v in store.load_videos(tmp_path, ["val"])] == ["b"]
    assert store.done_video_ids(tmp_path) == {"a", "b"}


def test_documented_columns_readable_by_plain_pyarrow(tmp_path):
    path = store.write_videos(tmp_path, [_video("a", 3)])
    table = pq.read_table(path)
    assert table.column_names == ["video_id", "split", "labels", "timestamp", *MODALITIES, "has_body", "has_face",
                                  "body_tracked", "face_tracked"]
    assert len(table.column("rgb")[0].as_py()[0]) == DIMS["rgb"]


def test_dim_mismatch_and_missing_info_named(tmp_path):
    store.write_videos(tmp_path, [_video("a", 3)])
    with pytest.raises(FeatureStoreError, match="features.json.*not found"):
        store.load_videos(tmp_path)
    store.write_info(tmp_path, StoreInfo("lite", {**DIMS, "face": 260}, 2.0))
    with pytest.raises(FeatureStoreError, match="video 'a' has face dim 2, features.json says 260"):
        store.load_videos(tmp_path)


def test_errors_table_and_temp_files_ignored(tmp_path):
    store.write_errors(tmp_path, [{"video_id": "x", "path": "/x.mp4", "stage": "decode",
                                   "error": "VideoDecodeError", "message": "truncated"}])
    (tmp_path / ".tmp-123-part.parquet").write_bytes(b"half written")
    assert store.read_errors(tmp_path).column("video_id").to_pylist() == ["x"]
    assert store.part_files(tmp_path) == []


def test_feature_statistics_over_present_steps_of_a_split(tmp_path):
    videos = [_video("a", 6, seed=1), _video("b", 4, seed=2), _video("c", 5, "val", seed=3)]
    store.write_videos(tmp_path, videos)
    store.write_info(tmp_path, StoreInfo("lite", DIMS, 2.0))
    stats = store.feature_statistics(tmp_path, "train")
    stored = {v.video_id: v for v in store.load_videos(tmp_path)}  # float16 round trip, as the statistics see them
    face = np.concatenate([stored[i].features["face"][stored[i].has_face] for i in ("a", "b")])
    np.testing.assert_allclose(stats["face"][0], face.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stats["face"][1], face.std(0), rtol=1e-3, atol=1e-5)
    rgb = np.concatenate([stored[i].features["rgb"] for i in ("a", "b")])  # rgb is present at every step
    np.testing.assert_allclose(stats["rgb"][0], rgb.mean(0), rtol=1e-4, atol=1e-5)
    assert {m: s[0].shape for m, s in stats.items()} == {m: (d,) for m, d in DIMS.items()}
