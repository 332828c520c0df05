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

from asrn.files import atomic_output  # noqa: E402
from asrn.locations import Location, path_or_location  # noqa: E402


def _save(fig, path: str | os.PathLike | Location) -> Path | Location:
    fig.tight_layout()
    with atomic_output(path) as temporary:
        fig.savefig(temporary, dpi=120, format="png")
    plt.close(fig)
    return path_or_location(path)


def plot_loss_curves(history: Sequence[dict], path: str | os.PathLike | Location,
                     title: str = "ASRN training") -> Path | Location:
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


def plot_per_class(per_class: dict[str, dict], path: str | os.PathLike | Location,
                   title: str = "per-class performance") -> Path | Location:
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


def plot_sweep(trials: Sequence[dict], path: str | os.PathLike | Location, names: Sequence[str],
               metric: str = "best_val_map", title: str = "sweep") -> Path | Location:
    """One scatter per hyperparameter against the trials' best val mAP (log x for lr); marker = trial status."""
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


def _step_edges(timestamps: np.ndarray, step: float | None) -> np.ndarray:
    """(K+1,) span edges: step k covers halfway to its neighbours (the first and last half a step outwards)."""
    if step is None:
        step = float(np.median(np.diff(timestamps))) if timestamps.size > 1 else 1.0
    mids = (timestamps[1:] + timestamps[:-1]) / 2
    edges = np.concatenate([[timestamps[0] - step / 2], mids, [timestamps[-1] + step / 2]])
    edges[0] = max(edges[0], 0.0)
    return edges


def _draw_attention_strip(fig, strip, edges: np.ndarray, attention: np.ndarray) -> None:
    strip.pcolormesh(edges, [0, 1], attention[None, :], cmap="magma", vmin=0.0,
                     vmax=max(float(attention.max()), 1e-9), shading="flat")
    strip.set_yticks([])
    strip.set_xlim(edges[0], edges[-1])
    strip.set_title("temporal attention (dark = low, light = high)", fontsize=10, loc="left")
    strip.tick_params(labelbottom=False)
    colourbar = strip.inset_axes([1.01, 0.0, 0.012, 1.0])
    fig.colorbar(strip.collections[0], cax=colourbar)
    colourbar.tick_params(labelsize=7)


def _draw_keyframes(fig, cells, strip, keyframes, keyframe_times, timestamps: np.ndarray, attention: np.ndarray,
                    shot_titles: Sequence[int] | None) -> None:
    """A keyframe per cell, titled with its time and attention, an arrow to its time on the strip."""
    from matplotlib.patches import ConnectionPatch

    for i, (image, t) in enumerate(zip(keyframes, keyframe_times, strict=True)):
        ax = fig.add_subplot(cells[0, i])
        ax.imshow(image)
        ax.set_xticks([])
        ax.set_yticks([])
        k = int(np.argmin(np.abs(timestamps - t)))
        shot = f"shot {shot_titles[i] + 1}   " if shot_titles is not None else ""
        ax.set_title(f"{shot}{t:.1f} s   a = {attention[k]:.2f}", fontsize=9)
        fig.add_artist(ConnectionPatch(xyA=(0.5, 0.0), coordsA=ax.transAxes, xyB=(t, 1.0), coordsB=strip.transData,
                                       arrowstyle="-|>", color="black", lw=1.0, mutation_scale=10))


def _draw_modality_attention(modal, strip, edges: np.ndarray, timestamps: np.ndarray,
                             modality_attention: np.ndarray, names: Sequence[str],
                             boundary_times: Sequence[float]) -> None:
    """Stacked bars per step over the strip's spans, with dashed lines where shots open."""
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    bottom = np.zeros(timestamps.size)
    for j, name in enumerate(names):
        modal.bar(edges[:-1], modality_attention[:, j], width=np.diff(edges), bottom=bottom, align="edge",
                  color=colours[j % len(colours)], label=name, alpha=0.9, linewidth=0)
        bottom += modality_attention[:, j]
    for t in boundary_times:  # a shot opens at step k: the line sits where step k's span starts
        x = edges[int(np.argmin(np.abs(timestamps - t)))]
        strip.axvline(x, color="white", ls="--", lw=1.2)
        modal.axvline(x, color="black", ls="--", lw=1.0)
    modal.set_ylim(0, 1)
    modal.set_ylabel("modality attention")
    modal.set_xlabel("time (s)")
    modal.legend(loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=len(names), frameon=False, fontsize=9)
    modal.grid(alpha=0.25)


def _draw_scores(bars, scores: dict[str, float], thresholds: dict[str, float], top: int) -> None:
    """The top relations as bars, orange where the score reaches its class's threshold (a black tick)."""
    ranked = sorted(scores.items(), key=lambda kv: -kv[1])[:top][::-1]
    names, values = [name for name, _ in ranked], [p for _, p in ranked]
    bars.barh(names, values, color=["tab:orange" if p >= thresholds[n] else "lightsteelblue" for n, p in ranked])
    bars.scatter([thresholds[n] for n in names], range(len(names)), marker="|", s=300, color="black",
                 label="threshold (chosen on val)", zorder=3)
    for y, p in enumerate(values):
        bars.text(min(p, 1.0) + 0.01, y, f"{p:.2f}", va="center", fontsize=9,
                  bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.0})
    bars.set_xlim(0, 1.12)
    bars.set_xlabel("score")
    bars.set_title(f"top {len(ranked)} relations", fontsize=11)
    bars.legend(loc="lower right", fontsize=8)
    bars.tick_params(axis="y", labelsize=9)


def plot_attention(path: str | os.PathLike | Location, keyframes: Sequence[np.ndarray], keyframe_times: Sequence[float],
                   timestamps: np.ndarray, temporal_attention: np.ndarray, modality_attention: np.ndarray,
                   modality_names: Sequence[str], boundary_times: Sequence[float], scores: dict[str, float],
                   thresholds: dict[str, float] | None = None, title: str = "", notes: Sequence[str] = (),
                   step: float | None = None, top: int = 8,
                   keyframe_shots: Sequence[int] | None = None) -> Path | Location:
    """Paper Fig. 7 and more: keyframes in a row, the temporal attention as a colour bar under them (light = high)
    with an arrow from each keyframe to its time, the modality attention over time (stacked), the top relations.

    timestamps (K,), temporal_attention (K,), modality_attention (K, M); boundary_times: where shots open;
    thresholds: per class (default 0.5); keyframe_shots: the shot of each keyframe (from 0), named in its title
    when there are several shots.
    """
    from matplotlib.figure import Figure

    timestamps = np.asarray(timestamps, float)
    attention = np.asarray(temporal_attention, float)
    edges = _step_edges(timestamps, step)
    fig = Figure(figsize=(15, 7.2), dpi=100)
    outer = fig.add_gridspec(1, 2, width_ratios=[3.3, 1.0], wspace=0.32, left=0.05, right=0.97, top=0.86,
                             bottom=0.1)
    left = outer[0].subgridspec(3, 1, height_ratios=[2.4, 0.38, 1.6], hspace=0.45)
    strip = fig.add_subplot(left[1])
    modal = fig.add_subplot(left[2], sharex=strip)
    _draw_attention_strip(fig, strip, edges, attention)
    _draw_keyframes(fig, left[0].subgridspec(1, max(1, len(keyframes)), wspace=0.06), strip, keyframes,
                    keyframe_times, timestamps, attention, keyframe_shots if len(boundary_times) else None)
    _draw_modality_attention(modal, strip, edges, timestamps, np.asarray(modality_attention, float), modality_names,
                             boundary_times)
    _draw_scores(fig.add_subplot(outer[1]), scores, thresholds or dict.fromkeys(scores, 0.5), top)
    fig.suptitle(title, fontsize=12, x=0.05, ha="left")
    if notes:
        fig.text(0.05, 0.925, "; ".join(notes), fontsize=9, color="firebrick", ha="left")
    with atomic_output(path) as temporary:
        fig.savefig(temporary, format="png")
    return path_or_location(path)
