"""Training the lip-sync expert (SyncNet) with Ray Train: DDP from shards, MLflow, registry.

``train_expert`` creates or re-opens one MLflow run (params, code version, manifest hash),
starts a ``TorchTrainer`` (``ScalingConfig(num_workers, use_gpu)``, DDP over gloo on CPU /
NCCL on GPU, ``FailureConfig(max_failures)``) around ``expert_worker.train_loop_per_worker``,
then picks the best validated checkpoint from the run's history, logs the loss/accuracy
curve, and registers the checkpoint as ``lipsync-expert`` with alias ``candidate``.
``--resume`` (same ``--run-name`` and ``--storage-path``) continues the Ray run from its
latest checkpoint and the same MLflow run.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from lipsync.errors import ConfigError
from pipelines.expert_config import (  # noqa: F401 - re-exported for callers and tests
    CHECKPOINT_ARTIFACT_DIR,
    DEFAULT_EXPERIMENT,
    MODEL_FILE,
    RUN_STATE_FILE,
    ExpertTrainConfig,
    ExpertTrainResult,
)


def _run_dir(cfg: ExpertTrainConfig) -> Path:
    return Path(cfg.storage_path).resolve() / cfg.run_name


def _open_mlflow_run(cfg: ExpertTrainConfig, tracking_uri: str, n_train: int, n_val: int) -> str:
    import mlflow
    from mlflow import MlflowClient

    from pipelines import tracking

    run_dir = _run_dir(cfg)
    state_path = run_dir / RUN_STATE_FILE
    client = MlflowClient(tracking_uri=tracking_uri)
    if cfg.resume:
        if not state_path.exists():
            raise ConfigError(f"{state_path}: nothing to resume (no earlier run named {cfg.run_name!r} there)")
        run_id = json.loads(state_path.read_text())["mlflow_run_id"]
        client.update_run(run_id, status="RUNNING")
        resumed = int(client.get_run(run_id).data.tags.get("lipsync.resumed", "0")) + 1
        client.set_tag(run_id, "lipsync.resumed", str(resumed))
        client.set_tag(run_id, f"lipsync.resume_{resumed}.max_steps", str(cfg.max_steps))
        client.set_tag(run_id, f"lipsync.resume_{resumed}.lr", str(cfg.lr))
        return run_id
    if run_dir.exists():
        raise ConfigError(
            f"{run_dir}: a run named {cfg.run_name!r} exists; pass --resume to continue it or choose another --run-name"
        )
    tracking.configure(tracking_uri, cfg.experiment)
    manifest = cfg.manifest or str(Path(cfg.shards) / "manifest.parquet")
    tags = {**tracking.run_tags(manifest), "lipsync.stage": "expert", "lipsync.ray_run_dir": str(run_dir)}
    experiment = mlflow.get_experiment_by_name(cfg.experiment)
    run = client.create_run(experiment.experiment_id, run_name=cfg.run_name, tags=tags)
    params = {k: v for k, v in asdict(cfg).items() if k not in ("resume", "fail_at_step")}
    params.update(train_shards=n_train, val_shards=n_val)
    client.log_batch(run.info.run_id, params=[mlflow.entities.Param(k, str(v)) for k, v in params.items()])
    run_dir.mkdir(parents=True, exist_ok=True)
    state_path.write_text(json.dumps({"mlflow_run_id": run.info.run_id, "tracking_uri": tracking_uri}))
    return run.info.run_id


def _curve_figure(client, run_id: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key):
        hist = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        return [m.step for m in hist], [m.value for m in hist]

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for key, ax in (("train_loss", ax_loss), ("val_loss", ax_loss), ("train_accuracy", ax_acc), ("val_accuracy", ax_acc)):
        x, y = series(key)
        if x:
            ax.plot(x, y, marker="o" if key.startswith("val") else None, label=key)
    ax_loss.axhline(0.6931, color="grey", lw=0.8, ls="--", label="ln 2 (chance)")
    ax_acc.axhline(0.5, color="grey", lw=0.8, ls="--")
    for ax, title in ((ax_loss, "BCE loss"), (ax_acc, "accuracy (threshold 0.5)")):
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    return fig


def _best_validated_step(client, run_id: str) -> tuple[int | None, float | None]:
    hist = client.get_metric_history(run_id, "val_accuracy")
    if not hist:
        return None, None
    best = max(hist, key=lambda m: (m.value, m.step))  # ties: the later, longer-trained one
    return best.step, best.value


def train_expert(cfg: ExpertTrainConfig) -> ExpertTrainResult:
    """Run (or resume) one expert training; returns where everything went."""
    from mlflow import MlflowClient
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from pipelines import tracking
    from pipelines.ray_env import init_ray, quiet_train_options
    from pipelines.expert_worker import train_loop_per_worker
    from pipelines.preflight import check_training_shards
    from pipelines.registry import register_checkpoint
    from pipelines.worker_errors import fit

    cfg.validate()
    cfg.run_name = cfg.run_name or time.strftime("expert-%Y%m%d-%H%M%S")
    cfg.storage_path = str(Path(cfg.storage_path).resolve())
    shards = check_training_shards(cfg.shards, cfg.sampling())  # before Ray and MLflow: one-line errors
    train_shards, val_shards = shards.train, shards.val
    tracking_uri = tracking.resolve_tracking_uri(cfg.tracking_uri)
    run_id = _open_mlflow_run(cfg, tracking_uri, len(train_shards), len(val_shards))
    client = MlflowClient(tracking_uri=tracking_uri)

    init_ray()
    loop_config = {
        **asdict(cfg),
        "train_shards": train_shards,
        "val_shards": val_shards,
        "mlflow_run_id": run_id,
        "tracking_uri": tracking_uri,
        "fail_marker": str(_run_dir(cfg) / "injected_failure.marker"),
    }
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers,
            use_gpu=cfg.use_gpu,
            resources_per_worker={"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.use_gpu else {}), **cfg.worker_resources},
        ),
        run_config=RunConfig(
            name=cfg.run_name,
            storage_path=cfg.storage_path,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            **quiet_train_options(),
        ),
    )
    try:
        result = fit(trainer, _run_dir(cfg))
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    final_step = int(result.metrics.get("step", 0)) if result.metrics else 0

    best_step, best_acc = _best_validated_step(client, run_id)
    fig = _curve_figure(client, run_id)
    client.log_figure(run_id, fig, "curves/expert_curve.png")
    version = None
    if cfg.register and best_step is not None:
        version = register_checkpoint(
            run_id,
            f"{CHECKPOINT_ARTIFACT_DIR}/step-{best_step:07d}",
            tracking.EXPERT_MODEL_NAME,
            alias=tracking.ALIAS_CANDIDATE,
            tags={"val_accuracy": f"{best_acc:.4f}", "step": str(best_step), "min_offset": str(cfg.min_offset),
                  "min_mel_distance": str(cfg.min_mel_distance)},
            tracking_uri=tracking_uri,
        )
        client.set_tag(run_id, "lipsync.registered_version", version)
    client.log_metric(run_id, "best_val_accuracy", best_acc if best_acc is not None else float("nan"), step=final_step)
    client.set_terminated(run_id, status="FINISHED")
    return ExpertTrainResult(
        run_id=run_id,
        final_step=final_step,
        best_step=best_step,
        best_val_accuracy=best_acc,
        model_version=version,
        tracking_uri=tracking_uri,
        run_dir=str(_run_dir(cfg)),
    )
