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
    listening = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True).stdout
    port = ray_head.address.rsplit(":", 1)[1]
    lines = [l for l in listening.splitlines() if l.split()[3].endswith(f":{port}")]
    assert lines, f"GCS port {port} is not listening"
    assert all("127.0.0.1" in l.split()[3] for l in lines), lines


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

    from pipelines.registry import register_checkpoint
    version = register_checkpoint(run.info.run_id, "model", "fixture-model", alias="candidate",
                                  tags={"val_accuracy": "0.9"}, tracking_uri=mlflow_server.uri)
    assert client.get_model_version_by_alias("fixture-model", "candidate").version == version
    local = mlflow.artifacts.download_artifacts(artifact_uri="models:/fixture-model@candidate",
                                                dst_path=str(tmp_path / "dl"))
    assert (Path(local) / "a.txt").read_text() == "hello"
