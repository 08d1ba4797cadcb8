"""Per-step logic of the Wav2Lip generator with the visual-quality GAN (reference §3–5).

Losses, as the original's ``hq_wav2lip_train.py`` (``--no-gan``: ``wav2lip_train.py``):

* L1 over the whole face and all T frames;
* the expert's sync loss: BCE of the frozen expert's cosine score of the generated lower
  halves against "in sync", weighted 0 until the *validation* sync loss falls below
  ``sync_threshold`` (0.75), then ``sync_weight`` (0.03; 0.01 without the GAN). The switch
  is one-way and part of the checkpointed state, so a restored run keeps it;
* the adversarial loss ``VisualQualityDiscriminator.perceptual_loss`` (weight 0.07);
* total ``sw·sync + dw·adv + (1 − sw − dw)·L1``; the discriminator is trained on ground
  truth (1) vs generated (0) frames (it looks at their lower half), one step per step.
  Both GAN losses take the discriminator's score before its sigmoid (same values as the
  original's, but a saturated discriminator still gets a gradient: ``bce_with_logits``).

Adam for both, lr 1e-4, betas (0.5, 0.999) (the no-GAN original keeps Adam's default 0.9).
The expert is frozen (``requires_grad`` off) and in eval mode; ``expert_bn="batch"`` keeps
its BatchNorm on batch statistics as the original did (it never called ``eval()``).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from lipsync.audio import WINDOW_POLICY
from lipsync.checkpoints import ModelConfig
from lipsync.data.generator_windows import GeneratorSampling, collate_generator
from lipsync.errors import ConfigError
from lipsync.models import SYNC_FRAMES, VisualQualityDiscriminator, Wav2Lip, syncnet_face_input
from lipsync.models.blocks import check_min_channels, fold_time
from lipsync.models.discriminator import bce_with_logits
from lipsync.training.expert import DEFAULT_EXPERT, sync_scores
from lipsync.training.losses import bce
from lipsync.training.recipe import option
from lipsync.training.schedule import LR_SCHEDULES, check_schedule, lr_at, set_lr
from lipsync.training.stage import (
    CurvePanel,
    ModelFile,
    ModelLoader,
    SavedModel,
    TrainingStage,
    check_init_architecture,
    init_weights,
)

EXPERT_BN_MODES = ("eval", "batch")
SAMPLE_GRID_CLIPS = 4  # held-out clips shown in each validation's sample grid


@dataclass
class GeneratorRecipe:
    """The generator's recipe (paper defaults); each field is a flag (lipsync/training/recipe.py)."""

    expert: str = option(DEFAULT_EXPERT, "the frozen lip-sync expert: file, runs:/ or models:/ URI; an alias is "
                         "pinned to its version at the start of the run", model=True)
    expert_bn: str = option("eval", "eval: frozen BatchNorm statistics; batch: the original's batch statistics",
                            choices=EXPERT_BN_MODES)
    init: str | None = option(None, "start from these weights: our checkpoint, the official lipsync_expert.pth / "
                              "wav2lip.pth / wav2lip_gan.pth, or models:/NAME@ALIAS (fine-tuning)", model=True)
    init_disc: str | None = option(None, "start the discriminator from these weights (fine-tuning)", model=True)
    width: float = option(1.0, "channel multiplier (1 = official)")
    # Narrowest generator layer below width 1. Not the models' default 4: the full-resolution
    # input and output layers carry the picture itself, and at 4 channels a narrow generator
    # stays blurred (width 0.125, L1 only, 600 steps: held-out lower-face L1 0.075 at 4, 0.064
    # at 8, for 7% more time per step). Width 1 (the official model) is unaffected.
    min_channels: int = option(8, "narrowest generator layer below --width 1 (an --init file brings its own)")
    disc_width: float | None = option(None, "discriminator channel multiplier (default --width)")
    face_size: int = option(96, "face crop size (96 = official; shards must match)")
    batch_size: int = option(16, "global batch, split over workers")
    T: int = option(SYNC_FRAMES, "frames per window")
    lr: float = option(1e-4, "learning rate")
    disc_lr: float = option(1e-4, "discriminator learning rate")
    lr_schedule: str = option("constant", "constant (paper) or cosine decay to 2%% of --lr (and --disc-lr) at "
                              "--max-steps", choices=LR_SCHEDULES)
    warmup_steps: int = option(0, "linear warm-up steps")
    beta1: float | None = option(None, "Adam beta1 (default 0.5; 0.9 with --no-gan)")
    beta2: float = option(0.999, "Adam beta2")
    gan: bool = option(True, "plain Wav2Lip: no visual-quality discriminator")
    disc_weight: float = option(0.07, "adversarial loss weight")
    sync_weight: float | None = option(None, "expert sync loss weight once switched on (default 0.03; 0.01 with "
                                       "--no-gan)")
    sync_threshold: float = option(0.75, "switch the sync loss on once validation sync loss < this")
    mel_mode: str = option(WINDOW_POLICY, "per-frame mel alignment (lipsync/audio.py)", flag=None)

    def check(self) -> None:
        if self.expert_bn not in EXPERT_BN_MODES:
            raise ConfigError(f"--expert-bn must be one of {', '.join(EXPERT_BN_MODES)}, got {self.expert_bn!r}")
        for flag, value in (("--lr", self.lr), ("--disc-lr", self.disc_lr)):
            if value <= 0:
                raise ConfigError(f"{flag} must be > 0, got {value}")
        check_schedule(self.lr_schedule, self.warmup_steps)
        check_min_channels(self.min_channels)
        sw, dw = self.effective_sync_weight, self.effective_disc_weight
        if sw < 0 or dw < 0 or sw + dw >= 1:
            raise ConfigError(f"--sync-weight {sw} and --disc-weight {dw} must be >= 0 and sum to < 1 "
                              f"(L1 gets the rest)")
        self.sampling()

    @property
    def effective_sync_weight(self) -> float:
        return self.sync_weight if self.sync_weight is not None else (0.03 if self.gan else 0.01)

    @property
    def effective_disc_weight(self) -> float:
        return self.disc_weight if self.gan else 0.0

    @property
    def betas(self) -> tuple[float, float]:
        return (self.beta1 if self.beta1 is not None else (0.5 if self.gan else 0.9), self.beta2)

    def sampling(self) -> GeneratorSampling:
        return GeneratorSampling(T=self.T, face_size=self.face_size, mel_mode=self.mel_mode)


def expert_sync_loss(expert: torch.nn.Module, mel: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """The original's get_sync_loss: the expert's BCE of generated (B,3,T,S,S) frames against 'in sync'."""
    return bce(sync_scores(expert, mel, syncnet_face_input(frames)), 1.0)


def sample_grid(x: torch.Tensor, generated: torch.Tensor, gt: torch.Tensor, frame: int | None = None) -> np.ndarray:
    """One row per sample: reference | masked input | generated | ground truth (frame ``frame``,
    default the middle one), as an RGB uint8 image. Inputs are (B,6,T,S,S) / (B,3,T,S,S) BGR [0,1]."""
    t = x.shape[2] // 2 if frame is None else frame
    columns = (x[:, 3:6, t], x[:, 0:3, t], generated[:, :, t], gt[:, :, t])
    rows = []
    for i in range(x.shape[0]):
        tiles = [c[i].detach().float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
                 for c in columns]
        rows.append(np.concatenate(tiles, axis=1))
    grid = np.concatenate(rows, axis=0)
    return cv2.cvtColor(grid, cv2.COLOR_BGR2RGB)


class GeneratorStage(TrainingStage):
    """Wav2Lip + visual-quality discriminator, judged by a frozen expert."""

    name = "generator"
    recipe_type = GeneratorRecipe
    registered_model = "wav2lip"
    experiment = "lipsync-generator"
    model_kind = "wav2lip"
    best_metric = "val_sync_loss"
    higher_is_better = False
    default_shuffle_buffer = 256  # a generator sample is ~10 frames: keep buffers small
    curve_panels = (
        CurvePanel("L1 (whole face)", ("train_l1", "val_l1")),
        CurvePanel("expert sync loss", ("train_sync", "val_sync_loss"), (0.75, "switch threshold")),
        CurvePanel("GAN", ("train_adv", "train_disc_real", "train_disc_fake")),
    )
    progress_keys = ("train_l1", "train_sync", "train_adv", "sync_weight")
    MODEL_FILE = ModelFile("wav2lip.safetensors", registered=True)
    DISC_FILE = ModelFile("disc.safetensors", "discriminators", version_tag="discriminator")

    def __init__(self, recipe: GeneratorRecipe, device="cpu", load_model: ModelLoader | None = None,
                 initialise: bool = True, max_steps: int = 1):
        super().__init__(recipe, device, load_model, initialise, max_steps)
        r = recipe
        if load_model is None:
            raise ConfigError("the generator stage needs a model loader for its expert (--expert)")
        self.generator = Wav2Lip(width=r.width, face_size=r.face_size, min_channels=r.min_channels)
        if initialise and r.init:
            init_weights(self.generator, r.init, "wav2lip", "--init", load_model)
        self.trained = {"generator": self.generator.train()}
        self.optimizers = {"generator": torch.optim.Adam(self.generator.parameters(), lr=r.lr, betas=r.betas)}
        if r.gan:
            self.disc = VisualQualityDiscriminator(width=r.disc_width or r.width, face_size=r.face_size)
            if initialise and r.init_disc:
                init_weights(self.disc, r.init_disc, "disc", "--init-disc", load_model)
            self.trained["disc"] = self.disc.train()
            self.optimizers["disc"] = torch.optim.Adam(self.disc.parameters(), lr=r.disc_lr, betas=r.betas)

        expert, expert_config = load_model(r.expert, "expert")
        check_expert_face_size(expert_config, r)
        self.expert = expert.to(self.device).requires_grad_(False)
        self.expert.train(r.expert_bn == "batch")
        # The one-way switch (checkpointed): None until validation sync loss < threshold.
        self.sync_switch_step: int | None = None

    @property
    def sync_weight(self) -> float:
        return self.recipe.effective_sync_weight if self.sync_switch_step is not None else 0.0

    def sampling(self, validation: bool = False) -> GeneratorSampling:
        return self.recipe.sampling()

    def _inputs(self, batch):
        return (batch[k].to(self.device, non_blocking=True) for k in ("x", "gt", "indiv_mels", "mel"))

    def train_step(self, batch, step):
        r = self.recipe
        # From the step alone, so the flags win over a restored optimizer's rate (a resumed run may change them).
        scale = lr_at(step, 1.0, self.max_steps, r.lr_schedule, r.warmup_steps)
        set_lr(self.optimizers["generator"], r.lr * scale)
        x, gt, indiv_mels, mel = self._inputs(batch)
        sw, dw = self.sync_weight, r.effective_disc_weight

        with self.autocast():
            g = self.trained["generator"](indiv_mels, x)
        l1 = F.l1_loss(g.float(), gt)
        with torch.set_grad_enabled(sw > 0), self.autocast():  # weighted 0: logged, no graph
            sync = expert_sync_loss(self.expert, mel, g)
        adv = torch.zeros((), device=self.device)
        if r.gan:
            # The bare discriminator: its weight gradients from this loss are discarded below
            # (zero_grad before its own step), so they need no DDP all-reduce.
            with self.autocast():
                adv = self.bare("disc").perceptual_loss(g)
        loss = sw * sync + dw * adv + (1.0 - sw - dw) * l1
        opt_g = self.optimizers["generator"]
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()

        n = gt.shape[0]
        sums = {"samples": float(n), "loss": loss.item() * n, "l1": l1.item() * n, "sync": sync.item() * n,
                "adv": adv.item() * n}
        if r.gan:
            set_lr(self.optimizers["disc"], r.disc_lr * scale)
            opt_d = self.optimizers["disc"]
            opt_d.zero_grad(set_to_none=True)
            real, fake = fold_time(gt, time_dim=2), fold_time(g.detach(), time_dim=2)
            with self.autocast():  # one forward over real ++ fake: one DDP all-reduce
                score = self.trained["disc"](torch.cat((real, fake)), logits=True)
            d_real, d_fake = bce_with_logits(score[: real.shape[0]], 1.0), bce_with_logits(score[real.shape[0]:], 0.0)
            (d_real + d_fake).backward()
            opt_d.step()
            sums.update(disc_real=d_real.item() * n, disc_fake=d_fake.item() * n)
        return sums

    def train_metrics(self, sums):
        n = float(sums["samples"])
        out = {f"train_{k}": float(v) / n for k, v in sums.items() if k != "samples"}
        out.update(sync_weight=self.sync_weight, lr=self.optimizers["generator"].param_groups[0]["lr"])
        return out

    @torch.no_grad()
    def validate(self, windows, batch_size):
        generator = self.bare("generator")
        disc = self.bare("disc") if self.recipe.gan else None
        modes = [(m, m.training) for m in (generator, disc) if m is not None]
        for m, _ in modes:
            m.eval()
        keys = ("samples", "l1", "sync") + (("disc_real", "disc_fake") if disc is not None else ())
        sums = dict.fromkeys(keys, 0.0)
        try:
            for i in range(0, len(windows), batch_size):
                x, gt, indiv_mels, mel = self._inputs(collate_generator(windows[i: i + batch_size]))
                n = gt.shape[0]
                with self.autocast():
                    g = generator(indiv_mels, x)
                sums["samples"] += n
                sums["l1"] += float(F.l1_loss(g.float(), gt)) * n
                with self.autocast():
                    sums["sync"] += float(expert_sync_loss(self.expert, mel, g)) * n
                    if disc is not None:
                        sums["disc_real"] += float(bce_with_logits(disc(gt, logits=True), 1.0)) * n
                        sums["disc_fake"] += float(bce_with_logits(disc(g, logits=True), 0.0)) * n
        finally:
            for m, was_training in modes:
                m.train(was_training)
        return sums

    def validation_metrics(self, sums):
        n = float(sums["samples"])
        out = {"val_samples": n}
        if n:
            out["val_l1"] = float(sums["l1"]) / n
            out["val_sync_loss"] = float(sums["sync"]) / n
            for k in ("disc_real", "disc_fake"):
                if k in sums:
                    out[f"val_{k}"] = float(sums[k]) / n
        return out

    def after_validation(self, metrics, step):
        sync = metrics.get("val_sync_loss")
        if self.sync_switch_step is None and sync is not None and sync < self.recipe.sync_threshold:
            self.sync_switch_step = step
            return (f"val sync loss {sync:.4f} < {self.recipe.sync_threshold}: sync loss weight "
                    f"{self.recipe.effective_sync_weight} from now on")
        return None

    @torch.no_grad()
    def sample_images(self, windows):
        picked, seen = [], set()
        for w in windows:  # one window per held-out clip
            if w.key not in seen:
                seen.add(w.key)
                picked.append(w)
            if len(picked) == SAMPLE_GRID_CLIPS:
                break
        if not picked:
            return {}
        generator = self.bare("generator")
        was_training = generator.training
        generator.eval()
        try:
            x, gt, indiv_mels, _ = self._inputs(collate_generator(picked))
            with self.autocast():
                g = generator(indiv_mels, x)
        finally:
            generator.train(was_training)
        return {"samples": sample_grid(x, g, gt)}

    @classmethod
    def model_files(cls, recipe):
        return (cls.MODEL_FILE, cls.DISC_FILE) if recipe.gan else (cls.MODEL_FILE,)

    def saved_models(self):
        r = self.recipe
        out = [SavedModel(self.MODEL_FILE, self.bare("generator"),
                          ModelConfig(kind="wav2lip", width=r.width, face_size=r.face_size,
                                      min_channels=r.min_channels))]
        if r.gan:
            out.append(SavedModel(self.DISC_FILE, self.bare("disc"),
                                  ModelConfig(kind="disc", width=r.disc_width or r.width, face_size=r.face_size)))
        return out

    def state_dict(self):
        return {**super().state_dict(), "sync_switch_step": self.sync_switch_step}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.sync_switch_step = state.get("sync_switch_step")

    @classmethod
    def preflight(cls, recipe, load_model, shard_face_size):
        recipe.check()
        tags = super().preflight(recipe, load_model, shard_face_size)
        _, expert_config = load_model(recipe.expert, "expert")
        check_expert_face_size(expert_config, recipe)
        tags.update(check_init_architecture(recipe.init, "wav2lip", "--init", recipe, "width", load_model,
                                            min_channels_field="min_channels"))
        if recipe.gan:
            tags.update(check_init_architecture(recipe.init_disc, "disc", "--init-disc", recipe, "disc_width",
                                                load_model))
        return tags

    @classmethod
    def registration_tags(cls, recipe):
        return {"expert": recipe.expert, "gan": str(recipe.gan), "face_size": str(recipe.face_size)}


def check_expert_face_size(expert_config: ModelConfig, recipe: GeneratorRecipe) -> None:
    if expert_config.face_size != recipe.face_size:
        raise ConfigError(
            f"--expert {recipe.expert} judges {expert_config.face_size} px faces but --face-size is "
            f"{recipe.face_size}; train or pass an expert of the same face size"
        )
