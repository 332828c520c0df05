from pathlib import Path

import pytest

from asrn.files import write_text
from asrn.locations import Location
from asrn.manifest import ManifestError, read_manifest, write_manifest


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "manifest.csv"
    path.write_text(text)
    return path


def test_good_manifest_resolves_paths(tmp_path):
    path = _write(tmp_path, "video_id,path,split,labels,boxes\n"
                            "v1,videos/v1.mp4,train,sub:warm|obj:peer,boxes/v1.json\n"
                            "v2,/abs/v2.mp4,val,obj:hostile,\n"
                            "v3,s3://bucket/v3.mp4,test,sub:dominant,\n")
    entries = read_manifest(path)
    assert [e.video_id for e in entries] == ["v1", "v2", "v3"]
    assert entries[0].path == str(tmp_path / "videos" / "v1.mp4")
    assert entries[0].boxes == str(tmp_path / "boxes" / "v1.json")
    assert entries[0].labels == ("sub:warm", "obj:peer")
    assert entries[1].path == "/abs/v2.mp4" and entries[1].boxes is None
    assert entries[2].path == "s3://bucket/v3.mp4"


def test_every_problem_reported_with_its_line(tmp_path):
    path = _write(tmp_path, "video_id,path,split,labels\n"
                            "v1,a.mp4,train,sub:warm\n"
                            "v1,b.mp4,train,sub:warm\n"        # line 3: duplicate
                            "v3,c.mp4,holdout,sub:warm\n"      # line 4: bad split
                            "v4,d.mp4,test,sub:angry\n"        # line 5: unknown label
                            "v5,,test,sub:warm\n")             # line 6: empty path
    with pytest.raises(ManifestError) as info:
        read_manifest(path)
    message = str(info.value)
    assert "4 problem(s)" in message
    assert ":3: duplicate video_id 'v1' (first on line 2)" in message
    assert ":4: bad split 'holdout'" in message
    assert ":5: unknown label 'sub:angry'" in message
    assert ":6: empty path" in message


def test_missing_column_and_missing_file(tmp_path):
    with pytest.raises(ManifestError, match="missing column.*labels"):
        read_manifest(_write(tmp_path, "video_id,path,split\nv1,a.mp4,train\n"))
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "nope.csv")


def test_write_then_read(tmp_path):
    write_manifest(tmp_path / "m.csv", [{"video_id": "a", "path": "a.mp4", "split": "train", "labels": "sub:warm"}])
    assert read_manifest(tmp_path / "m.csv")[0].labels == ("sub:warm",)


def test_excel_bom_is_accepted(tmp_path):
    path = tmp_path / "manifest.csv"
    path.write_bytes(b"\xef\xbb\xbfvideo_id,path,split,labels\nv1,a.mp4,train,sub:warm\n")
    assert [e.video_id for e in read_manifest(path)] == ["v1"]


def test_a_latin1_manifest_is_named_with_its_line(tmp_path):
    path = tmp_path / "manifest.csv"
    path.write_bytes("video_id,path,split,labels\nv1,a.mp4,train,sub:warm\nv2,caf\u00e9.mp4,val,sub:warm\n"
                     .encode("latin-1"))
    with pytest.raises(ManifestError, match=r"manifest.csv:3: not UTF-8"):
        read_manifest(path)


def test_a_repeated_header_column_is_refused(tmp_path):
    path = _write(tmp_path, "video_id,path,split,labels,split\nv1,a.mp4,train,sub:warm,test\n")
    with pytest.raises(ManifestError, match=r":1: column\(s\) split appear more than once"):
        read_manifest(path)


@pytest.mark.parametrize("video_id", ["../../x", "/abs/path", "a/b", "..", "bad\x00id", "new\nline"])
def test_video_ids_that_are_paths_are_refused(tmp_path, video_id):
    path = tmp_path / "manifest.csv"  # written by hand: Python 3.10's csv module cannot write a NUL
    path.write_text(f'video_id,path,split,labels\n"{video_id}",a.mp4,train,sub:warm\n', newline="")
    with pytest.raises(ManifestError, match="path separator, '..' or a control character|empty video_id|"
                                            "control character is not"):
        read_manifest(path)


def test_relative_paths_may_not_leave_the_manifests_folder(tmp_path):
    path = _write(tmp_path, "video_id,path,split,labels,boxes\n"
                            "v1,../../etc/passwd,train,sub:warm,\n"
                            "v2,ok.mp4,train,sub:warm,../boxes.json\n")
    with pytest.raises(ManifestError) as e:
        read_manifest(path)
    assert ":2: path of video 'v1': relative path '../../etc/passwd' leaves" in str(e.value)
    assert ":3: boxes of video 'v2'" in str(e.value)
    assert "root:" not in str(e.value)  # never quotes file contents


def test_a_manifest_on_s3_resolves_its_relative_paths_beside_it(s3_folder):
    manifest = Location(s3_folder) / "videos" / "manifest.csv"
    write_text(manifest, "video_id,path,split,labels,boxes\n"
                         "v1,clips/v1.mp4,train,sub:warm,./boxes/v1.json\n"
                         "v2,s3://other/v2.mp4,val,obj:hostile,\n"
                         "v3,../v3.mp4,test,sub:dominant,\n")
    with pytest.raises(ManifestError, match=rf"{manifest}:4: path of video 'v3': relative path '../v3.mp4' leaves"):
        read_manifest(manifest)
    write_text(manifest, manifest.read_text().replace("../v3.mp4", "v3.mp4"))
    entries = read_manifest(str(manifest))
    assert [(e.path, e.boxes) for e in entries] == [
        (f"{s3_folder}/videos/clips/v1.mp4", f"{s3_folder}/videos/boxes/v1.json"), ("s3://other/v2.mp4", None),
        (f"{s3_folder}/videos/v3.mp4", None)]
    with pytest.raises(ManifestError, match=f"^{s3_folder}/nope.csv: manifest not found"):
        read_manifest(f"{s3_folder}/nope.csv")
