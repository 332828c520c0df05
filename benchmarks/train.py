"""Training cost: Ray Train against a plain PyTorch loop on the same recipe and threads, and BDLSTM against nn.LSTM.

    python benchmarks/train.py [--num-videos 400] [--epochs 6] [--recipe default] [--rounds 2]
                               [--runs plain_1t,ray_1w_1t,plain_2t,ray_2w_1t] [--lstm-threads 1,2] [--out ...]
    (run names: plain_<T>t; ray_<W>w_<T>t reads the store as `asrn train` does for it, i.e. directly in each worker
    below TrainConfig.direct_read_max_mb; raydata_<W>w_<T>t forces the Ray Data path, direct_read_max_mb = 0)

Method (GitHub issue 14, point 4):
- One synthetic feature store (asrn synth features, seed 0; 70% of the videos are train) for every run.
- Every run is a fresh Python process started by this script, in the order of `--runs`, repeated `--rounds` times
  (A, B, C, D, A, B, C, D, ...), so load from other work on the machine falls on every kind of run alike; the
  summary gives the median and the best of the rounds for each figure.
- Both sides train the same LoopConfig (`asrn.train.loop_config_for`: recipe, model, per-step batch, seed, train
  input statistics) with `asrn.loop.build_optimizer`, `train_epoch` and `evaluate`: no optimizer step is written
  here. Early stopping is off (patience = epochs + 1) so every run trains every epoch.
- Equal threads: plain_<t>t sets torch.set_num_threads(t); ray_<w>w_<t>t gives each of w workers CPU=t and a
  wrapper around `train_loop_per_worker` calls torch.set_num_threads(t) first and records what it found and set.
  ray_1w_1t (and raydata_1w_1t) is compared with plain_1t, ray_2w_1t and ray_1w_2t with plain_2t.
- Two spans, both reported:
  steady    videos / seconds of the train pass over epochs 2..N (the first epoch, with its warm-up, left out).
            Ray: the loop's own `epoch_seconds` of rank 0 (Ray Data shard iteration, collate, forward, backward,
            DDP all-reduce, optimizer and scheduler step, loss all-reduce); plain: the same span around
            `train_epoch` + `scheduler.step()` over in-memory videos shuffled each epoch. Neither holds validation.
  whole run start to trained model. run_s, timed inside the run's process after its imports: plain = load the
            store + input statistics + all epochs with validation; Ray = ray.init + build_trainer (raydata:
            Parquet read, filter, materialize; both: input statistics, cached in features.json) + fit (controller,
            worker group, process group, for ray_ the workers' direct reads of their shards, all epochs with
            validation, checkpoints and reports) + reading the last checkpoint's history + ray.shutdown.
            process_wall_s, timed by this script, adds interpreter start and imports (torch; Ray for Ray runs).
            fixed_s = run_s - the sum of all epochs' epoch_seconds: what a run costs besides training itself.
- CPU time beside wall time. plain: the process's user+system time over run_s (getrusage, every torch thread)
  and the main thread's (time.thread_time). Ray: the driver's own getrusage plus every descendant process
  (raylet, GCS, Train controller, workers, Ray Data tasks) read from /proc/<pid>/stat once a second, the last
  reading of each process kept (a process that lives under a second is missed); each worker also reports its
  process CPU and its loop thread's CPU at the end of its loop. process_cpu_s_reaped is this script's
  getrusage(RUSAGE_CHILDREN) over the run's process: everything it and the children it waited for used; Ray
  workers are not reaped by the driver, so for Ray runs it is a lower bound.
- The machine (cores, CPU model) and the 1-minute load average before and after every run are recorded.

bdlstm: forward + backward of `BoundaryLSTM(H)` on x (B, T, H) with every step valid (loss: outputs summed) against
`nn.LSTM(H, H, batch_first=True)` on the same x, x requiring grad as inside ASRN; the two alternate step by step
(interleaved), 3 warm-up steps each, then the median and the minimum over `--lstm-repeats`, per thread count.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import load, machine, spread, write_results  # noqa: E402

from asrn.labels import task_labels  # noqa: E402
from asrn.loop import RECIPES, build_optimizer, evaluate, train_epoch  # noqa: E402
from asrn.metrics import compute_metrics  # noqa: E402
from asrn.model import ASRN, BoundaryLSTM  # noqa: E402
from asrn.sequence import collate  # noqa: E402
from asrn.store import FeatureStore  # noqa: E402

# asrn.train imports Ray: it is imported only where Ray is used, so that plain runs never import Ray.

RUN_NAME = re.compile(r"^(?:plain_(\d+)t|(ray|raydata)_(\d+)w_(\d+)t)$")


def process_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class DescendantCpu:
    """CPU seconds of this process's descendants, read from /proc once a second (Linux); the last reading per
    process is kept, so processes that end before the run does still count up to their last second."""

    def __init__(self, interval: float = 1.0):
        self.interval, self.seen = interval, {}
        self.tick = os.sysconf("SC_CLK_TCK")
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _read(self) -> None:
        stats = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    text = Path(entry.path, "stat").read_text()
                except OSError:
                    continue
                name, rest = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()
                # fields after the name: state ppid ... utime(12) stime(13) ... starttime(20)
                stats[int(entry.name)] = (int(rest[1]), name, int(rest[11]) + int(rest[12]), rest[19])
        inside, frontier = set(), {os.getpid()}
        while frontier:
            frontier = {pid for pid, s in stats.items() if s[0] in frontier and pid not in inside}
            inside |= frontier
        for pid in inside:
            _, name, ticks, start = stats[pid]
            self.seen[(pid, start)] = (name, ticks / self.tick)

    def _poll(self) -> None:
        while not self.stop_event.wait(self.interval):
            self._read()

    def __enter__(self) -> DescendantCpu:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._read()
        self.stop_event.set()
        self.thread.join()

    def by_name(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, seconds in self.seen.values():
            out[name] = round(out.get(name, 0.0) + seconds, 2)
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def total(self) -> float:
        return sum(seconds for _, seconds in self.seen.values())


@dataclass
class Spec:
    """What both sides train, built once by `loop_config_for` in the parent (Ray-free types only)."""

    task: str
    model: object  # asrn.model.ModelConfig
    recipe: object  # asrn.loop.Recipe, with this benchmark's epochs and patience
    batch_size: int  # global
    seed: int
    variant: str


def steady(epochs: list[dict]) -> dict:
    """Throughput over epochs 2..N from per-epoch (videos, epoch_seconds)."""
    rest = epochs[1:] or epochs
    return {"samples_per_s": round(sum(e["videos"] for e in rest) / sum(e["epoch_seconds"] for e in rest), 2),
            "first_epoch_samples_per_s": round(epochs[0]["videos"] / epochs[0]["epoch_seconds"], 2),
            "epochs_counted": [e["epoch"] for e in rest]}


def rounded(rows: list[dict]) -> list[dict]:
    return [{k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()} for row in rows]


# ---------------------------------------------------------------- plain PyTorch (one process, no Ray)

def run_plain(store: Path, spec: Spec, threads: int) -> dict:
    torch.set_num_threads(threads)
    t0, cpu0, thread0 = time.perf_counter(), process_cpu(), time.thread_time()
    features = FeatureStore(store)
    train, val = features.videos(["train"]), features.videos(["val"])
    torch.manual_seed(spec.seed)
    model = ASRN(spec.model)
    model.set_input_stats(features.train_statistics()[0])  # as loop_config_for does for the Ray run
    optimizer, scheduler = build_optimizer(model, spec.recipe)
    device = torch.device("cpu")
    val_batches = [collate(val[i:i + spec.batch_size], spec.task) for i in range(0, len(val), spec.batch_size)]
    labels = list(task_labels(spec.task))
    rng = np.random.default_rng(spec.seed)
    collate_s = [0.0]

    def batches(order: np.ndarray):
        for i in range(0, len(order), spec.batch_size):
            a = time.perf_counter()
            batch = collate([train[j] for j in order[i:i + spec.batch_size]], spec.task)
            collate_s[0] += time.perf_counter() - a
            yield batch

    epochs = []
    for epoch in range(1, spec.recipe.epochs + 1):
        collate_s[0] = 0.0
        started, cpu_started = time.perf_counter(), process_cpu()
        loss = train_epoch(model, batches(rng.permutation(len(train))), optimizer, device, epoch=epoch)
        scheduler.step()
        seconds, cpu_seconds = time.perf_counter() - started, process_cpu() - cpu_started
        validation_started = time.perf_counter()
        val_loss, scores, targets = evaluate(model, val_batches, device)
        epochs.append({"epoch": epoch, "epoch_seconds": seconds, "videos": float(loss.samples),
                       "val_seconds": time.perf_counter() - validation_started,
                       "collate_seconds": collate_s[0], "epoch_process_cpu_s": cpu_seconds,
                       "train_loss": loss.mean, "val_loss": val_loss,
                       "val_map": compute_metrics(targets, scores, labels)["map"]})
    run_s = time.perf_counter() - t0
    rest = epochs[1:] or epochs
    return {
        "threads": torch.get_num_threads(), **steady(epochs),
        "collate_share_of_epoch": round(sum(e["collate_seconds"] for e in rest)
                                        / sum(e["epoch_seconds"] for e in rest), 3),
        "steady_process_cpu_s_per_video": round(sum(e["epoch_process_cpu_s"] for e in rest)
                                                / sum(e["videos"] for e in rest), 5),
        "run_s": round(run_s, 2), "epochs_s": round(sum(e["epoch_seconds"] for e in epochs), 2),
        "fixed_s": round(run_s - sum(e["epoch_seconds"] for e in epochs), 2),
        "cpu": {"process_s": round(process_cpu() - cpu0, 2), "main_thread_s": round(time.thread_time() - thread0, 2),
                "total_s": round(process_cpu() - cpu0, 2)},
        "epochs": rounded(epochs),
    }


# ---------------------------------------------------------------- Ray Train

@dataclass
class ThreadedLoop:
    """The LoopConfig of `build_trainer` plus the torch threads each worker sets before running it."""

    loop: object  # asrn.train.LoopConfig
    threads: int
    record: str  # folder for one JSON per rank


def loop_with_threads(config: ThreadedLoop) -> None:
    """`train_loop_per_worker` with the worker's torch threads set first; records threads and CPU per rank."""
    import ray.train

    from asrn.train import train_loop_per_worker

    found = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    t0, cpu0, thread0 = time.perf_counter(), process_cpu(), time.thread_time()
    train_loop_per_worker(config.loop)
    rank = ray.train.get_context().get_world_rank()
    record = {"rank": rank, "pid": os.getpid(), "threads_found": found, "threads_set": torch.get_num_threads(),
              "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
              "loop_s": round(time.perf_counter() - t0, 2), "loop_process_cpu_s": round(process_cpu() - cpu0, 2),
              "loop_thread_cpu_s": round(time.thread_time() - thread0, 2),
              "process_cpu_s_since_start": round(process_cpu(), 2)}
    Path(config.record, f"rank{rank}.json").write_text(json.dumps(record))


def run_ray(store: Path, spec: Spec, workers: int, threads: int, work: Path, ray_cpus: int,
            ray_data: bool = False) -> dict:
    import ray
    import ray.data
    import ray.train
    from ray.train.torch import TorchTrainer

    from asrn.checkpoint import load_training_state
    from asrn.mlflow_runs import NO_MLFLOW
    from asrn.train import TrainConfig, build_trainer

    record = work / "workers"
    record.mkdir(parents=True)
    t0, cpu0 = time.perf_counter(), process_cpu()
    with DescendantCpu() as descendants:
        ray.init(num_cpus=ray_cpus, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}})
        try:
            ray.data.DataContext.get_current().enable_progress_bars = False
            t1 = time.perf_counter()
            config = TrainConfig(features=store, task=spec.task, out=work / "out", variant=spec.variant,
                                 recipe=spec.recipe.name, num_workers=workers, epochs=spec.recipe.epochs,
                                 patience=spec.recipe.patience, seed=spec.seed, mlflow_uri=NO_MLFLOW,
                                 **({"direct_read_max_mb": 0} if ray_data else {}))
            config.out.mkdir(parents=True)
            base = build_trainer(config, "bench", store=FeatureStore(store))  # (raydata: read, materialize), stats
            loop = base.train_loop_config
            same = loop.model == spec.model and loop.recipe == spec.recipe
            trainer = TorchTrainer(
                loop_with_threads, train_loop_config=ThreadedLoop(loop, threads, str(record)),
                torch_config=base.backend_config,
                scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=False,
                                                       resources_per_worker={"CPU": threads}),
                run_config=base.run_config, datasets=base.datasets, dataset_config=base.data_config)
            t2 = time.perf_counter()
            result = trainer.fit()
            t3 = time.perf_counter()
            with result.checkpoint.as_directory() as folder:  # the last epoch always checkpoints
                history = load_training_state(folder)["history"]
        finally:
            t4 = time.perf_counter()
            ray.shutdown()
    t5 = time.perf_counter()
    driver_cpu = process_cpu() - cpu0
    epochs = [{"epoch": int(h["epoch"]), "epoch_seconds": float(h["epoch_seconds"]),
               "videos": float(h["train_samples_per_s"]) * float(h["epoch_seconds"]),
               "train_loss": float(h["train_loss"]), "val_loss": float(h["val_loss"]), "val_map": float(h["val_map"])}
              for h in history]
    ranks = [json.loads(p.read_text()) for p in sorted(record.glob("rank*.json"))]
    epoch_total = sum(e["epoch_seconds"] for e in epochs)
    return {
        "workers": workers, "threads_per_worker": threads, "batch_per_worker": loop.batch_size,
        "data_path": "ray_data" if base.datasets else "direct",
        "same_model_and_recipe_as_plain": same, **steady(epochs),
        "run_s": round(t5 - t0, 2), "epochs_s": round(epoch_total, 2), "fixed_s": round(t5 - t0 - epoch_total, 2),
        "parts_s": {"ray_init": round(t1 - t0, 2), "build_trainer": round(t2 - t1, 2), "fit": round(t3 - t2, 2),
                    "read_history": round(t4 - t3, 2), "shutdown": round(t5 - t4, 2)},
        "cpu": {"driver_process_s": round(driver_cpu, 2), "descendants_s": round(descendants.total(), 2),
                "total_s": round(driver_cpu + descendants.total(), 2),
                "descendants_by_name_s": descendants.by_name(),
                "worker_loops": ranks},
        "epochs": rounded(epochs),
    }


def run_one(args) -> None:
    """Child process: one run, its figures written to `--record`."""
    spec = pickle.loads(args.spec.read_bytes())
    m = RUN_NAME.match(args.one)
    if m.group(1):
        out = run_plain(args.store, spec, int(m.group(1)))
    else:
        out = run_ray(args.store, spec, int(m.group(3)), int(m.group(4)), args.record.parent / args.one,
                      args.ray_cpus, ray_data=m.group(2) == "raydata")
    args.record.write_text(json.dumps(out))


# ---------------------------------------------------------------- BDLSTM vs nn.LSTM

def bench_lstm(threads: int, B: int, T: int, H: int, repeats: int) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    x = torch.randn(B, T, H, requires_grad=True)
    mask = torch.ones(B, T, dtype=torch.bool)
    bdlstm, lstm = BoundaryLSTM(H), torch.nn.LSTM(H, H, batch_first=True)
    forwards = {"bdlstm": lambda: bdlstm(x, mask)[0].sum(), "nn_lstm": lambda: lstm(x)[0].sum()}
    times = {name: {"fwd_bwd": [], "forward": [], "cpu": []} for name in forwards}
    load_before = load()
    for i in range(3 + repeats):
        for name, forward in forwards.items():  # interleaved: bdlstm, nn_lstm, bdlstm, nn_lstm, ...
            bdlstm.zero_grad(set_to_none=True)
            lstm.zero_grad(set_to_none=True)
            x.grad = None
            a, cpu = time.perf_counter(), time.process_time()
            loss = forward()
            b = time.perf_counter()
            loss.backward()
            c = time.perf_counter()
            if i >= 3:
                times[name]["fwd_bwd"].append(c - a)
                times[name]["forward"].append(b - a)
                times[name]["cpu"].append(time.process_time() - cpu)
    out = {"threads": torch.get_num_threads()}
    for name, t in times.items():
        out[name] = {"fwd_bwd_ms_median": round(1000 * statistics.median(t["fwd_bwd"]), 3),
                     "fwd_bwd_ms_min": round(1000 * min(t["fwd_bwd"]), 3),
                     "forward_ms_median": round(1000 * statistics.median(t["forward"]), 3),
                     "process_cpu_ms_median": round(1000 * statistics.median(t["cpu"]), 3)}
    out["ratio_fwd_bwd_median_bdlstm_to_lstm"] = round(out["bdlstm"]["fwd_bwd_ms_median"]
                                                       / out["nn_lstm"]["fwd_bwd_ms_median"], 2)
    out["ratio_fwd_bwd_min_bdlstm_to_lstm"] = round(out["bdlstm"]["fwd_bwd_ms_min"]
                                                    / out["nn_lstm"]["fwd_bwd_ms_min"], 2)
    out["load_average_before"], out["load_average_after"] = load_before, load()
    print(f"lstm {threads} thread(s): BDLSTM {out['bdlstm']['fwd_bwd_ms_median']} ms, nn.LSTM "
          f"{out['nn_lstm']['fwd_bwd_ms_median']} ms (x{out['ratio_fwd_bwd_median_bdlstm_to_lstm']})", flush=True)
    return out


# ---------------------------------------------------------------- the interleaved rounds

def summarize(runs: list[dict]) -> dict:
    """Median and best over rounds per run name: best = max for videos/s, min for seconds."""
    summary = {}
    for name in dict.fromkeys(r["name"] for r in runs):
        rs = [r for r in runs if r["name"] == name]
        summary[name] = {
            "steady_videos_per_s": spread([r["samples_per_s"] for r in rs], max),
            "run_s": spread([r["run_s"] for r in rs], min),
            "process_wall_s": spread([r["process_wall_s"] for r in rs], min),
            "epochs_s": spread([r["epochs_s"] for r in rs], min),
            "fixed_s": spread([r["fixed_s"] for r in rs], min),
            "cpu_total_s": spread([r["cpu"]["total_s"] for r in rs], min),
            "process_cpu_s_reaped": spread([r["process_cpu_s_reaped"] for r in rs], min),
        }
    return summary


def ratios(summary: dict) -> dict:
    """Ray / plain at equal threads (workers x threads per worker = plain threads)."""
    out = {}
    for name, s in summary.items():
        m = RUN_NAME.match(name)
        plain = f"plain_{int(m.group(3)) * int(m.group(4))}t" if m.group(2) else None
        if plain in summary:
            p = summary[plain]
            out[f"{name}/{plain}"] = {
                "steady_videos_per_s_median": round(s["steady_videos_per_s"]["median"]
                                                    / p["steady_videos_per_s"]["median"], 3),
                "steady_videos_per_s_best": round(s["steady_videos_per_s"]["best"] / p["steady_videos_per_s"]["best"],
                                                  3),
                "run_s_median": round(s["run_s"]["median"] / p["run_s"]["median"], 2),
                "cpu_total_s_median": round(s["cpu_total_s"]["median"] / p["cpu_total_s"]["median"], 2),
                "ray_fixed_s_median": s["fixed_s"]["median"],
                "plain_fixed_s_median": p["fixed_s"]["median"],
            }
    return out


def child_command(name: str, store: Path, spec: Path, record: Path, args) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--one", name, "--store", str(store), "--spec", str(spec),
            "--record", str(record), "--ray-cpus", str(args.ray_cpus)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-videos", type=int, default=400)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--recipe", default="default", choices=sorted(RECIPES))
    p.add_argument("--task", default="sub")
    p.add_argument("--variant", default="asrn")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--runs", default="plain_1t,ray_1w_1t,plain_2t,ray_2w_1t",
                   help="one round, in order: plain_<T>t, ray_<W>w_<T>t and raydata_<W>w_<T>t, comma-separated")
    p.add_argument("--ray-cpus", type=int, default=None, help="logical CPUs of the local Ray (default 2x cores)")
    p.add_argument("--lstm-threads", default="1,2", help="torch threads of the BDLSTM/nn.LSTM runs; '' skips")
    p.add_argument("--lstm-repeats", type=int, default=30)
    p.add_argument("--lstm-batch", type=int, default=32)
    p.add_argument("--lstm-steps", type=int, default=48)
    p.add_argument("--lstm-hidden", type=int, default=256)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "train.json")
    p.add_argument("--command-line", action="store_true",
                   help="measure `asrn train` as a command instead (own Ray and joined Ray; benchmarks/train_cli.py)")
    p.add_argument("--cli-epochs", default="1,6", help="with --command-line: the two epoch counts")
    p.add_argument("--one", help=argparse.SUPPRESS)  # child process: one run
    p.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--record", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    args.ray_cpus = args.ray_cpus or 2 * (os.cpu_count() or 1)
    if args.one:
        run_one(args)
        return 0
    names = [n for n in args.runs.split(",") if n]
    bad = [n for n in names if not RUN_NAME.match(n)]
    if bad:
        p.error(f"--runs: {', '.join(bad)} not of the form plain_<T>t, ray_<W>w_<T>t or raydata_<W>w_<T>t")

    from asrn.synth_features import synthesize_feature_store
    from asrn.train import TrainConfig, loop_config_for

    if args.command_line:
        return command_line(args, argv)
    info = machine()
    started = time.perf_counter()
    runs = []
    with tempfile.TemporaryDirectory(prefix="asrn-bench-train-") as tmp:
        work = Path(tmp)
        store = synthesize_feature_store(work / "store", num_videos=args.num_videos, seed=0)
        num_train = len(FeatureStore(store).split_ids("train"))
        config = TrainConfig(features=store, task=args.task, out=work, variant=args.variant, recipe=args.recipe,
                             epochs=args.epochs, patience=args.epochs + 1)
        loop = loop_config_for(config, FeatureStore(store))
        spec = Spec(task=loop.task, model=loop.model, recipe=loop.recipe, batch_size=loop.batch_size, seed=loop.seed,
                    variant=args.variant)
        (work / "spec.pkl").write_bytes(pickle.dumps(spec))
        for round_ in range(1, args.rounds + 1):
            for name in names:
                record = work / f"round{round_}" / f"{name}.json"
                record.parent.mkdir(exist_ok=True)
                load_before, reaped0, t0 = load(), children_cpu(), time.perf_counter()
                with open(work / f"round{round_}-{name}.log", "w") as log:
                    code = subprocess.call(child_command(name, store, work / "spec.pkl", record, args),
                                           stdout=log, stderr=subprocess.STDOUT)
                wall, reaped = time.perf_counter() - t0, children_cpu() - reaped0
                if code:
                    print(Path(log.name).read_text()[-5000:], file=sys.stderr)
                    raise SystemExit(f"round {round_} {name}: exit status {code}")
                run = {"name": name, "round": round_, **json.loads(record.read_text()),
                       "process_wall_s": round(wall, 2), "process_cpu_s_reaped": round(reaped, 2),
                       "load_average_before": load_before, "load_average_after": load()}
                runs.append(run)
                print(f"round {round_} {name}: {run['samples_per_s']} videos/s steady, run {run['run_s']} s "
                      f"(process {run['process_wall_s']} s), fixed {run['fixed_s']} s, cpu {run['cpu']['total_s']} s, "
                      f"load {run['load_average_before'][0]}->{run['load_average_after'][0]}", flush=True)
    lstm = {f"{t}_threads": bench_lstm(t, args.lstm_batch, args.lstm_steps, args.lstm_hidden, args.lstm_repeats)
            for t in (int(v) for v in args.lstm_threads.split(",") if v)}
    summary = summarize(runs)
    one_minute = [r[k][0] for r in runs for k in ("load_average_before", "load_average_after")]
    result = {
        "benchmark": "ASRN training on a synthetic feature store: Ray Train (TorchTrainer, gloo, CPU) vs a plain "
                     "PyTorch loop on the same recipe, LoopConfig and threads; BoundaryLSTM vs nn.LSTM step time",
        "method": "fresh process per run; runs interleaved in rounds (order below, repeated); median and best of "
                  "the rounds; steady = epochs 2..N of the train pass; whole run = start to trained model; CPU time "
                  "beside wall time (see the docstring of benchmarks/train.py for what each span covers)",
        "command": " ".join(["python", "benchmarks/train.py", *(argv if argv is not None else sys.argv[1:])]),
        "settings": {"num_videos": args.num_videos, "train_videos": num_train, "epochs": args.epochs,
                     "task": args.task, "variant": args.variant, "recipe": asdict(spec.recipe),
                     "hidden": spec.model.hidden, "batch_size_global": spec.batch_size, "rounds": args.rounds,
                     "round_order": names, "ray_logical_cpus": args.ray_cpus, "mlflow": "off", "backend": "gloo",
                     "lstm_input": {"B": args.lstm_batch, "T": args.lstm_steps, "H": args.lstm_hidden,
                                    "repeats": args.lstm_repeats}},
        "machine": info,
        "load_average_1min_over_runs": {"min": min(one_minute), "median": statistics.median(one_minute),
                                        "max": max(one_minute)},
        "summary": summary,
        "ratio_ray_to_plain": ratios(summary),
        "lstm": lstm,
        "runs": runs,
        "load_average_end": load(),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    write_results(args.out, result)
    print(json.dumps({k: result[k] for k in ("load_average_1min_over_runs", "summary", "ratio_ray_to_plain")},
                     indent=1))
    print(f"written to {args.out}")
    return 0


def command_line(args, argv: list[str] | None) -> int:
    """`--command-line`: benchmarks/train_cli.py's rounds, written to results/train_cli.json."""
    from train_cli import bench_command_line

    from asrn.synth_features import synthesize_feature_store
    from asrn.train import TrainConfig, loop_config_for

    info, started = machine(), time.perf_counter()
    low, high = (int(v) for v in args.cli_epochs.split(","))
    with tempfile.TemporaryDirectory(prefix="asrn-bench-cli-") as tmp:
        work = Path(tmp)
        store = synthesize_feature_store(work / "store", num_videos=args.num_videos, seed=0)
        config = TrainConfig(features=store, task=args.task, out=work, recipe=args.recipe, epochs=high,
                             patience=high + 1)
        loop = loop_config_for(config, FeatureStore(store))
        spec = Spec(task=loop.task, model=loop.model, recipe=loop.recipe, batch_size=loop.batch_size, seed=loop.seed,
                    variant=args.variant)
        measured = bench_command_line(store, spec, run_plain, work, args.rounds, [low, high])
    result = {"benchmark": "asrn train as a command: fixed cost and per-epoch cost, starting its own Ray and joining "
                           "a running one, against the plain loop's epoch (see benchmarks/train_cli.py)",
              "command": " ".join(["python", "benchmarks/train.py", *(argv if argv is not None else sys.argv[1:])]),
              "settings": {"num_videos": args.num_videos, "rounds": args.rounds, "workers": 1,
                           "recipe": args.recipe, "mlflow": "sqlite"},
              "machine": info, **measured, "load_average_end": load(),
              "wall_seconds": round(time.perf_counter() - started, 1)}
    out = args.out if args.out.name != "train.json" else args.out.with_name("train_cli.json")
    write_results(out, result)
    print(json.dumps(result["summary"], indent=1))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
