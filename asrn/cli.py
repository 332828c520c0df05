"""The `asrn` command: parses flags into each command's config dataclass and calls the library.

`jobs/*.py` reuse `main` so that `ray job submit -- python -m jobs.train ...` takes the same flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from asrn.errors import AsrnError
from asrn.labels import TASKS
from asrn.loop import RECIPES
from asrn.model import VARIANTS


def _config_from_args(config_cls, args: argparse.Namespace):
    """Build a config dataclass from the parsed flags that share its field names."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    return config_cls(**{k: v for k, v in vars(args).items() if k in names and v is not None})


def _add_address(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=None,
                   help="Ray cluster to join (e.g. auto, ray://host:10001); default: start a local one")


def _add_synth_arguments(sub) -> None:
    synth = sub.add_parser("synth", help="make synthetic data").add_subparsers(dest="what", required=True)
    videos = synth.add_parser("videos", help="mp4 files + boxes JSON + manifest.csv")
    videos.add_argument("--out", type=Path, required=True)
    videos.add_argument("--num-videos", type=int, default=60)
    videos.add_argument("--seed", type=int, default=0)
    features = synth.add_parser("features", help="a feature store with planted signals")
    features.add_argument("--out", type=Path, required=True)
    features.add_argument("--num-videos", type=int, default=400)
    features.add_argument("--seed", type=int, default=0)


def _add_extract_arguments(sub) -> None:
    p = sub.add_parser("extract", help="videos -> per-frame features (Ray Data) -> Parquet")
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--preset", choices=["paper", "lite"], default=None)
    p.add_argument("--fps", type=float, default=None, help="sampling rate of time steps")
    p.add_argument("--num-workers", type=int, default=None, help="encoder actors")
    p.add_argument("--gpus-per-worker", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="videos per map_batches batch")
    p.add_argument("--weights-dir", type=Path, default=None, help="folder of pretrained weight files")
    p.add_argument("--overwrite", action="store_true", default=None, help="redo videos already in --out")
    _add_address(p)


def _add_mlflow_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", "--mlflow-uri", dest="mlflow_uri", default=None,
                   help="MLflow tracking URI, or none (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)")
    p.add_argument("--experiment-name", "--experiment", dest="experiment", default=None,
                   help="MLflow experiment (default: $MLFLOW_EXPERIMENT_NAME, else asrn)")


def _add_recipe_arguments(p: argparse.ArgumentParser) -> None:
    recipes = "; ".join(f"{r.name}: {r.optimizer} lr {r.lr:g}, weight decay {r.weight_decay:g}, batch {r.batch_size}, "
                        f"dropout {r.dropout:g}, hidden {r.hidden}, {r.epochs} epochs, patience {r.patience}"
                        for r in RECIPES.values())
    p.add_argument("--recipe", choices=list(RECIPES), default=None,
                   help=f"optimisation settings, each overridable by its own flag ({recipes}); default: default")
    p.add_argument("--variant", choices=list(VARIANTS), default=None, help="model or ablation (default: asrn)")
    p.add_argument("--hidden", type=int, default=None, help="model width (default: the recipe's)")


def _add_train_arguments(sub) -> None:
    p = sub.add_parser("train", help="train ASRN with Ray Train, recorded in MLflow")
    p.add_argument("--features", type=Path, required=True)
    p.add_argument("--task", choices=list(TASKS), required=True)
    p.add_argument("--out", type=Path, required=True)
    _add_recipe_arguments(p)
    p.add_argument("--num-workers", type=int, default=None, help="Ray Train workers (default: 1)")
    p.add_argument("--use-gpu", action="store_true", default=None)
    p.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    p.add_argument("--lr", type=float, default=None, help="default: the recipe's")
    p.add_argument("--weight-decay", type=float, default=None, help="default: the recipe's")
    p.add_argument("--batch-size", type=int, default=None, help="global batch (default: the recipe's)")
    p.add_argument("--dropout", type=float, default=None, help="default: the recipe's")
    p.add_argument("--patience", type=int, default=None,
                   help="epochs without val mAP gain before stopping (default: the recipe's)")
    p.add_argument("--checkpoint-every", type=int, default=None,
                   help="epochs between checkpoints besides improvements (default: 5)")
    p.add_argument("--seed", type=int, default=None, help="default: 0")
    p.add_argument("--storage", default=None, help="checkpoint storage (local folder or s3://, gs://)")
    p.add_argument("--resume", action="store_true", default=None, help="continue an interrupted run in --out")
    _add_mlflow_arguments(p)
    _add_address(p)


def _add_tune_arguments(sub) -> None:
    p = sub.add_parser("tune", help="sweep dropout, lr, batch size with Ray Tune + Optuna")
    p.add_argument("--features", type=Path, required=True)
    p.add_argument("--task", choices=list(TASKS), required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--num-samples", type=int, required=True)
    p.add_argument("--max-concurrent", type=int, default=None)
    p.add_argument("--space", type=Path, default=None, help="search space YAML (default tuning/spaces/default.yaml)")
    p.add_argument("--scheduler", choices=["asha", "none"], default=None)
    p.add_argument("--workers-per-trial", type=int, default=None)
    p.add_argument("--use-gpu", action="store_true", default=None)
    _add_recipe_arguments(p)
    p.add_argument("--epochs", type=int, default=None, help="epochs per trial at most (default: 30)")
    p.add_argument("--grace-period", type=int, default=None,
                   help="ASHA: epochs every trial runs before it can be stopped (default: 3)")
    p.add_argument("--reduction-factor", type=int, default=None,
                   help="ASHA: keep the top 1/reduction-factor at each rung (default: 3)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--storage", default=None)
    p.add_argument("--resume", action="store_true", default=None, help="continue an interrupted sweep in --out")
    _add_mlflow_arguments(p)
    _add_address(p)


def _add_predict_arguments(sub) -> None:
    p = sub.add_parser("predict", help="a video's relations, with attention.png")
    p.add_argument("videos", nargs="*", type=Path, help="video files (or use --manifest)")
    p.add_argument("--manifest", type=Path, default=None)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--boxes", type=Path, default=None, help="person/face tracks JSON for a single video")
    p.add_argument("--weights-dir", type=Path, default=None)
    p.add_argument("--threshold", type=float, default=None)
    _add_address(p)


def _add_demo_arguments(sub) -> None:
    p = sub.add_parser("demo", help="the whole pipeline on synthetic data, locally")
    p.add_argument("--out", type=Path, default=Path("demo-output"))
    p.add_argument("--num-videos", type=int, default=None)
    _add_address(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asrn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_synth_arguments(sub)
    _add_extract_arguments(sub)
    _add_train_arguments(sub)
    _add_tune_arguments(sub)
    _add_predict_arguments(sub)
    _add_demo_arguments(sub)
    return parser


def run(args: argparse.Namespace) -> None:
    if args.command == "synth" and args.what == "features":
        from asrn.synth_features import synthesize_feature_store
        out = synthesize_feature_store(args.out, num_videos=args.num_videos, seed=args.seed)
        print(f"feature store written to {out}")
    elif args.command == "synth" and args.what == "videos":
        from asrn.synth_videos import synthesize_videos
        manifest = synthesize_videos(args.out, num_videos=args.num_videos, seed=args.seed)
        print(f"videos written to {args.out}; manifest: {manifest}")
    elif args.command == "extract":
        from asrn.extract import ExtractConfig, extract_features
        extract_features(_config_from_args(ExtractConfig, args))
    elif args.command == "train":
        from asrn.train import TrainConfig, train
        train(_config_from_args(TrainConfig, args))
    elif args.command == "tune":
        from asrn.tune import TuneConfig, tune
        tune(_config_from_args(TuneConfig, args))
    elif args.command == "predict":
        from asrn.predict import PredictConfig, predict
        predict(_config_from_args(PredictConfig, args))
    elif args.command == "demo":
        from asrn.demo import DemoConfig, run_demo
        run_demo(_config_from_args(DemoConfig, args))


def _given(flag: str, argv: Sequence[str]) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def job_argv(command: str, argv: Sequence[str]) -> list[str]:
    """Arguments of `asrn <command>` run as a Ray job: the job's own flags, plus the cluster as defaults.

    Inside a job Ray sets RAY_ADDRESS to the cluster's GCS address (an http:// value is the job server's,
    not one to join); MLFLOW_TRACKING_URI names the cluster's tracking server for train and tune.
    """
    args = [command, *argv]
    address = os.environ.get("RAY_ADDRESS", "")
    if address and not address.startswith(("http://", "https://")) and not _given("--address", argv):
        args += ["--address", address]
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if command in ("train", "tune") and uri and not _given("--mlflow-uri", argv):
        args += ["--mlflow-uri", uri]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (AsrnError, OSError) as e:  # bad input (the message names it) or a file that cannot be read; the rest
        # is a bug, whose traceback is worth more than one line
        message = str(e).strip() or type(e).__name__
        print(f"asrn {args.command}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"asrn {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
