"""A training stage is a library module plus one table line (DESIGN.md, "Training stages").

This file defines a third stage the platform has never heard of — a visual-quality critic
trained alone to tell a face from the same face with its mouth shaded to half brightness —
adds it to the stage table (one line), and trains it through the real command line
(workflows/train.py: its flags come from the recipe's fields), the one Ray Train loop on the
session's Ray cluster, MLflow, and the registry. Nothing else in the repo is touched.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from lipsync.checkpoints import ModelConfig, load_model
from lipsync.errors import ConfigError
from lipsync.model_ref import fetch
from lipsync.data.generator_windows import GeneratorSampling, collate_generator
from lipsync.models import VisualQualityDiscriminator
from lipsync.models.blocks import fold_time
from lipsync.models.discriminator import bce_with_logits
from lipsync.training import STAGES
from lipsync.training.recipe import option
from lipsync.training.stage import CurvePanel, ModelFile, SavedModel, TrainingStage

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent


@dataclass
class CriticRecipe:
    width: float = option(0.0625, "channel multiplier")
    face_size: int = option(96, "face crop size")
    batch_size: int = option(8, "global batch, split over workers")
    lr: float = option(1e-3, "learning rate")
    dark_rows: int = option(24, "rows of the lower half shaded to make a fake")

    def check(self) -> None:
        if not 0 < self.dark_rows <= self.face_size // 2:
            raise ConfigError(f"--dark-rows must be in 1..{self.face_size // 2}, got {self.dark_rows}")

    def sampling(self) -> GeneratorSampling:
        return GeneratorSampling(T=1, face_size=self.face_size)


class CriticStage(TrainingStage):
    """A lone visual-quality critic: real faces against faces with a shaded mouth"""

    name = "critic"
    recipe_type = CriticRecipe
    registered_model = "test-critic"
    experiment = "test-critic"
    model_kind = "disc"
    best_metric = "val_accuracy"
    higher_is_better = True
    curve_panels = (CurvePanel("BCE", ("train_loss", "val_loss")),)
    progress_keys = ("train_loss",)
    MODEL_FILE = ModelFile("critic.safetensors", registered=True)

    def __init__(self, recipe, device="cpu", load_model=None, initialise=True, max_steps=1):
        super().__init__(recipe, device, load_model, initialise, max_steps)
        self.critic = VisualQualityDiscriminator(width=recipe.width, face_size=recipe.face_size).train()
        self.trained = {"critic": self.critic}
        self.optimizers = {"critic": torch.optim.Adam(self.critic.parameters(), lr=recipe.lr)}

    def sampling(self, validation=False):
        return self.recipe.sampling()

    def _pairs(self, batch):
        real = fold_time(batch["gt"].to(self.device), time_dim=2)
        fake = real.clone()
        rows = slice(real.shape[2] - self.recipe.dark_rows, real.shape[2])
        fake[:, :, rows] = real[:, :, rows] * 0.5
        labels = torch.cat((torch.ones(len(real), 1), torch.zeros(len(fake), 1))).to(self.device)
        return torch.cat((real, fake)), labels

    def train_step(self, batch, step):
        faces, labels = self._pairs(batch)
        loss = bce_with_logits(self.trained["critic"](faces, logits=True), labels)
        self.optimizers["critic"].zero_grad(set_to_none=True)
        loss.backward()
        self.optimizers["critic"].step()
        return {"loss": loss.item() * len(labels), "samples": float(len(labels))}

    def train_metrics(self, sums):
        return {"train_loss": float(sums["loss"]) / float(sums["samples"])}

    @torch.no_grad()
    def validate(self, windows, batch_size):
        critic = self.bare("critic").eval()
        sums = {"loss": 0.0, "correct": 0.0, "samples": 0.0}
        for i in range(0, len(windows), batch_size):
            faces, labels = self._pairs(collate_generator(windows[i:i + batch_size]))
            score = critic(faces, logits=True)
            sums["loss"] += float(bce_with_logits(score, labels)) * len(labels)
            sums["correct"] += float(((score > 0).float() == labels).sum())
            sums["samples"] += len(labels)
        critic.train()
        return sums

    def validation_metrics(self, sums):
        n = float(sums["samples"])
        return {"val_loss": float(sums["loss"]) / n, "val_accuracy": float(sums["correct"]) / n}

    @classmethod
    def model_files(cls, recipe):
        return (cls.MODEL_FILE,)

    def saved_models(self):
        config = ModelConfig(kind="disc", width=self.recipe.width, face_size=self.recipe.face_size)
        return [SavedModel(self.MODEL_FILE, self.bare("critic"), config)]


def test_a_third_stage_trains_through_the_cli_loop_and_registry(ray_local, mlflow_server, shards, tmp_path,
                                                               monkeypatch, capsys):
    import ray.cloudpickle

    monkeypatch.setitem(STAGES, "critic", CriticStage)  # the one table line
    # The workers build the stage from the class the driver ships them; this test module is
    # not on their path, so the class travels by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        _train_the_critic(mlflow_server, shards, tmp_path, monkeypatch, capsys)
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def _train_the_critic(mlflow_server, shards, tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(REPO / "workflows"))
    import train as train_workflow

    common = ["--stage", "critic", "--shards", str(shards), "--tracking-uri", mlflow_server.uri,
              "--storage-path", str(tmp_path / "ray"), "--num-workers", "2", "--no-system-metrics"]
    parser = train_workflow.build_parser()
    help_text = parser.format_help()
    assert "--dark-rows" in help_text and "critic stage" in help_text  # its own flag group, from its recipe
    # A flag another stage reads is refused; the critic's own flag is refused for the others.
    assert train_workflow.main([*common, "--min-offset", "3"]) == 2
    assert "only --stage expert reads this; --stage critic would ignore it" in capsys.readouterr().err
    assert train_workflow.main(["--stage", "expert", "--shards", str(shards), "--dark-rows", "8"]) == 2
    assert "only --stage critic reads this" in capsys.readouterr().err

    code = train_workflow.main([*common, "--max-steps", "60", "--log-every", "20", "--checkpoint-every", "30",
                                "--dark-rows", "40", "--val-windows-per-clip", "2", "--run-name", "critic"])
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    result = json.loads(out.out[out.out.rindex("{\n"): out.out.rindex("}") + 1])
    assert result["stage"] == "critic" and result["final_step"] == 60 and result["best_metric"] == "val_accuracy"
    assert result["best_value"] > 0.6, f"the critic did not learn: val accuracy {result['best_value']:.3f}"

    client = MlflowClient(mlflow_server.uri, registry_uri=mlflow_server.uri)
    run = client.get_run(result["run_id"])
    assert run.data.params["dark_rows"] == "40" and run.data.tags["lipsync.stage"] == "critic"
    assert client.get_experiment(run.info.experiment_id).name == "test-critic"
    assert sorted(m.step for m in client.get_metric_history(result["run_id"], "val_accuracy")) == [30, 60]
    version = client.get_model_version_by_alias("test-critic", "candidate")
    assert version.version == result["model_version"] and version.run_id == result["run_id"]
    assert version.source.endswith(f"checkpoints/step-{result['best_step']:07d}")
    path = fetch(f"models:/test-critic/{version.version}", tmp_path / "dl", mlflow_server.uri)
    assert path.name == "critic.safetensors"
    model, config = load_model(str(path))
    assert isinstance(model, VisualQualityDiscriminator) and config.kind == "disc" and config.width == 0.0625
