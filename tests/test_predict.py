"""asrn.predict: a checkpoint trained here on lite features of tiny synthetic videos, then `asrn predict` in-process.

No Ray cluster: predict runs in one process, and the checkpoint is written by the Ray-free asrn.checkpoint.
"""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import matplotlib.image
import numpy as np
import pytest
import torch

from asrn.checkpoint import CheckpointError, write_checkpoint
from asrn.cli import main
from asrn.encoders import PRESETS, build_encoders
from asrn.features import VideoSettings, encode_prepared, prepare_video, to_video_features
from asrn.labels import task_labels
from asrn.loop import NonFiniteScoresError
from asrn.manifest import read_manifest
from asrn.model import ASRN, ModelConfig, asrn_loss
from asrn.predict import (
    NO_PERSON,
    PredictConfig,
    PredictError,
    predict,
    shot_indices,
)
from asrn.sequence import collate, kept_shot_starts
from asrn.shots import steps_after_cuts
from asrn.store import MODALITIES, StoreInfo
from asrn.synth_videos import synthesize_videos, write_photo_clip
from asrn.video import VideoDecodeError

LITE_DIMS = {m: PRESETS["lite"][m].dim for m in MODALITIES}
TASK = "all"
FPS = 2.0


def _write_video(path: Path, frames: list[np.ndarray], fps: int = 10) -> Path:
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """6 synthetic videos (2.5 s, 160x120), their lite features, an ASRN trained on them for 40 Adam steps,
    written as best.pt with store_info of the lite preset and per-class thresholds."""
    root = tmp_path_factory.mktemp("predict")
    entries = read_manifest(synthesize_videos(root / "synth", num_videos=6, seed=3, seconds=2.5))
    encoders = build_encoders("lite")
    settings = VideoSettings(preset="lite", fps=FPS)
    videos = []
    for e in entries:
        prepared = prepare_video(e.path, e.boxes, settings)
        videos.append(to_video_features(prepared, encode_prepared(prepared, encoders), e.video_id, e.split, e.labels))
    torch.manual_seed(0)
    model_config = ModelConfig(dims=LITE_DIMS, num_classes=len(task_labels(TASK)), hidden=32, dropout=0.1)
    model = ASRN(model_config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = collate(videos, TASK)
    losses = []
    for _ in range(40):
        optimizer.zero_grad()
        loss = asrn_loss(model(batch.features, batch.present, batch.mask).logits, batch.targets)
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    info = StoreInfo(preset="lite", dims=LITE_DIMS, fps=FPS, encoders={m: e.name for m, e in encoders.items()},
                     weights={m: e.weights for m, e in encoders.items()}, detector="tracks", dtype="float32")
    thresholds = np.linspace(0.2, 0.8, len(task_labels(TASK)))  # distinct per class, as chosen on val
    checkpoint = write_checkpoint(root / "best.pt", model.state_dict(), model_config, {"task": TASK}, TASK, info,
                                  epoch=1, val_metrics={"epoch": 1, "train_loss": losses[-1]},
                                  thresholds=thresholds.tolist())
    return {"root": root, "checkpoint": checkpoint, "entries": entries, "thresholds": thresholds}


@pytest.fixture(scope="module")
def astronaut_video(tmp_path_factory, astronaut_clip) -> Path:
    return astronaut_clip(tmp_path_factory.mktemp("astronaut") / "astronaut.mp4", 320, 320)


def test_per_class_thresholds_travel_from_best_pt_to_scores_json(trained, tmp_path):
    entry = trained["entries"][1]
    out = tmp_path / "out"
    (prediction,) = predict(PredictConfig(checkpoint=trained["checkpoint"], out=out, videos=[Path(entry.path)],
                                          boxes=Path(entry.boxes)))
    scores = json.loads((out / "scores.json").read_text())
    chosen = [item["threshold"] for item in scores["scores"].values()]
    assert chosen == pytest.approx(trained["thresholds"].tolist())
    for item in scores["scores"].values():
        assert item["predicted"] == (item["score"] >= item["threshold"])
    assert scores["predicted"] == [n for n, item in scores["scores"].items() if item["score"] >= item["threshold"]]


def test_a_checkpoint_on_s3_predicts_into_an_s3_folder(trained, s3_folder, s3_listing, tmp_path, monkeypatch):
    """`asrn predict s3://.../video.mp4 --boxes s3://... --checkpoint s3://.../best.pt --out s3://...`: read and
    written on the session's S3 server, nothing in the working directory; the scores are those of the local
    files."""
    from asrn.locations import Location

    monkeypatch.chdir(tmp_path)
    entry = trained["entries"][2]
    checkpoint, video, boxes = (f"{s3_folder}/run/best.pt", f"{s3_folder}/in/{Path(entry.path).name}",
                                f"{s3_folder}/in/{Path(entry.boxes).name}")
    for uri, local in ((checkpoint, trained["checkpoint"]), (video, entry.path), (boxes, entry.boxes)):
        Location(uri).upload(local)
    assert main(["predict", video, "--boxes", boxes, "--checkpoint", checkpoint, "--out", f"{s3_folder}/predict"]) == 0
    assert sorted(s3_listing(f"{s3_folder}/predict")) == ["attention.json", "attention.png", "scores.json"]
    assert list(tmp_path.iterdir()) == []
    scores = json.loads((Location(s3_folder) / "predict" / "scores.json").read_text())
    assert scores["checkpoint"] == checkpoint
    predict(PredictConfig(checkpoint=trained["checkpoint"], out=tmp_path / "local",
                          videos=[Path(entry.path)], boxes=Path(entry.boxes)))
    local_scores = json.loads((tmp_path / "local" / "scores.json").read_text())["scores"]
    assert {k: v["score"] for k, v in scores["scores"].items()} == {k: v["score"] for k, v in local_scores.items()}


def test_nan_weights_are_refused_not_written(trained, tmp_path, rewrite_checkpoint):
    bad = rewrite_checkpoint(trained["checkpoint"], tmp_path / "nan.pt",
                              lambda c: c["model_state"]["classifier.bias"].fill_(float("nan")))
    entry = trained["entries"][0]
    with pytest.raises(NonFiniteScoresError, match="non-finite scores"):
        predict(PredictConfig(checkpoint=bad, out=tmp_path / "out", videos=[Path(entry.path)],
                              boxes=Path(entry.boxes)))
    assert not (tmp_path / "out" / "scores.json").exists()


def test_scores_attention_and_figure(trained, tmp_path):
    entry = trained["entries"][0]
    out = tmp_path / "out"
    (prediction,) = predict(PredictConfig(checkpoint=trained["checkpoint"], out=out, videos=[Path(entry.path)],
                                          boxes=Path(entry.boxes), threshold=0.4))
    scores = json.loads((out / "scores.json").read_text())
    assert list(scores["scores"]) == list(task_labels(TASK))
    for item in scores["scores"].values():
        assert 0.0 <= item["score"] <= 1.0 and item["predicted"] == (item["score"] >= 0.4)
    assert scores["preset"] == "lite" and scores["detector"] == "tracks" and scores["num_steps"] == 5
    assert scores["video"] == entry.path and scores["checkpoint"] == str(trained["checkpoint"])

    attention = json.loads((out / "attention.json").read_text())
    a = np.array(attention["temporal_attention"])
    c = np.array(attention["modality_attention"])
    assert len(attention["timestamps"]) == a.size == c.shape[0] == prediction.steps.size >= 1
    assert np.all(np.diff(attention["timestamps"]) > 0)
    assert a.sum() == pytest.approx(1.0, abs=1e-5) and np.all(a >= 0)
    present = np.stack([np.ones(a.size, bool), np.ones(a.size, bool), attention["has_body"], attention["has_face"]], 1)
    assert np.allclose(c.sum(1), 1.0, atol=1e-5) and not c[~present].any()
    assert attention["modalities"] == ["image", "motion", "body", "face"]
    assert attention["shot_index"] == shot_indices(np.array(attention["boundaries"])).tolist()

    image = matplotlib.image.imread(out / "attention.png")
    assert 1000 <= image.shape[1] <= 2500 and 500 <= image.shape[0] <= 1200
    assert image[..., :3].std() > 0.05  # not a blank canvas


def test_shot_indices_follow_boundaries():
    assert shot_indices(np.array([1.0, 0, 1, 1, 0])).tolist() == [0, 0, 1, 2, 2]


@pytest.mark.parametrize(("change", "message"), [
    (lambda c: c["store_info"]["dims"].update(face=260), r"face dim 260, but the lite preset's face encoder "
                                                         r"produces dim 128"),
    (lambda c: c["store_info"].update(preset="synthetic"), r"preset 'synthetic' \(dims rgb 512.*lite: rgb 512"),
])
def test_features_the_checkpoint_was_not_trained_on_are_refused(trained, tmp_path, change, message, rewrite_checkpoint):
    checkpoint = rewrite_checkpoint(trained["checkpoint"], tmp_path / "other.pt", change)
    video = Path(trained["entries"][0].path)
    with pytest.raises(PredictError, match=message):
        predict(PredictConfig(checkpoint=checkpoint, out=tmp_path / "out", videos=[video]))
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_of_another_format_is_refused(trained, tmp_path):
    torch.save({"foo": 1}, tmp_path / "foo.pt")
    video = Path(trained["entries"][0].path)
    with pytest.raises(CheckpointError, match="foo.pt: not an ASRN checkpoint"):
        predict(PredictConfig(checkpoint=tmp_path / "foo.pt", out=tmp_path / "out", videos=[video]))


def test_bad_flags_are_refused(tmp_path):
    (tmp_path / "c.pt").write_bytes(b"")
    with pytest.raises(PredictError, match="no videos given"):
        PredictConfig(checkpoint=tmp_path / "c.pt", out=tmp_path)
    with pytest.raises(PredictError, match="--boxes"):
        PredictConfig(checkpoint=tmp_path / "c.pt", out=tmp_path, videos=[Path("a.mp4"), Path("b.mp4")],
                      boxes=Path("a.json"))
    with pytest.raises(PredictError, match="--checkpoint .*nope.pt: no such file"):
        PredictConfig(checkpoint=tmp_path / "nope.pt", out=tmp_path, videos=[Path("a.mp4")])


def test_an_unreadable_video_is_named(trained, tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x01 not a video" * 50)
    with pytest.raises(VideoDecodeError, match="broken.mp4"):
        predict(PredictConfig(checkpoint=trained["checkpoint"], out=tmp_path / "out", videos=[bad]))


def test_a_clip_without_people_is_predicted_from_image_and_motion(trained, tmp_path, capsys):
    frames = [np.full((120, 160, 3), (90 + 3 * i, 120, 150), np.uint8) for i in range(20)]  # flat, slowly brighter
    video = _write_video(tmp_path / "empty.mp4", frames)
    (prediction,) = predict(PredictConfig(checkpoint=trained["checkpoint"], out=tmp_path / "out", videos=[video]))
    assert NO_PERSON in prediction.warnings
    assert NO_PERSON in json.loads((tmp_path / "out" / "scores.json").read_text())["warnings"]
    assert NO_PERSON in capsys.readouterr().out
    assert not prediction.modality_attention[:, 2:].any()  # body and face weigh nothing
    assert (tmp_path / "out" / "attention.png").is_file()


def test_cli_prints_the_top_relations(trained, tmp_path, capsys):
    entry = trained["entries"][1]
    out = tmp_path / "out"
    code = main(["predict", entry.path, "--checkpoint", str(trained["checkpoint"]), "--out", str(out),
                 "--boxes", entry.boxes])
    printed = capsys.readouterr().out
    assert code == 0
    assert "top relations: " in printed and f"outputs in {out}" in printed
    best = max(json.loads((out / "scores.json").read_text())["scores"].items(), key=lambda kv: kv[1]["score"])
    assert f"{best[0]} {best[1]['score']:.2f}" in printed


def test_cli_goes_on_past_an_unreadable_video_and_exits_1(trained, tmp_path, capsys):
    bad = tmp_path / "broken.mp4"
    bad.write_text("hello")
    good = trained["entries"][2].path
    out = tmp_path / "out"
    code = main(["predict", str(bad), good, "--checkpoint", str(trained["checkpoint"]), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    assert "1 of 2 videos failed" in captured.err and str(bad) in captured.err
    assert (out / Path(good).stem / "scores.json").is_file() and not (out / "broken").exists()
    assert json.loads((out / "errors.json").read_text())[0]["video"] == str(bad)


def test_a_real_photo_finds_the_face_without_boxes(trained, astronaut_video, tmp_path):
    (prediction,) = predict(PredictConfig(checkpoint=trained["checkpoint"], out=tmp_path, videos=[astronaut_video]))
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["detector"] == "opencv-haar+hog" and scores["num_steps"] == 4
    sampled = json.loads((tmp_path / "attention.json").read_text())["sampled_steps"]
    assert sum(sampled["has_face"]) >= 0.75 * len(sampled["has_face"])
    assert not any(w.startswith("no person") or w.startswith("no face") for w in prediction.warnings)


def test_predict_imports_no_ray():
    code = "import sys, asrn.cli, asrn.predict; sys.exit('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1]).returncode == 0


@pytest.mark.parametrize("recorded", [{"dtype": "float16"}, {}])
def test_predict_feeds_the_model_the_stores_row(trained, tmp_path, rewrite_checkpoint, recorded):
    """The features predict gives the model equal the row the store holds for that video (float16, as extract
    writes it; also when the checkpoint's store_info records no dtype), built here without Ray."""
    from asrn.checkpoint import load_checkpoint
    from asrn.predict import predict_video
    from asrn.store import load_videos, write_info, write_videos

    def store_dtype(checkpoint):
        checkpoint["store_info"].pop("dtype", None)
        checkpoint["store_info"].update(recorded)

    checkpoint_path = rewrite_checkpoint(trained["checkpoint"], tmp_path / "best.pt", store_dtype)
    entry = trained["entries"][2]
    prepared = prepare_video(entry.path, entry.boxes, VideoSettings(preset="lite", fps=FPS))
    encoders = build_encoders("lite")
    row = to_video_features(prepared, encode_prepared(prepared, encoders), entry.video_id, entry.split, entry.labels)
    write_info(tmp_path / "store", StoreInfo(preset="lite", dims=LITE_DIMS, fps=FPS, encoders={}, weights={},
                                             detector="tracks", dtype="float16"))
    write_videos(tmp_path / "store", [row], dtype="float16")
    (stored,) = load_videos(tmp_path / "store")
    model, checkpoint = load_checkpoint(checkpoint_path)
    fed = []
    model.register_forward_pre_hook(lambda _module, _args, kwargs: fed.append({m: x.clone() for m, x in
                                                                               kwargs["features"].items()}),
                                    with_kwargs=True)  # the model is called as model(**batch.inputs())
    predict_video(entry.path, model, checkpoint, encoders, boxes=entry.boxes)
    batch = collate([stored], TASK)
    for m in MODALITIES:
        assert torch.equal(fed[0][m], batch.features[m]), m
    assert not np.array_equal(stored.features["rgb"], row.features["rgb"])  # the round trip did change values


def test_predict_draws_one_keyframe_per_real_shot_and_its_boundaries_fall_on_the_cuts(trained, tmp_path):
    """A clip of four real photographs with hard cuts (each shot 3-4 s, so that every shot keeps steps through the
    sequence former) and a single-shot clip (one photograph, a slow pan): attention.json's boundaries fall on the
    clip's cuts within one sampled step, and attention.png shows one keyframe per shot, one for the single shot."""
    cuts = write_photo_clip(tmp_path / "multi.mp4", [34, 40, 31, 37])
    write_photo_clip(tmp_path / "single.mp4", [60])
    out = tmp_path / "out"
    multi, single = predict(PredictConfig(checkpoint=trained["checkpoint"], out=out,
                                          videos=[tmp_path / "multi.mp4", tmp_path / "single.mp4"]))
    attention = json.loads((out / "multi" / "attention.json").read_text())
    opens = np.flatnonzero(attention["boundaries"][1:]) + 1  # kept steps opening a shot after the first
    truth = np.flatnonzero(kept_shot_starts(steps_after_cuts(multi.frame_indices, cuts), np.arange(multi.steps.size)))
    assert len(opens) == len(cuts) and np.array_equal(opens, truth[1:]) and attention["boundaries_from"] == "cuts"
    sampled_frames = np.rint(np.asarray(attention["sampled_steps"]["timestamps"]) * 10).astype(int)  # 10 fps clip
    assert attention["sampled_steps"]["shot_start"] == steps_after_cuts(sampled_frames, cuts).tolist()
    times = np.asarray(attention["timestamps"])
    for j, cut in zip(opens, np.asarray(cuts) / 10.0, strict=True):  # the clip runs at 10 fps: cut times in seconds
        assert times[j - 1] < cut <= times[j], (j, cut)  # the shot opens at the first kept step after its cut
    assert len(attention["keyframes"]) == len(set(attention["shot_index"])) == len(cuts) + 1
    assert sorted(k["shot"] for k in attention["keyframes"]) == list(range(len(cuts) + 1))
    assert len(multi.keyframe_images) == len(cuts) + 1 and (out / "multi" / "attention.png").is_file()
    alone = json.loads((out / "single" / "attention.json").read_text())
    assert not any(alone["boundaries"][1:]) and len(alone["keyframes"]) == 1 == len(single.keyframe_images)
