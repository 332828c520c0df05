"""synthesize_videos: decodable H.264, boxes where the figures are, manifest, determinism, hard cuts."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest

from asrn.labels import ALL_LABELS
from asrn.manifest import read_manifest
from asrn.synth_features import draw_labels, label_rates
from asrn.synth_videos import CUES, SKIN_TONES, _plan_shots, synthesize_videos
from asrn.tracks import load_tracks

SMALL = {"num_videos": 6, "seconds": 2.5}  # 25 frames at 10 fps


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    synthesize_videos(out, seed=3, **SMALL)
    return out


def _frames(path: str) -> np.ndarray:
    with av.open(path) as container:  # PyAV installs everywhere; decord only on x86_64 Linux and Windows
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])  # (N, H, W, 3)


def test_manifest_reads_back(synth_dir):
    entries = read_manifest(synth_dir / "manifest.csv")
    assert len(entries) == 6
    assert {e.split for e in entries} == {"train", "val", "test"}
    for entry in entries:
        assert Path(entry.path).is_file() and Path(entry.boxes).is_file()
        assert any(name.startswith("sub:") for name in entry.labels)
        assert any(name.startswith("obj:") for name in entry.labels)
    text = (synth_dir / "manifest.csv").read_text()
    assert "videos/v0000.mp4" in text and "boxes/v0000.json" in text and str(synth_dir) not in text


def test_videos_decode_and_boxes_match_the_figures(synth_dir):
    skin = np.array(SKIN_TONES, dtype=np.float32)
    pairs = []
    for entry in read_manifest(synth_dir / "manifest.csv"):
        frames = _frames(entry.path)
        assert frames.shape == (25, 120, 160, 3)
        tracks = load_tracks(entry.boxes)
        assert (tracks.width, tracks.height, tracks.fps) == (160, 120, 10.0)
        for index in (0, 6, 12, 19, 24):
            persons, faces = tracks.boxes_at(index)
            assert len(persons) >= 1 and len(faces) >= 1  # a figure may walk out of the frame
            pairs.append(len(faces) >= 2)
            for box in np.concatenate([persons, faces]):
                assert 0 <= box[0] < box[2] <= 160 and 0 <= box[1] < box[3] <= 120
            for face in faces:
                assert any(p[0] <= face[0] and face[2] <= p[2] and p[1] <= face[1] and face[3] <= p[3]
                           for p in persons)  # each head inside a whole-figure box
                if face[2] - face[0] < 6 or face[3] - face[1] < 6:
                    continue  # clipped at the frame edge
                x1, y1, x2, y2 = face.astype(int)
                w, h = x2 - x1, y2 - y1
                inner = frames[index, y1 + h // 4: y2 - h // 4, x1 + w // 4: x2 - w // 4].reshape(-1, 1, 3)
                distance = np.abs(inner.astype(np.float32) - skin[None]).max(axis=2).min(axis=1)  # to nearest tone
                assert (distance < 40).mean() > 0.35, (entry.video_id, index, face)  # mostly skin, less eyes/mouth
                median = np.median(inner[distance < 40].reshape(-1, 3).astype(np.float32), axis=0)
                around = frames[index, max(0, y1 - 3): y2 + 3, max(0, x1 - 3): x2 + 3].astype(np.float32)
                assert np.abs(around - median).max(axis=2).mean() > 5  # the face stands out from its surround
    assert np.mean(pairs) > 0.7  # mostly two or more people in view


def test_hard_cuts_between_shots(synth_dir):
    for entry in read_manifest(synth_dir / "manifest.csv"):
        meta = json.loads((synth_dir / "meta" / f"{entry.video_id}.json").read_text())
        assert 3 <= len(meta["shots"]) <= 5 and any(s["relevant"] for s in meta["shots"])  # 25 frames: <= 5 shots
        relevant = [k for k, s in enumerate(meta["shots"]) if s["relevant"]]
        assert all(b - a >= 2 for a, b in zip(relevant, relevant[1:], strict=False))  # never adjacent
        shown = {name for s in meta["shots"] for name in s["labels"]}
        assert shown == set(entry.labels) == set(meta["labels"])
        frames = _frames(entry.path).astype(np.float32)
        diff = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))  # diff[i]: frame i -> i + 1
        cuts = [s["start"] - 1 for s in meta["shots"][1:]]
        within = np.delete(diff, cuts)
        assert diff[cuts].min() > 2.5 * within.max() and diff[cuts].min() > 8, (entry.video_id, diff.round(1))


def test_same_seed_same_bytes_other_seed_other_bytes(synth_dir, tmp_path):
    again = tmp_path / "again"
    other = tmp_path / "other"
    synthesize_videos(again, seed=3, **SMALL)
    synthesize_videos(other, seed=4, **SMALL)
    files = sorted(p.relative_to(synth_dir) for p in synth_dir.rglob("*") if p.is_file())
    assert len(files) == 6 * 3 + 1
    for name in files:
        assert (synth_dir / name).read_bytes() == (again / name).read_bytes(), name
    assert (synth_dir / "videos/v0000.mp4").read_bytes() != (other / "videos/v0000.mp4").read_bytes()


def test_too_few_videos(tmp_path):
    with pytest.raises(ValueError, match="num_videos"):
        synthesize_videos(tmp_path, num_videos=5)


def test_every_class_has_a_recipe_and_labels_follow_sriv_rates(tmp_path):
    assert set(CUES) == set(ALL_LABELS)
    recipes = [CUES[name] for name in ALL_LABELS]
    assert len({(c.motion, c.mouth, c.eyes) for c in recipes[:8]}) == 8  # sub classes look different
    assert len({(c.size_ratio, c.both_small, c.gap, c.outfit, c.scene) for c in recipes[8:]}) == 8
    rng = np.random.default_rng(0)
    planned, complete = [], []  # what the default 6 s videos show, planned without rendering
    for _ in range(1500):
        labels = draw_labels(rng)
        shots = _plan_shots(rng, labels, 60, 10.0, 32, 32)
        planned.append({name for s in shots for name in s.labels})
        complete.append(planned[-1] == set(labels))
    assert np.mean(complete) > 0.99  # 6 s at 10 fps have room for up to 6 labels of a group
    rates = np.array([np.mean([name in p for p in planned]) for name in ALL_LABELS])
    target = np.array([label_rates()[name] for name in ALL_LABELS])
    assert np.all(np.abs(rates - target) < 0.05)
