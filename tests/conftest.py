"""Shared fixtures: real services started by the tests themselves and stopped afterwards.

- `ray_local`: a local Ray cluster in this process (loopback only).
- `ray_head`: a separate `ray start --head` node with token authentication and a
  dashboard on 127.0.0.1, for `ray job submit` and multi-node tests.
- `mlflow_server`: a real `mlflow server` on 127.0.0.1 with a SQLite store.
- `synth_corpus` / `shards`: a tiny synthetic corpus and its preprocessed shards, built
  once per session because several test files train or infer from them.
A service that cannot start fails the test loudly; nothing is skipped.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, timeout: float, proc: subprocess.Popen | None = None,
                  headers: dict | None = None) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with code {proc.returncode}")
        try:
            req = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status < 500:
                    return
        except Exception as e:  # noqa: BLE001 - keep polling until the deadline
            last = e
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not come up within {timeout:.0f}s: {last}")


def stop_process_group(proc: subprocess.Popen, timeout: float = 30) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


# ---------------------------------------------------------------- Ray

def ray_env(token: str | None = None) -> dict:
    """Environment for Ray subprocesses: loopback only, token auth when a token is given."""
    from pipelines.ray_env import LOOPBACK_ENV
    env = {**os.environ, **LOOPBACK_ENV, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    if token is not None:
        env["RAY_AUTH_MODE"] = "token"
        env["RAY_AUTH_TOKEN"] = token
    return env


# Every port a Ray node opens. Chosen free here: the defaults (e.g. the dashboard agent's
# 52365) are shared by every node on the machine, so a second cluster - or a worker node
# beside its head - would collide, and job submission then finds "No available agent".
NODE_PORT_FLAGS = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
                   "metrics-export-port")


def node_port_args() -> list[str]:
    return [f"--{flag}={free_port()}" for flag in NODE_PORT_FLAGS]


@dataclass
class RayHead:
    address: str            # GCS address for `ray start --address` / ray.init
    dashboard_url: str      # for `ray job submit --address`
    env: dict               # environment that carries the auth token and loopback settings
    temp_dir: str
    procs: list = field(default_factory=list)

    def ray_cli(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(VENV_BIN / "ray"), *args]
        out = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
        if check and out.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        return out

    def submit_job(self, *entrypoint: str, working_dir: str | None = None,
                   timeout: float = 400) -> subprocess.CompletedProcess:
        """`ray job submit` (blocking, logs streamed back); retried while the job agent is still starting."""
        extra = ["--working-dir", str(working_dir)] if working_dir else []
        deadline = time.monotonic() + 120
        while True:
            out = self.ray_cli("job", "submit", "--address", self.dashboard_url, *extra, "--", *entrypoint,
                               timeout=timeout, check=False)
            if out.returncode == 0 or "No available agent" not in out.stdout + out.stderr \
                    or time.monotonic() > deadline:
                return out
            time.sleep(3)

    def alive_nodes(self) -> int:
        out = subprocess.run([sys.executable, "-c", "import ray; ray.init(); "
                              "print(sum(n['Alive'] for n in ray.nodes()))"],
                             env={**self.env, "RAY_ADDRESS": self.address}, capture_output=True, text=True,
                             timeout=120)
        if out.returncode != 0:
            raise AssertionError(f"cannot query the cluster at {self.address}:\n{out.stderr[-3000:]}")
        return int(out.stdout.strip().splitlines()[-1])

    def add_worker_node(self, num_cpus: int = 1, resources: str | None = None, timeout: float = 120) -> None:
        """Start a second Ray node on this machine joined to the head (a real multi-node cluster)."""
        expected = self.alive_nodes() + 1
        cmd = [str(VENV_BIN / "ray"), "start", "--address", self.address, "--node-ip-address", "127.0.0.1",
               f"--num-cpus={num_cpus}", "--object-store-memory", str(300 * 1024 * 1024), "--block",
               *node_port_args()]
        if resources:
            cmd += ["--resources", resources]
        proc = subprocess.Popen(cmd, env=self.env, start_new_session=True, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        deadline = time.monotonic() + timeout
        while self.alive_nodes() < expected:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker node did not join {self.address} (exit code {proc.poll()})")
            time.sleep(2)


def start_ray_head(num_cpus: int = 2, resources: str | None = None) -> RayHead:
    token = secrets.token_hex(32)
    env = ray_env(token)
    gcs_port, dash_port = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="rayt_", dir="/tmp")  # short: Unix socket paths are limited
    cmd = [str(VENV_BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", f"--port={gcs_port}",
           "--dashboard-host", "127.0.0.1", f"--dashboard-port={dash_port}", "--include-dashboard", "true",
           f"--ray-client-server-port={free_port()}", *node_port_args(),
           f"--num-cpus={num_cpus}", "--object-store-memory", str(400 * 1024 * 1024),
           f"--temp-dir={temp_dir}", "--block", "--disable-usage-stats"]
    if resources:
        cmd += ["--resources", resources]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    head = RayHead(address=f"127.0.0.1:{gcs_port}", dashboard_url=f"http://127.0.0.1:{dash_port}",
                   env=env, temp_dir=temp_dir, procs=[proc])
    try:
        wait_for_http(f"{head.dashboard_url}/api/version", timeout=120, proc=proc,
                      headers={"Authorization": f"Bearer {token}"})
    except Exception:
        stop_ray_head(head)
        raise
    return head


def stop_ray_head(head: RayHead) -> None:
    # Stop workers first, then the head; `ray stop` would also kill unrelated clusters.
    for proc in reversed(head.procs):
        stop_process_group(proc)
    shutil.rmtree(head.temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_head():
    head = start_ray_head()
    yield head
    stop_ray_head(head)


@pytest.fixture(scope="session")
def ray_local():
    import ray
    from pipelines.ray_env import init_ray
    if ray.is_initialized():
        ray.shutdown()
    init_ray(num_cpus=2, object_store_memory=500 * 1024 * 1024)
    yield ray
    ray.shutdown()


# ---------------------------------------------------------------- MLflow

@dataclass
class MlflowServer:
    uri: str
    root: Path
    proc: subprocess.Popen


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = open(root / "server.log", "wb")
    cmd = [str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
           "--artifacts-destination", str(root / "artifacts"), "--workers", "1"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{uri}/health", timeout=120, proc=proc)
    except Exception:
        stop_process_group(proc)
        raise RuntimeError(f"mlflow server failed to start; log:\n{(root / 'server.log').read_text()[-4000:]}")
    yield MlflowServer(uri=uri, root=root, proc=proc)
    stop_process_group(proc)
    log.close()


# ---------------------------------------------------------------- data

SYNTH_SPEAKERS = 6
SYNTH_CLIPS_PER_SPEAKER = 4


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory):
    """A small LRS2-layout corpus with speaker-disjoint train/val/test filelists."""
    from lipsync.synth import make_corpus
    out = tmp_path_factory.mktemp("corpus")
    make_corpus(out, speakers=SYNTH_SPEAKERS, clips_per_speaker=SYNTH_CLIPS_PER_SPEAKER, seed=7, layout="lrs2")
    return out


@pytest.fixture(scope="session")
def shards(synth_corpus, ray_local, tmp_path_factory):
    """The session corpus through the real Ray Data preprocessing pipeline (small shards)."""
    from pipelines.preprocess import PreprocessConfig, run_preprocess
    out = tmp_path_factory.mktemp("shards")
    summary = run_preprocess(PreprocessConfig(input=str(synth_corpus), output=str(out), layout="lrs2",
                                              num_cpus=2, progress=False))
    assert summary["ok"] == SYNTH_SPEAKERS * SYNTH_CLIPS_PER_SPEAKER, summary
    from lipsync.data.shard_stream import list_shards
    list_shards(out, "train"), list_shards(out, "val")  # fail loudly if a split is missing
    return out


# ---------------------------------------------------------------- eval: a trained tiny expert (EVAL helper)

EXPERT_FIXTURE_STEPS = 300


def train_tiny_expert(shards_dir, steps: int = EXPERT_FIXTURE_STEPS, width: float = 0.0625, seed: int = 0):
    """A tiny expert trained in-process (no Ray) on the train split: ~0.1 s of CPU per step.

    Windows are cut once (256 per clip, balanced in/off sync) and mini-batches drawn from them,
    so the cost is the network's, not JPEG decoding. 300 steps recover the AV offset of the
    synthetic clips (the sync judge's tests); it is not a good expert."""
    import numpy as np
    import torch

    from lipsync.data.shard_stream import fixed_expert_windows, list_shards
    from lipsync.data.windows import ExpertSampling, collate_expert
    from lipsync.models import SyncNet
    from lipsync.training.expert import expert_loss, sync_scores

    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    # One thread: a batch of 32 tiny windows gains nothing from two, and on a busy machine
    # the second thread's spin-waits cost more than they give.
    torch.set_num_threads(1)
    pool = fixed_expert_windows(list_shards(shards_dir, "train"), 256, seed + 1, ExpertSampling(face_size=96))
    model = SyncNet(width=width, face_size=96)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        batch = collate_expert([pool[i] for i in rng.integers(len(pool), size=32)])
        loss = expert_loss(sync_scores(model, batch["mel"], batch["face"]), batch["label"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    return model.eval()


@pytest.fixture(scope="session")
def trained_expert(shards, tmp_path_factory):
    """(checkpoint path, model) of a tiny expert trained for EXPERT_FIXTURE_STEPS steps on `shards`."""
    from lipsync.checkpoints import ModelConfig, save_checkpoint

    model = train_tiny_expert(shards)
    path = tmp_path_factory.mktemp("expert") / "expert.safetensors"
    save_checkpoint(path, model, ModelConfig(kind="expert", width=model.width, face_size=model.face_size))
    return path, model

# ---------------------------------------------------------------- end of eval block
