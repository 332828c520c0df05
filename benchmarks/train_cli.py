"""What a user waits for: `asrn train` as a command, starting its own Ray or joining a running one, against the plain
PyTorch loop's epoch on the same store (GitHub issue 22; `python benchmarks/train.py --command-line` runs it).

    python benchmarks/train.py --command-line [--num-videos 200] [--cli-epochs 1,6] [--rounds 3]

Method:
- One synthetic store (seed 0) and one sqlite MLflow store for every run; each run is a fresh `asrn train` process
  (1 Train worker, default recipe, early stopping off), timed from its start to its exit by this script.
- Two modes: `own` (the command starts its lean local Ray, asrn.ray_session) and `join` (`--address` of one lean
  Ray started once with `ray start --head` and the same environment; its start is not counted).
- Rounds interleave every (mode, epochs) pair: own E1, join E1, own E2, join E2, repeated; the 1-minute load average
  before and after each run is recorded.
- An epoch's cost in the command: the median whole cycle of an epoch in the worker (train, validate, report, wait
  for the controller's poll; epochs 2..E2-1), which the worker reports; the fixed cost: the E2 run's wall time less E2
  such epochs. (An epoch is a fraction of a second here, so the linear model wall(E) = fixed + E x epoch over
  two runs drowns in their noise; both are recorded.)
- The command's own console lines, timestamped here, split the E2 run into phases: start to "ray:" (imports,
  store check, MLflow run), Ray start, store loading, Train start to the first epoch's line, and the end
  (best.pt, scores, MLflow model).
- The plain loop's epoch (train pass + validation, asrn.loop, 1 thread, in-process, no Ray) is measured in this
  process before the rounds; the per-epoch overhead is the command's epoch minus it.
- CPU: the command's process tree as reaped by this script (getrusage of children: the driver and what it waited
  for; the Ray processes of a joined cluster are not counted).
"""

from __future__ import annotations

import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import load, spread

EPOCH_LINE = re.compile(r"^epoch (\d+)/\d+:")
PHASES = ("start_to_ray_s", "ray_start_s", "store_s", "train_start_s", "end_s")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def phases(lines: list[tuple[float, str]], wall: float) -> dict:
    """Phases of one run from its timestamped console lines (seconds since its start)."""
    def first(pattern: str) -> float:
        return next(t for t, line in lines if re.search(pattern, line))

    ray, loaded = first(r"^ray: "), first(r"^store: loaded")
    store_first = first(r"^store \[1/")
    epochs = [t for t, line in lines if EPOCH_LINE.match(line)]
    return {"start_to_ray_s": ray, "ray_start_s": store_first - ray, "store_s": loaded - store_first,
            "train_start_s": epochs[0] - loaded, "end_s": wall - epochs[-1]}


def epoch_gap(out: Path, tracking: str) -> float | None:
    """The median whole cycle of an epoch in the worker (train, validate, report and wait for the controller to take
    the report; epochs 2..E-1), as the worker logs it (`previous_epoch_cycle_seconds`): the lines a driver prints
    arrive in batches (Ray forwards worker output so, and MLflow's writer catches up in bursts)."""
    import json

    from mlflow import MlflowClient

    run_id = json.loads((out / "mlflow_run.json").read_text())["run_id"]
    cycles = [m.value for m in MlflowClient(tracking).get_metric_history(run_id, "previous_epoch_cycle_seconds")
              if m.step >= 3 and np.isfinite(m.value)]  # the cycle of epochs 2.. (epoch 1 warms up)
    return float(np.median(cycles)) if cycles else None


def run_command(store: Path, out: Path, epochs: int, tracking: str, address: str | None, env: dict) -> dict:
    command = [str(Path(sys.executable).parent / "asrn"), "train", "--features", str(store), "--task", "sub",
               "--out", str(out), "--epochs", str(epochs), "--patience", str(epochs + 1), "--num-workers", "1",
               "--tracking-uri", tracking, *(["--address", address] if address else [])]
    before, cpu0, t0 = load(), children_cpu(), time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, **env, "PYTHONUNBUFFERED": "1"})
    lines = [(time.perf_counter() - t0, line.rstrip()) for line in process.stdout]
    wall = time.perf_counter() - t0
    if process.wait():
        raise SystemExit(f"{' '.join(command)} failed:\n" + "\n".join(line for _, line in lines[-30:]))
    gap = epoch_gap(out, tracking)
    return {"epochs": epochs, "wall_s": round(wall, 2), "cpu_reaped_s": round(children_cpu() - cpu0, 2),
            **({"epoch_gap_s": round(gap, 3)} if gap is not None else {}),
            "load_before": before, "load_after": load(), "phases": {k: round(v, 2) for k, v in
                                                                    phases(lines, wall).items()}}


def start_lean_ray(work: Path) -> tuple[subprocess.Popen, str, dict]:
    """One lean Ray (`ray start --head`, the environment of asrn.ray_session, token authentication as
    cluster/local.sh sets it up), for the `join` runs; returns it, its address and the clients' environment."""
    from asrn.ray_session import API_SERVER_ENV, lean_environment

    lean_environment()
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    gcs, dashboard = ports
    (work / "auth_token").write_text(os.urandom(32).hex())
    client = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(work / "auth_token")}
    env = {**os.environ, **client, API_SERVER_ENV: f"http://127.0.0.1:{dashboard}"}
    temp = tempfile.mkdtemp(prefix="ray-bench-", dir="/tmp")
    process = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
                                "--node-ip-address=127.0.0.1", f"--port={gcs}", f"--dashboard-port={dashboard}",
                                "--dashboard-host=127.0.0.1", f"--temp-dir={temp}", "--disable-usage-stats"],
                               stdout=(work / "ray-start.log").open("w"), stderr=subprocess.STDOUT,
                               start_new_session=True, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", gcs)) == 0:
                time.sleep(3)  # the raylet registers after the GCS listens
                return process, f"127.0.0.1:{gcs}", client
        if process.poll() is not None:
            break
        time.sleep(0.5)
    raise SystemExit(f"ray start failed: {(work / 'ray-start.log').read_text()[-3000:]}")


def plain_epoch_seconds(store: Path, spec, run_plain) -> dict:
    result = run_plain(store, spec, threads=1)
    rest = result["epochs"][1:] or result["epochs"]
    per_epoch = [e["epoch_seconds"] + e["val_seconds"] for e in rest]
    return {"epoch_with_validation_s": round(statistics.median(per_epoch), 3), "run": result}


def estimates(runs: list[dict], low: int, high: int) -> dict:
    """Per round: epoch and fixed cost (see the module docstring), and the two-run linear model beside them."""
    by_round = {}
    for run in runs:
        by_round.setdefault(run["round"], {})[run["epochs"]] = run
    epoch = [r[high]["epoch_gap_s"] for r in by_round.values()]
    fixed = [r[high]["wall_s"] - high * e for r, e in zip(by_round.values(), epoch, strict=True)]
    linear = [(r[high]["wall_s"] - r[low]["wall_s"]) / (high - low) for r in by_round.values()]
    return {"epoch_s": spread(epoch, min), "fixed_s": spread(fixed, min),
            "linear_model_epoch_s": spread(linear, min)}


def bench_command_line(store: Path, spec, run_plain, work: Path, rounds: int, epoch_counts: list[int]) -> dict:
    low, high = epoch_counts
    plain = plain_epoch_seconds(store, spec, run_plain)
    tracking = f"sqlite:///{work / 'mlflow.db'}"
    cluster, address, client = start_lean_ray(work)
    runs = []
    try:
        for round_ in range(1, rounds + 1):
            for epochs in (low, high):
                for mode in ("own", "join"):
                    out = work / f"cli-{mode}-{epochs}-{round_}"
                    run = {"mode": mode, "round": round_,
                           **run_command(store, out, epochs, tracking, *((address, client) if mode == "join"
                                                                          else (None, {})))}
                    runs.append(run)
                    print(f"round {round_} {mode} {epochs} epoch(s): {run['wall_s']} s, epoch gap "
                          f"{run.get('epoch_gap_s')} s, phases {run['phases']}, "
                          f"load {run['load_before'][0]}->{run['load_after'][0]}", flush=True)
    finally:
        os.killpg(cluster.pid, signal.SIGTERM)
        cluster.wait(timeout=60)
    summary = {}
    for mode in ("own", "join"):
        mine = [r for r in runs if r["mode"] == mode]
        summary[mode] = estimates(mine, low, high)
        summary[mode]["epoch_overhead_s"] = spread(
            [e - plain["epoch_with_validation_s"] for e in summary[mode]["epoch_s"]["all"]], min)
        summary[mode]["phases_of_the_long_run"] = {
            k: spread([r["phases"][k] for r in mine if r["epochs"] == high], min) for k in PHASES}
    return {"plain_loop": {"epoch_with_validation_s": plain["epoch_with_validation_s"], "threads": 1},
            "epoch_counts": [low, high], "summary": summary, "runs": runs}
