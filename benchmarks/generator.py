"""Wav2Lip generator forward speed: frames per second at a given batch, per numeric variant.

Variants: fp32 (the reference), fp32 with channels_last memory format, and bf16 autocast
(also channels_last). Prints ms per batch, frames/s, achieved GFLOP/s, the speed-up over
fp32, and the largest output difference from fp32 (so a faster variant that changes the
picture is visible).

    python benchmarks/generator.py                      # CPU, batch 32, full width, 96 px
    python benchmarks/generator.py --device cuda --batch 128
The variants run interleaved (one forward of each per round), so background load on a
shared machine hits them alike; ratios are then meaningful even when absolute figures are
noisy. frames/s is from the median; 'best ms' is the fastest round.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import platform
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from lipsync.models import Wav2Lip

VARIANTS = {  # name: (channels_last, bf16 autocast)
    "fp32": (False, False),
    "channels_last": (True, False),
    "bf16": (True, True),
    "bf16_contiguous": (False, True),
}


def make_inputs(batch: int, face_size: int, device: torch.device):
    gen = torch.Generator().manual_seed(0)
    audio = torch.rand(batch, 1, 80, 16, generator=gen) * 8 - 4  # mel values live in [-4, 4]
    face = torch.rand(batch, 6, face_size, face_size, generator=gen)
    return audio.to(device), face.to(device)


class Variant:
    def __init__(self, name, model, face, channels_last: bool, bf16: bool):
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.name = name
        self.model = copy.deepcopy(model).to(memory_format=memory_format)
        self.face = face.contiguous(memory_format=memory_format)
        self.bf16 = bf16
        self.times: list[float] = []
        self.out = None

    def run(self, audio, record: bool) -> None:
        device_type = self.face.device.type
        autocast = torch.autocast(device_type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        if device_type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.inference_mode(), autocast:
            out = self.model(audio, self.face)
        if device_type == "cuda":
            torch.cuda.synchronize()
        if record:
            self.times.append(time.perf_counter() - start)
        self.out = out.float().contiguous()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--face-size", type=int, default=96)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (one forward per variant each)")
    parser.add_argument("--variants", default="fp32,channels_last,bf16", help=f"comma list of {', '.join(VARIANTS)}")
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
    print(f"Wav2Lip generator: width {args.width:g}, {args.face_size} px, {n_params:,} parameters, "
          f"{gflop_per_frame:.2f} GFLOP/frame; batch {args.batch} on {device} "
          f"({platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads); "
          f"{args.rounds} interleaved rounds after {args.warmup} warm-up")

    variants = [Variant(name, model, face, *VARIANTS[name]) for name in args.variants.split(",")]
    for round_index in range(args.warmup + args.rounds):
        for variant in variants:
            variant.run(audio, record=round_index >= args.warmup)

    baseline = variants[0]
    base_s = statistics.median(baseline.times)
    print(f"{'variant':<18}{'ms/batch':>10}{'best ms':>9}{'frames/s':>10}{'GFLOP/s':>9}"
          f"{'vs ' + baseline.name:>10}{'max |Δ| vs ' + baseline.name:>18}")
    for variant in variants:
        seconds = statistics.median(variant.times)
        fps = args.batch / seconds
        diff = (variant.out - baseline.out).abs().max().item()
        print(f"{variant.name:<18}{seconds * 1000:>10.0f}{min(variant.times) * 1000:>9.0f}{fps:>10.1f}"
              f"{fps * gflop_per_frame:>9.0f}{base_s / seconds:>9.2f}x{diff:>18.2e}")


if __name__ == "__main__":
    main()
