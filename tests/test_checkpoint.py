"""best.pt: a round trip, and every malformed entry refused as one CheckpointError naming the file and the key."""

from __future__ import annotations

import math

import pytest
import torch

from asrn.checkpoint import CheckpointError, load_checkpoint, write_checkpoint
from asrn.labels import task_labels
from asrn.model import ASRN, ModelConfig
from asrn.store import StoreInfo

TASK = "sub"
DIMS = {"rgb": 8, "motion": 6, "body": 5, "face": 4}


@pytest.fixture(scope="module")
def best(tmp_path_factory) -> dict:
    """A small real model written by write_checkpoint, with distinct per-class thresholds."""
    torch.manual_seed(0)
    config = ModelConfig(dims=DIMS, num_classes=len(task_labels(TASK)), hidden=8, dropout=0.1)
    model = ASRN(config)
    info = StoreInfo(preset="lite", dims=DIMS, fps=4.0, encoders={"rgb": "tiny"}, detector="tracks")
    thresholds = [0.1 * (i + 1) for i in range(len(task_labels(TASK)))]
    path = write_checkpoint(tmp_path_factory.mktemp("best") / "best.pt", model.state_dict(), config, {"task": TASK},
                            TASK, info, epoch=3, val_metrics={"epoch": 3}, thresholds=thresholds)
    return {"path": path, "state": model.state_dict(), "thresholds": thresholds}


def test_round_trip_gives_back_weights_and_thresholds(best):
    model, checkpoint = load_checkpoint(best["path"])
    assert not model.training and checkpoint["path"] == str(best["path"])
    assert checkpoint["thresholds"] == pytest.approx(best["thresholds"])
    assert checkpoint["labels"] == list(task_labels(TASK)) and checkpoint["epoch"] == 3
    loaded = model.state_dict()
    assert loaded.keys() == best["state"].keys()
    for name, tensor in best["state"].items():
        assert torch.equal(loaded[name], tensor), name


def _set(key, value):
    return lambda c: c.__setitem__(key, value)


def _set_in(key, sub, value):
    return lambda c: c[key].__setitem__(sub, value)


def _drop_in(key, sub):
    return lambda c: c[key].pop(sub)


MALFORMED = [
    (_set_in("model_config", "layers", 2), "model_config has unknown key(s) layers"),
    (_drop_in("model_config", "hidden"), "model_config lacks key(s) hidden"),
    (_set("model_config", [1, 2]), "model_config is a list"),
    (_set_in("model_config", "hidden", 0), "model_config: hidden = 0 is not a positive integer"),
    (_set("labels", 5), "labels is 5"),
    (_set("labels", ["sub:warm"]), "labels are not the classes of task 'sub'"),
    (_set("store_info", "lite"), "store_info is a str"),
    (_set_in("store_info", "colour", "red"), "store_info has unknown key(s) colour"),
    (_drop_in("store_info", "fps"), "store_info lacks key(s) fps"),
    (_set_in("store_info", "dims", {"rgb": 8}), "store_info: dims lacks modality"),
    (_set("thresholds", [0.5, 0.5]), "thresholds holds 2 values, task 'sub' has 8 classes"),
    (_set("thresholds", [0.5] * 7 + [math.nan]), "thresholds[7] = nan is not a finite number"),
    (_set("thresholds", [0.5] * 7 + [True]), "thresholds[7] = True is not a finite number"),
    (_set("thresholds", "0.5"), "thresholds is a str"),
    (_set("task", "both"), "task 'both' is unknown"),
    (_set("task", ["sub"]), "task ['sub'] is unknown"),
    (_set("model_state", "weights"), "model_state is a str"),
    (_set_in("model_config", "hidden", 16), "model_state does not fit its model_config"),
]


@pytest.mark.parametrize("change,message", MALFORMED, ids=[message for _, message in MALFORMED])
def test_malformed_checkpoint_is_one_error_naming_file_and_key(best, tmp_path, change, message, rewrite_checkpoint):
    bad = rewrite_checkpoint(best["path"], tmp_path / "bad.pt", change)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(bad)
    text = str(caught.value)
    assert text.startswith(f"{bad}: ") and message in text and "\n" not in text


def test_checkpoint_from_before_thresholds_defaults_to_half(best, tmp_path, rewrite_checkpoint):
    old = rewrite_checkpoint(best["path"], tmp_path / "old.pt", lambda c: c.pop("thresholds"))
    assert load_checkpoint(old)[1]["thresholds"] == [0.5] * len(task_labels(TASK))
