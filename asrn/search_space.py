"""Search spaces for `asrn tune`: a YAML file of hyperparameter → distribution, checked before any trial.

    lr: {distribution: loguniform, low: 1.0e-4, high: 1.0e-1}
    batch_size: {distribution: choice, values: [8, 16, 32, 64]}
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from asrn.errors import AsrnError

DEFAULT_SPACE = Path(__file__).resolve().parent.parent / "tuning" / "spaces" / "default.yaml"

# hyperparameter -> (type, valid open/closed range check) of the matching TrainConfig field
HYPERPARAMETERS: dict[str, type] = {"dropout": float, "lr": float, "weight_decay": float, "batch_size": int,
                                    "hidden": int}
DISTRIBUTIONS: tuple[str, ...] = ("uniform", "loguniform", "choice", "randint")


class SearchSpaceError(AsrnError):
    """A search space that names an unknown hyperparameter or holds an empty or bad distribution."""


@dataclass(frozen=True)
class Dimension:
    name: str
    distribution: str
    low: float | None = None
    high: float | None = None
    values: tuple[Any, ...] = ()

    def to_tune(self):
        """The matching `ray.tune` sampler (OptunaSearch converts these to Optuna distributions)."""
        from ray import tune

        if self.distribution == "uniform":
            return tune.uniform(self.low, self.high)
        if self.distribution == "loguniform":
            return tune.loguniform(self.low, self.high)
        if self.distribution == "randint":
            return tune.randint(int(self.low), int(self.high))
        return tune.choice(list(self.values))


def _valid_value(name: str, value: Any) -> bool:
    if name in ("dropout", "weight_decay"):
        return isinstance(value, int | float) and not isinstance(value, bool) and 0.0 <= value < 1.0
    if name in ("lr",):
        return isinstance(value, int | float) and value > 0 and math.isfinite(value)
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1  # batch_size, hidden


def _dimension(name: str, spec: Any, where: str) -> Dimension:
    if name not in HYPERPARAMETERS:
        raise SearchSpaceError(f"{where}: unknown hyperparameter {name!r} (known: {', '.join(HYPERPARAMETERS)})")
    if not isinstance(spec, dict) or "distribution" not in spec:
        raise SearchSpaceError(f"{where}: {name!r} needs a mapping with a 'distribution' key")
    dist = spec["distribution"]
    if dist not in DISTRIBUTIONS:
        raise SearchSpaceError(f"{where}: {name!r} has bad distribution {dist!r} (expected {', '.join(DISTRIBUTIONS)})")
    unknown_keys = set(spec) - {"distribution", "low", "high", "values"}
    if unknown_keys:
        raise SearchSpaceError(f"{where}: {name!r} has unknown key(s) {', '.join(sorted(unknown_keys))}")
    if dist == "choice":
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise SearchSpaceError(f"{where}: {name!r} choice needs a non-empty 'values' list")
        bad = [v for v in values if not _valid_value(name, v)]
        if bad:
            raise SearchSpaceError(f"{where}: {name!r} has invalid value(s) {bad}")
        return Dimension(name, dist, values=tuple(values))
    low, high = spec.get("low"), spec.get("high")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)):
        raise SearchSpaceError(f"{where}: {name!r} {dist} needs numeric 'low' and 'high'")
    if not low < high:
        raise SearchSpaceError(f"{where}: {name!r} has an empty range [{low}, {high}]")
    if dist == "loguniform" and low <= 0:
        raise SearchSpaceError(f"{where}: {name!r} loguniform needs low > 0, got {low}")
    if dist == "randint" and HYPERPARAMETERS[name] is not int:
        raise SearchSpaceError(f"{where}: {name!r} is a float; randint fits integer hyperparameters only")
    if HYPERPARAMETERS[name] is int and dist != "randint":
        raise SearchSpaceError(f"{where}: {name!r} is an integer; use choice or randint, not {dist}")
    edge_high = high - 1 if dist == "randint" else high
    if not (_valid_value(name, HYPERPARAMETERS[name](low)) and _valid_value(name, HYPERPARAMETERS[name](edge_high))):
        raise SearchSpaceError(f"{where}: {name!r} range [{low}, {high}] leaves the valid values of {name}")
    return Dimension(name, dist, low=float(low), high=float(high))


def load_search_space(path: str | os.PathLike | None = None) -> dict[str, Dimension]:
    """Parse and check a search space YAML (default: tuning/spaces/default.yaml)."""
    path = Path(path) if path is not None else DEFAULT_SPACE
    if not path.is_file():
        raise SearchSpaceError(f"{path}: search space file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SearchSpaceError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(raw, dict) or not raw:
        raise SearchSpaceError(f"{path}: expected a mapping of hyperparameter -> distribution")
    return {name: _dimension(str(name), spec, str(path)) for name, spec in raw.items()}


def to_tune_space(space: dict[str, Dimension]) -> dict[str, Any]:
    return {name: dim.to_tune() for name, dim in space.items()}
