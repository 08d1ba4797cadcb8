"""Evaluate a model on the test split, log it in MLflow, and optionally promote it to `champion`.

    python workflows/evaluate.py --model models:/lipsync-expert@candidate --shards shards/
    python workflows/evaluate.py --model models:/lipsync-expert@candidate --shards shards/ \\
        --promote --threshold test_accuracy=0.7 --margin 0.01
    python workflows/evaluate.py --model models:/wav2lip@candidate --shards shards/ \\
        --judge-model models:/lipsync-expert@champion \\
        [--fid-weights pt_inception-2015-12-05-6726825d.pth]

Exit codes: 0 evaluated (and promoted when --promote); 3 evaluated but the gate kept the
alias where it was (the reason is printed); 2 bad input or flags.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lipsync.errors import LipsyncError  # noqa: E402
from pipelines.evaluate.config import EvalConfig  # noqa: E402
from pipelines.evaluate.driver import run_evaluation  # noqa: E402

EXIT_KEPT = 3


def _threshold(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        if not sep or not name:
            raise ValueError
        return name.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--threshold {text!r}: expected METRIC=VALUE, e.g. test_accuracy=0.7")


def build_parser() -> argparse.ArgumentParser:
    d = EvalConfig(model="", shards="")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION or a checkpoint file")
    p.add_argument("--shards", required=True, help="directory with {split}-NNNNNN.tar shards")
    p.add_argument("--split", default=d.split)
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or ./mlruns.db)")
    p.add_argument("--experiment", default=d.experiment)
    p.add_argument("--max-clips", type=int, help="evaluate only the first N clips (smoke tests)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device)
    e = p.add_argument_group("expert evaluation")
    e.add_argument("--windows-per-clip", type=int, default=d.windows_per_clip)
    e.add_argument("--shifts", type=int, nargs="+", default=list(d.shifts),
                   help="audio shifts in frames for offset recovery (+N = audio leads)")
    g = p.add_argument_group("generator evaluation")
    g.add_argument("--judge-model", help="expert judging sync (default models:/lipsync-expert@champion)")
    g.add_argument("--fid-weights", help="pytorch-fid Inception weights: compute FID")
    g.add_argument("--num-cpus", type=int, help="CPUs of the local Ray cluster when none is running")
    gate = p.add_argument_group("promotion gate")
    gate.add_argument("--promote", action="store_true", help="move alias 'champion' when every rule holds")
    gate.add_argument("--threshold", type=_threshold, action="append", default=[],
                      help="METRIC=VALUE: at least VALUE (higher-is-better metrics) or at most (lower-is-better)")
    gate.add_argument("--margin", type=float, default=d.margin,
                      help="allowed loss vs the current champion on each compared metric (absolute)")
    gate.add_argument("--compare", nargs="+", help="metrics compared with the champion (default: the evaluator's)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = {f.name for f in fields(EvalConfig)}
    values = {k: v for k, v in vars(args).items() if k in names and v is not None}
    values["shifts"] = tuple(args.shifts)
    values["thresholds"] = dict(args.threshold)
    values.pop("threshold", None)
    if args.compare:
        values["compare"] = tuple(args.compare)
    try:
        result = run_evaluation(EvalConfig(**values))
    except LipsyncError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    who = f"{result.model_name} version {result.version}" if result.version else args.model
    print(f"[evaluate] {who}: evaluation run {result.run_id} (test set {result.test_set})")
    width = max(len(k) for k in result.metrics)
    for key, value in sorted(result.metrics.items()):
        print(f"  {key:<{width}}  {value:.4f}")
    if result.decision is not None:
        d = result.decision
        print(f"[gate] {d['decision']}: {d['reason']}")
        for metric, fig in d["compared"].items():
            print(f"  {metric}: candidate {fig['candidate']:.4f} vs champion {fig['champion']:.4f} "
                  f"(margin {fig['margin']:g}) {'ok' if fig['ok'] else 'WORSE'}")
        print(json.dumps(result.to_dict()))
        return 0 if d["decision"] == "promoted" else EXIT_KEPT
    print(json.dumps(result.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
