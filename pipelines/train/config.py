"""What a training run depends on, for any stage: shared run settings plus the stage's recipe.

Nested dataclasses (torchtitan style): ``TrainConfig`` holds the stage name, its recipe
(the stage's ``recipe_type``, lipsync/training/) and the shared parts — data, cadence,
workers, tracking. Every leaf field name is unique across the parts, so flags map 1:1 to
leaves (``TrainConfig.from_flat``; the flags themselves come from the fields' metadata,
pipelines/train/flags.py) and MLflow params are the flat leaves (``params``). The driver
(pipelines/train/driver.py) and the worker loop (pipelines/train/loop.py) read fields, never
loose dict keys. Which stages exist is the library's one stage table, ``lipsync.training.STAGES``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from lipsync.errors import ConfigError
from lipsync.training import STAGES
from lipsync.training.recipe import option
from lipsync.training.stage import CHECKPOINT_ARTIFACT_DIR, TrainingStage  # noqa: F401 - the registered folder

RUN_STATE_FILE = "lipsync_run.json"


def stage_type(name: str) -> type[TrainingStage]:
    if name not in STAGES:
        raise ConfigError(f"--stage must be one of {', '.join(STAGES)}, got {name!r}")
    return STAGES[name]


@dataclass
class DataConfig:
    """Where the training and validation windows come from."""

    shards: str = option(help="directory with {train,val}-NNNNNN.tar (workflows/preprocess.py)")
    manifest: str | None = option(None, "default: <shards>/manifest.parquet")
    windows_per_clip: int = option(8, "training windows cut from each clip per pass")
    shuffle_buffer: int | None = option(None, "windows mixed before batching (default: the stage's; "
                                        "expert 2048, generator 256)")
    loader_workers: int = option(0, "DataLoader processes per training worker (0: read in the training process)")
    val_windows_per_clip: int = option(16, "fixed validation windows per val clip")
    val_max_clips: int | None = option(512, "validate on at most this many val clips (bounds time and memory)")
    seed: int = option(0, "seed of initialisation and window sampling")


@dataclass
class CadenceConfig:
    """How long to train, and how often to log, validate and checkpoint."""

    max_steps: int = option(10_000, "optimizer steps to train for")
    log_every: int = option(50, "steps between logged training metrics")
    checkpoint_every: int = option(1000, "steps between checkpoints; each one also validates")
    keep_checkpoints: int = option(3, "Ray Train checkpoints kept for failure restore (MLflow keeps every one)")


@dataclass
class WorkersConfig:
    """How many Ray Train workers, on what, and how many failures they survive."""

    num_workers: int = option(2, "Ray Train workers (DDP ranks)")
    use_gpu: bool = option(False, "one GPU per worker (NCCL, bf16 autocast)")
    cpus_per_worker: float = option(1.0, "CPUs reserved per worker (also its torch threads on CPU)")
    worker_resources: dict = option(help="extra Ray resources per worker as JSON, e.g. to pin workers to nodes "
                                    "({\"expert_slot\": 1})", default_factory=dict)
    max_failures: int = option(2, "worker failures restored from the last checkpoint before the run fails")


@dataclass
class TrackingConfig:
    """Where the run is kept (Ray run folder, MLflow run, registry)."""

    storage_path: str = option("ray_results", "Ray Train run storage: a folder or s3:// / gs:// URI")
    run_name: str | None = option(None, "name of the run (default: STAGE-DATE-TIME)")
    resume: bool = option(False, "continue --run-name (same MLflow run)")
    tracking_uri: str | None = option(None, "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlruns.db)")
    experiment: str | None = option(None, "default: the stage's (lipsync-expert / lipsync-generator)")
    register: bool = option(True, "do not register the best checkpoint in the MLflow model registry")
    system_metrics: bool = option(True, "do not log CPU/GPU/memory use to MLflow")
    trust_checkpoints: bool = option(False, "allow --init/--expert files that contain pickled code "
                                     "(only for files you trust)")


@dataclass
class TrainConfig:
    stage: str
    recipe: Any  # the stage's recipe_type
    data: DataConfig
    cadence: CadenceConfig = field(default_factory=CadenceConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    # testing aid: a rank exits hard once at this step (guarded by a marker file), at the
    # fail_point: "step" (the last rank, before training the step) or "report" (rank 0,
    # after validating and saving the step, before ray.train.report commits it)
    fail_at_step: int | None = None
    fail_point: str = "step"

    SHARED_PARTS = (("data", DataConfig), ("cadence", CadenceConfig), ("workers", WorkersConfig),
                    ("tracking", TrackingConfig))

    @property
    def stage_type(self) -> type[TrainingStage]:
        return stage_type(self.stage)

    def parts(self) -> dict:
        return {"recipe": self.recipe, **{name: getattr(self, name) for name, _ in self.SHARED_PARTS}}

    @classmethod
    def from_flat(cls, stage: str, values: dict) -> "TrainConfig":
        """Build from flat leaf values (flags, or a flat config); unknown keys are ignored,
        missing ones take the defaults (None counts as missing for the recipe: per-stage defaults)."""
        recipe_type = stage_type(stage).recipe_type

        def pick(klass, skip_none: bool):
            names = {f.name for f in dataclasses.fields(klass)}
            return klass(**{k: v for k, v in values.items() if k in names and not (skip_none and v is None)})

        return cls(stage=stage, recipe=pick(recipe_type, skip_none=True),
                   **{name: pick(klass, False) for name, klass in cls.SHARED_PARTS},
                   fail_at_step=values.get("fail_at_step"), fail_point=values.get("fail_point") or "step")

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
    def experiment(self) -> str:
        return self.tracking.experiment or self.stage_type.experiment

    def check(self) -> None:
        w, c = self.workers, self.cadence
        if self.recipe.batch_size < w.num_workers or self.recipe.batch_size % max(w.num_workers, 1):
            raise ConfigError(
                f"--batch-size {self.recipe.batch_size} must be a multiple of --num-workers {w.num_workers}"
            )
        for name, value in (("max_steps", c.max_steps), ("log_every", c.log_every),
                            ("checkpoint_every", c.checkpoint_every), ("num_workers", w.num_workers)):
            if value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        self.recipe.check()


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
    # The class itself, not its name: a worker builds exactly the stage the driver checked,
    # whatever its own process's stage table holds.
    stage_type: type
