"""`lipsync sync-score VIDEO [VIDEO ...]`: is this video in sync? (LSE-D, LSE-C, AV offset)

Offset sign: +N = the audio leads the picture by N frames (delay the audio by N to fix it),
-N = it lags (see lipsync.metrics.sync). Exit code 0 when every video was scored, 2 when any
failed (each failure is one line naming the file; the others are still scored).
"""

from __future__ import annotations

import argparse
import json
import sys

from lipsync.metrics.sync_score import CROPS, JUDGES, make_judge, score_videos
from lipsync.training.expert import DEFAULT_EXPERT


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("videos", nargs="+", metavar="VIDEO", help="video files with an audio track (25 fps ideal)")
    p.add_argument("--judge", choices=JUDGES, default="expert",
                   help="expert: our lip-sync expert (nothing to download); syncnet-v2: the public "
                        "evaluation SyncNet behind the papers' LSE-D/LSE-C (needs --weights)")
    p.add_argument("--weights", help="syncnet_v2.model for --judge syncnet-v2")
    p.add_argument("--model", default=DEFAULT_EXPERT,
                   help=f"expert checkpoint file or MLflow URI for --judge expert (default {DEFAULT_EXPERT})")
    p.add_argument("--crop", choices=CROPS, default="face",
                   help="face: detect, track and crop the face (real videos); none: whole frames "
                        "resized (face-centred test sets, as the LRS protocol)")
    p.add_argument("--json", action="store_true", help="one JSON object per video instead of a table")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1 …)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI for models:/ references")
    p.add_argument("--trust", action="store_true", help="allow pickled code in the expert checkpoint")


def run(args: argparse.Namespace) -> int:
    judge = make_judge(args.judge, weights=args.weights, model=args.model, device=args.device,
                       tracking_uri=args.tracking_uri, trust=args.trust)
    failed = 0
    if not args.json:
        print(f"{'video':<40} {'frames':>6} {'LSE-D':>8} {'LSE-C':>8} {'offset':>6}  judge={judge.name}")
    for result in score_videos(args.videos, judge, args.crop):
        if result.error is not None:
            failed += 1
            print(f"error: {result.error}", file=sys.stderr)
            if args.json:
                print(json.dumps(result.to_dict()), flush=True)
            continue
        s = result.score
        if args.json:
            print(json.dumps(result.to_dict()), flush=True)
        else:
            print(f"{result.video:<40} {s.frames:>6} {s.lse_d:>8.3f} {s.lse_c:>8.3f} {s.offset:>+6d}", flush=True)
    return 2 if failed else 0
