"""workflows/evaluate.py and the promotion gate against a real MLflow server: the expert's
evaluation (accuracy, offset recovery) on the session shards' test split, the gate moving
`champion` only when its rules hold, and the generator's protocol over Ray Data with an
untrained tiny generator registered as `wav2lip`; one short clip through the generator's
scoring actor in process, its figures recomputed here (frame alignment, colour order, FID)."""

from __future__ import annotations

import json

import numpy as np
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
    # An untrained generator is far from the ground truth, but the figures are real ones (that they
    # compare frame k with frame k in BGR, and the FID path: the in-process test below).
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

# ------------------------------------------------------------------ one clip, scored in process

def generated_faces(model, gt: np.ndarray, ref_start: int, mel: np.ndarray) -> np.ndarray:
    """The protocol's generation, written out independently of the evaluator: output frame k from
    masked ground-truth frame k and reference frame (ref_start + k) mod n with frame k's mel
    window, BGR in and out (what the generator is trained on)."""
    from lipsync.audio import frame_mel_windows
    from lipsync.models.wav2lip import generator_input

    n = len(gt)
    refs = gt[(ref_start + np.arange(n)) % n]

    def as_input(frames):
        return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div(255)

    with torch.no_grad():
        y = model(torch.from_numpy(frame_mel_windows(mel, n))[:, None], generator_input(as_input(gt), as_input(refs)))
    return y.mul(255).add(0.5).clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


def test_generator_clip_is_scored_frame_by_frame_in_colour_order_and_fid_runs(tmp_path):
    """One short clip through the evaluator's actor (what each Ray Data actor does), with an FID
    Inception weight file: the face figures are those of generated frame k against ground-truth
    frame k, both BGR (a one-frame shift or a BGR/RGB swap changes every one of them), the FID
    features are the Inception's of the generated and the true faces given as RGB, and the
    evaluation reports an FID from them."""
    import cv2
    from skimage import data

    from lipsync.audio import melspectrogram
    from lipsync.checkpoints import load_model
    from lipsync.data.clip_sample import ClipSample, decode_clip_sample, encode_clip_sample
    from lipsync.metrics.image import face_quality
    from lipsync.metrics.inception import FID_WEIGHTS_NAME, FIDInceptionV3
    from pipelines.evaluate.generator import GenerateAndScore, GeneratorEvaluator

    # 8 frames of a real colour face, moving and brightening frame to frame; 0.4 s of audio.
    face = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)[20:276, 110:366]
    frames = np.stack([np.clip(cv2.resize(np.roll(face, 12 * k, axis=1), (96, 96)).astype(np.int16) + 12 * k, 0, 255)
                       .astype(np.uint8) for k in range(8)])
    rng = np.random.default_rng(0)
    mel = melspectrogram((0.2 * np.sin(np.arange(6400) * 0.06) + 0.01 * rng.standard_normal(6400)).astype(np.float32))
    members = encode_clip_sample(ClipSample("synthetic_clip", frames, mel, meta={"speaker": "s0"}))
    item = {"order": 0, "key": members["__key__"], "frames": members["frames.pack"], "mel": members["mel.npy"],
            "meta": members["meta.json"], "other_key": members["__key__"], "other_mel": b""}

    torch.manual_seed(0)
    save_checkpoint(tmp_path / "gen.safetensors", Wav2Lip(width=0.0625), ModelConfig(kind="wav2lip", width=0.0625))
    save_checkpoint(tmp_path / "judge.safetensors", SyncNet(width=0.0625), ModelConfig(kind="expert", width=0.0625))
    inception = FIDInceptionV3().eval()  # random weights: the file's layout is what is loaded
    weights = tmp_path / FID_WEIGHTS_NAME
    torch.save({k: v for k, v in inception.state_dict().items() if not k.endswith("num_batches_tracked")}, weights)

    threads = torch.get_num_threads()
    try:
        actor = GenerateAndScore(str(tmp_path / "gen.safetensors"), str(tmp_path / "judge.safetensors"),
                                 fid_weights=str(weights), seed=0)
        row = actor.score_one(item)
    finally:
        torch.set_num_threads(threads)  # the actor keeps one thread per Ray worker
    assert row["error"] == "", row["error"]

    gt = decode_clip_sample(members).frames
    own = generated_faces(load_model(tmp_path / "gen.safetensors", kind="wav2lip")[0], gt, row["ref_start"], mel)
    expected = face_quality(own, gt)
    for key, value in expected.items():
        assert row[key] == pytest.approx(value, rel=1e-6), key
    # Those figures tell frame k from frame k+1, and BGR from RGB: either moves every one of them
    # by more than ten times the tolerance above (an untrained generator's faces are nearly flat,
    # so the moves are small, but they are there).
    for wrong in (face_quality(own, np.roll(gt, 1, axis=0)), face_quality(own, gt[..., ::-1])):
        assert all(abs(wrong[k] - expected[k]) > 1e-5 * abs(expected[k]) for k in expected), (wrong, expected)

    def rgb_features(faces):
        with torch.no_grad():
            return inception(torch.from_numpy(faces[..., ::-1].copy()).permute(0, 3, 1, 2).float() / 255).numpy()

    # The actor's features, one row per frame; checked on two frames each (a 299 px Inception pass
    # is the cost of this test) against the Inception's features of the same faces as RGB. A random
    # Inception's features are tiny (~1e-7): every tolerance is relative to their scale.
    gen_features = np.asarray(row["gen_features"]).reshape(len(own), 2048)
    gt_features = np.asarray(row["gt_features"]).reshape(len(gt), 2048)

    def assert_same_features(got, want):
        scale = float(np.abs(want).max())
        assert scale > 0
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale)

    assert_same_features(gen_features[:2], rgb_features(own[:2]))
    assert_same_features(gt_features[[0, -1]], rgb_features(gt[[0, -1]]))
    swapped = rgb_features(gt[:1, ..., ::-1].copy())  # colour order shows: ~5% of the scale here
    assert np.abs(swapped - gt_features[:1]).max() > 1e-2 * np.abs(gt_features[:1]).max()

    # The evaluation's FID comes from those features. (Not recomputed here: one 2048x2048 matrix
    # square root is most of this test's time; the distance itself is test_metrics.py's.)
    metrics = GeneratorEvaluator(None).summarize([row], "synthetic").metrics
    assert metrics["test_clips"] == 1 and metrics["ssim"] == pytest.approx(expected["ssim"], rel=1e-6)
    assert np.isfinite(metrics["fid"]) and metrics["fid"] > 0, metrics
