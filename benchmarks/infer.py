"""Inference speed and memory: `python benchmarks/infer.py [--skip-memory] [--work DIR]`.

Prints:
1. generator-only fps of the full-width Wav2Lip (random weights: speed does not depend on
   them) for fp32 / bf16, channels-last on/off, per batch size,
   and how far bf16 output is from fp32 (mean / max |diff| in 8-bit pixel levels);
2. end-to-end fps of `LipSyncer` on a 10 s 1280x720 25 fps clip (a real face photo moving
   across the frame, detection on at its defaults), with each stage's busy time, plus the
   same with detection on every frame and with a fixed box (no detection) for scale;
3. peak memory (RSS high-water mark, from ru_maxrss and from psutil sampling at 20 Hz) of
   one run on a 30 s and a 120 s 720p input, each in a fresh subprocess, and the ratio.

Inputs are generated once into --work (default /tmp/lipsync-bench-infer). Timings on a
shared machine are noisy; the script prints the load average next to them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

WIDTH, HEIGHT, FPS = 1280, 720, 25


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


# ------------------------------------------------------------------ inputs


def face_canvas() -> tuple[np.ndarray, np.ndarray]:
    from skimage import data

    face = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)[20:320, 80:380]  # head and shoulders
    face = cv2.resize(face, (560, 560), interpolation=cv2.INTER_CUBIC)  # face box ~170 px
    background = cv2.cvtColor(data.coffee(), cv2.COLOR_RGB2BGR)
    background = cv2.GaussianBlur(cv2.resize(background, (WIDTH, HEIGHT)), (0, 0), 6)
    return face, background


def make_clip(path: Path, seconds: float) -> Path:
    """A 720p clip of the face drifting across a background, with 16 kHz speech-like audio."""
    from lipsync.audio import SAMPLE_RATE
    from lipsync.video import VideoWriter

    if path.exists():
        return path
    face, background = face_canvas()
    n = int(round(seconds * FPS))
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    wav = (0.2 * (np.sin(2 * np.pi * 150 * t) + 0.4 * np.sin(2 * np.pi * 300 * t))
           * (np.sin(2 * np.pi * 2.7 * t) > 0) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
    tmp = path.with_suffix(".tmp.mp4")
    with VideoWriter(tmp, FPS, WIDTH, HEIGHT, crf=23, preset="ultrafast") as writer:
        writer.write_audio(wav)
        for i in range(n):
            x = int(360 + 300 * np.sin(2 * np.pi * i / (FPS * 8)))
            y = int(120 + 40 * np.sin(2 * np.pi * i / (FPS * 5)))
            frame = background.copy()
            frame[y:y + face.shape[0], x:x + face.shape[1]] = face
            writer.write(frame)
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------ generator only


def bench_generator(batch_sizes=(8, 16, 32), reps: int = 4) -> None:
    import torch

    from lipsync.inference.generator import FaceGenerator
    from lipsync.models import Wav2Lip

    torch.manual_seed(0)
    model = Wav2Lip().eval()
    for p in model.parameters():  # random weights in a range that keeps activations sane
        p.data.mul_(0.5)
    rng = np.random.default_rng(0)
    face, _ = face_canvas()
    crop = cv2.resize(face[60:300, 90:330], (96, 96))
    print(f"\n== generator only (full width, 96x96, {torch.get_num_threads()} threads; load {load()}); "
          f"2 idle cores give about 2000 / CPU-ms fps")
    variants = [("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)]
    outputs = {}
    for precision, cl in variants:
        gen = FaceGenerator(model, 96, "cpu", precision, channels_last=cl)
        row = []
        for b in batch_sizes:
            faces = np.repeat(crop[None], b, 0)
            mels = rng.uniform(-4, 0, (b, 80, 16)).astype(np.float32)
            gen(faces, mels)  # warm-up (oneDNN primitive creation)
            t0, c0 = time.perf_counter(), cpu_seconds()
            for _ in range(reps):
                out = gen(faces, mels)
            row.append((b * reps / (time.perf_counter() - t0), 1000 * (cpu_seconds() - c0) / (b * reps)))
            if b == batch_sizes[0]:
                outputs[(precision, cl)] = out.astype(np.float32)
        cells = "  ".join(f"B={b}: {f:5.1f} fps wall, {c:5.1f} CPU-ms/frame" for b, (f, c) in zip(batch_sizes, row))
        print(f"  {precision:5s} channels_last={str(cl):5s}  {cells}", flush=True)
    ref = outputs[("fp32", False)]
    for key, out in outputs.items():
        if key != ("fp32", False):
            d = np.abs(out - ref)
            print(f"  |{key[0]} cl={key[1]} - fp32| pixel levels: mean {d.mean():.3f}  max {d.max():.0f}")


# ------------------------------------------------------------------ end to end


def run_once(face: Path, audio: Path, out: Path, **overrides) -> dict:
    import torch

    from lipsync.inference import InferenceOptions, LipSyncer
    from lipsync.models import Wav2Lip

    torch.manual_seed(0)
    syncer = LipSyncer(Wav2Lip().eval(), InferenceOptions(progress=False, **overrides))
    cpu0 = cpu_seconds()
    result = syncer.sync(face, audio, out)
    cpu = cpu_seconds() - cpu0
    return {**result.to_dict(), "cpu_seconds": cpu,
            # What 2 idle cores would sustain if the stages overlapped perfectly: a bound that
            # does not depend on how many other jobs share the machine.
            "cpu_bound_fps_2_cores": 2 * result.n_frames / cpu}


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def bench_end_to_end(clip: Path, work: Path) -> None:
    # Warm-up on a 2 s clip: one-time costs (oneDNN primitive creation, dlib init, page cache)
    # would otherwise all land on the first case.
    warm = make_clip(work / "clip_2s.mp4", 2)
    run_once(warm, warm, work / "out.mp4")
    print(f"\n== end to end, 10 s 1280x720 @ 25 fps, full-width generator (load {load()})")
    cases = [
        ("defaults (detect every 5th on a 640-px copy)", {}),
        ("detect every 5th, whole frame (no region search)", {"detect_roi": False}),
        ("detect every frame, whole frame", {"detect_every": 1, "detect_roi": False}),
        ("fixed --box (no detection)", {"box": (224, 415, 550, 726)}),
        ("defaults, fp32", {"precision": "fp32"}),
        ("defaults, batch 32", {"wav2lip_batch_size": 32}),
    ]
    for name, overrides in cases:
        r = run_once(clip, clip, work / "out.mp4", **overrides)
        stages = ", ".join(f"{k} {v:.1f}s" for k, v in r["stage_seconds"].items())
        print(f"  {name:46s} {r['fps_end_to_end']:6.1f} fps wall, CPU {1000 * r['cpu_seconds'] / r['n_frames']:5.1f} "
              f"ms/frame -> {r['cpu_bound_fps_2_cores']:5.1f} fps on 2 idle cores  ({r['n_frames']} frames in "
              f"{r['seconds']:.1f}s; stage wall time: {stages}; detected {r['frames_detected']} frames; "
              f"{r['generator']['precision']}) load {load()}", flush=True)


# ------------------------------------------------------------------ memory


def _child(face: str, out: str) -> None:
    """Runs in a fresh process: one inference, RSS sampled at 20 Hz; prints JSON."""
    import psutil

    proc = psutil.Process()
    samples = [proc.memory_info().rss]
    done = threading.Event()

    def sample():
        while not done.wait(0.05):
            samples.append(proc.memory_info().rss)

    threading.Thread(target=sample, daemon=True).start()
    r = run_once(Path(face), Path(face), Path(out))
    done.set()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    quarters = [int(max(q)) for q in np.array_split(np.array(samples), 4)]  # peak per quarter of the run
    print(json.dumps({"peak_rss_sampled": max(samples), "ru_maxrss": maxrss, "fps": r["fps_end_to_end"],
                      "frames": r["n_frames"], "peak_per_quarter": quarters}))


def bench_memory(work: Path) -> None:
    print(f"\n== peak memory, 720p, defaults, fresh process per input (load {load()})")
    results = {}
    for seconds in (30, 120):
        clip = make_clip(work / f"clip_{seconds}s.mp4", seconds)
        cmd = [sys.executable, __file__, "--child", str(clip), str(work / "mem_out.mp4")]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=1800)
        if proc.returncode != 0:
            raise SystemExit(f"memory child failed:\n{proc.stderr[-3000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        results[seconds] = r
        print(f"  {seconds:4d} s input: peak RSS {r['ru_maxrss'] / 2**20:7.1f} MiB (ru_maxrss), "
              f"{r['peak_rss_sampled'] / 2**20:7.1f} MiB (sampled); {r['frames']} frames at {r['fps']:.1f} fps; "
              f"peak per quarter of the run: {', '.join(f'{q / 2**20:.0f}' for q in r.get('peak_per_quarter', []))} MiB",
              flush=True)
    ratio = results[120]["ru_maxrss"] / results[30]["ru_maxrss"]
    print(f"  ratio 120 s / 30 s: {ratio:.3f}  (target: within 1.10; peak < 1536 MiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/lipsync-bench-infer", type=Path)
    parser.add_argument("--skip-generator", action="store_true")
    parser.add_argument("--skip-end-to-end", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"cpu cores: {os.cpu_count()}; load average at start: {load()} "
          f"(other jobs on this machine make every figure noisy)")
    if not args.skip_generator:
        bench_generator()
    if not args.skip_end_to_end:
        clip = make_clip(args.work / "clip_10s.mp4", 10)
        bench_end_to_end(clip, args.work)
    if not args.skip_memory:
        bench_memory(args.work)


if __name__ == "__main__":
    main()
