"""The preprocessing job: raw videos -> WebDataset shards + manifest.parquet + summary.json.

Flow: discover inputs (pipelines/sources.py) -> assign splits (pipelines/splits.py) -> skip
inputs that earlier runs already accounted for (pipelines/shards.py ``recover``) -> a
streaming Ray Data pipeline over the rest (pipelines/stages.py: decode -> detect -> finish,
one task per input on CPU, detection on a GPU actor pool when the cluster has GPUs)
-> the driver writes shards in input order (``preserve_order``), one writer per split, and
the manifest and summary at the end.

Streaming: the dataset starts from the list of input paths only; Ray Data pulls clips
through the stages with bounded in-flight data, and the driver holds at most one input's
encoded samples at a time.

Resumable and idempotent: processing order is fixed (sorted input ids), shards close only
between inputs and are committed by an atomic rename after their index (see shards.py). A
re-run skips every input a committed shard (or a split's tail) accounts for, and continues
each split at the next shard number, so killed-and-resumed and uninterrupted runs give the
same shards and manifest. Settings that change shard content are fingerprinted in
``index/config.json``; re-running with different ones is refused (``overwrite`` starts over).

``sync_filter``: a hook for a trained expert (LatentSync keeps clips with SyncNet confidence
>= 3 and |offset| <= 6 and shifts the audio). Called in the finish stage with the
``ClipSample`` about to be written (frames = primary crops, mel, meta); return None to keep
it unchanged, or a dict: ``keep`` (False rejects the clip with reason
``sync_filter:<reason>``), ``offset`` / ``confidence`` (stored in meta sync_offset /
sync_confidence), ``mel`` (a replacement mel, e.g. after shifting the audio), ``detail``.
It must be picklable (it runs in Ray workers).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from lipsync.errors import ConfigError
from pipelines import manifest as mf
from pipelines import shards as sh
from pipelines.sources import InputItem, count_skipped, discover_inputs
from pipelines.splits import assign_splits, parse_fractions, split_warning

SUMMARY_NAME = "summary.json"


@dataclass
class PreprocessConfig:
    input: str
    output: str
    layout: str = "lrs2"
    speaker_regex: Optional[str] = None
    filelists: Optional[str] = None             # dir with train/val/test.txt (lrs2)
    split_fractions: tuple = (0.8, 0.1, 0.1)
    split_seed: str = ""
    # clips
    max_clip_seconds: float = 10.0               # 0 = no segmentation
    min_clip_seconds: float = 1.0
    scene_cut_threshold: float = 25.0            # 0 disables scene-cut splitting
    # faces
    detector: str = "auto"                       # auto | dlib | s3fd
    detector_weights: Optional[str] = None
    detect_every: int = 1                        # detect on every k-th frame, interpolate between
    detect_downscale_to: Optional[int] = 480
    detect_upsample: int = 0
    detect_batch_size: int = 32
    face_policy: str = "largest"                 # largest | central | reject-multiple
    min_face_size: float = 48.0                  # px, shorter box side
    min_detection_rate: float = 0.5
    smooth_window: int = 5
    crop_sizes: tuple = (96,)
    pads: tuple = (0, 10, 0, 0)                  # top, bottom, left, right
    # shards
    codec: str = "jpeg"                          # jpeg | png (lossless)
    jpeg_quality: int = 95
    shard_size: int = 256 * 10**6                # bytes per shard (target); "256MB" also accepted
    overwrite: bool = False
    # resources
    num_cpus: Optional[int] = None               # local cluster size / CPU cap on a cluster
    num_gpus: Optional[float] = None             # None: use GPUs when the cluster has them
    inputs_per_task: int = 8                     # most inputs one Ray task handles (see input_blocks)
    object_store_memory: Optional[int] = 500 * 2**20
    ray_address: Optional[str] = None
    # tracking
    tracking_uri: Optional[str] = None
    experiment: str = "preprocess"
    sync_filter: Optional[Callable] = field(default=None, repr=False)
    progress: bool = True

    def validate(self) -> None:
        """Check the settings and normalise them (fractions/sizes/pads to tuples of numbers)."""
        self.split_fractions = parse_fractions(self.split_fractions)
        self.crop_sizes = tuple(int(s) for s in self.crop_sizes)
        self.pads = tuple(int(p) for p in self.pads)
        if isinstance(self.shard_size, str):
            self.shard_size = sh.parse_size(self.shard_size)
        if self.codec not in ("jpeg", "png"):
            raise ConfigError(f"--codec {self.codec!r}: choose jpeg or png")
        if self.face_policy not in ("largest", "central", "reject-multiple"):
            raise ConfigError(f"--face-policy {self.face_policy!r}: choose largest, central or reject-multiple")
        if not self.crop_sizes or any(int(s) < 16 for s in self.crop_sizes):
            raise ConfigError(f"--crop-size {self.crop_sizes}: sizes must be >= 16")
        if len(self.pads) != 4:
            raise ConfigError(f"--pads {self.pads}: need top bottom left right")
        if self.max_clip_seconds and self.max_clip_seconds < self.min_clip_seconds:
            raise ConfigError(f"--max-clip-seconds {self.max_clip_seconds} < --min-clip-seconds "
                              f"{self.min_clip_seconds}")
        if self.shard_size <= 0:
            raise ConfigError("--shard-size must be positive")
        if self.detect_every < 1:
            raise ConfigError("--detect-every must be >= 1")
        if self.inputs_per_task < 1:
            raise ConfigError(f"--inputs-per-task must be >= 1, got {self.inputs_per_task}")

    def fingerprint(self) -> dict:
        """Settings that change what goes into the shards (resume refuses a mismatch)."""
        keys = ("layout", "speaker_regex", "split_fractions", "split_seed", "max_clip_seconds",
                "min_clip_seconds", "scene_cut_threshold", "detector", "detect_every",
                "detect_downscale_to", "detect_upsample", "face_policy", "min_face_size",
                "min_detection_rate", "smooth_window", "crop_sizes", "pads", "codec",
                "jpeg_quality", "shard_size")
        data = asdict(self)
        out = {k: (list(data[k]) if isinstance(data[k], tuple) else data[k]) for k in keys}
        out["sync_filter"] = getattr(self.sync_filter, "__qualname__", None) if self.sync_filter else None
        return out


# ------------------------------------------------------------------------------ Ray side


def _build_dataset(rows: list[dict], cfg: PreprocessConfig, use_gpus: int):
    import ray
    from pipelines import stages

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # shards are written in input order
    ctx.enable_progress_bars = bool(cfg.progress)
    if cfg.num_cpus:
        ctx.execution_options.resource_limits = ctx.execution_options.resource_limits.copy(
            cpu=float(cfg.num_cpus))
    cpus = cfg.num_cpus or int(ray.cluster_resources().get("CPU", 1))
    ds = ray.data.from_items(rows, override_num_blocks=input_blocks(len(rows), cpus, cfg.inputs_per_task))
    if not use_gpus:
        return ds.flat_map(stages.process_input, fn_kwargs={"cfg": cfg})
    # GPU: decode on CPU tasks -> detect on one actor per GPU -> crop/mel on CPU tasks.
    ds = ds.flat_map(stages.decode_input, fn_kwargs={"cfg": cfg})
    ds = ds.map_batches(stages.FaceDetectStage, fn_constructor_args=(cfg, "cuda"),
                        batch_size=1, num_gpus=1, concurrency=use_gpus, zero_copy_batch=False)
    return ds.map(stages.finish_clip, fn_kwargs={"cfg": cfg})


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
    try:
        from pipelines.ray_env import init_ray
    except ImportError:  # pragma: no cover - ray_env is part of the repo
        import ray

        if not ray.is_initialized():
            ray.init(address=cfg.ray_address or os.environ.get("RAY_ADDRESS"), num_cpus=cfg.num_cpus)
        return
    init_ray(address=cfg.ray_address, num_cpus=cfg.num_cpus,
             object_store_memory=cfg.object_store_memory)


# ------------------------------------------------------------------------------ driver


def _prepare_output(cfg: PreprocessConfig) -> Path:
    out = Path(cfg.output)
    fingerprint_path = out / sh.INDEX_DIR / "config.json"
    if cfg.overwrite and out.exists():
        for path in list(out.glob("*.tar")) + list(out.glob("*.tar.partial")):
            path.unlink()
        shutil.rmtree(out / sh.INDEX_DIR, ignore_errors=True)
        for name in (mf.MANIFEST_NAME, SUMMARY_NAME):
            (out / name).unlink(missing_ok=True)
    (out / sh.INDEX_DIR).mkdir(parents=True, exist_ok=True)
    fingerprint = cfg.fingerprint()
    if fingerprint_path.exists():
        previous = json.loads(fingerprint_path.read_text(encoding="utf-8"))
        if previous != fingerprint:
            changed = sorted(k for k in set(previous) | set(fingerprint) if previous.get(k) != fingerprint.get(k))
            raise ConfigError(f"--output {out}: made with different settings ({', '.join(changed)}); "
                              "use another --output or --overwrite")
    else:
        sh.write_json_atomic(fingerprint_path, fingerprint)
    return out


def _input_rows(items: list[InputItem], splits: dict[str, str]) -> list[dict]:
    return [{**it.to_dict(), "split": splits[it.input_id], "order": n} for n, it in enumerate(items)]


def run_preprocess(cfg: PreprocessConfig) -> dict:
    """Run (or resume) a preprocessing job; returns the summary dict (also in summary.json)."""
    cfg.validate()
    started = time.time()
    items = discover_inputs(cfg.input, cfg.layout, speaker_regex=cfg.speaker_regex,
                            filelists_dir=cfg.filelists)
    splits = assign_splits(items, cfg.split_fractions, cfg.split_seed)
    warning = split_warning(items, splits, cfg.layout, cfg.split_fractions)
    if warning:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    out = _prepare_output(cfg)
    state = sh.recover(out)
    known = {it.input_id for it in items}
    rows = [r for r in _input_rows(items, splits) if r["input_id"] not in state.done]
    resumed = len(items) - len(rows)
    print(f"preprocess: {len(items)} inputs, {resumed} already in completed shards, {len(rows)} to do",
          flush=True)

    writers: dict[str, sh.SplitShardWriter] = {}
    timings: dict[str, float] = {}
    new_rows: list[dict] = []
    gpus = 0
    if rows:
        _connect(cfg)
        gpus = _gpus_to_use(cfg)
        ds = _build_dataset(rows, cfg, gpus)
        try:
            new_rows = _drain(ds, rows, out, state, cfg, writers, timings)
        except BaseException:
            for writer in writers.values():
                writer.abort()
            raise
        for writer in writers.values():
            writer.finish()

    all_rows = state.rows + new_rows
    ids = [r["input_id"] for r in all_rows]
    missing = known - set(ids)
    if missing or len(ids) != len(set(ids)):
        raise RuntimeError(f"accounting failed: {len(missing)} inputs missing, "
                           f"{len(ids) - len(set(ids))} recorded twice")
    all_rows = [r for r in all_rows if r["input_id"] in known]
    manifest_path = mf.write_manifest(all_rows, out / mf.MANIFEST_NAME)
    summary = _summary(all_rows, out, manifest_path, resumed, len(rows), timings, time.time() - started, cfg)
    summary["detect_gpu_actors"] = gpus
    summary["skipped_files"] = count_skipped(cfg.input, cfg.layout)  # not media: no manifest row
    summary["warnings"] = [warning] if warning else []
    sh.write_json_atomic(out / SUMMARY_NAME, summary)
    _print_summary(summary)
    if cfg.tracking_uri:
        summary["mlflow_run_id"] = _log_mlflow(cfg, summary, manifest_path)
        sh.write_json_atomic(out / SUMMARY_NAME, summary)
    return summary


def _drain(ds, rows, out, state, cfg, writers, timings) -> list[dict]:
    """Consume the pipeline's rows in input order; write each input once it is complete."""
    from tqdm import tqdm

    from pipelines import stages

    by_id = {r["input_id"]: r for r in rows}
    resolved: list[dict] = []
    pending_id, pending = None, []
    bar = tqdm(total=len(rows), desc="inputs", unit="input", disable=not cfg.progress, mininterval=2.0)

    def flush(input_id: str, payloads: list[dict]) -> None:
        item = by_id[input_id]
        row = mf.input_row(payloads)
        samples = [p["sample"] for p in payloads if p["status"] == "ok"] if row["status"] == "ok" else []
        writer = writers.get(item["split"])
        if writer is None:
            writer = writers[item["split"]] = sh.SplitShardWriter(
                out, item["split"], state.next_index.get(item["split"], 0), cfg.shard_size)
        resolved.append(writer.add_input(samples, row))
        for p in payloads:
            for stage, seconds in p.get("timings", {}).items():
                timings[stage] = timings.get(stage, 0.0) + float(seconds)
        bar.update(1)

    for row in ds.iter_rows():
        payload = stages.unpack(row["payload"])
        payload.pop("frames", None)
        payload.pop("audio", None)
        if row["input_id"] != pending_id:
            if pending:
                raise RuntimeError(f"rows of input {pending_id} ended without its last clip")
            pending_id = row["input_id"]
        pending.append(payload)
        if row["last"]:
            flush(pending_id, pending)
            pending_id, pending = None, []
    bar.close()
    if pending:
        raise RuntimeError(f"rows of input {pending_id} ended without its last clip")
    return resolved


def _summary(rows, out: Path, manifest_path: Path, resumed: int, processed: int, timings: dict,
             wall: float, cfg: PreprocessConfig) -> dict:
    counts = mf.status_counts(rows)
    shards = sorted(out.glob("*.tar"))
    ok_rows = [r for r in rows if r["status"] == "ok"]
    frames = sum(r["n_frames"] for r in ok_rows)
    shard_bytes = sum(p.stat().st_size for p in shards)
    source_seconds = sum(r["source_duration"] for r in rows
                         if r["source_duration"] == r["source_duration"])  # skip NaN
    return {
        "output": str(out.resolve()),
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
        "shard_names": [p.name for p in shards],
        "bytes": shard_bytes,
        "bytes_per_frame": shard_bytes / frames if frames else None,
        "resumed_inputs": resumed,
        "processed_inputs": processed,
        "wall_seconds": wall,
        "stage_seconds": timings,
        "manifest": str(manifest_path.resolve()),
        "manifest_sha256": mf.manifest_hash(manifest_path),
        "config": cfg.fingerprint(),
    }


def _print_summary(s: dict) -> None:
    print(f"preprocess summary: {s['inputs']} inputs: {s['ok']} ok, {s['rejected']} rejected "
          f"{s['rejected_by_reason']}, {s['errors']} errors {s['errors_by_reason']}; "
          f"{s['clips']} clips, {s['hours'] * 60:.2f} min of video; {s['shards']} shards, "
          f"{s['bytes'] / 1e6:.1f} MB ({s['bytes_per_frame'] or 0:.0f} B/frame); "
          f"{s.get('skipped_files', 0)} non-media files skipped; "
          f"{s['wall_seconds']:.1f}s wall", flush=True)
    for warning in s.get("warnings", []):  # again at the end, where the user looks
        print(f"warning: {warning}", file=sys.stderr, flush=True)


def _log_mlflow(cfg: PreprocessConfig, summary: dict, manifest_path: Path) -> str:
    import mlflow

    from pipelines import tracking

    tracking.configure(cfg.tracking_uri, cfg.experiment)
    with mlflow.start_run(run_name="preprocess") as run:
        mlflow.set_tags({**tracking.run_tags(manifest_path),
                         "lipsync.manifest_hash": summary["manifest_sha256"],
                         "lipsync.stage": "preprocess"})
        params = {k: (",".join(map(str, v)) if isinstance(v, list) else v)
                  for k, v in summary["config"].items()}
        mlflow.log_params({"input": cfg.input, "output": cfg.output, **params})
        mlflow.log_metrics({k: float(summary[k]) for k in
                            ("inputs", "ok", "rejected", "errors", "clips", "frames", "hours",
                             "shards", "bytes", "wall_seconds")})
        mlflow.log_artifact(str(Path(cfg.output) / SUMMARY_NAME))
        mlflow.log_artifact(str(manifest_path))
        return run.info.run_id
