"""Inference speed and memory per precision: `python benchmarks/infer.py [--emulate-avx2] [--work DIR]
[--before REV] [--e2e-isa AVX2]`.

Prints, for the machine it runs on (its CPU and the features it saw, printed first):
1. generator only -- the full-width Wav2Lip (random weights, BatchNorm statistics taken from
   real face crops so activations and output spread are realistic: output std ~0.09) at
   batch 16 for every precision: PyTorch fp32 (channels-last), PyTorch bf16, ONNX Runtime
   fp32, ONNX Runtime static int8 (full range and reduced range); frames/s, GFLOP/s, and the
   output's PSNR / max |diff| against PyTorch fp32 (the int8 quality check). Variants run
   interleaved, so load from other jobs hits them alike; ratios are more reliable than figures.
2. end to end -- `LipSyncer` on a 10 s 1280x720 25 fps clip (a real face photo drifting across
   the frame, detection on at its defaults) per precision, and an image input (still face),
   each in a fresh process: fps (wall, and what the pipeline's CPU time would give on 2 idle
   cores), peak RSS, the stage split, and the backend `auto` chose with its reason.
3. peak memory of one run on a 30 s and a 120 s 720p input, fresh process each, and the ratio.
``--emulate-avx2`` repeats section 1 (and `auto`'s choice) in a child with
ONEDNN_MAX_CPU_ISA=AVX2: PyTorch's kernels (and the features the choice sees) are then an
AVX2-only CPU's; ONNX Runtime's are not (no such switch), which the output says next to them.
``--before REV`` times the defaults of an older revision (a git worktree) against today's on the
video and the photo; ``--e2e-isa AVX2`` runs the end-to-end cases under ONEDNN_MAX_CPU_ISA too.
Inputs and the checkpoint are generated once into --work (default /tmp/lipsync-bench-infer).
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


def make_photo(path: Path) -> Path:
    """The still-face input: one 1280x720 frame of the clip's face on its background."""
    if not path.exists():
        face, background = face_canvas()
        frame = background.copy()
        frame[120:680, 360:920] = face
        cv2.imwrite(str(path), frame)
    return path


# ------------------------------------------------------------------ model + CPU


def cpu_line() -> str:
    import torch

    from lipsync.inference.cpu_features import cpu_features

    feats = cpu_features()
    return (f"CPU {feats.summary()}; {os.cpu_count()} cores, torch {torch.get_num_threads()} threads; "
            f"native bf16: {feats.native_bf16}, VNNI: {feats.vnni}; load average {load()}")


def face_crops(n: int) -> np.ndarray:
    face, _ = face_canvas()
    crop = face[60:300, 90:330]
    return np.stack([cv2.resize(np.roll(crop, 4 * i, axis=1), (96, 96)) for i in range(n)])


def bench_model(work: Path) -> Path:
    """Full-width random Wav2Lip with BatchNorm statistics from real face crops, saved once."""
    import torch

    from lipsync.checkpoints import ModelConfig, save_checkpoint
    from lipsync.inference.generator import network_inputs
    from lipsync.models import Wav2Lip

    path = work / "wav2lip_bench.safetensors"
    if path.exists():
        return path
    torch.manual_seed(0)
    model = Wav2Lip()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average
    mels = np.random.default_rng(0).uniform(-4, 0, (32, 80, 16)).astype(np.float32)
    face_in, audio = network_inputs(face_crops(32), mels, 96)
    model.train()
    with torch.no_grad():
        for i in range(0, 32, 8):
            model(audio[i:i + 8], face_in[i:i + 8])
    save_checkpoint(path, model.eval(), ModelConfig(kind="wav2lip", width=1.0))
    return path


# ------------------------------------------------------------------ generator only


def bench_generator(model_path: Path, batch: int = 16, rounds: int = 3) -> None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from lipsync.checkpoints import load_model
    from lipsync.inference.cpu_features import cpu_features
    from lipsync.inference.generator import FaceGenerator, network_inputs
    from lipsync.inference.onnx_backend import CalibrationSet, GeneratorCache, OrtGenerator, psnr
    from lipsync.inference.runners import OrtRunner

    model, _ = load_model(str(model_path), kind="wav2lip")
    faces = face_crops(batch)
    mels = np.random.default_rng(1).uniform(-4, 0, (batch, 80, 16)).astype(np.float32)
    face_in, audio = network_inputs(faces, mels, 96)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(audio[:1], face_in[:1])
    gflop = counter.get_total_flops() / 1e9

    gens = {}
    for precision in ("fp32", "bf16", "ort-fp32"):
        gens[precision] = FaceGenerator(model, 96, "cpu", precision)
        gens[precision].prepare(faces, mels)
    # int8: both weight ranges, calibrated on other crops/windows than the ones timed and compared.
    calib_mels = np.random.default_rng(2).uniform(-4, 0, (32, 80, 16)).astype(np.float32)
    calib = CalibrationSet(*(t.numpy() for t in network_inputs(face_crops(32)[::-1], calib_mels, 96)))
    t0 = time.perf_counter()
    fused = FaceGenerator(model, 96, "cpu", "fp32").model
    cache = GeneratorCache(fused, 96)
    for reduce_range in (False, True):
        (enc, dec), db = cache.int8(calib, reduce_range)
        name = "int8 reduced" if reduce_range else "int8"
        gens[name] = FaceGenerator(model, 96, "cpu", "fp32")
        gens[name].runner = OrtRunner(OrtGenerator(enc, dec))
        gens[name].choice = None
    print(f"\n== generator only: full width, 96 px, {gflop:.2f} GFLOP/frame, batch {batch}, {rounds} interleaved "
          f"rounds after a warm-up (export + int8 calibration on 32 other pairs: {time.perf_counter() - t0:.0f} s, "
          f"once per model; load {load()})")
    if cpu_features().isa_cap:
        print("  (ONEDNN_MAX_CPU_ISA caps PyTorch's kernels only; the ONNX Runtime rows use every ISA this CPU has)")
    times = {name: [] for name in gens}
    outs = {}
    for r in range(rounds + 1):
        for name, gen in gens.items():
            t = time.perf_counter()
            outs[name] = gen(faces, mels)
            if r:
                times[name].append(time.perf_counter() - t)
    ref = outs["fp32"].astype(np.float32)
    base = batch / np.median(times["fp32"])
    for name, ts in times.items():
        fps = batch / np.median(ts)
        out = outs[name].astype(np.float32)
        quality = "reference" if name == "fp32" else (f"PSNR {psnr(ref, out, 255.0):5.1f} dB, "
                                                       f"max |diff| {np.abs(out - ref).max():3.0f} levels")
        print(f"  {name:13s} {fps:6.1f} frames/s {fps * gflop:7.1f} GFLOP/s {fps / base:5.2f}x fp32   {quality}",
              flush=True)


# ------------------------------------------------------------------ end to end


def run_once(face: Path, audio: Path, out: Path, model=None, **overrides) -> dict:
    import torch

    from lipsync.inference import InferenceOptions, LipSyncer
    from lipsync.models import Wav2Lip

    torch.manual_seed(0)
    t0 = time.perf_counter()
    syncer = LipSyncer(str(model) if model else Wav2Lip().eval(), InferenceOptions(progress=False, **overrides))
    load_s = time.perf_counter() - t0
    cpu0 = cpu_seconds()
    result = syncer.sync(face, audio, out)
    cpu = cpu_seconds() - cpu0
    return {**result.to_dict(), "cpu_seconds": cpu, "load_seconds": load_s,
            # What 2 idle cores would sustain if the steps overlapped perfectly: a bound that
            # does not depend on how many other jobs share the machine.
            "cpu_bound_fps_2_cores": 2 * result.n_frames / cpu}


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _child_e2e(face: str, audio: str, out: str, model: str, overrides: str) -> None:
    """Runs in a fresh process: one inference (after a 2 s warm-up run when asked); prints JSON."""
    kw = json.loads(overrides)
    warm = kw.pop("warm_up", None)
    if warm:
        run_once(Path(warm), Path(warm), Path(out), model=model, **kw)
    r = run_once(Path(face), Path(audio), Path(out), model=model, **kw)
    r["peak_rss"] = peak_rss()
    print(json.dumps(r, default=str))


def peak_rss() -> int:
    """This process's RSS high-water mark (VmHWM), in bytes. Not ru_maxrss: Linux carries that
    over fork + exec, so a child of a big parent would report the parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(args: list[str], env: dict | None = None, timeout: float = 3600) -> dict:
    cmd = [sys.executable, __file__, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=timeout,
                          env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise SystemExit(f"child {args[:2]} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_end_to_end(clip: Path, work: Path, model: Path, precisions: list[str], isa_cap: str | None = None) -> None:
    warm = make_clip(work / "clip_2s.mp4", 2)
    photo = make_photo(work / "face.png")
    env = {"ONEDNN_MAX_CPU_ISA": isa_cap} if isa_cap else {}
    print(f"\n== end to end, 10 s 1280x720 @ 25 fps, full-width generator, detection on (defaults), fresh process "
          f"per case after a 2 s warm-up run in it{f', ONEDNN_MAX_CPU_ISA={isa_cap}' if isa_cap else ''} "
          f"(load {load()})")
    # device cpu: this benchmark is about CPUs (on a machine with a GPU, "auto" would take it).
    cases = [(f"--precision {p}", clip, {"precision": p, "device": "cpu"}) for p in precisions]
    cases += [(f"image input (1280x720 photo), --precision {p}", photo, {"precision": p, "device": "cpu"})
              for p in ("fp32", "auto")]
    for name, face, overrides in cases:
        r = child(["--child-e2e", str(face), str(clip), str(work / "out.mp4"), str(model),
                   json.dumps({**overrides, "warm_up": str(warm)})], env=env)
        steps = ", ".join(f"{k} {v:.1f}s" for k, v in r["step_seconds"].items())
        gen = r["generator"]
        print(f"  {name:44s} {r['fps_end_to_end']:6.1f} fps wall ({r['n_frames']} frames in {r['seconds']:.1f} s; "
              f"model load {r['load_seconds']:.1f} s), CPU-bound {r['cpu_bound_fps_2_cores']:5.1f} fps on 2 idle "
              f"cores, peak RSS {r['peak_rss'] / 2**20:6.0f} MiB; steps: {steps}; face-encoder passes "
              f"{gen.get('face_encoder_passes')}; load {load()}", flush=True)
        print(f"      {gen.get('precision')}: {gen.get('reason', '')}", flush=True)


# ------------------------------------------------------------------ before: the code at another revision

# Runs in a fresh process with PYTHONPATH = the older tree: its defaults, a warm-up run, then the
# measured one (each with its own LipSyncer, as run_once does). Only APIs that tree has.
_BEFORE_CHILD = r"""
import json, sys
from lipsync.inference import InferenceOptions, LipSyncer
face, audio, out, model, warm = sys.argv[1:6]
LipSyncer(model, InferenceOptions(progress=False, device="cpu")).sync(warm, warm, out)
r = LipSyncer(model, InferenceOptions(progress=False, device="cpu")).sync(face, audio, out).to_dict()
with open("/proc/self/status") as f:
    r["peak_rss"] = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:"))
print(json.dumps(r, default=str))
"""


def bench_before(rev: str, clip: Path, work: Path, model: Path, isa_cap: str | None) -> None:
    """Defaults at ``rev`` (a git worktree) against today's defaults, on the 10 s clip and on the
    photo, side by side, each in a fresh process; with ``isa_cap`` both under ONEDNN_MAX_CPU_ISA."""
    tree = work / f"before_{rev}"
    if not tree.exists():
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), rev], check=True,
                       capture_output=True)
    warm, photo = make_clip(work / "clip_2s.mp4", 2), make_photo(work / "face.png")
    env = {"ONEDNN_MAX_CPU_ISA": isa_cap} if isa_cap else {}
    cap = f", ONEDNN_MAX_CPU_ISA={isa_cap}" if isa_cap else ""
    print(f"\n== defaults at {rev} (before) vs now, end to end, fresh process each{cap} (load {load()})")
    try:
        for name, face in (("10 s 720p video", clip), ("720p photo", photo)):
            proc = subprocess.run([sys.executable, "-c", _BEFORE_CHILD, str(face), str(clip), str(work / "out.mp4"),
                                   str(model), str(warm)], capture_output=True, text=True, cwd=tree, timeout=3600,
                                  env={**os.environ, **env, "PYTHONPATH": str(tree)})
            if proc.returncode != 0:
                raise SystemExit(f"before child failed:\n{proc.stderr[-3000:]}")
            old = json.loads(proc.stdout.strip().splitlines()[-1])
            new = child(["--child-e2e", str(face), str(clip), str(work / "out.mp4"), str(model),
                         json.dumps({"precision": "auto", "device": "cpu", "warm_up": str(warm)})], env=env)
            print(f"  {name:16s} before {old['fps_end_to_end']:6.1f} fps ({old['seconds']:.1f} s, peak RSS "
                  f"{old['peak_rss'] / 2**20:.0f} MiB)   now {new['fps_end_to_end']:6.1f} fps ({new['seconds']:.1f} s, "
                  f"peak RSS {new['peak_rss'] / 2**20:.0f} MiB, {new['generator'].get('precision')})   "
                  f"{new['fps_end_to_end'] / old['fps_end_to_end']:.2f}x; load {load()}", flush=True)
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], capture_output=True)


# ------------------------------------------------------------------ memory


def _child(face: str, out: str, model: str) -> None:
    """Runs in a fresh process: one inference, RSS sampled at 20 Hz; prints JSON."""
    import psutil

    proc = psutil.Process()
    samples = [proc.memory_info().rss]
    done = threading.Event()

    def sample():
        while not done.wait(0.05):
            samples.append(proc.memory_info().rss)

    threading.Thread(target=sample, daemon=True).start()
    r = run_once(Path(face), Path(face), Path(out), model=model, device="cpu")
    done.set()
    maxrss = peak_rss()
    quarters = [int(max(q)) for q in np.array_split(np.array(samples), 4)]  # peak per quarter of the run
    print(json.dumps({"peak_rss_sampled": max(samples), "ru_maxrss": maxrss, "fps": r["fps_end_to_end"],
                      "frames": r["n_frames"], "peak_per_quarter": quarters}))


def bench_memory(work: Path, model: Path) -> None:
    print(f"\n== peak memory, 720p, defaults, fresh process per input (load {load()})")
    results = {}
    for seconds in (30, 120):
        clip = make_clip(work / f"clip_{seconds}s.mp4", seconds)
        cmd = [sys.executable, __file__, "--child", str(clip), str(work / "mem_out.mp4"), str(model)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=1800)
        if proc.returncode != 0:
            raise SystemExit(f"memory child failed:\n{proc.stderr[-3000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        results[seconds] = r
        print(f"  {seconds:4d} s input: peak RSS {r['ru_maxrss'] / 2**20:7.1f} MiB (VmHWM), "
              f"{r['peak_rss_sampled'] / 2**20:7.1f} MiB (sampled); {r['frames']} frames at {r['fps']:.1f} fps; "
              f"peak per quarter of the run: {', '.join(f'{q / 2**20:.0f}' for q in r.get('peak_per_quarter', []))} MiB",
              flush=True)
    ratio = results[120]["ru_maxrss"] / results[30]["ru_maxrss"]
    print(f"  ratio 120 s / 30 s: {ratio:.3f}  (target: within 1.10; peak < 1536 MiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/lipsync-bench-infer", type=Path)
    parser.add_argument("--precisions", default="fp32,bf16,ort-fp32,int8,auto",
                        help="end-to-end cases (comma list of --precision values)")
    parser.add_argument("--emulate-avx2", action="store_true",
                        help="also run the generator section with ONEDNN_MAX_CPU_ISA=AVX2 (in a child)")
    parser.add_argument("--before", default=None, metavar="REV",
                        help="also time the defaults of the code at git revision REV (e.g. fa953e0, before the "
                             "ONNX Runtime / int8 / still-face work) against today's, on the video and the photo")
    parser.add_argument("--e2e-isa", default=None, metavar="ISA",
                        help="run the end-to-end and --before cases with ONEDNN_MAX_CPU_ISA=ISA (e.g. AVX2): "
                             "PyTorch's kernels are then an AVX2-only CPU's; ONNX Runtime's are not")
    parser.add_argument("--skip-generator", action="store_true")
    parser.add_argument("--skip-end-to-end", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--child-e2e", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return
    if args.child_e2e:
        _child_e2e(*args.child_e2e)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    print(cpu_line())
    print("(other jobs on this machine make every figure noisy: the load average is printed next to each)")
    model = bench_model(args.work)
    if not args.skip_generator:
        bench_generator(model)
        if args.emulate_avx2:
            cmd = [sys.executable, __file__, "--work", str(args.work), "--skip-end-to-end", "--skip-memory"]
            print("\n== the same with ONEDNN_MAX_CPU_ISA=AVX2 (an AVX2-only CPU's PyTorch kernels), in a child:",
                  flush=True)
            subprocess.run(cmd, cwd=REPO, env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}, check=True)
    if not args.skip_end_to_end:
        clip = make_clip(args.work / "clip_10s.mp4", 10)
        bench_end_to_end(clip, args.work, model, args.precisions.split(","), args.e2e_isa)
    if args.before:
        bench_before(args.before, make_clip(args.work / "clip_10s.mp4", 10), args.work, model, args.e2e_isa)
    if not args.skip_memory:
        bench_memory(args.work, model)


if __name__ == "__main__":
    main()
