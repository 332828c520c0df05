"""Training throughput: Ray Train (1 and 2 CPU workers) against a plain PyTorch loop, and BDLSTM against nn.LSTM.

    python benchmarks/train.py [--num-videos 400] [--epochs 6] [--hidden 256] [--ray-runs 1x1,1x2,2x1]
                               [--plain-threads 1,2] [--max-load 1.5 --wait-minutes 20] [--out ...]

On a synthetic feature store (asrn synth features, seed 0; 70% of the videos are train) it measures:

ray_<w>w_<t>t   `asrn.train.train_loop_per_worker` under a TorchTrainer built by `asrn.train.build_trainer`
                (MLflow off, gloo, CPU), w workers with t torch threads each (ScalingConfig
                resources_per_worker CPU=t; the loop is wrapped to call torch.set_num_threads(t) first, and the
                wrapper records the thread count it found and set). Ray is started for each run with
                `--ray-cpus` logical CPUs (default 2x the cores, as the tests' cluster does) and shut down after.
                samples_per_s: the loop's own `train_samples_per_s` = videos trained in the epoch (all workers)
                / rank 0's `epoch_seconds`, which spans the whole train pass of one epoch: Ray Data shard
                iteration (object store fetch, local shuffle, pyarrow -> VideoFeatures, dims check), `collate`,
                forward, backward, DDP gradient all-reduce, SGD step, and the loss all-reduce; not validation,
                checkpointing or `ray.train.report`. Steady state = total videos / total epoch_seconds over
                epochs 2..N (the first epoch is excluded). Per-epoch values are read from the history in the
                last checkpoint (as `TrainResult.history` does): `Result.metrics_dataframe` holds only the kept
                checkpoints in Ray Train V2, so num_to_keep is set to the epoch count here and it is
                cross-checked.
                wall: ray.init + build_trainer (Parquet read + filter + materialize) + fit (worker group and
                process-group start, all epochs with validation, checkpoints and reports) + ray.shutdown.
plain_<t>t      the same model (variant, hidden, dropout, seed, train-split input statistics),
                SGD+momentum+ExponentialLR, batch size, task and `collate` in this process, no Ray,
                torch.set_num_threads(t); the train videos are loaded into
                memory once (`store.load_videos`) and shuffled fully each epoch. samples_per_s: videos / time of
                the train pass (collate + forward + backward + step), the same span as the Ray loop's
                epoch_seconds minus the Ray Data part; step_only_samples_per_s excludes `collate`.
                wall: loading the store + all epochs, each with a validation pass as the Ray loop does.
The ratio Ray / plain compares runs that use the same number of cores: 1 worker x 1 thread against 1 thread,
and 1 worker x 2 threads and 2 workers x 1 thread against 2 threads.

bdlstm          forward + backward of `BoundaryLSTM(H)` on x (B, T, H) with every step valid (loss: V_g summed)
                against `nn.LSTM(H, H, batch_first=True)` on the same x (loss: all outputs summed), x requiring
                grad as it does inside ASRN; median over `--lstm-repeats` after 3 warm-up steps, per thread count.

The machine (cores, CPU model, torch threads, load average at start and around each part) and the date are
recorded with the figures, since other work on the machine changes them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import load, machine  # noqa: E402

from asrn.labels import task_labels  # noqa: E402
from asrn.metrics import compute_metrics  # noqa: E402
from asrn.model import ASRN, BoundaryLSTM, ModelConfig, asrn_loss  # noqa: E402
from asrn.sequence import collate  # noqa: E402
from asrn.store import feature_statistics, load_videos, read_info  # noqa: E402
from asrn.synth_features import synthesize_feature_store  # noqa: E402
from asrn.train import MOMENTUM, NO_MLFLOW, STATE_FILE, TrainConfig, build_trainer, train_loop_per_worker  # noqa: E402

LR_DECAY = TrainConfig.__dataclass_fields__["lr_decay"].default


def wait_for_load(max_load: float | None, minutes: float) -> dict:
    """Poll the 1-minute load average every 30 s until it is below `max_load` or `minutes` have passed."""
    started, waited = time.monotonic(), {"max_load": max_load, "polls": []}
    while max_load is not None:
        now = load()
        waited["polls"].append(now[0])
        if now[0] < max_load or time.monotonic() - started > minutes * 60:
            break
        print(f"load average {now}: waiting for the 1-minute value to drop below {max_load}", flush=True)
        time.sleep(30)
    waited["seconds"] = round(time.monotonic() - started, 1)
    waited["ran_below_max"] = max_load is None or waited["polls"][-1] < max_load
    return waited


def steady(history: list[dict]) -> dict:
    """Steady-state throughput over epochs 2..N from per-epoch (videos, seconds)."""
    rest = history[1:] or history
    videos = sum(h["videos"] for h in rest)
    seconds = sum(h["epoch_seconds"] for h in rest)
    per_epoch = [h["videos"] / h["epoch_seconds"] for h in history]
    return {"samples_per_s": round(videos / seconds, 2),
            "median_epoch_samples_per_s": round(statistics.median(per_epoch[1:] or per_epoch), 2),
            "first_epoch_samples_per_s": round(per_epoch[0], 2),
            "epochs_counted": [h["epoch"] for h in rest]}


# ---------------------------------------------------------------- Ray Train

def _loop_with_threads(config: dict) -> None:
    """`train_loop_per_worker` with the worker's torch threads set first (and recorded for the results)."""
    found = torch.get_num_threads()
    torch.set_num_threads(config["bench_threads"])
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    record = {"rank": rank, "threads_found": found, "threads_set": torch.get_num_threads(),
              "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"), "pid": os.getpid()}
    Path(config["bench_record"], f"rank{rank}.json").write_text(json.dumps(record))
    train_loop_per_worker(config)


def bench_ray(store: Path, work: Path, workers: int, threads: int, args) -> dict:
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    name = f"ray_{workers}w_{threads}t"
    record = work / f"{name}-workers"
    record.mkdir()
    load_before = load()
    t0 = time.perf_counter()
    ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"TQDM_DISABLE": "1"}})
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        t1 = time.perf_counter()
        config = TrainConfig(features=store, task=args.task, out=work / name, variant=args.variant,
                             num_workers=workers, epochs=args.epochs, batch_size=args.batch_size, hidden=args.hidden,
                             patience=args.epochs + 1, mlflow_uri=NO_MLFLOW, num_to_keep=args.epochs, seed=0)
        config.out.mkdir(parents=True)
        base = build_trainer(config, f"bench-{name}", info=read_info(store))  # reads and materializes the store
        trainer = TorchTrainer(
            _loop_with_threads,
            train_loop_config={**base.train_loop_config, "bench_threads": threads, "bench_record": str(record)},
            torch_config=base.backend_config,
            scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=False,
                                                   resources_per_worker={"CPU": threads}),
            run_config=base.run_config, datasets=base.datasets, dataset_config=base.data_config)
        t2 = time.perf_counter()
        result = trainer.fit()
        t3 = time.perf_counter()
    finally:
        ray.shutdown()
    t4 = time.perf_counter()
    with result.checkpoint.as_directory() as folder:
        history = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)["history"]
    epochs = [{"epoch": int(h["epoch"]), "epoch_seconds": float(h["epoch_seconds"]),
               "videos": float(h["train_samples_per_s"]) * float(h["epoch_seconds"]),
               "train_samples_per_s": round(float(h["train_samples_per_s"]), 2)} for h in history]
    frame = result.metrics_dataframe
    frame_rates = ([round(float(x), 2) for x in frame.sort_values("epoch")["train_samples_per_s"]]
                   if frame is not None else None)
    epoch_total = sum(h["epoch_seconds"] for h in epochs)
    out = {
        "workers": workers, "threads_per_worker": threads, "batch_per_worker": base.train_loop_config["batch_size"],
        **steady(epochs),
        "epochs": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in e.items()} for e in epochs],
        "metrics_dataframe_train_samples_per_s": frame_rates,
        "worker_threads": [json.loads(p.read_text()) for p in sorted(record.glob("rank*.json"))],
        "wall": {"ray_init_s": round(t1 - t0, 2), "build_trainer_s": round(t2 - t1, 2), "fit_s": round(t3 - t2, 2),
                 "shutdown_s": round(t4 - t3, 2), "total_s": round(t4 - t0, 2),
                 "train_epochs_s": round(epoch_total, 2),
                 "total_minus_train_epochs_s": round(t4 - t0 - epoch_total, 2)},
        "load_average_before": load_before, "load_average_after": load(),
    }
    print(f"{name}: {out['samples_per_s']} videos/s steady, wall {out['wall']['total_s']} s", flush=True)
    return out


# ---------------------------------------------------------------- plain PyTorch

def bench_plain(store: Path, threads: int, args) -> dict:
    torch.set_num_threads(threads)
    load_before = load()
    t0 = time.perf_counter()
    train, val = load_videos(store, splits=["train"]), load_videos(store, splits=["val"])
    labels = list(task_labels(args.task))
    torch.manual_seed(0)
    model = ASRN(ModelConfig(dims=dict(read_info(store).dims), num_classes=len(labels), variant=args.variant,
                             hidden=args.hidden, dropout=TrainConfig.__dataclass_fields__["dropout"].default))
    model.set_input_stats(feature_statistics(store, "train"))  # as train_loop_per_worker does
    optimizer = torch.optim.SGD(model.parameters(), lr=TrainConfig.__dataclass_fields__["lr"].default,
                                momentum=MOMENTUM)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=LR_DECAY)
    val_batches = [collate(val[i:i + args.batch_size], args.task) for i in range(0, len(val), args.batch_size)]
    rng = np.random.default_rng(0)
    epochs = []
    for epoch in range(1, args.epochs + 1):
        started = time.perf_counter()
        model.train()
        order = rng.permutation(len(train))
        collate_s = step_s = 0.0
        for i in range(0, len(train), args.batch_size):
            a = time.perf_counter()
            batch = collate([train[j] for j in order[i:i + args.batch_size]], args.task)
            b = time.perf_counter()
            loss = asrn_loss(model(batch.features, batch.present, batch.mask).logits.float(), batch.targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            float(loss.detach())
            collate_s, step_s = collate_s + b - a, step_s + time.perf_counter() - b
        scheduler.step()
        seconds = time.perf_counter() - started
        model.eval()
        with torch.no_grad():  # validation, as the Ray loop runs it (not part of epoch_seconds there either)
            scores = [torch.sigmoid(model(v.features, v.present, v.mask).logits).numpy() for v in val_batches]
        compute_metrics(np.concatenate([v.targets.numpy() for v in val_batches]), np.concatenate(scores), labels)
        epochs.append({"epoch": epoch, "epoch_seconds": seconds, "videos": float(len(train)),
                       "collate_seconds": collate_s, "step_seconds": step_s})
    wall = time.perf_counter() - t0
    rest = epochs[1:] or epochs
    out = {
        "threads": torch.get_num_threads(), **steady(epochs),
        "step_only_samples_per_s": round(sum(e["videos"] for e in rest) / sum(e["step_seconds"] for e in rest), 2),
        "collate_share_of_epoch": round(sum(e["collate_seconds"] for e in rest)
                                        / sum(e["epoch_seconds"] for e in rest), 3),
        "epochs": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in e.items()} for e in epochs],
        "wall": {"total_s": round(wall, 2), "train_epochs_s": round(sum(e["epoch_seconds"] for e in epochs), 2)},
        "load_average_before": load_before, "load_average_after": load(),
    }
    print(f"plain_{threads}t: {out['samples_per_s']} videos/s steady "
          f"({out['step_only_samples_per_s']} step only), wall {out['wall']['total_s']} s", flush=True)
    return out


# ---------------------------------------------------------------- BDLSTM vs nn.LSTM

def _time_steps(module: torch.nn.Module, forward, x: torch.Tensor, repeats: int) -> dict:
    fwd, total = [], []
    for i in range(3 + repeats):
        module.zero_grad(set_to_none=True)
        x.grad = None
        a = time.perf_counter()
        loss = forward()
        b = time.perf_counter()
        loss.backward()
        c = time.perf_counter()
        if i >= 3:
            fwd.append(b - a)
            total.append(c - a)
    return {"fwd_bwd_ms_median": round(1000 * statistics.median(total), 3),
            "fwd_bwd_ms_min": round(1000 * min(total), 3),
            "forward_ms_median": round(1000 * statistics.median(fwd), 3)}


def bench_lstm(threads: int, args) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    B, T, H = args.lstm_batch, args.lstm_steps, args.hidden_lstm
    x = torch.randn(B, T, H, requires_grad=True)
    mask = torch.ones(B, T, dtype=torch.bool)
    bdlstm, lstm = BoundaryLSTM(H), torch.nn.LSTM(H, H, batch_first=True)
    load_before = load()
    bd = _time_steps(bdlstm, lambda: bdlstm(x, mask)[0].sum(), x, args.lstm_repeats)
    ref = _time_steps(lstm, lambda: lstm(x)[0].sum(), x, args.lstm_repeats)
    out = {"threads": torch.get_num_threads(), "bdlstm": bd, "nn_lstm": ref,
           "ratio_fwd_bwd_bdlstm_to_lstm": round(bd["fwd_bwd_ms_median"] / ref["fwd_bwd_ms_median"], 2),
           "load_average_before": load_before, "load_average_after": load()}
    print(f"lstm {threads} thread(s): BDLSTM {bd['fwd_bwd_ms_median']} ms, nn.LSTM {ref['fwd_bwd_ms_median']} ms "
          f"(x{out['ratio_fwd_bwd_bdlstm_to_lstm']})", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-videos", type=int, default=400)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--task", default="sub")
    p.add_argument("--variant", default="asrn")
    p.add_argument("--hidden", type=int, default=TrainConfig.__dataclass_fields__["hidden"].default)
    p.add_argument("--batch-size", type=int, default=TrainConfig.__dataclass_fields__["batch_size"].default)
    p.add_argument("--ray-runs", default="1x1,1x2,2x1", help="WORKERSxTHREADS per worker, comma-separated; '' skips")
    p.add_argument("--plain-threads", default="1,2", help="torch threads of the plain loop runs; '' skips")
    p.add_argument("--ray-cpus", type=int, default=None, help="logical CPUs of the local Ray (default 2x cores)")
    p.add_argument("--lstm-threads", default="1,2", help="torch threads of the BDLSTM/nn.LSTM runs; '' skips")
    p.add_argument("--lstm-repeats", type=int, default=30)
    p.add_argument("--lstm-batch", type=int, default=32)
    p.add_argument("--lstm-steps", type=int, default=48)
    p.add_argument("--hidden-lstm", type=int, default=256, help="H of the BDLSTM/nn.LSTM comparison")
    p.add_argument("--max-load", type=float, default=None,
                   help="wait until the 1-minute load average is below this before measuring")
    p.add_argument("--wait-minutes", type=float, default=20.0, help="give up waiting after this; run anyway")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "train.json")
    args = p.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    args.ray_cpus = args.ray_cpus or 2 * (os.cpu_count() or 1)
    ints = lambda s: [int(v) for v in s.split(",") if v]  # noqa: E731
    ray_runs = [tuple(int(v) for v in r.split("x")) for r in args.ray_runs.split(",") if r]

    waited = wait_for_load(args.max_load, args.wait_minutes)
    info = machine()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="asrn-bench-train-") as tmp:
        work = Path(tmp)
        store = synthesize_feature_store(work / "store", num_videos=args.num_videos, seed=0)
        num_train = len(load_videos(store, splits=["train"]))
        plain = {f"plain_{t}t": bench_plain(store, t, args) for t in ints(args.plain_threads)}
        lstm = {f"{t}_threads": bench_lstm(t, args) for t in ints(args.lstm_threads)}
        torch.set_num_threads(info["torch_threads"])
        ray_results = {f"ray_{w}w_{t}t": bench_ray(store, work, w, t, args) for w, t in ray_runs}

    ratios = {}
    for name, r in ray_results.items():
        cores = r["workers"] * r["threads_per_worker"]
        if f"plain_{cores}t" in plain:
            ratios[f"{name}_to_plain_{cores}t"] = round(r["samples_per_s"] / plain[f"plain_{cores}t"]["samples_per_s"],
                                                        3)
    result = {
        "benchmark": "ASRN training throughput on a synthetic feature store: Ray Train (TorchTrainer, gloo, CPU) "
                     "vs a plain single-process PyTorch loop; BoundaryLSTM vs nn.LSTM step time",
        "unit": "videos (samples) per second of the train pass, steady state (epochs 2..N); ms for the LSTMs",
        "command": " ".join(["python", "benchmarks/train.py", *(argv if argv is not None else sys.argv[1:])]),
        "settings": {"num_videos": args.num_videos, "train_videos": num_train, "epochs": args.epochs,
                     "task": args.task, "variant": args.variant, "hidden": args.hidden,
                     "batch_size_global": args.batch_size, "window": 3, "ray_logical_cpus": args.ray_cpus,
                     "mlflow": "off", "backend": "gloo",
                     "lstm_input": {"B": args.lstm_batch, "T": args.lstm_steps, "H": args.hidden_lstm,
                                    "repeats": args.lstm_repeats}},
        "what_each_number_covers": {
            "samples_per_s (ray)": "train_samples_per_s reported by train_loop_per_worker: videos of the epoch over "
                                   "all workers / rank 0's epoch_seconds (Ray Data shard iteration, collate, "
                                   "forward, backward, DDP all-reduce, SGD step; no validation/checkpoint/report); "
                                   "steady = sum of videos / sum of epoch_seconds over epochs 2..N",
            "samples_per_s (plain)": "videos / seconds of the train pass (collate + forward + backward + step), "
                                     "epochs 2..N; step_only_samples_per_s leaves collate out",
            "wall.total_s (ray)": "ray.init + build_trainer (read, filter, materialize) + fit (workers, process "
                                  "group, all epochs with validation and checkpoints) + ray.shutdown",
            "wall.total_s (plain)": "loading the store into memory + all epochs with validation",
            "ratio": "Ray samples_per_s / plain samples_per_s at the same number of cores (workers x threads)",
            "bdlstm": "median ms of forward + backward (3 warm-up steps excluded), x requires grad, all steps valid",
        },
        "machine": info,
        "waited_for_load": waited,
        "plain": plain,
        "ray": ray_results,
        "ratio_ray_to_plain": ratios,
        "lstm": lstm,
        "load_average_end": load(),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    summary = {k: v for k, v in result.items() if k not in ("plain", "ray", "lstm", "what_each_number_covers")}
    print(json.dumps(summary, indent=2))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
