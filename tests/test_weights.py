"""asrn weights fetch: downloads from a local HTTP server, the sha256 check, and the one-line offline error."""

from __future__ import annotations

import functools
import hashlib
import http.server
import re
import socket
import threading

import pytest

from asrn.encoders import PRESETS, fetch_weights, missing_weights
from asrn.weights import WeightsFetchError, cache_dir, download_weights


@pytest.fixture
def no_proxy(monkeypatch):
    """Loopback URLs go straight to loopback, whatever proxy the machine sets."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "*")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def served(tmp_path, no_proxy):
    """(folder, base URL): a real HTTP server on 127.0.0.1 serving the folder."""
    folder = tmp_path / "served"
    folder.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}/models/"
    server.shutdown()
    server.server_close()


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_download_checks_the_hash_in_the_name_and_skips_what_is_there(served, tmp_path, capsys):
    folder, base = served
    (folder / "models").mkdir()
    payload = b"weights of a tiny net" * 1000
    good = f"tiny-{hashlib.sha256(payload).hexdigest()[:8]}.pth"
    (folder / "models" / good).write_bytes(payload)
    (folder / "models" / "resnet18-f37072fd.pth").write_bytes(b"<html>a proxy's error page</html>")
    target = tmp_path / "weights"
    assert download_weights([base + good], target) == [target / good]
    assert (target / good).read_bytes() == payload
    assert download_weights([base + good], target) == [target / good]  # already there: not fetched again
    assert "already in" in capsys.readouterr().err

    with pytest.raises(WeightsFetchError, match=r"resnet18-f37072fd.pth: downloaded 33 bytes whose sha256 .* does "
                                                r"not start with f37072fd"):
        download_weights([base + "resnet18-f37072fd.pth"], target)
    with pytest.raises(WeightsFetchError, match=r"cannot reach .*/absent-0123abcd.pth \(HTTPError: HTTP Error 404"):
        download_weights([base + "absent-0123abcd.pth"], target)
    assert sorted(p.name for p in target.iterdir()) == [good]  # nothing half-written left


def test_fetch_offline_says_what_it_could_not_reach_and_how_to_place_the_files(offline, closed_port, no_proxy,
                                                                               capsys):
    mirror = f"http://127.0.0.1:{closed_port}/models"
    with pytest.raises(WeightsFetchError) as raised:
        fetch_weights("paper", offline, mirror=mirror, timeout=5)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"cannot reach {mirror}/resnet101-cd907fc2.pth (URLError: ")
    assert "Place the files by hand: download resnet101-cd907fc2.pth, vgg19-dcbb9e9d.pth from" in message
    assert f"copy them into {offline} (then pass --weights-dir" in message
    assert "face: dlib's dlib_face_recognition_resnet_model_v1 ships with" in capsys.readouterr().err
    assert list(offline.iterdir()) == []

    with pytest.raises(WeightsFetchError) as raised:  # default folder: torchvision's cache (under TORCH_HOME)
        fetch_weights("lite", mirror=mirror, detector=True, timeout=5)
    message = str(raised.value)
    assert "resnet18-f37072fd.pth, fasterrcnn_resnet50_fpn_coco-258fb6c6.pth" in message
    assert str(cache_dir()) in message and "--weights-dir" not in message
    assert str(offline.parent / "torch-home") in str(cache_dir())


def test_missing_weights_names_the_files_without_loading_them(offline):
    assert [str(m) for m in missing_weights("lite", offline)] == [
        "rgb (resnet18-f37072fd.pth)", "motion (resnet18-f37072fd.pth)", "body (resnet18-f37072fd.pth)"]
    assert [m.downloadable for m in missing_weights("lite", offline)] == [True, True, True]  # face: dlib's, shipped
    (offline / "resnet101-cd907fc2.pth").write_bytes(b"")  # found by name, never read
    (offline / "deepid.pth").write_bytes(b"")
    assert [str(m) for m in missing_weights("paper", offline)] == ["body (vgg19-dcbb9e9d.pth)"]
    assert set(PRESETS) == {"paper", "lite"}


def test_fetched_files_are_where_extract_looks(served, offline, monkeypatch):
    """A file fetched into torchvision's cache is what the encoders then load (provenance pretrained:...)."""
    import torch
    import torchvision

    from asrn import weights

    folder, base = served
    (folder / "models").mkdir()
    torch.manual_seed(1)
    state = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(state, folder / "models" / "resnet18-f37072fd.pth")
    monkeypatch.setattr(weights, "_HASH_IN_NAME", re.compile(r"(?!)"))  # a stand-in: its bytes are not torchvision's
    assert fetch_weights("lite", mirror=base, timeout=5) == [cache_dir() / "resnet18-f37072fd.pth"]
    loaded, provenance = weights.resolve_weights("resnet18", None)
    assert provenance == "pretrained:ResNet18_Weights.IMAGENET1K_V1"
    torch.testing.assert_close(loaded["conv1.weight"], state["conv1.weight"])
    assert [str(m) for m in missing_weights("lite", offline)] == []


def test_cli_weights_fetch_offline_is_one_line_and_exit_1(offline, closed_port, no_proxy, capsys):
    from asrn.cli import main

    code = main(["weights", "fetch", "--preset", "lite", "--dir", str(offline),
                 "--mirror", f"http://127.0.0.1:{closed_port}/models"])
    err = capsys.readouterr().err
    assert code == 1
    line = [x for x in err.splitlines() if x.startswith("asrn weights")]
    assert len(line) == 1 and "cannot reach" in line[0] and "Traceback" not in err
