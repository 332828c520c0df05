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

from asrn.console import quiet_mlflow_console
from asrn.errors import AsrnError
from asrn.labels import TASKS
from asrn.locations import Location
from asrn.loop import RECIPES
from asrn.model import BOUNDARY_FORMS, VARIANTS


def _config_from_args(config_cls, args: argparse.Namespace):
    """Build a config dataclass from the parsed flags that share its field names; a flag left at None leaves the
    dataclass's own default (the recipe's value, for the recipe's fields)."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    return config_cls(**{k: v for k, v in vars(args).items() if k in names and v is not None})


class _HelpWithDefaults(argparse.HelpFormatter):
    """Ends an option's help with "(default: X)" when it has a default value and its help names no default.

    Flags whose default comes from elsewhere (the recipe, an environment variable) default to None and say so in
    their help; the defaults given here are the config dataclasses' own (tests/test_cli.py checks they agree).
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if not action.option_strings or "default:" in text or "%(default)" in text or default is None \
                or default is False or default is argparse.SUPPRESS:
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def _parser(sub, name: str, help: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=help, formatter_class=_HelpWithDefaults)


def _add_address(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=None,
                   help="Ray cluster to join (e.g. auto, ray://host:10001); default: start a local one")


def _add_verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", action="store_true", default=False,
                   help="show Ray's own console lines too (per report, checkpoint, dataset execution); without it "
                        "they stay in Ray's log files only")


def _add_synth_arguments(sub) -> None:
    synth = _parser(sub, "synth", "make synthetic data").add_subparsers(dest="what", required=True)
    videos = _parser(synth, "videos", "mp4 files + boxes JSON + manifest.csv")
    videos.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    videos.add_argument("--num-videos", type=int, default=60, metavar="N", help="videos to write")
    videos.add_argument("--seed", type=int, default=0, metavar="S", help="random seed")
    features = _parser(synth, "features", "a feature store with planted signals")
    features.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    features.add_argument("--num-videos", type=int, default=400, metavar="N", help="videos to write")
    features.add_argument("--seed", type=int, default=0, metavar="S", help="random seed")


def _add_extract_arguments(sub) -> None:
    p = _parser(sub, "extract", "videos -> per-frame features (Ray Data) -> Parquet")
    p.add_argument("--manifest", type=Location, required=True, metavar="CSV",
                   help="video_id,path,split,labels[,boxes] per video; a file or a URI (s3://, gs://, file://); "
                        "relative paths in it name files beside it")
    p.add_argument("--out", type=Location, required=True, metavar="DIR",
                   help="the feature store to write: a folder or a URI (s3://, gs://, file://)")
    p.add_argument("--preset", choices=["paper", "lite"], default="lite",
                   help="encoders: the paper's backbones, or small ones for CPUs")
    p.add_argument("--fps", type=float, default=2.0, help="sampling rate of time steps")
    p.add_argument("--num-workers", type=int, default=1, help="encoder actors")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="per encoder actor; 0: on the CPU")
    p.add_argument("--batch-size", type=int, default=4, help="videos per map_batches batch")
    p.add_argument("--weights-dir", type=Path, default=None,
                   help="folder of pretrained weight files; default: torchvision's cache, else random init")
    p.add_argument("--overwrite", action="store_true", default=False,
                   help="redo videos already in --out (a local --out only)")
    p.add_argument("--allow-random-init", action="store_true", default=False,
                   help="--preset paper: extract even when pretrained weights are missing (random-init encoders)")
    p.add_argument("--encode-kept-steps", action="store_true", default=False,
                   help="encode only the steps training's window-3 sequence former keeps (a third of the work); "
                        "the others stay zero; recorded in features.json")
    _add_verbose(p)
    _add_address(p)


def _add_mlflow_arguments(p: argparse.ArgumentParser, registers: str) -> None:
    p.add_argument("--tracking-uri", "--mlflow-uri", dest="mlflow_uri", default=None, metavar="URI",
                   help="MLflow tracking URI, or none (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)")
    p.add_argument("--experiment-name", "--experiment", dest="experiment", default=None, metavar="NAME",
                   help="MLflow experiment (default: $MLFLOW_EXPERIMENT_NAME, else asrn)")
    p.add_argument("--register-model", metavar="NAME", default=None,
                   help=f"register {registers} in the MLflow model registry as NAME (default: logged, not registered)")


def _add_run_arguments(p: argparse.ArgumentParser, seed: str, storage: str, resume: str, registers: str) -> None:
    """The flags `asrn train` and `asrn tune` share after their own: seed, storage, resume, MLflow, console, Ray."""
    p.add_argument("--seed", type=int, default=0, help=seed)
    p.add_argument("--storage", default=None, help=storage)
    p.add_argument("--resume", action="store_true", default=False, help=resume)
    _add_mlflow_arguments(p, registers)
    _add_verbose(p)
    _add_address(p)


def _recipe_default(field: str) -> str:
    """Help text naming each recipe's value of `field`."""
    values = ", ".join(f"{r.name} {getattr(r, field):g}" for r in RECIPES.values())
    return f"default: from --recipe: {values}"


def _add_recipe_arguments(p: argparse.ArgumentParser) -> None:
    recipes = "; ".join(f"{r.name} = {r.optimizer} lr {r.lr:g}, weight decay {r.weight_decay:g}, batch {r.batch_size}, "
                        f"dropout {r.dropout:g}, hidden {r.hidden}, {r.epochs} epochs, patience {r.patience}"
                        for r in RECIPES.values())
    p.add_argument("--recipe", choices=list(RECIPES), default="default",
                   help=f"optimisation settings, each overridable by its own flag ({recipes}); default: %(default)s")
    p.add_argument("--variant", choices=list(VARIANTS), default="asrn", help="model or ablation")
    p.add_argument("--hidden", type=int, default=None, help=f"model width ({_recipe_default('hidden')})")


def _add_inputs(p: argparse.ArgumentParser, out: str) -> None:
    p.add_argument("--features", type=Location, required=True, metavar="DIR",
                   help="feature store (asrn extract's --out): a folder or a URI (s3://, gs://, file://)")
    p.add_argument("--task", choices=list(TASKS), required=True, help="relation group(s) to predict")
    p.add_argument("--out", type=Location, required=True, metavar="DIR", help=f"{out}: a folder or a URI")


def _add_train_arguments(sub) -> None:
    p = _parser(sub, "train", "train ASRN with Ray Train, recorded in MLflow")
    _add_inputs(p, "run folder: best.pt, metrics.json, predictions.parquet, plots")
    _add_recipe_arguments(p)
    p.add_argument("--boundaries", choices=list(BOUNDARY_FORMS), default="cuts",
                   help="the BDLSTM's shot boundaries: cuts = the store's shot_start column where a video has it "
                        "(the paper's detector elsewhere); unsupervised = the paper's detector alone "
                        "(default: %(default)s)")
    p.add_argument("--num-workers", type=int, default=1, help="Ray Train workers")
    p.add_argument("--use-gpu", action="store_true", default=False, help="one GPU per worker")
    p.add_argument("--precision", choices=["fp32", "bf16"], default=None,
                   help="autocast of projections and attention; every LSTM stays float32 (default: bf16 with "
                        "--use-gpu, else fp32)")
    p.add_argument("--epochs", type=int, default=None, help=_recipe_default("epochs"))
    p.add_argument("--lr", type=float, default=None, help=_recipe_default("lr"))
    p.add_argument("--weight-decay", type=float, default=None, help=_recipe_default("weight_decay"))
    p.add_argument("--batch-size", type=int, default=None, help=f"global batch ({_recipe_default('batch_size')})")
    p.add_argument("--dropout", type=float, default=None, help=_recipe_default("dropout"))
    p.add_argument("--patience", type=int, default=None,
                   help=f"epochs without val mAP gain before stopping ({_recipe_default('patience')})")
    p.add_argument("--checkpoint-every", type=int, default=5,
                   help="epochs between checkpoints besides improvements and the last epoch")
    p.add_argument("--direct-read-max-mb", type=int, default=1024, metavar="MB",
                   help="each worker reads the store itself (pyarrow) when what it would hold resident (its train "
                        "shard and val, float32, padded) is at most this and fits its share of the node's memory; "
                        "else Ray Data streams it; 0: always Ray Data")
    _add_run_arguments(p, "random seed of the model and the shuffles",
                       "checkpoint storage (local folder or s3://, gs://); default: OUT/ray_results",
                       "continue an interrupted run in --out", "best.pt's MLflow model")


def _add_tune_arguments(sub) -> None:
    p = _parser(sub, "tune", "sweep dropout, lr, batch size with Ray Tune + Optuna")
    _add_inputs(p, "sweep folder: best_config.json, best.pt, trials.csv, sweep.png")
    p.add_argument("--num-samples", type=int, required=True, help="trials")
    p.add_argument("--max-concurrent", type=int, default=2, help="trials at once, at most (lowered to fit the cluster)")
    p.add_argument("--space", type=Location, default=None,
                   help="search space YAML, a file or a URI; default: tuning/spaces/default.yaml")
    p.add_argument("--scheduler", choices=["asha", "none"], default="asha",
                   help="asha stops weak trials early; none runs every trial to the end")
    p.add_argument("--workers-per-trial", type=int, default=1, help="Ray Train workers of each trial")
    p.add_argument("--use-gpu", action="store_true", default=False, help="one GPU per Train worker")
    _add_recipe_arguments(p)
    p.add_argument("--epochs", type=int, default=30, help="epochs per trial at most")
    p.add_argument("--grace-period", type=int, default=3,
                   help="ASHA: epochs every trial runs before it can be stopped")
    p.add_argument("--reduction-factor", type=int, default=3, help="ASHA: keep the top 1/reduction-factor at each rung")
    _add_run_arguments(p, "random seed of the search and the trials",
                       "Tune and Train storage (folder, s3://, gs://); default: OUT",
                       "continue an interrupted sweep in --out",
                       "the best trial's MLflow model (logged on the sweep's parent run)")


def _add_predict_arguments(sub) -> None:
    p = _parser(sub, "predict", "relation scores: of VIDEO files in this process (with attention.png), or of a whole "
                                "store or manifest as a Ray Data job (--features / --manifest)")
    p.add_argument("videos", nargs="*", type=Location, help="video files or URIs, scored in this process without Ray")
    p.add_argument("--manifest", type=Location, default=None, metavar="CSV",
                   help="videos to extract and score as one Ray Data job (asrn extract's manifest format, labels "
                        "optional; a file or URI); default: the VIDEO paths")
    p.add_argument("--features", type=Location, default=None, metavar="STORE",
                   help="score the videos of a feature store (asrn extract's --out) as a Ray Data job; a folder or "
                        "URI; default: VIDEO paths or --manifest")
    p.add_argument("--checkpoint", type=Location, default=None, metavar="CKPT",
                   help="best.pt of asrn train or asrn tune: a file or a URI (s3://, gs://, file://); default: "
                        "--model")
    p.add_argument("--model", default=None, metavar="URI",
                   help="with --features/--manifest: an MLflow model URI (models:/NAME/VERSION, runs:/ID/model) "
                        "instead of --checkpoint; its thresholds come from the logged model; default: --checkpoint")
    p.add_argument("--tracking-uri", "--mlflow-uri", dest="mlflow_uri", default=None, metavar="URI",
                   help="MLflow tracking URI for --model (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)")
    p.add_argument("--out", type=Location, required=True, metavar="DIR",
                   help="VIDEO: scores.json, attention.json, attention.png (a folder per video for several); "
                        "--features/--manifest: predictions.parquet, summary.json, errors/; a folder or URI")
    p.add_argument("--split", choices=["train", "val", "test", "all"], default="all",
                   help="with --features: score the videos of this split")
    p.add_argument("--num-workers", type=int, default=1, help="with --features/--manifest: scoring actors")
    p.add_argument("--batch-size", type=int, default=16, help="with --features/--manifest: videos per model call")
    p.add_argument("--use-gpu", action="store_true", default=False,
                   help="with --features/--manifest: one GPU per scoring actor")
    p.add_argument("--figures", action="store_true", default=False,
                   help="with --manifest: also each video's attention.png / attention.json (in DIR/figures/; "
                        "decodes and encodes each video once more)")
    p.add_argument("--boxes", type=Location, default=None, metavar="JSON",
                   help="person/face tracks of a single video (a file or URI); default: detect them as asrn "
                        "extract does")
    p.add_argument("--weights-dir", type=Path, default=None,
                   help="folder of pretrained weight files; default: torchvision's cache, else random init")
    p.add_argument("--threshold", type=float, default=None,
                   help="one decision threshold for every class; default: the per-class ones chosen on val")
    _add_verbose(p)
    _add_address(p)


def _add_demo_arguments(sub) -> None:
    p = _parser(sub, "demo", "the whole pipeline on synthetic data, locally")
    p.add_argument("--out", type=Path, default=Path("demo-output"), metavar="DIR", help="output folder")
    p.add_argument("--num-videos", type=int, default=48, metavar="N", help="synthetic videos")
    p.add_argument("--epochs", type=int, default=12, help="epochs of the ASRN training run")
    p.add_argument("--sweep-samples", type=int, default=3, help="trials of the sweep")
    p.add_argument("--sweep-epochs", type=int, default=4, help="epochs per trial at most")
    _add_address(p)


def _add_weights_arguments(sub) -> None:
    weights = sub.add_parser("weights", help="pretrained encoder weights").add_subparsers(dest="what", required=True)
    fetch = _parser(weights, "fetch", "download the torchvision weights a preset's encoders need")
    fetch.add_argument("--preset", choices=["paper", "lite"], default="paper")
    fetch.add_argument("--dir", type=Path, default=None, metavar="DIR",
                       help="where to put them (default: torchvision's cache, $TORCH_HOME/hub/checkpoints, where "
                            "extract and predict look; pass another folder to them as --weights-dir)")
    fetch.add_argument("--detector", action="store_true", default=False,
                       help="also Faster R-CNN's (person detection)")
    fetch.add_argument("--mirror", default=None, metavar="URL",
                       help="base URL serving torchvision's weight files by name (default: download.pytorch.org)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asrn", description=__doc__.splitlines()[0],
                                     formatter_class=_HelpWithDefaults)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_synth_arguments(sub)
    _add_extract_arguments(sub)
    _add_train_arguments(sub)
    _add_tune_arguments(sub)
    _add_predict_arguments(sub)
    _add_demo_arguments(sub)
    _add_weights_arguments(sub)
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
        from asrn.train import TrainConfig, train, with_run_values
        flags = with_run_values(vars(args), given_flags(args.argv))
        train(_config_from_args(TrainConfig, argparse.Namespace(**flags)))
    elif args.command == "tune":
        from asrn.tune import TuneConfig, tune
        tune(_config_from_args(TuneConfig, args))
    elif args.command == "predict" and args.videos:
        from asrn.predict import PredictConfig, predict
        from asrn.scoring import check_route
        check_route(args.videos, given_flags(args.argv), args.checkpoint)
        predict(_config_from_args(PredictConfig, args))
    elif args.command == "predict":
        from asrn.scoring import ScoreConfig, score
        score(_config_from_args(ScoreConfig, args))
    elif args.command == "weights" and args.what == "fetch":
        from asrn.encoders import fetch_weights
        paths = fetch_weights(args.preset, args.dir, detector=args.detector, mirror=args.mirror)
        print(f"weights for preset {args.preset}: {', '.join(map(str, paths)) or 'none to download'}")
    elif args.command == "demo":
        from asrn.demo import DemoConfig, run_demo
        run_demo(_config_from_args(DemoConfig, args))


def _given(flags: Sequence[str], argv: Sequence[str]) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in argv for flag in flags)


def job_argv(command: str, argv: Sequence[str]) -> list[str]:
    """Arguments of `asrn <command>` run as a Ray job: the job's own flags, plus the cluster as defaults.

    Inside a job Ray sets RAY_ADDRESS to the cluster's GCS address (an http:// value is the job server's,
    not one to join); MLFLOW_TRACKING_URI names the cluster's tracking server for train, tune and predict (--model).
    """
    args = [command, *argv]
    address = os.environ.get("RAY_ADDRESS", "")
    if address and not address.startswith(("http://", "https://")) and not _given(["--address"], argv):
        args += ["--address", address]
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if command in ("train", "tune", "predict") and uri and not _given(["--tracking-uri", "--mlflow-uri"], argv):
        args += ["--tracking-uri", uri]
    return args


def given_flags(argv: Sequence[str]) -> set[str]:
    """The dests of the long flags named on a command line (`--lr 0.1`, `--lr=0.1`)."""
    return {token[2:].split("=", 1)[0].replace("-", "_") for token in argv if token.startswith("--")}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    quiet_mlflow_console(not getattr(args, "verbose", False))
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
