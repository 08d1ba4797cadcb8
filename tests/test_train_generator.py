"""Generator (Wav2Lip + GAN) training: each stage's step on CPU without Ray, then the whole
stage on real services — Ray Train (local cluster, 2 workers), a real MLflow server,
shards from the real preprocessing pipeline, a tiny expert taken from the registry.

The Ray runs are combined to save CI time: one run is killed mid-training (restored with
the sync-weight switch kept, every MLflow point once), registered and used by
`lipsync infer`; `--resume` continues it; one short run fine-tunes a fake official
wav2lip_gan.pth.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from lipsync.checkpoints import ModelConfig, load_model, save_checkpoint
from lipsync.data.shard_stream import WindowBatchStream, list_shards
from lipsync.data.generator_windows import GeneratorSampling
from lipsync.errors import ConfigError
from lipsync.models import SyncNet, Wav2Lip
from lipsync.training import ExpertRecipe, ExpertStage, GeneratorRecipe, GeneratorStage
from pipelines.tracking.registry import register_checkpoint
from pipelines.train.config import TrainConfig
from pipelines.train.driver import run_training

REPO = Path(__file__).resolve().parent.parent
TINY = 0.0625
EXPERT = "gen-test-expert"  # registered name of the tiny experts (other tests own lipsync-expert's aliases)
S, T = 96, 5


def tiny_expert(face_size: int = S, seed: int = 0) -> SyncNet:
    torch.manual_seed(seed)
    return SyncNet(width=TINY, face_size=face_size).eval()


def loader_of(expert: SyncNet, face_size: int = S):
    """A ModelLoader that hands out ``expert`` (what lipsync.model_ref.load does from a file)."""
    return lambda ref, kind: (expert, ModelConfig(kind="expert", width=TINY, face_size=face_size))


def generator_batch(b: int = 1, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(b, 3, T, S, S, generator=g)
    ref = torch.rand(b, 3, T, S, S, generator=g)
    masked = gt.clone()
    masked[..., S // 2:, :] = 0
    return {"x": torch.cat([masked, ref], 1), "gt": gt, "indiv_mels": torch.randn(b, T, 1, 80, 16, generator=g),
            "mel": torch.randn(b, 1, 80, 16, generator=g)}


# ------------------------------------------------------------------ unit: stages without Ray


def test_generator_step_trains_generator_and_disc_with_frozen_expert_and_one_way_switch(tmp_path):
    expert = tiny_expert()
    before = {k: v.clone() for k, v in expert.state_dict().items()}
    recipe = GeneratorRecipe(expert="tiny", width=TINY, batch_size=2, sync_threshold=0.75)
    stage = GeneratorStage(recipe, "cpu", loader_of(expert))
    gen0 = [p.detach().clone() for p in stage.generator.parameters()]
    disc0 = [p.detach().clone() for p in stage.disc.parameters()]

    sums = stage.train_step(generator_batch(), step=1)
    assert set(sums) == {"samples", "loss", "l1", "sync", "adv", "disc_real", "disc_fake"}
    assert sums["samples"] == 1 and all(np.isfinite(v) and v >= 0 for v in sums.values())
    assert any(not torch.equal(a, b) for a, b in zip(gen0, stage.generator.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(disc0, stage.disc.parameters()))
    # The expert judges, it never learns: frozen, eval-mode BatchNorm statistics untouched.
    assert not expert.training and not any(p.requires_grad for p in expert.parameters())
    assert all(torch.equal(before[k], v) for k, v in expert.state_dict().items())
    metrics = stage.train_metrics(sums)
    assert metrics["sync_weight"] == 0.0 and metrics["train_l1"] == pytest.approx(sums["l1"])
    # paper: L1 only until the switch (sw = 0), plus the adversarial term 0.07
    assert sums["loss"] == pytest.approx(0.93 * sums["l1"] + 0.07 * sums["adv"], rel=1e-5)

    assert stage.after_validation({"val_sync_loss": 0.9}, step=10) is None and stage.sync_weight == 0.0
    assert "0.03" in stage.after_validation({"val_sync_loss": 0.5}, step=20)
    assert stage.sync_weight == 0.03 and stage.sync_switch_step == 20
    stage.after_validation({"val_sync_loss": 2.0}, step=30)  # one-way: never switches back
    assert stage.sync_weight == 0.03
    sums = stage.train_step(generator_batch(seed=1), step=2)
    assert sums["loss"] == pytest.approx(0.03 * sums["sync"] + 0.07 * sums["adv"] + 0.9 * sums["l1"], rel=1e-5)

    # Generator, discriminator, both optimizers and the switch travel in the checkpoint files the
    # Ray loop writes, and come back through the loop's own restore: the restored stage then takes
    # exactly the step the original takes.
    from pipelines.train.loop import _restore
    for saved in stage.saved_models():
        save_checkpoint(tmp_path / "ckpt" / saved.filename, saved.module, saved.config,
                        train_state={"stage": stage.state_dict()} if saved.registered else None)
    restored = GeneratorStage(recipe, "cpu", loader_of(expert), initialise=False)
    restored.load_state_dict(_restore(restored, tmp_path / "ckpt")["stage"])
    assert restored.sync_switch_step == 20 and restored.sync_weight == 0.03
    for name in ("generator", "disc"):
        want, got = getattr(stage, name).state_dict(), getattr(restored, name).state_dict()
        assert [k for k in want if not torch.equal(want[k], got[k])] == [], f"{name} weights not restored"
    assert set(stage.optimizers) == set(restored.optimizers) == {"generator", "disc"}
    for name, opt in stage.optimizers.items():
        want, got = opt.state_dict(), restored.optimizers[name].state_dict()
        assert got["param_groups"] == want["param_groups"] and want["state"], name
        missing = [(i, k) for i, slots in want["state"].items() for k, v in slots.items()
                   if not (k in got["state"].get(i, {}) and torch.equal(v, got["state"][i][k]))]
        assert not missing, f"{name} optimizer state not restored: {missing[:4]}"
    torch.manual_seed(5)
    after = stage.train_step(generator_batch(seed=2), step=3)
    torch.manual_seed(5)
    assert restored.train_step(generator_batch(seed=2), step=3) == after
    for name in ("generator", "disc"):
        want, got = getattr(stage, name).state_dict(), getattr(restored, name).state_dict()
        assert all(torch.equal(want[k], got[k]) for k in want), f"{name}: the resumed step differs"
    assert [m.filename for m in stage.saved_models()] == ["wav2lip.safetensors", "disc.safetensors"]
    assert [m.registered for m in stage.saved_models()] == [True, False]


def test_no_gan_recipe_and_batch_statistics_expert():
    expert = tiny_expert()
    recipe = GeneratorRecipe(expert="tiny", width=TINY, gan=False, expert_bn="batch")
    stage = GeneratorStage(recipe, "cpu", loader_of(expert))
    assert set(stage.trained) == {"generator"} and recipe.effective_sync_weight == 0.01
    assert stage.optimizers["generator"].param_groups[0]["betas"] == (0.9, 0.999)  # wav2lip_train.py: Adam default
    assert expert.training and not any(p.requires_grad for p in expert.parameters())
    sums = stage.train_step(generator_batch(b=2), step=1)  # batch statistics need 2+ samples
    assert set(sums) == {"samples", "loss", "l1", "sync", "adv"} and sums["adv"] == 0
    assert GeneratorRecipe(expert="x").betas == (0.5, 0.999)


def test_cosine_schedule_scales_both_rates_from_the_step_alone():
    recipe = GeneratorRecipe(expert="tiny", width=TINY, lr=2e-4, disc_lr=1e-3, lr_schedule="cosine", warmup_steps=2)
    stage = GeneratorStage(recipe, "cpu", loader_of(tiny_expert()), max_steps=10)

    def rates():
        return [stage.optimizers[k].param_groups[0]["lr"] for k in ("generator", "disc")]

    stage.train_step(generator_batch(), step=1)  # warm-up: half the rates
    assert rates() == [pytest.approx(1e-4), pytest.approx(5e-4)]
    stage.train_step(generator_batch(), step=10)  # the end: 2 % of both
    assert rates() == [pytest.approx(4e-6), pytest.approx(2e-5)]
    stage.train_step(generator_batch(), step=6)  # a restored stage gets its rate from the step
    assert rates() == [pytest.approx(2e-4 * (0.02 + 0.98 * 0.5)), pytest.approx(1e-3 * (0.02 + 0.98 * 0.5))]
    with pytest.raises(ConfigError, match="lr-schedule"):
        GeneratorRecipe(expert="tiny", lr_schedule="linear").check()


def test_the_generator_channel_floor_is_saved_and_an_init_file_brings_its_own(tmp_path):
    recipe = GeneratorRecipe(expert="tiny", width=TINY)
    stage = GeneratorStage(recipe, "cpu", loader_of(tiny_expert()))
    saved = stage.saved_models()[0]
    assert recipe.min_channels == 8 and saved.config.min_channels == 8 and saved.module.min_channels == 8
    # Fine-tuning a file built at another floor trains that file's architecture.
    old = save_checkpoint(tmp_path / "old.safetensors", Wav2Lip(width=TINY), ModelConfig(kind="wav2lip", width=TINY))

    def loader(ref, kind):
        return load_model(old, kind=kind) if kind == "wav2lip" else (tiny_expert(), ModelConfig(kind="expert", width=TINY))

    fine_tune = GeneratorRecipe(expert="tiny", init=str(old), width=0.5)
    GeneratorStage.preflight(fine_tune, loader, S)
    assert (fine_tune.width, fine_tune.min_channels) == (TINY, 4)
    assert GeneratorStage(fine_tune, "cpu", loader).generator.min_channels == 4
    with pytest.raises(ConfigError, match="min-channels"):
        GeneratorRecipe(expert="tiny", min_channels=0).check()


def test_bf16_autocast_step_and_evaluation():
    # The GPU recipe (bf16 autocast) exercised on CPU: generator output in bf16 meets the
    # fp32 expert and discriminator, the losses stay float32.
    from lipsync.data.generator_windows import GeneratorWindow

    stage = GeneratorStage(GeneratorRecipe(expert="tiny", width=TINY), "cpu", loader_of(tiny_expert()))
    stage.amp_dtype = torch.bfloat16
    sums = stage.train_step(generator_batch(), step=1)
    assert all(np.isfinite(v) for v in sums.values())
    rng = np.random.default_rng(0)
    window = GeneratorWindow(gt=rng.integers(0, 255, (T, S, S, 3), dtype=np.uint8),
                             ref=rng.integers(0, 255, (T, S, S, 3), dtype=np.uint8),
                             indiv_mels=rng.uniform(-4, 0, (T, 1, 80, 16)).astype(np.float32),
                             mel=rng.uniform(-4, 0, (1, 80, 16)).astype(np.float32), start=5, ref_start=20, key="c")
    metrics = stage.validation_metrics(stage.validate([window, window], batch_size=2))
    assert metrics["val_samples"] == 2 and np.isfinite(metrics["val_sync_loss"]) and 0 < metrics["val_l1"] < 1
    grid = stage.sample_images([window])["samples"]
    assert grid.shape == (S, 4 * S, 3) and grid.dtype == np.uint8


def test_face_size_mismatch_is_named_before_training():
    # Shards at 96 px, generator asked for 192.
    with pytest.raises(ConfigError, match="--face-size 192 does not match the shards' face crops"):
        GeneratorStage.preflight(GeneratorRecipe(expert="e", face_size=192), loader_of(tiny_expert()), 96)
    # An expert of another face size than the generator.
    with pytest.raises(ConfigError, match="--expert e judges 192 px faces but --face-size is 96"):
        GeneratorStage.preflight(GeneratorRecipe(expert="e"), loader_of(tiny_expert(192), 192), 96)


def test_expert_stage_step_on_cpu():
    torch.manual_seed(0)
    stage = ExpertStage(ExpertRecipe(width=TINY, batch_size=4), "cpu")
    batch = {"face": torch.rand(4, 15, S // 2, S), "mel": torch.randn(4, 1, 80, 16),
             "label": torch.tensor([[1.0], [0.0], [1.0], [0.0]])}
    w0 = [p.detach().clone() for p in stage.model.parameters()]
    sums = stage.train_step(batch, step=1)
    assert sums["samples"] == 4 and 0 <= sums["correct"] <= 4 and sums["loss"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(w0, stage.model.parameters()))
    assert stage.train_metrics(sums)["train_loss"] == pytest.approx(sums["loss"] / 4)


def test_generator_batches_from_shards(tmp_path):
    from test_shard_stream import write_shards

    paths = list_shards(write_shards(tmp_path / "s", n_shards=1, clips_per_shard=2, size=16), "train")
    stream = WindowBatchStream(paths, batch_size=3, windows_per_clip=2, shuffle_buffer=4,
                               sampling=GeneratorSampling(face_size=16))
    batch = next(iter(stream))
    assert batch["x"].shape == (3, 6, T, 16, 16) and batch["gt"].shape == (3, 3, T, 16, 16)
    assert batch["indiv_mels"].shape == (3, T, 1, 80, 16) and batch["mel"].shape == (3, 1, 80, 16)
    assert torch.all(batch["x"][:, :3, :, 8:] == 0)  # masked lower half
    assert torch.equal(batch["x"][:, :3, :, :8], batch["gt"][..., :8, :])


# ------------------------------------------------------------------ integration: Ray + MLflow


def metric_points(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def register_tiny_expert(uri: str, tmp_path: Path, seed: int) -> str:
    folder = tmp_path / f"expert{seed}"
    save_checkpoint(folder / "expert.safetensors", tiny_expert(seed=seed), ModelConfig(kind="expert", width=TINY))
    client = MlflowClient(uri, registry_uri=uri)
    exp = client.get_experiment_by_name("test-gen-experts") or client.get_experiment(
        client.create_experiment("test-gen-experts"))
    run = client.create_run(exp.experiment_id)
    client.log_artifacts(run.info.run_id, str(folder), "checkpoints/step-0000001")
    client.set_terminated(run.info.run_id)
    return register_checkpoint(run.info.run_id, "checkpoints/step-0000001", EXPERT, alias="candidate",
                               tracking_uri=uri)


def gen_config(shards, uri, tmp_path, **over) -> TrainConfig:
    values = dict(shards=str(shards), expert=f"models:/{EXPERT}@candidate", width=TINY, batch_size=2,
                  sync_threshold=100.0,  # switch the sync loss on at the first validation
                  windows_per_clip=2, shuffle_buffer=4, val_windows_per_clip=1, val_max_clips=4,
                  max_steps=8, log_every=2, checkpoint_every=4, num_workers=2, max_failures=1,
                  storage_path=str(tmp_path / "ray"), run_name="gen", tracking_uri=uri,
                  experiment="test-generator", system_metrics=False)
    values.update(over)
    return TrainConfig.from_flat("generator", values)


@pytest.mark.integration
def test_generator_trains_restores_resumes_registers_and_infers(ray_local, mlflow_server, shards, synth_corpus,
                                                                tmp_path):
    uri = mlflow_server.uri
    client = MlflowClient(uri, registry_uri=uri)
    first = register_tiny_expert(uri, tmp_path, seed=0)
    # No champion yet (the default --expert's alias): the error comes before anything starts
    # and suggests @candidate.
    assert GeneratorRecipe().expert == "models:/lipsync-expert@champion"
    with pytest.raises(ConfigError, match=f"--expert models:/{EXPERT}@champion: .*models:/{EXPERT}@candidate"):
        run_training(gen_config(shards, uri, tmp_path, expert=f"models:/{EXPERT}@champion", run_name="nochamp"))
    assert not (tmp_path / "ray" / "nochamp").exists()

    result = run_training(gen_config(shards, uri, tmp_path, fail_at_step=6))
    run = client.get_run(result.run_id)
    assert Path(result.run_dir, "injected_failure.marker").exists(), "the failure was never injected"
    assert result.final_step == 8 and run.info.status == "FINISHED"
    assert run.data.tags["lipsync.expert"] == f"models:/{EXPERT}/{first}"  # alias pinned once
    assert run.data.tags["lipsync.restored_from_step"] == "4" and run.data.tags["lipsync.world_size"] == "2"
    # Steps 5-6 ran twice (before the kill and after restoring step 4): one point each.
    for key in ("train_l1", "train_sync", "train_adv", "train_disc_real", "train_disc_fake"):
        assert [s for s, _ in metric_points(client, result.run_id, key)] == [2, 4, 6, 8], key
    # Switched on at the step-4 validation; after the restore (from step 4) it is still on.
    assert metric_points(client, result.run_id, "sync_weight") == [(2, 0.0), (4, 0.0), (6, 0.03), (8, 0.03)]
    assert [s for s, _ in metric_points(client, result.run_id, "val_sync_loss")] == [4, 8]
    for folder, name in (("checkpoints", "wav2lip.safetensors"), ("discriminators", "disc.safetensors")):
        for step in (4, 8):
            files = [a.path for a in client.list_artifacts(result.run_id, f"{folder}/step-{step:07d}")]
            # One model per folder; the registered step's also holds that model as an MLflow Model.
            registered = folder == "checkpoints" and step == result.best_step
            model_dir = [f"{folder}/step-{step:07d}/mlflow-model"] if registered else []
            assert sorted(files) == sorted([f"{folder}/step-{step:07d}/{name}", *model_dir]), files
    assert {a.path for a in client.list_artifacts(result.run_id, "samples")} == {
        "samples/step-0000004.png", "samples/step-0000008.png"}
    png = Path(client.download_artifacts(result.run_id, "samples/step-0000008.png", str(tmp_path)))
    import cv2
    image = cv2.imread(str(png))
    assert image.shape[1] == 4 * S and image.shape[0] % S == 0 and image.shape[0] >= 2 * S  # several clips
    assert "curves/generator_curve.png" in {a.path for a in client.list_artifacts(result.run_id, "curves")}

    version = client.get_model_version_by_alias("wav2lip", "candidate")
    assert version.version == result.model_version and version.run_id == result.run_id
    assert version.tags["discriminator"].startswith(f"runs:/{result.run_id}/discriminators/")

    # The registered generator drives inference through the CLI.
    clips = sorted((synth_corpus / "main").glob("*/*.mp4"))
    out = tmp_path / "dubbed.mp4"
    proc = subprocess.run([sys.executable, "-m", "lipsync", "infer", "--no-progress", "--face", str(clips[0]),
                           "--audio", str(clips[-1]), "--out", str(out), "--model", "models:/wav2lip@candidate"],
                          capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": uri})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.stat().st_size > 0

    # The alias moves; --resume keeps judging with the pinned expert, in the same MLflow run.
    register_tiny_expert(uri, tmp_path, seed=1)
    resumed = run_training(gen_config(shards, uri, tmp_path, resume=True, max_steps=10))
    assert resumed.run_id == result.run_id and resumed.final_step == 10
    tags = client.get_run(result.run_id).data.tags
    assert tags["lipsync.resumed"] == "1" and tags["lipsync.expert"] == f"models:/{EXPERT}/{first}"
    assert tags["lipsync.restored_from_step"] == "8"
    assert [s for s, _ in metric_points(client, result.run_id, "train_l1")] == [2, 4, 6, 8, 10]
    assert metric_points(client, result.run_id, "sync_weight")[-1] == (10, 0.03)


@pytest.mark.integration
def test_fine_tune_official_wav2lip_gan(ray_local, mlflow_server, shards, tmp_path):
    from official_keys import fake_official_state_dict

    official = tmp_path / "wav2lip_gan.pth"
    torch.save({"state_dict": fake_official_state_dict("wav2lip", seed=3), "optimizer": None,
                "global_step": 258000, "global_epoch": 88}, official)
    expert = tmp_path / "expert.safetensors"
    save_checkpoint(expert, tiny_expert(), ModelConfig(kind="expert", width=TINY))
    sys.path.insert(0, str(REPO / "workflows"))
    import train as train_workflow

    code = train_workflow.main([
        "--stage", "generator", "--shards", str(shards), "--expert", str(expert), "--init", str(official),
        "--disc-width", str(TINY), "--batch-size", "1", "--num-workers", "1", "--max-steps", "1",
        "--checkpoint-every", "1", "--log-every", "1", "--val-max-clips", "1", "--val-windows-per-clip", "1",
        "--windows-per-clip", "1", "--shuffle-buffer", "1", "--storage-path", str(tmp_path / "ray"),
        "--run-name", "finetune", "--tracking-uri", mlflow_server.uri, "--experiment", "test-generator-finetune",
        "--no-system-metrics", "--max-failures", "0",
    ])
    assert code == 0
    client = MlflowClient(mlflow_server.uri, registry_uri=mlflow_server.uri)
    version = client.get_model_version_by_alias("wav2lip", "candidate")
    run = client.get_run(version.run_id)
    assert run.data.tags["lipsync.init"] == str(official) and run.data.params["width"] == "1.0"
    path = client.download_artifacts(version.run_id, "checkpoints/step-0000001/wav2lip.safetensors", str(tmp_path))
    model, config = load_model(path, kind="wav2lip")
    assert config.width == 1.0 and config.face_size == 96
    # Started from the official weights: one Adam step at lr 1e-4 moves each weight by <= ~1e-4.
    start = fake_official_state_dict("wav2lip", seed=3)["output_block.1.weight"]
    assert (model.state_dict()["output_block.1.weight"] - start).abs().max() < 1e-3
