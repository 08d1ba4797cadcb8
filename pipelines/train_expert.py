"""Training the lip-sync expert (SyncNet): the expert stage through the one training driver.

``train_expert`` runs ``pipelines.train_run.run_training`` for ``ExpertTrainConfig`` (its
flat config) and returns ``ExpertTrainResult``; see pipelines/train_run.py for what a run
does (MLflow run, Ray Train DDP, failure restore, --resume, best checkpoint registered as
``lipsync-expert`` with alias ``candidate``).
"""

from __future__ import annotations

from pipelines.expert_config import (  # noqa: F401 - re-exported for callers and tests
    CHECKPOINT_ARTIFACT_DIR,
    DEFAULT_EXPERIMENT,
    MODEL_FILE,
    RUN_STATE_FILE,
    ExpertTrainConfig,
    ExpertTrainResult,
)


def train_expert(cfg: ExpertTrainConfig) -> ExpertTrainResult:
    """Run (or resume) one expert training; returns where everything went."""
    from pipelines.train_run import run_training

    train_config = cfg.to_train_config()
    result = run_training(train_config)
    cfg.run_name, cfg.storage_path = train_config.tracking.run_name, train_config.tracking.storage_path
    return ExpertTrainResult(run_id=result.run_id, final_step=result.final_step, best_step=result.best_step,
                             best_val_accuracy=result.best_value, model_version=result.model_version,
                             tracking_uri=result.tracking_uri, run_dir=result.run_dir)
