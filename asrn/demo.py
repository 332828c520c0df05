"""`asrn demo`: the whole pipeline on synthetic data, on a local Ray cluster (or `--address`).

synthetic videos -> `asrn extract` (lite) -> `asrn train` for ASRN and each ablation variant (the default recipe,
as `asrn train` uses) -> a small `asrn tune` sweep -> tables in the layout of the paper's Tables 2-3 with test mAP
and F1 macro at val-chosen thresholds beside F1 at 0.5, and the commands to open MLflow and to run `asrn predict`.
Each model is trained once on task `all`; the Sub-Relation and Obj-Relation tables score its sub:* and obj:*
columns (predictions.parquet). The demo's data is far too small to rank the variants: benchmarks/ablation.py
does that on 2,000+ videos and several seeds. Re-running with the same --out reuses videos and features.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from asrn.errors import AsrnError
from asrn.extract import ExtractConfig, extract_features
from asrn.files import write_json, write_text
from asrn.labels import task_labels
from asrn.metrics import RANKING_TABLE_COLUMNS, choose_thresholds, format_table, group_metrics
from asrn.model import VARIANTS
from asrn.ray_session import ray_session
from asrn.synth_videos import synthesize_videos
from asrn.train import TrainConfig, train
from asrn.tune import TuneConfig, tune

METHOD_NAMES = {"tsn": "TSN (rgb + motion, mean)", "mean": "mean (all modalities)", "lstm": "LSTM",
                "no-gla": "ASRN (no GLA)", "no-mfa": "ASRN (no MFA)", "asrn": "ASRN"}  # the paper's row order


class DemoConfigError(AsrnError):
    """A flag of `asrn demo` out of range."""


@dataclass
class DemoConfig:
    """`asrn demo` flags and the settings of each stage (sized for 2 CPU cores)."""

    out: Path = Path("demo-output")
    num_videos: int = 120
    address: str | None = None
    seed: int = 0
    variants: tuple[str, ...] = ("tsn", "mean", "lstm", "no-gla", "no-mfa", "asrn")
    epochs: int = 20
    sweep_samples: int = 3
    sweep_epochs: int = 8

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise DemoConfigError(f"unknown variant(s) {unknown}: expected {', '.join(VARIANTS)}")
        if self.num_videos < 20:
            raise DemoConfigError(f"--num-videos must be >= 20 (splits worth scoring), got {self.num_videos}")


def _stage(number: int, total: int, text: str) -> float:
    print(f"\n=== [{number}/{total}] {text}", file=sys.stderr, flush=True)
    return time.monotonic()


def _done(start: float) -> None:
    print(f"    ... done in {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)


def _split_scores(run: Path, split: str, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) 0/1 targets and (N, C) scores of one split of a run's predictions.parquet."""
    table = pq.read_table(run / "predictions.parquet", filters=[("split", "=", split)])
    scores = np.stack([table.column(name).to_numpy() for name in names], axis=1)  # (N, C)
    targets = np.array([[name in row for name in names] for row in table.column("labels").to_pylist()], dtype=int)
    return targets, scores


def tables_from_predictions(runs: dict[str, Path]) -> dict[str, dict[str, dict]]:
    """{group: {method: test metrics}} per relation group, with `f1_macro_val_thr`: F1 macro at thresholds
    chosen on val."""
    names = list(task_labels("all"))
    tables: dict[str, dict[str, dict]] = {"sub": {}, "obj": {}}
    for variant, run in runs.items():
        thresholds = choose_thresholds(*_split_scores(run, "val", names))
        targets, scores = _split_scores(run, "test", names)
        for group in tables:
            metrics = group_metrics(targets, scores, names, group)
            metrics["f1_macro_val_thr"] = group_metrics(targets, scores, names, group, thresholds)["f1_macro"]
            tables[group][METHOD_NAMES[variant]] = metrics
    return tables


def _train_variants(config: DemoConfig, features: Path, tracking_uri: str, stage: int, total: int) -> dict[str, Path]:
    runs = {}
    for i, variant in enumerate(config.variants, 1):
        start = _stage(stage, total, f"train {variant} ({i}/{len(config.variants)}) on task all (Ray Train)")
        runs[variant] = train(TrainConfig(
            features=features, task="all", out=config.out / "runs" / variant, variant=variant, epochs=config.epochs,
            seed=config.seed, mlflow_uri=tracking_uri, experiment="asrn-demo", address=config.address)).out
        _done(start)
    return runs


def _write_tables(config: DemoConfig, runs: dict[str, Path], num_test: int) -> dict:
    tables = tables_from_predictions(runs)
    size = (f"synthetic demo data, {num_test} test videos: too few to rank the variants "
            "(see benchmarks/results/ablation.md)")
    text = "\n\n".join([
        format_table(f"Table 2 (layout): Sub-Relation classes, {size}", tables["sub"], columns=RANKING_TABLE_COLUMNS),
        format_table(f"Table 3 (layout): Obj-Relation classes, {size}", tables["obj"], columns=RANKING_TABLE_COLUMNS),
    ])
    write_text(config.out / "results.md", text + "\n")
    write_json(config.out / "results.json", tables)
    print("\n" + text + "\n")
    return tables


def run_demo(config: DemoConfig) -> dict:
    """Run every stage, print the tables and the follow-up commands; returns what was written where."""
    config.out = config.out.resolve()
    config.out.mkdir(parents=True, exist_ok=True)
    write_json(config.out / "demo_config.json", {k: str(v) if isinstance(v, Path) else v
                                                 for k, v in asdict(config).items()})
    tracking_uri, total, began = f"sqlite:///{config.out / 'mlflow.db'}", 5, time.monotonic()
    with ray_session(config.address):
        start = _stage(1, total, f"synthetic videos: {config.num_videos} mp4 files + boxes + manifest")
        manifest = config.out / "videos" / "manifest.csv"
        if not manifest.is_file():
            manifest = synthesize_videos(config.out / "videos", num_videos=config.num_videos, seed=config.seed)
        _done(start)
        start = _stage(2, total, "extract features (Ray Data, lite preset)")
        features = config.out / "features"
        summary = extract_features(ExtractConfig(manifest=manifest, out=features, preset="lite", num_workers=1,
                                                 address=config.address))
        _done(start)
        runs = _train_variants(config, features, tracking_uri, 3, total)
        start = _stage(4, total, f"sweep dropout / lr / batch size: {config.sweep_samples} trials "
                                 "(Ray Tune + Optuna + ASHA)")
        sweep = tune(TuneConfig(features=features, task="all", out=config.out / "sweep",
                                num_samples=config.sweep_samples, max_concurrent=1, epochs=config.sweep_epochs,
                                seed=config.seed, mlflow_uri=tracking_uri, experiment="asrn-demo",
                                address=config.address))
        _done(start)
    _stage(5, total, "results (test split)")
    num_test = len(pq.read_table(runs[config.variants[0]] / "predictions.parquet",
                                 filters=[("split", "=", "test")]))
    tables = _write_tables(config, runs, num_test)
    video = sorted((config.out / "videos" / "videos").glob("*.mp4"))[0]
    print(f"demo finished in {(time.monotonic() - began) / 60:.1f} min ({summary.succeeded + summary.skipped} "
          f"videos); outputs in {config.out}")
    print(f"  best sweep trial: {sweep.best.hyperparameters} val mAP {sweep.best.best_val_map:.4f}")
    print(f"  MLflow:  mlflow ui --backend-store-uri {tracking_uri}")
    boxes = config.out / "videos" / "boxes" / f"{video.stem}.json"  # cartoon people: no detector finds them
    print(f"  predict: asrn predict {video} --boxes {boxes} --checkpoint "
          f"{runs.get('asrn', next(iter(runs.values())))}/best.pt --out {config.out / 'predict'}")
    return {"out": config.out, "runs": runs, "sweep": sweep.out, "tables": tables, "tracking_uri": tracking_uri}
