"""Throughput of scoring a feature store (`asrn predict --features`): 1 and 2 scoring actors against the plain
in-process loop.

    python benchmarks/score.py [--num-videos 400] [--rounds 3] [--order loop,actors_1,actors_2] [--batch-size 16]
                               [--hidden 64] [--ray-cpus 4] [--out benchmarks/results/score.json]

On a synthetic store (asrn synth features, --num-videos videos) and a best.pt of a randomly initialised ASRN of
width --hidden with the store's input statistics (scores are not judged here, only speed), in videos/s:
    loop       asrn.train.predict_scores over FeatureStore.iter_videos of every split, in this process (what
               `asrn train` does for val and test), torch's default threads;
    actors_<n> asrn.scoring.score on the same store, n scoring actors, into a fresh --out each round, on one local
               Ray started once with --ray-cpus logical CPUs (n actors hold n, a read task 1: scoring lowers
               --num-workers to what fits, asrn.scoring.fit_scorers); the first round of each side is timed too:
               Ray Data planning and actor start-up are part of a job's cost.
Sides run in interleaved rounds (loop, actors_1, actors_2, loop, ...) so that load from other work on the shared
machine falls on every side alike; the 1-minute load average is recorded before and after each run, with the
machine (benchmarks/machine.py). Results: median and best over the rounds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import load, machine, spread, write_results  # noqa: E402

from asrn.checkpoint import load_checkpoint, write_checkpoint  # noqa: E402
from asrn.model import ASRN, ModelConfig  # noqa: E402
from asrn.ray_session import ray_session  # noqa: E402
from asrn.scoring import ScoreConfig, score  # noqa: E402
from asrn.store import FeatureStore, feature_statistics  # noqa: E402
from asrn.synth_features import synthesize_feature_store  # noqa: E402
from asrn.train import predict_scores  # noqa: E402


def make_inputs(root: Path, num_videos: int, hidden: int) -> tuple[Path, Path]:
    """A synthetic store and a best.pt for it."""
    store = synthesize_feature_store(root / "features", num_videos=num_videos, seed=0)
    info = FeatureStore(store).info
    torch.manual_seed(0)
    config = ModelConfig(dims=info.dims, num_classes=8, hidden=hidden)
    model = ASRN(config)
    model.set_input_stats(feature_statistics(store, "train"))
    checkpoint = write_checkpoint(root / "best.pt", model.state_dict(), config, {"task": "sub"}, "sub", info, 1, {})
    return store, checkpoint


def run_loop(store: Path, checkpoint: Path, batch_size: int) -> int:
    model, saved = load_checkpoint(checkpoint)
    done = 0
    for videos in FeatureStore(store).iter_videos(["train", "val", "test"]):
        done += len(predict_scores(model, videos, saved["task"], batch_size))
    return done


def run_actors(store: Path, checkpoint: Path, out: Path, workers: int, batch_size: int) -> int:
    result = score(ScoreConfig(out=out, features=store, checkpoint=checkpoint, num_workers=workers,
                               batch_size=batch_size))
    return result["scored_now"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-videos", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--order", default="loop,actors_1,actors_2")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--ray-cpus", type=int, default=4, help="logical CPUs of the local Ray")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "score.json")
    args = parser.parse_args()
    sides = args.order.split(",")
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory() as folder, ray_session(num_cpus=args.ray_cpus):
        root = Path(folder)
        store, checkpoint = make_inputs(root, args.num_videos, args.hidden)
        for r in range(args.rounds):
            for side in sides:
                before, start = load(), time.perf_counter()
                if side == "loop":
                    videos = run_loop(store, checkpoint, args.batch_size)
                else:
                    videos = run_actors(store, checkpoint, root / f"out-{side}-{r}", int(side.split("_")[1]),
                                        args.batch_size)
                seconds = time.perf_counter() - start
                runs[side].append({"round": r, "videos": videos, "seconds": round(seconds, 3),
                                   "videos_per_s": round(videos / seconds, 2), "load_before": before,
                                   "load_after": load()})
                print(f"{side} round {r}: {videos} videos in {seconds:.1f} s ({videos / seconds:.1f} videos/s)",
                      flush=True)
    result = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()},
              "sides": {side: {"videos_per_s": spread([x["videos_per_s"] for x in rs], max),
                               "seconds": spread([x["seconds"] for x in rs], min), "runs": rs}
                        for side, rs in runs.items()}}
    print(f"results in {write_results(args.out, result)}")


if __name__ == "__main__":
    main()
