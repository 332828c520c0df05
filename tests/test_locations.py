"""asrn.locations and asrn.files: local paths, file:// and s3:// (a real S3-compatible server) read and write alike."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from asrn.files import atomic_output, write_json, write_text
from asrn.locations import Location


def test_a_uri_keeps_its_double_slash_and_joins_with_single_ones():
    store = Location("s3://bucket/features/")
    assert str(store / "features.json") == "s3://bucket/features/features.json"
    assert (store / "features.json").name == "features.json"
    assert str((store / "errors" / "part-1.parquet").parent) == "s3://bucket/features/errors"
    assert str(Location("s3://bucket").parent) == "s3://bucket"
    assert store.is_uri and not store.is_local


def test_a_local_path_stays_what_it_was(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    relative = Location("run") / "metrics.json"
    assert str(relative) == str(Path("run") / "metrics.json") and relative.path == Path("run/metrics.json")
    assert relative.is_local and not relative.is_uri
    assert relative.absolute().path == tmp_path / "run" / "metrics.json"
    assert Location(f"file://{tmp_path}/a b.json").path == tmp_path / "a b.json"
    with pytest.raises(ValueError, match="s3://bucket/x: not a local path"):
        Location("s3://bucket/x").path  # noqa: B018 - the property is what raises


def _round_trip(folder: Location) -> None:
    write_json(folder / "a.json", {"x": 1})
    write_text(folder / "b.txt", "old")
    write_text(folder / "b.txt", "new")  # replaces
    with atomic_output(folder / "t.parquet") as temporary:
        pq.write_table(pa.table({"x": [1, 2]}), temporary)
    assert json.loads((folder / "a.json").read_text()) == {"x": 1}
    assert (folder / "b.txt").read_text() == "new"
    assert [f.name for f in folder.files()] == ["a.json", "b.txt", "t.parquet"]
    assert [f.name for f in folder.files(".parquet")] == ["t.parquet"]
    filesystem, path = (folder / "t.parquet").filesystem_path()
    assert pq.read_table(path, filesystem=filesystem).column("x").to_pylist() == [1, 2]
    assert folder.is_dir() and (folder / "a.json").is_file() and (folder / "b.txt").size() == 3
    assert not (folder / "c.json").exists() and (folder / "nothing").files() == []


def test_local_round_trip(tmp_path):
    _round_trip(Location(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.txt", "t.parquet"]  # no temporary left


def test_file_uri_round_trip(tmp_path):
    _round_trip(Location(f"file://{tmp_path}"))
    assert (tmp_path / "b.txt").read_text() == "new"


def test_s3_round_trip(s3_folder):
    _round_trip(Location(s3_folder))


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_failed_write_leaves_the_old_file(tmp_path, s3_folder, where):
    target = (Location(tmp_path) if where == "local" else Location(s3_folder)) / "metrics.json"
    write_json(target, {"epoch": 1})
    with pytest.raises(ValueError):
        write_json(target, {"loss": float("nan")})  # strict JSON: refused while writing the temporary file
    with pytest.raises(RuntimeError), atomic_output(target) as temporary:
        temporary.write_text('{"half": ')
        raise RuntimeError("crash before the write completed")
    assert json.loads(target.read_text()) == {"epoch": 1}
    assert [f.name for f in target.parent.files()] == ["metrics.json"]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_missing_file_is_named(tmp_path, s3_folder, where):
    missing = (Location(tmp_path) if where == "local" else Location(s3_folder)) / "features.json"
    with pytest.raises(FileNotFoundError, match=f"not found: '{missing}'"):
        missing.read_bytes()


@pytest.mark.parametrize("where", ["local", "s3"])
def test_delete_removes_a_file_and_ignores_a_missing_one(tmp_path, s3_folder, where):
    folder = Location(tmp_path) if where == "local" else Location(s3_folder)
    write_text(folder / "a.txt", "a")
    (folder / "a.txt").delete()
    (folder / "a.txt").delete()  # already gone: nothing to do
    assert not (folder / "a.txt").exists()
