"""Cluster configs and the local multi-node cluster: `ray_cluster.yaml` passes Ray's own validation and its
setup commands install the locked environment in a fresh copy, the KubeRay manifests and the Dockerfile are
what KubeRay, MLflow's host check and the Makefile expect, `cluster/local.sh` runs a real two-node Ray
cluster with token authentication and an MLflow server that a `jobs.train` job trains on, and `asrn tune`
waits on a cluster with no CPUs until a node joins.

The local cluster here is its own (ports and state dir differ from `local.sh`'s defaults and from the
session's `ray_cluster` fixture), and `local.sh down` kills only its own processes.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
LOCAL_SH = REPO / "cluster" / "local.sh"
VENV_BIN = Path(sys.executable).parent
PORTS = {"ASRN_RAY_PORT": "6390", "ASRN_DASHBOARD_PORT": "8276", "ASRN_MLFLOW_PORT": "5065",
         "ASRN_RAY_CLIENT_PORT": "20012", "ASRN_AGENT_PORT_BASE": "52450", "ASRN_WORKER_PORT_BASE": "23000"}


def test_ray_cluster_yaml_passes_ray_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    config = prepare_config(raw)
    validate_config(config)

    assert config["provider"]["type"] == "aws"
    head = config["available_node_types"][config["head_node_type"]]
    assert "g" not in head["node_config"]["InstanceType"].split(".")[0]  # a CPU head
    gpu = config["available_node_types"]["gpu_worker"]
    assert gpu["min_workers"] == 0 and gpu["max_workers"] >= 1
    assert gpu["node_config"]["InstanceType"].startswith(("g4dn", "g5", "g6", "p3", "p4", "p5"))
    head_cmds = " ".join(config["head_start_ray_commands"])
    assert "mlflow server" in head_cmds and "--artifacts-destination s3://" in head_cmds
    # the MLflow store outlives `ray down`: a database named in SSM, nothing on the head's root disk
    assert "sqlite" not in head_cmds and "--backend-store-uri" not in head_cmds
    assert "MLFLOW_BACKEND_STORE_URI=\"$uri\"" in head_cmds and "/asrn/mlflow-backend-store-uri" in head_cmds
    assert "--dashboard-host=127.0.0.1" in head_cmds
    for cmds in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        assert "RAY_AUTH_MODE=token" in cmds[-1]
    setup = " ".join(config["setup_commands"])
    assert "make env PYTHON_VERSION=3.11" in setup and "uv python install" not in setup
    assert "~/.ray/auth_token" in config["file_mounts"]
    for name, node_type in config["available_node_types"].items():
        assert node_type["node_config"]["SecurityGroupIds"]  # our own group: SSH from one CIDR only
        profile = node_type["node_config"]["IamInstanceProfile"]["Arn"]  # S3 from every node, workers too
        assert profile.endswith(("instance-profile/asrn-ray-head", "instance-profile/asrn-ray-worker")), name


def test_the_iam_policies_let_every_node_read_and_write_the_bucket():
    """cluster/aws/*.json, which cluster/README.md attaches to both roles (the head's also gets EC2 access)."""
    folder = REPO / "cluster" / "aws"
    bucket = json.loads((folder / "bucket-policy.json").read_text())["Statement"]
    granted = {(action, statement["Resource"]) for statement in bucket for action in statement["Action"]
               if statement["Effect"] == "Allow"}
    for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject"):
        assert (action, "arn:aws:s3:::REPLACE-WITH-BUCKET/*") in granted
    assert ("s3:ListBucket", "arn:aws:s3:::REPLACE-WITH-BUCKET") in granted
    head = {s["Action"]: s["Resource"] for s in json.loads((folder / "head-policy.json").read_text())["Statement"]}
    assert head["iam:PassRole"].endswith(":role/asrn-ray-worker")
    assert head["ssm:GetParameter"].endswith(":parameter/asrn/mlflow-backend-store-uri")
    trust = json.loads((folder / "ec2-trust.json").read_text())["Statement"][0]
    assert trust["Principal"] == {"Service": "ec2.amazonaws.com"} and trust["Action"] == "sts:AssumeRole"


def _uv_cache_dir() -> str:
    return subprocess.run(["uv", "cache", "dir"], capture_output=True, text=True, check=True).stdout.strip()


def test_ray_cluster_setup_commands_install_the_locked_env_in_a_fresh_copy(tmp_path):
    """`setup_commands` of ray_cluster.yaml, run as `ray up` runs them on a node: in a copy of the project's
    tracked files (what `file_mounts` rsyncs; .venv and other ignored paths excluded) under an empty HOME.

    What needs the cloud is not run: installing uv with curl (skipped by the command itself, uv being on PATH
    here) and `head_setup_commands` (boto3 and psycopg2 from PyPI). To stay off the network, UV_CACHE_DIR is
    this machine's uv cache (`uv cache dir`) and UV_OFFLINE=1; the Python is this machine's 3.11. Ray runs
    each command in `bash --login -i`; here it is `bash -c`, as a login shell would reset a root PATH.
    """
    if shutil.which("uv") is None or shutil.which("make") is None:
        pytest.skip("needs uv and make on PATH")
    config = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    assert config["file_mounts"]["~/asrn-ray"] == "."
    home = tmp_path / "home"
    project = home / "asrn-ray"
    tracked = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        if (REPO / name).is_file():
            (project / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, project / name)
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text("0" * 64)  # the token file_mounts copies
    path = [p for p in os.environ["PATH"].split(os.pathsep) if not p.startswith(str(REPO))]
    env = {"HOME": str(home), "PATH": os.pathsep.join(path), "UV_CACHE_DIR": _uv_cache_dir(), "UV_OFFLINE": "1",
           "LANG": "C.UTF-8"}
    if os.environ.get("PYENV_ROOT") or (Path.home() / ".pyenv").is_dir():  # pyenv shims find it without HOME
        env["PYENV_ROOT"] = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    found = subprocess.run(["uv", "python", "find", "3.11"], env=env, capture_output=True, text=True)
    if found.returncode != 0:
        pytest.skip("no Python 3.11 on this machine (a node would download one; this test stays offline)")

    for command in config["setup_commands"]:
        run = subprocess.run(["bash", "-c", command], cwd=home, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, f"{command}\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}"

    python = project / ".venv" / "bin" / "python"
    probe = ("import json, sys, importlib.metadata as m, asrn; print(json.dumps({'python': sys.version_info[:2], "
             "'ray': m.version('ray'), 'mlflow': m.version('mlflow'), 'asrn': asrn.__file__}))")
    check = subprocess.run([str(python), "-c", probe], cwd=home, env=env, capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr
    installed, lock = json.loads(check.stdout), (REPO / "uv.lock").read_text()
    assert installed["python"] == [3, 11]
    for name in ("ray", "mlflow"):
        assert f'name = "{name}"\nversion = "{installed[name]}"' in lock, name
    module = installed["asrn"]
    assert module.startswith(str(project))  # the copy's own asrn, installed from the copy
    assert stat.S_IMODE((home / ".ray" / "auth_token").stat().st_mode) == 0o600
    bashrc = (home / ".bashrc").read_text()
    assert "export PATH=$HOME/asrn-ray/.venv/bin:$PATH" in bashrc and "export RAY_AUTH_MODE=token" in bashrc


def test_kuberay_manifests_parse_with_the_right_kinds():
    folder = REPO / "cluster" / "kuberay"
    cluster = yaml.safe_load((folder / "raycluster.yaml").read_text())
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
    gpu_groups = [g for g in cluster["spec"]["workerGroupSpecs"]
                  if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]]
    assert gpu_groups and gpu_groups[0]["minReplicas"] == 0

    for name in ("extract", "train", "tune"):
        job = yaml.safe_load((folder / f"rayjob-{name}.yaml").read_text())
        assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
        assert job["spec"]["entrypoint"].startswith(f"python -m jobs.{name} ")
        assert job["spec"]["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]


def _kuberay(name: str) -> list[dict]:
    return list(yaml.safe_load_all((REPO / "cluster" / "kuberay" / f"{name}.yaml").read_text()))


def _mlflow_container() -> dict:
    (cluster,) = _kuberay("raycluster")
    (mlflow,) = [c for c in cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"] if c["name"] == "mlflow"]
    return mlflow


def test_kuberay_mlflow_server_accepts_the_service_name_the_jobs_use(monkeypatch):
    """MLflow's own Host check (mlflow.server.security_utils, what its middleware calls) with the manifest's
    --allowed-hosts, which `mlflow server` hands to the app as MLFLOW_SERVER_ALLOWED_HOSTS."""
    from mlflow.server.security_utils import (
        get_allowed_hosts_from_env,
        get_default_allowed_hosts,
        is_allowed_host_header,
    )

    (cluster,) = _kuberay("raycluster")
    env = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    uri = next(e["value"] for e in env if e["name"] == "MLFLOW_TRACKING_URI")
    host = uri.removeprefix("http://")
    assert host == "asrn-head-svc:5000" and cluster["metadata"]["name"] + "-head-svc" == host.split(":")[0]
    assert not is_allowed_host_header(get_default_allowed_hosts(), host)  # the 403 without --allowed-hosts

    command = _mlflow_container()["command"]
    monkeypatch.setenv("MLFLOW_SERVER_ALLOWED_HOSTS", command[command.index("--allowed-hosts") + 1])
    allowed = get_allowed_hosts_from_env()
    for good in (host, "asrn-head-svc.default.svc.cluster.local:5000", "localhost:5000", "127.0.0.1:5000"):
        assert is_allowed_host_header(allowed, good), good
    for bad in ("evil.example.com:5000", "asrn-head-svc.evil.example.com:5000", "asrn-head-svc:5001", ""):
        assert not is_allowed_host_header(allowed, bad), bad


def test_kuberay_token_auth_is_kuberays_own_and_the_submitters_read_the_same_secret():
    (cluster,) = _kuberay("raycluster")
    auth = cluster["spec"]["authOptions"]
    assert auth["mode"] == "token" and auth["secretName"]
    groups = [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]
    for group in groups:  # the operator injects RAY_AUTH_MODE / RAY_AUTH_TOKEN; set by hand they would clash
        for container in group["template"]["spec"]["containers"]:
            assert not {e["name"] for e in container.get("env", [])} & {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}
    for name in ("extract", "train", "tune"):
        (job,) = _kuberay(f"rayjob-{name}")
        env = {e["name"]: e for e in job["spec"]["submitterPodTemplate"]["spec"]["containers"][0]["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": auth["secretName"], "key": "auth_token"}


def test_kuberay_volumes_are_claims_the_manifests_create():
    claims = {d["metadata"]["name"]: d for d in _kuberay("storage") if d["kind"] == "PersistentVolumeClaim"}
    (cluster,) = _kuberay("raycluster")
    groups = [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]
    for group in groups:
        for volume in group["template"]["spec"]["volumes"]:
            assert volume["persistentVolumeClaim"]["claimName"] in claims, volume
    assert claims["asrn-shared"]["spec"]["accessModes"] == ["ReadWriteMany"]  # every pod mounts it
    command = _mlflow_container()["command"]
    assert command[command.index("--backend-store-uri") + 1] == "sqlite:////mnt/mlflow/mlflow.db"
    assert {"name": "mlflow", "mountPath": "/mnt/mlflow"} in _mlflow_container()["volumeMounts"]
    for name in ("extract", "train", "tune"):  # outputs on the shared claim (or S3)
        (job,) = _kuberay(f"rayjob-{name}")
        paths = [a for a in job["spec"]["entrypoint"].split() if a.startswith(("/", "s3://"))]
        assert paths and all(p.startswith(("/mnt/shared/", "s3://")) for p in paths), paths


def test_dockerfile_installs_with_make_env_from_the_lock():
    """The image's install is `make env` (CUDA torch by default, `--build-arg TORCH=cpu` for CPU torch): what
    `make -n` says those two commands run is `uv sync --frozen` from uv.lock. The image is not built here."""
    text = (REPO / "Dockerfile").read_text()
    assert "ARG TORCH=\n" in text and "make env TORCH=${TORCH} PYTHON_VERSION=3.11" in text
    assert text.startswith("#") and "\nFROM python:3.11-" in text
    assert (REPO / ".dockerignore").read_text().split("\n").count(".venv") == 1
    if shutil.which("make") is None:
        pytest.skip("needs make")

    def dry_run(torch: str) -> str:
        run = subprocess.run(["make", "-n", "env", f"TORCH={torch}", "PYTHON_VERSION=3.11"], cwd=REPO,
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        return run.stdout

    lock = (REPO / "uv.lock").read_text()
    torch = lock.split('name = "torch"\nversion = "')[1].split('"')[0]
    cuda = dry_run("")
    assert "sync --frozen --python 3.11" in cuda and "--no-install-package" not in cuda
    cpu = dry_run("cpu")
    assert "sync --frozen --python 3.11" in cpu and "--no-install-package torch" in cpu and f"torch=={torch}+cpu" in cpu


def _fast_env(state: Path, **extra: str) -> dict[str, str]:
    """The environment of a `local.sh` call that starts nothing: its own state dir and ports."""
    env = {**os.environ, **PORTS, "ASRN_CLUSTER_DIR": str(state), **extra}
    env.pop("ASRN_LOCAL_CLUSTER", None)
    return env


@pytest.mark.parametrize("name", [";echo INJECTED", "$(echo INJECTED)", "`echo INJECTED`", "a b'\"\n;echo INJECTED #"])
def test_env_exports_are_quoted_for_eval(tmp_path, name):
    state = tmp_path / f"cluster{name}"
    script = f'eval "$(bash {shlex.quote(str(LOCAL_SH))} env)" && printf %s "$RAY_AUTH_TOKEN_PATH"'
    run = subprocess.run(["bash", "-c", script], env=_fast_env(state), capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    assert "INJECTED" not in run.stderr and run.stdout == f"{state}/auth_token"


def test_a_port_that_is_not_a_number_is_refused(tmp_path):
    env = _fast_env(tmp_path, ASRN_RAY_PORT="6390; touch pwned")
    run = subprocess.run(["bash", str(LOCAL_SH), "env"], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=30)
    assert run.returncode == 1 and "ASRN_RAY_PORT=6390; touch pwned is not a whole number" in run.stderr
    assert not (tmp_path / "pwned").exists()


def _start_time(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]


def _down(state: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(LOCAL_SH), "down"], env=_fast_env(state), capture_output=True, text=True,
                          timeout=60)


@pytest.fixture
def foreign():
    """A process of someone else's, leading its own process group (as a cluster node would)."""
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("content", ["{pid}\n", "{pid} {start}0\n", "{pid} {start}\n", " {pid} x\n"],
                         ids=["no start time", "reused pid", "not marked as ours", "garbage"])
def test_down_leaves_a_foreign_process_group_alone(tmp_path, foreign, content):
    state = tmp_path / "state"
    state.mkdir()
    (state / "head.pid").write_text(content.format(pid=foreign.pid, start=_start_time(foreign.pid)))
    down = _down(state)
    assert down.returncode == 0, down.stderr
    assert "not signalling head" in down.stderr and "stopping head" not in down.stderr
    time.sleep(0.2)
    assert foreign.poll() is None, "local.sh down killed a process that is not the cluster's"
    assert not (state / "head.pid").exists()


def _children(pid: int) -> list[int]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if found:
            return [int(c) for c in found]
        time.sleep(0.05)
    raise AssertionError(f"process {pid} started no child")


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_down_stops_the_whole_process_group_it_started(tmp_path):
    """The leader carries the marker, its child does not: only the group signal can stop the child."""
    state = (tmp_path / "state").resolve()
    state.mkdir()
    leader = subprocess.Popen(["bash", "-c", "env -u ASRN_LOCAL_CLUSTER sleep 60 & wait"], start_new_session=True,
                              env={**os.environ, "ASRN_LOCAL_CLUSTER": str(state)})
    try:
        (child,) = _children(leader.pid)
        (state / "head.pid").write_text(f"{leader.pid} {_start_time(leader.pid)}\n")
        down = _down(state)
        assert down.returncode == 0 and f"stopping head (process group {leader.pid})" in down.stderr, down.stderr
        leader.wait(timeout=10)
        deadline = time.monotonic() + 10
        while not _gone(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(child)
    finally:
        leader.kill()
        leader.wait()


def test_up_makes_the_state_dir_and_logs_private(tmp_path):
    """Checked before anything starts: here `up` stops at its ray[default] check (a venv whose python fails)."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(shutil.which("false"))
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    up = subprocess.run(["bash", str(LOCAL_SH), "up"], env=_fast_env(state, ASRN_VENV=str(venv)),
                        capture_output=True, text=True, timeout=60)
    assert up.returncode == 1 and "needs ray[default]" in up.stderr and not up.stdout
    for folder in (state, state / "logs"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


def _our_processes(state: Path) -> list[str]:
    """Live processes started by this cluster: the marker in their environment, or the state dir in argv."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"ASRN_LOCAL_CLUSTER={state}".encode() in environ or str(state) in cmdline:
            found.append(f"{proc.name}: {cmdline[:200]}")
    return found


def _parse_exports(text: str) -> dict[str, str]:
    exports = {}
    for line in text.splitlines():
        assert line.startswith("export "), f"`up` printed a non-export line to stdout: {line!r}"
        key, _, value = line[len("export "):].partition("=")
        exports[key] = value
    return exports


@pytest.fixture(scope="module")
def local_cluster(s3_server):
    """`cluster/local.sh up`, started after the session's S3 server so that its nodes see its AWS variables."""
    state = Path(tempfile.mkdtemp(prefix="asrn-cl-", dir="/tmp"))  # short: Ray's socket paths live under it
    env = {**os.environ, **PORTS, "ASRN_CLUSTER_DIR": str(state), "ASRN_VENV": str(VENV_BIN.parent),
           "ASRN_UP_TIMEOUT": "400"}
    for key in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    try:
        up = subprocess.run(["bash", str(LOCAL_SH), "up"], env=env, capture_output=True, text=True, timeout=480)
        assert up.returncode == 0, up.stderr[-3000:]
        exports = _parse_exports(up.stdout)
        yield {"state": state, "exports": exports, "env": {**env, **exports}}
    finally:
        down = subprocess.run(["bash", str(LOCAL_SH), "down"], env=env, capture_output=True, text=True, timeout=120)
        left = _our_processes(state)
        shutil.rmtree(state, ignore_errors=True)
        assert down.returncode == 0, down.stderr[-3000:]
        assert not left, "local.sh down left processes behind:\n" + "\n".join(left)


def _http(url: str, token: str | None = None, data: dict | None = None) -> int:
    request = urllib.request.Request(url, data=json.dumps(data).encode() if data else None,
                                     headers={"Content-Type": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.mark.ray
def test_local_cluster_prints_the_client_environment(local_cluster):
    exports = local_cluster["exports"]
    assert exports["RAY_ADDRESS"] == f"http://127.0.0.1:{PORTS['ASRN_DASHBOARD_PORT']}"
    assert exports["ASRN_RAY_ADDRESS"] == f"127.0.0.1:{PORTS['ASRN_RAY_PORT']}"  # what `asrn` commands join
    assert exports["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{PORTS['ASRN_MLFLOW_PORT']}"
    assert exports["RAY_AUTH_MODE"] == "token"
    assert Path(exports["RAY_AUTH_TOKEN_PATH"]).read_text().strip()


def _listening(port: int) -> set[str]:
    """The addresses on which some TCP socket of this machine listens at `port` (from /proc/net/tcp, tcp6)."""
    found = set()
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            raw = b"".join(bytes.fromhex(address[i:i + 8])[::-1] for i in range(0, len(address), 8))
            found.add(socket.inet_ntop(family, raw))
    return found


@pytest.mark.ray
def test_local_cluster_listens_on_loopback_and_keeps_its_state_private(local_cluster):
    for name in ("ASRN_DASHBOARD_PORT", "ASRN_MLFLOW_PORT"):
        assert _listening(int(PORTS[name])) == {"127.0.0.1"}, name
    metrics = int(PORTS["ASRN_AGENT_PORT_BASE"]) + 4  # Ray's token-less Prometheus endpoint, head and worker
    assert not _listening(metrics) and not _listening(metrics + 10)
    state = local_cluster["state"]
    for path, mode in ((state, 0o700), (state / "logs", 0o700), (state / "auth_token", 0o600)):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path


@pytest.mark.ray
def test_job_server_refuses_a_request_without_the_token(local_cluster):
    address = local_cluster["exports"]["RAY_ADDRESS"]
    token = Path(local_cluster["exports"]["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    assert _http(f"{address}/api/jobs/", data={"entrypoint": "echo hi"}) in (401, 403)
    assert _http(f"{address}/api/jobs/", token="0" * 64) in (401, 403)
    assert _http(f"{address}/api/jobs/", token=token) == 200


@pytest.mark.ray
def test_a_train_job_streams_an_s3_store_and_writes_everything_to_s3(local_cluster, s3_folder, s3_listing,
                                                                     tmp_path):
    """`ray job submit ... jobs.train` on the local two-node cluster with the store, --out and --storage on S3 and
    the store above --direct-read-max-mb (Ray Data reads it: read tasks on either node, two DDP workers); the
    job logs to the cluster's MLflow server, and `asrn predict` scores a video from the best.pt on S3."""
    from asrn.cli import main
    from asrn.locations import Location

    local = tmp_path / "features"
    assert main(["synth", "features", "--out", str(local), "--num-videos", "24", "--seed", "0"]) == 0
    features, out, storage = f"{s3_folder}/features", f"{s3_folder}/run", f"{s3_folder}/ray"
    Location(features).upload(local)
    shutil.rmtree(local)

    env = local_cluster["env"]
    job_id = f"asrn-test-train-{int(time.time())}"
    submit = subprocess.run(
        [str(VENV_BIN / "ray"), "job", "submit", "--submission-id", job_id, "--working-dir", str(REPO), "--",
         "python", "-m", "jobs.train", "--features", features, "--task", "sub", "--out", out, "--storage", storage,
         "--direct-read-max-mb", "0", "--epochs", "2", "--num-workers", "2", "--batch-size", "8",
         "--experiment", "cluster-test"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    status = subprocess.run([str(VENV_BIN / "ray"), "job", "status", job_id], env=env,
                            capture_output=True, text=True, timeout=60)
    console = submit.stdout + submit.stderr
    assert "succeeded" in (status.stdout + status.stderr).lower(), console[-4000:]
    assert "store [1/3]: reading the train split (" in console and "store [2/3]: reading the val split" in console

    written = s3_listing(out)
    assert {"best.pt", "metrics.json", "predictions.parquet", "loss_curves.png", "per_class.png", "config.json",
            "ray_run.json", "mlflow_run.json"} <= set(written), sorted(written)
    run = json.loads((Location(out) / "ray_run.json").read_text())
    assert run["storage_path"] == storage
    assert any(k.startswith(f"{run['name']}/checkpoint_") and k.endswith("/state.pt") for k in s3_listing(storage))
    metrics = json.loads((Location(out) / "metrics.json").read_text())
    assert metrics["best_epoch"] in (1, 2) and 0 <= metrics["test"]["map"] <= 1

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=local_cluster["exports"]["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("cluster-test")
    assert experiment is not None, "the job logged no experiment to the cluster's MLflow server"
    runs = client.search_runs([experiment.experiment_id])
    assert runs and runs[0].info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "train_loss")] == [1, 2]

    # the model, read back from S3 by a plain process (no Ray), scores a video with the store's own dims
    from asrn.checkpoint import load_checkpoint

    model, saved = load_checkpoint(f"{out}/best.pt")
    assert saved["path"] == f"{out}/best.pt" and saved["task"] == "sub" and saved["epoch"] == metrics["best_epoch"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_ports(worker_ports: int) -> list[str]:
    """A node's agent ports (free now) and its 100 worker ports from `worker_ports`: two nodes on one host must not
    share Ray's defaults. The worker ranges lie below the kernel's ephemeral range, where every `_free_port` comes
    from, so no single port can fall inside one (Ray refuses to start the node then)."""
    return ["--dashboard-agent-listen-port", str(_free_port()), "--dashboard-agent-grpc-port", str(_free_port()),
            "--runtime-env-agent-port", str(_free_port()), "--metrics-export-port", str(_free_port()),
            "--min-worker-port", str(worker_ports), "--max-worker-port", str(worker_ports + 99)]


def _worker_port_bases(nodes: int) -> list[int]:
    """Disjoint 100-port blocks below the ephemeral range, at a random place (other runs on this host)."""
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    first = random.randrange(20000, ephemeral_low - 100 * nodes, 100)
    return [first + 100 * i for i in range(nodes)]


@pytest.mark.ray
def test_tune_on_a_cluster_with_no_cpus_waits_for_a_node_to_join(tmp_path, s3_folder, s3_listing):
    """A fresh autoscaling cluster: a head with `--num-cpus 0` and no workers. `asrn tune` warns and queues its
    trial (it used to refuse); a worker node joins with `ray start --address` (what the autoscaler would do) and
    the sweep finishes. Every process here carries a marker in its environment and is stopped by it.

    Two nodes that share no disk, as far as one machine allows: the store, the storage and --out are on the
    session's S3 server (the local copy of the store is deleted), the head offers no CPU so every trial, Train
    worker and read runs on the second node, and that node starts in its own working, home and temporary
    folders."""
    from asrn.cli import main
    from asrn.locations import Location

    local = tmp_path / "features"
    assert main(["synth", "features", "--out", str(local), "--num-videos", "24", "--seed", "0"]) == 0
    features, storage = f"{s3_folder}/features", f"{s3_folder}/storage"
    Location(features).upload(local)
    shutil.rmtree(local)
    elsewhere = Path(tempfile.mkdtemp(prefix="asrn-node2-"))  # the second node's working and temporary folders
    state = Path(tempfile.mkdtemp(prefix="asrn-q-", dir="/tmp"))  # short: Ray's socket paths live under it
    gcs = f"127.0.0.1:{_free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH", "MLFLOW_"))}
    (state / "auth_token").write_text(os.urandom(32).hex())
    env.update(ASRN_LOCAL_CLUSTER=str(state), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(state / "auth_token"),
               RAY_USAGE_STATS_ENABLED="0", RAY_enable_metrics_collection="0",
               RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S="600", RAY_agent_register_timeout_ms="120000",
               RAY_raylet_start_wait_time_s="120", PATH=f"{VENV_BIN}:{env['PATH']}")
    common = ["--block", "--disable-usage-stats", "--node-ip-address", "127.0.0.1", "--temp-dir", str(state / "ray"),
              "--num-gpus", "0", "--object-store-memory", "200000000"]
    started: list[subprocess.Popen] = []
    head_ports, worker_ports = _worker_port_bases(2)

    def start(name: str, args: list[str], cwd: Path = tmp_path, **extra_env: str) -> subprocess.Popen:
        log = (state / f"{name}.log").open("w")
        proc = subprocess.Popen(args, env={**env, **extra_env}, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        started.append(proc)
        return proc

    def wait_for(what: str, done, name: str, seconds: float = 600):
        proc, deadline = started[-1], time.monotonic() + seconds
        while not done():
            log = (state / f"{name}.log").read_text()[-3000:]
            assert proc.poll() is None or done(), f"{what}: {name} exited ({proc.returncode}):\n{log}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{log}"
            time.sleep(1)

    # beside the session's cluster, its workers must be told where their own State API is (asrn.ray_session)
    dashboard = _free_port()
    env["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{dashboard}"
    try:
        start("head", [str(VENV_BIN / "ray"), "start", "--head", "--port", gcs.split(":")[1],
                              "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
                              "--num-cpus", "0", *common, *_node_ports(head_ports)])
        wait_for("the GCS", lambda: socket.socket().connect_ex(("127.0.0.1", int(gcs.split(":")[1]))) == 0, "head")
        out = f"{s3_folder}/out"  # the sweep's outputs too: only MLflow's sqlite file is on this disk
        driver_log = state / "driver.log"
        driver = start("driver", [
            str(VENV_BIN / "asrn"), "tune", "--features", features, "--storage", storage, "--task", "sub",
            "--out", out,
            "--num-samples", "1", "--max-concurrent", "1", "--epochs", "1", "--hidden", "16",
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--experiment-name", "test-queue",
            "--address", gcs])
        wait_for("the warning", lambda: "queue until nodes join" in driver_log.read_text(), "driver")
        assert "the cluster has 0" in driver_log.read_text()
        start("worker", [str(VENV_BIN / "ray"), "start", "--address", gcs, "--num-cpus", "2", *common,
                         *_node_ports(worker_ports)], cwd=elsewhere, TMPDIR=str(elsewhere), HOME=str(elsewhere))
        driver.wait(timeout=900)
        console = driver_log.read_text()
        assert driver.returncode == 0, console[-4000:]
        assert {"best.pt", "trials.csv", "best_config.json", "metrics.json", "sweep.png", "trial_status.json",
                "tune_config.json", "mlflow_run.json"} <= set(s3_listing(out)), sorted(s3_listing(out))
        kept = s3_listing(storage)
        assert "sweep/tuner.pkl" in kept and any(k.startswith("trials/") and k.endswith("/state.pt") for k in kept)
    finally:
        for proc in reversed(started):
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
        for proc in started:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
        deadline = time.monotonic() + 30
        while _our_processes(state) and time.monotonic() < deadline:  # Ray's own workers, in groups of their own
            time.sleep(1)
        for line in _our_processes(state):
            os.kill(int(line.split(":")[0]), 9)
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(elsewhere, ignore_errors=True)
