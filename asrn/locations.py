"""Where a file or folder lives: a local path or a URI (`s3://`, `gs://`, `file://`, ...), opened with pyarrow.fs.

`pathlib.Path` collapses the `//` of `s3://bucket/key` and `open()` reads only local disks, so every path a user
gives (a store, an output folder, a checkpoint) is held as a `Location`. A local path behaves exactly as before,
relative ones included. A URI is opened by whichever process reads it, a Ray worker as well as the driver, with the
credentials and endpoint of that process's environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...): nothing relies
on a disk shared with the driver. Writing goes through `asrn.files`, atomically where the filesystem allows it.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlparse

import pyarrow.fs as pafs

URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class Location:
    """A local path or a URI, as the user wrote it (`str()` gives it back, so messages name what they typed)."""

    __slots__ = ("text",)

    def __init__(self, where: str | os.PathLike | Location):
        self.text = where.text if isinstance(where, Location) else str(os.fspath(where))
        if not self.text:
            raise ValueError("an empty path is not a location")

    # ---------------------------------------------------------------- what it is

    @property
    def is_uri(self) -> bool:
        return bool(URI.match(self.text))

    @property
    def is_local(self) -> bool:
        """A path on this machine's disk: a plain path or a `file://` URI."""
        return not self.is_uri or self.text.lower().startswith("file://")

    @property
    def path(self) -> Path:
        """The local path; ValueError for a location on another filesystem."""
        if not self.is_local:
            raise ValueError(f"{self}: not a local path")
        return Path(unquote(urlparse(self.text).path)) if self.is_uri else Path(self.text)

    def absolute(self) -> Location:
        """The same place named from anywhere: a local path made absolute (for another process), a URI as is."""
        return Location(self.path.resolve()) if self.is_local and not self.is_uri else self

    @property
    def name(self) -> str:
        return self.text.rstrip("/").rsplit("/", 1)[-1] if self.is_uri else Path(self.text).name

    @property
    def parent(self) -> Location:
        if not self.is_uri:
            return Location(Path(self.text).parent)
        scheme = URI.match(self.text).group()
        rest = self.text[len(scheme):].rstrip("/")
        return Location(scheme + rest.rsplit("/", 1)[0]) if "/" in rest else self  # a bucket is its own parent

    def __truediv__(self, name: str) -> Location:
        if not self.is_uri:
            return Location(Path(self.text) / name)
        return Location(f"{self.text.rstrip('/')}/{name.lstrip('/')}")

    def __str__(self) -> str:
        return self.text

    def __fspath__(self) -> str:
        """A local location is path-like (open(), Path(), pyarrow take it); a remote one refuses, naming itself,
        rather than turn into a local path that drops the `//`."""
        return str(self.path)

    def __repr__(self) -> str:
        return f"Location({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Location) and self.text == other.text

    def __hash__(self) -> int:
        return hash(self.text)

    # ---------------------------------------------------------------- reading

    def filesystem_path(self) -> tuple[pafs.FileSystem, str]:
        """The pyarrow filesystem and the path within it: what `pq.read_table(path, filesystem=fs)` needs."""
        if self.is_local:
            return pafs.LocalFileSystem(), str(self.path.resolve())
        return pafs.FileSystem.from_uri(self.text)

    def info(self) -> pafs.FileInfo:
        filesystem, path = self.filesystem_path()
        return filesystem.get_file_info(path)

    def exists(self) -> bool:
        return self.info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self.info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        """A folder; on an object store, a prefix that holds objects."""
        return self.info().type == pafs.FileType.Directory

    def size(self) -> int:
        return self.info().size

    def files(self, suffix: str = "") -> list[Location]:
        """The files directly in this folder whose names end in `suffix`, sorted by name; none if it is missing."""
        filesystem, path = self.filesystem_path()
        found = filesystem.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        names = sorted(f.base_name for f in found if f.type == pafs.FileType.File and f.base_name.endswith(suffix))
        return [self / name for name in names]

    def read_bytes(self) -> bytes:
        """The whole file; FileNotFoundError naming this location when there is none."""
        filesystem, path = self.filesystem_path()
        try:
            with filesystem.open_input_stream(path) as stream:
                return stream.read()
        except FileNotFoundError as e:
            raise FileNotFoundError(errno.ENOENT, "not found", self.text) from e
        except OSError as e:
            if not self.exists():  # object stores say "not found" in their own words
                raise FileNotFoundError(errno.ENOENT, "not found", self.text) from e
            raise

    def read_text(self) -> str:
        return self.read_bytes().decode()

    # ---------------------------------------------------------------- writing (atomic ones: asrn.files)

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """`Path.mkdir` on a local disk; nothing on an object store, which has no folders to create."""
        if self.is_local:
            self.path.mkdir(parents=parents, exist_ok=exist_ok)

    def delete(self) -> None:
        """Remove this file; nothing if there is none (a crash may have removed it already)."""
        filesystem, path = self.filesystem_path()
        try:
            filesystem.delete_file(path)
        except FileNotFoundError:
            pass

    def upload(self, local: str | os.PathLike) -> None:
        """Copy a local file here. An object store shows the object only once the upload is complete (one PUT, or a
        multipart upload's final request), never half of it."""
        filesystem, path = self.filesystem_path()
        pafs.copy_files(os.fspath(local), path, destination_filesystem=filesystem)


def path_or_location(target: str | os.PathLike | Location) -> Path | Location:
    """What a writer returns for `target`: a Path for a local path given as one (as callers have always had), a
    Location for a URI or a Location."""
    where = Location(target)
    return where if where.is_uri or isinstance(target, Location) else Path(target)


@contextmanager
def local_copy(where: str | os.PathLike | Location) -> Iterator[Path]:
    """A local path holding the file's content, for libraries that open only local files (MLflow's artifacts): the
    file itself on a local disk, else a download into a temporary folder, removed afterwards."""
    where = Location(where)
    if where.is_local:
        yield where.path
        return
    with tempfile.TemporaryDirectory(prefix="asrn-download-") as folder:
        copy = Path(folder) / where.name
        copy.write_bytes(where.read_bytes())
        yield copy
