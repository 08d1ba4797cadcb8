"""Wav2Lip generator forward speed: frames per second at a given batch, per numeric variant.

Variants: fp32 (the reference), fp32 with channels_last memory format, and bf16 autocast
(also channels_last). Prints ms per batch, frames/s, the speed-up over fp32, and the largest
output difference from fp32 (so a faster variant that changes the picture is visible).

    python benchmarks/generator.py                      # CPU, batch 32, full width, 96 px
    python benchmarks/generator.py --device cuda --batch 128
Timings on a shared machine are noisy: compare ratios from the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from lipsync.models import Wav2Lip


def make_inputs(batch: int, face_size: int, device: torch.device):
    gen = torch.Generator().manual_seed(0)
    audio = torch.rand(batch, 1, 80, 16, generator=gen) * 8 - 4  # mel values live in [-4, 4]
    face = torch.rand(batch, 6, face_size, face_size, generator=gen)
    return audio.to(device), face.to(device)


def time_variant(model, audio, face, *, channels_last: bool, bf16: bool, warmup: int, iters: int):
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    face = face.contiguous(memory_format=memory_format)
    device_type = face.device.type
    autocast = torch.autocast(device_type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    times = []
    with torch.inference_mode(), autocast:
        for i in range(warmup + iters):
            if device_type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            out = model(audio, face)
            if device_type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times), out.float().contiguous()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--face-size", type=int, default=96)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--variants", default="fp32,channels_last,bf16",
                        help="comma list of fp32, channels_last, bf16, bf16_contiguous")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = Wav2Lip(width=args.width, face_size=args.face_size).eval().to(device)
    audio, face = make_inputs(args.batch, args.face_size, device)
    n_params = sum(p.numel() for p in model.parameters())
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(audio[:1], face[:1])
    gflop_per_frame = counter.get_total_flops() / 1e9  # multiply-add counted as 2
    print(f"Wav2Lip generator: width {args.width:g}, {args.face_size} px, {n_params:,} parameters; "
          f"batch {args.batch} on {device} ({platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads); median of {args.iters} after {args.warmup} warm-up; "
          f"{gflop_per_frame:.2f} GFLOP/frame")

    settings = {
        "fp32": dict(channels_last=False, bf16=False),
        "channels_last": dict(channels_last=True, bf16=False),
        "bf16": dict(channels_last=True, bf16=True),
        "bf16_contiguous": dict(channels_last=False, bf16=True),
    }
    baseline_s, baseline_out = None, None
    print(f"{'variant':<18}{'ms/batch':>10}{'frames/s':>10}{'GFLOP/s':>9}{'vs fp32':>9}{'max |Δ| vs fp32':>17}")
    for name in args.variants.split(","):
        seconds, out = time_variant(model, audio, face, warmup=args.warmup, iters=args.iters, **settings[name])
        if baseline_s is None:
            baseline_s, baseline_out = seconds, out
        diff = (out - baseline_out).abs().max().item()
        fps = args.batch / seconds
        print(f"{name:<18}{seconds * 1000:>10.0f}{fps:>10.1f}{fps * gflop_per_frame:>9.0f}"
              f"{baseline_s / seconds:>8.2f}x{diff:>17.2e}")


if __name__ == "__main__":
    main()
