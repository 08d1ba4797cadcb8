"""workflows/evaluate.py and the promotion gate against a real MLflow server: the expert's
evaluation (accuracy, offset recovery) on the session shards' test split, the gate moving
`champion` only when its rules hold, and the generator's protocol over Ray Data with an
untrained tiny generator registered as `wav2lip`."""

from __future__ import annotations

import json

import pytest
import torch
from mlflow import MlflowClient

from lipsync.checkpoints import ModelConfig, save_checkpoint
from lipsync.models import SyncNet, Wav2Lip
from pipelines.evaluate.config import PER_CLIP_ARTIFACT, EvalConfig
from pipelines.evaluate.driver import run_evaluation
from pipelines.tracking.registry import register_checkpoint

pytestmark = pytest.mark.integration


def register(tracking_uri: str, name: str, ckpt, tmp_path) -> tuple[str, str]:
    """Log `ckpt` in a new 'training' run and register it as `name`@candidate: (version, run id)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("test-eval-models")
    with mlflow.start_run(run_name=f"train-{name}") as run:
        mlflow.log_artifact(str(ckpt), "checkpoint")
    version = register_checkpoint(run.info.run_id, "checkpoint", name, alias="candidate", tracking_uri=tracking_uri)
    return version, run.info.run_id


def evaluate(main_args: list[str], capsys) -> tuple[int, dict, str]:
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "evaluate_workflow", Path(__file__).resolve().parent.parent / "workflows" / "evaluate.py")
    workflow = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(workflow)
    code = workflow.main(main_args)
    out = capsys.readouterr().out
    return code, json.loads(out.strip().splitlines()[-1]), out


def test_expert_evaluation_and_promotion_gate(mlflow_server, shards, trained_expert, tmp_path, capsys):
    uri = mlflow_server.uri
    client = MlflowClient(uri, registry_uri=uri)
    ckpt, model = trained_expert
    v_good, train_run = register(uri, "lipsync-expert", ckpt, tmp_path)
    common = ["--shards", str(shards), "--tracking-uri", uri, "--windows-per-clip", "8", "--shifts", "0", "5", "-3"]

    # 1. A trained expert, no champion yet, thresholds met → promoted.
    code, result, out = evaluate(["--model", "models:/lipsync-expert@candidate", *common, "--promote",
                                  "--threshold", "offset_recovery_within_1=0.5", "--margin", "0.02"], capsys)
    assert code == 0, out
    assert result["decision"]["decision"] == "promoted" and result["version"] == v_good
    assert client.get_model_version_by_alias("lipsync-expert", "champion").version == v_good
    m = result["metrics"]
    assert m["test_clips"] >= 3 and 0 <= m["test_accuracy"] <= 1 and m["offset_recovery_within_1"] >= 0.5
    assert m["lse_c_in_sync"] > 0 and 0 < m["test_pairs"] <= 8 * m["test_clips"]
    run = client.get_run(result["run_id"])
    assert run.data.tags["lipsync.training_run_id"] == train_run
    assert run.data.tags["lipsync.evaluated_version"] == v_good
    assert run.data.metrics["test_accuracy"] == pytest.approx(m["test_accuracy"])
    table = client.download_artifacts(result["run_id"], PER_CLIP_ARTIFACT, str(tmp_path))
    import pandas as pd
    rows = pd.read_csv(table)
    assert len(rows) == m["test_clips"] and {"clip", "accuracy", "offset@+5", "offset@-3"} <= set(rows.columns)
    tags = client.get_model_version("lipsync-expert", v_good).tags
    assert tags["gate.decision"] == "promoted" and float(tags["eval.test_accuracy"]) == pytest.approx(
        m["test_accuracy"], rel=1e-4)

    # 2. A worse candidate (untrained) on the same test set → kept, exit code 3, reason printed,
    #    figures compared with the champion's recorded ones; champion unchanged.
    bad = tmp_path / "untrained.safetensors"
    torch.manual_seed(1)
    save_checkpoint(bad, SyncNet(width=0.0625), ModelConfig(kind="expert", width=0.0625))
    v_bad, _ = register(uri, "lipsync-expert", bad, tmp_path)
    code, result, out = evaluate(["--model", "models:/lipsync-expert@candidate", *common, "--promote",
                                  "--margin", "0.02", "--compare", "offset_recovery"], capsys)
    assert code == 3, out
    decision = result["decision"]
    assert decision["decision"] == "kept" and "worse than the champion" in decision["reason"]
    assert "[gate] kept" in out
    assert decision["compared"]["offset_recovery"]["champion"] == pytest.approx(m["offset_recovery"], abs=1e-5)
    assert client.get_model_version_by_alias("lipsync-expert", "champion").version == v_good
    tags = client.get_model_version("lipsync-expert", v_bad).tags
    assert tags["gate.decision"] == "kept" and tags["gate.champion_version"] == v_good
    assert json.loads(tags["gate.compared"])["offset_recovery"]["ok"] is False

    # 3. A candidate as good as the champion (same weights, new version) → the rule holds, champion moves.
    v_same, _ = register(uri, "lipsync-expert", ckpt, tmp_path)
    code, result, out = evaluate(["--model", f"models:/lipsync-expert/{v_same}", *common, "--promote",
                                  "--margin", "0.0"], capsys)
    assert code == 0, out
    assert client.get_model_version_by_alias("lipsync-expert", "champion").version == v_same
    assert result["decision"]["compared"]["test_accuracy"]["ok"] is True

    # 4. A threshold it cannot meet → kept, with the threshold named.
    code, result, out = evaluate(["--model", f"models:/lipsync-expert/{v_bad}", *common, "--promote",
                                  "--threshold", "test_accuracy=0.99", "--compare", "test_accuracy"], capsys)
    assert code == 3 and "test_accuracy" in result["decision"]["reason"] and "threshold 0.99" in out
    assert client.get_model_version_by_alias("lipsync-expert", "champion").version == v_same


def test_generator_protocol_over_ray_data(ray_local, mlflow_server, shards, trained_expert, tmp_path):
    uri = mlflow_server.uri
    torch.manual_seed(0)
    gen = tmp_path / "wav2lip_tiny.safetensors"
    save_checkpoint(gen, Wav2Lip(width=0.0625), ModelConfig(kind="wav2lip", width=0.0625))
    version, train_run = register(uri, "wav2lip", gen, tmp_path)
    ckpt, _ = trained_expert
    register(uri, "eval-test-judge", ckpt, tmp_path)  # the judge is an alias, as in production

    def config(model: str) -> EvalConfig:
        return EvalConfig(model=model, shards=str(shards), tracking_uri=uri,
                          judge_model="models:/eval-test-judge@candidate", max_clips=2, promote=True)

    result = run_evaluation(config("models:/wav2lip@candidate"))
    m = result.metrics
    assert m["test_clips"] == 2
    for key in ("lse_d_own", "lse_c_own", "lse_d_other", "lse_c_other", "ssim", "psnr", "ssim_mouth", "psnr_mouth"):
        assert key in m and m[key] == m[key], key
    # An untrained generator is far from the ground truth, but the figures are real ones.
    assert 0 < m["ssim"] < 0.9 and 0 < m["ssim_mouth"] < 0.9 and 0 < m["psnr"] < 30
    client = MlflowClient(uri, registry_uri=uri)
    run = client.get_run(result.run_id)
    assert run.data.tags["lipsync.training_run_id"] == train_run and "ssim" in run.data.metrics
    import pandas as pd
    rows = pd.read_csv(client.download_artifacts(result.run_id, PER_CLIP_ARTIFACT, str(tmp_path)))
    assert len(rows) == 2 and rows["ref_start"].notna().all() and (rows["other_audio"] != rows["clip"]).all()
    assert result.decision["decision"] == "promoted"
    assert client.get_model_version_by_alias("wav2lip", "champion").version == version

    # The judge's alias moves to another expert: the champion's cached figures (old judge) are
    # not this test set's, so the champion is scored again, by the new judge, on the same clips.
    from pipelines.evaluate.driver import evaluator_for
    from pipelines.evaluate.record import recorded_metrics, test_set_fingerprint

    torch.manual_seed(3)
    other_judge = tmp_path / "judge2" / "expert.safetensors"
    save_checkpoint(other_judge, SyncNet(width=0.0625), ModelConfig(kind="expert", width=0.0625))
    judge_version, _ = register(uri, "eval-test-judge", other_judge, tmp_path)
    cfg = config("models:/wav2lip@champion")
    evaluator = evaluator_for("wav2lip", cfg)
    test_set = test_set_fingerprint(cfg.shards, cfg.split, {"evaluator": "wav2lip", **evaluator.settings()})
    champion = client.get_model_version_by_alias("wav2lip", "champion")
    rescored = recorded_metrics(evaluator, champion, cfg, uri, test_set)
    assert rescored["lse_c_own"] != pytest.approx(m["lse_c_own"], abs=1e-6), "not scored again"
    assert test_set != result.test_set
    assert rescored["ssim_mouth"] == pytest.approx(m["ssim_mouth"], abs=1e-9)  # same generator, same clips
    tags = client.get_model_version("wav2lip", version).tags
    assert tags["eval.test_set"] == test_set and float(tags["eval.lse_c_own"]) == pytest.approx(rescored["lse_c_own"])
    assert client.get_run(tags["eval.run_id"]).data.params["judge_model"] == f"models:/eval-test-judge/{judge_version}"
