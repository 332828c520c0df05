"""Scoring a collection (asrn.scoring): flags, the outputs on given scores, unlabelled manifests, MLflow models;
and, on the session's Ray cluster, a store scored as training scores it, a manifest with a corrupt video, resume."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from asrn.cli import main
from asrn.labels import encode, task_labels
from asrn.locations import Location
from asrn.manifest import ManifestError, read_manifest
from asrn.metrics import compute_metrics
from asrn.scoring import (
    PREDICTED_PREFIX,
    ScoreConfig,
    ScoreError,
    fit_scorers,
    load_mlflow_scorer,
    prediction_table,
    score,
    summary,
)

LABELS = list(task_labels("sub"))


# ---------------------------------------------------------------- flags


@pytest.mark.parametrize(("flags", "named"), [
    ({"checkpoint": "c.pt"}, "--features STORE or --manifest CSV"),
    ({"features": "s", "manifest": "m.csv", "checkpoint": "c.pt"}, "--features STORE or --manifest CSV"),
    ({"features": "s"}, "--checkpoint CKPT or --model URI"),
    ({"features": "s", "checkpoint": "c.pt", "model": "models:/a/1"}, "--checkpoint CKPT or --model URI"),
    ({"features": "s", "checkpoint": "c.pt", "split": "dev"}, "--split must be one of"),
    ({"manifest": "m.csv", "checkpoint": "c.pt", "split": "val"}, "--split selects store videos"),
    ({"features": "s", "checkpoint": "c.pt", "num_workers": 0}, "--num-workers must be >= 1"),
    ({"features": "s", "model": "best.pt"}, "--model best.pt: expected an MLflow model URI"),
    ({"manifest": "m.csv", "checkpoint": "c.pt", "boxes": "b.json"}, "--boxes is the tracks JSON of a single"),
    ({"features": "s", "checkpoint": "c.pt", "figures": True}, "--figures needs --manifest"),
])
def test_bad_flags_are_refused_by_name(tmp_path, flags, named):
    with pytest.raises(ScoreError, match=named):
        ScoreConfig(out=tmp_path / "o", **flags)


def test_scoring_flags_with_video_paths_are_refused_and_the_commands_exit_1(tmp_path, capsys):
    assert main(["predict", "v.mp4", "--checkpoint", "c.pt", "--out", str(tmp_path), "--address", "auto"]) == 1
    assert "--address" in capsys.readouterr().err
    assert main(["predict", "v.mp4", "--out", str(tmp_path)]) == 1
    assert "give --checkpoint" in capsys.readouterr().err
    assert main(["predict", "--out", str(tmp_path), "--checkpoint", "c.pt"]) == 1  # neither store nor manifest
    assert "--features STORE or --manifest CSV" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before anything is written


# ---------------------------------------------------------------- outputs on given scores


def _scored_rows(rng, n: int) -> tuple[pa.Table, np.ndarray, list]:
    scores = rng.random((n, len(LABELS))).astype(np.float32)
    labels = [[LABELS[i % 8], LABELS[(i + 3) % 8]] if i % 4 else [] for i in range(n)]  # every 4th unknown
    splits = ["test" if i % 2 else "val" for i in range(n)]
    rows = pa.table({"video_id": [f"v{i:02d}" for i in range(n)], "split": splits, "labels": labels,
                     "scores": [list(s) for s in scores]})
    return rows, scores, labels


def test_the_prediction_table_and_summary_hold_scores_flags_and_metrics():
    rng = np.random.default_rng(0)
    rows, scores, labels = _scored_rows(rng, 24)
    thresholds = rng.uniform(0.2, 0.8, len(LABELS)).tolist()
    table = prediction_table(rows.take(rng.permutation(24)), LABELS, thresholds)  # any order in
    assert table.column_names == ["video_id", "split", "labels", *LABELS, *(PREDICTED_PREFIX + c for c in LABELS)]
    assert all(table.schema.field(c).type == pa.float32() for c in LABELS)
    order = [int(v[1:]) for v in table.column("video_id").to_pylist()]
    assert table.column("split").to_pylist() == sorted(table.column("split").to_pylist())
    got = np.stack([table.column(c).to_numpy() for c in LABELS], axis=1)
    np.testing.assert_array_equal(got, scores[order])
    flags = np.stack([table.column(PREDICTED_PREFIX + c).to_numpy(zero_copy_only=False) for c in LABELS], axis=1)
    np.testing.assert_array_equal(flags, scores[order] >= np.asarray(thresholds, np.float32))
    assert table.column("labels").to_pylist() == [labels[i] or None for i in order]

    result = summary(table, "sub", LABELS, thresholds, failed=2, counts={"skipped": 1})
    assert (result["videos"], result["failed"], result["skipped"]) == (24, 2, 1)
    assert result["per_split"] == {"test": 12, "val": 12} and result["with_labels"] == 18
    for split in ("val", "test"):
        keep = [i for i in range(24) if labels[i] and (i % 2 == (split == "test"))]
        targets = np.stack([encode(labels[i], "sub") for i in keep])
        expected = compute_metrics(targets, scores[keep], LABELS, thresholds=np.asarray(thresholds))
        assert result["metrics"][split]["at_thresholds"] == expected
        assert result["metrics"][split]["at_0.5"] == compute_metrics(targets, scores[keep], LABELS)
    json.dumps(result, allow_nan=False)


def test_a_collection_without_labels_has_no_metrics():
    rows = pa.table({"video_id": ["a"], "split": ["test"], "labels": [[]], "scores": [[0.5] * 8]})
    result = summary(prediction_table(rows, LABELS, [0.5] * 8), "sub", LABELS, [0.5] * 8, 0, {})
    assert result["metrics"] == {} and result["with_labels"] == 0


# ---------------------------------------------------------------- actors that leave a CPU to read with


def test_scoring_actors_leave_a_cpu_for_reading_the_store():
    """2 actors on a 2-CPU local Ray held both CPUs and no part was ever read: the job waited forever."""
    assert fit_scorers(2, {"CPU": 3.0}, can_grow=False) == (2, "")
    workers, note = fit_scorers(2, {"CPU": 2.0}, can_grow=False)
    assert workers == 1 and "--num-workers 2 lowered to 1" in note and "need 3 CPUs, the cluster has 2" in note
    assert fit_scorers(4, {"CPU": 2.0}, can_grow=True)[0] == 4  # an autoscaler may add the nodes
    with pytest.raises(ScoreError, match="need 2 CPUs, the cluster has 1"):
        fit_scorers(1, {"CPU": 1.0}, can_grow=False)


# ---------------------------------------------------------------- manifests without labels


def test_labels_are_optional_for_scoring_only(tmp_path):
    no_column = tmp_path / "a.csv"
    no_column.write_text("video_id,path,split\nv1,v1.mp4,test\n")
    empty = tmp_path / "b.csv"
    empty.write_text("video_id,path,split,labels\nv1,v1.mp4,test,\nv2,v2.mp4,val,sub:warm\n")
    assert [e.labels for e in read_manifest(no_column, labels_required=False)] == [()]
    assert [e.labels for e in read_manifest(empty, labels_required=False)] == [(), ("sub:warm",)]
    with pytest.raises(ManifestError, match="missing column.*labels"):
        read_manifest(no_column)  # extract's check is unchanged
    with pytest.raises(ManifestError, match="no labels for video 'v1'"):
        read_manifest(empty)
    unknown = tmp_path / "c.csv"
    unknown.write_text("video_id,path,split,labels\nv1,v1.mp4,test,sub:grumpy\n")
    with pytest.raises(ManifestError, match="grumpy"):
        read_manifest(unknown, labels_required=False)  # labels given are still checked


# ---------------------------------------------------------------- a trained model, without Ray


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A synthetic store and `asrn train`'s outputs for it (report_best_model: best.pt, predictions.parquet) from a
    small randomly initialised ASRN with the store's input statistics."""
    from asrn.model import ASRN
    from asrn.store import FeatureStore, feature_statistics
    from asrn.synth_features import synthesize_feature_store
    from asrn.train import TrainConfig, report_best_model

    root = tmp_path_factory.mktemp("trained")
    store = synthesize_feature_store(root / "features", num_videos=12, seed=5)
    config = TrainConfig(features=store, task="sub", out=root / "run", hidden=8, batch_size=4)
    torch.manual_seed(0)
    model = ASRN(config.model_config(FeatureStore(store).info.dims))
    model.set_input_stats(feature_statistics(store, "train"))
    state = {"model": model.state_dict(), "epoch": 1, "history": [{"epoch": 1, "val_map": 0.5}]}
    (root / "run").mkdir()
    report = report_best_model(state, config, FeatureStore(store), root / "run")
    return {"store": store, "checkpoint": report.checkpoint, "predictions": root / "run" / "predictions.parquet",
            "example": report.example}


@pytest.fixture(scope="module")
def logged_model(trained, tmp_path_factory):
    """best.pt logged to a sqlite MLflow store by asrn.mlflow_model.log_best_model, registered as asrn-score."""
    from asrn import mlflow_model, mlflow_runs

    root = tmp_path_factory.mktemp("mlflow")
    here = os.getcwd()
    os.chdir(root)  # MLflow keeps a sqlite store's artifacts in ./mlruns
    try:
        uri = f"sqlite:///{root / 'mlflow.db'}"
        run_id, _ = mlflow_runs.open_run(uri, "exp", "run", {}, root / "mlflow_run.json", resume=False)
        mlflow_model.log_best_model(uri, run_id, trained["checkpoint"], trained["example"], "asrn-score")
    finally:
        os.chdir(here)
    return {"uri": uri, "artifacts": root}


def test_an_mlflow_model_uri_gives_the_checkpoints_model_and_thresholds(trained, logged_model, monkeypatch):
    from asrn.checkpoint import load_checkpoint
    from asrn.store import load_videos
    from asrn.train import predict_scores

    monkeypatch.chdir(logged_model["artifacts"])
    scorer = load_mlflow_scorer("models:/asrn-score/1", logged_model["uri"])
    model, saved = load_checkpoint(trained["checkpoint"])
    assert (scorer.task, scorer.labels, scorer.thresholds) == ("sub", LABELS, saved["thresholds"])
    assert scorer.store_info["preset"] == saved["store_info"]["preset"] and scorer.source == "models:/asrn-score/1"
    videos = load_videos(trained["store"], splits=["test"])
    np.testing.assert_allclose(predict_scores(scorer.build(), videos, "sub", 4),
                               predict_scores(model, videos, "sub", 4), atol=1e-6)
    with pytest.raises(ScoreError, match="models:/absent/1: cannot load it"):
        load_mlflow_scorer("models:/absent/1", logged_model["uri"])


# ---------------------------------------------------------------- on Ray


@pytest.mark.ray
def test_a_store_on_s3_is_scored_as_training_scored_it_and_resumed(ray_cluster, trained, logged_model, s3_folder,
                                                                     monkeypatch, capsys):
    """The store copied to S3, the model from MLflow, the outputs on S3: the val and test probabilities equal
    training's predictions.parquet; a second run for --split all scores only the videos the first did not."""
    import pyarrow.fs as pafs

    from asrn.store import FeatureStore

    store = Location(f"{s3_folder}/features")
    s3, base = store.filesystem_path()
    pafs.copy_files(str(trained["store"]), base, destination_filesystem=s3)
    monkeypatch.chdir(logged_model["artifacts"])
    out = Location(f"{s3_folder}/scores")
    first = score(ScoreConfig(out=out, features=store, model="models:/asrn-score/1",
                              mlflow_uri=logged_model["uri"], split="val", num_workers=2, batch_size=3))
    counts = FeatureStore(trained["store"]).check()
    assert first["per_split"] == {"val": counts["val"]} and first["scored_now"] == counts["val"]
    assert "score: " in capsys.readouterr().err  # progress lines, as extract prints them

    second = score(ScoreConfig(out=out, features=store, model="models:/asrn-score/1",
                               mlflow_uri=logged_model["uri"], num_workers=1))
    assert (second["skipped"], second["scored_now"]) == (counts["val"], counts["train"] + counts["test"])
    assert second["videos"] == sum(counts.values()) and second["failed"] == 0

    filesystem, path = (out / "predictions.parquet").filesystem_path()
    ours = {r["video_id"]: r for r in pq.read_table(path, filesystem=filesystem).to_pylist()}
    training = {r["video_id"]: r for r in pq.read_table(trained["predictions"]).to_pylist()}
    assert set(training) <= set(ours)
    for video_id, row in training.items():
        np.testing.assert_allclose([ours[video_id][c] for c in LABELS], [row[c] for c in LABELS], atol=1e-5)
        assert (ours[video_id]["split"], ours[video_id]["labels"]) == (row["split"], row["labels"])
    thresholds = second["thresholds"]
    assert all(r[PREDICTED_PREFIX + c] == (r[c] >= np.float32(thresholds[c])) for r in ours.values() for c in LABELS)
    written = json.loads((out / "summary.json").read_text())
    assert written["metrics"]["test"]["at_0.5"]["map"] == pytest.approx(compute_metrics(
        np.array([[c in training[v]["labels"] for c in LABELS] for v in training if training[v]["split"] == "test"]),
        np.array([[training[v][c] for c in LABELS] for v in training if training[v]["split"] == "test"]),
        LABELS)["map"], abs=1e-5)
    with pytest.raises(ScoreError, match="holds scores of models:/asrn-score/1"):
        score(ScoreConfig(out=out, features=store, checkpoint=trained["checkpoint"]))


@pytest.mark.ray
def test_a_manifest_with_a_corrupt_video_scores_the_others(ray_cluster, tmp_path, capsys):
    """Extraction and scoring in one pipeline, a manifest without labels, one video not a video: it lands in the
    errors table, the others are scored, with the figures of `asrn predict VIDEO`; a re-run retries only it."""
    from asrn.checkpoint import write_checkpoint
    from asrn.extract import expected_dims
    from asrn.model import ASRN, ModelConfig
    from asrn.store import StoreInfo, read_errors
    from asrn.synth_videos import synthesize_videos

    manifest = synthesize_videos(tmp_path / "videos", num_videos=6, seed=3, width=96, height=64, fps=6.0,
                                 seconds=1.5)
    lines = manifest.read_text().splitlines()
    header = lines[0].split(",")
    columns = ["video_id", "path", "split", *(["boxes"] if "boxes" in header else [])]  # no labels column
    rows = [[line.split(",")[header.index(c)] for c in columns] for line in lines[1:4]]
    (tmp_path / "videos" / "broken.mp4").write_bytes(b"not a video")
    rows.append(["broken", "broken.mp4", "test", *([""] if "boxes" in header else [])])
    unlabelled = tmp_path / "videos" / "unlabelled.csv"
    unlabelled.write_text(",".join(columns) + "\n" + "\n".join(",".join(r) for r in rows) + "\n")

    dims = expected_dims("lite")
    torch.manual_seed(0)
    config = ModelConfig(dims=dims, num_classes=8, hidden=8)
    checkpoint = write_checkpoint(tmp_path / "best.pt", ASRN(config).state_dict(), config, {"task": "sub"}, "sub",
                                  StoreInfo(preset="lite", dims=dims, fps=2.0), 1, {}, thresholds=[0.3] * 8)
    out = tmp_path / "scores"
    result = score(ScoreConfig(out=out, manifest=unlabelled, checkpoint=checkpoint, figures=True))
    assert (result["videos"], result["failed"], result["with_labels"], result["metrics"]) == (3, 1, 0, {})
    errors = read_errors(out).to_pylist()
    assert [(e["video_id"], e["stage"]) for e in errors] == [("broken", "decode")]
    predictions = pq.read_table(out / "predictions.parquet")
    assert sorted(predictions.column("video_id").to_pylist()) == sorted(r[0] for r in rows[:3])
    scores = np.stack([predictions.column(c).to_numpy() for c in LABELS], axis=1)
    assert np.isfinite(scores).all() and ((scores > 0) & (scores < 1)).all()
    for video_id, row in zip(predictions.column("video_id").to_pylist(), scores, strict=True):
        figure = out / "figures" / video_id
        assert (figure / "attention.png").stat().st_size > 0 and (figure / "attention.json").is_file()
        alone = json.loads((figure / "scores.json").read_text())["scores"]  # the in-process form, same video
        np.testing.assert_allclose([alone[c]["score"] for c in LABELS], row, atol=1e-5)
        assert [alone[c]["predicted"] for c in LABELS] == [bool(x >= 0.3) for x in row]
    assert not (out / "figures" / "broken").exists()
    assert "broken failed at decode" in capsys.readouterr().err

    again = score(ScoreConfig(out=out, manifest=unlabelled, checkpoint=checkpoint))
    assert (again["skipped"], again["scored_now"], again["failed_now"], again["failed"]) == (3, 0, 1, 1)
    assert len(read_errors(out)) == 1  # the latest record of the broken video, not one per run


def test_the_scoring_actor_scores_as_training_and_isolates_a_failing_video(trained):
    """ScoreVideos called as Ray Data calls it, here in this process: a batch with an extract error row and a video
    whose features are NaN; the others' scores equal predict_scores', whatever the length order."""
    from asrn.scoring import ScoreVideos, load_scorer
    from asrn.store import load_videos, videos_to_table
    from asrn.train import predict_scores

    scorer = load_scorer(ScoreConfig(out="unused", features=trained["store"], checkpoint=trained["checkpoint"]))
    videos = load_videos(trained["store"])
    assert len({v.num_steps for v in videos}) > 1  # lengths differ: the actor reorders them
    videos[2].features["rgb"][:] = np.nan
    table = videos_to_table(videos)
    extra = {"path": ["p"] * len(videos), "stage": [""] * len(videos), "error": [""] * len(videos),
             "message": [""] * len(videos)}
    for name, values in extra.items():
        table = table.append_column(name, pa.array(values, pa.string()))
    failed = table.slice(0, 1).set_column(table.column_names.index("error"), "error", pa.array(["Boom"]))
    failed = failed.set_column(failed.column_names.index("video_id"), "video_id", pa.array(["gone"]))
    out = ScoreVideos(scorer, "cpu", batch_size=3)(pa.concat_tables([table, failed])).to_pylist()
    rows = {r["video_id"]: r for r in out}
    assert rows["gone"]["error"] == "Boom" and rows[videos[2].video_id]["error"] == "NonFiniteScoresError"
    good = [v for i, v in enumerate(videos) if i != 2]
    expected = predict_scores(scorer.build(), good, "sub", 4)
    np.testing.assert_allclose([rows[v.video_id]["scores"] for v in good], expected, atol=1e-6)
    assert all(rows[v.video_id]["error"] == "" for v in good)


def test_part_files_with_and_without_optional_columns_read_into_one_batch(trained, tmp_path):
    """A store written before the tracked columns beside one written after: the read stage gives rows of one
    schema (the absent columns as nulls, read as all False), skipping the videos already scored."""
    from asrn.scoring import _read_part
    from asrn.store import OPTIONAL_COLUMNS, read_table, table_to_videos

    table = read_table(trained["store"])
    new, old = tmp_path / "part-new.parquet", tmp_path / "part-old.parquet"
    pq.write_table(table, new)
    pq.write_table(table.drop_columns(list(OPTIONAL_COLUMNS)), old)
    ids = table.column("video_id").to_pylist()
    parts = [_read_part({"file": np.array([str(f)])}, ["train", "val", "test"], frozenset(ids[:2])) for f in (new, old)]
    assert parts[0].schema == parts[1].schema
    videos = table_to_videos(pa.concat_tables(parts))
    assert [v.video_id for v in videos] == ids[2:] * 2
    assert not any(v.body_tracked.any() or v.face_tracked.any() for v in videos[len(ids) - 2:])
    assert set(parts[0].column("error").to_pylist()) == {""}
