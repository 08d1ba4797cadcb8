"""The expert's Ray Train loop, run by every worker (rank 0 also logs to MLflow).

Each worker reads its own part of the train shards (``lipsync.data.shard_stream``), trains
with the paper's recipe (global batch 64 per step split over workers, Adam 1e-4, T=5; bf16
autocast on GPU), and every ``checkpoint_every`` steps validates on its share of a fixed set
of val-split windows (counts all-reduced), then reports a checkpoint through
``ray.train.report``. Rank 0 logs through ``ResumableRunLogger``, so a restart (a lost
worker, or ``--resume``) neither duplicates nor loses points. The Ray checkpoint is one
``lipsync.checkpoints`` file with the training state inside (optimizer, step, torch RNG,
best score; no pickle); the MLflow artifact of each checkpoint is the same file without
the training state, which is what gets registered.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import fields, replace
from pathlib import Path

from pipelines.expert_config import CHECKPOINT_ARTIFACT_DIR, MODEL_FILE, ExpertTrainConfig


def train_loop_per_worker(config: dict) -> None:
    """One Ray Train worker: restore, train, validate, checkpoint (see the module docstring)."""
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    from lipsync.checkpoints import ModelConfig, load_checkpoint, save_checkpoint
    from lipsync.data.shard_stream import ExpertBatchStream, fixed_expert_windows
    from lipsync.models import SyncNet
    from lipsync.training.schedule import lr_at, set_lr
    from lipsync.training.expert import (
        correct,
        evaluate_expert,
        expert_loss,
        summarize_evaluation,
        sync_scores,
    )
    from pipelines.mlflow_run import ResumableRunLogger

    cfg = ExpertTrainConfig(**{f.name: config[f.name] for f in fields(ExpertTrainConfig)})
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    amp_dtype = torch.bfloat16 if device.type == "cuda" else None

    torch.manual_seed(cfg.seed)
    model = SyncNet(width=cfg.width, face_size=cfg.face_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    start_step, best_acc, best_step = 0, None, None

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            restored = load_checkpoint(Path(ckpt_dir) / MODEL_FILE, kind="expert")
        model.load_state_dict(restored.model.state_dict())
        state = restored.train_state
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:  # the flag wins: --resume --lr X lowers the rate
            group["lr"] = cfg.lr
        torch.set_rng_state(state["torch_rng"])
        start_step = int(state["step"])
        best_acc, best_step = state.get("best_val_accuracy"), state.get("best_step")
        if rank == 0:
            print(f"[expert] restored from checkpoint at step {start_step}", flush=True)
    model = ray.train.torch.prepare_model(model)  # moves to device, wraps in DDP when world > 1
    bare = model.module if hasattr(model, "module") else model
    for group in optimizer.state.values():  # optimizer tensors follow the model's device
        for k, v in group.items():
            if torch.is_tensor(v) and k != "step":
                group[k] = v.to(device)

    sampling = cfg.sampling()
    per_worker_batch = cfg.batch_size // world
    # The stream seed mixes in the resume step: a restored run samples fresh windows
    # rather than replaying the ones it saw before the failure.
    stream = ExpertBatchStream(
        config["train_shards"],  # local paths or s3:// / gs:// URIs, as listed by the driver
        rank=rank,
        world_size=world,
        batch_size=per_worker_batch,
        windows_per_clip=cfg.windows_per_clip,
        shuffle_buffer=cfg.shuffle_buffer,
        seed=cfg.seed * 1_000_003 + start_step,
        sampling=sampling,
    )
    val_sampling = replace(sampling, augment=False)
    val_windows = fixed_expert_windows(
        config["val_shards"], cfg.val_windows_per_clip, cfg.seed, val_sampling,
        cfg.val_max_clips, rank=rank, world_size=world,
    )

    # Where each rank runs (node, device): provenance, and proof that DDP spans nodes.
    placement = f"{ray.get_runtime_context().get_node_id()}/{device}"
    placements = [placement]
    if world > 1:
        placements = [None] * world
        dist.all_gather_object(placements, placement)

    logger = None
    if rank == 0:
        logger = ResumableRunLogger(config["mlflow_run_id"], config["tracking_uri"], system_metrics=cfg.system_metrics)
        logger.client.set_tag(config["mlflow_run_id"], "lipsync.worker_placement", ",".join(placements))
        logger.client.set_tag(config["mlflow_run_id"], "lipsync.world_size", str(world))

    def all_reduce(t: torch.Tensor) -> torch.Tensor:
        if world > 1:
            t = t.to(device)
            dist.all_reduce(t)
        return t.cpu()

    running = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, pairs
    window_start, window_steps = time.perf_counter(), 0
    loader = stream
    if cfg.loader_workers > 0:  # each DataLoader process reads its own part (reader = rank x process)
        loader = torch.utils.data.DataLoader(
            stream, batch_size=None, num_workers=cfg.loader_workers, persistent_workers=True,
            prefetch_factor=4, pin_memory=device.type == "cuda",
        )
    batches = iter(loader)
    model.train()
    step = start_step
    try:
        for step in range(start_step + 1, cfg.max_steps + 1):
            if cfg.fail_at_step == step and rank == world - 1:
                marker = Path(config["fail_marker"])
                if not marker.exists():
                    marker.write_text(f"worker rank {rank} exited on purpose at step {step}\n")
                    print(f"[expert] injected failure: rank {rank} exits at step {step}", flush=True)
                    os._exit(1)
            batch = next(batches)
            set_lr(optimizer, lr_at(step, cfg.lr, cfg.max_steps, cfg.lr_schedule, cfg.warmup_steps))
            mel, face, label = (batch[k].to(device, non_blocking=True) for k in ("mel", "face", "label"))
            with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
                scores = sync_scores(model, mel, face)
            loss = expert_loss(scores, label)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                n = label.shape[0]
                running += torch.tensor([float(loss) * n, float(correct(scores, label).sum()), n], dtype=torch.float64)
            window_steps += 1

            if step % cfg.log_every == 0 or step == cfg.max_steps:
                totals = all_reduce(running.clone())
                elapsed = time.perf_counter() - window_start
                metrics = {
                    "train_loss": float(totals[0] / totals[2]),
                    "train_accuracy": float(totals[1] / totals[2]),
                    "train_steps_per_s": window_steps / elapsed,
                    "train_samples_per_s": float(totals[2]) / elapsed,
                    "lr": optimizer.param_groups[0]["lr"],
                }
                if logger is not None:
                    logger.log_metrics(metrics, step)
                    print(
                        f"[expert] step {step}/{cfg.max_steps} loss {metrics['train_loss']:.4f} "
                        f"acc {metrics['train_accuracy']:.3f} {metrics['train_steps_per_s']:.2f} steps/s",
                        flush=True,
                    )
                running.zero_()
                window_start, window_steps = time.perf_counter(), 0

            if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
                if world > 1:  # BN running stats drift per rank: validate exactly the model rank 0 saves
                    for buf in bare.buffers():
                        dist.broadcast(buf.data, src=0)
                sums = all_reduce(
                    evaluate_expert(bare, val_windows, per_worker_batch, device, amp_dtype)
                )
                val = summarize_evaluation(sums, prefix="val")
                acc = val.get("val_accuracy")
                if acc is not None and (best_acc is None or acc >= best_acc):
                    best_acc, best_step = acc, step
                report = {"step": step, **val}
                with tempfile.TemporaryDirectory(prefix="expert_ckpt_") as tmp:
                    ckpt = None
                    if rank == 0:
                        model_config = ModelConfig(kind="expert", width=cfg.width, face_size=cfg.face_size)
                        artifact_dir = Path(tmp) / "artifact"
                        save_checkpoint(artifact_dir / MODEL_FILE, bare, model_config)
                        # MLflow first, Ray second: if the worker dies in between, the restart
                        # replays from the previous checkpoint and rewrites the same artifact path.
                        logger.log_artifacts(artifact_dir, f"{CHECKPOINT_ARTIFACT_DIR}/step-{step:07d}")
                        logger.log_metrics(val, step)
                        print(
                            f"[expert] step {step} val loss {val.get('val_loss', float('nan')):.4f} "
                            f"val acc {acc if acc is not None else float('nan'):.3f}",
                            flush=True,
                        )
                        ray_dir = Path(tmp) / "ray"
                        train_state = {
                            "step": step,
                            "optimizer": optimizer.state_dict(),
                            "torch_rng": torch.get_rng_state(),
                            "best_val_accuracy": best_acc,
                            "best_step": best_step,
                            "mlflow_run_id": config["mlflow_run_id"],
                        }
                        save_checkpoint(ray_dir / MODEL_FILE, bare, model_config, train_state=train_state)
                        ckpt = ray.train.Checkpoint.from_directory(str(ray_dir))
                    ray.train.report(report, checkpoint=ckpt)
                # Validation counts are all-reduced, so every rank takes the same decision.
                if cfg.stop_at_val_accuracy is not None and acc is not None and acc >= cfg.stop_at_val_accuracy:
                    if rank == 0:
                        print(f"[expert] val accuracy {acc:.3f} >= {cfg.stop_at_val_accuracy}: stopping at step {step}", flush=True)
                    break
    finally:
        if logger is not None:
            logger.close()
