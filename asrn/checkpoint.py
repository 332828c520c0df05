"""Checkpoints: `best.pt` (the one file `asrn predict` needs) and the training state inside each Ray checkpoint.

Ray-free, so that prediction runs in a plain process and tests build checkpoints without Ray.
`best.pt` keys (a dict written by torch.save):
  format        "asrn-checkpoint";  version  1
  model_state   ASRN state_dict (plain, not DDP-wrapped)
  model_config  ModelConfig as a dict (dims, num_classes, variant, hidden, dropout)
  train_config  TrainConfig as a JSON-able dict
  task, labels  the task and its ordered class names (model output order)
  store_info    the store's features.json content (preset, dims, fps, encoders, weights, detector, ...)
  epoch         the epoch of the checkpoint;  val_metrics  what that epoch reported
  thresholds    per-class decision thresholds chosen on val (max F1), in `labels` order; 0.5 each if absent
The training state (STATE_FILE in a Ray checkpoint folder): model, optimizer, scheduler, epoch, best_score,
best_epoch, stale, history.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from asrn.errors import AsrnError
from asrn.files import atomic_output
from asrn.labels import task_labels
from asrn.model import ASRN, ModelConfig
from asrn.store import StoreInfo

CHECKPOINT_FORMAT = "asrn-checkpoint"
CHECKPOINT_VERSION = 1
REQUIRED_KEYS = ("model_state", "model_config", "task", "labels", "store_info")
STATE_FILE = "state.pt"


class CheckpointError(AsrnError):
    """A file that is not an ASRN checkpoint written by `asrn train` or `asrn tune`."""


def write_checkpoint(path: str | Path, model_state: dict, model_config: ModelConfig, train_config: dict, task: str,
                     store_info: StoreInfo, epoch: int, val_metrics: dict,
                     thresholds: Sequence[float] | None = None) -> Path:
    labels = list(task_labels(task))
    thresholds = [0.5] * len(labels) if thresholds is None else [float(t) for t in thresholds]
    if len(thresholds) != len(labels) or not np.isfinite(thresholds).all():
        raise CheckpointError(f"{path}: need {len(labels)} finite thresholds, one per class, got {thresholds}")
    with atomic_output(path) as temporary:
        torch.save({
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "model_state": model_state,
            "model_config": asdict(model_config), "train_config": train_config, "task": task, "labels": labels,
            "store_info": asdict(store_info), "epoch": epoch, "val_metrics": val_metrics, "thresholds": thresholds,
        }, temporary)
    return Path(path)


def save_training_state(folder: str | os.PathLike, state: dict) -> Path:
    """Write a training state (keys in the module docstring) into a checkpoint folder."""
    path = Path(folder) / STATE_FILE
    torch.save(state, path)
    return path


def load_training_state(folder: str | os.PathLike) -> dict:
    return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[ASRN, dict]:
    """The model of a `best.pt` (in eval mode) and the checkpoint dict; CheckpointError for any other file."""
    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever torch says, the file is not ours
        raise CheckpointError(f"{path}: not an ASRN checkpoint (torch.load failed: {e})") from e
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an ASRN checkpoint (no format={CHECKPOINT_FORMAT!r} entry); "
                              "expected a best.pt written by `asrn train`")
    if checkpoint.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {checkpoint.get('version')!r}, "
                              f"this asrn reads version {CHECKPOINT_VERSION}")
    missing = [k for k in REQUIRED_KEYS if k not in checkpoint]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    if list(checkpoint["labels"]) != list(task_labels(checkpoint["task"])):
        raise CheckpointError(f"{path}: its labels are not the classes of task {checkpoint['task']!r}")
    model = ASRN(ModelConfig(**checkpoint["model_config"]))
    try:
        model.load_state_dict(checkpoint["model_state"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit its model_config ({e})") from e
    checkpoint.setdefault("thresholds", [0.5] * len(checkpoint["labels"]))
    checkpoint["path"] = str(path)
    return model.to(device).eval(), checkpoint
