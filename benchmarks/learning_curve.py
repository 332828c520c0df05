"""Learning curve of the ablation (GitHub issue 24, point 5): ASRN's lead over every ablation, and how much of its
attention lands on the cue events, as the number of videos grows.

    nice python benchmarks/learning_curve.py [--sizes 600,1200,2000] [--seeds 0,1,2] [--jobs 2] [--set lr=0.001]

For each size, `benchmarks/ablation.py --tasks all` (every variant, both boundary forms of ASRN, the same seeds and
recipe) into benchmarks/results/learning_curve/n<size>.{json,md}; the size given as --main-size is the committed
ablation itself (benchmarks/results/ablation.{json,md}, with --short-run). Then learning_curve.md (per size and
boundary form: attention on events against their share of the kept steps, test mAP, and the lead over the best
ablation in each seed) and learning_curve.png.

The lead of a form in a seed is its test mAP less the best test mAP of the ablations (no-gla, no-mfa, lstm, tsn,
mean) in that seed, per table (sub: Table 2, obj: Table 3); "leads every variant by >= x in every seed" is its
minimum over the seeds >= x.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import ablation  # noqa: E402
from machine import machine  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
FORMS = {"asrn": "real shots (default)", "asrn-unsupervised": "unsupervised (paper)"}
ABLATIONS = ("no-gla", "no-mfa", "lstm", "tsn", "mean")
TABLES = {"sub": "Table 2 (sub)", "obj": "Table 3 (obj)"}


def size_results(path: Path) -> dict:
    """Per table and form: test mAP, lead over the best ablation (per seed), attention on events and its share."""
    tasks = json.loads(path.read_text())["tasks"]
    out = {}
    for group, task in tasks.items():
        runs, diags = task["runs"], task["diagnostics"]
        best_ablation = np.max([[r["map"] for r in runs[v]] for v in ABLATIONS if v in runs], axis=0)  # (seeds,)
        out[group] = {form: {"map": [r["map"] for r in runs[form]],
                             "lead": list(np.round(np.array([r["map"] for r in runs[form]]) - best_ablation, 4)),
                             "attention_on_events": [d["attention_on_events"] for d in diags[form]],
                             "event_share": [d["event_share_of_kept_steps"] for d in diags[form]]}
                      for form in FORMS if form in runs}
    return out


def markdown(curve: dict) -> str:
    lines = [f"# Learning curve of the ablation ({curve['machine']['date']})", "",
             f"`{curve['command']}`", "",
             "Per size, `benchmarks/ablation.py --tasks all` with every variant on the same seeds "
             f"({', '.join(map(str, curve['seeds']))}) and recipe; the files per size are beside this one. "
             "Lead: the form's test mAP less the best ablation's (no-gla, no-mfa, lstm, tsn, mean) in the same seed, "
             "per seed. Attention: the temporal attention's mass on the kept steps inside cue events (test), against "
             "those steps' share of the kept steps (what uniform weights give).", "",
             f"Machine: {curve['machine']['cpu_model']}, {curve['machine']['nproc']} cores, load average at start "
             f"{curve['machine']['load_average_at_start']}; wall {curve['wall_seconds']:.0f} s.", "",
             "| videos | boundaries | attention on events (share) | " + " | ".join(
                 f"{t} mAP | {t} lead per seed (min)" for t in TABLES.values()) + " |",
             "|---|---|---|" + "---|---|" * len(TABLES)]
    for size, result in curve["sizes"].items():
        for form, name in FORMS.items():
            if form not in result["sub"]:
                continue
            r = result["sub"][form]
            cells = [size, name, f"{np.mean(r['attention_on_events']):.2f} ({np.mean(r['event_share']):.2f})"]
            for group in TABLES:
                g = result[group][form]
                cells += [f"{np.mean(g['map']):.3f}",
                          f"{' '.join(f'{x:+.3f}' for x in g['lead'])} ({min(g['lead']):+.3f})"]
            lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines) + "\n"


def plot(curve: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [int(s) for s in curve["sizes"]]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for form, name in FORMS.items():
        style = "-o" if form == "asrn" else "--s"
        for ax, group in zip(axes[:2], TABLES, strict=True):
            leads = np.array([curve["sizes"][str(s)][group][form]["lead"] for s in sizes])  # (sizes, seeds)
            ax.plot(sizes, leads.min(1), style, label=f"{name}: worst seed")
            ax.fill_between(sizes, leads.min(1), leads.max(1), alpha=0.15)
        att = np.array([curve["sizes"][str(s)]["sub"][form]["attention_on_events"] for s in sizes])
        axes[2].plot(sizes, att.mean(1), style, label=name)
    share = np.mean([np.mean(curve["sizes"][str(s)]["sub"]["asrn"]["event_share"]) for s in sizes])
    axes[2].axhline(share, color="grey", lw=1, ls=":", label="uniform (event share)")
    for ax, group in zip(axes[:2], TABLES, strict=True):
        ax.axhline(0.05, color="grey", lw=1, ls=":", label="target +0.05")
        ax.axhline(0.0, color="black", lw=0.5)
        ax.set(title=f"{TABLES[group]}: ASRN mAP - best ablation", xlabel="videos")
    axes[2].set(title="attention on cue events (test)", xlabel="videos", ylim=(0, 1))
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="600,1200,2000")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    p.add_argument("--main-size", type=int, default=2000, help="this size's run is the committed ablation")
    p.add_argument("--out-dir", type=Path, default=RESULTS / "learning_curve")
    args = p.parse_args()
    started, info = time.perf_counter(), machine()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for size in (int(s) for s in args.sizes.split(",")):
        main_run = size == args.main_size
        out = RESULTS / "ablation.json" if main_run else args.out_dir / f"n{size}.json"
        ablation.main(["--num-videos", str(size), "--seeds", args.seeds, "--tasks", "all", "--jobs", str(args.jobs),
                       "--out", str(out.relative_to(ROOT)), *(["--short-run"] if main_run else []),
                       *[x for item in args.set for x in ("--set", item)]])
        sizes[str(size)] = size_results(out)
    curve = {"command": " ".join(["python", "benchmarks/learning_curve.py", *sys.argv[1:]]), "machine": info,
             "seeds": [int(s) for s in args.seeds.split(",")], "sizes": sizes,
             "wall_seconds": time.perf_counter() - started}
    (args.out_dir / "learning_curve.json").write_text(json.dumps(curve, indent=1) + "\n")
    (args.out_dir / "learning_curve.md").write_text(markdown(curve))
    plot(curve, args.out_dir / "learning_curve.png")
    print(markdown(curve))


if __name__ == "__main__":
    main()
