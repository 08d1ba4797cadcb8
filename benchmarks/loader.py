"""Expert data loading: samples/s one CPU core produces, ours vs the original's access pattern.

Measured on the same clips:
  shards     lipsync.data.shard_stream.WindowBatchStream over the WebDataset shards (frames
             decoded lazily from the frame pack, several windows per decoded clip, precomputed mel)
  shards/1   the same with one window per decoded clip (no reuse), to show what reuse buys
  ray-data   Ray Data streaming ingest of the same shards (read_webdataset -> map_batches ->
             iter_torch_batches) on a 1-CPU local cluster: the alternative we measured against
  original   color_syncnet_train.py's pattern: per-frame JPEG files on disk read with cv2.imread
             and resized, audio.wav loaded and the WHOLE clip's mel recomputed for every sample
All run in this process on one core (torch/cv2 single-threaded), batches of 64 expert samples.
Optionally (--train-steps N) also Ray Train steps/s of a tiny expert with 1 and 2 workers.

    python benchmarks/loader.py                      # builds a small synthetic corpus + shards
    python benchmarks/loader.py --shards DIR --seconds 20 --train-steps 60
Numbers on a shared machine are noisy; the ratio is the point.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from lipsync.audio import MEL_STEP, load_audio, mel_start_index, melspectrogram  # noqa: E402
from lipsync.data.shard_stream import WindowBatchStream, iter_clips, list_shards  # noqa: E402
from lipsync.data.windows import ExpertSampling  # noqa: E402
from lipsync.data.windows import ExpertSampling, collate_expert, sample_expert_windows  # noqa: E402

BATCH = 64


def build_shards(workdir: Path, speakers: int, clips: int) -> Path:
    from lipsync.synth import make_corpus
    from pipelines.preprocess.driver import PreprocessConfig, run_preprocess

    corpus, shards = workdir / "corpus", workdir / "shards"
    print(f"building a synthetic corpus ({speakers} speakers x {clips} clips) and its shards in {workdir} ...")
    make_corpus(corpus, speakers=speakers, clips_per_speaker=clips, seed=1, layout="lrs2")
    run_preprocess(PreprocessConfig(input=str(corpus), output=str(shards), layout="lrs2", num_cpus=2))
    return shards


def export_original_layout(shard_paths: list[Path], out: Path) -> list[Path]:
    """The original preprocess output for the same clips: <clip>/{i}.jpg + audio.wav."""
    import soundfile as sf

    dirs = []
    for clip in iter_clips(shard_paths):
        d = out / clip.key
        d.mkdir(parents=True)
        for i in range(clip.n_frames):
            cv2.imwrite(str(d / f"{i}.jpg"), clip.frame(i))  # cv2 default quality 95, as the original
        fps = float(clip.meta.get("fps", 25.0))
        start = int(clip.meta.get("start_frame", 0))
        wav = load_audio(clip.meta["source"])
        a, b = int(round(start / fps * 16000)), int(round((start + clip.n_frames) / fps * 16000))
        sf.write(str(d / "audio.wav"), wav[a:b], 16000)
        dirs.append(d)
    return dirs


def original_pattern_samples(clip_dirs: list[Path], rng: np.random.Generator, face_size: int = 96):
    """One expert sample the way color_syncnet_train.Dataset.__getitem__ builds it."""
    T = 5
    while True:
        d = clip_dirs[int(rng.integers(len(clip_dirs)))]
        n = len(list(d.glob("*.jpg")))  # the original globs the folder every time
        if n <= 3 * T:
            continue
        k, wrong = rng.choice(n - T, size=2, replace=False)
        positive = rng.random() < 0.5
        start = int(k if positive else wrong)
        frames = []
        for i in range(start, start + T):
            img = cv2.imread(str(d / f"{i}.jpg"))
            if img is None:
                break
            frames.append(cv2.resize(img, (face_size, face_size)))
        if len(frames) != T:
            continue
        mel = melspectrogram(load_audio(str(d / "audio.wav")))  # whole clip, every sample
        s = int(mel_start_index(np.array([int(k)]))[0])
        window = mel[:, s : s + MEL_STEP]
        if window.shape[1] != MEL_STEP:
            continue
        x = np.concatenate([f[face_size // 2 :] for f in frames], axis=2) / 255.0  # (H/2, W, 15)
        yield torch.from_numpy(x.transpose(2, 0, 1).astype(np.float32)), torch.from_numpy(window[None].copy()), float(positive)


def measure(name: str, batches, seconds: float) -> float:
    """Samples/s over batches drawn for about `seconds` (after one warm-up batch)."""
    next(batches)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        batch = next(batches)
        n += batch["face"].shape[0]
    rate = n / (time.perf_counter() - t0)
    print(f"  {name:<10} {rate:9.1f} samples/s  ({n} samples)")
    return rate


def original_batches(clip_dirs, seed=0):
    gen = original_pattern_samples(clip_dirs, np.random.default_rng(seed))
    while True:
        items = [next(gen) for _ in range(BATCH)]
        yield {
            "face": torch.stack([i[0] for i in items]),
            "mel": torch.stack([i[1] for i in items]),
            "label": torch.tensor([[i[2]] for i in items]),
        }


def ray_data_batches(shard_paths: list[Path], windows_per_clip: int):
    import ray

    from pipelines.common.ray_setup import init_ray

    init_ray(num_cpus=1, object_store_memory=200 * 2**20)
    sampling = ExpertSampling()

    def to_windows(batch: dict) -> dict:
        from lipsync.data.clip_sample import decode_clip_sample

        rng = np.random.default_rng()
        windows = []
        for i in range(len(batch["__key__"])):
            sample = {k: batch[k][i] for k in ("__key__", "frames.pack", "mel.npy", "meta.json")}
            windows += sample_expert_windows(decode_clip_sample(sample), windows_per_clip, rng, sampling)
        col = collate_expert(windows)
        return {k: v.numpy() for k, v in col.items()}

    while True:  # one pass per epoch, like the shard stream
        ds = ray.data.read_webdataset([str(p) for p in shard_paths], decoder=None)
        ds = ds.map_batches(to_windows, batch_size=4, batch_format="numpy")
        yield from ds.iter_torch_batches(batch_size=BATCH, local_shuffle_buffer_size=512)


def train_steps_per_s(shards: Path, workers: int, steps: int, workdir: Path) -> float:
    from pipelines.train.config import TrainConfig
    from pipelines.train.driver import run_training

    result = run_training(
        TrainConfig.from_flat("expert", dict(
            shards=str(shards), width=0.0625, batch_size=32, lr=1e-3, max_steps=steps,
            log_every=max(1, steps // 3), checkpoint_every=steps, num_workers=workers, max_failures=0,
            storage_path=str(workdir / "ray_results"), run_name=f"bench-{workers}w",
            tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}", register=False, system_metrics=False,
            val_windows_per_clip=2, val_max_clips=8,
        ))
    )
    from mlflow import MlflowClient

    hist = MlflowClient(result.tracking_uri).get_metric_history(result.run_id, "train_steps_per_s")
    rate = float(np.mean([m.value for m in hist[1:]] or [hist[-1].value]))  # first window includes warm-up
    print(f"  ray train  {workers} worker(s): {rate:.2f} steps/s (global batch 32, width 0.0625)")
    return rate


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", default=None, help="preprocessed shards (default: build a small synthetic set)")
    p.add_argument("--speakers", type=int, default=4)
    p.add_argument("--clips", type=int, default=4)
    p.add_argument("--seconds", type=float, default=10.0, help="measuring time per loader")
    p.add_argument("--windows-per-clip", type=int, default=8)
    p.add_argument("--no-ray-data", action="store_true")
    p.add_argument("--train-steps", type=int, default=0, help="also measure Ray Train steps/s (1 and 2 workers)")
    args = p.parse_args()

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    workdir = Path(tempfile.mkdtemp(prefix="lipsync_loader_bench_"))
    try:
        shards = Path(args.shards) if args.shards else build_shards(workdir, args.speakers, args.clips)
        paths = list_shards(shards, "train")
        clip_dirs = export_original_layout(paths, workdir / "original_layout")
        print(f"{len(clip_dirs)} clips; expert samples (5 frames + mel window) per second, one core:")
        ours = measure("shards", iter(WindowBatchStream(paths, sampling=ExpertSampling(), batch_size=BATCH, windows_per_clip=args.windows_per_clip)), args.seconds)
        single = measure("shards/1", iter(WindowBatchStream(paths, sampling=ExpertSampling(), batch_size=BATCH, windows_per_clip=1)), args.seconds)
        orig = measure("original", original_batches(clip_dirs), args.seconds)
        ray_rate = None
        if not args.no_ray_data:
            ray_rate = measure("ray-data", ray_data_batches(paths, args.windows_per_clip), args.seconds)
        print(f"ratio shards / original:   {ours / orig:6.1f}x   (target >= 10x; >= 1000 samples/s: {'yes' if ours >= 1000 else 'NO'})")
        print(f"ratio shards/1 / original: {single / orig:6.1f}x")
        if ray_rate:
            print(f"ratio shards / ray-data:   {ours / ray_rate:6.1f}x")
        if args.train_steps:
            import ray

            if ray.is_initialized():
                ray.shutdown()
            from pipelines.common.ray_setup import init_ray

            init_ray(num_cpus=2, object_store_memory=300 * 2**20)
            print("Ray Train (tiny expert, CPU, gloo):")
            one = train_steps_per_s(shards, 1, args.train_steps, workdir)
            two = train_steps_per_s(shards, 2, args.train_steps, workdir)
            print(f"  2 workers / 1 worker: {two / one:.2f}x steps/s (same global batch)")
    finally:
        try:
            import ray

            if ray.is_initialized():
                ray.shutdown()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
