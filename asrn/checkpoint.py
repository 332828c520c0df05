"""Checkpoints: `best.pt` (the one file `asrn predict` needs) and the training state inside each Ray checkpoint.

Ray-free, so that prediction runs in a plain process and tests build checkpoints without Ray.
`best.pt` keys (a dict written by torch.save):
  format        "asrn-checkpoint";  version  1
  model_state   ASRN state_dict (plain, not DDP-wrapped)
  model_config  ModelConfig as a dict (dims, num_classes, variant, hidden, dropout, boundaries: absent = unsupervised)
  train_config  TrainConfig as a JSON-able dict
  task, labels  the task and its ordered class names (model output order)
  store_info    the store's features.json content (preset, dims, fps, encoders, weights, detector, ...)
  epoch         the epoch of the checkpoint;  val_metrics  what that epoch reported
  thresholds    per-class decision thresholds chosen on val (max F1), in `labels` order; 0.5 each if absent
The training state (STATE_FILE in a Ray checkpoint folder): model, optimizer, scheduler, epoch, best_score,
best_epoch, stale, history.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from dataclasses import MISSING, asdict, fields
from pathlib import Path

import numpy as np
import torch

from asrn.errors import AsrnError
from asrn.files import atomic_output
from asrn.labels import TASKS, task_labels
from asrn.locations import Location, path_or_location
from asrn.model import ASRN, ModelConfig
from asrn.store import StoreInfo

CHECKPOINT_FORMAT = "asrn-checkpoint"
CHECKPOINT_VERSION = 1
REQUIRED_KEYS = ("model_state", "model_config", "task", "labels", "store_info")
STATE_FILE = "state.pt"


class CheckpointError(AsrnError):
    """A file that is not an ASRN checkpoint written by `asrn train` or `asrn tune`."""


def write_checkpoint(path: str | Path | Location, model_state: dict, model_config: ModelConfig, train_config: dict,
                     task: str, store_info: StoreInfo, epoch: int, val_metrics: dict,
                     thresholds: Sequence[float] | None = None) -> Path | Location:
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
    return path_or_location(path)


def save_training_state(folder: str | os.PathLike, state: dict) -> Path:
    """Write a training state (keys in the module docstring) into a checkpoint folder."""
    path = Path(folder) / STATE_FILE
    torch.save(state, path)
    return path


def load_training_state(folder: str | os.PathLike) -> dict:
    return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)


def load_checkpoint(path: str | Path | Location, device: str | torch.device = "cpu") -> tuple[ASRN, dict]:
    """The model of a `best.pt` (a local path or a URI; in eval mode) and the checkpoint dict; CheckpointError for
    any other file.

    Every entry is checked before use, so a file edited by hand or written by another asrn version is one
    CheckpointError naming the file and the key, never a traceback.
    """
    path = Location(path)
    try:
        source = path.path if path.is_local else io.BytesIO(path.read_bytes())
        checkpoint = torch.load(source, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever torch says, the file is not ours
        raise CheckpointError(f"{path}: not an ASRN checkpoint (torch.load failed: {e})") from e
    _check_header(checkpoint, path)
    _check_task_and_labels(checkpoint, path)
    config = _model_config(checkpoint["model_config"], path)
    _check_store_info(checkpoint["store_info"], path)
    checkpoint["thresholds"] = _thresholds(checkpoint, path)
    if not isinstance(checkpoint["model_state"], dict):
        raise CheckpointError(f"{path}: model_state is a {type(checkpoint['model_state']).__name__}, "
                              "expected a state_dict")
    model = ASRN(config)
    try:
        model.load_state_dict(checkpoint["model_state"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: model_state does not fit its model_config ({_one_line(e)})") from e
    checkpoint["path"] = str(path)
    return model.to(device).eval(), checkpoint


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def _check_header(checkpoint: object, path: Path) -> None:
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an ASRN checkpoint (no format={CHECKPOINT_FORMAT!r} entry); "
                              "expected a best.pt written by `asrn train`")
    if checkpoint.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {checkpoint.get('version')!r}, "
                              f"this asrn reads version {CHECKPOINT_VERSION}")
    missing = [k for k in REQUIRED_KEYS if k not in checkpoint]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")


def _check_task_and_labels(checkpoint: dict, path: Path) -> None:
    task, labels = checkpoint["task"], checkpoint["labels"]
    if not isinstance(task, str) or task not in TASKS:
        raise CheckpointError(f"{path}: task {task!r} is unknown (expected one of {', '.join(TASKS)})")
    if not isinstance(labels, list | tuple):
        raise CheckpointError(f"{path}: labels is {labels!r}, expected the list of class names of task {task!r}")
    if list(labels) != list(task_labels(task)):
        raise CheckpointError(f"{path}: its labels are not the classes of task {task!r}")


def _check_keys(value: object, key: str, known: set[str], required: set[str], path: Path) -> dict:
    """`value` as a dict whose keys lie in `known` and include `required`; CheckpointError naming `key` otherwise."""
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: {key} is a {type(value).__name__}, expected a mapping")
    unknown = sorted(str(k) for k in value if k not in known)
    if unknown:
        raise CheckpointError(f"{path}: {key} has unknown key(s) {', '.join(unknown)} "
                              "(written by another asrn version?)")
    missing = sorted(required - set(value))
    if missing:
        raise CheckpointError(f"{path}: {key} lacks key(s) {', '.join(missing)} (written by another asrn version?)")
    return value


def _model_config(raw: object, path: Path) -> ModelConfig:
    """The ModelConfig of a checkpoint: every field written by asdict must be there, and no other; a checkpoint
    from before `boundaries` was trained with the paper's unsupervised detector and loads as such."""
    names = {f.name for f in fields(ModelConfig)}
    raw = _check_keys(raw, "model_config", names, names - {"boundaries"}, path)
    try:
        return ModelConfig(**{"boundaries": "unsupervised", **raw})
    except AsrnError as e:
        raise CheckpointError(f"{path}: model_config: {e}") from e


def _check_store_info(raw: object, path: Path) -> None:
    """store_info must be what StoreInfo's asdict wrote (fields with defaults may be absent in older files)."""
    known = {f.name for f in fields(StoreInfo)}
    required = {f.name for f in fields(StoreInfo) if f.default is MISSING and f.default_factory is MISSING}
    raw = _check_keys(raw, "store_info", known, required, path)
    if not isinstance(raw["dims"], dict):
        raise CheckpointError(f"{path}: store_info: dims is {raw['dims']!r}, expected modality -> width")
    if isinstance(raw["fps"], bool) or not isinstance(raw["fps"], int | float) or not raw["fps"] > 0:
        raise CheckpointError(f"{path}: store_info: fps = {raw['fps']!r} is not a positive number")
    try:
        StoreInfo(**raw).check(f"{path}: store_info")
    except AsrnError as e:
        raise CheckpointError(str(e)) from e


def _thresholds(checkpoint: dict, path: Path) -> list[float]:
    """The per-class thresholds, 0.5 each in a checkpoint from before they were saved."""
    count = len(checkpoint["labels"])
    if "thresholds" not in checkpoint:
        return [0.5] * count
    thresholds = checkpoint["thresholds"]
    if not isinstance(thresholds, list | tuple):
        raise CheckpointError(f"{path}: thresholds is a {type(thresholds).__name__}, expected {count} numbers")
    if len(thresholds) != count:
        raise CheckpointError(f"{path}: thresholds holds {len(thresholds)} values, "
                              f"task {checkpoint['task']!r} has {count} classes")
    for i, t in enumerate(thresholds):
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
            raise CheckpointError(f"{path}: thresholds[{i}] = {t!r} is not a finite number")
    return [float(t) for t in thresholds]
