"""Train a stage of the model from preprocessed shards (Ray Train + MLflow).

Local (starts a private Ray cluster on 127.0.0.1, logs to ./mlruns.db):
    python workflows/train.py --stage expert --shards shards/ --num-workers 2

On a cluster (the driver joins it through RAY_ADDRESS, which ray job submit sets):
    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python workflows/train.py --stage expert --shards /data/shards --num-workers 8 --use-gpu \\
            --storage-path /shared/ray_results --tracking-uri http://mlflow:5000

Continue an earlier run (same Ray run directory, same MLflow run):
    python workflows/train.py --stage expert --shards shards/ --run-name NAME --resume --max-steps 20000
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

# Run as a script (python workflows/train.py): make the repo importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lipsync.cli import HelpFormatter  # noqa: E402
from lipsync.errors import ConfigError, LipsyncError  # noqa: E402
from lipsync.training.schedule import LR_SCHEDULES  # noqa: E402
from pipelines.paths import resolve_path_args  # noqa: E402
from pipelines.train_expert import ExpertTrainConfig, train_expert  # noqa: E402

STAGES = ("expert", "generator")


def _resources(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"--worker-resources must be JSON, e.g. '{{\"slot\": 1}}' ({exc})")
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--worker-resources must be a JSON object")
    return value


def build_parser() -> argparse.ArgumentParser:
    d = ExpertTrainConfig(shards="")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--stage", choices=STAGES, required=True,
                   help="expert: the SyncNet lip-sync expert (first); generator: Wav2Lip + discriminator")
    p.add_argument("--shards", required=True, help="directory with {train,val}-NNNNNN.tar (workflows/preprocess.py)")
    m = p.add_argument_group("model and recipe (defaults: the paper's, as listed)")
    m.add_argument("--width", type=float, default=d.width, help="channel multiplier (1 = official)")
    m.add_argument("--face-size", type=int, default=d.face_size,
                   help="face crop size in px; the shards must hold crops of this size (--crop-size)")
    m.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch, split over workers")
    m.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate")
    m.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=d.lr_schedule,
                   help="constant (paper) or cosine decay to 2%% of --lr at --max-steps")
    m.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="linear warm-up steps")
    m.add_argument("--max-steps", type=int, default=d.max_steps, help="optimizer steps to train for")
    m.add_argument("--stop-at-val-accuracy", type=float, default=None,
                   help="end training once validation accuracy reaches this")
    m.add_argument("--min-offset", type=int, default=d.min_offset,
                   help="negatives take audio at least this many frames away (original: 1)")
    m.add_argument("--min-mel-distance", type=float, default=d.min_mel_distance,
                   help="negatives' audio must differ from the true window by this mean |mel| "
                        "difference (skips silence-vs-silence pairs; 0 = original sampling)")
    m.add_argument("--augment", action="store_true", help="sync-preserving augmentation (off = paper parity)")
    data = p.add_argument_group("data")
    data.add_argument("--windows-per-clip", type=int, default=d.windows_per_clip,
                      help="training windows cut from each clip per pass (half positive, half negative)")
    data.add_argument("--shuffle-buffer", type=int, default=d.shuffle_buffer,
                      help="windows held per worker to shuffle across clips")
    data.add_argument("--loader-workers", type=int, default=d.loader_workers,
                      help="DataLoader processes per training worker (0: read in the training process)")
    data.add_argument("--val-windows-per-clip", type=int, default=d.val_windows_per_clip,
                      help="fixed validation windows per val clip")
    data.add_argument("--val-max-clips", type=int, default=d.val_max_clips,
                      help="validate on at most this many val clips (bounds time and memory)")
    data.add_argument("--seed", type=int, default=d.seed, help="seed of initialisation and window sampling")
    data.add_argument("--manifest", default=None, help="default: <shards>/manifest.parquet")
    cad = p.add_argument_group("cadence")
    cad.add_argument("--log-every", type=int, default=d.log_every, help="steps between logged training metrics")
    cad.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help="also validates")
    cad.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints,
                     help="Ray Train checkpoints kept on disk (MLflow keeps every one)")
    sc = p.add_argument_group("scaling and fault tolerance")
    sc.add_argument("--num-workers", type=int, default=d.num_workers, help="DDP training workers (one per GPU)")
    sc.add_argument("--use-gpu", action="store_true", help="one GPU per worker, NCCL (default: CPU, gloo)")
    sc.add_argument("--cpus-per-worker", type=float, default=d.cpus_per_worker,
                    help="CPUs Ray reserves per worker (also its torch threads)")
    sc.add_argument("--worker-resources", type=_resources, default={},
                    help="extra Ray resources per worker as JSON, e.g. to pin workers to nodes")
    sc.add_argument("--max-failures", type=int, default=d.max_failures,
                    help="restarts from the last checkpoint after a lost worker before giving up")
    sc.add_argument("--fail-at-step", type=int, default=None, help=argparse.SUPPRESS)  # fault-injection tests
    bk = p.add_argument_group("tracking")
    bk.add_argument("--storage-path", default=d.storage_path, help="Ray Train run storage")
    bk.add_argument("--run-name", default=None, help="Ray run folder and MLflow run name (default: expert-<time>)")
    bk.add_argument("--resume", action="store_true", help="continue --run-name (same MLflow run)")
    bk.add_argument("--tracking-uri", default=None, help="MLflow server; default MLFLOW_TRACKING_URI or ./mlruns.db")
    bk.add_argument("--experiment", default=d.experiment, help="MLflow experiment")
    bk.add_argument("--no-register", dest="register", action="store_false",
                    help="do not register the best checkpoint in the MLflow model registry")
    bk.add_argument("--no-system-metrics", dest="system_metrics", action="store_false",
                    help="do not log CPU/GPU/memory use to MLflow")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    resolve_path_args(args, "shards", "manifest", "storage_path")  # workers do not share our working dir
    try:
        if args.stage == "generator":
            raise ConfigError("--stage generator is not implemented yet (next issue); only --stage expert trains")
        if args.resume and not args.run_name:
            raise ConfigError("--resume needs --run-name of the run to continue")
        values = {k: v for k, v in vars(args).items() if k != "stage"}
        result = train_expert(ExpertTrainConfig(**values))
    except LipsyncError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(asdict(result), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
