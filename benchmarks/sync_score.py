"""`lipsync sync-score` speed on CPU: seconds per minute of video, for both judges and both crops.

    python benchmarks/sync_score.py [--seconds 20] [--work DIR] [--threads N]

A synthetic talking-face clip (lipsync.synth, 160x160, 25 fps) is looped to --seconds and
written once to --work. Judges have random weights (speed does not depend on their values):
SyncNet v2 in the public layout (13.6 M parameters, 224x224 input) and our expert at full
width (official size, 96 px faces). Each run is timed end to end (decode, crop, MFCC/mel,
network, protocol) and reported as seconds per minute of video; the judge ratio is printed
beside. CPU flags and the load average are printed with the figures: on a shared machine
the wall times are noisy, the CPU seconds less so.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


def cpu_description() -> str:
    model, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "unknown CPU":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    have = ", ".join(f for f in FLAGS if f in flags) or "none of " + ", ".join(FLAGS)
    return f"{model}; {os.cpu_count()} logical CPUs; flags: {have}"


def make_clip(work: Path, seconds: float) -> Path:
    from lipsync.synth import make_corpus
    from lipsync.video import read_video, write_video

    out = work / f"clip_{seconds:g}s.mp4"
    if out.exists():
        return out
    corpus = work / "corpus"
    if not corpus.exists():
        make_corpus(corpus, speakers=1, clips_per_speaker=1, seed=3, layout="lrs2")
    src = next(corpus.rglob("*.mp4"))
    video = read_video(src, fps=25.0, require_audio=True)
    n = int(seconds * 25)
    reps = -(-n // len(video.frames))
    frames = np.concatenate([video.frames] * reps)[:n]
    audio = np.concatenate([video.audio[: len(video.frames) * 640]] * reps)[: n * 640]
    write_video(out, frames, 25.0, audio=audio)
    return out


def judges(work: Path):
    from lipsync.checkpoints import ModelConfig, save_checkpoint
    from lipsync.metrics.sync_score import make_judge
    from lipsync.metrics.syncnet_v2 import SyncNetV2
    from lipsync.models import SyncNet

    weights = work / "syncnet_v2_random.model"
    if not weights.exists():
        torch.save({k: v for k, v in SyncNetV2().state_dict().items() if not k.endswith("num_batches_tracked")},
                   weights)
    expert = work / "expert_random.safetensors"
    if not expert.exists():
        save_checkpoint(expert, SyncNet(width=1.0), ModelConfig(kind="expert"))
    return {"syncnet-v2": make_judge("syncnet-v2", weights=str(weights)),
            "expert": make_judge("expert", model=str(expert))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=20.0, help="video length scored (figures scaled to 1 min)")
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "lipsync-bench-sync"))
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    from lipsync.metrics.sync_score import score_video

    clip = make_clip(work, args.seconds)
    print(f"CPU: {cpu_description()}; torch threads {torch.get_num_threads()}")
    print(f"clip: {clip} ({args.seconds:g} s, 160x160, 25 fps)")
    per_minute = {}
    for crop in ("none", "face"):
        for name, judge in judges(work).items():
            wall, cpu = time.perf_counter(), time.process_time()
            score = score_video(clip, judge, crop=crop)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            scale = 60.0 / args.seconds
            per_minute[(name, crop)] = (wall * scale, cpu * scale)
            print(f"judge {name:<10} crop {crop:<4}: {wall * scale:7.1f} s wall / {cpu * scale:7.1f} s CPU per minute "
                  f"of video ({score.frames} windows; load average {' '.join(f'{x:.1f}' for x in os.getloadavg())})",
                  flush=True)
    for crop in ("none", "face"):
        (sw, sc), (ew, ec) = per_minute[("syncnet-v2", crop)], per_minute[("expert", crop)]
        print(f"crop {crop}: syncnet-v2 / expert = {sw / ew:.2f}x wall, {sc / ec:.2f}x CPU")


if __name__ == "__main__":
    main()
