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
import signal
import sys
from dataclasses import asdict
from pathlib import Path

# Run as a script (python workflows/train.py): make the repo importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lipsync.cli import HelpFormatter  # noqa: E402
from lipsync.errors import ConfigError, LipsyncError  # noqa: E402
from lipsync import terminate  # noqa: E402
from pipelines.common.console import TRAINING_PROGRESS, quiet_console  # noqa: E402
from pipelines.common.paths import resolve_path_args  # noqa: E402
from pipelines.train.config import TrainConfig  # noqa: E402
from pipelines.train.driver import run_training  # noqa: E402
from pipelines.train.flags import add_stage_flags, check_stage_flags  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    # Flags map 1:1 to TrainConfig leaves, built from the fields (pipelines/train/flags.py).
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_stage_flags(p)
    p.add_argument("--verbose", action="store_true",
                   help="print Ray's and MLflow's own output here too (default: a log file, named once)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    resolve_path_args(args, "shards", "manifest", "storage_path")  # workers do not share our working dir
    with quiet_console("train", verbose=args.verbose, progress=TRAINING_PROGRESS, label=f"[{args.stage}] step"):
        try:
            check_stage_flags(parser, args)
            if args.resume and not args.run_name:
                raise ConfigError("--resume needs --run-name of the run to continue")
            with terminate.sigterm_raises():  # SIGTERM ends the MLflow run KILLED, as Ctrl-C does
                result = run_training(TrainConfig.from_flat(args.stage, vars(args)))
        except LipsyncError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except (KeyboardInterrupt, SystemExit) as exc:
            sigterm = terminate.received()
            if not (sigterm or isinstance(exc, KeyboardInterrupt)):
                raise  # an argparse exit, not a stop
            print(f"{'terminated' if sigterm else 'interrupted'}: the MLflow run is marked KILLED "
                  "(--resume with its --run-name continues it)", file=sys.stderr)
            return 128 + (signal.SIGTERM if sigterm else signal.SIGINT)
        print(json.dumps(asdict(result), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
