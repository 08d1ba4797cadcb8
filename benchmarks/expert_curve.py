"""Longer expert run: train on a bigger synthetic corpus until validation accuracy >= 90%.

Builds (or reuses, with --workdir) a synthetic corpus and its shards, trains the expert
with Ray Train, logs everything to MLflow (local SQLite under the workdir unless
--tracking-uri), and prints the validation curve (step, seconds, val loss/accuracy, the
hardest offset buckets). The curve PNG is in the run's artifacts (curves/expert_curve.png).

The registered best checkpoint (chosen on val) is then scored on the *test* split — speakers
used neither for training nor for choosing the checkpoint — twice: with the training
sampling (negatives that sound different) and with the original's sampling
(``min_mel_distance=0``, silence-vs-silence negatives included). Both are printed and logged
to the run as test_accuracy / test_original_sampling_accuracy.

    python benchmarks/expert_curve.py --workdir /tmp/expert_curve            # defaults below
    python benchmarks/expert_curve.py --workdir W --speakers 24 --clips 8 --width 0.25 --max-steps 8000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lipsync.data.windows import DEFAULT_MIN_MEL_DISTANCE, DEFAULT_MIN_OFFSET  # noqa: E402
from lipsync.training.schedule import LR_SCHEDULES  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="expert_curve_work")
    p.add_argument("--speakers", type=int, default=16)
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--width", type=float, default=0.125)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-schedule", default="cosine", choices=LR_SCHEDULES)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--min-offset", type=int, default=DEFAULT_MIN_OFFSET)
    p.add_argument("--min-mel-distance", type=float, default=DEFAULT_MIN_MEL_DISTANCE)
    p.add_argument("--val-windows-per-clip", type=int, default=64, help="64 x 16 val clips = 1,024 pairs")
    p.add_argument("--max-steps", type=int, default=6000)
    p.add_argument("--checkpoint-every", type=int, default=250)
    p.add_argument("--target", type=float, default=0.90, help="stop once val accuracy reaches this")
    p.add_argument("--keep-going", action="store_true", help="train all --max-steps even after the target")
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--run-name", default=None)
    args = p.parse_args()

    from mlflow import MlflowClient

    from lipsync.synth import make_corpus
    from pipelines.preprocess.driver import PreprocessConfig, run_preprocess
    from pipelines.train.config import TrainConfig
    from pipelines.train.driver import run_training

    work = Path(args.workdir).resolve()
    corpus, shards = work / "corpus", work / "shards"
    if not (shards / "summary.json").exists():
        if not (corpus / "synth.json").exists():
            make_corpus(corpus, speakers=args.speakers, clips_per_speaker=args.clips, seed=11, layout="lrs2")
        run_preprocess(PreprocessConfig(input=str(corpus), output=str(shards), layout="lrs2", num_cpus=2))
    tracking_uri = args.tracking_uri or f"sqlite:///{work / 'mlflow.db'}"
    started = time.time()
    result = run_training(
        TrainConfig.from_flat("expert", dict(
            shards=str(shards), width=args.width, batch_size=args.batch_size, lr=args.lr,
            lr_schedule=args.lr_schedule, warmup_steps=args.warmup_steps,
            min_offset=args.min_offset, min_mel_distance=args.min_mel_distance,
            max_steps=args.max_steps, log_every=50,
            checkpoint_every=args.checkpoint_every, stop_at_val_accuracy=None if args.keep_going else args.target,
            num_workers=args.num_workers, storage_path=str(work / "ray_results"),
            run_name=args.run_name or time.strftime("curve-%H%M%S"), tracking_uri=tracking_uri,
            experiment="lipsync-expert-curve", val_windows_per_clip=args.val_windows_per_clip,
        ))
    )
    wall = time.time() - started
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    acc = {m.step: m.value for m in client.get_metric_history(result.run_id, "val_accuracy")}
    loss = {m.step: m.value for m in client.get_metric_history(result.run_id, "val_loss")}
    near = {}
    for bucket in ("0", "2", "3", "4"):
        for m in client.get_metric_history(result.run_id, f"val_accuracy_offset_{bucket}"):
            near.setdefault(m.step, {})[bucket] = m.value
    print(f"\nrun {result.run_id} ({tracking_uri}), {wall / 60:.1f} min wall, final step {result.final_step}")
    print(f"{'step':>6} {'val_loss':>9} {'val_acc':>8}   acc at |offset| 0 / 2 / 3 / 4")
    for step in sorted(acc):
        n = near.get(step, {})
        offs = " / ".join(f"{n[b]:.2f}" if b in n else "  - " for b in ("0", "2", "3", "4"))
        print(f"{step:>6} {loss.get(step, float('nan')):>9.4f} {acc[step]:>8.3f}   {offs}")
    reached = [s for s in sorted(acc) if acc[s] >= args.target]
    print(f"best val accuracy {result.best_value:.3f} at step {result.best_step}; "
          f"target {args.target:.0%} {'reached at step ' + str(reached[0]) if reached else 'NOT reached'}; "
          f"registered version {result.model_version}")
    test = score_test_split(shards, result, args)
    for name, value in test.items():
        client.log_metric(result.run_id, name, value, step=result.final_step)
    print("held-out test split, registered checkpoint: " + ", ".join(f"{k} {v:.3f}" for k, v in test.items()))
    return 0 if reached else 1


def score_test_split(shards: Path, result, args) -> dict[str, float]:
    """Accuracy of the registered checkpoint on the test split, both negative samplings."""
    import torch

    from lipsync.checkpoints import load_model
    from lipsync.data.shard_stream import fixed_windows, list_shards
    from lipsync.data.windows import ExpertSampling
    from lipsync.training.expert import evaluate_expert, summarize_evaluation
    from lipsync.training import ExpertStage
    from lipsync.model_ref import fetch

    path = fetch(f"models:/{ExpertStage.registered_model}/{result.model_version}", tracking_uri=result.tracking_uri)
    model = load_model(path)[0]
    torch.set_num_threads(2)
    out = {}
    for name, distance in (("test", args.min_mel_distance), ("test_original_sampling", 0.0)):
        sampling = ExpertSampling(min_offset=args.min_offset, min_mel_distance=distance)
        windows = fixed_windows(list_shards(shards, "test"), args.val_windows_per_clip, 1, sampling)
        metrics = summarize_evaluation(evaluate_expert(model, windows, batch_size=128), prefix=name)
        out[f"{name}_accuracy"] = metrics[f"{name}_accuracy"]
        out[f"{name}_pairs"] = metrics[f"{name}_pairs"]
    return out


if __name__ == "__main__":
    sys.exit(main())
