"""`asrn demo`: every stage a user will use, on synthetic videos, in one Ray session (local, or `--address`).

synthetic videos -> `asrn extract` (Ray Data, lite) -> `asrn train` of ASRN (Ray Train) -> a small `asrn tune` sweep
(Ray Tune + Optuna + ASHA; MLflow parent and child runs) -> `asrn predict` on one test video (attention.png and
scores.json, its top relations beside its true labels) -> how ASRN compares with its ablations, from the committed
results of benchmarks/ablation.py (2,000 videos, 3 seeds): the demo's few test videos cannot rank models, so it ranks
none -> what to do next. Re-running with the same --out reuses the videos and the features.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from asrn.errors import AsrnError
from asrn.extract import ExtractConfig, extract_features
from asrn.files import write_json
from asrn.manifest import read_manifest
from asrn.predict import PredictConfig, VideoPrediction, predict
from asrn.ray_session import ray_session
from asrn.synth_videos import synthesize_videos
from asrn.train import TrainConfig, TrainResult, train
from asrn.tune import TuneConfig, TuneResult, tune

ABLATION_RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "ablation.md"
TOTAL_STAGES = 7


class DemoConfigError(AsrnError):
    """A flag of `asrn demo` out of range."""


@dataclass
class DemoConfig:
    """`asrn demo` flags and the size of each stage (sized for 5 minutes on 2 CPU cores)."""

    out: Path = Path("demo-output")
    num_videos: int = 48
    address: str | None = None
    seed: int = 0
    epochs: int = 12
    sweep_samples: int = 3
    sweep_epochs: int = 4

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.num_videos < 20:
            raise DemoConfigError(f"--num-videos must be >= 20 (splits worth scoring), got {self.num_videos}")
        for name in ("epochs", "sweep_samples", "sweep_epochs"):
            if getattr(self, name) < 1:
                raise DemoConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")


def _stage(number: int, text: str) -> float:
    print(f"\n=== [{number}/{TOTAL_STAGES}] {text}", file=sys.stderr, flush=True)
    return time.monotonic()


def _done(start: float) -> None:
    print(f"    ... done in {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)


def ablation_summary(path: Path = ABLATION_RESULTS) -> str:
    """The committed ablation's title, command and Table 2 (Sub-Relation), labelled as committed results."""
    if not path.is_file():
        return ("ASRN against its ablations: see benchmarks/results/ablation.md in the repository (committed results "
                "of benchmarks/ablation.py on 2,000 videos and 3 seeds).")
    lines = path.read_text().splitlines()
    table_start = next(i for i, line in enumerate(lines) if line.startswith("## Table 2"))
    table_end = next((i for i in range(table_start + 1, len(lines)) if lines[i].startswith(("## ", "Per seed"))),
                     len(lines))
    return "\n".join([
        f"ASRN against its ablations: committed results ({path.name}, not this run; the demo's test split is too "
        "small to rank models)", lines[2], "", *lines[table_start:table_end]]).rstrip()


def _train(config: DemoConfig, features: Path, tracking_uri: str) -> TrainResult:
    return train(TrainConfig(features=features, task="all", out=config.out / "train", epochs=config.epochs,
                             seed=config.seed, mlflow_uri=tracking_uri, experiment="asrn-demo",
                             address=config.address, resume=(config.out / "train" / "ray_run.json").is_file()))


def _sweep(config: DemoConfig, features: Path, tracking_uri: str) -> TuneResult:
    return tune(TuneConfig(features=features, task="all", out=config.out / "sweep", num_samples=config.sweep_samples,
                           max_concurrent=1, epochs=config.sweep_epochs, seed=config.seed, mlflow_uri=tracking_uri,
                           experiment="asrn-demo", address=config.address,
                           resume=(config.out / "sweep" / "tune_config.json").is_file()))


def _predict_one(config: DemoConfig, manifest: Path, checkpoint: Path) -> tuple[VideoPrediction, Path]:
    """`asrn predict` on the manifest's first test video, with its boxes (cartoon people: no detector finds them)."""
    entry = next(e for e in read_manifest(manifest) if e.split == "test")
    out = config.out / "predict"
    prediction = predict(PredictConfig(checkpoint=checkpoint, out=out, videos=[entry.path], boxes=entry.boxes))[0]
    prediction.true_labels = list(entry.labels)
    write_json(out / "scores.json", prediction.scores_json())  # with the true labels beside the scores
    return prediction, out


def _next_steps(config: DemoConfig, tracking_uri: str, predict_out: Path, manifest: Path) -> str:
    return "\n".join([
        "next:",
        f"  MLflow (the train run, and the sweep as a parent with one child per trial):\n"
        f"    mlflow ui --backend-store-uri {tracking_uri}",
        f"  the attention figure (keyframes under the temporal attention, paper Fig. 7):\n"
        f"    {predict_out / 'attention.png'}",
        f"  your own videos: a CSV like {manifest} (video_id,path,split,labels[,boxes]; labels such as "
        "sub:friendly|obj:peer), then\n    asrn extract --manifest your.csv --out features && "
        "asrn train --features features --task all --out run",
        "  on a cluster: cluster/README.md (ray_cluster.yaml, KubeRay, `ray job submit -- python -m jobs.train ...`)",
    ])


def run_demo(config: DemoConfig) -> dict:
    """Run every stage and print where its outputs are; returns them."""
    config.out = config.out.resolve()
    config.out.mkdir(parents=True, exist_ok=True)
    write_json(config.out / "demo_config.json", {k: str(v) if isinstance(v, Path) else v
                                                 for k, v in asdict(config).items()})
    tracking_uri, began = f"sqlite:///{config.out / 'mlflow.db'}", time.monotonic()
    with ray_session(config.address, dashboard=True):  # one Ray for every stage; the sweep needs the State API
        start = _stage(1, f"synthetic videos: {config.num_videos} mp4 files + boxes + manifest")
        manifest = config.out / "videos" / "manifest.csv"
        if not manifest.is_file():
            manifest = synthesize_videos(config.out / "videos", num_videos=config.num_videos, seed=config.seed)
        _done(start)
        start = _stage(2, "extract features (Ray Data, lite preset)")
        features = config.out / "features"
        extract_features(ExtractConfig(manifest=manifest, out=features, preset="lite", num_workers=1,
                                       address=config.address))
        _done(start)
        start = _stage(3, f"train ASRN, {config.epochs} epochs on task all (Ray Train)")
        trained = _train(config, features, tracking_uri)
        _done(start)
        start = _stage(4, f"sweep dropout / lr / batch size: {config.sweep_samples} trials (Ray Tune + Optuna + ASHA)")
        sweep = _sweep(config, features, tracking_uri)
        _done(start)
    start = _stage(5, "predict one test video (asrn predict)")
    prediction, predict_out = _predict_one(config, manifest, trained.checkpoint)
    _done(start)
    _stage(6, "ASRN against its ablations")
    print(ablation_summary() + "\n")
    _stage(7, "done")
    top = ", ".join(f"{name} {score:.2f}" for name, score in prediction.top())
    print(f"demo finished in {(time.monotonic() - began) / 60:.1f} min; outputs in {config.out}")
    print(f"  trained: {trained.checkpoint} (test mAP {trained.metrics['test']['map']:.3f} on "
          f"{config.num_videos} synthetic videos)")
    print(f"  sweep: best trial {sweep.best.trial_id} {sweep.best.hyperparameters}, val mAP "
          f"{sweep.best.best_val_map:.3f}; all trials in {config.out / 'sweep' / 'trials.csv'}")
    print(f"  predicted {Path(prediction.path).name}: top {top}\n    true labels: {', '.join(prediction.true_labels)}"
          f"\n    {predict_out / 'attention.png'}\n    {predict_out / 'scores.json'}")
    print(_next_steps(config, tracking_uri, predict_out, manifest))
    return {"train": trained, "sweep": sweep, "prediction": prediction, "predict_out": predict_out,
            "tracking_uri": tracking_uri}
