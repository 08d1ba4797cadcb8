"""The preprocessing job: raw videos -> WebDataset shards + manifest.parquet + summary.json.

Flow: discover inputs (pipelines/preprocess/sources.py) -> assign splits (pipelines/preprocess/splits.py) -> read
what earlier runs committed (pipelines/dataset/shards.py ``recover``) -> probe the remaining inputs'
lengths in Ray tasks and plan pieces and tasks (pipelines/preprocess/pieces.py: a long input becomes
several pieces, one task each) -> one Ray Data task per planned task
(pipelines/preprocess/write_task.py) decodes, detects, crops, encodes and writes its own shards
``{split}-{task}-{n}.tar`` with a manifest part each, straight to the output (a directory or
``s3://`` / ``gs://``) -> the driver merges the parts into manifest.parquet and summary.json.

The driver handles metadata only: input paths, piece plans, one small row per piece back
(status, counts, timings) and the parts' JSON. No crop passes through it, so its cost does not
grow with the bytes written (benchmarks/preprocess.py measures its CPU seconds per GB).
Detection runs in the CPU tasks, or on one actor per GPU that the tasks call when the cluster
has GPUs.

Resumable and exactly once: a piece is done when a committed part lists it (a part is written
before its tar is committed; recover drops parts without a tar and partial files). A re-run
plans only the pieces not done, under a new run number (task names ``r{run}t{n}``), so it
never overwrites what a killed run committed; a retried Ray task first deletes what its
earlier attempt committed. Shard names depend on the plan, so a killed-and-resumed run holds
the same samples and manifest rows as an uninterrupted one but not the same shard names.
Settings that change shard content are fingerprinted in ``index/config.json``; re-running
with different ones is refused (``overwrite`` starts over).

Shard size: each task closes a shard once it reaches ``shard_size``; its last shard per split
is what is left (smaller). Tasks hold several inputs (``inputs_per_task``) so most shards reach
the target on a real corpus; the loaders read any size.

``sync_filter``: measures each clip's sync (``pipelines/preprocess/sync_filter.py``: ``--sync-filter``
with a registered expert or SyncNet v2). Called in the finish step with the ``ClipSample``
about to be written (frames = primary crops, mel, meta) and the clip's 16 kHz waveform; returns
None to keep the clip unchanged, or a dict: ``keep`` (False rejects the clip with ``reason`` and
``detail``), ``offset`` / ``confidence`` (stored in meta sync_offset / sync_confidence and in the
manifest), ``shift`` (frames to realign the audio by; recorded as sync_shift). It must be
picklable (it runs in Ray workers).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs

from lipsync.errors import ConfigError
from pipelines.dataset import manifest as mf
from pipelines.dataset import shards as sh
from pipelines.preprocess.sources import InputItem, count_skipped, discover_inputs
from pipelines.preprocess.config import PreprocessConfig
from pipelines.preprocess.splits import assign_splits, split_warning

SUMMARY_NAME = "summary.json"


# ------------------------------------------------------------------------------ Ray side


def _configure_data(cfg: PreprocessConfig):
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the driver prints one bar over pieces
    if cfg.num_cpus:
        ctx.execution_options.resource_limits = ctx.execution_options.resource_limits.copy(
            cpu=float(cfg.num_cpus))
    return cfg.num_cpus or int(ray.cluster_resources().get("CPU", 1))


def _probe_frames(rows: list[dict], cpus: int) -> dict[str, int]:
    """25 fps frame counts of the inputs, probed in Ray tasks (headers only)."""
    import ray

    from pipelines.preprocess.pieces import probe_frames

    todo = [{"input_id": r["input_id"], "path": r["path"]} for r in rows if not r.get("reject_reason")]
    if not todo:
        return {}
    ds = ray.data.from_items(todo, override_num_blocks=input_blocks(len(todo), cpus, 256))
    return {r["input_id"]: int(r["frames"]) for r in ds.map_batches(probe_frames, batch_size=None).iter_rows()}


def _build_dataset(tasks: list[dict], cfg: PreprocessConfig, out: sh.Output, use_gpus: int):
    import ray

    from pipelines.preprocess.write_task import GpuFaceDetector, process_and_write

    detectors = None
    if use_gpus:
        # Detection on one actor per GPU; decode, crop and shard writing stay in the CPU tasks.
        actor = ray.remote(num_gpus=1, num_cpus=0)(GpuFaceDetector)
        detectors = [actor.remote(cfg, "cuda") for _ in range(use_gpus)]
    ds = ray.data.from_items(tasks, override_num_blocks=len(tasks))
    return ds.map_batches(process_and_write, batch_size=None, zero_copy_batch=False,
                          fn_kwargs={"cfg": cfg, "out": out, "detectors": detectors})


def input_blocks(n_inputs: int, cpus: int, inputs_per_task: int = 8, max_blocks: int = 20000) -> int:
    """How many blocks (= Ray tasks) the inputs are split into.

    A Ray Data task has a fixed cost (scheduling, start, result handling) comparable to
    preprocessing a short low-resolution clip. On 64 synthetic 3 s clips
    (benchmarks/preprocess.py), one input per task ran at 5.9 clips/s on 2 CPUs (1.17x the
    1-CPU rate); 8 per task at 7.8 clips/s (1.47x). At least 4 tasks per CPU (when there are
    enough inputs) keep the load balanced; no task takes more than ``inputs_per_task``
    inputs unless the block count hits the cap.
    """
    if n_inputs <= 0:
        return 1
    blocks = max(-(-n_inputs // max(1, inputs_per_task)), 4 * max(1, cpus))
    return max(1, min(n_inputs, blocks, max_blocks))


def _gpus_to_use(cfg: PreprocessConfig) -> int:
    import ray

    if cfg.detector == "dlib":
        return 0
    available = int(ray.cluster_resources().get("GPU", 0))
    wanted = available if cfg.num_gpus is None else int(cfg.num_gpus)
    return min(wanted, available)


def _connect(cfg: PreprocessConfig) -> None:
    from pipelines.common.ray_setup import init_ray

    init_ray(address=cfg.ray_address, num_cpus=cfg.num_cpus,
             object_store_memory=cfg.object_store_memory)


# ------------------------------------------------------------------------------ driver


def _prepare_output(cfg: PreprocessConfig) -> sh.Output:
    out = sh.Output.of(cfg.output)
    if cfg.overwrite:
        deleted = sh.clear(out, (mf.MANIFEST_NAME, SUMMARY_NAME))
        if deleted:
            print(f"preprocess: --overwrite deleted the {deleted} files earlier runs wrote in {cfg.output}",
                  flush=True)
    out.fs.create_dir(out.path(sh.INDEX_DIR), recursive=True)
    fingerprint = cfg.fingerprint()
    if out.exists(sh.INDEX_DIR, sh.CONFIG_NAME):
        previous = out.read_json(sh.INDEX_DIR, sh.CONFIG_NAME)
        if previous != fingerprint:
            changed = sorted(k for k in set(previous) | set(fingerprint) if previous.get(k) != fingerprint.get(k))
            raise ConfigError(f"--output {cfg.output}: made with different settings ({', '.join(changed)}); "
                              "use another --output or --overwrite")
    else:
        out.put_json(fingerprint, sh.INDEX_DIR, sh.CONFIG_NAME)
    return out


def _input_rows(items: list[InputItem], splits: dict[str, str]) -> list[dict]:
    return [{**it.to_dict(), "split": splits[it.input_id], "order": n} for n, it in enumerate(items)]


def run_preprocess(cfg: PreprocessConfig) -> dict:
    """Run (or resume) a preprocessing job; returns the summary dict (also in summary.json)."""
    from pipelines.preprocess import pieces as pc

    cfg.check()
    started, driver_cpu = time.time(), time.process_time()
    items = discover_inputs(cfg.input, cfg.layout, speaker_regex=cfg.speaker_regex,
                            filelists_dir=cfg.filelists)
    splits = assign_splits(items, cfg.split_fractions, cfg.split_seed)
    warning = split_warning(items, splits, cfg.layout, cfg.split_fractions)
    if warning:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    out = _prepare_output(cfg)
    state = sh.recover(out)
    known = {it.input_id for it in items}
    done_inputs = {r["input_id"] for r in pc.input_rows(state.rows)[0]}
    rows = [r for r in _input_rows(items, splits) if r["input_id"] not in done_inputs]
    resumed = len(items) - len(rows)
    print(f"preprocess: {len(items)} inputs, {resumed} already in completed shards, {len(rows)} to do",
          flush=True)

    timings: dict[str, float] = {}
    gpus, n_tasks, n_pieces, nodes = 0, 0, 0, set()
    if rows:
        _connect(cfg)
        cpus = _configure_data(cfg)
        gpus = _gpus_to_use(cfg)
        per_piece = pc.piece_frames(cfg)
        frames = _probe_frames(rows, cpus) if per_piece else {}
        pieces = [p for p in pc.plan_pieces(rows, frames, per_piece)
                  if (p["input_id"], p["piece"]) not in state.done]
        run = state.last_run + 1
        tasks = pc.plan_tasks(pieces, input_blocks(len(pieces), cpus, cfg.inputs_per_task), run)
        n_tasks, n_pieces = len(tasks), len(pieces)
        nodes = _drain(_build_dataset(tasks, cfg, out, gpus), n_pieces, timings, cfg)
        state = _merge_leftovers(out, sh.recover(out), cfg.shard_size, run)

    all_rows, incomplete = pc.input_rows(state.rows)
    ids = [r["input_id"] for r in all_rows]
    missing = known - set(ids)
    if missing or incomplete or len(ids) != len(set(ids)):
        raise RuntimeError(f"accounting failed: {len(missing)} inputs missing, {len(incomplete)} with pieces "
                           f"missing, {len(ids) - len(set(ids))} recorded twice")
    all_rows = [r for r in all_rows if r["input_id"] in known]
    manifest_path = _write_manifest(all_rows, out)
    summary = _summary(all_rows, state, out, manifest_path, resumed, len(rows), timings,
                       time.time() - started, cfg)
    summary.update(detect_gpu_actors=gpus, tasks=n_tasks, pieces=n_pieces, writer_nodes=len(nodes),
                   driver_cpu_seconds=time.process_time() - driver_cpu)
    summary["skipped_files"] = count_skipped(cfg.input, cfg.layout)  # not media: no manifest row
    summary["warnings"] = [warning] if warning else []
    out.put_json(summary, SUMMARY_NAME)
    _print_summary(summary)
    if cfg.tracking_uri:
        summary["mlflow_run_id"] = _log_mlflow(cfg, summary, manifest_path)
        out.put_json(summary, SUMMARY_NAME)
    return summary


def _merge_leftovers(out: sh.Output, state: sh.ShardState, target: int, run: int) -> sh.ShardState:
    """Merge shards under half the target (each task's last ones) in Ray tasks; see compaction.py."""
    import ray

    from pipelines.dataset import compaction

    groups = compaction.plan_merges(state.shards, target)
    if not groups:
        return state
    merge = ray.remote(num_cpus=1)(compaction.merge_shards)
    refs = [merge.remote(out, [s["shard"] for s in group],
                         compaction.merged_name(group[0]["shard"].split("-")[0], run, n))
            for n, group in enumerate(groups)]
    ray.get(refs)
    print(f"preprocess: merged {sum(len(g) for g in groups)} small shards into {len(groups)}", flush=True)
    return sh.recover(out)


def _write_manifest(rows: list[dict], out: sh.Output) -> Path:
    """manifest.parquet in the output (for object storage: written here, then uploaded)."""
    if isinstance(out.fs, pafs.LocalFileSystem):
        return mf.write_manifest(rows, Path(out.root) / mf.MANIFEST_NAME)
    local = Path(tempfile.mkdtemp(prefix="lipsync_manifest_")) / mf.MANIFEST_NAME
    mf.write_manifest(rows, local)
    out.put_bytes(local.read_bytes(), mf.MANIFEST_NAME)
    return local


def _drain(ds, n_pieces: int, timings: dict, cfg: PreprocessConfig) -> set[str]:
    """Consume the pieces' summary rows (metadata only: the shards are written by the tasks);
    returns the ids of the nodes whose tasks wrote them."""
    from tqdm import tqdm

    nodes = set()
    bar = tqdm(total=n_pieces, desc="pieces", unit="piece", disable=not cfg.progress, mininterval=2.0)
    for row in ds.iter_rows():
        for step, seconds in json.loads(row["timings"]).items():
            timings[step] = timings.get(step, 0.0) + float(seconds)
        nodes.add(row["node"])
        bar.update(1)
    bar.close()
    return nodes


def _summary(rows, state: sh.ShardState, out: sh.Output, manifest_path: Path, resumed: int, processed: int,
             timings: dict, wall: float, cfg: PreprocessConfig) -> dict:
    counts = mf.status_counts(rows)
    shards = sorted(state.shards, key=lambda s: s["shard"])
    ok_rows = [r for r in rows if r["status"] == "ok"]
    frames = sum(r["n_frames"] for r in ok_rows)
    shard_bytes = sum(s["bytes"] for s in shards)
    source_seconds = sum(r["source_duration"] for r in rows
                         if r["source_duration"] == r["source_duration"])  # skip NaN
    return {
        "output": cfg.output if "://" in cfg.output else out.root,
        "inputs": len(rows),
        "ok": counts["ok"],
        "rejected": sum(counts["rejected"].values()),
        "errors": sum(counts["error"].values()),
        "rejected_by_reason": counts["rejected"],
        "errors_by_reason": counts["error"],
        "clips": sum(r["n_clips"] for r in ok_rows),
        "frames": frames,
        "hours": frames / 25.0 / 3600.0,
        "source_hours": source_seconds / 3600.0,
        "splits": {s: sum(1 for r in ok_rows if r["split"] == s) for s in sorted({r["split"] for r in ok_rows})},
        "shards": len(shards),
        "shard_names": [s["shard"] for s in shards],
        "shard_bytes": {"min": min((s["bytes"] for s in shards), default=0),
                        "max": max((s["bytes"] for s in shards), default=0),
                        "target": cfg.shard_size},
        "bytes": shard_bytes,
        "bytes_per_frame": shard_bytes / frames if frames else None,
        "resumed_inputs": resumed,
        "processed_inputs": processed,
        "wall_seconds": wall,
        "step_seconds": timings,
        "manifest": out.path(mf.MANIFEST_NAME),
        "manifest_sha256": mf.manifest_hash(manifest_path),
        "config": cfg.fingerprint(),
        "sync": _sync_summary(rows) if cfg.sync_filter is not None else None,
    }


def _sync_summary(rows) -> dict:
    """What the sync filter measured: confidence quartiles over inputs, realigned clips."""
    conf = [r["sync_confidence"] for r in rows if r.get("sync_confidence") == r.get("sync_confidence")
            and r.get("sync_confidence") is not None]
    shifts = [s for r in rows for s in (r.get("sync_shifts") or [])]
    q = [float(v) for v in np.percentile(conf, [25, 50, 75])] if conf else [float("nan")] * 3
    return {"measured_inputs": len(conf), "confidence_quartiles": q,
            "realigned_clips": sum(1 for s in shifts if s), "shifts": sorted(set(shifts))}


def _print_summary(s: dict) -> None:
    print(f"preprocess summary: {s['inputs']} inputs: {s['ok']} ok, {s['rejected']} rejected "
          f"{s['rejected_by_reason']}, {s['errors']} errors {s['errors_by_reason']}; "
          f"{s['clips']} clips, {s['hours'] * 60:.2f} min of video; {s['shards']} shards, "
          f"{s['bytes'] / 1e6:.1f} MB ({s['bytes_per_frame'] or 0:.0f} B/frame); "
          f"{s.get('skipped_files', 0)} non-media files skipped; "
          f"{s['wall_seconds']:.1f}s wall", flush=True)
    if s.get("sync"):
        y = s["sync"]
        print("preprocess sync filter: confidence quartiles (kept and rejected inputs) "
              f"{' / '.join(f'{v:.3f}' for v in y['confidence_quartiles'])} over {y['measured_inputs']} inputs; "
              f"{y['realigned_clips']} clips realigned (shifts {y['shifts']})", flush=True)
    for warning in s.get("warnings", []):  # again at the end, where the user looks
        print(f"warning: {warning}", file=sys.stderr, flush=True)


def _log_mlflow(cfg: PreprocessConfig, summary: dict, manifest_path: Path) -> str:
    import mlflow

    from pipelines.tracking import setup as mlflow_setup

    mlflow_setup.configure(cfg.tracking_uri, cfg.experiment)
    with mlflow.start_run(run_name="preprocess") as run:
        mlflow.set_tags({**mlflow_setup.run_tags(manifest_path),
                         "lipsync.manifest_hash": summary["manifest_sha256"],
                         "lipsync.job": "preprocess"})
        params = {k: (",".join(map(str, v)) if isinstance(v, list) else v)
                  for k, v in summary["config"].items()}
        mlflow.log_params({"input": cfg.input, "output": cfg.output, **params})
        mlflow.log_metrics({k: float(summary[k]) for k in
                            ("inputs", "ok", "rejected", "errors", "clips", "frames", "hours",
                             "shards", "bytes", "wall_seconds")})
        mlflow.log_dict(summary, SUMMARY_NAME)
        mlflow.log_artifact(str(manifest_path))
        return run.info.run_id
