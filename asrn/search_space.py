"""Search spaces for `asrn tune`: a YAML file of hyperparameter → distribution, checked before any trial.

    lr: {distribution: loguniform, low: 1.0e-4, high: 1.0e-1}
    batch_size: {distribution: choice, values: [8, 16, 32, 64]}

Every value a distribution can give must lie in its hyperparameter's valid range (RANGES): wide enough for any
sensible sweep, narrow enough to catch a typo before a trial runs out of memory or diverges:
    dropout                [0, 1)      TrainConfig checks these two with RANGES too
    weight_decay           [0, 10]     AdamW: weights shrink by lr x weight decay a step
    lr                     (0, 10]     an lr above 10 diverges at once with AdamW or SGD
    batch_size             [1, 4096]   well past what one GPU holds for ASRN's sequences
    hidden                 [1, 4096]   hidden 4096 already gives ~270M parameters in the BDLSTM alone
Booleans are not numbers here (YAML's `true` is not 1), and a key repeated in one mapping is refused with its line
(PyYAML would keep the last one silently).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from asrn.errors import AsrnError
from asrn.locations import Location

DEFAULT_SPACE = Path(__file__).resolve().parent.parent / "tuning" / "spaces" / "default.yaml"

# hyperparameter -> the type of the matching TrainConfig field
HYPERPARAMETERS: dict[str, type] = {"dropout": float, "lr": float, "weight_decay": float, "batch_size": int,
                                    "hidden": int}
DISTRIBUTIONS: tuple[str, ...] = ("uniform", "loguniform", "choice", "randint")


class SearchSpaceError(AsrnError):
    """A search space that names an unknown hyperparameter or holds an empty or bad distribution."""


@dataclass(frozen=True)
class Range:
    """The valid values of one hyperparameter: low..high, each end open or closed."""

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False

    def admits(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def __str__(self) -> str:
        return f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


RANGES: dict[str, Range] = {"dropout": Range(0, 1, high_open=True), "weight_decay": Range(0, 10),
                            "lr": Range(0, 10, low_open=True), "batch_size": Range(1, 4096), "hidden": Range(1, 4096)}


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int, first: int) -> None:
        super().__init__(f"line {line}: key {key!r} appears twice (first on line {first})")


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key repeated in one mapping (merge keys `<<` may still override)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise _DuplicateKey(key, line, seen[key])
                seen[key] = line
            except TypeError:  # an unhashable key: SafeLoader's own error names it
                continue
        return super().construct_mapping(node, deep=deep)


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
    """A value of the hyperparameter's type (bool is no number) within its range."""
    if isinstance(value, bool) or not isinstance(value, int if HYPERPARAMETERS[name] is int else int | float):
        return False
    return math.isfinite(value) and RANGES[name].admits(value)


def _kind(name: str) -> str:
    return "integers" if HYPERPARAMETERS[name] is int else "numbers"


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
            raise SearchSpaceError(f"{where}: {name!r} has invalid value(s) {bad} (valid: {_kind(name)} in "
                                   f"{RANGES[name]})" + _string_number_hint(*bad))
        return Dimension(name, dist, values=tuple(values))
    low, high = _bounds(name, dist, spec, where)
    return Dimension(name, dist, low=float(low), high=float(high))


def _bounds(name: str, dist: str, spec: dict, where: str) -> tuple[float, float]:
    """`low`, `high` of a uniform, loguniform or randint dimension, every value it can give in RANGES[name]."""
    low, high = spec.get("low"), spec.get("high")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)):
        raise SearchSpaceError(f"{where}: {name!r} {dist} needs numeric 'low' and 'high', got {low!r}, {high!r}"
                               + _string_number_hint(low, high))
    if not low < high:
        raise SearchSpaceError(f"{where}: {name!r} has an empty range [{low}, {high}]")
    if dist == "loguniform" and low <= 0:
        raise SearchSpaceError(f"{where}: {name!r} loguniform needs low > 0, got {low}")
    if dist == "randint" and HYPERPARAMETERS[name] is not int:
        raise SearchSpaceError(f"{where}: {name!r} is a float; randint fits integer hyperparameters only")
    if HYPERPARAMETERS[name] is int and dist != "randint":
        raise SearchSpaceError(f"{where}: {name!r} is an integer; use choice or randint, not {dist}")
    if dist == "randint" and not all(math.isfinite(v) and v == int(v) for v in (low, high)):
        raise SearchSpaceError(f"{where}: {name!r} randint needs integer 'low' and 'high', got {low}, {high}")
    edge_high = high - 1 if dist == "randint" else high  # randint's high is exclusive
    if not (_valid_value(name, HYPERPARAMETERS[name](low)) and _valid_value(name, HYPERPARAMETERS[name](edge_high))):
        raise SearchSpaceError(f"{where}: {name!r} range [{low}, {high}] leaves the valid values of {name}: "
                               f"{RANGES[name]}")
    return low, high


def _string_number_hint(*values: Any) -> str:
    """PyYAML reads YAML 1.1, where `1e8` (no dot, no exponent sign) is a string: say so."""
    for v in values:
        try:
            if isinstance(v, str) and math.isfinite(float(v)):
                return f" (YAML reads {v} as a string: write it as {float(v):.1e})"
        except ValueError:
            continue
    return ""


def load_search_space(path: str | os.PathLike | Location | None = None) -> dict[str, Dimension]:
    """Parse and check a search space YAML, a local file or a URI (default: tuning/spaces/default.yaml)."""
    path = Location(path if path is not None else DEFAULT_SPACE)
    try:
        text = path.read_text()
    except FileNotFoundError as e:
        raise SearchSpaceError(f"{path}: search space file not found") from e
    try:
        raw = yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader subclass
    except _DuplicateKey as e:
        raise SearchSpaceError(f"{path}: {e}") from e
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise SearchSpaceError(f"{path}: {at}not valid YAML ({e.problem or e.context})") from e
    except yaml.YAMLError as e:
        raise SearchSpaceError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from e
    if not isinstance(raw, dict) or not raw:
        raise SearchSpaceError(f"{path}: expected a mapping of hyperparameter -> distribution")
    return {name: _dimension(str(name), spec, str(path)) for name, spec in raw.items()}


def to_tune_space(space: dict[str, Dimension]) -> dict[str, Any]:
    return {name: dim.to_tune() for name, dim in space.items()}
