"""Throughput of `asrn extract` (lite preset) against its ceiling, the encoders alone in one PyTorch process.

    python benchmarks/extract.py [--num-videos 125] [--rounds 2] [--order encoders_1t,pipeline_1w,pipeline_2w]
                                 [--batch-size 4] [--out benchmarks/results/extract.json]

On N synthetic videos (asrn synth videos, 160x120, 6 s at 10 fps, boxes given: 12 steps each at fps 2, so the
default 125 videos are 1,500 steps), in sampled steps/s (one step = one time step of all four modalities).

Method (GitHub issue 14, point 4):
- Sides, run in interleaved rounds (encoders_1t, pipeline_1w, pipeline_2w, encoders_1t, ...) so that load from
  other work on the shared machine falls on every side alike; min / median (seconds) and best / median (steps/s)
  over the rounds.
    encoders_<t>t  the four lite encoders on the prepared inputs in this process, torch.set_num_threads(t), batches
                   of --batch-size videos (asrn.features.encode_batch, as an actor runs them);
    pipeline_<w>w  the whole Ray Data job (extract_features --overwrite: decode, boxes, crops, flow, w encoder
                   actors of 1 CPU and 1 torch thread each, Parquet writes) on one local Ray started once.
- Equal threads: pipeline_1w (one actor, one torch thread) is compared with encoders_1t (target >= 0.8x);
  pipeline_2w with pipeline_1w (target >= 1.6x; on 2 cores the CPU stage shares them, the ceiling is ~1.78x).
- Two spans, both reported: steady = steps after the first batch over the time from the first batch's end to the
  last's (encoders: each encode_batch call timed; pipeline: each actor batch's end, stamped in the actor, since
  Ray Data hands the driver an actor's small outputs merged, often only at the end);
  whole = encoders: build_encoders + every batch; pipeline: extract_features' wall time (actor start-up, Ray Data
  planning and the writes included, Ray itself already running).
- CPU time beside wall time: encoders: this thread's CPU time (time.thread_time; one torch thread, so all the CPU
  the encoding used); pipeline: the actors' thread CPU time per batch (the same measure), and this process with
  every descendant (raylet, workers, actors) read from /proc once a second (benchmarks/train.py's DescendantCpu),
  less what each process had used before the run (Ray is started once, its processes live across runs), with the
  busiest processes by name.
- The CPU stage alone (prepare_video of every video in this process, once, before the rounds) is recorded too; it
  also makes the encoders' inputs.
- The machine (cores, CPU model, torch) and the 1-minute load average before and after every run are recorded.
- Face encoders (GitHub issue 25, point 4), Ray-free sides for the same rounds: face_dlib (dlib's descriptor on
  5-point-aligned chips, the default) and face_deepid (the DeepID-style net on box crops, as before; a deepid.pth
  selects it): the CPU stage (prepare_video of every video, alignment or cropping included) then the face encoder
  on every present face, one torch thread; ms per step and per face. Only face sides: Ray is not started, e.g.
  `--order face_dlib,face_deepid --num-videos 4 --rounds 2`. The whole pipeline with each: pipeline_<W>w (dlib,
  the default) against pipeline_<W>w_deepid (a deepid.pth in --weights-dir), e.g. `--order
  pipeline_1w,pipeline_1w_deepid --num-videos 24 --rounds 3 --out benchmarks/results/extract_face_pipeline.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import load, machine, spread, write_results  # noqa: E402
from train import DescendantCpu  # noqa: E402

from asrn import extract as extract_module  # noqa: E402
from asrn import store  # noqa: E402
from asrn.encoders import DeepID, build_encoders  # noqa: E402
from asrn.extract import ExtractConfig, extract_features  # noqa: E402
from asrn.features import PreparedVideo, VideoSettings, encode_batch, prepare_video  # noqa: E402
from asrn.manifest import read_manifest  # noqa: E402
from asrn.synth_videos import synthesize_videos  # noqa: E402

SIDE = re.compile(r"^(?:encoders_(\d+)t|pipeline_(\d+)w(_deepid)?|face_(dlib|deepid))$")


class EncodeVideos(extract_module.EncodeVideos):
    """The encoder actor, adding to each output row when its batch ended (wall clock, one machine) and the CPU time
    the actor's thread spent on the batch (one torch thread: all the CPU the encoding used). Same class name, so
    the operator keeps its name; the driver drops the extra columns (it writes the store's row schema)."""

    def __call__(self, batch):
        cpu = time.thread_time()
        table = super().__call__(batch)
        for name, value in (("bench_end", time.time()), ("bench_thread_cpu", time.thread_time() - cpu)):
            table = table.append_column(name, pa.array([value] * table.num_rows, pa.float64()))
        return table


class TimedWriter(extract_module._StoreWriter):
    """The driver's writer, collecting each row's (batch end, batch thread CPU, steps) from the timed actors."""

    rows: list[tuple[float, float, int]] = []

    def add(self, table) -> None:
        steps = [len(t) for t in table.column("timestamp").to_pylist()]
        TimedWriter.rows += zip(table.column("bench_end").to_pylist(), table.column("bench_thread_cpu").to_pylist(),
                                steps, strict=True)
        super().add(table)


def actor_batches(rows: list[tuple[float, float, int]]) -> list[tuple[float, float, int]]:
    """Rows grouped into the actor batches they came in: (end, thread CPU, steps), by end time."""
    batches: dict[tuple[float, float], int] = {}
    for end, cpu, steps in rows:
        batches[(end, cpu)] = batches.get((end, cpu), 0) + steps
    return sorted((end, cpu, steps) for (end, cpu), steps in batches.items())


def run_encoders(prepared: list[PreparedVideo], threads: int, batch_size: int) -> dict:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        load_before = load()[0]
        wall, cpu = time.perf_counter(), time.thread_time()
        encoders = build_encoders("lite")
        arrivals = []
        for i in range(0, len(prepared), batch_size):
            batch = prepared[i:i + batch_size]
            encode_batch(batch, encoders)
            arrivals.append((time.perf_counter(), time.thread_time(), sum(p.num_steps for p in batch)))
        whole_s, whole_cpu = time.perf_counter() - wall, time.thread_time() - cpu
    finally:
        torch.set_num_threads(before)
    steps = sum(p.num_steps for p in prepared)
    steady_steps = sum(s for _, _, s in arrivals[1:])
    steady_s = arrivals[-1][0] - arrivals[0][0]
    steady_cpu = arrivals[-1][1] - arrivals[0][1]
    return {"threads": threads, "steps": steps, "whole_s": round(whole_s, 2),
            "whole_steps_per_s": round(steps / whole_s, 2), "steady_steps_per_s": round(steady_steps / steady_s, 2),
            "thread_cpu_s": round(whole_cpu, 2), "steady_thread_cpu_ms_per_step": round(1000 * steady_cpu
                                                                                         / steady_steps, 1),
            "load_average_before": load_before, "load_average_after": load()[0]}


def run_pipeline(manifest: Path, work: Path, workers: int, batch_size: int, weights_dir: Path | None = None) -> dict:
    load_before = load()[0]
    TimedWriter.rows = []
    config = ExtractConfig(manifest=manifest, out=work / f"feats-{workers}", preset="lite", fps=2.0,
                           num_workers=workers, cpus_per_worker=1.0, batch_size=batch_size, overwrite=True,
                           weights_dir=weights_dir)
    baseline = DescendantCpu()
    baseline._read()  # Ray's processes outlive a run (raylet, idle workers): count only what they use in this one
    with DescendantCpu() as cpu:
        wall, start = time.perf_counter(), time.time()
        summary = extract_features(config)
        whole_s = time.perf_counter() - wall
    for key, (name, seconds) in list(cpu.seen.items()):
        cpu.seen[key] = (name, seconds - baseline.seen.get(key, (name, 0.0))[1])
    steps = sum(v.num_steps for v in store.load_videos(config.out))
    batches = actor_batches(TimedWriter.rows)  # (end, thread CPU, steps)
    steady_steps = sum(s for _, _, s in batches[1:])
    steady_s = batches[-1][0] - batches[0][0] if len(batches) > 1 else 0.0
    busiest = dict(list(cpu.by_name().items())[:6])
    return {"workers": workers, "threads_per_actor": 1, "videos": summary.succeeded, "failed": summary.failed,
            "steps": steps, "actor_batches": len(batches), "whole_s": round(whole_s, 2),
            "whole_steps_per_s": round(steps / whole_s, 2),
            "steady_steps_per_s": round(steady_steps / steady_s, 2) if steady_s > 0 else None,
            "first_batch_end_s": round(batches[0][0] - start, 2) if batches else None,
            "actor_thread_cpu_s": round(sum(c for _, c, _ in batches), 2),
            "steady_actor_thread_cpu_ms_per_step": round(1000 * sum(c for _, c, _ in batches[1:]) / steady_steps, 1)
            if steady_steps else None,
            "cpu_s_all_processes": round(cpu.total(), 2), "cpu_s_busiest_processes": busiest,
            "load_average_before": load_before, "load_average_after": load()[0]}


def run_face(manifest: Path, face_encoder, weights_dir: Path | None) -> dict:
    """The CPU stage with this face encoder's inputs (aligned chips or crops), then that encoder on every face."""
    load_before = load()[0]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        wall = time.perf_counter()
        prepared = [prepare_video(e.path, e.boxes, VideoSettings(preset="lite", fps=2.0, weights_dir=weights_dir))
                    for e in read_manifest(manifest)]
        prepare_s = time.perf_counter() - wall
        wall, faces = time.perf_counter(), 0
        for video in prepared:
            chips = video.face[video.present()["face"]]  # (n, h, w, 3)
            for start in range(0, len(chips), 64):
                face_encoder.features(chips[start:start + 64])
            faces += len(chips)
        encode_s = time.perf_counter() - wall
    finally:
        torch.set_num_threads(before)
    steps = sum(p.num_steps for p in prepared)
    return {"encoder": face_encoder.name, "steps": steps, "faces": faces, "prepare_s": round(prepare_s, 2),
            "prepare_ms_per_step": round(1000 * prepare_s / steps, 2), "face_encode_s": round(encode_s, 2),
            "face_encode_ms_per_face": round(1000 * encode_s / max(faces, 1), 2),
            "cpu_stage_and_face_ms_per_step": round(1000 * (prepare_s + encode_s) / steps, 2),
            "load_average_before": load_before, "load_average_after": load()[0]}


def summarize(runs: list[dict]) -> dict:
    """Per side: best (max) and median steps/s, min and median seconds and CPU seconds, over the rounds."""
    out = {}
    for name in dict.fromkeys(r["name"] for r in runs):
        rs = [r for r in runs if r["name"] == name]
        if name.startswith("face_"):
            out[name] = {key: spread([r[key] for r in rs], min) for key in
                         ("prepare_ms_per_step", "face_encode_ms_per_face", "cpu_stage_and_face_ms_per_step")}
            continue
        cpu_keys = (["thread_cpu_s", "steady_thread_cpu_ms_per_step"] if name.startswith("encoders") else
                    ["actor_thread_cpu_s", "steady_actor_thread_cpu_ms_per_step", "cpu_s_all_processes"])
        out[name] = {"steady_steps_per_s": spread([r["steady_steps_per_s"] for r in rs], max),
                     "whole_steps_per_s": spread([r["whole_steps_per_s"] for r in rs], max),
                     "whole_s": spread([r["whole_s"] for r in rs], min),
                     **{key: spread([r[key] for r in rs], min) for key in cpu_keys}}
    return out


def ratios(summary: dict) -> dict:
    """The issue's two targets, on steady state and on the whole run, medians and bests."""
    pairs = {"pipeline_1w/encoders_1t": ("pipeline_1w", "encoders_1t", 0.8),
             "pipeline_2w/pipeline_1w": ("pipeline_2w", "pipeline_1w", 1.6),
             "pipeline_1w/pipeline_1w_deepid": ("pipeline_1w", "pipeline_1w_deepid", None)}  # dlib's cost
    out = {}
    for label, (a, b, target) in pairs.items():
        if a in summary and b in summary:
            entry = {"target": target}
            for span in ("steady_steps_per_s", "whole_steps_per_s"):
                for stat in ("median", "best"):
                    entry[f"{span}_{stat}"] = round(summary[a][span][stat] / summary[b][span][stat], 3)
            if target is not None:
                entry["met_steady_median"] = entry["steady_steps_per_s_median"] >= target
            out[label] = entry
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-videos", type=int, default=125, help="12 steps each at fps 2: 125 -> 1,500 steps")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--order", default="encoders_1t,pipeline_1w,pipeline_2w",
                        help="one round, in order: encoders_<T>t, pipeline_<W>w[_deepid], face_dlib, face_deepid; "
                        "comma-separated")
    parser.add_argument("--batch-size", type=int, default=4, help="videos per encoder batch (both sides)")
    parser.add_argument("--ray-cpus", type=int, default=None, help="logical CPUs of the local Ray (default 2x cores)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "extract.json")
    args = parser.parse_args(argv)
    names = [n for n in args.order.split(",") if n]
    bad = [n for n in names if not SIDE.match(n)]
    if bad:
        parser.error(f"--order: unknown side(s) {', '.join(bad)}; expected encoders_<T>t, pipeline_<W>w[_deepid], "
                     "face_dlib or face_deepid")
    os.environ.setdefault("TQDM_DISABLE", "1")
    import ray

    info = machine()
    started = time.perf_counter()
    extract_module._StoreWriter = TimedWriter  # timed driver writer and encoder actors; the pipeline is as shipped
    extract_module.EncodeVideos = EncodeVideos
    runs = []
    with tempfile.TemporaryDirectory(prefix="asrn-bench-extract-") as tmp:
        work = Path(tmp)
        manifest = synthesize_videos(work / "videos", num_videos=args.num_videos, seed=0)
        load_before = load()[0]
        wall = time.perf_counter()
        prepared = [prepare_video(e.path, e.boxes, VideoSettings(preset="lite", fps=2.0))
                    for e in read_manifest(manifest)]
        prepare_s = time.perf_counter() - wall
        steps = sum(p.num_steps for p in prepared)
        prepare = {"steps": steps, "seconds": round(prepare_s, 2), "steps_per_s": round(steps / prepare_s, 2),
                   "load_average_before": load_before, "load_average_after": load()[0]}
        print(f"prepare alone: {steps} steps in {prepare_s:.1f} s", flush=True)
        ray_cpus = args.ray_cpus or 2 * (os.cpu_count() or 1)
        use_ray = any(not name.startswith("face_") for name in names)
        if use_ray:
            ray.init(num_cpus=ray_cpus, include_dashboard=False, log_to_driver=False)
            ray.data.DataContext.get_current().enable_progress_bars = False
        deepid_dir = work / "deepid"  # a deepid.pth selects the DeepID-style face net (its cost: any weights do)
        deepid_dir.mkdir()
        torch.save(DeepID().state_dict(), deepid_dir / "deepid.pth")
        faces = {"face_dlib": (None, build_encoders("lite")["face"]),
                 "face_deepid": (deepid_dir, build_encoders("lite", deepid_dir)["face"])}
        try:
            for round_ in range(1, args.rounds + 1):
                for name in names:  # interleaved: A, B, C, A, B, C, ...
                    m = SIDE.match(name)
                    if m.group(4):
                        runs.append({"name": name, "round": round_, **run_face(manifest, faces[name][1],
                                                                               faces[name][0])})
                        print(f"round {round_} {name}: {runs[-1]}", flush=True)
                        continue
                    run = (run_encoders(prepared, int(m.group(1)), args.batch_size) if m.group(1)
                           else run_pipeline(manifest, work, int(m.group(2)), args.batch_size,
                                             deepid_dir if m.group(3) else None))
                    runs.append({"name": name, "round": round_, **run})
                    print(f"round {round_} {name}: {run['steady_steps_per_s']} steps/s steady, "
                          f"{run['whole_steps_per_s']} whole ({run['whole_s']} s), load "
                          f"{run['load_average_before']} -> {run['load_average_after']}", flush=True)
        finally:
            if use_ray:
                ray.shutdown()
    summary = summarize(runs)
    result = {
        "benchmark": "asrn extract, lite preset, fps 2, synthetic 160x120 videos of 6 s (boxes given)",
        "unit": "sampled steps per second (one step = one time step of all four modalities)",
        "method": "sides interleaved per round; best/median steps/s and min/median seconds over the rounds; equal "
                  "threads (1 torch thread per encoder actor and for encoders alone); steady = after the first "
                  "batch, whole = the whole run; CPU seconds beside wall (see the docstring of "
                  "benchmarks/extract.py)",
        "command": " ".join(["python", "benchmarks/extract.py", *(argv if argv is not None else sys.argv[1:])]),
        "num_videos": args.num_videos, "steps": steps, "batch_size": args.batch_size, "rounds": args.rounds,
        "round_order": names, "ray_logical_cpus": ray_cpus,
        "machine": info,
        "prepare_alone": prepare,
        "summary": summary,
        "ratios": ratios(summary),
        "runs": runs,
        "load_average_end": load(),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    write_results(args.out, result)
    print(json.dumps({"summary": summary, "ratios": result["ratios"]}, indent=2))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
