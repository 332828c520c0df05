"""What every benchmark shares: what it ran on, recorded beside its figures (the machine is shared: the load average
matters), the spread of a figure over rounds, and how its results file is written."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict:
    return {"nproc": os.cpu_count(), "cpu_model": cpu_model(), "torch_threads": torch.get_num_threads(),
            "load_average_at_start": load(), "python": platform.python_version(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def spread(values: list[float], best) -> dict:
    """A figure over the rounds: median, best (`best` is max for rates, min for seconds) and every value."""
    return {"median": round(statistics.median(values), 2), "best": round(best(values), 2),
            "all": [round(v, 2) for v in values]}


def write_results(out: Path, result: dict) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return out
