"""Planning the preprocessing work: inputs -> pieces -> tasks, and piece rows -> manifest rows.

A *piece* is the unit a Ray task processes and a shard part accounts for: a whole input, or,
for an input longer than ``1.5 x segment_seconds``, a time range of it (``start_frame`` ..
``stop_frame`` at 25 fps). Pieces of a long input are separate tasks before detection, so one
hour-long video keeps every core busy; each decodes its range from a keyframe seek
(lipsync.video.iter_frame_range). Piece boundaries fall on multiples of ``max_clip_seconds``,
so clips are cut where one serial pass would cut them unless a scene cut moved the grid.

A *task* is a run of consecutive pieces one Ray task processes and writes shards for
(pipelines/preprocess/write_task.py). Its name (``r{run}t{n}``) is fixed when the driver plans it.

The manifest still has one row per input: :func:`merge_piece_rows` folds an input's piece rows
(each made by ``manifest.input_row`` from its clips) into one. An input is ``ok`` when any piece
put a clip in a shard; ``error`` when none did and a piece failed; else ``rejected`` with the most
frequent clip reason. A multi-piece input may span shards: ``shard`` lists them, comma-separated.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any, Iterable, Sequence

from lipsync.audio import FPS
from pipelines.dataset.manifest import weighted_nanmean


def piece_frames(cfg: Any) -> int:
    """Frames per piece of a long input (0: never cut): ``segment_seconds`` rounded up to a
    multiple of the longest clip."""
    if not cfg.segment_seconds:
        return 0
    frames = int(round(cfg.segment_seconds * FPS))
    clip = int(round(cfg.max_clip_seconds * FPS)) if cfg.max_clip_seconds else 0
    if clip:
        frames = max(1, math.ceil(frames / clip)) * clip
    return frames


def probe_frames(batch: dict) -> dict:
    """map_batches: 25 fps frame count of each input's video (0 when it cannot be probed)."""
    from lipsync import video as lsv

    counts = []
    for path in batch["path"]:
        try:
            info = lsv.probe(str(path))
            counts.append(int(info.duration * FPS) if info.has_video else 0)
        except Exception:  # noqa: BLE001 - the processing step reports why, per input
            counts.append(0)
    return {"input_id": batch["input_id"], "frames": counts}


def plan_pieces(items: Sequence[dict], frames: dict[str, int], per_piece: int) -> list[dict]:
    """Piece rows (the item's fields + piece, n_pieces, start_frame, stop_frame), in input order."""
    pieces = []
    for item in items:
        n = frames.get(item["input_id"], 0)
        count = math.ceil(n / per_piece) if per_piece and n > 1.5 * per_piece else 1
        for k in range(count):
            pieces.append({**item, "piece": k, "n_pieces": count,
                           "start_frame": k * per_piece if count > 1 else 0,
                           "stop_frame": (k + 1) * per_piece if count > 1 and k < count - 1 else None})
    return pieces


def plan_tasks(pieces: Sequence[dict], n_tasks: int, run: int) -> list[dict]:
    """Runs of consecutive pieces, as rows ``{"task": name, "pieces": json}``: about
    ``len(pieces) / n_tasks`` whole short inputs per task; every piece of a long input is a
    task of its own (that is what spreads it over the cluster)."""
    from pipelines.dataset.shards import task_name

    per_task = max(1, math.ceil(len(pieces) / max(1, n_tasks)))
    groups: list[list[dict]] = []
    current: list[dict] = []
    for piece in pieces:
        if piece["n_pieces"] > 1 or len(current) >= per_task:
            if current:
                groups.append(current)
            current = []
        current.append(piece)
        if piece["n_pieces"] > 1:
            groups.append(current)
            current = []
    if current:
        groups.append(current)
    return [{"task": task_name(run, t), "pieces": json.dumps(group)} for t, group in enumerate(groups)]


def _reason_counts(text: str) -> Counter:
    counts: Counter = Counter()
    for part in filter(None, (text or "").split(",")):
        reason, _, count = part.rpartition(":")
        counts[reason] += int(count)
    return counts


def merge_piece_rows(rows: Sequence[dict]) -> dict:
    """One manifest row for an input from its pieces' rows (a single piece: that row)."""
    rows = sorted(rows, key=lambda r: int(r.get("piece", 0)))
    if len(rows) == 1:
        return {k: v for k, v in rows[0].items() if k not in ("piece", "n_pieces")}
    ok = [r for r in rows if r["status"] == "ok"]
    errors = [r for r in rows if r["status"] == "error"]
    first = next((r for r in rows if not math.isnan(r["source_duration"])), rows[0])
    reasons: Counter = Counter()
    for r in rows:
        reasons.update(_reason_counts(r["clips_rejected"]))
        if r["status"] != "ok":
            reasons[r["reason"]] += 0  # keep the reason listed
    if ok:
        status, reason, detail = "ok", "", ""
        for r in errors:
            reasons[r["reason"]] += 1
    elif errors:
        status, reason, detail = "error", errors[0]["reason"], errors[0]["detail"]
    else:
        by_piece = Counter(r["reason"] for r in rows)
        reason = by_piece.most_common(1)[0][0]
        status, detail = "rejected", next(r["detail"] for r in rows if r["reason"] == reason)
    quality = ok or rows
    weight = (lambda r: r["n_frames"]) if ok else (lambda r: 1.0)
    n_frames = sum(r["n_frames"] for r in ok)
    shards = list(dict.fromkeys(r["shard"] for r in ok if r["shard"]))
    return {
        **{k: first[k] for k in ("input_id", "source", "corpus", "speaker", "clip_id", "split",
                                 "source_duration", "source_fps", "width", "height", "rotation")},
        "status": status, "reason": reason, "detail": detail,
        "n_frames_source": max(r["n_frames_source"] for r in rows),
        "n_clips": sum(r["n_clips"] for r in ok), "n_frames": n_frames, "duration": n_frames / FPS,
        "shard": ",".join(shards), "sample_keys": [k for r in ok for k in r["sample_keys"]],
        "clips_rejected": ",".join(f"{r}:{c}" for r, c in sorted(reasons.items()) if c),
        **{k: weighted_nanmean((r.get(k, math.nan), weight(r)) for r in quality)
           for k in ("mean_face_size", "detection_rate", "box_jitter", "sync_confidence")},
        **{k: [v for r in ok for v in (r.get(k) or [])] for k in ("sync_offsets", "sync_shifts")},
    }


def input_rows(piece_rows: Iterable[dict]) -> tuple[list[dict], set[str]]:
    """(manifest rows of inputs whose every piece is recorded, ids of inputs still incomplete)."""
    by_input: dict[str, list[dict]] = {}
    for row in piece_rows:
        by_input.setdefault(row["input_id"], []).append(row)
    rows, incomplete = [], set()
    for input_id, pieces in by_input.items():
        expected = int(pieces[0].get("n_pieces", 1))
        if {int(p.get("piece", 0)) for p in pieces} == set(range(expected)):
            rows.append(merge_piece_rows(pieces))
        else:
            incomplete.add(input_id)
    return rows, incomplete
