"""Atomic output files: a reader (or a crash) never sees half a file, and every JSON is strict.

A target may be a local path or a URI (asrn.locations). On a local disk each writer writes a temporary file beside
the target and renames it over the target, which POSIX makes atomic. On an object store, which has no rename, the
temporary file is local and is then uploaded: the object appears only once the upload is complete.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from asrn.locations import Location, path_or_location


@contextmanager
def atomic_output(target: str | os.PathLike | Location) -> Iterator[Path]:
    """Yield a local temporary path to write; on success it replaces `target`, on failure it is removed."""
    target = Location(target)
    if not target.is_local:
        with tempfile.TemporaryDirectory(prefix="asrn-upload-") as folder:
            temporary = Path(folder) / target.name
            yield temporary
            target.upload(temporary)
        return
    path = target.path
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text(target: str | os.PathLike | Location, text: str) -> Path | Location:
    """`text` into `target`, atomically; returns the target as given (a Path for a local path)."""
    with atomic_output(target) as temporary:
        temporary.write_text(text)
    return path_or_location(target)


def write_json(target: str | os.PathLike | Location, value) -> Path | Location:
    """Strict JSON (NaN and infinities refused, as JSON itself does), indented, atomically."""
    return write_text(target, json.dumps(value, indent=2, allow_nan=False) + "\n")
