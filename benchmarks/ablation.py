"""Ablation of the paper's Tables 2-3 on the SRIV-like synthetic store: asrn, no-gla, no-mfa, lstm, tsn, mean, and
ASRN with the paper's unsupervised boundaries (asrn-unsupervised).

    nice python benchmarks/ablation.py [--seeds 0,1,2] [--num-videos 2000] [--recipe default] [--set lr=0.001]
                                       [--tasks sub,obj | --tasks all] [--jobs 3] [--short-run]
    python benchmarks/ablation.py --render benchmarks/results/ablation.json   # rewrite the .md only

The committed results: `--tasks all --jobs 3 --short-run` (one 16-class model per variant and seed, scored per
group; three (seed, task) jobs in parallel processes, one thread each).

For each seed s the data are `synth_features.generate_videos(num_videos, seed=s)` (what `asrn synth features
--seed s` writes, in memory). Every variant is trained on the same data with the same recipe (`asrn.loop.RECIPES`)
and torch.manual_seed(s), in this process (no Ray), one thread: inputs standardised by the train split's
statistics (`loop.input_statistics`), the train split reshuffled each epoch, `collate` (window 3; its ties at random
each epoch when the recipe's random_steps is on, as in `asrn train`), `loop.train_epoch`
and `loop.evaluate`; early stopping after `patience` epochs without a gain in val mAP and the model of the best
val mAP epoch scored on test: F1 micro/macro, Acc, Subacc at threshold 0.5 (the paper's layout), mAP, and F1 macro
at per-class thresholds chosen on val. Paired differences to ASRN are per seed.

ASRN's boundary forms (asrn.model.BOUNDARY_FORMS): `asrn` is the default, boundaries="cuts" (s_t is the store's
shot_start, which the synthetic store holds as the true shot changes, as `asrn extract` holds the detected cuts);
`asrn-unsupervised` is the paper's detector alone (`asrn train --boundaries unsupervised`). The per-seed table gives
the paired difference of the two, i.e. whether real shots change ASRN's mAP.

Diagnostics (the variants with a BDLSTM, on test): the temporal attention mass a_t on the kept steps that lie in cue
events, against those steps' share of the kept steps (what uniform weights would give); the BDLSTM boundaries s_t
against the true shot changes between consecutive kept steps, as precision and recall beside a random detector that
fires at the same rate (precision = the base rate of changes, recall = the firing rate). With boundaries="cuts" on
planted data they are 1 by construction (the wiring from the column to eqs. 5-7 is what they check); how well the
cut detector finds real cuts is tests/test_shots.py's.

`--short-run` adds the issue's short run: 240 videos (seed 11), 8 epochs, ASRN, against predicting every class
(F1 macro) and against prevalence (the mAP of random scores).

Writes benchmarks/results/ablation.json and ablation.md with the machine, settings, seeds and date.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from machine import machine  # noqa: E402

from asrn import synth_features  # noqa: E402
from asrn.labels import task_labels  # noqa: E402
from asrn.loop import RECIPES, Recipe, build_optimizer, evaluate, train_epoch  # noqa: E402
from asrn.metrics import choose_thresholds, compute_metrics  # noqa: E402
from asrn.model import ASRN, ModelConfig  # noqa: E402
from asrn.sequence import collate  # noqa: E402
from asrn.shards import step_rng  # noqa: E402
from asrn.store import input_statistics  # noqa: E402
from asrn.synth_features import SyntheticVideo, generate_videos, generator_parameters  # noqa: E402

VARIANTS = ("asrn", "asrn-unsupervised", "no-gla", "no-mfa", "lstm", "tsn", "mean")
MODEL_FORMS = {"asrn-unsupervised": ("asrn", "unsupervised")}  # row -> (ModelConfig variant, boundaries)
ROW_NAMES = {"asrn": "ASRN", "asrn-unsupervised": "ASRN (unsupervised boundaries)", "no-gla": "ASRN(no GLA)",
             "no-mfa": "ASRN(no MFA)", "lstm": "LSTM", "tsn": "TSN",
             "mean": "mean (all modalities)", "all-positive": "every class predicted (trivial)"}
METRICS = ("f1_micro", "f1_macro", "acc", "subacc")
HEADERS = ("F1 mi", "F1 ma", "Acc", "Subacc")
COLUMNS = (*METRICS, "map", "f1_macro_val_thr")
WINDOW = 3
GROUPS = {"sub": ("sub",), "obj": ("obj",), "all": ("sub", "obj")}
DIAGNOSED = ("asrn", "asrn-unsupervised", "no-mfa")  # the variants with a BDLSTM and GLA
ASRN_FORMS = ("asrn", "asrn-unsupervised")  # ASRN itself, not an ablation of it
DEVICE = torch.device("cpu")


def set_field(recipe: Recipe, item: str) -> Recipe:
    """`FIELD=VALUE` applied to the recipe, VALUE read as the field's type (booleans: true/false)."""
    key, value = item.split("=", 1)
    kind = type(getattr(recipe, key))
    if kind is bool:
        if value.lower() not in ("true", "false"):
            raise ValueError(f"--set {item}: {key} takes true or false")
        return dataclasses.replace(recipe, **{key: value.lower() == "true"})
    return dataclasses.replace(recipe, **{key: kind(value)})


def scored(targets: np.ndarray, scores: np.ndarray, labels: list[str], thresholds: np.ndarray) -> dict:
    m = compute_metrics(targets, scores, labels)
    tuned = compute_metrics(targets, scores, labels, thresholds=thresholds)
    return {**{k: m[k] for k in (*METRICS, "map")}, "f1_macro_val_thr": tuned["f1_macro"]}


def batches_of(videos: list, task: str, size: int, max_steps: int | None) -> list:
    return [collate(videos[i:i + size], task, WINDOW, max_steps) for i in range(0, len(videos), size)]


def train_variant(data: dict, task: str, variant: str, seed: int, recipe: Recipe, stats: dict,
                  max_steps: int | None) -> tuple[ASRN, dict]:
    """Train with `recipe`, keep the best val mAP epoch; return the model (best weights) and its test record by
    group (sub, obj)."""
    labels = list(task_labels(task))
    train = [s.video for s in data["train"]]
    dims = {m: int(x.shape[1]) for m, x in train[0].features.items()}
    torch.manual_seed(seed)
    model_variant, boundaries = MODEL_FORMS.get(variant, (variant, "cuts"))
    model = ASRN(ModelConfig(dims=dims, num_classes=len(labels), variant=model_variant, hidden=recipe.hidden,
                             dropout=recipe.dropout, boundaries=boundaries))
    model.set_input_stats(stats)
    optimizer, scheduler = build_optimizer(model, recipe)
    val = batches_of([s.video for s in data["val"]], task, 64, max_steps)
    rng = np.random.default_rng([seed, 7])
    best, best_epoch, best_state, stale, curve = -1.0, 0, None, 0, []
    started = time.perf_counter()
    for epoch in range(1, recipe.epochs + 1):
        order = rng.permutation(len(train))
        shuffled = [train[j] for j in order]
        steps_rng = step_rng(seed, epoch) if recipe.random_steps else None  # as asrn train's workers draw it
        loss = train_epoch(model, (collate(shuffled[i:i + recipe.batch_size], task, WINDOW, max_steps, steps_rng)
                                   for i in range(0, len(shuffled), recipe.batch_size)), optimizer, DEVICE,
                           epoch=epoch)
        scheduler.step()
        val_loss, scores, targets = evaluate(model, val, DEVICE)
        val_map = compute_metrics(targets, scores, labels)["map"]
        curve.append({"epoch": epoch, "train_loss": round(loss.mean, 5), "val_loss": round(val_loss, 5),
                      "val_map": round(val_map, 5)})
        if val_map > best:
            best, best_epoch, stale = val_map, epoch, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= recipe.patience:
                break
    model.load_state_dict(best_state)
    _, val_scores, val_targets = evaluate(model, val, DEVICE)
    test_videos = [s.video for s in data["test"]]
    _, scores, targets = evaluate(model, batches_of(test_videos, task, 64, max_steps), DEVICE)
    records = {}
    for group in GROUPS[task]:  # task "all": one 16-class model, scored per group as Tables 2 and 3
        cols = [i for i, name in enumerate(labels) if name in task_labels(group)]
        records[group] = {**scored(targets[:, cols], scores[:, cols], [labels[i] for i in cols],
                                   choose_thresholds(val_targets[:, cols], val_scores[:, cols])),
                          "best_val_map": best, "best_epoch": best_epoch, "epochs_run": len(curve),
                          "seconds": round(time.perf_counter() - started, 1), "curve": curve}
    return model, records


@torch.no_grad()
def diagnostics(model: ASRN, test: list[SyntheticVideo], task: str, max_steps: int | None) -> dict:
    """Attention mass on cue-event steps vs their share, and boundary precision/recall vs a random detector."""
    model.eval()
    mass, share, hits, fired, changes, valid = [], [], 0.0, 0.0, 0.0, 0.0
    for i in range(0, len(test), 64):
        chunk = test[i:i + 64]
        batch = collate([s.video for s in chunk], task, WINDOW, max_steps)
        out = model(**batch.inputs())
        a, s = out.temporal_attention.numpy(), out.boundaries.numpy()  # (B, T)
        for b, (synth, steps) in enumerate(zip(chunk, batch.steps, strict=True)):
            n = len(steps)
            event = synth.relevant[steps]  # (n,) kept steps inside a cue event
            mass.append(float(a[b, :n][event].sum()))
            share.append(float(event.mean()))
            change = synth.shot[steps][1:] != synth.shot[steps][:-1]  # (n-1,) a new shot starts at kept step t
            detected = s[b, 1:n] > 0.5
            hits += float((change & detected).sum())
            fired += float(detected.sum())
            changes += float(change.sum())
            valid += n - 1
    rate = fired / valid
    return {"attention_on_events": float(np.mean(mass)), "event_share_of_kept_steps": float(np.mean(share)),
            "boundary_firing_rate": rate, "boundary_precision": hits / fired if fired else None,
            "boundary_recall": hits / changes, "chance_precision": changes / valid, "chance_recall": rate}


def split(synthetic: list[SyntheticVideo]) -> dict[str, list[SyntheticVideo]]:
    return {name: [s for s in synthetic if s.video.split == name] for name in ("train", "val", "test")}


def trivial(data: dict, task: str) -> dict:
    """Every class predicted for every test video (F1), and random scores (mAP = prevalence, in expectation)."""
    labels = list(task_labels(task))
    t = collate([s.video for s in data["test"]], task).targets.numpy()
    m = compute_metrics(t, np.ones_like(t), labels)
    return {**{k: m[k] for k in METRICS}, "map": float(t.mean(0)[t.any(0)].mean()),
            "f1_macro_val_thr": m["f1_macro"]}


def summarise(runs: list[dict]) -> dict:
    out = {}
    for k in (*COLUMNS, "best_epoch"):
        if k in runs[0]:
            values = np.array([r[k] for r in runs], np.float64)
            out[k] = {"mean": float(values.mean()), "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0}
    return out


def run_job(num_videos: int, seed: int, task: str, variants: list[str], recipe: Recipe, max_steps: int | None,
            threads: int) -> tuple[dict, dict]:
    """Every variant on one seed's data for one task: test records by group and variant, diagnostics by variant."""
    torch.set_num_threads(threads)
    data = split(generate_videos(num_videos, seed=seed))
    stats = input_statistics(s.video for s in data["train"])
    runs = {group: {"all-positive": trivial(data, group)} for group in GROUPS[task]}
    diags = {}
    for variant in variants:
        model, records = train_variant(data, task, variant, seed, recipe, stats, max_steps)
        for group, r in records.items():
            runs[group][variant] = r
            print(f"seed {seed} {task}/{group} {variant:>6}: test mAP {r['map']:.3f} F1 ma {r['f1_macro']:.3f} "
                  f"F1 ma val-thr {r['f1_macro_val_thr']:.3f} (best epoch {r['best_epoch']}/{r['epochs_run']}, "
                  f"{r['seconds']:.0f} s)", flush=True)
        if variant in DIAGNOSED:
            diags[variant] = diagnostics(model, data["test"], task, max_steps)
            print(f"seed {seed} {task} {variant}: {diags[variant]}", flush=True)
    return runs, diags


def short_run(recipe: Recipe, tasks: list[str], max_steps: int | None) -> dict:
    """The issue's check: 240 videos (seed 11), 8 epochs, ASRN with the recipe; beat "every class" and prevalence."""
    data = split(generate_videos(240, seed=11))
    stats = input_statistics(s.video for s in data["train"])
    out = {}
    for task in tasks:
        _, records = train_variant(data, task, "asrn", 11, dataclasses.replace(recipe, epochs=8), stats, max_steps)
        for group, r in records.items():
            base = trivial(data, group)
            out[group] = {"test_f1_macro": r["f1_macro"], "test_f1_macro_val_thr": r["f1_macro_val_thr"],
                          "every_class_f1_macro": base["f1_macro"], "test_map": r["map"],
                          "prevalence_map": base["map"], "best_epoch": r["best_epoch"], "seconds": r["seconds"]}
            print(f"short run {task}/{group}: {out[group]}", flush=True)
    return out


def cell(summary: dict, key: str) -> str:
    return f"{summary[key]['mean']:.3f} ± {summary[key]['sd']:.3f}"


def shots_verdict(runs: dict, num_seeds: int) -> list[str]:
    """The paired difference over seeds of ASRN with real shots (boundaries="cuts") and with the paper's
    unsupervised boundaries: mean ± sd of the test mAP difference, and whether it exceeds twice its standard error."""
    if not all(form in runs for form in ASRN_FORMS):
        return []
    diffs = np.array([runs["asrn"][i]["map"] - runs["asrn-unsupervised"][i]["map"] for i in range(num_seeds)])
    sd = float(diffs.std(ddof=1)) if num_seeds > 1 else float("nan")
    stderr = sd / np.sqrt(num_seeds)
    if num_seeds < 2:
        verdict = "one seed: no paired test"
    elif abs(diffs.mean()) > 2 * stderr:
        verdict = "real shots " + ("raise" if diffs.mean() > 0 else "lower") + " ASRN's test mAP (|mean| > 2 s.e.)"
    else:
        verdict = "no measurable change from real shots (|mean| <= 2 s.e.)"
    return ["", f"Real shots against the paper's unsupervised boundaries, paired over seeds: test mAP difference "
                f"{diffs.mean():+.3f} ± {sd:.3f} (per seed {', '.join(f'{d:+.3f}' for d in diffs)}): {verdict}."]


def markdown(result: dict) -> str:
    s, mach = result["settings"], result["machine"]
    r = s["recipe"]
    lines = [
        f"# Ablation on the SRIV-like synthetic data ({mach['date']})", "",
        f"`{result['command']}`", "",
        f"{s['num_videos']} videos per seed (70/15/15 train/val/test), seeds {s['seeds']}, trained on task(s) "
        f"{', '.join(s['tasks'])} (`all`: one 16-class model per variant and seed, scored per group as Tables 2 "
        "and 3); every variant on the same "
        f"data with recipe `{r['name']}` ({r['optimizer']}, lr {r['lr']}, weight decay {r['weight_decay']}, "
        f"{r['schedule']} schedule, batch {r['batch_size']}, dropout {r['dropout']}, hidden {r['hidden']}, up to "
        f"{r['epochs']} epochs, patience {r['patience']}, sequence former's ties "
        f"{'at random each epoch' if r.get('random_steps') else 'to the middle step'}), window {s['window']}, "
        f"max steps {s['max_steps']}; "
        "early stopping and model selection on val mAP; test F1/Acc/Subacc at threshold 0.5 as the paper, mAP "
        "(`metrics.compute_metrics`: scikit-learn's average precision, macro over classes with positives) and "
        "F1 ma at per-class thresholds chosen on val (`metrics.choose_thresholds`; F1 ma val-thr). "
        "Mean ± sd over seeds.", "",
        f"Machine: {mach['cpu_model']}, {mach['nproc']} cores, torch threads {mach['torch_threads']}, load average "
        f"at start {mach['load_average_at_start']}, torch {mach['torch']}; wall {result['wall_seconds']:.0f} s.", "",
        "Generator parameters: see `settings.generator` in ablation.json (also written to features.json).", ""]
    for task, title in (("sub", "Table 2 (Sub-Relation)"), ("obj", "Table 3 (Obj-Relation)")):
        if task not in result["tasks"]:
            continue
        t = result["tasks"][task]
        lines += [f"## {title}", "", "| Methods | " + " | ".join(HEADERS) + " | mAP | F1 ma val-thr | best epoch |",
                  "|---|" + "---|" * (len(HEADERS) + 3)]
        for row, summary in t["summary"].items():
            epoch = f"{summary['best_epoch']['mean']:.1f}" if "best_epoch" in summary else "-"
            lines.append(f"| {ROW_NAMES[row]} | " + " | ".join(cell(summary, k) for k in COLUMNS) + f" | {epoch} |")
        lines += ["", "Per seed, test mAP and ASRN's lead (ASRN − variant; positive: ASRN better):", "",
                  "| seed | " + " | ".join(ROW_NAMES[v] for v in t["runs"] if v != "all-positive") + " |",
                  "|---|" + "---|" * (len(t["runs"]) - 1)]
        for i, seed in enumerate(s["seeds"]):
            asrn_map = t["runs"]["asrn"][i]["map"]
            cells = []
            for v in (v for v in t["runs"] if v != "all-positive"):
                value = t["runs"][v][i]["map"]
                cells.append(f"{value:.3f}" + ("" if v == "asrn" else f" ({asrn_map - value:+.3f})"))
            lines.append(f"| {seed} | " + " | ".join(cells) + " |")
        others = [v for v in t["runs"] if v not in (*ASRN_FORMS, "all-positive")]
        if "asrn" in t["runs"] and others:
            leads = np.array([[t["runs"]["asrn"][i]["map"] - t["runs"][v][i]["map"] for v in others]
                              for i in range(len(s["seeds"]))])  # (seeds, variants)
            verdict = "has" if (leads > 0).all() else "does NOT have"
            lines += ["", f"ASRN {verdict} the best test mAP in every seed against every other variant "
                          f"(smallest lead {leads.min():+.3f}, against {others[int(leads.min(0).argmin())]})."]
        lines += shots_verdict(t["runs"], len(s["seeds"]))
        lines += ["", "Diagnostics on test (mean over seeds):", "",
                  "| variant | attention on cue-event steps | their share of kept steps | boundary firing rate | "
                  "boundary precision (chance) | boundary recall (chance) |", "|---|---|---|---|---|---|"]
        for v, ds in t["diagnostics"].items():
            avg = {k: float(np.mean([d[k] for d in ds if d[k] is not None] or [np.nan])) for k in ds[0]}
            lines.append(f"| {ROW_NAMES[v]} | {avg['attention_on_events']:.3f} | "
                         f"{avg['event_share_of_kept_steps']:.3f} | {avg['boundary_firing_rate']:.3f} | "
                         f"{avg['boundary_precision']:.3f} ({avg['chance_precision']:.3f}) | "
                         f"{avg['boundary_recall']:.3f} ({avg['chance_recall']:.3f}) |")
        for v, ds in t["diagnostics"].items():
            precision = np.mean([d["boundary_precision"] or 0.0 for d in ds])
            chance = np.mean([d["chance_precision"] for d in ds])
            state = "at chance" if precision < chance + 0.05 else "above chance"
            lines.append(f"\n{ROW_NAMES[v]}: the BDLSTM boundaries are {state} (precision {precision:.3f}, a random "
                         f"detector at the same rate {chance:.3f}).")
        lines.append("")
    if result.get("short_run"):
        lines += ["## Short run (240 videos, seed 11, 8 epochs, ASRN)", "",
                  "| task | test F1 ma | test F1 ma val-thr | every class F1 ma | test mAP | prevalence mAP |",
                  "|---|---|---|---|---|---|"]
        for task, r in result["short_run"].items():
            lines.append(f"| {task} | {r['test_f1_macro']:.3f} | {r['test_f1_macro_val_thr']:.3f} | "
                         f"{r['every_class_f1_macro']:.3f} | {r['test_map']:.3f} | {r['prevalence_map']:.3f} |")
        for task, r in result["short_run"].items():
            f1 = max(r["test_f1_macro"], r["test_f1_macro_val_thr"]) > r["every_class_f1_macro"]
            lines.append(f"\n{task}: F1 macro {'beats' if f1 else 'does NOT beat'} predicting every class; mAP "
                         f"{r['test_map'] - r['prevalence_map']:+.3f} over prevalence.")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--num-videos", type=int, default=2000)
    p.add_argument("--recipe", default="default", choices=sorted(RECIPES))
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a recipe field, e.g. --set lr=0.001 (recorded in the results)")
    p.add_argument("--max-steps", type=int, default=None, help="cap on kept steps per video (collate max_steps)")
    p.add_argument("--tasks", default="sub,obj")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--short-run", action="store_true")
    p.add_argument("--cue-amplitude", type=float, default=None,
                   help="the generator's CUE_AMPLITUDE (default: synth_features'; recorded in the results)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per job")
    p.add_argument("--jobs", type=int, default=1, help="(seed, task) jobs run in parallel processes")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ablation.json")
    p.add_argument("--render", type=Path, default=None, help="only rewrite the .md of this results JSON")
    args = p.parse_args(argv)
    if args.render is not None:
        result = json.loads(args.render.read_text())
        args.render.with_suffix(".md").write_text(markdown(result))
        return result
    torch.set_num_threads(args.threads)
    if args.cue_amplitude is not None:  # before the jobs fork
        synth_features.CUE_AMPLITUDE = args.cue_amplitude
    recipe = RECIPES[args.recipe]
    for item in args.set:
        recipe = set_field(recipe, item)
    seeds = [int(x) for x in args.seeds.split(",")]
    tasks, variants = args.tasks.split(","), args.variants.split(",")
    info = machine()
    started = time.perf_counter()
    jobs = [(args.num_videos, seed, task, variants, recipe, args.max_steps, args.threads)
            for seed in seeds for task in tasks]
    if args.jobs > 1:
        with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
            done = pool.starmap(run_job, jobs)
    else:
        done = [run_job(*job) for job in jobs]
    groups = [g for t in tasks for g in GROUPS[t]]
    runs = {g: {v: [] for v in (*variants, "all-positive")} for g in groups}
    diags = {g: {v: [] for v in variants if v in DIAGNOSED} for g in groups}
    for (_, _, task, *_), (job_runs, job_diags) in zip(jobs, done, strict=True):
        for group in GROUPS[task]:
            for v, r in job_runs[group].items():
                runs[group][v].append(r)
            for v, d in job_diags.items():
                diags[group][v].append(d)
    result = {
        "command": " ".join(["python", "benchmarks/ablation.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": info,
        "settings": {"seeds": seeds, "num_videos": args.num_videos, "tasks": tasks,
                     "recipe": dataclasses.asdict(recipe),
                     "window": WINDOW, "max_steps": args.max_steps, "selection": "best val mAP epoch",
                     "threshold": 0.5, "generator": generator_parameters()},
        "tasks": {g: {"summary": {v: summarise(rs) for v, rs in runs[g].items()}, "runs": runs[g],
                      "diagnostics": diags[g]} for g in groups},
    }
    if args.short_run:
        result["short_run"] = short_run(recipe, tasks, args.max_steps)
    result["wall_seconds"] = time.perf_counter() - started
    result["machine"]["load_average_at_end"] = machine()["load_average_at_start"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return result


if __name__ == "__main__":
    main()
