"""The one training driver for any stage: MLflow run, Ray Train job, best checkpoint, registry.

``run_training`` checks the config and the stage's inputs before anything starts (the
stage's ``preflight``: face sizes of shards, expert and --init files; a registry alias is
pinned to a concrete version once, tagged on the run and reused by every restart and
``--resume``), creates or re-opens one MLflow run (params, code version, manifest hash),
starts a ``TorchTrainer`` (``ScalingConfig(num_workers, use_gpu)``, DDP over gloo on CPU /
NCCL on GPU, ``FailureConfig(max_failures)``) around ``train_loop.train_loop_per_worker``,
then picks the best validated step from the run's history (the stage's ``best_metric``),
logs the curves, and registers that step's checkpoint folder under the stage's registered
model name with alias ``candidate``. ``--resume`` (same ``--run-name`` and
``--storage-path``) continues the Ray run from its latest checkpoint and the same MLflow run.
Every exit path ends the MLflow run: FINISHED, FAILED (any error, in Ray's start and in the
registration too) or KILLED (Ctrl-C, SIGTERM under ``lipsync.terminate.sigterm_raises``, any exit).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

from lipsync.errors import ConfigError, LipsyncError, first_line
from pipelines.common import storage
from lipsync.training.recipe import model_fields
from pipelines.train.config import RUN_STATE_FILE, TrainConfig, TrainResult, WorkerPlan


def _resolve_shards(cfg: TrainConfig) -> tuple[list[str], list[str]]:
    """Shard paths or object-storage URIs (s3://, gs://), listed once on the driver. Local
    shards are checked first (pipelines/dataset/preflight.py): no split, no usable clip or crops of
    another size are one-line errors before Ray starts or an MLflow run opens."""
    from pipelines.dataset.preflight import check_training_shards

    if storage.is_object_storage(cfg.data.shards):
        return storage.list_shards(cfg.data.shards, "train"), storage.list_shards(cfg.data.shards, "val")
    shards = check_training_shards(cfg.data.shards, cfg.recipe.sampling())
    return shards.train, shards.val


def shard_face_size(train_shards: list[str]) -> int | None:
    """The crop size of the shards' face frames (from the first clip's metadata)."""
    from lipsync.data.shard_stream import iter_clips

    for clip in iter_clips([train_shards[0]]):
        size = (clip.meta or {}).get("crop_size")
        return int(size) if size is not None else None
    return None


def _run_dir(cfg: TrainConfig) -> str:
    """The Ray run folder: a local path or an object-storage URI."""
    return storage.join(storage.resolve(cfg.tracking.storage_path), cfg.tracking.run_name)


def _fail_marker(cfg: TrainConfig) -> str:
    # The fault-injection marker is a local file the worker writes; a run on object storage
    # keeps it in the machine's temporary folder (the injection tests run on one machine).
    if storage.is_object_storage(cfg.tracking.storage_path):
        return str(Path(tempfile.gettempdir()) / f"lipsync-{cfg.tracking.run_name}-injected_failure.marker")
    return storage.join(_run_dir(cfg), "injected_failure.marker")


def _pin_references(cfg: TrainConfig, tracking_uri: str) -> dict[str, str]:
    from lipsync import model_ref

    pinned = {}
    for field_name, flag in model_fields(cfg.stage_type.recipe_type).items():
        ref = getattr(cfg.recipe, field_name, None)
        if ref:
            try:
                pinned[field_name] = model_ref.pin(ref, tracking_uri)
            except LipsyncError as e:
                raise type(e)(f"{flag} {e}") from None
            setattr(cfg.recipe, field_name, pinned[field_name])
    return pinned


def _open_mlflow_run(cfg: TrainConfig, tracking_uri: str, n_train: int, n_val: int, preflight) -> str:
    """Create the run (or re-open it with --resume); ``preflight()`` runs for a new run only
    and returns its tags, after references are pinned (a resumed run reuses its pins)."""
    import mlflow
    from mlflow import MlflowClient

    from pipelines.tracking import setup as mlflow_setup

    run_dir = _run_dir(cfg)
    state_path = storage.join(run_dir, RUN_STATE_FILE)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    if cfg.tracking.resume:
        if not storage.exists(state_path):
            raise ConfigError(f"{state_path}: nothing to resume (no earlier run named {cfg.tracking.run_name!r} there)")
        state = json.loads(storage.get_bytes(state_path))
        flags = model_fields(cfg.stage_type.recipe_type)
        for field_name, ref in state.get("pinned", {}).items():
            if getattr(cfg.recipe, field_name, None) not in (None, ref):
                print(f"[{cfg.stage}] --resume keeps the run's {flags[field_name]} {ref}", flush=True)
            setattr(cfg.recipe, field_name, ref)
        run_id = state["mlflow_run_id"]
        client.update_run(run_id, status="RUNNING")
        resumed = int(client.get_run(run_id).data.tags.get("lipsync.resumed", "0")) + 1
        client.set_tag(run_id, "lipsync.resumed", str(resumed))
        client.set_tag(run_id, f"lipsync.resume_{resumed}.max_steps", str(cfg.cadence.max_steps))
        client.set_tag(run_id, f"lipsync.resume_{resumed}.lr", str(cfg.recipe.lr))
        return run_id
    if storage.exists(run_dir):
        raise ConfigError(f"{run_dir}: a run named {cfg.tracking.run_name!r} exists{_status_of(client, state_path)}; "
                          f"continue it with --resume --run-name {cfg.tracking.run_name} or choose another --run-name")
    pinned = _pin_references(cfg, tracking_uri)
    stage_tags = preflight()
    mlflow_setup.configure(tracking_uri, cfg.experiment)
    manifest = cfg.data.manifest or storage.join(storage.resolve(cfg.data.shards), "manifest.parquet")
    tags = {**mlflow_setup.run_tags(manifest), **stage_tags, "lipsync.job": "training", "lipsync.stage": cfg.stage, "lipsync.ray_run_dir": str(run_dir)}
    tags.update({f"lipsync.{k}": v for k, v in pinned.items()})
    experiment = mlflow.get_experiment_by_name(cfg.experiment)
    run_id = client.create_run(experiment.experiment_id, run_name=cfg.tracking.run_name, tags=tags).info.run_id
    try:
        params = {**cfg.params(), "train_shards": n_train, "val_shards": n_val}
        client.log_batch(run_id, params=[mlflow.entities.Param(k, str(v)) for k, v in params.items()])
        storage.put_bytes(state_path, json.dumps({"mlflow_run_id": run_id, "tracking_uri": tracking_uri,
                                                  "stage": cfg.stage, "pinned": pinned}).encode())
    except BaseException as e:
        end_run(client, run_id, e)
        raise
    return run_id


def _status_of(client, state_path: str) -> str:
    """' (MLflow run ID, STATUS)' of an earlier run with this name, when it can be read."""
    try:
        run_id = json.loads(storage.get_bytes(state_path))["mlflow_run_id"]
        return f" (MLflow run {run_id}, {client.get_run(run_id).info.status})"
    except Exception:  # noqa: BLE001 - only a detail of the message
        return ""


def end_run(client, run_id: str, error: BaseException | None) -> None:
    """End the MLflow run FINISHED, FAILED (an error) or KILLED (Ctrl-C, SIGTERM): no exit
    path leaves it RUNNING. A tracking server that cannot be reached is said in one line."""
    # SystemExit: SIGTERM (lipsync.terminate; through ray.get it arrives as SystemExit(1)) or an exit.
    status = "FINISHED" if error is None else "KILLED" if isinstance(error, (KeyboardInterrupt, SystemExit)) \
        else "FAILED"
    try:
        client.set_terminated(run_id, status=status)
    except Exception as e:  # noqa: BLE001 - the run's own outcome is what the caller reports
        print(f"warning: MLflow run {run_id} could not be marked {status}: {first_line(e, 200)}",
              file=sys.stderr, flush=True)


def _curve_figure(client, run_id: str, panels):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key):
        hist = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        return [m.step for m in hist], [m.value for m in hist]

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for key in panel.keys:
            x, y = series(key)
            if x:
                ax.plot(x, y, marker="o" if key.startswith("val") else None, label=key)
        if panel.reference:
            ax.axhline(panel.reference[0], color="grey", lw=0.8, ls="--", label=panel.reference[1])
        ax.set_xlabel("step")
        ax.set_title(panel.title)
        ax.legend()
    fig.tight_layout()
    return fig


def best_validated_step(client, run_id: str, metric: str, higher_is_better: bool) -> tuple[int | None, float | None]:
    hist = client.get_metric_history(run_id, metric)
    if not hist:
        return None, None
    sign = 1 if higher_is_better else -1
    best = max(hist, key=lambda m: (sign * m.value, m.step))  # ties: the later, longer-trained one
    return best.step, best.value


def run_training(cfg: TrainConfig) -> TrainResult:
    """Run (or resume) one training of ``cfg.stage``; returns where everything went."""
    from mlflow import MlflowClient

    from lipsync import model_ref
    from pipelines.tracking import setup as mlflow_setup

    cfg.check()
    stage_cls = cfg.stage_type
    cfg.tracking.run_name = cfg.tracking.run_name or time.strftime(f"{cfg.stage}-%Y%m%d-%H%M%S")
    cfg.tracking.storage_path = storage.resolve(cfg.tracking.storage_path)  # URIs stay URIs (Ray Train opens them)
    train_shards, val_shards = _resolve_shards(cfg)
    tracking_uri = mlflow_setup.resolve_tracking_uri(cfg.tracking.tracking_uri)
    loader = partial(model_ref.load, tracking_uri=tracking_uri, trust=cfg.tracking.trust_checkpoints)
    preflight = partial(stage_cls.preflight, cfg.recipe, loader, shard_face_size(train_shards))
    run_id = _open_mlflow_run(cfg, tracking_uri, len(train_shards), len(val_shards), preflight)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        result = _train_and_register(cfg, run_id, client, tracking_uri, train_shards, val_shards)
    except BaseException as e:
        end_run(client, run_id, e)
        raise
    end_run(client, run_id, None)
    return result


def _train_and_register(cfg: TrainConfig, run_id: str, client, tracking_uri: str, train_shards, val_shards):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from pipelines.common.ray_setup import init_ray, quiet_train_options
    from pipelines.tracking.registry import ALIAS_CANDIDATE, register_checkpoint
    from pipelines.tracking.run_logger import CommittedMetricsLogger
    from pipelines.train.loop import train_loop_per_worker
    from pipelines.train.worker_errors import fit

    stage_cls = cfg.stage_type
    init_ray()
    w = cfg.workers
    plan = WorkerPlan(config=cfg, train_shards=train_shards, val_shards=val_shards, mlflow_run_id=run_id,
                      tracking_uri=tracking_uri, fail_marker=_fail_marker(cfg), stage_type=stage_cls)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"plan": plan},
        torch_config=TorchConfig(backend="nccl" if w.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=w.num_workers,
            use_gpu=w.use_gpu,
            resources_per_worker={"CPU": w.cpus_per_worker, **({"GPU": 1} if w.use_gpu else {}), **w.worker_resources},
        ),
        run_config=RunConfig(
            name=cfg.tracking.run_name,
            storage_path=cfg.tracking.storage_path,
            failure_config=FailureConfig(max_failures=w.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.cadence.keep_checkpoints),
            callbacks=[CommittedMetricsLogger(run_id, tracking_uri)],  # validation metrics, once committed
            **quiet_train_options(),
        ),
    )
    # A worker's user error comes back as its one line; the full trace goes to a local log.
    log_dir = tempfile.gettempdir() if storage.is_object_storage(_run_dir(cfg)) else _run_dir(cfg)
    result = fit(trainer, log_dir)
    final_step = int(result.metrics.get("step", 0)) if result.metrics else 0

    best_step, best_value = best_validated_step(client, run_id, stage_cls.best_metric, stage_cls.higher_is_better)
    client.log_figure(run_id, _curve_figure(client, run_id, stage_cls.curve_panels), f"curves/{cfg.stage}_curve.png")
    version = None
    if cfg.tracking.register and best_step is not None:
        files = stage_cls.model_files(cfg.recipe)
        folder = {f.artifact_dir: f"{f.artifact_dir}/step-{best_step:07d}" for f in files}
        product = next(f for f in files if f.registered)
        version = register_checkpoint(
            run_id,
            folder[product.artifact_dir],
            stage_cls.registered_model,
            alias=ALIAS_CANDIDATE,
            tags={stage_cls.best_metric: f"{best_value:.4f}", "step": str(best_step),
                  **stage_cls.registration_tags(cfg.recipe),
                  **{f.version_tag: f"runs:/{run_id}/{folder[f.artifact_dir]}" for f in files if f.version_tag}},
            tracking_uri=tracking_uri,
        )
        client.set_tag(run_id, "lipsync.registered_version", version)
    client.log_metric(run_id, f"best_{stage_cls.best_metric}", best_value if best_value is not None else float("nan"),
                      step=final_step)
    return TrainResult(run_id=run_id, stage=cfg.stage, final_step=final_step, best_step=best_step,
                       best_metric=stage_cls.best_metric, best_value=best_value, model_version=version,
                       tracking_uri=tracking_uri, run_dir=_run_dir(cfg))
