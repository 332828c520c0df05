"""asrn.features (per-video, no Ray) and asrn.extract: the Ray Data job on a handful of tiny synthetic videos."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from asrn import extract as extract_module
from asrn import store, video
from asrn.console import ACTOR_ARGS_NOTICE
from asrn.encoders import PRESETS, build_encoders
from asrn.extract import ExtractConfig, ExtractError, extract_features
from asrn.features import PreparedVideo, VideoSettings, VideoStageError, encode_prepared, prepare_video
from asrn.flow import dequantize_flow
from asrn.locations import Location
from asrn.manifest import ManifestError, read_manifest
from asrn.sequence import collate, select_steps
from asrn.store import MODALITIES, StoreInfo, StoreLockedError, VideoFeatures
from asrn.synth_videos import synthesize_videos
from asrn.train import check_store

LITE_DIMS = {m: PRESETS["lite"][m].dim for m in MODALITIES}


@pytest.fixture(scope="module")
def astronaut_video(tmp_path_factory, astronaut_clip) -> Path:
    return astronaut_clip(tmp_path_factory.mktemp("astronaut") / "astronaut.mp4", 320, 320)


@pytest.fixture(scope="module")
def astronaut_prepared(astronaut_video) -> PreparedVideo:
    return prepare_video(str(astronaut_video), None, VideoSettings(preset="lite", fps=4.0))


def test_prepare_and_encode_find_the_face_without_boxes(astronaut_prepared):
    prepared = astronaut_prepared
    t = prepared.num_steps
    assert t == 8 and np.all(np.diff(prepared.timestamps) > 0)
    assert prepared.detector == "opencv-haar+hog"  # offline: no Faster R-CNN weights here
    assert prepared.has_face.sum() >= 0.75 * t and prepared.has_body.sum() >= 0.75 * t
    assert prepared.rgb.shape == (t, 112, 112, 3) and prepared.flow.shape == (t, 10, 112, 112)
    assert prepared.face.shape == (t, 128) and prepared.body.shape == (t, 112, 56, 3)  # dlib's descriptors
    features = encode_prepared(prepared, build_encoders("lite"))
    assert {m: f.shape for m, f in features.items()} == {m: (t, d) for m, d in LITE_DIMS.items()}
    assert all(f.dtype == np.float32 and np.isfinite(f).all() for f in features.values())
    missing = ~prepared.present()["face"]
    assert not features["face"][missing].any()  # zero where no face was found
    np.testing.assert_array_equal(features["face"], prepared.face)  # described in the CPU stage, passed through


def test_flow_ships_as_uint8_and_a_prepared_video_pickles_much_smaller(astronaut_prepared):
    prepared = astronaut_prepared
    assert prepared.flow.dtype == np.uint8 and prepared.flow.shape == (prepared.num_steps, 10, 112, 112)
    as_float32 = dataclasses.replace(prepared, flow=dequantize_flow(prepared.flow))  # what was shipped before
    new, old = len(pickle.dumps(prepared, protocol=5)), len(pickle.dumps(as_float32, protocol=5))
    assert new < 0.4 * old  # flow was 89% of a pickled step: ~190 KB a step instead of ~553 KB
    assert new / prepared.num_steps < 200_000  # ~190 KB: the face ships as dlib's descriptor (512 B), not a chip


def test_bad_manifest_and_bad_flags_are_refused_before_any_output(tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("video_id,path,split,labels\nv1,a.mp4,train,sub:warm\nv2,b.mp4,nope,sub:bogus\n")
    out = tmp_path / "feats"
    with pytest.raises(ManifestError, match=r"manifest.csv:3"):
        extract_features(ExtractConfig(manifest=manifest, out=out))
    assert not out.exists()
    with pytest.raises(ValueError, match="--fps"):
        ExtractConfig(manifest=manifest, out=out, fps=0)
    with pytest.raises(ValueError, match="--num-workers"):
        ExtractConfig(manifest=manifest, out=out, num_workers=0)
    with pytest.raises(ValueError, match="--preset"):
        ExtractConfig(manifest=manifest, out=out, preset="huge")


def test_text_file_error_names_the_file_but_never_quotes_it(tmp_path):
    fake = tmp_path / "notes.mp4"
    fake.write_text("SECRET token 1234, not a video\n")
    with pytest.raises(VideoStageError) as raised:
        prepare_video(str(fake), None, VideoSettings())
    assert str(fake) in str(raised.value) and "text file" in str(raised.value)
    assert "SECRET" not in str(raised.value) and "1234" not in str(raised.value)


def _unreachable_cluster(address, verbose=False):
    raise ConnectionError("cluster unreachable")  # stands in for the Ray work: reached only past the checks


def test_paper_preset_refuses_random_init_unless_allowed(tmp_path, offline, monkeypatch, capsys):
    manifest = _write_rows(tmp_path / "m.csv", [{"video_id": "v", "path": "v.mp4", "split": "train",
                                                 "labels": "sub:warm"}])
    out = tmp_path / "feats"
    monkeypatch.setattr(extract_module, "ray_session", _unreachable_cluster)
    with pytest.raises(ExtractError) as refused:
        extract_features(ExtractConfig(manifest=manifest, out=out, preset="paper", weights_dir=offline))
    message = str(refused.value)
    for part in ("rgb (resnet101-cd907fc2.pth)", "motion (resnet101-cd907fc2.pth)", "body (vgg19-dcbb9e9d.pth)",
                 str(offline), "asrn weights fetch --preset paper", "--allow-random-init"):
        assert part in message
    assert "\n" not in message and "face" not in message  # no public DeepID weights: warned about, not refused
    assert not out.exists()  # refused before anything was written

    with pytest.raises(ConnectionError):  # the flag lets it through to the Ray work
        extract_features(ExtractConfig(manifest=manifest, out=out, preset="paper", weights_dir=offline,
                                       allow_random_init=True))
    assert "random-init encoders" in capsys.readouterr().err

    for name in ("resnet101-cd907fc2.pth", "vgg19-dcbb9e9d.pth"):  # placed by hand (not loaded by the check)
        (offline / name).write_bytes(b"")
    with pytest.raises(ConnectionError):
        extract_features(ExtractConfig(manifest=manifest, out=out, preset="paper", weights_dir=offline))
    err = capsys.readouterr().err
    assert "random-init encoders" not in err  # the face is dlib's pretrained descriptor


def test_lite_preset_warns_naming_the_random_init_encoders(tmp_path, offline, monkeypatch, capsys):
    manifest = _write_rows(tmp_path / "m.csv", [{"video_id": "v", "path": "v.mp4", "split": "train",
                                                 "labels": "sub:warm"}])
    monkeypatch.setattr(extract_module, "ray_session", _unreachable_cluster)
    with pytest.raises(ConnectionError):
        extract_features(ExtractConfig(manifest=manifest, out=tmp_path / "feats", preset="lite"))
    err = capsys.readouterr().err
    assert "warning: random-init encoders" in err and "rgb (resnet18-f37072fd.pth)" in err
    assert "face" not in err and "asrn weights fetch --preset lite" in err


# ---------------------------------------------------------------- a hand-made lite store: store logic without Ray


def _stored(video_id: str, split: str, labels: list[str], seed: int = 0) -> VideoFeatures:
    rng = np.random.default_rng(seed)
    return VideoFeatures(video_id, split, labels, np.arange(3, dtype=np.float32) / 2,
                         {m: rng.standard_normal((3, d)).astype(np.float32) for m, d in LITE_DIMS.items()},
                         np.ones(3, bool), np.ones(3, bool))


@pytest.fixture
def lite_store(tmp_path) -> tuple[Path, Path]:
    """(store, manifest): v0000 train sub:warm and v0001 val in part-a, v0002 test in part-b, an errors record, a
    foreign file; the manifest lists the three videos as stored (their files need not exist: all are done)."""
    out = tmp_path / "feats"
    store.write_videos(out, [_stored("v0000", "train", ["sub:warm"], 1), _stored("v0001", "val", ["obj:peer"], 2)],
                       name="part-a")
    store.write_videos(out, [_stored("v0002", "test", ["sub:dominant"], 3)], name="part-b")
    store.write_errors(out, [{"video_id": "gone", "path": "/gone.mp4", "stage": "decode", "error": "E",
                              "message": "m"}], name="part-old")
    store.write_info(out, StoreInfo("lite", dict(LITE_DIMS), 2.0))
    (out / "README.txt").write_text("notes of the user\n")
    rows = [{"video_id": v, "path": f"{v}.mp4", "split": sp, "labels": lb} for v, sp, lb in
            (("v0000", "train", "sub:warm"), ("v0001", "val", "obj:peer"), ("v0002", "test", "sub:dominant"))]
    return out, _write_rows(tmp_path / "manifest.csv", rows)


def _contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_overwrite_keeps_the_old_store_until_the_new_one_is_whole(lite_store, monkeypatch):
    out, manifest = lite_store
    before = _contents(out)

    def unreachable(address, verbose=False):
        raise ConnectionError("cluster unreachable")

    monkeypatch.setattr(extract_module, "ray_session", unreachable)
    with pytest.raises(ConnectionError):
        extract_features(ExtractConfig(manifest=manifest, out=out, overwrite=True))
    assert _contents(out) == before  # nothing removed, no staging or lock left


def test_parquet_files_not_written_by_extract_are_never_offered_to_overwrite(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    pq.write_table(pa.table({"x": [1, 2]}), out / "results.parquet")
    manifest = _write_rows(tmp_path / "m.csv", [{"video_id": "v", "path": "v.mp4", "split": "train",
                                                 "labels": "sub:warm"}])
    with pytest.raises(ExtractError, match="results.parquet") as raised:
        extract_features(ExtractConfig(manifest=manifest, out=out))
    assert "--overwrite" not in str(raised.value)
    with pytest.raises(ExtractError, match=r"did not write \(results.parquet\)"):
        extract_features(ExtractConfig(manifest=manifest, out=out, overwrite=True))
    assert sorted(p.name for p in out.iterdir()) == ["results.parquet"]


def test_changed_split_and_labels_update_the_store_without_reencoding(lite_store, capsys):
    out, manifest = lite_store
    before = {v.video_id: v for v in store.load_videos(out)}
    part_b = (out / "part-b.parquet").stat().st_mtime_ns
    rows = _manifest_rows(manifest)
    rows[0] = {**rows[0], "split": "test", "labels": "sub:dominant|obj:peer"}
    summary = extract_features(ExtractConfig(manifest=_write_rows(manifest, rows), out=out))
    assert (summary.processed, summary.skipped) == (0, 3)
    assert "v0000: split/labels changed" in capsys.readouterr().err
    after = {v.video_id: v for v in store.load_videos(out)}
    assert (after["v0000"].split, after["v0000"].labels) == ("test", ["sub:dominant", "obj:peer"])
    assert (after["v0001"].split, after["v0001"].labels) == ("val", ["obj:peer"])
    for m in MODALITIES:
        np.testing.assert_array_equal(after["v0000"].features[m], before["v0000"].features[m])
    assert (out / "part-b.parquet").stat().st_mtime_ns == part_b  # an unaffected part file is not rewritten


def test_a_second_writer_is_refused_and_a_dead_writers_lock_taken_over(lite_store):
    out, manifest = lite_store
    other = subprocess.Popen(["sleep", "60"])
    lock = out / store.LOCK_FILE
    lock.write_text(json.dumps({"pid": other.pid, "host": socket.gethostname(), "token": "t", "since": "then"}))
    try:
        with pytest.raises(StoreLockedError, match=rf"\.lock: another writer .*pid {other.pid} on "):
            extract_features(ExtractConfig(manifest=manifest, out=out))
    finally:
        other.kill()
        other.wait()
    assert extract_features(ExtractConfig(manifest=manifest, out=out)).skipped == 3  # stale: taken over
    assert not lock.exists()  # released
    lock.write_text(json.dumps({"pid": other.pid, "host": "elsewhere", "token": "t", "since": "then"}))
    with pytest.raises(StoreLockedError, match="on elsewhere"):  # another host's pid cannot be judged from here
        extract_features(ExtractConfig(manifest=manifest, out=out))


def _manifest_rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _write_rows(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _transcode(src: Path, dst: Path, codec: str) -> None:
    with av.open(str(src)) as source, av.open(str(dst), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(10))
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for frame in source.decode(video=0):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), format="rgb24")))
        container.mux(stream.encode())


@pytest.fixture(scope="module")
def tiny_videos(tmp_path_factory) -> Path:
    """6 synthetic videos of 2.5 s at 160x120 (boxes JSON given); manifest.csv in the folder."""
    root = tmp_path_factory.mktemp("tiny")
    return synthesize_videos(root, num_videos=6, seed=3, width=160, height=120, fps=10.0, seconds=2.5)


def _on_s3(folder: Path, uri: str) -> Location:
    """`folder` uploaded to `uri` with pyarrow's copy_files, as a user would put videos on an object store."""
    filesystem, path = pafs.FileSystem.from_uri(uri)
    pafs.copy_files(str(folder), path, destination_filesystem=filesystem)
    return Location(uri)


def test_a_video_and_its_boxes_on_s3_are_opened_by_uri_and_the_download_removed(tiny_videos, s3_folder, tmp_path,
                                                                                  monkeypatch):
    remote = _on_s3(tiny_videos.parent, f"{s3_folder}/in")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(downloads))  # where the decoder's local copy goes
    entry = read_manifest(remote / "manifest.csv")[0]
    assert (entry.path, entry.boxes) == (f"{remote}/videos/v0000.mp4", f"{remote}/boxes/v0000.json")
    settings = VideoSettings(preset="lite", fps=2.0)
    there = prepare_video(entry.path, entry.boxes, settings)
    here = prepare_video(str(tiny_videos.parent / "videos" / "v0000.mp4"),
                         str(tiny_videos.parent / "boxes" / "v0000.json"), settings)
    assert there.detector == "tracks" and there.num_steps == 5
    np.testing.assert_array_equal(there.rgb, here.rgb)
    np.testing.assert_array_equal(there.has_face, here.has_face)
    with pytest.raises(VideoStageError, match=f"^{remote}/videos/nope.mp4: ") as raised:
        prepare_video(f"{remote}/videos/nope.mp4", entry.boxes, settings)
    assert raised.value.stage == "decode"
    with pytest.raises(VideoStageError, match=f"^{remote}/boxes/nope.json: boxes file not found") as raised:
        prepare_video(entry.path, f"{remote}/boxes/nope.json", settings)
    assert raised.value.stage == "detect"
    assert list(downloads.iterdir()) == []  # every download deleted


def test_a_store_on_s3_is_resumed_updated_and_locked_like_a_local_one(lite_store, s3_folder, tmp_path, monkeypatch):
    local, manifest = lite_store
    out = _on_s3(local, f"{s3_folder}/feats")
    rows = _manifest_rows(manifest)
    rows[0] = {**rows[0], "split": "test", "labels": "sub:dominant|obj:peer"}
    remote_manifest = Location(f"{s3_folder}/list/manifest.csv")
    remote_manifest.upload(_write_rows(tmp_path / "changed.csv", rows))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    summary = extract_features(ExtractConfig(manifest=str(remote_manifest), out=str(out)))  # all done: no Ray
    assert (summary.processed, summary.skipped, summary.out) == (0, 3, out)
    assert store.stored_splits_labels(out)["v0000"] == ("test", ["sub:dominant", "obj:peer"])
    assert not (out / store.LOCK_FILE).exists()  # released
    assert list(work.iterdir()) == []  # nothing written locally
    with pytest.raises(ExtractError, match=f"^--out {out}: --overwrite needs a local folder"):
        extract_features(ExtractConfig(manifest=remote_manifest, out=out, overwrite=True))
    with pytest.raises(ManifestError, match=f"^{s3_folder}/list/nope.csv: manifest not found"):
        extract_features(ExtractConfig(manifest=f"{s3_folder}/list/nope.csv", out=out))


def _encoded_batch(tiny_videos: Path, count: int, window: int | None = None) -> pa.Table:
    """The first `count` tiny videos through the pipeline's own stage functions, in this process (no Ray): the CPU
    stage's rows, batched as Ray Data's numpy batches, then one encoder actor's Arrow table."""
    rows = [{**r, "path": str(tiny_videos.parent / r["path"]), "boxes": str(tiny_videos.parent / r["boxes"])}
            for r in _manifest_rows(tiny_videos)[:count]]
    prepared = [extract_module._prepare_row(r, VideoSettings(preset="lite", fps=2.0)) for r in rows]
    batch = {k: np.array([r[k] for r in prepared], dtype=object) for k in prepared[0]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random-init encoders
        actor = extract_module.EncodeVideos("lite", None, "cpu", 1, window)
    return actor(batch)


def test_the_driver_writes_the_actors_rows_and_the_store_reads_back_as_before(tiny_videos, tmp_path, offline):
    table = _encoded_batch(tiny_videos, 3)  # row schema + path/stage/error/... columns
    assert table.column("error").to_pylist() == ["", "", ""]
    config = ExtractConfig(manifest=tiny_videos, out=tmp_path / "new", videos_per_part=2)
    writer = extract_module._StoreWriter(config, config.out, None, "run", 3)
    writer.add(table.slice(0, 1))
    assert writer.parts == []  # 1 < videos_per_part: buffered
    writer.add(table.slice(1))
    assert len(writer.parts) == 1  # 2 written, 1 buffered
    writer.flush()
    assert [pq.read_metadata(p).num_rows for p in writer.parts] == [2, 1]

    # before: the driver converted the rows to VideoFeatures and wrote those (float16 -> float32 -> float16)
    old = tmp_path / "old"
    videos = store.table_to_videos(table.select(store.row_schema().names))
    store.write_videos(old, videos[:2], name="part-run-00000")
    store.write_videos(old, videos[2:], name="part-run-00001")
    for new_part, old_part in zip(writer.parts, store.part_files(old), strict=True):
        new_rows, old_rows = pq.read_table(new_part), pq.read_table(old_part)
        assert new_rows.schema == old_rows.schema == store.row_schema()
        assert new_rows.equals(old_rows)
        assert pq.read_metadata(new_part).num_row_groups == pq.read_metadata(old_part).num_row_groups
    store.write_info(old, store.read_info(config.out))
    for a, b in zip(store.load_videos(config.out), store.load_videos(old), strict=True):
        assert a.video_id == b.video_id and np.array_equal(a.timestamp, b.timestamp)
        assert all(np.array_equal(a.features[m], b.features[m]) for m in MODALITIES)
        assert np.array_equal(a.has_face, b.has_face) and np.array_equal(a.body_tracked, b.body_tracked)

    with pytest.raises(store.FeatureStoreError, match="timestamp"):  # rows not in the store's schema: refused
        store.write_table(tmp_path / "bad", table.drop_columns(["timestamp"]), name="part-x")


def test_encode_kept_steps_encodes_exactly_the_steps_training_keeps(tiny_videos, tmp_path, offline):
    every = store.table_to_videos(_encoded_batch(tiny_videos, 3).select(store.row_schema().names))
    table = _encoded_batch(tiny_videos, 3, window=3)
    config = ExtractConfig(manifest=tiny_videos, out=tmp_path / "kept", encode_kept_steps=True)
    writer = extract_module._StoreWriter(config, config.out, None, "run", 3)
    writer.add(table)
    writer.flush()
    writer.write_info(final=True)
    info = store.read_info(config.out)
    assert info.extra["encoded_steps"] == "window-3 kept" and store.encoded_window(info) == 3
    kept_videos = store.load_videos(config.out)
    assert [v.video_id for v in kept_videos] == [v.video_id for v in every]
    for stored, full in zip(kept_videos, every, strict=True):
        assert stored.num_steps == full.num_steps == 5  # every row, mask and timestamp kept
        assert np.array_equal(stored.timestamp, full.timestamp) and np.array_equal(stored.has_face, full.has_face)
        kept = select_steps(stored.present(), 3)
        assert kept.size == 2  # 5 steps: windows 0-2 and 3-4
        for m in MODALITIES:
            encoded = np.flatnonzero(np.abs(stored.features[m]).sum(1) > 0)
            assert encoded.tolist() == [t for t in kept.tolist() if stored.present()[m][t]], (stored.video_id, m)
            np.testing.assert_allclose(stored.features[m][kept], full.features[m][kept], atol=2e-3, rtol=2e-3)
        batch = collate([stored], "sub")  # training's sequence former picks exactly the encoded steps
        assert batch.steps[0].tolist() == kept.tolist()
        assert np.abs(batch.features["rgb"][0].numpy()).sum(1).all()

    # the cached input statistics count only the encoded steps, not the zeros between them
    stats = store.input_stats_record(config.out)["stats"]["rgb"]
    train = [v for v in kept_videos if v.split == "train"]
    rows = np.concatenate([v.features["rgb"][select_steps(v.present(), 3)] for v in train])
    np.testing.assert_allclose(stats["mean"], rows.astype(np.float64).mean(0), rtol=1e-4, atol=1e-5)

    with pytest.raises(store.FeatureStoreError, match="window 1"):  # another window would read zero features
        store.check_encoded_window(info, 1, str(config.out))
    store.check_encoded_window(info, 3, str(config.out))


def test_a_store_is_not_resumed_with_the_other_encoded_steps_choice(lite_store):
    out, manifest = lite_store
    with pytest.raises(ExtractError, match="encoded_steps"):
        extract_features(ExtractConfig(manifest=manifest, out=out, encode_kept_steps=True))


def test_training_refuses_a_store_encoded_for_another_window(lite_store):
    out, _ = lite_store
    info = store.read_info(out)
    store.write_info(out, dataclasses.replace(info, extra={**info.extra, "encoded_steps": "window-3 kept"}))
    check_store(out, "sub")  # training forms its sequences with window 3: accepted
    store.write_info(out, dataclasses.replace(info, extra={**info.extra, "encoded_steps": "window-5 kept"}))
    with pytest.raises(store.FeatureStoreError, match=r"features.json: the store encoded only .* window-5"):
        check_store(out, "sub")


@pytest.mark.ray
def test_extract_good_corrupt_missing_and_worker_killing_videos_offline(ray_cluster, tiny_videos, tmp_path,
                                                                        monkeypatch):
    """One run, every kind of video: good ones (one not H.264), a text file, a missing file, and one whose CPU-stage
    task kills its worker process on every attempt (ASRN_FAULT_CRASH_VIDEO): the good ones are stored, each bad one
    is one error record naming it, and nothing pretrained is found (random init)."""
    torch_home = tmp_path / "empty-torch-home"
    torch_home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(torch_home))  # no weights anywhere: random init, and nothing hangs
    rows = _manifest_rows(tiny_videos)[:4]
    mpeg4 = tiny_videos.parent / "videos" / "v0003-mpeg4.mp4"  # a non-H.264 codec: MPEG-4 Part 2
    _transcode(tiny_videos.parent / rows[3]["path"], mpeg4, "mpeg4")
    rows[3] = {**rows[3], "video_id": "mpeg4", "path": str(mpeg4)}
    crash = rows[1]["video_id"]
    monkeypatch.setenv(extract_module.FAULT_CRASH_VIDEO, crash)  # its CPU-stage task calls os._exit(1)
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is a text file, not a video\n")
    rows.append({**rows[0], "video_id": "corrupt", "path": str(fake), "boxes": ""})
    rows.append({**rows[0], "video_id": "missing", "path": str(tmp_path / "nowhere.mp4"), "boxes": ""})
    manifest = _write_rows(tiny_videos.parent / "with-bad.csv", rows)
    out = tmp_path / "feats"
    summary = extract_features(ExtractConfig(manifest=manifest, out=out, preset="lite", fps=2.0, num_workers=1,
                                             batch_size=2, videos_per_part=2, max_retries=1))
    assert (summary.succeeded, summary.failed, summary.skipped, summary.total) == (3, 3, 0, 6)
    assert len(summary.part_files) == 2  # 2 + 1 videos

    info = store.read_info(out)
    assert info.preset == "lite" and info.fps == 2.0 and info.dims == LITE_DIMS
    # offline: the torchvision encoders are random-init, the face descriptor ships with its package (asrn.faces)
    assert {m: w for m, w in info.weights.items() if m != "face"} == {m: "random-init" for m in MODALITIES
                                                                      if m != "face"}
    assert info.weights["face"].startswith("pretrained:dlib_face_recognition_resnet_model_v1@sha256:")
    assert info.detector == "tracks" and set(info.encoders) == set(MODALITIES)
    assert info.decoder == video.DECODER  # decord where it imports, else PyAV; every video decoded whole
    videos = {v.video_id: v for v in store.load_videos(out)}
    assert sorted(videos) == sorted(r["video_id"] for r in rows[:4] if r["video_id"] != crash)
    for v in videos.values():
        assert v.num_steps == 5 and np.all(np.diff(v.timestamp) > 0)  # 2.5 s at 2 fps
        assert {m: f.shape[1] for m, f in v.features.items()} == info.dims
        assert v.has_body.mean() >= 0.6 and v.has_face.mean() >= 0.6
        assert not v.features["face"][~v.has_face].any()
    table = pq.read_table(summary.part_files[0])
    assert table.schema.names == store.row_schema().names

    errors = {r["video_id"]: r for r in store.read_errors(out).to_pylist()}
    assert sorted(errors) == sorted([crash, "corrupt", "missing"])
    assert errors["corrupt"]["stage"] == "decode" and "text file" in errors["corrupt"]["message"]
    assert errors["missing"]["stage"] == "decode" and "not found" in errors["missing"]["message"]
    assert errors["missing"]["error"] == "VideoDecodeError" and errors["missing"]["path"].endswith("nowhere.mp4")
    assert (errors[crash]["stage"], errors[crash]["error"]) == ("prepare", "WorkerCrashedError")
    assert "died on each of 2 attempt(s)" in errors[crash]["message"]
    assert errors[crash]["path"] == str(tiny_videos.parent / rows[1]["path"])

    with pytest.raises(ExtractError, match="fps"):  # another sampling rate into the same store
        extract_features(ExtractConfig(manifest=manifest, out=out, fps=1.0))


@pytest.mark.ray
def test_rerun_skips_done_videos_and_does_only_new_ones(ray_cluster, tiny_videos, tmp_path):
    rows = _manifest_rows(tiny_videos)
    first = _write_rows(tmp_path / "first.csv", [{**r, "path": str(tiny_videos.parent / r["path"]),
                                                 "boxes": str(tiny_videos.parent / r["boxes"])} for r in rows[:3]])
    out = tmp_path / "feats"
    config = ExtractConfig(manifest=first, out=out, batch_size=4)
    assert extract_features(config).succeeded == 3
    before = {p: p.stat().st_mtime_ns for p in store.part_files(out)}
    info_before = json.loads((out / store.INFO_FILE).read_text())

    again = extract_features(config)  # everything done: no Ray work, nothing rewritten
    assert (again.processed, again.skipped) == (0, 3)
    assert {p: p.stat().st_mtime_ns for p in store.part_files(out)} == before

    # one new video; its boxes omitted so the offline detector runs on it
    more = _write_rows(tmp_path / "more.csv", _manifest_rows(first) + [
        {**rows[3], "path": str(tiny_videos.parent / rows[3]["path"]), "boxes": ""}])
    third = extract_features(ExtractConfig(manifest=more, out=out, batch_size=4))
    assert (third.succeeded, third.failed, third.skipped) == (1, 0, 3)
    assert all(p.stat().st_mtime_ns == m for p, m in before.items())
    assert sorted(store.done_video_ids(out)) == [r["video_id"] for r in rows[:4]]
    info = store.read_info(out)
    assert info.dims == info_before["dims"] and info.detector == "opencv-haar+hog, tracks"
    new = next(v for v in store.load_videos(out) if v.video_id == rows[3]["video_id"])
    assert new.num_steps == 5  # no person found must still give rows, not an error


@pytest.mark.ray
def test_a_killed_driver_then_a_rerun_store_every_video_exactly_once(ray_cluster, tiny_videos, s3_folder, tmp_path,
                                                                     monkeypatch):
    """Everything on the S3 test server (manifest, videos, boxes, store): the Ray tasks fetch their own videos by
    URI, part files go up under their final names, and the rerun after a SIGKILL resumes from them."""
    remote = _on_s3(tiny_videos.parent, f"{s3_folder}/in")
    rows = _manifest_rows(tiny_videos)  # relative paths: beside the manifest, on S3
    (tmp_path / "notes.mp4").write_text("a text file\n")
    (remote / "notes.mp4").upload(tmp_path / "notes.mp4")
    rows.insert(1, {**rows[0], "video_id": "corrupt", "path": "notes.mp4", "boxes": ""})
    manifest, out = remote / "m.csv", Location(f"{s3_folder}/feats")
    manifest.upload(_write_rows(tmp_path / "m.csv", rows))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    address = ray_cluster.get_runtime_context().gcs_address
    script = (f"from asrn.extract import ExtractConfig, extract_features; extract_features(ExtractConfig("
              f"manifest={str(manifest)!r}, out={str(out)!r}, address={address!r}, batch_size=1, videos_per_part=1))")
    with (tmp_path / "driver.log").open("w") as log:  # inherits the S3 server's variables
        driver = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).parents[1], stdout=log, stderr=log)
    deadline = time.monotonic() + 300
    while driver.poll() is None and len(out.files(".parquet")) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    os.kill(driver.pid, signal.SIGKILL)
    assert driver.wait() == -signal.SIGKILL, (tmp_path / "driver.log").read_text()[-2000:]
    assert (out / store.LOCK_FILE).exists()  # the dead driver's lock: taken over below
    assert ACTOR_ARGS_NOTICE not in (tmp_path / "driver.log").read_text()  # Ray's C++ line per encoder actor

    summary = extract_features(ExtractConfig(manifest=manifest, out=out, batch_size=2, videos_per_part=2))
    assert summary.skipped >= 2
    stored = [i for f in store.data_files(out)
              for i in store.read_part(f, columns=["video_id"]).column("video_id").to_pylist()]
    errors = store.read_errors(out).to_pylist()
    assert sorted(stored) == sorted(r["video_id"] for r in rows if r["video_id"] != "corrupt")
    assert [(e["video_id"], e["path"]) for e in errors] == [("corrupt", f"{remote}/notes.mp4")]
    assert not (out / store.LOCK_FILE).exists() and store.read_info(out).preset == "lite"
    assert sum(check_store(out, "sub")[1].values()) == 6  # training's own check accepts the store, by URI
    assert list(work.iterdir()) == []  # nothing written to the local working directory
