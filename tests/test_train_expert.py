"""Expert training end to end on real services: Ray Train (local cluster, 2 workers; and a
two-node cluster), a real MLflow server, shards from the real preprocessing pipeline.

- a tiny expert learns sync on held-out synthetic speakers (val accuracy >= 70%), its run,
  metrics, checkpoint artifacts and curve are in MLflow, the best checkpoint is registered
  as lipsync-expert@candidate and loads back through the library and scores a batch;
- a worker killed between validating a step and committing its checkpoint is replaced,
  training resumes from the last checkpoint, MLflow has every logged step exactly once and
  every validation point is the committed checkpoint's; --resume then continues the same run;
- one training worker on each of two Ray nodes (head + worker node, token auth), driven by
  `ray job submit` of workflows/train.py.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import ray.train
import torch
from mlflow import MlflowClient

from lipsync.checkpoints import load_model
from lipsync.data.shard_stream import fixed_windows, list_shards
from lipsync.data.windows import ExpertSampling
from lipsync.errors import ConfigError
from lipsync.training.expert import evaluate_expert, summarize_evaluation
from lipsync.model_ref import fetch
from lipsync.training.schedule import lr_at
from lipsync.training import ExpertStage
from pipelines.tracking.registry import ALIAS_CANDIDATE
from pipelines.train.config import CHECKPOINT_ARTIFACT_DIR, TrainConfig
from pipelines.train.driver import run_training

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent

# Small enough for 2 shared cores, big enough to learn the synthetic mouths.
TINY = dict(width=0.125, face_size=96, batch_size=32, lr=1e-3, windows_per_clip=8, shuffle_buffer=256,
            val_windows_per_clip=32, system_metrics=False)


def metric_steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def metric_points(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def assert_plain_safetensors_folder(folder: Path) -> None:
    """A downloaded model version holds no pickle: its weights are safetensors files (an 8-byte
    header size, a JSON header, then the declared tensors' bytes, which cover the rest of the
    file exactly - no byte is left where a pickle could hide), and the rest is the MLflow
    Model's text: its MLmodel, environment and example files, and our pyfunc code verbatim."""
    from safetensors.torch import load_file

    from pipelines.tracking.mlflow_model import PYFUNC_CODE

    files = [p for p in folder.rglob("*") if p.is_file()]
    text = {"MLmodel", "conda.yaml", "python_env.yaml", "requirements.txt", "input_example.json",
            "serving_input_example.json"}
    others = [p for p in files if p.suffix != ".safetensors"]
    assert files and all(p.name in text or p.name == PYFUNC_CODE.name for p in others), others
    for path in others:
        if path.name == PYFUNC_CODE.name:
            assert path.read_bytes() == PYFUNC_CODE.read_bytes(), path
        else:
            path.read_text(encoding="utf-8")  # text, not a binary blob
    files = [p for p in files if p.suffix == ".safetensors"]
    assert files
    for path in files:
        raw = path.read_bytes()
        size = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + size])
        spans = sorted(tuple(v["data_offsets"]) for k, v in header.items() if k != "__metadata__")
        assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:])), "gaps between tensors"
        assert 8 + size + spans[-1][1] == len(raw), "bytes after the last tensor"
        assert all(isinstance(v, str) for v in header.get("__metadata__", {}).values())
        assert len(load_file(path)) == len(spans)


def test_expert_learns_sync_and_is_registered(ray_local, mlflow_server, shards, tmp_path):
    # System metrics on here (off elsewhere to keep the other runs light).
    cfg = TrainConfig.from_flat("expert", dict(
        shards=str(shards), **{**TINY, "system_metrics": True}, max_steps=400, log_every=25, checkpoint_every=50,
        num_workers=2, storage_path=str(tmp_path / "ray"), run_name="learn", tracking_uri=mlflow_server.uri,
        experiment="test-expert-learn"))
    result = run_training(cfg)
    print(result)
    client = MlflowClient(mlflow_server.uri, registry_uri=mlflow_server.uri)
    run = client.get_run(result.run_id)

    assert result.final_step == 400 and run.info.status == "FINISHED"
    assert run.data.params["batch_size"] == "32" and run.data.params["min_offset"] == "2"
    assert run.data.tags["lipsync.code_version"]
    assert "lipsync.manifest_sha256" in run.data.tags
    assert run.data.tags["lipsync.world_size"] == "2"
    assert metric_steps(client, result.run_id, "train_loss") == list(range(25, 401, 25))
    assert metric_steps(client, result.run_id, "val_accuracy") == list(range(50, 401, 50))
    assert any(k.startswith("system/") for k in run.data.metrics), sorted(run.data.metrics)
    assert any(k.startswith("val_accuracy_offset_") for k in run.data.metrics)
    arts = {a.path for a in client.list_artifacts(result.run_id, CHECKPOINT_ARTIFACT_DIR)}
    assert arts == {f"{CHECKPOINT_ARTIFACT_DIR}/step-{s:07d}" for s in range(50, 401, 50)}
    assert "curves/expert_curve.png" in {a.path for a in client.list_artifacts(result.run_id, "curves")}

    # Learning, not just running: held-out speakers, well above chance.
    assert result.best_value >= 0.70, f"val accuracy {result.best_value:.3f} < 0.70"

    version = client.get_model_version_by_alias(ExpertStage.registered_model, ALIAS_CANDIDATE)
    assert version.version == result.model_version and version.run_id == result.run_id
    assert float(version.tags["val_accuracy"]) == pytest.approx(result.best_value, abs=1e-4)

    # The registered model loads back through the library (no mlflow in lipsync) and scores
    # held-out pairs as well as during training.
    path = fetch(f"models:/{ExpertStage.registered_model}@{ALIAS_CANDIDATE}", tmp_path / "dl", mlflow_server.uri)
    assert_plain_safetensors_folder(tmp_path / "dl")
    model, config = load_model(path, kind="expert")
    assert config.kind == "expert" and config.width == TINY["width"]
    windows = fixed_windows(list_shards(shards, "val"), 32, 0, ExpertSampling(face_size=96))
    sums = evaluate_expert(model, windows, batch_size=64)
    scored = summarize_evaluation(sums)
    # Same windows, same weights; batching differs, so allow a score on the 0.5 edge to flip.
    assert scored["val_accuracy"] == pytest.approx(result.best_value, abs=0.011)
    with torch.no_grad():
        from lipsync.data.windows import collate_expert
        from lipsync.training.expert import sync_scores

        batch = collate_expert(windows[:8])
        scores = sync_scores(model, batch["mel"], batch["face"])
    assert scores.shape == (8, 1) and torch.all((scores >= 0) & (scores <= 1))


def train_cli(capsys, *flags: str) -> dict:
    """`python workflows/train.py --stage expert FLAGS` in this process (the session's Ray
    cluster is reused: init_ray joins the one already running); returns its JSON summary."""
    sys.path.insert(0, str(REPO / "workflows"))
    try:
        import train as train_workflow
    finally:
        sys.path.pop(0)
    capsys.readouterr()
    code = train_workflow.main(["--stage", "expert", *flags])
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    return json.loads(out.out[out.out.rindex("{\n"): out.out.rindex("}") + 1])


def artifact_weights(tracking_uri: str, run_id: str, step: int, dst: Path) -> dict[str, torch.Tensor]:
    """The model weights an MLflow checkpoint artifact holds (through the library's loader)."""
    import mlflow

    local = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path=f"{CHECKPOINT_ARTIFACT_DIR}/step-{step:07d}", dst_path=str(dst),
        tracking_uri=tracking_uri)
    (path,) = Path(local).glob("*.safetensors")
    return load_model(path, kind="expert")[0].state_dict()


def last_ray_checkpoint(run_dir: str):
    """The training state in the newest checkpoint Ray Train kept for the run."""
    from lipsync.checkpoints import load_checkpoint

    states = [load_checkpoint(p, kind="expert").train_state for p in Path(run_dir).rglob("*.safetensors")]
    states = [s for s in states if s]
    assert states, f"no checkpoint with training state under {run_dir}"
    return max(states, key=lambda s: int(s["step"]))


def optimizer_steps(train_state) -> set[int]:
    """The step counts of every optimizer state (Adam's per-parameter "step") in a training state."""
    found = set()
    if isinstance(train_state, dict):
        if "state" in train_state and "param_groups" in train_state:  # a torch optimizer state_dict
            found |= {int(p["step"]) for p in train_state["state"].values()}
        for value in train_state.values():
            found |= optimizer_steps(value)
    elif isinstance(train_state, (list, tuple)):
        for value in train_state:
            found |= optimizer_steps(value)
    return found


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_worker_failure_restores_from_checkpoint_and_resume_continues(ray_local, mlflow_server, shards, tmp_path,
                                                                       capsys):
    """A killed worker is replaced and training continues from the last checkpoint's step with
    its weights and optimizer state, on the same cosine curve; --resume continues the same run.

    The kill is placed where a crash can split the record: rank 0 dies after validating and
    saving step 20 (model files uploaded to MLflow) and before ``ray.train.report`` commits
    that checkpoint. The replay from step 10 commits other step-20 weights; every val_* point
    in MLflow must be the one Ray committed with its checkpoint, not the lost attempt's.

    The proof of "from the checkpoint, not from step 0": runs are deterministic (the
    step-10 weights of the faulty run equal the uninterrupted run's, bit for bit), so a
    restart from 0 would end exactly on the uninterrupted run's weights; a restored run
    samples fresh windows after the restore (its data stream is seeded with the step) and
    ends elsewhere. Its optimizer has taken 20 Adam steps (10 restored + 10), not 10.
    Both runs go through the command line with --augment, --loader-workers and a cosine
    schedule, so those flags are exercised in real training here.
    """
    common = ["--shards", str(shards), "--width", "0.125", "--batch-size", "16", "--lr", "1e-3",
              "--lr-schedule", "cosine", "--warmup-steps", "4", "--augment", "--loader-workers", "1",
              "--windows-per-clip", "8", "--shuffle-buffer", "64", "--val-windows-per-clip", "4",
              "--val-max-clips", "4", "--max-steps", "20", "--log-every", "5", "--checkpoint-every", "10",
              "--num-workers", "2", "--storage-path", str(tmp_path / "ray"), "--tracking-uri", mlflow_server.uri,
              "--experiment", "test-expert-fault", "--no-register", "--no-system-metrics"]
    faulty = train_cli(capsys, *common, "--run-name", "faulty", "--max-failures", "1", "--fail-at-step", "20",
                       "--fail-point", "report")
    steady = train_cli(capsys, *common, "--run-name", "steady", "--max-failures", "0")
    client = MlflowClient(mlflow_server.uri, registry_uri=mlflow_server.uri)
    run_id = faulty["run_id"]
    marker = Path(faulty["run_dir"]) / "injected_failure.marker"
    assert marker.exists(), "the failure was never injected"
    assert faulty["final_step"] == steady["final_step"] == 20
    params = client.get_run(run_id).data.params
    assert params["augment"] == "True" and params["loader_workers"] == "1" and params["lr_schedule"] == "cosine"

    # Steps 11-20 ran twice (before the kill and after restoring step 10): still one point each.
    assert metric_steps(client, run_id, "train_loss") == [5, 10, 15, 20]
    assert metric_steps(client, run_id, "val_accuracy") == [10, 20]
    # Each validation point is the one committed with its checkpoint (Ray's own record of the
    # run), at step 20 the replay's: the lost attempt's figures were those of the steady run.
    committed = {int(m["step"]): m for _, m in ray.train.Result.from_path(faulty["run_dir"]).best_checkpoints}
    assert sorted(committed) == [10, 20]
    val_keys = sorted(k for k in committed[20] if k.startswith("val_"))
    assert "val_loss" in val_keys and "val_accuracy" in val_keys
    logged = {k: metric_points(client, run_id, k) for k in val_keys}
    assert logged == {k: [(s, committed[s][k]) for s in (10, 20)] for k in val_keys}
    steady_val20 = {k: client.get_metric_history(steady["run_id"], k)[-1].value for k in val_keys}
    assert {k: committed[20][k] for k in val_keys} != steady_val20, "the replay did not change step 20"
    arts = {a.path for a in client.list_artifacts(run_id, CHECKPOINT_ARTIFACT_DIR)}
    assert arts == {f"{CHECKPOINT_ARTIFACT_DIR}/step-{s:07d}" for s in (10, 20)}

    # Same curve after the restore: the rate at every logged step is the uninterrupted run's,
    # and it is the cosine with warm-up (rising, then falling), not a constant.
    lr = {m.step: m.value for m in client.get_metric_history(run_id, "lr")}
    steady_lr = {m.step: m.value for m in client.get_metric_history(steady["run_id"], "lr")}
    assert lr == pytest.approx(steady_lr, rel=1e-9) and sorted(lr) == [5, 10, 15, 20]
    assert lr == pytest.approx({s: lr_at(s, 1e-3, 20, "cosine", 4) for s in lr}, rel=1e-9)
    assert lr[5] > lr[10] > lr[15] > lr[20]

    # Deterministic up to the checkpoint it restored from ...
    w10 = artifact_weights(mlflow_server.uri, run_id, 10, tmp_path / "f10")
    assert same_weights(w10, artifact_weights(mlflow_server.uri, steady["run_id"], 10, tmp_path / "s10"))
    # ... so ending on the uninterrupted run's weights would mean it started again from step 0.
    w20 = artifact_weights(mlflow_server.uri, run_id, 20, tmp_path / "f20")
    assert not same_weights(w20, artifact_weights(mlflow_server.uri, steady["run_id"], 20, tmp_path / "s20")), \
        "the restored run ended exactly where a restart from step 0 ends"
    assert not same_weights(w20, w10)
    state = last_ray_checkpoint(faulty["run_dir"])
    assert int(state["step"]) == 20
    assert optimizer_steps(state) == {20}, f"Adam steps {optimizer_steps(state)}: the optimizer was not restored"

    # A new run under the same name is refused; --resume continues the same MLflow run
    # from its last checkpoint (step 20, optimizer included) on the curve of the new --max-steps.
    with pytest.raises(ConfigError, match="--resume"):
        run_training(TrainConfig.from_flat("expert", dict(shards=str(shards), run_name="faulty",
                                                          storage_path=str(tmp_path / "ray"),
                                                          tracking_uri=mlflow_server.uri)))
    longer = [*common]
    longer[longer.index("--max-steps") + 1] = "30"
    resumed = train_cli(capsys, *longer, "--run-name", "faulty", "--resume", "--max-failures", "0")
    assert resumed["run_id"] == run_id and resumed["final_step"] == 30
    assert metric_steps(client, run_id, "train_loss") == [5, 10, 15, 20, 25, 30]
    assert metric_steps(client, run_id, "val_accuracy") == [10, 20, 30]
    assert client.get_run(run_id).data.tags["lipsync.resumed"] == "1"
    assert optimizer_steps(last_ray_checkpoint(faulty["run_dir"])) == {30}


def submit_job(head, *entrypoint: str, timeout: float = 400) -> subprocess.CompletedProcess:
    """`ray job submit` (blocking, logs streamed); retried while the head's job agent is still starting."""
    deadline = time.monotonic() + 90
    while True:
        out = head.ray_cli("job", "submit", "--address", head.dashboard_url, "--", *entrypoint,
                           timeout=timeout, check=False)
        if out.returncode == 0 or "No available agent" not in out.stderr + out.stdout or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert out.returncode == 0, f"ray job submit failed ({out.returncode}):\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    return out


# `ray start --address` refuses to join a cluster in Ray's single-machine (loopback) mode,
# and with multi-node mode on it rewrites 127.0.0.1 to the machine's routable address.
# This runs the same CLI with the multi-node check passed and 127.0.0.1 kept as is; the
# node's processes still run in loopback mode (env from conftest.ray_env), like the head.
JOIN_ON_LOOPBACK = (
    "import sys; from ray._private import ray_constants, services; "
    "ray_constants.ENABLE_RAY_CLUSTER = True; "
    "services.resolve_ip_for_localhost = lambda host: host; "
    "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()"
)


def start_two_node_cluster(resources: dict):
    """A head and a worker node (`ray start`, token auth, loopback), each with 1 CPU and `resources`.

    Each node's dashboard agent gets its own free port: the default (52365) is shared by
    every Ray cluster on the machine, and job submission needs the head's agent."""
    from conftest import VENV_BIN, RayHead, free_port, ray_env, wait_for_http

    token = secrets.token_hex(32)
    env = ray_env(token)
    gcs_port, dash_port = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="rayx_", dir="/tmp")  # short: Unix socket paths are limited
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus=1", "--resources", json.dumps(resources),
              "--object-store-memory", str(300 * 2**20), "--block", "--disable-usage-stats"]
    head_cmd = [str(VENV_BIN / "ray"), "start", "--head", f"--port={gcs_port}", "--dashboard-host", "127.0.0.1",
                f"--dashboard-port={dash_port}", "--include-dashboard", "true", f"--temp-dir={temp_dir}",
                f"--dashboard-agent-listen-port={free_port()}", *common]
    head = RayHead(address=f"127.0.0.1:{gcs_port}", dashboard_url=f"http://127.0.0.1:{dash_port}", env=env,
                   temp_dir=temp_dir)
    head.procs.append(subprocess.Popen(head_cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL))
    wait_for_http(f"{head.dashboard_url}/api/version", timeout=120, proc=head.procs[0],
                  headers={"Authorization": f"Bearer {token}"})
    worker_cmd = [str(VENV_BIN / "python"), "-c", JOIN_ON_LOOPBACK, "start", "--address", head.address,
                  f"--dashboard-agent-listen-port={free_port()}", *common]
    head.procs.append(subprocess.Popen(worker_cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL))
    return head


def cluster_nodes(head) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", "import ray, json; ray.init(address='auto'); "
         "print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive']]))"],
        env={**head.env, "RAY_ADDRESS": head.address}, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_two_node_ddp_via_job_submit(mlflow_server, shards, tmp_path):
    from conftest import stop_ray_head

    # One "expert_slot" per node and one per worker: the two workers land on different nodes.
    head = start_two_node_cluster({"expert_slot": 1})
    try:
        deadline = time.monotonic() + 120
        while len(cluster_nodes(head)) < 2:
            assert time.monotonic() < deadline, "the worker node never joined the head"
            time.sleep(2)
        out = submit_job(
            head,
            sys.executable, str(REPO / "workflows" / "train.py"), "--stage", "expert",
            "--shards", str(shards), "--width", "0.0625", "--batch-size", "16", "--lr", "1e-3",
            "--max-steps", "6", "--log-every", "3", "--checkpoint-every", "6", "--num-workers", "2",
            "--worker-resources", json.dumps({"expert_slot": 1}), "--val-max-clips", "2",
            "--val-windows-per-clip", "4", "--storage-path", str(tmp_path / "ray"), "--run-name", "two-node",
            "--tracking-uri", mlflow_server.uri, "--experiment", "test-expert-two-node", "--no-register",
            "--no-system-metrics", "--max-failures", "0",
        )
        assert "[expert] step 6/6" in out.stdout  # progress is visible in the job logs
        summary = json.loads(out.stdout[out.stdout.rindex("{\n"): out.stdout.rindex("}") + 1])
        assert summary["final_step"] == 6
        nodes = set(cluster_nodes(head))
    finally:
        stop_ray_head(head)
    tags = MlflowClient(mlflow_server.uri, registry_uri=mlflow_server.uri).get_run(summary["run_id"]).data.tags
    placement = tags["lipsync.worker_placement"].split(",")
    used_nodes = {p.split("/")[0] for p in placement}
    assert tags["lipsync.world_size"] == "2" and len(placement) == 2
    assert len(used_nodes) == 2 and used_nodes <= nodes
