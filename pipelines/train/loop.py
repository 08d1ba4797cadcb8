"""The one Ray Train loop, run by every worker for any training stage (rank 0 also logs to MLflow).

Each worker builds the stage (lipsync/training/), restores the latest checkpoint when Ray
hands one over (a lost worker, or ``--resume``), wraps every trained module with
``prepare_model`` (DDP when world > 1), reads its own part of the train shards
(``lipsync.data.shard_stream``, windows cut by the stage's sampling), and calls the stage's
``train_step``. Metric sums are all-reduced every ``log_every`` steps. Every
``checkpoint_every`` steps BatchNorm buffers are broadcast from rank 0 (so every rank
validates the model rank 0 saves), the stage validates on each rank's share of a fixed
val set (sums all-reduced: every rank takes the same decisions, e.g. the generator's
sync-weight switch), rank 0 logs sample images and each model file as MLflow artifacts,
and the checkpoint and its validation metrics go to Ray through the one
``ray.train.report`` call. Rank 0 logs training metrics through ``ResumableRunLogger``: a
replayed step neither duplicates nor loses points. Validation metrics reach MLflow from
Ray's controller once it has committed their checkpoint (``CommittedMetricsLogger``,
passed by the driver): a worker lost before that leaves no figure of weights that do not exist.

The Ray checkpoint holds the stage's model files (``lipsync.checkpoints`` format, no
pickle); the registered model's file carries the training state (step, torch RNG, the
stage's optimizers and decisions).
"""

from __future__ import annotations

import os
import tempfile
import time
from functools import partial
from pathlib import Path

from pipelines.train.config import WorkerPlan

FAILURE_GRACE_S = 6.0


def _all_reduce_sums(sums: dict, world: int, device) -> dict:
    """Sum each value of a metric-sum dict over ranks (same keys on every rank)."""
    import torch
    import torch.distributed as dist

    keys = sorted(sums)
    parts = [torch.as_tensor(sums[k], dtype=torch.float64).reshape(-1) for k in keys]
    flat = torch.cat(parts)
    if world > 1:
        flat = flat.to(device)
        dist.all_reduce(flat)
        flat = flat.cpu()
    out, i = {}, 0
    for k, p in zip(keys, parts):
        shape = torch.as_tensor(sums[k]).shape
        out[k] = flat[i: i + p.numel()].reshape(shape)
        i += p.numel()
    return out


def _restore(stage, ckpt_dir: Path) -> dict:
    """Weights of every saved model back into the stage's bare modules; returns the training state."""
    from lipsync.checkpoints import load_checkpoint

    train_state = None
    for saved in stage.saved_models():
        restored = load_checkpoint(ckpt_dir / saved.filename, kind=saved.config.kind)
        saved.module.load_state_dict(restored.model.state_dict())
        if saved.registered:
            train_state = restored.train_state
    return train_state


def _fail_once(plan: WorkerPlan, step: int, point: str, rank: int, world: int, name: str) -> None:
    """Testing aid (``--fail-at-step``, ``--fail-point``): one rank exits hard, once per run.

    Point "step": the last rank, before training step ``fail_at_step``. Point "report": rank 0
    (the one that writes to MLflow), after it has validated and saved that step and before
    ``ray.train.report`` commits the checkpoint."""
    cfg = plan.config
    if cfg.fail_at_step == step and cfg.fail_point == point and rank == (world - 1 if point == "step" else 0):
        marker = Path(plan.fail_marker)
        if not marker.exists():
            marker.write_text(f"worker rank {rank} exited on purpose at step {step}\n")
            print(f"[{name}] injected failure: rank {rank} exits at step {step} ({point})", flush=True)
            # Ray's controller collects reported checkpoints at its health checks (every 2 s):
            # give it time to register the last one, so the restore point is deterministic.
            time.sleep(FAILURE_GRACE_S)
            os._exit(1)


def _progress(name: str, step: int, max_steps: int, metrics: dict, keys) -> str:
    shown = " ".join(f"{k.removeprefix('train_')} {metrics[k]:.4f}" for k in keys if k in metrics)
    return f"[{name}] step {step}/{max_steps} {shown} {metrics['train_steps_per_s']:.2f} steps/s"


def train_loop_per_worker(loop_config: dict) -> None:
    """One Ray Train worker: restore, train, validate, checkpoint (see the module docstring)."""
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    from lipsync.data.shard_stream import WindowBatchStream, fixed_windows
    from pipelines.tracking.run_logger import ResumableRunLogger
    from lipsync import model_ref

    plan: WorkerPlan = loop_config["plan"]
    cfg = plan.config
    stage_cls = plan.stage_type
    name = cfg.stage
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(cfg.workers.cpus_per_worker)))

    torch.manual_seed(cfg.data.seed)
    checkpoint = ray.train.get_checkpoint()
    loader = partial(model_ref.load, tracking_uri=plan.tracking_uri, trust=cfg.tracking.trust_checkpoints)
    stage = stage_cls(cfg.recipe, device=device, load_model=loader, initialise=checkpoint is None,
                      max_steps=cfg.cadence.max_steps)
    start_step = 0
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            state = _restore(stage, Path(ckpt_dir))
        stage.load_state_dict(state["stage"])
        torch.set_rng_state(state["torch_rng"])
        start_step = int(state["step"])
        if rank == 0:
            print(f"[{name}] restored from checkpoint at step {start_step}", flush=True)
    for key, module in list(stage.trained.items()):
        stage.trained[key] = ray.train.torch.prepare_model(module)  # to device; DDP when world > 1
    stage.optimizer_state_to_device()

    per_worker_batch = cfg.recipe.batch_size // world
    # The stream seed mixes in the resume step: a restored run samples fresh windows
    # rather than replaying the ones it saw before the failure.
    stream = WindowBatchStream(
        plan.train_shards, sampling=stage.sampling(), rank=rank, world_size=world,
        batch_size=per_worker_batch, windows_per_clip=cfg.data.windows_per_clip,
        shuffle_buffer=cfg.data.shuffle_buffer or stage_cls.default_shuffle_buffer, seed=cfg.data.seed * 1_000_003 + start_step,
    )
    val_windows = fixed_windows(
        plan.val_shards, cfg.data.val_windows_per_clip, cfg.data.seed,
        stage.sampling(validation=True), cfg.data.val_max_clips, rank=rank, world_size=world,
    )

    # Where each rank runs (node, device): provenance, and proof that DDP spans nodes.
    placement = f"{ray.get_runtime_context().get_node_id()}/{device}"
    placements = [placement]
    if world > 1:
        placements = [None] * world
        dist.all_gather_object(placements, placement)

    logger = None
    if rank == 0:
        logger = ResumableRunLogger(plan.mlflow_run_id, plan.tracking_uri, system_metrics=cfg.tracking.system_metrics)
        logger.client.set_tag(plan.mlflow_run_id, "lipsync.worker_placement", ",".join(placements))
        logger.client.set_tag(plan.mlflow_run_id, "lipsync.world_size", str(world))
        if checkpoint is not None:
            logger.client.set_tag(plan.mlflow_run_id, "lipsync.restored_from_step", str(start_step))

    batches = stream
    if cfg.data.loader_workers > 0:  # each DataLoader process reads its own part (reader = rank x process)
        batches = torch.utils.data.DataLoader(
            stream, batch_size=None, num_workers=cfg.data.loader_workers, persistent_workers=True,
            prefetch_factor=4, pin_memory=device.type == "cuda",
        )
    batches = iter(batches)
    running: dict = {}
    window_start, window_steps = time.perf_counter(), 0
    max_steps = cfg.cadence.max_steps
    try:
        for step in range(start_step + 1, max_steps + 1):
            _fail_once(plan, step, "step", rank, world, name)
            sums = stage.train_step(next(batches), step)
            for k, v in sums.items():
                running[k] = running.get(k, 0.0) + v
            window_steps += 1

            if step % cfg.cadence.log_every == 0 or step == max_steps:
                totals = _all_reduce_sums(running, world, device)
                elapsed = time.perf_counter() - window_start
                metrics = stage.train_metrics(totals)
                metrics.update(train_steps_per_s=window_steps / elapsed,
                               train_samples_per_s=float(totals["samples"]) / elapsed)
                if logger is not None:
                    logger.log_metrics(metrics, step)
                    print(_progress(name, step, max_steps, metrics, stage.progress_keys), flush=True)
                running = {}
                window_start, window_steps = time.perf_counter(), 0

            if step % cfg.cadence.checkpoint_every == 0 or step == max_steps:
                if world > 1:  # BN running stats drift per rank: validate exactly the model rank 0 saves
                    for key in stage.trained:
                        for buf in stage.bare(key).buffers():
                            dist.broadcast(buf.data, src=0)
                val = stage.validation_metrics(_all_reduce_sums(stage.validate(val_windows, per_worker_batch), world, device))
                note = stage.after_validation(val, step)
                with tempfile.TemporaryDirectory(prefix=f"{name}_ckpt_") as tmp:
                    ckpt = None
                    if rank == 0:
                        ckpt = _save(stage, step, val, note, val_windows, logger, Path(tmp), plan)
                    _fail_once(plan, step, "report", rank, world, name)
                    ray.train.report({"step": step, **val}, checkpoint=ckpt)
                if stage.should_stop(val):
                    if rank == 0:
                        print(f"[{name}] {stage.best_metric} {val.get(stage.best_metric)} reached the stop "
                              f"target: stopping at step {step}", flush=True)
                    break
    finally:
        if logger is not None:
            logger.close()


def _save(stage, step, val, note, val_windows, logger, tmp: Path, plan: WorkerPlan):
    """Rank 0: MLflow artifacts (each model file, sample images), then the Ray checkpoint."""
    import ray.train
    import torch

    from lipsync.checkpoints import save_checkpoint

    # MLflow first, Ray second: if the worker dies in between, the restart replays from the
    # previous checkpoint and rewrites the same artifact paths. The validation metrics are not
    # logged here but once Ray has committed the checkpoint (CommittedMetricsLogger).
    for saved in stage.saved_models():
        folder = tmp / "artifact" / saved.artifact_dir
        save_checkpoint(folder / saved.filename, saved.module, saved.config)
        logger.log_artifacts(folder, f"{saved.artifact_dir}/step-{step:07d}")
    for image_name, image in stage.sample_images(val_windows).items():
        logger.log_image(image, f"{image_name}/step-{step:07d}.png")
    shown = " ".join(f"{k} {v:.4f}" for k, v in val.items() if k.startswith("val_") and not k.startswith("val_accuracy_offset"))
    print(f"[{stage.name}] step {step} {shown}", flush=True)
    if note:
        print(f"[{stage.name}] {note}", flush=True)
    train_state = {"step": step, "torch_rng": torch.get_rng_state(), "stage": stage.state_dict(),
                   "mlflow_run_id": plan.mlflow_run_id}
    ray_dir = tmp / "ray"
    for saved in stage.saved_models():
        save_checkpoint(ray_dir / saved.filename, saved.module, saved.config,
                        train_state=train_state if saved.registered else None)
    return ray.train.Checkpoint.from_directory(str(ray_dir))
