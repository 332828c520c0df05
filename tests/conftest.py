"""Shared fixtures: one real local Ray cluster and one S3-compatible server per test session (CPU only), tmp folders."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from fractions import Fraction
from pathlib import Path

import pytest

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads xdist_group to route the tests
def pytest_collection_modifyitems(items):
    """`make test` runs `pytest -n 2 --dist loadgroup`: the Ray tests go to one worker, one after another on that
    worker's Ray cluster (two clusters on one machine confuse Train V2's cleanup), while the other worker runs the
    unit tests beside them."""
    for item in items:
        if item.get_closest_marker("ray"):
            item.add_marker(pytest.mark.xdist_group("ray"))


def pytest_collection_finish(session):
    """Under --dist loadgroup, refuse to run if xdist did not group the Ray tests (as with pytest 9.2 and
    pytest-xdist 3.8): two workers would start two Ray clusters and the sweep could wait forever."""
    if getattr(session.config.option, "loadgroup", False):
        loose = [i.nodeid for i in session.items if i.get_closest_marker("ray") and not i.nodeid.endswith("@ray")]
        if loose:
            raise pytest.UsageError(f"pytest-xdist did not group {len(loose)} Ray test(s), e.g. {loose[0]}; check the "
                                    "pytest / pytest-xdist versions in pyproject.toml")


S3_BUCKET = "asrn-test"


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible HTTP server (moto's, in server mode) on 127.0.0.1, with bucket S3_BUCKET.

    Its endpoint and credentials go into the standard AWS variables of this process, as a user would set them;
    Ray's local cluster (`ray_cluster`) starts after them, so its workers inherit them.
    """
    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    settings = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "asrn-test",
                "AWS_SECRET_ACCESS_KEY": "asrn-test", "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true"}
    before = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    boto3.client("s3").create_bucket(Bucket=S3_BUCKET)
    yield f"s3://{S3_BUCKET}"
    server.stop()
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def s3_folder(s3_server, request) -> str:
    """A fresh `s3://` prefix in the test server's bucket, for one test."""
    return f"{s3_server}/{request.node.name.replace('[', '-').rstrip(']')}-{uuid.uuid4().hex[:6]}"


def s3_objects(prefix: str) -> dict[str, float]:
    """{path under `prefix`: modification time (s)} of every object under an `s3://` prefix (or a local folder)."""
    import pyarrow.fs as pafs

    from asrn.locations import Location

    filesystem, path = Location(prefix).filesystem_path()
    found = filesystem.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return {f.path[len(path):].lstrip("/"): f.mtime.timestamp() for f in found if f.type == pafs.FileType.File}


@pytest.fixture(scope="session")
def s3_listing():
    """`s3_objects` for the tests (a fixture, since test modules do not import conftest)."""
    return s3_objects


@pytest.fixture(scope="session")
def ray_cluster(s3_server):
    """A real local Ray cluster shared by every `@pytest.mark.ray` test of the session (its workers see the S3
    server's variables: they inherit the environment the cluster starts in)."""
    import ray

    from asrn.ray_session import ray_session

    # lean, as the commands start it, with the dashboard: it serves the State API that Train V2's placement-group
    # cleaner needs when Tune stops a trial (asrn.ray_session)
    with ray_session(num_cpus=4, dashboard=True):
        yield ray


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """An empty weights dir and an empty torch cache: nothing pretrained can be found."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    return weights_dir


@pytest.fixture
def rewrite_checkpoint():
    """`rewrite(src, dst, change)`: a copy of a best.pt whose dict went through `change(checkpoint)` (in place)."""
    import torch

    def rewrite(src, dst, change):
        checkpoint = torch.load(src, weights_only=True)
        change(checkpoint)
        torch.save(checkpoint, dst)
        return dst

    return rewrite


@pytest.fixture(scope="session")
def astronaut_clip():
    """Writes 2 s of skimage's astronaut (a real photograph with a real face) at 10 fps, H.264, width x height,
    shifted a few pixels per frame: `astronaut_clip(path, width, height) -> path`."""
    import av
    import cv2
    import numpy as np
    from skimage import data

    def write(path: Path, width: int, height: int) -> Path:
        image = cv2.resize(data.astronaut(), (width, height), interpolation=cv2.INTER_AREA)
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=Fraction(10))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for i in range(20):
                shift = np.float32([[1, 0, (i % 5) - 2], [0, 1, (i % 3) - 1]])
                frame = cv2.warpAffine(image, shift, (width, height), borderMode=cv2.BORDER_REFLECT)
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())
        return path

    return write
