"""Train a stage of the model from preprocessed shards (Ray Train + MLflow).

Local (starts a private Ray cluster on 127.0.0.1, logs to ./mlruns.db):
    python workflows/train.py --stage expert --shards shards/ --num-workers 2

On a cluster (the driver joins it through RAY_ADDRESS, which ray job submit sets):
    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python workflows/train.py --stage expert --shards /data/shards --num-workers 8 --use-gpu \\
            --storage-path /shared/ray_results --tracking-uri http://mlflow:5000

Continue an earlier run (same Ray run directory, same MLflow run):
    python workflows/train.py --stage expert --shards shards/ --run-name NAME --resume --max-steps 20000

Train the generator (Wav2Lip + visual-quality GAN) judged by a registered expert, or
fine-tune the official weights on your own speaker's shards:
    python workflows/train.py --stage generator --shards shards/ --expert models:/lipsync-expert@candidate
    python workflows/train.py --stage generator --shards my_speaker/ --expert lipsync_expert.pth \
        --init wav2lip_gan.pth --init-disc disc.pth --max-steps 3000
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
from lipsync.training import RECIPES  # noqa: E402
from lipsync.training.generator import EXPERT_BN_MODES  # noqa: E402
from lipsync.training.schedule import LR_SCHEDULES  # noqa: E402
from pipelines.train_config import (  # noqa: E402
    STAGE_TABLE,
    CadenceConfig,
    DataConfig,
    TrackingConfig,
    TrainConfig,
    WorkersConfig,
)
from pipelines.paths import resolve_path_args  # noqa: E402
from pipelines.train_run import run_training  # noqa: E402

STAGES = tuple(STAGE_TABLE)


def _resources(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"--worker-resources must be JSON, e.g. '{{\"slot\": 1}}' ({exc})")
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--worker-resources must be a JSON object")
    return value


class _StageGroup:
    """An argument group that remembers its flags (argparse keeps them private)."""

    def __init__(self, parser: argparse.ArgumentParser, title: str):
        self.group, self.actions = parser.add_argument_group(title), []

    def add_argument(self, *args, **kwargs) -> argparse.Action:
        self.actions.append(self.group.add_argument(*args, **kwargs))
        return self.actions[-1]


def build_parser() -> argparse.ArgumentParser:
    # Flags map 1:1 to TrainConfig leaves; recipe flags default to None = the stage's default.
    ex, gen = RECIPES["expert"](), RECIPES["generator"]()
    d, c, w, t = DataConfig(shards=""), CadenceConfig(), WorkersConfig(), TrackingConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--stage", choices=STAGES, required=True,
                   help="expert: the SyncNet lip-sync expert (first); generator: Wav2Lip + discriminator, judged by the expert")
    p.add_argument("--shards", required=True, help="directory with {train,val}-NNNNNN.tar (workflows/preprocess.py)")
    m = p.add_argument_group("model and recipe, both stages (defaults: the paper's, per stage)")
    m.add_argument("--width", type=float, default=None, help="channel multiplier (1 = official)")
    m.add_argument("--face-size", type=int, default=None, help="face crop size (96 = official; shards must match)")
    m.add_argument("--batch-size", type=int, default=None,
                   help=f"global batch, split over workers (expert {ex.batch_size}, generator {gen.batch_size})")
    m.add_argument("--lr", type=float, default=None, help=f"learning rate (default: {ex.lr})")
    m.add_argument("--T", type=int, default=None, help="frames per window (5)")
    m.add_argument("--max-steps", type=int, default=c.max_steps, help="optimizer steps to train for")
    m.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=None,
                   help="constant (paper) or cosine decay to 2%% of --lr (and --disc-lr) at --max-steps")
    m.add_argument("--warmup-steps", type=int, default=None, help="linear warm-up steps")
    m.add_argument("--init", default=None,
                   help="start from these weights: our checkpoint, the official lipsync_expert.pth / wav2lip.pth / "
                        "wav2lip_gan.pth, or models:/NAME@ALIAS (fine-tuning)")
    m.add_argument("--trust-checkpoints", action="store_true",
                   help="allow --init/--expert files that contain pickled code (only for files you trust)")
    e = _StageGroup(p, "expert stage")
    e.add_argument("--stop-at-val-accuracy", type=float, default=None,
                   help="end training once validation accuracy reaches this")
    e.add_argument("--min-offset", type=int, default=None,
                   help=f"negatives take audio at least this many frames away (default {ex.min_offset}; original: 1)")
    e.add_argument("--min-mel-distance", type=float, default=None,
                   help="negatives' audio must differ from the true window by this mean |mel| "
                        f"difference (default {ex.min_mel_distance}; skips silence-vs-silence pairs; 0 = original)")
    e.add_argument("--augment", action="store_true", default=None,
                   help="sync-preserving augmentation (off = paper parity)")
    g = _StageGroup(p, "generator stage")
    g.add_argument("--expert", default=None,
                   help=f"the frozen lip-sync expert: file, runs:/ or models:/ URI (default {gen.expert}); "
                        "an alias is pinned to its version at the start of the run")
    g.add_argument("--expert-bn", choices=EXPERT_BN_MODES, default=None,
                   help="eval: frozen BatchNorm statistics (default); batch: the original's batch statistics")
    g.add_argument("--init-disc", default=None, help="start the discriminator from these weights (fine-tuning)")
    g.add_argument("--no-gan", dest="gan", action="store_false", default=None,
                   help="plain Wav2Lip: no visual-quality discriminator")
    g.add_argument("--min-channels", type=int, default=None,
                   help=f"narrowest generator layer below --width 1 (default {gen.min_channels}; "
                        "an --init file brings its own)")
    g.add_argument("--disc-width", type=float, default=None, help="discriminator channel multiplier (default --width)")
    g.add_argument("--disc-lr", type=float, default=None, help=f"discriminator learning rate (default {gen.disc_lr})")
    g.add_argument("--beta1", type=float, default=None, help="Adam beta1 (default 0.5; 0.9 with --no-gan)")
    g.add_argument("--beta2", type=float, default=None, help=f"Adam beta2 (default {gen.beta2})")
    g.add_argument("--disc-weight", type=float, default=None, help=f"adversarial loss weight (default {gen.disc_weight})")
    g.add_argument("--sync-weight", type=float, default=None,
                   help="expert sync loss weight once switched on (default 0.03; 0.01 with --no-gan)")
    g.add_argument("--sync-threshold", type=float, default=None,
                   help=f"switch the sync loss on once validation sync loss < this (default {gen.sync_threshold})")
    data = p.add_argument_group("data")
    data.add_argument("--windows-per-clip", type=int, default=d.windows_per_clip,
                      help="training windows cut from each clip per pass")
    data.add_argument("--shuffle-buffer", type=int, default=d.shuffle_buffer,
                      help="windows mixed before batching (default: expert 2048, generator 256)")
    data.add_argument("--loader-workers", type=int, default=d.loader_workers,
                      help="DataLoader processes per training worker (0: read in the training process)")
    data.add_argument("--val-windows-per-clip", type=int, default=d.val_windows_per_clip,
                      help="fixed validation windows per val clip")
    data.add_argument("--val-max-clips", type=int, default=d.val_max_clips,
                      help="validate on at most this many val clips (bounds time and memory)")
    data.add_argument("--seed", type=int, default=d.seed, help="seed of initialisation and window sampling")
    data.add_argument("--manifest", default=None, help="default: <shards>/manifest.parquet")
    cad = p.add_argument_group("cadence")
    cad.add_argument("--log-every", type=int, default=c.log_every, help="steps between logged training metrics")
    cad.add_argument("--checkpoint-every", type=int, default=c.checkpoint_every,
                     help="steps between checkpoints; each one also validates")
    cad.add_argument("--keep-checkpoints", type=int, default=c.keep_checkpoints,
                     help="Ray Train checkpoints kept for failure restore (MLflow keeps every one)")
    sc = p.add_argument_group("scaling and fault tolerance")
    sc.add_argument("--num-workers", type=int, default=w.num_workers, help="Ray Train workers (DDP ranks)")
    sc.add_argument("--use-gpu", action="store_true", help="one GPU per worker (NCCL, bf16 autocast)")
    sc.add_argument("--cpus-per-worker", type=float, default=w.cpus_per_worker,
                    help="CPUs reserved per worker (also its torch threads on CPU)")
    sc.add_argument("--worker-resources", type=_resources, default={},
                    help="extra Ray resources per worker as JSON, e.g. to pin workers to nodes")
    sc.add_argument("--max-failures", type=int, default=w.max_failures,
                    help="worker failures restored from the last checkpoint before the run fails")
    sc.add_argument("--fail-at-step", type=int, default=None, help=argparse.SUPPRESS)  # fault-injection tests
    bk = p.add_argument_group("tracking")
    bk.add_argument("--storage-path", default=t.storage_path,
                    help="Ray Train run storage: a folder or s3:// / gs:// URI")
    bk.add_argument("--run-name", default=None, help="name of the run (default: STAGE-DATE-TIME)")
    bk.add_argument("--resume", action="store_true", help="continue --run-name (same MLflow run)")
    bk.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlruns.db)")
    bk.add_argument("--experiment", default=None, help="default: lipsync-expert / lipsync-generator")
    bk.add_argument("--no-register", dest="register", action="store_false",
                    help="do not register the best checkpoint in the MLflow model registry")
    bk.add_argument("--no-system-metrics", dest="system_metrics", action="store_false",
                    help="do not log CPU/GPU/memory use to MLflow")
    # A stage's own flags, so that one given to the other stage is an error, not silently ignored.
    p.stage_flags = {"expert": e.actions, "generator": g.actions}
    return p


def check_stage_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse a flag that only the other stage reads (e.g. --min-offset with --stage generator)."""
    for stage, actions in parser.stage_flags.items():
        if stage == args.stage:
            continue
        given = [a.option_strings[0] for a in actions if getattr(args, a.dest) is not None]
        if given:
            raise ConfigError(f"{', '.join(given)}: only --stage {stage} reads {'these' if len(given) > 1 else 'this'}; "
                              f"--stage {args.stage} would ignore {'them' if len(given) > 1 else 'it'}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    resolve_path_args(args, "shards", "manifest", "storage_path")  # workers do not share our working dir
    try:
        check_stage_flags(parser, args)
        if args.resume and not args.run_name:
            raise ConfigError("--resume needs --run-name of the run to continue")
        result = run_training(TrainConfig.from_flat(args.stage, vars(args)))
    except LipsyncError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(asdict(result), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
