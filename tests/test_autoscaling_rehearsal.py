"""Autoscaling, really exercised on this machine: Ray's fake multi-node provider
(the provider behind `ray.cluster_utils.AutoscalingCluster`) with the worker node types
of the project's own launcher config (infra/ray/aws.yaml: same names and custom resources,
CPU counts scaled down, GPU counts kept as plain resource numbers), token auth on.

`ray.cluster_utils.AutoscalingCluster` itself is not used: its start() and shutdown() run
`ray stop --force`, which would kill every other Ray cluster on the machine, and the
example config it reads is not shipped in the installed wheel. This test writes the same
kind of config and starts the head with `ray start --head --autoscaling-config` in its own
process group, on free ports and a private temp dir, and stops only that group.

The jobs go in with `ray job submit`: preprocessing (Ray Data tasks need CPU; the head has
none, so the autoscaler must add a `cpu_worker`), then expert training pinned with
`--worker-resources '{"gpu_1x": 1}'` (only `gpu_1x` nodes carry it), reading shards from
and checkpointing to a local S3 server. Both must succeed, and the idle workers must be
removed afterwards.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, VENV_BIN, RayHead, free_port, node_port_args, ray_env, stop_process_group, wait_for_http

LAUNCHER_CONFIG = REPO / "infra" / "ray" / "aws.yaml"
IDLE_TIMEOUT_MIN = 0.1  # 6 s: idle workers go quickly in the rehearsal (5 min on the cloud)


def rehearsal_node_types(launcher: dict) -> dict:
    """The launcher config's worker types for the fake provider: same names and custom
    resources; 1 CPU each (this machine has 2); GPUs stay as resource counts (nothing
    here asks for GPU, but the autoscaler's GPU avoidance sees them); tiny object stores;
    at most one node of each type."""
    types = {}
    for name, spec in launcher["available_node_types"].items():
        if name == launcher["head_node_type"]:
            continue
        resources = {k: v for k, v in spec["resources"].items() if k != "CPU"}
        types[name] = {
            "resources": {"CPU": 1, **resources, "object_store_memory": 80 * 2**20},
            "node_config": {},
            "min_workers": spec.get("min_workers", 0),
            "max_workers": 1,
        }
    return types


def fake_cluster_config(launcher: dict, gcs_address: str) -> dict:
    return {
        "cluster_name": f"{launcher['cluster_name']}-rehearsal",
        "max_workers": 3,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": IDLE_TIMEOUT_MIN,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": gcs_address},
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {
            **rehearsal_node_types(launcher),
            "ray.head.default": {"resources": {}, "node_config": {}, "max_workers": 0},
        },
        "head_node_type": "ray.head.default",
        "docker": {}, "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [],
    }


def start_autoscaling_head(config: dict, gcs_port: int, tmp: Path, node_env: dict | None = None) -> RayHead:
    """`node_env`: what every node's environment carries (the launcher config's --env-file,
    the RayCluster's pod env): here the MLflow credentials; fake worker nodes inherit it."""
    token = secrets.token_hex(32)
    env = {**ray_env(token), **(node_env or {}), "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
           # Every fake node sees the whole machine's memory, used mostly by other processes on a
           # shared CI box; Ray's OOM killer would kill this rehearsal's tasks for their usage.
           "RAY_memory_monitor_refresh_ms": "0"}
    config_path = tmp / "autoscaling.json"
    config_path.write_text(json.dumps(config))
    dash_port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="raya_", dir="/tmp")  # short: Unix socket paths are limited
    cmd = [str(VENV_BIN / "ray"), "start", "--head", f"--autoscaling-config={config_path}",
           "--node-ip-address", "127.0.0.1", f"--port={gcs_port}", "--dashboard-host", "127.0.0.1",
           f"--dashboard-port={dash_port}", "--include-dashboard", "true", f"--ray-client-server-port={free_port()}",
           *node_port_args(), "--num-cpus=0", "--object-store-memory", str(150 * 2**20), f"--temp-dir={temp_dir}",
           "--block", "--disable-usage-stats"]
    log = open(tmp / "head.log", "wb")
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    head = RayHead(address=f"127.0.0.1:{gcs_port}", dashboard_url=f"http://127.0.0.1:{dash_port}", env=env,
                   temp_dir=temp_dir, procs=[proc])
    wait_for_http(f"{head.dashboard_url}/api/version", timeout=120, proc=proc,
                  headers={"Authorization": f"Bearer {token}"})
    return head


WATCH = """
import json, sys, time, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
types = set(sys.argv[2].split(","))
while True:
    alive = [n for n in ray.nodes() if n["Alive"]]
    print(json.dumps(sorted(t for n in alive for t in n["Resources"] if t in types)), flush=True)
    time.sleep(1)
"""


class NodeWatcher:
    """Prints, once a second, the node types alive in the cluster (one driver, one connection)."""

    def __init__(self, head: RayHead, types: list[str]):
        self.proc = subprocess.Popen([sys.executable, "-c", WATCH, head.address, ",".join(types)], env=head.env,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                     start_new_session=True)
        self.seen: list[list[str]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                self.seen.append(json.loads(line))
            except json.JSONDecodeError:
                pass

    def ever(self) -> set[str]:
        return {t for snapshot in self.seen for t in snapshot}

    def wait_until(self, predicate, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.seen and predicate(self.seen[-1]):
                return self.seen[-1]
            time.sleep(1)
        raise AssertionError(f"cluster did not reach the expected nodes in {timeout:.0f}s; last: "
                             f"{self.seen[-1] if self.seen else None}")


def submit(head: RayHead, runtime_env: dict, *entrypoint: str, timeout: float = 300) -> str:
    out = head.ray_cli("job", "submit", "--address", head.dashboard_url, "--runtime-env-json",
                       json.dumps(runtime_env), "--", *entrypoint, timeout=timeout, check=False)
    text = out.stdout + out.stderr
    assert out.returncode == 0 and "succeeded" in text, f"job failed ({out.returncode}):\n{text[-5000:]}"
    return text


@pytest.mark.integration
@pytest.mark.slow
def test_autoscaler_adds_the_right_node_types_and_removes_them(s3_server, team_mlflow_server, tmp_path):
    from lipsync.synth import make_corpus
    from pipelines.common import storage

    launcher = yaml.safe_load(LAUNCHER_CONFIG.read_text())
    gcs_port = free_port()
    config = fake_cluster_config(launcher, f"127.0.0.1:{gcs_port}")
    worker_types = [t for t in config["available_node_types"] if t != "ray.head.default"]
    assert set(worker_types) == {"cpu_worker", "gpu_1x", "gpu_8x"}

    corpus = tmp_path / "corpus"
    make_corpus(corpus, speakers=3, clips_per_speaker=2, seed=3, layout="lrs2", seconds=(2.0, 2.5),
                progress=False)

    credentials = team_mlflow_server.add_user("rehearsal")
    head = start_autoscaling_head(config, gcs_port, tmp_path, node_env=credentials)
    watcher = None
    try:
        assert head.env["RAY_AUTH_MODE"] == "token"
        # Without the token the dashboard (and so job submission) refuses: its own answer, not just any failure.
        unauth = head.job_list_with_a_wrong_token(tmp_path)
        assert unauth.returncode != 0 and head.WRONG_TOKEN_REFUSAL in unauth.stdout + unauth.stderr, \
            unauth.stdout[-2000:] + unauth.stderr[-2000:]

        watcher = NodeWatcher(head, worker_types)
        watcher.wait_until(lambda alive: alive == [], timeout=60)  # starts with the head alone
        runtime_env = {"env_vars": {"PYTHONPATH": str(REPO)}}

        shards = tmp_path / "shards"
        submit(head, runtime_env, sys.executable, str(REPO / "workflows" / "preprocess.py"),
               "--input", str(corpus), "--layout", "lrs2", "--output", str(shards), "--num-gpus", "0",
               "--no-progress", "--inputs-per-task", "2")
        assert "cpu_worker" in watcher.ever(), watcher.seen
        assert not {"gpu_1x", "gpu_8x"} & watcher.ever(), f"preprocessing started a GPU node: {watcher.seen}"

        # Shards to object storage (the preprocessing workflow writes s3:// itself once the
        # SCALE issue lands; until then the test uploads them).
        remote = s3_server.uri("autoscale", "shards")
        for p in sorted(shards.iterdir()):
            if p.is_file():
                storage.put_file(p, storage.join(remote, p.name))
        assert storage.list_shards(remote, "train") and storage.list_shards(remote, "val")

        before_expert = len(watcher.seen)
        submit(head, runtime_env, sys.executable, str(REPO / "workflows" / "train.py"), "--stage", "expert",
               "--shards", remote, "--width", "0.0625", "--batch-size", "8", "--max-steps", "4", "--log-every", "2",
               "--checkpoint-every", "4", "--num-workers", "1", "--worker-resources", json.dumps({"gpu_1x": 1}),
               "--val-max-clips", "2", "--val-windows-per-clip", "2", "--windows-per-clip", "2",
               "--storage-path", s3_server.uri("autoscale", "ray"), "--run-name", "rehearsal",
               "--tracking-uri", team_mlflow_server.uri, "--experiment", "test-autoscale",
               "--no-system-metrics", "--max-failures", "0")
        during_expert = {t for snapshot in watcher.seen[before_expert:] for t in snapshot}
        assert "gpu_1x" in during_expert, watcher.seen
        assert "gpu_8x" not in watcher.ever(), watcher.seen
        # The run's state and its checkpoint are on object storage.
        keys = s3_server.keys("autoscale/ray/rehearsal/")
        assert "autoscale/ray/rehearsal/lipsync_run.json" in keys, keys
        assert any("checkpoint_" in k for k in keys), keys

        # Logged and registered on the team server, as the user whose credentials the nodes carry.
        from mlflow import MlflowClient
        from mlflow.server.auth.client import AuthServiceClient
        from mlflow.server.auth.permissions import RESOURCE_TYPE_EXPERIMENT
        os.environ.update(credentials)
        try:
            client = MlflowClient(tracking_uri=team_mlflow_server.uri)
            version = client.get_model_version_by_alias("lipsync-expert", "candidate")
            run = client.get_run(version.run_id)
            assert run.data.metrics["val_loss"] > 0 and run.data.tags["lipsync.stage"] == "expert"
            os.environ.update(MLFLOW_TRACKING_USERNAME=team_mlflow_server.admin_user,
                              MLFLOW_TRACKING_PASSWORD=team_mlflow_server.admin_password)
            permission = AuthServiceClient(team_mlflow_server.uri).get_user_permission(
                "rehearsal", RESOURCE_TYPE_EXPERIMENT, run.info.experiment_id)
            assert permission.permission == "MANAGE"  # the job created it as that user
        finally:
            for key in credentials:
                os.environ.pop(key, None)

        # Idle workers are removed.
        watcher.wait_until(lambda alive: alive == [], timeout=60)
    finally:
        if watcher is not None:
            stop_process_group(watcher.proc)
        for proc in head.procs:  # the head's process group holds every fake worker node too
            stop_process_group(proc, timeout=10)
        shutil.rmtree(head.temp_dir, ignore_errors=True)
