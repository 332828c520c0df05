"""The 16 SRIV relation classes (paper Table 1), qualified by group, and multi-hot encoding.

`friendly` exists in both groups, so every name is written `group:class` (`sub:warm`, `obj:friendly`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from asrn.errors import AsrnError

# SRIV class counts, paper Table 1. Order here is the order of model outputs.
SUB_COUNTS: dict[str, int] = {
    "dominant": 770, "competitive": 840, "trusting": 1614, "warm": 1482,
    "friendly": 2221, "attached": 600, "inhibited": 594, "assured": 810,
}
OBJ_COUNTS: dict[str, int] = {
    "supervisor": 627, "peer": 469, "service": 238, "parent": 321,
    "mating": 600, "sibling": 141, "friendly": 1073, "hostile": 434,
}
SRIV_COUNTS: dict[str, int] = {
    **{f"sub:{name}": n for name, n in SUB_COUNTS.items()},
    **{f"obj:{name}": n for name, n in OBJ_COUNTS.items()},
}
ALL_LABELS: tuple[str, ...] = tuple(SRIV_COUNTS)
TASKS: tuple[str, ...] = ("sub", "obj", "all")


class UnknownLabelError(AsrnError):
    """A relation name that is not one of the 16 qualified classes."""


class UnknownTaskError(AsrnError):
    """A task other than `sub`, `obj` or `all`."""


def check_task(task: str) -> str:
    if task not in TASKS:
        raise UnknownTaskError(f"unknown task {task!r}: expected one of {', '.join(TASKS)}")
    return task


def task_labels(task: str) -> tuple[str, ...]:
    """The ordered class names a model for `task` predicts (8 for sub/obj, 16 for all)."""
    check_task(task)
    if task == "all":
        return ALL_LABELS
    return tuple(name for name in ALL_LABELS if name.startswith(f"{task}:"))


def check_label(name: str) -> str:
    """Return `name` if it is a qualified class name, else raise naming it."""
    if name not in SRIV_COUNTS:
        hint = ""
        bare = [q for q in ALL_LABELS if q.split(":", 1)[1] == name]
        if bare:
            hint = f" (did you mean {' or '.join(bare)}?)"
        raise UnknownLabelError(f"unknown label {name!r}{hint}; labels are written group:class, e.g. sub:warm")
    return name


def parse_labels(text: str) -> tuple[str, ...]:
    """Parse `sub:warm|obj:peer` into validated qualified names."""
    names = tuple(part.strip() for part in text.split("|") if part.strip())
    return tuple(check_label(name) for name in names)


def encode(labels: Iterable[str], task: str) -> np.ndarray:
    """Multi-hot vector (C,) float32 over `task_labels(task)`.

    Labels of the other group are ignored (a video carries both kinds); unknown names raise.
    """
    classes = task_labels(task)
    index = {name: i for i, name in enumerate(classes)}
    target = np.zeros(len(classes), dtype=np.float32)
    for name in labels:
        check_label(name)
        if name in index:
            target[index[name]] = 1.0
    return target


def decode(multi_hot: Sequence[float] | np.ndarray, task: str, threshold: float = 0.5) -> list[str]:
    """Class names whose entry is at or above `threshold` (scores or 0/1 targets)."""
    classes = task_labels(task)
    values = np.asarray(multi_hot, dtype=np.float64)
    if values.shape != (len(classes),):
        raise ValueError(f"expected {len(classes)} values for task {task!r}, got shape {values.shape}")
    return [name for name, v in zip(classes, values, strict=True) if v >= threshold]
