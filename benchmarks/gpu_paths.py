"""The CUDA paths, timed on the GPU at hand: `python benchmarks/gpu_paths.py [--out DIR]`.

1. training steps of both stages (the stages' own ``train_step``), full width, 96 px, batches
   already on the GPU (compute only, one GPU, no DDP): samples/s with bf16 autocast and fp32,
   the generator with and without the discriminator;
2. S3FD batched detection (random weights in the real file layout; a threshold above 1 keeps
   no candidate, so the figure is the network, the box decoding and the copy back, not the CPU
   NMS that random weights would flood): frames/s per batch size;
3. ``LipSyncer`` on CUDA, 10 s 1280x720 (benchmarks/infer.py's clip and full-width random
   generator), fixed box: fps end to end and the stage split, per precision.

Results also go to <out>/gpu_results.json. DEVCHECK_DEVICE=cpu runs the same code paths on the
CPU with tiny counts (a dry run); DEVCHECK_ONLY=train,s3fd,infer picks sections.
"""
import json
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))  # infer.py's clip and model
OUT = Path(sys.argv[sys.argv.index("--out") + 1] if "--out" in sys.argv else os.environ.get("OUT", "."))
DEV = os.environ.get("DEVCHECK_DEVICE", "cuda")
DRY = DEV == "cpu"  # a local dry run of the script's code paths, tiny counts
results = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0) if DEV == "cuda" else "none"}


def section(name, fn):
    t0 = time.perf_counter()
    try:
        fn()
        print(f"[{name}] ok in {time.perf_counter() - t0:.1f}s", flush=True)
    except Exception:  # noqa: BLE001
        results[name + "_error"] = traceback.format_exc()[-2000:]
        print(f"[{name}] FAILED\n{traceback.format_exc()}", flush=True)


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def samples_per_s(stage, batch, size: int, steps: int):
    """(samples/s over ``steps`` timed steps after 5 warm-up steps, the last step's metrics)."""
    for s in range(1 if DRY else 5):
        stage.train_step(batch, s)
    sync()
    n = 1 if DRY else steps
    t0 = time.perf_counter()
    for s in range(n):
        out = stage.train_step(batch, s)
    sync()
    return size * n / (time.perf_counter() - t0), out


def train_steps():
    from lipsync.checkpoints import ModelConfig, load_model, save_checkpoint
    from lipsync.models import SyncNet
    from lipsync.training.expert import ExpertRecipe, ExpertStage
    from lipsync.training.generator import GeneratorRecipe, GeneratorStage

    expert_path = Path("/tmp/expert.safetensors")
    save_checkpoint(expert_path, SyncNet(), ModelConfig(kind="expert", width=1.0, face_size=96))
    loader = lambda ref, kind: load_model(ref, kind=kind)  # noqa: E731
    g = torch.Generator().manual_seed(0)
    for gan in (True, False):
        for amp in (True, False):
            B = 16
            stage = GeneratorStage(GeneratorRecipe(expert=str(expert_path), gan=gan), device=DEV,
                                   load_model=loader, max_steps=100)
            for m in stage.trained.values():
                m.to(DEV)
            stage.amp_dtype = torch.bfloat16 if amp else None
            batch = {"x": torch.rand(B, 6, 5, 96, 96, generator=g), "gt": torch.rand(B, 3, 5, 96, 96, generator=g),
                     "indiv_mels": torch.randn(B, 5, 1, 80, 16, generator=g), "mel": torch.randn(B, 1, 80, 16, generator=g)}
            stage.sync_switch_step = 0  # sync loss on, as after the switch
            key = f"generator_{'gan' if gan else 'nogan'}_{'bf16' if amp else 'fp32'}_samples_per_s"
            results[key], out = samples_per_s(stage, batch, B, 30)
            finite = all(np.isfinite(float(v)) for v in out.values() if not isinstance(v, torch.Tensor))
            print(f"  {key}: {results[key]:.1f} (batch {B}, full width; metrics finite: {finite}; {out})", flush=True)
    for amp in (True, False):
        B = 64
        stage = ExpertStage(ExpertRecipe(), device=DEV, max_steps=100)
        stage.trained["expert"].to(DEV)
        stage.amp_dtype = torch.bfloat16 if amp else None
        batch = {"face": torch.rand(B, 15, 48, 96, generator=g), "mel": torch.randn(B, 1, 80, 16, generator=g),
                 "label": (torch.rand(B, 1, generator=g) > 0.5).float()}
        key = f"expert_{'bf16' if amp else 'fp32'}_samples_per_s"
        results[key], out = samples_per_s(stage, batch, B, 50)
        print(f"  {key}: {results[key]:.1f} (batch {B}, full width; {out})", flush=True)


def s3fd():
    from face_alignment.detection.sfd.net_s3fd import s3fd as S3FDNet

    from infer import face_canvas
    from lipsync.faces.s3fd import S3FDDetector

    torch.manual_seed(0)
    weights = Path("/tmp/s3fd-random.pth")
    torch.save(S3FDNet().state_dict(), weights)
    face, background = face_canvas()
    frame = background.copy()
    frame[80:640, 360:920] = face
    frames = [np.roll(frame, 3 * i, axis=1) for i in range(4 if DRY else 64)]
    # Random weights score every anchor a face: the CPU NMS over ~1,500 candidates a frame then
    # dominates. threshold > 1 keeps none: the network, the box decoding and the copy back.
    for bs in ((4,) if DRY else (16, 32, 64)):
        det = S3FDDetector(DEV, weights_path=weights, downscale_to=480, batch_size=bs, threshold=1.01)
        det.detect(frames[:bs])
        sync()
        t0 = time.perf_counter()
        for _ in range(3):
            out = det.detect(frames)
        sync()
        fps = 3 * len(frames) / (time.perf_counter() - t0)
        results[f"s3fd_cuda_batch{bs}_no_candidates_frames_per_s"] = fps
        print(f"  S3FD cuda, 1280x720 frames downscaled to 480, batch {bs}: {fps:.1f} frames/s "
              f"(random weights: {sum(len(d) for d in out)} boxes)", flush=True)


def infer():
    from infer import bench_model, make_clip
    from lipsync.inference import InferenceOptions, LipSyncer

    work = Path("/tmp/bench_dry" if DRY else "/tmp/bench")
    work.mkdir(exist_ok=True)
    model = bench_model(work)
    clip = make_clip(work / "clip_10s.mp4", 1 if DRY else 10)
    warm = make_clip(work / "clip_2s.mp4", 2)
    for precision in (("fp32",) if DRY else ("auto", "fp32", "bf16")):
        opts = dict(progress=False, device=DEV, precision=precision, box=(120, 560, 480, 800))
        LipSyncer(str(model), InferenceOptions(**opts)).sync(warm, warm, work / "out.mp4")
        r = LipSyncer(str(model), InferenceOptions(**opts)).sync(clip, clip, work / "out.mp4").to_dict()
        results[f"infer_cuda_{precision}"] = {k: r.get(k) for k in ("fps_end_to_end", "seconds", "n_frames",
                                                                   "step_seconds", "generator")}
        print(f"  infer cuda --precision {precision} (fixed box): {r['fps_end_to_end']:.1f} fps end to end, "
              f"{r['n_frames']} frames in {r['seconds']:.1f}s; steps {r.get('step_seconds')}; "
              f"generator {r.get('generator')}", flush=True)


with open("/proc/cpuinfo") as f:
    flags = next(line for line in f if line.startswith("flags")).split()
results["cpu_flags"] = [x for x in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile") if x in flags]
print("GPU", results["gpu"], "torch", results["torch"], "CPU", results["cpu_flags"], os.cpu_count(), "cores", flush=True)
for name, fn in [(n, f) for n, f in (("train", train_steps), ("s3fd", s3fd), ("infer", infer)) if n in os.environ.get("DEVCHECK_ONLY", "train,s3fd,infer")]:
    section(name, fn)
(OUT / "gpu_results.json").write_text(json.dumps(results, indent=1, default=str))
