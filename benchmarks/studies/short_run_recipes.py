"""Study: which recipe changes move the issue's short run (240 videos, seed 11, 8 epochs, ASRN).

    python benchmarks/studies/short_run_recipes.py [--variants default,const,...] [--out FILE]

Question: is the short run limited by its training budget or recipe (too few steps, lr, schedule, batch, dropout,
width) or by its data (too few videos)? Answer (results/short_run_recipes.json, one seed): the data; no change
moves sub test mAP by more than a few hundredths (0.41-0.47 against 0.43 for the default), and 30 epochs without
early stopping peak at epoch 9 and then overfit.

Each variant is RECIPES["default"] with a few fields changed, trained by benchmarks/ablation.py's `short_run` (one
process, one thread, selection on val mAP); `ep30` trains 30 epochs without early stopping, to tell a budget limit
(too few steps) from a data limit (too few videos). Results: test mAP and prevalence mAP, F1 macro at val thresholds
and at 0.5, and predicting every class, per group. Writes benchmarks/studies/results/short_run_recipes.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
RESULTS = Path(__file__).resolve().parent / "results"

import ablation  # noqa: E402
from machine import machine  # noqa: E402

from asrn.loop import RECIPES  # noqa: E402

VARIANTS = {
    "default": {},
    "const": {"schedule": "exponential", "lr_decay": 1.0},
    "drop0.2": {"dropout": 0.2},
    "lr1e-2const": {"lr": 1e-2, "schedule": "exponential", "lr_decay": 1.0},
    "b8": {"batch_size": 8},
    "b8const": {"batch_size": 8, "schedule": "exponential", "lr_decay": 1.0},
    "b8h64": {"batch_size": 8, "hidden": 64},
    "ep30": {"epochs": 30, "patience": 30},
}


def run(name: str) -> dict:
    recipe = dataclasses.replace(RECIPES["default"], **VARIANTS[name])
    if name != "ep30":
        return ablation.short_run(recipe, ["all"], None)
    data = ablation.split(ablation.generate_videos(240, seed=11))
    stats = ablation.input_statistics(s.video for s in data["train"])
    _, records = ablation.train_variant(data, "all", "asrn", 11, recipe, stats, None)
    return {g: {"test_map": r["map"], "test_f1_macro_val_thr": r["f1_macro_val_thr"], "best_epoch": r["best_epoch"]}
            for g, r in records.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--out", type=Path, default=RESULTS / "short_run_recipes.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    results = {"machine": machine(), "variants": {}}
    for name in args.variants.split(","):
        started = time.perf_counter()
        results["variants"][name] = {"changes": VARIANTS[name], "groups": run(name),
                                     "seconds": round(time.perf_counter() - started, 1)}
        print(name, json.dumps(results["variants"][name]["groups"]), flush=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
