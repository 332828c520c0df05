"""asrn.loop: the Ray-free training pieces the Ray Train worker and the benchmarks share."""

from __future__ import annotations

import json
import multiprocessing
import socket
import time
from datetime import timedelta

import numpy as np
import pytest
import torch

from asrn.loop import (
    RECIPES,
    NonFiniteLossError,
    build_optimizer,
    evaluate,
    shared_score,
    train_epoch,
)
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


def test_precision_is_fp32_or_bf16(videos):
    model = _model(videos)
    optimizer, _ = build_optimizer(model, RECIPES["default"])
    batches = [collate(videos[:8], TASK)]
    fp32 = evaluate(model, batches, torch.device("cpu"), "fp32")[0]
    bf16 = evaluate(model, batches, torch.device("cpu"), "bf16")[0]
    assert bf16 != fp32 and abs(bf16 - fp32) < 0.02 * fp32  # autocast ran, and stayed close
    with pytest.raises(ValueError, match="'fp16' is unknown"):
        train_epoch(model, batches, optimizer, torch.device("cpu"), "fp16")


def _rank_main(rank: int, port: int, out: str) -> None:
    """One of two gloo ranks: DDP training where rank 1 alone meets a NaN, then divergent val scores."""
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                                         timeout=timedelta(seconds=60))
    try:
        videos = [s.video for s in generate_videos(12, seed=5)]
        model = torch.nn.parallel.DistributedDataParallel(_model(videos))
        optimizer, _ = build_optimizer(model, RECIPES["default"])
        batches = [collate(videos[i:i + 4], TASK) for i in range(0, 12, 4)]
        if rank == 1:
            batches[1].features["rgb"][0, 0, 0] = float("nan")
        record = {"rank": rank, "score": shared_score(0.5 + 0.25 * rank)}
        started = time.monotonic()
        try:
            train_epoch(model, batches, optimizer, torch.device("cpu"), epoch=3)
        except NonFiniteLossError as e:
            record["error"] = str(e)
        record["seconds"] = time.monotonic() - started
        with open(f"{out}/rank{rank}.json", "w") as f:
            json.dump(record, f)
    finally:
        torch.distributed.destroy_process_group()


def test_two_gloo_ranks_take_the_same_decisions(tmp_path):
    """A NaN on one rank makes both raise one error naming epoch, batch and rank; rank 0's val score is shared."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = multiprocessing.get_context("spawn")
    ranks = [context.Process(target=_rank_main, args=(rank, port, str(tmp_path))) for rank in (0, 1)]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(timeout=120)
    alive = [p for p in ranks if p.is_alive()]
    for process in alive:
        process.kill()
    assert not alive, "a rank hung"
    assert [p.exitcode for p in ranks] == [0, 0]
    records = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert records[0]["error"] == records[1]["error"]
    assert records[0]["error"].startswith("epoch 3, batch 2 of 3 on rank 1: training loss is nan")
    assert records[0]["score"] == records[1]["score"] == 0.5
    assert max(r["seconds"] for r in records) < 30
