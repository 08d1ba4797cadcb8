"""Preprocessing throughput: clips/s and video-seconds per wall-second with 1 and 2 CPUs.

    python benchmarks/preprocess.py [--corpus DIR] [--speakers 4 --clips 4] [--cpus 1 2]

For each CPU count a fresh local Ray cluster runs the full pipeline (after a warm-up run on
two clips, so one-time worker costs - imports, librosa's first STFT - are not counted).
Prints clips/s, video-seconds per wall-second, the scaling ratio, the cost split by stage
(summed worker time per stage), bytes per frame for JPEG (q95) and PNG shards, and how long
the expert loader takes to decode 5 frames of a clip versus all of them.

Numbers on a shared machine are noisy; the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lipsync.data.clip_sample import decode_clip_sample  # noqa: E402
from pipelines.preprocess import PreprocessConfig, run_preprocess  # noqa: E402


def _run(corpus: Path, out: Path, layout: str, **kw) -> dict:
    cfg = PreprocessConfig(input=str(corpus), output=str(out), layout=layout, progress=False, **kw)
    return run_preprocess(cfg)


def _loader_access(shard_dir: Path, n: int = 5) -> tuple[float, float]:
    """Mean ms to decode n consecutive frames of a clip vs. the whole clip (JPEG shards)."""
    from webdataset.tariterators import tarfile_samples

    samples = list(tarfile_samples([{"url": str(p)} for p in sorted(shard_dir.glob("*.tar"))]))
    rng = random.Random(0)
    few, full = [], []
    for raw in samples:
        clip = decode_clip_sample(raw)
        start = rng.randrange(0, max(1, clip.n_frames - n))
        t0 = time.perf_counter()
        clip.frames_at(range(start, start + n))
        few.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        decode_clip_sample(raw).frames
        full.append(time.perf_counter() - t0)
    return 1000 * sum(few) / len(few), 1000 * sum(full) / len(full)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default=None, help="an LRS2-layout corpus (default: synthesize one)")
    p.add_argument("--speakers", type=int, default=4)
    p.add_argument("--clips", type=int, default=4, help="clips per speaker")
    p.add_argument("--cpus", type=int, nargs="+", default=[1, 2])
    p.add_argument("--no-png", action="store_true", help="skip the lossless (PNG) size measurement")
    args = p.parse_args()

    import ray

    from pipelines.ray_env import init_ray

    work = Path(tempfile.mkdtemp(prefix="bench_pp_"))
    if args.corpus:
        corpus = Path(args.corpus)
    else:
        from lipsync.synth import make_corpus

        corpus = work / "corpus"
        t0 = time.perf_counter()
        make_corpus(corpus, speakers=args.speakers, clips_per_speaker=args.clips, seed=3,
                    seconds=(2.0, 4.0), progress=False)
        print(f"synthetic corpus: {args.speakers} speakers x {args.clips} clips, 160x160, "
              f"made in {time.perf_counter() - t0:.1f}s")
    files = sorted(corpus.glob("main/*/*.mp4"))
    warm_list = work / "warmup.txt"
    warm_list.write_text("".join(f"{f}\n" for f in files[:2]))

    results = {}
    for cpus in args.cpus:
        init_ray(num_cpus=cpus, object_store_memory=400 * 2**20)
        try:
            _run(warm_list, work / f"warm{cpus}", "filelist", num_cpus=cpus)
            t0 = time.perf_counter()
            summary = _run(corpus, work / f"jpeg{cpus}", "lrs2", num_cpus=cpus)
            wall = time.perf_counter() - t0
        finally:
            ray.shutdown()
        video_s = summary["frames"] / 25.0
        results[cpus] = {"wall": wall, "clips": summary["clips"], "video_s": video_s,
                         "stages": summary["stage_seconds"], "bytes_per_frame": summary["bytes_per_frame"]}
        print(f"{cpus} CPU: {summary['clips']} clips, {video_s:.1f}s of video in {wall:.1f}s wall -> "
              f"{summary['clips'] / wall:.2f} clips/s, {video_s / wall:.2f} video-s per wall-s")

    if len(results) >= 2:
        lo, hi = min(results), max(results)
        ratio = (results[hi]["video_s"] / results[hi]["wall"]) / (results[lo]["video_s"] / results[lo]["wall"])
        print(f"scaling {lo} -> {hi} CPUs: {ratio:.2f}x throughput (ideal {hi / lo:.1f}x)")

    last = results[max(results)]
    total = sum(last["stages"].values())
    split = ", ".join(f"{k} {v / total:.0%}" for k, v in sorted(last["stages"].items(), key=lambda kv: -kv[1]))
    print(f"cost split by stage (summed worker time, {total:.1f}s): {split}")
    print(f"bytes per frame (96x96 crops, JPEG q95, incl. mel/meta/tar): {last['bytes_per_frame']:.0f}")

    if not args.no_png:
        init_ray(num_cpus=max(args.cpus), object_store_memory=400 * 2**20)
        try:
            png = _run(corpus, work / "png", "lrs2", num_cpus=max(args.cpus), codec="png")
        finally:
            ray.shutdown()
        print(f"bytes per frame (PNG, lossless): {png['bytes_per_frame']:.0f}")

    few, full = _loader_access(work / f"jpeg{max(args.cpus)}")
    print(f"loader: 5 frames of a clip decode in {few:.2f} ms vs {full:.2f} ms for the whole clip")
    (work / "results.json").write_text(json.dumps(results, indent=1))
    print(f"details: {work / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
