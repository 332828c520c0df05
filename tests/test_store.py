import json
import os
import socket
import subprocess

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from asrn import store
from asrn.files import write_json
from asrn.locations import Location
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
                                  "body_tracked", "face_tracked", "shot_start"]
    assert len(table.column("rgb")[0].as_py()[0]) == DIMS["rgb"]


def test_shot_start_round_trips_and_reads_unknown_where_absent(tmp_path):
    """A video with shots keeps them; one without (a store or writer from before the column) reads None, in the
    same part file and in a part file written without the column at all."""
    known = _video("a", 5, seed=1)
    known.shot_start = np.array([True, False, False, True, False])
    _store_with(tmp_path, {"part-1": [_video("c", 4, "val", seed=3)]}, drop=("shot_start",))
    store.write_videos(tmp_path, [known, _video("b", 3, seed=2)], name="part-0")
    opened = store.FeatureStore(tmp_path)
    assert {c: [f.name for f in files] for c, files in opened.absent_columns().items()} == {
        "shot_start": ["part-1.parquet"]}
    back = {v.video_id: v for v in opened.videos()}
    assert back["a"].shot_start.tolist() == known.shot_start.tolist()
    assert back["b"].shot_start is None and back["c"].shot_start is None
    bad = _video("d", 3)
    bad.shot_start = np.array([True, False])
    with pytest.raises(FeatureStoreError, match="video 'd': shot_start has 2 steps, timestamp has 3"):
        store.table_to_videos(store.videos_to_table([bad]))


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


def test_info_json_is_strict(tmp_path):
    with pytest.raises(ValueError):
        store.write_info(tmp_path, StoreInfo("lite", DIMS, 2.0, extra={"loss": float("nan")}))
    assert not (tmp_path / store.INFO_FILE).exists()
    (tmp_path / store.INFO_FILE).write_text('{"preset": "lite", "dims": {}, "fps": NaN}')
    with pytest.raises(FeatureStoreError, match="features.json: malformed"):
        store.read_info(tmp_path)


def test_interrupted_swap_is_finished_and_unfinished_staging_dropped(tmp_path):
    store.write_videos(tmp_path, [_video("old", 2)], name="part-old")
    (tmp_path / "notes.txt").write_text("not the store's\n")
    staging = store.staging_dir(tmp_path)
    store.write_videos(staging, [_video("new", 2)], name="part-new")
    store.write_info(staging, StoreInfo("lite", DIMS, 2.0))
    assert "dropped" in store.recover_staging(tmp_path)  # never marked complete: the old store stays
    assert store.done_video_ids(tmp_path) == {"old"} and not staging.exists()
    store.write_videos(staging, [_video("new", 2)], name="part-new")
    store.write_info(staging, StoreInfo("lite", DIMS, 2.0))
    store.write_json(staging / store.STAGED_FILES, ["part-new.parquet", store.INFO_FILE])  # marked, then crashed
    assert "finished" in store.recover_staging(tmp_path)
    assert store.done_video_ids(tmp_path) == {"new"} and store.read_info(tmp_path).preset == "lite"
    assert (tmp_path / "notes.txt").exists() and not staging.exists()


def _upload(folder, uri: str) -> str:
    """A copy of a local store at `uri` (on the test session's S3 server), as a user would upload one."""
    import pyarrow.fs as pafs

    filesystem, path = pafs.FileSystem.from_uri(uri)
    pafs.copy_files(str(folder), path, destination_filesystem=filesystem)
    return uri


def test_a_store_on_s3_reads_as_the_local_one(tmp_path, s3_folder):
    videos = [_video("a", 5, seed=1), _video("b", 2, "val", seed=2)]
    store.write_videos(tmp_path, videos)
    store.write_info(tmp_path, StoreInfo("lite", DIMS, 2.0))
    store.write_errors(tmp_path, [{"video_id": "x", "path": "/x.mp4", "stage": "decode", "error": "E", "message": "m"}])
    remote = _upload(tmp_path, f"{s3_folder}/features")
    assert store.read_info(remote) == store.read_info(tmp_path)
    assert [f.name for f in store.data_files(remote)] == [p.name for p in store.part_files(tmp_path)]
    here = {v.video_id: v for v in store.load_videos(tmp_path)}
    there = {v.video_id: v for v in store.load_videos(remote)}
    assert here.keys() == there.keys() == {"a", "b"}
    for video_id, v in there.items():
        np.testing.assert_array_equal(v.features["rgb"], here[video_id].features["rgb"])
    assert store.read_errors(remote).column("video_id").to_pylist() == ["x"]
    assert store.done_video_ids(remote) == {"a", "b"}
    assert store.split_fingerprint(remote) == store.split_fingerprint(tmp_path)


def test_a_missing_store_on_s3_is_named_with_its_uri(s3_folder):
    with pytest.raises(FeatureStoreError, match=f"^{s3_folder}/features/features.json: not found"):
        store.read_info(f"{s3_folder}/features")
    with pytest.raises(FeatureStoreError, match=f"^{s3_folder}/features: feature store folder not found"):
        store.data_files(f"{s3_folder}/features")


def _objects(uri: str) -> list[str]:
    filesystem, path = pafs.FileSystem.from_uri(uri)
    found = filesystem.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return sorted(f.path[len(path):].lstrip("/") for f in found if f.type == pafs.FileType.File)


@pytest.mark.parametrize("where", ["s3", "file"])
def test_the_writers_write_a_store_by_uri_under_final_names_only(s3_folder, tmp_path, where):
    remote = f"{s3_folder}/features" if where == "s3" else f"file://{tmp_path}/features"
    part = store.write_videos(remote, [_video("a", 5, seed=1), _video("b", 2, "val", seed=2)], name="part-1")
    errors = store.write_errors(remote, [{"video_id": "x", "path": f"{s3_folder}/x.mp4", "stage": "decode",
                                          "error": "VideoDecodeError", "message": "m"}], name="part-e")
    info = store.write_info(remote, StoreInfo("lite", DIMS, 2.0))
    assert (str(part), str(errors), str(info)) == (f"{remote}/part-1.parquet", f"{remote}/errors/part-e.parquet",
                                                    f"{remote}/features.json")
    assert _objects(remote) == ["errors/part-e.parquet", "features.json", "part-1.parquet"]  # no temporaries
    assert store.done_video_ids(remote) == {"a", "b"}
    assert store.read_errors(remote).column("path").to_pylist() == [f"{s3_folder}/x.mp4"]
    assert store.read_info(remote).dims == DIMS

    store.write_videos(remote, [_video("c", 3, "test", seed=3)], name="part-2")  # a resumed run adds a part
    assert store.done_video_ids(remote) == {"a", "b", "c"}
    rewritten = store.update_splits_labels(remote, {"b": ("test", ["obj:peer"])})
    assert [str(f) for f in rewritten] == [f"{remote}/part-1.parquet"]  # part-2 untouched
    assert store.stored_splits_labels(remote)["b"] == ("test", ["obj:peer"])
    assert _objects(remote) == ["errors/part-e.parquet", "features.json", "part-1.parquet", "part-2.parquet"]


def test_the_writer_lock_on_s3_refuses_a_live_writer_and_takes_over_a_dead_ones(s3_folder):
    remote = f"{s3_folder}/features"
    with store.writer_lock(remote) as lock:
        assert str(lock) == f"{remote}/.lock" and json.loads(lock.read_text())["pid"] == os.getpid()
        with pytest.raises(store.StoreLockedError, match=rf"^{remote}/\.lock: another writer .*pid {os.getpid()}"):
            with store.writer_lock(remote):
                pass
    assert _objects(remote) == []  # released
    dead = subprocess.Popen(["true"])
    dead.wait()
    write_json(Location(remote) / ".lock", {"pid": dead.pid, "host": socket.gethostname(), "token": "t",
                                            "since": "then"})
    with store.writer_lock(remote):  # its pid is dead on this host: taken over
        assert json.loads((Location(remote) / ".lock").read_text())["pid"] == os.getpid()
    write_json(Location(remote) / ".lock", {"pid": dead.pid, "host": "elsewhere", "token": "t", "since": "then"})
    with pytest.raises(store.StoreLockedError, match="on elsewhere"), store.writer_lock(remote):
        pass


# ---------------------------------------------------------------- FeatureStore: what a store is, read one way

def _store_with(folder, videos_by_part: dict[str, list[VideoFeatures]], drop: tuple[str, ...] = ()):
    """A store whose parts are written by pyarrow directly, without the columns in `drop` (an older store)."""
    store.write_info(folder, StoreInfo("lite", DIMS, 2.0))
    for name, videos in videos_by_part.items():
        pq.write_table(store.videos_to_table(videos).drop_columns(list(drop)), folder / f"{name}.parquet")
    return folder


def _split_videos() -> dict[str, list[VideoFeatures]]:
    return {"part-0": [_video("a", 5, "train", 1), _video("b", 3, "val", 2)],
            "part-1": [_video("c", 4, "test", 3), _video("d", 6, "train", 4)]}


def test_a_foreign_parquet_file_is_named_once_and_never_read(tmp_path, recwarn):
    from asrn.shards import read_split
    from asrn.train import check_store

    _store_with(tmp_path, _split_videos())
    (tmp_path / "my_notes.parquet").write_bytes(b"notes")  # 5 bytes: pyarrow refuses it as Parquet
    opened = store.FeatureStore(tmp_path)
    assert [f.name for f in opened.files] == ["part-0.parquet", "part-1.parquet"]
    assert [str(w.message) for w in recwarn if issubclass(w.category, store.StoreWarning)] == [
        f"{tmp_path}: ignoring my_notes.parquet: not part of the store (its data are the part-*.parquet files that "
        "asrn extract wrote)"]
    assert opened.files and len(recwarn) == 1  # listed once per opened store
    info, counts = check_store(tmp_path, "sub")
    assert counts == {"train": 2, "val": 1, "test": 1} and info.dims == DIMS
    assert [v.video_id for v in read_split(tmp_path, "train")] == ["a", "d"]  # a worker's direct read
    assert sorted(v.video_id for v in store.load_videos(tmp_path)) == ["a", "b", "c", "d"]
    # Ray Data reads the files the store lists, and the worker turns its batches into videos the same way
    rows = [v.video_id for f in opened.files for v in store.table_to_videos(pq.read_table(f))]
    assert sorted(rows) == ["a", "b", "c", "d"]


@pytest.mark.parametrize("older", [("part-0", "part-1"), ("part-1",)])
def test_a_store_written_before_the_tracked_columns_checks_and_reads_them_as_all_false(tmp_path, older):
    from asrn.shards import read_split
    from asrn.train import check_store

    videos = _split_videos()
    _store_with(tmp_path, {k: v for k, v in videos.items() if k in older}, drop=store.TRACKED_COLUMNS)
    for name in set(videos) - set(older):  # the other part file written today, tracked steps included
        for v in videos[name]:
            v.body_tracked = np.ones(v.num_steps, bool)
        store.write_videos(tmp_path, videos[name], name=name)
    opened = store.FeatureStore(tmp_path)
    assert {c: [f.name for f in files] for c, files in opened.absent_columns().items()} == {
        c: [f"{name}.parquet" for name in older] for c in store.TRACKED_COLUMNS}
    assert check_store(tmp_path, "sub")[1] == {"train": 2, "val": 1, "test": 1}
    old_ids = {v.video_id for name in older for v in videos[name]}
    for read in (read_split(tmp_path, "train"), store.load_videos(tmp_path), opened.videos(["train", "val"])):
        for v in read:
            assert not v.face_tracked.any() and v.body_tracked.all() != (v.video_id in old_ids)
    ray_data_rows = [v for f in opened.files for v in store.table_to_videos(pq.read_table(f))]
    assert {v.video_id for v in ray_data_rows if not v.body_tracked.any()} == old_ids


def test_a_store_without_a_required_column_is_still_refused_by_name(tmp_path):
    from asrn.train import check_store

    _store_with(tmp_path, _split_videos(), drop=("has_face",))
    with pytest.raises(FeatureStoreError, match=r"part-0.parquet: lacks column\(s\) has_face"):
        check_store(tmp_path, "sub")


def test_a_split_streams_one_part_at_a_time_and_adds_up_to_the_whole(tmp_path):
    import shutil

    from asrn.synth_features import synthesize_feature_store

    one_part = synthesize_feature_store(tmp_path / "one", num_videos=30, seed=3)
    videos = store.FeatureStore(one_part).videos()
    where = tmp_path / "three"
    where.mkdir()
    shutil.copy(one_part / store.INFO_FILE, where / store.INFO_FILE)
    for part, start in enumerate(range(0, 30, 10)):
        store.write_videos(where, videos[start:start + 10], name=f"part-{part:05d}")
    opened = store.FeatureStore(where)
    parts = list(opened.iter_videos(["val", "test"]))
    assert len(opened.files) == 3 and all(len(p) <= 10 for p in parts)
    streamed = [v.video_id for p in parts for v in p]
    assert streamed == [v.video_id for v in opened.videos(["val", "test"])] and streamed
