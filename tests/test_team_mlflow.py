"""A team MLflow server, really started: PostgreSQL backend and user stores, basic auth,
artifacts on (local) object storage - the deployment of infra/mlflow on loopback.

An unauthenticated client is refused; a client with credentials from the environment
MLflow documents (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD) logs a run and
registers a model; the rows are in PostgreSQL and the artifact in the bucket.
(The autoscaling rehearsal trains and registers a real expert against this server too.)
"""

from __future__ import annotations

import subprocess
import urllib.error
import urllib.request
from base64 import b64encode

import pytest

from conftest import postgres_bin

SEARCH = "/api/2.0/mlflow/experiments/search?max_results=5"


def _status(url: str, user: str | None = None, password: str | None = None) -> int:
    req = urllib.request.Request(url)
    if user is not None:
        req.add_header("Authorization", "Basic " + b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.mark.integration
def test_team_server_refuses_strangers_and_serves_the_team(team_mlflow_server, s3_server, tmp_path, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    from lipsync.checkpoints import ModelConfig, load_model, save_checkpoint
    from lipsync.model_ref import fetch
    from pipelines.tracking.registry import register_checkpoint

    server = team_mlflow_server
    assert _status(server.uri + SEARCH) == 401
    assert _status(server.uri + SEARCH, "admin", "wrong-password") == 401
    assert _status(server.uri + SEARCH, server.admin_user, server.admin_password) == 200

    # The admin creates a team member; the member works with credentials from the environment.
    trainer = server.add_user("trainer")
    for key, value in trainer.items():
        monkeypatch.setenv(key, value)

    config = ModelConfig(kind="expert", width=0.0625)
    import torch
    torch.manual_seed(11)
    trained = config.build()
    ckpt = save_checkpoint(tmp_path / "ckpt" / "expert.safetensors", trained, config)
    client = MlflowClient(tracking_uri=server.uri)
    exp = client.create_experiment("team-test")
    run = client.create_run(exp, run_name="team-run")
    client.log_param(run.info.run_id, "lr", "1e-4")
    client.log_metric(run.info.run_id, "val_accuracy", 0.75, step=10)
    client.log_artifacts(run.info.run_id, str(ckpt.parent), "checkpoints/step-0000010")
    client.set_terminated(run.info.run_id)
    version = register_checkpoint(run.info.run_id, "checkpoints/step-0000010", "team-expert", alias="candidate",
                                  tracking_uri=server.uri)
    assert version == "1"

    # The member owns what they created (MANAGE), as the auth app records it.
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", server.admin_user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", server.admin_password)
    from mlflow.server.auth.client import AuthServiceClient
    from mlflow.server.auth.permissions import RESOURCE_TYPE_EXPERIMENT
    owned = AuthServiceClient(server.uri).get_user_permission("trainer", RESOURCE_TYPE_EXPERIMENT, exp)
    assert owned.permission == "MANAGE", owned.to_json()
    for key, value in trainer.items():
        monkeypatch.setenv(key, value)

    # The registered model comes back through the registry and loads: the same weights, tensor
    # for tensor (a fresh model of the same config differs: its init is another draw).
    path = fetch("models:/team-expert@candidate", tmp_path / "dl", tracking_uri=server.uri)
    loaded, loaded_config = load_model(path, kind="expert")
    assert loaded_config.kind == "expert" and loaded_config.width == config.width
    expected, got = trained.state_dict(), loaded.state_dict()
    assert got.keys() == expected.keys()
    differing = [k for k in expected if not torch.equal(got[k], expected[k])]
    assert not differing, f"registered model does not load the logged weights: {differing[:5]}"

    # Where things went: runs and the registry in PostgreSQL, the artifact in the bucket (the
    # server is the session's: other tests' runs and models are there too, so count this one's).
    rows = subprocess.run([postgres_bin("psql"), f"{server.db_url}/mlflow", "-tAc",
                           f"select count(*) from runs where run_uuid = '{run.info.run_id}'; "
                           "select count(*) from model_versions where name = 'team-expert';"],
                          env={**server.env, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                          check=True, timeout=60).stdout.split()
    assert rows == ["1", "1"], rows
    # The checkpoint, and the same file inside the registered version's MLflow Model.
    keys = [k for k in s3_server.keys("mlflow-artifacts/") if run.info.run_id in k and k.endswith("expert.safetensors")]
    assert sorted(k.split("/artifacts/", 1)[1] for k in keys) == [
        "checkpoints/step-0000010/expert.safetensors",
        "checkpoints/step-0000010/mlflow-model/artifacts/expert.safetensors"], keys

    # Without credentials the same client is refused.
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    with pytest.raises(mlflow.exceptions.MlflowException, match="401|Unauthorized|credentials"):
        MlflowClient(tracking_uri=server.uri).search_experiments()
