import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from asrn import cli, store
from asrn.labels import ALL_LABELS
from asrn.store import MODALITIES, FeatureStoreError, StoreInfo
from asrn.synth_features import (
    CUE_MODALITIES,
    DEFAULT_DIMS,
    class_prototypes,
    generate_videos,
    synthesize_feature_store,
)

COLUMNS = ["video_id", "split", "labels", "timestamp", *MODALITIES, "has_body", "has_face"]
SMALL_DIMS = {"rgb": 16, "motion": 12, "body": 10, "face": 8}


@pytest.fixture(scope="module")
def synth_store(tmp_path_factory):
    return synthesize_feature_store(tmp_path_factory.mktemp("store"), num_videos=60, seed=3, dims=SMALL_DIMS)


def _file_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_store_loads_back_with_documented_columns(synth_store):
    info = store.read_info(synth_store)
    assert info.preset == "synthetic" and info.dims == SMALL_DIMS and info.extra["seed"] == 3
    videos = store.load_videos(synth_store)
    assert len(videos) == 60 and len({v.video_id for v in videos}) == 60
    table = pq.read_table(synth_store / "part-00000.parquet")
    assert table.column_names == COLUMNS
    assert table.schema.field("rgb").type.value_type.value_type == "halffloat"
    for v in videos:
        assert v.features["face"].shape == (v.num_steps, SMALL_DIMS["face"])
        np.testing.assert_allclose(np.diff(v.timestamp), 1 / info.fps, rtol=1e-5)
        assert not v.features["face"][~v.has_face].any() and not v.features["body"][~v.has_body].any()
    missing = np.mean(np.concatenate([~v.has_face for v in videos]))
    assert 0.05 < missing < 0.5


def test_splits_and_labels(synth_store):
    videos = store.load_videos(synth_store)
    assert {v.split for v in videos} == {"train", "val", "test"}
    for v in videos:
        assert v.labels and all(name in ALL_LABELS for name in v.labels)
        assert sum(name.startswith("sub:") for name in v.labels) >= 1
        assert sum(name.startswith("obj:") for name in v.labels) >= 1
    assert any(len(v.labels) > 2 for v in videos)  # multi-label within a group


def test_tiny_store_has_every_split():
    for seed in range(5):
        splits = [s.video.split for s in generate_videos(6, seed, SMALL_DIMS)]
        assert sorted(set(splits)) == ["test", "train", "val"]


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = synthesize_feature_store(tmp_path / "a", num_videos=8, seed=5, dims=SMALL_DIMS)
    b = synthesize_feature_store(tmp_path / "b", num_videos=8, seed=5, dims=SMALL_DIMS)
    c = synthesize_feature_store(tmp_path / "c", num_videos=8, seed=6, dims=SMALL_DIMS)
    assert _file_bytes(a) == _file_bytes(b)
    assert _file_bytes(a)["part-00000.parquet"] != _file_bytes(c)["part-00000.parquet"]
    assert json.loads((a / "features.json").read_text())["extra"]["seed"] == 5


def test_planted_motion_cue_separates_positives():
    label = "sub:competitive"
    assert CUE_MODALITIES[label] == ("motion",)
    synth = generate_videos(200, seed=0, dims=SMALL_DIMS)
    u = class_prototypes(0, SMALL_DIMS)[label]["motion"]
    relevant = np.array([s.video.features["motion"][s.relevant].mean(0) @ u for s in synth])
    outside = np.array([s.video.features["motion"][~s.relevant].mean(0) @ u for s in synth])
    positive = np.array([label in s.video.labels for s in synth])
    assert 10 < positive.sum() < 190
    assert relevant[positive].mean() - relevant[~positive].mean() > 1.5  # about CUE_AMPLITUDE
    assert abs(outside[positive].mean() - outside[~positive].mean()) < 0.5  # no cue outside relevant shots
    for s in synth:  # relevant steps are whole shots, 1 or 2 of them
        assert 1 <= len(np.unique(s.shot[s.relevant])) <= 2
        assert not np.isin(s.shot[~s.relevant], s.shot[s.relevant]).any()


def test_shot_boundaries_are_abrupt():
    s = generate_videos(6, seed=1, dims=DEFAULT_DIMS)[0]
    rgb = s.video.features["rgb"]
    jumps = np.linalg.norm(np.diff(rgb, axis=0), axis=1)
    boundary = np.diff(s.shot) != 0
    assert jumps[boundary].min() > np.median(jumps[~boundary])


def test_rewrites_a_synthetic_store_and_refuses_others(tmp_path):
    out = synthesize_feature_store(tmp_path / "s", num_videos=6, seed=0, dims=SMALL_DIMS)
    (out / "part-00007.parquet").write_bytes(b"stale")
    synthesize_feature_store(out, num_videos=7, seed=1, dims=SMALL_DIMS)
    assert [p.name for p in store.part_files(out)] == ["part-00000.parquet"]
    assert len(store.load_videos(out)) == 7
    other = tmp_path / "real"
    store.write_info(other, StoreInfo("lite", SMALL_DIMS, 2.0))
    with pytest.raises(FeatureStoreError, match="'lite' feature store"):
        synthesize_feature_store(other, num_videos=6)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        synthesize_feature_store(tmp_path / "junk", num_videos=6)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="num_videos = 5"):
        synthesize_feature_store(tmp_path / "x", num_videos=5)
    with pytest.raises(ValueError, match="dims\\['face'\\]"):
        synthesize_feature_store(tmp_path / "x", num_videos=6, dims={**SMALL_DIMS, "face": 0})
    assert not (tmp_path / "x").exists()


def test_cli_synth_features(tmp_path, capsys):
    assert cli.main(["synth", "features", "--out", str(tmp_path), "--num-videos", "12", "--seed", "1"]) == 0
    assert str(tmp_path) in capsys.readouterr().out
    assert store.read_info(tmp_path).dims == DEFAULT_DIMS
    assert len(store.load_videos(tmp_path)) == 12
    assert cli.main(["synth", "features", "--out", str(tmp_path / "y"), "--num-videos", "3"]) == 1
