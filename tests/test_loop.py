"""asrn.loop: the Ray-free training pieces the Ray Train worker and the benchmarks share."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asrn.loop import RECIPES, NonFiniteLossError, build_optimizer, evaluate, train_epoch
from asrn.model import ASRN, ModelConfig
from asrn.sequence import collate
from asrn.store import feature_statistics, input_statistics
from asrn.synth_features import generate_videos, synthesize_feature_store

TASK = "sub"


@pytest.fixture(scope="module")
def videos():
    return [s.video for s in generate_videos(24, seed=5)]


def _model(videos, variant="mean") -> ASRN:
    torch.manual_seed(0)
    dims = {m: x.shape[1] for m, x in videos[0].features.items()}
    model = ASRN(ModelConfig(dims=dims, num_classes=8, variant=variant, hidden=16, dropout=0.1))
    model.set_input_stats(input_statistics(videos))
    return model


def test_an_epoch_lowers_the_loss_and_evaluate_scores_every_video(videos):
    model = _model(videos)
    optimizer, scheduler = build_optimizer(model, RECIPES["default"])
    batches = [collate(videos[i:i + 8], TASK) for i in range(0, len(videos), 8)]
    first = train_epoch(model, batches, optimizer, torch.device("cpu"))
    for _ in range(5):
        last = train_epoch(model, batches, optimizer, torch.device("cpu"))
        scheduler.step()
    assert first.samples == last.samples == len(videos) and last.mean < first.mean
    loss, scores, targets = evaluate(model, batches, torch.device("cpu"))
    assert scores.shape == targets.shape == (len(videos), 8) and np.isfinite(loss) and not model.training


def test_a_non_finite_loss_names_the_epoch_and_batch(videos):
    model = _model(videos)
    optimizer, _ = build_optimizer(model, RECIPES["default"])
    batches = [collate(videos[i:i + 8], TASK) for i in range(0, len(videos), 8)]
    batches[1].features["rgb"][0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="epoch 7, batch 2 of 3"):
        train_epoch(model, batches, optimizer, torch.device("cpu"), epoch=7)


def test_weight_decay_spares_biases_and_the_recipes_differ(videos):
    model = _model(videos, "asrn")
    adamw, cosine = build_optimizer(model, RECIPES["default"])
    sgd, exponential = build_optimizer(model, RECIPES["paper"])
    assert isinstance(adamw, torch.optim.AdamW) and isinstance(sgd, torch.optim.SGD)
    decayed, spared = adamw.param_groups
    assert all(p.dim() >= 2 for p in decayed["params"]) and all(p.dim() < 2 for p in spared["params"])
    assert decayed["weight_decay"] == RECIPES["default"].weight_decay and spared["weight_decay"] == 0.0
    assert isinstance(cosine, torch.optim.lr_scheduler.CosineAnnealingLR)
    assert exponential.gamma == pytest.approx(0.01 ** (1 / 200))


def test_input_statistics_equal_the_stores(tmp_path):
    store = synthesize_feature_store(tmp_path / "store", num_videos=12, seed=2)
    from asrn.store import load_videos

    ours = input_statistics(load_videos(store, splits=["train"]))
    theirs = feature_statistics(store, "train")
    for m, (mean, std) in theirs.items():
        np.testing.assert_allclose(ours[m][0], mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ours[m][1], std, rtol=1e-4, atol=1e-5)
