"""Training the lip-sync expert (SyncNet) with Ray Train: DDP from shards, MLflow, registry.

Driver (``train_expert``): creates or re-opens one MLflow run, starts a ``TorchTrainer``
(``ScalingConfig(num_workers, use_gpu)``, DDP over gloo on CPU / NCCL on GPU,
``FailureConfig(max_failures)``), then picks the best validated checkpoint from the run's
history, logs the loss/accuracy curve, and registers the checkpoint as ``lipsync-expert``
with alias ``candidate``.

Workers (``_train_loop``): each reads its own part of the train shards
(``lipsync.data.shard_stream``), trains with the paper's recipe (batch 64 per step across
all workers, Adam 1e-4, T=5; bf16 autocast on GPU), and every ``checkpoint_every`` steps
validates on a fixed set of val-split windows (sharded over workers, counts all-reduced),
then reports a checkpoint through ``ray.train.report``. Rank 0 logs to MLflow with
``ResumableRunLogger`` so a restart (a lost worker, or ``--resume``) neither duplicates nor
loses points. The Ray checkpoint is one ``lipsync.checkpoints`` file with the training
state inside (optimizer, step, torch RNG, best score; no pickle); the MLflow artifact of
each checkpoint is the same file without the training state (a third of the size), which
is what gets registered.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from lipsync.errors import ConfigError

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
    T: int = 5
    min_offset: int = 2
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


@dataclass
class ExpertTrainResult:
    run_id: str
    final_step: int
    best_step: int | None
    best_val_accuracy: float | None
    model_version: str | None
    tracking_uri: str
    run_dir: str


# ============================================================================ worker side


def _train_loop(config: dict) -> None:
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    from lipsync.checkpoints import ModelConfig, load_checkpoint, save_checkpoint
    from lipsync.data.shard_stream import ExpertBatchStream, fixed_expert_windows
    from lipsync.data.windows import ExpertSampling
    from lipsync.models import SyncNet
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

    sampling = ExpertSampling(T=cfg.T, face_size=cfg.face_size, min_offset=cfg.min_offset, augment=cfg.augment)
    per_worker_batch = cfg.batch_size // world
    # The stream seed mixes in the resume step: a restored run samples fresh windows
    # rather than replaying the ones it saw before the failure.
    stream = ExpertBatchStream(
        [Path(p) for p in config["train_shards"]],
        rank=rank,
        world_size=world,
        batch_size=per_worker_batch,
        windows_per_clip=cfg.windows_per_clip,
        shuffle_buffer=cfg.shuffle_buffer,
        seed=cfg.seed * 1_000_003 + start_step,
        sampling=sampling,
    )
    val_sampling = ExpertSampling(T=cfg.T, face_size=cfg.face_size, min_offset=cfg.min_offset)
    val_windows = fixed_expert_windows(
        [Path(p) for p in config["val_shards"]], cfg.val_windows_per_clip, cfg.seed, val_sampling,
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


# ============================================================================ driver side


def _resolve_shards(cfg: ExpertTrainConfig) -> tuple[list[str], list[str]]:
    from lipsync.data.shard_stream import list_shards

    return [str(p) for p in list_shards(cfg.shards, "train")], [str(p) for p in list_shards(cfg.shards, "val")]


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
    import ray.train
    from mlflow import MlflowClient
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from pipelines import tracking
    from pipelines.ray_env import init_ray
    from pipelines.registry import register_checkpoint

    cfg.validate()
    cfg.run_name = cfg.run_name or time.strftime("expert-%Y%m%d-%H%M%S")
    cfg.storage_path = str(Path(cfg.storage_path).resolve())
    train_shards, val_shards = _resolve_shards(cfg)
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
        _train_loop,
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
        ),
    )
    try:
        result = trainer.fit()
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
            tags={"val_accuracy": f"{best_acc:.4f}", "step": str(best_step), "min_offset": str(cfg.min_offset)},
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
