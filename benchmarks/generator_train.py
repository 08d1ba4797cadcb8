"""Generator training speed: samples/s of the generator stage's step (lipsync/training/generator.py).

Part 1 (no Ray): one process runs ``GeneratorStage.train_step`` on fixed batches for
each variant — discriminator on / off (``--no-gan``) x fp32 / bf16 autocast — interleaved
(one step of each per round, so background load hits them alike) and prints samples/s
(median over rounds) and the ratio to the fp32 GAN step.
Part 2 (``--shards DIR``): the real Ray Train stage (pipelines/train/driver.py) with 1 and 2
workers on those shards, samples/s as logged by the run (``train_samples_per_s``,
global), into a throw-away SQLite MLflow store.

    python benchmarks/generator_train.py                     # part 1, width 0.25
    python benchmarks/generator_train.py --width 1 --shards shards/ --steps 20
The CPU's features are printed next to the figures (bf16 is only fast with avx512_bf16/amx).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from lipsync.checkpoints import ModelConfig, save_checkpoint  # noqa: E402
from lipsync.models import SyncNet  # noqa: E402
from lipsync.training import GeneratorRecipe, GeneratorStage  # noqa: E402

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


def cpu_description() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown CPU"
    model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "?")
    flags = set(next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []))
    have = [f for f in CPU_FLAGS if f in flags]
    return f"{model}; threads {torch.get_num_threads()}; flags: {' '.join(have) or 'none of ' + ','.join(CPU_FLAGS)}"


def batch(b: int, t: int, s: int) -> dict:
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(b, 3, t, s, s, generator=g)
    masked = gt.clone()
    masked[..., s // 2:, :] = 0
    return {"x": torch.cat([masked, torch.rand(b, 3, t, s, s, generator=g)], 1), "gt": gt,
            "indiv_mels": torch.rand(b, t, 1, 80, 16, generator=g) * 8 - 4,
            "mel": torch.rand(b, 1, 80, 16, generator=g) * 8 - 4}


def step_variants(args) -> None:
    expert = SyncNet(width=args.expert_width).eval()
    config = ModelConfig(kind="expert", width=args.expert_width)
    loader = lambda ref, kind: (expert, config)  # noqa: E731
    variants = {}
    for gan in (True, False):
        for bf16 in (False, True):
            torch.manual_seed(0)
            stage = GeneratorStage(GeneratorRecipe(expert="bench", width=args.width, gan=gan), "cpu", loader)
            stage.sync_switch_step = 0  # measure the full loss (sync term on, as after the switch)
            stage.amp_dtype = torch.bfloat16 if bf16 else None
            variants[f"{'gan' if gan else 'no-gan'}/{'bf16' if bf16 else 'fp32'}"] = stage
    data = batch(args.batch, 5, 96)
    times = {k: [] for k in variants}
    for r in range(args.warmup + args.rounds):
        for name, stage in variants.items():
            start = time.perf_counter()
            stage.train_step(data, r + 1)
            if r >= args.warmup:
                times[name].append(time.perf_counter() - start)
    base = args.batch / statistics.median(times["gan/fp32"])
    print(f"\ngenerator train_step, width {args.width}, batch {args.batch} x 5 frames, 96 px "
          f"(expert width {args.expert_width}), {args.rounds} rounds; CPU: {cpu_description()}")
    for name, ts in times.items():
        rate = args.batch / statistics.median(ts)
        print(f"  {name:12s} {rate:7.2f} samples/s  ({1000 * statistics.median(ts):8.1f} ms/step, "
              f"best {1000 * min(ts):8.1f})  x{rate / base:.2f} vs gan/fp32")


def ray_workers(args) -> None:
    from mlflow import MlflowClient

    from pipelines.train.config import TrainConfig
    from pipelines.train.driver import run_training

    with tempfile.TemporaryDirectory(prefix="gen_bench_") as tmp:
        expert = save_checkpoint(Path(tmp) / "expert.safetensors", SyncNet(width=args.expert_width),
                                 ModelConfig(kind="expert", width=args.expert_width))
        uri = f"sqlite:///{tmp}/mlruns.db"
        rates = {}
        for workers in (1, 2):
            result = run_training(TrainConfig.from_flat("generator", dict(
                shards=args.shards, expert=str(expert), width=args.width, batch_size=args.batch * workers,
                max_steps=args.steps, log_every=max(1, args.steps // 2), checkpoint_every=args.steps,
                num_workers=workers, cpus_per_worker=1, val_max_clips=2, val_windows_per_clip=1,
                storage_path=f"{tmp}/ray", run_name=f"w{workers}", tracking_uri=uri, register=False,
                system_metrics=False, max_failures=0)))
            hist = MlflowClient(uri).get_metric_history(result.run_id, "train_samples_per_s")
            rates[workers] = max(hist, key=lambda m: m.step).value  # the second window: warm
        print(f"\nRay Train generator stage, width {args.width}, {args.batch} samples per worker per step; "
              f"CPU: {cpu_description()}")
        for workers, rate in rates.items():
            print(f"  {workers} worker(s): {rate:7.2f} samples/s  x{rate / rates[1]:.2f} vs 1 worker")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--expert-width", type=float, default=0.25)
    p.add_argument("--batch", type=int, default=4, help="samples (5-frame windows) per step and worker")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--shards", default=None, help="also measure Ray Train with 1 and 2 workers on these shards")
    p.add_argument("--steps", type=int, default=10, help="steps per Ray run")
    args = p.parse_args(argv)
    step_variants(args)
    if args.shards:
        ray_workers(args)


if __name__ == "__main__":
    main()
