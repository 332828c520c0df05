"""Study: which cause keeps the issue's short run (240 videos, 8 epochs, sub) under its bars; paired, several seeds.

    nice python benchmarks/studies/short_run_causes.py [--variants base,attn0,...] [--seeds 11,12,13] [--jobs 2]

Question: why is ASRN no better than averaging with 168 training videos? Answer (seeds 11-13): GLA puts 0.14-0.21
of its attention on the cue-event steps, which are 0.19 of the steps, so it is a mean-pooling model there; no
recipe or initialisation change below moves it, more videos do (attention on events 0.21-0.30 at 960 videos,
0.47-0.53 at 2,000). Results: results/short_run_causes.json (base, b8step, attn0_b8step, attn0, drop0.2),
results/short_run_causes_limits.json (v960, ep24, h32, wd1), results/short_run_causes_v2000.json (v2000, drop0.7).

Each variant is the short run (`generate_videos(240, seed)`, task sub, the plain loop of benchmarks/ablation.py:
one process, one thread, selection on val mAP) with one candidate cause changed:
- recipe fields (batch size, dropout, hidden, lr);
- `per_step`: the lr schedule defined per optimizer step (linear warmup over `warmup` of the steps, then cosine to
  0), instead of cosine stepped once per epoch;
- `attn0`: the attention logits start at 0 (the last Linear of MFA's scoring, GLA's w and the shot weights ω), so
  the model starts as mean pooling over modalities, steps and shots and learns where to look;
- `ep24`, `v960`, `v2000` (not fixes): 24 epochs on the same videos; 960 or 2000 videos at 8 epochs: where
  attention emerges;
- `last`: also scores the last epoch's model (no val selection), to size the noise of selecting on 36 val videos.
Per seed: test mAP, prevalence, F1 macro at val-chosen thresholds, every-class F1 macro (as short_run_bar.py).
Writes benchmarks/studies/results/short_run_causes.json (or --out).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
RESULTS = Path(__file__).resolve().parent / "results"

from ablation import DEVICE, WINDOW, batches_of, diagnostics, scored, split, trivial  # noqa: E402
from machine import machine  # noqa: E402

from asrn.labels import task_labels  # noqa: E402
from asrn.loop import RECIPES, build_optimizer, evaluate, train_epoch  # noqa: E402
from asrn.metrics import choose_thresholds, compute_metrics  # noqa: E402
from asrn.model import ASRN, ModelConfig  # noqa: E402
from asrn.sequence import collate  # noqa: E402
from asrn.store import input_statistics  # noqa: E402
from asrn.synth_features import generate_videos  # noqa: E402

TASK, NUM_VIDEOS, EPOCHS = "sub", 240, 8

# name -> (recipe changes, options)
VARIANTS: dict[str, tuple[dict, dict]] = {
    "base": ({}, {}),
    "attn0": ({}, {"attn0": True}),
    "b8": ({"batch_size": 8}, {}),
    "b8step": ({"batch_size": 8}, {"per_step": True}),
    "step": ({}, {"per_step": True}),
    "drop0.2": ({"dropout": 0.2}, {}),
    "h64": ({"hidden": 64}, {}),
    "attn0_b8step": ({"batch_size": 8}, {"attn0": True, "per_step": True}),
    "attn0_b16step": ({"batch_size": 16}, {"attn0": True, "per_step": True}),
    "attn0_step": ({}, {"attn0": True, "per_step": True}),
    "attn0_drop0.2": ({"dropout": 0.2}, {"attn0": True}),
    "lr1e-2": ({"lr": 1e-2}, {}),
    "attn0_lr1e-2": ({"lr": 1e-2}, {"attn0": True}),
    "h32": ({"hidden": 32}, {}),
    "drop0.7": ({"dropout": 0.7}, {}),
    "wd1": ({"weight_decay": 1.0}, {}),
    # not fixes: where attention emerges (more epochs on the same 168 videos; more videos at 8 epochs)
    "ep24": ({"epochs": 24}, {}),
    "v960": ({}, {"num_videos": 960}),
    "v2000": ({}, {"num_videos": 2000}),
}


def zero_attention_logits(model: ASRN) -> None:
    """Attention logits 0 at the start: uniform weights over modalities (eq. 1), steps (eq. 8) and shots (eq. 7)."""
    with torch.no_grad():
        for layer in (getattr(model.fusion, "score", None), getattr(getattr(model, "attention", None), "score", None),
                      getattr(getattr(model, "shots", None), "shot_score", None)):
            if isinstance(layer, nn.Linear):
                layer.weight.zero_()
                if layer.bias is not None:
                    layer.bias.zero_()


class PerStep:
    """Duck-typed optimizer for loop.train_epoch: steps a warmup-then-cosine LambdaLR after every optimizer step."""

    def __init__(self, optimizer: torch.optim.Optimizer, total: int, warmup: float):
        self.optimizer = optimizer
        warm = max(1, round(warmup * total))

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.optimizer.step()
        self.scheduler.step()


def run(name: str, seed: int, warmup: float) -> dict:
    torch.set_num_threads(1)
    changes, options = VARIANTS[name]
    recipe = dataclasses.replace(RECIPES["default"], **{"epochs": EPOCHS, **changes})
    data = split(generate_videos(options.get("num_videos", NUM_VIDEOS), seed=seed))
    stats = input_statistics(s.video for s in data["train"])
    labels = list(task_labels(TASK))
    train = [s.video for s in data["train"]]
    dims = {m: int(x.shape[1]) for m, x in train[0].features.items()}
    torch.manual_seed(seed)
    model = ASRN(ModelConfig(dims=dims, num_classes=len(labels), variant="asrn", hidden=recipe.hidden,
                             dropout=recipe.dropout))
    model.set_input_stats(stats)
    if options.get("attn0"):
        zero_attention_logits(model)
    optimizer, scheduler = build_optimizer(model, recipe)
    steps_per_epoch = math.ceil(len(train) / recipe.batch_size)
    stepper = PerStep(optimizer, steps_per_epoch * recipe.epochs, warmup) if options.get("per_step") else optimizer
    val = batches_of([s.video for s in data["val"]], TASK, 64, None)
    test = batches_of([s.video for s in data["test"]], TASK, 64, None)
    rng = np.random.default_rng([seed, 7])
    best, best_epoch, best_state, curve = -1.0, 0, None, []
    started = time.perf_counter()
    for epoch in range(1, recipe.epochs + 1):
        order = rng.permutation(len(train))
        shuffled = [train[j] for j in order]
        loss = train_epoch(model, (collate(shuffled[i:i + recipe.batch_size], TASK, WINDOW)
                                   for i in range(0, len(shuffled), recipe.batch_size)), stepper, DEVICE, epoch=epoch)
        if not options.get("per_step"):
            scheduler.step()
        _, scores, targets = evaluate(model, val, DEVICE)
        val_map = compute_metrics(targets, scores, labels)["map"]
        curve.append({"epoch": epoch, "train_loss": round(loss.mean, 4), "val_map": round(val_map, 4)})
        if val_map > best:
            best, best_epoch = val_map, epoch
            best_state = {k: v.clone() for k, v in model.state_dict().items()}

    def score_now() -> dict:
        _, val_scores, val_targets = evaluate(model, val, DEVICE)
        _, scores, targets = evaluate(model, test, DEVICE)
        r = scored(targets, scores, labels, choose_thresholds(val_targets, val_scores))
        return {"map": r["map"], "f1_macro_val_thr": r["f1_macro_val_thr"]}

    last = score_now()
    model.load_state_dict(best_state)
    base = trivial(data, TASK)
    diag = diagnostics(model, data["test"], TASK, None)
    row = {"variant": name, "seed": seed, **score_now(), "last": last, "best_epoch": best_epoch,
           "num_videos": sum(len(part) for part in data.values()),
           "attention_on_events": diag["attention_on_events"], "event_share": diag["event_share_of_kept_steps"],
           "prevalence_map": base["map"], "every_class_f1_macro": base["f1_macro"], "curve": curve,
           "seconds": round(time.perf_counter() - started, 1)}
    print(f"{name} seed {seed}: mAP {row['map']:.3f}/{row['prevalence_map']:.3f} F1 {row['f1_macro_val_thr']:.3f}/"
          f"{row['every_class_f1_macro']:.3f} epoch {best_epoch}, attention on events {row['attention_on_events']:.2f}"
          f" (share {row['event_share']:.2f}), {row['seconds']:.0f} s", flush=True)
    return row


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default="base,attn0")
    p.add_argument("--seeds", default="11,12,13")
    p.add_argument("--warmup", type=float, default=0.1, help="share of the steps in linear warmup (per_step)")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS / "short_run_causes.json")
    args = p.parse_args(argv)
    jobs = [(v, int(s), args.warmup) for v in args.variants.split(",") for s in args.seeds.split(",")]
    info, started = machine(), time.perf_counter()
    with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
        rows = pool.starmap(run, jobs, chunksize=1)
    summary = {}
    for v in args.variants.split(","):
        mine = [r for r in rows if r["variant"] == v]
        d_map = np.array([r["map"] - r["prevalence_map"] for r in mine])
        d_f1 = np.array([r["f1_macro_val_thr"] - r["every_class_f1_macro"] for r in mine])
        summary[v] = {"map": float(np.mean([r["map"] for r in mine])),
                      "f1_macro_val_thr": float(np.mean([r["f1_macro_val_thr"] for r in mine])),
                      "map_minus_prevalence": {"mean": float(d_map.mean()), "min": float(d_map.min())},
                      "f1_minus_every_class": {"mean": float(d_f1.mean()), "min": float(d_f1.min())},
                      "last_map": float(np.mean([r["last"]["map"] for r in mine])),
                      "last_f1": float(np.mean([r["last"]["f1_macro_val_thr"] for r in mine]))}
        print(f"{v:>16}: " + " | ".join(
            f"s{r['seed']} mAP {r['map']:.3f}/{r['prevalence_map']:.3f} F1 {r['f1_macro_val_thr']:.3f}/"
            f"{r['every_class_f1_macro']:.3f} ep{r['best_epoch']} (last {r['last']['map']:.3f}/"
            f"{r['last']['f1_macro_val_thr']:.3f})" for r in mine)
              + f" || mean dmAP {d_map.mean():+.3f} dF1 {d_f1.mean():+.3f}", flush=True)
    info["load_average_at_end"] = machine()["load_average_at_start"]
    result = {"command": " ".join(["python", "benchmarks/studies/short_run_causes.py", *(argv or sys.argv[1:])]),
              "machine": info, "task": TASK, "num_videos": NUM_VIDEOS, "epochs": EPOCHS, "warmup": args.warmup,
              "recipe": dataclasses.asdict(RECIPES["default"]),
              "variants": {v: {"recipe_changes": VARIANTS[v][0], "options": VARIANTS[v][1]}
                           for v in args.variants.split(",")},
              "summary": summary, "rows": rows, "wall_seconds": round(time.perf_counter() - started, 1)}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
