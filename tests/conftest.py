"""Shared fixtures: real services started by the tests themselves and stopped afterwards.

- `ray_local`: a local Ray cluster in this process (loopback only, the project's own `init_ray`).
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
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pipelines.common.ray_setup import free_port

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


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
    from pipelines.common.ray_setup import LOOPBACK_ENV
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

    # The dashboard's answer to a token that is not the cluster's (Ray's token middleware: HTTP
    # 403 with this body, which the job CLI prints). Any other failure - nothing listening, a
    # client that gave up before asking - prints something else.
    WRONG_TOKEN_REFUSAL = "Forbidden: Invalid authentication token"

    def job_list_with_a_wrong_token(self, folder: Path) -> subprocess.CompletedProcess:
        """`ray job list` against this head carrying a well-formed token that is not its own."""
        wrong = Path(folder) / "wrong_token"
        wrong.write_text("0" * 64)
        env = {k: v for k, v in self.env.items() if k != "RAY_AUTH_TOKEN"}
        env["RAY_AUTH_TOKEN_PATH"] = str(wrong)
        return subprocess.run([str(VENV_BIN / "ray"), "job", "list", "--address", self.dashboard_url], env=env,
                              capture_output=True, text=True, timeout=120, cwd=REPO)

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


def stop_ray_node(proc: subprocess.Popen, timeout: float = 3) -> None:
    """Stop a `ray start --block` node: SIGTERM to `ray start` alone, then SIGKILL to what is
    left of its process group. A SIGTERM to the whole group made the node's processes wait on
    one another until the timeout; on Ray 2.60 `ray start --block` does not exit on SIGTERM
    within 20 s either (measured), so a short grace is all a node gets: the suite stopped each
    node 20 s late."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=timeout)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if proc.poll() is None:
        proc.wait(timeout=10)


def stop_ray_head(head: RayHead) -> None:
    # Stop workers first, then the head; `ray stop` would also kill unrelated clusters.
    for proc in reversed(head.procs):
        stop_ray_node(proc)
    shutil.rmtree(head.temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_head():
    head = start_ray_head()
    yield head
    stop_ray_head(head)


@pytest.fixture(scope="session")
def ray_local():
    import ray
    from pipelines.common.ray_setup import init_ray
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
    from pipelines.preprocess.driver import PreprocessConfig, run_preprocess
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

    from lipsync.data.shard_stream import fixed_windows, list_shards
    from lipsync.data.windows import ExpertSampling, collate_expert
    from lipsync.models import SyncNet
    from lipsync.training.expert import expert_loss, sync_scores

    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    # One thread: a batch of 32 tiny windows gains nothing from two, and on a busy machine
    # the second thread's spin-waits cost more than they give.
    torch.set_num_threads(1)
    pool = fixed_windows(list_shards(shards_dir, "train"), 256, seed + 1, ExpertSampling(face_size=96))
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


# ================================================================ object storage (infra, issue 12)
# A local S3-compatible server (moto) on 127.0.0.1 with one bucket. The session's
# environment gets the standard AWS variables, so `pipelines.common.storage`, pyarrow, boto3 and
# any subprocess started afterwards (Ray nodes, `ray job submit`) reach it with no flags.
# Ray clusters started BEFORE this fixture do not see them: pass `s3_server.env` on.

@dataclass
class S3Server:
    endpoint: str           # http://127.0.0.1:PORT
    bucket: str
    env: dict               # the AWS_* variables a client needs
    proc: subprocess.Popen

    def uri(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}", *(p.strip("/") for p in parts)])

    def client(self):
        import boto3
        return boto3.client("s3", endpoint_url=self.endpoint, region_name=self.env["AWS_DEFAULT_REGION"],
                            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"])

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("s3")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = open(root / "moto.log", "wb")
    proc = subprocess.Popen([str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            start_new_session=True, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    # Test-only credentials of the throwaway local server (moto accepts any pair).
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing-key",
           "AWS_SECRET_ACCESS_KEY": "testing-secret", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}
    server = S3Server(endpoint=endpoint, bucket="lipsync-test", env=env, proc=proc)
    try:
        wait_for_http(f"{endpoint}/moto-api/", timeout=60, proc=proc)
        server.client().create_bucket(Bucket=server.bucket)
    except Exception:
        stop_process_group(proc)
        raise RuntimeError(f"moto S3 server failed to start; log:\n{(root / 'moto.log').read_text()[-4000:]}")
    saved = {k: os.environ.get(k) for k in [*env, "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE"]}
    for k in ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        os.environ.pop(k, None)
    os.environ.update(env)
    yield server
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    stop_process_group(proc)
    log.close()
# ================================================================ end object storage (infra)


# ---------------------------------------------------------------- team MLflow server (infra, issue 12)
# What infra/mlflow deploys, on loopback: PostgreSQL 15 (Debian's package; `make install`
# brings it) with password authentication, `mlflow server --app-name basic-auth` with its
# backend store AND its user store on PostgreSQL, artifacts on the local S3 server. Every
# secret reaches the processes through the environment (PGPASSWORD, MLFLOW_AUTH_ADMIN_*),
# never in a URI or a config file - exactly as the manifests do it.

def postgres_bin(name: str) -> str:
    import glob
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} not found: install Debian's `postgresql` package (make install does)")
    return found


@dataclass
class TeamMlflow:
    uri: str
    admin_user: str
    admin_password: str
    db_url: str            # postgresql://user@127.0.0.1:port/db, no password in it
    env: dict              # PGPASSWORD etc. for clients of the database
    proc: subprocess.Popen

    def add_user(self, name: str) -> dict:
        """Create a user (as the admin); returns the MLFLOW_TRACKING_* environment it works with."""
        from mlflow.server.auth.client import AuthServiceClient
        password = secrets.token_urlsafe(16)
        saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
        os.environ.update(MLFLOW_TRACKING_USERNAME=self.admin_user, MLFLOW_TRACKING_PASSWORD=self.admin_password)
        try:
            AuthServiceClient(self.uri).create_user(name, password)
        finally:
            for k, v in saved.items():
                os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        return {"MLFLOW_TRACKING_USERNAME": name, "MLFLOW_TRACKING_PASSWORD": password}


@pytest.fixture(scope="session")
def team_mlflow_server(s3_server):
    import pwd
    root = Path(tempfile.mkdtemp(prefix="lipsync_pg_", dir="/tmp"))
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        as_postgres = ["runuser", "-u", "postgres", "--"]
        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
    db_password, admin_password = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    pwfile = root / "pw"
    pwfile.write_text(db_password)
    if as_postgres:
        os.chown(pwfile, pwd.getpwnam("postgres").pw_uid, -1)
    data, port = root / "data", free_port()
    subprocess.run([*as_postgres, postgres_bin("initdb"), "-D", str(data), "-U", "lipsync", "--auth=scram-sha-256",
                    f"--pwfile={pwfile}", "-E", "UTF8"], check=True, capture_output=True, timeout=120)
    pwfile.unlink()
    pg_log = root / "pg.log"
    subprocess.run([*as_postgres, postgres_bin("pg_ctl"), "-D", str(data), "-l", str(pg_log), "-w", "-t", "60",
                    "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start"],
                   check=True, capture_output=True, timeout=120)
    pg_env = {**os.environ, "PGPASSWORD": db_password, "PGHOST": "127.0.0.1", "PGPORT": str(port), "PGUSER": "lipsync"}
    proc = None
    try:
        for db in ("mlflow", "mlflow_auth"):
            subprocess.run([postgres_bin("createdb"), db], env=pg_env, check=True, capture_output=True, timeout=60)
        db_url = f"postgresql://lipsync@127.0.0.1:{port}"
        (root / "basic_auth.ini").write_text(
            "[mlflow]\ndefault_permission = READ\n"
            f"database_uri = {db_url}/mlflow_auth\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            "auth_cache_ttl_seconds = 60\n")
        mlflow_port = free_port()
        env = {**pg_env, "MLFLOW_AUTH_CONFIG_PATH": str(root / "basic_auth.ini"),
               "MLFLOW_AUTH_ADMIN_USERNAME": "admin", "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
               "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}
        log = open(root / "mlflow.log", "wb")
        proc = subprocess.Popen(
            [str(VENV_BIN / "mlflow"), "server", "--app-name", "basic-auth", "--host", "127.0.0.1",
             "--port", str(mlflow_port), "--backend-store-uri", f"{db_url}/mlflow",
             "--artifacts-destination", s3_server.uri("mlflow-artifacts"), "--workers", "1"],
            env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT, cwd=root)
        uri = f"http://127.0.0.1:{mlflow_port}"
        try:
            wait_for_http(f"{uri}/health", timeout=180, proc=proc)
        except Exception:
            raise RuntimeError(f"team mlflow server failed; log:\n{(root / 'mlflow.log').read_text()[-4000:]}")
        yield TeamMlflow(uri=uri, admin_user="admin", admin_password=admin_password, db_url=db_url,
                         env={"PGPASSWORD": db_password}, proc=proc)
    finally:
        if proc is not None:
            stop_process_group(proc)
        subprocess.run([*as_postgres, postgres_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)
# ---------------------------------------------------------------- end team MLflow server (infra)


# ---------------------------------------------------------------- infer (issue 17): ONNX / probe cache
# Exports, int8 models and the precision probe's results go to $LIPSYNC_CACHE_DIR; tests keep
# them in a session folder so the user's ~/.cache/lipsync is never read or written.

@pytest.fixture(scope="session", autouse=True)
def lipsync_cache_dir(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        folder = tmp_path_factory.mktemp("lipsync_cache")
        mp.setenv("LIPSYNC_CACHE_DIR", str(folder))
        yield folder
# ---------------------------------------------------------------- end infer block


# ---------------------------------------------------------------- memory against length
# `lipsync sync-score`, `compare` and `infer` stream; their tests run one command on a short
# and a 4x longer clip and compare the peak memory Python allocations reach (numpy arrays
# included). A whole-clip reader grows by the frames' bytes, a streaming one by a few small
# per-second records (the mel, 25.6 KB a second).

LENGTH_CLIP_SECONDS = (3.0, 12.0)  # the short one fills a scoring batch (64 windows): batches are no length
LENGTH_CLIP_SIZE = 128  # 49 KB a frame, 1.2 MB a second at 25 fps


def traced_peak(fn) -> int:
    """Peak bytes traced (tracemalloc) while ``fn()`` runs, above what was held before."""
    import gc
    import tracemalloc

    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="session")
def length_clips(tmp_path_factory):
    """{seconds: path}: 128x128 25 fps clips with a moving pattern and a voiced, pulsing tone."""
    import numpy as np

    from lipsync.video import VideoWriter

    out = tmp_path_factory.mktemp("length_clips")
    clips = {}
    y, x = np.mgrid[0:LENGTH_CLIP_SIZE, 0:LENGTH_CLIP_SIZE]
    for seconds in LENGTH_CLIP_SECONDS:
        path = out / f"clip_{seconds:g}s.mp4"
        n = int(seconds * 25)
        t = np.arange(int(seconds * 16000)) / 16000
        audio = (0.3 * np.sin(2 * np.pi * 140 * t) * (np.sin(2 * np.pi * 3 * t) > 0)).astype(np.float32)
        with VideoWriter(path, 25.0, LENGTH_CLIP_SIZE, LENGTH_CLIP_SIZE, preset="ultrafast") as writer:
            writer.write_audio(audio)
            for i in range(n):
                writer.write(np.dstack([(x + 3 * i) % 256, (y + i) % 256, np.full_like(x, 90)]).astype(np.uint8))
        clips[seconds] = path
    return clips


def peak_growth_per_second(run, clips: dict) -> tuple[float, dict]:
    """(bytes of peak memory each extra second of clip added, {seconds: peak}) for ``run(seconds,
    path)`` on the short and the long clip. The short one runs once untraced first: first calls
    allocate once-only things (caches, lazy imports, a backend's warm-up) that are no length."""
    short = min(clips)
    run(short, clips[short])
    peaks = {seconds: traced_peak(lambda: run(seconds, path)) for seconds, path in sorted(clips.items())}
    (short, p_short), (long, p_long) = sorted(peaks.items())
    return (p_long - p_short) / (long - short), peaks


# ---------------------------------------------------------------- media


def face_image():
    """A real face photo, 256x256 BGR (skimage's astronaut; the face is ~90 px wide)."""
    import cv2
    import numpy as np
    from skimage import data

    img = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    return np.ascontiguousarray(img[20:276, 110:366])


def speech_like(seconds: float, seed: int = 0):
    """A voiced tone in 3 Hz bursts, float32 mono at 16 kHz (loud enough to open a mouth)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    voiced = np.sin(2 * np.pi * 140 * t) + 0.5 * np.sin(2 * np.pi * 280 * t)
    envelope = (np.sin(2 * np.pi * 3.0 * t) > -0.2).astype(np.float32)
    return (0.25 * voiced * envelope + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
