"""The shared service fixtures are what they claim: real, loopback-only, authenticated."""

from __future__ import annotations

import subprocess
from pathlib import Path
import urllib.error
import urllib.request

import pytest


@pytest.mark.integration
def test_ray_head_requires_token(ray_head):
    ok = urllib.request.Request(f"{ray_head.dashboard_url}/api/version",
                                headers={"Authorization": f"Bearer {ray_head.env['RAY_AUTH_TOKEN']}"})
    with urllib.request.urlopen(ok, timeout=10) as r:
        assert r.status == 200
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{ray_head.dashboard_url}/api/version", timeout=10)
    assert refused.value.code in (401, 403)


@pytest.mark.integration
def test_ray_head_listens_on_loopback_only(ray_head):
    sockets = _listening_sockets(ray_head.procs[0].pid)
    assert int(ray_head.address.rsplit(":", 1)[1]) in {port for _, _, port in sockets}, sockets
    public = [s for s in sockets if not _is_loopback(s[1])]
    assert not public, f"bound beyond loopback: {public}"


@pytest.mark.integration
def test_mlflow_server_tracks_and_registers(mlflow_server, tmp_path):
    import mlflow
    from mlflow import MlflowClient
    mlflow.set_tracking_uri(mlflow_server.uri)
    mlflow.set_experiment("fixture-check")
    (tmp_path / "a.txt").write_text("hello")
    with mlflow.start_run() as run:
        mlflow.log_metric("x", 1.5, step=3)
        mlflow.log_artifact(str(tmp_path / "a.txt"), artifact_path="model")
    client = MlflowClient(mlflow_server.uri)
    assert client.get_metric_history(run.info.run_id, "x")[0].value == 1.5

    from pipelines.tracking.registry import register_checkpoint
    version = register_checkpoint(run.info.run_id, "model", "fixture-model", alias="candidate",
                                  tags={"val_accuracy": "0.9"}, tracking_uri=mlflow_server.uri)
    assert client.get_model_version_by_alias("fixture-model", "candidate").version == version
    local = mlflow.artifacts.download_artifacts(artifact_uri="models:/fixture-model@candidate",
                                                dst_path=str(tmp_path / "dl"))
    assert (Path(local) / "a.txt").read_text() == "hello"


# The project's own local cluster (pipelines.common.ray_setup.init_ray, what every workflow starts
# when no RAY_ADDRESS is set), kept up until the test closes its stdin.
_SERVE = """
import sys
from pipelines.common.ray_setup import init_ray
info = init_ray(num_cpus=1, object_store_memory=80 * 2**20)
print("ADDRESS", info["address"], flush=True)
sys.stdin.read()
import ray
ray.shutdown()
"""

# A client joining that cluster: runs a task, or prints why it was turned away.
_JOIN = """
import sys
import ray
from pipelines.common.ray_setup import use_loopback
use_loopback()
try:
    ray.init(address=sys.argv[1], log_to_driver=False)
except Exception as e:
    reasons = []
    while e is not None:
        reasons.append(f"{type(e).__name__}: {e}")
        e = e.__cause__ or e.__context__
    print("REFUSED", " <- ".join(reasons))
    sys.exit(3)
print("SERVED", ray.get(ray.remote(lambda: 6 * 7).remote()))
"""


def _read_address(proc, timeout: float) -> str:
    import select
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"init_ray's cluster exited with code {proc.returncode}")
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            line = proc.stdout.readline()
            if line.startswith("ADDRESS "):
                return line.split()[1]
    raise AssertionError(f"init_ray's cluster gave no address within {timeout:.0f}s")


@pytest.fixture(scope="module")
def project_cluster(tmp_path_factory):
    """init_ray's local cluster in a process of its own, started where the environment says
    RAY_AUTH_MODE=disabled, its HOME a fresh folder: (process, GCS address, HOME, environment)."""
    import os
    import sys

    from conftest import REPO, stop_process_group
    from pipelines.common.ray_setup import LOOPBACK_ENV

    root = tmp_path_factory.mktemp("project_cluster")
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    base.update(LOOPBACK_ENV, PYTHONPATH=str(REPO), RAY_NUM_REDIS_GET_RETRIES="3")  # refused clients give up fast
    home = root / "owner"
    home.mkdir()
    log = open(root / "cluster.log", "w")
    proc = subprocess.Popen([sys.executable, "-c", _SERVE], env={**base, "HOME": str(home), "RAY_AUTH_MODE": "disabled"},
                            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                            start_new_session=True)
    try:
        yield proc, _read_address(proc, timeout=180), home, base
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            stop_process_group(proc)
        log.close()


def test_a_token_file_others_can_read_is_refused_in_one_line(tmp_path, monkeypatch):
    """An existing ~/.ray/auth_token with group or other permissions is refused before Ray
    starts: the error names the file, its mode and the fix; an owner-only one is accepted."""
    from lipsync.errors import ConfigError
    from pipelines.common.ray_setup import check_token_mode, use_token_auth

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    token = tmp_path / ".ray" / "auth_token"
    token.parent.mkdir()
    token.write_text("0" * 64)
    for mode in (0o644, 0o640, 0o602):
        token.chmod(mode)
        with pytest.raises(ConfigError) as refused:
            use_token_auth()
        message = str(refused.value)
        assert message == f"{token}: the Ray auth token is readable or writable by others (mode {mode:04o}); " \
                          f"make it owner-only with: chmod 600 {token}", message
    token.chmod(0o600)
    check_token_mode(token)  # accepted: no error


@pytest.mark.integration
def test_project_cluster_requires_the_token(project_cluster, tmp_path):
    """init_ray's local cluster uses token auth even where the environment says
    RAY_AUTH_MODE=disabled (Ray's own default before 2.60): the token is created, owner-only,
    in Ray's documented place (~/.ray/auth_token); a client without it is refused for
    authentication, a client with it is served."""
    import sys

    from conftest import REPO

    _, address, server_home, base = project_cluster
    stranger_home = tmp_path / "stranger"
    stranger_home.mkdir()

    def join(home, **env):
        return subprocess.run([sys.executable, "-c", _JOIN, address], env={**base, "HOME": str(home), **env},
                              cwd=REPO, capture_output=True, text=True, timeout=180)

    stranger = join(stranger_home)  # no token anywhere
    assert stranger.returncode == 3, stranger.stdout + stranger.stderr[-3000:]
    assert "AuthenticationError" in stranger.stdout and "InvalidAuthToken" in stranger.stdout, stranger.stdout
    owner = join(server_home, RAY_AUTH_MODE="token")  # the token from ~/.ray/auth_token
    assert owner.returncode == 0 and "SERVED 42" in owner.stdout, owner.stdout + owner.stderr[-3000:]
    token = server_home / ".ray" / "auth_token"
    assert token.stat().st_mode & 0o777 == 0o600 and len(token.read_text().strip()) == 64


def _listening_sockets(pid: int) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every listening TCP socket and bound UDP socket of
    `pid` and all its descendants."""
    import socket

    import psutil

    root = psutil.Process(pid)
    found = []
    for p in [root, *root.children(recursive=True)]:
        try:
            for c in p.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN or (c.type == socket.SOCK_DGRAM and c.laddr):
                    found.append((p.name(), c.laddr.ip, c.laddr.port))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _is_loopback(ip: str) -> bool:
    import ipaddress

    address = ipaddress.ip_address(ip)
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback  # ::ffff:127.0.0.1 too


@pytest.mark.integration
def test_project_cluster_listens_on_loopback_only(project_cluster):
    """Every socket init_ray's cluster opens (GCS, raylet, object manager, dashboard and its
    agents, workers) is bound to loopback: nothing is reachable from another machine."""
    proc, address, _, _ = project_cluster
    sockets = _listening_sockets(proc.pid)
    gcs_port = int(address.rsplit(":", 1)[1])
    assert gcs_port in {port for _, _, port in sockets}, sockets  # the cluster's own processes were found
    assert len({name for name, _, _ in sockets}) >= 3, sockets
    public = [s for s in sockets if not _is_loopback(s[1])]
    assert not public, f"bound beyond loopback: {public}"


# A one-worker Ray Train run on init_ray's cluster; the worker asks Ray's state API (as Ray
# Train's placement-group cleaner does) how many actors are alive.
_TRAIN = """
import os
from pipelines.common.ray_setup import init_ray, quiet_train_options
init_ray(num_cpus=1, object_store_memory=80 * 2**20)
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

def work():
    from ray.util.state import list_actors
    alive = list_actors(filters=[("state", "=", "ALIVE")], raise_on_missing_output=False)
    print("WORKER", os.environ.get("RAY_API_SERVER_ADDRESS"), len(alive), flush=True)

import sys
TorchTrainer(work, scaling_config=ScalingConfig(num_workers=1),
             run_config=RunConfig(storage_path=sys.argv[1], **quiet_train_options())).fit()
print("DRIVER", os.environ.get("RAY_API_SERVER_ADDRESS"), flush=True)
import urllib.error, urllib.request
import ray
url = "http://" + ray._private.worker.global_worker.node.address_info["webui_url"]
try:
    urllib.request.urlopen(url + "/api/version", timeout=10)
    print("TOKENLESS served", url, flush=True)
except urllib.error.HTTPError as e:
    print("TOKENLESS", e.code, url, flush=True)
"""


@pytest.mark.integration
def test_training_on_the_project_cluster_reaches_its_own_state_api(tmp_path):
    """Ray Train's placement-group cleaner queries the state API from inside the cluster. On
    init_ray's cluster it reaches that cluster's dashboard on 127.0.0.1 (so a run prints no
    traceback from it), which refuses requests without the token, while the driver's
    environment is left as it was."""
    import os
    import re
    import sys

    from conftest import REPO

    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    proc = subprocess.run([sys.executable, "-c", _TRAIN, str(tmp_path / "ray")], cwd=REPO, timeout=300,
                          env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    worker = re.search(r"WORKER (\S+) (\d+)", out)
    assert worker and re.fullmatch(r"http://127\.0\.0\.1:\d+", worker[1]) and int(worker[2]) >= 2, out[-3000:]
    assert "DRIVER None" in out, out[-3000:]
    # The dashboard is the one the worker used, and it turns away a request without the token.
    tokenless = re.search(r"TOKENLESS (\S+) (\S+)", out)
    assert tokenless and tokenless[1] in ("401", "403") and tokenless[2] == worker[1], out[-3000:]
    assert "Traceback" not in out and "PlacementGroupCleaner" not in out, out[-5000:]
