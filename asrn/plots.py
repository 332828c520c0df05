"""Figures: loss curves (paper Fig. 8), per-class F1 / accuracy bars (paper Fig. 5), a sweep's trials.

Each function writes one PNG and returns its path; matplotlib runs headless (Agg), so plots work on
cluster nodes and in tests without a display.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the headless backend
import numpy as np  # noqa: E402


def _save(fig, path: str | os.PathLike) -> Path:
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_loss_curves(history: Sequence[dict], path: str | os.PathLike, title: str = "ASRN training") -> Path:
    """Train and validation loss per epoch (Fig. 8); `history` holds dicts with epoch, train_loss, val_loss."""
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [h["train_loss"] for h in history], marker="o", markersize=3, label="train loss")
    ax.plot(epochs, [h["val_loss"] for h in history], marker="o", markersize=3, label="val loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("BCE loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_per_class(per_class: dict[str, dict], path: str | os.PathLike, title: str = "per-class performance") -> Path:
    """F1 and accuracy of each class side by side (Fig. 5); `per_class` is compute_metrics(...)["per_class"]."""
    names = list(per_class)
    x = np.arange(len(names))
    width = 0.4
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(names) + 2), 4))
    ax.bar(x - width / 2, [per_class[n]["f1"] for n in names], width, label="F1")
    ax.bar(x + width / 2, [per_class[n]["accuracy"] for n in names], width, label="accuracy")
    ax.set_xticks(x, names, rotation=45, ha="right")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_sweep(trials: Sequence[dict], path: str | os.PathLike, names: Sequence[str],
               metric: str = "best_val_f1_macro", title: str = "sweep") -> Path:
    """One scatter per hyperparameter against the trials' best F1 macro (log x for lr); marker = trial status."""
    markers = {"completed": ("o", "tab:blue"), "stopped_early": ("x", "tab:orange"), "failed": ("s", "tab:red")}
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.6), sharey=True, squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for status, (marker, color) in {**markers, "unfinished": ("^", "tab:gray")}.items():
            points = [(t[name], t[metric]) for t in trials
                      if t["status"] == status and isinstance(t[metric], float) and math.isfinite(t[metric])]
            if points:
                ax.scatter(*zip(*points, strict=True), marker=marker, color=color, label=status.replace("_", " "))
        if name == "lr":
            ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(metric.replace("_", " "))
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)
