"""`lipsync synth` (write a synthetic corpus) and `lipsync synth-preview` (picture of a clip)."""

from __future__ import annotations

import argparse

from lipsync.synth.corpus import LAYOUTS, make_corpus, parse_seconds, parse_size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True,
                        help="corpus root folder: new, empty, or holding a corpus written before (replaced)")
    parser.add_argument("--speakers", type=int, default=4, help="number of speakers (default 4)")
    parser.add_argument("--clips-per-speaker", type=int, default=6, help="clips per speaker (default 6)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same corpus")
    parser.add_argument("--layout", choices=LAYOUTS, default="lrs2",
                        help="lrs2: main/<spk>/<clip>.mp4 + train/val/test.txt; "
                             "voxceleb2: dev/mp4/idNNNNN/<video>/<clip>.mp4; folder: flat <spk>_<clip>.mp4")
    parser.add_argument("--size", default="160x160", help="frame size WxH (default 160x160, as LRS2)")
    parser.add_argument("--seconds", default="2-4", help="clip length range in seconds, A-B (default 2-4)")
    parser.add_argument("--fps", type=float, default=25.0, help="frame rate (default 25; 30 exercises resampling)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: 2 for 64+ clips, else 1)")


def run(args: argparse.Namespace) -> int:
    info = make_corpus(
        args.out, speakers=args.speakers, clips_per_speaker=args.clips_per_speaker, seed=args.seed,
        layout=args.layout, size=parse_size(args.size), seconds=parse_seconds(args.seconds), fps=args.fps,
        workers=args.workers,
    )
    counts = ", ".join(f"{split} {len(entries)}" for split, entries in info.splits.items())
    print(f"wrote {len(info.files)} clip(s) of {len(info.speakers)} speaker(s) to {info.root} "
          f"({info.layout} layout; {counts})")
    return 0


def add_preview_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("clip", help="an mp4 clip (e.g. from lipsync synth)")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--frames", type=int, default=10, help="frames in the strip (default 10)")
    parser.add_argument("--step", type=int, default=3, help="take every STEP-th frame (default 3)")
    parser.add_argument("--start", type=float, default=None,
                        help="start time in seconds (default: where the speech starts)")


def run_preview(args: argparse.Namespace) -> int:
    from lipsync.synth.preview import save_preview

    path = save_preview(args.clip, args.out, n_frames=args.frames, step=args.step, start=args.start)
    print(f"wrote {path}")
    return 0
