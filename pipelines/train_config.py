"""What a training run depends on, for any stage: shared run settings plus the stage's recipe.

Nested dataclasses (torchtitan style): ``TrainConfig`` holds the stage name, its recipe
(``lipsync.training.RECIPES``) and the shared parts — data, cadence, workers, tracking.
Every leaf field name is unique across the parts, so flags map 1:1 to leaves
(``TrainConfig.from_flat``) and MLflow params are the flat leaves (``params``). The driver
(pipelines/train_run.py) and the worker loop (pipelines/train_loop.py) read fields, never
loose dict keys.

``STAGE_TABLE``: the per-stage facts on the pipelines side (registered model name,
default experiment) next to the library's stage class.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from lipsync.errors import ConfigError
from lipsync.training import RECIPES, STAGES
from lipsync.training.expert import ExpertRecipe
from lipsync.training.generator import GeneratorRecipe
from pipelines.mlflow_setup import EXPERT_MODEL_NAME, GENERATOR_MODEL_NAME

RUN_STATE_FILE = "lipsync_run.json"
CHECKPOINT_ARTIFACT_DIR = "checkpoints"


@dataclass(frozen=True)
class StageEntry:
    stage: type
    registered_model: str
    experiment: str


STAGE_TABLE = {
    "expert": StageEntry(STAGES["expert"], EXPERT_MODEL_NAME, "lipsync-expert"),
    "generator": StageEntry(STAGES["generator"], GENERATOR_MODEL_NAME, "lipsync-generator"),
}


@dataclass
class DataConfig:
    shards: str
    manifest: str | None = None  # default: <shards>/manifest.parquet when present
    windows_per_clip: int = 8
    shuffle_buffer: int | None = None  # default: the stage's (expert 2048, generator 256)
    loader_workers: int = 0  # DataLoader processes per training worker (GPU nodes: a few per GPU)
    val_windows_per_clip: int = 16
    val_max_clips: int | None = 512  # bounds validation time and memory on big val splits
    seed: int = 0


@dataclass
class CadenceConfig:
    max_steps: int = 10_000
    log_every: int = 50
    checkpoint_every: int = 1000  # also the validation cadence
    keep_checkpoints: int = 3


@dataclass
class WorkersConfig:
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    worker_resources: dict = field(default_factory=dict)  # e.g. {"expert_slot": 1} to pin workers
    max_failures: int = 2


@dataclass
class TrackingConfig:
    storage_path: str = "ray_results"
    run_name: str | None = None
    resume: bool = False
    tracking_uri: str | None = None
    experiment: str | None = None  # default: the stage's
    register: bool = True
    system_metrics: bool = True
    trust_checkpoints: bool = False  # allow pickled code in --init / --expert files


@dataclass
class TrainConfig:
    stage: str
    recipe: ExpertRecipe | GeneratorRecipe
    data: DataConfig
    cadence: CadenceConfig = field(default_factory=CadenceConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    # testing aid: the last rank exits hard once at this step (guarded by a marker file)
    fail_at_step: int | None = None

    @property
    def entry(self) -> StageEntry:
        return STAGE_TABLE[self.stage]

    def parts(self) -> dict:
        return {"recipe": self.recipe, "data": self.data, "cadence": self.cadence, "workers": self.workers,
                "tracking": self.tracking}

    @classmethod
    def from_flat(cls, stage: str, values: dict) -> "TrainConfig":
        """Build from flat leaf values (flags, or a flat config); unknown keys are ignored,
        missing ones take the defaults (None counts as missing for the recipe: per-stage defaults)."""
        if stage not in STAGE_TABLE:
            raise ConfigError(f"--stage must be one of {', '.join(STAGE_TABLE)}, got {stage!r}")

        def pick(klass, skip_none: bool):
            names = {f.name for f in dataclasses.fields(klass)}
            return klass(**{k: v for k, v in values.items() if k in names and not (skip_none and v is None)})

        return cls(stage=stage, recipe=pick(RECIPES[stage], skip_none=True), data=pick(DataConfig, False),
                   cadence=pick(CadenceConfig, False), workers=pick(WorkersConfig, False),
                   tracking=pick(TrackingConfig, False), fail_at_step=values.get("fail_at_step"))

    def params(self) -> dict[str, str]:
        """Flat leaf values for MLflow params (run-control fields left out)."""
        out = {"stage": self.stage}
        for part in self.parts().values():
            for f in dataclasses.fields(part):
                if f.name in out:
                    raise AssertionError(f"config field {f.name!r} is defined twice: flags would be ambiguous")
                out[f.name] = str(getattr(part, f.name))
        for k in ("resume", "trust_checkpoints"):
            out.pop(k, None)
        return out

    @property
    def shuffle_buffer(self) -> int:
        return self.data.shuffle_buffer or self.entry.stage.default_shuffle_buffer

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.entry.experiment

    def validate(self) -> None:
        w, c = self.workers, self.cadence
        if self.recipe.batch_size < w.num_workers or self.recipe.batch_size % max(w.num_workers, 1):
            raise ConfigError(
                f"--batch-size {self.recipe.batch_size} must be a multiple of --num-workers {w.num_workers}"
            )
        for name, value in (("max_steps", c.max_steps), ("log_every", c.log_every),
                            ("checkpoint_every", c.checkpoint_every), ("num_workers", w.num_workers)):
            if value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        self.recipe.validate()


@dataclass
class TrainResult:
    run_id: str
    stage: str
    final_step: int
    best_step: int | None
    best_metric: str
    best_value: float | None
    model_version: str | None
    tracking_uri: str
    run_dir: str


@dataclass
class WorkerPlan:
    """What every worker gets (train_loop_config={"plan": …}): the config plus what the driver resolved."""

    config: TrainConfig
    train_shards: list[str]
    val_shards: list[str]
    mlflow_run_id: str
    tracking_uri: str
    fail_marker: str
