"""Throughput of `asrn extract` (lite preset) against its ceiling, the encoders alone in one PyTorch process.

    python benchmarks/extract.py [--num-videos N] [--workers 1,2] [--out benchmarks/results/extract.json]

On N synthetic videos (asrn synth videos, 160x120, 6 s at 10 fps, boxes given) it measures, in sampled steps/s:
  pipeline_<w>_workers: the whole Ray Data job (decode, boxes, crops, flow, encoder actor pool of w actors,
                        Parquet writes), wall time of extract_features including actor start-up;
  prepare_alone:        the CPU stage (prepare_video) of the same videos, one after another in this process;
  encoders_alone:       the four lite encoders on the same prepared inputs in this process (torch's default
                        threads), batches of `--batch-size` videos: what the encoder stage could reach.
Ray runs locally with `--ray-cpus` logical CPUs (default 2x the cores, as the tests' cluster does) so that the
encoder actors (1 CPU each) leave room for the decoding tasks. The machine (cores, CPU model, torch threads,
load average) is recorded with the figures, since other work on the machine changes them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import machine  # noqa: E402

from asrn import store  # noqa: E402
from asrn.encoders import build_encoders  # noqa: E402
from asrn.extract import ExtractConfig, extract_features  # noqa: E402
from asrn.features import VideoSettings, encode_batch, prepare_video  # noqa: E402
from asrn.manifest import read_manifest  # noqa: E402
from asrn.synth_videos import synthesize_videos  # noqa: E402


def bench_pipeline(manifest: Path, work: Path, workers: int, batch_size: int) -> dict:
    out = work / f"feats-{workers}"
    start = time.perf_counter()
    summary = extract_features(ExtractConfig(manifest=manifest, out=out, preset="lite", fps=2.0,
                                             num_workers=workers, batch_size=batch_size, overwrite=True))
    seconds = time.perf_counter() - start
    steps = sum(v.num_steps for v in store.load_videos(out))
    return {"workers": workers, "videos": summary.succeeded, "failed": summary.failed, "steps": steps,
            "seconds": round(seconds, 2), "steps_per_s": round(steps / seconds, 2),
            "load_average_1min_after": os.getloadavg()[0]}


def bench_alone(manifest: Path, batch_size: int) -> tuple[dict, dict]:
    entries = read_manifest(manifest)
    settings = VideoSettings(preset="lite", fps=2.0)
    start = time.perf_counter()
    prepared = [prepare_video(e.path, e.boxes, settings) for e in entries]
    prepare_seconds = time.perf_counter() - start
    prepare_load = os.getloadavg()[0]
    steps = sum(p.num_steps for p in prepared)
    encoders = build_encoders("lite")
    encode_batch(prepared[:1], encoders)  # warm-up
    start = time.perf_counter()
    for i in range(0, len(prepared), batch_size):
        encode_batch(prepared[i:i + batch_size], encoders)
    encode_seconds = time.perf_counter() - start
    return ({"steps": steps, "seconds": round(prepare_seconds, 2), "steps_per_s": round(steps / prepare_seconds, 2),
             "load_average_1min_after": prepare_load},
            {"steps": steps, "seconds": round(encode_seconds, 2), "steps_per_s": round(steps / encode_seconds, 2),
             "torch_threads": torch.get_num_threads(), "load_average_1min_after": os.getloadavg()[0]})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-videos", type=int, default=16)
    parser.add_argument("--workers", default="1,2", help="encoder actor counts to run, comma-separated")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--ray-cpus", type=int, default=None, help="logical CPUs of the local Ray (default 2x cores)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "extract.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    import ray

    info = machine()
    with tempfile.TemporaryDirectory(prefix="asrn-bench-extract-") as tmp:
        work = Path(tmp)
        manifest = synthesize_videos(work / "videos", num_videos=args.num_videos, seed=0)
        ray_cpus = args.ray_cpus or 2 * (os.cpu_count() or 1)
        ray.init(num_cpus=ray_cpus, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        try:
            pipelines = [bench_pipeline(manifest, work, int(w), args.batch_size) for w in args.workers.split(",")]
        finally:
            ray.shutdown()
        prepare, encoders = bench_alone(manifest, args.batch_size)
    result = {
        "benchmark": "asrn extract, lite preset, fps 2, synthetic 160x120 videos of 6 s (boxes given)",
        "unit": "sampled steps per second (one step = one time step of all four modalities)",
        "num_videos": args.num_videos, "batch_size": args.batch_size, "ray_logical_cpus": ray_cpus,
        "machine": info,
        "pipeline": {f"{p['workers']}_workers": p for p in pipelines},
        "prepare_alone": prepare,
        "encoders_alone": encoders,
        "ratio_pipeline_to_encoders_alone": {f"{p['workers']}_workers": round(p["steps_per_s"]
                                                                              / encoders["steps_per_s"], 3)
                                             for p in pipelines},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
