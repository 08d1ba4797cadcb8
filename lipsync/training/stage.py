"""What a training stage is: the per-step logic of one model, separate from the loop that runs it.

A stage (the expert, the generator, …) owns its modules, optimizers and recipe; one Ray
Train loop (pipelines/train/loop.py) runs any stage: it restores checkpoints, wraps every
``trained`` module for DDP, streams batches cut by the stage's ``sampling``, calls
``train_step`` and all-reduces the metric *sums* it returns, validates with ``evaluate``
at the checkpoint cadence, and saves the stage's ``saved_models`` plus its ``state_dict``.
In the spirit of open_clip's task objects and torchtitan's ``train_step`` hooks: a new
stage is a module here plus a line in the stage table, never a copy of the loop.

Ray-free and MLflow-free: model references (``--init``, the generator's expert) are loaded
through a ``ModelLoader`` the caller passes in, so a unit test can train a stage's step on
CPU with plain files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import numpy as np
import torch
from torch import nn

from lipsync.checkpoints import ModelConfig
from lipsync.errors import ConfigError
from lipsync.models.wrappers import unwrap

# (reference, kind) -> (module in eval mode, its ModelConfig); the reference is a file, a
# run or a registry URI, resolved by the caller (lipsync.model_ref.load).
ModelLoader = Callable[[str, str], tuple[nn.Module, ModelConfig]]

# Metric sums a step or an evaluation returns: every value is a sum over samples (never a
# mean), so ranks can all-reduce them; "samples" counts what was summed.
MetricSums = dict[str, "float | torch.Tensor"]


CHECKPOINT_ARTIFACT_DIR = "checkpoints"  # MLflow artifact folder of a stage's registered model file


@dataclass(frozen=True)
class ModelFile:
    """One model file of a checkpoint. The ``registered`` one is the stage's product (its
    MLflow folder ``<artifact_dir>/step-NNNNNNN`` is what gets registered); the others are kept
    beside it, and ``version_tag`` names the registered version's tag that points at them."""

    filename: str
    artifact_dir: str = CHECKPOINT_ARTIFACT_DIR
    registered: bool = False
    version_tag: str | None = None


@dataclass
class SavedModel:
    """A model file with the module that goes into it."""

    file: ModelFile
    module: nn.Module  # the bare module (not a DDP wrapper)
    config: ModelConfig

    @property
    def filename(self) -> str:
        return self.file.filename

    @property
    def artifact_dir(self) -> str:
        return self.file.artifact_dir

    @property
    def registered(self) -> bool:
        return self.file.registered


@dataclass(frozen=True)
class CurvePanel:
    """One panel of the run's curve figure: metric keys drawn together, an optional reference line."""

    title: str
    keys: tuple[str, ...]
    reference: tuple[float, str] | None = None


class TrainingStage:
    """Base class of the stages; see the module docstring for who calls what."""

    name: ClassVar[str]
    recipe_type: ClassVar[type]  # its dataclass of hyper-parameters; the fields are the stage's flags
    registered_model: ClassVar[str]  # MLflow registered model of the stage's product
    experiment: ClassVar[str]  # MLflow experiment its runs go to by default
    model_kind: ClassVar[str]  # kind of the registered checkpoint (lipsync.checkpoints)
    best_metric: ClassVar[str]  # validation metric that picks the checkpoint to register
    higher_is_better: ClassVar[bool]
    default_shuffle_buffer: ClassVar[int] = 2048
    curve_panels: ClassVar[tuple[CurvePanel, ...]] = ()
    progress_keys: ClassVar[tuple[str, ...]] = ()  # metrics printed on the progress line

    def __init__(self, recipe, device: torch.device | str = "cpu", load_model: ModelLoader | None = None,
                 initialise: bool = True, max_steps: int = 1):
        self.recipe = recipe
        self.device = torch.device(device)
        # bf16 autocast on GPU (the paper's fp32 on CPU: measured slower there, benchmarks/).
        self.amp_dtype = torch.bfloat16 if self.device.type == "cuda" else None
        self.load_model = load_model
        self.max_steps = max_steps
        self.trained: dict[str, nn.Module] = {}  # the loop may replace entries by DDP wrappers
        self.optimizers: dict[str, torch.optim.Optimizer] = {}

    # ---- the loop's hooks
    def bare(self, name: str) -> nn.Module:
        """A trained module without its DDP wrapper (for evaluation and saving)."""
        module = self.trained[name]
        return unwrap(module)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.bfloat16,
                              enabled=self.amp_dtype is not None)

    def sampling(self, validation: bool = False):
        """The window sampler (lipsync.data.windows) for training or validation batches."""
        raise NotImplementedError

    def train_step(self, batch: dict[str, torch.Tensor], step: int) -> MetricSums:
        raise NotImplementedError

    def train_metrics(self, sums: MetricSums) -> dict[str, float]:
        raise NotImplementedError

    def validate(self, windows: list, batch_size: int) -> MetricSums:
        """Metric sums over (this rank's share of) the fixed validation windows."""
        raise NotImplementedError

    def validation_metrics(self, sums: MetricSums) -> dict[str, float]:
        raise NotImplementedError

    def after_validation(self, metrics: dict[str, float], step: int) -> str | None:
        """React to (all-reduced, so identical on every rank) validation metrics; a message to print."""
        return None

    def should_stop(self, metrics: dict[str, float]) -> bool:
        return False

    def sample_images(self, windows: list) -> dict[str, np.ndarray]:
        """Images (H, W, 3 uint8 RGB) to log at a validation, by artifact name."""
        return {}

    @classmethod
    def model_files(cls, recipe) -> tuple[ModelFile, ...]:
        """The files a checkpoint holds (exactly one ``registered``)."""
        raise NotImplementedError

    def saved_models(self) -> list[SavedModel]:
        """``model_files`` with their modules and configs, in the same order."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Training state beyond the weights: optimizers and whatever the stage decides over time."""
        return {"optimizers": {k: opt.state_dict() for k, opt in self.optimizers.items()}}

    def load_state_dict(self, state: dict) -> None:
        for k, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][k])

    def optimizer_state_to_device(self) -> None:
        """After restoring: optimizer moments follow the (now placed) modules' device."""
        for opt in self.optimizers.values():
            for group in opt.state.values():
                for k, v in group.items():
                    if torch.is_tensor(v) and k != "step":
                        group[k] = v.to(self.device)

    # ---- driver-side checks and bookkeeping (before any worker starts)
    @classmethod
    def preflight(cls, recipe, load_model: ModelLoader, shard_face_size: int | None) -> dict[str, str]:
        """Check the recipe against its inputs (raise ConfigError naming the flag); may fill
        recipe fields from them (e.g. --init's width). Returns tags for the run."""
        if shard_face_size is not None and shard_face_size != recipe.face_size:
            raise ConfigError(
                f"--face-size {recipe.face_size} does not match the shards' face crops ({shard_face_size} px); "
                f"pass --face-size {shard_face_size} or preprocess with --crop-size {recipe.face_size}"
            )
        return {}

    @classmethod
    def registration_tags(cls, recipe) -> dict[str, str]:
        return {}


def init_weights(module: nn.Module, reference: str, kind: str, flag: str, load_model: ModelLoader | None) -> ModelConfig:
    """Copy the weights of ``reference`` into ``module`` (same architecture) for --init flags."""
    if load_model is None:
        raise ConfigError(f"{flag} {reference}: no model loader given to load it with")
    source, config = load_model(reference, kind)
    try:
        module.load_state_dict(source.state_dict())
    except RuntimeError as e:
        raise ConfigError(f"{flag} {reference}: its architecture (width {config.width:g}, face size "
                          f"{config.face_size}, min channels {config.min_channels}) differs from the one being "
                          f"trained ({str(e).splitlines()[0]})") from None
    return config


def check_init_architecture(reference: str | None, kind: str, flag: str, recipe, width_field: str,
                            load_model: ModelLoader, min_channels_field: str | None = None) -> dict[str, str]:
    """Preflight of an --init flag: the file's width (and channel floor) win over --width (it
    *is* the model to fine-tune); its face size must equal --face-size. Returns tags."""
    if not reference:
        return {}
    _, config = load_model(reference, kind)
    if config.face_size != recipe.face_size:
        raise ConfigError(f"{flag} {reference} is a {config.face_size} px model but --face-size is "
                          f"{recipe.face_size}; pass --face-size {config.face_size} (with shards of that crop size)")
    setattr(recipe, width_field, config.width)
    if min_channels_field is not None:
        setattr(recipe, min_channels_field, config.min_channels)
    return {f"lipsync.{flag.lstrip('-').replace('-', '_')}": reference}
