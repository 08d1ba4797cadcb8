"""manifest.parquet: one row per input file, whatever happened to it.

Columns (``MANIFEST_SCHEMA``): identity (input_id, source, corpus, speaker, clip_id, split),
outcome (status ``ok`` / ``rejected`` / ``error``, reason, detail), source facts
(source_duration s, source_fps, width, height, rotation, n_frames_source at 25 fps), what
went into the shards (n_clips, n_frames, duration s, shard, sample_keys, clips_rejected as
``reason:count`` text) and data quality over the kept clips, frame-weighted (mean_face_size
px, detection_rate, box_jitter; see lipsync.faces.TrackStats). For a rejected input the
quality columns describe its best attempt (NaN when no face was tracked). With a sync filter
(pipelines/preprocess/sync_filter.py): sync_confidence (frame-weighted, NaN without a filter), and per kept
clip, in sample_keys order, the measured sync_offsets and the applied sync_shifts.

An input is ``ok`` when at least one of its clips is in a shard; otherwise ``error`` if a
clip failed with an error, else ``rejected`` with the most frequent clip reason.

The manifest holds no timings, so the same data gives the same manifest, and
:func:`manifest_hash` (a hash of its rows, independent of the Parquet writer) tags MLflow
runs with the data they used.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

MANIFEST_NAME = "manifest.parquet"
STATUSES = ("ok", "rejected", "error")

MANIFEST_SCHEMA = pa.schema([
    ("input_id", pa.string()), ("source", pa.string()), ("corpus", pa.string()),
    ("speaker", pa.string()), ("clip_id", pa.string()), ("split", pa.string()),
    ("status", pa.string()), ("reason", pa.string()), ("detail", pa.string()),
    ("source_duration", pa.float64()), ("source_fps", pa.float64()), ("width", pa.int32()),
    ("height", pa.int32()), ("rotation", pa.int32()), ("n_frames_source", pa.int64()),
    ("n_clips", pa.int32()), ("n_frames", pa.int64()), ("duration", pa.float64()),
    ("shard", pa.string()), ("sample_keys", pa.list_(pa.string())), ("clips_rejected", pa.string()),
    ("mean_face_size", pa.float64()), ("detection_rate", pa.float64()), ("box_jitter", pa.float64()),
    ("sync_confidence", pa.float64()), ("sync_offsets", pa.list_(pa.int32())), ("sync_shifts", pa.list_(pa.int32())),
])


def _nan(value) -> float:
    return float("nan") if value is None else float(value)


def weighted_nanmean(pairs: Iterable[tuple[float | None, float]]) -> float:
    """Mean of the (value, weight) pairs, weighted; missing or NaN values and weights <= 0
    left out; NaN when nothing is left."""
    pairs = [(v, w) for v, w in pairs if v is not None and not math.isnan(v) and w > 0]
    if not pairs:
        return float("nan")
    return sum(v * w for v, w in pairs) / sum(w for _, w in pairs)


def _weighted(clips: Sequence[dict], key: str) -> float:
    return weighted_nanmean((c["stats"].get(key), c.get("n_frames", 0)) for c in clips if c.get("stats"))


def input_row(payloads: Sequence[dict], fps: float = 25.0) -> dict:
    """Aggregate an input's per-clip payloads (pipelines/preprocess/ops.py) into its manifest row."""
    first = payloads[0]
    item = first["item"]
    errors = [p for p in payloads if p["status"] == "error"]
    ok = [p for p in payloads if p["status"] == "ok"] if not errors else []
    rejected = [p for p in payloads if p["status"] == "rejected"]
    if errors:
        status, reason, detail = "error", errors[0]["reason"], errors[0].get("detail", "")
    elif ok:
        status, reason, detail = "ok", "", ""
    else:
        reason = Counter(p["reason"] for p in rejected).most_common(1)[0][0]
        status, detail = "rejected", next(p.get("detail", "") for p in rejected if p["reason"] == reason)
    clip_reasons = Counter(p["reason"] for p in rejected)
    short = sum(int(p.get("short_segments", 0)) for p in payloads)
    if short and status == "ok":
        clip_reasons["too_short"] += short
    quality = ok or [p for p in rejected if p.get("stats")]
    n_frames = sum(int(p.get("n_frames", 0)) for p in ok)
    return {
        "input_id": item["input_id"], "source": item["path"], "corpus": item["corpus"],
        "speaker": item["speaker"], "clip_id": item["clip_id"], "split": item["split"],
        "status": status, "reason": reason, "detail": detail or "",
        "source_duration": _nan(first.get("source_duration")), "source_fps": _nan(first.get("source_fps")),
        "width": int(first.get("width", 0)), "height": int(first.get("height", 0)),
        "rotation": int(first.get("rotation", 0)),
        "n_frames_source": int(max((p.get("n_frames_source", 0) for p in payloads), default=0)),
        "n_clips": len(ok), "n_frames": n_frames, "duration": n_frames / fps,
        "shard": "", "sample_keys": [p["key"] for p in ok],
        "clips_rejected": ",".join(f"{r}:{c}" for r, c in sorted(clip_reasons.items())),
        "mean_face_size": _weighted(quality, "mean_face_size"),
        "detection_rate": _weighted(quality, "detection_rate"),
        "box_jitter": _weighted(quality, "box_jitter"),
        "sync_confidence": _weighted(quality, "sync_confidence"),
        "sync_offsets": [int(p["sync"]["offset"]) for p in ok if p.get("sync")],
        "sync_shifts": [int(p["sync"]["shift"]) for p in ok if p.get("sync")],
    }


def write_manifest(rows: Iterable[dict], path: str | os.PathLike) -> Path:
    """Write rows (sorted by input_id) atomically; returns the path."""
    path = Path(path)
    rows = sorted(rows, key=lambda r: r["input_id"])
    columns = {name: [r.get(name) for r in rows] for name in MANIFEST_SCHEMA.names}
    table = pa.table(columns, schema=MANIFEST_SCHEMA)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def read_manifest(path: str | os.PathLike) -> list[dict]:
    return pq.read_table(path).to_pylist()


def manifest_hash(path: str | os.PathLike) -> str:
    """sha256 of the manifest's rows as canonical JSON (stable across Parquet writers)."""
    digest = hashlib.sha256()
    for row in sorted(read_manifest(path), key=lambda r: r["input_id"]):
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        digest.update(json.dumps(clean, sort_keys=True, separators=(",", ":")).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def status_counts(rows: Iterable[dict]) -> dict:
    """{"ok": n, "rejected": {reason: n}, "error": {reason: n}}."""
    out: dict = {"ok": 0, "rejected": {}, "error": {}}
    for row in rows:
        if row["status"] == "ok":
            out["ok"] += 1
        else:
            bucket = out[row["status"]]
            bucket[row["reason"]] = bucket.get(row["reason"], 0) + 1
    return out
