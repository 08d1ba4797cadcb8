"""The expert's flat run config (flags map 1:1) and result, kept for callers of ``train_expert``.

It is a flat view of ``pipelines.train_config.TrainConfig`` for the expert stage:
``to_train_config`` splits it into the shared parts and the ``ExpertRecipe``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from lipsync.data.windows import DEFAULT_MIN_MEL_DISTANCE, DEFAULT_MIN_OFFSET, ExpertSampling
from lipsync.training.expert import ExpertStage
from pipelines.train_config import CHECKPOINT_ARTIFACT_DIR, RUN_STATE_FILE, TrainConfig  # noqa: F401

MODEL_FILE = ExpertStage.MODEL_FILE
DEFAULT_EXPERIMENT = "lipsync-expert"


@dataclass
class ExpertTrainConfig:
    """Everything an expert run depends on; flags map 1:1 (workflows/train.py)."""

    shards: str
    # model / recipe (paper defaults)
    width: float = 1.0
    face_size: int = 96
    batch_size: int = 64  # global batch per step, split across workers
    lr: float = 1e-4
    lr_schedule: str = "constant"  # or "cosine" (lipsync/training/schedule.py)
    warmup_steps: int = 0
    T: int = 5
    min_offset: int = DEFAULT_MIN_OFFSET
    min_mel_distance: float = DEFAULT_MIN_MEL_DISTANCE  # negatives must sound different (lipsync/data/windows.py)
    augment: bool = False
    max_steps: int = 10_000
    stop_at_val_accuracy: float | None = None  # end early once validation reaches this
    init: str | None = None  # start from these weights (ours or the official lipsync_expert.pth)
    # data
    windows_per_clip: int = 8
    shuffle_buffer: int = 2048
    loader_workers: int = 0  # DataLoader processes per training worker (GPU nodes: a few per GPU)
    val_windows_per_clip: int = 16
    val_max_clips: int | None = 512  # bounds validation time and memory on big val splits
    seed: int = 0
    # cadence
    log_every: int = 50
    checkpoint_every: int = 1000  # also the validation cadence
    keep_checkpoints: int = 3
    # scaling / fault tolerance
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    worker_resources: dict = field(default_factory=dict)  # e.g. {"expert_slot": 1} to pin workers
    max_failures: int = 2
    # bookkeeping
    storage_path: str = "ray_results"
    run_name: str | None = None
    resume: bool = False
    tracking_uri: str | None = None
    experiment: str = DEFAULT_EXPERIMENT
    manifest: str | None = None  # default: <shards>/manifest.parquet when present
    register: bool = True
    system_metrics: bool = True
    # testing aid: the last rank exits hard once at this step (guarded by a marker file)
    fail_at_step: int | None = None

    def to_train_config(self) -> TrainConfig:
        return TrainConfig.from_flat("expert", asdict(self))

    def validate(self) -> None:
        self.to_train_config().validate()

    def sampling(self) -> ExpertSampling:
        """How training windows are cut (validation: the same without augmentation)."""
        return self.to_train_config().recipe.sampling()


@dataclass
class ExpertTrainResult:
    run_id: str
    final_step: int
    best_step: int | None
    best_val_accuracy: float | None
    model_version: str | None
    tracking_uri: str
    run_dir: str
