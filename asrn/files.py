"""Atomic output files: a reader (or a crash) never sees half a file, and every JSON is strict.

Each writer writes a temporary file beside the target and renames it over the target, which POSIX makes atomic.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path`, on failure it is removed."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_output(path) as temporary:
        temporary.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike, value) -> Path:
    """Strict JSON (NaN and infinities refused, as JSON itself does), indented, atomically."""
    return write_text(path, json.dumps(value, indent=2, allow_nan=False) + "\n")
