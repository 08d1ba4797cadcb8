"""What an expert training run depends on (flags map 1:1) and what it returns.

Shared by the driver (pipelines/train_expert.py) and the per-worker loop
(pipelines/expert_worker.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lipsync.data.windows import DEFAULT_MIN_MEL_DISTANCE, DEFAULT_MIN_OFFSET, ExpertSampling
from lipsync.errors import ConfigError
from lipsync.training.schedule import check_schedule

MODEL_FILE = "expert.safetensors"
RUN_STATE_FILE = "lipsync_run.json"
CHECKPOINT_ARTIFACT_DIR = "checkpoints"
DEFAULT_EXPERIMENT = "lipsync-expert"


@dataclass
class ExpertTrainConfig:
    """Everything a run depends on; flags map 1:1 (workflows/train.py)."""

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

    def validate(self) -> None:
        if self.batch_size < self.num_workers or self.batch_size % max(self.num_workers, 1):
            raise ConfigError(
                f"--batch-size {self.batch_size} must be a multiple of --num-workers {self.num_workers}"
            )
        for name in ("max_steps", "log_every", "checkpoint_every", "num_workers", "T"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")
        check_schedule(self.lr_schedule, self.warmup_steps)
        self.sampling()  # fails here, in the driver, with the flag's name rather than in a worker

    def sampling(self) -> ExpertSampling:
        """How training windows are cut (validation: the same without augmentation)."""
        return ExpertSampling(T=self.T, face_size=self.face_size, min_offset=self.min_offset,
                              min_mel_distance=self.min_mel_distance, augment=self.augment)


@dataclass
class ExpertTrainResult:
    run_id: str
    final_step: int
    best_step: int | None
    best_val_accuracy: float | None
    model_version: str | None
    tracking_uri: str
    run_dir: str
