"""Peak memory against length: `lipsync sync-score`, `lipsync compare` and `lipsync infer` on a
short and a long 720p video, side by side with their ratio (the goal: flat, within 10%).

    python benchmarks/memory_length.py [--minutes 1,10] [--work DIR] [--compare strip]

Each command runs in a fresh process (``python -m lipsync ...``), which reports its RSS
high-water mark (VmHWM; not ru_maxrss, which Linux carries over fork + exec from a big
parent). The videos are synthetic 1280x720 25 fps H.264 (a still grey frame with a moving
block, x264 ultrafast, so a 10-minute one is quick to make) with a pulsing 140 Hz tone, made
once into --work. Models have random weights (memory does not depend on their values) and are
small so that 10 minutes fit a 2-core machine:

* sync-score: the expert judge at width 1/16, ``--crop none`` (face detection on every 720p
  frame would take longer than the run; it keeps one box per frame either way);
* compare: ``--strip`` by default (decoding only); ``--compare strip,side-by-side,undubbed``
  adds the outputs that re-encode 720p (slow at 10 minutes);
* infer: the video's own audio, the Wav2Lip generator at width 1/4, ``--resize-factor 4``
  (frames are decoded at 720p, then cut to 320x180 before anything else, as the original
  flag does) and a fixed ``--box`` (no detection), PyTorch fp32.

CPU, its features and the load average are printed first: on a shared machine the times are
noisy; the memory figures are not.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

WIDTH, HEIGHT, FPS, SR = 1280, 720, 25, 16000


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def cpu_line() -> str:
    import torch

    from lipsync.inference.cpu_features import cpu_features

    feats = cpu_features()
    return (f"CPU {feats.summary()}; {os.cpu_count()} cores, torch {torch.get_num_threads()} threads; "
            f"native bf16: {feats.native_bf16}, VNNI: {feats.vnni}; load average {load()}")


def make_clip(path: Path, minutes: float) -> Path:
    """1280x720 25 fps: grey with a 64 px block moving along a row; a 140 Hz tone on 3 times a second."""
    import numpy as np

    from lipsync.video import VideoWriter

    if path.exists():
        return path
    n = int(round(minutes * 60 * FPS))
    frame = np.full((HEIGHT, WIDTH, 3), 110, np.uint8)
    samples_per_frame = SR // FPS
    t = np.arange(samples_per_frame) / SR
    with VideoWriter(path, FPS, WIDTH, HEIGHT, preset="ultrafast", crf=30) as writer:
        for i in range(n):
            x = (8 * i) % (WIDTH - 64)
            frame[300:364, x:x + 64] = 230
            writer.write(frame)
            frame[300:364, x:x + 64] = 110
            ti = t + i / FPS
            writer.write_audio((0.3 * np.sin(2 * np.pi * 140 * ti) * (np.sin(2 * np.pi * 3 * ti) > 0)).astype(np.float32))
    return path


def make_models(work: Path) -> tuple[Path, Path]:
    import torch

    from lipsync.checkpoints import ModelConfig, save_checkpoint
    from lipsync.models import SyncNet, Wav2Lip

    torch.manual_seed(0)
    expert, generator = work / "expert_w0.0625.safetensors", work / "wav2lip_w0.25.safetensors"
    if not expert.exists():
        save_checkpoint(expert, SyncNet(width=0.0625).eval(), ModelConfig(kind="expert", width=0.0625))
    if not generator.exists():
        save_checkpoint(generator, Wav2Lip(width=0.25).eval(), ModelConfig(kind="wav2lip", width=0.25))
    return expert, generator


def commands(clip: Path, work: Path, expert: Path, generator: Path, compare: list[str]) -> dict[str, list[str]]:
    tag = clip.stem
    flags = {"strip": ["--strip", str(work / f"{tag}_strip.png")],
             "side-by-side": ["--side-by-side", str(work / f"{tag}_sbs.mp4")],
             "undubbed": ["--undubbed", str(work / f"{tag}_undubbed.mp4")]}
    return {
        "sync-score": ["sync-score", str(clip), "--judge", "expert", "--model", str(expert), "--crop", "none", "--json"],
        "compare": ["compare", "--input", str(clip), "--output", str(clip), *[a for c in compare for a in flags[c]]],
        "infer": ["infer", "--face", str(clip), "--audio", str(clip), "--out", str(work / f"{tag}_infer.mp4"),
                  "--model", str(generator), "--resize-factor", "4", "--box", "0", "180", "0", "320",
                  "--precision", "fp32", "--no-progress"],
    }


def child_main(argv: list[str]) -> None:
    """Runs in the fresh process: `lipsync argv...`, then its VmHWM as the last stderr line."""
    import runpy

    def report():
        with open("/proc/self/status") as f:
            hwm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
        print(json.dumps({"vmhwm": hwm}), file=sys.stderr, flush=True)

    atexit.register(report)
    sys.argv = ["lipsync", *argv]
    runpy.run_module("lipsync", run_name="__main__")


def run_case(argv: list[str]) -> tuple[int, float]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", *argv], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    seconds = time.perf_counter() - started
    last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
    if proc.returncode != 0 or not last.startswith("{"):
        raise SystemExit(f"`lipsync {' '.join(argv[:1])}` failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(last)["vmhwm"], seconds


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main(sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", default="1,10", help="the short and the long video's length (default 1,10)")
    p.add_argument("--work", default="/tmp/lipsync-bench-memory-length", type=Path)
    p.add_argument("--compare", default="strip", help="compare outputs: strip, side-by-side, undubbed (comma-separated)")
    p.add_argument("--commands", default="sync-score,compare,infer")
    args = p.parse_args()
    short, long = (float(m) for m in args.minutes.split(","))
    args.work.mkdir(parents=True, exist_ok=True)
    print(cpu_line(), flush=True)
    clips = {}
    for minutes in (short, long):
        started = time.perf_counter()
        clips[minutes] = make_clip(args.work / f"clip_{minutes:g}min_720p.mp4", minutes)
        print(f"clip {clips[minutes]} ({minutes:g} min, {WIDTH}x{HEIGHT}, {FPS} fps): ready in "
              f"{time.perf_counter() - started:.0f} s", flush=True)
    expert, generator = make_models(args.work)
    compare = [c.strip() for c in args.compare.split(",") if c.strip()]
    print(f"\npeak RSS (VmHWM), fresh process per run: {short:g} min vs {long:g} min of 720p; load {load()}")
    print(f"{'command':<12} {f'{short:g} min':>12} {f'{long:g} min':>12} {'ratio':>7}   wall seconds")
    for name in [c.strip() for c in args.commands.split(",")]:
        figures = {m: run_case(commands(clips[m], args.work, expert, generator, compare)[name]) for m in (short, long)}
        (a, ta), (b, tb) = figures[short], figures[long]
        print(f"{name:<12} {a / 2**20:>8.1f} MiB {b / 2**20:>8.1f} MiB {b / a:>7.3f}   {ta:.0f} / {tb:.0f}"
              f"{'   (compare: ' + ', '.join(compare) + ')' if name == 'compare' else ''}", flush=True)
    print(f"target: ratio within 1.10 (load average now {load()})")


if __name__ == "__main__":
    main()
