"""Ray-free training pieces: the recipes, the optimizer, one epoch of training, one pass of evaluation.

`asrn.train.train_loop_per_worker` (inside Ray Train), the benchmarks and the tests all run these, so a change to
how ASRN is optimised is made once. Batches are `asrn.sequence.Batch`es (`collate`).

Two recipes:
- `default`: measured to learn on the project's SRIV-like planted data with a few hundred to a few thousand
  videos (benchmarks/ablation.py): AdamW with decoupled weight decay and a cosine schedule. The paper's SGD at
  lr 0.01 leaves the label-prior plateau only after many epochs, and with small data ASRN memorises (train BCE
  0.04 while val BCE doubled); weight decay and a smaller width hold that back.
- `paper`: §4.2 as written: SGD (momentum 0.9), lr 0.01, batch 32, dropout 0.7, 200 epochs, lr "decreased to its
  0.01 every one epoch", read as an exponential decay stepped once per epoch that reaches 0.01 × lr after 200
  epochs (gamma 0.01 ** (1/200) ≈ 0.977); multiplying lr by 0.01 every epoch would stop learning after two epochs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from asrn.errors import AsrnError
from asrn.model import asrn_loss
from asrn.sequence import Batch

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "exponential")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}  # --precision -> the autocast dtype (None: autocast off)


class NonFiniteLossError(AsrnError):
    """The training loss became NaN or infinite; the message names the epoch and the batch."""


class NonFiniteScoresError(AsrnError):
    """A model gives NaN or infinite scores (a diverged checkpoint); the message names the model and the input."""


@dataclass(frozen=True)
class Recipe:
    """How a model is optimised; `asrn train --recipe NAME` picks one, and single flags override its fields."""

    name: str
    optimizer: str  # "adamw" (decoupled weight decay) or "sgd" (with momentum)
    lr: float
    weight_decay: float
    batch_size: int  # global: split over the workers
    dropout: float  # before the last layer (paper §4.2)
    hidden: int  # fused width and LSTM hidden size
    epochs: int
    patience: int  # epochs without a gain in val mAP before stopping
    schedule: str  # "cosine" (to 0 over `epochs`) or "exponential" (× lr_decay each epoch)
    lr_decay: float = 1.0  # per-epoch factor of the exponential schedule
    momentum: float = 0.9  # SGD only
    random_steps: bool = True  # the sequence former breaks its ties at random each epoch (asrn.sequence.select_steps)


RECIPES: dict[str, Recipe] = {
    # weight decay 1, random_steps and 80 epochs: with 1,200 planted videos the model otherwise memorises the
    # training videos (val loss rises from the first epoch) before its attention finds the events; regularised, it
    # learns slower and needs the longer schedule (docs/results.md, "The recipe"; benchmarks/studies/recipe_1200.py)
    "default": Recipe(name="default", optimizer="adamw", lr=3e-3, weight_decay=1.0, batch_size=32, dropout=0.5,
                      hidden=128, epochs=80, patience=20, schedule="cosine"),
    "paper": Recipe(name="paper", optimizer="sgd", lr=0.01, weight_decay=0.0, batch_size=32, dropout=0.7,
                    hidden=256, epochs=200, patience=20, schedule="exponential", lr_decay=0.01 ** (1 / 200),
                    random_steps=False),
}


def build_optimizer(model: nn.Module, recipe: Recipe) -> tuple[torch.optim.Optimizer,
                                                                 torch.optim.lr_scheduler.LRScheduler]:
    """The recipe's optimizer and its per-epoch scheduler (call `scheduler.step()` once after each epoch).

    Weight decay applies to weight matrices only: decaying biases and the LSTM forget bias toward 0 only undoes
    their initialisation.
    """
    matrices = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    others = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": matrices, "weight_decay": recipe.weight_decay}, {"params": others, "weight_decay": 0.0}]
    if recipe.optimizer == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=recipe.lr)
    elif recipe.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum)
    else:
        raise ValueError(f"optimizer {recipe.optimizer!r} is unknown: expected one of {', '.join(OPTIMIZERS)}")
    if recipe.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(recipe.epochs, 1))
    elif recipe.schedule == "exponential":
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=recipe.lr_decay)
    else:
        raise ValueError(f"schedule {recipe.schedule!r} is unknown: expected one of {', '.join(SCHEDULES)}")
    return optimizer, scheduler


class EpochLoss(NamedTuple):
    """Summed BCE over the videos one process trained on, and how many: workers add these up before dividing."""

    loss_sum: float
    samples: int

    @property
    def mean(self) -> float:
        return self.loss_sum / max(self.samples, 1)


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a --precision value (None: no autocast); an unknown value is refused, naming it."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is unknown: expected one of {', '.join(PRECISIONS)}")
    return PRECISIONS[precision]


def _autocast(device: torch.device, precision: str) -> torch.autocast:
    dtype = autocast_dtype(precision)
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def train_epoch(model: nn.Module, batches: Iterable[Batch], optimizer: torch.optim.Optimizer,
                device: torch.device, precision: str = "fp32", epoch: int = 0) -> EpochLoss:
    """One pass of BCE training (eq. 10) over `batches`, the forward pass at `precision` ("fp32" | "bf16").

    Losses stay on the device until the epoch ends (no host sync per batch); a non-finite one on any rank then
    raises NonFiniteLossError on every rank, naming the epoch, the first bad batch and its rank, before anything
    is checkpointed.
    """
    model.train()
    losses, sizes = [], []
    for batch in batches:
        batch = batch.to(device)
        with _autocast(device, precision):
            logits = model(**batch.inputs()).logits  # (B, C)
        loss = asrn_loss(logits.float(), batch.targets)  # eq. 10, in float32
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
        sizes.append(len(batch.video_ids))
    per_batch = torch.stack(losses).cpu().double().numpy() if losses else np.zeros(0)  # the epoch's one host sync
    bad = agree_first_nonfinite(per_batch)
    if bad is not None:
        rank, batch_index, num_batches, value = bad
        where = f" on rank {rank}" if _world_size() > 1 else ""
        raise NonFiniteLossError(f"epoch {epoch}, batch {batch_index + 1} of {num_batches}{where}: training loss "
                                 f"is {value}; lower --lr or check the features for inf/NaN")
    return EpochLoss(float(per_batch @ np.asarray(sizes, np.float64)), int(sum(sizes)))


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[Batch], device: torch.device,
             precision: str = "fp32") -> tuple[float, np.ndarray, np.ndarray]:
    """Mean BCE, (N, C) probabilities and (N, C) 0/1 targets of `model` over `batches`, in batch order."""
    model.eval()
    scores, targets, loss_sum = [], [], torch.zeros((), device=device, dtype=torch.float64)
    with _autocast(device, precision):
        for batch in batches:
            batch = batch.to(device)
            logits = model(**batch.inputs()).logits.float()  # (B, C)
            loss_sum += asrn_loss(logits, batch.targets).double() * len(batch.video_ids)
            scores.append(torch.sigmoid(logits))
            targets.append(batch.targets)
    scores_np = torch.cat(scores).cpu().numpy()  # (N, C)
    targets_np = torch.cat(targets).cpu().numpy()  # (N, C)
    return float(loss_sum) / len(scores_np), scores_np, targets_np


# ---------------------------------------------------------------- decisions every rank takes alike


def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _collective_device() -> torch.device:
    """NCCL reduces CUDA tensors only; gloo (and MPI) CPU ones."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def agree_first_nonfinite(per_batch: np.ndarray) -> tuple[int, int, int, float] | None:
    """(rank, batch index, batches, loss) of the first non-finite loss on any rank (lowest batch, then lowest rank),
    the same on every rank; None when every rank's losses are finite. One all-gather of 4 numbers per rank."""
    bad = np.flatnonzero(~np.isfinite(per_batch))
    mine = [float(bad[0]), float(per_batch[bad[0]])] if bad.size else [np.inf, 0.0]
    world = _world_size()
    if world == 1:
        return None if not bad.size else (0, int(mine[0]), len(per_batch), mine[1])
    dist = torch.distributed
    row = torch.tensor([mine[0], float(dist.get_rank()), float(len(per_batch)), mine[1]], dtype=torch.float64,
                       device=_collective_device())
    rows = [torch.empty_like(row) for _ in range(world)]
    dist.all_gather(rows, row)
    table = torch.stack(rows).cpu().numpy()  # (world, 4): first bad batch, rank, batches, loss
    first = min((r for r in table if np.isfinite(r[0])), key=lambda r: (r[0], r[1]), default=None)
    return None if first is None else (int(first[1]), int(first[0]), int(first[2]), float(first[3]))


def shared_score(score: float) -> float:
    """Rank 0's value of `score` on every rank: early stopping and checkpoint selection read one number, the one
    rank 0 reports, so no rank stops (or saves) while the others go on. Without a process group: `score`."""
    if _world_size() == 1:
        return score
    value = torch.tensor([score], dtype=torch.float64, device=_collective_device())
    torch.distributed.broadcast(value, src=0)
    return float(value.item())


def check_finite_scores(scores: np.ndarray, where: str) -> np.ndarray:
    """Refuse NaN/inf probabilities (a diverged checkpoint) instead of writing them out."""
    if not np.isfinite(scores).all():
        raise NonFiniteScoresError(f"{where}: the model gives non-finite scores; its weights are not usable")
    return scores
