import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.multiclass import OneVsRestClassifier
from sklearn.preprocessing import StandardScaler

from asrn import cli, store
from asrn.labels import ALL_LABELS, SRIV_COUNTS
from asrn.sequence import select_steps
from asrn.store import MODALITIES, FeatureStoreError, StoreInfo
from asrn.synth_features import (
    CUE_AMPLITUDE,
    CUE_MODALITIES,
    DEFAULT_DIMS,
    EVENT_STEPS,
    class_prototypes,
    draw_labels,
    generate_videos,
    generator_parameters,
    label_rates,
    synthesize_feature_store,
)

COLUMNS = ["video_id", "split", "labels", "timestamp", *MODALITIES, "has_body", "has_face", *store.TRACKED_COLUMNS,
           "shot_start"]
SMALL_DIMS = {"rgb": 16, "motion": 12, "body": 10, "face": 8}


@pytest.fixture(scope="module")
def synth_store(tmp_path_factory):
    return synthesize_feature_store(tmp_path_factory.mktemp("store"), num_videos=60, seed=3, dims=SMALL_DIMS)


def _file_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_store_loads_back_with_documented_columns(synth_store):
    info = store.read_info(synth_store)
    assert info.preset == "synthetic" and info.dims == SMALL_DIMS and info.extra["seed"] == 3
    assert info.extra["planting"] == json.loads(json.dumps(generator_parameters()))  # every parameter recorded
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


def test_same_seed_same_videos_and_prefix_stable():
    a = generate_videos(10, seed=4, dims=SMALL_DIMS)
    b = generate_videos(12, seed=4, dims=SMALL_DIMS)
    for x, y in zip(a, b[:10], strict=True):  # video i does not depend on how many follow
        assert x.video.labels == y.video.labels and x.events == y.events
        for m in MODALITIES:
            np.testing.assert_array_equal(x.video.features[m], y.video.features[m])


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = synthesize_feature_store(tmp_path / "a", num_videos=8, seed=5, dims=SMALL_DIMS)
    b = synthesize_feature_store(tmp_path / "b", num_videos=8, seed=5, dims=SMALL_DIMS)
    c = synthesize_feature_store(tmp_path / "c", num_videos=8, seed=6, dims=SMALL_DIMS)
    assert _file_bytes(a) == _file_bytes(b)
    assert _file_bytes(a)["part-00000.parquet"] != _file_bytes(c)["part-00000.parquet"]
    assert json.loads((a / "features.json").read_text())["extra"]["seed"] == 5


def test_label_rates_follow_table_1():
    rng = np.random.default_rng(0)
    draws = np.array([[name in labels for name in ALL_LABELS] for labels in (draw_labels(rng) for _ in range(4000))])
    rates = np.array([label_rates()[name] for name in ALL_LABELS])
    assert np.allclose(rates, [SRIV_COUNTS[name] / 3124 for name in ALL_LABELS])
    assert np.all(np.abs(draws.mean(0) - rates) < 4 * np.sqrt(rates * (1 - rates) / len(draws)) + 1e-3)
    assert draws[:, :8].any(1).all() and draws[:, 8:].any(1).all()  # >= 1 sub and >= 1 obj label per video
    assert abs(draws[:, :8].sum(1).mean() - 2.86) < 0.08 and abs(draws[:, 8:].sum(1).mean() - 1.25) < 0.05


def test_events_are_a_short_minority_and_survive_the_sequence_former():
    synth = generate_videos(300, seed=0, dims=SMALL_DIMS)
    shares, kept_shares = [], []
    for s in synth:
        assert s.events and sorted({n for e in s.events for n in e.labels}) == sorted(s.video.labels)
        assert sum(len(e.labels) for e in s.events) == len(s.video.labels)  # each label in one event
        kept = select_steps(s.video.present())
        for e in s.events:
            assert len(np.unique(s.shot[e.start:e.stop])) == 1  # inside one shot
            assert EVENT_STEPS[0] <= e.stop - e.start <= EVENT_STEPS[1]
            assert s.video.has_body[e.start:e.stop].all() and s.video.has_face[e.start:e.stop].all()
            assert 2 <= ((kept >= e.start) & (kept < e.stop)).sum() <= 4  # 2-4 kept steps per event
        assert len({s.shot[e.start] for e in s.events}) == len(s.events)  # one event per shot
        shares.append(s.relevant.mean())
        kept_shares.append(s.relevant[kept].mean())
    assert max(shares) < 0.5 and max(kept_shares) < 0.6
    assert np.mean(shares) < 0.25 and np.mean(kept_shares) < 0.25


def test_cue_turns_over_the_event_and_is_absent_outside():
    label = "sub:competitive"
    assert CUE_MODALITIES[label] == ("motion",)
    synth = generate_videos(300, seed=0, dims=SMALL_DIMS)
    u = class_prototypes(0, SMALL_DIMS)[label]["motion"]  # (2, D)
    positive = np.array([label in s.video.labels for s in synth])
    assert 30 < positive.sum() < 150
    first, last, outside = [], [], []
    for s in synth:
        x = s.video.features["motion"]
        e = next((e for e in s.events if label in e.labels), s.events[0])
        first.append(x[e.start] @ u.T)
        last.append(x[e.stop - 1] @ u.T)
        outside.append(x[~s.relevant].mean(0) @ u.T)
    first, last, outside = np.array(first), np.array(last), np.array(outside)
    lift = lambda v: v[positive].mean(0) - v[~positive].mean(0)  # noqa: E731
    assert lift(first)[0] > 0.6 * CUE_AMPLITUDE and abs(lift(first)[1]) < 0.5 * CUE_AMPLITUDE  # starts along u1
    assert lift(last)[1] > 0.6 * CUE_AMPLITUDE and abs(lift(last)[0]) < 0.5 * CUE_AMPLITUDE  # ends along u2
    assert np.abs(lift(outside)).max() < 0.3  # no cue outside the events
    assert set(class_prototypes(0, SMALL_DIMS)[label]) == {"motion", "rgb"}  # plus the weak rgb cue


def test_backgrounds_are_full_rank_and_shots_differ():
    synth = generate_videos(200, seed=2)
    means = np.stack([s.video.features["rgb"][s.shot == k].mean(0) for s in synth for k in np.unique(s.shot)])
    spectrum = np.linalg.svd(means - means.mean(0), compute_uv=False) ** 2
    assert spectrum[DEFAULT_DIMS["rgb"] // 2] > 0.25 * spectrum[0]  # no low-rank subspace holds them
    across, within = [], []
    for s in synth:  # a cut changes the background (and the noise level): consecutive steps jump further apart
        jumps = np.linalg.norm(np.diff(s.video.features["rgb"], axis=0), axis=1)  # (T-1,)
        cut = np.diff(s.shot) != 0
        across.append(jumps[cut].mean())
        within.append(jumps[~cut].mean())
    assert np.mean(np.array(across) > np.array(within)) > 0.95
    assert np.mean(across) > 1.25 * np.mean(within)


def test_the_store_holds_the_true_shot_starts(synth_store):
    """shot_start marks exactly the steps where generate_videos' shot index changes (and step 0), as read back."""
    synth = {s.video.video_id: s for s in generate_videos(60, seed=3, dims=SMALL_DIMS)}
    for v in store.load_videos(synth_store):
        shot = synth[v.video_id].shot
        assert v.shot_start is not None and v.shot_start.shape == shot.shape
        assert v.shot_start[0] and np.array_equal(np.flatnonzero(v.shot_start[1:]), np.flatnonzero(np.diff(shot)))
        assert 3 <= v.shot_start.sum() <= 6


def test_mean_pooled_probe_scores_well_below_the_event_pooled_one():
    """A linear probe (one-vs-rest logistic regression) on features mean-pooled over the whole video against the
    same probe on features pooled over the cue-event steps: attending to the events must pay."""
    synth = generate_videos(800, seed=0)
    y = np.array([[name in s.video.labels for name in ALL_LABELS] for s in synth], dtype=int)
    test = np.array([s.video.split == "test" for s in synth])

    def probe(where) -> float:
        x = np.stack([np.concatenate([s.video.features[m][where(s)].mean(0) for m in MODALITIES]) for s in synth])
        scaler = StandardScaler().fit(x[~test])
        clf = OneVsRestClassifier(LogisticRegression(C=0.1, max_iter=500)).fit(scaler.transform(x[~test]), y[~test])
        return float(average_precision_score(y[test], clf.predict_proba(scaler.transform(x[test])), average="macro"))

    pooled_mean = probe(lambda s: slice(None))
    pooled_events = probe(lambda s: s.relevant)
    print(f"linear probe test mAP: mean-pooled {pooled_mean:.3f}, event-pooled {pooled_events:.3f}")
    assert pooled_events > 0.55
    assert pooled_events - pooled_mean > 0.2


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
