"""`asrn demo`: the whole pipeline on synthetic data, on a local Ray cluster (or `--address`).

synthetic videos -> `asrn extract` (lite) -> `asrn train` for ASRN and each ablation variant -> a small
`asrn tune` sweep -> a table in the layout of the paper's Tables 2-3, and the commands to open MLflow and
to run `asrn predict` on one of the videos. Each model is trained once on task `all`; the Sub-Relation and
Obj-Relation tables score its sub:* and obj:* columns of the test split (predictions.parquet).
Re-running with the same --out reuses the videos and the extracted features (extraction resumes).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from asrn.labels import task_labels
from asrn.metrics import format_table, group_metrics
from asrn.model import VARIANTS

METHOD_NAMES = {"lstm": "LSTM", "mean": "TSN-style mean", "no-gla": "ASRN (no GLA)", "no-mfa": "ASRN (no MFA)",
                "asrn": "ASRN"}  # the paper's row names, in its row order


@dataclass
class DemoConfig:
    """`asrn demo` flags and the settings of each stage (sized for 2 CPU cores, under 15 minutes)."""

    out: Path = Path("demo-output")
    num_videos: int = 120
    address: str | None = None
    seed: int = 0
    variants: tuple[str, ...] = ("lstm", "mean", "no-gla", "no-mfa", "asrn")
    epochs: int = 25
    lr: float = 0.3  # the paper's 0.01 needs ~200 epochs; benchmarks/ablation.py measured larger rates on CPU budgets
    batch_size: int = 16
    dropout: float = 0.5
    hidden: int = 64
    patience: int = 15
    sweep_samples: int = 3
    sweep_epochs: int = 8

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise ValueError(f"unknown variant(s) {unknown}: expected {', '.join(VARIANTS)}")
        if self.num_videos < 20:
            raise ValueError(f"--num-videos must be >= 20 (splits worth scoring), got {self.num_videos}")


def _stage(number: int, total: int, text: str) -> float:
    print(f"\n=== [{number}/{total}] {text}", file=sys.stderr, flush=True)
    return time.monotonic()


def _done(start: float) -> None:
    print(f"    ... done in {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)


def tables_from_predictions(runs: dict[str, Path], split: str = "test") -> dict[str, dict[str, dict]]:
    """{group: {method: metrics}} from each run's predictions.parquet (task `all`), per relation group."""
    names = task_labels("all")
    tables: dict[str, dict[str, dict]] = {"sub": {}, "obj": {}}
    for variant, run in runs.items():
        table = pq.read_table(run / "predictions.parquet", filters=[("split", "=", split)])
        scores = np.stack([table.column(name).to_numpy() for name in names], axis=1)  # (N, 16)
        labels = table.column("labels").to_pylist()
        targets = np.array([[name in row for name in names] for row in labels], dtype=int)  # (N, 16)
        for group in tables:
            tables[group][METHOD_NAMES[variant]] = group_metrics(targets, scores, names, group)
    return tables


def run_demo(config: DemoConfig) -> dict:
    """Run every stage, print the tables and the follow-up commands; returns what was written where."""
    import ray

    from asrn.extract import ExtractConfig, extract_features
    from asrn.synth_videos import synthesize_videos
    from asrn.train import TrainConfig, train
    from asrn.tune import TuneConfig, tune

    out = config.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo_config.json").write_text(json.dumps({k: str(v) if isinstance(v, Path) else v
                                                      for k, v in asdict(config).items()}, indent=2))
    tracking_uri = f"sqlite:///{out / 'mlflow.db'}"
    total = 5
    began = time.monotonic()
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address=config.address)  # with the dashboard: Train V2 cleans up stopped trials through it
    try:
        start = _stage(1, total, f"synthetic videos: {config.num_videos} mp4 files + boxes + manifest")
        manifest = out / "videos" / "manifest.csv"
        if not manifest.is_file():
            manifest = synthesize_videos(out / "videos", num_videos=config.num_videos, seed=config.seed)
        _done(start)

        start = _stage(2, total, "extract features (Ray Data, lite preset)")
        features = out / "features"
        extract_features(ExtractConfig(manifest=manifest, out=features, preset="lite", num_workers=1,
                                       address=config.address))
        _done(start)

        runs: dict[str, Path] = {}
        for i, variant in enumerate(config.variants, 1):
            start = _stage(3, total, f"train {variant} ({i}/{len(config.variants)}) on task all (Ray Train)")
            result = train(TrainConfig(
                features=features, task="all", out=out / "runs" / variant, variant=variant, num_workers=1,
                epochs=config.epochs, lr=config.lr, batch_size=config.batch_size, dropout=config.dropout,
                hidden=config.hidden, patience=config.patience, seed=config.seed, mlflow_uri=tracking_uri,
                experiment="asrn-demo", address=config.address))
            runs[variant] = result.out
            _done(start)

        start = _stage(4, total, f"sweep dropout / lr / batch size: {config.sweep_samples} trials "
                                 f"(Ray Tune + Optuna + ASHA)")
        sweep = tune(TuneConfig(
            features=features, task="all", out=out / "sweep", num_samples=config.sweep_samples, max_concurrent=1,
            epochs=config.sweep_epochs, hidden=config.hidden, patience=config.patience, seed=config.seed,
            mlflow_uri=tracking_uri, experiment="asrn-demo-sweep", address=config.address))
        _done(start)

        start = _stage(5, total, "results (test split)")
        tables = tables_from_predictions(runs)
        text = "\n\n".join([
            format_table("Table 2 (layout): Sub-Relation classes, synthetic demo data", tables["sub"]),
            format_table("Table 3 (layout): Obj-Relation classes, synthetic demo data", tables["obj"]),
        ])
        (out / "results.md").write_text(text + "\n")
        (out / "results.json").write_text(json.dumps(tables, indent=2))
        print("\n" + text + "\n")
        video = sorted((out / "videos" / "videos").glob("*.mp4"))[0]
        print(f"demo finished in {(time.monotonic() - began) / 60:.1f} min; outputs in {out}")
        print(f"  best sweep trial: {sweep.best.hyperparameters} val F1 macro {sweep.best.best_val_f1_macro:.4f}")
        print(f"  MLflow:  mlflow ui --backend-store-uri {tracking_uri}")
        print(f"  predict: asrn predict {video} --checkpoint {runs.get('asrn', next(iter(runs.values())))}/best.pt "
              f"--out {out / 'predict'}")
        return {"out": out, "runs": runs, "sweep": sweep.out, "tables": tables, "tracking_uri": tracking_uri}
    finally:
        if started_ray:
            ray.shutdown()
