"""Preprocessing at scale: driver cost per GB, throughput with 1 and 2 CPUs, one long input.

    python benchmarks/preprocess.py [--speakers 4 --clips 4] [--cpus 1 2]
        [--before REV]                       # also run the code at git revision REV ("before")
        [--long-seconds 60 --long-size 1280x720 --segment-seconds 20]
        [--nodes 2]                          # a fake multi-node cluster (ray.cluster_utils.Cluster)

Every run is a fresh Ray cluster in a subprocess, after a warm-up job on two clips (worker start,
imports and librosa's first STFT are not counted). Printed side by side:

- driver CPU seconds (the driver process' own user+system time around ``run_preprocess``,
  Ray Data's executor included) per GB of shards, and the bytes of metadata the driver read
  per GB of shards (manifest parts + manifest), against the code at ``--before`` where the
  driver wrote every shard itself (every shard byte passed through it);
- clips/s and video-seconds per wall-second with 1 and 2 CPUs, and the scaling ratio;
- one long synthetic input (default 60 s at 1280x720): wall time as one task
  (``--segment-seconds 0``, the old behaviour) and cut into pieces;
- with ``--nodes N``: how many nodes' workers wrote shards.

Numbers on a shared machine are noisy; the ratios are what to compare. The CPU's features are
printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# Runs inside a subprocess with PYTHONPATH = the code tree to measure.
_JOB = r"""
import json, os, sys, time
import ray
from pipelines.common.ray_setup import use_loopback
from pipelines.preprocess.driver import PreprocessConfig, run_preprocess
args = json.loads(sys.argv[1])
if args.get("nodes", 1) > 1:
    use_loopback()
    from ray.cluster_utils import Cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 200 * 2**20})
    for _ in range(args["nodes"] - 1):
        cluster.add_node(num_cpus=1, object_store_memory=200 * 2**20)
    ray.init(address=cluster.address)
else:  # a new private cluster, whatever else runs on this machine (and whatever the tree's ray_env does)
    use_loopback()
    ray.init(address="local", num_cpus=args["cpus"], object_store_memory=300 * 2**20, include_dashboard=False)
common = dict(progress=False, num_cpus=args["cpus"], **args.get("cfg", {}))
run_preprocess(PreprocessConfig(input=args["warmup"], output=args["out"] + "_warm", layout="filelist", **common))
cpu0, t0 = time.process_time(), time.perf_counter()
s = run_preprocess(PreprocessConfig(input=args["input"], output=args["out"], layout=args["layout"], **common))
wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
meta = sum(p.stat().st_size for p in (__import__("pathlib").Path(args["out"]) / "index").glob("*.json"))
meta += os.path.getsize(os.path.join(args["out"], "manifest.parquet"))
print("RESULT " + json.dumps({"wall": wall, "driver_cpu": cpu, "bytes": s["bytes"], "frames": s["frames"],
      "clips": s["clips"], "shards": s["shards"], "steps": s["step_seconds"], "meta_bytes": meta,
      "tasks": s.get("tasks"), "pieces": s.get("pieces"), "writer_nodes": s.get("writer_nodes"),
      "shard_bytes": s.get("shard_bytes")}))
ray.shutdown()
"""


def cpu_features() -> str:
    flags = set()
    model = "?"
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("flags"):
                flags.update(line.split(":", 1)[1].split())
            elif line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile")
    return f"{model}; {os.cpu_count()} cores; " + " ".join(f for f in wanted if f in flags)


def run_job(tree: Path, **args) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-c", _JOB, json.dumps(args)], cwd=tree, env=env,
                          capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"job failed in {tree}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")


def checkout(rev: str, where: Path) -> Path:
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(where), rev], check=True,
                   capture_output=True)
    return where


def describe(label: str, r: dict) -> str:
    gb = r["bytes"] / 1e9
    video_s = r["frames"] / 25.0
    return (f"{label}: {r['clips']} clips, {video_s:.1f}s of video in {r['wall']:.1f}s wall "
            f"({video_s / r['wall']:.2f} video-s/s); {r['shards']} shards, {r['bytes'] / 1e6:.1f} MB; "
            f"driver {r['driver_cpu']:.2f} CPU-s = {r['driver_cpu'] / gb:.1f} CPU-s/GB")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default=None, help="an LRS2-layout corpus (default: synthesize one)")
    p.add_argument("--speakers", type=int, default=4)
    p.add_argument("--clips", type=int, default=4, help="clips per speaker")
    p.add_argument("--cpus", type=int, nargs="+", default=[1, 2])
    p.add_argument("--shard-size", default="5MB", help="target shard size for the corpus runs")
    p.add_argument("--before", default=None, help="git revision to compare with (e.g. the commit before "
                                                   "worker-written shards)")
    p.add_argument("--long-seconds", type=float, default=60.0, help="0: skip the long-input measurement")
    p.add_argument("--long-size", default="1280x720")
    p.add_argument("--segment-seconds", type=float, default=20.0)
    p.add_argument("--nodes", type=int, default=0, help="also run on a fake cluster of this many 1-CPU nodes")
    p.add_argument("--long-only", action="store_true", help="only the long-input measurement")
    p.add_argument("--big-crop", type=int, default=288,
                   help="the marginal driver cost: rerun the same clips with PNG crops at 96 and this size "
                        "(same clips, many more bytes; 0: skip)")
    args = p.parse_args()

    from lipsync.synth import make_corpus

    work = Path(tempfile.mkdtemp(prefix="bench_pp_"))
    print(f"CPU: {cpu_features()}")
    if args.corpus:
        corpus = Path(args.corpus)
    else:
        corpus = work / "corpus"
        t0 = time.perf_counter()
        make_corpus(corpus, speakers=args.speakers, clips_per_speaker=args.clips, seed=3,
                    seconds=(2.0, 4.0), progress=False)
        print(f"synthetic corpus: {args.speakers} speakers x {args.clips} clips, 160x160, 2-4 s, "
              f"made in {time.perf_counter() - t0:.1f}s")
    files = sorted(corpus.glob("main/*/*.mp4"))
    warmup = work / "warmup.txt"
    warmup.write_text("".join(f"{f}\n" for f in files[:2]))
    trees = {"after": REPO}
    if args.before:
        trees = {"before": checkout(args.before, work / "before"), **trees}
    from pipelines.dataset.shards import parse_size

    shard_size = parse_size(args.shard_size)

    results: dict = {}
    for label, tree in ({} if args.long_only else trees).items():
        for cpus in args.cpus:
            r = run_job(tree, cpus=cpus, input=str(corpus), layout="lrs2", warmup=str(warmup),
                        out=str(work / f"{label}_{cpus}"), cfg={"shard_size": shard_size})
            results[(label, cpus)] = r
            print(describe(f"{label}, {cpus} CPU", r), flush=True)
    for label in ({} if args.long_only else trees):
        lo, hi = min(args.cpus), max(args.cpus)
        if lo != hi:
            a, b = results[(label, lo)], results[(label, hi)]
            ratio = (b["frames"] / b["wall"]) / (a["frames"] / a["wall"])
            print(f"{label}: scaling {lo} -> {hi} CPUs: {ratio:.2f}x throughput (ideal {hi / lo:.1f}x)")
    top = max(args.cpus)
    if not args.long_only:
        after = results[("after", top)]
        print(f"after: driver read {after['meta_bytes'] / 1e3:.1f} kB of manifest parts + manifest for "
              f"{after['bytes'] / 1e6:.1f} MB of shards ({after['meta_bytes'] / after['bytes'] * 1e3:.2f} MB per GB); "
              f"{after['tasks']} tasks, shard sizes {after['shard_bytes']}")
        if args.before:
            before = results[("before", top)]
            b_gb, a_gb = before["driver_cpu"] / (before["bytes"] / 1e9), after["driver_cpu"] / (after["bytes"] / 1e9)
            print(f"driver CPU per GB of shards at {top} CPUs: before {b_gb:.1f} s/GB (every shard byte through the "
                  f"driver: 1000 MB per GB), after {a_gb:.1f} s/GB -> {b_gb / a_gb:.2f}x less")
        if args.big_crop:
            # Same inputs and clips, ~10x the bytes: the driver's extra CPU is its cost per byte,
            # free of the fixed per-job and per-clip costs that dominate a small corpus.
            for label, tree in trees.items():
                small = results[(label, top)]
                big = run_job(tree, cpus=top, input=str(corpus), layout="lrs2", warmup=str(warmup),
                              out=str(work / f"{label}_big"),
                              cfg={"shard_size": shard_size, "codec": "png", "crop_sizes": [96, args.big_crop]})
                results[(label, "big")] = big
                print(describe(f"{label}, {top} CPU, PNG 96+{args.big_crop} px", big))
                slope = (big["driver_cpu"] - small["driver_cpu"]) / ((big["bytes"] - small["bytes"]) / 1e9)
                print(f"{label}: marginal driver CPU {slope:.2f} s per extra GB of shards "
                      f"({big['driver_cpu'] - small['driver_cpu']:+.2f} CPU-s for "
                      f"{(big['bytes'] - small['bytes']) / 1e6:+.0f} MB)", flush=True)
        total = sum(after["steps"].values())
        split = ", ".join(f"{k} {v / total:.0%}" for k, v in sorted(after["steps"].items(), key=lambda kv: -kv[1]))
        print(f"cost split by stage (summed worker time, {total:.1f}s): {split}")

    if args.long_seconds:
        w, h = (int(v) for v in args.long_size.lower().split("x"))
        long_dir = work / "long"
        t0 = time.perf_counter()
        info = make_corpus(long_dir, speakers=1, clips_per_speaker=1, seed=5, size=(w, h),
                           seconds=(args.long_seconds, args.long_seconds), progress=False)
        listing = work / "long.txt"
        listing.write_text(f"{info.files[0]}\n")
        print(f"long input: {args.long_seconds:.0f}s at {w}x{h}, made in {time.perf_counter() - t0:.1f}s")
        walls = {}
        for label, seg in (("one task", 0.0), (f"pieces of {args.segment_seconds:.0f}s", args.segment_seconds)):
            r = run_job(REPO, cpus=top, input=str(listing), layout="filelist", warmup=str(warmup),
                        out=str(work / f"long_{seg}"), cfg={"segment_seconds": seg})
            walls[label] = r["wall"]
            print(f"long input, {label}, {top} CPU: {r['wall']:.1f}s wall, {r['pieces']} pieces in "
                  f"{r['tasks']} tasks, {r['clips']} clips, step time {sum(r['steps'].values()):.1f}s "
                  f"({', '.join(f'{k} {v:.1f}s' for k, v in sorted(r['steps'].items()))})", flush=True)
        one, cut = walls.values()
        print(f"long input: {one / cut:.2f}x faster cut into pieces (ideal {top}x on {top} CPUs)")

    if args.nodes > 1:
        r = run_job(REPO, cpus=None, nodes=args.nodes, input=str(corpus), layout="lrs2", warmup=str(warmup),
                    out=str(work / "nodes"), cfg={"shard_size": shard_size})
        print(describe(f"fake cluster of {args.nodes} nodes x 1 CPU", r) +
              f"; shards written by workers on {r['writer_nodes']} nodes")
    (work / "results.json").write_text(json.dumps({f"{k[0]}_{k[1]}": v for k, v in results.items()}, indent=1))
    print(f"details: {work / 'results.json'}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:  # the --before checkout, if one was made
        for tree in Path(tempfile.gettempdir()).glob("bench_pp_*/before"):
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], capture_output=True)
