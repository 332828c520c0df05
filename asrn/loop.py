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


RECIPES: dict[str, Recipe] = {
    "default": Recipe(name="default", optimizer="adamw", lr=3e-3, weight_decay=0.05, batch_size=32, dropout=0.5,
                      hidden=128, epochs=40, patience=10, schedule="cosine"),
    "paper": Recipe(name="paper", optimizer="sgd", lr=0.01, weight_decay=0.0, batch_size=32, dropout=0.7,
                    hidden=256, epochs=200, patience=20, schedule="exponential", lr_decay=0.01 ** (1 / 200)),
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


def train_epoch(model: nn.Module, batches: Iterable[Batch], optimizer: torch.optim.Optimizer,
                device: torch.device, autocast: bool = False, epoch: int = 0) -> EpochLoss:
    """One pass of BCE training (eq. 10) over `batches`.

    Losses stay on the device until the epoch ends (no host sync per batch); a non-finite one then raises
    NonFiniteLossError naming the epoch and the first bad batch, before anything is checkpointed.
    """
    model.train()
    losses, sizes = [], []
    for batch in batches:
        batch = batch.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(batch.features, batch.present, batch.mask).logits  # (B, C)
        loss = asrn_loss(logits.float(), batch.targets)  # eq. 10
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
        sizes.append(len(batch.video_ids))
    if not losses:
        return EpochLoss(0.0, 0)
    per_batch = torch.stack(losses).cpu().double().numpy()  # (num_batches,): the epoch's one host sync
    bad = np.flatnonzero(~np.isfinite(per_batch))
    if bad.size:
        raise NonFiniteLossError(f"epoch {epoch}, batch {int(bad[0]) + 1} of {len(sizes)}: training loss is "
                                 f"{per_batch[bad[0]]}; lower --lr or check the features for inf/NaN")
    return EpochLoss(float(per_batch @ np.asarray(sizes, np.float64)), int(sum(sizes)))


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[Batch], device: torch.device,
             autocast: bool = False) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean BCE, (N, C) probabilities and (N, C) 0/1 targets of `model` over `batches`, in batch order."""
    model.eval()
    scores, targets, loss_sum = [], [], torch.zeros((), device=device, dtype=torch.float64)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        for batch in batches:
            batch = batch.to(device)
            logits = model(batch.features, batch.present, batch.mask).logits.float()  # (B, C)
            loss_sum += asrn_loss(logits, batch.targets).double() * len(batch.video_ids)
            scores.append(torch.sigmoid(logits))
            targets.append(batch.targets)
    scores_np = torch.cat(scores).cpu().numpy()  # (N, C)
    targets_np = torch.cat(targets).cpu().numpy()  # (N, C)
    return float(loss_sum) / len(scores_np), scores_np, targets_np


def check_finite_scores(scores: np.ndarray, where: str) -> np.ndarray:
    """Refuse NaN/inf probabilities (a diverged checkpoint) instead of writing them out."""
    if not np.isfinite(scores).all():
        raise NonFiniteScoresError(f"{where}: the model gives non-finite scores; its weights are not usable")
    return scores
