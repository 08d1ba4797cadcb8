"""Per-step logic of the lip-sync expert: loss, accuracy, and evaluation by audio offset.

The expert scores a (5-frame face window, 16-step mel window) pair with the cosine
similarity of the two L2-normalised, non-negative embeddings, read as P(in sync), and is
trained with binary cross-entropy against y = 1 (in sync) / 0 (off sync), as the original.
A pair counts as correct when P > 0.5 matches the label.

Evaluation reports accuracy and loss overall and per |audio offset| bucket: the offsets
close to 0 are the hard ones and the ones a generator's sync loss depends on.
``ExpertStage`` is the expert as a training stage (lipsync/training/stage.py). Ray-free:
the one Ray Train loop (pipelines/train/loop.py) all-reduces the counts.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from lipsync.checkpoints import ModelConfig
from lipsync.data.windows import (
    DEFAULT_MIN_MEL_DISTANCE,
    DEFAULT_MIN_OFFSET,
    ExpertSampling,
    ExpertWindow,
    collate_expert,
)
from lipsync.errors import ConfigError
from lipsync.models import SYNC_FRAMES, SyncNet, sync_probability
from lipsync.training.schedule import LR_SCHEDULES, check_schedule, lr_at, set_lr
from lipsync.training.losses import bce
from lipsync.training.recipe import option
from lipsync.training.stage import (
    CurvePanel,
    ModelFile,
    ModelLoader,
    SavedModel,
    TrainingStage,
    check_init_architecture,
    init_weights,
)

# Buckets of |offset| in frames; 1 only occurs with --min-offset 1.
OFFSET_BUCKETS: tuple[tuple[str, int, int], ...] = (
    ("0", 0, 0), ("1", 1, 1), ("2", 2, 2), ("3", 3, 3), ("4", 4, 4), ("5", 5, 5),
    ("6-10", 6, 10), ("11-20", 11, 20), ("21plus", 21, 1 << 30),
)
REGISTERED_MODEL = "lipsync-expert"  # the registry name of a trained expert
DEFAULT_EXPERT = f"models:/{REGISTERED_MODEL}@champion"  # the judge every stage and metric takes by default


def offset_bucket_index(offsets: np.ndarray | torch.Tensor) -> np.ndarray:
    """Index into OFFSET_BUCKETS for each signed offset."""
    mags = np.abs(np.asarray(offsets, dtype=np.int64))
    out = np.empty(mags.shape, dtype=np.int64)
    for i, (_, lo, hi) in enumerate(OFFSET_BUCKETS):
        out[(mags >= lo) & (mags <= hi)] = i
    return out


def sync_scores(model: torch.nn.Module, mel: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
    """P(in sync) per pair, (B, 1) float32 in [0, 1]."""
    audio_emb, face_emb = model(mel, face)
    return sync_probability(audio_emb.float(), face_emb.float()).unsqueeze(1)


def expert_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean BCE of P(in sync) against 0/1 labels (lipsync/training/losses.py)."""
    return bce(scores, labels)


def correct(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Bool (B,): threshold 0.5 decision matches the label."""
    return ((scores > 0.5).float() == labels).reshape(-1)


@torch.no_grad()
def evaluate_expert(
    model: torch.nn.Module,
    windows: list[ExpertWindow],
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Sums per offset bucket over ``windows``: float64 tensor (len(OFFSET_BUCKETS), 3) of
    [n correct, n pairs, summed BCE]. Sums (not means) so ranks can all-reduce them.
    The model is put in eval mode and restored to its previous mode afterwards."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(len(OFFSET_BUCKETS), 3, dtype=torch.float64)
    device = torch.device(device)
    try:
        for i in range(0, len(windows), batch_size):
            batch = collate_expert(windows[i : i + batch_size])
            mel, face, label = (batch[k].to(device) for k in ("mel", "face", "label"))
            with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
                scores = sync_scores(model, mel, face)
            ok = correct(scores, label).double().cpu()
            pair_bce = bce(scores, label, reduction="none").reshape(-1).double().cpu()
            idx = torch.from_numpy(offset_bucket_index(batch["offset"].numpy()))
            sums[:, 0].index_add_(0, idx, ok)
            sums[:, 1].index_add_(0, idx, torch.ones_like(ok))
            sums[:, 2].index_add_(0, idx, pair_bce)
    finally:
        model.train(was_training)
    return sums


def summarize_evaluation(sums: torch.Tensor, prefix: str = "val") -> dict[str, float]:
    """Metrics from :func:`evaluate_expert` sums: ``{prefix}_loss``, ``{prefix}_accuracy``,
    ``{prefix}_accuracy_offset_<bucket>`` (empty buckets omitted), ``{prefix}_pairs``."""
    sums = sums.double()
    total = float(sums[:, 1].sum())
    out = {f"{prefix}_pairs": total}
    if total == 0:
        return out
    out[f"{prefix}_loss"] = float(sums[:, 2].sum()) / total
    out[f"{prefix}_accuracy"] = float(sums[:, 0].sum()) / total
    for (name, _, _), (c, n, _) in zip(OFFSET_BUCKETS, sums.tolist()):
        if n > 0:
            out[f"{prefix}_accuracy_offset_{name}"] = c / n
    return out


# ----------------------------------------------------------------------------- the expert stage


@dataclass
class ExpertRecipe:
    """The expert's recipe (paper defaults); each field is a flag (lipsync/training/recipe.py)."""

    width: float = option(1.0, "channel multiplier (1 = official)")
    face_size: int = option(96, "face crop size (96 = official; shards must match)")
    batch_size: int = option(64, "global batch, split over workers")
    lr: float = option(1e-4, "learning rate")
    lr_schedule: str = option("constant", "constant (paper) or cosine decay to 2%% of --lr (and --disc-lr) at "
                              "--max-steps", choices=LR_SCHEDULES)
    warmup_steps: int = option(0, "linear warm-up steps")
    T: int = option(SYNC_FRAMES, "frames per window")
    min_offset: int = option(DEFAULT_MIN_OFFSET, "negatives take audio at least this many frames away "
                             "(original: 1)")
    min_mel_distance: float = option(DEFAULT_MIN_MEL_DISTANCE, "negatives' audio must differ from the true "
                                     "window by this mean |mel| difference (skips silence-vs-silence pairs; "
                                     "0 = original)")
    augment: bool = option(False, "sync-preserving augmentation (off = paper parity)")
    stop_at_val_accuracy: float | None = option(None, "end training once validation accuracy reaches this")
    init: str | None = option(None, "start from these weights: our checkpoint, the official lipsync_expert.pth / "
                              "wav2lip.pth / wav2lip_gan.pth, or models:/NAME@ALIAS (fine-tuning)", model=True)

    def check(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")
        if self.T < 1:
            raise ConfigError(f"--T must be >= 1, got {self.T}")
        check_schedule(self.lr_schedule, self.warmup_steps)
        self.sampling()  # fails here, in the driver, with the flag's name rather than in a worker

    def sampling(self) -> ExpertSampling:
        """How training windows are cut (validation: the same without augmentation)."""
        return ExpertSampling(T=self.T, face_size=self.face_size, min_offset=self.min_offset,
                              min_mel_distance=self.min_mel_distance, augment=self.augment)


class ExpertStage(TrainingStage):
    """SyncNet trained with BCE on the cosine score, Adam, one optimizer (the original's recipe)."""

    name = "expert"
    recipe_type = ExpertRecipe
    registered_model = REGISTERED_MODEL
    experiment = "lipsync-expert"
    model_kind = "expert"
    best_metric = "val_accuracy"
    higher_is_better = True
    curve_panels = (
        CurvePanel("BCE loss", ("train_loss", "val_loss"), (0.6931, "ln 2 (chance)")),
        CurvePanel("accuracy (threshold 0.5)", ("train_accuracy", "val_accuracy"), (0.5, "chance")),
    )
    progress_keys = ("train_loss", "train_accuracy")
    MODEL_FILE = ModelFile("expert.safetensors", registered=True)

    def __init__(self, recipe: ExpertRecipe, device="cpu", load_model: ModelLoader | None = None,
                 initialise: bool = True, max_steps: int = 1):
        super().__init__(recipe, device, load_model, initialise, max_steps)
        self.model = SyncNet(width=recipe.width, face_size=recipe.face_size)
        if initialise and recipe.init:
            init_weights(self.model, recipe.init, "expert", "--init", load_model)
        self.model.train()
        self.trained = {"expert": self.model}
        self.optimizers = {"expert": torch.optim.Adam(self.model.parameters(), lr=recipe.lr)}

    def sampling(self, validation: bool = False) -> ExpertSampling:
        sampling = self.recipe.sampling()
        return replace(sampling, augment=False) if validation else sampling

    def train_step(self, batch, step):
        r = self.recipe
        optimizer = self.optimizers["expert"]
        set_lr(optimizer, lr_at(step, r.lr, self.max_steps, r.lr_schedule, r.warmup_steps))
        mel, face, label = (batch[k].to(self.device, non_blocking=True) for k in ("mel", "face", "label"))
        with self.autocast():
            scores = sync_scores(self.trained["expert"], mel, face)
        loss = expert_loss(scores, label)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n = label.shape[0]
        return {"loss": loss.item() * n, "correct": float(correct(scores, label).sum()), "samples": float(n)}

    def train_metrics(self, sums):
        n = float(sums["samples"])
        return {"train_loss": float(sums["loss"]) / n, "train_accuracy": float(sums["correct"]) / n,
                "lr": self.optimizers["expert"].param_groups[0]["lr"]}

    def validate(self, windows, batch_size):
        return {"buckets": evaluate_expert(self.bare("expert"), windows, batch_size, self.device, self.amp_dtype)}

    def validation_metrics(self, sums):
        return summarize_evaluation(sums["buckets"], prefix="val")

    def should_stop(self, metrics):
        target, acc = self.recipe.stop_at_val_accuracy, metrics.get("val_accuracy")
        return target is not None and acc is not None and acc >= target

    @classmethod
    def model_files(cls, recipe):
        return (cls.MODEL_FILE,)

    def saved_models(self):
        config = ModelConfig(kind="expert", width=self.recipe.width, face_size=self.recipe.face_size)
        return [SavedModel(self.MODEL_FILE, self.bare("expert"), config)]

    @classmethod
    def preflight(cls, recipe, load_model, shard_face_size):
        recipe.check()
        tags = check_init_architecture(recipe.init, "expert", "--init", recipe, "width", load_model)
        return {**super().preflight(recipe, load_model, shard_face_size), **tags}

    @classmethod
    def registration_tags(cls, recipe):
        return {"min_offset": str(recipe.min_offset), "min_mel_distance": str(recipe.min_mel_distance)}
