"""decord and PyAV through the per-video feature code: the same prepared inputs, the same `asrn predict` scores.

asrn.video's own tests compare the decoded clips; these check what extract and predict build on them. No Ray.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from asrn import video
from asrn.checkpoint import write_checkpoint
from asrn.encoders import PRESETS
from asrn.features import VideoSettings, prepare_video
from asrn.labels import task_labels
from asrn.model import ASRN, ModelConfig
from asrn.predict import PredictConfig, predict
from asrn.store import MODALITIES, StoreInfo

AVAILABLE = [d for d in video.DECODERS if d == "pyav" or video.decord is not None]


@pytest.fixture(scope="module")
def talking_photo(tmp_path_factory, astronaut_clip) -> Path:
    """The astronaut clip at 400x300 (shrunk to the 360-px step frames)."""
    return astronaut_clip(tmp_path_factory.mktemp("decoders") / "astronaut.mp4", 400, 300)


@pytest.mark.skipif(video.decord is None, reason="decord does not import here")
def test_prepared_inputs_are_equal(talking_photo, monkeypatch):
    prepared = {}
    for decoder in ("decord", "pyav"):
        monkeypatch.setenv(video.DECODER_ENV, decoder)
        prepared[decoder] = prepare_video(str(talking_photo), None, VideoSettings(preset="lite", fps=2.0))
    a, b = prepared["decord"], prepared["pyav"]
    assert (a.decoder, b.decoder) == ("decord", "pyav") and a.has_face.sum() >= 3  # found the face
    for name in ("timestamps", "frame_indices", "rgb", "flow", "body", "face", "has_body", "has_face",
                 "body_tracked", "face_tracked", "person_boxes", "face_boxes"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_predict_gives_the_same_scores_with_either_decoder(talking_photo, tmp_path, monkeypatch, offline):
    dims = {m: PRESETS["lite"][m].dim for m in MODALITIES}
    torch.manual_seed(0)
    config = ModelConfig(dims=dims, num_classes=len(task_labels("all")), hidden=16, dropout=0.0)
    checkpoint = write_checkpoint(tmp_path / "best.pt", ASRN(config).state_dict(), config, {"task": "all"}, "all",
                                  StoreInfo("lite", dims, 2.0), epoch=1, val_metrics={"epoch": 1})
    scores = {}
    for decoder in AVAILABLE:
        monkeypatch.setenv(video.DECODER_ENV, decoder)
        out = tmp_path / decoder
        with pytest.warns(UserWarning, match="random-init"):  # offline: no weights
            predict(PredictConfig(checkpoint=checkpoint, out=out, videos=[talking_photo]))
        scores[decoder] = json.loads((out / "scores.json").read_text())["scores"]
    assert len(scores["pyav"]) == 16
    for decoder in AVAILABLE:
        assert scores[decoder] == scores["pyav"], decoder
